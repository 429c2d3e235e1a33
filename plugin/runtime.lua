-- Per-worker runtime of canary-router: the attached segment and each
-- plugin instance's config compiled into what the request path needs
-- (route slot, integer weights, header names, matchers).  Everything
-- here runs in init_worker / configure or on the first request that sees
-- a new config table; the request path only indexes the results.
--
-- Uses the `kong` global for logging and configuration only; tests stub it.

local engine = require "kong.plugins.canary-router.engine"
local cidr = require "kong.plugins.canary-router.cidr"

local floor = math.floor
local concat = table.concat
local sort = table.sort
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local type = type
local setmetatable = setmetatable
local ngx_null = ngx and ngx.null

-- Optional fields arrive as nil, or as ngx.null from a JSON-stored config.
local function opt(v)
  if v == ngx_null then return nil end
  return v
end

local _M = {}

local DEFAULT_MAX_ROUTES = 64

local state = {
  seg = nil,        -- engine segment, nil when unavailable
  seg_err = nil,    -- why not
  lib_ok = false,   -- libcanary loaded (trace ids work without a segment)
  warned = {},      -- messages already logged once
}
_M.state = state

-- Compiled configs, keyed by the config table Kong hands to the phases.
-- Weak keys: a replaced config's compilation goes with it.
local compiled = setmetatable({}, { __mode = "k" })
-- Compiled configs by plugin instance key, for the Admin API.
local by_key = {}
-- Compiled configs whose claim or publish found another worker holding
-- the segment's lock: retried by the periodic tick, never waited for.
local pending = {}

local function log_once(level, msg)
  if state.warned[msg] then return end
  state.warned[msg] = true
  kong.log[level](msg)
end
_M.log_once = log_once

local function env_number(name, default)
  local v = tonumber(os.getenv(name) or "")
  if v and v >= 1 and v % 1 == 0 then return v end
  return default
end

-- Where the segment lives: $CANARY_ROUTER_SEGMENT (Kong workers see it
-- with `nginx_main_env = CANARY_ROUTER_SEGMENT`), else the Kong prefix.
function _M.segment_path()
  local p = os.getenv("CANARY_ROUTER_SEGMENT")
  if p and p ~= "" then return p end
  local prefix = kong and kong.configuration and kong.configuration.prefix
  return (prefix or ".") .. "/canary-router.seg"
end

-- init_worker: load the library and attach the segment.  Never raises;
-- failures leave the plugin failing open and are logged once, loudly.
function _M.attach()
  if state.seg then return state.seg end
  local ok, err = engine.load()
  if not ok then
    state.seg_err = err
    log_once("err", "canary-router engine unavailable, routing every " ..
                    "request to its stable upstream: " .. err)
    return nil
  end
  state.lib_ok = true
  local path = _M.segment_path()
  local seg, serr = engine.open(path, {
    max_routes = env_number("CANARY_ROUTER_MAX_ROUTES", DEFAULT_MAX_ROUTES),
    max_upstreams = engine.MAX_UPSTREAMS,
  })
  if not seg then
    state.seg_err = serr
    log_once("err", "canary-router cannot attach its segment " .. path ..
                    ", routing every request to its stable upstream: " ..
                    serr)
    return nil
  end
  if seg.opened == "recreated" then
    log_once("warn", "canary-router segment " .. path ..
                     " was unusable and has been recreated: " ..
                     tostring(seg.why))
  end
  state.seg = seg
  state.seg_err = nil
  return seg
end

