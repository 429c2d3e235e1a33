-- Demo upstream servers for `make run` and the integration tests: one
-- nginx instance, one server block per upstream (name and port given to
-- ctl.sh).  Every path answers with JSON describing what arrived:
--
--   {"upstream": NAME, "method": ..., "path": ..., "query": ...,
--    "headers": {"x-trace-id": ..., "traceparent": ..., "x-canary": ...,
--                "host": ...}}
--
-- and the response header `X-Upstream: NAME`.  Run-time controls, per
-- upstream, kept in a shared dict so both the control request and the
-- traffic see them whatever worker they land on:
--
--   POST /__control  {"latency_ms": N, "error_rate": F, "status": S}
--                    (fields given are changed; {"reset": true} clears)
--   GET  /__control  the current settings
--   GET  /__stats    {"requests": N, "errors": N, "by_status": {...}}
--   DELETE /__stats  resets the counters
--
-- With error_rate F, each request fails with `status` (default 500) with
-- probability F; latency_ms delays every response with ngx.sleep.

local cjson = require "cjson.safe"

local ngx = ngx
local var = ngx.var

local _M = {}

local DICT = ngx.shared.demo_upstream


local function reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(body))
  return ngx.exit(status)
end


local function settings(name)
  return {
    latency_ms = DICT:get(name .. ":latency_ms") or 0,
    error_rate = DICT:get(name .. ":error_rate") or 0,
    status = DICT:get(name .. ":status") or 500,
  }
end


local function control(name)
  local method = ngx.req.get_method()
  if method == "GET" then
    return reply(200, settings(name))
  end
  if method ~= "POST" then
    return reply(405, { message = "Method not allowed" })
  end
  ngx.req.read_body()
  local body = cjson.decode(ngx.req.get_body_data() or "{}")
  if type(body) ~= "table" then
    return reply(400, { message = "expected a JSON object" })
  end
  local errs = {}
  local lat, rate, status = body.latency_ms, body.error_rate, body.status
  if lat ~= nil and (type(lat) ~= "number" or lat < 0 or lat > 600000) then
    errs[#errs + 1] = "latency_ms must be a number between 0 and 600000"
  end
  if rate ~= nil and (type(rate) ~= "number" or rate < 0 or rate > 1) then
    errs[#errs + 1] = "error_rate must be a number between 0 and 1"
  end
  if status ~= nil and (type(status) ~= "number" or status < 100 or status > 599
                        or status % 1 ~= 0) then
    errs[#errs + 1] = "status must be an integer between 100 and 599"
  end
  for k in pairs(body) do
    if k ~= "latency_ms" and k ~= "error_rate" and k ~= "status" and k ~= "reset" then
      errs[#errs + 1] = "unknown field '" .. tostring(k) .. "'"
    end
  end
  if #errs > 0 then
    return reply(400, { message = table.concat(errs, "; ") })
  end
  if body.reset then
    DICT:delete(name .. ":latency_ms")
    DICT:delete(name .. ":error_rate")
    DICT:delete(name .. ":status")
  end
  if lat then DICT:set(name .. ":latency_ms", lat) end
  if rate then DICT:set(name .. ":error_rate", rate) end
  if status then DICT:set(name .. ":status", status) end
  return reply(200, settings(name))
end


local function stats(name)
  local method = ngx.req.get_method()
  if method == "DELETE" then
    for _, key in ipairs(DICT:get_keys(0)) do
      if key:sub(1, #name + 7) == name .. ":count:" then
        DICT:delete(key)
      end
    end
    return reply(200, { requests = 0, errors = 0, by_status = {} })
  end
  local by_status, requests, errors = {}, 0, 0
  for _, key in ipairs(DICT:get_keys(0)) do
    local code = key:match("^" .. name:gsub("%p", "%%%0") .. ":count:(%d+)$")
    if code then
      local n = DICT:get(key) or 0
      by_status[code] = n
      requests = requests + n
      if tonumber(code) >= 500 then
        errors = errors + n
      end
    end
  end
  return reply(200, { requests = requests, errors = errors, by_status = by_status })
end


function _M.handle()
  local name = var.upstream_name
  local uri = var.request_uri or "/"
  local path = uri:match("^[^?]*")

  if path == "/__control" then
    return control(name)
  elseif path == "/__stats" then
    return stats(name)
  end

  local s = settings(name)
  if s.latency_ms > 0 then
    ngx.sleep(s.latency_ms / 1000)
  end
  local status = 200
  if s.error_rate > 0 and math.random() < s.error_rate then
    status = s.status
  end
  DICT:incr(name .. ":count:" .. status, 1, 0)

  local h = ngx.req.get_headers()
  local function first(v)
    if type(v) == "table" then
      return v[1]
    end
    return v == nil and cjson.null or v
  end
  ngx.header["X-Upstream"] = name
  return reply(status, {
    upstream = name,
    method = ngx.req.get_method(),
    path = path,
    query = var.args or cjson.null,
    headers = {
      ["x-trace-id"] = first(h["x-trace-id"]),
      ["traceparent"] = first(h["traceparent"]),
      ["x-canary"] = first(h["x-canary"]),
      ["host"] = first(h["host"]),
    },
  })
end


function _M.init_worker()
  math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
end


return _M
