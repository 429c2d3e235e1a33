-- Integration: a cluster-scoped progression (progression.scope =
-- "cluster") on three gateway nodes of the local host (two real Kong
-- nodes in `make test-kong`), each with its own prefix, ports, segment
-- and demo upstreams, sharing a real redis-server
-- (Debian's) started on a private port: steps on every node together,
-- one node's failing canary judged on the cluster's sum, a judging node
-- killed, Redis stopped and restarted under load.

local host = require "helpers.host"
local load = require "helpers.load"
local poll = require "helpers.poll"
local hook = require "helpers.hook"
local rs = require "helpers.redis"
local release = require "helpers.release"
local cjson = require "cjson.safe"
local socket = require "socket"

local PLUGIN_ID = "5c1a2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
local CANARY = release.CANARY
local REDIS_PORT = 6392
local RECEIVER_PORT = 9031
local PASSWORD = "cluster-secret-7f3a"
-- Two nodes on real Kong: each takes two workers of its own on a machine
-- of two cores, and two are a cluster already.
local N = host.kong() and 2 or 3

local nodes = {}
local redis_srv

local function ports(i)
  return { proxy = 8100 + i, admin = 8200 + i, status = 8300 + i,
           stable = 9100 + 10 * i + 1, canary = 9100 + 10 * i + 2 }
end

local serial = 0
local function progression(p)
  serial = serial + 1
  local prog = {
    canary = CANARY, steps = { 10, 20, 30, 40, 50, 60, 70, 80, 90, 100 }, interval = 1,
    min_requests = 10 + serial, failure_limit = 1, max_error_rate = 5,
    scope = "cluster",
    redis = { host = "127.0.0.1", port = REDIS_PORT, password = PASSWORD, timeout = 300 },
  }
  for k, v in pairs(p or {}) do prog[k] = v end
  return prog
end

local function plugin_config(prog)
  return {
    upstreams = release.weights(90, 10),
    response_header = "X-Canary-Upstream",
    progression = prog,
  }
end

-- The same progression on every node (each node has its own store, as
-- each Kong node would read the one database).
local function instance(i)
  local status, body = nodes[i].admin("GET", "/canary-router/status")
  if status ~= 200 then return nil end
  for _, d in ipairs(body.data) do
    if d.plugin_id == PLUGIN_ID then return d, body end
  end
end

-- Returns once every node routes with the new progression (published in
-- its segment: a new generation with the new steps and interval).
local function start_progression(p)
  local prog = progression(p)
  -- A change merges records field by field (PATCH): unset what a test
  -- before may have set.
  if prog.notify == nil then prog.notify = cjson.null end
  local before = {}
  for i = 1, N do
    before[i] = instance(i).generation
    local status, body = nodes[i].set_plugin_config(PLUGIN_ID, { progression = prog })
    assert.is_true(status == 200 or status == 201, cjson.encode(body))
  end
  local deadline = socket.gettime() + 15
  for i = 1, N do
    local inst
    repeat
      nodes[i].request("GET", "/ai/publish")
      inst = instance(i)
      local pr = inst.progression or {}
      local ready = inst.generation > before[i] and pr.steps == #prog.steps and
                    pr.interval_ms == prog.interval * 1000 and pr.step == 1
      if not ready then socket.sleep(0.05) end
    until ready or socket.gettime() > deadline
    assert(socket.gettime() <= deadline, "node " .. i .. " kept its old progression")
  end
end

local function states()
  local out = {}
  for i = 1, N do
    local inst = instance(i)
    out[i] = inst and inst.progression or {}
  end
  return out
end

-- Polls until pred(states) or the timeout; returns states, ok.
local function wait_for(pred, seconds) return poll.until_true(states, pred, seconds) end

local function all(st, f)
  for i = 1, N do
    if not f(st[i], i) then return false end
  end
  return true
end

-- Every test ends its load with wait_all once it has seen what it waited
-- for, so `seconds` is only a bound: a generous one, so that on a slow
-- machine a test never outlasts its traffic (windows without requests
-- are inconclusive and would hold a progression still).
local LOAD_SECONDS = 30

local function load_all(seconds, extra)
  local jobs = {}
  for i = 1, N do
    jobs[i] = load.start { url = "http://127.0.0.1:" .. ports(i).proxy .. "/ai/c",
                           seconds = seconds, connections = 3, headers = extra }
  end
  return jobs
end

-- Ends the loads (wrk still reports what it did) once a test has seen
-- what it waited for.
local function wait_all(jobs)
  local res = {}
  for i, j in ipairs(jobs) do res[i] = load.stop(j) end
  return res
end

describe("cluster-scoped progression on " .. N .. " nodes", function()
  setup(function()
    redis_srv = rs.start { port = REDIS_PORT, password = PASSWORD }
    for i = 1, N do
      local p = ports(i)
      nodes[i] = host.new()
      nodes[i].start {
        config = release.config(PLUGIN_ID, plugin_config(progression { interval = 3600 }),
                                { p.stable, p.canary }),
        upstreams = { { name = release.STABLE, port = p.stable },
                      { name = CANARY, port = p.canary } },
        proxy_port = p.proxy, admin_port = p.admin, status_port = p.status,
        workers = 2,
      }
    end
  end)

  teardown(function()
    for i = 1, N do
      if os.getenv("CLUSTER_SPEC_LOGS") and nodes[i].prefix() then
        io.stderr:write("==== node ", i, "\n", nodes[i].error_log():sub(-6000), "\n")
      end
      if nodes[i] then pcall(nodes[i].stop) end
    end
    if redis_srv then redis_srv:stop() end
  end)

  before_each(function()
    for i = 1, N do
      nodes[i].control(CANARY, { latency_ms = 0, error_rate = 0 })
    end
  end)

  it("steps every node through the progression, from windows judged once, notified once",
     function()
    -- How far apart the nodes step is a figure of `make bench`
    -- (stage_cluster.sh), not a timed assertion here.
    local receiver = hook.start(RECEIVER_PORT)
    finally(function() receiver:stop() end)
    local since = {}
    for i = 1, N do since[i] = release.newest_seq(instance(i).decisions) end
    start_progression { steps = { 10, 50, 100 }, notify = { url = receiver:url() } }
    local jobs = load_all(LOAD_SECONDS)
    local st, ok = wait_for(function(s)
      return all(s, function(p) return p.state == "promoted" end)
    end, 8)
    wait_all(jobs)
    assert.is_true(ok, cjson.encode(st))
    -- every node's log has each decision once: two steps up and the
    -- promotion, the judging node's with the gates, the others' from
    -- the cluster's state
    local judged_here = 0
    for i = 1, N do
      local events, last = {}, nil
      for _, d in ipairs(instance(i).decisions) do
        if d.seq > since[i] and d.event ~= "none" then
          table.insert(events, 1, d.event)
          assert.is_true(d.origin == "window" or d.origin == "cluster", cjson.encode(d))
          assert.equal("pass", d.verdict)
          if d.origin == "window" then
            judged_here = judged_here + 1
            assert.is_table(d.gates[1], cjson.encode(d))
          end
          last = last or d
        end
      end
      assert.same({ "step_up", "step_up", "promote" }, events)
      assert.equal("promoted", last.state)
    end
    assert.equal(3, judged_here)
    -- one notification per decision, from the node that judged it
    poll.until_true(function() return receiver:requests() end,
                    function(list) return #list >= 3 end, 5)
    socket.sleep(1) -- nothing more may come
    local sent = {}
    for _, r in ipairs(receiver:requests()) do
      local body = cjson.decode(r.body)
      sent[#sent + 1] = body.decision.event
      assert.equal("window", body.decision.origin)
      assert.equal(PLUGIN_ID, body.plugin_id)
    end
    assert.same({ "step_up", "step_up", "promote" }, sent)
    for i = 1, N do
      assert.equal("cluster", st[i].scope)
      assert.equal("ok", st[i].cluster.state)
      local inst = instance(i)
      assert.equal(100, inst.upstreams[2].effective_weight)
    end
    -- one node judged each window: every node counted the same verdicts
    for i = 2, N do
      assert.same(st[1].evaluations, st[i].evaluations)
    end
    assert.is_true(st[1].evaluations.pass >= 3)
  end)

  it("judges a canary failing on one node on the cluster's sum and rolls back every node",
     function()
    start_progression()
    local jobs = load_all(LOAD_SECONDS)
    -- a healthy start: the progression is moving
    local _, moving = wait_for(function(s)
      return all(s, function(p) return (p.step or 0) >= 2 end)
    end, 4)
    assert.is_true(moving)
    -- only node 1's canary fails: 1/N of the canary traffic, half of it
    -- 503s, 17 % (N = 3) or 25 % (N = 2) of the cluster's canary
    -- requests > 5 %
    -- "Within one interval + 1 s" in windows, not wall time: after the
    -- failure starts, at most the window it fell into may pass, and
    -- none may fail before the rollback (failure_limit 1), on any node.
    local failing = {}
    for i = 1, N do failing[i] = release.newest_seq(instance(i).decisions) end
    nodes[1].control(CANARY, { error_rate = 0.5, status = 503 })
    local st, ok = wait_for(function(s)
      return all(s, function(p) return p.state == "rolled_back" end)
    end, 6)
    wait_all(jobs)
    assert.is_true(ok, cjson.encode(st))
    for i = 1, N do
      local decisions = instance(i).decisions
      local passed, failed, d = release.judged_before_newest(decisions, failing[i])
      assert.is_true(passed <= 1 and failed == 0, cjson.encode(decisions))
      assert.equal("rollback", d.event, cjson.encode(decisions))
      assert.equal("fail", d.verdict)
    end
    for i = 1, N do
      assert.matches("rolled back after 1 failed windows: error rate", st[i].reason, 1, true)
      assert.equal(0, instance(i).upstreams[2].effective_weight)
      -- the sum: node 1 alone has about 50 % errors, the others none
      assert.is_true(st[i].error_rate > 0.05 and st[i].error_rate < 0.35,
                     "window error rate " .. st[i].error_rate)
    end
    -- nodes 2 and 3 never saw a canary error of their own
    for i = 2, N do
      assert.equal(0, nodes[i].upstream_stats(CANARY).errors)
    end
  end)

  it("rolls every node back when one node breaches rollback_error_rate", function()
    start_progression { rollback_error_rate = 10, max_error_rate = 50 }
    local jobs = load_all(LOAD_SECONDS)
    local _, moving = wait_for(function(s)
      return all(s, function(p) return (p.step or 0) >= 2 end)
    end, 4)
    assert.is_true(moving)
    nodes[1].control(CANARY, { error_rate = 0.5, status = 503 })
    local st, ok = wait_for(function(s)
      return all(s, function(p) return p.state == "rolled_back" end)
    end, 3)
    wait_all(jobs)
    assert.is_true(ok, cjson.encode(st))
    -- node 1's own immediate limit, on its own traffic, for every node
    for i = 1, N do
      assert.matches("rolled back at once: error rate", st[i].reason, 1, true)
    end
  end)

  it("goes degraded without Redis: no promotion, no failed request, recovery after",
     function()
    start_progression { min_requests = 5 }
    local jobs = load_all(LOAD_SECONDS)
    local _, moving = wait_for(function(s)
      return all(s, function(p) return (p.step or 0) >= 2 and p.cluster.state == "ok" end)
    end, 4)
    assert.is_true(moving)
    local marks = {}
    for i = 1, N do marks[i] = #nodes[i].error_log() end
    redis_srv:stop()
    local st, down = wait_for(function(s)
      return all(s, function(p) return p.cluster.state == "degraded" end)
    end, 2)
    assert.is_true(down, cjson.encode(st))
    local held = {}
    for i = 1, N do held[i] = st[i].step end
    socket.sleep(2)   -- two intervals without Redis
    st = states()
    for i = 1, N do
      assert.equal(held[i], st[i].step)
      assert.equal("running", st[i].state)
      assert.equal("degraded", st[i].cluster.state)
      assert.matches("connect", st[i].cluster.error, 1, true)
      local _, m = nodes[i].status_request("GET", "/canary-router/metrics")
      assert.matches('canary_progression_state{route="automation-service",state="degraded"} 1',
                     m, 1, true)
      -- in the family's block, after the route's other states
      local series = 'canary_progression_state{route="automation-service",state='
      assert.matches(series .. '"rolled_back"} 0\n' .. series .. '"degraded"} 1\n', m, 1, true)
      -- valid exposition format
      local f = assert(io.open(nodes[i].prefix() .. "/metrics.txt", "w"))
      f:write(m)
      f:close()
      local valid, out = nodes[i].run("promtool check metrics < " .. nodes[i].prefix() ..
                                      "/metrics.txt")
      assert.is_true(valid, out)
      assert.equal(1, #nodes[i].log_lines("cluster progression degraded", marks[i]))
    end
    redis_srv:start()
    st, down = wait_for(function(s)
      return all(s, function(p)
        return p.cluster.state == "ok" and p.step > held[1]
      end)
    end, 4)
    assert.is_true(down, cjson.encode(st))
    for i = 1, N do
      assert.equal(1, #nodes[i].log_lines("cluster progression rejoined", marks[i]))
    end
    for i, r in ipairs(wait_all(jobs)) do
      assert.is_true(r.requests > 100, "node " .. i)
      assert.equal(0, r.non2xx, "node " .. i)
      assert.equal(0, r.socket_errors, "node " .. i)
    end
  end)

  it("never shows the Redis password in status, metrics or logs", function()
    for i = 1, N do
      local _, body = nodes[i].admin("GET", "/canary-router/status")
      assert.is_nil(cjson.encode(body):find(PASSWORD, 1, true))
      local _, m = nodes[i].status_request("GET", "/canary-router/metrics")
      assert.is_nil(m:find(PASSWORD, 1, true))
      assert.is_nil(nodes[i].error_log():find(PASSWORD, 1, true))
    end
  end)

  it("acts on every node for an Admin action on any node", function()
    start_progression { interval = 3600 }
    socket.sleep(0.5)
    local status, body = nodes[2].admin("POST", "/canary-router/" .. PLUGIN_ID .. "/pause")
    assert.equal(200, status, cjson.encode(body))
    local st, ok = wait_for(function(s)
      return all(s, function(p) return p.state == "paused" end)
    end, 1.5)
    assert.is_true(ok, cjson.encode(st))
    status = nodes[N].admin("POST", "/canary-router/" .. PLUGIN_ID .. "/promote")
    assert.equal(200, status)
    st, ok = wait_for(function(s)
      return all(s, function(p) return p.step == 2 and p.state == "running" end)
    end, 1.5)
    assert.is_true(ok, cjson.encode(st))
    status = nodes[1].admin("POST", "/canary-router/" .. PLUGIN_ID .. "/abort")
    assert.equal(200, status)
    st, ok = wait_for(function(s)
      return all(s, function(p) return p.state == "rolled_back" end)
    end, 1.5)
    assert.is_true(ok, cjson.encode(st))
    status, body = nodes[2].admin("POST", "/canary-router/" .. PLUGIN_ID .. "/resume")
    assert.equal(409, status)
    assert.matches("cannot resume", body.message, 1, true)
  end)

  it("has another node judge the next window when the judging node is killed", function()
    start_progression { min_requests = 5, steps = { 5, 10, 15, 20, 25, 30, 35, 40, 45, 50,
                                                     55, 60, 65, 70, 75, 80, 85, 90, 95, 100 } }
    local jobs = load_all(LOAD_SECONDS)
    local st, ok = wait_for(function(s)
      return all(s, function(p) return (p.step or 0) >= 2 and p.cluster.judged_by end)
    end, 4)
    assert.is_true(ok, cjson.encode(st))
    -- the node that judged the last window: kill -9 all its processes
    local judge = st[1].cluster.judged_by
    local victim
    for i = 1, N do
      local _, info = nodes[i].admin("GET", "/")
      if info.node_id == judge then victim = i end
    end
    assert.is_not_nil(victim, "judge " .. tostring(judge))
    -- The master first: killed after its workers, it lived long enough
    -- to fork new ones, which went on judging (and held the node's ports
    -- for the next run).  Then every child it had, whether or not the
    -- Admin API lists it (Kong's privileged agent).
    local master = nodes[victim].master_pid()
    local pids = { master }
    for _, pid in ipairs(nodes[victim].worker_pids()) do pids[#pids + 1] = pid end
    local children = io.popen("pgrep -P " .. master)
    for pid in children:read("*a"):gmatch("%d+") do pids[#pids + 1] = pid end
    children:close()
    os.execute("kill -9 " .. table.concat(pids, " "))
    local others = {}
    for i = 1, N do if i ~= victim then others[#others + 1] = i end end
    -- A survivor's status names the last window judged and its judge,
    -- as of its last tick (a slow machine may show it a window or two
    -- late): after the kill, it must come to show a later window judged
    -- by a node still alive.
    local window = instance(others[1]).progression.cluster.window
    local deadline = socket.gettime() + 6
    local judged_by, last
    repeat
      local inst = instance(others[1])
      local c = inst.progression.cluster
      last = c
      if c.window and c.window > window and c.judged_by ~= judge then
        judged_by = c.judged_by
      end
      socket.sleep(0.05)
    until judged_by or socket.gettime() > deadline
    wait_all(jobs)
    assert.is_not_nil(judged_by, "no window judged by a survivor after the judge died: " ..
                      cjson.encode(last))
    assert.are_not.equal(judge, judged_by)
  end)
end)
