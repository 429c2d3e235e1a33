-- Cluster-wide progression (progression.scope = "cluster") through Redis,
-- the way Kong's rate-limiting plugin shares counters between nodes.
--
-- Windows.  All nodes cut time into the same windows: window id =
-- floor(t / interval) on Redis' clock (TIME; each node keeps its offset to
-- it).  Each node adds up, per window, what its canary and stable
-- upstreams served and writes its totals so far under its own node id:
--
--   <ns>:w:<window>:<node>:c / :s   HSET of the non-zero counts (latency
--                                   buckets, status classes, latency sum)
--   <ns>:w:<window>:nodes           SADD of the nodes that wrote
--
-- The totals are absolute (this node's counts since the window opened),
-- not increments: writing them again, after a lost reply or a Redis
-- restart, cannot count anything twice.  The first tick in a new window
-- writes the old window's final totals.  Window keys expire after three
-- intervals.
--
-- Judging.  GRACE_MS after a window ends (every node's final write has
-- landed by then), the first node to SET NX <ns>:judge:<window> judges it
-- from the sum of every node's totals with the engine's judge
-- (canary_prog_judge: same verdicts and rules as a node-scoped window)
-- and stores the outcome in <ns>:state with a compare-and-set on its
-- version.  A judge that dies leaves its window unjudged; the next window
-- has another judge.
--
-- State.  <ns>:state holds the progression's state (step, state,
-- failures, verdict, reason, the last judged window) and a version.
-- Every node reads it on every tick (a few times a second) and applies a
-- new version with canary_prog_apply, which sets the step's weights
-- without judging and records the decision in the node's own log (the
-- judging node with the judge's gates; it alone notifies a judged
-- window).  Admin actions on any node write the state the same way.
-- The segment's own window judging stands aside; every worker still
-- checks the immediate rollback limit on the node's own traffic
-- (canary_prog_breach), and a node that rolled back writes the rollback
-- for every node.
--
-- Redis unreachable: the node is degraded.  It keeps its step (nothing
-- here promotes without Redis), still rolls back on its own breach,
-- says so (status API, canary_progression_state{state="degraded"}, error
-- log every minute) and rejoins by itself: it applies the cluster's state
-- if Redis kept it, and offers its own if Redis lost it (a restarted
-- Redis without persistence), in which case no earlier window is judged.
--
-- One worker per node (worker 0) talks to Redis from the progression
-- timer; never on the request path.  <ns> is "canary-router:<plugin
-- id>:<config hash>", so a changed config starts a new progression, as it
-- does on one node.  Per node and tick: one pipeline (TIME, the two HSETs
-- when counts changed, SADD, PEXPIREs, HGETALL of the state); judging
-- adds a SET NX, SMEMBERS, the nodes' HGETALLs and an EVAL.

local redis = require "kong.plugins.canary-router.redis"
local engine = require "kong.plugins.canary-router.engine"
local decisions = require "kong.plugins.canary-router.decisions"
local cjson = require "cjson.safe"

local floor = math.floor
local fmt = string.format
local tonumber = tonumber
local tostring = tostring
local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local unpack = unpack
local ngx = ngx

local _M = {}

local GRACE_MS = 400        -- > one tick (250 ms) plus a round trip
local STATE_TTL_MS = 7 * 24 * 3600 * 1000
local LOG_SECONDS = 60
local STATUS_TTL = 5        -- seconds a published node status stays valid
local BUCKETS = 1408        -- CANARY_HIST_BUCKETS
local SHM_PREFIX = "canary-router:cluster:"

-- Compare-and-set of the state hash on its version: ARGV[1] the version
-- the writer started from, ARGV[2] the TTL, then field/value pairs.
-- Returns { 1, new version } or { 0, version found }.
local CAS = [[
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return { 0, v } end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', v + 1, unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return { 1, v + 1 }
]]

local STATE_FIELDS = { "state", "step", "failures", "last_result", "window_requests",
                       "error_rate", "p95_us", "p99_us", "reason", "window", "kind",
                       "by" }

