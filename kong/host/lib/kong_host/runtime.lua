-- kong_host.runtime: what one worker builds from the current declarative
-- document — the router, the upstream balancers, the plugin configs per
-- route — and the plugin lifecycle calls (init_worker, configure).
--
-- When a worker switches to a new document follows the mode the host
-- claims (kong_host.mode), as Kong's kong/runloop/handler.lua does:
--   DB-less           on the reconfigure event, i.e. off the request path
--                     (reconfigure_handler); the host polls the shm
--                     version every events.POLL seconds instead, then
--                     delivers `declarative`/`reconfigure` to the plugins.
--   DB, eventual      only from the rebuild timers that run every
--                     worker_state_update_frequency seconds
--                     (rebuild_router_timer, rebuild_plugins_iterator_timer).
--   DB, strict        those timers, and before each request
--                     (get_updated_router, get_updated_plugins_iterator).
-- configure() is called with the new configs before requests use them
-- (reconfigure_handler, build_plugins_iterator), from Kong 3.5 on only.
--
-- Plugin modules are loaded once, in the master's init phase, the way Kong
-- loads them: kong.plugins.<name>.handler and .schema, and the optional
-- .api (Admin API) and .status_api (status listener) route tables.

local util = require "kong_host.util"
local store = require "kong_host.store"
local mode = require "kong_host.mode"
local events = require "kong_host.events"

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local sort = table.sort
local fmt = string.format

local null = util.null

local _M = {}

-- name -> { name, handler, schema, api, status_api }, and the same list
-- sorted by PRIORITY (highest first), as Kong runs them.
local available = {}
local ordered = {}

local current          -- the state requests use
local failed_version   -- a version that could not be built (logged once)
local building = false
local next_seq = 0     -- __seq__ for configs, unique within this worker

_M.DEFAULT_WORKSPACE_ID = nil


local function optional_require(name)
  local ok, mod = pcall(require, name)
  if ok then
    return mod
  end
  -- Only "module not found" for this very module is optional; an error
  -- inside an existing module must surface.
  if type(mod) == "string" and mod:find("module '" .. name .. "' not found", 1, true) then
    return nil
  end
  error(mod, 0)
end


