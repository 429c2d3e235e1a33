-- Kong plugin schema for canary-router (kong.plugins.canary-router.schema).
--
-- Where each rule lives decides where Kong reports it, so rules sit on the
-- field they are about:
--
--   * single values (ranges, names, header names, CIDRs) on their field,
--     e.g. config.upstreams[2].weight;
--   * rules across the elements of an array (unique names, weights adding
--     up to 100, increasing steps) on the array, e.g. config.upstreams;
--   * the one rule across fields, "progression.canary names a configured
--     upstream other than the stable one", on the config record, whose
--     message therefore names the field itself.
--
-- Weights are percentages with at most two decimals because the engine
-- works on a 0..10000 scale (0.01 %); the table rules compare
-- floor(w * 100 + 0.5), the value the engine will receive, so 33.33 +
-- 33.33 + 33.34 adds up to exactly 100 despite binary floating point.
--
-- The rules for upstream names and the weights table (characters,
-- uniqueness, the sum) are the engine's own (canary_name_check and
-- canary_table_check in libcanary, through engine.lua): there is one
-- definition, and a config is rejected with the same message whether it
-- comes from kong.yml, the Admin API or a test, and whether the schema or
-- a publish sees it first.

local typedefs = require "kong.db.schema.typedefs"
local engine = require "kong.plugins.canary-router.engine"
local notify = require "kong.plugins.canary-router.notify"


local type = type
local tostring = tostring
local ipairs = ipairs
local abs = math.abs
local floor = math.floor
local fmt = string.format
-- A JSON or database null (Kong's validators hand optional fields to
-- the config-wide rule as ngx.null).
local null = ngx and ngx.null or require("cjson").null
local match = string.match
local check_name = engine.check_name
local check_table = engine.check_table


local MAX_UPSTREAMS = 16   -- CANARY_MAX_UPSTREAMS
local NAME_MAX = 63        -- CANARY_NAME_MAX less the NUL
local MAX_STEPS = 20

local STICKY_SOURCES = { "header", "cookie", "consumer", "ip" }
local STICKY_BY = { "none", "header", "cookie", "consumer", "ip" }

-- Kong walks every plugin's configuration on every request, looking for
-- vault references (kong.vault.update in runloop/plugins_iterator.lua),
-- so a record only some configs need (sticky, override) is null unless
-- set, and then gets its fields' defaults; trace, which every config
-- uses, is always there with these defaults.
local STICKY = {
  by = "none",
  header = "X-Canary-User",
  cookie = "canary_user",
  fallback = {},
}

-- Overrides are off unless a header or cookie is configured: an override
-- lets whoever sends it choose the version that serves them.
local OVERRIDE = {
  allow_from = {},
}

local TRACE = {
  header = "X-Trace-Id",
  traceparent = true,
  sampled = true,
  echo_downstream = true,
}

local DEFAULT_STEPS = { 10, 25, 50, 75, 100 }


-- A percentage on the engine's 0.01 % grid.  NaN fails too.
local function has_two_decimals_at_most(x)
  local scaled = x * 100
  return abs(scaled - floor(scaled + 0.5)) <= 1e-9
end


local function validate_percent(value)
  if not has_two_decimals_at_most(value) then
    return nil, fmt("at most 2 decimals allowed (got %s)", tostring(value))
  end
  return true
end


-- The engine's rule: the characters of a Kong upstream name.
local function validate_upstream_name(name)
  return check_name(name)
end


-- Same rule as Kong's validate_cookie_name (kong.tools.utils, 3.x).
local function validate_cookie_name(name)
  if not match(name, "^[A-Za-z0-9_%-]+$") then
    return nil, fmt("bad cookie name '%s', allowed characters are " ..
                    "A-Z, a-z, 0-9, '_', and '-'", name)
  end
  return true
end


-- Runs once every element is valid: the engine's rules for the table
-- it will publish (names unique, weights adding up to exactly 100 %).
local function validate_upstreams(upstreams)
  local names, weights = {}, {}
  for i = 1, #upstreams do
    names[i] = upstreams[i].name
    weights[i] = floor(upstreams[i].weight * 100 + 0.5)
  end
  return check_table(names, weights)
end


local function validate_steps(steps)
  for i = 2, #steps do
    if steps[i] <= steps[i - 1] then
      return nil, fmt("must be strictly increasing (got %s then %s)",
                      tostring(steps[i - 1]), tostring(steps[i]))
    end
  end
  return true
