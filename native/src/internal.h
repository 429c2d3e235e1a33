/*
 * internal.h - PRIVATE to libcanary and its tests.  Nothing here is part
 * of the FFI contract; names are canary__* and may change with the
 * layout version.
 *
 * Segment layout (all offsets from the start of the mapping, no pointers):
 *
 *   [0, 4096)                struct seg_header
 *   [4096, ...)              max_routes route slots of route_bytes each
 *   [stat_offset, ...)       max_stat_slots statistics slots of
 *                            stat_bytes each (slots.c explains them)
 *   [prog_offset, ...)       max_prog_slots progression slots of
 *                            prog_bytes each (progslots.c)
 *
 *   route slot:
 *     struct route_hdr      claim state, writer lock byte, generation,
 *                           handle of its progression slot, window
 *                           evaluation counters, key, label, two table
 *                           buffers
 *     struct route_seq      the non-sticky sequence counter, alone on its
 *                           cache line because every pick increments it
 *     struct route_stripe[CANARY_STRIPES]
 *                           trace-source and event counters, per stripe
 *
 *   progression slot (one per route whose configuration has a
 *   progression, owned by that route):
 *     struct prog_hdr       state, owning route, epoch, retirement
 *     struct prog_area      progression parameters and state, the
 *                           canary's and stable's snapshots at the open
 *                           window's start, and the decision log
 *
 *   statistics slot (one per configured upstream, owned by a route and
 *   an upstream name):
 *     struct stat_hdr       state, owning route, epoch, name, retirement
 *     struct stat_forced    forced requests by status class
 *     struct up_stats       per-stripe sum and status classes, then the
 *                           shared latency buckets
 *
 * Memory therefore follows the configuration: a route costs a route slot
 * plus one statistics slot per upstream it has, plus a progression slot
 * when it has a progression, instead of reserving CANARY_MAX_UPSTREAMS
 * histograms and a progression area whether it uses them or not.
 *
 * Every field that more than one process touches is read and written with
 * ck_pr_* only.  See table.c for the publish protocol.
 *
 * Counter stripes.  A record touches a latency bucket, the latency sum, a
 * status class and a trace source.  As shared atomic adds that is four
 * locked read-modify-writes, and two workers recording at once bounce the
 * same cache lines between cores.  So the small counters are striped: a
 * handle claims one of CANARY_STRIPES - 1 stripes the first time it
 * records (a lock per stripe that the kernel drops when its owner dies,
 * see owner.c), and is then the only writer of that stripe's counters,
 * which it updates with an atomic load and an atomic store — no lock
 * prefix, no contention.  The last stripe is shared, with atomic adds, by
 * processes that find none free.  Readers add the stripes up.  A stripe
 * left by a dead process keeps its counts, so totals never go back.
 * Latency buckets stay single shared counters with one atomic add each:
 * 1408 of them per stripe would cost too much memory.
 */
#ifndef CANARY_INTERNAL_H
#define CANARY_INTERNAL_H

#include "canary.h"

#include <assert.h>
#include <ck_pr.h>
#include <stddef.h>
#include <stdint.h>

#define CANARY_MAGIC 0x4745535952414e43ULL /* "CNRYSEG" little-endian */
/* 2: statistics slot pools, retired route slots (slots.c, claim.c).
 * 3: writer words became lock bytes (owner.c); a version-2 process would
 * not see a version-3 process's locks, so the two must not share a file.
 * 4: progression parameters gained the strategy and the blue/green
 * windows, and the progression area its phase start and passes.
 * 5: progression areas left the route slots for a pool of their own
 * (progslots.c). */
#define CANARY_LAYOUT_VERSION 5u
#define CANARY_HEADER_BYTES 4096u
#define CANARY_CACHELINE 64u
#define CANARY_STRIPES 64u /* last one shared */

/* Route slot states.  FREE -> READY (claimed) -> RETIRED (instance no
 * longer configured) -> READY again (the same key claims it back, or, once
 * the grace period has passed, another key reuses the slot). */
enum { ROUTE_FREE = 0, ROUTE_READY = 1, ROUTE_RETIRED = 2 };

