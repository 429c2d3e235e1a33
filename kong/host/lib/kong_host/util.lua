-- kong_host.util: JSON, YAML and identifier helpers shared by the host.
--
-- Debian's lua-cjson is upstream 2.1.0, without OpenResty's array_mt, so an
-- empty Lua table cannot say whether it was `[]` or `{}`.  The host keeps
-- that distinction itself: arrays it builds or decodes carry ARRAY_MT (the
-- one kong_host.schema puts on the arrays of a processed config), and the
-- encoder below writes a table as a JSON array when it has ARRAY_MT or is
-- a non-empty sequence.  null is cjson.null (== ngx.null) everywhere,
-- which is what Kong hands plugins for unset fields.

local cjson = require "cjson.safe"
local dkjson = require "dkjson"

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local sort = table.sort
local concat = table.concat
local tostring = tostring
local getmetatable = getmetatable
local setmetatable = setmetatable
local cjson_encode = cjson.encode

local _M = {}

local NULL = cjson.null
-- The schema library's array metatable, so configs it returns encode
-- their arrays (empty ones included) as arrays.
local ARRAY_MT = require("kong_host.schema").array_mt

_M.null = NULL
_M.ARRAY_MT = ARRAY_MT


-- Returns `t` marked as a JSON array (an empty table is created when nil).
function _M.array(t)
  return setmetatable(t or {}, ARRAY_MT)
end


function _M.is_array(t)
  if type(t) ~= "table" then
    return false
  end
  if getmetatable(t) == ARRAY_MT then
    return true
  end
  local n = #t
  if n == 0 then
    return false
  end
  local count = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      return false
    end
    count = count + 1
  end
  return count == n
end


local is_array = _M.is_array

local function lyaml_null(v)
  local mt = getmetatable(v)
  return mt ~= nil and mt._type == "LYAML null"
end


local function encode_value(v, buf)
  local t = type(v)
  if v == nil or v == NULL or (t == "table" and lyaml_null(v)) then
    buf[#buf + 1] = "null"

  elseif t == "string" or t == "number" or t == "boolean" then
    local s, err = cjson_encode(v)
    if not s then
      error(err, 0)
    end
    buf[#buf + 1] = s

  elseif t == "table" then
    if is_array(v) then
      buf[#buf + 1] = "["
      for i = 1, #v do
        if i > 1 then
          buf[#buf + 1] = ","
        end
        encode_value(v[i], buf)
      end
      buf[#buf + 1] = "]"

    else
      local keys = {}
      for k in pairs(v) do
        keys[#keys + 1] = tostring(k)
      end
      sort(keys)
      buf[#buf + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then
          buf[#buf + 1] = ","
        end
        buf[#buf + 1] = cjson_encode(k)
        buf[#buf + 1] = ":"
        local val = v[k]
        if val == nil then
          val = v[tonumber(k)]
        end
        encode_value(val, buf)
      end
      buf[#buf + 1] = "}"
    end

  else
    error("cannot encode a " .. t .. " as JSON", 0)
  end
end


-- Encodes `v` as JSON with sorted object keys.  Returns the string, or nil
-- and an error message.
function _M.json_encode(v)
  local buf = {}
  local ok, err = pcall(encode_value, v, buf)
  if not ok then
    return nil, err
  end
  return concat(buf)
end


-- Decodes JSON text.  Arrays come back with ARRAY_MT, null as cjson.null.
-- Returns the value, or nil and an error message.
function _M.json_decode(s)
  if type(s) ~= "string" then
    return nil, "expected a string"
  end
  -- dkjson recurses per nesting level: deeply nested input raises
  -- "stack overflow" instead of returning an error (Kong's cjson refuses
  -- more than 1000 levels with an error).
  local ok, v, pos, err = pcall(dkjson.decode, s, 1, NULL, nil, ARRAY_MT)
  if not ok then
    return nil, tostring(v)
  end
  if err then
    return nil, err
  end
  -- dkjson stops after the first value; cjson (Kong) refuses what follows.
  if s:find("%S", pos) then
    return nil, "trailing garbage at character " .. pos
  end
  return v
end


-- lyaml gives sequences as plain tables and null as its own sentinel; turn
-- the result into the host's conventions (ARRAY_MT on non-empty sequences,
-- cjson.null for null).  Empty sequences cannot be told from empty maps
-- here; the entity and plugin-schema walks mark the fields they know.
local function from_yaml(v)
  if type(v) ~= "table" then
    return v
  end
  if lyaml_null(v) then
    return NULL
  end
  local out = {}
  for k, x in pairs(v) do
    out[k] = from_yaml(x)
  end
  if next(out) ~= nil and is_array(out) then
    setmetatable(out, ARRAY_MT)
  end
  return out
end


-- Parses YAML text (one document).  Returns the value, or nil and an error.
function _M.yaml_decode(s)
  local lyaml = require "lyaml"
  local ok, v = pcall(lyaml.load, s)
  if not ok then
    return nil, tostring(v)
  end
  return from_yaml(v)
end


function _M.deep_copy(v)
  if type(v) ~= "table" then
    return v
  end
  local out = {}
  for k, x in pairs(v) do
    out[k] = _M.deep_copy(x)
  end
  return setmetatable(out, getmetatable(v))
end


-- Removes null values from records, recursively: Kong hands plugins their
-- config without nulls (kong_host.schema, process_config).
function _M.strip_nulls(v)
  if type(v) ~= "table" then
    return v
  end
  for k, x in pairs(v) do
    if x == NULL then
      if type(k) ~= "number" then
        v[k] = nil
      end
    else
      _M.strip_nulls(x)
    end
  end
  return v
end


local function hex(s)
  return (s:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end


local function format_uuid(bytes, version)
  -- Set the version nibble and the RFC 4122 variant bits.
  local b = { bytes:byte(1, 16) }
  b[7] = bit.bor(bit.band(b[7], 0x0f), version * 16)
  b[9] = bit.bor(bit.band(b[9], 0x3f), 0x80)
  local h = hex(string.char(unpack(b)))
  return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-" .. h:sub(13, 16) .. "-"
         .. h:sub(17, 20) .. "-" .. h:sub(21, 32)
end


-- A random (version 4) UUID from /dev/urandom.
function _M.uuid()
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(16)
  f:close()
  return format_uuid(bytes, 4)
end


-- A name-based (version 5, SHA-1) UUID: the same name always gives the
-- same id, so entities without an explicit id keep it across reloads and
-- across workers.
function _M.uuid_for(name)
  return format_uuid(ngx.sha1_bin("kong_host\0" .. name), 5)
end


local UUID_PATTERN = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

function _M.is_uuid(s)
  return type(s) == "string" and s:match(UUID_PATTERN) ~= nil
end


return _M
