-- Status listener endpoints (Kong loads kong.plugins.canary-router.status_api).
-- Metrics live at /canary-router/metrics: Kong's bundled prometheus plugin
-- already owns /metrics on this listener.

local runtime = require "kong.plugins.canary-router.runtime"
local cluster = require "kong.plugins.canary-router.cluster"

local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

-- Served even when the engine is unavailable, so that "no canary traffic
-- at all" is an alert, not a silence.
local ENGINE_UP = "# HELP canary_engine_up Whether this gateway worker has the " ..
                  "canary-router engine and segment (1) or routes every request " ..
                  "to its stable upstream (0).\n# TYPE canary_engine_up gauge\n" ..
                  "canary_engine_up "

return {
  ["/canary-router/metrics"] = {
    GET = function()
      local seg = runtime.state.seg or runtime.attach()
      local headers = { ["Content-Type"] = CONTENT_TYPE }
      if not seg then
        return kong.response.exit(200, ENGINE_UP .. "0\n", headers)
      end
      local body, err = seg:render()
      if not body then
        return kong.response.exit(500, { message = err })
      end
      body = cluster.metrics(body, runtime.instances(), seg)
      return kong.response.exit(200, ENGINE_UP .. "1\n" .. body, headers)
    end,
  },
}
