-- kong_host.admin: the Admin API (127.0.0.1:8001) and the status listener
-- (127.0.0.1:8007), with Kong's response shapes.
--
-- Admin API:  GET /, GET /status, GET /plugins, GET|PATCH /plugins/{id},
--             GET|POST /config, and the routes of every plugin's api.lua.
-- Status:     GET /status, and the routes of every plugin's status_api.lua.
--
-- As Kong in the mode the host claims (kong_host.mode):
--   PATCH /plugins/{id}  merges the patch into the stored config and
--                        validates the result (404, 400 as Kong).  With a
--                        database it is stored, and the serving worker
--                        posts Kong's local `crud` events; DB-less a valid
--                        PATCH is answered 405 (the "off" strategy's
--                        update is unsupported, kong/db/strategies/off).
--   GET|POST /config     DB-less only; with a database 400 and Kong's
--                        message (kong/api/routes/config.lua).  A POST
--                        posts `declarative`/`reconfigure` to every worker.
-- Every write validates first and then publishes a whole new document
-- (kong_host.store), so a bad request leaves the running config untouched;
-- the workers switch to it as kong_host.runtime describes, never on the
-- Admin API request itself.

local util = require "kong_host.util"
local store = require "kong_host.store"
local runtime = require "kong_host.runtime"
local declarative = require "kong_host.declarative"
local pdk = require "kong_host.pdk"
local mode = require "kong_host.mode"
local events = require "kong_host.events"

local ngx = ngx
local var = ngx.var
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local concat = table.concat
local lower = string.lower
local null = util.null

local _M = {}

local NOT_FOUND = { message = "Not found" }
local BAD_JSON = { message = "Cannot parse JSON body" }
-- kong/api/routes/config.lua, GET and POST with a database.
local DB_ONLY = { message = "this endpoint is only available when Kong is "
                            .. "configured to not use a database" }
-- The "off" strategy's update (kong/db/strategies/off/init.lua,
-- unsupported("update")) as endpoints.lua handle_error answers it: 405,
-- the error table without its `strategy`.
local DBLESS_PATCH = { code = 12, name = "operation unsupported",
                       message = "cannot update 'plugins' entities when not using a database" }


local function content_type()
  local ct = var.content_type
  if not ct then
    return nil
  end
  return lower(ct:match("^%s*([^;%s]+)") or "")
end


local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then
    return body
  end
  local file = ngx.req.get_body_file()
  if file then
    local f = io.open(file, "rb")
    if f then
      body = f:read("*a")
      f:close()
      return body
    end
  end
  return ""
end


-- Kong's schema-violation body for entity-level errors.
local function schema_violation(errs)
  local list = declarative.flatten(errs, "", {})
  local message
  if #list == 1 then
    message = "schema violation (" .. list[1] .. ")"
  else
    message = #list .. " schema violations (" .. concat(list, "; ") .. ")"
  end
  return { code = 2, name = "schema violation", message = message, fields = errs }
end


-- Reads a JSON object body.  Returns the table, or nil, status, body.
local function json_object_body()
  local ct = content_type()
  if ct and ct ~= "application/json" then
    return nil, 415, { message = "Unsupported Content-Type '" .. ct
                                  .. "': send application/json" }
  end
  local raw = read_body()
  if raw:match("^%s*$") then
    return {}
  end
  local v = util.json_decode(raw)
  if v == nil then
    return nil, 400, BAD_JSON
  end
  if type(v) ~= "table" or util.is_array(v) or getmetatable(v) == util.ARRAY_MT then
    return nil, 400, { message = "Cannot parse JSON body: expected a JSON object" }
  end
  return v
end


-- Runs `fn` under the writer lock; fn(doc) returns a new document to
-- publish (or nil, status, body to answer without publishing).
local function update(fn)
  local token, err = store.lock()
  if not token then
    return nil, 503, { message = "configuration is busy (" .. tostring(err) .. "), retry" }
  end
  local ok, doc, status, body = pcall(function()
    local _, json = store.read()
    local current = json and util.json_decode(json)
    return fn(current)
  end)
  if not ok then
    store.unlock(token)
    error(doc, 0)
  end
  if not doc then
    store.unlock(token)
    return nil, status, body
  end
  local json, jerr = util.json_encode(doc)
  if not json then
    store.unlock(token)
    return nil, 500, { message = "cannot encode config: " .. jerr }
  end
  local version, perr = store.publish(json)
  store.unlock(token)
  if not version then
    return nil, 500, { message = perr }
  end
  return doc
