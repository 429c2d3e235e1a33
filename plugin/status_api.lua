-- Status listener endpoints (Kong loads kong.plugins.canary-router.status_api).
-- Metrics live at /canary-router/metrics: Kong's bundled prometheus plugin
-- already owns /metrics on this listener.
--
-- With many routes the exposition is megabytes: written in one go it
-- would hold this worker's event loop (and the requests it proxies) for
-- tens of milliseconds.  So it goes out in pieces, each a bounded step of
-- the engine's render, with a yield to the event loop between pieces, as
-- Kong's prometheus plugin does.

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
      if not seg then
        return kong.response.exit(200, ENGINE_UP .. "0\n",
                                  { ["Content-Type"] = CONTENT_TYPE })
      end
      local scrape, err = seg:scrape()
      local piece, more
      if scrape then piece, more = scrape:next() end
      if not piece then
        return kong.response.exit(500, { message = err or more })
      end
      ngx.status = 200
      ngx.header["Content-Type"] = CONTENT_TYPE
      ngx.print(ENGINE_UP, "1\n")
      local instances = runtime.instances()
      while true do
        -- Cluster-scoped instances add their degraded series to the
        -- piece that holds their route's other states.
        piece = cluster.metrics(piece, instances, seg)
        if piece ~= "" then ngx.print(piece) end
        if not more then break end
        -- Let the worker serve its other requests before the next piece.
        ngx.sleep(0)
        piece, more = scrape:next()
        if not piece then
          -- The status line is gone: end the body short, which a
          -- scraper sees as a failed scrape, and say why in the log.
          kong.log.err("canary-router metrics render failed: ", more)
          return ngx.exit(ngx.ERROR)
        end
      end
      -- The response is written: return without kong.response.exit(),
      -- as Kong's prometheus plugin does.
    end,
  },
}
