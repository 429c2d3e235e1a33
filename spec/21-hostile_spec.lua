-- Hostile input, missing upstreams and confidentiality, on the local Kong
-- host (real nginx, 2 workers, real demo upstreams):
--
--   * trace, sticky, override and cookie headers with CR/LF, NUL,
--     non-ASCII bytes, 64 KiB values, repeated headers, sent raw over TCP;
--   * W3C traceparent edge cases;
--   * overrides from outside allow_from;
--   * malformed Admin API bodies;
--   * route and service names that would break the Prometheus format;
--   * an upstream Kong does not know;
--   * segment mode, listener addresses, metric labels.
--
-- Ports 18000/18001/18007 and upstreams on 19001/19002.

local host = require "helpers.host"
local prom = require "helpers.prom"
local summary = require "helpers.summary"
local cjson = require "cjson.safe"
local socket = require "socket"

local STABLE, CANARY = "automation-service", "automation-service-canary"
local GHOST = "ghost-upstream"
local PORTS = { proxy_port = 18000, admin_port = 18001, status_port = 18007 }
local WORKERS = 2

local ID = {
  main = "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a",
  sticky = "4e3d2c1b-0a9f-4e8d-9c7b-6a5f4e3d2c1b",
  ghost = "5f4e3d2c-1b0a-4f9e-8d7c-7b6a5f4e3d2c",
  long = "7b6a5f4e-3d2c-4b1a-8f9e-9d8c7b6a5f4e",
  utf8 = "9d8c7b6a-5f4e-4d3c-8b1a-1f0e9d8c7b6a",
  svc = "0e9d8c7b-6a5f-4e4d-9c2b-2a1f0e9d8c7b",
}

-- Names Kong accepts (typedefs.utf8_name: letters, digits, . - _ ~ and
-- UTF-8; Kong refuses a quote, a backslash or a newline in a name, so those
-- never reach a label: the engine's escaping of them is fuzzed in
-- native/fuzz).  64 x "é" is 128 bytes: one more than a label holds.
local NAMES = {
  long = ("é"):rep(64),
  utf8 = "ütf-8.ok~名前",
  svc = "svc.wéird~ü",
}

local figures = { hostile_inputs = 0, requests_sent = 0, requests_failed = 0, counts_lost = 0 }

local function weights(stable, canary, canary_name)
  return { { name = STABLE, weight = stable }, { name = canary_name or CANARY, weight = canary } }
end

local function plugin(id, config)
  config.response_header = config.response_header or "X-Canary-Upstream"
  return { name = "canary-router", id = id, config = config }
end

local function declarative()
  local function svc(name, routes, plugins)
    return { name = name, url = "http://automation-service", routes = routes, plugins = plugins }
  end
  return {
    _format_version = "3.0",
    services = {
      svc("automation-service", { { name = "ai", paths = { "/ai" } } }, {
        plugin(ID.main, {
          upstreams = weights(90, 10),
          override = { header = "X-Canary", allow_from = { "10.99.0.0/16" },
                       cookie = "canary" },
        }),
      }),
      svc("sticky-svc", { { name = "sticky", paths = { "/sticky" } } }, {
        plugin(ID.sticky, {
          upstreams = weights(50, 50),
          sticky = { by = "header", header = "X-User", cookie = "user",
                     fallback = { "cookie", "ip" } },
          override = { header = "X-Canary", cookie = "canary" },
        }),
      }),
      svc("ghost-svc", { { name = "ghost", paths = { "/ghost" } } }, {
        plugin(ID.ghost, { upstreams = weights(50, 50, GHOST) }),
      }),
      svc("names-svc", {
        { name = NAMES.long, paths = { "/names/long" },
          plugins = { plugin(ID.long, { upstreams = weights(90, 10) }) } },
        { name = NAMES.utf8, paths = { "/names/utf8" },
          plugins = { plugin(ID.utf8, { upstreams = weights(90, 10) }) } },
      }),
      svc(NAMES.svc, { { paths = { "/names/svc" } } }, {
        plugin(ID.svc, { upstreams = weights(90, 10) }),
      }),
    },
    upstreams = {
      { name = STABLE, targets = { { target = "127.0.0.1:19001" } } },
      { name = CANARY, targets = { { target = "127.0.0.1:19002" } } },
    },
  }
end

local sh = host.run

local function live_workers()
  local _, out = sh("pgrep -P " .. assert(host.master_pid()))
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  table.sort(pids)
  return pids
end

local function metrics()
  local status, body = host.status_request("GET", "/canary-router/metrics")
  assert.equal(200, status)
  return body
end

local function assert_promtool(text)
  local ok, out = prom.check(text)
  assert.is_true(ok, "promtool check metrics failed:\n" .. out)
end

local function count_request(status)
  figures.requests_sent = figures.requests_sent + 1
  if not status or status >= 500 then
    figures.requests_failed = figures.requests_failed + 1
  end
end

local function get(path, headers)
  local status, body, h = host.request("GET", path, { headers = headers })
  count_request(status)
  return status, body, h
end

-- n requests; canary count per X-Canary-Upstream, and non-200 answers.
local function split(n, path, headers_fn)
  local canary, failed = 0, 0
  for i = 1, n do
    local status, _, h = get(path, headers_fn and headers_fn(i))
    if status ~= 200 then
      failed = failed + 1
    elseif h["x-canary-upstream"] == CANARY then
      canary = canary + 1
    end
  end
  return canary, failed