end


local function find_plugin(doc, key)
  for i, p in ipairs(doc and doc.plugins or {}) do
    if p.id == key or (p.instance_name ~= null and p.instance_name == key) then
      return p, i
    end
  end
end


local PATCHABLE = {
  config = true, enabled = true, tags = true, protocols = true,
  instance_name = true, name = true, id = true, service = true, route = true,
  consumer = true,
}


local function patch_plugin(key)
  local body, status, err_body = json_object_body()
  if not body then
    return status, err_body
  end

  local result, old
  local doc, ustatus, ubody = update(function(doc)
    local p, index = find_plugin(doc, key)
    if not p then
      return nil, 404, NOT_FOUND
    end
    local new = util.deep_copy(p)
    local errs = {}
    for k, v in pairs(body) do
      if not PATCHABLE[k] then
        errs[k] = "unknown field"
      elseif k == "enabled" then
        if type(v) ~= "boolean" then
          errs[k] = "expected a boolean"
        else
          new.enabled = v
        end
      elseif k == "name" or k == "id" then
        if v ~= p[k] then
          errs[k] = "cannot change the " .. k .. " of a plugin"
        end
      elseif k == "service" or k == "route" or k == "consumer" then
        local cur = p[k] ~= null and p[k] and p[k].id
        local want = type(v) == "table" and v.id or nil
        if cur ~= want then
          errs[k] = "changing a plugin's scope is not supported by the local host"
        end
      elseif k == "tags" then
        if v ~= null and (type(v) ~= "table" or (next(v) and not util.is_array(v))) then
          errs[k] = "expected a set"
        else
          new.tags = v == null and null or util.array(v)
        end
      elseif k == "instance_name" then
        if v ~= null and type(v) ~= "string" then
          errs[k] = "expected a string"
        else
          new.instance_name = v
        end
      elseif k == "protocols" then
        if type(v) ~= "table" or not util.is_array(v) then
          errs[k] = "expected a set"
        else
          new.protocols = util.array(v)
        end
      end
    end
    if body.config ~= nil and (type(body.config) ~= "table" or util.is_array(body.config)) then
      errs.config = body.config == null and "required field missing" or "expected a record"
    end
    if next(errs) then
      return nil, 400, schema_violation(errs)
    end
    if body.config ~= nil then
      local schema = require "kong_host.schema"
      local merged = schema.merge_patch(util.deep_copy(p.config), body.config)
      local plugin = runtime.available()[p.name]
      local processed, _, _, kong_body = declarative.process_plugin_config(plugin, merged)
      if not processed then
        return nil, 400, kong_body
      end
      new.config = processed
    end
    if mode.dbless() then
      -- Kong validates (check_update) before the strategy refuses.
      return nil, 405, DBLESS_PATCH
    end
    new.updated_at = ngx.time()
    doc.plugins[index] = new
    result, old = new, p
    return doc
  end)
  if not doc then
    return ustatus, ubody
  end
  -- DAO:post_crud_event posts "dao:crud" in this worker only; its handler
  -- (kong/runloop/events.lua dao_crud_handler) posts "crud"/"plugins" and
  -- "crud"/"plugins:update" with post_local, entities without nulls.
  local data = {
    operation = "update",
    entity = util.strip_nulls(util.deep_copy(result)),
    old_entity = util.strip_nulls(util.deep_copy(old)),
    schema = { name = "plugins", table = "plugins" },
  }
  for _, channel in ipairs { "plugins", "plugins:update" } do
    local ok, err = events.post_local("crud", channel, data)
    if not ok then
      ngx.log(ngx.ERR, "[events] could not broadcast crud event: ", err)
    end
  end
  return 200, result
end


-- Extracts one field of a multipart/form-data body.
local function multipart_field(body, name)
  local boundary = (var.content_type or ""):match("boundary=\"?([^\";]+)\"?")
  if not boundary then
    return nil
  end
  local delim = "--" .. boundary
  local pos = 1
  while true do
    local s, e = body:find(delim, pos, true)
    if not s then
      return nil
    end
    local next_s = body:find("\r\n" .. delim, e + 1, true)
    if not next_s then
      return nil
    end
    local part = body:sub(e + 3, next_s - 1)
    local head_end = part:find("\r\n\r\n", 1, true)
    if head_end then
      local headers = part:sub(1, head_end - 1)
      local pname = headers:match('[Nn]ame="([^"]*)"')
      if pname == name then
        return part:sub(head_end + 4)
      end
    end
    pos = next_s + 2
  end
