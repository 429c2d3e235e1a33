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


--- Starts the demo upstreams and the gateway; returns once they answer.
function _M.start(opts)
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
            worker_state_update_frequency = opts.worker_state_update_frequency or 5 }

  if #upstreams > 0 then
    local list = {}
    for _, u in ipairs(upstreams) do
      list[#list + 1] = u.name .. ":" .. u.port
      state.upstreams[u.name] = u.port
    end
    local ok, out = run(table.concat({
      "bash", sh_quote(ROOT .. "/kong/host/demo_upstream/ctl.sh"), "start",
      "--prefix", sh_quote(prefix .. "/demo_upstream"),
      "--servers", sh_quote(table.concat(list, ",")),
    }, " "))
    if not ok then
      state = nil
      error("demo upstreams failed to start:\n" .. out, 2)
    end
  end

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
function _M.stop()
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
function _M.restart(opts)
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
function _M.reload()
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
function _M.worker_pids()
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


function _M.master_pid()
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
-- test's own kill -9) are not crashes; any other signal is.
function _M.lua_errors(kills_expected)
  local bad = {}
  for line in _M.error_log():gmatch("[^\n]+") do
    local sig = tonumber(line:match("exited on signal (%d+)"))
    if line:find("runtime error", 1, true) or line:find("stack traceback", 1, true)
       or line:find("failed to execute plugin", 1, true)
       or line:find("An unexpected error occurred", 1, true)
       or (sig and not (kills_expected and sig == 9)) then
      bad[#bad + 1] = line
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


return _M
