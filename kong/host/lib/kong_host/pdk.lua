-- kong_host.pdk: the subset of Kong's PDK (the `kong` global) that
-- canary-router calls, with Kong 3.x semantics as documented in Kong's
-- kong/pdk/*.lua.  Per-request state lives in ngx.ctx, as in Kong.
--
-- Implemented:
--   kong.version, kong.version_num (the release kong_host.mode claims),
--   kong.configuration.{prefix, database, worker_consistency,
--     worker_state_update_frequency, ...}
--   kong.worker_events.register/unregister/post/post_local (kong_host.events)
--   kong.node.get_id, get_hostname
--   kong.request.get_header, get_headers, get_path, get_raw_path,
--     get_path_with_query, get_method, get_scheme, get_host, get_port,
--     get_query, get_query_arg, get_raw_query, get_raw_body
--   kong.client.get_ip, get_forwarded_ip, get_port, get_consumer
--   kong.service.set_upstream, kong.service.request.set_header/clear_header
--   kong.response.get_status, get_header, get_headers, get_source,
--     set_header, add_header, clear_header, exit
--   kong.router.get_route, get_service
--   kong.ctx.plugin, kong.ctx.shared
--   kong.log(...), kong.log.{emerg,alert,crit,err,warn,notice,info,debug}
--   kong.db.plugins:each(), :select({ id = })
--   kong.table.new, kong.table.clear
-- Everything else is absent on purpose: a call to it fails loudly.

local util = require "kong_host.util"
local mode = require "kong_host.mode"
local events = require "kong_host.events"
local errlog = require "ngx.errlog"

local ngx = ngx
local var = ngx.var
local type = type
local pairs = pairs
local error = error
local select = select
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local lower = string.lower
local fmt = string.format
local raw_log = errlog.raw_log

local _M = {}

-- The plugin namespace outside requests (init_worker, configure, timers).
local worker_namespace


function _M.set_namespace(name)
  worker_namespace = name
end


local function namespace()
  if ngx.get_phase() ~= "init" then
    local ok, ctx = pcall(function() return ngx.ctx end)
    if ok and ctx and ctx.KONG_PLUGIN_NS then
      return ctx.KONG_PLUGIN_NS
    end
  end
  return worker_namespace
end


-------------------------------------------------------------------------
-- kong.log: "[kong] file.lua:line [plugin] message", like Kong's
-- namespaced plugin log.
-------------------------------------------------------------------------

local function new_log()
  local log = {}
  local LEVELS = {
    emerg = ngx.EMERG, alert = ngx.ALERT, crit = ngx.CRIT, err = ngx.ERR,
    warn = ngx.WARN, notice = ngx.NOTICE, info = ngx.INFO, debug = ngx.DEBUG,
  }

  local function write(level, ...)
    local info = debug.getinfo(3, "Sl")
    local src = info and info.short_src and info.short_src:match("([^/]+)$") or "?"
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do
      parts[i] = tostring(parts[i])
    end
    local ns = namespace()
    local msg = fmt("[kong] %s:%d %s%s", src, info and info.currentline or 0,
                    ns and ("[" .. ns .. "] ") or "", concat(parts, "", 1, n))
    raw_log(level, msg)
  end

  for name, level in pairs(LEVELS) do
    log[name] = function(...)
      write(level, ...) -- not a tail call: write() looks 3 levels up
    end
  end

  return setmetatable(log, {
    __call = function(_, ...)
      write(ngx.NOTICE, ...)
    end,
  })
end


-------------------------------------------------------------------------
-- Header validation as in kong/pdk/private/checks.lua.
-------------------------------------------------------------------------

local function validate_header(name, value)
  if type(name) ~= "string" then
    error(fmt("invalid header name %q: got %s, expected string", tostring(name), type(name)), 3)
  end
  local t = type(value)
  if t ~= "string" and t ~= "number" and t ~= "boolean" then
    if t == "table" then
      for _, v in ipairs(value) do
        if type(v) ~= "string" then
          error(fmt("invalid header value in array %q: got %s, expected string", name, type(v)), 3)
        end
      end
      return value
    end
    error(fmt("invalid header value for %q: got %s, expected array of string, string, "
              .. "number or boolean", name, t), 3)
  end
  return t == "string" and value or tostring(value)
end


-- Path normalisation of kong.request.get_path (RFC 3986 section 6, as in
-- Kong's kong/tools/uri.lua): percent-encoded unreserved and "other"
-- characters are decoded, reserved ones kept with upper-case hex, dot
-- segments removed, duplicate slashes merged.
local RESERVED = {}
for c in ("!*'();:@&=+$,/?%#[]"):gmatch(".") do
  RESERVED[c:byte()] = true
end

local function normalize_path(path)
  if path == "" or path == "/" then
    return path
  end
  if path:find("%", 1, true) then
    path = path:gsub("%%(%x%x)", function(h)
      local n = tonumber(h, 16)
      if RESERVED[n] then
        return "%" .. h:upper()
      end
      return string.char(n)
    end)
  end
  if not path:find(".", 1, true) and not path:find("//", 1, true) then
    return path
  end
  local out = {}
  local trailing = path:sub(-1) == "/"
  for seg in path:gmatch("[^/]+") do
    if seg == ".." then
      out[#out] = nil
    elseif seg ~= "." then
      out[#out + 1] = seg
    end
  end
  local last = path:match("[^/]*$")
  if last == "." or last == ".." then
    trailing = true
  end
  local res = "/" .. concat(out, "/")
  if trailing and res ~= "/" then
    res = res .. "/"
  end
  return res
end

_M.normalize_path = normalize_path


local function raw_path()
  local uri = var.request_uri or ""
  local q = uri:find("?", 2, true)
  return q and uri:sub(1, q - 1) or uri
end


-------------------------------------------------------------------------
-- kong.response.exit: in access (and Admin API handlers) the response is
-- delayed as in Kong: stored in ngx.ctx and the plugin's coroutine yields;
-- the runloop stops running plugins and flushes it.
-------------------------------------------------------------------------

local function send(status, body, headers)
  if ngx.headers_sent then
    error("headers have already been sent", 2)
  end
  ngx.status = status
  local has_ctype, has_clen
  if headers then
    for name, value in pairs(headers) do
      local ln = lower(name):gsub("_", "-")
      if ln ~= "transfer-encoding" then
        ngx.header[name] = value
      end
      if ln == "content-type" then
        has_ctype = true
      elseif ln == "content-length" then
        has_clen = true
      end
    end
  end
  if type(body) == "table" then
    local json, err = util.json_encode(body)
    if not json then
      error("body encoding failed while flushing response: " .. err, 2)
    end
    body = json
    if not has_ctype then
      ngx.header["Content-Type"] = "application/json; charset=utf-8"
    end
  end
  if not has_clen then
    ngx.header["Content-Length"] = body and #body or 0
  end
  ngx.header["Server"] = mode.server_token()
  if body then
    ngx.print(body)
  end
  return ngx.exit(status)
end

_M.send = send


function _M.flush(ctx)
  local r = ctx.delayed_response
  return send(r.status_code, r.content, r.headers)
end


local function exit(status, body, headers)
  if type(status) ~= "number" then
    error("code must be a number", 2)
  elseif status < 100 or status > 599 then
    error("code must be a number between 100 and 599", 2)
  end
  if body ~= nil and type(body) ~= "string" and type(body) ~= "table" then
    error("body must be a nil, string or table", 2)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error("headers must be a nil or table", 2)
  end
  local ctx = ngx.ctx
  ctx.KONG_EXITED = true
  if ctx.delay_response and not ctx.delayed_response then
    ctx.delayed_response = { status_code = status, content = body, headers = headers }
    coroutine.yield()
    return
  end
  local phase = ngx.get_phase()
  if phase ~= "rewrite" and phase ~= "access" and phase ~= "content" then
    error("kong.response.exit is only available in the access phase and "
          .. "Admin API handlers on the local host", 2)
  end
  return send(status, body, headers)
end


-------------------------------------------------------------------------
-- kong.db.plugins: read-only views of the current document (the latest
-- write, as Kong's DAO reads the database or LMDB), enough for a plugin to
-- enumerate and select its instances.  Entities have Kong's shape: id,
-- name, instance_name, config, enabled, protocols, tags, created_at,
-- updated_at, and route/service/consumer as { id = ... }.  As in Kong's
-- DAO (row_to_entity), unset fields are left out (nil) unless the call
-- passes options.nulls, which keeps them as ngx.null, as the Admin API
-- shows them.
-------------------------------------------------------------------------

local function plugins_dao(runtime)
  local dao = {}

  local function list()
    local doc = runtime.document()
    return doc and doc.plugins or {}
  end

  local function entity(p, options)
    local e = util.deep_copy(p)
    if not (type(options) == "table" and options.nulls) then
      util.strip_nulls(e)
    end
    return e
  end

  function dao:each(page_size, options) -- luacheck: ignore 212
    local items = list()
    local i = 0
    return function()
      i = i + 1
      local p = items[i]
      if p then
        return entity(p, options)
      end
    end
  end

  function dao:select(pk, options) -- luacheck: ignore 212
    if type(pk) ~= "table" or type(pk.id) ~= "string" then
      error("primary key must be a table with an id", 2)
    end
    for _, p in ipairs(list()) do
      if p.id == pk.id then
        return entity(p, options)
      end
    end
    return nil
  end

  return dao
end


-- Builds the `kong` global.  `opts`: prefix, node_id (function), plugins
-- (list of names), runtime (kong_host.runtime).
function _M.new(opts)
  local runtime = opts.runtime
  local kong = {
    version = mode.version,
    version_num = mode.version_num,
    configuration = {
      prefix = opts.prefix,
      -- The `user` directive, as Kong's conf_loader leaves it: nil when
      -- there is none (a root master then runs its workers as nobody).
      nginx_main_user = opts.user ~= "" and opts.user or nil,
      nginx_user = opts.user ~= "" and opts.user or nil,
      database = mode.database,
      worker_consistency = mode.worker_consistency,
      worker_state_update_frequency = mode.worker_state_update_frequency,
      role = "traditional",
      plugins = util.array(opts.plugins),
      loaded_plugins = {},
      proxy_listen = util.array { "127.0.0.1:8000" },
      admin_listen = util.array { "127.0.0.1:8001" },
      status_listen = util.array { "127.0.0.1:8007" },
      -- Kong sets it only DB-less; in DB mode the file is the stand-in
      -- database's initial content.
      declarative_config = mode.dbless() and opts.config or nil,
    },
    log = new_log(),
    table = { new = require "table.new", clear = require "table.clear" },
  }
  for _, name in ipairs(opts.plugins) do
    kong.configuration.loaded_plugins[name] = true
  end

  kong.node = {
    get_id = function()
      return opts.node_id()
    end,
    get_hostname = function()
      local f = io.open("/proc/sys/kernel/hostname")
      local h = f and f:read("*l") or "localhost"
      if f then f:close() end
      return h
    end,
  }

  kong.request = {
    get_header = function(name)
      if type(name) ~= "string" then
        error("header name must be a string", 2)
      end
      return var["http_" .. name:gsub("-", "_")]
    end,
    get_headers = function(max_headers)
      if max_headers ~= nil then
        if type(max_headers) ~= "number" then
          error("max_headers must be a number", 2)
        elseif max_headers < 1 then
          error("max_headers must be >= 1", 2)
        elseif max_headers > 1000 then
          error("max_headers must be <= 1000", 2)
        end
      end
      return ngx.req.get_headers(max_headers or 100)
    end,
    get_raw_path = raw_path,
    get_path = function()
      return normalize_path(raw_path())
    end,
    get_path_with_query = function()
      return var.request_uri or ""
    end,
    get_method = function()
      return ngx.req.get_method()
    end,
    get_scheme = function()
      return var.scheme
    end,
    get_host = function()
      return var.host
    end,
    get_port = function()
      return tonumber(var.server_port, 10)
    end,
    get_raw_query = function()
      return var.args or ""
    end,
    get_query = function(max_args)
      return ngx.req.get_uri_args(max_args or 100)
    end,
    get_query_arg = function(name)
      if type(name) ~= "string" then
        error("query argument name must be a string", 2)
      end
      local v = ngx.req.get_uri_args(100)[name]
      if type(v) == "table" then
        return v[1]
      end
      return v
    end,
    get_raw_body = function()
      ngx.req.read_body()
      local body = ngx.req.get_body_data()
      if not body then
        if ngx.req.get_body_file() then
          return nil, "request body did not fit into client body buffer, "
                      .. "consider raising 'client_body_buffer_size'"
        end
        return ""
      end
      return body
    end,
  }

  kong.client = {
    get_ip = function()
      return var.realip_remote_addr or var.remote_addr
    end,
    get_forwarded_ip = function()
      return var.remote_addr
    end,
    get_port = function()
      return tonumber(var.realip_remote_port or var.remote_port)
    end,
    get_consumer = function()
      return ngx.ctx.authenticated_consumer
    end,
    get_credential = function()
      return ngx.ctx.authenticated_credential
    end,
  }

  kong.service = {
    set_upstream = function(host)
      if type(host) ~= "string" then
        error("host must be a string", 2)
      end
      local ctx = ngx.ctx
      local st = ctx.KONG_STATE
      if not (st and st.upstreams[host]) then
        return nil, "could not find an Upstream named '" .. host .. "'"
      end
      if not ctx.balancer_data then
        error("kong.service.set_upstream is only available in the access phase", 2)
      end
      ctx.balancer_data.host = host
      return true
    end,
    request = {
      set_header = function(header, value)
        value = validate_header(header, value)
        if lower(header) == "host" then
          var.upstream_host = value
          return
        end
        ngx.req.set_header(header, value)
      end,
      clear_header = function(header)
        if type(header) ~= "string" then
          error("header must be a string", 2)
        end
        ngx.req.clear_header(header)
      end,
    },
  }

  kong.response = {
    get_status = function()
      return ngx.status
    end,
    get_headers = function(max_headers)
      return ngx.resp.get_headers(max_headers)
    end,
    get_header = function(name)
      if type(name) ~= "string" then
        error("header name must be a string", 2)
      end
      local v = ngx.resp.get_headers()[name]
      if type(v) == "table" then
        return v[1]
      end
      return v
    end,
    set_header = function(name, value)
      if ngx.headers_sent then
        error("headers have already been sent", 2)
      end
      value = validate_header(name, value)
      local ln = lower(name)
      if ln == "transfer-encoding" or ln == "transfer_encoding" then
        kong.log.warn("manually setting Transfer-Encoding. Ignored.")
        return
      end
      ngx.header[name] = value
    end,
    add_header = function(name, value)
      if ngx.headers_sent then
        error("headers have already been sent", 2)
      end
      value = validate_header(name, value)
      require("ngx.resp").add_header(name, value)
    end,
    clear_header = function(name)
      if ngx.headers_sent then
        error("headers have already been sent", 2)
      end
      if type(name) ~= "string" then
        error("header name must be a string", 2)
      end
      ngx.header[name] = nil
    end,
    exit = exit,
    get_source = function()
      local ctx = ngx.ctx
      if ctx.KONG_UNEXPECTED then
        return "error"
      elseif ctx.KONG_EXITED then
        return "exit"
      elseif ctx.KONG_PROXIED then
        return "service"
      end
      return "error"
    end,
  }

  kong.router = {
    get_route = function()
      return ngx.ctx.route
    end,
    get_service = function()
      return ngx.ctx.service
    end,
  }

  -- kong.ctx.shared: one table per request; kong.ctx.plugin: one table per
  -- request and plugin (keyed by the plugin running now).
  kong.ctx = setmetatable({}, {
    __index = function(_, key)
      local ctx = ngx.ctx
      if key == "shared" then
        local t = ctx.KONG_SHARED
        if not t then
          t = {}
          ctx.KONG_SHARED = t
        end
        return t
      elseif key == "plugin" then
        local ns = ctx.KONG_PLUGIN_NS
        if not ns then
          error("kong.ctx.plugin is only available inside a plugin handler", 2)
        end
        local all = ctx.KONG_PLUGIN_CTX
        if not all then
          all = {}
          ctx.KONG_PLUGIN_CTX = all
        end
        local t = all[ns]
        if not t then
          t = {}
          all[ns] = t
        end
        return t
      end
    end,
  })

  kong.db = { strategy = mode.database, plugins = plugins_dao(runtime) }
  kong.worker_events = {
    register = events.register,
    register_weak = events.register_weak,
    unregister = events.unregister,
    post = events.post,
    post_local = events.post_local,
  }

  return kong
end


return _M
