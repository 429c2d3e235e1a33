-- kong_host.runtime: what one worker builds from the current declarative
-- document — the router, the upstream balancers, the plugin configs per
-- route — and the plugin lifecycle calls (init_worker, configure).
--
-- Plugin modules are loaded once, in the master's init phase, the way Kong
-- loads them: kong.plugins.<name>.handler and .schema, and the optional
-- .api (Admin API) and .status_api (status listener) route tables.

local util = require "kong_host.util"
local store = require "kong_host.store"

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


local function call_configure(st)
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


-- init_worker: each plugin's init_worker(), then configure() with the
-- current configs, then a 1 s timer that picks up changes made elsewhere.
function _M.init_worker()
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
  local ok, err = ngx.timer.every(1, function(premature)
    if not premature then
      _M.check()
    end
  end)
  if not ok then
    ngx.log(ngx.ERR, "cannot start the config timer: ", err)
  end
end


return _M