/* Statistics slot states: FREE -> LIVE (in a published table) -> RETIRED
 * (its name left the table, or its route was retired) -> LIVE again. */
enum { STAT_FREE = 0, STAT_LIVE = 1, STAT_RETIRED = 2 };

/* A statistics handle is the slot index in the low STAT_INDEX_BITS bits
 * and the slot's epoch (how often it was handed out) above them, so a
 * handle kept by a request older than the grace period cannot count into
 * the slot's next owner. */
#define CANARY_STAT_INDEX_BITS 20u
#define CANARY_STAT_SLOTS_LIMIT (1u << CANARY_STAT_INDEX_BITS)
#define CANARY_STAT_EPOCH_MASK ((1u << (32u - CANARY_STAT_INDEX_BITS)) - 1u)

struct seg_header {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t header_bytes;
  uint64_t total_bytes;
  uint64_t route_bytes;
  uint32_t max_routes;
  uint32_t max_upstreams;
  uint64_t created_unix;
  uint64_t stat_bytes;
  uint32_t max_stat_slots;
  uint32_t retire_grace_s; /* see canary_seg_params */
  uint64_t checksum;      /* over the fields above */
  /* Lock bytes (owner.c): their file offsets are the targets of
   * open-file-description locks; the bytes themselves are never read or
   * written.  claim_lock serialises every change of slot ownership (route
   * claims and retirements, statistics slots handed out or retired);
   * stripe_lock has one per counter stripe (the last, shared stripe has
   * none). */
  uint32_t claim_lock;
  uint32_t routes_used;   /* route slots ever taken from FREE */
  uint64_t routes_exhausted; /* claims refused for want of a route slot */
  uint64_t stats_exhausted;  /* publishes refused for want of a stat slot */
  /* Bit k set: stripe k has been written at some time (never cleared).
   * Readers add up only those stripes and the shared one: two workers
   * then cost a reader three cache lines per counter set, not 64. */
  uint64_t stripes_used;
  uint32_t stripe_lock[CANARY_STRIPES - 1];
  /* Geometry of the progression pool (layout 5).  It comes after the
   * lock bytes, whose offsets helpers outside the engine know, and the
   * checksum covers it too (header_checksum). */
  uint32_t max_prog_slots;
  uint64_t prog_bytes;
  uint64_t progs_exhausted; /* publishes refused for want of a
                               progression slot */
};

/* One of the two buffers of a route's weights table. */
struct table_buf {
  /* Even when the buffer is stable, odd while a writer fills it. */
  uint64_t seq;
  uint64_t config_hash;
  uint32_t n;
  uint32_t pad;           /* keeps names 8-byte aligned for word copies */
  uint32_t weights[CANARY_MAX_UPSTREAMS];
  uint32_t effective[CANARY_MAX_UPSTREAMS];
  /* upper[i]: exclusive upper bound of upstream i's share of the
   * 0..CANARY_WEIGHT_SCALE line, cumulative from upstream 0. */
  uint32_t upper[CANARY_MAX_UPSTREAMS];
  /* stat[i]: handle of upstream i's statistics slot. */
  uint32_t stat[CANARY_MAX_UPSTREAMS];
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
};

struct route_hdr {
  uint32_t state;         /* ROUTE_FREE / ROUTE_READY / ROUTE_RETIRED */
  uint32_t writer_lock;   /* lock byte of the route's writers (owner.c) */
  /* Published generation; the active buffer is tables[generation & 1]. */
  uint64_t generation;
  uint64_t retired_us;    /* canary_clock_us() at retirement */
  /* Handle of the route's progression slot (progslots.c), 0: none.
   * Changed only by the holder of the claim lock and the route's writer
   * lock, before the table that goes with it is published. */
  uint32_t prog;
  uint32_t pad;
  /* Windows judged, by result: counters of the route, not of its
   * progression slot, so that they never go back when a progression is
   * removed and its slot reused.  Written under the writer lock. */
  uint64_t evaluations[CANARY_GATE_RESULTS];
  uint64_t dry_evaluations[CANARY_GATE_RESULTS];
  char key[CANARY_KEY_MAX];
  char label[CANARY_LABEL_MAX];
  struct table_buf tables[2];
};

