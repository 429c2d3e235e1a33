-- FFI binding of libcanary (native/include/canary.h).
--
-- Plain LuaJIT: no `kong` global, no ngx, so the same module serves the
-- Kong plugin, the local host and the tests.  Misuse raises
-- error(msg, 2); runtime failures return nil, err.

local ffi = require "ffi"

local C_NULL = nil
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_gc = ffi.gc
local ffi_fill = ffi.fill
local type = type
local tonumber = tonumber
local error = error
local concat = table.concat
local os_getenv = os.getenv

ffi.cdef[[
enum canary_errno {
  CANARY_EINVAL = -1,
  CANARY_ENOMEM = -2,
  CANARY_EIO = -3,
  CANARY_ECORRUPT = -4,
  CANARY_ENOENT = -5,
  CANARY_EFULL = -6,
  CANARY_EBUSY = -7,
  CANARY_ENOSPC = -8,
  CANARY_ERAND = -9,
  CANARY_EWEIGHTS = -10,
  CANARY_ENOTPUB = -11,
  CANARY_EREADONLY = -12,
  CANARY_ESTATE = -13,
  CANARY_EUNSAFE = -14,
  CANARY_OK = 0
};
enum canary_limits {
  CANARY_MAX_UPSTREAMS = 16,
  CANARY_NAME_MAX = 64,
  CANARY_KEY_MAX = 64,
  CANARY_LABEL_MAX = 128,
  CANARY_WEIGHT_SCALE = 10000,
  CANARY_HIST_BUCKETS = 1408,
  CANARY_TRACE_ID_LEN = 32,
  CANARY_SPAN_ID_LEN = 16,
  CANARY_TRACEPARENT_LEN = 55,
  CANARY_TRACE_HEADER_MAX = 128,
  CANARY_MAX_STEPS = 20,
  CANARY_REASON_MAX = 192
};
enum canary_trace_source {
  CANARY_TRACE_CLIENT = 0,
  CANARY_TRACE_TRACEPARENT = 1,
  CANARY_TRACE_GENERATED = 2,
  CANARY_TRACE_REJECTED = 3,
  CANARY_TRACE_SOURCES = 4
};
enum canary_event {
  CANARY_EVENT_OVERRIDE = 0,
  CANARY_EVENT_OVERRIDE_DENIED = 1,
  CANARY_EVENT_FALLBACK = 2,
  CANARY_EVENT_ENGINE_ERROR = 3,
  CANARY_EVENTS = 8
};
enum canary_seg_flags {
  CANARY_SEG_READONLY = 1
};
enum canary_seg_opened {
  CANARY_SEG_ATTACHED = 0,
  CANARY_SEG_CREATED = 1,
  CANARY_SEG_RECREATED = 2
};
enum canary_prog_state {
  CANARY_PROG_NONE = 0,
  CANARY_PROG_RUNNING = 1,
  CANARY_PROG_PAUSED = 2,
  CANARY_PROG_PROMOTED = 3,
  CANARY_PROG_ROLLED_BACK = 4
};
enum canary_prog_on_success {
  CANARY_PROG_PROMOTE = 0,
  CANARY_PROG_HOLD = 1
};
enum canary_prog_action {
  CANARY_ACT_PROMOTE = 0,
  CANARY_ACT_PAUSE = 1,
  CANARY_ACT_RESUME = 2,
  CANARY_ACT_ABORT = 3,
  CANARY_ACT_PROMOTE_FULL = 4
};
enum canary_gate_result {
  CANARY_GATE_PASS = 0,
  CANARY_GATE_FAIL = 1,
  CANARY_GATE_INCONCLUSIVE = 2,
  CANARY_GATE_RESULTS = 3
};
struct canary_prog_params {
  uint32_t canary;
  uint32_t nsteps;
  uint32_t steps[CANARY_MAX_STEPS];
  uint32_t interval_ms;
  uint32_t min_requests;
  uint32_t failure_limit;
  uint32_t on_success;
  double max_error_rate;
  double max_p95_us;
  double max_p99_us;
  double rollback_error_rate;
};
struct canary_prog_status {
  uint32_t state;
  uint32_t step;
  uint32_t nsteps;
  uint32_t canary;
  uint32_t step_weight;
  uint32_t failures;
  uint32_t last_result;
  uint32_t interval_ms;
  uint64_t evaluations[CANARY_GATE_RESULTS];
  uint64_t window_requests;
  double window_age_ms;
  double error_rate;
  double p95_us;
  double p99_us;
  char reason[CANARY_REASON_MAX];
};
typedef struct canary_seg canary_seg_t;
struct canary_seg_info {
  uint64_t size;
  uint64_t route_bytes;
  uint64_t created_unix;
  uint32_t max_routes;
  uint32_t max_upstreams;
  uint32_t routes_used;
  uint32_t layout_version;
};
struct canary_table {
  uint32_t n;
  uint32_t weights[CANARY_MAX_UPSTREAMS];
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
};
struct canary_route_view {
  uint64_t generation;
  uint64_t config_hash;
  uint32_t n;
  uint32_t weights[CANARY_MAX_UPSTREAMS];
  uint32_t effective[CANARY_MAX_UPSTREAMS];
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
  char key[CANARY_KEY_MAX];
  char label[CANARY_LABEL_MAX];
  uint64_t trace[CANARY_TRACE_SOURCES];
  uint64_t events[CANARY_EVENTS];
};
struct canary_hist_snapshot {
  uint64_t sum_us;
  uint64_t status[6];
  uint64_t buckets[CANARY_HIST_BUCKETS];
};
struct canary_hist_summary {
  uint64_t count;
  uint64_t errors;
  uint64_t status[6];
  double error_rate;
  double mean_us;
  double p50_us;
  double p95_us;
  double p99_us;
  double max_us;
};
 const char *canary_strerror(int err);
 int canary_seg_open(canary_seg_t **out, const char *path,
                               uint32_t max_routes, uint32_t max_upstreams,
                               int flags, char *why, size_t why_len);
 int canary_seg_prepare(const char *path, uint32_t max_routes,
                                  uint32_t max_upstreams, uint32_t uid,
                                  uint32_t gid, char *why, size_t why_len);
 void canary_seg_close(canary_seg_t *seg);
 int canary_seg_info(const canary_seg_t *seg,
                               struct canary_seg_info *out);
 int canary_route_claim(canary_seg_t *seg, const char *key,
                                  size_t key_len, const char *label,
                                  size_t label_len);
 int canary_route_find(const canary_seg_t *seg, const char *key,
                                 size_t key_len);
 int canary_route_publish(canary_seg_t *seg, int route,
                                    const struct canary_table *t,
                                    uint64_t config_hash, uint64_t *gen_out,
                                    char *err, size_t err_len);
 int canary_route_publish_prog(canary_seg_t *seg, int route,
                                         const struct canary_table *t,
                                         const struct canary_prog_params *prog,
                                         uint64_t config_hash,
                                         uint64_t *gen_out, char *err,
                                         size_t err_len);
 int canary_prog_check(const struct canary_prog_params *prog,
                                 uint32_t n, char *err, size_t err_len);
 int canary_prog_tick(canary_seg_t *seg, int route, double now_us,
                                struct canary_prog_status *out);
 int canary_prog_action(canary_seg_t *seg, int route, int action,
                                  double now_us, char *err, size_t err_len);
 int canary_prog_status(const canary_seg_t *seg, int route,
                                  double now_us,
                                  struct canary_prog_status *out);
 int canary_route_set_effective(canary_seg_t *seg, int route,
                                          const uint32_t *effective,
                                          uint32_t n, uint64_t *gen_out,
                                          char *err, size_t err_len);
 int canary_table_check(const struct canary_table *t,
                                  uint32_t max_upstreams, char *err,
                                  size_t err_len);
 int canary_route_read(const canary_seg_t *seg, int route,
                                 struct canary_route_view *out);
 int canary_route_pick(canary_seg_t *seg, int route,
                                 const char *key, size_t key_len,
                                 uint32_t *gen_out);
 uint32_t canary_sticky_bucket(const char *key, size_t key_len);
 int canary_route_record(canary_seg_t *seg, int route,
                                   int upstream, uint64_t latency_us,
                                   int status, int trace_source);
 int canary_route_event(canary_seg_t *seg, int route, int event);
 int canary_hist_snapshot(const canary_seg_t *seg, int route,
                                    int upstream,
                                    struct canary_hist_snapshot *out);
 int canary_hist_summarize(const struct canary_hist_snapshot *now,
                                     const struct canary_hist_snapshot *before,
                                     struct canary_hist_summary *out);
 int canary_hist_quantile(const struct canary_hist_snapshot *now,
                                    const struct canary_hist_snapshot *before,
                                    double q, double *value_us);
 int canary_hist_bucket_of(uint64_t value_us);
 uint64_t canary_hist_bucket_low(int bucket);
 uint64_t canary_hist_bucket_high(int bucket);
 int canary_trace_generate(char *id_out, char *tp_out);
 int canary_traceparent_parse(const char *s, size_t len,
                                        char *trace_id_out,
                                        char *parent_id_out,
                                        uint8_t *flags_out);
 int canary_trace_id_valid(const char *s, size_t len);
 double canary_clock_us(void);
 int canary_prom_render(const canary_seg_t *seg, char *buf,
                                  size_t cap, size_t *len_out);
]] -- end of canary.h declarations

