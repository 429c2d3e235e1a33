-- The plugin schema (schema/schema.lua) through the local host's stand-in
-- for Kong's schema library: every rejection with its exact message at its
-- exact place, the defaults a config gets, the Admin API's error body and
-- PATCH merging, and Kong's conventions for plugin schemas.
--
-- Run `make lua` first (it links the schema as
-- kong.plugins.canary-router.schema).

local cjson = require "cjson"
local pretty = require "pl.pretty"

local plugin_schema = require "kong.plugins.canary-router.schema"
local validator = require "kong_host.schema"
local typedefs = require "kong.db.schema.typedefs"

local null = validator.null


local function deep_copy(v)
  if type(v) ~= "table" then
    return v
  end
  local c = {}
  for k, x in pairs(v) do
    c[k] = deep_copy(x)
  end
  return c
end


local function two_upstreams()
  return { { name = "a", weight = 90 }, { name = "b", weight = 10 } }
end


-- A valid config plus `extra` (a key set to false is removed).
local function config(extra)
  local c = { upstreams = two_upstreams() }
  for k, v in pairs(extra or {}) do
    if v == false then
      c[k] = nil
    else
      c[k] = v
    end
  end
  return c
end


local function process(c, opts)
  return validator.process_config(plugin_schema, c, opts)
end


local function rejects(c, expected)
  local ok, errors = process(c)
  assert.is_nil(ok)
  assert.same(expected, errors)
end


local function accepts(c)
  local ok, errors = process(c)
  assert.is_nil(errors)
  assert.is_table(ok)
  return ok
end


