-- canary-router: Kong phases mapped onto the engine.
--
-- access        trace ID, override / sticky / weighted pick, set_upstream
-- header_filter upstream response header arrived: echo the trace ID (and
--               the upstream when configured), record latency, status and
--               trace source for the upstream
--
-- The handler never turns a request into an error: when the engine or the
-- segment is unavailable, or Kong refuses the picked upstream, the request
-- goes to the stable (first) upstream and the reason is logged once.

local engine = require "kong.plugins.canary-router.engine"
local runtime = require "kong.plugins.canary-router.runtime"
local cidr = require "kong.plugins.canary-router.cidr"
local headers = require "kong.plugins.canary-router.headers"

-- Loaded by Kong's master in the init phase: a root master prepares the
-- segment for its unprivileged workers (no-op anywhere else).
runtime.prepare_master()

local state = runtime.state
local log_once = runtime.log_once
local TRACE = engine.TRACE
local EVENT = engine.EVENT
local E_BUSY = engine.E.BUSY
local now_us = engine.now_us
local trace_generate = engine.trace_generate
local traceparent_trace_id = engine.traceparent_trace_id
local trace_id_valid = engine.trace_id_valid
local read_headers = headers.read
local header_value = headers.value
local has_header = headers.has
local pdk_header = headers.pdk_header
local H_TRACEPARENT = headers.TRACEPARENT
local H_TRACE = headers.TRACE
local H_TRACESTATE = headers.TRACESTATE
local H_STICKY = headers.STICKY
local H_OVERRIDE = headers.OVERRIDE
local find = string.find
local lower = string.lower

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
  runtime.init_worker(TICK_SECONDS)
end

function CanaryRouter:configure(configs)
  runtime.configure(configs)
end

-- The request path reads and writes headers through the cheapest API that
-- keeps the PDK's semantics (kong/tools/http.lua get_header, kong/pdk/
-- service/request.lua set_header, kong/pdk/response.lua set_header):
-- the headers a config reads come from one pass over the request's
-- header list (headers.lua), first value of each as kong.request.
-- get_header() gives it; the Cookie header is its nginx variable, used
-- unless it holds ", " (repeated headers), where the PDK's own
-- first-value rule is asked; ngx.req.set_header and ngx.header are what
-- the PDK setters end in for any name but Host and :authority, which the
-- compiled config routes through the PDK.  Without ngx (the unit specs'
-- stub) the PDK is used throughout.
local ngx_var = ngx and ngx.var

