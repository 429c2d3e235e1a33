-- canary-router: Kong phases mapped onto the engine.
--
-- access        trace ID, override / sticky / weighted pick, set_upstream
-- header_filter upstream response header arrived: stop the latency clock,
--               echo the trace ID (and the upstream when configured)
-- log           record latency, status and trace source for the upstream
--
-- The handler never turns a request into an error: when the engine or the
-- segment is unavailable, or Kong refuses the picked upstream, the request
-- goes to the stable (first) upstream and the reason is logged once.

local engine = require "kong.plugins.canary-router.engine"
local runtime = require "kong.plugins.canary-router.runtime"
local cidr = require "kong.plugins.canary-router.cidr"

local state = runtime.state
local log_once = runtime.log_once
local TRACE = engine.TRACE
local EVENT = engine.EVENT
local now_us = engine.now_us
local trace_generate = engine.trace_generate
local traceparent_trace_id = engine.traceparent_trace_id
local trace_id_valid = engine.trace_id_valid
local type = type

local CanaryRouter = {
  -- After authentication (1000..1450) and ACL (950), so consumer-sticky
  -- keys exist and rejected requests never take a canary slot; after
  -- rate limiting (910) for the same reason; before request transformers
  -- (801) and logging plugins, which then see the trace ID we set.
  PRIORITY = 900,
  VERSION = "0.1.0",
}

-- Every worker ticks the progressions; the engine makes sure exactly one
-- of them judges each window.
local TICK_SECONDS = 0.25

function CanaryRouter:init_worker()
  runtime.attach()
  if ngx and ngx.timer and ngx.timer.every then
    local ok, err = ngx.timer.every(TICK_SECONDS, runtime.tick)
    if not ok then
      kong.log.err("canary-router cannot start its progression timer: ", err)
    end
  end
end

function CanaryRouter:configure(configs)
  runtime.configure(configs)
end

-- First value of a header; Kong returns the first of repeated headers,
-- and a table only from stand-ins that pass arrays through.
local function header(name)
  local v = kong.request.get_header(name)
  if type(v) == "table" then v = v[1] end
  return v
end

local function cookie(pattern)
  if not pattern then return nil end
  local jar = header("Cookie")
  if not jar then return nil end
  local v = jar:match(pattern)
  if v == "" then return nil end
  return v
end

