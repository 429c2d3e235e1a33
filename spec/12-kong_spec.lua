-- The gateway behaves as the Kong release and database mode it claims:
-- what a plugin can observe of Kong's runloop, checked against Kong's own
-- sources (tags 3.4.2 and 3.9.1; file and function cited at each test).
-- The same file runs on the local host (`make test`) and on real Kong
-- (`make test-kong`), so everything asserted here is real Kong's
-- behaviour; where the host claims it, the host must match.
--
-- Kong's behaviour is observed through a probe plugin
-- (spec/fixtures/probe), independent of canary-router: it answers /probe
-- with the config it was handed and logs configure() calls and worker
-- events per worker in PREFIX/probe-<pid>.log.

local host = require "helpers.host"
local cjson = require "cjson.safe"
local socket = require "socket"

local PROBE_ID = "5d0c7a7e-3b1f-4f0e-9a3c-2e6b8d4f1a90"
local ROUTE_ID = "8e2f4a6c-1d3b-4c5e-9f7a-0b2d4c6e8a1f"
local PLUGINS = "canary-router,probe"
local LUA_PATH = host.root() .. "/spec/fixtures/probe/?.lua"

local function config(tag, enabled)
  return {
    _format_version = "3.0",
    services = { {
      name = "probe-service",
      url = "http://127.0.0.1:9",  -- never contacted: the probe answers
      routes = { { name = "probe", id = ROUTE_ID, paths = { "/probe" } } },
    } },
    plugins = { {
      name = "probe", id = PROBE_ID, route = ROUTE_ID,
      enabled = enabled ~= false, config = { tag = tag },
    } },
  }
end

local function start(opts)
  opts.config = opts.config or config("a")
  opts.plugins = PLUGINS
  opts.lua_path = LUA_PATH
  opts.upstreams = {}
  return host.start(opts)
end

-- GET /probe: status, decoded body, headers.
local function probe()
  local status, body, headers = host.request("GET", "/probe/x")
  return status, cjson.decode(body or ""), headers
end

