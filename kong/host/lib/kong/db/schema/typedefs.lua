--- Stand-in for Kong's `kong.db.schema.typedefs`: exactly the type synonyms
-- that canary-router's schema uses, with Kong 3.x's semantics.
--
-- Kong builds each typedef with `Schema.define`, which makes it callable:
-- `typedefs.header_name { default = "X-Canary" }` returns a new plain table
-- holding the given attributes plus every attribute of the typedef the
-- caller did not set.  The same is done here, so schema.lua reads exactly
-- as it would against Kong.
--
-- The validators reproduce Kong's, messages included:
--
-- * header_name: `kong.tools.utils.validate_header_name`, which matches
--   `^[a-zA-Z0-9-_]+$` with PCRE (`ngx.re.match`).  PCRE's `$` also matches
--   before a final newline, so Kong accepts "X-Foo\n"; this stand-in accepts
--   it too rather than be stricter than the gateway it stands in for.
-- * ip_or_cidr: `kong.tools.ip.is_valid_ip_or_cidr` (Kong 3.6+), which asks
--   inet_pton(3) through resty.ipmatcher and accepts a CIDR suffix only when
--   it is exactly "0".."32" (IPv4) or "0".."128" (IPv6).  inet_pton is
--   reached here through the LuaJIT FFI, so the answers are libc's, as in
--   Kong.
--
-- * host, port, timeout, sni: Kong's definitions, with validate_host and
--   validate_sni over a reduced kong.tools.ip.normalize_ip (same messages).
--
-- Any other typedef raises Kong's "definition ... does not exist" error.

local ffi = require "ffi"
local cjson = require "cjson"

local type = type
local pairs = pairs
local setmetatable = setmetatable
local error = error
local find = string.find
local sub = string.sub
local match = string.match
local tostring = tostring
local tonumber = tonumber

local ngx = rawget(_G, "ngx")
local null = ngx and ngx.null or cjson.null

-- Kong's own modules may already have declared inet_pton (resty.ipmatcher
-- does); a second declaration fails harmlessly and the first one is used.
pcall(ffi.cdef, "int inet_pton(int af, const char *src, void *dst);")

local C = ffi.C
local AF_INET = 2   -- Linux values, as resty.ipmatcher uses
local AF_INET6 = 10
local addr_buf = ffi.new("unsigned char[16]")


--- Kong's `Schema.define`: a typedef that can be called with overrides.
local function define(tbl)
  return setmetatable(tbl, {
    __call = function(t, arg)
      arg = arg or {}
      for k, v in pairs(t) do
        if arg[k] == nil then
          arg[k] = v
        end
      end
      return arg
    end,
  })
end


local function validate_header_name(name)
  if name == nil or name == "" then
    return nil, "no header name provided"
  end

  -- "\n?" reproduces PCRE's `$`, see the header comment.
  if match(name, "^[A-Za-z0-9_%-]+\n?$") then
    return name
  end

  return nil, "bad header name '" .. name ..
              "', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
end


local function parse_ipv4(ip)
  return C.inet_pton(AF_INET, ip, addr_buf) == 1
end


local function parse_ipv6(ip)
  -- resty.ipmatcher strips the brackets of an IPv6 literal.
  if sub(ip, 1, 1) == "[" and sub(ip, -1) == "]" then
    ip = sub(ip, 2, -2)
  end
  return C.inet_pton(AF_INET6, ip, addr_buf) == 1
end


local IPV4_PREFIXES = {}
for i = 0, 32 do
  IPV4_PREFIXES[tostring(i)] = i
end

local IPV6_PREFIXES = {}
for i = 0, 128 do
  IPV6_PREFIXES[tostring(i)] = i
end


local function split_cidr(cidr, prefixes)
  local slash = find(cidr, "/", 3, true)
  if not slash then
    return nil
  end
  return sub(cidr, 1, slash - 1), prefixes[sub(cidr, slash + 1)]
end


-- kong.tools.ip's validate(): the input (or, with `prefixes`, its address
-- part) must satisfy f1 or f2.
local function validate_address(input, f1, f2, prefixes)
  if type(input) ~= "string" then
    return false
  end

  if prefixes then
    local ip, prefix = split_cidr(input, prefixes)
    if not ip or not prefix then
      return false
    end
    input = ip
  end

  if f1(input) then
    return true
  end

  return f2 ~= nil and f2(input) or false
end


local function is_valid_ip(ip)
  return validate_address(ip, parse_ipv4, parse_ipv6)
end


local function is_valid_cidr_v4(cidr)
  return validate_address(cidr, parse_ipv4, nil, IPV4_PREFIXES)
end