-- Trace ID of this request, its source, and the traceparent to send on
-- (nil: leave the request's own alone).
--   valid traceparent          its trace-id; forwarded unchanged
--   valid X-Trace-Id           kept; a new traceparent carries it when it
--                              is W3C-shaped (32 hex), else a new trace-id
--   neither                    a new id, in both headers
-- An invalid traceparent is replaced (W3C: act as if it were absent).
local function trace(c)
  local tp_in = c.traceparent and header("traceparent") or nil
  local id_in = header(c.trace_header)
  local rejected = false

  if tp_in then
    local id = traceparent_trace_id(tp_in)
    if id then return id, TRACE.TRACEPARENT, nil end
    rejected = true
  end
  if id_in and trace_id_valid(id_in) then
    if not c.traceparent then return id_in, TRACE.CLIENT, nil end
    local _, tp = trace_generate(true)
    if tp and #id_in == 32 and id_in:match("^%x+$") and not id_in:match("^0+$") then
      tp = "00-" .. id_in:lower() .. tp:sub(36)
    end
    return id_in, TRACE.CLIENT, tp
  end
  if id_in then rejected = true end
  local id, tp = trace_generate(c.traceparent)
  if not id then return nil, nil, nil end
  return id, rejected and TRACE.REJECTED or TRACE.GENERATED, tp
end

-- Key for sticky routing: the first source in the chain that has one.
local function sticky_key(c)
  local sources = c.sticky_sources
  for i = 1, #sources do
    local s, v = sources[i], nil
    if s == "header" then
      v = header(c.sticky_header)
    elseif s == "cookie" then
      v = cookie(c.sticky_cookie)
    elseif s == "consumer" then
      local consumer = kong.client.get_consumer()
      v = consumer and consumer.id
    elseif s == "ip" then
      v = kong.client.get_forwarded_ip()
    end
    if v and v ~= "" then return v end
  end
  return nil
end

-- Upstream index forced by the tester override, or nil.
local function override(c)
  local v = c.override_header and header(c.override_header)
  if not v then v = cookie(c.override_cookie) end
  if not v then return nil end
  if c.allow_from and not cidr.match(c.allow_from,
                                     kong.client.get_forwarded_ip()) then
    state.seg:event(c.route, EVENT.OVERRIDE_DENIED)
    return nil
  end
  local idx
  if v == "always" then
    idx = c.index_of[c.canary]
  elseif v == "never" then
    idx = 1
  else
    idx = c.index_of[v]
  end
  if idx then state.seg:event(c.route, EVENT.OVERRIDE) end
  return idx
end

-- The metrics label of a route: the Kong route or service the instance
-- is scoped to, learned from the first request it sees.
local function label(c)
  local r = kong.router.get_route()
  local s = kong.router.get_service()
  local l = (c.route_id and r and r.name) or (c.service_id and s and s.name)
            or (r and r.name) or (s and s.name) or c.key
  -- Another worker holding the claim lock: label at a later request.
  local _, _, busy = state.seg:claim(c.key, l)
  c.labelled = not busy
end

local function set_stable(c)
  local ok, err = kong.service.set_upstream(c.stable)
  if not ok then
    log_once("err", "canary-router: stable upstream '" .. c.stable ..
                    "' refused: " .. tostring(err))
  end
  return 1
end

function CanaryRouter:access(conf)
  local c = runtime.get(conf)
  local ctx = kong.ctx.plugin
  ctx.c = c

  if state.lib_ok then
    local id, source, tp = trace(c)
    if id then
      ctx.trace_id = id
      ctx.source = source
      kong.service.request.set_header(c.trace_header, id)
      if tp then kong.service.request.set_header("traceparent", tp) end
      if kong.log.set_serialize_value then
        kong.log.set_serialize_value("trace_id", id)
      end
    end
  end

  if not c.route then
    ctx.up = set_stable(c)
    ctx.name = c.stable
    return
  end
  if not c.labelled then label(c) end

  local seg = state.seg
  local idx, gen = override(c), nil
  if not idx then
    local key = c.sticky_sources[1] and sticky_key(c)
    idx, gen = seg:pick(c.route, key)
  end
  local names = idx and runtime.names(c, gen)
  local name = names and names[idx]
  if not name then
    seg:event(c.route, EVENT.ENGINE_ERROR)
    log_once("err", "canary-router: engine pick failed for " .. c.key ..
                    " (" .. tostring(gen) .. "); failing open to " ..
                    c.stable)
    ctx.up = set_stable(c)
    ctx.name = c.stable
    ctx.t_sent = now_us()
    return
  end

  local ok, err = kong.service.set_upstream(name)
  if not ok then
    seg:event(c.route, EVENT.FALLBACK)
    log_once("err", "canary-router: upstream '" .. name .. "' refused (" ..
                    tostring(err) .. "); sending its traffic to " .. c.stable)
    idx = set_stable(c)
    name = c.stable
  end
  ctx.up = idx
  ctx.name = name
  ctx.t_sent = now_us()
end

function CanaryRouter:header_filter(conf)
  local ctx = kong.ctx.plugin
  local c = ctx.c
  if not c then return end
  if ctx.t_sent then ctx.t_header = now_us() end
  if c.echo and ctx.trace_id then
    kong.response.set_header(c.trace_header, ctx.trace_id)
  end
  if c.response_header and ctx.name then
    kong.response.set_header(c.response_header, ctx.name)
  end
end

function CanaryRouter:log(conf)
  local ctx = kong.ctx.plugin
  local c = ctx.c
  if not (c and c.route and ctx.t_sent) then return end
  -- A response produced by another plugin (kong.response.exit) says
  -- nothing about the upstream; an error response from the proxy does.
  if kong.response.get_source and kong.response.get_source() == "exit" then
    return
  end
  local t_end = ctx.t_header or now_us()
  state.seg:record(c.route, ctx.up, t_end - ctx.t_sent,
                   kong.response.get_status(), ctx.source)
end

return CanaryRouter
