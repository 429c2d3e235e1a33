-- Per-worker runtime of canary-router: the attached segment and each
-- plugin instance's config compiled into what the request path needs
-- (route slot, integer weights, header names, matchers).  Everything
-- here runs in init_worker / configure or on the first request that sees
-- a new config table; the request path only indexes the results.
--
-- Uses the `kong` global for logging and configuration only; tests stub it.

local engine = require "kong.plugins.canary-router.engine"
local cidr = require "kong.plugins.canary-router.cidr"
local cluster = require "kong.plugins.canary-router.cluster"
local decisions = require "kong.plugins.canary-router.decisions"
local headers = require "kong.plugins.canary-router.headers"
local notify = require "kong.plugins.canary-router.notify"

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
-- Statistics slots, one per configured upstream: two per route (stable
-- and canary) and room for routes with more upstreams and for renamed
-- upstreams during their grace period.  1000 routes: 55 MB.
local function default_stat_slots(max_routes) return 2 * max_routes + 64 end
-- Progression slots (about 60 KiB each: the window bases and the
-- decision log), one per route whose config has a progression: every
-- route up to 64, and one in 8 beyond.  1000 routes: 189.
local function default_prog_slots(max_routes)
  return math.min(max_routes, 64 + math.floor(max_routes / 8))
end

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
-- the segment's lock: retried from a timer a few milliseconds later (the
-- lock is held for microseconds), never waited for.
local pending = {}
-- The live keys of a retirement that found the claim lock held (nil:
-- none), retried like a pending publish.
local retire_pending = nil
local schedule_retry, retry_busy -- defined with the tick below

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

-- The geometry of a new segment, from the environment (an existing
-- segment keeps its own): the same for the root master that prepares the
-- file and for the workers that open it.
function _M.segment_opts()
  local max_routes = env_number("CANARY_ROUTER_MAX_ROUTES", DEFAULT_MAX_ROUTES)
  return {
    max_routes = max_routes,
    max_upstreams = engine.MAX_UPSTREAMS,
    max_stat_slots = env_number("CANARY_ROUTER_MAX_UPSTREAM_SLOTS",
                                default_stat_slots(max_routes)),
    max_prog_slots = env_number("CANARY_ROUTER_MAX_PROGRESSIONS",
                                default_prog_slots(max_routes)),
    retire_grace_s = env_number("CANARY_ROUTER_RETIRE_GRACE_S",
                                engine.RETIRE_GRACE_S),
  }
end

-- Kong's master (the init phase, before any worker forks) runs as root
-- when its workers run as nginx_user ("kong kong" by default), and the
-- prefix is root's: no worker could create the segment there.  So the
-- master creates (or checks) it and hands it to the workers' user, mode
-- 0600.  Nothing to do for a master that is not root (nginx then keeps
-- the workers as the same user) or outside the init phase.
function _M.prepare_master()
  if not (ngx and ngx.get_phase and ngx.get_phase() == "init") then return end
  local conf = kong and kong.configuration
  if not conf then return end
  local ok, err = engine.load()
  if not ok then
    ngx.log(ngx.ERR, "canary-router engine unavailable: ", err)
    return
  end
  if engine.euid() ~= 0 then return end
  -- nginx_main_user is the `user` directive, nginx_user its older alias.
  -- Kong's conf_loader drops it when it says "nobody", and drops its
  -- default "kong kong" when the system has no kong user: a root master
  -- then runs its workers as nginx's built-in default user, nobody.
  local user = conf.nginx_main_user or conf.nginx_user
  if type(user) ~= "string" or user == "" then user = "nobody" end
  local name, group = user:match("^%s*(%S+)%s*(%S*)")
  local uid, gid, uerr = engine.user_ids(name, group ~= "" and group or nil)
  if not uid then
    ngx.log(ngx.ERR, "canary-router cannot prepare its segment for nginx_user '",
            user, "': ", uerr)
    return
  end
  if uid == 0 then return end
  local path = _M.segment_path()
  local opts = _M.segment_opts()
  opts.uid, opts.gid = uid, gid
  local opened, perr = engine.prepare(path, opts)
  if opened == "recreated" then
    -- the master set the bad file aside: its workers will only attach
    ngx.log(ngx.WARN, "canary-router segment ", path,
            " was unusable and has been recreated: ", tostring(perr))
  elseif not opened then
    ngx.log(ngx.ERR, "canary-router cannot prepare its segment ", path,
            " for nginx_user '", user, "': ", perr)
  end
end

