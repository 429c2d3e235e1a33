-- FFI binding of libcanary (native/include/canary.h).
--
-- Plain LuaJIT: no `kong` global, no ngx, so the same module serves the
-- Kong plugin, the local host and the tests.  Misuse raises
-- error(msg, 2); runtime failures return nil, err.

local ffi = require "ffi"

local C_NULL = nil
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_copy = ffi.copy
local ffi_gc = ffi.gc
local ffi_fill = ffi.fill
local type = type
local tonumber = tonumber
local error = error
local concat = table.concat
local os_getenv = os.getenv
local os_date = os.date
local floor = math.floor
local fmt = string.format

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
  CANARY_REASON_MAX = 192,
  CANARY_DECISIONS = 50,
  CANARY_RETIRE_GRACE_S = 300,
  CANARY_PROM_CHUNK_MIN = 16384
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
enum canary_record_flags {
  CANARY_RECORD_FORCED = 1
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
enum canary_prog_strategy {
  CANARY_STRATEGY_CANARY = 0,
  CANARY_STRATEGY_BLUE_GREEN = 1
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
enum canary_analysis {
  CANARY_ANALYSIS_THRESHOLD = 0,
  CANARY_ANALYSIS_STATISTICAL = 1
};
enum canary_gate {
  CANARY_GATE_ERROR_RATE = 0,
  CANARY_GATE_P95 = 1,
  CANARY_GATE_P99 = 2,
  CANARY_GATE_P95_RATIO = 3,
  CANARY_GATE_P99_RATIO = 4,
  CANARY_GATE_ERROR_RATE_DELTA = 5,
  CANARY_GATE_LATENCY_INCREASE = 6,
  CANARY_GATE_ROLLBACK_ERROR_RATE = 7,
  CANARY_GATE_ROLLBACK_P99_RATIO = 8,
  CANARY_GATES = 9
};
enum canary_check {
  CANARY_CHECK_OFF = 0,
  CANARY_CHECK_PASS = 1,
  CANARY_CHECK_FAIL = 2,
  CANARY_CHECK_SKIPPED = 3
};
enum canary_judge_flags {
  CANARY_JUDGE_NO_BASELINE = 1,
  CANARY_JUDGE_IMMEDIATE = 2
};
struct canary_judge_params {
  uint32_t analysis;
  uint32_t min_requests;
  double max_error_rate;
  double max_p95_us;
  double max_p99_us;
  double max_p95_ratio;
  double max_p99_ratio;
  double max_error_rate_delta;
  double rollback_error_rate;
  double rollback_p99_ratio;
  double confidence;
  double allowed_increase;
};
struct canary_gate_check {
  double value;
  double limit;
  double statistic;
  double p_value;
  uint32_t check;
  uint32_t pad;
};
struct canary_judge_result {
  uint32_t verdict;
  uint32_t rollback;
  uint32_t analysis;
  uint32_t failed_gate;
  uint64_t canary_requests;
  uint64_t canary_errors;
  uint64_t stable_requests;
  uint64_t stable_errors;
  double canary_error_rate;
  double stable_error_rate;
  double canary_p50_us;
  double canary_p95_us;
  double canary_p99_us;
  double stable_p50_us;
  double stable_p95_us;
  double stable_p99_us;
  struct canary_gate_check gates[CANARY_GATES];
  char reason[CANARY_REASON_MAX];
};
struct canary_prog_params {
  uint32_t canary;
  uint32_t nsteps;
  uint32_t steps[CANARY_MAX_STEPS];
  uint32_t interval_ms;
  uint32_t failure_limit;
  uint32_t on_success;
  uint32_t dry_run;
  struct canary_judge_params judge;
  uint32_t strategy;
  uint32_t pre_promotion_ms;
  uint32_t post_promotion_ms;
  uint32_t pad;
};
enum canary_decision_origin {
  CANARY_ORIGIN_WINDOW = 0,
  CANARY_ORIGIN_IMMEDIATE = 1,
  CANARY_ORIGIN_OPERATOR = 2,
  CANARY_ORIGIN_CLUSTER = 3
};
enum canary_decision_action {
  CANARY_DO_NOTHING = 0,
  CANARY_DO_STEP_UP = 1,
  CANARY_DO_PROMOTE = 2,
  CANARY_DO_PAUSE = 3,
  CANARY_DO_ROLLBACK = 4,
  CANARY_DO_ABORT = 5,
  CANARY_DO_RESUME = 6,
  CANARY_DO_SWITCH = 7,
  CANARY_DO_ACTIONS = 8
};
struct canary_decision {
  uint64_t seq;
  uint64_t unix_ms;
  double window_ms;
  uint32_t origin;
  uint32_t action;
  uint32_t dry_run;
  uint32_t step;
  uint32_t step_weight;
  uint32_t weight;
  uint32_t state;
  uint32_t failures;
  struct canary_judge_result judge;
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
  uint32_t dry_run;
  uint32_t analysis;
  uint64_t evaluations[CANARY_GATE_RESULTS];
  uint64_t dry_evaluations[CANARY_GATE_RESULTS];
  uint64_t window_requests;
  uint64_t decisions;
  uint64_t decided;
  double window_age_ms;
  double error_rate;
  double p95_us;
  double p99_us;
  char reason[CANARY_REASON_MAX];
  uint32_t strategy;
  uint32_t pad;
  double phase_age_ms;
};
typedef struct canary_seg canary_seg_t;
struct canary_seg_params {
  uint32_t max_routes;
  uint32_t max_upstreams;
  uint32_t max_stat_slots;
  uint32_t flags;
  uint32_t retire_grace_s;
  uint32_t max_prog_slots;
};
struct canary_seg_info {
  uint64_t size;
  uint64_t route_bytes;
  uint64_t created_unix;
  uint32_t max_routes;
  uint32_t max_upstreams;
  uint32_t routes_used;
  uint32_t layout_version;
  uint64_t stat_bytes;
  uint32_t max_stat_slots;
  uint32_t stat_slots_used;
  uint32_t routes_retired;
  uint32_t stat_slots_retired;
  uint64_t routes_exhausted;
  uint64_t stat_slots_exhausted;
  uint32_t retire_grace_s;
  uint32_t max_prog_slots;
  uint64_t prog_bytes;
  uint32_t prog_slots_used;
  uint32_t prog_slots_retired;
  uint64_t prog_slots_exhausted;
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
  uint32_t stats[CANARY_MAX_UPSTREAMS];
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
  char key[CANARY_KEY_MAX];
  char label[CANARY_LABEL_MAX];
  uint64_t trace[CANARY_TRACE_SOURCES];
  uint64_t events[CANARY_EVENTS];
  uint64_t forced[CANARY_MAX_UPSTREAMS][6];
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
 int canary_seg_open_params(canary_seg_t **out, const char *path,
                                      const struct canary_seg_params *p,
                                      char *why, size_t why_len);
 int canary_seg_prepare(const char *path,
                                  const struct canary_seg_params *p,
                                  uint32_t uid, uint32_t gid, char *why,
                                  size_t why_len);
 void canary_seg_close(canary_seg_t *seg);
 int canary_seg_info(const canary_seg_t *seg,
                               struct canary_seg_info *out);
 int canary_route_claim(canary_seg_t *seg, const char *key,
                                  size_t key_len, const char *label,
                                  size_t label_len);
 int canary_route_find(const canary_seg_t *seg, const char *key,
                                 size_t key_len);
 int canary_route_retire(canary_seg_t *seg, int route,
                                   double now_us);
 int canary_route_retire_except(canary_seg_t *seg, const char *keys,
                                          size_t keys_len, double now_us);
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
                                  double now_us,
                                  struct canary_prog_status *out, char *err,
                                  size_t err_len);
 int canary_prog_decisions(const canary_seg_t *seg, int route,
                                     uint64_t from_seq,
                                     struct canary_decision *out,
                                     uint32_t max);
 const char *canary_prog_phase(uint32_t strategy, uint32_t state,
                                         uint32_t step);
 int canary_prog_status(const canary_seg_t *seg, int route,
                                  double now_us,
                                  struct canary_prog_status *out);
 int canary_prog_breach(canary_seg_t *seg, int route, double now_us,
                                  struct canary_prog_status *out);
 int canary_prog_judge(const struct canary_prog_params *p,
                                 const struct canary_hist_snapshot *canary,
                                 const struct canary_hist_snapshot *stable,
                                 const struct canary_prog_status *cur,
                                 struct canary_prog_status *next,
                                 struct canary_judge_result *j);
 int canary_prog_apply(canary_seg_t *seg, int route,
                                 uint64_t config_hash,
                                 const struct canary_prog_status *st,
                                 int judged,
                                 const struct canary_judge_result *j,
                                 double now_us, uint64_t *decided, char *err,
                                 size_t err_len);
 int canary_route_set_effective(canary_seg_t *seg, int route,
                                          const uint32_t *effective,
                                          uint32_t n, uint64_t *gen_out,
                                          char *err, size_t err_len);
 int canary_table_check(const struct canary_table *t,
                                  uint32_t max_upstreams, char *err,
                                  size_t err_len);
 int canary_name_check(const char *name, size_t name_len,
                                 char *err, size_t err_len);
 int canary_route_read(const canary_seg_t *seg, int route,
                                 struct canary_route_view *out);
 int canary_route_pick(canary_seg_t *seg, int route,
                                 const char *key, size_t key_len,
                                 uint32_t *gen_out);
 uint32_t canary_sticky_bucket(const char *key, size_t key_len);
 int canary_judge_check(const struct canary_judge_params *p,
                                  char *err, size_t err_len);
 int canary_judge(const struct canary_judge_params *p,
                            uint32_t flags,
                            const struct canary_hist_snapshot *canary_now,
                            const struct canary_hist_snapshot *canary_before,
                            const struct canary_hist_snapshot *stable_now,
                            const struct canary_hist_snapshot *stable_before,
                            struct canary_judge_result *out);
 const char *canary_gate_name(int gate);
 const char *canary_action_name(int action);
 int canary_stat_record(canary_seg_t *seg, int route, uint32_t stat,
                                  uint64_t latency_us, int status,
                                  int trace_source, int flags);
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
typedef struct canary_header {
  int32_t key_len;
  const uint8_t *key;
  int32_t value_len;
  const uint8_t *value;
} canary_header_t;
 int canary_headers_find(const canary_header_t *headers, int32_t n,
                                   const char *names, int32_t n_names,
                                   int32_t *found);
 int canary_trace_generate(char *id_out, char *tp_out);
 int canary_traceparent_parse(const char *s, size_t len,
                                        char *trace_id_out,
                                        char *parent_id_out,
                                        uint8_t *flags_out);
 int canary_trace_id_valid(const char *s, size_t len);
 double canary_clock_us(void);
 double canary_thread_cpu_us(void);
 int canary_prom_render(const canary_seg_t *seg, char *buf,
                                  size_t cap, size_t *len_out);
typedef struct canary_prom canary_prom_t;
 int canary_prom_begin(const canary_seg_t *seg,
                                 canary_prom_t **out);
 int canary_prom_next(canary_prom_t *p, char *buf, size_t cap,
                                size_t *len_out);
 void canary_prom_end(canary_prom_t *p);
]] -- end of canary.h declarations