struct route_seq {
  uint64_t next;
  char pad[CANARY_CACHELINE - sizeof(uint64_t)];
};

struct route_stripe {
  uint64_t trace[CANARY_TRACE_SOURCES];
  uint64_t events[CANARY_EVENTS];
  uint64_t pad[4];
};

struct up_stripe {
  uint64_t sum_us;
  uint64_t status[6];
  uint64_t pad;
};

struct up_stats {
  struct up_stripe stripes[CANARY_STRIPES];
  uint64_t buckets[CANARY_HIST_BUCKETS];
};

/* One entry of a route's decision log, with its own sequence word:
 * readers copy it lock-free and retry while it is odd or moves. */
struct decision_slot {
  uint64_t lock; /* even when stable, odd while being written */
  uint64_t pad;
  struct canary_decision d;
};

/* Identity of a statistics slot.  Written only under the segment's claim
 * lock (but `nonempty`, which recorders OR into); read lock-free by
 * recorders (route and epoch, to drop a stale handle), by readers, and by
 * publishers looking for a name's retired slot. */
struct stat_hdr {
  uint32_t state;         /* STAT_FREE / STAT_LIVE / STAT_RETIRED */
  uint32_t route;         /* owning route index */
  uint32_t epoch;         /* times handed out; part of every handle */
  /* Bit k set: latency buckets 64k..64k+63 may be non-zero (set by the
   * recorder before its add, never cleared while the slot is handed
   * out), so a reader copies only the blocks in use. */
  uint32_t nonempty;
  uint64_t retired_us;    /* canary_clock_us() at retirement */
  char name[CANARY_NAME_MAX]; /* the upstream name it counts for */
  uint64_t pad2[5];
};

/* Requests an override forced onto the upstream: counted by status class
 * with shared atomic adds (they are rare), never in the histogram. */
struct stat_forced {
  uint64_t sum_us;
  uint64_t status[6];
  uint64_t pad;
};

struct stat_slot {
  struct stat_hdr hdr;
  struct stat_forced forced;
  struct up_stats stats;
};

/* Progression of one route (prog.c).  Written by the holder of the
 * route's writer lock, except window_start_us, which any process may CAS
 * to claim a due window.  Read lock-free by status readers. */
struct prog_area {
  uint32_t state;
  uint32_t step;
  uint32_t failures;
  uint32_t last_result;
  uint64_t window_start_us;
  uint64_t window_requests;
  uint64_t error_rate_bits; /* doubles as their bit patterns */
  uint64_t p95_bits;
  uint64_t p99_bits;
  uint64_t base_seq;     /* odd while the bases are being rewritten */
  uint64_t decisions;    /* seq of the newest decision, 0: none */
  uint64_t last_judged;  /* seq of the newest conclusive judgement */
  uint64_t immediate_ws; /* dry run: window whose immediate breach is
                            already recorded */
  uint64_t phase_start_us; /* blue/green: preview start, or the switch */
  uint64_t phase_passes;   /* blue/green: windows passed since the switch */
  char reason[CANARY_REASON_MAX];
  struct canary_prog_params params;
  struct canary_hist_snapshot base;        /* canary at window start */
  struct canary_hist_snapshot stable_base; /* upstream 0 at window start */
  struct decision_slot ring[CANARY_DECISIONS];
};

/* Identity of a progression slot: the same states, epochs and handles
 * as a statistics slot's (STAT_*, canary__stat_handle), and the same
 * rules: written under the claim lock, read lock-free. */
struct prog_hdr {
  uint32_t state;         /* STAT_FREE / STAT_LIVE / STAT_RETIRED */
  uint32_t route;         /* owning route index */
  uint32_t epoch;         /* times handed out; part of every handle */
  uint32_t pad;
  uint64_t retired_us;    /* canary_clock_us() at retirement */
  uint64_t pad2[5];
};

struct prog_slot {
  struct prog_hdr hdr;
  struct prog_area area;
};

