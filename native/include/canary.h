/*
 * canary.h - public interface of libcanary, the canary-router engine.
 *
 * This header is the FFI contract: plugin/canary/engine.lua declares the
 * same functions with ffi.cdef, and `make check-cdef` fails when the two
 * drift apart.  It therefore includes nothing but <stdint.h>/<stddef.h>,
 * uses fixed-width integers and opaque handles, defines no macro that Lua
 * needs, and no function takes more than eight arguments.
 *
 * Conventions (after libuv):
 *  - every fallible call returns 0 (or a non-negative value documented
 *    below) on success and a negative CANARY_E* code on failure;
 *    canary_strerror() names the code;
 *  - human-readable detail goes into a caller-supplied buffer;
 *  - arguments are validated before any shared state is touched, so a
 *    failed call changes nothing;
 *  - nothing on the request path allocates.
 *
 * "Safe across processes" below means: may be called concurrently by any
 * number of processes that have the same segment file mapped (nginx
 * workers, canarystat, test children).
 */
#ifndef CANARY_H
#define CANARY_H

#include <stddef.h>
#include <stdint.h>

#ifndef CANARY_API
#define CANARY_API __attribute__((visibility("default")))
#endif

/* Error codes.  One X-macro generates both this enum and the message
 * table in errors.c, so they cannot disagree. */
#define CANARY_ERRNO_MAP(XX)                                                  \
  XX(EINVAL, -1, "invalid argument")                                          \
  XX(ENOMEM, -2, "out of memory")                                             \
  XX(EIO, -3, "segment file I/O error")                                       \
  XX(ECORRUPT, -4, "segment data is corrupt")                                 \
  XX(ENOENT, -5, "no such route")                                             \
  XX(EFULL, -6, "segment has no free slot")                                   \
  XX(EBUSY, -7, "busy: another process is writing; retry later")              \
  XX(ENOSPC, -8, "buffer too small")                                          \
  XX(ERAND, -9, "random generator failed")                                    \
  XX(EWEIGHTS, -10, "invalid weights table")                                  \
  XX(ENOTPUB, -11, "route has no published table")                            \
  XX(EREADONLY, -12, "segment attached read-only")                            \
  XX(ESTATE, -13, "operation not allowed in the current state")               \
  XX(EUNSAFE, -14, "segment file is unsafe")

enum canary_errno {
#define CANARY_ERRNO_GEN(name, value, msg) CANARY_##name = value,
  CANARY_ERRNO_MAP(CANARY_ERRNO_GEN)
#undef CANARY_ERRNO_GEN
  CANARY_OK = 0
};

/* Limits and layout constants that the segment format and Lua rely on. */
enum canary_limits {
  CANARY_MAX_UPSTREAMS = 16,  /* upstreams per route */
  CANARY_NAME_MAX = 64,       /* upstream name buffer, NUL included */
  CANARY_KEY_MAX = 64,        /* route key buffer, NUL included */
  CANARY_LABEL_MAX = 128,     /* route label buffer, NUL included */
  CANARY_WEIGHT_SCALE = 10000, /* weights are 0..10000 = 0.00 %..100.00 % */
  CANARY_HIST_BUCKETS = 1408, /* log-linear latency buckets, see hist.c */
  CANARY_TRACE_ID_LEN = 32,   /* hex chars of a 128-bit trace id */
  CANARY_SPAN_ID_LEN = 16,    /* hex chars of a 64-bit span (parent) id */
  CANARY_TRACEPARENT_LEN = 55, /* "00-" id "-" span "-" flags */
  CANARY_TRACE_HEADER_MAX = 128, /* longest X-Trace-Id value kept */
  CANARY_MAX_STEPS = 20,      /* progression steps */
  CANARY_REASON_MAX = 192,    /* progression reason text, NUL included */
  CANARY_DECISIONS = 50,      /* decisions kept per route, newest first */
  CANARY_RETIRE_GRACE_S = 300, /* default wait of a retired slot for reuse */
  CANARY_PROM_CHUNK_MIN = 16384 /* smallest buffer canary_prom_next takes */
};

/* How a request's trace ID was obtained; counted per route. */
enum canary_trace_source {
  CANARY_TRACE_CLIENT = 0,      /* valid X-Trace-Id from the client */
  CANARY_TRACE_TRACEPARENT = 1, /* trace-id of a valid W3C traceparent */
  CANARY_TRACE_GENERATED = 2,   /* none supplied: generated here */
  CANARY_TRACE_REJECTED = 3,    /* supplied but invalid: replaced */
  CANARY_TRACE_SOURCES = 4
};

/* Rare per-route events, counted for metrics and status. */
enum canary_event {
  CANARY_EVENT_OVERRIDE = 0,         /* override header/cookie honoured */
  CANARY_EVENT_OVERRIDE_DENIED = 1,  /* override from outside allow_from */
  CANARY_EVENT_FALLBACK = 2,         /* upstream refused: sent to stable */
  CANARY_EVENT_ENGINE_ERROR = 3,     /* engine call failed: failed open */
  CANARY_EVENTS = 8
};

/* Flags for canary_seg_open(). */
enum canary_seg_flags {
  CANARY_SEG_READONLY = 1 /* attach only: never create, repair or write */
};

/* Flags for canary_stat_record(). */
enum canary_record_flags {
  CANARY_RECORD_FORCED = 1 /* chosen by an override: counted apart from the
                              statistics that progression gates judge */
};

/* Results of canary_seg_open() (non-negative). */
enum canary_seg_opened {
  CANARY_SEG_ATTACHED = 0,  /* an existing, valid segment was attached */
  CANARY_SEG_CREATED = 1,   /* no file existed: a fresh one was created */
  CANARY_SEG_RECREATED = 2  /* a bad file was set aside, see `why` */
};

/* Progression states. */
enum canary_prog_state {
  CANARY_PROG_NONE = 0,       /* no progression configured */
  CANARY_PROG_RUNNING = 1,    /* evaluating windows, stepping up */
  CANARY_PROG_PAUSED = 2,     /* weights frozen until resume/promote */
  CANARY_PROG_PROMOTED = 3,   /* every step passed (or promoted by hand) */
  CANARY_PROG_ROLLED_BACK = 4 /* canary at 0 after a failed gate or abort */
};

