-- A small Redis (RESP2) client over ngx.socket.tcp, for the cluster-wide
-- progression: Kong bundles resty.redis, but the plugin must also run on
-- hosts without it, and needs no more than this:
--
--   local redis = require "kong.plugins.canary-router.redis"
--   local r, err = redis.connect(conf)        -- conf: progression.redis
--   local replies, err = r:pipeline({ { "INCR", "a" }, { "GET", "a" } })
--   local v, err = r:command("GET", "a")
--   r:keepalive()                              -- or r:close()
--
-- * connect() opens (or reuses from the keepalive pool) a connection with
--   conf.timeout for connect, send and read, does the TLS handshake
--   (conf.ssl, conf.server_name or host for SNI and verification,
--   conf.ssl_verify), then, on a new connection only, AUTH (username and
--   password, or password alone) and SELECT.  The pool is keyed by host,
--   port, database, user and a digest of the password, so a connection
--   authenticated for one config is never handed to another.
-- * pipeline() sends every command in one write and reads every reply;
--   an error reply of one command is a table { err = "ERR ..." } in its
--   place, and does not stop the others.  command() is a pipeline of one
--   whose error reply becomes nil, err.
-- * Replies: simple and bulk strings as strings, integers as numbers, nil
--   bulk strings and arrays as redis.null, arrays as tables.
-- * Every failure (refused, timeout, closed, a reply that is not RESP)
--   returns nil and a message that names host:port, never the password,
--   and closes the connection: a connection with unread replies must not
--   go back to the pool.
--
-- Off the request path only (timers, Admin API): it yields on the socket.

local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local type = type
local sub = string.sub
local byte = string.byte
local setmetatable = setmetatable
local ipairs = ipairs

local ngx = ngx
-- ngx.null is cjson's null (a NULL light userdata); the same outside nginx.
local null = ngx and ngx.null or require("cjson.safe").null

local _M = { null = null }

local Conn = {}
Conn.__index = Conn

local DEFAULT_TIMEOUT = 2000
local KEEPALIVE_MS = 60000
local POOL_SIZE = 4
local MAX_BULK = 64 * 1024 * 1024

-- Wire form of one command: *n\r\n then $len\r\narg\r\n per argument.
local function encode(cmd, out)
  local n = #out
  out[n + 1] = "*" .. #cmd .. "\r\n"
  n = n + 1
  for i = 1, #cmd do
    local a = tostring(cmd[i])
    out[n + 1] = "$" .. #a .. "\r\n"
    out[n + 2] = a
    out[n + 3] = "\r\n"
    n = n + 3
  end
  return out
end
_M.encode = encode

function Conn:fail(what, err)
  self:close()
  return nil, "redis " .. self.where .. ": " .. what .. ": " .. tostring(err)
end

-- Reads one reply; returns value, or nil and an error (connection closed).
-- Error replies come back as { err = text }.
local function read_reply(self, depth)
  local sock = self.sock
  local line, err = sock:receive("*l")
  if not line then return self:fail("read", err) end
  local kind, rest = byte(line, 1), sub(line, 2)
  if kind == 43 then          -- '+'
    return rest
  elseif kind == 45 then      -- '-'
    return { err = rest }
  elseif kind == 58 then      -- ':'
    local n = tonumber(rest)
    if not n or not rest:match("^%-?%d+$") then
      return self:fail("bad reply", "integer '" .. rest:sub(1, 40) .. "'")
    end
    return n
  elseif kind == 36 then      -- '$'
    local len = rest:match("^%-?%d+$") and tonumber(rest)
    if not len or len < -1 or len > MAX_BULK then
      return self:fail("bad reply", "bulk length '" .. rest:sub(1, 40) .. "'")
    end
    if len == -1 then return null end
    local data, rerr = sock:receive(len + 2)
    if not data then return self:fail("read", rerr) end
    if sub(data, -2) ~= "\r\n" then
      return self:fail("bad reply", "bulk string not ended by CRLF")
    end
    return sub(data, 1, len)
  elseif kind == 42 then      -- '*'
    local n = rest:match("^%-?%d+$") and tonumber(rest)
    if not n or n < -1 or n > 1048576 or depth > 8 then
      return self:fail("bad reply", "array length '" .. rest:sub(1, 40) .. "'")
    end
    if n == -1 then return null end
    local arr = {}
    for i = 1, n do
      local v, verr = read_reply(self, depth + 1)
      if v == nil then return nil, verr end
      arr[i] = v
    end
    return arr
  end
  return self:fail("bad reply", "unexpected '" ..
                   (line:sub(1, 40):gsub("[^%g ]", "?")) .. "' (not RESP)")
