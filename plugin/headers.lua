-- The few request headers a config reads, in one pass over the request's
-- header list.
--
-- Each `ngx.var.http_*` lookup lowercases and hashes the variable's name,
-- misses nginx's variables hash, compares the name against every prefix
-- nginx knows ("http_", "sent_http_", "cookie_", ...) and then walks the
-- header list: about 800 instructions on Kong 3.9.1, for a header that is
-- usually absent.  The request path reads up to five (traceparent, the
-- trace header, tracestate, a sticky and an override header), so it asks
-- lua-nginx-module once for the list (pointers only: the call resty.core's
-- ngx.req.get_headers() makes) and the engine finds them all in one pass
-- (canary_headers_find); a string is made only for a header the request
-- path then uses.  No loop runs in Lua, so the request's trace stays
-- whole.
--
-- What is read is what kong.request.get_header() returns (kong/pdk/
-- request.lua, kong/tools/http.lua): the value of the first header line
-- of that name, case-insensitive, "_" read as "-" (nginx's $http_* rule).
-- Where the list cannot be had (no ngx: the unit specs' stub, or an nginx
-- without the call), the PDK reads each header.

local engine = require "kong.plugins.canary-router.engine"

local _M = {}

local type = type

-- Slots of a view, in the order of the names given to the engine.
_M.TRACEPARENT = 0
_M.TRACE = 1
_M.TRACESTATE = 2
_M.STICKY = 3
_M.OVERRIDE = 4
local N_SLOTS = 5

local ffi = require "ffi"
local NC = ffi.C
local headers_find = engine.headers_find
local get_request, ffi_string, elt_t, list, headers, cap, truncated, found
do
  local ok = ngx ~= nil and pcall(require, "resty.core.request")
  local base_ok, base = pcall(require, "resty.core.base")
  if ok and base_ok then
    -- Declared by resty.core.request; absent from an nginx without them.
    ok = pcall(function()
      return NC.ngx_http_lua_ffi_req_get_headers_count and
             NC.ngx_http_lua_ffi_req_get_headers
    end)
    if ok then
      get_request = base.get_request
      ffi_string = ffi.string
      elt_t = ffi.typeof("ngx_http_lua_ffi_table_elt_t[?]")
      cap = 32
      list = elt_t(cap)
      -- The same layout (canary.h, canary_header_t).
      headers = ffi.cast("const canary_header_t *", list)
      truncated = ffi.new("int[1]")
      found = ffi.new("int32_t[?]", N_SLOTS)
    end
  end
end

-- The view of a config.  `names` maps slot -> header name as configured
-- (nil: a header the config does not read).
function _M.compile(names)
  local packed = {}
  for slot = 0, N_SLOTS - 1 do
    local name = names[slot]
    packed[slot + 1] = name and name:lower():gsub("_", "-") or ""
  end
  return { names = names, packed = table.concat(packed, "\0") }
end

-- Reads the headers of this request for `spec`; then value(slot) gives
-- each.  Call value() before anything that may yield: the view is one
-- per worker, refilled by the next read.
local pdk_spec = nil
function _M.read(spec)
  pdk_spec = spec
  if not get_request then return end
  local r = get_request()
  if r == nil then return end
  -- max 0: every header line, as $http_* sees them (a negative max
  -- stops at lua-nginx-module's 100).
  local n = NC.ngx_http_lua_ffi_req_get_headers_count(r, 0, truncated)
  if n < 0 then return end
  if n > cap then
    cap = n
    list = elt_t(cap)
    headers = ffi.cast("const canary_header_t *", list)
  end
  if n > 0 and NC.ngx_http_lua_ffi_req_get_headers(r, list, n, 0) ~= 0 then
    return
  end
  if headers_find(headers, n, spec.packed, N_SLOTS, found) < 0 then
    return
  end
  pdk_spec = nil
end

-- The PDK's reading of one header: its first value, or nil.
local function pdk_header(name)
  if not name then return nil end
  local v = kong.request.get_header(name)
  if type(v) == "table" then v = v[1] end
  return v
end
_M.pdk_header = pdk_header

-- The first value of the header in `slot` of the last read(), or nil.
function _M.value(slot)
  if pdk_spec then return pdk_header(pdk_spec.names[slot]) end
  local i = found[slot]
  if i < 0 then return nil end
  local e = list[i]
  return ffi_string(e.value.data, e.value.len)
end

-- Whether the header in `slot` of the last read() is there.
function _M.has(slot)
  if pdk_spec then return pdk_header(pdk_spec.names[slot]) ~= nil end
  return found[slot] >= 0
end

return _M
