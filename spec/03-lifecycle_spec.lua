-- Lifecycle of a long-running gateway, through handler.lua and
-- runtime.lua against a stubbed `kong` global and the real libcanary.so:
-- overrides only when configured and never judged, counts that follow the
-- upstream's name across a publish in mid-request, instances that come
-- and go over a segment's life.  Each test runs on a segment of its own,
-- swapped into the runtime and restored afterwards.

local engine = require "kong.plugins.canary-router.engine"

local STABLE, CANARY = "automation-service", "automation-service-canary"

local function tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

-- The PDK calls the handler makes, recorded.
local function stub_kong()
  local k = {
    configuration = { prefix = "/nonexistent" },
    ctx = { plugin = {} },
    logged = {},
    req_headers = {},
    resp_headers = {},
    status = 200,
    ip = "10.1.2.3",
  }
  local function logger(level)
    return function(...)
      k.logged[#k.logged + 1] = level .. ": " .. table.concat({ ... }, " ")
    end
  end
  k.log = { err = logger("err"), warn = logger("warn"), notice = logger("notice"),
            info = logger("info"), debug = logger("debug") }
  k.request = { get_header = function(name) return k.req_headers[name:lower()] end }
  k.client = {
    get_forwarded_ip = function() return k.ip end,
    get_ip = function() return k.ip end,
    get_consumer = function() return nil end,
  }
  k.service = {
    set_upstream = function(name) k.upstream = name return true end,
    request = { set_header = function() end },
  }
  k.response = {
    set_header = function(n, v) k.resp_headers[n] = v end,
    get_status = function() return k.status end,
    get_source = function() return "service" end,
  }
  -- The Kong route an instance serves is named after it, so each
  -- instance's series carry their own route label.
  k.router = {
    get_route = function() return { id = "r1", name = k.route_name } end,
    get_service = function() return { id = "s1", name = "automation-service" } end,
  }
  return k
end

local function config(id, extra)
  local c = {
    __plugin_id = id,
    upstreams = { { name = STABLE, weight = 90 }, { name = CANARY, weight = 10 } },
    sticky = { by = "none", header = "X-Canary-User", cookie = "canary_user",
               fallback = {} },
    override = { allow_from = {} },
    trace = { header = "X-Trace-Id", traceparent = true, echo_downstream = true },
    response_header = "X-Canary-Upstream",
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

describe("canary-router over a gateway's life", function()
  local saved_kong, saved_seg, handler, runtime, dir, seg

  -- One request through the phases, answered with `status`; `between`
  -- runs after access.
  local function request(conf, headers, status, between)
    local k = stub_kong()
    for name, v in pairs(headers or {}) do k.req_headers[name:lower()] = v end
    k.route_name = conf.__plugin_id
    k.status = status or 200
    _G.kong = k
    handler:access(conf)
    if between then between() end
    handler:header_filter(conf)
    if handler.log then handler:log(conf) end
    return k
  end

  -- Counted (judged) and forced requests of `name` on the instance.
  local function counts(conf, name)
    local c = runtime.get(conf)
    local v = assert(seg:read(c.route))
    for i, n in ipairs(v.names) do
      if n == name then return seg:summary(c.route, i).count, v.forced[i].count end
    end
    error("no upstream " .. name)
  end

  setup(function()
    saved_kong = _G.kong
    _G.kong = stub_kong()
    handler = require "kong.plugins.canary-router.handler"
    runtime = require "kong.plugins.canary-router.runtime"
    assert(engine.load())
    runtime.state.lib_ok = true
    saved_seg = runtime.state.seg
    dir = tmpdir()
  end)

  teardown(function()
    runtime.state.seg = saved_seg
    _G.kong = saved_kong
    os.execute("rm -rf " .. dir)
  end)

  local n_segments = 0
  before_each(function()
    n_segments = n_segments + 1
    -- 4 instances, 8 upstream slots, retired slots reused after 1 s.
    seg = assert(engine.open(dir .. "/life-" .. n_segments .. ".seg", {
      max_routes = 4, max_upstreams = 16, max_stat_slots = 8, retire_grace_s = 1,
    }))
    runtime.state.seg = seg
    runtime.sweep({}) -- forget the instances of other tests
  end)

  after_each(function()
    runtime.state.seg = saved_seg
  end)

  it("ignores the override header unless one is configured", function()
    local conf = config("no-override", {
      upstreams = { { name = STABLE, weight = 100 }, { name = CANARY, weight = 0 } },
    })
    handler:configure({ conf })
    for _ = 1, 20 do
      assert.equal(STABLE, request(conf, { ["X-Canary"] = "always" }).upstream)
    end
    local on = config("with-override", {
      upstreams = { { name = STABLE, weight = 100 }, { name = CANARY, weight = 0 } },
      override = { header = "X-Canary", allow_from = {} },
    })
    handler:configure({ on })
    assert.equal(CANARY, request(on, { ["X-Canary"] = "always" }).upstream)
  end)

  it("counts forced requests apart, where no gate can see them", function()
    local conf = config("forced", { override = { header = "X-Canary", allow_from = {} } })
    handler:configure({ conf })
    local judged0, forced0 = counts(conf, CANARY)
    for _ = 1, 30 do
      assert.equal(CANARY, request(conf, { ["X-Canary"] = "always" }, 503).upstream)
    end
    local judged, forced = counts(conf, CANARY)
    assert.equal(judged0, judged)
    assert.equal(forced0 + 30, forced)
    local text = assert(seg:render())
    assert.matches('canary_forced_requests_total{route="forced",upstream="' .. CANARY ..
                   '",status="5xx"} 30', text, 1, true)
    assert.matches('canary_requests_total{route="forced",upstream="' .. CANARY ..
                   '",status="5xx"} 0', text, 1, true)
    local status = require "kong.plugins.canary-router.status"
    local st = status.instance(runtime.get(conf))
    assert.equal(30, st.upstreams[2].forced["5xx"])
    assert.equal(judged, st.upstreams[2].requests)
  end)

  it("counts a request for the upstream that served it, across a publish in mid-request", function()
    local a = config("reordered", {
      upstreams = { { name = STABLE, weight = 100 }, { name = CANARY, weight = 0 } },
    })
    local b = config("reordered", {
      upstreams = { { name = CANARY, weight = 0 }, { name = STABLE, weight = 100 } },
    })
    handler:configure({ a })
    local before = counts(a, STABLE)
    local k = request(a, nil, 200, function()
      handler:configure({ b }) -- the config changes while the request is in flight
    end)
    assert.equal(STABLE, k.upstream)
    assert.equal(before + 1, counts(b, STABLE))
    assert.equal(0, counts(b, CANARY))
  end)

  it("retires removed instances: not exported, slots reused, counts back if they return", function()
    local keep = config("keep")
    local gone = config("gone")
    handler:configure({ keep, gone })
    for _ = 1, 10 do request(gone) end
    assert.matches('route="gone"', seg:render(), 1, true)
    handler:configure({ keep })
    assert.equal(1, seg:info().routes_retired)
    assert.is_nil(seg:render():find('route="gone"', 1, true))
    assert.matches('route="keep"', seg:render(), 1, true)
    -- configured again before its slot is reused: its counts are back
    handler:configure({ keep, gone })
    local judged = counts(gone, STABLE) + counts(gone, CANARY)
    assert.equal(10, judged)
  end)

  it("keeps 70 instances over a 4-slot segment's life working, one removed per new one", function()
    local previous
    for i = 1, 70 do
      local conf = config(("instance-%03d"):format(i))
      -- the older instance went away long enough ago to be reused
      runtime.sweep({ previous }, 1)
      handler:configure({ conf, previous })
      local c = runtime.get(conf)
      assert.truthy(c.route, "instance " .. i .. " has no route: " ..
                             table.concat(kong.logged or {}, "; "))
      local k = request(conf)
      assert.equal(200, k.status)
      assert.truthy(k.upstream == STABLE or k.upstream == CANARY)
      previous = conf
    end
    local info = seg:info()
    assert.equal(0, info.routes_exhausted)
    assert.equal(0, info.stat_slots_exhausted)
    local text = assert(seg:render())
    local routes = 0
    for _ in text:gmatch("canary_progression_step{") do routes = routes + 1 end
    assert.equal(2, routes) -- the two live instances only
  end)

  it("fails open to the stable upstream, logged and counted, when the pool is exhausted", function()
    local confs = {}
    for i = 1, 5 do confs[i] = config("full-" .. i) end
    local k = stub_kong()
    _G.kong = k
    handler:configure(confs) -- one more instance than route slots
    assert.matches("cannot claim a route slot for full-5: segment has no free slot: " ..
                   "every one of the 4 route slots (CANARY_ROUTER_MAX_ROUTES) is live " ..
                   "or retired less than 1 s ago; failing open to " .. STABLE,
                   table.concat(k.logged, "\n"), 1, true)
    local conf5 = confs[5]
    for _ = 1, 20 do assert.equal(STABLE, request(conf5).upstream) end
    assert.equal(1, seg:info().routes_exhausted)
    local text = assert(seg:render())
    assert.matches('canary_slots_exhausted_total{pool="routes"} 1', text, 1, true)
    -- once an instance has gone away (long enough ago), the next
    -- configure gives its slot to the one that failed open
    local rest = { confs[2], confs[3], confs[4], conf5 }
    runtime.sweep(rest, 1)
    handler:configure(rest)
    assert.truthy(runtime.get(conf5).route)
    local canary = 0
    for _ = 1, 100 do
      if request(conf5).upstream == CANARY then canary = canary + 1 end
    end
    assert.equal(10, canary) -- its 90/10 split again
  end)

  it("gives progression slots only to instances with a progression, fails open without",
     function()
    local small = assert(engine.open(dir .. "/progs.seg", {
      max_routes = 4, max_upstreams = 16, max_stat_slots = 8, retire_grace_s = 1,
      max_prog_slots = 1,
    }))
    runtime.state.seg = small
    seg = small
    runtime.sweep({})
    local function progressive(id)
      return config(id, { progression = { canary = CANARY, steps = { 10, 50, 100 },
                                          interval = 60 } })
    end
    local plain, first, second = config("plain"), progressive("prog-1"), progressive("prog-2")
    local k = stub_kong()
    _G.kong = k
    handler:configure({ plain, first, second })
    assert.matches("cannot publish weights for prog-2: no free progression slot: " ..
                   "all 1 are in use or retired less than 1 s ago " ..
                   "(raise CANARY_ROUTER_MAX_PROGRESSIONS)",
                   table.concat(k.logged, "\n"), 1, true)
    -- the plain instance took none, and still splits 90/10
    local info = small:info()
    assert.equal(1, info.prog_slots_used)
    assert.equal(1, info.prog_slots_exhausted)
    local canary = 0
    for _ = 1, 100 do
      if request(plain).upstream == CANARY then canary = canary + 1 end
    end
    assert.equal(10, canary)
    -- the refused one fails open to its stable upstream
    for _ = 1, 20 do assert.equal(STABLE, request(second).upstream) end
    local text = assert(small:render())
    assert.matches('canary_slots_exhausted_total{pool="progressions"} 1', text, 1, true)
    assert.matches('canary_slots{pool="progressions",state="live"} 1', text, 1, true)
    -- and canarystat shows the pool
    local p = io.popen("build/canarystat --json --segment " .. dir .. "/progs.seg")
    local stat = require("cjson.safe").decode(p:read("*a"))
    p:close()
    assert.same({ live = 1, retired = 0, free = 0, exhausted = 1 },
                stat and stat.slots.progressions)
    -- prog-1 drops its progression: its slot retires, not for prog-2
    -- within its grace
    handler:configure({ plain, config("prog-1"), second })
    assert.equal(1, small:info().prog_slots_retired)
    local c2 = runtime.get(second)
    assert.equal("none", c2.route and small:prog_status(c2.route).state or "none")
    -- prog-1 takes its progression back, into its own slot
    first = progressive("prog-1")
    handler:configure({ plain, first, second })
    assert.equal(0, small:info().prog_slots_retired)
    assert.equal("running", small:prog_status(runtime.get(first).route).state)
    -- prog-1 goes away (long enough ago): prog-2 gets the slot
    runtime.sweep({ plain, second }, 1)
    handler:configure({ plain, second })
    c2 = runtime.get(second)
    assert.truthy(c2.route)
    local st = assert(small:prog_status(c2.route))
    assert.equal("running", st.state)
  end)
end)