local _M = { _VERSION = "0.1.0" }

local C          -- the loaded library, once load() succeeded
local load_err   -- why it did not

-- Scratch buffers, created once: nothing below allocates per request.
local gen32 = ffi_new("uint32_t[1]")
local gen64 = ffi_new("uint64_t[1]")
local len_out = ffi_new("size_t[1]")
local id_buf = ffi_new("char[33]")
local tp_buf = ffi_new("char[56]")
local parent_buf = ffi_new("char[17]")
local msg_buf = ffi_new("char[512]")
local seg_out = ffi_new("canary_seg_t *[1]")
local table_buf = ffi_new("struct canary_table")
local eff_buf = ffi_new("uint32_t[16]")
local view_buf = ffi_new("struct canary_route_view")
local snap_now = ffi_new("struct canary_hist_snapshot")
local prog_buf = ffi_new("struct canary_prog_params")
local prog_status_buf = ffi_new("struct canary_prog_status")
local summary_buf = ffi_new("struct canary_hist_summary")
local render_cap = 256 * 1024
local render_buf = ffi_new("char[?]", render_cap)

-- Named codes, so callers never compare with bare numbers.
_M.E = {
  INVAL = -1, NOMEM = -2, IO = -3, CORRUPT = -4, NOENT = -5, FULL = -6,
  BUSY = -7, NOSPC = -8, RAND = -9, WEIGHTS = -10, NOTPUB = -11,
  READONLY = -12, STATE = -13, UNSAFE = -14,
}
local E_BUSY = _M.E.BUSY
_M.TRACE = { CLIENT = 0, TRACEPARENT = 1, GENERATED = 2, REJECTED = 3 }
_M.EVENT = { OVERRIDE = 0, OVERRIDE_DENIED = 1, FALLBACK = 2,
             ENGINE_ERROR = 3 }