end


local function parse_error(msg)
  return { code = 14, name = "invalid declarative configuration", message = msg, fields = {} }
end


-- Kong's reconfigure data after POST /config (kong/db/declarative/
-- import.lua, load_into_cache_with_events_no_lock): { default workspace,
-- router hash, plugins hash, balancer hash }, where the hashes come only
-- with a hybrid-mode sync: kong/api/routes/config.lua passes none, so
-- the three are nil and every worker rebuilds everything.
local function reconfigure_data()
  return { runtime.DEFAULT_WORKSPACE_ID, nil, nil, nil }
end


-- GET /config (DB-less): the current document, as Kong's export
-- (kong/db/declarative/export.lua): flat entity lists, foreign keys as
-- plain ids, `_transform: false`, in the `config` string.  Kong writes
-- YAML there; the host writes JSON, which a YAML parser reads too.  POST
-- it back to /config and nothing changes.
local function get_config()
  if not mode.dbless() then
    return 400, DB_ONLY
  end
  local doc = runtime.document()
  local out = { _format_version = "3.0", _transform = false }
  for _, kind in ipairs { "services", "routes", "upstreams", "targets", "plugins" } do
    local list = {}
    for i, e in ipairs(doc and doc[kind] or {}) do
      local x = util.strip_nulls(util.deep_copy(e))
      x.created_at, x.updated_at = nil, nil
      for _, k in ipairs { "service", "route", "upstream" } do
        if type(x[k]) == "table" then
          x[k] = x[k].id
        end
      end
      list[i] = x
    end
    if #list > 0 then
      out[kind] = util.array(list)
    end
  end
  local json, err = util.json_encode(out)
  if not json then
    return 500, { message = "cannot encode config: " .. tostring(err) }
  end
  return 200, { config = json }
end


local function post_config()
  if not mode.dbless() then
    return 400, DB_ONLY
  end
  local ct = content_type()
  local raw = read_body()
  local input, err
  if ct == "application/json" then
    input = util.json_decode(raw)
    if input == nil then
      return 400, BAD_JSON
    end
    if type(input) == "table" and type(input.config) == "string" then
      input, err = declarative.parse(input.config)
    end
  elseif ct == "application/x-www-form-urlencoded" then
    local args = ngx.req.get_post_args(100)
    local text = type(args.config) == "string" and args.config
    if not text then
      return 400, parse_error("expected a 'config' form field")
    end
    input, err = declarative.parse(text)
  elseif ct == "multipart/form-data" then
    local text = multipart_field(raw, "config")
    if not text then
      return 400, parse_error("expected a 'config' form field")
    end
    input, err = declarative.parse(text)
  elseif ct == nil or ct == "text/yaml" or ct == "application/yaml"
      or ct == "application/x-yaml" or ct == "text/x-yaml" or ct == "text/plain" then
    input, err = declarative.parse(raw)
  else
    return 415, { message = "Unsupported Content-Type '" .. ct .. "': send "
                            .. "application/json, text/yaml or a 'config' form field" }
  end
  if err then
    return 400, parse_error(err)
  end

  local doc, ebody = declarative.load(input, runtime.available())
  if not doc then
    return 400, ebody
  end
  local published, status, body = update(function()
    return doc
  end)
  if not published then
    return status, body
  end
  -- To every worker, after the document is stored (Kong:
  -- declarative_reconfigure_notify after loading LMDB); each switches and
  -- then runs the plugins' handlers (kong_host.runtime).
  local posted, perr = events.post("declarative", "reconfigure", reconfigure_data())
  if not posted then
    kong.log.err("failed to broadcast reconfigure event: ", perr)
    return 500, { message = "An unexpected error occurred" }
  end
  return 201, published
end


local function plugin_list()
  local doc = runtime.document()
  return doc and doc.plugins or {}
end