/* How a progression releases the new version. */
enum canary_prog_strategy {
  /* Weight steps (steps[]), judged one window of interval_ms each. */
  CANARY_STRATEGY_CANARY = 0,
  /* Blue/green on exactly two upstreams: blue (0, stable) and green (1,
   * `canary`).  Step 0 is the preview: green has effective weight 0 and
   * serves only requests an override sends it, judged as one window of
   * pre_promotion_ms; a pass switches all traffic to green in one
   * publish (step 1), an inconclusive preview pauses until promoted by
   * hand.  Step 1 is post-promotion validation: windows of interval_ms
   * judged on green alone; a failure switches back to blue in one
   * publish (ROLLED_BACK); once post_promotion_ms have passed with a
   * passing window and no failure since, PROMOTED.  steps must be
   * {0, CANARY_WEIGHT_SCALE}. */
  CANARY_STRATEGY_BLUE_GREEN = 1
};

/* What happens after the last step's window passes. */
enum canary_prog_on_success {
  CANARY_PROG_PROMOTE = 0, /* state PROMOTED, canary stays at the last step */
  CANARY_PROG_HOLD = 1     /* state PAUSED at the last step until promoted */
};

/* Operator actions, like `kubectl argo rollouts promote|pause|...`. */
enum canary_prog_action {
  CANARY_ACT_PROMOTE = 0,      /* next step now (PROMOTED after the last) */
  CANARY_ACT_PAUSE = 1,
  CANARY_ACT_RESUME = 2,       /* a fresh window starts now */
  CANARY_ACT_ABORT = 3,        /* roll back: canary weight 0 */
  CANARY_ACT_PROMOTE_FULL = 4  /* straight to the last step, PROMOTED */
};

/* Verdict of one gate window. */
enum canary_gate_result {
  CANARY_GATE_PASS = 0,
  CANARY_GATE_FAIL = 1,
  CANARY_GATE_INCONCLUSIVE = 2, /* fewer than min_requests */
  CANARY_GATE_RESULTS = 3
};

/* How a window is judged against the stable upstream (judge.c). */
enum canary_analysis {
  CANARY_ANALYSIS_THRESHOLD = 0,  /* ratios and deltas as plain comparisons */
  CANARY_ANALYSIS_STATISTICAL = 1 /* Mann-Whitney U and a two-proportion
                                     test: fails only when significant */
};

/* The gates of a window, in the order they are reported.  Their names
 * (canary_gate_name) label metrics and the status API. */
enum canary_gate {
  CANARY_GATE_ERROR_RATE = 0,          /* canary 5xx fraction */
  CANARY_GATE_P95 = 1,                 /* canary p95, us */
  CANARY_GATE_P99 = 2,                 /* canary p99, us */
  CANARY_GATE_P95_RATIO = 3,           /* canary p95 / stable p95 */
  CANARY_GATE_P99_RATIO = 4,           /* canary p99 / stable p99 */
  CANARY_GATE_ERROR_RATE_DELTA = 5,    /* canary 5xx fraction - stable's */
  CANARY_GATE_LATENCY_INCREASE = 6,    /* Hodges-Lehmann relative increase */
  CANARY_GATE_ROLLBACK_ERROR_RATE = 7, /* immediate: canary 5xx fraction */
  CANARY_GATE_ROLLBACK_P99_RATIO = 8,  /* immediate: p99 ratio */
  CANARY_GATES = 9
};

/* What became of one gate in a window. */
enum canary_check {
  CANARY_CHECK_OFF = 0, /* not configured */
  CANARY_CHECK_PASS = 1,
  CANARY_CHECK_FAIL = 2,
  CANARY_CHECK_SKIPPED = 3 /* configured, not judged: too few requests,
                              or no stable traffic to compare with */
};

/* Flags of canary_judge(). */
enum canary_judge_flags {
  /* Stable serves no traffic by design (the canary has all of it):
   * gates relative to stable are skipped, the window is judged on the
   * absolute limits alone. */
  CANARY_JUDGE_NO_BASELINE = 1,
  /* Judge the immediate-rollback limits only (inside an open window). */
  CANARY_JUDGE_IMMEDIATE = 2
};

/* How a window is judged.  Limits < 0 are not set.  Fractions are 0..1
 * (a rate of 0.05 is 5 %, a delta of 0.02 is 2 percentage points).
 * canary_judge_check() states every rule. */
struct canary_judge_params {
  uint32_t analysis;           /* canary_analysis */
  uint32_t min_requests;       /* fewer on a judged side: inconclusive */
  double max_error_rate;       /* canary 5xx fraction */
  double max_p95_us;           /* canary p95 */
  double max_p99_us;           /* canary p99 */
  double max_p95_ratio;        /* canary p95 / stable p95 (threshold) */
  double max_p99_ratio;        /* canary p99 / stable p99 (threshold) */
  double max_error_rate_delta; /* canary 5xx fraction - stable's */
  double rollback_error_rate;  /* immediate rollback above this */
  double rollback_p99_ratio;   /* immediate rollback above this */
  double confidence;           /* statistical: 0.5 <= c < 1 */
  double allowed_increase;     /* statistical: relative latency increase
                                  tolerated even when significant, >= 0 */
};

/* One gate of a judged window.  Units: fractions for rates and deltas
 * and for the latency increase, microseconds for latencies, plain
 * multiples for ratios. */
struct canary_gate_check {
  double value;     /* measured */
  double limit;     /* configured */
  double statistic; /* statistical: Mann-Whitney U, or the z of the
                       two-proportion test; 0 otherwise */
  double p_value;   /* statistical: one-sided p-value; 0 otherwise */
  uint32_t check;   /* canary_check */
  uint32_t pad;
};