-- While the engine is unavailable every request goes to its stable
-- upstream, so the operator must hear of it for as long as it lasts, not
-- once: an error line at most every DOWN_LOG_SECONDS, the reason in the
-- status API and canary_engine_up 0 in the metrics.
local DOWN_LOG_SECONDS = 60
local down_logged_at = nil

local function engine_down(msg)
  state.seg_err = msg
  local now = ngx and ngx.now and ngx.now() or os.time()
  if down_logged_at and now - down_logged_at < DOWN_LOG_SECONDS then return end
  down_logged_at = now
  kong.log.err(msg)
end

-- Loads the library and attaches the segment.  Never raises; failures
-- leave the plugin failing open to stable, and tick() tries again.
function _M.attach()
  if state.seg then return state.seg end
  local ok, err = engine.load()
  if not ok then
    engine_down("canary-router engine unavailable, routing every " ..
                "request to its stable upstream: " .. err)
    return nil
  end
  state.lib_ok = true
  local path = _M.segment_path()
  local seg, serr = engine.open(path, _M.segment_opts())
  if not seg then
    engine_down("canary-router cannot attach its segment " .. path ..
                ", routing every request to its stable upstream: " .. serr)
    return nil
  end
  if seg.opened == "recreated" then
    log_once("warn", "canary-router segment " .. path ..
                     " was unusable and has been recreated: " ..
                     tostring(seg.why))
  end
  if down_logged_at then
    kong.log.notice("canary-router segment ", path, " attached; routing again")
    down_logged_at = nil
  end
  state.seg = seg
  state.seg_err = nil
  return seg
end

-- Keys Kong's plugins iterator adds to a config (get_plugin_config):
-- not part of what the operator configured.
local INJECTED = {
  route_id = true, service_id = true, consumer_id = true,
  plugin_instance_name = true,
}

-- Deterministic text of a Lua value (sorted keys), for config hashes.
local function canonical(v, out)
  local t = type(v)
  if t == "table" then
    local keys = {}
    for k, x in pairs(v) do
      -- ngx.null (a JSON or database null) is an unset field, like nil.
      if x ~= ngx_null and
         (type(k) ~= "string" or (k:sub(1, 2) ~= "__" and not INJECTED[k])) then
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

local function raw_header(name)
  local l = name:lower()
  return l ~= "host" and l ~= ":authority"
end

local function cookie_pattern(name)
  name = opt(name)
  if not name then return nil end
  -- %z: a cookie first in the header follows the subject's start, which
  -- Lua's frontier sees as a NUL byte.
  return "%f[^;%s%z]" .. name:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") ..
         "=([^;]*)"
end

-- The hash of an instance's routing config (upstreams and progression),
-- from a plugin entity's or a phase's config: what the engine publishes
-- under.  Where notifications go is not part of the progression: changing
-- it must not restart one.
local function config_hash(conf)
  local judged = opt(conf.progression)
  if judged and opt(judged.notify) ~= nil then
    local copy = {}
    for k, v in pairs(judged) do
      if k ~= "notify" then copy[k] = v end
    end
    judged = copy
  end
  return hash(concat(canonical({ conf.upstreams, judged }, {})))
end

