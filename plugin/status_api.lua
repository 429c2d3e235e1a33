-- Status listener endpoints (Kong loads kong.plugins.canary-router.status_api).
-- Metrics live at /canary-router/metrics: Kong's bundled prometheus plugin
-- already owns /metrics on this listener.
--
-- With many routes the exposition is megabytes: written in one go it
-- would hold this worker's event loop (and the requests it proxies) for
-- tens of milliseconds.  So it goes out in pieces, with a pause between
-- pieces in which the worker serves its other requests.  A piece
-- is as many of the engine's bounded steps (about 0.1 ms each) as fit in
-- STEP_US: yielding after every step cost more than the steps (a string,
-- a write and a trip through the event loop each, 110 of them for 1000
-- routes), and so did looking at every instance for cluster series in
-- every piece.  The pause lasts PAUSE times as long as the piece before
-- it (1 ms at least), so that while a scrape runs it takes at most a
-- fifth of the worker's time: with a yield of no length (ngx.sleep(0))
-- the scrape took every moment the worker had no request ready, a
-- thousand routes' scrape (about 10 ms of CPU and 7 MB through the
-- socket) came in one burst, and requests arriving behind it queued; a
-- paced scrape takes longer (75 ms instead of 20 for 1000 routes) but
-- the requests around it wait a third as long (p50 while scraped 10
-- times a second, open loop at half the worker's capacity).  Without
-- OpenResty's delayed-events patch (plain nginx with the lua module)
-- ngx.sleep(0) also logged a warning for every piece.  The scrape ends
-- with a comment line saying how long it
-- held the event loop at most and in all, in wall time (what requests
-- waiting on this worker saw, including whatever preempted it) and in
-- the worker's CPU time (what the scrape itself cost), which `make bench`
-- reads.

local runtime = require "kong.plugins.canary-router.runtime"
local cluster = require "kong.plugins.canary-router.cluster"
local engine = require "kong.plugins.canary-router.engine"

local now_us = engine.now_us
local cpu_us = engine.cpu_us
local max = math.max

local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
-- Engine work between two yields, in microseconds: with the step that
-- crosses it, a scrape holds the event loop well under 2 ms at a time.
local STEP_US = 200
-- The pause after a piece, in multiples of the piece's own time.
local PAUSE = 4

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
      local t0, c0 = now_us(), cpu_us()
      local scrape, err = seg:scrape()
      local piece, more
      if scrape then piece, more = scrape:next(STEP_US) end
      if not piece then
        return kong.response.exit(500, { message = err or more })
      end
      ngx.status = 200
      ngx.header["Content-Type"] = CONTENT_TYPE
      ngx.print(ENGINE_UP, "1\n")
      -- Cluster-scoped instances add their degraded series to the piece
      -- that holds their route's other states: found once per scrape.
      local clustered
      for _, c in pairs(runtime.instances()) do
        if c.cluster then
          clustered = clustered or {}
          clustered[#clustered + 1] = c
        end
      end
      local pieces, longest, busy, longest_cpu, busy_cpu = 1, 0, 0, 0, 0
      while true do
        if clustered then piece = cluster.metrics(piece, clustered, seg) end
        if piece ~= "" then ngx.print(piece) end
        local held, cpu = now_us() - t0, cpu_us() - c0
        longest, busy = max(longest, held), busy + held
        longest_cpu, busy_cpu = max(longest_cpu, cpu), busy_cpu + cpu
        if not more then break end
        -- Let the worker serve its other requests before the next piece.
        ngx.sleep(max(0.001, PAUSE * (now_us() - t0) / 1e6))
        t0, c0 = now_us(), cpu_us()
        piece, more = scrape:next(STEP_US)
        if not piece then
          -- The status line is gone: end the body short, which a
          -- scraper sees as a failed scrape, and say why in the log.
          kong.log.err("canary-router metrics render failed: ", more)
          return ngx.exit(ngx.ERROR)
        end
        pieces = pieces + 1
      end
      ngx.print(("# canary-router scrape: %d pieces, longest %.0f us, %.0f us in all; " ..
                 "CPU: longest %.0f us, %.0f us in all\n")
                :format(pieces, longest, busy, longest_cpu, busy_cpu))
      -- The response is written: return without kong.response.exit(),
      -- as Kong's prometheus plugin does.
    end,
  },
}
