-- Integration: blue/green releases (progression.strategy = blue_green) on
-- the local Kong host (2 workers), with real traffic to the demo
-- upstreams: blue is automation-service, green automation-service-canary.
-- Preview requests come from 127.0.0.2, the only source allow_from lets
-- preview green; everything else comes from 127.0.0.1.  Each response
-- names its upstream (response_header) and the generation of the table
-- that routed it (generation_header), so a switch is checked request by
-- request.

local host = require "helpers.host"
local poll = require "helpers.poll"
local load = require "helpers.load"
local release = require "helpers.release"
local cjson = require "cjson.safe"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local PLUGIN_ID = "4b1d2e3f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
local BLUE, GREEN = release.STABLE, release.CANARY
local URL = "http://127.0.0.1:8000/ai/bg"
local TESTER = "127.0.0.2"

local function declarative()
  return release.config(PLUGIN_ID, {
    upstreams = release.weights(100, 0),
    response_header = "X-Canary-Upstream",
    generation_header = "X-Canary-Generation",
    override = { header = "X-Canary", cookie = "canary", allow_from = { TESTER .. "/32" } },
  })
end

-- A fresh blue/green release (a changed config always restarts it).
local serial = 0
local function instance() return poll.instance(host, PLUGIN_ID) end

local function wait_for(pred, seconds) return poll.until_true(instance, pred, seconds) end

local function start_release(p)
  serial = serial + 1
  local prog = {
    strategy = "blue_green", interval = 1, pre_promotion = 3600,
    post_promotion = 60, min_requests = 10 + serial, failure_limit = 1,
    max_error_rate = 1, max_p99_ms = 2000,
  }
  for k, v in pairs(p or {}) do prog[k] = v end
  local gen = instance().generation or 0
  local ok, status, body = host.configure_plugin(PLUGIN_ID, { progression = prog })
  assert.is_true(ok, tostring(status) .. " " .. cjson.encode(body))
  -- The weights stay 100/0, so configure_plugin cannot see the change on
  -- real Kong: the new release is published when the generation moves.
  local inst, started = wait_for(function(i)
    return i.progression and i.generation > gen and i.progression.phase == "preview"
  end, 6)
  assert.is_true(started, cjson.encode(inst))
end

local function action(name)
  return host.admin("POST", "/canary-router/" .. PLUGIN_ID .. "/" .. name)
end

-- One proxied request from source address `src` (nil: 127.0.0.1);
-- returns the upstream that served it and the routing generation (nil
-- when an override chose the upstream).
local function get(headers, src)
  local h
  if src then
    local _, status, hdrs = http.request {
      url = URL, headers = headers, sink = ltn12.sink.null(),
      create = function()
        local s = socket.tcp()
        assert(s:bind(src, 0))
        return s
      end,
    }
    assert.equal(200, status)
    h = hdrs
  else
    local status, _, hdrs = host.request("GET", "/ai/bg", { headers = headers })
    h = hdrs
    assert.equal(200, status)
  end
  return h["x-canary-upstream"], tonumber(h["x-canary-generation"])
end

-- n requests: how many each upstream served.
local function count(n, headers, src)
  local by = { [BLUE] = 0, [GREEN] = 0 }
  for _ = 1, n do
    local up = get(headers, src)
    by[up] = by[up] + 1
  end
  return by
end

-- Kong with a database brings a new config to each worker in its own
-- time (the other worker learns of it by cluster event): until every
-- worker has the release, a tester's request to green may still be an
-- override of the config before it, counted apart.  Sends batches of
-- tester requests until one batch is counted for green, none apart.
local function until_every_worker_previews()
  local last, ok = poll.until_true(function()
    local b = instance()
    count(20, { ["X-Canary"] = "always" }, TESTER)
    local a = instance()
    return { forced = a.upstreams[2].forced.count - b.upstreams[2].forced.count,
             counted = a.upstreams[2].requests - b.upstreams[2].requests }
  end, function(d) return d.forced == 0 and d.counted == 20 end, 15)
  assert.is_true(ok, cjson.encode(last))
end