/* A judged window: both sides' figures and every gate. */
struct canary_judge_result {
  uint32_t verdict;     /* canary_gate_result */
  uint32_t rollback;    /* 1: an immediate-rollback limit was breached */
  uint32_t analysis;    /* canary_analysis */
  uint32_t failed_gate; /* the gate the reason names, CANARY_GATES when
                           none failed */
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
  char reason[CANARY_REASON_MAX]; /* the verdict and why, for humans */
};

/* A progression as configured.  With no gate set in `judge`, the
 * progression is purely time-based (every window passes). */
struct canary_prog_params {
  uint32_t canary;         /* upstream index, 1..n-1 (0 is stable) */
  uint32_t nsteps;         /* 1..CANARY_MAX_STEPS */
  uint32_t steps[CANARY_MAX_STEPS]; /* canary weight per step, 1..10000,
                                       strictly increasing */
  uint32_t interval_ms;    /* window length, >= 100 */
  uint32_t failure_limit;  /* consecutive failed windows before rollback */
  uint32_t on_success;     /* canary_prog_on_success */
  uint32_t dry_run;        /* 1: judge and record every window, never
                              change weights or state */
  struct canary_judge_params judge;
  uint32_t strategy;          /* canary_prog_strategy */
  uint32_t pre_promotion_ms;  /* blue/green: preview window, >= 100;
                                 0 for the canary strategy */
  uint32_t post_promotion_ms; /* blue/green: validation after the switch,
                                 >= 100; 0 for the canary strategy */
  uint32_t pad;
};

/* Where a decision came from. */
enum canary_decision_origin {
  CANARY_ORIGIN_WINDOW = 0,    /* the end of a window */
  CANARY_ORIGIN_IMMEDIATE = 1, /* an immediate-rollback limit, mid-window */
  CANARY_ORIGIN_OPERATOR = 2,  /* an operator action */
  CANARY_ORIGIN_CLUSTER = 3    /* scope cluster: a state another node
                                  decided (a window it judged, an action,
                                  a rollback), applied here; its judge
                                  result holds only the verdict, the
                                  canary's window figures and the reason */
};

/* What a decision did (or, in a dry run, would have done). */
enum canary_decision_action {
  CANARY_DO_NOTHING = 0, /* window judged, step held */
  CANARY_DO_STEP_UP = 1,
  CANARY_DO_PROMOTE = 2,
  CANARY_DO_PAUSE = 3,    /* operator pause, or the last step held */
  CANARY_DO_ROLLBACK = 4, /* by the gates */
  CANARY_DO_ABORT = 5,    /* operator rollback */
  CANARY_DO_RESUME = 6,
  CANARY_DO_SWITCH = 7, /* blue/green: all traffic switched to green */
  CANARY_DO_ACTIONS = 8
};

/* One entry of a route's decision log. */
struct canary_decision {
  uint64_t seq;         /* 1, 2, ... per route; never 0 */
  uint64_t unix_ms;     /* wall-clock time of the decision */
  double window_ms;     /* length of the judged window; 0: operator */
  uint32_t origin;      /* canary_decision_origin */
  uint32_t action;      /* canary_decision_action */
  uint32_t dry_run;     /* 1: the action was not applied */
  uint32_t step;        /* 0-based step the window was judged at */
  uint32_t step_weight; /* canary weight during the window */
  uint32_t weight;      /* canary weight the action set (in a dry run:
                           would have set) */
  uint32_t state;       /* canary_prog_state after the decision */
  uint32_t failures;    /* consecutive failed windows after it */
  struct canary_judge_result judge; /* origin OPERATOR: verdict is
                                       CANARY_GATE_RESULTS, nothing judged */
};

/* Where a route's progression stands. */
struct canary_prog_status {
  uint32_t state;          /* canary_prog_state */
  uint32_t step;           /* 0-based index into steps */
  uint32_t nsteps;
  uint32_t canary;         /* upstream index */
  uint32_t step_weight;    /* canary weight of the current step */
  uint32_t failures;       /* consecutive failed windows */
  uint32_t last_result;    /* canary_gate_result of the last window */
  uint32_t interval_ms;
  uint32_t dry_run;
  uint32_t analysis;                         /* canary_analysis */
  uint64_t evaluations[CANARY_GATE_RESULTS]; /* windows judged, by result */
  uint64_t dry_evaluations[CANARY_GATE_RESULTS]; /* same, in dry runs */
  uint64_t window_requests; /* requests in the last judged window */
  uint64_t decisions;       /* seq of the newest decision, 0: none yet */
  uint64_t decided;         /* the decision the canary_prog_tick() or
                               canary_prog_action() call that filled this
                               recorded, 0: none (always 0 from
                               canary_prog_status()) */
  double window_age_ms;    /* age of the window now open */
  double error_rate;       /* of the last judged window */
  double p95_us;
  double p99_us;
  char reason[CANARY_REASON_MAX]; /* last decision, for humans */
  uint32_t strategy;              /* canary_prog_strategy */
  uint32_t pad;
  double phase_age_ms; /* blue/green: since the preview started or
                          the switch to green; 0 otherwise */
};

typedef struct canary_seg canary_seg_t; /* process-local, opaque */

/* How a new segment is sized (canary_seg_open_params).  Memory is
 * max_routes route slots plus max_stat_slots statistics slots, one per
 * upstream actually configured (see "Statistics slots" below), plus
 * max_prog_slots progression slots, one per route with a progression, so
 * a segment follows the configuration instead of reserving
 * CANARY_MAX_UPSTREAMS histograms and a progression area for every
 * route. */
struct canary_seg_params {
  uint32_t max_routes;     /* 1..65536 */
  uint32_t max_upstreams;  /* upstreams per route, 1..CANARY_MAX_UPSTREAMS */
  uint32_t max_stat_slots; /* 1..1048576; 0: max_routes * max_upstreams */
  uint32_t flags;          /* canary_seg_flags */
  /* Seconds a retired route or statistics slot waits before it may be
   * reused, 1..86400; 0: CANARY_RETIRE_GRACE_S.  It must outlast the
   * longest request: one still in flight when its route or upstream is
   * removed keeps counting into the retired slot until then. */
  uint32_t retire_grace_s;
  /* Progression slots, one per route whose configuration has a
   * progression, 1..max_routes; 0: max_routes (every route may have
   * one).  A publish with a progression that finds none free fails with
   * CANARY_EFULL and changes nothing. */
  uint32_t max_prog_slots;
};

