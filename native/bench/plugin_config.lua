-- native/bench/plugin_config.lua - change a plugin's config on a DB-less
-- gateway the way an operator does (Kong answers PATCH /plugins/{id} with
-- 405 without a database): GET /config, merge the new fields into that
-- plugin's config (records field by field, as a PATCH would), POST
-- /config.  dkjson keeps arrays arrays, empty ones included.
--
--   local plugin_config = require "plugin_config"
--   local status, body = plugin_config.set(request, admin_url, plugin_id, config)
--
-- `request(method, url, body)` returns status, body (the caller's HTTP
-- client); the result is POST /config's status (201 on success) and body.

local dkjson = require "dkjson"

local _M = {}


local function is_record(t)
  return type(t) == "table" and next(t) ~= nil and #t == 0
end


local function merge(top, bottom)
  if type(bottom) ~= "table" then
    return top
  end
  local out = {}
  for k, v in pairs(bottom) do out[k] = v end
  for k, v in pairs(top) do
    if is_record(v) and is_record(bottom[k]) then
      out[k] = merge(v, bottom[k])
    else
      out[k] = v
    end
  end
  return out
end


function _M.set(request, admin_url, plugin_id, config)
  local status, body = request("GET", admin_url .. "/config")
  if status ~= 200 then
    return status, body
  end
  local export = dkjson.decode(body, 1, dkjson.null)
  local doc = type(export) == "table" and type(export.config) == "string"
              and dkjson.decode(export.config, 1, dkjson.null)
  if type(doc) ~= "table" then
    return nil, "GET /config: no JSON document in 'config' (a YAML export needs lyaml)"
  end
  local found = false
  for _, p in ipairs(doc.plugins or {}) do
    if p.id == plugin_id then
      p.config = merge(config, p.config)
      found = true
    end
  end
  if not found then
    return nil, "GET /config: no plugin " .. plugin_id
  end
  return request("POST", admin_url .. "/config", dkjson.encode(doc))
end


return _M