-- Deterministic text of a Lua value (sorted keys), for config hashes.
local function canonical(v, out)
  local t = type(v)
  if t == "table" then
    local keys = {}
    for k in pairs(v) do
      if type(k) ~= "string" or k:sub(1, 2) ~= "__" then
        keys[#keys + 1] = k
      end
    end
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      out[#out + 1] = tostring(k) .. "="
      canonical(v[k], out)
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
  else
    out[#out + 1] = tostring(v)
  end
  return out
end

-- djb2-style hash of a string kept below 2^47, so h * 33 stays exact in
-- a double; for the config hash and for instance keys too long for a
-- route slot.
local function hash(s)
  local h = 5381
  for i = 1, #s do
    h = (h * 33 + s:byte(i)) % 140737488355213
  end
  return h
end
_M.hash = hash

-- The route slot key of a plugin instance: its entity id when Kong gives
-- one (`__plugin_id`), else its cache key, else its config.
local function instance_key(conf)
  local key = conf.__plugin_id or conf.__key__
  if type(key) ~= "string" or key == "" then
    key = "cfg-" .. hash(concat(canonical(conf.upstreams, {})))
  end
  if #key > 63 then key = "h-" .. hash(key) end
  return key
end

local function cookie_pattern(name)
  name = opt(name)
  if not name then return nil end
  return "%f[^;%s]" .. name:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") ..
         "=([^;]*)"
end

-- Claims the instance's route slot and publishes its weights.  The
-- engine tries its locks once; when another worker holds one (most often
-- publishing this very config) the instance is pending and the tick
-- tries again.  Meanwhile a claimed route serves its published table.
local function install(c)
  local seg = state.seg
  if not seg then return end
  local route, err, busy = seg:claim(c.key, "")
  if not route then
    if busy then
      pending[c] = true
      return
    end
    pending[c] = nil
    log_once("err", "canary-router cannot claim a route slot for " ..
                    c.key .. ": " .. err .. "; failing open to " .. c.stable)
    return
  end
  local gen, perr, pbusy = seg:publish(route, c.names, c.weights, c.hash,
                                       c.prog)
  if gen or pbusy then
    c.route = route
    pending[c] = pbusy and true or nil
    return
  end
  pending[c] = nil
  log_once("err", "canary-router cannot publish weights for " ..
                  c.key .. ": " .. perr)
end

-- Turns a config into its compiled form and publishes its weights.
local function compile(conf)
  local c = {
    key = instance_key(conf),
    conf = conf,
    names = {},
    weights = {},
    index_of = {},
    route_id = conf.route_id,
    service_id = conf.service_id,
  }
  for i, u in ipairs(conf.upstreams) do
    c.names[i] = u.name
    c.weights[i] = floor(u.weight * 100 + 0.5)
    c.index_of[u.name] = i
  end
  c.stable = c.names[1]
  local prog = opt(conf.progression)
  c.canary = (prog and opt(prog.canary)) or c.names[#c.names]

  local sticky = opt(conf.sticky) or {}
  c.sticky_sources = {}
  if sticky.by and sticky.by ~= "none" then
    c.sticky_sources[1] = sticky.by
  end
  for _, s in ipairs(opt(sticky.fallback) or {}) do
    c.sticky_sources[#c.sticky_sources + 1] = s
  end
  c.sticky_header = opt(sticky.header)
  c.sticky_cookie = cookie_pattern(sticky.cookie)

  local ov = opt(conf.override) or {}
  c.override_header = opt(ov.header)
  c.override_cookie = cookie_pattern(ov.cookie)
  local allow = opt(ov.allow_from)
  if allow and #allow > 0 then
    local m, err = cidr.compile(allow)
    -- The schema already rejected bad CIDRs; an engine-side failure
    -- here means allow nobody rather than everybody.
    c.allow_from = m or {}
    if not m then log_once("err", "canary-router: " .. err) end
  end

  local tr = opt(conf.trace) or {}
  c.trace_header = opt(tr.header) or "X-Trace-Id"
  c.traceparent = tr.traceparent ~= false
  c.echo = tr.echo_downstream ~= false
  c.response_header = opt(conf.response_header)

  c.hash = hash(concat(canonical({ conf.upstreams, conf.progression }, {})))
  c.prog = _M.progression(prog, c.index_of)

  install(c)
  compiled[conf] = c
  by_key[c.key] = c
  return c
end

-- The plugin's `progression` record in engine units (percentages to
-- 0..10000 weights and fractions, seconds and ms to ms and us), or nil.
function _M.progression(p, index_of)
  if p == nil or p == ngx_null or opt(p.canary) == nil then return nil end
  local steps = {}
  for i, pct in ipairs(opt(p.steps) or {}) do steps[i] = floor(pct * 100 + 0.5) end
  local function rate(v) return v and v ~= ngx_null and v / 100 or nil end
  local function us(v) return v and v ~= ngx_null and v * 1000 or nil end
  return {
    canary = index_of[p.canary],
    steps = steps,
    interval_ms = floor((opt(p.interval) or 300) * 1000),
    min_requests = opt(p.min_requests) or 0,
    failure_limit = opt(p.failure_limit) or 3,
    on_success = opt(p.on_success) or "promote",
    max_error_rate = rate(p.max_error_rate),
    rollback_error_rate = rate(p.rollback_error_rate),
    max_p95_us = us(p.max_p95_ms),
    max_p99_us = us(p.max_p99_ms),
  }
end

-- One progression tick for every instance with a progression; logs
-- decisions that changed weights or state.  Runs from a timer.
function _M.tick()
  local seg = state.seg
  if not seg then return end
  for c in pairs(pending) do
    if by_key[c.key] == c then
      install(c)
    else
      pending[c] = nil -- replaced or removed since
    end
  end
  for _, c in pairs(by_key) do
    if c.prog and c.route then
      local rc, st, busy = seg:prog_tick(c.route)
      if rc == 2 then
        local level = st.state == "rolled_back" and "warn" or "notice"
        kong.log[level]("canary-router ", c.key, ": ", st.state, " at step ",
                        st.step, "/", st.steps, ": ", st.reason)
      elseif not rc and not busy then
        log_once("err", "canary-router progression tick failed for " ..
                        c.key .. ": " .. tostring(st))
      end
    end
  end
end

-- The compiled instance with this plugin id, or nil.
function _M.instance(key)
  return by_key[key]
end

-- The compiled form of `conf`, compiling it on first sight.
function _M.get(conf)
  return compiled[conf] or compile(conf)
end

-- configure(configs): compile and publish every instance's config.
-- `configs` is nil when no instance is enabled.
function _M.configure(configs)
  if not state.seg and not state.seg_err then _M.attach() end
  -- `configs` is the complete set: instances missing from it are gone.
  by_key = {}
  for _, conf in ipairs(configs or {}) do
    local c = compiled[conf] or compile(conf)
    by_key[c.key] = c
  end
end

-- Names of the route's upstreams under generation `gen` (cached).
function _M.names(c, gen)
  return state.seg:names(c.route, gen)
end

-- Compiled instances by key (Admin API).
function _M.instances()
  return by_key
end

return _M