struct canary_seg_info {
  uint64_t size;          /* bytes of the mapping */
  uint64_t route_bytes;   /* bytes per route slot */
  uint64_t created_unix;  /* creation time of the segment */
  uint32_t max_routes;
  uint32_t max_upstreams;
  uint32_t routes_used;   /* route slots in use: live or retired */
  uint32_t layout_version;
  uint64_t stat_bytes;    /* bytes per statistics slot */
  uint32_t max_stat_slots;
  uint32_t stat_slots_used;    /* statistics slots live or retired */
  uint32_t routes_retired;     /* retired route slots, not yet reused */
  uint32_t stat_slots_retired; /* retired statistics slots, not yet reused */
  uint64_t routes_exhausted;   /* claims refused: no free route slot */
  uint64_t stat_slots_exhausted; /* publishes refused: no free statistics
                                    slot */
  uint32_t retire_grace_s;     /* see canary_seg_params */
  uint32_t max_prog_slots;
  uint64_t prog_bytes;         /* bytes per progression slot */
  uint32_t prog_slots_used;    /* progression slots live or retired */
  uint32_t prog_slots_retired; /* retired progression slots, not yet
                                  reused */
  uint64_t prog_slots_exhausted; /* publishes refused: no free
                                    progression slot */
};

/* A weights table as the caller publishes it.  weights[i] is on the
 * 0..CANARY_WEIGHT_SCALE scale and the first `n` must sum to exactly
 * CANARY_WEIGHT_SCALE; names are NUL-terminated, unique, 1..63 bytes of
 * printable ASCII without space, quote or backslash.  Upstream 0 is the
 * stable upstream: it absorbs weight that the others give up. */
struct canary_table {
  uint32_t n;
  uint32_t weights[CANARY_MAX_UPSTREAMS];
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
};

/* A consistent copy of one route as currently published. */
struct canary_route_view {
  uint64_t generation;   /* 0 = never published */
  uint64_t config_hash;  /* as passed to canary_route_publish() */
  uint32_t n;
  uint32_t weights[CANARY_MAX_UPSTREAMS];   /* configured */
  uint32_t effective[CANARY_MAX_UPSTREAMS]; /* what pick uses */
  /* stats[i]: handle of upstream i's statistics slot, for
   * canary_stat_record().  A handle belongs to the upstream's name on
   * this route: it stays the same while the name stays configured,
   * whatever its position. */
  uint32_t stats[CANARY_MAX_UPSTREAMS];
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
  char key[CANARY_KEY_MAX];
  char label[CANARY_LABEL_MAX];
  uint64_t trace[CANARY_TRACE_SOURCES];
  uint64_t events[CANARY_EVENTS];
  /* Forced requests (CANARY_RECORD_FORCED) per upstream and status class,
   * [0] other, [1] 1xx .. [5] 5xx; never part of a histogram. */
  uint64_t forced[CANARY_MAX_UPSTREAMS][6];
};

/* A copy of one upstream's cumulative statistics.  Counters only grow;
 * the difference of two snapshots of the same upstream is a window. */
struct canary_hist_snapshot {
  uint64_t sum_us;        /* sum of recorded latencies */
  uint64_t status[6];     /* [0] other, [1] 1xx .. [5] 5xx */
  uint64_t buckets[CANARY_HIST_BUCKETS];
};

/* Derived figures for a snapshot or a window. */
struct canary_hist_summary {
  uint64_t count;         /* samples (sum of buckets) */
  uint64_t errors;        /* 5xx responses */
  uint64_t status[6];
  double error_rate;      /* errors / count, 0 when count is 0 */
  double mean_us;
  double p50_us;
  double p95_us;
  double p99_us;
  double max_us;          /* upper edge of the highest non-empty bucket */
};

/* ---- errors -------------------------------------------------------- */

/* Returns a static message for a CANARY_E* code ("unknown error" for
 * anything else).  Never NULL. */
CANARY_API const char *canary_strerror(int err);

/* ---- segment ------------------------------------------------------- */

/* Creates or attaches the segment file at `path` and maps it.
 * max_routes (1..65536) and max_upstreams (1..CANARY_MAX_UPSTREAMS) size a
 * new segment; an existing valid segment keeps its own sizes.
 * The file must be safe: not a symbolic link, a regular file owned by the
 * caller's effective uid (or, for a read-only attach by root, by anyone),
 * mode exactly 0600.  Otherwise CANARY_EUNSAFE, `why` says which rule, and
 * the file is left untouched.  A new file is made complete under a
 * temporary name and then linked into place, so no process ever maps a
 * half-made one; several processes may open the same path at once and
 * exactly one creates it.  A safe file that is truncated, foreign, of
 * another layout version or otherwise corrupt is renamed to
 * "<path>.bad-<unix>-<pid>" (the 3 newest such copies are kept) and a
 * fresh segment created; `why` (may be NULL) then says what was wrong.
 * Never blocks for long: the lock taken to set a file aside is tried for
 * at most 2 s, then CANARY_EBUSY.  With CANARY_SEG_READONLY the file is
 * mapped read-only and a bad file is reported, never touched.
 * A writable handle keeps one more descriptor of the file open
 * (O_CLOEXEC) for its locks.
 * Returns a canary_seg_opened value, or a negative error with `why` set. */
CANARY_API int canary_seg_open(canary_seg_t **out, const char *path,
                               uint32_t max_routes, uint32_t max_upstreams,
                               int flags, char *why, size_t why_len);

/* canary_seg_open() with the statistics pool sized explicitly (see
 * struct canary_seg_params); canary_seg_open() itself sizes the pool for
 * max_routes * max_upstreams statistics slots.  p->flags are
 * canary_seg_flags.  Same results and errors as canary_seg_open(). */
CANARY_API int canary_seg_open_params(canary_seg_t **out, const char *path,
                                      const struct canary_seg_params *p,
                                      char *why, size_t why_len);

