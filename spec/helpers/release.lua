-- spec/helpers/release.lua: the runbook's release as a declarative config
-- (the shape of kong/kong.yml) for the specs: service automation-service
-- with route `ai` on /ai, upstreams automation-service (stable) and
-- automation-service-canary on 127.0.0.1 ports, and one canary-router
-- instance with a fixed id.
--
--   local release = require "helpers.release"
--   host.start { config = release.config(id, { upstreams = ... }, { 19001, 19002 }) }

local _M = {
  STABLE = "automation-service",
  CANARY = "automation-service-canary",
}

-- ports: { stable, canary }, Kong's demo defaults 9001 / 9002.
function _M.config(plugin_id, plugin_config, ports)
  ports = ports or { 9001, 9002 }
  return {
    _format_version = "3.0",
    services = { {
      name = "automation-service",
      url = "http://automation-service",
      routes = { { name = "ai", paths = { "/ai" } } },
      plugins = { { name = "canary-router", id = plugin_id, config = plugin_config } },
    } },
    upstreams = {
      { name = _M.STABLE, targets = { { target = "127.0.0.1:" .. ports[1] } } },
      { name = _M.CANARY, targets = { { target = "127.0.0.1:" .. ports[2] } } },
    },
  }
end

-- The two-upstream weights table: stable %, canary %.
function _M.weights(stable, canary)
  return { { name = _M.STABLE, weight = stable }, { name = _M.CANARY, weight = canary } }
end

-- The seq of the newest decision in `decisions` (newest first), 0 for none.
function _M.newest_seq(decisions)
  local d = (decisions or {})[1]
  return d and d.seq or 0
end

-- How fast a progression answers a change, in windows rather than wall
-- time: of the decisions in `decisions` (a decision log, newest first)
-- made after decision `since` (a seq), the windows that passed and
-- failed before the newest one.  Windows too small to judge
-- (inconclusive) count in neither.
function _M.judged_before_newest(decisions, since)
  local passed, failed, newest = 0, 0, nil
  for _, d in ipairs(decisions or {}) do
    if d.seq > since then
      if not newest then
        newest = d
      elseif d.verdict == "pass" then
        passed = passed + 1
      elseif d.verdict == "fail" then
        failed = failed + 1
      end
    end
  end
  return passed, failed, newest
end

return _M
