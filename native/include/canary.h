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
  XX(EFULL, -6, "segment has no free route slot")                             \
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
  CANARY_REASON_MAX = 192     /* progression reason text, NUL included */
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

/* A progression as configured.  Limits < 0 are not set; with no limit
 * set, progression is purely time-based (every window passes). */
struct canary_prog_params {
  uint32_t canary;         /* upstream index, 1..n-1 (0 is stable) */
  uint32_t nsteps;         /* 1..CANARY_MAX_STEPS */
  uint32_t steps[CANARY_MAX_STEPS]; /* canary weight per step, 1..10000,
                                       strictly increasing */
  uint32_t interval_ms;    /* window length, >= 100 */
  uint32_t min_requests;   /* fewer in a window: inconclusive */
  uint32_t failure_limit;  /* consecutive failed windows before rollback */
  uint32_t on_success;     /* canary_prog_on_success */
  double max_error_rate;   /* fraction 0..1 of 5xx */
  double max_p95_us;
  double max_p99_us;
  double rollback_error_rate; /* checked on every tick: immediate rollback */
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
  uint64_t evaluations[CANARY_GATE_RESULTS]; /* windows judged, by result */
  uint64_t window_requests; /* requests in the last judged window */
  double window_age_ms;    /* age of the window now open */
  double error_rate;       /* of the last judged window */
  double p95_us;
  double p99_us;
  char reason[CANARY_REASON_MAX]; /* last decision, for humans */
};

typedef struct canary_seg canary_seg_t; /* process-local, opaque */

struct canary_seg_info {
  uint64_t size;          /* bytes of the mapping */
  uint64_t route_bytes;   /* bytes per route slot */
  uint64_t created_unix;  /* creation time of the segment */
  uint32_t max_routes;
  uint32_t max_upstreams;
  uint32_t routes_used;   /* claimed route slots */
  uint32_t layout_version;
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
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
  char key[CANARY_KEY_MAX];
  char label[CANARY_LABEL_MAX];
  uint64_t trace[CANARY_TRACE_SOURCES];
  uint64_t events[CANARY_EVENTS];
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

/* For a privileged master that starts unprivileged workers: creates or
 * validates the segment file at `path` exactly as canary_seg_open() does
 * (a file owned by the caller or already by `uid` is accepted), then makes
 * it owned by uid:gid, mode 0600, and does not map it.  The workers, whose
 * effective uid is `uid`, then attach it.  Returns a canary_seg_opened
 * value, or a negative error with `why` set (CANARY_EUNSAFE, CANARY_EIO
 * when the owner cannot be changed, ...). */
CANARY_API int canary_seg_prepare(const char *path, uint32_t max_routes,
                                  uint32_t max_upstreams, uint32_t uid,
                                  uint32_t gid, char *why, size_t why_len);

/* Unmaps and frees the handle.  NULL-safe.  The file stays. */
CANARY_API void canary_seg_close(canary_seg_t *seg);

/* Fills `out` with the segment's geometry.  Safe across processes. */
CANARY_API int canary_seg_info(const canary_seg_t *seg,
                               struct canary_seg_info *out);

/* ---- routes -------------------------------------------------------- */

/* Returns the index of the route claimed under `key` (1..63 bytes),
 * claiming a free slot for it first if there is none.  `label` (may be
 * empty) is the human name used in metrics; a later claim with a
 * non-empty label updates it.  Slow path; safe across processes.  A key
 * already claimed (with the same label, or an empty one) is found without
 * any lock; a new claim takes the segment's claim lock and a new label
 * the route's writer lock, each tried once: CANARY_EBUSY at once while
 * another handle holds it (nothing changed; retry later).  Returns an
 * index >= 0, CANARY_EFULL, CANARY_EBUSY or CANARY_EREADONLY. */
CANARY_API int canary_route_claim(canary_seg_t *seg, const char *key,
                                  size_t key_len, const char *label,
                                  size_t label_len);

/* Returns the index of the route claimed under `key`, or CANARY_ENOENT.
 * Never writes.  Safe across processes. */
CANARY_API int canary_route_find(const canary_seg_t *seg, const char *key,
                                 size_t key_len);

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
 * canary's window (difference of cumulative snapshots) and steps up,
 * rolls back or waits.  The immediate rollback limit is checked on every
 * call against the window so far.  Effective weights change through the
 * normal publish, so all workers switch at their next pick.  Judging
 * takes the route's writer lock, tried once: while another handle holds
 * it, CANARY_EBUSY, and the window stays due for the next tick.  now_us
 * is canary_clock_us().  Fills `out` (may be NULL).  Returns 0 (nothing
 * judged), 1 (a window judged, weights unchanged), 2 (weights or state
 * changed), or a negative error. */
CANARY_API int canary_prog_tick(canary_seg_t *seg, int route, double now_us,
                                struct canary_prog_status *out);

/* Applies an operator action (canary_prog_action).  CANARY_ESTATE when
 * the action makes no sense in the current state (err says why);
 * CANARY_EBUSY, at once, while another handle holds the route's writer
 * lock (nothing changed; retry). */
CANARY_API int canary_prog_action(canary_seg_t *seg, int route, int action,
                                  double now_us, char *err, size_t err_len);

/* Reads the route's progression status.  Lock-free; read-only safe. */
CANARY_API int canary_prog_status(const canary_seg_t *seg, int route,
                                  double now_us,
                                  struct canary_prog_status *out);

/* Publishes new effective weights (same names and configured weights) for
 * the route, e.g. for a progression step or a rollback.  Same validation
 * and writer rules as canary_route_publish(). */
CANARY_API int canary_route_set_effective(canary_seg_t *seg, int route,
                                          const uint32_t *effective,
                                          uint32_t n, uint64_t *gen_out,
                                          char *err, size_t err_len);

/* Validates a table without publishing it (same rules and messages as
 * canary_route_publish()).  Returns 0 or CANARY_EWEIGHTS. */
CANARY_API int canary_table_check(const struct canary_table *t,
                                  uint32_t max_upstreams, char *err,
                                  size_t err_len);

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

/* ---- statistics ---------------------------------------------------- */

/* Records one response of `upstream` on `route`: latency (microseconds,
 * clamped to the histogram range), HTTP status, and the request's trace
 * source (a canary_trace_source, or -1 for none).  No lock, no
 * allocation: one shared atomic add for the latency bucket, and the
 * other counters in this handle's own stripe.  Safe across processes;
 * within a process, threads that record concurrently use a handle each. */
CANARY_API int canary_route_record(canary_seg_t *seg, int route,
                                   int upstream, uint64_t latency_us,
                                   int status, int trace_source);

/* Counts one canary_event on the route.  Safe across processes. */
CANARY_API int canary_route_event(canary_seg_t *seg, int route, int event);

/* Copies one upstream's cumulative statistics.  Never blocks. */
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

/* ---- prometheus ---------------------------------------------------- */

/* Renders every claimed route in the Prometheus text exposition format
 * into buf.  Takes no lock that a request path takes.  Returns 0 and the
 * length in *len_out, or CANARY_ENOSPC with the length needed so far in
 * *len_out (call again with a larger buffer). */
CANARY_API int canary_prom_render(const canary_seg_t *seg, char *buf,
                                  size_t cap, size_t *len_out);

#endif /* CANARY_H */