/* For a privileged master that starts unprivileged workers: creates or
 * validates the segment file at `path` exactly as canary_seg_open_params()
 * does with `p` (a file owned by the caller or already by `uid` is
 * accepted; p->flags must not ask for CANARY_SEG_READONLY), then makes it
 * owned by uid:gid, mode 0600, and does not map it.  The workers, whose
 * effective uid is `uid`, then attach it.  Returns a canary_seg_opened
 * value, or a negative error with `why` set (CANARY_EUNSAFE, CANARY_EIO
 * when the owner cannot be changed, ...). */
CANARY_API int canary_seg_prepare(const char *path,
                                  const struct canary_seg_params *p,
                                  uint32_t uid, uint32_t gid, char *why,
                                  size_t why_len);

/* Unmaps and frees the handle.  NULL-safe.  The file stays. */
CANARY_API void canary_seg_close(canary_seg_t *seg);

/* Fills `out` with the segment's geometry.  Safe across processes. */
CANARY_API int canary_seg_info(const canary_seg_t *seg,
                               struct canary_seg_info *out);

/* ---- routes -------------------------------------------------------- */

/* Returns the index of the route claimed under `key` (1..63 bytes),
 * claiming a slot for it first if there is none.  A route retired under
 * the same key and not reused since comes back as it was, counters and
 * table included.  Otherwise a free slot is taken, or a retired one whose
 * grace period (canary_seg_params.retire_grace_s) has passed, and it
 * starts empty.
 * `label` (may be empty) is the human name used in metrics; a later claim
 * with a non-empty label updates it.  Slow path; safe across processes.
 * A live key already claimed (with the same label, or an empty one) is
 * found without any lock; any other claim takes the segment's claim lock
 * and a new label the route's writer lock, each tried once: CANARY_EBUSY
 * at once while another handle holds it (nothing changed; retry later).
 * Returns an index >= 0, CANARY_EFULL (counted in canary_seg_info),
 * CANARY_EBUSY or CANARY_EREADONLY. */
CANARY_API int canary_route_claim(canary_seg_t *seg, const char *key,
                                  size_t key_len, const char *label,
                                  size_t label_len);

/* Returns the index of the route claimed under `key`, or CANARY_ENOENT.
 * Never writes.  Safe across processes. */
CANARY_API int canary_route_find(const canary_seg_t *seg, const char *key,
                                 size_t key_len);

/* Retires the route: it is no longer exported, its statistics slots are
 * retired with it, and after the segment's grace period its slots may be
 * reused.  Until then nothing changes for requests still in flight:
 * picks keep working and records still count (a claim of the same key
 * brings it all back).  now_us is canary_clock_us().  Returns 0, or
 * CANARY_ENOENT when the route is not live, CANARY_EBUSY,
 * CANARY_EREADONLY, CANARY_EINVAL.  Safe across processes. */
CANARY_API int canary_route_retire(canary_seg_t *seg, int route,
                                   double now_us);

/* Retires every live route whose key is not in `keys`: the complete set
 * of instance keys still configured, each followed by a NUL byte
 * (keys_len bytes in all; 0 retires every route).  Routes that cannot be
 * retired now (writer busy) are left for the next call.  Returns the
 * number of routes retired, or a negative error.  Safe across
 * processes. */
CANARY_API int canary_route_retire_except(canary_seg_t *seg, const char *keys,
                                          size_t keys_len, double now_us);

/* Validates `t` and, when valid, publishes it as the route's new table:
 * every process sees it from its next pick on.  Publishing a table equal
 * to the current one with the same config_hash is a no-op that returns the
 * current generation.  Effective weights become the configured ones.
 * On CANARY_EWEIGHTS, `err` says which rule failed and nothing changed.
 * The no-op case is decided by a lock-free read first; a change takes the
 * route's writer lock, tried once: CANARY_EBUSY at once while another
 * handle holds it (nothing changed; retry later).  A writer that died
 * holding it held it no longer.  Writes the generation in effect to
 * *gen_out (may be NULL). */
CANARY_API int canary_route_publish(canary_seg_t *seg, int route,
                                    const struct canary_table *t,
                                    uint64_t config_hash, uint64_t *gen_out,
                                    char *err, size_t err_len);

/* canary_route_publish() with a progression: when the table or `prog`
 * differs from what is published (config_hash covers both), the route
 * restarts its progression at step 0 — effective weights are the first
 * step's — with a window opening now.  prog == NULL publishes without a
 * progression (state CANARY_PROG_NONE).  Same rules otherwise. */
CANARY_API int canary_route_publish_prog(canary_seg_t *seg, int route,
                                         const struct canary_table *t,
                                         const struct canary_prog_params *prog,
                                         uint64_t config_hash,
                                         uint64_t *gen_out, char *err,
                                         size_t err_len);

/* Validates progression parameters for a table of n upstreams.  Returns 0
 * or CANARY_EINVAL with `err` naming the rule.  Pure. */
CANARY_API int canary_prog_check(const struct canary_prog_params *prog,
                                 uint32_t n, char *err, size_t err_len);

/* Drives the route's progression; every worker calls it periodically
 * (a few times a second).  Cheap when nothing is due.  When the open
 * window is older than the interval, exactly one caller claims it (a CAS
 * on the window start, so no lock can be left behind), judges the
 * canary's window against stable's over the same time (canary_judge())
 * and steps up, rolls back or waits.  The immediate-rollback limits are
 * checked on every call against the window so far.  Each judgement goes
 * into the decision log (canary_prog_decisions()); a dry run records
 * and changes nothing else.  Effective weights change through the
 * normal publish, so all workers switch at their next pick.  Judging
 * takes the route's writer lock, tried once: while another handle holds
 * it, CANARY_EBUSY, and the window stays due for the next tick.  now_us
 * is canary_clock_us().  Fills `out` (may be NULL; out->decided names the
 * decision this call recorded).  Returns 0 (nothing judged), 1 (a
 * window judged, weights and state unchanged), 2 (weights or state
 * changed), or a negative error. */
