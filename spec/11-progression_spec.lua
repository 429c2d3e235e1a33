-- Integration: SLO-gated progression, rollback, operator actions and the
-- canarystat gate, on the local Kong host (2 workers) with real traffic
-- from wrk and the demo upstreams' run-time latency/error controls.

local host = require "helpers.host"
local poll = require "helpers.poll"
local load = require "helpers.load"
local cjson = require "cjson.safe"

local PLUGIN_ID = "7a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d"
local release = require "helpers.release"
local CANARY = release.CANARY

local function declarative()
  return release.config(PLUGIN_ID, {
    upstreams = release.weights(90, 10),
    response_header = "X-Canary-Upstream",
  })
end

local URL = "http://127.0.0.1:8000/ai/p"

-- A fresh progression (a changed config always restarts it).
local serial = 0
local function start_progression(p)
  serial = serial + 1
  local prog = {
    canary = CANARY, steps = { 10, 50, 100 }, interval = 1,
    min_requests = 20 + serial, failure_limit = 2,
    max_error_rate = 1, max_p95_ms = 1000, max_p99_ms = 2000,
  }
  for k, v in pairs(p or {}) do prog[k] = v end
  local ok, status, body = host.configure_plugin(PLUGIN_ID, { progression = prog })
  assert.is_true(ok, tostring(status) .. " " .. cjson.encode(body))
end

local function instance() return poll.instance(host, PLUGIN_ID) end

-- Polls the status until pred(instance) or the timeout; returns it.
local function wait_for(pred, seconds) return poll.until_true(instance, pred, seconds) end

local function canary_share(n)
  local canary = 0
  for _ = 1, n do
    local _, _, h = host.request("GET", "/ai/share")
    if h and h["x-canary-upstream"] == CANARY then canary = canary + 1 end
  end
  return canary
end

local function action(name)
  return host.admin("POST", "/canary-router/" .. PLUGIN_ID .. "/" .. name)
end

