/*
 * hist.c - log-linear latency histograms (HdrHistogram-like).
 *
 * Values are microseconds.  0..127 us get one bucket each (exact).  Above
 * that every power-of-two range [2^e, 2^(e+1)), e = 7..26, is cut into 64
 * equal buckets of width 2^(e-6), so a bucket is never wider than 1/64 of
 * the smallest value in it.  Quantiles report the middle of the bucket
 * holding the nearest-rank sample, which is therefore within 1/128
 * (0.78 %) of the true value.  The top bucket ends at 2^27 - 1 us (134 s);
 * larger values are clamped into it.  1408 buckets of 8 bytes: 11 KiB per
 * upstream, fixed, so it lives in the segment and needs no allocation.
 *
 * Recording (stats.c) is one atomic add per bucket, sum and status class.
 * Everything here reads snapshots, which are plain process-local copies.
 */
#include "internal.h"

#include <ck_pr.h>
#include <math.h>
#include <string.h>

#define EXACT 128u  /* values below this have their own bucket */
#define SUB 64u     /* buckets per power of two above EXACT */
#define SUB_BITS 6u
#define FIRST_EXP 7u
#define LAST_EXP 26u

static_assert(EXACT + (LAST_EXP - FIRST_EXP + 1) * SUB == CANARY_HIST_BUCKETS,
              "bucket count in canary.h matches the geometry");

int canary__bucket_of(uint64_t v) {
  unsigned e;
  if (v < EXACT)
    return (int)v;
  e = 63u - (unsigned)__builtin_clzll(v);
  if (e > LAST_EXP)
    return CANARY_HIST_BUCKETS - 1;
  return (int)(EXACT + (e - FIRST_EXP) * SUB + ((v >> (e - SUB_BITS)) - SUB));
}

int canary_hist_bucket_of(uint64_t value_us) {
  return canary__bucket_of(value_us);
}

uint64_t canary_hist_bucket_low(int b) {
  unsigned k, e;
  if (b < 0)
    return 0;
  if ((unsigned)b < EXACT)
    return (uint64_t)b;
  if (b >= CANARY_HIST_BUCKETS)
    b = CANARY_HIST_BUCKETS - 1;
  k = (unsigned)b - EXACT;
  e = FIRST_EXP + k / SUB;
  return (uint64_t)(SUB + k % SUB) << (e - SUB_BITS);
}

uint64_t canary_hist_bucket_high(int b) {
  unsigned e;
  if (b < 0)
    return 0;
  if ((unsigned)b < EXACT)
    return (uint64_t)b;
  if (b >= CANARY_HIST_BUCKETS)
    b = CANARY_HIST_BUCKETS - 1;
  e = FIRST_EXP + ((unsigned)b - EXACT) / SUB;
  return canary_hist_bucket_low(b) + (1ULL << (e - SUB_BITS)) - 1;
}

static uint64_t diff(uint64_t now, uint64_t before) {
  return now > before ? now - before : 0; /* counters never go back */
}

/* Window bucket i of now - before (before may be NULL). */
static uint64_t bucket(const struct canary_hist_snapshot *now,
                       const struct canary_hist_snapshot *before, int i) {
  return before ? diff(now->buckets[i], before->buckets[i])
                : now->buckets[i];
}

double canary__bucket_mid(int b) {
  return ((double)canary_hist_bucket_low(b) +
          (double)canary_hist_bucket_high(b)) /
         2.0;
}

uint64_t canary__rank(double q, uint64_t count) {
  /* The epsilon keeps 0.95 * 100 at rank 95 despite binary rounding. */
  uint64_t rank = (uint64_t)ceil(q * (double)count - 1e-9);
  if (rank < 1)
    rank = 1;
  if (rank > count)
    rank = count;
  return rank;
}

/* Nearest-rank quantile given the window's total count. */
static double quantile(const struct canary_hist_snapshot *now,
                       const struct canary_hist_snapshot *before,
                       uint64_t count, double q) {
  uint64_t rank, seen = 0;
  if (count == 0)
    return 0.0;
  rank = canary__rank(q, count);
  for (int i = 0; i < CANARY_HIST_BUCKETS; i++) {
    seen += bucket(now, before, i);
    if (seen >= rank)
      return canary__bucket_mid(i);
  }
  return canary__bucket_mid(CANARY_HIST_BUCKETS - 1);
}

