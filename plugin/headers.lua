-- The few request headers a config reads, in one pass over the request's
-- header list.
--
-- Each `ngx.var.http_*` lookup lowercases and hashes the variable's name,
-- misses nginx's variables hash, compares the name against every prefix
-- nginx knows ("http_", "sent_http_", "cookie_", ...) and then walks the
-- header list: about 800 instructions on Kong 3.9.1, for a header that is
-- usually absent.  The request path reads up to five (traceparent, the
-- trace header, tracestate, a sticky and an override header), so it asks
-- lua-nginx-module once for the list (pointers only, the call that
-- resty.core's ngx.req.get_headers() makes) and compares lengths first:
-- no string is made for a header the config does not read.
--
-- What is read is what kong.request.get_header() returns (kong/pdk/
-- request.lua, kong/tools/http.lua): the value of the first header line
-- of that name, case-insensitive, "-" and "_" alike (nginx's $http_*
-- rule).  Where the list cannot be had (no ngx: the unit specs' stub, or
-- an nginx without the call), the PDK reads each header.

local _M = {}

local byte = string.byte
local type = type

-- Slots of a header view.
_M.TRACEPARENT = 1
_M.TRACE = 2
_M.TRACESTATE = 3
_M.STICKY = 4
_M.OVERRIDE = 5

local ffi, C, get_request, ffi_string, buf_t, buf, cap, truncated
do
  local ok = ngx ~= nil and pcall(require, "resty.core.request")
  local base_ok, base = pcall(require, "resty.core.base")
  if ok and base_ok then
    ffi = require "ffi"
    C = ffi.C
    -- Declared by resty.core.request; absent from an nginx without them.
    ok = pcall(function()
      return C.ngx_http_lua_ffi_req_get_headers_count and
             C.ngx_http_lua_ffi_req_get_headers
    end)
    if ok then
      get_request = base.get_request
      ffi_string = ffi.string
      buf_t = ffi.typeof("ngx_http_lua_ffi_table_elt_t[?]")
      cap = 32
      buf = buf_t(cap)
      truncated = ffi.new("int[1]")
    end
  end
end

-- A header name as the view compares it: lowercase, "_" as "-".
local function normal(name)
  return (name:lower():gsub("_", "-"))
end

-- The view of a config: `names` maps slot -> header name (as configured,
-- nil for a header the config does not read).  Returns a spec whose
-- `values` table read() refills for every request.
function _M.compile(names)
  local spec = { slots = {}, names = {}, lower = {}, lens = {}, values = {} }
  for slot = _M.TRACEPARENT, _M.OVERRIDE do
    local name = names[slot]
    if name then
      local i = #spec.slots + 1
      spec.slots[i] = slot
      spec.names[i] = name
      spec.lower[i] = normal(name)
      spec.lens[i] = #name
    end
    spec.values[slot] = false
  end
  spec.n = #spec.slots
  return spec
end

-- Whether the n bytes at p (a lowercase header name) spell s.
local function same(p, s, n)
  for j = 0, n - 1 do
    local b = p[j]
    if b == 95 then b = 45 end -- "_" reads as "-"
    if b ~= byte(s, j + 1) then return false end
  end
  return true
end

_M.same = same

-- The PDK's reading of one header: its first value, or false.
local function pdk_header(name)
  local v = kong.request.get_header(name)
  if type(v) == "table" then v = v[1] end
  return v or false
end

local function read_pdk(spec, values)
  for i = 1, spec.n do
    values[spec.slots[i]] = pdk_header(spec.names[i])
  end
  return values
end

-- The headers of this request that `spec` reads: spec.values, slot ->
-- first value or false.  The table is the spec's own, refilled on each
-- call: read it before anything that may yield.
function _M.read(spec)
  local values = spec.values
  local n_want = spec.n
  for i = 1, n_want do values[spec.slots[i]] = false end
  if n_want == 0 then return values end
  if not get_request then return read_pdk(spec, values) end
  local r = get_request()
  if r == nil then return read_pdk(spec, values) end
  -- max 0: every header line, as $http_* sees them (a negative max
  -- stops at lua-nginx-module's 100).
  local n = C.ngx_http_lua_ffi_req_get_headers_count(r, 0, truncated)
  if n <= 0 then
    if n < 0 then return read_pdk(spec, values) end
    return values
  end
  if n > cap then
    cap = n
    buf = buf_t(cap)
  end
  if C.ngx_http_lua_ffi_req_get_headers(r, buf, n, 0) ~= 0 then
    return read_pdk(spec, values)
  end
  local lens, lower, slots = spec.lens, spec.lower, spec.slots
  local left = n_want
  for h = 0, n - 1 do
    local e = buf[h]
    local len = e.key.len
    for i = 1, n_want do
      if lens[i] == len then
        local slot = slots[i]
        if not values[slot] and same(e.key.data, lower[i], len) then
          values[slot] = ffi_string(e.value.data, e.value.len)
          left = left - 1
          if left == 0 then return values end
        end
      end
    end
  end
  return values
end

return _M