local function root()
  local available, in_use = {}, {}
  for _, p in ipairs(runtime.ordered()) do
    available[p.name] = { version = p.handler.VERSION or null, priority = p.handler.PRIORITY }
  end
  local seen = {}
  for _, p in ipairs(plugin_list()) do
    if not seen[p.name] then
      seen[p.name] = true
      in_use[#in_use + 1] = p.name
    end
  end
  local workers, applied = {}, {}
  for i = 0, ngx.worker.count() - 1 do
    workers[#workers + 1] = ngx.shared.kong_host:get("worker:" .. i)
    applied[#applied + 1] = ngx.shared.kong_host:get("applied:" .. i) or null
  end
  local master
  local f = io.open(kong.configuration.prefix .. "/logs/nginx.pid")
  if f then
    master = tonumber(f:read("*l"))
    f:close()
  end
  return {
    version = kong.version,
    node_id = kong.node.get_id(),
    hostname = kong.node.get_hostname(),
    tagline = "Welcome to kong",
    lua_version = jit and jit.version or _VERSION,
    host = "kong_host (local stand-in for Kong, see kong/host/README.md)",
    plugins = {
      available_on_server = available,
      enabled_in_cluster = util.array(in_use),
    },
    configuration = kong.configuration,
    pids = { master = master or null, workers = util.array(workers) },
    -- Host only (Kong has no such field): the stored document's version
    -- and the one each worker runs, so a test can wait for a change to
    -- be in force everywhere.
    kong_host = { config_version = store.version() or null, applied = util.array(applied) },
  }
end


local function status()
  local server = {}
  local res = ngx.location.capture("/kong_host_nginx_status")
  if res and res.status == 200 then
    local active = res.body:match("Active connections:%s*(%d+)")
    local accepted, handled, total = res.body:match("(%d+)%s+(%d+)%s+(%d+)")
    local reading, writing, waiting =
      res.body:match("Reading:%s*(%d+)%s*Writing:%s*(%d+)%s*Waiting:%s*(%d+)")
    server = {
      connections_active = tonumber(active),
      connections_accepted = tonumber(accepted),
      connections_handled = tonumber(handled),
      total_requests = tonumber(total),
      connections_reading = tonumber(reading),
      connections_writing = tonumber(writing),
      connections_waiting = tonumber(waiting),
    }
  end
  local dicts = {}
  for name, dict in pairs(ngx.shared) do
    local capacity = dict:capacity()
    dicts[name] = { capacity = capacity, allocated_slabs = capacity - dict:free_space() }
  end
  -- kong/api/routes/health.lua: DB-less answers the configuration hash
  -- instead of the database entry.
  if mode.dbless() then
    local _, hash = runtime.document()
    return {
      server = server,
      memory = { lua_shared_dicts = dicts },
      configuration_hash = hash or null,
    }
  end
  return {
    database = { reachable = true },
    server = server,
    memory = { lua_shared_dicts = dicts },
  }
end


-- Route table: { method -> handler } per path pattern.  Core routes,
-- then the plugins' api.lua / status_api.lua routes.
local function core_admin_routes()
  return {
    ["/"] = { GET = function() return 200, root() end },
    ["/status"] = { GET = function() return 200, status() end },
    ["/plugins"] = {
      GET = function()
        local data = {}
        for _, p in ipairs(plugin_list()) do
          data[#data + 1] = p
        end
        return 200, { data = util.array(data), next = null }
      end,
    },
    ["/plugins/:plugins"] = {
      GET = function(params)
        local p = find_plugin(runtime.document(), params.plugins)
        if not p then
          return 404, NOT_FOUND
        end
        return 200, p
      end,
      PATCH = function(params)
        return patch_plugin(params.plugins)
      end,
    },
    ["/config"] = { GET = get_config, POST = post_config },
  }
end


local function core_status_routes()
  return {
    ["/status"] = { GET = function() return 200, status() end },
  }
end


local function compile(routes, plugin_key)
  local compiled = {}
  local function add(pattern, methods, plugin)
    local segs = {}
    for seg in pattern:gmatch("[^/]+") do
      segs[#segs + 1] = seg
    end
    local literals = 0
    for _, s in ipairs(segs) do
      if s:sub(1, 1) ~= ":" then
        literals = literals + 1
      end
    end
    compiled[#compiled + 1] = {
      pattern = pattern, segs = segs, literals = literals,
      methods = methods, plugin = plugin,
    }
  end
  for pattern, methods in pairs(routes) do
    add(pattern, methods)
  end
  for _, plugin in ipairs(runtime.ordered()) do
    local api = plugin[plugin_key]
    if type(api) == "table" then
      for pattern, methods in pairs(api) do
        if type(pattern) == "string" and type(methods) == "table" then
          add(pattern, methods, plugin)
        end
      end
    end
  end
  -- More literal segments first: /plugins/schema beats /plugins/:id.
  table.sort(compiled, function(a, b)
    if a.literals ~= b.literals then
      return a.literals > b.literals
    end
    return a.pattern < b.pattern
  end)
  return compiled
end


local function match(compiled, path)
  local segs = {}
  for seg in path:gmatch("[^/]+") do
    segs[#segs + 1] = ngx.unescape_uri(seg)
  end
  for _, r in ipairs(compiled) do
    if #r.segs == #segs then
      local params = {}
      local ok = true
      for i, s in ipairs(r.segs) do
        if s:sub(1, 1) == ":" then
          params[s:sub(2)] = segs[i]
        elseif s ~= segs[i] then
          ok = false
          break
        end
      end
      if ok then
        return r, params
      end
    end
  end
end


-- Calls a plugin's api.lua handler as Kong does: self.params holds the
-- path params, query args and body fields; the handler answers with
-- kong.response.exit().
local function call_plugin_handler(ctx, r, fn, params)
  for k, v in pairs(ngx.req.get_uri_args(100)) do
    if params[k] == nil then
      params[k] = v
    end
  end
  local method = ngx.req.get_method()
  if method ~= "GET" and method ~= "HEAD" then
    local ct = content_type()
    if ct == "application/json" then
      local raw = read_body()
      if not raw:match("^%s*$") then
        local body = util.json_decode(raw)
        if type(body) ~= "table" or util.is_array(body) then
          return pdk.send(400, BAD_JSON)
        end
        for k, v in pairs(body) do
          if params[k] == nil then
            params[k] = v
          end
        end
      end
    elseif ct == "application/x-www-form-urlencoded" then
      ngx.req.read_body()
      for k, v in pairs(ngx.req.get_post_args(100)) do
        if params[k] == nil then
          params[k] = v
        end
      end
    end
  end
  local self = { params = params, req = { method = method, headers = ngx.req.get_headers() } }
  ctx.KONG_PLUGIN_NS = r.plugin.name
  ctx.delay_response = true
  local co = coroutine.create(fn)
  local ok, err = coroutine.resume(co, self, kong.db, {})
  ctx.delay_response = nil
  if not ok then
    kong.log.err(debug.traceback(co, tostring(err)))
    ctx.KONG_PLUGIN_NS = nil
    return pdk.send(500, { message = "An unexpected error occurred" })
  end
  ctx.KONG_PLUGIN_NS = nil
  if ctx.delayed_response then
    return pdk.flush(ctx)
  end
  -- A handler may write its response itself (ngx.print), as Kong's
  -- prometheus plugin does for /metrics; Kong then sends nothing more.
  if ngx.headers_sent then
    return
  end
  kong.log.err(r.pattern, ": handler returned without kong.response.exit()")
  return pdk.send(500, { message = "An unexpected error occurred" })
end


local compiled_admin, compiled_status


local function serve(compiled)
  local ctx = ngx.ctx
  local path = (var.request_uri or "/"):match("^[^?]*")
  local r, params = match(compiled, path)
  if not r then
    return pdk.send(404, NOT_FOUND)
  end
  local method = ngx.req.get_method()
  local fn = r.methods[method]
  if not fn then
    return pdk.send(405, { message = "Method not allowed" })
  end
  if r.plugin then
    return call_plugin_handler(ctx, r, fn, params)
  end
  local ok, status_code, body = pcall(fn, params)
  if not ok then
    ngx.log(ngx.ERR, "admin API ", method, " ", path, ": ", status_code)
    return pdk.send(500, { message = "An unexpected error occurred" })
  end
  return pdk.send(status_code, body)
end


function _M.serve_admin()
  compiled_admin = compiled_admin or compile(core_admin_routes(), "api")
  return serve(compiled_admin)
end


function _M.serve_status()
  compiled_status = compiled_status or compile(core_status_routes(), "status_api")
  return serve(compiled_status)
end


return _M
