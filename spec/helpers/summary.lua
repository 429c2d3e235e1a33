-- spec/helpers/summary.lua: figures for the end-of-`make test` summary.
--
--   local summary = require "helpers.summary"
--   summary.add("reloads", 50)
--
-- Appends one `key n` line to $CANARY_TEST_SUMMARY, or to
-- build/test-summary.txt in the repository; spec/tools/summary.lua adds
-- the lines up per key and prints the block.  Keys in use:
--
--   hostile_inputs   hostile requests and Admin API bodies sent
--   workers_killed   gateway workers killed with SIGKILL
--   reloads          `nginx -s reload`s done under load
--   requests_sent    proxied requests sent (wrk and the specs' own)
--   requests_failed  of those, answered with a 5xx or not at all when
--                    they had to succeed
--   counts_lost      requests answered but missing from
--                    canary_requests_total (expected minus counted)
--   kill_socket_errors  connections cut by a kill -9 of their worker
--                    (not answered; reported, not a failure)

local _M = {}

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helpers/summary%.lua$")) or "."
if ROOT:sub(1, 1) ~= "/" then
  ROOT = os.getenv("PWD") .. "/" .. ROOT
end

function _M.path()
  local p = os.getenv("CANARY_TEST_SUMMARY")
  if p and p ~= "" then return p end
  return ROOT .. "/build/test-summary.txt"
end

--- Appends `key n`.  n must be a non-negative integer.
function _M.add(key, n)
  if type(key) ~= "string" or not key:match("^[%w_]+$") then
    error("summary.add: key must be a word, got " .. tostring(key), 2)
  end
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
    error("summary.add: n must be a non-negative integer, got " .. tostring(n), 2)
  end
  local path = _M.path()
  os.execute("mkdir -p '" .. path:gsub("/[^/]*$", ""):gsub("'", "'\\''") .. "'")
  local f = assert(io.open(path, "a"))
  f:write(("%s %d\n"):format(key, n))
  f:close()
end

return _M
