-- kong_host.declarative: reads the subset of Kong's declarative config
-- (kong.yml, `_format_version: "3.0"`) that the local host implements, and
-- turns it into the normalised document every worker builds from.
--
-- Supported: services (url or protocol/host/port/path, http only), routes
-- (paths by prefix, strip_path, preserve_host), upstreams with targets
-- (round-robin), plugins scoped globally, to a service or to a route.
-- Anything else is refused with a message that says so, rather than being
-- ignored: a config the host silently half-applies would route differently
-- from Kong.
--
-- The normalised document has Kong's entity shapes: flat arrays
-- `services`, `routes`, `upstreams`, `targets`, `plugins`, every entity
-- with an `id`, references as `{ id = ... }`, unset fields as null.

local util = require "kong_host.util"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local sort = table.sort
local fmt = string.format

local null = util.null
local array = util.array

local _M = {}

local FORMAT_VERSIONS = { ["1.1"] = true, ["2.1"] = true, ["3.0"] = true }

local TOP_LEVEL = {
  _format_version = true, _transform = true, _comment = true,
  services = true, routes = true, upstreams = true, targets = true,
  plugins = true,
}

local DEFAULT_WORKSPACE = "default"


local function is_null(v)
  return v == nil or v == null
end


-- An array, or an empty table (YAML's [] cannot be told from {}).
local function is_list(v)
  return type(v) == "table" and (next(v) == nil or util.is_array(v))
end


-- Error tree helpers.  `errs` mirrors the input: errs.services[2].url = msg.
-- A path is a list of keys; at(path, k1, k2) is a new path below it.
local function at(path, ...)
  local p = { unpack(path) }
  for i = 1, select("#", ...) do
    p[#p + 1] = select(i, ...)
  end
  return p
end

local function set_err(errs, path, msg)
  local t = errs
  for i = 1, #path - 1 do
    local k = path[i]
    t[k] = t[k] or {}
    t = t[k]
  end
  local last = path[#path]
  if type(t[last]) == "table" and type(msg) ~= "table" then
    t[last]["@entity"] = msg
  else
    t[last] = msg
  end
end


local function flatten(errs, prefix, out)
  local keys = {}
  for k in pairs(errs) do
    keys[#keys + 1] = k
  end
  sort(keys, function(a, b)
    if type(a) == type(b) then
      return a < b
    end
    return type(a) == "number"
  end)
  for _, k in ipairs(keys) do
    local v = errs[k]
    local p
    if type(k) == "number" then
      p = prefix .. "[" .. k .. "]"
    elseif k == "@entity" then
      p = prefix
    else
      p = prefix == "" and k or prefix .. "." .. k
    end
    if type(v) == "table" then
      flatten(v, p, out)
    else
      out[#out + 1] = (p == "" and "" or p .. ": ") .. tostring(v)
    end
  end
  return out
end

_M.flatten = flatten


-- Kong's error body for an invalid declarative config.
local function error_body(errs)
  return {
    code = 14,
    name = "invalid declarative configuration",
    message = "declarative config is invalid: " .. concat(flatten(errs, "", {}), "; "),
    fields = errs,
  }
end

_M.error_body = error_body


-- Field checkers: each returns the normalised value, or nil and a message.
local function check_string(v)
  if type(v) ~= "string" then
    return nil, "expected a string"
  end
  if v == "" then
    return nil, "length must be at least 1"
  end
  return v
end


local function check_bool(v)
  if type(v) ~= "boolean" then
    return nil, "expected a boolean"
  end
  return v
end


local function check_int(min, max)
  return function(v)
    if type(v) ~= "number" or v % 1 ~= 0 then
      return nil, "expected an integer"
    end
    if v < min or v > max then
      return nil, fmt("value should be between %d and %d", min, max)
    end
    return v
  end
end


local function check_uuid(v)
  if not util.is_uuid(v) then
    return nil, "expected a valid UUID"
  end
  return v
end


local function check_tags(v)
  if type(v) ~= "table" or not (util.is_array(v) or next(v) == nil) then
    return nil, "expected a set"
  end
  for _, t in ipairs(v) do
    if type(t) ~= "string" then
      return nil, "expected a string"
    end
  end
  return array(v)
end


local function check_protocols(allowed)
  return function(v)
    if type(v) ~= "table" or not util.is_array(v) then
      return nil, "expected a set"
    end
    for _, p in ipairs(v) do
      if not allowed[p] then
        return nil, "expected one of: " .. concat((function()
          local l = {}
          for k in pairs(allowed) do l[#l + 1] = k end
          sort(l)
          return l
        end)(), ", ")
      end
    end
    return array(v)
  end
end


local HTTP_PROTOCOLS = { http = true, https = true }
local PLUGIN_PROTOCOLS = { grpc = true, grpcs = true, http = true, https = true }


-- Host names the host can connect to without a resolver.
local function check_peer_host(v)
  if type(v) ~= "string" or v == "" then
    return nil, "expected a string"
  end
  if v == "localhost" then
    return "127.0.0.1"
  end
  if v:match("^%d+%.%d+%.%d+%.%d+$") then
    for octet in v:gmatch("%d+") do
      if tonumber(octet) > 255 then
        return nil, "invalid IPv4 address"
      end
    end
    return v
  end
  return nil, "the local host resolves no DNS names: use an IPv4 address, "
              .. "localhost, or the name of an upstream"
end


-- Walks `input` with a field table { name = checker }, copying accepted
-- values into `out`; unknown fields are errors.
local function check_fields(input, fields, out, errs, path)
  for k, v in pairs(input) do
    local checker = fields[k]
    local p = at(path, k)
    if checker == nil then
      set_err(errs, p, "unknown field")
    elseif checker ~= true and not is_null(v) then
      local value, err = checker(v)
      if err then
        set_err(errs, p, err)
      else
        out[k] = value
      end
    end
  end
end


local function parse_url(url)
  if type(url) ~= "string" then
    return nil, "expected a string"
  end
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.+)$")
  if not scheme then
    return nil, "missing host in url"
  end
  local hostport, path = rest:match("^([^/]*)(/.*)$")
  if not hostport then
    hostport, path = rest, nil
  end
  local host, port = hostport:match("^([^:]+):(%d+)$")
  if not host then
    host = hostport
  end
  if host == "" then
    return nil, "missing host in url"
  end
  return { protocol = scheme:lower(), host = host, port = tonumber(port), path = path }
end


local function new_ctx(available, now)
  return {
    available = available,
    now = now,
    errs = {},
    services = array(), routes = array(), upstreams = array(),
    targets = array(), plugins = array(),
    ids = { services = {}, routes = {}, upstreams = {}, targets = {}, plugins = {} },
    names = { services = {}, routes = {}, upstreams = {} },
    plugin_keys = {},
    pending_plugins = {},
    pending_routes = {},
    pending_targets = {},
  }
end


local function claim_id(ctx, kind, id, path)
  if ctx.ids[kind][id] then
    set_err(ctx.errs, at(path, "id"), fmt("uniqueness violation: '%s' entity with primary key "
                             .. "set to '%s' already declared", kind, id))
    return false
  end
  ctx.ids[kind][id] = true
  return true
end


local function claim_name(ctx, kind, name, entity, path)
  if ctx.names[kind][name] then
    set_err(ctx.errs, at(path, "name"), fmt("uniqueness violation: '%s' entity with name set "
                             .. "to '%s' already declared", kind, name))
    return
  end
  ctx.names[kind][name] = entity
end


local function timestamps(e, now)
  e.created_at = now
  e.updated_at = now
end


-- Resolves a foreign reference written as a name, { name = }, or { id = }.
local function resolve_ref(ctx, kind, ref)
  if type(ref) == "string" then
    if util.is_uuid(ref) and ctx.ids[kind][ref] then
      return ref
    end
    local e = ctx.names[kind][ref]
    return e and e.id
  end
  if type(ref) == "table" then
    if ref.id ~= nil then
      return ctx.ids[kind][ref.id] and ref.id or nil
    end
    if ref.name ~= nil then
      local e = ctx.names[kind][ref.name]
      return e and e.id
    end
  end
  return nil
end


local PLUGIN_FIELDS = {
  id = check_uuid, name = check_string, config = true, enabled = check_bool,
  protocols = check_protocols(PLUGIN_PROTOCOLS), tags = check_tags,
  instance_name = check_string, service = true, route = true,
}


local function read_plugin(ctx, input, path, scope)
  if type(input) ~= "table" or util.is_array(input) then
    set_err(ctx.errs, path, "expected a record")
    return
  end
  local p = {
    enabled = true, config = null, protocols = array { "grpc", "grpcs", "http", "https" },
    tags = null, instance_name = null, consumer = null, service = null, route = null,
  }
  check_fields(input, PLUGIN_FIELDS, p, ctx.errs, path)
  if input.consumer ~= nil then
    set_err(ctx.errs, at(path, "consumer"), "consumers are not supported by the local host")
  end
  if type(p.name) ~= "string" then
    set_err(ctx.errs, at(path, "name"), "required field missing")
    return
  end
  p.config = input.config
  ctx.pending_plugins[#ctx.pending_plugins + 1] = {
    entity = p, path = path, scope = scope, input = input,
  }
end


-- Kong's route fields whose defaults the host implements (and GET /config
-- exports): accepted with those values, as Kong accepts its own export.
local function check_path_handling(v)
  if v ~= "v0" then
    return nil, "the local host implements path_handling v0 only"
  end
  return v
end


local function check_redirect_code(v)
  if v ~= 426 and v ~= 301 and v ~= 302 and v ~= 307 and v ~= 308 then
    return nil, "expected one of: 426, 301, 302, 307, 308"
  end
  return v
end


local ROUTE_FIELDS = {
  id = check_uuid, name = check_string, paths = true, strip_path = check_bool,
  preserve_host = check_bool, protocols = check_protocols(HTTP_PROTOCOLS),
  tags = check_tags, service = true, plugins = true,
  path_handling = check_path_handling, regex_priority = check_int(-2147483648, 2147483647),
  https_redirect_status_code = check_redirect_code,
}


local function check_paths(v)
  if type(v) ~= "table" or not util.is_array(v) then
    return nil, "expected an array"
  end
  for _, path in ipairs(v) do
    if type(path) ~= "string" then
      return nil, "expected a string"
    end
    if path:sub(1, 1) == "~" then
      return nil, "regex paths are not supported by the local host"
    end
    if path:sub(1, 1) ~= "/" then
      return nil, "should start with: / (fixed path) or ~/ (regex path)"
    end
  end
  return array(v)
end


local function read_route(ctx, input, path, service_id)
  if type(input) ~= "table" or util.is_array(input) then
    set_err(ctx.errs, path, "expected a record")
    return
  end
  local r = {
    strip_path = true, preserve_host = false, protocols = array { "http", "https" },
    tags = null, name = null, service = null, path_handling = "v0",
    regex_priority = 0, https_redirect_status_code = 426,
  }
  check_fields(input, ROUTE_FIELDS, r, ctx.errs, path)
  local paths, err = check_paths(input.paths)
  if is_null(input.paths) then
    set_err(ctx.errs, at(path, "paths"),
            "required field missing (the local host routes by path only)")
    return
  elseif err then
    set_err(ctx.errs, at(path, "paths"), err)
    return
  end
  r.paths = paths
  r.id = r.id or util.uuid_for("routes:" .. (type(r.name) == "string" and r.name
                                              or concat(path, ".")))
  if not claim_id(ctx, "routes", r.id, path) then
    return
  end
  if type(r.name) == "string" then
    claim_name(ctx, "routes", r.name, r, path)
  end
  timestamps(r, ctx.now)
  ctx.routes[#ctx.routes + 1] = r
  if service_id then
    r.service = { id = service_id }
  elseif input.service ~= nil then
    ctx.pending_routes[#ctx.pending_routes + 1] = { entity = r, ref = input.service, path = path }
  end
  if input.plugins ~= nil then
    if type(input.plugins) ~= "table" then
      set_err(ctx.errs, at(path, "plugins"), "expected an array")
    else
      for i, pl in ipairs(input.plugins) do
        read_plugin(ctx, pl, at(path, "plugins", i), { route = r.id })
      end
    end
  end
end


local SERVICE_FIELDS = {
  id = check_uuid, name = check_string, url = true, protocol = check_string,
  host = check_string, port = check_int(0, 65535), path = check_string,
  retries = check_int(0, 32767), connect_timeout = check_int(1, 2147483646),
  write_timeout = check_int(1, 2147483646), read_timeout = check_int(1, 2147483646),
  enabled = check_bool, tags = check_tags, routes = true, plugins = true,
}


local function read_service(ctx, input, path)
  if type(input) ~= "table" or util.is_array(input) then
    set_err(ctx.errs, path, "expected a record")
    return
  end
  local s = {
    name = null, protocol = "http", port = 80, path = null, retries = 5,
    connect_timeout = 60000, write_timeout = 60000, read_timeout = 60000,
    enabled = true, tags = null,
  }
  check_fields(input, SERVICE_FIELDS, s, ctx.errs, path)
  if input.url ~= nil then
    local u, err = parse_url(input.url)
    if not u then
      set_err(ctx.errs, at(path, "url"), err)
      return
    end
    s.protocol, s.host, s.path = u.protocol, u.host, u.path or null
    s.port = u.port or (u.protocol == "https" and 443 or 80)
  end
  if type(s.host) ~= "string" then
    set_err(ctx.errs, at(path, "host"), "required field missing")
    return
  end
  if s.protocol ~= "http" then
    set_err(ctx.errs, at(path, input.url ~= nil and "url" or "protocol"),
            "the local host proxies plain http only")
  elseif not ctx.names.upstreams[s.host] and not check_peer_host(s.host) then
    set_err(ctx.errs, at(path, input.url ~= nil and "url" or "host"),
            "host '" .. s.host .. "' is neither an upstream nor an IPv4 address: "
            .. "the local host resolves no DNS names")
  end
  s.id = s.id or util.uuid_for("services:" .. (type(s.name) == "string" and s.name
                                                or concat(path, ".")))
  if not claim_id(ctx, "services", s.id, path) then
    return
  end
  if type(s.name) == "string" then
    claim_name(ctx, "services", s.name, s, path)
  end
  timestamps(s, ctx.now)
  ctx.services[#ctx.services + 1] = s
  for _, key in ipairs { "routes", "plugins" } do
    local list = input[key]
    if list ~= nil and not is_list(list) then
      set_err(ctx.errs, at(path, key), "expected an array")
    elseif list ~= nil then
      for i, item in ipairs(list) do
        local ip = at(path, key, i)
        if key == "routes" then
          read_route(ctx, item, ip, s.id)
        else
          read_plugin(ctx, item, ip, { service = s.id })
        end
      end
    end
  end
end


local function parse_target(v)
  if type(v) ~= "string" then
    return nil, "expected a string"
  end
  local host, port = v:match("^([^:]+):(%d+)$")
  if not host then
    host, port = v, "8000" -- Kong's default target port
  end
  port = tonumber(port)
  if port < 1 or port > 65535 then
    return nil, "invalid port number"
  end
  local ip, err = check_peer_host(host)
  if not ip then
    return nil, err
  end
  return ip, port
end


local TARGET_FIELDS = {
  id = check_uuid, target = true, weight = check_int(0, 65535), tags = check_tags,
  upstream = true,
}


local function read_target(ctx, input, path, upstream_id)
  if type(input) ~= "table" or util.is_array(input) then
    set_err(ctx.errs, path, "expected a record")
    return
  end
  local t = { weight = 100, tags = null }
  check_fields(input, TARGET_FIELDS, t, ctx.errs, path)
  local ip, port = parse_target(input.target)
  if not ip then
    set_err(ctx.errs, at(path, "target"),
            is_null(input.target) and "required field missing" or port)
    return
  end
  t.target = ip .. ":" .. port
  t.id = t.id or util.uuid_for("targets:" .. concat(path, ".") .. ":" .. t.target)
  if not claim_id(ctx, "targets", t.id, path) then
    return
  end
  timestamps(t, ctx.now)
  ctx.targets[#ctx.targets + 1] = t
  if upstream_id then
    t.upstream = { id = upstream_id }
  else
    ctx.pending_targets[#ctx.pending_targets + 1] = {
      entity = t, ref = input.upstream, path = path,
    }
  end
end


local UPSTREAM_FIELDS = {
  id = check_uuid, name = check_string, algorithm = true, slots = check_int(10, 65536),
  tags = check_tags, targets = true,
}


local function read_upstream(ctx, input, path)
  if type(input) ~= "table" or util.is_array(input) then
    set_err(ctx.errs, path, "expected a record")
    return
  end
  local u = { algorithm = "round-robin", slots = 10000, tags = null }
  check_fields(input, UPSTREAM_FIELDS, u, ctx.errs, path)
  if input.algorithm ~= nil and input.algorithm ~= "round-robin" then
    set_err(ctx.errs, at(path, "algorithm"), "the local host balances round-robin only")
  end
  if type(u.name) ~= "string" then
    set_err(ctx.errs, at(path, "name"), "required field missing")
    return
  end
  u.id = u.id or util.uuid_for("upstreams:" .. u.name)
  if not claim_id(ctx, "upstreams", u.id, path) then
    return
  end
  claim_name(ctx, "upstreams", u.name, u, path)
  timestamps(u, ctx.now)
  ctx.upstreams[#ctx.upstreams + 1] = u
  if input.targets ~= nil then
    if type(input.targets) ~= "table" then
      set_err(ctx.errs, at(path, "targets"), "expected an array")
    else
      for i, t in ipairs(input.targets) do
        read_target(ctx, t, at(path, "targets", i), u.id)
      end
    end
  end
end


-- Validates and defaults one plugin config through the plugin's schema.
-- Returns the config, or nil, the error tree for `fields`, and a message.
function _M.process_plugin_config(plugin, config)
  local schema = require "kong_host.schema"
  -- With nulls, as the Admin API shows a config; the runtime strips them.
  local processed, errs = schema.process_config(plugin.schema, config, { nulls = true })
  if not processed then
    local body = schema.error_response(errs)
    local fields = type(body) == "table" and body.fields or errs
    if type(fields) == "table" and fields.config ~= nil then
      fields = fields.config
    end
    return nil, fields, type(body) == "table" and body.message or nil, body
  end
  return processed
end


local function finish_plugins(ctx)
  for _, pending in ipairs(ctx.pending_plugins) do
    local p, path, scope, input = pending.entity, pending.path, pending.scope, pending.input
    local ok = true
    local function fail(field, msg)
      set_err(ctx.errs, field and at(path, field) or path, msg)
      ok = false
    end
    local service_id, route_id = scope.service, scope.route
    if not scope.service and not scope.route then
      if input.service ~= nil and not is_null(input.service) then
        service_id = resolve_ref(ctx, "services", input.service)
        if not service_id then
          fail("service", "the referenced service does not exist")
        end
      end
      if input.route ~= nil and not is_null(input.route) then
        route_id = resolve_ref(ctx, "routes", input.route)
        if not route_id then
          fail("route", "the referenced route does not exist")
        end
      end
    end
    local plugin = ctx.available[p.name]
    if not plugin then
      fail("name", fmt("plugin '%s' not enabled; add it to the 'plugins' "
                       .. "configuration property", p.name))
    end
    if ok then
      p.service = service_id and { id = service_id } or null
      p.route = route_id and { id = route_id } or null
      local key = fmt("%s:%s:%s", p.name, route_id or "", service_id or "")
      if input.protocols == nil and plugin then
        -- Kong defaults a plugin's protocols from the plugin's own schema.
        for _, entry in ipairs(plugin.schema.fields or {}) do
          local def = entry.protocols
          if type(def) == "table" and type(def.default) == "table" then
            p.protocols = array(util.deep_copy(def.default))
          end
        end
      end
      if ctx.plugin_keys[key] then
        fail(nil, fmt("uniqueness violation: 'plugins' entity with name set to "
                      .. "'%s' already declared for this scope", p.name))
      else
        ctx.plugin_keys[key] = true
        p.id = p.id or util.uuid_for("plugins:" .. key)
        if claim_id(ctx, "plugins", p.id, path) then
          local config = p.config
          if is_null(config) then
            config = {}
          end
          if type(config) ~= "table" or util.is_array(config) then
            fail("config", "expected a record")
          else
            local processed, errs = _M.process_plugin_config(plugin, config)
            if not processed then
              fail("config", errs)
            else
              p.config = processed
              timestamps(p, ctx.now)
              ctx.plugins[#ctx.plugins + 1] = p
            end
          end
        end
      end
    end
  end
end


-- Validates a decoded declarative config.  `available` maps plugin names
-- to { schema = ... }.  Returns the normalised document, or nil and Kong's
-- error body (a table).
function _M.load(input, available)
  local errs = {}
  if type(input) ~= "table" or util.is_array(input) then
    return nil, error_body { ["@entity"] = "expected a record" }
  end
  for k in pairs(input) do
    if not TOP_LEVEL[k] then
      errs[k] = "unknown field (or an entity the local host does not support)"
    end
  end
  local fv = input._format_version
  if fv == nil then
    errs._format_version = "required field missing"
  elseif type(fv) ~= "string" then
    errs._format_version = "expected a string"
  elseif not FORMAT_VERSIONS[fv] then
    errs._format_version = "expected one of: 1.1, 2.1, 3.0"
  end
  if next(errs) then
    return nil, error_body(errs)
  end

  local ctx = new_ctx(available, ngx.time())
  ctx.errs = errs
  for _, kind in ipairs { "upstreams", "services", "routes", "targets", "plugins" } do
    local list = input[kind]
    if list ~= nil and not is_list(list) then
      errs[kind] = "expected an array"
    elseif list ~= nil then
      for i, item in ipairs(list) do
        local path = { kind, i }
        if kind == "upstreams" then
          read_upstream(ctx, item, path)
        elseif kind == "services" then
          read_service(ctx, item, path)
        elseif kind == "routes" then
          read_route(ctx, item, path, nil)
        elseif kind == "targets" then
          read_target(ctx, item, path, nil)
        else
          read_plugin(ctx, item, path, {})
        end
      end
    end
  end

  for _, pending in ipairs(ctx.pending_routes) do
    local id = resolve_ref(ctx, "services", pending.ref)
    if not id then
      set_err(errs, at(pending.path, "service"), "the referenced service does not exist")
    else
      pending.entity.service = { id = id }
    end
  end
  for _, pending in ipairs(ctx.pending_targets) do
    local id = resolve_ref(ctx, "upstreams", pending.ref)
    if not id then
      set_err(errs, at(pending.path, "upstream"), "required field missing or unknown upstream")
    else
      pending.entity.upstream = { id = id }
    end
  end
  finish_plugins(ctx)

  if next(errs) then
    return nil, error_body(errs)
  end

  return {
    _format_version = "3.0",
    _workspace = DEFAULT_WORKSPACE,
    services = ctx.services,
    routes = ctx.routes,
    upstreams = ctx.upstreams,
    targets = ctx.targets,
    plugins = ctx.plugins,
  }
end


-- Parses declarative config text, JSON or YAML.  Returns the decoded
-- table, or nil and an error message.
function _M.parse(text)
  if type(text) ~= "string" or text:match("^%s*$") then
    return nil, "empty configuration"
  end
  if text:match("^%s*{") then
    -- JSON keeps [] and {} apart, which YAML-as-JSON through lyaml does not.
    local v = util.json_decode(text)
    if v ~= nil then
      return v
    end
  end
  local v, err = util.yaml_decode(text)
  if err then
    return nil, "failed parsing declarative configuration: " .. err
  end
  return v
end


function _M.load_file(path, available)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, { message = "cannot read declarative config: " .. tostring(err) }
  end
  local text = f:read("*a")
  f:close()
  local input, perr = _M.parse(text)
  if not input then
    return nil, { message = path .. ": " .. perr }
  end
  return _M.load(input, available)
end


return _M
