-- native/bench/propagation.lua - how long after an Admin API write of new
-- weights (POST /config, DB-less: the host's default mode, where Kong
-- answers PATCH with 405) returns until every worker routes with them.
--
--   luajit propagation.lua PROXY_PORT ADMIN_PORT PLUGIN_ID TRIALS [MODE]
--
-- MODE is `config` (the default: DB-less, GET and POST /config, merged
-- as JSON), `file:PATH` (DB-less: the operator's own declarative file,
-- PATH, its two `{ name: ..., weight: N }` upstream lines rewritten and
-- POSTed to /config, for a Kong whose GET /config exports YAML) or
-- `patch` (a node with a database: PATCH /plugins/{id}, answered 200).
--
-- Opens keep-alive connections to the proxy until each of the gateway's
-- workers serves two of them (the owner of each server-side socket is
-- read with `ss -p`).  A trial changes the canary-router instance from
-- stable 100 / canary 0 to 0 / 100 (or back) with GET /config and POST
-- /config (plugin_config.lua) over a keep-alive Admin API connection,
-- takes t0 when the POST's 201 response has been read, then
-- sends requests round-robin over the proxy connections, each connection
-- until it answers with X-Canary-Upstream naming the new target.  The
-- trial's figure is the time from t0 until the last connection has seen
-- the new target: an upper bound of the propagation time, since it
-- includes the polling requests' own round trips.  Responses that still
-- came from the old target after t0 are counted as stale.
--
-- Prints "name value unit" lines: max, median and min over all trials
-- (both directions), stale responses, and Kong's polling reference.

package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local socket = require "socket"
local ffi = require "ffi"
local plugin_config = require "plugin_config"

