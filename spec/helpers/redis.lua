-- spec/helpers/redis.lua: a real redis-server (Debian's) for the specs, on
-- 127.0.0.1 with a private port and data directory, stopped afterwards.
--
--   local rs = require "helpers.redis"
--   local srv = rs.start { port = 6391, password = "s3cret" }
--   srv:cli("SET", "a", "1")       -- redis-cli's answer (trimmed)
--   srv:stop()  srv:start()        -- same port, same options (a restart)
--   rs.start { port = 6394, tls = true }   -- TLS only, self-signed cert for
--                                          -- "redis.test" (srv.cert)
--   rs.tcp                         -- luasocket stand-in for ngx.socket.tcp
--
-- Nothing is saved to disk (no RDB, no AOF): a restart starts empty, like
-- a replaced Redis node.

local socket = require "socket"

local _M = {}

local Server = {}
Server.__index = Server

local function run(cmd)
  local p = io.popen("{ " .. cmd .. "\n} 2>&1; echo \"__exit=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("__exit=(%d+)%s*$"))
  return code == 0, (out:gsub("__exit=%d+%s*$", ""))
end

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function Server:cli(...)
  local args = { "redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "-p", self.port }
  if self.tls then
    args[#args + 1] = "--tls --insecure --cacert " .. q(self.cert)
  end
  if self.password then
    args[#args + 1] = "-a"
    args[#args + 1] = q(self.password)
  end
  for _, a in ipairs({ ... }) do args[#args + 1] = q(a) end
  local _, out = run(table.concat(args, " "))
  return (out:gsub("%s+$", ""))
end

function Server:start()
  local args = {
    "redis-server", "--bind", "127.0.0.1", "--port", self.tls and "0" or self.port,
    "--dir", q(self.dir), "--save", "''", "--appendonly", "no",
    "--daemonize", "yes", "--pidfile", q(self.dir .. "/redis.pid"),
    "--logfile", q(self.dir .. "/redis.log"),
  }
  if self.password then
    args[#args + 1] = "--requirepass"
    args[#args + 1] = q(self.password)
  end
  if self.tls then
    args[#args + 1] = table.concat({ "--tls-port", self.port, "--tls-cert-file", q(self.cert),
                                     "--tls-key-file", q(self.key), "--tls-ca-cert-file",
                                     q(self.cert), "--tls-auth-clients", "no" }, " ")
  end
  local ok, out = run(table.concat(args, " "))
  assert(ok, "redis-server failed to start: " .. out)
  for _ = 1, 200 do
    if self:cli("PING") == "PONG" then return self end
    socket.sleep(0.02)
  end
  error("redis-server on port " .. self.port .. " does not answer PING")
end

function Server:pid()
  local f = io.open(self.dir .. "/redis.pid")
  if not f then return nil end
  local pid = tonumber(f:read("*a"):match("%d+"))
  f:close()
  return pid
end

-- Stops the server (SIGTERM, then waits until the process is gone).
function Server:stop()
  local pid = self:pid()
  if not pid then return end
  run("kill " .. pid)
  for _ = 1, 250 do
    if not run("kill -0 " .. pid) then break end
    socket.sleep(0.02)
  end
  os.remove(self.dir .. "/redis.pid")
end

function _M.start(opts)
  local _, dir = run("mktemp -d /tmp/canary_redis.XXXXXX")
  local srv = setmetatable({
    port = opts.port, password = opts.password, dir = dir:gsub("%s+$", ""),
    tls = opts.tls,
  }, Server)
  if srv.tls then
    srv.cert, srv.key = srv.dir .. "/redis.crt", srv.dir .. "/redis.key"
    local ok, out = run("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=redis.test"
                        .. " -addext subjectAltName=DNS:redis.test -keyout " .. q(srv.key)
                        .. " -out " .. q(srv.cert))
    assert(ok, "openssl: " .. out)
  end
  return srv:start()
end

-- ngx.socket.tcp's API over luasocket, enough for plugin/redis.lua
-- outside nginx (no pool: setkeepalive closes; no TLS).
function _M.tcp()
  local s = socket.tcp()
  return {
    settimeouts = function(_, c, w, r)
      s:settimeout(math.max(c, w, r) / 1000)
    end,
    connect = function(_, host, port) return s:connect(host, port) end,
    send = function(_, data) return s:send(data) end,
    receive = function(_, pattern)
      local v, err = s:receive(pattern)
      return v, err
    end,
    close = function() return s:close() end,
  }
end

return _M