-- Per instance (plugin id and config hash), in this worker.
local insts = {}

local node

local function node_id()
  if node then return node end
  local id = kong and kong.node and kong.node.get_id and kong.node.get_id()
  if type(id) ~= "string" or id == "" then
    id = (ngx.config and ngx.config.prefix and ngx.config.prefix() or "node")
  end
  node = id
  return id
end

local function shm()
  return ngx.shared and (ngx.shared.kong or ngx.shared.kong_host)
end

local function now_ms()
  ngx.update_time()
  return ngx.now() * 1000
end

local function namespace(c)
  return "canary-router:" .. c.key .. ":" .. fmt("%d", c.hash)
end

local function instance(c)
  local ns = namespace(c)
  local inst = insts[c.key]
  if inst and inst.ns == ns then return inst end
  inst = {
    ns = ns,
    applied = nil,        -- version of the cluster state applied here
    window = nil,         -- window this node is adding up
    base_c = engine.new_snapshot(), base_s = engine.new_snapshot(),
    now_c = engine.new_snapshot(), now_s = engine.new_snapshot(),
    pushed = nil,         -- "<window>:<count>:<sum>" last written
    offset = nil,         -- Redis clock minus ngx.now(), ms
    degraded = false,
  }
  insts[c.key] = inst
  return inst
end

-- The status every worker of this node reports (status API, metrics).
local function publish_status(inst, c, extra)
  local d = shm()
  if not d then return end
  local s = {
    scope = "cluster",
    state = inst.degraded and "degraded" or "ok",
    error = inst.degraded and inst.err or nil,
    node = node_id(),
    version = inst.applied and tonumber(inst.applied) or nil,
  }
  for k, v in pairs(extra or {}) do s[k] = v end
  d:set(SHM_PREFIX .. c.key, cjson.encode(s), STATUS_TTL)
end

-- Cluster status of an instance for the status API, or nil (node scope).
function _M.status(c)
  if not c.cluster then return nil end
  local d = shm()
  local s = d and d:get(SHM_PREFIX .. c.key)
  s = s and cjson.decode(s)
  if not s then
    return { scope = "cluster", state = "unknown", node = node_id() }
  end
  return s
end

local function degraded(inst, c, err)
  inst.offset = nil
  local t = ngx.now()
  if not inst.degraded or t - (inst.logged_at or 0) >= LOG_SECONDS then
    inst.logged_at = t
    kong.log.err("canary-router ", c.key, ": cluster progression degraded, ",
                 "holding the current step and rolling back only on this ",
                 "node's own breaches: ", err)
  end
  inst.degraded = true
  inst.err = err
  publish_status(inst, c)
  return nil, err
end

local function to_map(arr)
  local m = {}
  if type(arr) ~= "table" then return m end
  for i = 1, #arr - 1, 2 do m[arr[i]] = arr[i + 1] end
  return m
end

local function redis_ms(t)
  return tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

