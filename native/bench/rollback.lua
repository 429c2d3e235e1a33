-- rollback.lua PROXY ADMIN PLUGIN_ID CANARY_PORT TRIALS
--
-- Per trial: start a fresh progression (POST /config, plugin_config.lua) (steps 10/50/100 %, interval 1 s,
-- min_requests 20, rollback_error_rate 10 %), let wrk load run, then make
-- the canary answer 30 % of requests with 503 (t0).  The canary's own
-- request counter (demo upstream GET /__stats) is polled every 2 ms; the
-- last time it grew is when the gateway sent the canary its last request.
-- Figure: that time minus t0, i.e. from the first failing answer to the
-- last canary-bound request; the goal is one interval plus 100 ms.

package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local socket = require "socket"
local plugin_config = require "plugin_config"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local proxy, admin, plugin, canary_port = arg[1], arg[2], arg[3], arg[4]
local trials = tonumber(arg[5]) or 5
local INTERVAL_MS = 1000

local function request(method, url, body)
  local chunks = {}
  local _, status = http.request {
    url = url, method = method,
    headers = body and { ["Content-Type"] = "application/json",
                         ["Content-Length"] = #body } or nil,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  }
  return status, table.concat(chunks)
end

local function canary_requests()
  local _, body = request("GET", "http://127.0.0.1:" .. canary_port .. "/__stats")
  return cjson.decode(body).requests
end

local function control(settings)
  assert(request("POST", "http://127.0.0.1:" .. canary_port .. "/__control",
                 cjson.encode(settings)) == 200)
end

local function figure(name, value, unit)
  print(("%s %s %s"):format(name, value, unit))
end

local results = {}
for t = 1, trials do
  control({ error_rate = 0 })
  -- DB-less, like the host's default: POST /config (a PATCH is 405).
  local status, body = plugin_config.set(request, "http://127.0.0.1:" .. admin, plugin,
    { progression = {
      canary = "automation-service-canary", steps = { 10, 50, 100 },
      interval = INTERVAL_MS / 1000, min_requests = 20 + t,
      max_error_rate = 1, rollback_error_rate = 10 } })
  assert(status == 201, body)
  os.execute(("wrk -t1 -c4 -d4s http://127.0.0.1:%s/ai/r > /dev/null 2>&1 &"):format(proxy))
  socket.sleep(1.2)
  control({ error_rate = 0.3, status = 503 })
  local t0 = socket.gettime()
  local last_count, last_change = canary_requests(), t0
  while socket.gettime() - last_change < 1.0 and socket.gettime() - t0 < 3.5 do
    socket.sleep(0.002)
    local n = canary_requests()
    if n ~= last_count then
      last_count, last_change = n, socket.gettime()
    end
  end
  results[#results + 1] = (last_change - t0) * 1000
  io.stderr:write(("#   trial %d: last canary-bound request %.1f ms after the first failure\n")
                  :format(t, results[#results]))
  os.execute("sleep 3") -- let this trial's wrk finish
end
table.sort(results)
figure("rollback_breach_to_last_canary_max_ms", ("%.1f"):format(results[#results]), "ms")
figure("rollback_breach_to_last_canary_median_ms",
       ("%.1f"):format(results[math.floor((#results + 1) / 2)]), "ms")
figure("rollback_goal_interval_plus_100_ms", INTERVAL_MS + 100, "ms")