-- Turns a config into its compiled form (publish() publishes it).
local function compile(conf)
  local c = {
    key = instance_key(conf),
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
  c.canary = (prog and (opt(prog.canary) or opt(prog.preview))) or
             c.names[#c.names]
  -- Blue/green: green's preview requests come through overrides, and
  -- they are what its pre-promotion window judges, so a request forced
  -- to green is recorded like any other (see handler.lua).
  c.blue_green = prog ~= nil and opt(prog.strategy) == "blue_green"
  c.green = c.blue_green and c.index_of[c.canary] or nil

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
  c.sampled = tr.sampled ~= false
  c.echo = tr.echo_downstream ~= false
  c.response_header = opt(conf.response_header)
  -- The headers access reads, in one pass over the request's (headers.lua).
  local reads_sticky_header = false
  for _, s in ipairs(c.sticky_sources) do
    if s == "header" then reads_sticky_header = true end
  end
  c.headers = headers.compile {
    [headers.TRACEPARENT] = c.traceparent and "traceparent" or nil,
    [headers.TRACE] = c.trace_header,
    [headers.TRACESTATE] = c.traceparent and "tracestate" or nil,
    [headers.STICKY] = reads_sticky_header and c.sticky_header or nil,
    [headers.OVERRIDE] = c.override_header,
  }
  -- For the request path: whether a header may be written without the
  -- PDK (runtime's names only: Host and :authority have side effects
  -- there).
  c.trace_raw = raw_header(c.trace_header)
  c.response_raw = c.response_header and raw_header(c.response_header)
  c.generation_header = opt(conf.generation_header)
  c.generation_raw = c.generation_header and raw_header(c.generation_header)

  c.hash = config_hash(conf)
  -- Everything the operator configured: equal configs compile alike.
  c.full_hash = hash(concat(canonical(conf, {})))
  c.prog = _M.progression(prog, c.index_of)
  c.cluster = c.prog and _M.cluster_redis(prog)
  c.notify = prog and notify.compile(opt(prog.notify))

  return c
end

-- Claims the instance's route slot and publishes its weights (and
-- progression).  Publishing the configuration already in place is a
-- no-op in the engine, so every worker may call this for the same config.
-- The engine tries its locks once; when another worker holds one (most
-- often publishing this very config) the instance is pending and the
-- tick tries again, never waiting for it.
local function publish(c)
  local seg = state.seg
  if not seg then return nil, state.seg_err end
  local route, err, code = seg:claim(c.key, "")
  if not route then
    if code == engine.E.BUSY then
      pending[c] = true
      schedule_retry()
      return nil, err
    end
    pending[c] = nil
    if code == engine.E.FULL then
      err = err .. ": every one of the " .. seg:info().max_routes ..
            " route slots (CANARY_ROUTER_MAX_ROUTES) is live or retired " ..
            "less than " .. seg:info().retire_grace_s .. " s ago"
    end
    log_once("err", "canary-router cannot claim a route slot for " ..
                    c.key .. ": " .. err .. "; failing open to " .. c.stable)
    return nil, err
  end
  local gen, perr, busy = seg:publish(route, c.names, c.weights, c.hash,
                                      c.prog)
  if not gen then
    if busy then
      -- Most often another worker is publishing this very config.  Until
      -- the retry, serve and record whatever table the route has (pick
      -- names each request's upstream by the generation it used).
      pending[c] = true
      schedule_retry()
      if not c.route and seg:read(route) then c.route = route end
      return nil, perr
    end
    pending[c] = nil
    log_once("err", "canary-router cannot publish weights for " ..
                    c.key .. ": " .. perr)
    return nil, perr
  end
  pending[c] = nil
  c.route = route
  c.provisional = nil
  return gen
end

-- A compiled instance the request path may use without publishing: its
-- route slot, if some worker published it, is found lock-free.
local function attach_route(c)
  local seg = state.seg
  c.route = seg and seg:find(c.key) or nil
  return c
end

-- The plugin's `progression` record in engine units (percentages to
-- 0..10000 weights and fractions, seconds and ms to ms and us), or nil.
function _M.progression(p, index_of)
  if p == nil or p == ngx_null then return nil end
  local blue_green = opt(p.strategy) == "blue_green"
  local canary = opt(p.canary)
  local steps = {}
  if blue_green then
    -- green is the preview upstream, else the second of the two
    canary = opt(p.preview)
    if canary == nil then
      for name, i in pairs(index_of) do
        if i == 2 then canary = name end
      end
    end
    steps = { 0, 10000 }
  else
    for i, pct in ipairs(opt(p.steps) or {}) do steps[i] = floor(pct * 100 + 0.5) end
  end
  if canary == nil or index_of[canary] == nil then return nil end
  local function rate(v) return v and v ~= ngx_null and v / 100 or nil end
  local function us(v) return v and v ~= ngx_null and v * 1000 or nil end
  return {
    canary = index_of[canary],
    steps = steps,
    strategy = blue_green and "blue_green" or "canary",
    pre_promotion_ms = blue_green and (opt(p.pre_promotion) or 300) * 1000 or 0,
    post_promotion_ms = blue_green and (opt(p.post_promotion) or 600) * 1000 or 0,
    interval_ms = floor((opt(p.interval) or 300) * 1000),
    min_requests = opt(p.min_requests) or 0,
    failure_limit = opt(p.failure_limit) or 3,
    on_success = opt(p.on_success) or "promote",
    dry_run = opt(p.dry_run) == true,
    analysis = opt(p.analysis) or "threshold",
    confidence = opt(p.confidence) or 0.98,
    allowed_increase = opt(p.allowed_increase) or 0.25,
    max_error_rate = rate(p.max_error_rate),
    max_error_rate_delta = rate(p.max_error_rate_delta),
    rollback_error_rate = rate(p.rollback_error_rate),
    max_p95_us = us(p.max_p95_ms),
    max_p99_us = us(p.max_p99_ms),
    max_p95_ratio = opt(p.max_p95_ratio),
    max_p99_ratio = opt(p.max_p99_ratio),
    rollback_p99_ratio = opt(p.rollback_p99_ratio),
  }
end

-- The Redis settings of a cluster-scoped progression (nil for node
-- scope), with ngx.null turned into nil.
function _M.cluster_redis(p)
  if opt(p.scope) ~= "cluster" then return nil end
  local r = opt(p.redis)
  if type(r) ~= "table" or type(opt(r.host)) ~= "string" then return nil end
  return {
    host = r.host,
    port = opt(r.port) or 6379,
    timeout = opt(r.timeout) or 2000,
    username = opt(r.username),
    password = opt(r.password),
    database = opt(r.database) or 0,
    ssl = opt(r.ssl) == true,
    ssl_verify = opt(r.ssl_verify) == true,
    server_name = opt(r.server_name),
  }
end

-- How often tick() retries an unavailable segment, and how often Kong
-- 3.4 (no configure phase) reads the plugins from the database, which
-- catches changes made on other nodes (DB mode) whose events this node
-- does not see.
local is_current, schedule_sync -- defined with the publishing rules below

local REATTACH_SECONDS = 5
local SYNC_SECONDS = 10
local last_attach_try, last_sync = 0, 0

local function now_s()
  return ngx and ngx.now and ngx.now() or os.time()
end

-- One progression tick for every instance with a progression; the
-- decision a tick made is logged and notified by this worker (the one
-- that made it).  Runs from a timer, which also retries an unavailable
-- segment and keeps Kong 3.4's instances in sync.
-- Claims, publishes and retirements that found another worker's lock
-- held: tried again.  True while some are still pending.
function retry_busy(seg)
  if retire_pending then
    local _, _, busy = seg:retire_except(retire_pending)
    if not busy then retire_pending = nil end
  end
  for c in pairs(pending) do
    if by_key[c.key] == c and is_current(c) then
      publish(c)
    else
      pending[c] = nil -- replaced, removed or superseded since
    end
  end
  return retire_pending ~= nil or next(pending) ~= nil
end

function _M.tick()
  local seg = state.seg
  if not seg then
    local now = now_s()
    if now - last_attach_try < REATTACH_SECONDS then return end
    last_attach_try = now
    if not _M.attach() then return end
    seg = state.seg
    if _M.has_configure() then
      for _, c in pairs(by_key) do
        if not c.route and is_current(c) then publish(c) end
      end
    else
      _M.sync()
    end
  end
  if not _M.has_configure() and now_s() - last_sync >= SYNC_SECONDS then
    last_sync = now_s()
    _M.sync()
  end
  retry_busy(seg)
  for _, c in pairs(by_key) do
    if c.cluster and c.route then
      local ok, err = cluster.tick(c, seg)
      if not ok and err then
        log_once("err", "canary-router cluster progression tick failed for " ..
                        c.key .. ": " .. tostring(err))
      end
    elseif c.prog and c.route then
      local rc, st, busy = seg:prog_tick(c.route)
      if rc and st.decided > 0 then
        decisions.report(c, seg, st.decided)
      elseif not rc and not busy then
        log_once("err", "canary-router progression tick failed for " ..
                        c.key .. ": " .. tostring(st))
      end
    end
  end
end

-- Retries from a timer, a few milliseconds apart and then less often,
-- until nothing is left pending; the tick retries too.
local retry_scheduled, retry_delay = false, 0
local RETRY_MIN, RETRY_MAX = 0.002, 0.25

local function on_retry(premature)
  retry_scheduled = false
  if premature or not state.seg then return end
  if retry_busy(state.seg) then
    schedule_retry()
  else
    retry_delay = 0
  end
end

function schedule_retry()
  if retry_scheduled or not (ngx and ngx.timer) then return end
  retry_delay = retry_delay * 2
  if retry_delay < RETRY_MIN then retry_delay = RETRY_MIN end
  if retry_delay > RETRY_MAX then retry_delay = RETRY_MAX end
  retry_scheduled = ngx.timer.at(retry_delay, on_retry) and true or false
end

-- Kong calls a plugin's configure() from 3.5 on; 3.4 has no such phase
-- (kong/runloop/plugins_iterator.lua), so there the instances come from
-- sync().  A stub without a version is taken as a current Kong.
function _M.has_configure()
  local v = kong and kong.version_num
  return not v or v >= 3005000
end

-- init_worker: attach, follow Kong's plugin changes, start the tick.
function _M.init_worker(tick_seconds)
  _M.attach()
  local events = kong and kong.worker_events
  if events and events.register then
    -- DB mode: the worker that served a plugin's Admin API call
    -- (kong/runloop/events.lua, dao_crud_handler).
    events.register(function(data) _M.on_plugin_crud(data) end, "crud", "plugins")
    -- ... and passed on by that worker to the others of the node.
    events.register(function(data) _M.on_plugin_crud(data) end,
                    "canary-router", "plugin")
    if not _M.has_configure() then
      -- DB-less: every worker, after POST /config (declarative import).
      events.register(function() _M.sync() end, "declarative", "reconfigure")
    end
  end
  if ngx and ngx.timer then
    if not _M.has_configure() then schedule_sync() end
    local ok, err = ngx.timer.every(tick_seconds, _M.tick)
    if not ok then
      kong.log.err("canary-router cannot start its progression timer: ", err)
    end
  end
end

-- The compiled instance with this plugin id, or nil.
function _M.instance(key)
  return by_key[key]
end

-- Is `c` the instance's configuration in Kong's database right now?  The
-- database (LMDB when DB-less) is the arbiter: a worker that rebuilt its
-- plugins iterator just before a change must not publish the old config
-- after another worker published the new one (that would restart the
-- progression, twice).  When the database cannot be asked (init_worker
-- has no cosockets in DB mode) the config is taken as current: every
-- worker then starts from the same snapshot.
function is_current(c)
  local db = kong and kong.db
  if not (db and db.plugins and db.plugins.select) then return true end
  local ok, entity = pcall(db.plugins.select, db.plugins, { id = c.key })
  if not ok then return true end
  if not entity then return false end
  if entity.enabled == false then return false end
  return config_hash(entity.config or {}) == c.hash
end

-- Instances are compiled and published off the request path: by
-- configure() (Kong >= 3.5), by sync() from Kong's database (Kong 3.4 has
-- no configure phase) and on Kong's crud events for plugins (DB mode: the
-- worker that served the Admin API call publishes at once; the others'
-- plugins iterators follow within worker_state_update_frequency).  A
-- config table the request path has not seen yet is matched to the
-- instance compiled from the database by id and hash; failing that (a
-- change not synced yet) it is compiled without publishing, routes with
-- what the segment holds, and a sync is scheduled.
local sync_pending = false
function schedule_sync()
  if sync_pending or not (ngx and ngx.timer) then return end
  sync_pending = true
  local ok = ngx.timer.at(0, function(premature)
    sync_pending = false
    if not premature then _M.sync() end
  end)
  if not ok then sync_pending = false end