CANARY_API int canary_prog_tick(canary_seg_t *seg, int route, double now_us,
                                struct canary_prog_status *out);

/* Applies an operator action (canary_prog_action) and records it in the
 * route's decision log.  CANARY_ESTATE when the action makes no sense in
 * the current state (err says why); CANARY_EBUSY, at once, while another
 * handle holds the route's writer lock (nothing changed; retry).  Fills
 * `out` (may be NULL) with the status after the action; out->decided is
 * the decision recorded. */
CANARY_API int canary_prog_action(canary_seg_t *seg, int route, int action,
                                  double now_us,
                                  struct canary_prog_status *out, char *err,
                                  size_t err_len);

/* Copies up to `max` entries of the route's decision log into `out`,
 * newest first, starting at decision `from_seq` (0: the newest).  Only
 * the last CANARY_DECISIONS decisions are kept.  Lock-free, never
 * blocks; read-only safe.  Returns the number copied (0..max) or a
 * negative error. */
CANARY_API int canary_prog_decisions(const canary_seg_t *seg, int route,
                                     uint64_t from_seq,
                                     struct canary_decision *out,
                                     uint32_t max);

/* The phase name of a progression: for the canary strategy its state
 * ("none", "running", "paused", "promoted", "rolled_back"); for
 * blue/green "none", "preview" (running, step 0), "post_promotion"
 * (running, step 1), "paused", "promoted" or "rolled_back".  "unknown"
 * for values out of range.  Metrics, the status API and canarystat use
 * these names.  Pure; never NULL. */
CANARY_API const char *canary_prog_phase(uint32_t strategy, uint32_t state,
                                         uint32_t step);

/* Reads the route's progression status.  Lock-free; read-only safe. */
CANARY_API int canary_prog_status(const canary_seg_t *seg, int route,
                                  double now_us,
                                  struct canary_prog_status *out);

/* Cluster scope (progression.scope = cluster): the window judging of
 * canary_prog_tick() is done once for the whole cluster by
 * canary_prog_judge(), and every node applies the outcome with
 * canary_prog_apply().  canary_prog_breach() is canary_prog_tick() without
 * the window judging: it checks only the immediate rollback limit on this
 * node's traffic since the last state applied.  Blue/green progressions
 * are node-scoped: canary_prog_judge() and canary_prog_apply() refuse
 * them (CANARY_EINVAL, CANARY_ESTATE).  Safe across processes;
 * returns 0, 2 (rolled back) or a negative error, and fills `out` (may be
 * NULL). */
CANARY_API int canary_prog_breach(canary_seg_t *seg, int route, double now_us,
                                  struct canary_prog_status *out);

/* Judges one window given as snapshots of the canary's and stable's
 * counts in that window (e.g. the sums of every node's; stable may be
 * NULL: no baseline), for a progression in state `cur` (state RUNNING,
 * step, failures, evaluations), with canary_judge() and the same step,
 * promotion and rollback rules (and dry run) as canary_prog_tick().
 * Writes the resulting state to `next` (state, step, step_weight,
 * failures, last_result, evaluations, window figures, reason) and the
 * judge's result, gate by gate, to `j` (may be NULL).  Returns the
 * canary_gate_result, CANARY_EINVAL or CANARY_ESTATE (not running).
 * Pure. */
CANARY_API int canary_prog_judge(const struct canary_prog_params *p,
                                 const struct canary_hist_snapshot *canary,
                                 const struct canary_hist_snapshot *stable,
                                 const struct canary_prog_status *cur,
                                 struct canary_prog_status *next,
                                 struct canary_judge_result *j);

/* Sets the route's progression to `st` (state, step, failures,
 * last_result, window figures, reason), decided for the configuration
 * published with `config_hash` (another one gives CANARY_ESTATE), without
 * judging, publishing the
 * step's effective weights (0 for the canary when rolled back) when state
 * or step change, and opens a fresh local window.  With `judged` non-zero
 * the verdict is counted in the evaluations.  A state that was judged, or
 * that changes state or step, is recorded in the route's decision log:
 * with `j` (the judge's result, from canary_prog_judge() on the node that
 * judged) as a window's decision, without it (NULL) as a
 * CANARY_ORIGIN_CLUSTER one; `decided` (may be NULL) gets its seq, 0 when
 * nothing was recorded.  A route rolled back here stays rolled back:
 * another state gives CANARY_ESTATE.  Takes the writer word once; safe
 * across processes.  Returns 1 (nothing to publish), 2 (weights or state
 * changed) or a negative error with `err` saying why. */
CANARY_API int canary_prog_apply(canary_seg_t *seg, int route,
                                 uint64_t config_hash,
                                 const struct canary_prog_status *st,
                                 int judged,
                                 const struct canary_judge_result *j,
                                 double now_us, uint64_t *decided, char *err,
                                 size_t err_len);

/* Publishes new effective weights (same names and configured weights) for
 * the route, e.g. for a progression step or a rollback.  Same validation
 * and writer rules as canary_route_publish(). */
CANARY_API int canary_route_set_effective(canary_seg_t *seg, int route,
                                          const uint32_t *effective,
                                          uint32_t n, uint64_t *gen_out,
                                          char *err, size_t err_len);

/* Validates a table without publishing it (same rules and messages as
 * canary_route_publish()).  Returns 0 or CANARY_EWEIGHTS.  This is the
 * one definition of a valid table: the plugin's schema calls it. */
CANARY_API int canary_table_check(const struct canary_table *t,
                                  uint32_t max_upstreams, char *err,
                                  size_t err_len);

/* Validates one upstream name (name_len bytes): 1..63 bytes of A-Z, a-z,
 * 0-9, '.', '_' and '-', the characters of a Kong upstream name.  Returns
 * 0 or CANARY_EWEIGHTS with the message canary_table_check() gives for
 * it.  Pure. */
CANARY_API int canary_name_check(const char *name, size_t name_len,
                                 char *err, size_t err_len);

/* Copies the route's current table and counters into `out`.  Never
 * blocks; retries only while a newer table is being published.  Safe
 * across processes, also on a read-only segment. */
