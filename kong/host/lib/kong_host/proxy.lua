-- kong_host.proxy: the proxy runloop, one function per nginx phase, in the
-- order Kong runs them:
--
--   access         router (longest path prefix), then every plugin's
--                  access() in PRIORITY order; kong.response.exit() or a
--                  plugin error stops the chain (Kong's delayed response);
--                  then the target is picked (round-robin over the
--                  upstream's targets, or the service's host:port)
--   balancer       ngx.balancer.set_current_peer(), no retries
--   header_filter  plugins' header_filter()
--   body_filter    plugins' body_filter(), when they define one
--   log            plugins' log()
--
-- Plugins that ran in access are the ones that run in the later phases
-- (Kong "collects" them); a request that matched no route runs only the
-- global plugins there.

local runtime = require "kong_host.runtime"
local mode = require "kong_host.mode"
local pdk = require "kong_host.pdk"
local util = require "kong_host.util"
local balancer = require "ngx.balancer"

local ngx = ngx
local var = ngx.var
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local null = util.null
local co_create = coroutine.create
local co_resume = coroutine.resume
local co_status = coroutine.status

local _M = {}


-- Kong's messages for responses the gateway itself makes when the
-- upstream fails (kong/pdk/response.lua get_http_error_message).
local UPSTREAM_ERRORS = {
  [500] = "An unexpected error occurred",
  [502] = "An invalid response was received from the upstream server",
  [503] = "The upstream server is currently unavailable",
  [504] = "The upstream server is timing out",
}


-- Characters left as they are in the upstream request line; the others
-- (decoded by normalisation, e.g. a space) are percent-encoded again.
-- Kong's hostname_type(): what the runloop records as balancer_data.type.
local function host_type(host)
  if host:match("^%d+%.%d+%.%d+%.%d+$") then return "ipv4" end
  if host:find(":", 1, true) then return "ipv6" end
  return "name"
end


local function escape_path(path)
  return (path:gsub("[^%w!#$&'()*+,/:;=?@%[%]%-_.~%%]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end


-- The upstream path as Kong computes it with path_handling "v0".
local function upstream_path(prefix, route, service, path)
  local base = service.path
  if base == null or base == nil then
    base = "/"
  end
  if route.strip_path then
    local postfix = path:sub(#prefix + 1)
    if postfix:sub(1, 1) == "/" then
      postfix = postfix:sub(2)
    end
    if base:sub(-1) == "/" then
      return base .. postfix
    elseif postfix == "" then
      return base
    end
    return base .. "/" .. postfix
  end
  if base == "/" then
    return path
  elseif base:sub(-1) == "/" then
    return base .. path:sub(2)
  end
  return base .. path
end


local function run_plugin_phase(ctx, list, phase)
  for _, entry in ipairs(list) do
    local fn = entry.handler[phase]
    if fn then
      ctx.KONG_PLUGIN_NS = entry.plugin.name
      local ok, err = pcall(fn, entry.handler, entry.config)
      if not ok then
        kong.log.err(tostring(err))
      end
      ctx.KONG_PLUGIN_NS = nil
    end
  end
end


local function collected(ctx)
  if ctx.KONG_PLUGINS then
    return ctx.KONG_PLUGINS
  end
  local st = ctx.KONG_STATE or runtime.current()
  return st and st.global_plugins or {}
end


function _M.access()
  local ctx = ngx.ctx
  ctx.KONG_PROCESSING_START = ngx.req.start_time() * 1000
  local st = runtime.for_request()
  ctx.KONG_STATE = st

  local path = pdk.normalize_path((var.request_uri or "/"):match("^[^?]*"))
  local match = st and runtime.match(st, path)
  if not match then
    return pdk.send(404, { message = "no Route matched with those values" })
  end

  local route, service = match.route, match.service
  ctx.route = route
  ctx.service = service
  if not service then
    return pdk.send(500, { message = "An unexpected error occurred" })
  end

  -- Kong's balancer_data (runloop/handler.lua): `type` is the service
  -- host's kind ("ipv4", "ipv6" or "name"), fixed here; the balancer
  -- treats anything but "name" as an address and never looks up an
  -- Upstream for it, whatever kong.service.set_upstream() put in `host`.
  ctx.balancer_data = {
    type = host_type(service.host),
    host = service.host,
    port = service.port,
    connect_timeout = service.connect_timeout,
    write_timeout = service.write_timeout,
    read_timeout = service.read_timeout,
  }

  local uri = escape_path(upstream_path(match.prefix, route, service, path))
  local args = var.args
  if args and args ~= "" then
    uri = uri .. "?" .. args
  end
  var.upstream_uri = uri
  var.upstream_x_forwarded_path = path
  if route.strip_path then
    var.upstream_x_forwarded_prefix = match.prefix
  end

  -- Plugins' access(), each in its own coroutine so kong.response.exit()
  -- can stop the chain by yielding (Kong's delayed response).
  local plugins = st.plugins_by_route[route.id] or {}
  ctx.KONG_PLUGINS = plugins
  ctx.delay_response = true
  for _, entry in ipairs(plugins) do
    local fn = entry.handler.access
    if fn then
      ctx.KONG_PLUGIN_NS = entry.plugin.name
      local co = co_create(fn)
      local ok, err = co_resume(co, entry.handler, entry.config)
      if not ok then
        kong.log.err(debug.traceback(co, tostring(err)))
        ctx.KONG_UNEXPECTED = true
        ctx.delayed_response = {
          status_code = 500,
          content = { message = "An unexpected error occurred" },
        }
      elseif co_status(co) ~= "dead" and not ctx.delayed_response then
        kong.log.err("access handler yielded without kong.response.exit()")
      end
      ctx.KONG_PLUGIN_NS = nil
      if ctx.delayed_response then
        break
      end
    end
  end
  ctx.delay_response = nil
  if ctx.delayed_response then
    return pdk.flush(ctx)
  end

  -- Pick the peer now (Kong runs its balancer at the end of access too),
  -- so the Host header can name it.
  local bd = ctx.balancer_data
  local upstream = bd.type == "name" and st.upstreams[bd.host]
  local host_header
  if bd.type ~= "name" then
    -- An address, used as it is (Kong's balancer.execute); a name that
    -- a plugin put here makes set_current_peer() fail like Kong's does.
    bd.ip = bd.host
    host_header = bd.host
  elseif upstream then
    local target = upstream.balancer.next()
    if not target then
      return pdk.send(503, { message = "failure to get a peer from the ring-balancer" })
    end
    bd.ip, bd.port = target.host, target.port
    host_header = target.host
  else
    local ip = bd.host == "localhost" and "127.0.0.1" or bd.host
    if not ip:match("^%d+%.%d+%.%d+%.%d+$") then
      kong.log.err("cannot resolve '", bd.host, "': the local host resolves no DNS names")
      return pdk.send(503, { message = "name resolution failed" })
    end
    bd.ip = ip
    host_header = bd.host
  end
  if bd.port ~= 80 then
    host_header = host_header .. ":" .. bd.port
  end
  if route.preserve_host then
    host_header = var.http_host or host_header
  end
  if var.upstream_host == "" then
    var.upstream_host = host_header
  end
  ctx.KONG_ACCESS_ENDED_AT = ngx.now() * 1000
end


function _M.balancer()
  local bd = ngx.ctx.balancer_data
  local ok, err = balancer.set_current_peer(bd.ip, bd.port)
  if not ok then
    ngx.log(ngx.ERR, "failed to set the current peer ", bd.ip, ":", bd.port, ": ", err)
    return ngx.exit(500)
  end
  ok, err = balancer.set_timeouts(bd.connect_timeout / 1000, bd.write_timeout / 1000,
                                  bd.read_timeout / 1000)
  if not ok then
    ngx.log(ngx.ERR, "could not set upstream timeouts: ", err)
  end
end


function _M.header_filter()
  local ctx = ngx.ctx
  if ctx.balancer_data and not ctx.KONG_EXITED then
    ctx.KONG_PROXIED = true
    local header_time = tonumber(var.upstream_header_time)
    local status = ngx.status
    if not header_time and UPSTREAM_ERRORS[status] then
      -- nginx made this response (the upstream never answered): send
      -- Kong's JSON error instead of nginx's HTML page.  Kong serves it
      -- from its error handler, which marks the request unexpected
      -- (kong/init.lua, Kong.handle_error), so get_source() says "error".
      ctx.KONG_UNEXPECTED = true
      local body = util.json_encode { message = UPSTREAM_ERRORS[status] }
      ctx.KONG_ERROR_BODY = body
      ngx.header["Content-Type"] = "application/json; charset=utf-8"
      ngx.header["Content-Length"] = #body
      ngx.header["Server"] = mode.server_token()
    else
      ngx.header["Via"] = mode.server_token()
      if header_time then
        ngx.header["X-Kong-Upstream-Latency"] = math.floor(header_time * 1000 + 0.5)
      end
      if ctx.KONG_ACCESS_ENDED_AT then
        ngx.header["X-Kong-Proxy-Latency"] =
          math.floor(ctx.KONG_ACCESS_ENDED_AT - ctx.KONG_PROCESSING_START + 0.5)
      end
    end
  end
  run_plugin_phase(ctx, collected(ctx), "header_filter")
end


function _M.body_filter()
  local ctx = ngx.ctx
  local body = ctx.KONG_ERROR_BODY
  if body then
    if ctx.KONG_ERROR_BODY_SENT then
      ngx.arg[1] = nil
    else
      ngx.arg[1] = body
      ngx.arg[2] = true
      ctx.KONG_ERROR_BODY_SENT = true
    end
  end
  run_plugin_phase(ctx, collected(ctx), "body_filter")
end


function _M.log()
  local ctx = ngx.ctx
  run_plugin_phase(ctx, collected(ctx), "log")
end


return _M
