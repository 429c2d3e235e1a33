-- kong_host: a small local stand-in for Kong 3.x, for `make run` and the
-- integration tests.  It runs canary-router unchanged on Debian's nginx +
-- lua-nginx-module: reads the subset of kong.yml the project uses,
-- implements the PDK calls the plugin makes (kong_host.pdk), proxies with
-- a balancer_by_lua upstream (kong_host.proxy), and serves the Admin API
-- calls an operator uses for weights (kong_host.admin).  It is not Kong:
-- see kong/host/README.md for what it does not do.
--
-- nginx.conf (kong_host.nginx_conf) calls:
--   init_by_lua          require("kong_host").init{ prefix, config, plugins,
--                          kong_version, database, worker_consistency,
--                          worker_state_update_frequency }
--   init_worker_by_lua   require("kong_host").init_worker()

local util = require "kong_host.util"
local store = require "kong_host.store"
local runtime = require "kong_host.runtime"
local declarative = require "kong_host.declarative"
local pdk = require "kong_host.pdk"
local mode = require "kong_host.mode"

local _M = {}


local function strip_slash(p)
  return (p:gsub("/+$", ""))
end


-- Master process, at start and at every `nginx -s reload` (the shm
-- survives a reload; the Lua VM does not).  Like `kong reload` with
-- `declarative_config` set, a reload reads the config file again, so
-- changes made through the Admin API since the last start or reload are
-- replaced by the file's content.  Raises on an invalid config, which
-- makes `nginx -t`, a start or a reload fail with the message.
function _M.init(opts)
  local prefix = strip_slash(opts.prefix or ngx.config.prefix())
  -- The Kong release and database mode to behave as (raises on a value
  -- the host does not model, which fails the start).
  mode.set(opts)
  runtime.DEFAULT_WORKSPACE_ID = util.uuid_for("workspaces:default")

  -- The global exists before any plugin module is loaded, as in Kong.
  _G.kong = pdk.new {
    prefix = prefix,
    user = opts.user,
    config = opts.config,
    plugins = opts.plugins,
    runtime = runtime,
    node_id = function()
      return store.node_id()
    end,
  }

  runtime.load_plugins(opts.plugins)

  local doc, err = declarative.load_file(opts.config, runtime.available())
  if not doc then
    error("invalid declarative config " .. opts.config .. ": " .. (err.message or "?"), 0)
  end
  local json = assert(util.json_encode(doc))
  local version, perr = store.publish(json)
  if not version then
    error(perr, 0)
  end
  store.node_id(util.uuid)
end


-- Each worker records its pid once its plugins are initialised, so
-- ctl.sh (and GET /) can tell when every worker is up.
function _M.init_worker()
  runtime.init_worker()
  ngx.shared.kong_host:set("worker:" .. ngx.worker.id(), ngx.worker.pid())
end


return _M