/* A weights table as the engine handles it (table.c). */
struct table_data {
  uint64_t config_hash;
  uint32_t n;
  uint32_t pad;
  uint32_t weights[CANARY_MAX_UPSTREAMS];
  uint32_t effective[CANARY_MAX_UPSTREAMS];
  uint32_t upper[CANARY_MAX_UPSTREAMS];
  uint32_t stat[CANARY_MAX_UPSTREAMS];
  char names[CANARY_MAX_UPSTREAMS][CANARY_NAME_MAX];
};

static_assert(sizeof(struct canary_prog_params) % 8 == 0 &&
                  offsetof(struct prog_area, params) % 8 == 0 &&
                  offsetof(struct prog_area, reason) % 8 == 0 &&
                  offsetof(struct prog_area, base) % 8 == 0 &&
                  offsetof(struct prog_area, stable_base) % 8 == 0,
              "progression fields are copied in 64-bit atomic words");
static_assert(sizeof(struct canary_decision) % 8 == 0 &&
                  sizeof(struct decision_slot) % 8 == 0 &&
                  offsetof(struct prog_area, ring) % 8 == 0,
              "decisions are copied in 64-bit atomic words");
static_assert(offsetof(struct table_buf, names) % 8 == 0,
              "names are copied in 64-bit atomic words");
static_assert(offsetof(struct route_hdr, key) % 8 == 0 &&
                  offsetof(struct route_hdr, label) % 8 == 0,
              "key and label are copied in 64-bit atomic words");
static_assert(offsetof(struct seg_header, claim_lock) == 72 &&
                  offsetof(struct route_hdr, writer_lock) == 4,
              "spec/helpers/seglock.lua takes these lock bytes");
static_assert(sizeof(struct seg_header) <= CANARY_HEADER_BYTES,
              "segment header must fit its page");
static_assert(sizeof(struct route_seq) == CANARY_CACHELINE,
              "sequence counter owns one cache line");
static_assert(sizeof(struct route_stripe) % CANARY_CACHELINE == 0 &&
                  sizeof(struct up_stripe) == CANARY_CACHELINE,
              "each stripe owns whole cache lines");
static_assert(sizeof(struct up_stats) % CANARY_CACHELINE == 0,
              "upstream stats stay cache-line aligned");
#define CANARY_BLOCKS ((CANARY_HIST_BUCKETS + 63) / 64)
#define CANARY_BLOCKS_MASK ((uint32_t)((1ULL << CANARY_BLOCKS) - 1))
static_assert(CANARY_BLOCKS <= 32,
              "one bit of stat_hdr.nonempty per block of 64 buckets");
static_assert(CANARY_STRIPES <= 64, "one bit of stripes_used per stripe");
static_assert(sizeof(struct prog_hdr) == CANARY_CACHELINE &&
                  offsetof(struct prog_slot, area) % 8 == 0,
              "a progression slot's area starts on its own cache line");
static_assert(offsetof(struct route_hdr, evaluations) % 8 == 0,
              "evaluation counters are 64-bit atomic words");
static_assert(sizeof(struct stat_hdr) % CANARY_CACHELINE == 0 &&
                  sizeof(struct stat_forced) == CANARY_CACHELINE &&
                  offsetof(struct stat_hdr, name) % 8 == 0,
              "statistics slot parts own whole cache lines");

struct canary_seg {
  unsigned char *base;
  uint64_t size;
  int readonly;
  int stripe;              /* this handle's stripe, -1 before the claim */
  uint64_t stripe_fork;    /* canary__fork_count when it was claimed */
  uint32_t max_routes;
  uint32_t max_upstreams;
  uint64_t route_bytes;
  uint32_t max_stat_slots;
  uint64_t stat_bytes;
  uint64_t stat_offset;    /* start of the statistics slots */
  uint32_t max_prog_slots;
  uint64_t prog_bytes;
  uint64_t prog_offset;    /* start of the progression slots */
  uint64_t grace_us;       /* the header's retire_grace_s */
  /* Locks (owner.c): this handle's own open file description of the
   * segment file, on which it takes every lock; -1 for a read-only
   * handle, and in a forked child until it first needs a lock (the
   * child's copy of its parent's descriptor is closed at fork). */
  int lock_fd;
  uint64_t dev, ino;       /* the mapped file, to check a reopen */
  char *path;              /* where to reopen it */
  struct canary_seg *reg_prev, *reg_next; /* handles with a lock_fd */
};

