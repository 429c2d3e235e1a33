-- Unit: handler.lua against a stubbed `kong` global and the real
-- libcanary.so (CANARY_ROUTER_LIB or package.cpath), on a temp segment.


local function tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

-- A fresh request in the stubbed PDK: headers in, calls recorded.
local function stub_kong(prefix)
  local k = {
    configuration = { prefix = prefix },
    ctx = { plugin = {} },
    logged = {},
    upstream = nil,
    refuse = {},          -- upstream names set_upstream refuses
    req_headers = {},
    upstream_headers = {},
    upstream_cleared = {},
    resp_headers = {},
    status = 200,
    source = "service",
    ip = "10.1.2.3",
    consumer = nil,
  }
  local function logger(level)
    return function(...)
      k.logged[#k.logged + 1] = level .. ": " .. table.concat({ ... }, " ")
    end
  end
  k.log = { err = logger("err"), warn = logger("warn"), notice = logger("notice"),
            info = logger("info"), debug = logger("debug"),
            set_serialize_value = function(key, v) k.serialized = { key, v } end }
  k.request = {
    get_header = function(name) return k.req_headers[name:lower()] end,
  }
  k.client = {
    get_forwarded_ip = function() return k.ip end,
    get_ip = function() return k.ip end,
    get_consumer = function() return k.consumer end,
  }
  k.service = {
    set_upstream = function(name)
      if k.refuse[name] then
        return nil, "could not find an Upstream named '" .. name .. "'"
      end
      k.upstream = name
      return true
    end,
    request = {
      set_header = function(n, v) k.upstream_headers[n] = v end,
      clear_header = function(n) k.upstream_cleared[n:lower()] = true end,
    },
  }
  k.response = {
    set_header = function(n, v) k.resp_headers[n] = v end,
    get_status = function() return k.status end,
    get_source = function() return k.source end,
  }
  k.router = {
    get_route = function() return { id = "r1", name = "ai" } end,
    get_service = function() return { id = "s1", name = "automation-service" } end,
  }
  return k
end

local function config(overrides)
  local c = {
    __plugin_id = "11111111-2222-3333-4444-555555555555",
    upstreams = {
      { name = "automation-service", weight = 90 },
      { name = "automation-service-canary", weight = 10 },
    },
    sticky = { by = "none", header = "X-Canary-User", cookie = "canary_user",
               fallback = {} },
    override = { header = "X-Canary", allow_from = {} },
    trace = { header = "X-Trace-Id", traceparent = true, echo_downstream = true },
    response_header = "X-Canary-Upstream",
  }
  for k, v in pairs(overrides or {}) do c[k] = v end
  return c
end

describe("canary-router handler (unit)", function()
  local saved_kong, handler, runtime, dir

  -- One request through all three phases; returns the stubbed kong.
  local function request(conf, headers, setup)
    local k = stub_kong(dir)
    for name, v in pairs(headers or {}) do k.req_headers[name:lower()] = v end
    if setup then setup(k) end
    _G.kong = k
    handler:access(conf)
    handler:header_filter(conf)
    if handler.log then handler:log(conf) end
    return k
  end

  -- How many of n requests went to the canary.
  local function canary_share(conf, n)
    local canary = 0
    for _ = 1, n do
      if request(conf).upstream == "automation-service-canary" then
        canary = canary + 1
      end
    end
    return canary
  end

  setup(function()
    saved_kong = _G.kong
    dir = tmpdir()
    _G.kong = stub_kong(dir)
    handler = require "kong.plugins.canary-router.handler"
    runtime = require "kong.plugins.canary-router.runtime"
    handler:init_worker()
    assert.truthy(runtime.state.seg, runtime.state.seg_err)
  end)

  teardown(function()
    _G.kong = saved_kong
    os.execute("rm -rf " .. dir)
  end)

  it("creates its segment under the Kong prefix, mode 0600", function()
    local p = io.popen("stat -c %a " .. dir .. "/canary-router.seg")
    assert.equal("600", p:read("*l"))
    p:close()
  end)

  it("accepts configure(nil) when no instance is enabled", function()
    assert.has_no.errors(function() handler:configure(nil) end)
  end)

  it("splits non-sticky traffic exactly by weight over 10 000 requests", function()
    local conf = config()
    handler:configure({ conf })
    local counts = {}
    for _ = 1, 10000 do
      local k = request(conf)
      counts[k.upstream] = (counts[k.upstream] or 0) + 1
    end
    assert.same({ ["automation-service"] = 9000,
                  ["automation-service-canary"] = 1000 }, counts)
  end)

  it("generates a trace id and traceparent, sends them up and echoes the id", function()
    local conf = config()
    local k = request(conf)
    local id = k.upstream_headers["X-Trace-Id"]
    assert.matches("^%x+$", id)
    assert.equal(32, #id)
    assert.equal(id, k.resp_headers["X-Trace-Id"])
    assert.matches("^00%-" .. id .. "%-%x+%-01$", k.upstream_headers.traceparent)
    assert.equal(k.upstream, k.resp_headers["X-Canary-Upstream"])
    assert.same({ "trace_id", id }, k.serialized)
  end)

  it("keeps a valid client trace id and replaces an unsafe or overlong one", function()
    local conf = config()
    local k = request(conf, { ["X-Trace-Id"] = "client-id-1:abc" })
    assert.equal("client-id-1:abc", k.upstream_headers["X-Trace-Id"])
    assert.equal("client-id-1:abc", k.resp_headers["X-Trace-Id"])
    for _, bad in ipairs({ "a\r\nSet-Cookie: x=1", ("x"):rep(129), "sp ace", "\0", "é" }) do
      k = request(conf, { ["X-Trace-Id"] = bad })
      local id = k.upstream_headers["X-Trace-Id"]
      assert.not_equal(bad, id)
      assert.matches("^%x+$", id)
      assert.equal(32, #id)
    end
  end)

  it("takes the trace id from a valid traceparent and leaves it unchanged", function()
    local conf = config()
    local tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    local k = request(conf, { traceparent = tp })
    assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", k.upstream_headers["X-Trace-Id"])
    assert.is_nil(k.upstream_headers.traceparent)  -- forwarded as received
    -- an invalid traceparent is replaced by a generated one
    k = request(conf, { traceparent = "00-00000000000000000000000000000000-00f067aa0ba902b7-01" })
    assert.matches("^00%-%x+%-%x+%-01$", k.upstream_headers.traceparent)
    assert.not_equal("00000000000000000000000000000000", k.upstream_headers["X-Trace-Id"])
  end)

  it("flags generated traceparents as configured and keeps a client's own", function()
    local k = request(config())
    assert.matches("%-01$", k.upstream_headers.traceparent)
    local conf = config({ trace = { header = "X-Trace-Id", traceparent = true,
                                     sampled = false, echo_downstream = true } })
    k = request(conf)
    assert.matches("^00%-%x+%-%x+%-00$", k.upstream_headers.traceparent)
    -- a client's W3C-shaped X-Trace-Id rides in the generated traceparent,
    -- lowercased, with the configured flag
    k = request(conf, { ["X-Trace-Id"] = "4BF92F3577B34DA6A3CE929D0E0E4736" })
    assert.matches("^00%-4bf92f3577b34da6a3ce929d0e0e4736%-%x+%-00$",
                   k.upstream_headers.traceparent)
    -- a valid incoming traceparent keeps its sampling decision (unsampled)
    k = request(config(), {
      traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00" })
    assert.is_nil(k.upstream_headers.traceparent)
  end)

  it("drops tracestate whenever the traceparent sent on is not the client's", function()
    local tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    local k = request(config(), { traceparent = tp, tracestate = "vendor=x" })
    assert.is_nil(k.upstream_cleared.tracestate)
    k = request(config(), { tracestate = "vendor=x" })
    assert.truthy(k.upstream_headers.traceparent)
    assert.is_true(k.upstream_cleared.tracestate)
    k = request(config(), { traceparent = "00-zz-00f067aa0ba902b7-01",
                            tracestate = "vendor=x" })
    assert.is_true(k.upstream_cleared.tracestate)
  end)

  it("counts trace sources per route", function()
    local conf = config()
    local route = runtime.get(conf).route
    local before = runtime.state.seg:read(route).trace
    request(conf)
    request(conf, { ["X-Trace-Id"] = "ok-id" })
    request(conf, { ["X-Trace-Id"] = "bad id" })
    request(conf, { traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" })
    local after = runtime.state.seg:read(route).trace
    assert.equal(before.generated + 1, after.generated)
    assert.equal(before.client + 1, after.client)
    assert.equal(before.rejected + 1, after.rejected)
    assert.equal(before.traceparent + 1, after.traceparent)
  end)

  it("honours the override header: always, never, a name", function()
    local conf = config()
    for _ = 1, 20 do
      assert.equal("automation-service-canary",
                   request(conf, { ["X-Canary"] = "always" }).upstream)
      assert.equal("automation-service",
                   request(conf, { ["X-Canary"] = "never" }).upstream)
      assert.equal("automation-service-canary",
                   request(conf, { ["X-Canary"] = "automation-service-canary" }).upstream)
    end
  end)

  it("ignores and counts overrides from outside allow_from", function()
    local conf = config({
      override = { header = "X-Canary", allow_from = { "192.168.0.0/16", "::1" } },
    })
    handler:configure({ conf })
    local route = runtime.get(conf).route
    local denied = runtime.state.seg:read(route).events.override_denied
    local seen = {}
    for _ = 1, 20 do
      local k = request(conf, { ["X-Canary"] = "always" })  -- from 10.1.2.3
      seen[k.upstream] = true
    end
    assert.truthy(seen["automation-service"])
    assert.equal(denied + 20, runtime.state.seg:read(route).events.override_denied)
    local k = request(conf, { ["X-Canary"] = "always" }, function(s) s.ip = "192.168.7.9" end)
    assert.equal("automation-service-canary", k.upstream)
  end)

  it("sticks a header key to one upstream, and falls back down the chain", function()
    local conf = config({ sticky = { by = "header", header = "X-User", cookie = "u",
                                     fallback = { "cookie" } } })
    handler:configure({ conf })
    for i = 1, 200 do
      local key = "user-" .. i
      local first = request(conf, { ["X-User"] = key }).upstream
      for _ = 1, 3 do
        assert.equal(first, request(conf, { ["X-User"] = key }).upstream)
      end
      -- the same key from the cookie lands on the same upstream
      assert.equal(first, request(conf, { Cookie = "a=b; u=" .. key }).upstream)
    end
  end)

  it("sends traffic of an upstream Kong refuses to the stable one, counted", function()
    local conf = config()
    local route = runtime.get(conf).route
    local before = runtime.state.seg:read(route).events.fallback
    local k
    for _ = 1, 20 do
      k = request(conf, { ["X-Canary"] = "always" }, function(s)
        s.refuse["automation-service-canary"] = true
      end)
      assert.equal("automation-service", k.upstream)
    end
    assert.equal(before + 20, runtime.state.seg:read(route).events.fallback)
    local errs = 0
    for _, l in ipairs(k.logged) do if l:find("refused", 1, true) then errs = errs + 1 end end
    assert.equal(0, errs)  -- logged once, earlier, not on every request
  end)

  it("records latency and status for the upstream that served", function()
    local conf = config({
      __plugin_id = "all-on-the-canary",
      upstreams = { { name = "automation-service", weight = 0 },
                    { name = "automation-service-canary", weight = 100 } },
    })
    handler:configure({ conf })
    local route = runtime.get(conf).route
    local before = runtime.state.seg:summary(route, 2)
    for _ = 1, 10 do
      request(conf, nil, function(s) s.status = 503 end)
    end
    local after = runtime.state.seg:summary(route, 2)
    assert.equal(before.count + 10, after.count)
    assert.equal(before.errors + 10, after.errors)
    assert.equal(before.status["5xx"] + 10, after.status["5xx"])
  end)

  it("does not record responses another plugin produced", function()
    local conf = config()
    handler:configure({ conf })
    local route = runtime.get(conf).route
    local before = runtime.state.seg:summary(route, 1).count +
                   runtime.state.seg:summary(route, 2).count
    request(conf, nil, function(s) s.source = "exit" end)
    assert.equal(before, runtime.state.seg:summary(route, 1).count +
                         runtime.state.seg:summary(route, 2).count)
  end)

  it("fails open to the stable upstream when the segment is unavailable", function()
    local saved_seg = runtime.state.seg
    runtime.state.seg = nil
    local conf = config({ __plugin_id = "no-segment-instance" })
    local ok, k = pcall(request, conf, { ["X-Canary"] = "always" })
    runtime.state.seg = saved_seg
    assert.truthy(ok, k)
    assert.equal("automation-service", k.upstream)
    assert.truthy(k.upstream_headers["X-Trace-Id"])  -- trace ids still work
  end)

  it("never publishes from the request path; on Kong 3.4 instances come from the db", function()
    local conf = config({
      upstreams = { { name = "automation-service", weight = 50 },
                    { name = "automation-service-canary", weight = 50 } },
    })
    local function split()
      local counts = {}
      for _ = 1, 10000 do
        local k = request(conf)
        counts[k.upstream] = (counts[k.upstream] or 0) + 1
      end
      return counts
    end
    handler:configure({ config() })  -- 90/10 published
    -- A config table no configure() announced routes by what is published.
    assert.same({ ["automation-service"] = 9000,
                  ["automation-service-canary"] = 1000 }, split())
    -- Kong 3.4 has no configure phase: sync() reads the plugin entities.
    local entity = {
      id = conf.__plugin_id, name = "canary-router", enabled = true,
      route = nil, service = { id = "s1" }, consumer = nil,
      config = {
        upstreams = conf.upstreams, sticky = conf.sticky, override = conf.override,
        trace = conf.trace, response_header = conf.response_header,
      },
    }
    local k = stub_kong(dir)
    k.version_num = 3004002
    k.db = { plugins = { each = function()
      local done = false
      return function()
        if done then return nil end
        done = true
        return entity
      end
    end } }
    _G.kong = k
    assert.is_true(runtime.sync())
    assert.same({ ["automation-service"] = 5000,
                  ["automation-service-canary"] = 5000 }, split())
  end)

  it("never lets a late worker's configure() republish a config the database replaced", function()
    local function weights_of(conf)
      local counts = {}
      for _ = 1, 1000 do
        local k = request(conf)
        counts[k.upstream] = (counts[k.upstream] or 0) + 1
      end
      return counts["automation-service-canary"] or 0
    end
    local new = config({ upstreams = {
      { name = "automation-service", weight = 70 },
      { name = "automation-service-canary", weight = 30 } } })
    local old = config({ upstreams = {
      { name = "automation-service", weight = 80 },
      { name = "automation-service-canary", weight = 20 } } })
    local k = stub_kong(dir)
    k.db = { plugins = { select = function(_, pk)
      assert.equal(new.__plugin_id, pk.id)
      return { id = pk.id, name = "canary-router", enabled = true, config = new }
    end } }
    _G.kong = k
    handler:configure({ new })
    assert.near(300, weights_of(new), 3)
    -- a worker that rebuilt before the change configures the old table
    _G.kong = k
    handler:configure({ old })
    assert.near(300, weights_of(old), 3)
  end)

  it("publishes a plugin's crud event at once (DB mode, the worker that served it)", function()
    local conf = config({ upstreams = {
      { name = "automation-service", weight = 40 },
      { name = "automation-service-canary", weight = 60 } } })
    runtime.on_plugin_crud({
      operation = "update",
      entity = { id = conf.__plugin_id, name = "canary-router", enabled = true,
                 service = { id = "s1" }, config = conf },
    })
    local canary = 0
    for _ = 1, 1000 do
      if request(config()).upstream == "automation-service-canary" then canary = canary + 1 end
    end
    assert.near(600, canary, 3)
    -- other plugins' events are not ours
    assert.has_no.errors(function()
      runtime.on_plugin_crud({ operation = "update", entity = { id = "x", name = "acl" } })
    end)
  end)

  it("applies a crud event's config on the request path before the iterator catches up", function()
    local conf = config({ __plugin_id = "crud-newer" })
    handler:configure({ conf })
    assert.equal("automation-service", request(conf).resp_headers["X-Canary-Upstream"] and
                 "automation-service" or "none")
    local newer = config({ __plugin_id = "crud-newer", response_header = "X-Served-By" })
    local posted
    local k = stub_kong(dir)
    k.worker_events = { post = function(src, ev, data) posted = { src, ev, data } end }
    _G.kong = k
    runtime.on_plugin_crud({
      operation = "update",
      entity = { id = "crud-newer", name = "canary-router", enabled = true,
                 service = { id = "s1" }, config = newer },
    })
    -- passed on to the node's other workers, once
    assert.same({ "canary-router", "plugin" }, { posted[1], posted[2] })
    assert.equal("canary-router", posted[3].origin)
    -- the phases still get the old config table: the new config applies
    local r = request(conf)
    assert.truthy(r.resp_headers["X-Served-By"])
    assert.is_nil(r.resp_headers["X-Canary-Upstream"])
  end)

  it("lets replaced config tables be collected (no leak per config change)", function()
    -- Kong hands the phases a new config table at every change; the
    -- compiled form must not keep its key alive (LuaJIT's weak tables
    -- have no ephemerons: a value pointing back at its key pins both).
    local seen = setmetatable({}, { __mode = "k" })
    for i = 1, 200 do
      local conf = config({ __plugin_id = ("leak-%04d"):format(i) })
      seen[conf] = true
      runtime.get(conf)
    end
    handler:configure({})
    collectgarbage("collect")
    collectgarbage("collect")
    local kept = 0
    for _ in pairs(seen) do kept = kept + 1 end
    assert.equal(0, kept)
  end)

  -- The engine tries its locks once and never waits (native/src/owner.c);
  -- here the spec holds them, as a worker busy in a claim or a publish.
  it("retries from its tick, never waiting, when another worker holds a lock", function()
    local seglock = require "helpers.seglock"
    local path = dir .. "/canary-router.seg"
    local key = "busy-instance"
    -- A new instance whose claim finds the claim lock held: it fails open
    -- to stable, says nothing, and is installed by the first tick after.
    local held = assert(seglock.hold(path, seglock.CLAIM))
    local conf = config({ __plugin_id = key })
    local k = stub_kong(dir)
    _G.kong = k
    handler:configure({ conf })
    assert.equal(0, canary_share(conf, 200))
    _G.kong = k
    runtime.tick()
    assert.equal(0, canary_share(conf, 200))
    seglock.release(held)
    _G.kong = k
    runtime.tick()
    assert.same({}, k.logged)
    assert.is_true(math.abs(canary_share(conf, 2000) - 200) <= 10)

    -- A changed config whose publish finds the route's lock held: the
    -- route keeps serving the table in place until a tick publishes.
    local seg = runtime.state.seg
    local route = assert(seg:find(key))
    held = assert(seglock.hold(path, seglock.writer(route, seg:info().route_bytes)))
    local conf2 = config({
      __plugin_id = key,
      upstreams = { { name = "automation-service", weight = 50 },
                    { name = "automation-service-canary", weight = 50 } },
    })
    _G.kong = k
    handler:configure({ conf2 })
    assert.is_true(math.abs(canary_share(conf2, 2000) - 200) <= 10)
    _G.kong = k
    runtime.tick()
    assert.is_true(math.abs(canary_share(conf2, 2000) - 200) <= 10)
    seglock.release(held)
    _G.kong = k
    runtime.tick()
    assert.same({}, k.logged)
    assert.is_true(math.abs(canary_share(conf2, 2000) - 1000) <= 10)

    -- An instance removed while the claim lock is held: its route stays
    -- live, silently, until the first tick after the lock is free.
    held = assert(seglock.hold(path, seglock.CLAIM))
    _G.kong = k
    handler:configure({})
    assert.equal(route, seg:find(key))
    _G.kong = k
    runtime.tick()
    assert.equal(route, seg:find(key))
    seglock.release(held)
    _G.kong = k
    runtime.tick()
    assert.is_nil(seg:find(key))
    assert.same({}, k.logged)
  end)

  -- A worker that finds the lock busy must not wait for its next tick
  -- (a second or more) to route and record: the lock is held for
  -- microseconds, so it tries again from a timer milliseconds later.
  it("retries a busy claim from a timer within milliseconds, not at the tick", function()
    local seglock = require "helpers.seglock"
    local path = dir .. "/canary-router.seg"
    local key = "busy-timer-instance"
    local timers = {}
    local fake_ngx = { timer = { at = function(delay, fn)
      timers[#timers + 1] = { delay = delay, fn = fn }
      return true
    end } }
    local held = assert(seglock.hold(path, seglock.CLAIM))
    local conf = config({ __plugin_id = key })
    local k = stub_kong(dir)
    _G.kong = k
    _G.ngx = fake_ngx
    handler:configure({ conf })
    _G.ngx = nil
    assert.equal(1, #timers)
    assert.is_true(timers[1].delay < 0.01)
    assert.equal(0, canary_share(conf, 200))
    -- still held: the retry schedules the next one, a little later
    _G.kong = k
    _G.ngx = fake_ngx
    timers[1].fn(false)
    _G.ngx = nil
    assert.equal(2, #timers)
    assert.is_true(timers[2].delay > timers[1].delay)
    seglock.release(held)
    -- free: the timer installs the instance, no tick needed, no more timers
    _G.kong = k
    _G.ngx = fake_ngx
    timers[2].fn(false)
    _G.ngx = nil
    assert.equal(2, #timers)
    assert.same({}, k.logged)
    assert.is_true(math.abs(canary_share(conf, 2000) - 200) <= 10)
    _G.kong = k
    handler:configure({})
  end)

  it("creates the segment through a master's prepare for the workers' user", function()
    local engine = require "kong.plugins.canary-router.engine"
    local sub = tmpdir()
    local p = io.popen("id -u; id -g")
    local uid, gid = tonumber(p:read("*l")), tonumber(p:read("*l"))
    p:close()
    assert.equal("created", engine.prepare(sub .. "/seg", { uid = uid, gid = gid }))
    assert.equal("attached", engine.prepare(sub .. "/seg", { uid = uid, gid = gid }))
    local seg = assert(engine.open(sub .. "/seg"))
    assert.equal("attached", seg.opened)
    seg:close()
    -- a file open to others is refused, named and left in place
    os.execute("chmod 644 " .. sub .. "/seg")
    local none, err = engine.open(sub .. "/seg")
    assert.is_nil(none)
    assert.matches("^segment file is unsafe: " .. sub .. "/seg has mode 0644", err)
    none, err = engine.prepare(sub .. "/seg", { uid = uid, gid = gid })
    assert.is_nil(none)
    assert.matches("segment file is unsafe", err, 1, true)
    assert.has_error(function() engine.prepare(sub .. "/seg", {}) end,
                     "prepare: opts.uid and opts.gid must be numbers")
    os.execute("rm -rf " .. sub)
  end)

  -- Kong drops nginx_main_user when it says "nobody", and its default
  -- "kong kong" when the system has no kong user (conf_loader); a root
  -- master then runs its workers as nginx's default user, nobody.
  it("prepares the segment for nobody when Kong leaves the user directive out", function()
    local engine = require "kong.plugins.canary-router.engine"
    if engine.euid() ~= 0 then
      pending("needs a root master (run as root, as CI does)")
      return
    end
    local sub = tmpdir()
    local p = io.popen("id -u nobody")
    local nobody = tonumber(p:read("*l"))
    p:close()
    local outer_kong, outer_ngx = _G.kong, _G.ngx
    local logged = {}
    _G.ngx = { ERR = "err", WARN = "warn", get_phase = function() return "init" end,
               log = function(...) logged[#logged + 1] = table.concat({ ... }) end }
    _G.kong = { configuration = { prefix = sub } }
    local saved_env = os.getenv("CANARY_ROUTER_SEGMENT")
    assert.is_nil(saved_env) -- segment_path() then follows the prefix
    runtime.prepare_master()
    _G.kong, _G.ngx = outer_kong, outer_ngx
    assert.same({}, logged)
    p = io.popen("stat -c '%u %a' " .. sub .. "/canary-router.seg")
    local owner = p:read("*l")
    p:close()
    assert.equal(nobody .. " 600", owner)
    os.execute("rm -rf " .. sub)
  end)

  it("reports every path it tried when the library cannot be found", function()
    local fresh = dofile("plugin/engine.lua")
    local saved = package.cpath
    package.cpath = "/nonexistent/?.so;/also/missing/lib?.so"
    local ok, err = fresh.load()
    package.cpath = saved
    assert.is_nil(ok)
    assert.matches("tried: /nonexistent/libcanary.so, /also/missing/liblibcanary.so", err, 1, true)
    ok, err = fresh.load("/nonexistent/explicit.so")
    assert.is_nil(ok)
    assert.equal("libcanary.so not found; tried: /nonexistent/explicit.so", err)
  end)
end)

describe("canary-router header view (unit)", function()
  local headers = require "kong.plugins.canary-router.headers"

  -- Without ngx (and so without lua-nginx-module's header list) the PDK
  -- reads each header; the one-pass reading is in native/tests/
  -- test_headers.c and spec/21-hostile_spec.lua.
  it("reads through the PDK without ngx, the first value of each header", function()
    local spec = headers.compile { [headers.TRACE] = "X-Trace-Id",
                                   [headers.OVERRIDE] = "X-Canary" }
    local outer = _G.kong
    _G.kong = { request = { get_header = function(name)
      if name == "X-Trace-Id" then return { "a", "b" } end
    end } }
    headers.read(spec)
    local id, ov, tp = headers.value(headers.TRACE), headers.value(headers.OVERRIDE),
                       headers.value(headers.TRACEPARENT)
    local has_id, has_ov = headers.has(headers.TRACE), headers.has(headers.OVERRIDE)
    _G.kong = outer
    assert.equal("a", id)
    assert.is_nil(ov)
    assert.is_nil(tp)
    assert.is_true(has_id)
    assert.is_false(has_ov)
  end)
end)
