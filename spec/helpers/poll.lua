-- spec/helpers/poll.lua: watching the gateway until something holds.
--
--   local poll = require "helpers.poll"
--   local inst, ok = poll.until_true(function() return poll.instance(host, id) end,
--                                    function(i) return i.progression.step >= 2 end, 3)

local socket = require "socket"

local _M = {}

-- Calls read() every 50 ms until pred(value) holds or `seconds` have
-- passed; returns the last value read and whether pred held.
function _M.until_true(read, pred, seconds)
  local deadline = socket.gettime() + seconds
  local v
  repeat
    v = read()
    if pred(v) then return v, true end
    socket.sleep(0.05)
  until socket.gettime() > deadline
  return v, false
end

-- One plugin instance's entry in GET /canary-router/status (raises when
-- the status API answers otherwise or does not list it).
function _M.instance(host, plugin_id)
  local status, body = host.admin("GET", "/canary-router/status")
  assert(status == 200, "GET /canary-router/status answered " .. tostring(status))
  for _, d in ipairs(body.data) do
    if d.plugin_id == plugin_id then return d end
  end
  error("instance " .. plugin_id .. " not in status")
end

return _M