CANARY_API int canary_route_read(const canary_seg_t *seg, int route,
                                 struct canary_route_view *out);

/* Picks an upstream for one request.  With key == NULL (or key_len == 0)
 * the pick follows the route's shared low-discrepancy sequence, so the
 * realised split over any CANARY_WEIGHT_SCALE consecutive picks (all
 * processes together) equals the effective weights.  With a key the pick
 * is sticky: a fixed, seedless hash of the key selects one of
 * CANARY_WEIGHT_SCALE buckets, and raising an upstream's weight at the
 * expense of upstream 0 only adds buckets to it.  Writes the low 32 bits
 * of the generation used to *gen_out.  Lock-free, allocation-free, safe
 * across processes.  Returns the upstream index, CANARY_ENOENT,
 * CANARY_ENOTPUB, CANARY_ECORRUPT, or CANARY_EREADONLY for a non-sticky
 * pick on a read-only segment (it would advance the shared sequence). */
CANARY_API int canary_route_pick(canary_seg_t *seg, int route,
                                 const char *key, size_t key_len,
                                 uint32_t *gen_out);

/* The sticky bucket (0..CANARY_WEIGHT_SCALE-1) of a key.  Pure. */
CANARY_API uint32_t canary_sticky_bucket(const char *key, size_t key_len);

/* ---- judging a window ---------------------------------------------- */

/* Validates judging parameters: analysis is a canary_analysis; each limit
 * is either negative (not set) or: rates and deltas in 0..1, latencies
 * above 0, ratios in 1..1000; ratio limits only with threshold analysis
 * (statistical analysis judges latency with allowed_increase); with
 * statistical analysis, 0.5 <= confidence < 1 and allowed_increase >= 0.
 * NaN is never valid.  Returns 0 or CANARY_EINVAL with `err` naming the
 * rule.  Pure. */
CANARY_API int canary_judge_check(const struct canary_judge_params *p,
                                  char *err, size_t err_len);

/* Judges the canary's window (canary_now - canary_before) against the
 * limits of `p` and against stable's window over the same time
 * (stable_now - stable_before).  A `before` may be NULL (the cumulative
 * figures are judged); stable_now may be NULL only with
 * CANARY_JUDGE_NO_BASELINE.  `flags` is a set of canary_judge_flags.
 *
 * A window with fewer than max(min_requests, 1) canary requests is
 * inconclusive; gates relative to stable need as many stable requests,
 * and are inconclusive without them unless another gate failed.
 * Threshold analysis compares the ratios and the error-rate delta
 * plainly.  Statistical analysis fails latency when a one-sided
 * Mann-Whitney U test (ties by bucket, normal approximation with tie
 * correction) finds the canary slower with `confidence` AND the
 * Hodges-Lehmann estimate of its relative increase exceeds
 * allowed_increase; it fails errors when a one-sided two-proportion test
 * finds the canary's 5xx rate above stable's by more than
 * max_error_rate_delta (0 when not set) with `confidence`.  Absolute
 * limits are plain comparisons in both.  The same function judges for
 * the gateway's progression and for `canarystat gate`.
 *
 * Fills `out` completely.  Returns 0, or CANARY_EINVAL (bad parameters,
 * flags or pointers; `out` untouched).  Pure, allocation-free. */
CANARY_API int canary_judge(const struct canary_judge_params *p,
                            uint32_t flags,
                            const struct canary_hist_snapshot *canary_now,
                            const struct canary_hist_snapshot *canary_before,
                            const struct canary_hist_snapshot *stable_now,
                            const struct canary_hist_snapshot *stable_before,
                            struct canary_judge_result *out);

/* The name of a canary_gate ("error_rate", "p99_ratio", ...) as metrics
 * and the status API spell it, or "unknown".  Never NULL. */
CANARY_API const char *canary_gate_name(int gate);

/* The name of a canary_decision_action ("none", "step_up", "promote",
 * "pause", "rollback", "abort", "resume"), or "unknown".  Never NULL. */
CANARY_API const char *canary_action_name(int action);

/* ---- statistics ---------------------------------------------------- */

/* Statistics slots.  Statistics belong to an upstream's name on a
 * route, not to its position: every upstream of a published table owns a
 * statistics slot, and a publish keeps a name's slot wherever the name
 * moves, gives a new name a fresh slot that starts at zero, and retires
 * the slots of names that left (they are no longer exported; a name that
 * comes back before its slot is reused gets it back).  Retired slots are
 * reused no sooner than the segment's grace period after retirement
 * (canary_seg_params.retire_grace_s).
 * A request records into the slot of the upstream that served it, by the
 * handle the pick's generation published (canary_route_view.stats), so a
 * publish between pick and record cannot move its count to another
 * name.  When the pool has no slot for a new name, the publish fails with
 * CANARY_EFULL and the route keeps its previous table. */
/* Records one response into the statistics slot `stat` (a handle from
 * canary_route_view.stats) of `route`: latency (microseconds, clamped to
 * the histogram range), HTTP status, and the request's trace source (a
 * canary_trace_source, or -1 for none).  With CANARY_RECORD_FORCED in
 * `flags` the response is counted apart, by status class only, and never
 * enters the histogram that progression gates judge.  No lock, no
 * allocation: one shared atomic add for the latency bucket, and the
 * other counters in this handle's own stripe.  Returns 0, or
 * CANARY_ENOENT when the handle no longer names a slot of this route
 * (reused after its grace period: the record is dropped).  Safe across
 * processes; within a process, threads that record concurrently use a
 * handle each. */
CANARY_API int canary_stat_record(canary_seg_t *seg, int route, uint32_t stat,
                                  uint64_t latency_us, int status,
                                  int trace_source, int flags);

/* canary_stat_record() for the upstream at index `upstream` of the
 * route's currently published table, not forced.  Returns
 * CANARY_ENOTPUB before the first publish. */
CANARY_API int canary_route_record(canary_seg_t *seg, int route,
                                   int upstream, uint64_t latency_us,
                                   int status, int trace_source);