end

function _M.get(conf)
  local c = compiled[conf]
  if c and not c.provisional then
    -- A crud event compiled a newer config of this instance before this
    -- worker's plugins iterator caught up (Kong's eventual consistency).
    local newer = c.superseded
    if not newer then return c end
    while newer.superseded do newer = newer.superseded end
    return newer
  end
  local key = instance_key(conf)
  local known = by_key[key]
  local h = c and c.full_hash or hash(concat(canonical(conf, {})))
  if known and known.full_hash == h and not known.provisional then
    compiled[conf] = known
    return known
  end
  if c then return c end
  c = attach_route(compile(conf))
  c.provisional = true
  compiled[conf] = c
  if not by_key[key] then by_key[key] = c end
  schedule_sync()
  return c
end

-- Retires the route slots of every instance whose key is not in `live`
-- (a set), so that slots are reused and removed instances are no longer
-- exported, and forgets their compiled forms (a config that comes back is
-- compiled and claimed again, and gets its counters back within the grace
-- period).  now_us (optional) is when the instances went away, for tests:
-- the grace period runs from then.
local function retire_others(live, now_us)
  for conf, c in pairs(compiled) do
    if not live[c.key] then compiled[conf] = nil end
  end
  for key in pairs(by_key) do
    if not live[key] then by_key[key] = nil end
  end
  local seg = state.seg
  if not seg then return 0 end
  local keys = {}
  for key in pairs(live) do keys[#keys + 1] = key end
  local n, err, busy = seg:retire_except(keys, now_us)
  retire_pending = busy and keys or nil
  if busy then schedule_retry() end
  if not n and not busy then
    log_once("warn", "canary-router cannot retire the route slots of " ..
                     "removed instances yet: " .. tostring(err))
  end
  return n
end

-- `configs` is the complete set of live instances' configs (nil or
-- empty: none): retires every other instance's route slot (above).
-- configure() and sync() do this with the complete set they have.
function _M.sweep(configs, now_us)
  local live = {}
  for _, conf in ipairs(configs or {}) do live[instance_key(conf)] = true end
  return retire_others(live, now_us)