end


local function validate_confidence(c)
  if not (c >= 0.5 and c < 1) then
    return nil, fmt("must be at least 0.5 and below 1 (got %s)", tostring(c))
  end
  return true
end


-- notify.url: http:// or https://, as notify.lua sends it.
local function validate_notify_url(url)
  local ok, err = notify.parse_url(url)
  if not ok then
    return nil, "must be an http:// or https:// URL: " .. err
  end
  return true
end


-- notify.headers[i]: "Name: value".
local function validate_notify_header(line)
  local ok, err = notify.parse_header(line)
  if not ok then
    return nil, err
  end
  return true
end


local function set(v)
  return v ~= nil and v ~= null
end

-- A blue/green release: blue is the first upstream (all public
-- traffic), green the other one (progression.preview), which only
-- overrides from override.allow_from reach until the switch.
local function validate_blue_green(config, progression)
  local upstreams = config.upstreams
  if #upstreams ~= 2 then
    return nil, fmt("progression.strategy: 'blue_green' needs exactly two " ..
                    "upstreams, blue (the first) and green (got %d)", #upstreams)
  end
  if set(progression.canary) then
    return nil, "progression.canary: applies to strategy 'canary'; " ..
                "blue_green names green in progression.preview"
  end
  local preview = progression.preview
  if set(preview) and preview ~= upstreams[2].name then
    if preview == upstreams[1].name then
      return nil, fmt("progression.preview: '%s' is blue, the stable upstream " ..
                      "(the first of upstreams), and cannot be green", preview)
    end
    return nil, fmt("progression.preview: '%s' is not one of the configured " ..
                    "upstreams", preview)
  end
  if upstreams[1].weight ~= 100 then
    return nil, "upstreams: with strategy 'blue_green' blue (the first) " ..
                "has weight 100 and green 0 until the switch"
  end
  if progression.scope == "cluster" then
    return nil, "progression.scope: strategy 'blue_green' is judged by " ..
                "each node ('node'), not 'cluster'"
  end
  local ov = config.override
  if type(ov) ~= "table" or not (set(ov.header) or set(ov.cookie)) then
    return nil, "override: strategy 'blue_green' previews green through " ..
                "override.header or override.cookie; set one"
  end
  if type(ov.allow_from) ~= "table" or #ov.allow_from == 0 then
    return nil, "override.allow_from: required with strategy 'blue_green' " ..
                "(the sources that may preview green)"
  end
  return true
end


-- The config as a whole, with its defaults; runs once every field is
-- valid.  progression is null (not a table) when absent.
local function validate_config(config)
  local progression = config.progression
  if type(progression) ~= "table" then
    return true
  end

  if progression.scope == "cluster" then
    local redis = progression.redis
    if type(redis) ~= "table" or type(redis.host) ~= "string" then
      return nil, "progression.redis.host: required when progression.scope is 'cluster'"
    end
  end

  if progression.analysis == "statistical" then
    for _, ratio in ipairs({ "max_p95_ratio", "max_p99_ratio" }) do
      if type(progression[ratio]) == "number" then
        return nil, fmt("progression.%s: applies to analysis 'threshold'; " ..
                        "statistical analysis judges latency with " ..
                        "allowed_increase", ratio)
      end
    end
  end

  local upstreams = config.upstreams
  if progression.strategy == "blue_green" then
    return validate_blue_green(config, progression)
  end
  for _, f in ipairs({ "preview", "pre_promotion", "post_promotion" }) do
    if set(progression[f]) then
      return nil, fmt("progression.%s: applies to strategy 'blue_green'", f)
    end
  end
  local canary = progression.canary
  if not set(canary) then
    return nil, "progression.canary: required with strategy 'canary'"
  end
  if canary == upstreams[1].name then
    return nil, fmt("progression.canary: '%s' is the stable upstream " ..
                    "(the first of upstreams) and cannot be the canary", canary)
  end
  for i = 2, #upstreams do
    if upstreams[i].name == canary then
      return true
    end
  end
  return nil, fmt("progression.canary: '%s' is not one of the configured upstreams",
                  canary)
end


return {
  name = "canary-router",
  fields = {
    { consumer = typedefs.no_consumer },
    { protocols = typedefs.protocols_http },
    {
      config = {
        type = "record",
        custom_validator = validate_config,
        fields = {
          {
            upstreams = {
              description = "Kong upstreams to split the route's traffic between, " ..
                            "1 to 16, with unique names and weights in percent " ..
                            "adding up to 100. The first is the stable upstream: " ..
                            "it absorbs the weight the others give up, for example " ..
                            "when a canary is rolled back.",
              type = "array",
              required = true,
              len_min = 1,
              len_max = MAX_UPSTREAMS,
              custom_validator = validate_upstreams,
              elements = {
                type = "record",
                fields = {
                  {
                    name = {
                      description = "Name of a Kong upstream, 1 to 63 characters: " ..
                                    "letters, digits, '.', '_' and '-'.",
                      type = "string",
                      required = true,
                      len_min = 1,
                      len_max = NAME_MAX,
                      custom_validator = validate_upstream_name,
                    },
                  },
                  {
                    weight = {
                      description = "Share of the traffic in percent, from 0 to 100, " ..
                                    "with at most 2 decimals (0.01 % granularity).",
                      type = "number",
                      required = true,
                      between = { 0, 100 },
                      custom_validator = validate_percent,
                    },
                  },
                },
              },
            },
          },
          {
            sticky = {
              description = "Sticky routing: requests with the same key always " ..
                            "reach the same upstream, on every worker and node, and " ..
                            "raising the canary's weight only moves keys onto the " ..
                            "canary, never off it. Unset: no stickiness.",
              type = "record",
              required = false,
              fields = {
                {
                  by = {
                    description = "Source of the sticky key: 'none' (no stickiness, " ..
                                  "each request follows the weights), 'header' " ..
                                  "(sticky.header), 'cookie' (sticky.cookie), " ..
                                  "'consumer' (the authenticated Kong consumer) or " ..
                                  "'ip' (the client address).",
                    type = "string",
                    required = true,
                    default = STICKY.by,
                    one_of = STICKY_BY,
                  },
                },
                {
                  header = typedefs.header_name {
                    description = "Request header holding the sticky key when the " ..
                                  "key comes from a header.",
                    required = true,
                    default = STICKY.header,
                  },
                },
                {
                  cookie = {
                    description = "Cookie holding the sticky key when the key comes " ..
                                  "from a cookie.",
                    type = "string",
                    required = true,
                    default = STICKY.cookie,
                    custom_validator = validate_cookie_name,
                  },
                },
                {
                  fallback = {
                    description = "Key sources tried in order when 'by' yields no " ..
                                  "key for a request (for example, the header is " ..
                                  "absent). When every source fails, the request is " ..
                                  "routed without stickiness.",
                    type = "array",
                    required = true,
                    default = STICKY.fallback,
                    len_max = #STICKY_SOURCES,
                    elements = {
                      type = "string",
                      one_of = STICKY_SOURCES,
                    },
                  },
                },
              },
            },
          },
          {
            override = {
              description = "Per-request overrides for testers, off unless a header " ..
                            "or cookie is set. A value of 'always' sends the request " ..
                            "to the canary (progression.canary, or the last upstream " ..
                            "without a progression), 'never' to the stable upstream, " ..
                            "and the name of a configured upstream to that upstream; " ..
                            "other values are ignored. Forced requests are counted " ..
                            "apart and never judged by the progression's gates. " ..
                            "Unset: no overrides.",
              type = "record",
              required = false,
              fields = {
                {
                  header = typedefs.header_name {
                    description = "Request header carrying an override: 'always', " ..
                                  "'never' or an upstream name. Unset: no header " ..
                                  "override. Whoever can send it chooses their version; " ..
                                  "restrict it with allow_from.",
                    required = false,
                  },
                },
                {
                  cookie = {
                    description = "Cookie carrying an override, with the same values " ..
                                  "as the header, which wins when both are present. " ..
                                  "Unset: cookies are not looked at.",
                    type = "string",
                    required = false,
                    custom_validator = validate_cookie_name,
                  },
                },
                {
                  allow_from = {
                    description = "Client addresses (IPv4 or IPv6 addresses or CIDR " ..
                                  "blocks) whose overrides are honoured; overrides " ..
                                  "from elsewhere are ignored and counted. Empty: " ..
                                  "honoured from anywhere.",
                    type = "array",
                    required = true,
                    default = OVERRIDE.allow_from,
                    elements = typedefs.ip_or_cidr,
                  },
                },
              },
            },
          },
          {
            trace = {
              description = "Trace-ID propagation: every request carries a trace ID " ..
                            "from the client through the gateway to the upstream and " ..
                            "back, generated when missing or invalid.",
              type = "record",
              required = true,
              default = TRACE,
              fields = {
                {
                  header = typedefs.header_name {
                    description = "Header carrying the trace ID. A valid incoming " ..
                                  "value is kept; a missing or invalid one is " ..
                                  "replaced by a new ID.",
                    required = true,
                    default = TRACE.header,
                  },
                },
                {
                  traceparent = {
                    description = "Also honour the W3C traceparent header: a valid " ..
                                  "incoming one supplies the trace ID, and one is " ..
                                  "generated and sent upstream when absent.",
                    type = "boolean",
                    required = true,
                    default = TRACE.traceparent,
                  },
                },
                {
                  sampled = {
                    description = "Sampled flag of the traceparent headers the " ..
                                  "gateway generates (a valid incoming traceparent " ..
                                  "keeps its own). true asks parent-based samplers " ..
                                  "downstream to record every such request.",
                    type = "boolean",
                    required = true,
                    default = TRACE.sampled,
                  },
                },
                {
                  echo_downstream = {
                    description = "Send the trace ID header back to the client in " ..
                                  "the response.",
                    type = "boolean",
                    required = true,
                    default = TRACE.echo_downstream,
                  },
                },
              },
            },
          },
          {
            response_header = typedefs.header_name {
              description = "Response header naming the upstream that served the " ..
                            "request, for example X-Canary-Upstream. Unset: no such " ..
                            "header is sent.",
              required = false,
            },
          },
          {
            generation_header = typedefs.header_name {
              description = "Response header carrying the generation of the " ..
                            "weights table that chose the upstream (the status " ..
                            "API's generation, low 32 bits), for example " ..
                            "X-Canary-Generation; absent on requests an override " ..
                            "chose. Unset: no such header is sent.",
              required = false,
            },
          },
          {
            progression = {
              description = "Automatic progression of the canary through weight " ..
                            "steps, or a blue/green release (strategy), gated by " ..
                            "its error rate and latency, with automatic " ..
                            "rollback, judged by each node on its own traffic " ..
                            "or by the cluster through Redis (scope). Unset: " ..
                            "the configured weights apply as they are.",
              type = "record",
              required = false,
              fields = {
                {
                  canary = {
                    description = "Name of the upstream whose weight the progression " ..
                                  "raises: one of upstreams, other than the first " ..
                                  "(the stable upstream). Required with strategy " ..
                                  "'canary', not set with 'blue_green'.",
                    type = "string",
                    required = false,
                    len_min = 1,
                    len_max = NAME_MAX,
                  },
                },
                {
                  strategy = {
                    description = "How the new version is released: 'canary' " ..
                                  "(weight steps) or 'blue_green' (green, the " ..
                                  "preview upstream, gets only allowed overrides, " ..
                                  "is judged over pre_promotion, then takes all " ..
                                  "traffic at once and is judged over " ..
                                  "post_promotion, with blue as the rollback " ..
                                  "target).",
                    type = "string",
                    required = true,
                    default = "canary",
                    one_of = { "canary", "blue_green" },
                  },
                },
                {
                  preview = {
                    description = "blue_green: name of green, the upstream " ..
                                  "previewed and then switched to; the second of " ..
                                  "the two upstreams (blue is the first). Unset: " ..
                                  "the second upstream.",
                    type = "string",
                    required = false,
                    len_min = 1,
                    len_max = NAME_MAX,
                  },
                },
                {
                  pre_promotion = {
                    description = "blue_green: seconds green's preview requests " ..
                                  "are judged before the switch (one window), " ..
                                  "1 to 86400. Unset: 300.",
                    type = "integer",
                    required = false,
                    between = { 1, 86400 },
                  },
                },
                {
                  post_promotion = {
                    description = "blue_green: seconds green is judged after the " ..
                                  "switch, in windows of interval, while blue " ..
                                  "stays the rollback target; 1 to 86400. Unset: " ..
                                  "600.",
                    type = "integer",
                    required = false,
                    between = { 1, 86400 },
                  },
                },
                {
                  steps = {
                    description = "Canary weights in percent, strictly increasing, " ..
                                  "each above 0 and at most 100 with at most 2 " ..
                                  "decimals, 1 to 20 of them.",
                    type = "array",
                    required = true,
                    default = DEFAULT_STEPS,
                    len_min = 1,
                    len_max = MAX_STEPS,
                    custom_validator = validate_steps,
                    elements = {
                      type = "number",
                      gt = 0,
                      between = { 0, 100 },
                      custom_validator = validate_percent,
                    },
                  },
                },
                {
                  interval = {
                    description = "Seconds between two evaluations of the gates " ..
                                  "(and so the shortest time spent on a step), " ..
                                  "from 1 to 86400.",
                    type = "integer",
                    required = true,
                    default = 300,
                    between = { 1, 86400 },
                  },
                },
                {
                  min_requests = {
                    description = "Requests the canary must have served since the " ..
                                  "last evaluation for the gates to be judged; with " ..
                                  "fewer, the step simply lasts longer.",
                    type = "integer",
                    required = true,
                    default = 100,
                    between = { 0, 1000000000 },
                  },
                },
                {
                  max_error_rate = {
                    description = "Highest error rate of the canary (percent of 5xx " ..
                                  "responses) that passes a gate. Unset: not gated " ..
                                  "on errors.",
                    type = "number",
                    required = false,
                    between = { 0, 100 },
                  },
                },
                {
                  max_p95_ms = {
                    description = "Highest p95 upstream latency of the canary, in " ..
                                  "milliseconds, that passes a gate. Unset: not " ..
                                  "gated on p95.",
                    type = "number",
                    required = false,
                    gt = 0,
                  },
                },
                {
                  max_p99_ms = {
                    description = "Highest p99 upstream latency of the canary, in " ..
                                  "milliseconds, that passes a gate. Unset: not " ..
                                  "gated on p99.",
                    type = "number",
                    required = false,
                    gt = 0,
                  },
                },
                {
                  failure_limit = {
                    description = "Failed gate evaluations in a row after which the " ..
                                  "canary is rolled back to weight 0.",
                    type = "integer",
                    required = true,
                    default = 3,
                    between = { 1, 100 },
                  },
                },
                {
                  rollback_error_rate = {
                    description = "Error rate of the canary (percent of 5xx " ..
                                  "responses) that rolls it back at once, without " ..
                                  "waiting for failure_limit. Unset: no immediate " ..
                                  "rollback.",
                    type = "number",
                    required = false,
                    between = { 0, 100 },
                  },
                },
                {
                  scope = {
                    description = "Who judges the progression: 'node' (each Kong " ..
                                  "node on its own traffic, with its own steps) or " ..
                                  "'cluster' (the nodes add their windows up in " ..
                                  "Redis, one of them judges each window from the " ..
                                  "sum, every node applies the decision, and an " ..
                                  "Admin action on any node acts on all).",
                    type = "string",
                    required = true,
                    default = "node",
                    one_of = { "node", "cluster" },
                  },
                },
                {
                  redis = {
                    description = "Redis server shared by the cluster's nodes, " ..
                                  "as in Kong's rate-limiting plugin; required " ..
                                  "when scope is 'cluster'.",
                    type = "record",
                    required = false,
                    fields = {
                      { host = typedefs.host {
                          description = "Host name or address of the Redis server.",
                          required = false,
                      } },
                      { port = typedefs.port {
                          description = "Port of the Redis server.",
                          required = true,
                          default = 6379,
                      } },
                      { timeout = typedefs.timeout {
                          description = "Connect, send and read timeout of each " ..
                                        "Redis operation, in milliseconds.",
                          required = true,
                          default = 2000,
                      } },
                      { username = {
                          description = "Username for Redis ACL authentication " ..
                                        "(Redis 6+). Unset: AUTH with the password " ..
                                        "alone, when there is one.",
                          type = "string",
                          required = false,
                          referenceable = true,
                      } },
                      { password = {
                          description = "Password for Redis AUTH. Unset: no AUTH. " ..
                                        "Never logged, nor shown by the status API " ..
                                        "or the metrics.",
                          type = "string",
                          required = false,
                          encrypted = true,
                          referenceable = true,
                          len_min = 0,
                      } },
                      { database = {
                          description = "Redis database number (SELECT).",
                          type = "integer",
                          required = true,
                          default = 0,
                      } },
                      { ssl = {
                          description = "Connect to Redis over TLS.",
                          type = "boolean",
                          required = true,
                          default = false,
                      } },
                      { ssl_verify = {
                          description = "Verify the Redis server's TLS certificate " ..
                                        "(lua_ssl_trusted_certificate holds the CA).",
                          type = "boolean",
                          required = true,
                          default = false,
                      } },
                      { server_name = typedefs.sni {
                          description = "Server name for TLS SNI and certificate " ..
                                        "verification. Unset: host.",
                          required = false,
                      } },
                    },
                  },
                },
                {
                  on_success = {
                    description = "After the last step passes: 'promote' gives the " ..
                                  "canary all the traffic, 'hold' keeps the last " ..
                                  "step's weight until the configuration changes.",
                    type = "string",
                    required = true,
                    default = "promote",
                    one_of = { "promote", "hold" },
                  },
                },
                {
                  max_p95_ratio = {
                    description = "Highest multiple of the stable upstream's p95 " ..
                                  "latency over the same window that the canary's p95 " ..
                                  "may reach, from 1 to 1000 (threshold analysis). " ..
                                  "Unset: not gated on it.",
                    type = "number",
                    required = false,
                    between = { 1, 1000 },
                  },
                },
                {
                  max_p99_ratio = {
                    description = "Highest multiple of the stable upstream's p99 " ..
                                  "latency over the same window that the canary's p99 " ..
                                  "may reach, from 1 to 1000 (threshold analysis); " ..
                                  "the runbook's 2x. Unset: not gated on it.",
                    type = "number",
                    required = false,
                    between = { 1, 1000 },
                  },
                },
                {
                  rollback_p99_ratio = {
                    description = "Multiple of the stable upstream's p99 latency that " ..
                                  "rolls the canary back at once, like " ..
                                  "rollback_error_rate; the runbook's 3x. Unset: no " ..
                                  "such immediate rollback.",
                    type = "number",
                    required = false,
                    between = { 1, 1000 },
                  },
                },
                {
                  max_error_rate_delta = {
                    description = "Percentage points by which the canary's 5xx rate " ..
                                  "may exceed the stable upstream's over the same " ..
                                  "window. With statistical analysis, the window " ..
                                  "fails only when it is significantly more (0 when " ..
                                  "unset).",
                    type = "number",
                    required = false,
                    between = { 0, 100 },
                  },
                },
                {
                  analysis = {
                    description = "How the canary is judged against the stable " ..
                                  "upstream: 'threshold' compares ratios and deltas " ..
                                  "plainly; 'statistical' fails a window only when " ..
                                  "the canary is significantly worse (Mann-Whitney U " ..
                                  "on latency, a two-proportion test on errors).",
                    type = "string",
                    required = true,
                    default = "threshold",
                    one_of = { "threshold", "statistical" },
                  },
                },
                {
                  confidence = {
                    description = "Statistical analysis: confidence the canary must " ..
                                  "be worse with before a window fails, at least 0.5 " ..
                                  "and below 1.",
                    type = "number",
                    required = true,
                    default = 0.98,
                    custom_validator = validate_confidence,
                  },
                },
                {
                  allowed_increase = {
                    description = "Statistical analysis: relative latency increase " ..
                                  "tolerated even when significant (0.25: 25 % " ..
                                  "slower), as Kayenta's allowed increase.",
                    type = "number",
                    required = true,
                    default = 0.25,
                    between = { 0, 100 },
                  },
                },
                {
                  dry_run = {
                    description = "Judge and record every window, but never change " ..
                                  "weights or state: the configured weights apply, and " ..
                                  "decisions say what would have been done.",
                    type = "boolean",
                    required = true,
                    default = false,
                  },
                },
                {
                  notify = {
                    description = "A JSON POST of every decision that changes state " ..
                                  "(step up, pause, promote, rollback, abort, resume), " ..
                                  "sent once per decision, off the request path, " ..
                                  "retried with backoff. Unset: no notifications.",
                    type = "record",
                    required = false,
                    fields = {
                      {
                        url = {
                          description = "Receiver: an http:// or https:// URL; " ..
                                        "user:password in it is sent as Basic " ..
                                        "authentication and never logged.",
                          type = "string",
                          required = true,
                          custom_validator = validate_notify_url,
                        },
                      },
                      {
                        timeout = {
                          description = "Milliseconds to connect, send and read " ..
                                        "the answer, per attempt.",
                          type = "integer",
                          required = true,
                          default = 5000,
                          between = { 1, 60000 },
                        },
                      },
                      {
                        headers = {
                          description = "Extra request headers, each 'Name: value' " ..
                                        "(for example an Authorization header); " ..
                                        "values are never logged.",
                          type = "array",
                          required = true,
                          default = {},
                          len_max = 32,
                          elements = {
                            type = "string",
                            custom_validator = validate_notify_header,
                          },
                        },
                      },
                    },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
}