int canary_hist_quantile(const struct canary_hist_snapshot *now,
                         const struct canary_hist_snapshot *before, double q,
                         double *value_us) {
  uint64_t count = 0;
  if (now == NULL || value_us == NULL || !(q > 0.0 && q <= 1.0))
    return CANARY_EINVAL;
  for (int i = 0; i < CANARY_HIST_BUCKETS; i++)
    count += bucket(now, before, i);
  *value_us = quantile(now, before, count, q);
  return 0;
}

int canary_hist_summarize(const struct canary_hist_snapshot *now,
                          const struct canary_hist_snapshot *before,
                          struct canary_hist_summary *out) {
  uint64_t sum;
  int top = -1;

  if (now == NULL || out == NULL)
    return CANARY_EINVAL;
  memset(out, 0, sizeof *out);
  for (int i = 0; i < CANARY_HIST_BUCKETS; i++) {
    uint64_t c = bucket(now, before, i);
    out->count += c;
    if (c > 0)
      top = i;
  }
  for (int i = 0; i < 6; i++)
    out->status[i] =
        before ? diff(now->status[i], before->status[i]) : now->status[i];
  out->errors = out->status[5];
  sum = before ? diff(now->sum_us, before->sum_us) : now->sum_us;
  if (out->count > 0) {
    out->error_rate = (double)out->errors / (double)out->count;
    if (out->error_rate > 1.0)
      out->error_rate = 1.0; /* counters read a moment apart */
    out->mean_us = (double)sum / (double)out->count;
    out->p50_us = quantile(now, before, out->count, 0.50);
    out->p95_us = quantile(now, before, out->count, 0.95);
    out->p99_us = quantile(now, before, out->count, 0.99);
    out->max_us = (double)canary_hist_bucket_high(top);
  }
  return 0;
}

/* See canary__snapshot_through(): per thread, so no other caller (and no
 * other process) ever sees a table that is not published yet. */
static _Thread_local struct {
  const canary_seg_t *seg;
  uint32_t route;
  const struct table_data *d;
} through;

void canary__snapshot_through(const canary_seg_t *seg, uint32_t route,
                              const struct table_data *d) {
  through.seg = seg;
  through.route = route;
  through.d = d;
}

/* The statistics handle of upstream index u of the route's published
 * table (or of the table being published, see above); 0 with *ok = 0
 * when there is none. */
static uint32_t handle_of(const canary_seg_t *seg, uint32_t route, uint32_t u,
                          int *ok) {
  struct table_data d;
  struct route_hdr *r = canary__route(seg, route);
  *ok = 0;
  if (through.d != NULL && through.seg == seg && through.route == route) {
    *ok = u < through.d->n;
    return *ok ? through.d->stat[u] : 0;
  }
  if (ck_pr_load_32(&r->state) == ROUTE_FREE ||
      canary__read_table(seg, r, &d, NULL, 0) != 0 || u >= d.n)
    return 0;
  *ok = 1;
  return d.stat[u];
}

int canary_hist_snapshot(const canary_seg_t *seg, int route, int upstream,
                         struct canary_hist_snapshot *out) {
  const struct stat_slot *st = NULL;
  uint32_t h;
  int ok;
  if (seg == NULL || out == NULL || route < 0 ||
      (uint32_t)route >= seg->max_routes || upstream < 0 ||
      (uint32_t)upstream >= seg->max_upstreams)
    return CANARY_EINVAL;
  h = handle_of(seg, (uint32_t)route, (uint32_t)upstream, &ok);
  if (ok)
    st = canary__stat_of(seg, (uint32_t)route, h);
  if (st == NULL) {
    memset(out, 0, sizeof *out); /* no statistics slot: nothing counted */
    return 0;
  }
  canary__stat_snapshot(seg, st, out);
  return 0;
}