end

-- configure(configs): compile and publish every instance's config.
-- `configs` is the complete set (nil when no instance is enabled).
function _M.configure(configs)
  if not state.seg and not state.seg_err then _M.attach() end
  local live, keys = {}, {}
  for _, conf in ipairs(configs or {}) do
    local c = compiled[conf]
    -- Compiled again: a new table, a provisional one, and one that failed
    -- open for want of a slot (slots of removed instances come free).
    if not c or c.provisional or (not c.route and state.seg) then
      c = compile(conf)
      compiled[conf] = c
    end
    if not c.route then
      if is_current(c) then publish(c) end
      if not c.route then
        -- Not ours to publish (the database has moved on, or no slot):
        -- route by what the segment holds until sync() or a crud event
        -- compiles the instance, or the next configure() tries again.
        attach_route(c)
        c.provisional = true
      end
    end
    live[c.key] = c
    keys[c.key] = true
  end
  by_key = live
  retire_others(keys)
end

-- A plugin entity as Kong's plugins iterator hands its config to the
-- phases (plugins_iterator.lua, get_plugin_config).
local function entity_conf(p)
  local conf = p.config or {}
  conf.route_id = type(p.route) == "table" and p.route.id or nil
  conf.service_id = type(p.service) == "table" and p.service.id or nil
  conf.consumer_id = type(p.consumer) == "table" and p.consumer.id or nil
  conf.__plugin_id = p.id
  return conf