_M.PROG_STATE = { [0] = "none", [1] = "running", [2] = "paused",
                  [3] = "promoted", [4] = "rolled_back" }
_M.GATE = { [0] = "pass", [1] = "fail", [2] = "inconclusive" }
_M.ACTION = { promote = 0, pause = 1, resume = 2, abort = 3,
              promote_full = 4 }
_M.MAX_UPSTREAMS = 16
_M.WEIGHT_SCALE = 10000
local OPENED = { [0] = "attached", [1] = "created", [2] = "recreated" }

local function strerror(rc)
  return ffi_string(C.canary_strerror(rc))
end

-- Candidate paths: an explicit argument alone, else $CANARY_ROUTER_LIB
-- alone (an operator who names a file means that file), else every
-- package.cpath template with "?" replaced by "libcanary".
local function candidates(explicit)
  local env = os_getenv("CANARY_ROUTER_LIB")
  if explicit then return { explicit } end
  if env and env ~= "" then return { env } end
  local list = {}
  for template in package.cpath:gmatch("[^;]+") do
    list[#list + 1] = (template:gsub("%?", "libcanary"))
  end
  return list
end

-- Loads libcanary.so.  Returns true, or nil and an error listing every
-- path tried.  Safe to call again; the first success sticks.
function _M.load(path)
  if C then return true end
  if path ~= nil and type(path) ~= "string" then
    error("load: path must be a string", 2)
  end
  local tried = {}
  for _, p in ipairs(candidates(path)) do
    local f = io.open(p, "rb")
    if f then
      f:close()
      local ok, lib = pcall(ffi.load, p)
      if ok then
        C = lib
        load_err = nil
        return true
      end
      tried[#tried + 1] = p .. " (" .. tostring(lib) .. ")"
    else
      tried[#tried + 1] = p
    end
  end
  load_err = "libcanary.so not found; tried: " .. concat(tried, ", ")
  return nil, load_err
end

function _M.loaded()
  return C ~= nil, load_err
end

local function need_lib()
  if not C then
    local ok, err = _M.load()
    if not ok then return nil, err end
  end
  return true
end

-- ---- segment --------------------------------------------------------

local Seg = {}
Seg.__index = Seg

-- Opens (creates, attaches or recreates) the segment at `path`.
-- Returns a segment object, or nil and an error.  seg.opened tells
-- "attached" / "created" / "recreated"; seg.why says why a bad file was
-- set aside.
function _M.open(path, opts)
  if type(path) ~= "string" or path == "" then
    error("open: path must be a non-empty string", 2)
  end
  opts = opts or {}
  local ok, err = need_lib()
  if not ok then return nil, err end
  local flags = opts.readonly and 1 or 0
  local rc = C.canary_seg_open(seg_out, path, opts.max_routes or 64,
                               opts.max_upstreams or 16, flags,
                               msg_buf, 512)
  if rc < 0 then
    return nil, strerror(rc) .. ": " .. ffi_string(msg_buf)
  end
  local self = setmetatable({
    h = ffi_gc(seg_out[0], C.canary_seg_close),
    path = path,
    opened = OPENED[rc],
    why = rc == 2 and ffi_string(msg_buf) or nil,
    cache = {},   -- route index -> { gen = n, names = {...} }
  }, Seg)
  return self
end

-- For a privileged master process: creates or validates the segment at
-- `path` as open() would, gives it to uid:gid (the workers' user), mode
-- 0600, and does not map it.  Returns "created" / "attached" /
-- "recreated", or nil and an error.
function _M.prepare(path, opts)
  if type(path) ~= "string" or path == "" then
    error("prepare: path must be a non-empty string", 2)
  end
  if type(opts) ~= "table" or type(opts.uid) ~= "number" or
     type(opts.gid) ~= "number" then
    error("prepare: opts.uid and opts.gid must be numbers", 2)
  end
  local ok, err = need_lib()
  if not ok then return nil, err end
  local rc = C.canary_seg_prepare(path, opts.max_routes or 64,
                                  opts.max_upstreams or 16, opts.uid,
                                  opts.gid, msg_buf, 512)
  if rc < 0 then
    return nil, strerror(rc) .. ": " .. ffi_string(msg_buf)
  end
  return OPENED[rc]
end

function Seg:close()
  if self.h ~= nil then
    C.canary_seg_close(ffi_gc(self.h, nil))
    self.h = nil
  end
end

function Seg:info()
  local info = ffi_new("struct canary_seg_info")
  C.canary_seg_info(self.h, info)
  return {
    size = tonumber(info.size), route_bytes = tonumber(info.route_bytes),
    max_routes = info.max_routes, max_upstreams = info.max_upstreams,
    routes_used = info.routes_used, created_unix = tonumber(info.created_unix),
    layout_version = info.layout_version,
  }
end

-- Claims (or finds) the route slot for `key`; returns its index, or nil,
-- the error and "busy" when another process held the claim lock.
function Seg:claim(key, label)
  if type(key) ~= "string" then error("claim: key must be a string", 2) end
  label = label or ""
  local rc = C.canary_route_claim(self.h, key, #key, label, #label)
  if rc < 0 then return nil, strerror(rc), rc == E_BUSY and "busy" or nil end
  return rc
end

function Seg:find(key)
  if type(key) ~= "string" then error("find: key must be a string", 2) end
  local rc = C.canary_route_find(self.h, key, #key)
  if rc < 0 then return nil, strerror(rc) end
  return rc
end

local function fill_table(names, weights)
  local n = #names
  if n ~= #weights then
    return nil, ("%d names but %d weights"):format(n, #weights)
  end
  if n > _M.MAX_UPSTREAMS then
    return nil, ("%d upstreams; at most %d"):format(n, _M.MAX_UPSTREAMS)
  end
  ffi_fill(table_buf, ffi.sizeof(table_buf))
  table_buf.n = n
  for i = 1, n do
    local name, w = names[i], weights[i]
    if type(name) ~= "string" or type(w) ~= "number" then
      return nil, "names must be strings and weights numbers"
    end
    if #name >= 64 then
      return nil, ("name of upstream %d is longer than 63 bytes"):format(i)
    end
    if w < 0 or w > _M.WEIGHT_SCALE or w % 1 ~= 0 then
      return nil, ("weight of upstream %d must be an integer 0..%d")
                  :format(i, _M.WEIGHT_SCALE)
    end
    ffi.copy(table_buf.names[i - 1], name, #name)
    table_buf.weights[i - 1] = w
  end
  return true
end

-- Progression parameters in engine units: canary (1-based upstream),
-- steps (0..10000 weights), interval_ms, min_requests, failure_limit,
-- on_success ("promote"/"hold"), and optional limits max_error_rate and
-- rollback_error_rate (fractions), max_p95_us, max_p99_us.
local function fill_prog(p)
  ffi_fill(prog_buf, ffi.sizeof(prog_buf))
  if #p.steps > 20 then return nil, "more than 20 steps" end
  prog_buf.canary = p.canary - 1
  prog_buf.nsteps = #p.steps
  for i, w in ipairs(p.steps) do prog_buf.steps[i - 1] = w end
  prog_buf.interval_ms = p.interval_ms
  prog_buf.min_requests = p.min_requests or 0
  prog_buf.failure_limit = p.failure_limit or 1
  prog_buf.on_success = p.on_success == "hold" and 1 or 0
  prog_buf.max_error_rate = p.max_error_rate or -1
  prog_buf.max_p95_us = p.max_p95_us or -1
  prog_buf.max_p99_us = p.max_p99_us or -1
  prog_buf.rollback_error_rate = p.rollback_error_rate or -1
  return prog_buf
end

-- Validates and publishes a weights table (weights on 0..10000), with an
-- optional progression (see fill_prog).  Returns the generation in
-- effect, or nil, the reason and "busy" when another process held the
-- route's lock (nothing changed: publish again later).
function Seg:publish(route, names, weights, config_hash, prog)
  local ok, err = fill_table(names, weights)
  if not ok then return nil, err end
  local pp = C_NULL
  if prog then
    pp, err = fill_prog(prog)
    if not pp then return nil, err end
  end
  local rc = C.canary_route_publish_prog(self.h, route, table_buf, pp,
                                         config_hash or 0, gen64, msg_buf, 512)
  if rc < 0 then
    return nil, ffi_string(msg_buf), rc == E_BUSY and "busy" or nil
  end
  return tonumber(gen64[0])
end

local function prog_status_table(s)
  return {
    state = _M.PROG_STATE[s.state] or "unknown",
    step = s.step + 1,
    steps = s.nsteps,
    canary = s.canary + 1,
    step_weight = s.step_weight,
    failures = s.failures,
    last_result = _M.GATE[s.last_result],
    interval_ms = s.interval_ms,
    evaluations = {
      pass = tonumber(s.evaluations[0]), fail = tonumber(s.evaluations[1]),
      inconclusive = tonumber(s.evaluations[2]),
    },
    window_requests = tonumber(s.window_requests),
    window_age_ms = s.window_age_ms,
    error_rate = s.error_rate, p95_us = s.p95_us, p99_us = s.p99_us,
    reason = ffi_string(s.reason),
  }
end

-- Drives the route's progression (call a few times a second).  Returns
-- 0 (nothing judged), 1 (judged), 2 (weights or state changed) and the
-- status table, or nil, an error and "busy" when another process held
-- the route's lock (the window stays due: tick again later).
function Seg:prog_tick(route)
  local rc = C.canary_prog_tick(self.h, route, C.canary_clock_us(),
                                prog_status_buf)
  if rc < 0 then return nil, strerror(rc), rc == E_BUSY and "busy" or nil end
  return rc, prog_status_table(prog_status_buf)
end

function Seg:prog_status(route)
  local rc = C.canary_prog_status(self.h, route, C.canary_clock_us(),
                                  prog_status_buf)
  if rc < 0 then return nil, strerror(rc) end
  return prog_status_table(prog_status_buf)
end

-- Operator action by name (promote, pause, resume, abort, promote_full).
-- Returns true, or nil, the reason and the error code name ("state" when
-- the action does not fit the current state, "busy" when another process
-- held the route's lock: nothing changed, try again).
function Seg:prog_action(route, action)
  local a = _M.ACTION[action]
  if not a then error("prog_action: unknown action " .. tostring(action), 2) end
  local rc = C.canary_prog_action(self.h, route, a, C.canary_clock_us(),
                                  msg_buf, 512)
  if rc < 0 then
    return nil, ffi_string(msg_buf), rc == _M.E.STATE and "state" or
           rc == E_BUSY and "busy" or "error"
  end
  return true
end

-- Validates a table without publishing; returns true or nil, reason.
function _M.check_table(names, weights, max_upstreams)
  local ok, err = need_lib()
  if not ok then return nil, err end
  ok, err = fill_table(names, weights)
  if not ok then return nil, err end
  local rc = C.canary_table_check(table_buf, max_upstreams or 16,
                                  msg_buf, 512)
  if rc < 0 then return nil, ffi_string(msg_buf) end
  return true
end

-- Publishes new effective weights for the route's current table.
function Seg:set_effective(route, weights)
  local n = #weights
  if n > _M.MAX_UPSTREAMS then return nil, "too many weights" end
  for i = 1, n do eff_buf[i - 1] = weights[i] end
  local rc = C.canary_route_set_effective(self.h, route, eff_buf, n, gen64,
                                          msg_buf, 512)
  if rc < 0 then return nil, ffi_string(msg_buf) end
  return tonumber(gen64[0])
end

-- A plain-table copy of the route: names, weights (0..10000), effective
-- weights, generation, label, trace and event counters.
function Seg:read(route)
  local rc = C.canary_route_read(self.h, route, view_buf)
  if rc < 0 then return nil, strerror(rc) end
  local v = view_buf
  local out = {
    generation = tonumber(v.generation),
    config_hash = tonumber(v.config_hash),
    key = ffi_string(v.key), label = ffi_string(v.label),
    names = {}, weights = {}, effective = {},
    trace = {
      client = tonumber(v.trace[0]), traceparent = tonumber(v.trace[1]),
      generated = tonumber(v.trace[2]), rejected = tonumber(v.trace[3]),
    },
    events = {
      override = tonumber(v.events[0]),
      override_denied = tonumber(v.events[1]),
      fallback = tonumber(v.events[2]),
      engine_error = tonumber(v.events[3]),
    },
  }
  for i = 0, v.n - 1 do
    out.names[i + 1] = ffi_string(v.names[i])
    out.weights[i + 1] = v.weights[i]
    out.effective[i + 1] = v.effective[i]
  end
  return out
end

-- Names of the route's upstreams as of generation `gen`, cached per
-- route until the generation moves.
function Seg:names(route, gen)
  local c = self.cache[route]
  if c and c.gen == gen then return c.names end
  local v, err = self:read(route)
  if not v then return nil, err end
  -- Low 32 bits, as pick reports them.
  c = { gen = v.generation % 4294967296, names = v.names }
  self.cache[route] = c
  return c.names
end

-- Picks an upstream.  Returns its 1-based index and the generation
-- (low 32 bits) it was picked under, or nil and an error.
function Seg:pick(route, key)
  local rc
  if key then
    rc = C.canary_route_pick(self.h, route, key, #key, gen32)
  else
    rc = C.canary_route_pick(self.h, route, C_NULL, 0, gen32)
  end
  if rc < 0 then return nil, strerror(rc) end
  return rc + 1, gen32[0]
end

-- Records one response: 1-based upstream, latency in microseconds,
-- HTTP status, trace source (one of _M.TRACE or nil).
function Seg:record(route, upstream, latency_us, status, trace_source)
  if latency_us < 0 then latency_us = 0 end
  local rc = C.canary_route_record(self.h, route, upstream - 1, latency_us,
                                   status, trace_source or -1)
  if rc < 0 then return nil, strerror(rc) end
  return true
end

function Seg:event(route, event)
  local rc = C.canary_route_event(self.h, route, event)
  if rc < 0 then return nil, strerror(rc) end
  return true
end

local function summary_table(s)
  return {
    count = tonumber(s.count), errors = tonumber(s.errors),
    status = {
      ["1xx"] = tonumber(s.status[1]), ["2xx"] = tonumber(s.status[2]),
      ["3xx"] = tonumber(s.status[3]), ["4xx"] = tonumber(s.status[4]),
      ["5xx"] = tonumber(s.status[5]),
    },
    error_rate = s.error_rate, mean_us = s.mean_us,
    p50_us = s.p50_us, p95_us = s.p95_us, p99_us = s.p99_us,
    max_us = s.max_us,
  }
end

-- Cumulative statistics of one upstream (1-based) since the segment was
-- created, as a plain table (count, errors, error_rate, p50/p95/p99...).
function Seg:summary(route, upstream)
  local rc = C.canary_hist_snapshot(self.h, route, upstream - 1, snap_now)
  if rc < 0 then return nil, strerror(rc) end
  C.canary_hist_summarize(snap_now, C_NULL, summary_buf)
  return summary_table(summary_buf)
end

-- Prometheus text for every route.  Grows its buffer when needed.
function Seg:render()
  for _ = 1, 8 do
    local rc = C.canary_prom_render(self.h, render_buf, render_cap, len_out)
    if rc == 0 then return ffi_string(render_buf, len_out[0]) end
    if rc ~= _M.E.NOSPC then return nil, strerror(rc) end
    render_cap = tonumber(len_out[0]) * 2
    render_buf = ffi_new("char[?]", render_cap)
  end
  return nil, "metrics keep growing faster than the buffer"
end

-- ---- trace ids ------------------------------------------------------

-- A new trace id (32 lowercase hex) and, with `traceparent` true, a W3C
-- traceparent carrying it.  nil, err when the CSPRNG fails.
function _M.trace_generate(traceparent)
  local rc = C.canary_trace_generate(id_buf, traceparent and tp_buf or C_NULL)
  if rc < 0 then return nil, strerror(rc) end
  local id = ffi_string(id_buf, 32)
  if traceparent then return id, ffi_string(tp_buf, 55) end
  return id
end

-- The trace-id of a valid traceparent, or nil.
function _M.traceparent_trace_id(s)
  if type(s) ~= "string" then return nil end
  if C.canary_traceparent_parse(s, #s, id_buf, parent_buf, C_NULL) ~= 0 then
    return nil
  end
  return ffi_string(id_buf, 32)
end

-- True when a client-supplied trace id may be kept.
function _M.trace_id_valid(s)
  return type(s) == "string" and C.canary_trace_id_valid(s, #s) == 1
end

function _M.now_us()
  return C.canary_clock_us()
end

function _M.sticky_bucket(key)
  return tonumber(C.canary_sticky_bucket(key, #key))
end

_M.strerror = function(rc)
  if not C then return "libcanary not loaded" end
  return strerror(rc)
end

return _M