-- The `config` record's field definitions, by dotted path.
local function config_fields()
  local out = {}
  local function walk(prefix, record)
    for _, item in ipairs(record.fields) do
      local name, field = next(item)
      local path = prefix and (prefix .. "." .. name) or name
      out[#out + 1] = { path = path, field = field }
      if field.type == "record" then
        walk(path, field)
      elseif field.type == "array" and field.elements.type == "record" then
        walk(path .. "[]", field.elements)
      end
    end
  end
  for _, item in ipairs(plugin_schema.fields) do
    if item.config then
      walk(nil, item.config)
    end
  end
  return out
end


-- sticky and override stay unset unless given: Kong walks the whole
-- config on every request (kong.vault.update).
local DEFAULTS = {
  upstreams = { { name = "a", weight = 90 }, { name = "b", weight = 10 } },
  trace = {
    header = "X-Trace-Id",
    traceparent = true,
    sampled = true,
    echo_downstream = true,
  },
}

local STICKY_DEFAULTS = {
  by = "none",
  header = "X-Canary-User",
  cookie = "canary_user",
  fallback = {},
}

local PROGRESSION_DEFAULTS = {
  canary = "b",
  strategy = "canary",
  steps = { 10, 25, 50, 75, 100 },
  interval = 300,
  min_requests = 100,
  failure_limit = 3,
  on_success = "promote",
  scope = "node",
  analysis = "threshold",
  confidence = 0.98,
  allowed_increase = 0.25,
  dry_run = false,
}


describe("canary-router schema", function()

  describe("rejects", function()

    describe("upstreams", function()

      it("when missing", function()
        rejects({}, { upstreams = "required field missing" })
        rejects({ upstreams = null }, { upstreams = "required field missing" })
      end)

      it("when there is no config at all", function()
        rejects(nil, { upstreams = "required field missing" })
        rejects(null, "required field missing")
      end)

      it("when not an array", function()
        rejects(config { upstreams = "a" }, { upstreams = "expected an array" })
        rejects(config { upstreams = { a = { weight = 100 } } },
                { upstreams = "expected an array" })
      end)

      it("when empty", function()
        rejects(config { upstreams = {} }, { upstreams = "length must be at least 1" })
      end)

      it("when there are more than 16", function()
        local ups = {}
        for i = 1, 17 do
          ups[i] = { name = "u" .. i, weight = i == 1 and 100 or 0 }
        end
        rejects(config { upstreams = ups }, { upstreams = "length must be at most 16" })
      end)

      it("when an element is not a record", function()
        rejects(config { upstreams = { "a" } },
                { upstreams = { [1] = "expected a record" } })
      end)

      it("when a weight is out of range", function()
        rejects(config { upstreams = { { name = "a", weight = 101 },
                                       { name = "b", weight = -1 } } },
                { upstreams = {
                    [1] = { weight = "value should be between 0 and 100" },
                    [2] = { weight = "value should be between 0 and 100" },
                } })
        rejects(config { upstreams = { { name = "a", weight = 100.5 } } },
                { upstreams = { [1] = { weight = "value should be between 0 and 100" } } })
      end)

      it("when a weight is not a number", function()
        rejects(config { upstreams = { { name = "a", weight = 90 },
                                       { name = "b", weight = "10" } } },
                { upstreams = { [2] = { weight = "expected a number" } } })
      end)

      it("when a weight has more than 2 decimals", function()
        rejects(config { upstreams = { { name = "a", weight = 89.877 },
                                       { name = "b", weight = 10.123 },
                                       { name = "c", weight = 0.0001 } } },
                { upstreams = {
                    [1] = { weight = "at most 2 decimals allowed (got 89.877)" },
                    [2] = { weight = "at most 2 decimals allowed (got 10.123)" },
                    [3] = { weight = "at most 2 decimals allowed (got 0.0001)" },
                } })
      end)

      it("when the weights do not add up to 100", function()
        rejects(config { upstreams = { { name = "a", weight = 80 },
                                       { name = "b", weight = 10 } } },
                { upstreams = "weights must sum to 100 (got 90)" })
        rejects(config { upstreams = { { name = "a", weight = 33.33 },
                                       { name = "b", weight = 33.33 },
                                       { name = "c", weight = 33.33 } } },
                { upstreams = "weights must sum to 100 (got 99.99)" })
        rejects(config { upstreams = { { name = "a", weight = 100 },
                                       { name = "b", weight = 0.5 } } },
                { upstreams = "weights must sum to 100 (got 100.5)" })
      end)

      it("when two upstreams share a name", function()
        rejects(config { upstreams = { { name = "a", weight = 50 },
                                       { name = "b", weight = 25 },
                                       { name = "a", weight = 25 } } },
                { upstreams = "duplicate upstream name 'a'" })
      end)

      it("when a name has characters outside Kong's upstream names", function()
        rejects(config { upstreams = { { name = "a b", weight = 90 },
                                       { name = "b/c", weight = 10 } } },
                { upstreams = {
                    [1] = { name = "invalid upstream name 'a b': allowed characters "
                                   .. "are A-Z, a-z, 0-9, '.', '_', and '-'" },
                    [2] = { name = "invalid upstream name 'b/c': allowed characters "
                                   .. "are A-Z, a-z, 0-9, '.', '_', and '-'" },
                } })
      end)

      it("when a name is empty or longer than 63 characters", function()
        rejects(config { upstreams = { { name = "", weight = 90 },
                                       { name = string.rep("x", 64), weight = 10 } } },
                { upstreams = {
                    [1] = { name = "length must be at least 1" },
                    [2] = { name = "length must be at most 63" },
                } })
      end)

      it("when a name or weight is missing", function()
        rejects(config { upstreams = { { weight = 90 }, { name = "b" } } },
                { upstreams = {
                    [1] = { name = "required field missing" },
                    [2] = { weight = "required field missing" },
                } })
      end)
    end)

    describe("sticky", function()

      it("with an unknown key source", function()
        rejects(config { sticky = { by = "bogus" } },
                { sticky = { by = "expected one of: none, header, cookie, consumer, ip" } })
      end)

      it("with an unknown fallback source", function()
        rejects(config { sticky = { by = "header", fallback = { "ip", "none" } } },
                { sticky = { fallback = {
                    [2] = "expected one of: header, cookie, consumer, ip" } } })
      end)

      it("with a bad header or cookie name", function()
        rejects(config { sticky = { header = "X User", cookie = "a;b" } },
                { sticky = {
                    header = "bad header name 'X User', allowed characters are "
                             .. "A-Z, a-z, 0-9, '_', and '-'",
                    cookie = "bad cookie name 'a;b', allowed characters are "
                             .. "A-Z, a-z, 0-9, '_', and '-'",
                } })
      end)

      it("when it is not a record, or a field of it is null", function()
        rejects(config { sticky = "ip" }, { sticky = "expected a record" })
        -- A field with a default is required: null does not reset it.
        rejects(config { sticky = { by = null } },
                { sticky = { by = "required field missing" } })
      end)
    end)

    describe("override", function()

      it("with a bad header name", function()
        rejects(config { override = { header = "X:Canary" } },
                { override = { header = "bad header name 'X:Canary', allowed "
                                        .. "characters are A-Z, a-z, 0-9, '_', and '-'" } })
      end)

      it("with an empty header name", function()
        -- Kong checks a string's length before its custom validator.
        rejects(config { override = { header = "" } },
                { override = { header = "length must be at least 1" } })
      end)

      it("with allow_from entries that are not addresses or CIDR blocks", function()
        rejects(config { override = { allow_from = { "10.0.0.0/8", "10.0.0.0/33",
                                                     "not-an-ip", "::1", "fe80::/129" } } },
                { override = { allow_from = {
                    [2] = "invalid ip or cidr range: '10.0.0.0/33'",
                    [3] = "invalid ip or cidr range: 'not-an-ip'",
                    [5] = "invalid ip or cidr range: 'fe80::/129'",
                } } })
      end)
    end)

    describe("trace and response_header", function()

      it("with bad header names", function()
        rejects(config { trace = { header = "X Trace" }, response_header = "X-Up stream" },
                { trace = { header = "bad header name 'X Trace', allowed characters are "
                                     .. "A-Z, a-z, 0-9, '_', and '-'" },
                  response_header = "bad header name 'X-Up stream', allowed characters "
                                    .. "are A-Z, a-z, 0-9, '_', and '-'" })
        rejects(config { response_header = "" },
                { response_header = "length must be at least 1" })
      end)

      it("with a flag that is not a boolean", function()
        rejects(config { trace = { traceparent = "yes" } },
                { trace = { traceparent = "expected a boolean" } })
      end)
    end)

    describe("progression", function()

      it("without a canary", function()
        rejects(config { progression = {} },
                "progression.canary: required with strategy 'canary'")
        rejects(config { progression = { canary = null } },
                "progression.canary: required with strategy 'canary'")
      end)

      it("with blue/green settings under the canary strategy", function()
        for _, f in ipairs({ "preview", "pre_promotion", "post_promotion" }) do
          rejects(config { progression = { canary = "b", [f] = f == "preview" and "b" or 60 } },
                  "progression." .. f .. ": applies to strategy 'blue_green'")
        end
      end)

      it("naming an upstream that is not configured", function()
        rejects(config { progression = { canary = "c" } },
                "progression.canary: 'c' is not one of the configured upstreams")
      end)

      it("naming the stable upstream", function()
        rejects(config { progression = { canary = "a" } },
                "progression.canary: 'a' is the stable upstream (the first of "
                .. "upstreams) and cannot be the canary")
      end)

      it("with steps that do not increase", function()
        rejects(config { progression = { canary = "b", steps = { 10, 50, 25 } } },
                { progression = { steps = "must be strictly increasing (got 50 then 25)" } })
        rejects(config { progression = { canary = "b", steps = { 10, 10 } } },
                { progression = { steps = "must be strictly increasing (got 10 then 10)" } })
      end)

      it("with steps out of range or too fine", function()
        rejects(config { progression = { canary = "b", steps = { 0, 50, 100.5, 12.345 } } },
                { progression = { steps = {
                    [1] = "value must be greater than 0",
                    [3] = "value should be between 0 and 100",
                    [4] = "at most 2 decimals allowed (got 12.345)",
                } } })
      end)

      it("with no steps, or more than 20", function()
        rejects(config { progression = { canary = "b", steps = {} } },
                { progression = { steps = "length must be at least 1" } })
        local steps = {}
        for i = 1, 21 do
          steps[i] = i
        end
        rejects(config { progression = { canary = "b", steps = steps } },
                { progression = { steps = "length must be at most 20" } })
      end)

      it("with an interval out of range or not an integer", function()
        rejects(config { progression = { canary = "b", interval = 0 } },
                { progression = { interval = "value should be between 1 and 86400" } })
        rejects(config { progression = { canary = "b", interval = 86401 } },
                { progression = { interval = "value should be between 1 and 86400" } })
        rejects(config { progression = { canary = "b", interval = 1.5 } },
                { progression = { interval = "expected an integer" } })
      end)

      it("with gates and limits out of range", function()
        rejects(config { progression = {
                  canary = "b",
                  min_requests = -1,
                  max_error_rate = 101,
                  max_p95_ms = 0,
                  max_p99_ms = -5,
                  failure_limit = 0,
                  rollback_error_rate = -0.5,
                  on_success = "rollback",
                } },
                { progression = {
                    min_requests = "value should be between 0 and 1000000000",
                    max_error_rate = "value should be between 0 and 100",
                    max_p95_ms = "value must be greater than 0",
                    max_p99_ms = "value must be greater than 0",
                    failure_limit = "value should be between 1 and 100",
                    rollback_error_rate = "value should be between 0 and 100",
                    on_success = "expected one of: promote, hold",
                } })
      end)

      it("with a scope other than node or cluster", function()
        rejects(config { progression = { canary = "b", scope = "region" } },
                { progression = { scope = "expected one of: node, cluster" } })
      end)

      it("cluster scope without a Redis host", function()
        rejects(config { progression = { canary = "b", scope = "cluster" } },
                "progression.redis.host: required when progression.scope is 'cluster'")
        rejects(config { progression = { canary = "b", scope = "cluster",
                                         redis = { port = 6380 } } },
                "progression.redis.host: required when progression.scope is 'cluster'")
      end)

      it("a Redis record Kong's rate-limiting would refuse", function()
        rejects(config { progression = { canary = "b", scope = "cluster", redis = {
                  host = "redis.local:6379", port = 70000, timeout = -1,
                  database = 1.5, ssl = "yes", server_name = "10.0.0.1",
                } } },
                { progression = { redis = {
                    host = "must not have a port",
                    port = "value should be between 0 and 65535",
                    timeout = "value should be between 0 and 2147483646",
                    database = "expected an integer",
                    ssl = "expected a boolean",
                    server_name = "must not be an IP",
                } } })
        rejects(config { progression = { canary = "b", redis = { host = "bad host" } } },
                { progression = { redis = { host = "invalid value: bad host" } } })
      end)

      it("only once the rest of the config is valid", function()
        -- The config-wide rule runs after every field validated, as in Kong.
        rejects(config { progression = { canary = "c" }, sticky = { by = "x" } },
                { sticky = { by = "expected one of: none, header, cookie, consumer, ip" } })
      end)
    end)

    describe("a blue/green progression", function()

      local function bg(extra, top)
        local c = config {
          upstreams = { { name = "blue", weight = 100 }, { name = "green", weight = 0 } },
          override = { header = "X-Canary", allow_from = { "10.0.0.0/8" } },
        }
        c.progression = { strategy = "blue_green" }
        for k, v in pairs(extra or {}) do c.progression[k] = v end
        for k, v in pairs(top or {}) do c[k] = v end
        return c
      end

      it("with a strategy other than canary or blue_green", function()
        rejects(bg { strategy = "rolling" },
                { progression = { strategy = "expected one of: canary, blue_green" } })
      end)

      it("on other than two upstreams", function()
        rejects(bg({}, { upstreams = { { name = "blue", weight = 100 },
                                       { name = "green", weight = 0 },
                                       { name = "teal", weight = 0 } } }),
                "progression.strategy: 'blue_green' needs exactly two upstreams, "
                .. "blue (the first) and green (got 3)")
      end)

      it("with a canary, or a preview that is not green", function()
        rejects(bg { canary = "green" },
                "progression.canary: applies to strategy 'canary'; blue_green "
                .. "names green in progression.preview")
        rejects(bg { preview = "blue" },
                "progression.preview: 'blue' is blue, the stable upstream (the "
                .. "first of upstreams), and cannot be green")
        rejects(bg { preview = "teal" },
                "progression.preview: 'teal' is not one of the configured upstreams")
      end)

      it("with green configured to take public traffic", function()
        rejects(bg({}, { upstreams = { { name = "blue", weight = 90 },
                                       { name = "green", weight = 10 } } }),
                "upstreams: with strategy 'blue_green' blue (the first) has "
                .. "weight 100 and green 0 until the switch")
      end)

      it("in cluster scope", function()
        rejects(bg { scope = "cluster", redis = { host = "127.0.0.1" } },
                "progression.scope: strategy 'blue_green' is judged by each node "
                .. "('node'), not 'cluster'")
      end)

      it("without an override header or cookie, or without allow_from", function()
        rejects(bg({}, { override = { allow_from = { "10.0.0.0/8" } } }),
                "override: strategy 'blue_green' previews green through "
                .. "override.header or override.cookie; set one")
        rejects(bg({}, { override = { cookie = "canary" } }),
                "override.allow_from: required with strategy 'blue_green' "
                .. "(the sources that may preview green)")
      end)

      it("with windows out of range", function()
        rejects(bg { pre_promotion = 0, post_promotion = 86401 },
                { progression = { pre_promotion = "value should be between 1 and 86400",
                                  post_promotion = "value should be between 1 and 86400" } })
      end)

      it("accepts the runbook's release, green named or not", function()
        local got = accepts(bg { pre_promotion = 300, post_promotion = 600,
                                 max_error_rate = 1, max_p99_ms = 500 })
        assert.equal("blue_green", got.progression.strategy)
        assert.is_nil(got.progression.canary)
        assert.is_nil(got.progression.preview)
        got = accepts(bg({ preview = "green" }, { override = { cookie = "canary",
                                                               allow_from = { "::1" } } }))
        assert.equal("green", got.progression.preview)
        assert.is_nil(got.progression.pre_promotion)
      end)
    end)

    describe("progression analysis", function()

      it("with relative gates and statistical settings out of range", function()
        rejects(config { progression = {
                  canary = "b",
                  max_p95_ratio = 0.5,
                  max_p99_ratio = 1001,
                  rollback_p99_ratio = 0,
                  max_error_rate_delta = 101,
                  analysis = "bayesian",
                  confidence = 1,
                  allowed_increase = -0.1,
                  dry_run = "yes",
                } },
                { progression = {
                    max_p95_ratio = "value should be between 1 and 1000",
                    max_p99_ratio = "value should be between 1 and 1000",
                    rollback_p99_ratio = "value should be between 1 and 1000",
                    max_error_rate_delta = "value should be between 0 and 100",
                    analysis = "expected one of: threshold, statistical",
                    confidence = "must be at least 0.5 and below 1 (got 1)",
                    allowed_increase = "value should be between 0 and 100",
                    dry_run = "expected a boolean",
                } })
        rejects(config { progression = { canary = "b", confidence = 0.3 } },
                { progression = { confidence = "must be at least 0.5 and below 1 (got 0.3)" } })
      end)

      it("with latency ratios under statistical analysis", function()
        rejects(config { progression = { canary = "b", analysis = "statistical",
                                         max_p99_ratio = 2 } },
                "progression.max_p99_ratio: applies to analysis 'threshold'; statistical " ..
                "analysis judges latency with allowed_increase")
        rejects(config { progression = { canary = "b", analysis = "statistical",
                                         max_p95_ratio = 2 } },
                "progression.max_p95_ratio: applies to analysis 'threshold'; statistical " ..
                "analysis judges latency with allowed_increase")
      end)

      it("with a notify receiver that is not an http(s) URL", function()
        rejects(config { progression = { canary = "b", notify = {} } },
                { progression = { notify = { url = "required field missing" } } })
        rejects(config { progression = { canary = "b", notify = { url = "ftp://h/x" } } },
                { progression = { notify = {
                  url = "must be an http:// or https:// URL: must start with http:// or https://",
                } } })
        rejects(config { progression = { canary = "b", notify = { url = "http://h x/" } } },
                { progression = { notify = {
                  url = "must be an http:// or https:// URL: must be an http:// or https:// " ..
                        "URL without spaces or control characters",
                } } })
        rejects(config { progression = { canary = "b", notify = { url = "http://:80/" } } },
                { progression = { notify = {
                  url = "must be an http:// or https:// URL: has no host" } } })
        rejects(config { progression = { canary = "b",
                                         notify = { url = "http://h:99999/", timeout = 0 } } },
                { progression = { notify = {
                  url = "must be an http:// or https:// URL: has an invalid port",
                  timeout = "value should be between 1 and 60000",
                } } })
      end)

      it("with notify headers that are not 'Name: value' or that it sets itself", function()
        rejects(config { progression = { canary = "b", notify = {
                  url = "http://h/",
                  headers = { "X-Ok: 1", "no colon", "Host: evil", "X-A: b\r\nX-Evil: c" },
                } } },
                { progression = { notify = { headers = {
                  [2] = "must be 'Name: value' with a header name of A-Z, a-z, 0-9, '_' and '-'",
                  [3] = "header 'Host' is set by canary-router",
                  [4] = "value of header 'X-A' has control characters",
                } } } })
      end)

      it("accepts the runbook's rules and a statistical analysis with a receiver", function()
        local runbook = { canary = "b", max_error_rate = 1, max_p99_ratio = 2,
                          rollback_error_rate = 5, rollback_p99_ratio = 3 }
        local got = accepts(config { progression = runbook })
        assert.equal(2, got.progression.max_p99_ratio)
        assert.equal("threshold", got.progression.analysis)
        got = accepts(config { progression = {
          canary = "b", analysis = "statistical", confidence = 0.95, allowed_increase = 0.1,
          max_error_rate_delta = 0.5, rollback_p99_ratio = 3, dry_run = true,
          notify = { url = "https://user:pw@hooks.example.com:8443/canary?x=1",
                     headers = { "Authorization: Bearer t0k3n" } },
        } })
        assert.same({ url = "https://user:pw@hooks.example.com:8443/canary?x=1",
                      headers = { "Authorization: Bearer t0k3n" }, timeout = 5000 },
                    got.progression.notify)
        assert.is_true(got.progression.dry_run)
      end)
    end)

    describe("unknown fields", function()

      it("at the top of config", function()
        rejects(config { bogus = 1 }, { bogus = "unknown field" })
      end)

      it("in nested records and in array elements", function()
        rejects(config { sticky = { bogus = true },
                         progression = { canary = "b", speed = 2 },
                         upstreams = { { name = "a", weight = 100, port = 80 } } },
                { sticky = { bogus = "unknown field" },
                  progression = { speed = "unknown field" },
                  upstreams = { [1] = { port = "unknown field" } } })
      end)
    end)

    it("reporting every failing field at once", function()
      rejects({ sticky = { by = "x" }, trace = { echo_downstream = 1 }, bogus = 1 },
              { upstreams = "required field missing",
                sticky = { by = "expected one of: none, header, cookie, consumer, ip" },
                trace = { echo_downstream = "expected a boolean" },
                bogus = "unknown field" })
    end)
  end)

  describe("accepts", function()

    it("a minimal config and fills in every default", function()
      assert.same(DEFAULTS, accepts(config()))
    end)

    it("with nulls for unset optional fields when asked (Admin API view)", function()
      local expected = deep_copy(DEFAULTS)
      expected.sticky = null
      expected.override = null
      expected.response_header = null
      expected.generation_header = null
      expected.progression = null
      assert.same(expected, process(config(), { nulls = true }))
    end)

    it("a progression with only its canary and fills in its defaults", function()
      local got = accepts(config { progression = { canary = "b" } })
      assert.same(PROGRESSION_DEFAULTS, got.progression)
    end)

    it("a cluster-scoped progression and fills in Redis defaults", function()
      local got = accepts(config { progression = { canary = "b", scope = "cluster",
                                                   redis = { host = "127.0.0.1" } } })
      assert.equal("cluster", got.progression.scope)
      assert.same({ host = "127.0.0.1", port = 6379, timeout = 2000, database = 0,
                    ssl = false, ssl_verify = false }, got.progression.redis)
      got = accepts(config { progression = { canary = "b", scope = "cluster", redis = {
        host = "redis.internal", port = 6380, timeout = 500, username = "kong",
        password = "", database = 3, ssl = true, ssl_verify = true,
        server_name = "redis.example.com" } } })
      assert.equal("", got.progression.redis.password)
      assert.equal("redis.example.com", got.progression.redis.server_name)
    end)

    it("a fully specified config as given", function()
      local full = {
        upstreams = { { name = "svc.v1", weight = 75.5 },
                      { name = "svc_v2", weight = 20 },
                      { name = "svc-v3", weight = 4.5 } },
        sticky = { by = "cookie", header = "X-User", cookie = "uid",
                   fallback = { "header", "consumer", "ip" } },
        override = { header = "X-Force", cookie = "force_upstream",
                     allow_from = { "10.0.0.0/8", "192.168.1.1", "2001:db8::/32", "::1" } },
        trace = { header = "X-Request-Id", traceparent = false, sampled = false,
                  echo_downstream = false },
        response_header = "X-Canary-Upstream",
        generation_header = "X-Canary-Generation",
        progression = { canary = "svc-v3", strategy = "canary",
                        steps = { 5, 12.5, 50, 100 }, interval = 60,
                        min_requests = 0, max_error_rate = 1.5, max_p95_ms = 250,
                        max_p99_ms = 800.5, failure_limit = 1, rollback_error_rate = 5,
                        on_success = "hold", max_p95_ratio = 1.5, max_p99_ratio = 2,
                        rollback_p99_ratio = 3, max_error_rate_delta = 0.5,
                        analysis = "threshold", confidence = 0.99, allowed_increase = 0.1,
                        dry_run = true,
                        notify = { url = "http://127.0.0.1:9010/hook", timeout = 1000,
                                   headers = { "X-Token: abc" } },
                        scope = "cluster",
                        redis = { host = "::1", port = 6390, timeout = 250, username = "u",
                                  password = "p", database = 2, ssl = true,
                                  ssl_verify = true, server_name = "redis.example" } },
      }
      assert.same(full, accepts(deep_copy(full)))
    end)

    it("weights that add up to 100 only on the 0.01 grid (33.33/33.33/33.34)", function()
      local got = accepts(config { upstreams = { { name = "a", weight = 33.33 },
                                                 { name = "b", weight = 33.33 },
                                                 { name = "c", weight = 33.34 } } })
      assert.same({ 33.33, 33.33, 33.34 },
                  { got.upstreams[1].weight, got.upstreams[2].weight,
                    got.upstreams[3].weight })
    end)

    it("a single upstream, 16 upstreams, and zero weights", function()
      accepts(config { upstreams = { { name = "only", weight = 100 } } })
      local ups = {}
      for i = 1, 16 do
        ups[i] = { name = "u" .. i, weight = 6.25 }
      end
      accepts(config { upstreams = ups })
      accepts(config { upstreams = { { name = "a", weight = 100 },
                                     { name = "b", weight = 0 } } })
    end)

    it("a JSON body decoded with cjson, nulls included", function()
      local body = cjson.decode([[{"upstreams":[{"name":"a","weight":90},
        {"name":"b","weight":10}],"response_header":null,"sticky":null}]])
      assert.same(DEFAULTS, accepts(body))
      body = cjson.decode([[{"upstreams":[{"name":"a","weight":90},
        {"name":"b","weight":10}],"sticky":{"fallback":[]}}]])
      local expected = deep_copy(DEFAULTS)
      expected.sticky = STICKY_DEFAULTS
      assert.same(expected, accepts(body))
    end)

    it("sticky and override unset or null, and fills in their fields when given", function()
      assert.same(DEFAULTS, accepts(config { sticky = null, override = null }))
      local got = accepts(config { sticky = { by = "ip" }, override = { header = "X-Canary" } })
      local expected = deep_copy(STICKY_DEFAULTS)
      expected.by = "ip"
      assert.same(expected, got.sticky)
      assert.same({ header = "X-Canary", allow_from = {} }, got.override)
    end)

    it("without modifying its input", function()
      local input = config { sticky = { by = "ip" } }
      local before = deep_copy(input)
      local got = accepts(input)
      assert.same(before, input)
      got.upstreams[1].weight = 1
      assert.equal(90, input.upstreams[1].weight)
    end)
  end)

  describe("error_response", function()

    it("is Kong's schema violation body for one violation", function()
      local _, errors = process(config { upstreams = { { name = "a", weight = 90 },
                                                       { name = "b", weight = -1 } } })
      assert.same({
        code = 2,
        name = "schema violation",
        message = "schema violation (config.upstreams: {\n"
                  .. "  [2] = {\n"
                  .. "    weight = \"value should be between 0 and 100\"\n"
                  .. "  }\n"
                  .. "})",
        fields = { config = { upstreams = { [2] = {
          weight = "value should be between 0 and 100" } } } },
      }, validator.error_response(errors))
    end)

    it("names the field of a config-wide rule", function()
      local _, errors = process(config { progression = { canary = "zz" } })
      local body = validator.error_response(errors)
      assert.equal("schema violation (config: progression.canary: 'zz' is not one of "
                   .. "the configured upstreams)", body.message)
      assert.same({ config = "progression.canary: 'zz' is not one of the configured "
                             .. "upstreams" }, body.fields)
    end)

    it("counts and sorts several violations", function()
      local _, errors = process({ sticky = { by = "x" }, bogus = 1,
                                  response_header = "a b" })
      assert.equal("4 schema violations ("
                   .. "config.bogus: unknown field; "
                   .. "config.response_header: bad header name 'a b', allowed characters "
                   .. "are A-Z, a-z, 0-9, '_', and '-'; "
                   .. "config.sticky: {\n"
                   .. "  by = \"expected one of: none, header, cookie, consumer, ip\"\n"
                   .. "}; "
                   .. "config.upstreams: required field missing)",
                   validator.error_response(errors).message)
    end)

    it("renders nested errors with penlight, as Kong does", function()
      local _, errors = process(config { progression = { canary = "b", interval = 0 } })
      assert.equal("schema violation (config.progression: "
                   .. pretty.write({ interval = "value should be between 1 and 86400" })
                   .. ")", validator.error_response(errors).message)
    end)

    it("encodes to JSON", function()
      local _, errors = process({})
      assert.same({ code = 2, name = "schema violation",
                    message = "schema violation (config.upstreams: required field missing)",
                    fields = { config = { upstreams = "required field missing" } } },
                  cjson.decode(cjson.encode(validator.error_response(errors))))
    end)
  end)

  describe("merge_patch", function()

    local old

    before_each(function()
      old = accepts(config {
        upstreams = { { name = "a", weight = 80 }, { name = "b", weight = 10 },
                      { name = "c", weight = 10 } },
        sticky = { by = "header", fallback = { "cookie", "ip" } },
        response_header = "X-Canary-Upstream",
        progression = { canary = "c", max_p95_ms = 300 },
      })
    end)

    it("merges nested records field by field", function()
      local merged = validator.merge_patch(old, { sticky = { by = "cookie" },
                                                  progression = { interval = 60 } })
      local got = accepts(merged)
      assert.same({ by = "cookie", header = "X-Canary-User", cookie = "canary_user",
                    fallback = { "cookie", "ip" } }, got.sticky)
      assert.equal(60, got.progression.interval)
      assert.equal(300, got.progression.max_p95_ms)
      assert.equal("c", got.progression.canary)
      assert.same(old.upstreams, got.upstreams)
    end)

    it("replaces arrays as a whole", function()
      local merged = validator.merge_patch(old, {
        upstreams = { { name = "a", weight = 50 }, { name = "c", weight = 50 } },
        sticky = { fallback = { "consumer" } },
      })
      local got = accepts(merged)
      assert.same({ { name = "a", weight = 50 }, { name = "c", weight = 50 } },
                  got.upstreams)
      assert.same({ "consumer" }, got.sticky.fallback)
      assert.equal("header", got.sticky.by)
    end)

    it("clears optional fields set to null", function()
      local got = accepts(validator.merge_patch(old, { response_header = null,
                                                       progression = null }))
      assert.is_nil(got.response_header)
      assert.is_nil(got.progression)
    end)

    it("does not reset a required field set to null to its default", function()
      rejects(validator.merge_patch(old, { trace = { header = null } }),
              { trace = { header = "required field missing" } })
    end)

    it("lets the merged config be validated as a whole", function()
      -- the new upstreams no longer include the progression's canary
      rejects(validator.merge_patch(old, { upstreams = { { name = "a", weight = 90 },
                                                         { name = "b", weight = 10 } } }),
              "progression.canary: 'c' is not one of the configured upstreams")
      rejects(validator.merge_patch(old, { upstreams = { { name = "a", weight = 90 },
                                                         { name = "c", weight = 5 } } }),
              { upstreams = "weights must sum to 100 (got 95)" })
      -- a new progression needs its canary
      local no_progression = accepts(validator.merge_patch(old, { progression = null }))
      rejects(validator.merge_patch(no_progression, { progression = { interval = 10 } }),
              "progression.canary: required with strategy 'canary'")
    end)

    it("keeps the old config when the patch has none, and modifies neither", function()
      local before = deep_copy(old)
      local same = validator.merge_patch(old, nil)
      assert.same(old, same)
      assert.are_not.equal(old, same)
      local patch = { sticky = { by = "ip" } }
      validator.merge_patch(old, patch)
      assert.same(before, old)
      assert.same({ sticky = { by = "ip" } }, patch)
    end)
  end)

  describe("follows Kong's conventions:", function()

    it("it is named canary-router, for HTTP protocols, not per consumer", function()
      assert.equal("canary-router", plugin_schema.name)
      local top = {}
      for _, item in ipairs(plugin_schema.fields) do
        local name, field = next(item)
        top[#top + 1] = name
        top[name] = field
      end
      assert.same({ "consumer", "protocols", "config" }, { top[1], top[2], top[3] })
      assert.equal(3, #top)
      assert.equal("foreign", top.consumer.type)
      assert.equal("consumers", top.consumer.reference)
      assert.equal(null, top.consumer.eq)
      assert.same({ "grpc", "grpcs", "http", "https" }, top.protocols.default)
    end)

    it("every config field has a description of 10 to 500 characters", function()
      for _, f in ipairs(config_fields()) do
        local d = f.field.description
        assert.is_string(d, f.path .. " has no description")
        assert.is_true(#d >= 10 and #d <= 500, f.path .. ": description length " .. #d)
      end
    end)

    it("every config field says whether it is required", function()
      for _, f in ipairs(config_fields()) do
        assert.is_boolean(f.field.required, f.path .. " does not set 'required'")
      end
    end)

    it("every field has a default unless it must be given or may stay unset", function()
      local without_default = {
        -- required: the operator must give them
        ["upstreams"] = "required",
        ["upstreams[].name"] = "required",
        ["upstreams[].weight"] = "required",
        ["generation_header"] = "optional",
        -- required with strategy canary, not set with blue_green
        ["progression.canary"] = "optional",
        -- blue_green's; unset: the second upstream, 300 s, 600 s
        ["progression.preview"] = "optional",
        ["progression.pre_promotion"] = "optional",
        ["progression.post_promotion"] = "optional",
        -- optional: unset means "off"
        ["sticky"] = "optional",
        ["override"] = "optional",
        ["override.header"] = "optional",
        ["override.cookie"] = "optional",
        ["response_header"] = "optional",
        ["progression"] = "optional",
        ["progression.max_error_rate"] = "optional",
        ["progression.max_p95_ms"] = "optional",
        ["progression.max_p99_ms"] = "optional",
        ["progression.rollback_error_rate"] = "optional",
        ["progression.redis"] = "optional",
        ["progression.redis.host"] = "optional",
        ["progression.redis.username"] = "optional",
        ["progression.redis.password"] = "optional",
        ["progression.redis.server_name"] = "optional",
        ["progression.max_p95_ratio"] = "optional",
        ["progression.max_p99_ratio"] = "optional",
        ["progression.rollback_p99_ratio"] = "optional",
        ["progression.max_error_rate_delta"] = "optional",
        ["progression.notify"] = "optional",
        ["progression.notify.url"] = "required",
      }
      local seen = 0
      for _, f in ipairs(config_fields()) do
        local kind = without_default[f.path]
        if kind then
          seen = seen + 1
          assert.is_nil(f.field.default, f.path .. " should have no default")
          assert.equal(kind == "required", f.field.required, f.path)
        else
          assert.is_not_nil(f.field.default, f.path .. " has no default")
          -- a default can be relied upon: null cannot blank it
          assert.is_true(f.field.required, f.path .. " has a default but is optional")
        end
      end
      assert.equal(29, seen)
    end)

    it("the records' defaults agree with their fields' defaults", function()
      for _, f in ipairs(config_fields()) do
        if f.field.type == "record" and f.field.default ~= nil then
          local filled = {}
          for _, item in ipairs(f.field.fields) do
            local name, field = next(item)
            filled[name] = field.default
          end
          assert.same(filled, f.field.default, f.path)
        end
      end
    end)

    it("uses Kong's typedefs for header names and addresses", function()
      local by_path = {}
      for _, f in ipairs(config_fields()) do
        by_path[f.path] = f.field
      end
      for _, path in ipairs({ "sticky.header", "override.header", "trace.header",
                              "response_header" }) do
        assert.equal(typedefs.header_name.custom_validator,
                     by_path[path].custom_validator, path)
      end
      assert.equal(typedefs.ip_or_cidr.custom_validator,
                   by_path["override.allow_from"].elements.custom_validator)
    end)

    it("gives progression.redis the shape of rate-limiting's redis record", function()
      local by_path = {}
      for _, f in ipairs(config_fields()) do
        by_path[f.path] = f.field
      end
      local names = {}
      for _, item in ipairs(by_path["progression.redis"].fields) do
        names[#names + 1] = next(item)
      end
      assert.same({ "host", "port", "timeout", "username", "password", "database",
                    "ssl", "ssl_verify", "server_name" }, names)
      assert.equal(typedefs.host.custom_validator,
                   by_path["progression.redis.host"].custom_validator)
      assert.equal(typedefs.sni.custom_validator,
                   by_path["progression.redis.server_name"].custom_validator)
      assert.is_true(by_path["progression.redis.password"].encrypted)
      assert.is_true(by_path["progression.redis.password"].referenceable)
    end)
  end)
end)


describe("local host's stand-ins for Kong", function()

  describe("typedefs", function()

    it("validates header names like Kong's validate_header_name", function()
      local v = typedefs.header_name.custom_validator
      assert.equal("X-Canary_2", v("X-Canary_2"))
      assert.same({ nil, "no header name provided" }, { v("") })
      assert.same({ nil, "bad header name 'X.Y', allowed characters are A-Z, a-z, "
                         .. "0-9, '_', and '-'" }, { v("X.Y") })
      -- PCRE's `$` matches before a final newline, so Kong accepts this
      assert.equal("X-Foo\n", v("X-Foo\n"))
      assert.is_nil(v("X-Foo\nBar"))
    end)

    it("validates addresses like Kong's ip_or_cidr", function()
      local v = typedefs.ip_or_cidr.custom_validator
      for _, ok in ipairs({ "10.0.0.0/8", "0.0.0.0/0", "10.1.2.3/24", "192.168.1.1",
                            "::1", "::/0", "2001:db8::/32", "[2001:db8::1]",
                            "::ffff:10.0.0.1" }) do
        assert.is_true(v(ok), ok)
      end
      for _, bad in ipairs({ "10.0.0.0/33", "10.0.0.0/08", "10.0.0.0/", "1.2.3",
                             "256.0.0.1", "host.example", "::1/129", "1.2.3.4 " }) do
        assert.same({ nil, "invalid ip or cidr range: '" .. bad .. "'" }, { v(bad) }, bad)
      end
    end)

    it("validate hosts and server names like Kong's validate_host / validate_sni",
       function()
      local host, sni = typedefs.host.custom_validator, typedefs.sni.custom_validator
      for _, ok in ipairs({ "redis", "redis.example.com", "10.0.0.1", "::1",
                            "[2001:db8::1]", "my_redis-1.local" }) do
        assert.is_true(host(ok), ok)
      end
      assert.same({ nil, "must not have a port" }, { host("redis:6379") })
      assert.same({ nil, "must not have a port" }, { host("redis:99999") })
      assert.same({ nil, "invalid value: a b" }, { host("a b") })
      assert.is_true(sni("redis.example.com"))
      assert.same({ nil, "must not be an IP" }, { sni("10.0.0.1") })
      assert.same({ nil, "must not have a port" }, { sni("redis.example.com:443") })
    end)

    it("are callable with overrides, like Schema.define", function()
      local f = typedefs.header_name { default = "X-A", required = true }
      assert.same("string", f.type)
      assert.equal("X-A", f.default)
      assert.is_true(f.required)
      assert.is_nil(typedefs.header_name.default)
    end)

    it("raise Kong's error for a typedef that does not exist", function()
      assert.has_error(function() return typedefs.cidr end,
                       "schema typedef error: definition cidr does not exist")
    end)
  end)

  describe("schema loader", function()

    local function tiny(field)
      return { name = "tiny", fields = { { config = { type = "record", fields = {
        { x = field } } } } } }
    end

    it("refuses what Kong's metaschema refuses", function()
      assert.has_error(function()
        validator.process_config(tiny { type = "string", defualt = "a" }, {})
      end, "kong_host.schema: invalid plugin schema: tiny.config.x: unknown attribute 'defualt'")
      assert.has_error(function()
        validator.process_config(tiny { type = "string", description = "short" }, {})
      end, "kong_host.schema: invalid plugin schema: tiny.config.x: description must be "
           .. "a string of 10 to 500 characters")
      assert.has_error(function()
        validator.process_config(tiny { type = "string", between = { 1, 2 } }, {})
      end, "kong_host.schema: invalid plugin schema: tiny.config.x: field of type "
           .. "'string' cannot have attribute 'between'")
      assert.has_error(function()
        validator.process_config(tiny { type = "integer", default = 0, between = { 1, 2 } },
                                 {})
      end, "kong_host.schema: invalid plugin schema: tiny.config.x: default does not "
           .. "validate: value should be between 1 and 2")
    end)

    it("refuses features it does not implement instead of skipping them", function()
      assert.has_error(function()
        validator.process_config(tiny { type = "record", fields = {},
                                        entity_checks = {} }, {})
      end, "kong_host.schema: invalid plugin schema: tiny.config.x: attribute "
           .. "'entity_checks' is not supported by the local host")
    end)

    it("makes nested records required unless they say otherwise, as Kong does", function()
      local s = tiny { type = "record", fields = {
        { y = { type = "string", required = true } } } }
      assert.same({ nil, { x = { y = "required field missing" } } },
                  { validator.process_config(s, {}) })
      s = tiny { type = "record", required = false, fields = {
        { y = { type = "string", required = true } } } }
      assert.same({}, validator.process_config(s, {}))
    end)
  end)
end)
