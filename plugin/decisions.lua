-- What becomes of a progression decision in the worker that made it:
-- one error-log line, and, for a decision that changes state (step up,
-- pause, promote, rollback, abort, resume, blue/green's switch), one
-- notification
-- (notify.lua).  The engine records every decision in the segment, and
-- tells only the caller that recorded it (canary_prog_tick's and
-- canary_prog_action's `decided`), so each decision is reported exactly
-- once, by one worker.
--
-- Uses the `kong` global for logging only; tests stub it.

local notify = require "kong.plugins.canary-router.notify"

local concat = table.concat
local tostring = tostring

local _M = {}

-- Events that change a progression's state; a dry run changes nothing.
local STATE_CHANGES = {
  step_up = true, pause = true, promote = true, rollback = true,
  abort = true, resume = true, switch = true,
}
_M.STATE_CHANGES = STATE_CHANGES

-- The error-log line of a decision.  Nothing in a decision comes from a
-- client or from notify's headers.
function _M.line(c, d)
  local parts = {
    "canary-router ", c.key, ": decision #", tostring(d.seq), " (",
    d.origin, ") at step ", tostring(d.step), ", canary at ",
    tostring(d.step_weight), " %: ",
  }
  if d.verdict then
    parts[#parts + 1] = d.verdict
    parts[#parts + 1] = " -> "
  end
  parts[#parts + 1] = d.action
  parts[#parts + 1] = ": "
  parts[#parts + 1] = d.reason
  return concat(parts)
end

-- The notification of a decision: which instance, and the decision as
-- GET /canary-router/status shows it.
function _M.payload(c, seg, d)
  local v = seg:read(c.route)
  return {
    plugin_id = c.key,
    route = v and (v.label ~= "" and v.label or v.key) or nil,
    stable = c.stable,
    canary = c.canary,
    decision = d,
  }
end

-- Logs decision `seq` of instance `c` and notifies it when it changed
-- state, unless `notify_it` is false (a cluster decision another node
-- sends).  Returns the decision (a plain table) or nil.
function _M.report(c, seg, seq, notify_it)
  local d, err = seg:decision(c.route, seq)
  if not d then
    kong.log.warn("canary-router ", c.key, ": decision #", tostring(seq),
                  " not reported: ", tostring(err))
    return nil
  end
  local changes = STATE_CHANGES[d.event] and not d.dry_run
  local level = changes and (d.event == "rollback" or d.event == "abort")
                and "warn" or "notice"
  kong.log[level](_M.line(c, d))
  if changes and c.notify and notify_it ~= false then
    notify.send(c.notify, _M.payload(c, seg, d),
                "decision #" .. tostring(d.seq) .. " (" .. d.event .. ") of " ..
                c.key)
  end
  return d
end

return _M