/* Size of one route slot, multiple of 64. */
uint64_t canary__route_bytes(void);
/* Size of one statistics slot, multiple of 64. */
uint64_t canary__stat_bytes(void);
/* Size of one progression slot, multiple of 64. */
uint64_t canary__prog_bytes(void);

static inline struct seg_header *canary__header(const canary_seg_t *seg) {
  return (struct seg_header *)(void *)seg->base;
}

static inline struct route_hdr *canary__route(const canary_seg_t *seg,
                                              uint32_t route) {
  return (struct route_hdr *)(void *)(seg->base + CANARY_HEADER_BYTES +
                                      (uint64_t)route * seg->route_bytes);
}

static inline struct route_seq *canary__route_seq(const canary_seg_t *seg,
                                                  uint32_t route) {
  uint64_t off = (sizeof(struct route_hdr) + CANARY_CACHELINE - 1) /
                 CANARY_CACHELINE * CANARY_CACHELINE;
  return (struct route_seq *)(void *)((unsigned char *)canary__route(
                                          seg, route) +
                                      off);
}

static inline struct route_stripe *
canary__route_stripes(const canary_seg_t *seg, uint32_t route) {
  return (struct route_stripe *)(void *)((unsigned char *)canary__route_seq(
                                             seg, route) +
                                         sizeof(struct route_seq));
}

static inline struct stat_slot *canary__stat_slot(const canary_seg_t *seg,
                                                  uint32_t slot) {
  return (struct stat_slot *)(void *)(seg->base + seg->stat_offset +
                                      (uint64_t)slot * seg->stat_bytes);
}

static inline uint32_t canary__stat_handle(uint32_t slot, uint32_t epoch) {
  return slot | ((epoch & CANARY_STAT_EPOCH_MASK) << CANARY_STAT_INDEX_BITS);
}

static inline uint32_t canary__stat_index(uint32_t handle) {
  return handle & (CANARY_STAT_SLOTS_LIMIT - 1u);
}

/* Counter stripes (stripe.c).  canary__stripe() returns the handle's
 * stripe, claiming one on first use and again after a fork; stripes below
 * CANARY_STRIPES - 1 have this handle as their only writer.
 * canary__count() adds to a striped counter accordingly.
 * canary__fork_count (owner.c) counts the forks this process descends
 * from. */
extern uint64_t canary__fork_count;
int canary__stripe_claim(canary_seg_t *seg);

/* Stripes a reader must add up: those ever written, and the shared one. */
static inline uint64_t canary__stripes_used(const canary_seg_t *seg) {
  return ck_pr_load_64(&canary__header(seg)->stripes_used) |
         (1ULL << (CANARY_STRIPES - 1));
}

static inline int canary__stripe(canary_seg_t *seg) {
  if (seg->stripe >= 0 && seg->stripe_fork == canary__fork_count)
    return seg->stripe;
  return canary__stripe_claim(seg);
}

static inline void canary__count(uint64_t *counter, uint64_t v, int stripe) {
  if (stripe == CANARY_STRIPES - 1) {
    ck_pr_add_64(counter, v); /* shared stripe: atomic add */
  } else {
    /* Sole writer: a plain atomic load and store, no locked RMW.  Readers
     * only ever see the old or the new value. */
    ck_pr_store_64(counter, ck_pr_load_64(counter) + v);
  }
}

static inline struct prog_slot *canary__prog_slot(const canary_seg_t *seg,
                                                  uint32_t slot) {
  return (struct prog_slot *)(void *)(seg->base + seg->prog_offset +
                                      (uint64_t)slot * seg->prog_bytes);
}

/* The progression area of `route` (a valid index): the slot its handle
 * names while that slot still belongs to the route (LIVE or RETIRED,
 * same epoch), else NULL: the route has no progression.  Lock-free; a
 * holder of the route's writer lock gets an answer that holds until it
 * lets go (progslots.c). */
struct prog_area *canary__prog(const canary_seg_t *seg, uint32_t route);

/* Route slots (claim.c): route index in range; claimed (READY) slot, or
 * CANARY_EINVAL / CANARY_ENOENT. */
