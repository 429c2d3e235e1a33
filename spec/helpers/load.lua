-- spec/helpers/load.lua: background HTTP load with wrk, for specs that
-- change the gateway (PATCH, reload, kill) while requests flow.
--
--   local job = load.start{ url = "http://127.0.0.1:8000/ai/x", seconds = 5,
--                           connections = 8, close = true }
--   ... act ...
--   local r = load.wait(job)  -- { requests, non2xx, socket_errors, raw }

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
  local cmd = table.concat(args, " ") .. " > " .. out .. " 2>&1; echo done >> " .. out
  os.execute("(" .. cmd .. ") &")
  return { out = out, seconds = opts.seconds or 5 }
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
  local r = { raw = text, non2xx = 0, socket_errors = 0 }
  r.requests = tonumber(text:match("(%d+) requests in")) or 0
  r.non2xx = tonumber(text:match("Non%-2xx or 3xx responses: (%d+)")) or 0
  local c, rd, w, t = text:match(
    "Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  if c then
    r.socket_errors = tonumber(c) + tonumber(rd) + tonumber(w) + tonumber(t)
  end
  return r
end

return _M
