-- Integration: the plugin in the local Kong host (real nginx, 2 workers),
-- real demo upstreams on 127.0.0.1:9001/9002, real HTTP.

local host = require "helpers.host"
local load = require "helpers.load"
local cjson = require "cjson.safe"
local prom = require "helpers.prom"

local PLUGIN_ID = "6f1c2d3e-4b5a-4c69-8d7e-9f0a1b2c3d4e"
local release = require "helpers.release"
local STABLE, CANARY = release.STABLE, release.CANARY
local weights = release.weights

local function declarative(plugin_config)
  return release.config(PLUGIN_ID, plugin_config)
end

-- New weights the way an operator changes them on this DB-less gateway
-- (POST /config; Kong refuses PATCH there); returns once every worker
-- runs them.
local function patch(config)
  local status, body = host.set_plugin_config(PLUGIN_ID, config)
  assert.equal(201, status, cjson.encode(body))
  return body
end

-- n requests; returns counts per upstream (from X-Canary-Upstream) and
-- the number of non-200 answers.
local function send(n, headers, path)
  local counts, failed = { [STABLE] = 0, [CANARY] = 0 }, 0
  for _ = 1, n do
    local status, _, h = host.request("GET", path or "/ai/x", { headers = headers })
    if status ~= 200 then
      failed = failed + 1
    else
      local up = h["x-canary-upstream"]
      counts[up] = (counts[up] or 0) + 1
    end
  end
  return counts, failed
end

local function metrics()
  local status, body = host.status_request("GET", "/canary-router/metrics")
  assert.equal(200, status)
  return body
end

local function metric(text, name, labels)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #name + 1) == name .. "{" then
      local ok = true
      for k, v in pairs(labels) do
        if not line:find(k .. '="' .. v .. '"', 1, true) then ok = false end
      end
      if ok then return tonumber(line:match(" (%S+)$")) end
    end
  end
  return nil
end

local function requests_of(text, upstream)
  local total = 0
  for _, class in ipairs({ "2xx", "3xx", "4xx", "5xx" }) do
    total = total + (metric(text, "canary_requests_total",
                            { upstream = upstream, status = class }) or 0)
  end
  return total
end

