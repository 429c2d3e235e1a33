-- kong_host.store: the current declarative config, shared by all workers.
--
-- The normalised document lives in the `kong_host` shared dict as JSON
-- under "config:json:<version>", and "config:version" names the current
-- one.  A writer stores the new document first and only then bumps the
-- version, so a reader that sees version N always finds document N (the
-- last few are kept for readers that looked at the version just before a
-- newer publish).  Workers compare the version at the start of every
-- request (one shm get) and on a 1 s timer.
--
-- Writers (Admin API requests, possibly in different workers) exclude
-- each other with an expiring shm key, and compute their change from the
-- document they read while holding it, so no update is lost.  The shm
-- survives `nginx -s reload`, so versions stay monotone across reloads.

local DICT_NAME = "kong_host"
local VERSION_KEY = "config:version"
local JSON_PREFIX = "config:json:"
local LOCK_KEY = "config:lock"
local KEEP = 4

local _M = {}


local function dict()
  local d = ngx.shared[DICT_NAME]
  if not d then
    error("lua_shared_dict " .. DICT_NAME .. " is not defined", 2)
  end
  return d
end


function _M.version()
  return dict():get(VERSION_KEY)
end


-- Returns version, json of the current document (nil when none yet).
function _M.read()
  local d = dict()
  local v = d:get(VERSION_KEY)
  if not v then
    return nil
  end
  return v, d:get(JSON_PREFIX .. v)
end


-- Publishes a new document.  The caller holds the lock (or is the master
-- process in init, where nothing else runs).  Returns the new version, or
-- nil and an error; on error the current document is unchanged.
function _M.publish(json)
  local d = dict()
  local v = (d:get(VERSION_KEY) or 0) + 1
  local ok, err = d:safe_set(JSON_PREFIX .. v, json)
  if not ok then
    return nil, "cannot store config (" .. tostring(err) .. "): raise the kong_host shm size"
  end
  ok, err = d:safe_set(VERSION_KEY, v)
  if not ok then
    d:delete(JSON_PREFIX .. v)
    return nil, "cannot store config version: " .. tostring(err)
  end
  if v > KEEP then
    d:delete(JSON_PREFIX .. (v - KEEP))
  end
  return v
end


-- Takes the writer lock, waiting up to `timeout` seconds (default 5).  The
-- key expires after 10 s so a worker that died holding it blocks nobody
-- for long.  Returns true, or nil and "timeout".
function _M.lock(timeout)
  local d = dict()
  local deadline = ngx.now() + (timeout or 5)
  local token = tostring(ngx.worker.pid()) .. ":" .. tostring(ngx.now())
  while true do
    local ok = d:add(LOCK_KEY, token, 10)
    if ok then
      return token
    end
    if ngx.now() >= deadline then
      return nil, "timeout"
    end
    ngx.sleep(0.002)
    ngx.update_time()
  end
end


function _M.unlock(token)
  local d = dict()
  if d:get(LOCK_KEY) == token then
    d:delete(LOCK_KEY)
  end
end


-- The node id, created once per shm lifetime (kept across reloads).
function _M.node_id(make)
  local d = dict()
  local id = d:get("node_id")
  if not id and make then
    d:safe_add("node_id", make())
    id = d:get("node_id")
  end
  return id
end


return _M
