-- Integration: a long-running gateway on the local Kong host (real nginx,
-- 2 workers, real upstreams, real HTTP).  Statistics follow the upstream's
-- name through reorders and renames, forced requests are counted apart,
-- plugin instances come and go without running the segment out of
-- slots, and a scrape of hundreds of routes is one valid exposition sent
-- in pieces.
--
-- The segments are made here, before the gateway attaches them (an
-- existing segment keeps its sizes): 12 route slots whose retired slots
-- wait 1 s, so the specs can go through many instances quickly.

local host = require "helpers.host"
local prom = require "helpers.prom"
local release = require "helpers.release"
local engine = require "kong.plugins.canary-router.engine"
local cjson = require "cjson.safe"
local socket = require "socket"

local STABLE, CANARY = release.STABLE, release.CANARY
local V3 = "automation-service-canary-v3"
local PLUGIN_ID = "0c1f3d2e-5a6b-4c7d-8e9f-a0b1c2d3e4f5"

local function segment(path, opts)
  os.remove(path)
  local seg = assert(engine.open(path, opts))
  return seg
end

local function metrics()
  local status, body = host.status_request("GET", "/canary-router/metrics")
  assert.equal(200, status)
  return body
end

local function patch(config)
  local status, body = host.set_plugin_config(PLUGIN_ID, config)
  assert.is_true(status == 200 or status == 201, cjson.encode(body))
end

-- n requests; the count of each upstream that served (X-Canary-Upstream).
local function send(n, path, headers)
  local served = {}
  for _ = 1, n do
    local status, _, h = host.request("GET", path or "/ai/x", { headers = headers })
    assert.equal(200, status)
    local up = h["x-canary-upstream"]
    served[up] = (served[up] or 0) + 1
  end
  return served
end

local function requests_of(text, upstream)
  return prom.sum(text, "canary_requests_total", { route = "automation-service",
                                                  upstream = upstream })
end

