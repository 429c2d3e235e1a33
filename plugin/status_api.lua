-- Status listener endpoints (Kong loads kong.plugins.canary-router.status_api).
-- Metrics live at /canary-router/metrics: Kong's bundled prometheus plugin
-- already owns /metrics on this listener.

local runtime = require "kong.plugins.canary-router.runtime"

local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

return {
  ["/canary-router/metrics"] = {
    GET = function()
      local seg = runtime.state.seg or runtime.attach()
      if not seg then
        return kong.response.exit(503, {
          message = "canary-router segment unavailable: " ..
                    tostring(runtime.state.seg_err),
        })
      end
      local body, err = seg:render()
      if not body then
        return kong.response.exit(500, { message = err })
      end
      return kong.response.exit(200, body, { ["Content-Type"] = CONTENT_TYPE })
    end,
  },
}