ffi.cdef [[
struct prop_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct prop_timespec *ts);
]]
local ts = ffi.new("struct prop_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) / 1e6
end

local PROXY, ADMIN = tonumber(arg[1]), tonumber(arg[2])
local PLUGIN_ID, TRIALS = arg[3], tonumber(arg[4] or 20)
local MODE = arg[5] or "config"
local STABLE, CANARY = "automation-service", "automation-service-canary"
local TIMEOUT_MS = 5000

local function fail(msg)
  io.stderr:write("propagation: ", msg, "\n")
  os.exit(1)
end

local function connect(port)
  local c = assert(socket.tcp())
  c:settimeout(5)
  c:setoption("tcp-nodelay", true)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then fail("connect " .. port .. ": " .. tostring(err)) end
  return c
end

-- One HTTP/1.1 exchange on a keep-alive connection; returns status, the
-- lower-cased headers and, with `keep`, the body.  Bodies (Content-Length
-- or chunked) are read, and dropped without `keep`.
local function exchange(c, req, keep)
  assert(c:send(req))
  local line, err = c:receive("*l")
  if not line then fail("read status: " .. tostring(err)) end
  local status = tonumber(line:match("^HTTP/1%.%d (%d+)"))
  local h = {}
  while true do
    local l = assert(c:receive("*l"))
    if l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.-)%s*$")
    if k then h[k:lower()] = v end
  end
  local body = {}
  if h["content-length"] then
    local n = tonumber(h["content-length"])
    if n > 0 then body[1] = assert(c:receive(n)) end
  elseif (h["transfer-encoding"] or ""):lower():find("chunked") then
    while true do
      local size = tonumber(assert(c:receive("*l")):match("^%x+"), 16)
      if size == 0 then
        repeat local l = assert(c:receive("*l")) until l == ""
        break
      end
      body[#body + 1] = assert(c:receive(size))
      assert(c:receive("*l"))
    end
  end
  return status, h, keep and table.concat(body) or nil
end

local GET = "GET /ai/propagation HTTP/1.1\r\nHost: bench\r\n\r\n"

-- The nginx worker pid that owns the server side of client port `lport`.
local function owner(lport)
  local p = io.popen(("ss -Htnp state established '( sport = :%d and dport = :%d )' 2>/dev/null")
                     :format(PROXY, lport))
  local out = p:read("*a")
  p:close()
  return out:match("pid=(%d+)")
end

-- Keep-alive connections, two per worker.
local conns, per_worker, workers = {}, {}, 0
for _ = 1, 200 do
  local c = connect(PROXY)
  exchange(c, GET) -- the connection is accepted and served
  local _, lport = c:getsockname()
  local pid = owner(tonumber(lport))
  if not pid then fail("cannot tell which worker owns port " .. tostring(lport)) end
  if not per_worker[pid] then per_worker[pid] = 0; workers = workers + 1 end
  if per_worker[pid] < 2 then
    per_worker[pid] = per_worker[pid] + 1
    conns[#conns + 1] = c
  else
    c:close()
  end
  local full = workers >= 2
  for _, n in pairs(per_worker) do if n < 2 then full = false end end
  if full then break end
end
if workers < 2 or #conns < 4 then
  fail(("connections reached %d worker(s) only"):format(workers))
end

local admin = connect(ADMIN)

-- plugin_config's HTTP client: the keep-alive Admin API connection.
local function admin_request(method, url, body)
  local path = url:match("^https?://[^/]+(/.*)$")
  local req = ("%s %s HTTP/1.1\r\nHost: bench\r\n"):format(method, path)
  if body then
    req = req .. ("Content-Type: application/json\r\nContent-Length: %d\r\n"):format(#body)
  end
  local status, _, resp = exchange(admin, req .. "\r\n" .. (body or ""), true)
  return status, resp
end

local function patch(target)
  local w_stable = target == STABLE and 100 or 0
  local upstreams = { { name = STABLE, weight = w_stable },
                      { name = CANARY, weight = 100 - w_stable } }
  local file = MODE:match("^file:(.+)$")
  if file then
    local f = assert(io.open(file))
    local yml = f:read("*a")
    f:close()
    local n
    yml, n = yml:gsub("{ name: (automation%-service[%w-]*), weight: %d+ }", function(name)
      return ("{ name: %s, weight: %d }"):format(name, name == STABLE and w_stable
                                                              or 100 - w_stable)
    end)
    if n ~= 2 then fail(file .. ": expected two upstream lines, found " .. n) end
    local body = require("dkjson").encode({ config = yml })
    local status, resp = admin_request("POST", "http://127.0.0.1:" .. ADMIN .. "/config", body)
    if status ~= 201 then
      fail("POST /config answered " .. tostring(status) .. " " .. tostring(resp))
    end
    return
  end
  if MODE == "patch" then
    local body = ('{"config":{"upstreams":[{"name":"%s","weight":%d},' ..
                  '{"name":"%s","weight":%d}]}}'):format(STABLE, w_stable,
                                                         CANARY, 100 - w_stable)
    local status, resp = admin_request("PATCH", "http://127.0.0.1:" .. ADMIN ..
                                       "/plugins/" .. PLUGIN_ID, body)
    if status ~= 200 then
      fail("PATCH /plugins answered " .. tostring(status) .. " " .. tostring(resp))
    end
    return
  end
  local status, body = plugin_config.set(admin_request, "http://127.0.0.1:" .. ADMIN, PLUGIN_ID,
    { upstreams = upstreams })
  if status ~= 201 then
    fail("POST /config answered " .. tostring(status) .. " " .. tostring(body))
  end
end

-- Time from the write's response until every connection sees `target`.
local function trial(target)
  patch(target)
  local t0 = now_ms()
  local pending, stale, last = #conns, 0, 0
  local done = {}
  while pending > 0 do
    for i, c in ipairs(conns) do
      if not done[i] then
        local status, h = exchange(c, GET)
        if status ~= 200 then fail("proxy answered " .. tostring(status)) end
        if h["x-canary-upstream"] == target then
          done[i] = true
          pending = pending - 1
          last = now_ms() - t0
        else
          stale = stale + 1
        end
      end
    end
    if now_ms() - t0 > TIMEOUT_MS then
      fail(("%d connection(s) still not on %s after %d ms"):format(pending, target, TIMEOUT_MS))
    end
  end
  return last, stale
end

-- Start from stable 100 / canary 0 everywhere.
trial(STABLE)
local times, stale_total = {}, 0
for _ = 1, TRIALS do
  for _, target in ipairs { CANARY, STABLE } do
    local ms, stale = trial(target)
    times[#times + 1] = ms
    stale_total = stale_total + stale
  end
end
table.sort(times)

-- One request round trip, for the resolution of the figures above.
local rtt = {}
for i = 1, 200 do
  local t = now_ms()
  exchange(conns[i % #conns + 1], GET)
  rtt[i] = now_ms() - t
end
table.sort(rtt)

local function say(name, value, unit) io.write(("%s %.3f %s\n"):format(name, value, unit)) end
say("propagation_max_ms", times[#times], "ms")
say("propagation_median_ms", times[math.floor((#times + 1) / 2)], "ms")
say("propagation_min_ms", times[1], "ms")
io.write(("propagation_trials %d switches\n"):format(#times))
io.write(("propagation_stale_responses %d responses\n"):format(stale_total))
say("propagation_request_rtt_median_ms", rtt[100], "ms")
io.write(("propagation_connections %d connections\n"):format(#conns))
io.write("kong_db_update_frequency_reference 5000 ms\n")