-- The probe's log lines of worker `pid` that start with `prefix`.
local function log_of(pid, prefix)
  local lines = {}
  local f = io.open(host.prefix() .. "/probe-" .. pid .. ".log")
  if f then
    for line in f:lines() do
      if line:sub(1, #prefix) == prefix then lines[#lines + 1] = line end
    end
    f:close()
  end
  return lines
end

-- Polls until pred() is true (returns true) or `seconds` pass (false).
local function eventually(pred, seconds)
  local deadline = socket.gettime() + seconds
  repeat
    if pred() then return true end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return pred()
end

local function last(t) return t[#t] end

-- On real Kong: the installed version only, DB-less in the setup with
-- workers as root (the probe writes its log into the prefix); the
-- database part on Kong 3.9.1 with PostgreSQL.
local REAL = host.kong()
local function runs(version, database)
  if not REAL then return true end
  return host.kong_version() == version and
         REAL == (database == "off" and "dbless" or "postgres")
end

for _, version in ipairs { "3.4.2", "3.9.1" } do
  local has_configure = version ~= "3.4.2"

  if runs(version, "off") then
  describe("Kong " .. version .. " DB-less", function()
    setup(function()
      start { kong_version = version }
    end)
    teardown(function() host.stop() end)

    -- kong/meta.lua (the release), kong/pdk/init.lua (kong.version,
    -- version_num), kong/pdk/response.lua exit (Server: kong/<version>).
    it("reports its version in GET /, kong.version and the Server header", function()
      local _, info = host.admin("GET", "/")
      assert.equal(version, info.version)
      assert.equal("off", info.configuration.database)
      local status, body, headers = probe()
      assert.equal(200, status)
      assert.equal(version, body.version)
      local major, minor, patch = version:match("^(%d+)%.(%d+)%.(%d+)$")
      assert.equal(major * 1000000 + minor * 1000 + patch, body.version_num)
      assert.equal("off", body.database)
      assert.equal("kong/" .. version, headers["server"])
    end)

    -- kong/runloop/plugins_iterator.lua: 3.9.1 has CONFIGURE_PHASE and
    -- PluginsIterator:configure (called from kong/init.lua init_worker and
    -- from the reconfigure handler in kong/runloop/handler.lua before the
    -- new iterator is used, with nil for a plugin without an enabled
    -- instance); 3.4.2 has no configure phase at all.
    it(has_configure and "calls configure in every worker, at start and after a change"
                      or "never calls configure (no such phase before 3.5)", function()
      local pids = host.worker_pids()
      assert.equal(2, #pids)
      local status = host.set_plugin_config(PROBE_ID, { tag = "b" })
      assert.equal(201, status)
      local _, body = probe()
      assert.equal("b", body.tag)
      -- every worker has switched (set_plugin_config waited), so their
      -- configure() calls, if any, are logged
      for _, pid in ipairs(pids) do
        local calls = log_of(pid, "configure ")
        if has_configure then
          -- the config it runs, then the change (real Kong, started
          -- empty and handed its config by POST /config, first called
          -- configure(nil))
          assert.equal("configure a", calls[#calls - 1], "worker " .. pid)
          assert.equal("configure b", last(calls), "worker " .. pid)
        else
          assert.same({}, calls, "worker " .. pid)
        end
      end
      -- no enabled instance: configure(nil)
      local events = {}
      for _, pid in ipairs(pids) do
        events[pid] = #log_of(pid, "event declarative/reconfigure")
      end
      status = host.admin("POST", "/config", config("c", false))
      assert.equal(201, status)
      for _, pid in ipairs(pids) do
        assert.is_true(eventually(function()
          return #log_of(pid, "event declarative/reconfigure") > events[pid]
        end, 5), "worker " .. pid .. " got no reconfigure event")
        if has_configure then
          -- Kong's own handler of that event calls configure once it has
          -- rebuilt the plugins iterator, after the probe heard the event
          assert.is_true(eventually(function()
            return last(log_of(pid, "configure ")) == "configure nil"
          end, 5), "worker " .. pid .. ": " .. tostring(last(log_of(pid, "configure "))))
        else
          local calls = log_of(pid, "configure ")
          assert.same({}, calls, "worker " .. pid)
        end
      end
      -- back to tag a, enabled; set_plugin_config's own write returns
      -- once every worker runs it (so the POST before it too)
      assert.equal(201, (host.admin("POST", "/config", config("a"))))
      assert.equal(201, (host.set_plugin_config(PROBE_ID, { tag = "a" })))
    end)

    -- kong/db/strategies/off/init.lua: update is unsupported ("cannot
    -- update 'plugins' entities when not using a database",
    -- OPERATION_UNSUPPORTED), answered 405 with that error by
    -- kong/api/endpoints.lua handle_error; DAO:update validates first.
    it("answers a valid PATCH /plugins/{id} 405 and changes nothing", function()
      local status, body = host.admin("PATCH", "/plugins/" .. PROBE_ID, { config = { tag = "z" } })
      assert.equal(405, status)
      assert.same({ code = 12, name = "operation unsupported",
                    message = "cannot update 'plugins' entities when not using a database" },
                  body)
      local _, plugin = host.admin("GET", "/plugins/" .. PROBE_ID)
      assert.equal("a", plugin.config.tag)
      local _, p = probe()
      assert.equal("a", p.tag)
    end)

    -- kong/db/declarative/import.lua load_into_cache_with_events ->
    -- kong/runloop/events.lua declarative_reconfigure_notify:
    -- worker_events.post("declarative", "reconfigure", { default_ws,
    -- router_hash, plugins_hash, balancer_hash }) to every worker; the
    -- hashes come only from a hybrid-mode sync (kong/api/routes/
    -- config.lua passes none), so after POST /config only default_ws.
    it("posts declarative/reconfigure to every worker after POST /config", function()
      local pids = host.worker_pids()
      local before = {}
      for _, pid in ipairs(pids) do
        before[pid] = #log_of(pid, "event declarative/reconfigure")
      end
      assert.equal(201, (host.set_plugin_config(PROBE_ID, { tag = "d" })))
      for _, pid in ipairs(pids) do
        assert.is_true(eventually(function()
          return #log_of(pid, "event declarative/reconfigure") > before[pid]
        end, 5), "worker " .. pid .. " got no reconfigure event")
        local data = cjson.decode(last(log_of(pid, "event declarative/reconfigure"))
                                  :match("^%S+ %S+ (.*)$"))
        assert.equal(1, data.n)
        assert.is_string(data.ws)
      end
    end)

    -- kong/db/dao/init.lua row_to_entity: the DAO returns entities
    -- without nulls unless asked; plugins have id, name, config, enabled,
    -- protocols, created_at, updated_at and foreign keys as { id = }.
    it("hands plugins Kong's entities from kong.db.plugins", function()
      local _, body = probe()
      local e = body.entity
      assert.equal(PROBE_ID, e.id)
      assert.equal("probe", e.name)
      assert.equal(body.tag, e.config.tag)
      assert.is_true(e.enabled)
      assert.same({ id = ROUTE_ID }, e.route)
      assert.is_nil(e.service)
      assert.is_nil(e.consumer)
      assert.is_number(e.created_at)
      assert.is_number(e.updated_at)
    end)
  end)
  end
end

if runs("3.9.1", "postgres") then
describe("Kong 3.9.1 with a database", function()
  describe("worker_consistency eventual", function()
    setup(function()
      -- a rebuild timer that never fires within this test
      start { database = "postgres", worker_state_update_frequency = 3600 }
    end)
    teardown(function() host.stop() end)

    -- kong/api/routes/config.lua: POST (and GET) /config without
    -- kong.db.strategy "off" answer 400 with this message.
    it("answers POST /config 400, as Kong with a database does", function()
      local status, body = host.admin("POST", "/config", config("x"))
      assert.equal(400, status)
      assert.same({ message = "this endpoint is only available when Kong is configured "
                              .. "to not use a database" }, body)
      local _, p = probe()
      assert.equal("a", p.tag)
    end)

    -- kong/runloop/handler.lua: with worker_consistency = eventual the
    -- router and plugins iterator are rebuilt only by the timers that
    -- run every worker_state_update_frequency seconds
    -- (rebuild_plugins_iterator_timer); get_updated_plugins_iterator
    -- rebuilds on the request path only when strict.  The DAO reads the
    -- database, so kong.db.plugins already has the new config.
    it("keeps proxying with the old config until the rebuild timer runs", function()
      local status, body = host.admin("PATCH", "/plugins/" .. PROBE_ID, { config = { tag = "b" } })
      assert.equal(200, status, cjson.encode(body))
      assert.equal("b", body.config.tag)
      for _ = 1, 50 do
        local _, p = probe()
        assert.equal("a", p.tag)
        assert.equal("b", p.entity.config.tag)
      end
      for _, pid in ipairs(host.worker_pids()) do
        assert.same({ "configure a" }, log_of(pid, "configure "))
      end
    end)
  end)

  describe("worker_state_update_frequency 1", function()
    setup(function()
      start { database = "postgres", worker_state_update_frequency = 1 }
    end)
    teardown(function() host.stop() end)

    -- the same timers, now running every second: the change arrives, and
    -- configure() has the new config before requests use it
    -- (build_plugins_iterator calls plugins_iterator:configure before
    -- replacing PLUGINS_ITERATOR).
    it("applies a PATCH in every worker from the rebuild timer", function()
      local status = host.admin("PATCH", "/plugins/" .. PROBE_ID, { config = { tag = "b" } })
      assert.equal(200, status)
      local pids = host.worker_pids()
      for _, pid in ipairs(pids) do
        assert.is_true(eventually(function()
          return last(log_of(pid, "configure ")) == "configure b"
        end, 5), "worker " .. pid .. " never configured the new config")
      end
      local _, p = probe()
      assert.equal("b", p.tag)
    end)

    -- kong/db/dao/init.lua DAO:update -> post_crud_event: "dao:crud" with
    -- post_local (this worker only), whose handler
    -- kong/runloop/events.lua dao_crud_handler posts "crud"/"plugins" and
    -- "crud"/"plugins:update" with post_local, data { operation, entity,
    -- old_entity, schema } without nulls.
    it("posts crud events for a PATCH in the worker that served it only", function()
      local pids = host.worker_pids()
      local before = {}
      for _, pid in ipairs(pids) do
        before[pid] = #log_of(pid, "event crud/")
      end
      local status = host.admin("PATCH", "/plugins/" .. PROBE_ID, { config = { tag = "c" } })
      assert.equal(200, status)
      local served
      assert.is_true(eventually(function()
        for _, pid in ipairs(pids) do
          if #log_of(pid, "event crud/") >= before[pid] + 2 then served = pid end
        end
        return served ~= nil
      end, 5), "no worker got the crud events")
      local got = log_of(served, "event crud/")
      local channels = {}
      for i = before[served] + 1, #got do
        local channel, json = got[i]:match("^event crud/(%S+) (.*)$")
        channels[#channels + 1] = channel
        local data = cjson.decode(json)
        assert.same({ operation = "update", schema = "plugins", id = PROBE_ID, tag = "c",
                      old_tag = "b", route = ROUTE_ID }, data)
      end
      table.sort(channels)
      assert.same({ "plugins", "plugins:update" }, channels)
      -- and never in another worker (post_local); they had their time
      socket.sleep(0.3)
      for _, pid in ipairs(pids) do
        if pid ~= served then
          assert.equal(before[pid], #log_of(pid, "event crud/"), "worker " .. pid)
        end
      end
    end)
  end)
end)
end
