-- spec/helpers/host.lua: drive the local Kong stand-in host from busted.
--
--   local host = require "helpers.host"
--
--   host.start {
--     prefix = "/tmp/x",            -- optional; a fresh temp dir by default
--     config = { _format_version = "3.0", ... } or "kong/kong.yml",
--     upstreams = { { name = "automation-service", port = 9001 }, ... },
--     plugins = "canary-router",    -- optional, comma-separated
--     proxy_port = 8000, admin_port = 8001, status_port = 8007, workers = 2,
--     segment = "/path/x.seg",      -- optional; PREFIX/canary-router.seg by default
--     kong_version = "3.9.1",       -- or "3.4.2" (no configure phase)
--     database = "off",             -- or "postgres" (DB mode: PATCH, no POST /config)
--     worker_consistency = "eventual", worker_state_update_frequency = 5,  -- DB mode
--     lua_path = "/dir/?.lua",      -- optional, searched first (extra plugins)
--   }
--   local status, body = host.set_plugin_config(id, { upstreams = {...} })
--   local status, body, headers = host.request("GET", "/ai/x", { headers = {...} })
--   local status, json = host.admin("PATCH", "/plugins/" .. id, { config = {...} })
--   host.control("automation-service-canary", { latency_ms = 50, error_rate = 0.2 })
--   host.worker_pids()   host.reload()   host.error_log()   host.stop()
--   host.restart { segment = "/other.seg" }  -- the gateway only
--   host.run("shell command")                -- ok, output
--   local node2 = host.new()                 -- another, independent host
--                                            -- (its own prefix and ports)
--
-- Real processes, real HTTP on 127.0.0.1: the demo upstreams
-- (kong/host/demo_upstream) and the gateway (kong/host/ctl.sh) run in the
-- prefix.  Ports default to Kong's (8000/8001/8007), so do not run the
-- integration specs while `make run` is up.  Lua modules come from
-- $LUA_PATH (the Makefile's LUA_ENV puts build/lua and kong/host/lib on it).

local cjson = require "cjson.safe"
local dkjson = require "dkjson"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local _M = {}

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/helpers/host%.lua$")) or "."
if ROOT:sub(1, 1) ~= "/" then
  ROOT = os.getenv("PWD") .. "/" .. ROOT
end

local state -- the running instance: prefix, ports, upstreams


local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end


-- Runs a shell command; returns ok, combined output.  LuaJIT's
-- popen():close() says nothing about the exit status (it returns true
-- unless built with Lua 5.2 compatibility), so the shell reports it.
local function run(cmd)
  local p = io.popen("{ " .. cmd .. "\n} 2>&1; echo \"__exit=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("__exit=(%d+)%s*$"))
  out = out:gsub("__exit=%d+%s*$", "")
  return code == 0, out
end


local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end


local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end


function _M.root()
  return ROOT
end


--- A second, independent instance of this helper (its own `state`), for
-- specs that run several gateway nodes side by side; start each with its
-- own prefix, ports and upstream ports.
function _M.new()
  return dofile(ROOT .. "/spec/helpers/host.lua")
end


--- Runs a shell command; returns ok (exit status 0) and its output
-- (stdout and stderr).
_M.run = run


-- Starts the demo upstreams (kong/host/demo_upstream) in state.prefix;
-- raises at the caller's caller on failure.
local function start_upstreams(upstreams)
  if #upstreams == 0 then
    return
  end
  local list = {}
  for _, u in ipairs(upstreams) do
    list[#list + 1] = u.name .. ":" .. u.port
    state.upstreams[u.name] = u.port
  end
  local ok, out = run(table.concat({
    "bash", sh_quote(ROOT .. "/kong/host/demo_upstream/ctl.sh"), "start",
    "--prefix", sh_quote(state.prefix .. "/demo_upstream"),
    "--servers", sh_quote(table.concat(list, ",")),
  }, " "))
  if not ok then
    state = nil
    error("demo upstreams failed to start:\n" .. out, 3)
  end
end


local function stop_upstreams(prefix)
  run("bash " .. sh_quote(ROOT .. "/kong/host/demo_upstream/ctl.sh") .. " stop --prefix "
      .. sh_quote(prefix .. "/demo_upstream"))
end


--- Starts the demo upstreams and the gateway; returns once they answer.
local function local_start(opts)
  opts = opts or {}
  if state then
    error("host already started (prefix " .. state.prefix .. "); call host.stop() first", 2)
  end
  local prefix = opts.prefix
  if not prefix then
    local _, out = run("mktemp -d /tmp/kong_host_spec.XXXXXX")
    prefix = out:gsub("%s+$", "")
  end
  assert(run("mkdir -p " .. sh_quote(prefix)))

  local config = opts.config or (ROOT .. "/kong/kong.yml")
  if type(config) == "table" then
    local json = assert(cjson.encode(config))
    config = prefix .. "/kong.json"
    write_file(config, json)
  end

  local upstreams = opts.upstreams or {
    { name = "automation-service", port = 9001 },
    { name = "automation-service-canary", port = 9002 },
  }
  local ports = {
    proxy = opts.proxy_port or 8000,
    admin = opts.admin_port or 8001,
    status = opts.status_port or 8007,
  }
  state = { prefix = prefix, ports = ports, upstreams = {},
            segment = opts.segment or (prefix .. "/canary-router.seg"),
            workers = opts.workers or 2, database = opts.database or "off",
            worker_state_update_frequency = opts.worker_state_update_frequency or 5,
            config = type(opts.config) == "table" and opts.config or nil,
            config_file = config }

  start_upstreams(upstreams)

  local mode_args = {}
  for _, k in ipairs { "kong_version", "database", "worker_consistency",
                       "worker_state_update_frequency" } do
    if opts[k] ~= nil then
      mode_args[#mode_args + 1] = "--" .. k:gsub("_", "-") .. " " .. sh_quote(opts[k])
    end
  end
  local env = ""
  if opts.lua_path then
    env = "LUA_PATH=" .. sh_quote(opts.lua_path .. ";" .. (os.getenv("LUA_PATH") or ";;")) .. " "
  end
  local ok, out = run(env .. table.concat({
    "bash", sh_quote(ROOT .. "/kong/host/ctl.sh"), "start",
    "--prefix", sh_quote(prefix),
    "--config", sh_quote(config),
    "--plugins", sh_quote(opts.plugins or "canary-router"),
    "--proxy-listen", "127.0.0.1:" .. ports.proxy,
    "--admin-listen", "127.0.0.1:" .. ports.admin,
    "--status-listen", "127.0.0.1:" .. ports.status,
    "--workers", tostring(opts.workers or 2),
    "--log-level", opts.log_level or "info",
    "--segment", sh_quote(state.segment),
    table.concat(mode_args, " "),
  }, " "))
  if not ok then
    local log = read_file(prefix .. "/logs/error.log") or ""
    run("bash " .. sh_quote(ROOT .. "/kong/host/demo_upstream/ctl.sh") .. " stop --prefix "
        .. sh_quote(prefix .. "/demo_upstream"))
    state = nil
    error("gateway failed to start:\n" .. out .. "\n" .. log:sub(-4000), 2)
  end
  return state
end


--- Stops the gateway and the demo upstreams (waits until they are gone).
local function local_stop()
  if not state then
    return
  end
  local ok, out = run("bash " .. sh_quote(ROOT .. "/kong/host/ctl.sh") .. " stop --prefix "
                      .. sh_quote(state.prefix))
  state = nil
  if not ok then
    error("stop failed:\n" .. out, 2)
  end
end


--- Stops and starts the gateway alone (the demo upstreams keep running),
-- optionally with another `segment` path; returns once it serves.
local function local_restart(opts)
  assert(state, "host not started")
  opts = opts or {}
  local args = { "bash", sh_quote(ROOT .. "/kong/host/ctl.sh"), "restart",
                 "--prefix", sh_quote(state.prefix) }
  if opts.segment then
    args[#args + 1] = "--segment"
    args[#args + 1] = sh_quote(opts.segment)
  end
  local ok, out = run(table.concat(args, " "))
  if not ok then
    local log = read_file(state.prefix .. "/logs/error.log") or ""
    error("restart failed:\n" .. out .. "\n" .. log:sub(-4000), 2)
  end
  state.segment = opts.segment or state.segment
end


--- `nginx -s reload` through ctl.sh; returns once the new workers serve.
-- Like `kong reload`, the declarative config file is read again.
local function local_reload()
  assert(state, "host not started")
  local ok, out = run("bash " .. sh_quote(ROOT .. "/kong/host/ctl.sh") .. " reload --prefix "
                      .. sh_quote(state.prefix))
  if not ok then
    error("reload failed:\n" .. out, 2)
  end
end


--- One HTTP request.  `port` defaults to the proxy port.  Returns status,
-- body (string) and headers (lower-case names; repeated headers joined
-- with ", "), or nil and an error.
function _M.request(method, path, opts, port)
  assert(state, "host not started")
  opts = opts or {}
  local chunks = {}
  local headers = {}
  for k, v in pairs(opts.headers or {}) do
    headers[k] = v
  end
  local body = opts.body
  if type(body) == "table" then
    body = assert(cjson.encode(body))
    headers["Content-Type"] = headers["Content-Type"] or "application/json"
  end
  if body then
    headers["Content-Length"] = #body
  end
  http.TIMEOUT = opts.timeout or 10
  local ok, status, resp_headers = http.request {
    url = "http://127.0.0.1:" .. (port or state.ports.proxy) .. path,
    method = method,
    headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
    redirect = false,
  }
  if not ok then
    return nil, status
  end
  return status, table.concat(chunks), resp_headers
end


--- An Admin API call with a JSON body; returns status and the decoded
-- JSON answer (the raw body when it is not JSON).
function _M.admin(method, path, body_table)
  local status, body = _M.request(method, path, {
    body = body_table,
    headers = body_table and { ["Content-Type"] = "application/json" } or nil,
  }, state.ports.admin)
  if not status then
    return nil, body
  end
  local json = cjson.decode(body)
  if json == nil then
    return status, body
  end
  return status, json
end


-- Kong's PATCH merge of a plugin config (Schema:merge_values): records
-- are merged field by field, anything else (arrays included) replaces.
-- cjson's null as dkjson's, at any depth (dkjson encodes the document).
local function dk_nulls(v)
  if v == cjson.null then return dkjson.null end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = dk_nulls(x) end
  return setmetatable(out, getmetatable(v))
end

local function merge(top, bottom)
  if type(bottom) ~= "table" then
    return dk_nulls(top)
  end
  local out = {}
  for k, v in pairs(bottom) do
    out[k] = v
  end
  for k, v in pairs(top) do
    local b = bottom[k]
    if type(v) ~= "table" or v == cjson.null then
      -- JSON null unsets the field, as in a PATCH
      out[k] = dk_nulls(v)
    elseif type(v) == "table" and type(b) == "table" and #v == 0 and next(v) ~= nil
       and #b == 0 and next(b) ~= nil then
      out[k] = merge(v, b)
    else
      out[k] = dk_nulls(v)
    end
  end
  return out
end


-- GET /config's `config` string: Kong writes YAML, the local host JSON.
-- Decoded with dkjson (arrays stay arrays, even empty ones), or lyaml
-- with its nulls turned into JSON nulls.
local function decode_export(text)
  if text:match("^%s*{") then
    local doc, _, err = dkjson.decode(text, 1, dkjson.null)
    return doc, err
  end
  local lyaml = require "lyaml"
  local ok, docs = pcall(lyaml.load, text, { all = false })
  if not ok then
    return nil, tostring(docs)
  end
  local function nulls(v)
    if v == lyaml.null then
      return dkjson.null
    elseif type(v) == "table" then
      for k, x in pairs(v) do
        v[k] = nulls(x)
      end
    end
    return v
  end
  return nulls(docs)
end


-- After a write: wait until every worker runs the new document.  The
-- local host says which version each worker runs (GET /, `kong_host`);
-- Kong does not, so there the wait is what its propagation takes: the
-- reconfigure event DB-less (milliseconds), the rebuild timer in DB mode.
local function wait_applied()
  local deadline = socket.gettime() + 10 + state.worker_state_update_frequency
  repeat
    local status, info = _M.admin("GET", "/")
    if status == 200 and type(info) == "table" then
      local kh = info.kong_host
      if type(kh) ~= "table" then
        socket.sleep(state.database == "off" and 0.2
                     or state.worker_state_update_frequency + 0.2)
        return true
      end
      local n = 0
      for _, v in ipairs(kh.applied) do
        if v == kh.config_version then n = n + 1 end
      end
      if n >= state.workers then
        return true
      end
    end
    socket.sleep(0.005)
  until socket.gettime() > deadline
  return false
end

--- Waits until every worker runs the configuration last posted or
--- patched (Kong's workers switch asynchronously).  Returns true, or
--- false when they did not within the helper's time limit.
_M.wait_applied = wait_applied


--- Changes a plugin's config the way an operator does in the gateway's
-- mode: with a database `PATCH /plugins/{id}`; DB-less (Kong refuses that
-- PATCH with 405) `POST /config` of the current declarative config (GET
-- /config) with this plugin's config merged as a PATCH would (what decK
-- or an edited kong.yml does).  `config` holds the fields to change.
-- Returns the status and decoded body of the write; after a success, once
-- every worker routes with the new config.
function _M.set_plugin_config(plugin_id, config)
  assert(state, "host not started")
  if state.kong then
    -- Real Kong says nothing of what each worker runs: configure_plugin
    -- waits for what the segment publishes.
    local _, status, body = _M.configure_plugin(plugin_id, config)
    return status, body
  end
  local status, body
  if state.database ~= "off" then
    status, body = _M.admin("PATCH", "/plugins/" .. plugin_id, { config = config })
  else
    local exported
    status, exported = _M.admin("GET", "/config")
    if status ~= 200 or type(exported) ~= "table" or type(exported.config) ~= "string" then
      return status, exported
    end
    local doc, err = decode_export(exported.config)
    if type(doc) ~= "table" then
      error("cannot decode GET /config: " .. tostring(err), 2)
    end
    local found
    for _, p in ipairs(doc.plugins or {}) do
      if p.id == plugin_id then
        p.config = merge(config, p.config)
        found = true
      end
    end
    if not found then
      return 404, { message = "no plugin " .. plugin_id .. " in GET /config" }
    end
    local raw
    status, raw = _M.request("POST", "/config", {
      body = dkjson.encode(doc),
      headers = { ["Content-Type"] = "application/json" },
    }, state.ports.admin)
    body = status and cjson.decode(raw) or raw
  end
  if (status == 200 or status == 201) and not wait_applied() then
    error("the new config of plugin " .. plugin_id .. " is not in force in every worker", 2)
  end
  return status, body
end


--- A status-listener call (metrics live there); returns status, body, headers.
function _M.status_request(method, path)
  return _M.request(method, path, nil, state.ports.status)
end


--- Changes a demo upstream's behaviour: latency_ms, error_rate (0..1),
-- status (for the errors), reset.  Returns the settings now in force.
function _M.control(upstream_name, settings)
  assert(state, "host not started")
  local port = state.upstreams[upstream_name]
  if not port then
    error("no demo upstream named '" .. tostring(upstream_name) .. "'", 2)
  end
  local status, body = _M.request("POST", "/__control", { body = settings or {} }, port)
  if status ~= 200 then
    error(("control %s failed: %s %s"):format(upstream_name, tostring(status), tostring(body)), 2)
  end
  return cjson.decode(body)
end


--- A demo upstream's request counters: { requests, errors, by_status }.
function _M.upstream_stats(upstream_name)
  local port = assert(state.upstreams[upstream_name], "no such demo upstream")
  local _, body = _M.request("GET", "/__stats", nil, port)
  return cjson.decode(body)
end


--- Pids of the current worker processes (each worker registers itself at
-- init_worker; a respawned or reloaded worker replaces its slot).
local function local_worker_pids()
  assert(state, "host not started")
  local status, info = _M.admin("GET", "/")
  if status ~= 200 or type(info) ~= "table" then
    error("GET / failed: " .. tostring(status), 2)
  end
  local pids = {}
  for _, pid in ipairs(info.pids.workers) do
    pids[#pids + 1] = pid
  end
  return pids
end


local function local_master_pid()
  assert(state, "host not started")
  return tonumber((read_file(state.prefix .. "/logs/nginx.pid") or ""):match("%d+"))
end


function _M.error_log()
  assert(state, "host not started")
  return read_file(state.prefix .. "/logs/error.log") or ""
end


--- The error log from byte `mark` on (nil: all of it).
function _M.log_since(mark)
  return _M.error_log():sub((mark or 0) + 1)
end


--- Error-log lines after `mark` that contain `needle`, as
-- { level, pid, line } (level and pid from nginx's "[level] pid#" prefix).
function _M.log_lines(needle, mark)
  local found = {}
  for line in _M.log_since(mark):gmatch("[^\n]+") do
    if line:find(needle, 1, true) then
      local level, pid = line:match("%[(%a+)%] (%d+)#")
      found[#found + 1] = { level = level, pid = tonumber(pid), line = line }
    end
  end
  return found
end


--- Lua errors and crashed workers in the error log: the plugin must cause
-- none.  With `kills_expected`, workers that exited on SIGKILL (a chaos
-- test's own kill -9) are not crashes; any other signal is.  Returns the
-- log entries (a multi-line entry, such as one with a traceback, whole).
-- An Admin API error in which no canary-router code appears is Kong's own
-- (real Kong's Admin API answers some hostile bodies with a 500 and a
-- traceback before any plugin code runs): not counted.
function _M.lua_errors(kills_expected)
  local entries = {}
  for line in _M.error_log():gmatch("[^\n]+") do
    if #entries == 0 or line:match("^%d%d%d%d/%d%d/%d%d %d%d:%d%d:%d%d ") then
      entries[#entries + 1] = line
    else
      entries[#entries] = entries[#entries] .. "\n" .. line
    end
  end
  local bad = {}
  for _, e in ipairs(entries) do
    local sig = tonumber(e:match("exited on signal (%d+)"))
    if e:find("runtime error", 1, true) or e:find("stack traceback", 1, true)
       or e:find("failed to execute plugin", 1, true)
       or e:find("An unexpected error occurred", 1, true)
       or (sig and not (kills_expected and sig == 9)) then
      local kongs_own = e:find("server: kong_admin", 1, true) and
                        not e:find("canary-router", 1, true)
      if not kongs_own then
        bad[#bad + 1] = e
      end
    end
  end
  return bad
end


function _M.prefix()
  return state and state.prefix
end


function _M.segment_path()
  return state and state.segment
end


function _M.ports()
  return state and state.ports
end



-- ---- real Kong ------------------------------------------------------------
--
-- With CANARY_TEST_KONG=<setup> (kong/test-kong/run.sh sets it), the same
-- functions drive an installed Kong instead of the local host: KONG_ENV
-- (a file to source that puts `kong` on PATH), the plugin installed by
-- `luarocks make` in CANARY_KONG_TREE, a kong.conf generated in the
-- prefix, `kong start/reload/stop -p PREFIX`.  Setups:
--
--   dbless        database = off; the config is loaded with POST /config
--   postgres      database = postgres (CANARY_KONG_PG_PORT, role/db kong);
--                 `kong config db_import` of the config before the start
--   unprivileged  DB-less, workers as nobody:nogroup, root-owned prefix

local KONG_SETUP = os.getenv("CANARY_TEST_KONG")
if KONG_SETUP == "" then
  KONG_SETUP = nil
end


-- A Kong CLI command with Kong's environment, never the specs' LUA_PATH
-- (Kong's `;;` would put the local host's modules on its path).
local function kong_cli(args, env)
  local kong_env = os.getenv("KONG_ENV")
  if not kong_env or kong_env == "" then
    error("CANARY_TEST_KONG is set but KONG_ENV is not", 3)
  end
  local vars = {}
  for k, v in pairs(env or {}) do
    vars[#vars + 1] = k .. "=" .. sh_quote(v)
  end
  return run("env -u LUA_PATH -u LUA_CPATH " .. table.concat(vars, " ") ..
             " bash -c " .. sh_quote('set +u; . "$KONG_ENV" >/dev/null; exec kong "$@"') ..
             " kong-cli " .. args)
end


local function pg_port()
  return tonumber(os.getenv("CANARY_KONG_PG_PORT") or "") or 54329
end


-- The PostgreSQL databases nodes read (kong/test-kong/run.sh migrates
-- `kong` and copies it for the others).  Each node of a spec that runs
-- several side by side (host.new()) takes one of its own, as a Kong node
-- of a cluster of its own: every node then holds its own services and
-- upstreams, as on the local host.  The set of databases in use is shared
-- by every instance of this helper.
local PG_DATABASES = { "kong", "kong_node2", "kong_node3" }
local pg_in_use = package.loaded["helpers.host/pg_in_use"] or {}
package.loaded["helpers.host/pg_in_use"] = pg_in_use

local function pg_take()
  for _, db in ipairs(PG_DATABASES) do
    if not pg_in_use[db] then
      pg_in_use[db] = true
      return db
    end
  end
  return nil
end


-- Settings this helper decides; every other line of the project's
-- kong/kong.conf fragment is kept, as an operator merges it.
local OWN_SETTINGS = {
  prefix = true, plugins = true, database = true, declarative_config = true, router_flavor = true,
  proxy_listen = true, admin_listen = true, status_listen = true, log_level = true,
  nginx_worker_processes = true, nginx_main_env = true, nginx_user = true,
  lua_package_path = true, lua_package_cpath = true, anonymous_reports = true,
  pg_host = true, pg_port = true, pg_user = true, pg_password = true, pg_database = true,
  worker_consistency = true, worker_state_update_frequency = true,
}

local function kong_conf_text(opts)
  local tree = os.getenv("CANARY_KONG_TREE")
  if not tree or tree == "" then
    error("CANARY_KONG_TREE (the rock's luarocks tree) is not set", 3)
  end
  local lines = { "# generated by spec/helpers/host.lua for setup " .. KONG_SETUP,
                  "# from kong/kong.conf:" }
  for line in (read_file(ROOT .. "/kong/kong.conf") or ""):gmatch("[^\n]+") do
    local key = line:match("^%s*([%w_]+)%s*=")
    if key and not OWN_SETTINGS[key] then
      lines[#lines + 1] = line
    end
  end
  lines[#lines + 1] = "# the test's own:"
  for _, l in ipairs({
    "prefix = " .. state.prefix,  -- also for `kong config db_import`
    "plugins = bundled," .. (opts.plugins or "canary-router"),
    "router_flavor = traditional",
    "proxy_listen = 127.0.0.1:" .. state.ports.proxy,
    "admin_listen = 127.0.0.1:" .. state.ports.admin,
    "status_listen = 127.0.0.1:" .. state.ports.status,
    "nginx_worker_processes = " .. state.workers,
    "log_level = " .. (opts.log_level or "info"),
    "anonymous_reports = off",
    "nginx_main_env = CANARY_ROUTER_SEGMENT",
    -- the rock's tree, as README tells an operator with a separate tree
    -- (and a spec's own plugins first, as on the local host)
    "lua_package_path = " .. (opts.lua_path and (opts.lua_path .. ";") or "") .. tree ..
      "/share/lua/5.1/?.lua;" .. tree .. "/share/lua/5.1/?/init.lua;;",
    "lua_package_cpath = " .. tree .. "/lib/lua/5.1/?.so;;",
  }) do
    lines[#lines + 1] = l
  end
  if KONG_SETUP == "unprivileged" then
    lines[#lines + 1] = "nginx_user = nobody nogroup"
  else
    lines[#lines + 1] = "nginx_user = root root"
  end
  for _, k in ipairs { "worker_consistency", "worker_state_update_frequency" } do
    if opts[k] ~= nil then lines[#lines + 1] = k .. " = " .. tostring(opts[k]) end
  end
  if KONG_SETUP == "postgres" then
    for _, l in ipairs({ "database = postgres", "pg_host = 127.0.0.1", "pg_port = " .. pg_port(),
                         "pg_user = kong", "pg_password = kong",
                         "pg_database = " .. state.pg_database }) do
      lines[#lines + 1] = l
    end
  else
    lines[#lines + 1] = "database = off"
  end
  return table.concat(lines, "\n") .. "\n"
end


-- The nginx master's pid, from Kong's pid file.
local function kong_master_pid()
  assert(state, "host not started")
  local pid = tonumber((read_file(state.prefix .. "/pids/nginx.pid") or ""):match("%d+"))
  if pid and run("kill -0 " .. pid .. " 2>/dev/null") then
    return pid
  end
  return nil
end


-- Worker processes serving requests: the master's children whose title is
-- "nginx: worker process" (not old ones "is shutting down" after a reload).
local function kong_worker_pids()
  local m = kong_master_pid()
  if not m then
    return {}
  end
  local _, out = run("pgrep -P " .. m)
  local pids = {}
  for pid in out:gmatch("%d+") do
    local cmdline = (read_file("/proc/" .. pid .. "/cmdline") or ""):gsub("%z", " ")
    if cmdline:find("worker process", 1, true) and not cmdline:find("shutting down", 1, true) then
      pids[#pids + 1] = tonumber(pid)
    end
  end
  table.sort(pids)
  return pids
end


local function http_ok(port, path)
  local status = _M.request("GET", path, { timeout = 2 }, port)
  return status == 200
end


-- Ready: the Admin API and the status listener answer, the proxy accepts,
-- and `workers` workers run; `not_pids` (a set) are old workers that must
-- be gone.  Returns true, or false and what was missing.
local function kong_wait_ready(seconds, not_pids)
  local deadline = os.time() + (seconds or 60)
  local why
  repeat
    if not kong_master_pid() then
      return false, "the nginx master is not running"
    end
    if not http_ok(state.ports.admin, "/status") then
      why = "Admin API /status"
    elseif not http_ok(state.ports.status, "/status") then
      why = "status listener /status"
    elseif not _M.request("GET", "/", { timeout = 2 }) then
      why = "proxy"
    else
      local pids = kong_worker_pids()
      local fresh = #pids == state.workers
      for _, p in ipairs(pids) do
        if not_pids and not_pids[p] then fresh = false end
      end
      if fresh then
        return true
      end
      why = "workers (" .. #pids .. " of " .. state.workers .. ")"
    end
    run("sleep 0.1")
  until os.time() > deadline
  return false, "not ready after " .. (seconds or 60) .. " s: " .. tostring(why)
end


-- The config's route paths, to see when every one is routed.
local function route_paths(doc)
  local paths = {}
  local function add(routes)
    for _, r in ipairs(routes or {}) do
      if r.paths and r.paths[1] then paths[#paths + 1] = r.paths[1] end
    end
  end
  for _, svc in ipairs(doc.services or {}) do add(svc.routes) end
  add(doc.routes)
  return paths
end


-- Waits until the first route of `doc` is routed by 10 requests in a row
-- (each on a new connection, so on any worker).
local function wait_routed(doc)
  local path = route_paths(doc)[1]
  if not path then
    return true
  end
  local deadline = os.time() + 20
  local streak = 0
  repeat
    local status = _M.request("GET", path .. "/__routed", { timeout = 2 })
    if status and status ~= 404 then
      streak = streak + 1
    else
      streak = 0
      run("sleep 0.05")
    end
  until streak >= 10 or os.time() > deadline
  return streak >= 10
end


local function kong_fail(msg, level)
  local log = read_file(state.prefix .. "/logs/error.log") or ""
  local prefix = state.prefix
  kong_cli("stop -p " .. sh_quote(prefix))
  stop_upstreams(prefix)
  if state.pg_database then pg_in_use[state.pg_database] = nil end
  state = nil
  error(msg .. "\n" .. log:sub(-4000), level + 1)
end


local function kong_start(opts)
  opts = opts or {}
  if state then
    error("host already started (prefix " .. state.prefix .. "); call host.stop() first", 2)
  end
  local prefix = opts.prefix
  if not prefix then
    local _, out = run("mktemp -d /tmp/kong_spec.XXXXXX")
    prefix = out:gsub("%s+$", "")
  end
  -- root-owned, readable by the workers' user, like /usr/local/kong
  assert(run("mkdir -p " .. sh_quote(prefix) .. " && chmod 0755 " .. sh_quote(prefix)))
  local doc = opts.config or (ROOT .. "/kong/kong.yml")
  if type(doc) ~= "table" then
    error("on real Kong, host.start needs the config as a table", 2)
  end
  state = {
    prefix = prefix, upstreams = {}, kong = KONG_SETUP, workers = opts.workers or 2,
    ports = { proxy = opts.proxy_port or 8000, admin = opts.admin_port or 8001,
              status = opts.status_port or 8007 },
    segment = opts.segment or (prefix .. "/canary-router.seg"),
    segment_env = opts.segment,
    config = doc, config_file = prefix .. "/kong.json",
    conf = prefix .. "/kong.conf",
    database = KONG_SETUP == "postgres" and "postgres" or "off",
    worker_state_update_frequency = opts.worker_state_update_frequency or 5,
  }
  if KONG_SETUP == "postgres" then
    state.pg_database = pg_take()
    if not state.pg_database then
      state = nil
      error("more Kong nodes than PostgreSQL databases (" .. #PG_DATABASES .. ")", 2)
    end
  end
  write_file(state.config_file, assert(cjson.encode(doc)))
  write_file(state.conf, kong_conf_text(opts))
  start_upstreams(opts.upstreams or {
    { name = "automation-service", port = 9001 },
    { name = "automation-service-canary", port = 9002 },
  })

  local conf = " -c " .. sh_quote(state.conf)
  if KONG_SETUP == "postgres" then
    -- a clean database holding exactly this config, as `kong config
    -- db_import` of an operator's file leaves it
    local ok, out = run("runuser -u postgres -- psql -h 127.0.0.1 -p " .. pg_port() ..
                        " -d " .. state.pg_database .. " -qAt -v ON_ERROR_STOP=1 -c " ..
                        sh_quote("TRUNCATE services, routes, plugins, upstreams, targets CASCADE"))
    if not ok then
      kong_fail("resetting the database failed:\n" .. out, 2)
    end
    ok, out = kong_cli("config db_import " .. sh_quote(state.config_file) .. conf)
    if not ok then
      kong_fail("kong config db_import failed:\n" .. out, 2)
    end
  end
  local env = state.segment_env and { CANARY_ROUTER_SEGMENT = state.segment_env } or nil
  local ok, out = kong_cli("start -p " .. sh_quote(prefix) .. conf, env)
  if not ok then
    kong_fail("kong start failed:\n" .. out, 2)
  end
  local ready, why = kong_wait_ready(60)
  if not ready then
    kong_fail("Kong did not become ready: " .. why, 2)
  end
  if KONG_SETUP ~= "postgres" then
    local status, body = _M.admin("POST", "/config", doc)
    if status ~= 201 then
      kong_fail("POST /config answered " .. tostring(status) .. ": " ..
                (type(body) == "table" and cjson.encode(body) or tostring(body)), 2)
    end
  end
  if not wait_routed(doc) then
    kong_fail("the config's first route was never routed", 2)
  end
  return state
end


local function kong_stop()
  if not state then
    return
  end
  local prefix = state.prefix
  local m = kong_master_pid()
  local ok, out = kong_cli("stop -p " .. sh_quote(prefix))
  -- `kong stop` returns once the master is gone; wait for every worker too
  if m then
    run("for i in $(seq 100); do pgrep -P " .. m .. " >/dev/null || break; sleep 0.1; done")
  end
  stop_upstreams(prefix)
  if state.pg_database then pg_in_use[state.pg_database] = nil end
  state = nil
  if not ok and not out:find("not running", 1, true) then
    error("kong stop failed:\n" .. out, 2)
  end
end


local function kong_restart(opts)
  assert(state, "host not started")
  opts = opts or {}
  local m = kong_master_pid()
  local ok, out = kong_cli("stop -p " .. sh_quote(state.prefix))
  if not ok then
    error("kong stop failed:\n" .. out, 2)
  end
  if m then
    run("for i in $(seq 100); do kill -0 " .. m .. " 2>/dev/null || break; sleep 0.1; done")
  end
  if opts.segment then
    state.segment, state.segment_env = opts.segment, opts.segment
  end
  state.reloaded = nil
  local env = state.segment_env and { CANARY_ROUTER_SEGMENT = state.segment_env } or nil
  ok, out = kong_cli("start -p " .. sh_quote(state.prefix) .. " -c " .. sh_quote(state.conf), env)
  if not ok then
    error("kong start failed:\n" .. out .. "\n" .. _M.error_log():sub(-4000), 2)
  end
  local ready, why = kong_wait_ready(60)
  if not ready then
    error("Kong did not become ready after a restart: " .. why .. "\n"
          .. _M.error_log():sub(-4000), 2)
  end
  -- DB-less Kong keeps its last config (LMDB in the prefix) across a
  -- restart, and a database keeps it anyway: nothing is loaded again, and
  -- each worker builds its router from it before it serves.
end


-- `kong reload` renders nginx.conf from kong.conf again, then signals the
-- master (nginx -s reload).  The first reload after a start goes through
-- the CLI; later ones, with the same kong.conf, only send the signal the
-- CLI ends with: the CLI takes seconds of CPU on a busy two-core machine,
-- which would make a spec's 50 reloads under load a test of Kong's CLI.
local function kong_reload()
  assert(state, "host not started")
  local old = {}
  for _, p in ipairs(kong_worker_pids()) do old[p] = true end
  local ok, out
  if state.reloaded then
    ok, out = run("kill -HUP " .. assert(kong_master_pid(), "the nginx master is not running"))
  else
    local env = state.segment_env and { CANARY_ROUTER_SEGMENT = state.segment_env } or nil
    ok, out = kong_cli("reload -p " .. sh_quote(state.prefix) .. " -c " .. sh_quote(state.conf),
                       env)
  end
  if not ok then
    error("kong reload failed:\n" .. out, 2)
  end
  state.reloaded = true
  local ready, why = kong_wait_ready(30, old)
  if not ready then
    error("new workers did not come up after kong reload: " .. why, 2)
  end
end


-- One line per started gateway: how long config changes took to show in
-- the Admin API's status (see configure_plugin).  A figure, not a test.
local function report_propagation()
  local list = _M.propagation_ms
  if #list == 0 then
    return
  end
  local sorted, missed = {}, 0
  for _, ms in ipairs(list) do
    if ms < 0 then missed = missed + 1 else sorted[#sorted + 1] = ms end
  end
  table.sort(sorted)
  print(("\n  config changes (%s): %d, in force after median %.1f ms, max %.1f ms%s")
        :format(KONG_SETUP and ("Kong " .. KONG_SETUP) or "local host", #list,
                sorted[math.ceil(#sorted / 2)] or -1, sorted[#sorted] or -1,
                missed > 0 and (", " .. missed .. " not seen in force") or ""))
  _M.propagation_ms = {}
end

if KONG_SETUP then
  _M.start, _M.restart, _M.reload = kong_start, kong_restart, kong_reload
  _M.stop = function()
    report_propagation()
    return kong_stop()
  end
  _M.worker_pids = function()
    assert(state, "host not started")
    return kong_worker_pids()
  end
  _M.master_pid = kong_master_pid
else
  _M.start, _M.restart, _M.reload = local_start, local_restart, local_reload
  _M.stop = function()
    report_propagation()
    return local_stop()
  end
  _M.worker_pids, _M.master_pid = local_worker_pids, local_master_pid
end


--- The real-Kong setup the specs run in ("dbless", "postgres",
-- "unprivileged"), or nil on the local host.
function _M.kong()
  return KONG_SETUP
end


--- The version of the installed Kong the specs run on ("3.9.1"), or nil
-- on the local host.
function _M.kong_version()
  if not KONG_SETUP then
    return nil
  end
  local v = os.getenv("CANARY_KONG_VERSION")
  if not v or v == "" then
    local _, out = kong_cli("version")
    v = out:match("(%d+%.%d+%.%d+)")
  end
  return v
end


--- What the running gateway says of its database: "off" (DB-less) or
-- the database's name, from GET / on the Admin API.
function _M.database()
  assert(state, "host not started")
  local status, info
  for _ = 1, 20 do
    if state.database then
      return state.database
    end
    status, info = _M.admin("GET", "/")
    if status == 200 and type(info) == "table" and type(info.configuration) == "table" then
      state.database = info.configuration.database
    else
      run("sleep 0.1")
    end
  end
  error("GET / failed: " .. tostring(status), 2)
end


-- Merges `patch` into `into` as Kong's PATCH does: records field by field,
-- anything else (arrays, scalars) replaced.
local function merge_into(into, patch)
  for k, v in pairs(patch) do
    if type(v) == "table" and next(v) ~= nil and #v == 0 and type(into[k]) == "table"
       and #into[k] == 0 then
      merge_into(into[k], v)
    else
      into[k] = v
    end
  end
end


local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end


-- The plugin entry with `id` in a declarative document (global, or under
-- a service or a route).
local function find_plugin(doc, id)
  local function scan(list)
    for _, p in ipairs(list or {}) do
      if p.id == id then return p end
    end
  end
  local found = scan(doc.plugins)
  for _, svc in ipairs(doc.services or {}) do
    found = found or scan(svc.plugins)
    for _, r in ipairs(svc.routes or {}) do found = found or scan(r.plugins) end
  end
  for _, r in ipairs(doc.routes or {}) do found = found or scan(r.plugins) end
  return found
end


-- The instance `id` in GET /canary-router/status (nil when absent), and
-- the whole answer.
local function status_of(id)
  local status, body = _M.admin("GET", "/canary-router/status")
  if status ~= 200 or type(body) ~= "table" then
    return nil, nil
  end
  for _, d in ipairs(type(body.data) == "table" and body.data or {}) do
    if d.plugin_id == id then
      return d, body
    end
  end
  return nil, body
end


-- Deterministic text of a decoded JSON value (sorted keys; JSON null is
-- an unset field), to compare two configs.
local function canonical(v, out)
  out = out or {}
  if type(v) == "table" then
    local keys = {}
    for k, x in pairs(v) do
      if x ~= cjson.null and x ~= dkjson.null then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      out[#out + 1] = tostring(k) .. "="
      canonical(v[k], out)
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
  else
    out[#out + 1] = tostring(v)
  end
  return table.concat(out)
end


-- What the engine publishes a plugin config under (runtime.lua,
-- config_hash): its upstreams and its progression, where notifications
-- go aside.  A change of it publishes a new generation of the route.
local function published_part(config)
  if type(config) ~= "table" then
    return ""
  end
  local prog = config.progression
  if type(prog) == "table" then
    local rest = {}
    for k, v in pairs(prog) do
      if k ~= "notify" then rest[k] = v end
    end
    prog = rest
  end
  return canonical({ config.upstreams, prog })
end


-- Does the status `d` of an instance show the progression of `config`
-- (its number of steps and interval, where the config says them), or
-- none when it has none?
local function shows_progression(d, config)
  local want = type(config) == "table" and config.progression
  local got = d.progression
  -- blue/green: green is the preview (or second) upstream, and the
  -- engine runs two steps of its own whatever `steps` says
  local blue_green = type(want) == "table" and want.strategy == "blue_green"
  if type(want) ~= "table" or
     (not blue_green and (want.canary == nil or want.canary == cjson.null)) then
    return type(got) ~= "table" or got.state == "none"
  end
  return type(got) == "table" and
         (blue_green or type(want.steps) ~= "table" or got.steps == #want.steps) and
         (tonumber(want.interval) == nil or got.interval_ms == tonumber(want.interval) * 1000)
end


-- Polls GET /canary-router/status until the instance `id` routes with the
-- configured `upstreams` (names and weights); with `new`, under a
-- generation newer than new.gen and with the progression of new.config.
-- Returns the milliseconds it took, or nil when it did not within
-- `seconds`.
local function wait_in_force(id, upstreams, seconds, new)
  local t0 = socket.gettime()
  repeat
    local d, body = status_of(id)
    if type(body) == "table" and body.segment_error then
      return nil  -- the engine is unavailable: no weights will ever show
    end
    if d and type(d.upstreams) == "table" and #d.upstreams == #upstreams
       and (not new or ((tonumber(d.generation) or -1) > new.gen and
                        shows_progression(d, new.config))) then
      local same = true
      for i, u in ipairs(upstreams) do
        local got = d.upstreams[i]
        if got.name ~= u.name or math.abs((got.weight or -1) - u.weight) > 1e-9 then
          same = false
        end
      end
      if same then
        return (socket.gettime() - t0) * 1000
      end
    end
    socket.sleep(0.01)
  until socket.gettime() - t0 > seconds
  return nil
end


_M.propagation_ms = {}

--- Changes the config of plugin `id` the way an operator does on this
-- gateway: PATCH /plugins/{id} with a database, or (DB-less) the edited
-- declarative config POSTed to /config (and written to the file it came
-- from, as an operator keeps kong.yml the source of truth).  `patch` is
-- merged like Kong's PATCH (records field by field, arrays replaced).
-- Returns ok, status, body of the Admin API call; when ok, it returns
-- once the Admin API's status shows the new weights (at most 6 s: Kong's
-- eventual consistency takes up to worker_state_update_frequency = 5 s; the
-- time taken is kept in host.propagation_ms).
function _M.configure_plugin(id, patch)
  assert(state, "host not started")
  local status, body, upstreams, new_config
  -- What the route runs before the change: the config Kong holds and the
  -- generation the segment publishes it under.
  local _, old_entity = _M.admin("GET", "/plugins/" .. id)
  local old_config = type(old_entity) == "table" and old_entity.config or nil
  local inst = status_of(id)
  local old_gen = inst and tonumber(inst.generation)
  if _M.database() ~= "off" then
    status, body = _M.admin("PATCH", "/plugins/" .. id, { config = patch })
    if status ~= 200 then
      return false, status, body
    end
    upstreams = type(body) == "table" and body.config and body.config.upstreams
    new_config = type(body) == "table" and body.config or nil
  else
    if not state.config then
      error("the gateway was started from a file; configure_plugin needs a config table", 2)
    end
    local doc = copy(state.config)
    local plugin = find_plugin(doc, id)
    if not plugin then
      error("no plugin with id " .. tostring(id) .. " in the config", 2)
    end
    plugin.config = plugin.config or {}
    merge_into(plugin.config, patch)
    status, body = _M.admin("POST", "/config", doc)
    if status ~= 201 and status ~= 200 then
      return false, status, body
    end
    state.config = doc
    write_file(state.config_file, assert(cjson.encode(doc)))
    upstreams = plugin.config.upstreams
    -- the entity as Kong stored it (defaults filled), when it says
    local _, entity = _M.admin("GET", "/plugins/" .. id)
    new_config = type(entity) == "table" and entity.config or nil
  end
  -- On the local host every worker says which config it runs: wait for
  -- all of them, so a change that leaves the weights alone (sticky, trace,
  -- a progression) is in force everywhere too.
  if not _M.kong() then wait_applied() end
  if upstreams then
    -- Real Kong does not say which config each worker runs.  A change of
    -- the upstreams or the progression is in force once the segment
    -- publishes it, under a newer generation: the configured weights
    -- alone would show at once when they did not change (a new
    -- progression starting at the weight in force), and an Admin action
    -- then would act on the progression about to be replaced.
    local new
    if old_gen and type(old_config) == "table" and type(new_config) == "table"
       and published_part(old_config) ~= published_part(new_config) then
      new = { gen = old_gen, config = new_config }
    end
    local ms = wait_in_force(id, upstreams, 6, new)
    _M.propagation_ms[#_M.propagation_ms + 1] = ms or -1
    if new then return true, status, body end
  end
  if _M.kong() then
    -- Nothing the segment publishes changed (or not our plugin): what
    -- Kong's own propagation takes.  DB-less, the reconfigure event
    -- (milliseconds).  With a database, the plugins iterators' rebuild
    -- timer: canary-router's crud event usually brings the change to
    -- every worker within milliseconds, but it travels by Kong's worker
    -- events, which a loaded machine delays (Kong 3.4.2 with PostgreSQL,
    -- two test-kong runs at once: a sticky change not yet in force on one
    -- worker 0.3 s after its PATCH), and only the rebuild bounds it.
    socket.sleep(state.database ~= "off" and state.worker_state_update_frequency + 0.3 or 0.3)
  end
  return true, status, body
end

return _M
