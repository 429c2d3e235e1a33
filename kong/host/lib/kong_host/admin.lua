-- kong_host.admin: the Admin API (127.0.0.1:8001) and the status listener
-- (127.0.0.1:8007), with Kong's response shapes.
--
-- Admin API:  GET /, GET /status, GET /plugins, GET|PATCH /plugins/{id},
--             POST /config, and the routes of every plugin's api.lua.
-- Status:     GET /status, and the routes of every plugin's status_api.lua.
--
-- PATCH /plugins/{id} follows Kong's database-mode semantics (merge the
-- patch into the stored config, then validate the result); Kong itself
-- refuses PATCH in DB-less mode, where POST /config or decK is the way.
-- Every write validates first and then publishes a whole new document
-- (kong_host.store), so a bad request leaves the running config untouched
-- and a good one reaches every worker at its next request.

local util = require "kong_host.util"
local store = require "kong_host.store"
local runtime = require "kong_host.runtime"
local declarative = require "kong_host.declarative"
local pdk = require "kong_host.pdk"

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
  runtime.check()
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

  local result
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
    new.updated_at = ngx.time()
    doc.plugins[index] = new
    result = new
    return doc
  end)
  if not doc then
    return ustatus, ubody
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


local function post_config()
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
  return 201, published
end


local function plugin_list()
  local st = runtime.check()
  return st and st.doc.plugins or {}
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
  local workers = {}
  for i = 0, ngx.worker.count() - 1 do
    workers[#workers + 1] = ngx.shared.kong_host:get("worker:" .. i)
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
  local st = runtime.check()
  return {
    database = { reachable = true },
    server = server,
    memory = { lua_shared_dicts = dicts },
    configuration_hash = st and st.hash or null,
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
        local st = runtime.check()
        local p = find_plugin(st and st.doc, params.plugins)
        if not p then
          return 404, NOT_FOUND
        end
        return 200, p
      end,
      PATCH = function(params)
        return patch_plugin(params.plugins)
      end,
    },
    ["/config"] = { POST = post_config },
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
  runtime.check()
  compiled_admin = compiled_admin or compile(core_admin_routes(), "api")
  return serve(compiled_admin)
end


function _M.serve_status()
  runtime.check()
  compiled_status = compiled_status or compile(core_status_routes(), "status_api")
  return serve(compiled_status)
end


return _M