-- The few libc calls a root master needs to hand the segment to the
-- workers' user (glibc's struct layouts, Linux), under names of their own
-- (__asm__ aliases): other modules in the same LuaJIT may have declared
-- the libc names with other, partial, struct types.
ffi.cdef[[
unsigned int canary_libc_geteuid(void) __asm__("geteuid");
struct canary_passwd { char *pw_name; char *pw_passwd; unsigned int pw_uid;
                       unsigned int pw_gid; char *pw_gecos; char *pw_dir;
                       char *pw_shell; };
struct canary_group { char *gr_name; char *gr_passwd; unsigned int gr_gid;
                      char **gr_mem; };
struct canary_passwd *canary_libc_getpwnam(const char *name) __asm__("getpwnam");
struct canary_group *canary_libc_getgrnam(const char *name) __asm__("getgrnam");
]]

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
local seg_params = ffi_new("struct canary_seg_params")
local table_buf = ffi_new("struct canary_table")
local view_buf = ffi_new("struct canary_route_view")
local snap_now = ffi_new("struct canary_hist_snapshot")
local prog_buf = ffi_new("struct canary_prog_params")
local prog_status_buf = ffi_new("struct canary_prog_status")
local decisions_buf = ffi_new("struct canary_decision[50]")
local summary_buf = ffi_new("struct canary_hist_summary")
local prom_out = ffi_new("canary_prom_t *[1]")
-- A piece of a scrape is one or more canary_prom_next() steps, each
-- writing at most STEP_CAP bytes (about 0.1 ms of work) or reading a few
-- dozen routes, into one buffer of PIECE_CAP bytes.
local STEP_CAP = 64 * 1024
local PIECE_CAP = 256 * 1024
local chunk_buf = ffi_new("char[?]", PIECE_CAP)
local render_cap = 256 * 1024
local render_buf

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
_M.ANALYSIS = { threshold = 0, statistical = 1 }
_M.STRATEGY = { canary = 0, blue_green = 1 }
local STRATEGY_NAME = { [0] = "canary", [1] = "blue_green" }
local ANALYSIS_NAME = { [0] = "threshold", [1] = "statistical" }
local ORIGIN = { [0] = "window", [1] = "immediate", [2] = "operator", [3] = "cluster" }
local CHECK = { [1] = "pass", [2] = "fail", [3] = "skipped" }
local GATES = 9 -- CANARY_GATES
_M.DECISIONS = 50 -- CANARY_DECISIONS
_M.ACTION = { promote = 0, pause = 1, resume = 2, abort = 3,
              promote_full = 4 }