-- Loads the named plugins.  Raises on a missing handler or schema.
function _M.load_plugins(names)
  available, ordered = {}, {}
  for _, name in ipairs(names) do
    local prefix = "kong.plugins." .. name .. "."
    local handler = require(prefix .. "handler")
    local schema = require(prefix .. "schema")
    if type(handler) ~= "table" then
      error(fmt("plugin '%s': handler.lua must return a table", name), 0)
    end
    if type(handler.PRIORITY) ~= "number" then
      error(fmt("plugin '%s': handler has no numeric PRIORITY", name), 0)
    end
    local p = {
      name = name,
      handler = handler,
      schema = schema,
      api = optional_require(prefix .. "api"),
      status_api = optional_require(prefix .. "status_api"),
    }
    available[name] = p
    ordered[#ordered + 1] = p
  end
  sort(ordered, function(a, b)
    if a.handler.PRIORITY ~= b.handler.PRIORITY then
      return a.handler.PRIORITY > b.handler.PRIORITY
    end
    return a.name < b.name
  end)
end


function _M.available()
  return available
end


function _M.ordered()
  return ordered
end


-- Smooth weighted round-robin (nginx's algorithm): each pick adds every
-- target's weight to its current score, takes the highest, and subtracts
-- the total from the winner.  Deterministic, and spreads picks evenly.
local function new_balancer(targets)
  local list, total = {}, 0
  for _, t in ipairs(targets) do
    if t.weight > 0 then
      local host, port = t.target:match("^(.+):(%d+)$")
      list[#list + 1] = { host = host, port = tonumber(port), weight = t.weight, current = 0 }
      total = total + t.weight
    end
  end
  return {
    targets = list,
    next = function()
      local best
      for _, t in ipairs(list) do
        t.current = t.current + t.weight
        if not best or t.current > best.current then
          best = t
        end
      end
      if best then
        best.current = best.current - total
      end
      return best
    end,
  }
end


-- Builds the per-worker state from a decoded document (`runtime_doc`
-- provides the config tables handed to plugins; `doc` stays pristine for
-- the Admin API).
local function build(version, doc, runtime_doc, json)
  local st = {
    version = version,
    hash = ngx.md5(json),
    doc = doc,
    services = {},
    upstreams = {},
    router = {},
    plugins_by_route = {},
    global_plugins = {},
    configurable = {},
  }

  for _, s in ipairs(runtime_doc.services) do
    st.services[s.id] = s
  end
  local upstream_names = {}
  for _, u in ipairs(runtime_doc.upstreams) do
    upstream_names[u.id] = u.name
    st.upstreams[u.name] = { entity = u, targets = {} }
  end
  for _, t in ipairs(runtime_doc.targets) do
    local name = upstream_names[t.upstream.id]
    local targets = st.upstreams[name].targets
    targets[#targets + 1] = t
  end
  for _, u in pairs(st.upstreams) do
    u.balancer = new_balancer(u.targets)
  end

  -- Plugin configs by scope, with the hidden fields Kong 3.x sets on them
  -- in kong/runloop/plugins_iterator.lua (get_plugin_config).
  local ws_id = _M.DEFAULT_WORKSPACE_ID
  local combos = {}
  for _, p in ipairs(runtime_doc.plugins) do
    if p.enabled and available[p.name] then
      local cfg = p.config
      if cfg == null or type(cfg) ~= "table" then
        cfg = {}
      end
      util.strip_nulls(cfg)
      local route_id = p.route ~= null and p.route.id or nil
      local service_id = p.service ~= null and p.service.id or nil
      cfg.route_id = route_id
      cfg.service_id = service_id
      cfg.consumer_id = nil
      cfg.plugin_instance_name = p.instance_name ~= null and p.instance_name or nil
      cfg.__plugin_id = p.id
      cfg.__key__ = fmt("plugins:%s:%s:%s:%s:%s:%s", p.name, route_id or "",
                        service_id or "", "", "", ws_id or "")
      cfg.__seq__ = next_seq
      next_seq = next_seq + 1

      combos[p.name] = combos[p.name] or {}
      combos[p.name][(route_id or "") .. ":" .. (service_id or "")] = cfg
      local list = st.configurable[p.name] or {}
      list[#list + 1] = cfg
      st.configurable[p.name] = list
    end
  end

  -- Kong's lookup order without consumers: route+service, route, service,
  -- global.
  local function plugins_for(route_id, service_id)
    local list = {}
    for _, plugin in ipairs(ordered) do
      local c = combos[plugin.name]
      if c then
        local cfg = (route_id and service_id and c[route_id .. ":" .. service_id])
                    or (route_id and c[route_id .. ":"])
                    or (service_id and c[":" .. service_id])
                    or c[":"]
        if cfg then
          list[#list + 1] = { plugin = plugin, handler = plugin.handler, config = cfg }
        end
      end
    end
    return list
  end

  st.global_plugins = plugins_for(nil, nil)

  for _, r in ipairs(runtime_doc.routes) do
    local service = r.service ~= null and st.services[r.service.id] or nil
    if service == nil or service.enabled then
      st.plugins_by_route[r.id] = plugins_for(r.id, service and service.id)
      for _, path in ipairs(r.paths) do
        st.router[#st.router + 1] = { prefix = path, route = r, service = service }
      end
    end
  end
  -- Longest prefix wins; among equal prefixes, the route declared first.
  for i, e in ipairs(st.router) do
    e.order = i
  end
  sort(st.router, function(a, b)
    if #a.prefix ~= #b.prefix then
      return #a.prefix > #b.prefix
    end
    return a.order < b.order
  end)

  return st
end


-- Kong's router matches a path prefix as a plain string prefix.
function _M.match(st, path)
  for _, e in ipairs(st.router) do
    if path:sub(1, #e.prefix) == e.prefix then
      return e
    end
  end
end


-- Kong 3.5+ (plugins_iterator.lua, configure()): each plugin with a
-- configure handler gets the list of its enabled instances' configs, or
-- nil when there is none.  Kong 3.4 has no configure phase at all.
local function call_configure(st)
  if not mode.has_configure then
    return
  end
  local log = require "kong_host.pdk"
  for _, plugin in ipairs(ordered) do
    local handler = plugin.handler
    if handler.configure then
      log.set_namespace(plugin.name)
      local ok, err = pcall(handler.configure, handler, st.configurable[plugin.name])
      log.set_namespace(nil)
      if not ok then
        ngx.log(ngx.ERR, "failed to execute plugin '", plugin.name, ":configure' (", err, ")")
      end
    end
  end
end


-- Rebuilds from the shm document if its version differs from the one in
-- use.  Cheap when nothing changed: one shm get.  Returns the state.
function _M.check()
  local v = store.version()
  if current and (v == current.version or v == failed_version) then
    return current
  end
  if building or not v then
    return current
  end
  building = true
  local ok, err = pcall(function()
    local version, json = store.read()
    if not json then
      return -- superseded while we looked; the next check picks it up
    end
    local doc = assert(util.json_decode(json))
    local runtime_doc = assert(util.json_decode(json))
    local st = build(version, doc, runtime_doc, json)
    -- Like Kong's rebuild: plugins are configured with the new configs
    -- before requests start using them (nothing yields in between), and
    -- what configure() reads from kong.db is that same new document.
    current = st
    call_configure(st)
    -- Which version each worker runs, for GET / (the spec helper waits
    -- on it after a change; Kong has no such field).
    ngx.shared.kong_host:set("applied:" .. ngx.worker.id(), version)
  end)
  building = false
  if not ok then
    failed_version = v
    ngx.log(ngx.ERR, "cannot build config version ", v, ": ", err)
  end
  return current
end


function _M.current()
  return current
end


-- The state a request uses: the current one, rebuilt first only in DB
-- mode with worker_consistency = strict (Kong's get_updated_router /
-- get_updated_plugins_iterator); elsewhere the request path never
-- rebuilds.
function _M.for_request()
  if current == nil or (not mode.dbless() and mode.worker_consistency == "strict") then
    return _M.check()
  end
  return current
end


-- The current document as the Admin API and kong.db read it (Kong reads
-- the database, or LMDB when DB-less: the latest write, whatever the
-- workers run).  Decoded once per version; callers must not modify it.
local doc_cache = { version = nil, doc = nil, hash = nil }

function _M.document()
  local v, json = store.read()
  if not json then
    return doc_cache.doc, doc_cache.hash
  end
  if doc_cache.version ~= v then
    doc_cache.doc = assert(util.json_decode(json))
    doc_cache.hash = ngx.md5(json)
    doc_cache.version = v
  end
  return doc_cache.doc, doc_cache.hash
end


local function every(seconds, fn, what)
  local ok, err = ngx.timer.every(seconds, function(premature)
    if not premature then
      fn()
    end
  end)
  if not ok then
    ngx.log(ngx.ERR, "cannot start the ", what, " timer: ", err)
  end
end


-- init_worker: each plugin's init_worker(), then the first build and
-- configure() (kong/init.lua init_worker calls plugins_iterator:configure
-- after the plugins' init_worker), then the timers that apply later
-- changes and deliver worker events.
function _M.init_worker()
  -- Events posted from here on are this worker's, its plugins' own
  -- init_worker posts included.
  events.init_worker()
  local log = require "kong_host.pdk"
  for _, plugin in ipairs(ordered) do
    local handler = plugin.handler
    if handler.init_worker then
      log.set_namespace(plugin.name)
      local ok, err = pcall(handler.init_worker, handler)
      log.set_namespace(nil)
      if not ok then
        ngx.log(ngx.ERR, "failed to execute plugin '", plugin.name, ":init_worker' (", err, ")")
      end
    end
  end
  _M.check()
  local dbless = mode.dbless()
  every(events.POLL, function()
    -- The event count is read before the switch: a reconfigure event
    -- is posted after its document, so when it is delivered below the
    -- worker already runs that document (or a newer one).
    local upto = events.seq()
    if dbless then
      _M.check()
    end
    events.deliver(upto)
  end, "worker events")
  if not dbless then
    every(mode.worker_state_update_frequency, _M.check, "rebuild")
  end
end


return _M
