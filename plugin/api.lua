-- Admin API endpoints of canary-router (Kong loads
-- kong.plugins.canary-router.api and mounts these routes).  They read and
-- change the engine's segment only, never Kong's database, so they work
-- the same in DB-less mode, and on the node that serves the call.

local status = require "kong.plugins.canary-router.status"
local runtime = require "kong.plugins.canary-router.runtime"
local cluster = require "kong.plugins.canary-router.cluster"
local decisions = require "kong.plugins.canary-router.decisions"

local ACTIONS = { promote = true, pause = true, resume = true, abort = true }

return {
  ["/canary-router/status"] = {
    GET = function()
      return kong.response.exit(200, status.collect())
    end,
  },

  -- Like `kubectl argo rollouts promote|pause|resume|abort`.
  -- POST /canary-router/{plugin id}/promote?full=true jumps to the end.
  ["/canary-router/:plugin/:action"] = {
    POST = function(self)
      local action = self.params.action
      if not ACTIONS[action] then
        return kong.response.exit(404, {
          message = "unknown action '" .. tostring(action) ..
                    "'; expected promote, pause, resume or abort",
        })
      end
      local c = runtime.instance(self.params.plugin)
      local seg = runtime.state.seg
      if not c then
        return kong.response.exit(404, {
          message = "no canary-router instance with id '" ..
                    tostring(self.params.plugin) .. "'",
        })
      end
      if not (seg and c.route) then
        return kong.response.exit(503, {
          message = "canary-router segment unavailable: " ..
                    tostring(runtime.state.seg_err),
        })
      end
      if action == "promote" then
        local full = self.params.full
        if full == true or full == "true" or full == "1" then
          action = "promote_full"
        end
      end
      if c.cluster then
        -- Cluster scope: for every node, through Redis.
        local ok, seq_or_err, code = cluster.action(c, seg, action)
        if not ok then
          return kong.response.exit(code, { message = seq_or_err })
        end
        decisions.report(c, seg, seq_or_err)
        return kong.response.exit(200, status.instance(c))
      end
      local ok, seq_or_err, kind = seg:prog_action(c.route, action)
      if kind == "busy" then
        -- Another worker is changing this route right now; nothing was
        -- done, and the engine never waits for it.
        return kong.response.exit(503, { message = seq_or_err },
                                  { ["Retry-After"] = "1" })
      end
      if not ok then
        return kong.response.exit(kind == "state" and 409 or 500,
                                  { message = seq_or_err })
      end
      -- The decision this action recorded: logged and notified by this
      -- worker, the one that made it.
      decisions.report(c, seg, seq_or_err)
      return kong.response.exit(200, status.instance(c))
    end,
  },
}