int canary__route_ok(const canary_seg_t *seg, int route);
int canary__ready_route(const canary_seg_t *seg, int route,
                        struct route_hdr **out);

/* ---- slot pools (claim.c, slots.c) ------------------------------------
 *
 * Retired route and statistics slots are reused no sooner than the
 * segment's grace period after their retirement.  A retirement time
 * further in the future than that means the monotonic clock restarted (a
 * reboot): such a slot counts as past its grace. */
int canary__past_grace(const canary_seg_t *seg, uint64_t retired_us,
                       uint64_t now_us);

/* A table's statistics slots, as publish.c assigns them.  The caller
 * holds the segment's claim lock and the route's writer lock.
 * canary__stats_assign() fills d->stat[] for d's names: a name the
 * current table `cur` (may be NULL) has keeps its slot, a name with a
 * retired slot on this route gets it back, any other name a fresh zeroed
 * slot.  Returns 0, or CANARY_EFULL (err set, nothing changed) when the
 * pool is exhausted.  canary__stats_retire() retires the slots of `cur`
 * that `d` (may be NULL: all of them) no longer has; call it after the
 * new table is published. */
int canary__stats_assign(const canary_seg_t *seg, uint32_t route,
                         const struct table_data *cur, struct table_data *d,
                         char *err, size_t err_len);
void canary__stats_retire(const canary_seg_t *seg, uint32_t route,
                          const struct table_data *cur,
                          const struct table_data *d, uint64_t now_us);
/* Progression slots (progslots.c).  The caller holds the segment's
 * claim lock and the route's writer lock.  canary__prog_assign() gives
 * the route a progression slot unless it has one: its own retired one
 * back (decisions included), else a free one or one retired past its
 * grace, zeroed.  0, or CANARY_EFULL (err set, nothing changed); with
 * check_only set it changes nothing either way, and a call without it
 * that follows under the same claim lock cannot fail.
 * canary__prog_release() retires the route's slot, if any, and clears
 * its handle.  canary__prog_retire_route() retires every slot the route
 * owns, keeping its handle (a route brought back gets its slot back);
 * canary__prog_revive() brings that slot back (1) or, when it has been
 * reused, returns 0; canary__prog_forget() frees the slots of a route
 * slot about to be reused by another key. */
int canary__prog_assign(const canary_seg_t *seg, uint32_t route,
                        int check_only, char *err, size_t err_len);
void canary__prog_release(const canary_seg_t *seg, uint32_t route,
                          uint64_t now_us);
void canary__prog_retire_route(const canary_seg_t *seg, uint32_t route,
                               uint64_t now_us);
int canary__prog_revive(const canary_seg_t *seg, uint32_t route);
void canary__prog_forget(const canary_seg_t *seg, uint32_t route);
/* Whether the route has a progression slot it needs none of, or needs
 * one it does not have (publish.c takes the claim lock then). */
int canary__prog_moves(const canary_seg_t *seg, uint32_t route,
                       int wants);

/* Brings back the slots of a retired route's table `d` (caller holds the
 * claim lock); returns 1 when every one was still the route's, 0 when
 * some had been reused (nothing changed then). */
int canary__stats_revive(const canary_seg_t *seg, uint32_t route,
                         const struct table_data *d);
/* The slot a handle names when it still belongs to `route` (LIVE or
 * RETIRED, same epoch), else NULL.  Lock-free. */
struct stat_slot *canary__stat_of(const canary_seg_t *seg, uint32_t route,
                                  uint32_t handle);
/* Sum of a slot's unforced counters into out; returns the blocks of 64
 * buckets it copied (the others are zero in out).  Lock-free. */
uint32_t canary__stat_snapshot(const canary_seg_t *seg,
                           const struct stat_slot *st,
                           struct canary_hist_snapshot *out);
/* While publish.c starts a progression, the table about to be published
 * is the one whose indexes canary_hist_snapshot() must resolve (the
 * window base is the new table's canary); publish.c points this thread's
 * resolution at it around that call and clears it with d == NULL. */
void canary__snapshot_through(const canary_seg_t *seg, uint32_t route,
                              const struct table_data *d);