-- HSET arguments of (now - base): non-zero buckets, status classes, sum.
local function delta_args(key, now, base)
  local args = { "HSET", key, "sum", tostring(now.sum_us - base.sum_us) }
  local count = 0
  for i = 0, 5 do
    local d = now.status[i] - base.status[i]
    if d ~= 0 then
      args[#args + 1] = "s" .. i
      args[#args + 1] = tostring(d):gsub("ULL$", "")
    end
  end
  for i = 0, BUCKETS - 1 do
    local d = now.buckets[i] - base.buckets[i]
    if d ~= 0 then
      args[#args + 1] = tostring(i)
      args[#args + 1] = tostring(d):gsub("ULL$", "")
      count = count + tonumber(d)
    end
  end
  return args, count
end

-- Adds this node's totals for window w to the pipeline, when they changed.
local function push(cmds, inst, c, w)
  local prefix = inst.ns .. ":w:" .. w
  local me = node_id()
  local args_c, n_c = delta_args(prefix .. ":" .. me .. ":c", inst.now_c, inst.base_c)
  local args_s, n_s = delta_args(prefix .. ":" .. me .. ":s", inst.now_s, inst.base_s)
  local mark = w .. ":" .. n_c .. ":" .. n_s .. ":" .. args_c[4] .. ":" .. args_s[4]
  if mark == inst.pushed or n_c + n_s == 0 then return end
  inst.pushed_next = mark
  local ttl = tostring(3 * c.prog.interval_ms + 10000)
  cmds[#cmds + 1] = args_c
  cmds[#cmds + 1] = args_s
  cmds[#cmds + 1] = { "SADD", prefix .. ":nodes", me }
  cmds[#cmds + 1] = { "PEXPIRE", prefix .. ":" .. me .. ":c", ttl }
  cmds[#cmds + 1] = { "PEXPIRE", prefix .. ":" .. me .. ":s", ttl }
  cmds[#cmds + 1] = { "PEXPIRE", prefix .. ":nodes", ttl }
end

local function num(v)
  if type(v) == "number" then
    if v % 1 == 0 and v > -1e15 and v < 1e15 then return fmt("%d", v) end
    return fmt("%.17g", v)
  end
  return tostring(v)
end

-- Writes state `st` if the cluster is still at version `from`.  Returns
-- the new version, or nil and why not.
local function cas(r, inst, from, st)
  local args = { "EVAL", CAS, "1", inst.ns .. ":state", from or "0", tostring(STATE_TTL_MS) }
  for _, f in ipairs(STATE_FIELDS) do
    local v = st[f]
    if v ~= nil then
      args[#args + 1] = f
      args[#args + 1] = num(v)
    end
  end
  local res, err = r:command(unpack(args))
  if not res then return nil, err end
  if res[1] ~= 1 then return nil, "cluster state changed meanwhile (version " ..
                                  tostring(res[2]) .. ")" end
  return tostring(res[2])
end

-- Applies a cluster state to this node.  The engine records it in this
-- node's decision log when it was a judged window or changes state or
-- step; the line is logged here.  Only the node that judged the window
-- (`j`, its judge's result) notifies: a decision is sent once for the
-- cluster, and the node behind an action or a breach has already sent
-- its own.  Returns true, or nil, err, kind.
local function apply(inst, c, seg, st, j)
  local rc, decided_or_err, kind = seg:prog_apply(c.route, c.hash, st, st.kind == "judge", j)
  inst.applied = st.version
  if not rc then return nil, decided_or_err, kind end
  if decided_or_err > 0 then
    decisions.report(c, seg, decided_or_err, j ~= nil)
  end
  return true
end

local function judge(r, inst, c, seg, state, w, interval)
  local ns = inst.ns
  local got, err = r:command("SET", ns .. ":judge:" .. w, node_id(), "NX", "PX",
                             tostring(3 * interval + 10000))
  if not got then return nil, err end
  if got ~= "OK" then return true end   -- another node judges this window
  local nodes
  nodes, err = r:command("SMEMBERS", ns .. ":w:" .. w .. ":nodes")
  if not nodes then return nil, err end
  local win_c, win_s = engine.new_snapshot(), engine.new_snapshot()
  if #nodes > 0 then
    local cmds = {}
    for _, n in ipairs(nodes) do
      cmds[#cmds + 1] = { "HGETALL", ns .. ":w:" .. w .. ":" .. n .. ":c" }
      cmds[#cmds + 1] = { "HGETALL", ns .. ":w:" .. w .. ":" .. n .. ":s" }
    end
    local replies, perr = r:pipeline(cmds)
    if not replies then return nil, perr end
    for k, rep in ipairs(replies) do
      local win = k % 2 == 1 and win_c or win_s
      local m = to_map(rep)
      for f, v in pairs(m) do
        local n = tonumber(v) or 0
        local b = tonumber(f)
        if b and b >= 0 and b < BUCKETS then
          win.buckets[b] = win.buckets[b] + n
        elseif f == "sum" then
          win.sum_us = win.sum_us + n
        elseif f:match("^s[0-5]$") then
          local i = tonumber(f:sub(2))
          win.status[i] = win.status[i] + n
        end
      end
    end
  end
  local verdict, nxt, j = engine.prog_judge(c.prog, win_c, win_s, state)
  if not verdict then return nil, "cannot judge window " .. w .. ": " .. tostring(nxt) end
  nxt.window = w
  nxt.kind = "judge"
  nxt.by = node_id()
  local v, cerr = cas(r, inst, state.version, nxt)
  if not v then return true, cerr end  -- an action won the race: it stands
  nxt.version = v
  kong.log.notice("canary-router ", c.key, ": cluster window ", w, " (", #nodes,
                  " nodes, ", nxt.window_requests, " canary requests) judged ",
                  verdict, " by ", node_id())
  return apply(inst, c, seg, nxt, j)
end

-- One tick of a cluster-scoped instance, from the progression timer.
local function sync(inst, c, seg)
  inst.pushed_next = nil
  local r, err = redis.connect(c.cluster)
  if not r then return degraded(inst, c, err) end
  local interval = c.prog.interval_ms
  local local_ms = now_ms()
  if not inst.offset then
    local t, terr = r:command("TIME")
    if not t then return degraded(inst, c, terr) end
    inst.offset = redis_ms(t) - local_ms
  end
  local cluster_ms = local_ms + inst.offset
  local w = floor(cluster_ms / interval)

  seg:snapshot(c.route, c.prog.canary, inst.now_c)
  seg:snapshot(c.route, 1, inst.now_s)
  local cmds = { { "TIME" } }
  local rebase
  if inst.window == nil then
    rebase = true
  else
    push(cmds, inst, c, inst.window)
    rebase = inst.window ~= w
  end
  cmds[#cmds + 1] = { "HGETALL", inst.ns .. ":state" }
  local replies, perr = r:pipeline(cmds)
  if not replies then return degraded(inst, c, perr) end
  -- An error reply (NOAUTH without a password, a full Redis, ...): what
  -- was written may be partial, which totals rewritten next tick repair.
  for i = 1, #replies do
    if type(replies[i]) == "table" and replies[i].err then
      r:keepalive()
      return degraded(inst, c, "redis " .. r.where .. ": " .. replies[i].err)
    end
  end
  inst.pushed = inst.pushed_next or inst.pushed
  if rebase then
    inst.window = w
    inst.base_c, inst.now_c = inst.now_c, inst.base_c
    inst.base_s, inst.now_s = inst.now_s, inst.base_s
  end
  inst.offset = redis_ms(replies[1]) - local_ms
  if inst.degraded then
    kong.log.notice("canary-router ", c.key, ": cluster progression rejoined")
    inst.degraded = false
    inst.err = nil
  end

  local state = to_map(replies[#replies])
  local mine = seg:prog_status(c.route)
  if not state.version then
    -- No cluster state (the first node, or a Redis that lost it): ours,
    -- from the window now open on.
    mine.window = w - 1
    mine.kind = "init"
    mine.by = node_id()
    local v = cas(r, inst, "0", mine)
    inst.applied = v or inst.applied
  elseif state.version ~= inst.applied then
    local ok, aerr, kind = apply(inst, c, seg, state)
    if not ok and kind ~= "state" then
      kong.log.err("canary-router ", c.key, ": cannot apply the cluster state: ", aerr)
    end
  end
  -- A rollback here (own breach, abort while degraded) is everyone's.
  mine = seg:prog_status(c.route)
  if state.version and mine and mine.state == "rolled_back" and
     state.state ~= "rolled_back" then
    mine.window = state.window
    mine.kind = "rollback"
    mine.by = node_id()
    local v = cas(r, inst, state.version, mine)
    if v then
      inst.applied = v
      kong.log.warn("canary-router ", c.key, ": rolled back on this node, ",
                    "for every node: ", mine.reason)
    end
  elseif state.version and state.state == "running" and
         w - 1 > (tonumber(state.window) or -1) and
         cluster_ms - w * interval >= GRACE_MS then
    local ok, jerr = judge(r, inst, c, seg, state, w - 1, interval)
    if not ok then
      r:close()
      return degraded(inst, c, jerr)
    end
  end
  r:keepalive()
  publish_status(inst, c, { judged_by = state.by, window = tonumber(state.window) })
  return true
end

-- Every worker, every tick: the immediate limit on this node's traffic;
-- worker 0 also talks to Redis.  Never raises.
function _M.tick(c, seg)
  local rc, st = seg:prog_breach(c.route)
  if not rc then return nil, st end
  if st.decided and st.decided > 0 then
    -- This worker recorded the breach: it logs (and notifies) it.
    decisions.report(c, seg, st.decided)
  end
  if ngx.worker.id() ~= 0 then return true end
  -- This worker may still hold the configuration another worker has just
  -- replaced in the segment: only the current one talks to the cluster.
  local v = seg:read(c.route)
  if not (v and v.config_hash == c.hash) then return true end
  local inst = instance(c)
  if inst.busy then return true end
  inst.busy = true
  local ok, res, err = pcall(sync, inst, c, seg)
  inst.busy = false
  if not ok then return nil, res end
  return res, err
end

-- An Admin action on a cluster-scoped instance: brought up to the
-- cluster's state, acted on here, written for every node.  Returns true,
-- or nil, a message and an HTTP status.
function _M.action(c, seg, action)
  local inst = instance(c)
  local r, err = redis.connect(c.cluster)
  if not r then
    if action == "abort" then
      -- Rolling back never waits for Redis; the rollback is written for
      -- every node when Redis is back.
      local ok, seq_or_err = seg:prog_action(c.route, action)
      if not ok then return nil, seq_or_err, 409 end
      return true, seq_or_err
    end
    return nil, "cluster progression degraded (" .. err .. "): " .. action ..
                " needs Redis; nothing changed", 503
  end
  local raw, rerr = r:command("HGETALL", inst.ns .. ":state")
  if not raw then return nil, rerr, 503 end
  local state = to_map(raw)
  if state.version then
    apply(inst, c, seg, state)
  end
  local ok, seq_or_err, kind = seg:prog_action(c.route, action)
  if not ok then
    r:keepalive()
    return nil, seq_or_err, kind == "state" and 409 or 500
  end
  local mine = seg:prog_status(c.route)
  mine.window = state.window
  mine.kind = "action"
  mine.by = node_id()
  local v, cerr = cas(r, inst, state.version or "0", mine)
  if not v then
    r:close()
    return nil, cerr .. "; try again", 409
  end
  r:keepalive()
  kong.log.notice("canary-router ", c.key, ": ", action, " for every node: ",
                  mine.reason)
  return true, seq_or_err
end

-- canary_progression_state{state="degraded"} of every cluster-scoped
-- instance, inserted into the engine's metrics after the instance's
-- other states (the family must stay in one block).
function _M.metrics(body, instances, seg)
  for _, c in pairs(instances) do
    if c.cluster and c.route then
      local v = seg:read(c.route)
      if v then
        local label = (v.label ~= "" and v.label or v.key)
          :gsub("\\", "\\\\"):gsub("\"", "\\\""):gsub("\n", "\\n")
        local s = _M.status(c)
        local line = 'canary_progression_state{route="' .. label ..
                     '",state="degraded"} ' .. (s.state == "degraded" and "1" or "0") .. "\n"
        local anchor = 'canary_progression_state{route="' .. label ..
                       '",state="rolled_back"} '
        local i = body:find(anchor, 1, true)
        local j = i and body:find("\n", i, true)
        if j then body = body:sub(1, j) .. line .. body:sub(j + 1) end
      end
    end
  end
  return body
end

return _M