local function is_valid_cidr_v6(cidr)
  return validate_address(cidr, parse_ipv6, nil, IPV6_PREFIXES)
end


local function is_valid_cidr(cidr)
  return validate_address(cidr, is_valid_cidr_v4, is_valid_cidr_v6)
end


local function validate_ip_or_cidr(value)
  if validate_address(value, is_valid_ip, is_valid_cidr) then
    return true
  end
  return nil, "invalid ip or cidr range: '" .. value .. "'"
end


-- Kong OSS's protocols of the "http" subsystem (constants.PROTOCOLS_WITH_
-- SUBSYSTEM), sorted as typedefs.lua sorts them.  Kong Enterprise adds
-- "ws" and "wss".
local HTTP_PROTOCOLS = { "grpc", "grpcs", "http", "https" }


local typedefs = {}


typedefs.header_name = define {
  type = "string",
  custom_validator = validate_header_name,
  description = "An HTTP header name: letters, digits, '_' and '-'.",
}


typedefs.ip_or_cidr = define {
  type = "string",
  custom_validator = validate_ip_or_cidr,
  description = "An IPv4 or IPv6 address, or a CIDR block such as 10.0.0.0/8.",
}


typedefs.no_consumer = define {
  type = "foreign",
  reference = "consumers",
  eq = null,
  description = "Always null: the plugin cannot be scoped to a consumer.",
}


typedefs.protocols_http = define {
  type = "set",
  required = true,
  default = HTTP_PROTOCOLS,
  elements = { type = "string", one_of = HTTP_PROTOCOLS },
  description = "Request protocols of the HTTP subsystem the plugin runs on.",
}


-- kong.tools.ip.normalize_ip, reduced to what validate_host and
-- validate_sni look at: the address type ("ipv4", "ipv6" or "name") and
-- the port, or Kong's error strings ("invalid port number" for a port
-- outside 0..65535 or not a number).
local function normalize_ip(host)
  if type(host) ~= "string" or host == "" then
    return nil, "invalid value"
  end
  local addr, port = match(host, "^%[(.+)%]:?(.*)$")
  if addr then
    if not parse_ipv6(addr) then return nil, "invalid ipv6 address: " .. host end
  elseif parse_ipv6(host) then
    return { type = "ipv6", host = host }
  else
    addr, port = match(host, "^([^:]+):?(.*)$")
    if not addr or find(port, ":", 1, true) then
      return nil, "invalid value: " .. host
    end
  end
  local kind = parse_ipv6(addr) and "ipv6" or parse_ipv4(addr) and "ipv4" or "name"
  if kind == "name" and (not match(addr, "^[%w][%w%.%-_]*$") or find(addr, "..", 1, true)) then
    return nil, "invalid hostname: " .. host
  end
  local res = { type = kind, host = addr }
  if port ~= "" then
    local n = tonumber(port)
    if not n or n % 1 ~= 0 or n < 0 or n > 65535 or not match(port, "^%d+$") then
      return nil, "invalid port number"
    end
    res.port = n
  end
  return res
end


-- Kong's validate_host: a name or an address, without a port.
local function validate_host(host)
  local res, err = normalize_ip(host)
  if type(err) == "string" and err ~= "invalid port number" then
    return nil, "invalid value: " .. host
  end
  if err == "invalid port number" or type(res.port) == "number" then
    return nil, "must not have a port"
  end
  return true
end


-- Kong's validate_sni: a name (not an address), without a port.
local function validate_sni(host)
  local res, err = normalize_ip(host)
  if type(err) == "string" and err ~= "invalid port number" then
    return nil, "invalid value: " .. host
  end
  if res and res.type ~= "name" then
    return nil, "must not be an IP"
  end
  if err == "invalid port number" or type(res.port) == "number" then
    return nil, "must not have a port"
  end
  return true
end


typedefs.host = define {
  type = "string",
  custom_validator = validate_host,
  description = "A string representing a host name, such as example.com.",
}


typedefs.port = define {
  type = "integer",
  between = { 0, 65535 },
  description = "An integer representing a port number between 0 and 65535, inclusive.",
}


typedefs.timeout = define {
  type = "integer",
  between = { 0, 2 ^ 31 - 2 },
  description = "An integer representing a timeout in milliseconds. Must be " ..
                "between 0 and 2^31-2.",
}


typedefs.sni = define {
  type = "string",
  custom_validator = validate_sni,
  description = "A string representing an SNI (server name indication) value for TLS.",
}


setmetatable(typedefs, {
  __index = function(_, k)
    error("schema typedef error: definition " .. tostring(k) .. " does not exist", 2)
  end,
})


return typedefs