/* Counts one canary_event on the route.  Safe across processes. */
CANARY_API int canary_route_event(canary_seg_t *seg, int route, int event);

/* Copies the cumulative statistics of the upstream at index `upstream`
 * of the route's currently published table (forced requests excluded).
 * An index with no statistics slot (route unclaimed or unpublished, index
 * past the table) reads as zeros.  Never blocks. */
CANARY_API int canary_hist_snapshot(const canary_seg_t *seg, int route,
                                    int upstream,
                                    struct canary_hist_snapshot *out);

/* Summarises `now`, or the window now - before when `before` is not NULL
 * (both snapshots of the same upstream, `before` taken first).  Quantiles
 * are within 1 % of the exact nearest-rank value.  Pure. */
CANARY_API int canary_hist_summarize(const struct canary_hist_snapshot *now,
                                     const struct canary_hist_snapshot *before,
                                     struct canary_hist_summary *out);

/* The q-quantile (0 < q <= 1) of a snapshot or window, in microseconds,
 * into *value_us (0 for an empty histogram).  Pure. */
CANARY_API int canary_hist_quantile(const struct canary_hist_snapshot *now,
                                    const struct canary_hist_snapshot *before,
                                    double q, double *value_us);

/* Bucket geometry, for tests and exporters: the bucket a value falls in,
 * and the lowest and highest value a bucket holds.  Pure. */
CANARY_API int canary_hist_bucket_of(uint64_t value_us);
CANARY_API uint64_t canary_hist_bucket_low(int bucket);
CANARY_API uint64_t canary_hist_bucket_high(int bucket);

/* ---- request headers ----------------------------------------------- */

/* One request header as lua-nginx-module lists it (its
 * ngx_http_lua_ffi_table_elt_t: two { int len; const u_char *data; }
 * pairs; the same layout, with fixed-width lengths). */
typedef struct canary_header {
  int32_t key_len;
  const uint8_t *key;
  int32_t value_len;
  const uint8_t *value;
} canary_header_t;

/* Most names one canary_headers_find call looks for. */
#define CANARY_HEADERS_FIND_MAX 8

/* Finds, in one pass over the `n` headers of a request, the first header
 * of each of `n_names` names (at most CANARY_HEADERS_FIND_MAX): `names`
 * holds them one after the other, each ended by a NUL, lowercase with
 * '-' (an empty name is a slot not looked for).  A header matches when
 * its key, read case-insensitively and with '_' as '-', is the name
 * (nginx's rule for $http_*).  found[i] is the index of the first header
 * that matches name i, or -1.  Returns how many names were found, or
 * CANARY_EINVAL.  Pure. */
CANARY_API int canary_headers_find(const canary_header_t *headers, int32_t n,
                                   const char *names, int32_t n_names,
                                   int32_t *found);

/* ---- trace ids ----------------------------------------------------- */

/* Writes a new random 128-bit trace id as 32 lowercase hex chars plus NUL
 * into id_out (33 bytes), and, when tp_out is not NULL, a W3C traceparent
 * "00-<id>-<new span id>-01" plus NUL into tp_out (56 bytes).  Bytes come
 * from OpenSSL's CSPRNG in batches; the batch is wiped in a forked child,
 * so processes never share ids.  Returns 0 or CANARY_ERAND. */
CANARY_API int canary_trace_generate(char *id_out, char *tp_out);

/* Parses a W3C traceparent strictly (version 00 exactly 55 chars; later
 * versions >= 55 with '-' after the flags; lowercase hex; version ff,
 * all-zero trace-id or parent-id rejected).  On success copies the
 * trace-id (33 bytes with NUL) and parent-id (17 bytes with NUL) out when
 * the pointers are not NULL.  Returns 0 or CANARY_EINVAL. */
CANARY_API int canary_traceparent_parse(const char *s, size_t len,
                                        char *trace_id_out,
                                        char *parent_id_out,
                                        uint8_t *flags_out);

/* 1 when `s` may be kept as a client-supplied trace id: 1..
 * CANARY_TRACE_HEADER_MAX bytes of [A-Za-z0-9._:-]; 0 otherwise.  Pure. */
CANARY_API int canary_trace_id_valid(const char *s, size_t len);

/* ---- clock --------------------------------------------------------- */

/* Monotonic clock in microseconds (as a double, exact below 2^53, so
 * LuaJIT reads it without boxing).  Comparable across processes. */
CANARY_API double canary_clock_us(void);

/* CPU time of the calling thread in microseconds: what the work between
 * two calls cost it, whatever else the machine ran meanwhile (the status
 * endpoint reports its scrapes' holds with it). */
CANARY_API double canary_thread_cpu_us(void);

/* ---- prometheus ---------------------------------------------------- */

/* Renders every live route in the Prometheus text exposition format
 * into buf.  Takes no lock that a request path takes.  Returns 0 and the
 * length in *len_out, or CANARY_ENOSPC with the length needed so far in
 * *len_out (call again with a larger buffer). */
CANARY_API int canary_prom_render(const canary_seg_t *seg, char *buf,
                                  size_t cap, size_t *len_out);

/* The same exposition in pieces, so that a scrape never holds a worker's
 * event loop for long: canary_prom_begin() starts a scrape (it allocates;
 * not for the request path), each canary_prom_next() does a bounded
 * amount of work — reading a few dozen routes, or writing at most `cap`
 * bytes of whole lines — and canary_prom_end() frees it (NULL-safe).
 * The pieces, concatenated, are one valid exposition with every family
 * together.  next() returns 1 when more follows, 0 after the last piece,
 * or a negative error; *len_out is the length of this piece (may be 0).
 * cap must be at least CANARY_PROM_CHUNK_MIN. */
typedef struct canary_prom canary_prom_t; /* process-local, opaque */
CANARY_API int canary_prom_begin(const canary_seg_t *seg,
                                 canary_prom_t **out);
CANARY_API int canary_prom_next(canary_prom_t *p, char *buf, size_t cap,
                                size_t *len_out);
CANARY_API void canary_prom_end(canary_prom_t *p);

#endif /* CANARY_H */
