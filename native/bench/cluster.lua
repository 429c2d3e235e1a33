-- native/bench/cluster.lua - a cluster-scoped progression on three nodes of
-- the local host sharing a real redis-server (see stage_cluster.sh):
--
--   cluster_step_spread_{median,max}_ms  for every step of a 10-step
--       progression (1 s windows, all nodes under load), the time between
--       the first and the last node routing with the new step, as seen by
--       polling the three Admin APIs every few ms (so each figure carries
--       up to one poll round, ~10-20 ms, of error);
--   cluster_redis_cmds_per_node_s  Redis commands processed per node per
--       second in a steady run (INFO stats, total_commands_processed).
--
-- Usage: luajit cluster.lua  (LUA_PATH: build/lua, kong/host/lib, spec)

local host = require "helpers.host"
local rs = require "helpers.redis"
local load = require "helpers.load"
local release = require "helpers.release"
local socket = require "socket"

local N = 3
local PLUGIN_ID = "2f4e6a8c-1b3d-4f5a-9c7e-0d2b4f6a8c1e"
local REDIS_PORT = 28990

local function ports(i)
  return { proxy = 28910 + i, admin = 28920 + i, status = 28930 + i,
           stable = 28940 + 2 * i, canary = 28941 + 2 * i }
end

local function figure(name, value, unit)
  io.write(("%s %s %s\n"):format(name, value, unit))
end

local srv = rs.start { port = REDIS_PORT }
local nodes = {}
local ok, err = pcall(function()
  local steps = { 10, 20, 30, 40, 50, 60, 70, 80, 90, 100 }
  for i = 1, N do
    local p = ports(i)
    nodes[i] = host.new()
    nodes[i].start {
      config = release.config(PLUGIN_ID, {
        upstreams = release.weights(90, 10),
        progression = { canary = release.CANARY, steps = steps, interval = 1,
                        min_requests = 5, max_error_rate = 5, failure_limit = 3,
                        scope = "cluster",
                        redis = { host = "127.0.0.1", port = REDIS_PORT } },
      }, { p.stable, p.canary }),
      upstreams = { { name = release.STABLE, port = p.stable },
                    { name = release.CANARY, port = p.canary } },
      proxy_port = p.proxy, admin_port = p.admin, status_port = p.status,
      workers = 2, log_level = "warn",
    }
  end
  local jobs = {}
  for i = 1, N do
    jobs[i] = load.start { url = "http://127.0.0.1:" .. ports(i).proxy .. "/ai/b",
                           seconds = 16, connections = 2 }
  end
  local first = {}
  local deadline = socket.gettime() + 15
  local done
  repeat
    done = true
    for i = 1, N do
      local status, body = nodes[i].admin("GET", "/canary-router/status")
      local pr = status == 200 and body.data[1] and body.data[1].progression or {}
      local step = pr.step or 0
      local t = socket.gettime()
      for k = 2, step do
        first[k] = first[k] or {}
        first[k][i] = first[k][i] or t
      end
      if pr.state ~= "promoted" then done = false end
    end
  until done or socket.gettime() > deadline
  -- steady state: promoted, still polling Redis every tick
  local function total()
    return tonumber(srv:cli("INFO", "stats"):match("total_commands_processed:(%d+)"))
  end
  local c0, t0 = total(), socket.gettime()
  socket.sleep(3)
  local c1, t1 = total(), socket.gettime()
  for _, j in ipairs(jobs) do load.stop(j) end

  local spreads = {}
  for k = 2, #steps do
    if first[k] and first[k][1] and first[k][2] and first[k][3] then
      local lo, hi = math.huge, 0
      for i = 1, N do
        lo = math.min(lo, first[k][i])
        hi = math.max(hi, first[k][i])
      end
      spreads[#spreads + 1] = (hi - lo) * 1000
    end
  end
  table.sort(spreads)
  io.stderr:write(("# cluster: %d of %d steps seen on all nodes%s\n"):format(
    #spreads, #steps - 1, done and ", promoted" or ", NOT promoted"))
  if #spreads > 0 then
    figure("cluster_step_spread_median_ms",
           ("%.0f"):format(spreads[math.floor((#spreads + 1) / 2)]), "ms")
    figure("cluster_step_spread_max_ms", ("%.0f"):format(spreads[#spreads]), "ms")
  end
  -- the INFO call itself is one command
  figure("cluster_redis_cmds_per_node_s",
         ("%.1f"):format((c1 - c0 - 1) / N / (t1 - t0)), "cmd/s")
end)
for i = 1, N do
  if nodes[i] then pcall(nodes[i].stop) end
end
srv:stop()
if not ok then
  io.stderr:write("cluster bench failed: ", tostring(err), "\n")
  os.exit(1)
end