describe("blue/green release in the local Kong host", function()
  setup(function()
    host.start { config = declarative() }
  end)

  teardown(function()
    host.stop()
  end)

  before_each(function()
    host.control(GREEN, { latency_ms = 0, error_rate = 0 })
  end)

  it("previews green only to allowed sources, and judges those requests", function()
    start_release()
    until_every_worker_previews()
    local before = instance()
    assert.equal("preview", before.progression.phase)
    assert.equal("blue_green", before.progression.strategy)
    assert.equal(0, before.upstreams[2].effective_weight)
    -- the public, and overrides from anywhere else, even as a forwarded
    -- address: blue
    assert.same({ [BLUE] = 200, [GREEN] = 0 }, count(200))
    assert.same({ [BLUE] = 30, [GREEN] = 0 }, count(30, { ["X-Canary"] = "always" }))
    assert.same({ [BLUE] = 30, [GREEN] = 0 }, count(30, { Cookie = "canary=always" }))
    assert.same({ [BLUE] = 30, [GREEN] = 0 },
                count(30, { ["X-Canary"] = GREEN, ["X-Forwarded-For"] = TESTER }))
    -- the tester: green, by header or cookie
    assert.same({ [BLUE] = 0, [GREEN] = 20 }, count(20, { ["X-Canary"] = "always" }, TESTER))
    assert.same({ [BLUE] = 0, [GREEN] = 20 }, count(20, { Cookie = "canary=" .. GREEN }, TESTER))
    assert.same({ [BLUE] = 20, [GREEN] = 0 }, count(20, nil, TESTER))
    local after = instance()
    assert.equal(before.events.override_denied + 90, after.events.override_denied)
    -- green's preview requests count for its gates, not apart
    assert.equal(before.upstreams[2].requests + 40, after.upstreams[2].requests)
    assert.equal(before.upstreams[2].forced.count, after.upstreams[2].forced.count)
    assert.equal("preview", after.progression.phase)
    local _, m = host.status_request("GET", "/canary-router/metrics")
    assert.matches('canary_progression_state{route="automation-service",state="preview"} 1',
                   m, 1, true)
    assert.matches('canary_progression_state{route="automation-service",state="post_promotion"} 0',
                   m, 1, true)
  end)

  it("switches every request to green in one generation after a passing preview", function()
    start_release({ pre_promotion = 3, post_promotion = 2 })
    local g0 = instance().generation
    assert.same({ [BLUE] = 0, [GREEN] = 40 }, count(40, { ["X-Canary"] = "always" }, TESTER))
    local job = load.start { url = URL, seconds = 6, connections = 4 }
    local seen, promoted = {}, false
    local deadline = socket.gettime() + 8
    while socket.gettime() < deadline do
      for _ = 1, 20 do
        local up, gen = get()
        seen[#seen + 1] = { up = up, gen = gen }
      end
      if instance().progression.phase == "promoted" then
        promoted = true
        break
      end
    end
    load.wait(job)
    local inst = instance()
    assert.is_true(promoted, cjson.encode(inst.progression))
    -- one publish: the generation after the switch is the next one, and
    -- every request routed by it went to green, every one before to blue
    assert.equal(g0 + 1, inst.generation)
    local blue, green = 0, 0
    for i, r in ipairs(seen) do
      if r.gen == g0 then
        assert.equal(BLUE, r.up, "request " .. i .. " of generation " .. r.gen)
        blue = blue + 1
      else
        assert.equal(g0 + 1, r.gen, "request " .. i)
        assert.equal(GREEN, r.up, "request " .. i .. " of generation " .. r.gen)
        green = green + 1
      end
    end
    assert.is_true(blue > 0 and green > 0, blue .. " on blue, " .. green .. " on green")
    assert.equal(100, inst.upstreams[2].effective_weight)
    assert.equal(0, inst.upstreams[1].effective_weight)
    -- the switch, then post-promotion windows, the last one completing
    assert.equal("promote", inst.decisions[1].event)
    local switch
    for _, d in ipairs(inst.decisions) do
      if d.event == "switch" then switch = d end
    end
    assert.is_table(switch, cjson.encode(inst.decisions))
    assert.equal("pass", switch.verdict)
    assert.equal("post_promotion", switch.phase)
    assert.equal("promoted", inst.decisions[1].phase)
    assert.equal(0, switch.step_weight)
    assert.equal(100, switch.weight)
    assert.same({ [BLUE] = 0, [GREEN] = 50 }, count(50))
  end)

  it("switches a failing green back to blue in the first window after it fails", function()
    -- "Within one interval + 1 s" in windows, not wall time: after green
    -- starts failing, at most the window it fell into may pass, and none
    -- may fail before the switch back (failure_limit 1).
    start_release()
    local status, body = action("promote")
    assert.equal(200, status)
    assert.equal("post_promotion", body.progression.phase)
    assert.equal(100, body.upstreams[2].effective_weight)
    local g_switch = body.generation
    assert.same({ [BLUE] = 0, [GREEN] = 30 }, count(30))
    local failing = release.newest_seq(instance().decisions)
    host.control(GREEN, { error_rate = 0.5, status = 503 })
    local job = load.start { url = URL, seconds = 6, connections = 4 }
    local inst, ok = wait_for(function(i)
      return i.progression.phase == "rolled_back"
    end, 6)
    load.stop(job)
    assert.is_true(ok, cjson.encode(inst.progression))
    local passed, failed = release.judged_before_newest(inst.decisions, failing)
    assert.is_true(passed <= 1 and failed == 0, cjson.encode(inst.decisions))
    assert.matches("switched back to blue", inst.progression.reason, 1, true)
    assert.equal("rollback", inst.decisions[1].event)
    assert.equal("fail", inst.decisions[1].verdict)
    assert.equal("rolled_back", inst.decisions[1].phase)
    assert.equal(g_switch + 1, inst.generation)
    assert.equal(100, inst.upstreams[1].effective_weight)
    for _ = 1, 100 do
      local up, gen = get()
      assert.equal(BLUE, up)
      assert.equal(g_switch + 1, gen)
    end
    -- canarystat reads the same phases (rolled back: nothing is judged
    -- any more, so the two reads agree)
    local p = io.popen("build/canarystat --json --segment " .. host.segment_path())
    local cli = cjson.decode(p:read("*a"))
    p:close()
    local mine
    for _, r in ipairs(cli.data) do if r.plugin_id == PLUGIN_ID then mine = r end end
    assert.equal("blue_green", mine.progression.strategy)
    assert.equal("rolled_back", mine.progression.phase)
    local phases, want = {}, {}
    for i = 1, 3 do
      phases[i] = { mine.decisions[i].event, mine.decisions[i].phase }
      want[i] = { inst.decisions[i].event, inst.decisions[i].phase }
    end
    assert.same(want, phases)
    assert.same({ { "rollback", "rolled_back" }, { "switch", "post_promotion" } },
                { phases[1], phases[2] })
  end)

  it("pauses an inconclusive preview until promoted, and abort switches back at once", function()
    start_release({ pre_promotion = 2, min_requests = 100000 })
    local inst, ok = wait_for(function(i)
      return i.progression.phase == "paused"
    end, 5)
    assert.is_true(ok, cjson.encode(inst.progression))
    assert.matches("preview inconclusive", inst.progression.reason, 1, true)
    assert.equal("pause", inst.decisions[1].event)
    assert.equal("paused", inst.decisions[1].phase)
    assert.equal(0, inst.upstreams[2].effective_weight)
    local status, body = action("promote")
    assert.equal(200, status)
    assert.equal("post_promotion", body.progression.phase)
    assert.equal("switch", body.decisions[1].event)
    assert.same({ [BLUE] = 0, [GREEN] = 50 }, count(50))
    status, body = action("abort")
    assert.equal(200, status)
    assert.equal("rolled_back", body.progression.phase)
    assert.equal("abort", body.decisions[1].event)
    -- no waiting: the very next requests, on any worker, go to blue
    assert.same({ [BLUE] = 100, [GREEN] = 0 }, count(100))
    status = action("abort")
    assert.equal(409, status)
  end)
end)