-- kong.response.get_source() (kong/pdk/response.lua) on the flags Kong's
-- runloop sets in ngx.ctx, without its phase check; the PDK itself where
-- there is no ngx (the unit specs' stub).
local function get_source(nctx)
  if not nctx then return kong.response.get_source() end
  if nctx.KONG_UNEXPECTED then return "error" end
  if nctx.KONG_EXITED then return "exit" end
  if nctx.KONG_PROXIED then return "service" end
  return "error"
end

local function get_status()
  if not ngx then return kong.response.get_status() end
  return ngx.status
end
local req_set_header = ngx and ngx.req and ngx.req.set_header
local resp_header = ngx and ngx.header

-- A request's state, from access to header_filter: one table sized for
-- its fields at once (no rehash as they are set), kept in ngx.ctx under
-- the plugin's own key.  kong.ctx.plugin would do the same with a
-- namespace lookup and a table that grows field by field; it is used
-- where there is no ngx (the unit specs' stub).
local new_tab = require "table.new"
local CTX_KEY = "canary_router"
local function new_request_state(nctx)
  local r = new_tab(0, 8)
  if nctx then
    nctx[CTX_KEY] = r
  else
    kong.ctx.plugin.r = r
  end
  return r
end
local function request_state(nctx)
  if nctx then return nctx[CTX_KEY] end
  return kong.ctx.plugin.r
end

-- The first value of the Cookie header: its nginx variable, unless that
-- holds ", " (repeated headers), where the PDK's first-value rule is
-- asked.
local function cookie_jar()
  if ngx_var then
    local v = ngx_var.http_cookie
    if not v or not find(v, ", ", 1, true) then return v end
  end
  return pdk_header("Cookie")
end

local function set_upstream_header(name, value, raw)
  if raw and req_set_header then
    req_set_header(name, value)
  else
    kong.service.request.set_header(name, value)
  end
end

local function set_response_header(name, value, raw)
  if raw and resp_header then
    resp_header[name] = value
  else
    kong.response.set_header(name, value)
  end
end

local function cookie(pattern)
  if not pattern then return nil end
  local jar = cookie_jar()
  if not jar then return nil end
  local v = jar:match(pattern)
  if v == "" then return nil end
  return v
end

-- Trace ID of this request, its source, and the traceparent to send on
-- (nil: leave the request's own alone).
--   valid traceparent          its trace-id; forwarded unchanged, with its
--                              sampling decision and tracestate
--   valid X-Trace-Id           kept; a new traceparent carries it when it
--                              is W3C-shaped (32 hex), else a new trace-id
--   neither                    a new id, in both headers
-- An invalid traceparent is replaced (W3C: act as if it were absent).
-- Generated traceparents carry the configured sampled flag.
local function trace(c)
  local tp_in = c.traceparent and header_value(H_TRACEPARENT) or nil
  local id_in = header_value(H_TRACE)
  local rejected = false

  if tp_in then
    local id = traceparent_trace_id(tp_in)
    if id then return id, TRACE.TRACEPARENT, nil end
    rejected = true
  end
  if id_in and trace_id_valid(id_in) then
    if not c.traceparent then return id_in, TRACE.CLIENT, nil end
    local w3c = nil
    if #id_in == 32 and not find(id_in, "[^%x]") and find(id_in, "[^0]") then
      w3c = find(id_in, "%u") and lower(id_in) or id_in
    end
    local _, tp = trace_generate(true, c.sampled, w3c)
    return id_in, TRACE.CLIENT, tp
  end
  if id_in then rejected = true end
  local id, tp = trace_generate(c.traceparent, c.sampled)
  if not id then return nil, nil, nil end
  return id, rejected and TRACE.REJECTED or TRACE.GENERATED, tp
end

-- Key for sticky routing: the first source in the chain that has one.
local function sticky_key(c)
  local sources = c.sticky_sources
  for i = 1, #sources do
    local s, v = sources[i], nil
    if s == "header" then
      v = header_value(H_STICKY)
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
  local v = c.override_header and header_value(H_OVERRIDE)
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
  local _, _, code = state.seg:claim(c.key, l)
  c.labelled = code ~= E_BUSY
end

-- kong.service.set_upstream() only replaces balancer_data.host.  Kong's
-- balancer (runloop/balancer/init.lua, execute) looks an Upstream up only
-- when balancer_data.type, fixed from the service's host before any
-- plugin runs, is "name"; for a service on an IP address it would hand
-- the Upstream's name to set_current_peer() and fail every request.  The
-- Upstream exists (set_upstream checked), so the target is a name now.
--
-- A request already headed for the picked Upstream (the service's own
-- host, usually the stable one) is left as it is: Kong's balancer looks
-- that name up as it would without the plugin, and the PDK call, which
-- fetches ngx.ctx three times and builds a cache key, is saved for the
-- share of requests that stays where the service sends it.
local function set_upstream(name, nctx)
  local bd = nctx and nctx.balancer_data
  if bd and bd.host == name and bd.type == "name" then return true end
  local ok, err = kong.service.set_upstream(name)
  if ok and bd and bd.type ~= "name" then bd.type = "name" end
  return ok, err
end

local function set_stable(c, nctx)
  local ok, err = set_upstream(c.stable, nctx)
  if not ok then
    log_once("err", "canary-router: stable upstream '" .. c.stable ..
                    "' refused: " .. tostring(err))
  end
end

function CanaryRouter:access(conf)
  local c = runtime.get(conf)
  -- ngx.ctx costs a lookup each time: fetched once per phase.
  local nctx = ngx and ngx.ctx
  local ctx = new_request_state(nctx)
  ctx.c = c

  -- The headers this config reads (headers.lua), in one pass; used
  -- before anything could yield.
  read_headers(c.headers)
  if state.lib_ok then
    local id, source, tp = trace(c)
    if id then
      ctx.trace_id = id
      ctx.source = source
      set_upstream_header(c.trace_header, id, c.trace_raw)
      if tp then
        -- W3C: tracestate belongs to the traceparent it came with; ours
        -- is not the client's, so theirs goes.
        set_upstream_header("traceparent", tp, true)
        if has_header(H_TRACESTATE) then
          kong.service.request.clear_header("tracestate")
        end
      end
      if kong.log.set_serialize_value then
        kong.log.set_serialize_value("trace_id", id)
      end
    end
  end

  if not c.route then
    set_stable(c, nctx)
    ctx.name = c.stable
    return
  end
  if not c.labelled then label(c) end

  local seg = state.seg
  local idx, gen = override(c), nil
  -- A client chose the upstream: counted apart, never judged by a gate;
  -- except blue/green's green, whose preview requests are what its
  -- pre-promotion window judges.
  local tab
  if idx then
    if idx ~= c.green then ctx.forced = true end
    tab = runtime.table(c)
  else
    local key = c.sticky_sources[1] and sticky_key(c)
    idx, gen, tab = seg:pick(c.route, key)
  end
  local name = idx and tab and tab.names[idx]
  if not name then
    seg:event(c.route, EVENT.ENGINE_ERROR)
    log_once("err", "canary-router: engine pick failed for " .. c.key ..
                    " (" .. tostring(gen) .. "); failing open to " ..
                    c.stable)
    set_stable(c, nctx)
    ctx.name = c.stable
    ctx.stat = runtime.stat(c, c.stable)
    ctx.t_sent = now_us()
    return
  end

  -- The statistics of the upstream that serves, by the handle of the
  -- table the pick used: a publish before the response cannot move this
  -- request's count to another name.
  local stat = tab.stats[idx]
  local ok, err = set_upstream(name, nctx)
  if ok then
    -- (a fallback was chosen by no table: no generation header)
    if c.generation_header then ctx.gen = gen end
  else
    seg:event(c.route, EVENT.FALLBACK)
    log_once("err", "canary-router: upstream '" .. name .. "' refused (" ..
                    tostring(err) .. "); sending its traffic to " .. c.stable)
    set_stable(c, nctx)
    name = c.stable
    stat = runtime.stat(c, name)
  end
  if c.response_header then ctx.name = name end
  ctx.stat = stat
  ctx.t_sent = now_us()
end

-- The upstream's response header has arrived (or the proxy produced an
-- error page for it: Kong runs header_filter exactly once per response,
-- restoring the request's context in its error handler): its status and
-- the upstream latency are known, so the response is recorded here and
-- the plugin needs no log phase.  A response produced by another plugin
-- (kong.response.exit) says nothing about the upstream and is not
-- recorded; a request whose client went away before any response is not
-- a response either.
function CanaryRouter:header_filter(conf)
  local nctx = ngx and ngx.ctx
  local ctx = request_state(nctx)
  if not ctx then return end
  local c = ctx.c
  if not c then return end
  if c.echo and ctx.trace_id then
    set_response_header(c.trace_header, ctx.trace_id, c.trace_raw)
  end
  if c.response_header and ctx.name then
    set_response_header(c.response_header, ctx.name, c.response_raw)
  end
  if c.generation_header and ctx.gen then
    set_response_header(c.generation_header, ctx.gen, c.generation_raw)
  end
  local t_sent = ctx.t_sent
  if not (t_sent and c.route and ctx.stat) then return end
  if get_source(nctx) == "exit" then return end
  state.seg:record(c.route, ctx.stat, now_us() - t_sent, get_status(), ctx.source,
                   ctx.forced)
end

return CanaryRouter