describe("canary-router over a gateway's life (local Kong host)", function()
  local dir

  setup(function()
    local p = io.popen("mktemp -d /tmp/canary_lifecycle.XXXXXX")
    dir = p:read("*l")
    p:close()
    segment(dir .. "/small.seg", { max_routes = 12, max_stat_slots = 48,
                                   retire_grace_s = 1 }):close()
    local config = release.config(PLUGIN_ID, {
      upstreams = release.weights(90, 10),
      override = { header = "X-Canary" },
      response_header = "X-Canary-Upstream",
    })
    -- a third upstream, the canary's next version (on the canary's port)
    config.upstreams[3] = { name = V3, targets = { { target = "127.0.0.1:9002" } } }
    host.start { config = config, segment = dir .. "/small.seg" }
  end)

  teardown(function()
    host.stop()
    os.execute("rm -rf " .. dir)
  end)

  it("keeps each name's series through a reorder, a rename and a return", function()
    send(300)
    local before = prom.parse(prom.settled(metrics))
    local stable0, canary0 = requests_of(before, STABLE), requests_of(before, CANARY)
    assert.is_true(canary0 > 0 and stable0 > canary0)

    -- reorder: the same names, the same series, nothing goes back
    patch({ upstreams = { { name = CANARY, weight = 10 }, { name = STABLE, weight = 90 } } })
    local after = prom.parse(prom.settled(metrics))
    assert.same({}, prom.went_back(before, after))
    assert.equal(stable0, requests_of(after, STABLE))
    assert.equal(canary0, requests_of(after, CANARY))
    local served = send(200)
    after = prom.parse(prom.settled(metrics))
    assert.equal(stable0 + served[STABLE], requests_of(after, STABLE))
    assert.equal(canary0 + (served[CANARY] or 0), requests_of(after, CANARY))
    canary0 = requests_of(after, CANARY)

    -- rename: the new version starts at zero, the old one's series leave
    patch({ upstreams = { { name = STABLE, weight = 90 }, { name = V3, weight = 10 } } })
    local text = prom.settled(metrics)
    assert.equal(0, requests_of(text, V3))
    assert.is_nil(text:find('upstream="' .. CANARY .. '"', 1, true))
    served = send(100)
    assert.equal(served[V3], requests_of(prom.settled(metrics), V3))

    -- and back: the old version's counters resume where they stopped
    patch({ upstreams = release.weights(90, 10) })
    text = prom.settled(metrics)
    assert.equal(canary0, requests_of(text, CANARY))
    assert.is_nil(text:find('upstream="' .. V3 .. '"', 1, true))
    assert.equal(0, prom.value(text, "canary_slots_exhausted_total", { pool = "upstreams" }))
  end)

  it("counts forced requests in their own series, apart from what gates judge", function()
    local before = prom.parse(prom.settled(metrics))
    local served = send(50, "/ai/f", { ["X-Canary"] = "always" })
    assert.equal(50, served[CANARY])
    local after = prom.parse(prom.settled(metrics))
    assert.equal(requests_of(before, CANARY), requests_of(after, CANARY))
    local l = { route = "automation-service", upstream = CANARY, status = "2xx" }
    assert.equal(50, prom.value(after, "canary_forced_requests_total", l)
                     - (prom.value(before, "canary_forced_requests_total", l) or 0))
    local ok, out = prom.check(prom.settled(metrics))
    assert.is_true(ok, out)
  end)

  it("serves the metrics of 400 instances in pieces, as one valid exposition", function()
    local path = dir .. "/many.seg"
    segment(path, { max_routes = 410, max_stat_slots = 900 }):close()
    host.restart { segment = path }
    local services = {}
    for r = 1, 400 do
      local name = ("route-%03d"):format(r)
      services[r] = {
        name = name, url = "http://automation-service",
        routes = { { name = name, paths = { "/" .. name } } },
        plugins = { {
          name = "canary-router",
          id = ("%08x-1111-4000-8000-000000000000"):format(r),
          config = { upstreams = release.weights(90, 10),
                     response_header = "X-Canary-Upstream" },
        } },
      }
    end
    local status, body = host.admin("POST", "/config", {
      _format_version = "3.0", services = services,
      upstreams = {
        { name = STABLE, targets = { { target = "127.0.0.1:9001" } } },
        { name = CANARY, targets = { { target = "127.0.0.1:9002" } } },
      },
    })
    assert.equal(201, status, cjson.encode(body))
    local served = send(40, "/route-007/x")
    assert.equal(40, served[STABLE] + (served[CANARY] or 0))
    local text, headers
    status, text, headers = host.status_request("GET", "/canary-router/metrics")
    assert.equal(200, status)
    -- written in pieces, not as one body of known length
    assert.equal("chunked", headers["transfer-encoding"])
    assert.is_true(#text > 1000000, #text)
    local ok, out = prom.check(text)
    assert.is_true(ok, out)
    local helps = 0
    for _ in text:gmatch("# HELP canary_requests_total ") do helps = helps + 1 end
    assert.equal(1, helps)
    local routes = 0
    for _ in text:gmatch("canary_progression_step{") do routes = routes + 1 end
    assert.equal(400, routes)
    assert.equal(40, prom.sum(text, "canary_upstream_latency_seconds_count",
                              { route = "route-007" }))
    -- its last line says in how many pieces it held the worker's event
    -- loop, and for how long at most and in all
    local pieces, longest, all, longest_cpu, all_cpu = text:match(
      "\n# canary%-router scrape: (%d+) pieces, longest (%d+) us, (%d+) us in all; " ..
      "CPU: longest (%d+) us, (%d+) us in all\n$")
    assert.truthy(pieces, text:sub(-200))
    assert.is_true(tonumber(pieces) > 1, pieces)
    assert.is_true(tonumber(longest) <= tonumber(all))
    assert.is_true(tonumber(longest_cpu) <= tonumber(all_cpu))
  end)

  it("keeps 68 plugin instances over a 12-slot segment's life working", function()
    host.restart { segment = dir .. "/small.seg" }
    local live_before
    -- Each round's config retires the round before; with 12 slots, the
    -- round after next takes those slots over, once their 1 s grace
    -- period is over.
    local posted = {}
    for round = 1, 17 do
      local wait = posted[round - 2] and 1.1 - (socket.gettime() - posted[round - 2])
      if wait and wait > 0 then socket.sleep(wait) end
      posted[round] = socket.gettime()
      local services, paths = {}, {}
      for i = 1, 4 do
        local name = ("svc-%02d-%d"):format(round, i)
        paths[i] = "/" .. name
        services[i] = {
          name = name, url = "http://automation-service",
          routes = { { name = name, paths = { paths[i] } } },
          plugins = { {
            name = "canary-router",
            id = ("%08x-0000-4000-8000-%012x"):format(round, i),
            config = { upstreams = release.weights(50, 50),
                       response_header = "X-Canary-Upstream" },
          } },
        }
      end
      local status, body = host.admin("POST", "/config", {
        _format_version = "3.0", services = services,
        upstreams = {
          { name = STABLE, targets = { { target = "127.0.0.1:9001" } } },
          { name = CANARY, targets = { { target = "127.0.0.1:9002" } } },
        },
      })
      assert.equal(201, status, cjson.encode(body))
      assert.is_true(host.wait_applied())
      for i = 1, 4 do
        -- both workers: every request is answered by a routed upstream
        local served = send(8, paths[i] .. "/x")
        assert.equal(8, (served[STABLE] or 0) + (served[CANARY] or 0), paths[i])
      end
      local text = prom.settled(metrics)
      local routes = {}
      for v in text:gmatch('canary_progression_step{route="([^"]+)"') do routes[#routes + 1] = v end
      table.sort(routes)
      assert.same({ ("svc-%02d-1"):format(round), ("svc-%02d-2"):format(round),
                    ("svc-%02d-3"):format(round), ("svc-%02d-4"):format(round) }, routes)
      if live_before then
        assert.is_nil(text:find(live_before, 1, true), "a removed instance is exported")
      end
      assert.equal(0, prom.value(text, "canary_slots_exhausted_total", { pool = "routes" }))
      live_before = ('route="svc-%02d-1"'):format(round)
    end
  end)
end)