end

-- ---- raw HTTP over TCP ------------------------------------------------

local function dechunk(body)
  local out, pos = {}, 1
  while true do
    local size_hex, after = body:match("^(%x+)[^\r\n]*\r\n()", pos)
    if not size_hex then return nil end
    local size = tonumber(size_hex, 16)
    if size == 0 then return table.concat(out) end
    out[#out + 1] = body:sub(after, after + size - 1)
    pos = after + size + 2
  end
end

-- Sends `head_lines` (raw header lines, anything goes) on a fresh
-- connection; returns { status, headers = { name = { values } }, body }
-- of the first response, or nil and what happened when nginx closed the
-- connection without one.
local function raw(path, head_lines)
  local sock = socket.tcp()
  sock:settimeout(5)
  assert(sock:connect("127.0.0.1", PORTS.proxy_port))
  local req = "GET " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n" ..
              table.concat(head_lines, "\r\n") .. "\r\nConnection: close\r\n\r\n"
  sock:send(req)
  local data, err, partial = sock:receive("*a")
  sock:close()
  data = data or partial
  if not data or data == "" then return nil, err end
  local head, body = data:match("^(.-)\r\n\r\n(.*)$")
  if not head then return nil, "no complete response head: " .. data:sub(1, 200) end
  local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    name = name:lower()
    headers[name] = headers[name] or {}
    table.insert(headers[name], value)
  end
  local te = headers["transfer-encoding"]
  if te and te[1]:lower() == "chunked" then
    body = dechunk(body) or body
  else
    local len = tonumber((headers["content-length"] or {})[1] or "")
    if len then body = body:sub(1, len) end
  end
  return { status = status, headers = headers, body = body }
end

local HEX32 = "^" .. ("[0-9a-f]"):rep(32) .. "$"

local function valid_client_id(v)
  return #v >= 1 and #v <= 128 and not v:find("[^%w%.%_%:%-]")
end

-- Statuses nginx itself answers to requests it will not parse; the
-- request then never reached the plugin.
local NGINX_REJECTS = { [400] = true, [413] = true, [414] = true, [431] = true, [494] = true }

-- The response to a hostile request: 200 through the plugin, or nginx's
-- own rejection; never a 5xx; one X-Trace-Id, either 32 lowercase hex or
-- a valid value the client sent as X-Trace-Id (the start of one of the
-- raw values), never anything else; the upstream saw the same ID and a
-- well-formed traceparent.  `sent` lists the raw X-Trace-Id values.
local function assert_safe(res, what, sent)
  assert.is_truthy(res.status, what .. ": no status line")
  assert.is_true(res.status == 200 or NGINX_REJECTS[res.status] == true,
                 what .. ": status " .. tostring(res.status))
  assert.is_nil(res.headers["x-injected"], what .. ": injected header came back")
  assert.is_nil(res.headers["set-cookie"], what .. ": a cookie was set")
  local ids = res.headers["x-trace-id"]
  if res.status ~= 200 then
    assert.is_nil(ids, what .. ": nginx's rejection carries a trace id")
    return nil
  end
  assert.equal(1, ids and #ids, what .. ": X-Trace-Id headers")
  local id = ids[1]
  local ok = id:match(HEX32) ~= nil
  if not ok and valid_client_id(id) then
    for _, v in ipairs(sent or {}) do
      if v:sub(1, #id) == id then ok = true end
    end
  end
  assert.is_true(ok, what .. ": unsafe X-Trace-Id " .. ("%q"):format(id))
  local seen = cjson.decode(res.body)
  assert.is_table(seen, what .. ": upstream echo " .. tostring(res.body))
  assert.equal(id, seen.headers["x-trace-id"], what)
  -- no traceparent (a client id that is not 32 hex cannot seed one), or
  -- a well-formed one: an invalid one is never passed on
  local tp = seen.headers.traceparent
  if tp ~= cjson.null then
    assert.matches("^%x%x%-" .. ("%x"):rep(32) .. "%-" .. ("%x"):rep(16) .. "%-%x%x", tp, 1,
                   false, what .. ": traceparent upstream " .. ("%q"):format(tp))
  end
  return id
end


describe("hostile input", function()
  setup(function()
    local args = {
      config = declarative(), workers = WORKERS,
      upstreams = { { name = STABLE, port = 19001 }, { name = CANARY, port = 19002 } },
    }
    for k, v in pairs(PORTS) do args[k] = v end
    host.start(args)
    -- Label every route (the first request does), so series keep names.
    for _, p in ipairs({ "/ai", "/sticky", "/ghost", "/names/long", "/names/utf8",
                         "/names/svc" }) do
      get(p .. "/warmup")
    end
  end)

  teardown(function()
    host.stop()
    for _, key in ipairs({ "hostile_inputs", "requests_sent", "requests_failed", "counts_lost" }) do
      summary.add(key, figures[key])
    end
  end)

  it("never answers 500 nor reflects an unsafe value for raw hostile headers", function()
    local payloads = {
      { "cr", "abc\rdef" },
      { "lf", "abc\ndef" },
      { "crlf-injection", "abc\r\nX-Injected: evil" },
      { "header-end-smuggle", "abc\r\n\r\nGET /ai/smuggled HTTP/1.1" },
      { "obs-fold", "abc\r\n folded" },
      { "nul", "ab\0cd" },
      { "nul-first", "\0" },
      { "utf8", "caf\xc3\xa9" },
      { "latin1", "caf\xe9" },
      { "invalid-utf8", "\xff\xfe\xfd" },
      { "lone-lead-byte", "\xc3" },
      { "overlong-slash", "\xc0\xaf" },
      { "del", "a\127b" },
      { "escape", "\27[31mred" },
      { "tab", "a\tb" },
      { "space", "a b" },
      { "empty", "" },
      { "quote", "a\"b" },
      { "backslash", "a\\b" },
      { "html", "<script>alert(1)</script>" },
      { "pct-crlf", "%0d%0aSet-Cookie:%20x=1" },
      { "jndi", "${jndi:ldap://x/a}" },
      { "format", "%s%s%s%n%x" },
      { "len-128", ("a"):rep(128) },
      { "len-129", ("a"):rep(129) },
      { "len-8k", ("b"):rep(8000) },
      { "len-64k", ("c"):rep(65536) },
    }
    local headers = { "X-Trace-Id", "traceparent", "X-User", "X-Canary", "Cookie" }
    local workers = live_workers()
    local before = prom.parse(metrics())
    local tried, answered, rejected = 0, 0, 0
    for _, path in ipairs({ "/ai/h", "/sticky/h" }) do
      for _, name in ipairs(headers) do
        for _, p in ipairs(payloads) do
          local value = p[2]
          if name == "Cookie" then value = "canary=" .. value .. "; user=" .. value end
          local what = ("%s %s: %s"):format(path, name, p[1])
          local res, err = raw(path, { name .. ": " .. value })
          tried = tried + 1
          count_request(res and res.status or 400)
          if res then
            local id = assert_safe(res, what, name == "X-Trace-Id" and { value } or {})
            if res.status == 200 then answered = answered + 1 else rejected = rejected + 1 end
            -- exact expectations where the value reached the plugin whole
            if id and name == "X-Trace-Id" then
              if p[1] == "len-128" then
                assert.equal(value, id, what)
              elseif not value:find("[\r\n]") then
                -- (nginx may end the line at a CR or LF and pass what
                -- came before it: assert_safe covers those)
                assert.matches(HEX32, id, what)
              end
            end
          else
            -- nginx may close or reset a connection it refuses before
            -- we read its answer
            assert.is_truthy(tostring(err):find("closed", 1, true)
                             or tostring(err):find("reset", 1, true), what .. ": " .. tostring(err))
            rejected = rejected + 1
          end
        end
      end
    end

    -- repeated headers
    local good = "order-42:abc"
    local tp1 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    local tp2 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    local repeated = {
      { "two good ids", { "X-Trace-Id: " .. good, "X-Trace-Id: other-id" }, { good, "other-id" } },
      -- Kong reads the first of repeated headers: an invalid first one
      -- means a new id, whatever follows
      { "bad then good", { "X-Trace-Id: a b", "X-Trace-Id: " .. good }, "hex" },
      { "good then bad", { "X-Trace-Id: " .. good, "X-Trace-Id: a\127b" }, { good } },
      { "two traceparents", { "traceparent: " .. tp1, "traceparent: " .. tp2 }, {} },
      { "good and bad traceparent", { "traceparent: junk", "traceparent: " .. tp1 }, {} },
      { "always and never", { "X-Canary: always", "X-Canary: never" }, {} },
      { "split cookies", { "Cookie: canary=always", "Cookie: canary=never; user=x" }, {} },
      { "two users", { "X-User: alice", "X-User: bob" }, {} },
    }
    local hundred = {}
    for i = 1, 100 do hundred[i] = "X-Trace-Id: id-" .. i end
    repeated[#repeated + 1] = { "100 ids", hundred, { "id-1" } }
    for _, path in ipairs({ "/ai/r", "/sticky/r" }) do
      for _, r in ipairs(repeated) do
        local res, err = raw(path, r[2])
        tried = tried + 1
        count_request(res and res.status)
        assert.is_truthy(res, r[1] .. ": " .. tostring(err))
        assert.equal(200, res.status, r[1])
        answered = answered + 1
        local sent = {}
        for _, line in ipairs(r[2]) do
          local v = line:match("^X%-Trace%-Id: (.*)$")
          if v then sent[#sent + 1] = v end
        end
        local id = assert_safe(res, path .. " " .. r[1], sent)
        if r[3] == "hex" then
          assert.matches(HEX32, id, r[1])
        elseif #r[3] > 0 then
          local ok = false
          for _, want in ipairs(r[3]) do ok = ok or id == want end
          assert.is_true(ok, r[1] .. ": got " .. id)
        end
        if r[1] == "two traceparents" then
          assert.is_true(id == tp1:sub(4, 35) or id == tp2:sub(4, 35), r[1])
        end
      end
    end
    figures.hostile_inputs = figures.hostile_inputs + tried
    print(("\n  raw hostile requests: %d sent, %d answered 200, %d refused by nginx")
          :format(tried, answered, rejected))

    -- no worker crashed, nothing was recorded as a 5xx, no Lua error
    assert.same(workers, live_workers())
    local after = prom.parse(prom.settled(metrics))
    assert.equal(0, prom.sum(after, "canary_requests_total", { status = "5xx" })
                    - prom.sum(before, "canary_requests_total", { status = "5xx" }))
    assert.same({}, prom.went_back(before, after))
    assert.same({}, host.lua_errors())
    assert.is_true(answered > 100, "too few requests reached the plugin: " .. answered)
  end)

  -- The headers the plugin reads come from one pass over the request's
  -- header list (plugin/headers.lua): Kong's reading of a header is the
  -- first line of that name in any case, wherever it stands.
  it("reads the first of repeated headers in any case, after more than 100 others", function()
    local filler = {}
    for i = 1, 120 do filler[i] = ("X-Filler-%03d: v%d"):format(i, i) end
    local function with_filler(lines)
      local all = {}
      for i, l in ipairs(filler) do all[i] = l end
      for _, l in ipairs(lines) do all[#all + 1] = l end
      return all
    end
    local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    local cases = {
      { "first of two, upper case", { "X-CANARY: always", "x-canary: never" }, CANARY },
      { "first of two, lower case", { "x-canary: never", "X-Canary: always" }, STABLE },
      { "after 120 headers", with_filler({ "X-Canary: always" }), CANARY },
      { "first after 120 headers", with_filler({ "x-CANARY: never", "X-Canary: always" }), STABLE },
    }
    for _, case in ipairs(cases) do
      for _ = 1, 10 do
        local res = assert(raw("/sticky/h", case[2]))
        assert.equal(200, res.status, case[1])
        assert.same({ case[3] }, res.headers["x-canary-upstream"], case[1])
      end
    end
    local res = assert(raw("/sticky/h",
                           with_filler({ "X-Trace-Id: first-id", "x-trace-id: second-id" })))
    assert.same({ "first-id" }, res.headers["x-trace-id"])
    res = assert(raw("/sticky/h", with_filler({ "TraceParent: " .. tp, "tracestate: v=1" })))
    assert.same({ tp:sub(4, 35) }, res.headers["x-trace-id"])
    -- (the demo upstream echoes the first 100 headers: no filler here)
    res = assert(raw("/sticky/h", { "X-Trace-Id: first-id", "x-trace-id: second-id" }))
    assert.equal("first-id", cjson.decode(res.body).headers["x-trace-id"])
    res = assert(raw("/sticky/h", { "TraceParent: " .. tp, "tracestate: v=1" }))
    assert.equal(tp, cjson.decode(res.body).headers.traceparent)
    assert.same({}, host.lua_errors())
  end)

  it("parses traceparent as strictly as W3C Trace Context says", function()
    local id = "4bf92f3577b34da6a3ce929d0e0e4736"
    local parent = "00f067aa0ba902b7"
    local cases = {
      -- valid: the trace-id is kept, the header forwarded unchanged
      { "version 00", "00-" .. id .. "-" .. parent .. "-01", true },
      { "flags 00", "00-" .. id .. "-" .. parent .. "-00", true },
      { "unknown flags", "00-" .. id .. "-" .. parent .. "-ff", true },
      { "future version", "cc-" .. id .. "-" .. parent .. "-01", true },
      { "future version with suffix",
        "cc-" .. id .. "-" .. parent .. "-01-what-the-future-will-be-like", true },
      -- invalid: a new trace id, the bad header replaced upstream
      { "uppercase trace-id", "00-" .. id:upper() .. "-" .. parent .. "-01", false },
      { "uppercase parent-id", "00-" .. id .. "-" .. parent:upper() .. "-01", false },
      { "uppercase version", "0A-" .. id .. "-" .. parent .. "-01", false },
      { "version ff", "ff-" .. id .. "-" .. parent .. "-01", false },
      { "all-zero trace-id", "00-" .. ("0"):rep(32) .. "-" .. parent .. "-01", false },
      { "all-zero parent-id", "00-" .. id .. "-" .. ("0"):rep(16) .. "-01", false },
      { "short trace-id", "00-" .. id:sub(2) .. "-" .. parent .. "-01", false },
      { "long trace-id", "00-" .. id .. "a-" .. parent .. "-01", false },
      { "short parent-id", "00-" .. id .. "-" .. parent:sub(2) .. "-01", false },
      { "no flags", "00-" .. id .. "-" .. parent, false },
      { "one-digit flags", "00-" .. id .. "-" .. parent .. "-1", false },
      { "version 00 with suffix", "00-" .. id .. "-" .. parent .. "-01-extra", false },
      { "version 00 with trailing dash", "00-" .. id .. "-" .. parent .. "-01-", false },
      { "future version, suffix without dash",
        "cc-" .. id .. "-" .. parent .. "-01x", false },
      { "non-hex trace-id", "00-" .. id:sub(1, 31) .. "g-" .. parent .. "-01", false },
      { "underscores", "00_" .. id .. "_" .. parent .. "_01", false },
      { "one-digit version", "0-" .. id .. "-" .. parent .. "-01", false },
      { "empty", "", false },
      { "garbage", "hello world", false },
    }
    local before = prom.parse(metrics())
    local valid, invalid = 0, 0
    for _, c in ipairs(cases) do
      local status, body, h = get("/ai/tp", { traceparent = c[2] })
      assert.equal(200, status, c[1])
      local got = h["x-trace-id"]
      local seen = cjson.decode(body).headers
      assert.equal(got, seen["x-trace-id"], c[1])
      if c[3] then
        valid = valid + 1
        assert.equal(id, got, c[1])
        assert.equal(c[2], seen.traceparent, c[1])
      else
        invalid = invalid + 1
        assert.matches(HEX32, got, c[1])
        assert.not_equal(id, got, c[1])
        assert.matches("^00%-" .. got .. "%-" .. ("%x"):rep(16) .. "%-%x%x$", seen.traceparent,
                       c[1])
      end
    end
    figures.hostile_inputs = figures.hostile_inputs + #cases
    local after = prom.parse(prom.settled(metrics))
    local route = { route = "automation-service" }
    local function delta(source)
      route.source = source
      return prom.value(after, "canary_trace_ids_total", route)
             - prom.value(before, "canary_trace_ids_total", route)
    end
    assert.equal(valid, delta("traceparent"))
    assert.equal(invalid, delta("rejected"))

    -- an invalid traceparent next to a valid client id that cannot seed a
    -- new one: the id is kept, the bad traceparent is replaced by a fresh,
    -- valid one (W3C: act as if it were absent; DESIGN: absent -> inject)
    for _, bad in ipairs({ "00-" .. id:upper() .. "-" .. parent .. "-01", "ff-junk",
                           "00-" .. ("0"):rep(32) .. "-" .. parent .. "-01" }) do
      local status, body, h = get("/ai/tp", { traceparent = bad, ["X-Trace-Id"] = "order-42" })
      assert.equal(200, status)
      assert.equal("order-42", h["x-trace-id"])
      local seen = cjson.decode(body).headers
      assert.equal("order-42", seen["x-trace-id"])
      assert.not_equal(bad, seen.traceparent, "invalid traceparent " .. bad .. " passed on")
      assert.matches("^00%-%x+%-%x+%-01$", seen.traceparent)
      assert.equal(55, #seen.traceparent)
      figures.hostile_inputs = figures.hostile_inputs + 1
    end
  end)

  it("ignores and counts overrides from outside allow_from, spoofed or not", function()
    local before = prom.parse(metrics())
    local n = 1000
    local values = { "always", "never", CANARY, STABLE }
    local canary, failed = split(n, "/ai/override", function(i)
      local h = { ["X-Canary"] = values[i % #values + 1] }
      if i % 5 == 0 then h["X-Forwarded-For"] = "10.99.0.7" end
      if i % 7 == 0 then h["X-Real-IP"] = "10.99.0.8" end
      if i % 3 == 0 then h.Cookie = "canary=always" end
      return h
    end)
    figures.hostile_inputs = figures.hostile_inputs + n
    assert.equal(0, failed)
    -- the normal 90/10 split, as if no override had been sent
    assert.is_true(math.abs(canary - 100) <= 10, "canary got " .. canary)
    local after = prom.parse(prom.settled(metrics))
    local l = { route = "automation-service", event = "override_denied" }
    assert.equal(n, prom.value(after, "canary_events_total", l)
                    - prom.value(before, "canary_events_total", l))
    l.event = "override"
    assert.equal(0, prom.value(after, "canary_events_total", l)
                    - prom.value(before, "canary_events_total", l))
  end)

  it("answers bad Admin API bodies with 400 and a precise message, config untouched", function()
    local path = "/plugins/" .. ID.main
    local _, plugin_before = host.admin("GET", path)
    local _, status_before = host.admin("GET", "/canary-router/status")
    local generation
    for _, d in ipairs(status_before.data) do
      if d.plugin_id == ID.main then generation = d.generation end
    end
    assert.is_number(generation)

    local function config(c) return cjson.encode({ config = c }) end
    local many = {}
    for i = 1, 10000 do many[i] = { name = "u" .. i, weight = 0.01 } end
    -- Bodies that are not a JSON object, and other requests that Kong's
    -- Admin API refuses before the plugin's schema sees them: refused (4xx,
    -- or Kong's own 500 for a JSON scalar), in Kong's words, nothing changed.
    local not_object = false
    local cases = {
      { "malformed JSON", "{", 400, "Cannot parse JSON body" },
      { "truncated JSON", '{"config": {"upstreams": [', 400, "Cannot parse JSON body" },
      { "trailing garbage", '{"config": {}} x', 400, "Cannot parse JSON body" },
      { "a JSON array", "[1, 2]", not_object, not_object },
      { "an empty array", "[]", not_object, not_object },
      { "null", "null", not_object, not_object },
      { "a string", '"config"', not_object, not_object },
      { "a number", "42", not_object, not_object },
      { "100 000 nested arrays", ("["):rep(100000) .. ("]"):rep(100000), 400,
        "Cannot parse JSON body" },
      { "config a string", '{"config": "x"}', 400, "schema violation (config: expected a record)" },
      { "config an array", '{"config": []}', false, false },
      { "config null", '{"config": null}', 400,
        "schema violation (config: required field missing)" },
      { "upstreams a string", config({ upstreams = "x" }), 400,
        "schema violation (config.upstreams: expected an array)" },
      { "upstreams an object", config({ upstreams = { a = 1 } }), 400,
        "schema violation (config.upstreams: expected an array)" },
      { "wrong element types", '{"config": {"upstreams": [{"name": 5, "weight": "90"}]}}', 400,
        { "schema violation (config.upstreams: ", 'name = "expected a string"',
          'weight = "expected a number"' } },
      { "weights sum to 110", config({ upstreams = weights(90, 20) }), 400,
        "schema violation (config.upstreams: weights must sum to 100 (got 110))" },
      { "weights sum to 99.99", config({ upstreams = weights(89.99, 10) }), 400,
        "schema violation (config.upstreams: weights must sum to 100 (got 99.99))" },
      { "weights sum to 0", config({ upstreams = weights(0, 0) }), 400,
        "schema violation (config.upstreams: weights must sum to 100 (got 0))" },
      { "three decimals", config({ upstreams = weights(89.995, 10.005) }), 400,
        { "schema violation (config.upstreams: ", "at most 2 decimals allowed (got 89.995)" } },
      { "infinite weight", '{"config": {"upstreams": [{"name": "a", "weight": 1e999}]}}', 400,
        { "schema violation (config.upstreams: ", "value should be between 0 and 100" } },
      { "negative weight", config({ upstreams = weights(110, -10) }), 400,
        { "schema violation (config.upstreams: ", "value should be between 0 and 100" } },
      { "10 000 upstreams", config({ upstreams = many }), 400,
        "schema violation (config.upstreams: length must be at most 16)" },
      { "no upstreams", '{"config": {"upstreams": []}}', 400,
        "schema violation (config.upstreams: length must be at least 1)" },
      { "duplicate names", config({ upstreams = { { name = STABLE, weight = 50 },
                                                  { name = STABLE, weight = 50 } } }), 400,
        "schema violation (config.upstreams: duplicate upstream name 'automation-service')" },
      { "name too long", config({ upstreams = weights(90, 10, ("x"):rep(100000)) }), 400,
        { "schema violation (config.upstreams: ", "length must be at most 63" } },
      { "name with a quote", config({ upstreams = weights(90, 10, 'a"b') }), 400,
        { "schema violation (config.upstreams: ",
          "invalid upstream name 'a\\\"b': allowed characters are A-Z, a-z, 0-9, '.', '_', " ..
          "and '-'" } },
      { "unknown config field", config({ bogus = 1 }), 400,
        "schema violation (config.bogus: unknown field)" },
      { "unknown top-level field", '{"bogus": 1}', 400, "schema violation (bogus: unknown field)" },
      { "unknown upstream field", config({ upstreams = { { name = STABLE, weight = 100,
                                                             x = { 1, 2, 3 } } } }), 400,
        { "schema violation (config.upstreams: ", 'x = "unknown field"' } },
      { "bad sticky source", config({ sticky = { by = "moon" } }), 400,
        { "schema violation (config.sticky: ",
          'by = "expected one of: none, header, cookie, consumer, ip"' } },
      { "bad CIDR", config({ override = { allow_from = { "10.0.0.0/33" } } }), 400,
        { "schema violation (config.override: ", "invalid ip or cidr range: '10.0.0.0/33'" } },
      { "bad header name", config({ trace = { header = "X-Trace\r\nX-Evil" } }), 400,
        { "schema violation (config.trace: ", "bad header name" } },
      { "canary is the stable", config({ progression = { canary = STABLE } }), 400,
        "schema violation (config: progression.canary: 'automation-service' is the stable " ..
        "upstream (the first of upstreams) and cannot be the canary)" },
      { "enabled a string", '{"enabled": "yes"}', 400,
        "schema violation (enabled: expected a boolean)" },
      { "another id", '{"id": "00000000-0000-4000-8000-000000000000"}', false, false },
      { "text/plain", '{"config": {}}', 415, false, "text/plain" },
    }
    for _, c in ipairs(cases) do
      local status, body = host.request("PATCH", path, {
        body = c[2], headers = { ["Content-Type"] = c[5] or "application/json" },
      }, PORTS.admin_port)
      local json = cjson.decode(body or "")
      -- (false: Kong's own answer, whatever it is; DB mode takes an empty
      -- PATCH as a no-op; what must hold is checked below: nothing changed)
      if c[3] then
        assert.equal(c[3], status, c[1] .. ": " .. tostring(body):sub(1, 300))
      end
      if c[4] == false then  -- luacheck: ignore 542
        -- Kong's own refusal: any words
      elseif type(c[4]) == "table" then
        assert.is_table(json, c[1])
        for _, part in ipairs(c[4]) do
          assert.matches(part, json.message, 1, true, c[1] .. ": " .. json.message)
        end
      else
        assert.is_table(json, c[1])
        assert.equal(c[4], json.message, c[1])
      end
    end

    -- the other write endpoints: POST /config and the plugin's actions
    local others = {
      { "POST", "/config", "{", 400, "Cannot parse JSON body" },
      { "POST", "/config", ("{"):rep(100000), 400, "Cannot parse JSON body" },
      { "POST", "/config", "[1]", false, false },
      { "POST", "/canary-router/" .. ID.main .. "/promote", "{", 400, "Cannot parse JSON body" },
      -- (an action takes no body: Kong hands this one to the action)
      { "POST", "/canary-router/" .. ID.main .. "/promote", "[1]", false, false },
      -- (Kong hands path parameters over as sent, percent-encoded or not)
      { "POST", "/canary-router/" .. ID.main .. "/%0d%0a", "{}", 404,
        { "unknown action '", "'; expected promote, pause, resume or abort" } },
      { "POST", "/canary-router/%22%3E/pause", "{}", 404,
        { "no canary-router instance with id '" } },
    }
    for _, c in ipairs(others) do
      local status, body = host.request(c[1], c[2], {
        body = c[3], headers = { ["Content-Type"] = "application/json" },
      }, PORTS.admin_port)
      local json = cjson.decode(body or "")
      local what = c[2] .. " " .. c[3]:sub(1, 20) .. ": " .. tostring(status) .. " "
                   .. tostring(body)
      if c[4] then
        assert.equal(c[4], status, what)
        if type(c[5]) == "table" then
          for _, part in ipairs(c[5]) do assert.matches(part, json.message, 1, true, what) end
        else
          assert.equal(c[5], json.message, what)
        end
      end
    end
    figures.hostile_inputs = figures.hostile_inputs + #cases + #others

    -- nothing changed: the stored plugin, the published generation, the split
    local _, plugin_after = host.admin("GET", path)
    assert.same(plugin_before.config, plugin_after.config)
    assert.equal(plugin_before.enabled, plugin_after.enabled)
    local _, status_after = host.admin("GET", "/canary-router/status")
    for _, d in ipairs(status_after.data) do
      if d.plugin_id == ID.main then assert.equal(generation, d.generation) end
    end
    local canary, failed = split(1000, "/ai/untouched")
    assert.equal(0, failed)
    assert.is_true(math.abs(canary - 100) <= 10, "canary got " .. canary)
    assert.same({}, host.lua_errors())
  end)

  it("labels UTF-8 route and service names in valid Prometheus text", function()
    for _ = 1, 20 do
      for _, p in ipairs({ "long", "utf8", "svc" }) do
        local status = get("/names/" .. p .. "/x")
        assert.equal(200, status)
      end
    end
    local text = metrics()
    assert_promtool(text)
    local labels = {}
    for series in pairs(prom.parse(text)) do
      local name, l = prom.labels_of(series)
      if name == "canary_requests_total" and l.upstream == STABLE and l.status == "2xx" then
        labels[l.route] = true
      end
    end
    assert.is_true(labels[NAMES.utf8], "no series for the UTF-8 route name")
    assert.is_true(labels[NAMES.svc], "no series for the UTF-8 service name")
    -- the 128-byte name is cut to what a label holds, on a character boundary
    local long
    for l in pairs(labels) do
      if l:sub(1, 2) == "é" and NAMES.long:sub(1, #l) == l then long = l end
    end
    assert.is_truthy(long, "no series for the long UTF-8 route name")
    assert.is_true(#long <= 127 and #long >= 120, "label of " .. #long .. " bytes")
    assert.equal(0, #long % 2)
    -- every line is one sample: no label value broke out of its quotes
    for line in text:gmatch("[^\n]+") do
      if line:sub(1, 1) ~= "#" and line ~= "canary_engine_up 1" then
        assert.matches("^canary_[%w_]+{.*} %S+$", line)
      end
    end
  end)

  it("sends the traffic of an upstream Kong does not know to the stable one", function()
    local stable_before = host.upstream_stats(STABLE).requests
    local canary_before = host.upstream_stats(CANARY).requests
    local before = prom.parse(metrics())
    local n = 400
    for _ = 1, n do
      local status, _, h = get("/ghost/x")
      assert.equal(200, status)
      assert.equal(STABLE, h["x-canary-upstream"])
    end
    assert.equal(n, host.upstream_stats(STABLE).requests - stable_before)
    assert.equal(0, host.upstream_stats(CANARY).requests - canary_before)
    local after = prom.parse(prom.settled(metrics))
    local l = { route = "ghost-svc", event = "fallback" }
    local fallbacks = prom.value(after, "canary_events_total", l)
                      - prom.value(before, "canary_events_total", l)
    -- the ghost's 50 % of the picks, each one counted
    assert.is_true(math.abs(fallbacks - n / 2) <= 4, "fallbacks: " .. fallbacks)
    local counted = prom.sum(after, "canary_requests_total", { route = "ghost-svc",
                                                                upstream = STABLE })
                    - prom.sum(before, "canary_requests_total", { route = "ghost-svc",
                                                                   upstream = STABLE })
    figures.counts_lost = figures.counts_lost + math.max(0, n - counted)
    assert.equal(n, counted)
    assert.equal(0, prom.sum(after, "canary_requests_total", { route = "ghost-svc",
                                                               upstream = GHOST }))
    -- logged loudly, once per worker at most
    local lines = host.log_lines("upstream '" .. GHOST .. "' refused")
    assert.is_true(#lines >= 1 and #lines <= WORKERS, #lines .. " log lines")
    local seen = {}
    for _, line in ipairs(lines) do
      assert.equal("error", line.level, line.line)
      assert.matches("could not find an Upstream named '" .. GHOST .. "'", line.line, 1, true)
      assert.is_nil(seen[line.pid], "logged twice by worker " .. line.pid)
      seen[line.pid] = true
    end
    -- more of the same adds no log line in a worker that logged it (a
    -- worker that had no ghost pick yet may log its first)
    for _ = 1, 100 do assert.equal(200, (get("/ghost/y"))) end
    local again = host.log_lines("upstream '" .. GHOST .. "' refused")
    assert.is_true(#again <= WORKERS, #again .. " log lines")
    local per_pid = {}
    for _, line in ipairs(again) do
      assert.is_nil(per_pid[line.pid], "logged twice by worker " .. line.pid)
      per_pid[line.pid] = true
    end
    assert.same({}, host.lua_errors())
  end)

  describe("confidentiality", function()
    it("creates the segment file mode 0600, owned by the workers' user", function()
      local _, mode = sh("stat -c '%a %u' " .. host.segment_path())
      -- the effective uid of a worker, whoever runs the gateway
      local f = assert(io.open("/proc/" .. host.worker_pids()[1] .. "/status"))
      local euid = f:read("*a"):match("\nUid:%s+%d+%s+(%d+)")
      f:close()
      assert.truthy(euid)
      assert.equal("600 " .. euid, (mode:gsub("%s+$", "")))
    end)

    it("binds the Admin API and status listener to loopback by default", function()
      -- what `make run` / ctl.sh start would run, rendered without starting
      local _, dir = sh("mktemp -d /tmp/canary_hostile.XXXXXX")
      dir = dir:gsub("%s+$", "")
      local ok, out = sh("bash " .. host.root() .. "/kong/host/ctl.sh render --prefix " .. dir)
      assert.is_true(ok, out)
      local f = assert(io.open(dir .. "/conf/nginx.conf"))
      local conf = f:read("*a")
      f:close()
      sh("rm -rf " .. dir)
      local listens = {}
      for addr in conf:gmatch("\n%s*listen%s+([^;%s]+)") do listens[#listens + 1] = addr end
      assert.same({ "127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8007" }, listens)
      -- the kong.conf shipped for real Kong
      f = assert(io.open(host.root() .. "/kong/kong.conf"))
      local kconf = f:read("*a")
      f:close()
      assert.matches("\nadmin_listen = 127%.0%.0%.1:8001\n", kconf)
      assert.matches("\nstatus_listen = 127%.0%.0%.1:8007\n", kconf)
      -- and the running gateway listens on loopback only
      local pids = { host.master_pid() }
      for _, p in ipairs(live_workers()) do pids[#pids + 1] = p end
      local _, ss = sh("ss -ltnpH")
      local mine = 0
      for line in ss:gmatch("[^\n]+") do
        for _, pid in ipairs(pids) do
          if line:find("pid=" .. pid .. ",", 1, true) then
            mine = mine + 1
            local addr = line:match("^%S+%s+%d+%s+%d+%s+(%S+)")
            assert.matches("^127%.0%.0%.1:", addr, line)
            break
          end
        end
      end
      assert.is_true(mine >= 3, "no listener of the gateway found in:\n" .. ss)
    end)

    it("never turns a client-controlled value into a metric label", function()
      local tokens = {}
      local function token()
        local t = ("zq%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
        tokens[#tokens + 1] = t
        return t
      end
      local ids = {}
      for _ = 1, 50 do
        local tp_id = ("%08x"):rep(4):format(math.random(1, 0x7fffffff),
          math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
        ids[#ids + 1] = tp_id
        for _, path in ipairs({ "/ai/" .. token() .. "?q=" .. token(),
                                "/sticky/" .. token() .. "?u=" .. token() }) do
          local status = get(path, {
            ["X-Trace-Id"] = token(),
            ["X-User"] = token(),
            ["X-Canary"] = token(),
            Cookie = "canary=" .. token() .. "; user=" .. token(),
            ["User-Agent"] = token(),
            Host = token() .. ".example",
          })
          assert.equal(200, status)
          local status2 = get(path, { traceparent = "00-" .. tp_id .. "-00f067aa0ba902b7-01" })
          assert.equal(200, status2)
        end
      end
      local text = metrics()
      for _, t in ipairs(tokens) do
        assert.is_nil(text:find(t, 1, true), "client value " .. t .. " in the metrics")
      end
      for _, t in ipairs(ids) do
        assert.is_nil(text:find(t, 1, true), "client trace id " .. t .. " in the metrics")
      end
      -- every label value is one the operator or the code chose
      local allowed = {
        [STABLE] = true, [CANARY] = true, [GHOST] = true,
        ["automation-service"] = true, ["sticky-svc"] = true, ["ghost-svc"] = true,
      }
      for _, n in pairs(NAMES) do allowed[n] = true end
      for _, v in ipairs({ "1xx", "2xx", "3xx", "4xx", "5xx", "client", "traceparent",
                           "generated", "rejected", "override", "override_denied", "fallback",
                           "engine_error", "none", "running", "paused", "promoted",
                           "rolled_back", "pass", "fail", "inconclusive", "0.5", "0.95",
                           "0.99", "+Inf", "routes", "upstreams", "progressions", "live",
                           "retired", "free" }) do
        allowed[v] = true
      end
      for v in pairs(prom.label_values(text)) do
        local ok = allowed[v] or v:match("^[%d%.]+$") ~= nil
                   or (#v >= 120 and NAMES.long:sub(1, #v) == v)
        assert.is_true(ok, "unexpected label value " .. ("%q"):format(v))
      end
    end)
  end)
end)