/* Lock-free readers retry at most this often while newer tables are
 * being published under them. */
#define CANARY_READ_RETRIES 100000

/* Weights of n upstreams: each 0..scale, summing to the scale.  0 or
 * CANARY_EWEIGHTS with err set (table.c). */
int canary__check_weights(const uint32_t *w, uint32_t n, char *err,
                          size_t err_len);

/* Length of s up to its NUL, at most cap. */
size_t canary__bounded_len(const char *s, size_t cap);

/* Route tables (table.c).  read_table returns 0, CANARY_ENOTPUB or
 * CANARY_ECORRUPT; publish_locked requires the route's writer lock and
 * returns the new generation. */
int canary__read_table(const canary_seg_t *seg, struct route_hdr *r,
                       struct table_data *d, uint64_t *gen_out,
                       int names_too);
uint64_t canary__publish_locked(struct route_hdr *r,
                                const struct table_data *d);
void canary__compute_upper(struct table_data *d);
void canary__load_words(void *dst, const void *src, size_t words);
void canary__store_words(void *dst, const void *src, size_t words);

/* Progression (prog.c).  Caller holds the route's writer lock: resets the
 * route's progression to `p` (NULL: none) and sets d's effective weights
 * to its first step. */
void canary__prog_start(const canary_seg_t *seg, uint32_t route,
                        const struct canary_prog_params *p,
                        struct table_data *d, double now_us);

/* The newest decision of the route that judged a window conclusively
 * (pass or fail; not an operator action), if the log still holds it: 0,
 * or -1 (prog.c). */
int canary__prog_last_judged(const canary_seg_t *seg, int route,
                             struct canary_decision *out);

/* Locks (owner.c): an open-file-description lock on one byte of the
 * segment file, taken by the handle.  canary__lock_try() tries once and
 * returns 0, CANARY_EBUSY (another handle holds it, in this process or
 * any other) or CANARY_EIO (no usable descriptor: read-only handle, or
 * the file at the handle's path was replaced).  The kernel drops a
 * lock when its holder dies.  canary__lock_release() drops one the
 * caller holds.  canary__lock_open() opens the handle's lock descriptor
 * when it has none (0 or CANARY_EIO); the others call it.  The _off
 * helpers name the lock bytes. */
int canary__lock_open(canary_seg_t *seg);
int canary__lock_try(canary_seg_t *seg, uint64_t off);
void canary__lock_release(canary_seg_t *seg, uint64_t off);
uint64_t canary__claim_lock_off(void);
uint64_t canary__stripe_lock_off(uint32_t stripe);
uint64_t canary__writer_lock_off(const canary_seg_t *seg, uint32_t route);
/* Handles with a lock descriptor are registered, so that a forked child
 * closes its copies (owner.c).  Register after lock_fd is set; unregister
 * closes it. */
void canary__handle_register(canary_seg_t *seg);
void canary__handle_unregister(canary_seg_t *seg);

/* Fault points (fault.c), compiled into the test builds only
 * (-DCANARY_FAULT_POINTS): a test arms one by name, and the process that
 * reaches it for the nth time tells the test through a descriptor and
 * waits there to be killed.  Elsewhere CANARY_FAULT() is nothing. */
#ifdef CANARY_FAULT_POINTS
void canary__fault(const char *name);
void canary__fault_arm(const char *name, unsigned nth, int notify_fd);
#define CANARY_FAULT(name) canary__fault(name)
#else
#define CANARY_FAULT(name) ((void)0)
#endif

/* Histogram geometry and quantile rules (hist.c), shared by everything
 * that reports quantiles so the figures agree everywhere: the nearest rank
 * of q among count samples (1..count), and the value reported for a
 * bucket (its middle). */
int canary__bucket_of(uint64_t value_us);
uint64_t canary__rank(double q, uint64_t count);
double canary__bucket_mid(int bucket);

/* Copy at most cap-1 bytes of src (len bytes) and NUL-terminate. */
void canary__copy_str(char *dst, size_t cap, const char *src, size_t len);

/* Formats a message into err (may be NULL) and returns code. */
int canary__fail(char *err, size_t err_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* CANARY_INTERNAL_H */