end

-- Sends every command at once, reads every reply.
function Conn:pipeline(cmds)
  if not self.sock then return nil, "redis " .. self.where .. ": not connected" end
  local out = {}
  for i = 1, #cmds do encode(cmds[i], out) end
  local ok, err = self.sock:send(concat(out))
  if not ok then return self:fail("send", err) end
  local replies = {}
  for i = 1, #cmds do
    local v, rerr = read_reply(self, 0)
    if v == nil then return nil, rerr end
    replies[i] = v
  end
  return replies
end

function Conn:command(...)
  local replies, err = self:pipeline({ { ... } })
  if not replies then return nil, err end
  local v = replies[1]
  if type(v) == "table" and v.err then
    return nil, "redis " .. self.where .. ": " .. v.err
  end
  return v
end

-- Back to the pool (nothing unread is left: every reply was read).
function Conn:keepalive()
  local sock = self.sock
  self.sock = nil
  if not sock then return end
  if sock.setkeepalive and sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE) then return end
  sock:close()
end

function Conn:close()
  local sock = self.sock
  self.sock = nil
  if sock then sock:close() end
end

local function pool_name(conf, host, port)
  local secret = conf.password and (ngx and ngx.md5 and ngx.md5(conf.password)) or ""
  return concat({ "canary-router", host, port, conf.database or 0,
                  conf.username or "", secret, conf.ssl and "tls" or "" }, ":")
end

-- conf: host, port, timeout, username, password, database, ssl,
-- ssl_verify, server_name (progression.redis); opts.tcp replaces
-- ngx.socket.tcp (tests).
function _M.connect(conf, opts)
  local host, port = conf.host, conf.port or 6379
  local where = tostring(host) .. ":" .. tostring(port)
  local tcp = opts and opts.tcp or (ngx and ngx.socket and ngx.socket.tcp)
  if type(host) ~= "string" or host == "" then
    return nil, "redis: no host configured"
  end
  if not tcp then return nil, "redis " .. where .. ": no cosocket API here" end
  local sock, serr = tcp()
  if not sock then return nil, "redis " .. where .. ": " .. tostring(serr) end
  local t = conf.timeout or DEFAULT_TIMEOUT
  if t == null or t <= 0 then t = DEFAULT_TIMEOUT end
  sock:settimeouts(t, t, t)
  local self = setmetatable({ sock = sock, where = where }, Conn)
  local ok, err = sock:connect(host, port, { pool = pool_name(conf, host, port) })
  if not ok then return self:fail("connect", err) end

  local reused = sock.getreusedtimes and sock:getreusedtimes() or 0
  if conf.ssl == true and reused == 0 then
    local name = conf.server_name
    if name == null or name == nil then name = host end
    local sess, herr = sock:sslhandshake(nil, name, conf.ssl_verify == true)
    if not sess then return self:fail("TLS handshake", herr) end
  end
  if reused > 0 then return self end

  local cmds = {}
  local user, pass = conf.username, conf.password
  if user == null then user = nil end
  if pass == null then pass = nil end
  if pass ~= nil and user ~= nil then
    cmds[#cmds + 1] = { "AUTH", user, pass }
  elseif pass ~= nil then
    cmds[#cmds + 1] = { "AUTH", pass }
  end
  local db = conf.database
  if db ~= nil and db ~= null and db ~= 0 then
    cmds[#cmds + 1] = { "SELECT", db }
  end
  if #cmds > 0 then
    local replies, perr = self:pipeline(cmds)
    if not replies then return nil, perr end
    for i, r in ipairs(replies) do
      if type(r) == "table" and r.err then
        -- The reply names the failure (WRONGPASS, NOAUTH, ERR DB index
        -- is out of range); the command itself, with its password, is
        -- never quoted.
        return self:fail(cmds[i][1] == "AUTH" and "AUTH failed" or "SELECT failed", r.err)
      end
    end
  end
  return self
end

return _M
