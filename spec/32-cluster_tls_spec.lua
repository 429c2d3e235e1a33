-- Integration: a cluster-scoped progression talking to Redis over TLS
-- (progression.redis.ssl), with a self-signed certificate: without
-- verification the node joins; with ssl_verify and no trusted CA it
-- refuses the server and is degraded, saying why.

local host = require "helpers.host"
local poll = require "helpers.poll"
local rs = require "helpers.redis"
local release = require "helpers.release"
local cjson = require "cjson.safe"

local PLUGIN_ID = "7d3e5f7a-9b1c-4d2e-8f3a-5b7c9d1e3f5a"
local REDIS_PORT = 6394

local function config(redis)
  return release.config(PLUGIN_ID, {
    upstreams = release.weights(90, 10),
    progression = { canary = release.CANARY, steps = { 10, 100 }, interval = 1,
                    scope = "cluster", redis = redis },
  }, { 9141, 9142 })
end

local function cluster_status()
  local status, body = host.admin("GET", "/canary-router/status")
  assert.equal(200, status)
  return body.data[1].progression.cluster
end

local function wait_for(pred, seconds) return poll.until_true(cluster_status, pred, seconds) end

describe("cluster progression over TLS", function()
  local srv

  setup(function()
    srv = rs.start { port = REDIS_PORT, tls = true }
  end)

  teardown(function()
    pcall(host.stop)
    if srv then srv:stop() end
  end)

  it("joins without verification, with SNI, and is refused with ssl_verify and no CA",
     function()
    host.start {
      config = config { host = "127.0.0.1", port = REDIS_PORT, ssl = true,
                        server_name = "redis.test", timeout = 500 },
      upstreams = { { name = release.STABLE, port = 9141 },
                    { name = release.CANARY, port = 9142 } },
      proxy_port = 8141, admin_port = 8241, status_port = 8341,
    }
    local c, ok = wait_for(function(s) return s.state == "ok" and s.version end, 5)
    assert.is_true(ok, cjson.encode(c))
    local keys = srv:cli("KEYS", "*")
    assert.is_truthy(keys:find("canary-router:" .. PLUGIN_ID .. ":", 1, true), keys)
    host.stop()

    host.start {
      config = config { host = "127.0.0.1", port = REDIS_PORT, ssl = true, ssl_verify = true,
                        server_name = "redis.test", timeout = 500 },
      upstreams = { { name = release.STABLE, port = 9141 },
                    { name = release.CANARY, port = 9142 } },
      proxy_port = 8141, admin_port = 8241, status_port = 8341,
    }
    c, ok = wait_for(function(s) return s.state == "degraded" end, 5)
    assert.is_true(ok, cjson.encode(c))
    assert.matches("^redis 127.0.0.1:" .. REDIS_PORT .. ": TLS handshake: ", c.error)
  end)
end)
