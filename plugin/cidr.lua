-- CIDR matching for override.allow_from, IPv4 and IPv6, in plain Lua.
-- compile() runs at configure time; match() on the request path parses
-- one address and compares prefixes, without allocating tables.

local byte = string.byte
local tonumber = tonumber
local floor = math.floor

local _M = {}

-- Parses a dotted quad into 4 numbers, or nil.
local function parse_v4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
  return { a, b, c, d }
end

-- Parses an IPv6 address (with "::" and an optional dotted-quad tail)
-- into 16 bytes, or nil.
local function parse_v6(s)
  if not s:find(":", 1, true) then return nil end
  local head, tail = s, nil
  local dc = s:find("::", 1, true)
  if dc then
    head, tail = s:sub(1, dc - 1), s:sub(dc + 2)
    if tail:find("::", 1, true) then return nil end
  end
  local function groups(part)
    local out = {}
    if part == "" then return out end
    for g in (part .. ":"):gmatch("([^:]*):") do
      if g:find(".", 1, true) then
        local v4 = parse_v4(g)
        if not v4 then return nil end
        out[#out + 1] = v4[1] * 256 + v4[2]
        out[#out + 1] = v4[3] * 256 + v4[4]
      else
        if not g:match("^%x%x?%x?%x?$") then return nil end
        out[#out + 1] = tonumber(g, 16)
      end
    end
    return out
  end
  local h, t = groups(head), groups(tail or "")
  if not h or not t then return nil end
  local missing = 8 - #h - #t
  if (dc and missing < 1) or (not dc and missing ~= 0) then return nil end
  local words = {}
  for _, w in ipairs(h) do words[#words + 1] = w end
  for _ = 1, (dc and missing or 0) do words[#words + 1] = 0 end
  for _, w in ipairs(t) do words[#words + 1] = w end
  local bytes = {}
  for i = 1, 8 do
    bytes[2 * i - 1] = floor(words[i] / 256)
    bytes[2 * i] = words[i] % 256
  end
  return bytes
end

local function parse_ip(s)
  return parse_v4(s) or parse_v6(s)
end

-- Compiles a list of CIDRs ("10.0.0.0/8", "::1/128", or a bare address)
-- into a matcher list.  Returns the list, or nil and the bad entry.
function _M.compile(list)
  local out = {}
  for _, entry in ipairs(list or {}) do
    local addr, bits = entry:match("^([^/]+)/(%d+)$")
    addr = addr or entry
    -- Kong's ip_or_cidr accepts bracketed IPv6 ("[::1]") as well.
    addr = addr:match("^%[(.*)%]$") or addr
    local b = parse_ip(addr)
    if not b then return nil, "invalid CIDR '" .. entry .. "'" end
    bits = tonumber(bits) or #b * 8
    if bits > #b * 8 then return nil, "invalid CIDR '" .. entry .. "'" end
    out[#out + 1] = { bytes = b, bits = bits }
  end
  return out
end

local function prefix_equal(a, b, bits)
  local i = 1
  while bits >= 8 do
    if a[i] ~= b[i] then return false end
    bits = bits - 8
    i = i + 1
  end
  if bits == 0 then return true end
  local div = 2 ^ (8 - bits)
  return floor(a[i] / div) == floor(b[i] / div)
end

-- True when ip is inside any compiled CIDR.
function _M.match(compiled, ip)
  if type(ip) ~= "string" or ip == "" then return false end
  -- Cheap reject of garbage before parsing.
  local c = byte(ip, 1)
  if not (c and ((c >= 48 and c <= 57) or (c >= 97 and c <= 102) or
                 (c >= 65 and c <= 70) or c == 58)) then
    return false
  end
  local b = parse_ip(ip)
  if not b then return false end
  for i = 1, #compiled do
    local r = compiled[i]
    if #r.bytes == #b and prefix_equal(r.bytes, b, r.bits) then
      return true
    end
  end
  return false
end

return _M