describe("canary-router in the local Kong host", function()
  setup(function()
    host.start {
      config = declarative({
        upstreams = weights(90, 10),
        trace = { header = "X-Trace-Id" },
        override = { header = "X-Canary" },
        response_header = "X-Canary-Upstream",
      }),
    }
  end)

  teardown(function()
    host.stop()
  end)

  before_each(function()
    patch({ upstreams = weights(90, 10), sticky = { by = "none" } })
  end)

  it("splits 10 000 requests 90/10 within ±1 % across both workers", function()
    local counts, failed = send(10000)
    assert.equal(0, failed)
    assert.is_true(math.abs(counts[CANARY] - 1000) <= 100, "canary got " .. counts[CANARY])
    assert.is_true(math.abs(counts[STABLE] - 9000) <= 100, "stable got " .. counts[STABLE])
    -- two workers really served them
    assert.equal(2, #host.worker_pids())
  end)

  it("counts exactly the requests each upstream served, in valid exposition format", function()
    local before = metrics()
    local up_before = { host.upstream_stats(STABLE).requests, host.upstream_stats(CANARY).requests }
    local counts = send(1000)
    local after = prom.settled(metrics)
    local up_after = { host.upstream_stats(STABLE).requests, host.upstream_stats(CANARY).requests }
    assert.equal(counts[STABLE], requests_of(after, STABLE) - requests_of(before, STABLE))
    assert.equal(counts[CANARY], requests_of(after, CANARY) - requests_of(before, CANARY))
    assert.equal(counts[STABLE], up_after[1] - up_before[1])
    assert.equal(counts[CANARY], up_after[2] - up_before[2])
    -- histogram _count equals the +Inf bucket, and promtool accepts it all
    assert.equal(metric(after, "canary_upstream_latency_seconds_count", { upstream = CANARY }),
                 metric(after, "canary_upstream_latency_seconds_bucket",
                        { upstream = CANARY, le = "+Inf" }))
    local f = assert(io.open(host.prefix() .. "/metrics.txt", "w"))
    f:write(after)
    f:close()
    local rc = os.execute("promtool check metrics < " .. host.prefix() .. "/metrics.txt")
    assert.is_true(rc == 0 or rc == true, "promtool check metrics failed")
    assert.equal(0.1, metric(after, "canary_upstream_weight", { upstream = CANARY }))
  end)

  it("generates a trace id that the upstream and the client both see", function()
    local status, body, h = host.request("GET", "/ai/trace")
    assert.equal(200, status)
    local id = h["x-trace-id"]
    assert.matches("^%x+$", id)
    assert.equal(32, #id)
    local seen = cjson.decode(body)
    assert.equal(id, seen.headers["x-trace-id"])
    assert.matches("^00%-" .. id .. "%-%x+%-01$", seen.headers.traceparent)
  end)

  it("keeps a valid client trace id, replaces an over-long or unsafe one", function()
    local _, body, h = host.request("GET", "/ai/t",
                                    { headers = { ["X-Trace-Id"] = "order-42:abc" } })
    assert.equal("order-42:abc", h["x-trace-id"])
    assert.equal("order-42:abc", cjson.decode(body).headers["x-trace-id"])
    for _, bad in ipairs({ ("a"):rep(200), "has space", "semi;colon", "quote\"d" }) do
      local _, b2, h2 = host.request("GET", "/ai/t", { headers = { ["X-Trace-Id"] = bad } })
      assert.not_equal(bad, h2["x-trace-id"])
      assert.matches("^%x+$", h2["x-trace-id"])
      assert.equal(h2["x-trace-id"], cjson.decode(b2).headers["x-trace-id"])
    end
  end)

  it("uses the trace-id of an incoming traceparent and forwards it unchanged", function()
    local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    local _, body, h = host.request("GET", "/ai/t", { headers = { traceparent = tp } })
    assert.equal("0af7651916cd43dd8448eb211c80319c", h["x-trace-id"])
    local seen = cjson.decode(body).headers
    assert.equal(tp, seen.traceparent)
    assert.equal("0af7651916cd43dd8448eb211c80319c", seen["x-trace-id"])
  end)

  it("honours the override header always / never / by name", function()
    for _ = 1, 50 do
      assert.equal(CANARY, select(3, host.request("GET", "/ai/o",
        { headers = { ["X-Canary"] = "always" } }))["x-canary-upstream"])
      assert.equal(STABLE, select(3, host.request("GET", "/ai/o",
        { headers = { ["X-Canary"] = "never" } }))["x-canary-upstream"])
      assert.equal(CANARY, select(3, host.request("GET", "/ai/o",
        { headers = { ["X-Canary"] = CANARY } }))["x-canary-upstream"])
    end
  end)

  it("keeps sticky users on their upstream, and 10 % -> 25 % only adds canary users", function()
    patch({ upstreams = weights(90, 10), sticky = { by = "header", header = "X-User" } })
    local first, on_canary = {}, 0
    for i = 1, 600 do
      local user = "user-" .. i
      local _, _, h = host.request("GET", "/ai/s", { headers = { ["X-User"] = user } })
      first[user] = h["x-canary-upstream"]
      if first[user] == CANARY then on_canary = on_canary + 1 end
      -- the same user again, possibly on the other worker
      for _ = 1, 2 do
        local _, _, h2 = host.request("GET", "/ai/s", { headers = { ["X-User"] = user } })
        assert.equal(first[user], h2["x-canary-upstream"])
      end
    end
    assert.is_true(on_canary > 30 and on_canary < 90, "canary users at 10 %: " .. on_canary)
    patch({ upstreams = weights(75, 25) })
    local now_canary = 0
    for user, up in pairs(first) do
      local _, _, h = host.request("GET", "/ai/s", { headers = { ["X-User"] = user } })
      if up == CANARY then
        assert.equal(CANARY, h["x-canary-upstream"], user .. " left the canary")
      end
      if h["x-canary-upstream"] == CANARY then now_canary = now_canary + 1 end
    end
    assert.is_true(now_canary > on_canary and now_canary > 110 and now_canary < 190,
                   "canary users at 25 %: " .. now_canary)
  end)

  it("applies weight changes under concurrent load without a failed request", function()
    local job = load.start { url = "http://127.0.0.1:8000/ai/load", seconds = 4, connections = 8 }
    os.execute("sleep 0.5")
    for i = 1, 12 do
      local canary = (i % 2 == 0) and 10 or 50
      patch({ upstreams = weights(100 - canary, canary) })
      os.execute("sleep 0.2")
    end
    local r = load.wait(job)
    assert.is_true(r.requests > 1000, r.raw)
    assert.equal(0, r.non2xx, r.raw)
    assert.equal(0, r.socket_errors, r.raw)
    -- and the last weights are what every worker routes with now
    local counts = send(1000)
    assert.is_true(math.abs(counts[CANARY] - 100) <= 10, "canary got " .. counts[CANARY])
  end)

  it("takes a weight change in every worker without a reload", function()
    patch({ upstreams = weights(0, 100) })
    local counts = send(200)
    assert.equal(200, counts[CANARY])
    patch({ upstreams = weights(100, 0) })
    counts = send(200)
    assert.equal(200, counts[STABLE])
  end)

  it("rejects bad weights with 400 and keeps the running config", function()
    -- DB-less Kong validates a PATCH before its "off" strategy refuses the
    -- update (kong/db/dao/init.lua DAO:update: check_update, then
    -- strategy:update), so a bad one is a 400 schema violation there too.
    local status, body = host.admin("PATCH", "/plugins/" .. PLUGIN_ID,
      { config = { upstreams = weights(90, 20) } })
    assert.equal(400, status)
    assert.equal("schema violation", body.name)
    assert.matches("weights must sum to 100", body.message, 1, true)
    -- and the same weights in a declarative config (POST /config)
    status, body = host.set_plugin_config(PLUGIN_ID, { upstreams = weights(90, 20) })
    assert.equal(400, status)
    assert.equal("invalid declarative configuration", body.name)
    assert.matches("weights must sum to 100", body.message, 1, true)
    local counts = send(1000)
    -- still 10 %: the low-discrepancy sequence keeps any 1000 picks at 100 ± 1
    assert.is_true(math.abs(counts[CANARY] - 100) <= 2, "canary got " .. counts[CANARY])
  end)

  it("survives `make reload` under load: no failed request, counters never go back", function()
    local before = requests_of(metrics(), STABLE) + requests_of(metrics(), CANARY)
    local job = load.start { url = "http://127.0.0.1:8000/ai/reload", seconds = 5,
                             connections = 8, close = true }
    os.execute("sleep 0.5")
    local last = before
    for _ = 1, 3 do
      host.reload()
      local now = requests_of(metrics(), STABLE) + requests_of(metrics(), CANARY)
      assert.is_true(now >= last, ("counters went back: %d -> %d"):format(last, now))
      last = now
      os.execute("sleep 0.3")
    end
    local r = load.wait(job)
    assert.is_true(r.requests > 200, r.raw)
    assert.equal(0, r.non2xx, r.raw)
    assert.equal(0, r.socket_errors, r.raw)
    local text = prom.settled(metrics)
    local after = requests_of(text, STABLE) + requests_of(text, CANARY)
    assert.is_true(after >= before + r.requests, ("%d + %d > %d"):format(before, r.requests, after))
  end)

  it("serves its status on the Admin API, matching canarystat --json", function()
    send(200)
    prom.settled(metrics)
    local status, body = host.admin("GET", "/canary-router/status")
    assert.equal(200, status)
    local inst = body.data[1]
    assert.equal(PLUGIN_ID, inst.plugin_id)
    assert.equal("automation-service", inst.route)
    local p = io.popen("build/canarystat --json --segment " .. host.segment_path())
    local cli = cjson.decode(p:read("*a"))
    p:close()
    local mine
    for _, d in ipairs(cli.data) do if d.plugin_id == PLUGIN_ID then mine = d end end
    assert.truthy(mine)
    for i, u in ipairs(inst.upstreams) do
      local c = mine.upstreams[i]
      assert.equal(u.name, c.name)
      assert.equal(u.effective_weight, c.effective_weight)
      assert.equal(u.requests, c.requests)
      assert.equal(u.errors, c.errors)
      assert.equal(u.p95_ms, c.p95_ms)
      assert.equal(u.p99_ms, c.p99_ms)
      assert.same(u.forced, c.forced)
    end
    assert.same(inst.trace_ids, mine.trace_ids)
  end)
end)

-- Kong's balancer uses balancer_data.type, fixed from the service's host
-- before any plugin runs: a service on an address ("ipv4") is never
-- looked up as an Upstream, whatever kong.service.set_upstream() put in
-- balancer_data.host, and the name lands in set_current_peer() ("no host
-- allowed", 500).  The plugin must route however the service is written.
describe("canary-router on a service whose host is", function()
  for _, case in ipairs({
    { what = "an IP address", url = "http://127.0.0.1:9001" },
    { what = "a plain hostname", url = "http://localhost:9001" },
    { what = "an Upstream's name", url = "http://automation-service" },
  }) do
    describe(case.what, function()
      setup(function()
        local cfg = declarative({
          upstreams = weights(50, 50),
          response_header = "X-Canary-Upstream",
        })
        cfg.services[1].url = case.url
        host.start { config = cfg }
      end)
      teardown(function() host.stop() end)

      it("splits 50/50 with no failed request", function()
        local counts, failed = send(200)
        assert.equal(0, failed)
        assert.equal(200, counts[STABLE] + counts[CANARY])
        assert.is_true(math.abs(counts[CANARY] - 100) <= 2, counts[CANARY])
        -- and each answer came from the upstream the header names
        assert.equal(counts[CANARY], host.upstream_stats(CANARY).requests)
        assert.equal(counts[STABLE], host.upstream_stats(STABLE).requests)
        assert.same({}, host.log_lines("no host allowed"))
      end)
    end)
  end
end)

-- A canary that refuses connections fails requests without answering:
-- the proxy's own 502 is the canary's failure, and its gates must see it.
describe("canary-router with a canary that refuses connections", function()
  setup(function()
    -- nothing listens on 127.0.0.1:9003 (the specs' demo upstreams are
    -- 9001 and 9002)
    host.start {
      config = release.config(PLUGIN_ID, {
        upstreams = weights(50, 50),
        response_header = "X-Canary-Upstream",
      }, { 9001, 9003 }),
    }
  end)
  teardown(function() host.stop() end)

  it("counts the proxy's 502s as the canary's 5xx, once each", function()
    local ok, bad = 0, 0
    for _ = 1, 100 do
      local status = host.request("GET", "/ai/x")
      if status == 200 then ok = ok + 1 elseif status == 502 then bad = bad + 1 end
    end
    assert.equal(100, ok + bad)
    assert.is_true(bad >= 45 and bad <= 55, bad)
    local text = prom.settled(metrics)
    assert.equal(bad, metric(text, "canary_requests_total",
                             { upstream = CANARY, status = "5xx" }))
    assert.equal(ok, metric(text, "canary_requests_total",
                            { upstream = STABLE, status = "2xx" }))
  end)
end)