end

local function from_entity(p)
  local c = compile(entity_conf(p))
  publish(c)
  if not c.route then attach_route(c) end
  return c
end

-- sync(): every canary-router instance from Kong's database, compiled and
-- published; instances gone from it are retired.  Off the request path
-- (a timer: in DB mode it reads PostgreSQL).  Returns true, or nil and
-- an error (nothing changed then).
function _M.sync()
  local db = kong and kong.db
  if not (db and db.plugins and db.plugins.each) then
    return nil, "no database to read plugins from"
  end
  if not state.seg and not state.seg_err then _M.attach() end
  local live, keys = {}, {}
  for p, err in db.plugins:each(nil, { workspace = ngx_null }) do
    if err then
      log_once("err", "canary-router cannot read plugins: " .. tostring(err))
      return nil, err
    end
    if p.name == "canary-router" and p.enabled ~= false then
      local c = by_key[p.id]
      if not (c and not c.provisional and
              c.full_hash == hash(concat(canonical(p.config or {}, {})))) then
        c = from_entity(p)
      end
      live[c.key] = c
      keys[c.key] = true
    end
  end
  by_key = live
  retire_others(keys)
  return true
end

-- Kong's crud event for a plugin (DB mode), in the worker that served the
-- Admin API call: the new config reaches every worker of this node
-- through the segment at once, instead of after the next rebuild.
function _M.on_plugin_crud(data)
  local p = data and data.entity
  if type(p) ~= "table" or p.name ~= "canary-router" or type(p.id) ~= "string" then
    return
  end
  if data.operation == "delete" or p.enabled == false then
    by_key[p.id] = nil
    local keys = {}
    for k in pairs(by_key) do keys[k] = true end
    retire_others(keys)
    return
  end
  local c = from_entity(p)
  local old = by_key[p.id]
  if old and old ~= c then old.superseded = c end
  by_key[p.id] = c
  -- The other workers of this node hear of it from us: Kong's crud event
  -- reaches only the worker that served the Admin API call, and their
  -- plugins iterators catch up only at their next rebuild.
  if data.origin ~= "canary-router" then
    local events = kong and kong.worker_events
    if events and events.post then
      events.post("canary-router", "plugin", {
        operation = data.operation, entity = p, origin = "canary-router",
      })
    end
  end
end

-- The route's table as this worker last saw it: { gen, names, stats,
-- stat_of } (cached per generation).
function _M.table(c)
  return state.seg:table(c.route)
end

-- The statistics handle of upstream `name` of the instance's route, from
-- the table its last pick or table() call described.
function _M.stat(c, name)
  return state.seg:stat(c.route, name)
end

-- Compiled instances by key (Admin API).
function _M.instances()
  return by_key
end

return _M
