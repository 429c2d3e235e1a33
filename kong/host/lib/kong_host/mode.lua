-- kong_host.mode: the Kong release and database mode the host claims to
-- be, and what follows from them.  Set once in the master's init phase
-- (kong_host.init) from ctl.sh's options, read by the other modules; the
-- workers inherit it at fork.
--
--   version                  "3.9.1" (default) or "3.4.2": kong.version,
--                            version_num, the Server and Via headers.
--   has_configure            plugins' configure() exists from Kong 3.5 on
--                            (kong/runloop/plugins_iterator.lua: 3.9.1 has
--                            CONFIGURE_PHASE and PluginsIterator:configure,
--                            3.4.2 has neither).
--   database                 "off" (DB-less, default) or "postgres" (the
--                            host's shm document stands in for the
--                            database): kong.configuration.database.
--   worker_consistency       "eventual" (Kong's default) or "strict"; DB
--                            mode only (kong/runloop/handler.lua).
--   worker_state_update_frequency
--                            seconds between the rebuild timers' runs in DB
--                            mode (Kong's default 5, kong_defaults.lua).

local _M = {}

-- The releases whose behaviour the host was checked against, in Kong's
-- sources (tags 3.4.2 and 3.9.1).
local VERSIONS = {
  ["3.4.2"] = { num = 3004002, has_configure = false },
  ["3.9.1"] = { num = 3009001, has_configure = true },
}

local DATABASES = { off = true, postgres = true }
local CONSISTENCY = { eventual = true, strict = true }

_M.version = "3.9.1"
_M.version_num = VERSIONS["3.9.1"].num
_M.has_configure = true
_M.database = "off"
_M.worker_consistency = "eventual"
_M.worker_state_update_frequency = 5


local function list(t)
  local names = {}
  for k in pairs(t) do
    names[#names + 1] = k
  end
  table.sort(names)
  return table.concat(names, ", ")
end


-- Applies the options (nil fields keep the defaults).  Raises with a
-- message naming the accepted values on anything else.
function _M.set(opts)
  local version = opts.kong_version or _M.version
  local v = VERSIONS[version]
  if not v then
    error("unsupported kong_version '" .. tostring(version) .. "' (expected one of: "
          .. list(VERSIONS) .. ")", 0)
  end
  local database = opts.database or _M.database
  if not DATABASES[database] then
    error("unsupported database '" .. tostring(database) .. "' (expected one of: "
          .. list(DATABASES) .. ")", 0)
  end
  local consistency = opts.worker_consistency or _M.worker_consistency
  if not CONSISTENCY[consistency] then
    error("unsupported worker_consistency '" .. tostring(consistency)
          .. "' (expected one of: " .. list(CONSISTENCY) .. ")", 0)
  end
  local freq = opts.worker_state_update_frequency or _M.worker_state_update_frequency
  freq = tonumber(freq)
  if not freq or freq <= 0 or freq ~= freq or freq == math.huge then
    error("worker_state_update_frequency must be a number of seconds > 0, got '"
          .. tostring(opts.worker_state_update_frequency) .. "'", 0)
  end
  _M.version = version
  _M.version_num = v.num
  _M.has_configure = v.has_configure
  _M.database = database
  _M.worker_consistency = consistency
  _M.worker_state_update_frequency = freq
end


function _M.dbless()
  return _M.database == "off"
end


-- The value of Kong's Server / Via headers.
function _M.server_token()
  return "kong/" .. _M.version
end


return _M
