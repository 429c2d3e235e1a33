-- spec/helpers/hook.lua: the webhook receiver (spec/helpers/receiver.lua)
-- in the background, for specs that configure progression.notify.
--
--   local hook = require "helpers.hook"
--   local receiver = hook.start(9010, 3)   -- 500 to the first 3 requests
--   ... receiver:requests() ...            -- the POSTs so far, in order
--   receiver:stop()

local host = require "helpers.host"
local cjson = require "cjson.safe"
local socket = require "socket"

local Hook = {}
Hook.__index = Hook

local _M = {}

function _M.start(port, fail_first)
  local self = setmetatable({ port = port, log = os.tmpname() }, Hook)
  self.pidfile = self.log .. ".pid"
  os.execute(("luajit %s/spec/helpers/receiver.lua %d %s %d >/dev/null 2>&1 & echo $! > %s")
             :format(host.root(), port, self.log, fail_first or 0, self.pidfile))
  for _ = 1, 100 do
    local c = socket.connect("127.0.0.1", port)
    if c then
      c:close()
      return self
    end
    socket.sleep(0.05)
  end
  self:stop()
  error("webhook receiver did not start on port " .. port)
end

function Hook:url(path)
  return "http://127.0.0.1:" .. self.port .. (path or "/hook")
end

function Hook:stop()
  local f = io.open(self.pidfile)
  if f then
    os.execute("kill " .. f:read("*a"):match("%d+") .. " 2>/dev/null")
    f:close()
    os.remove(self.pidfile)
  end
  os.remove(self.log)
end

-- The POSTs the receiver got, in order.
function Hook:requests()
  local list = {}
  local f = io.open(self.log)
  if not f then return list end
  for line in f:lines() do
    local r = cjson.decode(line)
    if r and r.method == "POST" then list[#list + 1] = r end
  end
  f:close()
  return list
end

return _M