describe("progression in the local Kong host", function()
  setup(function()
    host.start { config = declarative() }
  end)

  teardown(function()
    host.stop()
  end)

  before_each(function()
    host.control(CANARY, { latency_ms = 0, error_rate = 0 })
  end)

  it("walks a healthy canary through every step to 100 %", function()
    start_progression()
    local job = load.start { url = URL, seconds = 6, connections = 4 }
    local inst, ok = wait_for(function(i)
      return i.progression.state == "promoted"
    end, 8)
    load.wait(job)
    assert.is_true(ok, cjson.encode(inst.progression))
    assert.equal(3, inst.progression.step)
    assert.equal(100, inst.upstreams[2].effective_weight)
    assert.equal(0, inst.upstreams[1].effective_weight)
    assert.is_true(inst.progression.evaluations.pass >= 3)
    assert.equal(100, canary_share(100))
    local _, m = host.status_request("GET", "/canary-router/metrics")
    assert.matches('canary_progression_state{route="automation-service",state="promoted"} 1', m,
                   1, true)
    assert.matches('canary_progression_step{route="automation-service"} 3', m, 1, true)
  end)

  it("rolls a canary answering 20 % errors back in its first window, on every worker", function()
    -- "Within one interval" in windows, not wall time: no window is
    -- judged before the one that rolls back (windows too small to judge
    -- may come first on a starved machine).
    local since = release.newest_seq(instance().decisions)
    start_progression({ rollback_error_rate = 10, min_requests = 20 })
    host.control(CANARY, { error_rate = 0.2, status = 503 })
    local job = load.start { url = URL, seconds = 4, connections = 4 }
    local inst, ok = wait_for(function(i)
      return i.progression.state == "rolled_back"
    end, 5)
    load.wait(job)
    assert.is_true(ok, cjson.encode(inst.progression))
    local passed, failed = release.judged_before_newest(inst.decisions, since)
    assert.is_true(passed == 0 and failed == 0, cjson.encode(inst.decisions))
    assert.matches("rolled back at once", inst.progression.reason, 1, true)
    assert.equal(0, inst.upstreams[2].effective_weight)
    -- no worker sends it anything any more
    assert.equal(0, canary_share(400))
  end)

  it("rolls back after failure_limit windows over the p99 limit", function()
    start_progression({ max_p99_ms = 40, min_requests = 5 })
    host.control(CANARY, { latency_ms = 80 })
    local job = load.start { url = URL, seconds = 5, connections = 8 }
    local inst, ok = wait_for(function(i)
      return i.progression.state == "rolled_back"
    end, 6)
    load.wait(job)
    assert.is_true(ok, cjson.encode(inst.progression))
    assert.matches("after 2 failed windows", inst.progression.reason, 1, true)
    assert.matches("p99", inst.progression.reason, 1, true)
    assert.is_true(inst.progression.evaluations.fail >= 2)
  end)

  it("does not promote on too few requests", function()
    start_progression({ min_requests = 100000 })
    local job = load.start { url = URL, seconds = 3, connections = 2 }
    load.wait(job)
    local inst = instance()
    assert.equal("running", inst.progression.state)
    assert.equal(1, inst.progression.step)
    assert.is_true(inst.progression.evaluations.inconclusive >= 2)
    assert.matches("inconclusive", inst.progression.reason, 1, true)
  end)

  it("pauses, resumes, promotes and aborts through the Admin API", function()
    start_progression({ interval = 3600 })
    local status, body = action("pause")
    assert.equal(200, status)
    assert.equal("paused", body.progression.state)
    status, body = action("pause")
    assert.equal(409, status)
    assert.matches("cannot pause", body.message, 1, true)
    status, body = action("resume")
    assert.equal(200, status)
    assert.equal("running", body.progression.state)
    status, body = action("promote")
    assert.equal(200, status)
    assert.equal(2, body.progression.step)
    assert.equal(50, body.upstreams[2].effective_weight)
    status, body = action("abort")
    assert.equal(200, status)
    assert.equal("rolled_back", body.progression.state)
    assert.equal(0, body.upstreams[2].effective_weight)
    assert.equal(0, canary_share(200))
    status = action("bogus")
    assert.equal(404, status)
    status = host.admin("POST", "/canary-router/no-such-plugin/pause")
    assert.equal(404, status)
  end)

  -- Another worker holding the route's writer lock (here: the spec, as a
  -- worker stopped mid-publish would): the action is refused at once,
  -- nothing changes, and the answer says to retry.
  it("answers an action 503 busy, retry, while another worker holds the route", function()
    start_progression({ interval = 3600 })
    local engine = require "kong.plugins.canary-router.engine"
    local seglock = require "helpers.seglock"
    local seg = assert(engine.open(host.segment_path(), { readonly = true }))
    local route = assert(seg:find(PLUGIN_ID))
    local held = assert(seglock.hold(host.segment_path(),
                                     seglock.writer(route, seg:info().route_bytes)))
    seg:close()
    local status, body, headers = host.request("POST", "/canary-router/" .. PLUGIN_ID ..
                                               "/pause", nil, host.ports().admin)
    seglock.release(held)
    assert.equal(503, status, body)
    assert.matches("busy: another process is changing this route; retry",
                   cjson.decode(body).message, 1, true)
    assert.equal("1", headers["retry-after"])
    assert.equal("running", instance().progression.state)
    local st, answer = action("pause")
    assert.equal(200, st)
    assert.equal("paused", answer.progression.state)
  end)

  it("canarystat gate passes a healthy canary and fails a failing one", function()
    start_progression({ interval = 3600 })
    local function gate()
      local cmd = "build/canarystat gate --segment " .. host.segment_path() ..
                  " --route automation-service --canary " .. CANARY ..
                  " --window 1 --duration 2 --max-error-rate 1 --max-p95-ms 1000" ..
                  " --max-p99-ms 2000 --min-requests 5 > /dev/null"
      local job = load.start { url = URL, seconds = 3, connections = 4 }
      local rc = os.execute(cmd)
      load.wait(job)
      return rc
    end
    assert.equal(0, gate())
    host.control(CANARY, { error_rate = 0.3, status = 500 })
    assert.equal(1 * 256, gate())  -- os.execute: exit status << 8
  end)
end)
