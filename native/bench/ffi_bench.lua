-- native/bench/ffi_bench.lua - the engine through LuaJIT FFI inside nginx,
-- against the mechanisms the alternatives use, in the same worker and the
-- same run.  Loaded by the throwaway nginx that stage_ffi.sh generates;
-- GET /bench?n=ITERS&rounds=R answers "name value unit" lines.
--
-- Every figure is the lowest ns/op over R rounds of n iterations (each
-- round runs every benchmark once, ours and the baselines interleaved, so
-- a burst of load from elsewhere on the machine hits both).  Each
-- benchmark has its own loop so that LuaJIT compiles one trace per loop
-- with the operation inlined, as it would on a request path.
--
-- Ours (plugin/engine.lua, libcanary):
--   pick              seg:pick(route)               non-sticky, 90/10
--   pick_sticky       seg:pick(route, key)          1024 distinct 36-byte keys
--   record            seg:record(route, stat, us, status, trace source), by
--                     the upstream's statistics handle, as the handler does
--   trace_id          engine.trace_generate()       32 hex chars as a Lua string
--   trace_id_no_string canary_trace_generate(buf, NULL), no Lua string made
--   trace_id_tp       engine.trace_generate(true)   + a W3C traceparent
--   window_quantile   canary_hist_quantile(now, before, 0.99) on a window
--   summary           seg:summary(route, up)        snapshot + p50/p95/p99 + table
--
-- Baselines (what the alternatives do, written as they write it):
--   pick_lua_random   math.random(1, 10000) over cumulative weights
--   pick_sticky_crc32 ngx.crc32_short(key) % 10000 over cumulative weights
--                     (the shape of a hash-on-header balancer / split_clients)
--   record_shdict     ngx.shared.DICT:incr per counter: latency bucket
--                     (Kong's prometheus boundaries, linear scan), latency
--                     sum and status-class counter; full metric names with
--                     labels, built once and cached as Kong's exporter does
--   record_worker     the same three increments into a per-worker Lua table
--                     (what Kong's prometheus plugin does since 2.x with
--                     resty.counter, flushing to the shared dict every second)
--   uuid_lua          resty.jit-uuid generate_v4 (Kong's utils.uuid): 16
--                     math.random bytes, bit.tohex, string.format
--   quantile_shdict   dict:get of the 14 Kong bucket counters + Prometheus'
--                     histogram_quantile interpolation (what a Lua gate
--                     on Kong's metrics would have to do)

local ffi = require "ffi"
local bit = require "bit"
local engine = require "kong.plugins.canary-router.engine"

local ngx = ngx
local random = math.random
local band, bor, tohex = bit.band, bit.bor, bit.tohex
local fmt = string.format
local crc32 = ngx.crc32_short

ffi.cdef [[
struct bench_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct bench_timespec *ts);
]]
local ts = ffi.new("struct bench_timespec")
local function now_ns()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local _M = {}

local KONG_BOUNDS = { 25, 50, 80, 100, 250, 400, 700, 1000, 2000, 5000,
                      10000, 30000, 60000 } -- ms, Kong's prometheus plugin
local NB = #KONG_BOUNDS

local st -- set up once per worker

local function setup()
  if st then return st end
  assert(engine.load())
  local path = ngx.config.prefix() .. "/bench.seg"
  os.remove(path)
  local seg = assert(engine.open(path, { max_routes = 8, max_upstreams = 4 }))
  local route = assert(seg:claim("bench", "bench"))
  assert(seg:publish(route, { "automation-service", "automation-service-canary" },
                     { 9000, 1000 }))
  -- The library engine.lua loaded, for the calls it does not wrap.
  local C = ffi.load(package.searchpath("libcanary", package.cpath))
  math.randomseed(42)
  local keys, lat = {}, {}
  for i = 1, 1024 do
    keys[i] = fmt("%08x-%04x-4%03x-a%03x-%012x", random(0, 0x7fffffff), i, i,
                  i, random(0, 0x7fffffff))
    lat[i] = 200 + random(0, 199999) -- 0.2 .. 200 ms, in us
  end
  -- The canary's statistics handle, as the handler keeps it per request.
  local stat = assert(seg:read(route)).stats[2]
  -- A window for the quantile: snapshot, record 100k more, snapshot.
  local before = ffi.new("struct canary_hist_snapshot")
  local now = ffi.new("struct canary_hist_snapshot")
  for i = 1, 100000 do seg:record(route, stat, lat[i % 1024 + 1], 200, 2) end
  assert(C.canary_hist_snapshot(seg.h, route, 1, before) == 0)
  for i = 1, 100000 do seg:record(route, stat, lat[(i * 7) % 1024 + 1], 200, 2) end
  assert(C.canary_hist_snapshot(seg.h, route, 1, now) == 0)

  local dict = ngx.shared.bench_prom
  local labels = 'service="automation-service",route="ai",workspace="default"'
  local bucket_keys = {}
  for k = 1, NB do
    bucket_keys[k] = fmt('kong_upstream_latency_ms_bucket{%s,le="%05.1f"}',
                         labels, KONG_BOUNDS[k])
  end
  bucket_keys[NB + 1] = 'kong_upstream_latency_ms_bucket{' .. labels .. ',le="+Inf"}'
  local status_keys = {}
  for c = 1, 5 do
    status_keys[c] = 'kong_http_requests_total{' .. labels .. ',code="' .. c .. 'xx"}'
  end
  -- Prometheus-side state for the quantile baseline: cumulative counts.
  local cum_keys = {}
  for k = 1, NB + 1 do
    cum_keys[k] = "cum:" .. bucket_keys[k]
    local c = 0
    for i = 1, 1024 do
      if lat[i] / 1000 <= (KONG_BOUNDS[k] or math.huge) then c = c + 1 end
    end
    dict:set(cum_keys[k], c * 1000)
  end

  st = {
    seg = seg, route = route, stat = stat, C = C, keys = keys, lat = lat,
    before = before, now = now, qout = ffi.new("double[1]"),
    idbuf = ffi.new("char[33]"),
    dict = dict, bucket_keys = bucket_keys,
    sum_key = 'kong_upstream_latency_ms_sum{' .. labels .. '}',
    status_keys = status_keys, cum_keys = cum_keys,
    worker = {},
  }
  return st
end

-- ---- ours ---------------------------------------------------------------

local B = {}

B.ffi_pick_ns = function(s, n)
  local seg, route, acc = s.seg, s.route, 0
  for _ = 1, n do
    local idx = seg:pick(route)
    acc = acc + idx
  end
  return acc
end

B.ffi_pick_sticky_ns = function(s, n)
  local seg, route, keys, acc = s.seg, s.route, s.keys, 0
  for i = 1, n do
    local idx = seg:pick(route, keys[band(i, 1023) + 1])
    acc = acc + idx
  end
  return acc
end

B.ffi_record_ns = function(s, n)
  local seg, route, stat, lat = s.seg, s.route, s.stat, s.lat
  for i = 1, n do
    seg:record(route, stat, lat[band(i, 1023) + 1], 200, 2)
  end
  return 0
end

B.ffi_trace_id_ns = function(_, n)
  local gen, acc = engine.trace_generate, 0
  for _ = 1, n do
    local id = gen()
    acc = acc + #id
  end
  return acc
end

-- The C call alone, into a buffer, without making a Lua string: shows how
-- much of trace_id is LuaJIT interning a new 32-byte string (which the
-- Lua UUID pays too).
B.ffi_trace_id_no_string_ns = function(s, n)
  local C, buf, acc = s.C, s.idbuf, 0
  for _ = 1, n do
    C.canary_trace_generate(buf, nil)
    acc = acc + buf[0]
  end
  return acc
end

B.ffi_trace_id_traceparent_ns = function(_, n)
  local gen, acc = engine.trace_generate, 0
  for _ = 1, n do
    local id, tp = gen(true)
    acc = acc + #id + #tp
  end
  return acc
end

B.ffi_window_quantile_ns = function(s, n)
  local C, now, before, out, acc = s.C, s.now, s.before, s.qout, 0
  for _ = 1, n do
    C.canary_hist_quantile(now, before, 0.99, out)
    acc = acc + out[0]
  end
  return acc
end

B.ffi_summary_ns = function(s, n)
  local seg, route, acc = s.seg, s.route, 0
  for _ = 1, n do
    local t = seg:summary(route, 2)
    acc = acc + t.p99_us
  end
  return acc
end

-- ---- baselines ----------------------------------------------------------

local CUM = { 9000, 10000 }

B.baseline_ffi_pick_lua_random_ns = function(_, n)
  local cum, acc = CUM, 0
  for _ = 1, n do
    local r, k = random(1, 10000), 1
    while cum[k] < r do k = k + 1 end
    acc = acc + k
  end
  return acc
end

B.baseline_ffi_pick_sticky_crc32_ns = function(s, n)
  local cum, keys, acc = CUM, s.keys, 0
  for i = 1, n do
    local r, k = crc32(keys[band(i, 1023) + 1]) % 10000 + 1, 1
    while cum[k] < r do k = k + 1 end
    acc = acc + k
  end
  return acc
end

B.baseline_ffi_record_shdict_ns = function(s, n)
  local dict, bounds, bkeys, lat = s.dict, KONG_BOUNDS, s.bucket_keys, s.lat
  local sum_key, skey = s.sum_key, s.status_keys[2]
  for i = 1, n do
    local ms = lat[band(i, 1023) + 1] / 1000
    local k = 1
    while k <= NB and ms > bounds[k] do k = k + 1 end
    dict:incr(bkeys[k], 1, 0)
    dict:incr(sum_key, ms, 0)
    dict:incr(skey, 1, 0)
  end
  return 0
end

B.baseline_ffi_record_worker_table_ns = function(s, n)
  local t, bounds, bkeys, lat = s.worker, KONG_BOUNDS, s.bucket_keys, s.lat
  local sum_key, skey = s.sum_key, s.status_keys[2]
  for i = 1, n do
    local ms = lat[band(i, 1023) + 1] / 1000
    local k = 1
    while k <= NB and ms > bounds[k] do k = k + 1 end
    local key = bkeys[k]
    t[key] = (t[key] or 0) + 1
    t[sum_key] = (t[sum_key] or 0) + ms
    t[skey] = (t[skey] or 0) + 1
  end
  return 0
end

-- resty.jit-uuid generate_v4, as Kong's utils.uuid.
local function uuid_v4()
  return (fmt("%s%s%s%s-%s%s-%s%s-%s%s-%s%s%s%s%s%s",
              tohex(random(0, 255), 2), tohex(random(0, 255), 2),
              tohex(random(0, 255), 2), tohex(random(0, 255), 2),
              tohex(random(0, 255), 2), tohex(random(0, 255), 2),
              tohex(bor(band(random(0, 255), 0x0F), 0x40), 2),
              tohex(random(0, 255), 2),
              tohex(bor(band(random(0, 255), 0x3F), 0x80), 2),
              tohex(random(0, 255), 2),
              tohex(random(0, 255), 2), tohex(random(0, 255), 2),
              tohex(random(0, 255), 2), tohex(random(0, 255), 2),
              tohex(random(0, 255), 2), tohex(random(0, 255), 2)))
end

B.baseline_ffi_uuid_lua_ns = function(_, n)
  local acc = 0
  for _ = 1, n do
    local id = uuid_v4()
    acc = acc + #id
  end
  return acc
end

B.baseline_ffi_quantile_shdict_ns = function(s, n)
  local dict, ckeys, bounds, acc = s.dict, s.cum_keys, KONG_BOUNDS, 0
  local counts = {}
  for _ = 1, n do
    for k = 1, NB + 1 do counts[k] = dict:get(ckeys[k]) end
    -- histogram_quantile(0.99, ...)
    local total = counts[NB + 1]
    local rank = 0.99 * total
    local b = 1
    while b <= NB and counts[b] < rank do b = b + 1 end
    local v
    if b > NB then
      v = bounds[NB]
    else
      local lo, below = 0, 0
      if b > 1 then lo, below = bounds[b - 1], counts[b - 1] end
      v = lo + (bounds[b] - lo) * (rank - below) / (counts[b] - below)
    end
    acc = acc + v
  end
  return acc
end

-- Order of one round: each of ours next to its baseline.
local ORDER = {
  "ffi_pick_ns", "baseline_ffi_pick_lua_random_ns",
  "ffi_pick_sticky_ns", "baseline_ffi_pick_sticky_crc32_ns",
  "ffi_record_ns", "baseline_ffi_record_shdict_ns",
  "baseline_ffi_record_worker_table_ns",
  "ffi_trace_id_ns", "ffi_trace_id_no_string_ns", "ffi_trace_id_traceparent_ns",
  "baseline_ffi_uuid_lua_ns",
  "ffi_window_quantile_ns", "baseline_ffi_quantile_shdict_ns",
  "ffi_summary_ns",
}

function _M.run()
  local n = tonumber(ngx.var.arg_n) or 1000000
  local rounds = tonumber(ngx.var.arg_rounds) or 3
  local s = setup()
  local best, sink = {}, 0
  -- Warm-up: let every loop be recorded and compiled before timing.
  for _, name in ipairs(ORDER) do sink = sink + B[name](s, 2000) end
  for _ = 1, rounds do
    for _, name in ipairs(ORDER) do
      local t0 = now_ns()
      sink = sink + B[name](s, n)
      local dt = (now_ns() - t0) / n
      if not best[name] or dt < best[name] then best[name] = dt end
    end
  end
  for _, name in ipairs(ORDER) do
    ngx.say(fmt("%s %.2f ns", name, best[name]))
  end
  ngx.log(ngx.INFO, "ffi_bench sink ", sink, " jit ", jit.version,
          " status ", tostring((jit.status())))
  ngx.say(fmt("ffi_bench_iterations %d iterations", n))
end

return _M
