-- Chaos under load, on the local Kong host (real nginx, 2 workers, real
-- demo upstreams, wrk from a second process on loopback):
--
--   * kill -9 of random workers while wrk runs and weights change;
--   * 50 reloads under load (CANARY_CHAOS_RELOADS: `make test-kong` does
--     fewer, since real Kong's master re-initialises for seconds at each);
--   * the segment's directory unwritable or full, or its path impossible,
--     at start: the gateway fails open to the stable upstream;
--   * a corrupt segment file at start: set aside and recreated.
--
-- Ports 18000/18001/18007 and upstreams on 19001/19002, so this spec can
-- run next to `make run` and the other integration specs.

local host = require "helpers.host"
local load = require "helpers.load"
local prom = require "helpers.prom"
local summary = require "helpers.summary"
local cjson = require "cjson.safe"
local socket = require "socket"

local PLUGIN_ID = "0c4a1f3e-2b7d-4e59-9a6c-8d1e2f3a4b5c"
local release = require "helpers.release"
local STABLE, CANARY = release.STABLE, release.CANARY
local PORTS = { proxy_port = 18000, admin_port = 18001, status_port = 18007 }
local UPSTREAMS = { { name = STABLE, port = 19001 }, { name = CANARY, port = 19002 } }
local URL = "http://127.0.0.1:18000/ai/chaos"
local ROUTE = "automation-service" -- the label: the plugin is scoped to the service
local WORKERS = 2
local RELOADS = tonumber(os.getenv("CANARY_CHAOS_RELOADS") or "") or 50
-- The canary's configured weight (%): the config's, then the last change.
local configured = 10

-- Figures for the end-of-test summary, written in the last teardown.
local figures = {
  workers_killed = 0, reloads = 0, requests_sent = 0, requests_failed = 0,
  counts_lost = 0, kill_socket_errors = 0,
}

local function declarative()
  return release.config(PLUGIN_ID, {
    upstreams = release.weights(90, 10),
    response_header = "X-Canary-Upstream",
  }, { 19001, 19002 })
end

local function start()
  local args = { config = declarative(), upstreams = UPSTREAMS, workers = WORKERS }
  for k, v in pairs(PORTS) do args[k] = v end
  return host.start(args)
end

local sh = host.run

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- Live worker processes of the gateway (children of the master).
local function live_workers()
  local _, out = sh("pgrep -P " .. assert(host.master_pid()))
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

-- Metrics text; retried, since a scrape may land on a worker being killed.
local function metrics()
  for _ = 1, 20 do
    local status, body = host.status_request("GET", "/canary-router/metrics")
    if status == 200 then return body end
    socket.sleep(0.05)
  end
  error("metrics did not answer 200")
end

local function requests_total(text)
  return prom.sum(text, "canary_requests_total")
end

local function assert_promtool(text)
  local ok, out = prom.check(text)
  assert.is_true(ok, "promtool check metrics failed:\n" .. out)
end

local function weights(canary)
  return release.weights(100 - canary, canary)
end

-- n sequential requests; returns canary count and failures.
local function send(n, path)
  local canary, failed = 0, 0
  for _ = 1, n do
    local status, _, h = host.request("GET", path or "/ai/split")
    if status ~= 200 then
      failed = failed + 1
    elseif h["x-canary-upstream"] == CANARY then
      canary = canary + 1
    end
  end
  figures.requests_sent = figures.requests_sent + n
  figures.requests_failed = figures.requests_failed + failed
  return canary, failed
end


describe("chaos", function()
  -- One prefix and one pair of demo upstreams for the whole file; the
  -- segment cases restart the gateway alone.
  setup(function()
    start()
    -- The first request labels the route (plugin id -> service name);
    -- after that every series keeps its name.
    send(20, "/ai/warmup")
  end)

  teardown(function()
    host.stop()
    for _, key in ipairs({ "workers_killed", "reloads", "requests_sent", "requests_failed",
                           "counts_lost", "kill_socket_errors" }) do
      summary.add(key, figures[key])
    end
  end)

  describe("under load", function()
    it("survives kill -9 of random workers while wrk runs and weights change", function()
      local seed = os.time()
      math.randomseed(seed)
      local before_text = metrics()
      local before = prom.parse(before_text)
      local last = before
      local steps = { 40, 25, 60, 5, 50, 35, 20, 45, 15, 30 }
      local killed, patched, patch_errors = {}, nil, {}
      local job = load.start { url = URL, seconds = 6, connections = 8 }
      socket.sleep(0.5)
      local t0 = socket.gettime()
      for i, canary in ipairs(steps) do
        -- a random live worker: SIGKILL, no chance to clean up
        local live = live_workers()
        assert.is_true(#live >= 1, "no live worker")
        local pid = live[math.random(#live)]
        assert(sh("kill -9 " .. pid))
        killed[#killed + 1] = pid
        -- a weight change right behind it (POST /config, DB-less); the
        -- call itself may land on the dying worker, so a failed one is
        -- retried (writing the same weights twice is harmless)
        local ok = false
        for _ = 1, 30 do
          local done, status, body = host.configure_plugin(PLUGIN_ID,
                                                           { upstreams = weights(canary) })
          if done then ok = true break end
          patch_errors[#patch_errors + 1] = tostring(status) .. " " ..
                                            (type(body) == "table" and cjson.encode(body) or
                                             tostring(body))
          socket.sleep(0.05)
        end
        assert.is_true(ok, "weight change never succeeded: " .. table.concat(patch_errors, "; "))
        patched = canary
        configured = canary
        -- the segment stays readable and its counters never go back
        local text = metrics()
        local now = prom.parse(text)
        local back = prom.went_back(last, now)
        assert.same({}, back)
        if i % 3 == 0 then assert_promtool(text) end
        last = now
        local wait = t0 + i * 0.3 - socket.gettime()
        if wait > 0 then socket.sleep(wait) end
      end
      local r = load.wait(job)
      figures.workers_killed = figures.workers_killed + #killed
      figures.requests_sent = figures.requests_sent + r.requests
      figures.requests_failed = figures.requests_failed + r.non2xx + r.errors.connect
                                + r.errors.timeout
      figures.kill_socket_errors = figures.kill_socket_errors + r.errors.read + r.errors.write
      print(("\n  kill -9 chaos (seed %d): %d workers killed, %d requests, %d non-2xx, " ..
             "socket errors connect %d read %d write %d timeout %d, config write retries %d")
            :format(seed, #killed, r.requests, r.non2xx, r.errors.connect, r.errors.read,
                    r.errors.write, r.errors.timeout, #patch_errors))

      -- nginx respawned every killed worker: two live, registered, none killed
      local deadline = socket.gettime() + 5
      local live
      repeat
        live = live_workers()
        local registered = host.worker_pids()
        table.sort(registered)
        table.sort(live)
        local same = #live == WORKERS and table.concat(live, ",") == table.concat(registered, ",")
        if same then break end
        socket.sleep(0.1)
      until socket.gettime() > deadline
      assert.equal(WORKERS, #live)
      for _, pid in ipairs(killed) do
        for _, l in ipairs(live) do assert.not_equal(pid, l) end
      end
      assert.equal(#killed, #host.log_lines("exited on signal 9"))

      -- no request saw a 5xx; cut connections are read/write errors only
      assert.is_true(r.requests > 1000, r.raw)
      assert.equal(0, r.non2xx, r.raw)
      assert.equal(0, r.errors.connect, r.raw)
      assert.equal(0, r.errors.timeout, r.raw)

      -- every answered request was counted: at most wrk's in-flight
      -- requests at its end are counted without wrk seeing the answer
      socket.sleep(0.3)
      local after_text = metrics()
      local after = prom.parse(after_text)
      assert.same({}, prom.went_back(before, after))
      assert_promtool(after_text)
      local counted = requests_total(after) - requests_total(before)
      local lost = math.max(0, r.requests - counted)
      figures.counts_lost = figures.counts_lost + lost
      assert.equal(0, lost, ("wrk got %d answers, metrics counted %d"):format(r.requests, counted))
      assert.is_true(counted - r.requests <= 8 + #killed,
                     ("counted %d for %d answers"):format(counted, r.requests))
      assert.equal(0, prom.sum(after, "canary_requests_total", { status = "5xx" })
                      - prom.sum(before, "canary_requests_total", { status = "5xx" }))
      -- canarystat, attaching read-only from outside, reads the same counts
      local ok, out = sh(host.root() .. "/build/canarystat --json --segment "
                         .. host.segment_path())
      assert.is_true(ok, out)
      local mine
      for _, d in ipairs(cjson.decode(out).data) do
        if d.plugin_id == PLUGIN_ID then mine = d end
      end
      assert.is_table(mine, out)
      for _, u in ipairs(mine.upstreams) do
        assert.equal(prom.sum(after, "canary_requests_total", { upstream = u.name }), u.requests)
      end

      -- the split is the last one written, on every (new) worker
      assert.equal(patched / 100, prom.value(after, "canary_upstream_weight",
                                             { route = ROUTE, upstream = CANARY }))
      local canary, failed = send(1000)
      assert.equal(0, failed)
      assert.is_true(math.abs(canary - patched * 10) <= 10,
                     ("canary got %d of 1000 at %d %%"):format(canary, patched))
      assert.same({}, host.lua_errors(true))
    end)

    it("takes " .. RELOADS .. " reloads under load with zero failed requests and monotone counters",
       function()
      local before_text = metrics()
      local before = prom.parse(before_text)
      local last = before
      -- A new connection per request: see helpers/load.lua.
      -- (4 connections: enough to keep every worker busy at each reload,
      -- and fewer CPU cycles taken from the reloads themselves)
      -- (timeout 10 s: a reload makes the master re-run its init, which on
      -- real Kong takes seconds of a busy two-core machine's CPU; a slow
      -- answer is not a failed one)
      local job = load.start { url = URL, seconds = 120, connections = 4, close = true,
                               timeout = 10 }
      socket.sleep(0.5)
      local t0 = socket.gettime()
      local reloads = 0
      local ok, err = pcall(function()
        for _ = 1, RELOADS do
          host.reload()
          reloads = reloads + 1
          local now = prom.parse(metrics())
          local back = prom.went_back(last, now)
          assert(#back == 0, "counters went back after reload " .. reloads .. ": "
                              .. table.concat(back, "; "))
          last = now
        end
      end)
      socket.sleep(0.3)
      local r = load.stop(job)
      figures.reloads = figures.reloads + reloads
      figures.requests_sent = figures.requests_sent + r.requests
      figures.requests_failed = figures.requests_failed + r.non2xx + r.socket_errors
      print(("\n  reloads: %d under load in %.1f s, %d requests, %d non-2xx, %d socket errors")
            :format(reloads, socket.gettime() - t0, r.requests, r.non2xx, r.socket_errors))
      assert(ok, err)
      assert.equal(RELOADS, reloads)
      assert.is_true(r.requests > 1000, r.raw)
      assert.equal(0, r.non2xx, r.raw)
      assert.equal(0, r.socket_errors, r.raw)

      socket.sleep(0.3)
      local after_text = metrics()
      local after = prom.parse(after_text)
      assert.same({}, prom.went_back(before, after))
      assert_promtool(after_text)
      local counted = requests_total(after) - requests_total(before)
      local lost = math.max(0, r.requests - counted)
      figures.counts_lost = figures.counts_lost + lost
      assert.equal(0, lost, ("wrk got %d answers, metrics counted %d"):format(r.requests, counted))
      -- the old workers end (real Kong's may take a few seconds to finish
      -- their timers) and no worker is lost
      local deadline = socket.gettime() + 30
      while #live_workers() ~= WORKERS and socket.gettime() < deadline do socket.sleep(0.1) end
      assert.equal(WORKERS, #live_workers())
      assert.same({}, host.lua_errors(true))
      -- a reload keeps the weights in force before it (the last change
      -- made through the Admin API), on every new worker
      local label = { route = ROUTE, upstream = CANARY }
      local weight = prom.value(before, "canary_upstream_weight", label)
      assert.equal(weight, prom.value(after, "canary_upstream_weight", label))
      local canary = send(1000)
      assert.is_true(math.abs(canary - weight * 1000) <= 10,
                     ("canary got %d of 1000 at %g %%"):format(canary, weight * 100))
    end)
  end)


  -- Segment failures at start: the gateway restarts on each bad path.
  describe("segment unusable at start", function()
    local mounts = {}

    -- (0755: workers running as another user must reach what is inside,
    -- so that the failure seen is the one the test sets up)
    local function tmpdir()
      local _, out = sh("mktemp -d /tmp/canary_chaos.XXXXXX")
      local dir = out:gsub("%s+$", "")
      sh("chmod 0755 " .. dir)
      return dir
    end

    -- Mounts a tmpfs with `opts`; nil and the reason when this machine
    -- does not let us (not root, no CAP_SYS_ADMIN).
    local function mount_tmpfs(opts)
      local dir = tmpdir()
      local ok, out = sh("mount -t tmpfs -o " .. opts .. " canary-chaos " .. dir)
      if not ok then return nil, out end
      mounts[#mounts + 1] = dir
      return dir
    end

    -- Restarts the gateway on `segment`; returns the error-log mark.
    local function restart(segment)
      local mark = #host.error_log()
      host.restart { segment = segment }
      return mark
    end

    after_each(function()
      -- the gateway keeps nothing open on a segment it could not attach
      for i = #mounts, 1, -1 do
        if not sh("umount " .. mounts[i]) then sh("umount -l " .. mounts[i]) end
        sh("rmdir " .. mounts[i])
        mounts[i] = nil
      end
    end)

    -- Every request reaches the stable upstream with 200 (and a trace ID);
    -- the reason is logged at level error by each worker, once a minute
    -- while it lasts (so exactly once within this test).
    local function assert_fails_open(reason, mark)
      local up_before = host.upstream_stats(STABLE).requests
      local canary_before = host.upstream_stats(CANARY).requests
      local n = 300
      for _ = 1, n do
        local status, _, h = host.request("GET", "/ai/failopen")
        assert.equal(200, status)
        assert.equal(STABLE, h["x-canary-upstream"])
        assert.matches("^" .. ("%x"):rep(32) .. "$", h["x-trace-id"])
      end
      figures.requests_sent = figures.requests_sent + n
      assert.equal(n, host.upstream_stats(STABLE).requests - up_before)
      assert.equal(0, host.upstream_stats(CANARY).requests - canary_before)
      -- the metrics say the engine is down (an alert, not a silence) and
      -- the status API says why
      local status, body = host.status_request("GET", "/canary-router/metrics")
      assert.equal(200, status)
      assert.matches("\ncanary_engine_up 0\n", "\n" .. body, 1, true)
      local st, json = host.admin("GET", "/canary-router/status")
      assert.equal(200, st)
      assert.is_false(json.engine.up)
      assert.matches(reason, json.engine.reason, 1, true)

      local lines = host.log_lines("canary-router cannot attach its segment", mark)
      local per_pid = {}
      for _, l in ipairs(lines) do
        assert.equal("error", l.level, l.line)
        assert.matches("routing every request to its stable upstream", l.line, 1, true)
        assert.matches(reason, l.line, 1, true)
        per_pid[l.pid] = (per_pid[l.pid] or 0) + 1
      end
      local workers = live_workers()
      assert.equal(WORKERS, #workers)
      for _, pid in ipairs(workers) do
        assert.equal(1, per_pid[pid], "worker " .. pid .. " logged the reason " ..
                     tostring(per_pid[pid]) .. " times:\n" .. host.log_since(mark))
      end
      assert.equal(WORKERS, #lines)
      assert.same({}, host.lua_errors(true))
    end

    it("fails open when the segment's directory is read-only", function()
      local dir, err = mount_tmpfs("ro,size=64m")
      if not dir then pending("cannot mount a tmpfs here: " .. err) return end
      local mark = restart(dir .. "/canary-router.seg")
      assert_fails_open("Read-only file system", mark)
    end)

    it("fails open when the disk is full at start, leaving no half-made file", function()
      local dir, err = mount_tmpfs("size=1m")
      if not dir then pending("cannot mount a tmpfs here: " .. err) return end
      local mark = restart(dir .. "/canary-router.seg")
      assert_fails_open("No space left on device", mark)
      local _, listing = sh("ls -A " .. dir)
      assert.equal("", listing)
    end)

    it("fails open when the segment path cannot be created (a file used as a directory)", function()
      local dir = tmpdir()
      write_file(dir .. "/not-a-dir", "x")
      local mark = restart(dir .. "/not-a-dir/canary-router.seg")
      assert_fails_open("Not a directory", mark)
    end)

    -- A corrupt file at `path`: set aside as <path>.bad-*, recreated
    -- 0600, traffic flows and is counted from zero, the log says so once.
    local function assert_recreated(path, original, mark)
      local dir, base = path:match("^(.*)/([^/]+)$")
      local _, listing = sh("ls " .. dir)
      local bad = listing:match("(" .. base:gsub("%p", "%%%0") .. "%.bad%-[%d%-]+)")
      assert.truthy(bad, "no .bad-* file in " .. listing)
      assert.equal(original, read_file(dir .. "/" .. bad))
      local _, mode = sh("stat -c %a " .. path)
      assert.equal("600", mode:match("%d+"))

      local canary, failed = send(1000, "/ai/recreated")
      assert.equal(0, failed)
      -- the configured weights, which a restart keeps
      assert.is_true(math.abs(canary - configured * 10) <= 10,
                     ("canary got %d of 1000 at %d %%"):format(canary, configured))
      local text = prom.settled(metrics)
      assert_promtool(text)
      assert.equal(1000, requests_total(text))

      local lines = host.log_lines("was unusable and has been recreated", mark)
      assert.equal(1, #lines, host.log_since(mark))
      assert.matches("moved aside to " .. dir .. "/" .. bad, lines[1].line, 1, true)
      assert.same({}, host.lua_errors(true))
    end

    it("sets a segment of random bytes aside and recreates it", function()
      local path = host.prefix() .. "/random.seg"
      local f = assert(io.open("/dev/urandom", "rb"))
      local junk = f:read(65536)
      f:close()
      write_file(path, junk)
      sh("chmod 600 " .. path) -- ours, only broken: set aside, not refused
      local mark = restart(path)
      assert_recreated(path, junk, mark)
    end)

    it("sets a truncated segment aside and recreates it", function()
      -- the segment the load above filled, cut in half
      local whole = assert(read_file(host.prefix() .. "/canary-router.seg"))
      local path = host.prefix() .. "/truncated.seg"
      local cut = whole:sub(1, math.floor(#whole / 2))
      write_file(path, cut)
      sh("chmod 600 " .. path)
      local mark = restart(path)
      assert_recreated(path, cut, mark)
    end)

    -- A file someone else could have written (open to others, or a
    -- symlink planted at the path) is never used and never moved: not
    -- ours.  The gateway fails open and says why.
    it("refuses a segment file open to others, or a symlink, and leaves it alone", function()
      local whole = assert(read_file(host.prefix() .. "/canary-router.seg"))
      local path = host.prefix() .. "/shared.seg"
      write_file(path, whole)
      sh("chmod 666 " .. path)
      if host.kong() == "unprivileged" then
        -- the workers' own file (they run as nobody), but for its mode:
        -- a file of root's they refuse for its owner before its mode
        sh("chown nobody:nogroup " .. path)
      end
      local mark = restart(path)
      assert_fails_open("segment file is unsafe: " .. path .. " has mode 0666", mark)
      assert.equal(whole, read_file(path))

      local link = host.prefix() .. "/link.seg"
      sh("chmod 600 " .. path .. " && ln -s " .. path .. " " .. link)
      mark = restart(link)
      assert_fails_open("segment file is unsafe: " .. link .. " is a symbolic link", mark)
      assert.equal(whole, read_file(path))
      local _, listing = sh("ls " .. host.prefix())
      assert.is_nil(listing:match("shared%.seg%.bad"), listing)
      assert.is_nil(listing:match("link%.seg%.bad"), listing)
    end)
  end)
end)