_M.MAX_UPSTREAMS = 16
_M.WEIGHT_SCALE = 10000
_M.RECORD_FORCED = 1
_M.RETIRE_GRACE_S = 300
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

local function need_lib()
  if not C then
    local ok, err = _M.load()
    if not ok then return nil, err end
  end
  return true
end

-- ---- users ----------------------------------------------------------

-- The process's effective uid.
function _M.euid()
  return tonumber(ffi.C.canary_libc_geteuid())
end

-- uid and gid of a user name (and group name; nginx's rule: without one,
-- the group named like the user, else the user's primary group), or nil
-- and an error.
function _M.user_ids(user, group)
  if type(user) ~= "string" or user == "" then
    error("user_ids: user must be a non-empty string", 2)
  end
  local pw = ffi.C.canary_libc_getpwnam(user)
  if pw == nil then return nil, nil, "no user '" .. user .. "'" end
  local uid, gid = tonumber(pw.pw_uid), tonumber(pw.pw_gid)
  local gr = ffi.C.canary_libc_getgrnam(group or user)
  if gr ~= nil then
    gid = tonumber(gr.gr_gid)
  elseif group then
    return nil, nil, "no group '" .. group .. "'"
  end
  return uid, gid
end

-- ---- segment --------------------------------------------------------


local Seg = {}
Seg.__index = Seg

-- Opens (creates, attaches or recreates) the segment at `path`.
-- opts: max_routes (default 64), max_upstreams per route (16),
-- max_stat_slots (statistics slots, one per configured upstream; default
-- max_routes * max_upstreams), max_prog_slots (progression slots, one
-- per route whose config has a progression; default max_routes),
-- retire_grace_s (how long a retired slot waits before reuse; default
-- 300), readonly.  Sizes and grace apply to a
-- new segment only.  Returns a segment object, or nil and an error.  seg.opened
-- tells "attached" / "created" / "recreated"; seg.why says why a bad file
-- was set aside.
function _M.open(path, opts)
  if type(path) ~= "string" or path == "" then
    error("open: path must be a non-empty string", 2)
  end
  opts = opts or {}
  local ok, err = need_lib()
  if not ok then return nil, err end
  seg_params.max_routes = opts.max_routes or 64
  seg_params.max_upstreams = opts.max_upstreams or 16
  seg_params.max_stat_slots = opts.max_stat_slots or 0
  seg_params.flags = opts.readonly and 1 or 0
  seg_params.retire_grace_s = opts.retire_grace_s or 0
  seg_params.max_prog_slots = opts.max_prog_slots or 0
  local rc = C.canary_seg_open_params(seg_out, path, seg_params, msg_buf, 512)
  if rc < 0 then
    return nil, strerror(rc) .. ": " .. ffi_string(msg_buf)
  end
  local self = setmetatable({
    h = ffi_gc(seg_out[0], C.canary_seg_close),
    path = path,
    opened = OPENED[rc],
    why = rc == 2 and ffi_string(msg_buf) or nil,
    -- route index -> the table of one generation: { gen = low 32 bits,
    -- names = {...}, stats = {...} (handles), stat_of = { name = handle } }
    cache = {},
  }, Seg)
  return self
end

-- For a privileged master process: creates or validates the segment at
-- `path` as open() would with the same opts (max_routes, max_upstreams,
-- max_stat_slots, max_prog_slots, retire_grace_s), gives it to opts.uid:opts.gid (the
-- workers' user), mode 0600, and does not map it.  Returns "created" /
-- "attached" / "recreated", or nil and an error.
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
  seg_params.max_routes = opts.max_routes or 64
  seg_params.max_upstreams = opts.max_upstreams or 16
  seg_params.max_stat_slots = opts.max_stat_slots or 0
  seg_params.flags = 0
  seg_params.retire_grace_s = opts.retire_grace_s or 0
  seg_params.max_prog_slots = opts.max_prog_slots or 0
  local rc = C.canary_seg_prepare(path, seg_params, opts.uid, opts.gid,
                                  msg_buf, 512)
  if rc < 0 then
    return nil, strerror(rc) .. ": " .. ffi_string(msg_buf)
  end
  -- and, when a bad file was set aside, why
  return OPENED[rc], rc == 2 and ffi_string(msg_buf) or nil
end

function Seg:close()
  if self.h ~= nil then
    C.canary_seg_close(ffi_gc(self.h, nil))
    self.h = nil
  end
end

-- Geometry and occupancy: sizes, slots used and retired per pool, and
-- how often a pool was found exhausted.
function Seg:info()
  local info = ffi_new("struct canary_seg_info")
  C.canary_seg_info(self.h, info)
  return {
    size = tonumber(info.size), route_bytes = tonumber(info.route_bytes),
    stat_bytes = tonumber(info.stat_bytes),
    max_routes = info.max_routes, max_upstreams = info.max_upstreams,
    max_stat_slots = info.max_stat_slots,
    routes_used = info.routes_used, routes_retired = info.routes_retired,
    stat_slots_used = info.stat_slots_used,
    stat_slots_retired = info.stat_slots_retired,
    routes_exhausted = tonumber(info.routes_exhausted),
    stat_slots_exhausted = tonumber(info.stat_slots_exhausted),
    prog_bytes = tonumber(info.prog_bytes),
    max_prog_slots = info.max_prog_slots,
    prog_slots_used = info.prog_slots_used,
    prog_slots_retired = info.prog_slots_retired,
    prog_slots_exhausted = tonumber(info.prog_slots_exhausted),
    created_unix = tonumber(info.created_unix),
    layout_version = info.layout_version,
    retire_grace_s = info.retire_grace_s,
  }
end

-- Claims (or finds, or brings back) the route slot for `key`; returns
-- its index, or nil, the reason and the code (_M.E.FULL: no free slot;
-- _M.E.BUSY: another process held the claim lock, nothing changed).
-- The slot may have served another key before: what this process
-- remembers of it is dropped.
function Seg:claim(key, label)
  if type(key) ~= "string" then error("claim: key must be a string", 2) end
  label = label or ""
  local rc = C.canary_route_claim(self.h, key, #key, label, #label)
  if rc < 0 then return nil, strerror(rc), rc end
  self.cache[rc] = nil
  return rc
end

-- The route slot claimed under `key`, found without any lock or write
-- (the request path of an instance this worker did not publish), or nil
-- and an error.
function Seg:find(key)
  if type(key) ~= "string" then error("find: key must be a string", 2) end
  local rc = C.canary_route_find(self.h, key, #key)
  if rc < 0 then return nil, strerror(rc) end
  return rc
end

-- Retires every route whose key is not in `keys` (an array of instance
-- keys: the complete set still configured), as of now_us (default: the
-- engine's clock; a time further back shortens what is left of the grace
-- period, which tests use).  Returns the number retired, or nil, an
-- error and "busy" when another process held the claim lock (nothing
-- retired: call again later).
function Seg:retire_except(keys, now_us)
  if type(keys) ~= "table" then
    error("retire_except: keys must be an array of strings", 2)
  end
  local list = concat(keys, "\0")
  local rc = C.canary_route_retire_except(self.h, list,
                                          #keys > 0 and #list + 1 or 0,
                                          now_us or C.canary_clock_us())
  if rc < 0 then return nil, strerror(rc), rc == E_BUSY and "busy" or nil end
  return rc
end

-- Copies names and weights (0..10000) into the C table.  Only what C
-- cannot represent is handled here; every rule is the engine's
-- (canary_table_check), so its message is the one the caller sees.
local UINT32_MAX = 4294967295
local function fill_table(names, weights)
  local n = #names
  if n ~= #weights then
    error(("%d names but %d weights"):format(n, #weights), 3)
  end
  ffi_fill(table_buf, ffi.sizeof(table_buf))
  -- More than the table holds: the engine reports the count.
  table_buf.n = n
  for i = 1, n < _M.MAX_UPSTREAMS and n or _M.MAX_UPSTREAMS do
    local name, w = names[i], weights[i]
    if type(name) ~= "string" or type(w) ~= "number" then
      error("names must be strings and weights numbers", 3)
    end
    -- A name longer than its 64-byte field is cut without a NUL, which
    -- the engine reports as too long.
    ffi.copy(table_buf.names[i - 1], name, #name < 64 and #name or 64)
    -- Not a uint32 (negative, fractional, NaN, huge): a value the engine
    -- rejects as out of range.
    if not (w >= 0 and w <= UINT32_MAX) or w % 1 ~= 0 then w = UINT32_MAX end
    table_buf.weights[i - 1] = w
  end
end

-- Progression parameters in engine units: canary (1-based upstream),
-- steps (0..10000 weights), interval_ms, min_requests, failure_limit,
-- on_success ("promote"/"hold"), dry_run, analysis ("threshold" /
-- "statistical"), confidence and allowed_increase (fractions), and
-- optional limits: max_error_rate, max_error_rate_delta and
-- rollback_error_rate (fractions), max_p95_us, max_p99_us, and the
-- ratios max_p95_ratio, max_p99_ratio, rollback_p99_ratio; strategy
-- ("canary"/"blue_green") with pre_promotion_ms and post_promotion_ms
-- for blue_green (whose steps are 0 and 10000).
local function fill_prog(p)
  ffi_fill(prog_buf, ffi.sizeof(prog_buf))
  if #p.steps > 20 then return nil, "more than 20 steps" end
  local analysis = _M.ANALYSIS[p.analysis or "threshold"]
  if not analysis then
    return nil, "unknown analysis '" .. tostring(p.analysis) .. "'"
  end
  prog_buf.canary = p.canary - 1
  prog_buf.nsteps = #p.steps
  for i, w in ipairs(p.steps) do prog_buf.steps[i - 1] = w end
  prog_buf.interval_ms = p.interval_ms
  prog_buf.failure_limit = p.failure_limit or 1
  prog_buf.on_success = p.on_success == "hold" and 1 or 0
  prog_buf.dry_run = p.dry_run and 1 or 0
  local strategy = _M.STRATEGY[p.strategy or "canary"]
  if not strategy then
    return nil, "unknown strategy '" .. tostring(p.strategy) .. "'"
  end
  prog_buf.strategy = strategy
  prog_buf.pre_promotion_ms = p.pre_promotion_ms or 0
  prog_buf.post_promotion_ms = p.post_promotion_ms or 0
  local j = prog_buf.judge
  j.analysis = analysis
  j.min_requests = p.min_requests or 0
  j.max_error_rate = p.max_error_rate or -1
  j.max_p95_us = p.max_p95_us or -1
  j.max_p99_us = p.max_p99_us or -1
  j.max_p95_ratio = p.max_p95_ratio or -1
  j.max_p99_ratio = p.max_p99_ratio or -1
  j.max_error_rate_delta = p.max_error_rate_delta or -1
  j.rollback_error_rate = p.rollback_error_rate or -1
  j.rollback_p99_ratio = p.rollback_p99_ratio or -1
  j.confidence = p.confidence or 0.98
  j.allowed_increase = p.allowed_increase or 0.25
  return prog_buf
end

-- Validates and publishes a weights table (weights on 0..10000), with an
-- optional progression (see fill_prog).  Returns the generation in
-- effect, or nil, the reason and "busy" when another process held the
-- route's lock (nothing changed: publish again later).
function Seg:publish(route, names, weights, config_hash, prog)
  fill_table(names, weights)
  local pp = C_NULL
  if prog then
    local err
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
    strategy = STRATEGY_NAME[s.strategy] or "unknown",
    -- blue/green's phases (preview, post_promotion, ...); the state
    -- for the canary strategy
    phase = ffi_string(C.canary_prog_phase(s.strategy, s.state, s.step)),
    phase_age_ms = s.phase_age_ms,
    step = s.step + 1,
    steps = s.nsteps,
    canary = s.canary + 1,
    step_weight = s.step_weight,
    failures = s.failures,
    last_result = _M.GATE[s.last_result],
    interval_ms = s.interval_ms,
    dry_run = s.dry_run ~= 0,
    analysis = ANALYSIS_NAME[s.analysis] or "unknown",
    evaluations = {
      pass = tonumber(s.evaluations[0]), fail = tonumber(s.evaluations[1]),
      inconclusive = tonumber(s.evaluations[2]),
    },
    dry_evaluations = {
      pass = tonumber(s.dry_evaluations[0]),
      fail = tonumber(s.dry_evaluations[1]),
      inconclusive = tonumber(s.dry_evaluations[2]),
    },
    window_requests = tonumber(s.window_requests),
    decisions = tonumber(s.decisions),
    decided = tonumber(s.decided),
    window_age_ms = s.window_age_ms,
    error_rate = s.error_rate, p95_us = s.p95_us, p99_us = s.p99_us,
    reason = ffi_string(s.reason),
  }
end

-- Drives the route's progression (call a few times a second).  Returns
-- 0 (nothing judged), 1 (judged), 2 (weights or state changed) and the
-- status table (its `decided` names the decision this call recorded, 0
-- for none), or nil, an error and "busy" when another process held the
-- route's lock (the window stays due: tick again later).
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
-- Returns true and the sequence number of the decision it recorded, or
-- nil, the reason and the error code name ("state" when the action does
-- not fit the current state, "busy" when another process held the
-- route's lock: nothing changed, try again).
function Seg:prog_action(route, action)
  local a = _M.ACTION[action]
  if not a then error("prog_action: unknown action " .. tostring(action), 2) end
  local rc = C.canary_prog_action(self.h, route, a, C.canary_clock_us(),
                                  prog_status_buf, msg_buf, 512)
  if rc < 0 then
    return nil, ffi_string(msg_buf), rc == _M.E.STATE and "state" or
           rc == E_BUSY and "busy" or "error"
  end
  return true, tonumber(prog_status_buf.decided)
end

-- ---- decisions --------------------------------------------------------

-- Figures in decisions carry 6 significant digits, as canarystat --json
-- prints them.
local function g6(x)
  return tonumber(fmt("%.6g", x)) or 0
end

-- A gate's figure in the unit of its config field: percent for rates,
-- points for the delta, ms for latencies (the same operations as
-- canarystat's, so the same digits).
local PERCENT = { error_rate = true, error_rate_delta = true,
                  rollback_error_rate = true }

local function gate_unit(name, v)
  if PERCENT[name] then return v * 100 end
  if name == "p95" or name == "p99" then return v / 1e3 end
  return v
end

-- What a decision did, for humans (canarystat says the same).
local function action_text(d)
  local w = fmt("%g", d.weight / 100)
  local a, what = d.action
  if a == 1 then
    what = "step up to " .. w .. " %"
  elseif a == 2 then
    what = "promote at " .. w .. " %"
  elseif a == 3 then
    local judged = d.origin ~= 2 and d.judge.verdict < 3
    what = judged and ("hold at " .. w .. " % until promoted") or "pause"
  elseif a == 4 then
    what = d.origin == 1 and "roll back at once" or "roll back"
  elseif a == 5 then
    what = "abort"
  elseif a == 6 then
    what = "resume"
  elseif a == 7 then
    what = "switch to green"
  else
    what = d.judge.verdict == 1 and "hold: window failed" or "hold: inconclusive"
  end
  if d.dry_run ~= 0 then
    return "dry run: " .. (a == 0 and "" or "would ") .. what
  end
  return what
end

local function iso_time(ms)
  return os_date("!%Y-%m-%dT%H:%M:%S", floor(ms / 1000)) ..
         fmt(".%03dZ", ms % 1000)
end

local function side(rate, p50, p95, p99)
  return { error_rate = g6(rate * 100), p50_ms = g6(p50 / 1e3),
           p95_ms = g6(p95 / 1e3), p99_ms = g6(p99 / 1e3) }
end

-- One decision as a plain table, the shape GET /canary-router/status and
-- canarystat --json give it.
-- `strategy` (a canary_prog_strategy number) names the phase the
-- decision left the progression in: blue/green's step after it is 1 when
-- it left green with all the weight (nothing moves in a dry run).
local function decision_table(d, strategy)
  local j = d.judge
  local after = d.dry_run ~= 0 and d.step or (d.weight == 10000 and 1 or 0)
  local unix_ms = tonumber(d.unix_ms)
  local out = {
    seq = tonumber(d.seq),
    time = iso_time(unix_ms),
    unix_ms = unix_ms,
    origin = ORIGIN[d.origin] or "unknown",
    event = ffi_string(C.canary_action_name(d.action)),
    action = action_text(d),
    dry_run = d.dry_run ~= 0,
    step = d.step + 1,
    step_weight = d.step_weight / 100,
    weight = d.weight / 100,
    state = _M.PROG_STATE[d.state] or "unknown",
    phase = ffi_string(C.canary_prog_phase(strategy, d.state, after)),
    failures = d.failures,
    window_s = g6(d.window_ms / 1e3),
    reason = ffi_string(j.reason),
  }
  if d.origin == 3 then
    -- Applied from the cluster's state: what the state carries of the
    -- window the judging node saw (its own log has the gates).
    if j.verdict < 3 then
      out.verdict = _M.GATE[j.verdict]
      out.analysis = ANALYSIS_NAME[j.analysis ~= 0 and 1 or 0]
      out.requests = { canary = tonumber(j.canary_requests) }
      out.canary = { error_rate = g6(j.canary_error_rate * 100),
                     p95_ms = g6(j.canary_p95_us / 1e3), p99_ms = g6(j.canary_p99_us / 1e3) }
    end
  elseif d.origin ~= 2 and j.verdict < 3 then
    out.verdict = _M.GATE[j.verdict]
    out.analysis = ANALYSIS_NAME[j.analysis ~= 0 and 1 or 0]
    out.requests = { canary = tonumber(j.canary_requests),
                     stable = tonumber(j.stable_requests) }
    out.errors = { canary = tonumber(j.canary_errors),
                   stable = tonumber(j.stable_errors) }
    out.canary = side(j.canary_error_rate, j.canary_p50_us, j.canary_p95_us,
                      j.canary_p99_us)
    out.stable = side(j.stable_error_rate, j.stable_p50_us, j.stable_p95_us,
                      j.stable_p99_us)
    local gates = {}
    for g = 0, GATES - 1 do
      local k = j.gates[g]
      local result = CHECK[k.check]
      if result then
        local name = ffi_string(C.canary_gate_name(g))
        local e = { gate = name, limit = g6(gate_unit(name, k.limit)),
                    result = result }
        if result ~= "skipped" then
          e.value = g6(gate_unit(name, k.value))
          if j.analysis == 1 and (name == "latency_increase" or
                                  name == "error_rate_delta") then
            e.statistic = g6(k.statistic)
            e.p_value = g6(k.p_value)
          end
        end
        gates[#gates + 1] = e
      end
    end
    out.gates = gates
  end
  return out
end

-- The route's decision log, newest first: up to `max` (default all kept,
-- 50) decisions from `from_seq` on (default the newest), as plain tables.
function Seg:decisions(route, from_seq, max)
  max = max or _M.DECISIONS
  if max > _M.DECISIONS then max = _M.DECISIONS end
  local n = C.canary_prog_decisions(self.h, route, from_seq or 0,
                                    decisions_buf, max)
  if n < 0 then return nil, strerror(n) end
  local strategy = 0
  if C.canary_prog_status(self.h, route, 0, prog_status_buf) == 0 then
    strategy = prog_status_buf.strategy
  end
  local list = {}
  for i = 0, n - 1 do list[i + 1] = decision_table(decisions_buf[i], strategy) end
  return list
end

-- Decision `seq` as a plain table, or nil when the log no longer holds it.
function Seg:decision(route, seq)
  local list, err = self:decisions(route, seq, 1)
  if not list then return nil, err end
  local d = list[1]
  if d and d.seq == seq then return d end
  return nil, "decision " .. tostring(seq) .. " is no longer in the log"
end

-- ---- cluster scope ---------------------------------------------------

local STATE_NUM, GATE_NUM = {}, {}
for k, v in pairs(_M.PROG_STATE) do STATE_NUM[v] = k end
for k, v in pairs(_M.GATE) do GATE_NUM[v] = k end
local prog_next_buf = ffi_new("struct canary_prog_status")

-- A status table (prog_status_table's shape: state and last_result by
-- name, 1-based step) into prog_status_buf; nil, err when it is not one.
local function fill_status(st)
  ffi_fill(prog_status_buf, ffi.sizeof(prog_status_buf))
  local state, result = STATE_NUM[st.state], GATE_NUM[st.last_result or "inconclusive"]
  local step = tonumber(st.step)
  if not state or not result or not step or step < 1 or step % 1 ~= 0 then
    return nil, "not a progression state: state " .. tostring(st.state) ..
                ", step " .. tostring(st.step)
  end
  prog_status_buf.state = state
  prog_status_buf.step = step - 1
  prog_status_buf.failures = tonumber(st.failures) or 0
  prog_status_buf.last_result = result
  prog_status_buf.window_requests = tonumber(st.window_requests) or 0
  prog_status_buf.error_rate = tonumber(st.error_rate) or 0
  prog_status_buf.p95_us = tonumber(st.p95_us) or 0
  prog_status_buf.p99_us = tonumber(st.p99_us) or 0
  local reason = tostring(st.reason or "")
  ffi_copy(prog_status_buf.reason, reason, math.min(#reason, 191))
  return prog_status_buf
end

-- A zeroed histogram snapshot to fill (e.g. with the sum of every node's
-- window); buckets are 0-based.
function _M.new_snapshot()
  return ffi_new("struct canary_hist_snapshot")
end

-- Judges a cluster window (snapshots of the canary's and stable's
-- counts in it; stable may be nil) for a progression (engine units, see
-- fill_prog) at status `cur`.  Returns the verdict name, the next
-- status table and the judge's result (a struct canary_judge_result of
-- its own, for Seg:prog_apply), or nil and an error.
function _M.prog_judge(prog, canary, stable, cur)
  local ok, err = need_lib()
  if not ok then return nil, err end
  local pp
  pp, err = fill_prog(prog)
  if not pp then return nil, err end
  local cs
  cs, err = fill_status(cur)
  if not cs then return nil, err end
  local j = ffi_new("struct canary_judge_result")
  local rc = C.canary_prog_judge(pp, canary, stable or C_NULL, cs, prog_next_buf, j)
  if rc < 0 then return nil, strerror(rc) end
  return _M.GATE[rc], prog_status_table(prog_next_buf), j
end

-- Cluster scope's tick: the immediate rollback limit only.  Returns 0 or
-- 2 (rolled back) and the status table, or nil and an error.
function Seg:prog_breach(route)
  local rc = C.canary_prog_breach(self.h, route, C.canary_clock_us(),
                                  prog_status_buf)
  if rc < 0 then return nil, strerror(rc) end
  return rc, prog_status_table(prog_status_buf)
end

-- Applies a status table decided for the cluster under the configuration
-- published with `config_hash`; `judged` counts its verdict, and `j` (the
-- judge's result from prog_judge, on the node that judged; may be nil)
-- goes into the decision log.  Returns 1 (nothing to publish) or 2
-- (weights or state changed) and the seq of the decision recorded (0:
-- none), or nil, the reason and "state" when refused for the state
-- (rolled back here).
function Seg:prog_apply(route, config_hash, st, judged, j)
  local cs, err = fill_status(st)
  if not cs then return nil, err, "error" end
  local rc = C.canary_prog_apply(self.h, route, config_hash, cs, judged and 1 or 0,
                                 j or C_NULL, C.canary_clock_us(), gen64, msg_buf, 512)
  if rc < 0 then
    return nil, ffi_string(msg_buf), rc == _M.E.STATE and "state" or "error"
  end
  return rc, tonumber(gen64[0])
end

-- Validates a table without publishing; returns true or nil, reason.
-- The engine's rules for a weights table (names, weights on 0..10000):
-- true, or nil and the engine's message.  The plugin schema validates
-- with this, so a config is judged the same from kong.yml, the Admin API
-- and tests.
function _M.check_table(names, weights, max_upstreams)
  local ok, err = need_lib()
  if not ok then return nil, err end
  fill_table(names, weights)
  local rc = C.canary_table_check(table_buf, max_upstreams or _M.MAX_UPSTREAMS,
                                  msg_buf, 512)
  if rc < 0 then return nil, ffi_string(msg_buf) end
  return true
end

-- The engine's rule for one upstream name: true, or nil and its message.
function _M.check_name(name)
  if type(name) ~= "string" then error("check_name: name must be a string", 2) end
  local ok, err = need_lib()
  if not ok then return nil, err end
  if C.canary_name_check(name, #name, msg_buf, 512) < 0 then
    return nil, ffi_string(msg_buf)
  end
  return true
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
    names = {}, weights = {}, effective = {}, stats = {}, forced = {},
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
    local f = v.forced[i]
    out.names[i + 1] = ffi_string(v.names[i])
    out.weights[i + 1] = v.weights[i]
    out.effective[i + 1] = v.effective[i]
    out.stats[i + 1] = v.stats[i]
    out.forced[i + 1] = {
      count = tonumber(f[0] + f[1] + f[2] + f[3] + f[4] + f[5]),
      ["1xx"] = tonumber(f[1]), ["2xx"] = tonumber(f[2]),
      ["3xx"] = tonumber(f[3]), ["4xx"] = tonumber(f[4]),
      ["5xx"] = tonumber(f[5]),
    }
  end
  return out
end

-- The route's table as of its current generation, cached until the
-- generation moves: { gen, names, stats, stat_of }.
local function refresh(self, route)
  local v, err = self:read(route)
  if not v then return nil, err end
  local c = { gen = v.generation % 4294967296, -- low 32 bits, as pick
              names = v.names, stats = v.stats, stat_of = {} }
  for i, name in ipairs(v.names) do c.stat_of[name] = v.stats[i] end
  self.cache[route] = c
  return c
end

-- The route's table as of the newest generation this process has seen
-- ({ gen, names, stats, stat_of }), cached until the generation moves.
function Seg:table(route)
  local c = self.cache[route]
  if c then return c end
  return refresh(self, route)
end

-- The statistics handle of upstream `name` on the route, from the same
-- cached table as table(): after a pick, the exact handle of the
-- generation the pick used (a name keeps its handle across publishes).
-- nil when the name is not in the route's table.
function Seg:stat(route, name)
  local c = self.cache[route]
  local h = c and c.stat_of[name]
  if h then return h end
  c = refresh(self, route)
  return c and c.stat_of[name]
end

-- Picks an upstream.  Returns its 1-based index, the generation (low 32
-- bits) it was picked under and the cached table of that generation
-- ({ gen, names, stats, stat_of }), or nil and an error.  That table is
-- the one the pick used: when a publish lands between the pick and the
-- read of the table, the pick is made again.  The common case (the
-- cached table is the pick's) has no loop, so that it compiles into the
-- request's trace.
local function raw_pick(self, route, key)
  if key then return C.canary_route_pick(self.h, route, key, #key, gen32) end
  return C.canary_route_pick(self.h, route, C_NULL, 0, gen32)
end

local function pick_again(self, route, key, gen, rc)
  for _ = 1, 4 do
    local c = refresh(self, route)
    if c and c.gen == gen then return rc + 1, gen, c end
    rc = raw_pick(self, route, key)
    if rc < 0 then return nil, strerror(rc) end
    gen = gen32[0]
    c = self.cache[route]
    if c and c.gen == gen then return rc + 1, gen, c end
  end
  return nil, "route table keeps changing"
end

function Seg:pick(route, key)
  local rc = raw_pick(self, route, key)
  if rc < 0 then return nil, strerror(rc) end
  local gen = gen32[0]
  local c = self.cache[route]
  if c and c.gen == gen then return rc + 1, gen, c end
  return pick_again(self, route, key, gen, rc)
end

-- Records one response: statistics handle (stat()), latency in
-- microseconds, HTTP status, trace source (one of _M.TRACE or nil), and
-- whether an override forced the upstream (counted apart, never judged).
function Seg:record(route, stat, latency_us, status, trace_source, forced)
  if latency_us < 0 then latency_us = 0 end
  local rc = C.canary_stat_record(self.h, route, stat, latency_us, status,
                                  trace_source or -1,
                                  forced and _M.RECORD_FORCED or 0)
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

-- Copies one upstream's (1-based) cumulative statistics into `out`, a
-- snapshot from new_snapshot().  Returns out, or nil and an error.
function Seg:snapshot(route, upstream, out)
  local rc = C.canary_hist_snapshot(self.h, route, upstream - 1, out)
  if rc < 0 then return nil, strerror(rc) end
  return out
end

-- Prometheus text for every route, in one string.  Grows its buffer
-- when needed.  For tests and tools: a scrape of many routes should use
-- scrape(), which never holds the event loop for long.
function Seg:render()
  for _ = 1, 8 do
    if not render_buf then render_buf = ffi_new("char[?]", render_cap) end
    local rc = C.canary_prom_render(self.h, render_buf, render_cap, len_out)
    if rc == 0 then return ffi_string(render_buf, len_out[0]) end
    if rc ~= _M.E.NOSPC then return nil, strerror(rc) end
    render_cap = tonumber(len_out[0]) * 2
    render_buf = nil
  end
  return nil, "metrics keep growing faster than the buffer"
end

local Scrape = {}
Scrape.__index = Scrape

-- A scrape in pieces: scrape:next(budget_us) returns the next piece of
-- the exposition (possibly ""), and true while more follows; nil and an
-- error on failure.  A piece is as many engine steps (each a few dozen
-- routes read, or at most 64 KiB written: about 0.1 ms) as fit in
-- budget_us microseconds of this call (one step without a budget), so
-- the caller can yield to its event loop between pieces without paying
-- a yield, a string and a write for every step.  The pieces
-- concatenated are one valid exposition.
function Seg:scrape()
  local rc = C.canary_prom_begin(self.h, prom_out)
  if rc < 0 then return nil, strerror(rc) end
  return setmetatable({ p = ffi_gc(prom_out[0], C.canary_prom_end) }, Scrape)
end

function Scrape:next(budget_us)
  if self.p == nil then return nil, "scrape already finished" end
  local deadline = budget_us and C.canary_clock_us() + budget_us or 0
  local used, rc = 0
  repeat
    rc = C.canary_prom_next(self.p, chunk_buf + used, STEP_CAP, len_out)
    if rc < 0 then
      self:close()
      return nil, strerror(rc)
    end
    used = used + tonumber(len_out[0])
  until rc == 0 or used + STEP_CAP > PIECE_CAP or
        C.canary_clock_us() >= deadline
  local piece = ffi_string(chunk_buf, used)
  if rc == 0 then self:close() end
  return piece, rc == 1
end

function Scrape:close()
  if self.p ~= nil then
    C.canary_prom_end(ffi_gc(self.p, nil))
    self.p = nil
  end
end

-- ---- trace ids ------------------------------------------------------

-- A new trace id (32 lowercase hex) and, with `traceparent` true, a W3C
-- traceparent carrying it.  nil, err when the CSPRNG fails.
-- A new trace id and, when `traceparent` is set, a W3C traceparent for
-- it, built in one buffer: with `sampled` false its flags are 00, and
-- with `trace_id` (32 lowercase hex, not all zero) it carries that id
-- instead of the new one.
function _M.trace_generate(traceparent, sampled, trace_id)
  local rc = C.canary_trace_generate(id_buf, traceparent and tp_buf or C_NULL)
  if rc < 0 then return nil, strerror(rc) end
  local id = ffi_string(id_buf, 32)
  if not traceparent then return id end
  if sampled == false then tp_buf[54] = 48 end -- "-01" -> "-00"
  if trace_id then ffi_copy(tp_buf + 3, trace_id, 32) end
  return id, ffi_string(tp_buf, 55)
end

-- The trace-id of a valid traceparent, or nil.
function _M.traceparent_trace_id(s)
  if type(s) ~= "string" then return nil end
  if C.canary_traceparent_parse(s, #s, id_buf, parent_buf, C_NULL) ~= 0 then
    return nil
  end
  return ffi_string(id_buf, 32)
end

-- canary_headers_find over a request's header list (headers.lua): the
-- index of the first header of each name in found[], or a negative code
-- (CANARY_EINVAL; -1 too without the library).
function _M.headers_find(list, n, packed, n_names, found)
  if not C then return -1 end
  return C.canary_headers_find(list, n, packed, n_names, found)
end

-- True when a client-supplied trace id may be kept.
function _M.trace_id_valid(s)
  return type(s) == "string" and C.canary_trace_id_valid(s, #s) == 1
end

function _M.now_us()
  return C.canary_clock_us()
end

-- CPU time of this worker in microseconds.
function _M.cpu_us()
  return C.canary_thread_cpu_us()
end

return _M
