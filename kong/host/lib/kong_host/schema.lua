--- The part of Kong 3.x's schema library that a plugin's `config` goes
-- through, for the local host that stands in for Kong.
--
-- Kong validates a plugin in two passes.  `process_auto_fields(entity,
-- "insert")` first fills in defaults: a missing field takes a deep copy of
-- its `default`; a missing optional field becomes null; a missing
-- *required* record is expanded to its nested defaults.  `validate()` then
-- checks every field present (unknown keys included) and flags required
-- fields that are missing or null.  A record's own validators (its
-- `custom_validator` above all) run only once everything inside it is
-- valid, and receive the record with its defaults.  Array elements are
-- validated one by one, then the array's own validators run.  This module
-- follows that order, so the same config fails with the same first error,
-- keyed at the same place, as in Kong:
--
--   { upstreams = { [2] = { weight = "value should be between 0 and 100" } } }
--   { sticky = { bogus = "unknown field" } }
--   "progression.canary: ..."       (the config record's custom_validator)
--
-- The last example is a string, not a table: a validator on a record
-- yields one message for the whole record, exactly as Kong reports it.
--
-- Two things Kong does when it loads a plugin schema are done here too,
-- once per schema: records of the plugin's schema are made required unless
-- they say `required = false` (Entity.new_subschema's make_records_required),
-- and the definition is checked against the rules of Kong's metaschema
-- that matter for plugins (known attributes only, `description` of 10..500
-- characters, validators on the types that allow them, defaults that
-- validate), so a schema that Kong would refuse to load is refused here
-- too.  Features this stand-in does not implement (entity_checks, maps,
-- timestamp/uuid/is_regex validators, shorthand fields) are refused at load
-- time instead of being silently skipped.
--
-- Public API:
--
--   schema.process_config(plugin_schema, config [, opts])
--       -> config_with_defaults | nil, errors
--     `errors` is what Kong puts under `fields.config`: a nested table, or a
--     string when the config record as a whole is rejected.  The returned
--     config has no null values (what a plugin's handler sees in Kong);
--     opts.nulls = true keeps them as `schema.null` (what the Admin API
--     shows).  The input is never modified.
--   schema.error_response(errors) -> Admin API 400 body (Kong's err_t)
--   schema.merge_patch(old_config, patch_config) -> merged config
--   schema.null, schema.array_mt
--
-- No ngx: plain LuaJIT with lua-cjson.  Penlight (a dependency of busted,
-- and the library Kong itself formats these messages with) is loaded only
-- by error_response.

local cjson = require "cjson"

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local error = error
local floor = math.floor
local max = math.max
local fmt = string.format
local sub = string.sub
local concat = table.concat
local sort = table.sort

local ngx = rawget(_G, "ngx")
local null = ngx and ngx.null or cjson.null

-- Kong marks arrays with cjson.array_mt (OpenResty's cjson) so that empty
-- arrays encode as []; Debian's lua-cjson has no such table, so arrays get
-- a metatable of our own that an encoder can recognise.
local array_mt = cjson.array_mt or cjson.empty_array_mt or { __name = "kong_host.array" }


-- Kong's validation_errors (kong/db/schema/init.lua), the entries reachable
-- from the features implemented here.
local validation_errors = {
  ARRAY          = "expected an array",
  SET            = "expected a set",
  RECORD         = "expected a record",
  STRING         = "expected a string",
  NUMBER         = "expected a number",
  BOOLEAN        = "expected a boolean",
  INTEGER        = "expected an integer",
  EQ             = "value must be %s",
  NE             = "value must not be %s",
  GT             = "value must be greater than %s",
  BETWEEN        = "value should be between %d and %d",
  LEN_EQ         = "length must be %d",
  LEN_MIN        = "length must be at least %d",
  LEN_MAX        = "length must be at most %d",
  MATCH          = "invalid value: %s",
  NOT_MATCH      = "invalid value: %s",
  MATCH_ALL      = "invalid value: %s",
  MATCH_NONE     = "invalid value: %s",
  MATCH_ANY      = "invalid value: %s",
  STARTS_WITH    = "should start with: %s",
  CONTAINS       = "expected to contain: %s",
  ONE_OF         = "expected one of: %s",
  NOT_ONE_OF     = "must not be one of: %s",
  VALIDATION     = "failed validating: %s",
  REQUIRED       = "required field missing",
  UNKNOWN        = "unknown field",
  SCHEMA_TYPE    = "invalid type: %s",
}


-- Kong's error code and name for a schema violation (kong/db/errors.lua).
local SCHEMA_VIOLATION_CODE = 2
local SCHEMA_VIOLATION_NAME = "schema violation"


local function deep_copy(v)
  if type(v) ~= "table" then
    return v
  end
  local c = {}
  for k, x in pairs(v) do
    c[deep_copy(k)] = deep_copy(x)
  end
  return setmetatable(c, getmetatable(v))
end


--- Kong's is_sequence: a table whose keys are exactly 1..n.
local function is_sequence(t)
  if type(t) ~= "table" then
    return false
  end
  local m, c = 0, 0
  for k in pairs(t) do
    c = c + 1
    if t[c] == nil then
      return false
    end
    if type(k) ~= "number" or k < 0 or floor(k) ~= k then
      return false
    end
    m = max(m, k)
  end
  return c == m
end


-- Fields of a record, in declaration order: `for name, field in
-- each_field(record)`.
local function each_field(record)
  local i = 0
  local list = record.fields
  return function()
    i = i + 1
    local item = list[i]
    if item == nil then
      return nil
    end
    local name = next(item)
    return name, item[name]
  end
end


-- Name -> field, per record (Kong's `self.fields[name]`).
local fields_by_name = setmetatable({}, { __mode = "k" })

local function field_named(record, name)
  local index = fields_by_name[record]
  if not index then
    index = {}
    for n, f in each_field(record) do
      index[n] = f
    end
    fields_by_name[record] = index
  end
  return index[name]
end


---------------------------------------------------------------------------
-- Validators (Schema.validators), in Kong's order.
---------------------------------------------------------------------------

local function make_length_validator(err, fn)
  return function(value, n)
    if fn(#value, n) then
      return true
    end
    return nil, validation_errors[err]:format(n)
  end
end


local validators = {
  between = function(value, limits)
    if value < limits[1] or value > limits[2] then
      return nil, validation_errors.BETWEEN:format(limits[1], limits[2])
    end
    return true
  end,

  eq = function(value, wanted)
    if value == wanted then
      return true
    end
    local str = (wanted == null) and "null" or tostring(wanted)
    return nil, validation_errors.EQ:format(str)
  end,

  ne = function(value, wanted)
    if value ~= wanted then
      return true
    end
    local str = (wanted == null) and "null" or tostring(value)
    return nil, validation_errors.NE:format(str)
  end,

  gt = function(value, limit)
    if value > limit then
      return true
    end
    return nil, validation_errors.GT:format(tostring(limit))
  end,

  len_eq = make_length_validator("LEN_EQ", function(len, n) return len == n end),
  len_min = make_length_validator("LEN_MIN", function(len, n) return len >= n end),
  len_max = make_length_validator("LEN_MAX", function(len, n) return len <= n end),

  starts_with = function(value, expected)
    if sub(value, 1, #expected) ~= expected then
      return nil, validation_errors.STARTS_WITH:format(expected)
    end
    return true
  end,

  not_match = function(value, pattern)
    if value:match(pattern) then
      return nil, validation_errors.NOT_MATCH:format(value)
    end
    return true
  end,

  match_none = function(value, list)
    for i = 1, #list do
      if value:match(list[i].pattern) then
        return nil, list[i].err
      end
    end
    return true
  end,

  match = function(value, pattern)
    if not value:match(pattern) then
      return nil, validation_errors.MATCH:format(value)
    end
    return true
  end,

  match_all = function(value, list)
    for i = 1, #list do
      if not value:match(list[i].pattern) then
        return nil, list[i].err
      end
    end
    return true
  end,

  match_any = function(value, arg)
    for i = 1, #arg.patterns do
      if value:match(arg.patterns[i]) then
        return true
      end
    end
    return nil, arg.err
  end,

  one_of = function(value, options)
    for i = 1, #options do
      if value == options[i] then
        return true
      end
    end
    return nil, validation_errors.ONE_OF:format(concat(options, ", "))
  end,

  not_one_of = function(value, options)
    for i = 1, #options do
      if value == options[i] then
        return nil, validation_errors.NOT_ONE_OF:format(concat(options, ", "))
      end
    end
    return true
  end,

  contains = function(array, wanted)
    for i = 1, #array do
      if array[i] == wanted then
        return true
      end
    end
    return nil, validation_errors.CONTAINS:format(wanted)
  end,

  custom_validator = function(value, fn)
    return fn(value)
  end,
}


-- Kong's Schema.validators_order, less the validators not implemented here
-- (a schema using one of those is refused when it is loaded).
local validators_order = {
  "eq", "ne", "not_one_of", "one_of",
  "gt", "between",
  "len_eq", "len_min", "len_max",
  "starts_with", "not_match", "match_none", "match", "match_all", "match_any",
  "contains",
  "custom_validator",
}


---------------------------------------------------------------------------
-- Default filling (Schema:process_auto_fields, context "insert").
---------------------------------------------------------------------------

local process_record


local function handle_missing_field(field, value)
  if field.default ~= nil then
    local copy = deep_copy(field.default)
    if (field.type == "array" or field.type == "set")
       and type(copy) == "table" and not getmetatable(copy)
    then
      setmetatable(copy, array_mt)
    end
    return copy
  end

  if field.nilable then
    return value
  end

  -- Not required: nullable.
  if field.required ~= true then
    return null
  end

  -- A missing required record is expanded to obtain its nested defaults.
  if field.type == "record" then
    return process_record(field, {})
  end

  -- Required without a default: validation reports it.
  return nil
end


local function make_array(array)
  if is_sequence(array) then
    return setmetatable(array, array_mt)
  end
  return array
end


-- Kong removes duplicates from sets (keeping the first occurrence).
local function make_set(set)
  if not is_sequence(set) then
    return set
  end
  local out, seen = {}, {}
  for i = 1, #set do
    local v = set[i]
    if not seen[v] then
      seen[v] = true
      out[#out + 1] = v
    end
  end
  return setmetatable(out, array_mt)
end


local function adjust_field(field, value)
  if field.type == "record" then
    if value ~= null and (value ~= nil or field.required == true) then
      value = value or handle_missing_field(field, value)
      if type(value) == "table" then
        return process_record(field, value)
      end
    end

  elseif type(value) == "table" then
    local subfield
    if field.type == "array" then
      value = make_array(value)
      subfield = field.elements
    elseif field.type == "set" then
      value = make_set(value)
      subfield = field.elements
    end

    if subfield then
      for k, v in pairs(value) do
        value[k] = adjust_field(subfield, v)
      end
    end
  end

  if value == nil then
    return handle_missing_field(field, value)
  end

  return value
end


--- A copy of `data` with the record's defaults filled in.  Keys that are
-- not fields of the record are kept (validation reports them).
process_record = function(record, data)
  data = deep_copy(data)
  for name, field in each_field(record) do
    data[name] = adjust_field(field, data[name])
  end
  return data
end


---------------------------------------------------------------------------
-- Validation (Schema:validate_field, Schema:validate).
---------------------------------------------------------------------------

local validate_field


local function validate_elements(field, value)
  field.elements.required = true
  local errs = {}
  local all_ok = true
  for i = 1, #value do
    local ok, err = validate_field(field.elements, value[i])
    if not ok then
      errs[i] = err
      all_ok = false
    end
  end
  if all_ok then
    return true
  end
  return nil, errs
end


--- Schema:validate(input, full_check = true) for a record: every key of
-- `input` must be a field and valid; required fields must be present and
-- not null.
local function validate_record(record, input)
  local errors = {}

  for k, v in pairs(input) do
    local field = field_named(record, tostring(k))
    if field then
      local _, err = validate_field(field, v)
      errors[k] = err
    else
      errors[k] = validation_errors.UNKNOWN
    end
  end

  for name, field in each_field(record) do
    if field.required and (input[name] == null or input[name] == nil) then
      errors[name] = validation_errors.REQUIRED
    end
  end

  if next(errors) then
    return nil, errors
  end
  return true
end


validate_field = function(field, value)
  if value == null then
    if field.ne == null then
      return nil, field.err or validation_errors.NE:format("null")
    end
    if field.eq ~= nil and field.eq ~= null then
      return nil, validation_errors.EQ:format(tostring(field.eq))
    end
    if field.required then
      return nil, validation_errors.REQUIRED
    end
    return true
  end

  if field.eq == null then
    return nil, field.err or validation_errors.EQ:format("null")
  end

  local ftype = field.type

  if ftype == "array" or ftype == "set" then
    if not is_sequence(value) then
      return nil, ftype == "array" and validation_errors.ARRAY or validation_errors.SET
    end
    local ok, err = validate_elements(field, value)
    if not ok then
      return nil, err
    end

  elseif ftype == "record" then
    if type(value) ~= "table" then
      return nil, validation_errors.RECORD
    end
    local ok, err = validate_record(field, process_record(field, value))
    if not ok then
      return nil, err
    end

  elseif ftype == "integer" then
    if not (type(value) == "number"
            and value == floor(value)
            and value ~= 1/0
            and value ~= -1/0) then
      return nil, validation_errors.INTEGER
    end

  elseif ftype == "string" then
    if type(value) ~= "string" then
      return nil, validation_errors.STRING
    end
    -- Empty strings are not accepted by default.
    if not field.len_min then
      field.len_min = 1
    end

  elseif ftype == "number" or ftype == "boolean" then
    if type(value) ~= ftype then
      return nil, validation_errors[ftype:upper()]
    end

  else
    return nil, validation_errors.SCHEMA_TYPE:format(tostring(ftype))
  end

  for i = 1, #validators_order do
    local k = validators_order[i]
    if field[k] ~= nil then
      local ok, err = validators[k](value, field[k], field)
      if not ok then
        if not err then
          err = (validation_errors[k:upper()]
                 or validation_errors.VALIDATION):format(tostring(value))
        end
        return nil, field.err or err
      end
    end
  end

  return true
end


---------------------------------------------------------------------------
-- Loading a plugin schema (MetaSubSchema checks, make_records_required).
---------------------------------------------------------------------------

local VALIDATOR_ATTRIBUTES = {}
for _, k in ipairs(validators_order) do
  VALIDATOR_ATTRIBUTES[k] = true
end

-- Field attributes Kong's metaschema knows and that mean nothing to
-- validation of a config, or that are handled above.
local PLAIN_ATTRIBUTES = {
  type = true, required = true, description = true, examples = true,
  default = true, err = true, elements = true, fields = true,
  reference = true, auto = true, unique = true, on_delete = true,
  immutable = true, encrypted = true, referenceable = true, nilable = true,
  generate_admin_api = true, abstract = true,
}

-- Kong features this stand-in does not implement.
local UNSUPPORTED_ATTRIBUTES = {
  timestamp = true, uuid = true, is_regex = true,
  mutually_exclusive_subsets = true, entity_checks = true,
  shorthand_fields = true, keys = true, values = true, json_schema = true,
  unique_across_ws = true,
}

-- Kong's metaschema attribute_types: attribute -> types allowed to have it.
local ATTRIBUTE_TYPES = {
  between = { integer = true, number = true },
  len_eq = { array = true, set = true, string = true, map = true },
  match = { string = true },
  one_of = { string = true, number = true, integer = true },
  contains = { array = true, set = true },
}

local VALID_TYPES = {
  array = true, set = true, string = true, number = true, boolean = true,
  integer = true, record = true, foreign = true,
}


local function schema_error(path, msg)
  error("kong_host.schema: invalid plugin schema: " .. path .. ": " .. msg, 0)
end


local function check_field_definition(path, field)
  if type(field) ~= "table" then
    schema_error(path, "field definition must be a table")
  end
  if not VALID_TYPES[field.type] then
    schema_error(path, "invalid or unsupported type: " .. tostring(field.type))
  end

  for attr in pairs(field) do
    if UNSUPPORTED_ATTRIBUTES[attr] then
      schema_error(path, "attribute '" .. tostring(attr) .. "' is not supported by the local host")
    elseif not PLAIN_ATTRIBUTES[attr] and not VALIDATOR_ATTRIBUTES[attr] then
      schema_error(path, "unknown attribute '" .. tostring(attr) .. "'")
    end
    local types = ATTRIBUTE_TYPES[attr]
    if types and not types[field.type] then
      schema_error(path, fmt("field of type '%s' cannot have attribute '%s'",
                             field.type, attr))
    end
  end

  if field.description ~= nil then
    local d = field.description
    if type(d) ~= "string" or #d < 10 or #d > 500 then
      schema_error(path, "description must be a string of 10 to 500 characters")
    end
  end
  if field.custom_validator ~= nil and type(field.custom_validator) ~= "function" then
    schema_error(path, "custom_validator must be a function")
  end

  if field.type == "array" or field.type == "set" then
    if type(field.elements) ~= "table" then
      schema_error(path, fmt("field of type '%s' must declare 'elements'", field.type))
    end
    check_field_definition(path .. ".elements", field.elements)
  end

  if field.type == "record" then
    if type(field.fields) ~= "table" then
      schema_error(path, "field of type 'record' must declare 'fields'")
    end
    for i, item in ipairs(field.fields) do
      local name = type(item) == "table" and next(item)
      if type(name) ~= "string" then
        schema_error(path .. ".fields[" .. i .. "]", "each entry must be { name = field }")
      end
      check_field_definition(path .. "." .. name, item[name])
    end
  end
end


-- Metaschema: `default = { type = "self" }`, i.e. a default must validate
-- against its own field.
local function check_defaults(path, field)
  if field.default ~= nil and field.type ~= "foreign" then
    local ok, err = validate_field(field, adjust_field(field, deep_copy(field.default)))
    if not ok then
      schema_error(path, "default does not validate: " ..
                         (type(err) == "table" and cjson.encode(err) or tostring(err)))
    end
  end
  if field.type == "record" then
    for name, f in each_field(field) do
      check_defaults(path .. "." .. name, f)
    end
  elseif field.elements then
    check_defaults(path .. ".elements", field.elements)
  end
end


-- Entity.new_subschema: records reachable through records are required
-- unless they say otherwise, "so that they return their full structure".
local function make_records_required(field)
  if field.required == nil then
    field.required = true
  end
  for _, f in each_field(field) do
    if f.type == "record" then
      make_records_required(f)
    end
  end
end


local loaded = setmetatable({}, { __mode = "k" })


--- The `config` field of a plugin schema, as Kong would use it: a private
-- copy (validation marks string and element fields the way Kong's does),
-- checked once per schema.
local function config_field_of(plugin_schema)
  local cached = loaded[plugin_schema]
  if cached then
    return cached
  end

  if type(plugin_schema) ~= "table" or type(plugin_schema.fields) ~= "table" then
    error("kong_host.schema: plugin schema must be a table with 'fields'", 3)
  end
  if type(plugin_schema.name) ~= "string" then
    schema_error("name", "required field missing")
  end

  local definition = deep_copy(plugin_schema)
  check_field_definition(definition.name, { type = "record", fields = definition.fields })

  make_records_required(definition)
  definition.required = nil

  local config = field_named(definition, "config")
  if not config or config.type ~= "record" then
    schema_error(definition.name, "a plugin schema needs a 'config' record")
  end
  check_defaults(definition.name .. ".config", config)

  loaded[plugin_schema] = config
  return config
end


---------------------------------------------------------------------------
-- Public API
---------------------------------------------------------------------------

local _M = {
  null = null,
  array_mt = array_mt,
}


-- What a plugin sees in Kong: entities are read back with nulls removed.
local function strip_nulls(field, value)
  if type(value) ~= "table" then
    return value
  end
  if field.type == "record" then
    for name, f in each_field(field) do
      local v = value[name]
      if v == null then
        value[name] = nil
      else
        value[name] = strip_nulls(f, v)
      end
    end
  elseif field.type == "array" or field.type == "set" then
    for i = 1, #value do
      value[i] = strip_nulls(field.elements, value[i])
    end
  end
  return value
end


--- Validates a plugin config and fills in its defaults, as Kong does when
-- a plugin is created (Admin API, declarative config).
-- @param plugin_schema the plugin's schema module (the table it returns)
-- @param config the `config` value given by the user (may be nil)
-- @param opts optional: `nulls = true` keeps absent optional fields as null
-- @return the config with defaults, or nil and the errors for `config`
function _M.process_config(plugin_schema, config, opts)
  local field = config_field_of(plugin_schema)

  local value = adjust_field(field, deep_copy(config))

  local ok, err
  if value == nil then
    err = validation_errors.REQUIRED
  else
    ok, err = validate_field(field, value)
  end
  if not ok then
    return nil, err
  end

  if opts and opts.nulls then
    return value
  end
  return strip_nulls(field, value)
end


-- Kong's sorted_keys; mixed key types (which would make Kong's sort throw)
-- are ordered numbers first.
local function sorted_keys(tbl)
  local keys = {}
  for k in pairs(tbl) do
    keys[#keys + 1] = k
  end
  sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
      return ta == "number"
    end
    return a < b
  end)
  return keys
end


--- Kong's Errors:schema_violation message: entity errors first, then one
-- entry per field, or per sub-field when a field's errors are a table;
-- anything nested deeper is rendered with penlight's pretty.write.
local function schema_violation_message(errors)
  local write = require("pl.pretty").write
  local buf = {}

  if errors["@entity"] then
    for _, err in pairs(errors["@entity"]) do
      buf[#buf + 1] = err
    end
  end

  for _, field_name in ipairs(sorted_keys(errors)) do
    if field_name ~= "@entity" then
      local field_errors = errors[field_name]
      if type(field_errors) == "table" then
        for _, sub_field in ipairs(sorted_keys(field_errors)) do
          local value = field_errors[sub_field]
          if type(value) == "table" then
            value = write(value)
          end
          buf[#buf + 1] = fmt("%s.%s: %s", tostring(field_name), tostring(sub_field),
                              tostring(value))
        end
      else
        buf[#buf + 1] = fmt("%s: %s", tostring(field_name), tostring(field_errors))
      end
    end
  end

  if #buf == 1 then
    return fmt("schema violation (%s)", buf[1])
  end
  return fmt("%d schema violations (%s)", #buf, concat(buf, "; "))
end


--- The body of the Admin API's 400 answer for a plugin whose config was
-- rejected: Kong's err_t for a schema violation, without `strategy`.
-- @param errors the second value returned by process_config
function _M.error_response(errors)
  if errors == nil then
    error("errors must be given", 2)
  end
  local fields = { config = errors }
  return {
    code = SCHEMA_VIOLATION_CODE,
    name = SCHEMA_VIOLATION_NAME,
    message = schema_violation_message(fields),
    fields = fields,
  }
end


-- A value that Schema:merge_values would merge field by field: a record.
-- `bottom` is a config that went through process_config, where records are
-- non-empty tables with string keys and arrays are sequences; merging into
-- an empty table is the same as replacing, so empty tables need no answer.
local function is_record_value(v)
  return type(v) == "table" and next(v) ~= nil and not is_sequence(v)
end


local function merge_values(top, bottom)
  if bottom == nil or bottom == null then
    bottom = {}
  end
  local out = {}
  for k, v in pairs(bottom) do
    out[k] = deep_copy(v)
  end
  for k, v in pairs(top) do
    if type(v) == "table" and is_record_value(bottom[k]) then
      out[k] = merge_values(v, bottom[k])
    else
      out[k] = deep_copy(v)
    end
  end
  return out
end


--- Kong's PATCH semantics for a plugin's `config`: records are merged
-- field by field (recursively), anything else in the patch (arrays
-- included) replaces the old value, null clears a field, and a field the
-- patch does not mention keeps its old value.  Defaults are not re-applied
-- and nothing is validated: pass the result to process_config, as Kong
-- validates the merged entity (a null on a required field is then
-- reported as missing, not reset to its default).
-- @param old_config a config previously returned by process_config
-- @param patch_config the `config` of the PATCH body (nil: unchanged)
-- @return a new table; neither argument is modified
function _M.merge_patch(old_config, patch_config)
  if patch_config == nil then
    return deep_copy(old_config)
  end
  if type(patch_config) ~= "table" then
    return patch_config
  end
  return merge_values(patch_config, old_config)
end


return _M
