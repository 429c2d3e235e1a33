-- Status of every canary-router instance this worker runs, as served by
-- the Admin API (GET /canary-router/status) and mirrored by
-- `canarystat --json`.

local runtime = require "kong.plugins.canary-router.runtime"
local cluster = require "kong.plugins.canary-router.cluster"
local cjson = require "cjson.safe"

local pairs = pairs
local setmetatable = setmetatable
local sort = table.sort

local _M = {}

local function ms(us)
  return math.floor(us / 10 + 0.5) / 100  -- microseconds -> ms, 2 decimals
end

-- One instance: weights (percent), generation, per-upstream figures.
function _M.instance(c)
  local seg = runtime.state.seg
  local out = {
    plugin_id = c.key,
    stable = c.stable,
    canary = c.canary,
    upstreams = {},
  }
  if not (seg and c.route) then
    out.error = runtime.state.seg_err or "route not published"
    return out
  end
  local v = seg:read(c.route)
  if not v then
    out.error = "route unreadable"
    return out
  end
  out.route = v.label ~= "" and v.label or v.key
  -- The segment's progression, not this worker's compiled config: a
  -- worker that has not rebuilt since a change (Kong's eventual
  -- consistency in DB mode) still reports what every worker routes by.
  local prog = seg:prog_status(c.route)
  if prog and (c.prog or prog.state ~= "none") then
    out.progression = prog
    out.progression.scope = c.cluster and "cluster" or "node"
    out.progression.cluster = cluster.status(c)
    -- The last 50 decisions, newest first, the same for every worker;
    -- an empty log is an empty JSON array where cjson can say so
    -- (OpenResty's, in Kong).
    out.decisions = seg:decisions(c.route)
    if out.decisions and #out.decisions == 0 and cjson.array_mt then
      setmetatable(out.decisions, cjson.array_mt)
    end
  end
  out.generation = v.generation
  out.trace_ids = v.trace
  out.events = v.events
  for i, name in ipairs(v.names) do
    local s = seg:summary(c.route, i) or {}
    out.upstreams[i] = {
      name = name,
      weight = v.weights[i] / 100,
      effective_weight = v.effective[i] / 100,
      requests = s.count,
      errors = s.errors,
      status = s.status,
      error_rate = s.error_rate,
      p50_ms = ms(s.p50_us or 0),
      p95_ms = ms(s.p95_us or 0),
      p99_ms = ms(s.p99_us or 0),
      -- requests an override forced here: not in the figures above,
      -- never judged by the progression's gates
      forced = v.forced[i],
    }
  end
  return out
end

-- All instances, sorted by plugin id.
function _M.collect()
  local list = {}
  for _, c in pairs(runtime.instances()) do
    list[#list + 1] = _M.instance(c)
  end
  sort(list, function(a, b) return a.plugin_id < b.plugin_id end)
  return {
    segment = runtime.segment_path(),
    segment_error = runtime.state.seg_err,
    engine = {
      up = runtime.state.seg ~= nil,
      reason = runtime.state.seg_err,
    },
    data = list,
  }
end

return _M
