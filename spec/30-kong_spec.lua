-- What differs between real Kong setups, run by `make test-kong` in each
-- (DB-less, PostgreSQL, unprivileged workers) and, for the parts the local
-- host models, by `make test`:
--
--   * a service whose host is an IP address (Kong's balancer then never
--     looks up an Upstream): no request fails because of the plugin;
--   * the plugin's schema through Kong's own schema library
--     (POST /schemas/plugins/validate);
--   * PATCH /plugins/{id}: 405 DB-less, applied on every worker with a
--     database;
--   * workers run as the configured user, and the segment is theirs, 0600.
--
-- Ports 18000/18001/18007 and upstreams on 19001/19002.

local host = require "helpers.host"
local release = require "helpers.release"
local cjson = require "cjson.safe"

local STABLE, CANARY = release.STABLE, release.CANARY
local PLUGIN_ID = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
local IP_ID = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
local PORTS = { proxy_port = 18000, admin_port = 18001, status_port = 18007 }

local function declarative()
  local doc = release.config(PLUGIN_ID, {
    upstreams = release.weights(90, 10),
    response_header = "X-Canary-Upstream",
  }, { 19001, 19002 })
  -- the stable version addressed by IP, as many services are
  doc.services[2] = {
    name = "ip-service",
    url = "http://127.0.0.1:19001",
    routes = { { name = "ip", paths = { "/ip" } } },
    plugins = { { name = "canary-router", id = IP_ID, config = {
      upstreams = release.weights(50, 50),
      response_header = "X-Canary-Upstream",
    } } },
  }
  return doc
end

local function sh(cmd)
  return host.run(cmd)
end


describe("Kong setups", function()
  setup(function()
    local args = {
      config = declarative(), workers = 2,
      upstreams = { { name = STABLE, port = 19001 }, { name = CANARY, port = 19002 } },
    }
    for k, v in pairs(PORTS) do args[k] = v end
    host.start(args)
  end)

  teardown(function()
    host.stop()
  end)

  it("never fails a request because the service's host is an IP address", function()
    local before = host.upstream_stats(STABLE).requests + host.upstream_stats(CANARY).requests
    local n = 200
    for _ = 1, n do
      local status, body = host.request("GET", "/ip/x")
      assert.equal(200, status, tostring(body))
    end
    -- every request reached a demo upstream
    local after = host.upstream_stats(STABLE).requests + host.upstream_stats(CANARY).requests
    assert.equal(n, after - before)
    assert.same({}, host.lua_errors())
  end)

  if not host.kong() then
    return
  end

  it("validates configs with Kong's own schema library", function()
    local function validate(config)
      return host.admin("POST", "/schemas/plugins/validate",
                        { name = "canary-router", config = config })
    end
    local status, body = validate({ upstreams = release.weights(90, 10) })
    assert.equal(200, status, cjson.encode(body))
    status, body = validate({ upstreams = release.weights(90, 20) })
    assert.equal(400, status)
    assert.equal("schema violation", body.name)
    assert.matches("weights must sum to 100 (got 110)", cjson.encode(body), 1, true)
    status, body = validate({ upstreams = release.weights(90, 10), sticky = { by = "moon" } })
    assert.equal(400, status)
    assert.matches("expected one of: none, header, cookie, consumer, ip", cjson.encode(body), 1,
                   true)
    status, body = validate({ upstreams = release.weights(90, 10), bogus = 1 })
    assert.equal(400, status)
    assert.matches("unknown field", cjson.encode(body), 1, true)
    -- and Kong fills the defaults the plugin relies on
    local _, plugin = host.admin("GET", "/plugins/" .. PLUGIN_ID)
    assert.is_table(plugin.config, cjson.encode(plugin))
    assert.is_table(plugin.config.trace, cjson.encode(plugin.config))
    assert.is_string(plugin.config.trace.header)
  end)

  it("answers PATCH /plugins/{id} as Kong's database mode says", function()
    local path = "/plugins/" .. PLUGIN_ID
    local _, before = host.admin("GET", path)
    local status, body = host.admin("PATCH", path,
                                    { config = { upstreams = release.weights(0, 100) } })
    if host.database() == "off" then
      -- DB-less Kong refuses it; the config stays
      assert.equal(405, status, cjson.encode(body))
      local _, after = host.admin("GET", path)
      assert.same(before, after)
      return
    end
    assert.equal(200, status, cjson.encode(body))
    -- the change reaches every worker: 200 requests on new connections
    -- all go to the canary once it is in force
    local ok = host.configure_plugin(PLUGIN_ID, { upstreams = release.weights(0, 100) })
    assert.is_true(ok)
    for _ = 1, 200 do
      local s, _, h = host.request("GET", "/ai/patched")
      assert.equal(200, s)
      assert.equal(CANARY, h["x-canary-upstream"])
    end
    ok = host.configure_plugin(PLUGIN_ID, { upstreams = release.weights(90, 10) })
    assert.is_true(ok)
  end)

  it("runs the workers as the configured user, with a segment of their own, mode 0600", function()
    local want = host.kong() == "unprivileged" and "nobody" or "root"
    for _, pid in ipairs(host.worker_pids()) do
      local _, user = sh("ps -o user= -p " .. pid)
      assert.equal(want, (user:gsub("%s+", "")))
    end
    -- the engine is up: metrics served, the instance published
    local status, text = host.status_request("GET", "/canary-router/metrics")
    assert.equal(200, status, text)
    local _, mode = sh("stat -c '%a' " .. host.segment_path())
    assert.equal("600", (mode:gsub("%s+$", "")))
    local _, prefix_owner = sh("stat -c '%U' " .. host.prefix())
    assert.equal("root", (prefix_owner:gsub("%s+$", "")))
  end)
end)
