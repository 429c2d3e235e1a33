-- spec/helpers/receiver.lua: a webhook receiver for the specs, on a
-- private port: it answers 500 to its first `fail_first` requests and
-- 204 after that, and appends one JSON line per request to `log`:
--   {"n": 1, "status": 500, "method": "POST", "path": "/hook",
--    "headers": {"authorization": "..."}, "body": "..."}
--
--   luajit spec/helpers/receiver.lua PORT LOG FAIL_FIRST
--
-- One connection at a time (luasocket, blocking): enough for the few
-- notifications a spec causes; others wait in the listen backlog.  A
-- spec starts it in the background and kills it by its pid.

local socket = require "socket"
local cjson = require "cjson"

local port, log_path, fail_first = tonumber(arg[1]), arg[2], tonumber(arg[3]) or 0
assert(port and log_path, "usage: receiver.lua PORT LOG FAIL_FIRST")

local server = assert(socket.bind("127.0.0.1", port))
local n = 0

local function handle(c)
  c:settimeout(5)
  local request_line = c:receive("*l")
  if not request_line then return end
  local method, path = request_line:match("^(%u+) (%S+) HTTP/1%.%d$")
  local headers = {}
  while true do
    local line = c:receive("*l")
    if not line or line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name:lower()] = value end
  end
  local body = ""
  local len = tonumber(headers["content-length"] or "")
  if len and len > 0 then body = c:receive(len) or "" end
  n = n + 1
  local status = n <= fail_first and 500 or 204
  c:send("HTTP/1.1 " .. status .. (status == 500 and " Internal Server Error" or " No Content") ..
         "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
  local f = assert(io.open(log_path, "a"))
  f:write(cjson.encode({ n = n, status = status, method = method, path = path,
                         headers = headers, body = body }), "\n")
  f:close()
end

while true do
  local c = server:accept()
  if c then
    pcall(handle, c)
    c:close()
  end
end
