-- spec/helpers/load.lua: background HTTP load with wrk, for specs that
-- change the gateway (weight changes, reload, kill) while requests flow.
--
--   local job = load.start{ url = "http://127.0.0.1:8000/ai/x", seconds = 5,
--                           connections = 8, close = true }
--   ... act ...
--   local r = load.wait(job)  -- { requests, non2xx, socket_errors, raw,
--                             --   errors = { connect, read, write, timeout } }
--   load.stop(job)            -- ends wrk early (SIGINT: it still reports),
--                             -- then returns what load.wait returns

local _M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function _M.start(opts)
  local out = os.tmpname()
  local args = {
    "wrk", "-t", "2", "-c", tostring(opts.connections or 8),
    "-d", tostring(opts.seconds or 5) .. "s", "--latency",
  }
  if opts.close then
    -- A new connection per request: a reload closes idle keep-alive
    -- connections of the old workers, and a client that sends on one at
    -- that instant sees it closed (HTTP says to retry; wrk does not).
    args[#args + 1] = "-H"
    args[#args + 1] = sh_quote("Connection: close")
  end
  for _, h in ipairs(opts.headers or {}) do
    args[#args + 1] = "-H"
    args[#args + 1] = sh_quote(h)
  end
  args[#args + 1] = sh_quote(opts.url)
  local pidfile = out .. ".pid"
  local cmd = table.concat(args, " ") .. " > " .. out .. " 2>&1 & echo $! > " .. pidfile
              .. "; wait; echo done >> " .. out
  os.execute("(" .. cmd .. ") &")
  return { out = out, pidfile = pidfile, seconds = opts.seconds or 5 }
end

function _M.wait(job)
  local deadline = os.time() + job.seconds + 30
  local text
  repeat
    os.execute("sleep 0.2")
    local f = io.open(job.out)
    text = f and f:read("*a") or ""
    if f then f:close() end
  until text:find("\ndone\n") or text:match("^done\n") or os.time() > deadline
  os.remove(job.out)
  if job.pidfile then os.remove(job.pidfile) end
  local r = { raw = text, non2xx = 0, socket_errors = 0 }
  r.requests = tonumber(text:match("(%d+) requests in")) or 0
  r.non2xx = tonumber(text:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  local c, rd, w, t = text:match(
    "Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  r.errors = { connect = 0, read = 0, write = 0, timeout = 0 }
  if c then
    r.socket_errors = tonumber(c) + tonumber(rd) + tonumber(w) + tonumber(t)
    r.errors = { connect = tonumber(c), read = tonumber(rd), write = tonumber(w),
                 timeout = tonumber(t) }
  end
  return r
end

-- Stops a wrk started by load.start before its time is up.  wrk reports
-- as usual on SIGINT (the requests it completed until then).
function _M.stop(job)
  local pid
  for _ = 1, 50 do
    local f = io.open(job.pidfile)
    pid = f and tonumber(f:read("*a"):match("%d+"))
    if f then f:close() end
    if pid then break end
    os.execute("sleep 0.1")
  end
  if pid then
    os.execute("kill -INT " .. pid .. " 2>/dev/null")
  end
  job.seconds = 0
  return _M.wait(job)
end

return _M
