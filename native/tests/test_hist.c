/*
 * test_hist.c - latency histograms and status counters.
 *
 * What a user would notice: a p99 that is off by more than the promised
 * 1 %; an SLO gate judged on counts that lost updates when several
 * workers recorded at once; a window (rate()) that is not the difference
 * of two snapshots; a 404 counted as an error.
 */
#include "test_util.h"

#include <math.h>

#define H_ROUTES 4u
#define H_UPSTREAMS 16u

static int setup(void **state) {
  return test_fx_setup(state, H_ROUTES, H_UPSTREAMS);
}

static int teardown(void **state) {
  return test_fx_teardown(state);
}

static struct canary_hist_snapshot *snap_new(void) {
  struct canary_hist_snapshot *s = t_alloc((size_t)(1) * (sizeof *s));
  assert_non_null(s);
  return s;
}

static uint64_t snap_count(const struct canary_hist_snapshot *s) {
  uint64_t c = 0;
  for (int i = 0; i < CANARY_HIST_BUCKETS; i++)
    c += s->buckets[i];
  return c;
}

/* A route with H_UPSTREAMS upstreams, so every index has statistics. */
static int claim_published(canary_seg_t *seg, const char *key) {
  struct canary_table t;
  uint32_t w[H_UPSTREAMS];
  int r = canary_route_claim(seg, key, strlen(key), "", 0);
  assert_true(r >= 0);
  for (uint32_t i = 0; i < H_UPSTREAMS; i++)
    w[i] = CANARY_WEIGHT_SCALE / H_UPSTREAMS;
  test_table(&t, "u", H_UPSTREAMS, w);
  assert_int_equal(canary_route_publish(seg, r, &t, 1, NULL, NULL, 0), 0);
  return r;
}

/* |got - want| <= rel * want */
static void assert_close(double got, double want, double rel,
                         const char *what) {
  if (fabs(got - want) > rel * fabs(want) + 1e-9)
    fail_msg("%s: got %.3f, want %.3f (+-%.2f %%)", what, got, want,
             rel * 100.0);
}

/* ---- bucket geometry ------------------------------------------------- */

static void hist_bucket_geometry(void **state) {
  uint64_t prev_high = 0;
  (void)state;

  assert_int_equal(canary_hist_bucket_low(0), 0);
  assert_int_equal(canary_hist_bucket_of(0), 0);
  for (int b = 0; b < CANARY_HIST_BUCKETS; b++) {
    uint64_t lo = canary_hist_bucket_low(b);
    uint64_t hi = canary_hist_bucket_high(b);
    uint64_t width = hi - lo + 1;
    if (lo > hi)
      fail_msg("bucket %d: low %llu > high %llu", b, (unsigned long long)lo,
               (unsigned long long)hi);
    if (b > 0 && lo != prev_high + 1)
      fail_msg("bucket %d starts at %llu, previous ended at %llu (gap or "
               "overlap)",
               b, (unsigned long long)lo, (unsigned long long)prev_high);
    if (canary_hist_bucket_of(lo) != b || canary_hist_bucket_of(hi) != b)
      fail_msg("bucket %d [%llu, %llu]: bucket_of says %d / %d", b,
               (unsigned long long)lo, (unsigned long long)hi,
               canary_hist_bucket_of(lo), canary_hist_bucket_of(hi));
    /* Below 128 us every microsecond has its own bucket (1 % of 100 us
     * is 1 us); above, a bucket is at most 1/64 of its lowest value. */
    if (lo < 128 && width != 1)
      fail_msg("bucket %d [%llu, %llu] is wider than 1 us below 128 us", b,
               (unsigned long long)lo, (unsigned long long)hi);
    if (lo >= 128 && width * 64 > lo)
      fail_msg("bucket %d [%llu, %llu]: width %llu > 1/64 of %llu", b,
               (unsigned long long)lo, (unsigned long long)hi,
               (unsigned long long)width, (unsigned long long)lo);
    prev_high = hi;
  }
  /* 0 .. at least 100 s. */
  if (prev_high < 100000000ULL)
    fail_msg("histogram ends at %llu us, below 100 s",
             (unsigned long long)prev_high);

  /* Every value maps into range, into a bucket that holds it (or the top
   * bucket, clamped). */
  {
    uint64_t rs = 5;
    for (int i = 0; i < 200000; i++) {
      uint64_t v = i < 70000 ? (uint64_t)i : test_rand_next(&rs) >> (i % 64);
      int b = canary_hist_bucket_of(v);
      assert_true(b >= 0 && b < CANARY_HIST_BUCKETS);
      if (v <= prev_high) {
        if (v < canary_hist_bucket_low(b) || v > canary_hist_bucket_high(b))
          fail_msg("value %llu put in bucket %d [%llu, %llu]",
                   (unsigned long long)v, b,
                   (unsigned long long)canary_hist_bucket_low(b),
                   (unsigned long long)canary_hist_bucket_high(b));
      } else {
        assert_int_equal(b, CANARY_HIST_BUCKETS - 1);
      }
    }
    for (int e = 0; e < 64; e++) {
      uint64_t v = 1ULL << e;
      for (int d = -1; d <= 1; d++) {
        int b = canary_hist_bucket_of(v + (uint64_t)(int64_t)d);
        assert_true(b >= 0 && b < CANARY_HIST_BUCKETS);
      }
    }
    assert_int_equal(canary_hist_bucket_of(UINT64_MAX),
                     CANARY_HIST_BUCKETS - 1);
    /* Monotone. */
    for (uint64_t v = 1; v < 300000; v++)
      assert_true(canary_hist_bucket_of(v) >= canary_hist_bucket_of(v - 1));
  }
  /* Out-of-range bucket indices are answered, not read out of bounds. */
  (void)canary_hist_bucket_low(-1);
  (void)canary_hist_bucket_high(CANARY_HIST_BUCKETS);
  (void)canary_hist_bucket_high(INT_MAX);
}

/* ---- argument errors ------------------------------------------------- */

static void hist_rejects_bad_arguments(void **state) {
  struct test_fx *fx = *state;
  struct canary_hist_snapshot *s = snap_new(), *z = snap_new();
  struct canary_hist_summary sum;
  struct canary_route_view v0, v1;
  double q;
  int r = claim_published(fx->seg, "args");

  assert_int_equal(canary_route_read(fx->seg, r, &v0), 0);
  /* Bad upstream, bad route, bad trace source: nothing is recorded. */
  assert_true(canary_route_record(fx->seg, r, -1, 10, 200, -1) < 0);
  assert_true(canary_route_record(fx->seg, r, (int)H_UPSTREAMS, 10, 200, -1) <
              0);
  assert_true(canary_route_record(fx->seg, -1, 0, 10, 200, -1) < 0);
  assert_true(canary_route_record(fx->seg, (int)H_ROUTES, 0, 10, 200, -1) < 0);
  assert_true(
      canary_route_record(fx->seg, r, 0, 10, 200, CANARY_TRACE_SOURCES) < 0);
  assert_true(canary_route_record(fx->seg, r, 0, 10, 200, -2) < 0);
  assert_true(canary_route_record(fx->seg, r, 0, 10, 200, INT_MIN) < 0);
  assert_true(canary_route_event(fx->seg, r, -1) < 0);
  assert_true(canary_route_event(fx->seg, r, CANARY_EVENTS) < 0);
  for (int u = 0; u < (int)H_UPSTREAMS; u++) {
    assert_int_equal(canary_hist_snapshot(fx->seg, r, u, s), 0);
    assert_memory_equal(s, z, sizeof *s);
  }
  assert_int_equal(canary_route_read(fx->seg, r, &v1), 0);
  assert_memory_equal(v0.trace, v1.trace, sizeof v0.trace);
  assert_memory_equal(v0.events, v1.events, sizeof v0.events);

  assert_true(canary_hist_snapshot(fx->seg, r, -1, s) < 0);
  assert_true(canary_hist_snapshot(fx->seg, r, (int)H_UPSTREAMS, s) < 0);
  assert_true(canary_hist_snapshot(fx->seg, r, 0, NULL) < 0);
  assert_true(canary_hist_snapshot(NULL, r, 0, s) < 0);
  assert_true(canary_hist_summarize(NULL, NULL, &sum) < 0);
  assert_true(canary_hist_summarize(s, NULL, NULL) < 0);
  assert_true(canary_hist_quantile(s, NULL, 0.0, &q) < 0);
  assert_true(canary_hist_quantile(s, NULL, -0.5, &q) < 0);
  assert_true(canary_hist_quantile(s, NULL, 1.0001, &q) < 0);
  assert_true(canary_hist_quantile(s, NULL, NAN, &q) < 0);
  assert_true(canary_hist_quantile(s, NULL, 0.5, NULL) < 0);
  assert_true(canary_hist_quantile(NULL, NULL, 0.5, &q) < 0);
  t_free(s);
  t_free(z);
}

static void hist_empty_is_zero(void **state) {
  struct test_fx *fx = *state;
  struct canary_hist_snapshot *s = snap_new();
  struct canary_hist_summary sum;
  double q = -1;
  int r = claim_published(fx->seg, "empty");

  assert_int_equal(canary_hist_snapshot(fx->seg, r, 0, s), 0);
  assert_int_equal(canary_hist_summarize(s, NULL, &sum), 0);
  assert_int_equal(sum.count, 0);
  assert_int_equal(sum.errors, 0);
  assert_true(sum.error_rate == 0.0);
  assert_true(sum.mean_us == 0.0);
  assert_true(sum.p50_us == 0.0 && sum.p95_us == 0.0 && sum.p99_us == 0.0);
  assert_int_equal(canary_hist_quantile(s, NULL, 0.99, &q), 0);
  assert_true(q == 0.0);
  /* An empty window of a non-empty histogram too. */
  assert_int_equal(canary_route_record(fx->seg, r, 0, 1000, 500, -1), 0);
  assert_int_equal(canary_hist_snapshot(fx->seg, r, 0, s), 0);
  assert_int_equal(canary_hist_summarize(s, s, &sum), 0);
  assert_int_equal(sum.count, 0);
  assert_true(sum.error_rate == 0.0);
  t_free(s);
}

/* ---- record, snapshot, summarize -------------------------------------- */

static void hist_status_classes(void **state) {
  struct test_fx *fx = *state;
  static const struct {
    int status;
    int cls;
  } cases[] = {
      {100, 1}, {101, 1}, {199, 1},  {200, 2},     {204, 2},     {299, 2},
      {300, 3}, {304, 3}, {399, 3},  {400, 4},     {404, 4},     {499, 4},
      {500, 5}, {503, 5}, {599, 5},  {0, 0},       {99, 0},      {600, 0},
      {999, 0}, {-1, 0},  {1000, 0}, {INT_MIN, 0}, {INT_MAX, 0},
  };
  struct canary_hist_snapshot *s = snap_new();
  struct canary_hist_summary sum;
  uint64_t want[6] = {0};
  int r = claim_published(fx->seg, "status");

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t before[6];
    assert_int_equal(canary_hist_snapshot(fx->seg, r, 3, s), 0);
    memcpy(before, s->status, sizeof before);
    assert_int_equal(
        canary_route_record(fx->seg, r, 3, 250, cases[i].status, -1), 0);
    assert_int_equal(canary_hist_snapshot(fx->seg, r, 3, s), 0);
    for (int c = 0; c < 6; c++)
      if (s->status[c] != before[c] + (c == cases[i].cls))
        fail_msg("status %d counted in class %d, want class %d",
                 cases[i].status, c, cases[i].cls);
    want[cases[i].cls]++;
  }
  assert_memory_equal(s->status, want, sizeof want);
  assert_int_equal(canary_hist_summarize(s, NULL, &sum), 0);
  assert_int_equal(sum.count, sizeof cases / sizeof cases[0]);
  /* Errors are 5xx only: a 404 is the client's, not the canary's. */
  assert_int_equal(sum.errors, want[5]);
  assert_memory_equal(sum.status, want, sizeof want);
  assert_close(sum.error_rate, (double)want[5] / (double)sum.count, 1e-12,
               "error rate");
  t_free(s);
}

static void hist_record_snapshot_summarize(void **state) {
  struct test_fx *fx = *state;
  struct canary_hist_snapshot *s = snap_new(), *other = snap_new();
  struct canary_hist_snapshot *z = snap_new();
  struct canary_hist_summary sum;
  struct canary_route_view v;
  int r = claim_published(fx->seg, "rec");
  const uint64_t lat[] = {100, 200, 300, 300, 12345};
  const int st[] = {200, 404, 503, 200, 200};
  const int src[] = {CANARY_TRACE_CLIENT, CANARY_TRACE_GENERATED, -1,
                     CANARY_TRACE_GENERATED, CANARY_TRACE_REJECTED};
  double q;

  for (int i = 0; i < 5; i++)
    assert_int_equal(canary_route_record(fx->seg, r, 1, lat[i], st[i], src[i]),
                     0);
  assert_int_equal(canary_route_event(fx->seg, r, CANARY_EVENT_FALLBACK), 0);
  assert_int_equal(canary_route_event(fx->seg, r, CANARY_EVENT_FALLBACK), 0);

  assert_int_equal(canary_hist_snapshot(fx->seg, r, 1, s), 0);
  assert_int_equal(s->sum_us, 100 + 200 + 300 + 300 + 12345);
  assert_int_equal(snap_count(s), 5);
  assert_int_equal(s->buckets[canary_hist_bucket_of(100)], 1);
  assert_int_equal(s->buckets[canary_hist_bucket_of(300)], 2);
  assert_int_equal(s->buckets[canary_hist_bucket_of(12345)], 1);
  assert_int_equal(s->status[2], 3);
  assert_int_equal(s->status[4], 1);
  assert_int_equal(s->status[5], 1);

  /* Other upstreams and routes saw nothing. */
  assert_int_equal(canary_hist_snapshot(fx->seg, r, 0, other), 0);
  assert_memory_equal(other, z, sizeof *z);

  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.trace[CANARY_TRACE_CLIENT], 1);
  assert_int_equal(v.trace[CANARY_TRACE_TRACEPARENT], 0);
  assert_int_equal(v.trace[CANARY_TRACE_GENERATED], 2);
  assert_int_equal(v.trace[CANARY_TRACE_REJECTED], 1);
  assert_int_equal(v.events[CANARY_EVENT_FALLBACK], 2);
  assert_int_equal(v.events[CANARY_EVENT_OVERRIDE], 0);

  assert_int_equal(canary_hist_summarize(s, NULL, &sum), 0);
  assert_int_equal(sum.count, 5);
  assert_int_equal(sum.errors, 1);
  assert_close(sum.error_rate, 0.2, 1e-12, "error rate");
  assert_close(sum.mean_us, (100 + 200 + 300 + 300 + 12345) / 5.0, 1e-12,
               "mean");
  assert_close(sum.p50_us, 300, 0.01, "p50");   /* rank 3 */
  assert_close(sum.p95_us, 12345, 0.01, "p95"); /* rank 5 */
  assert_close(sum.p99_us, 12345, 0.01, "p99");
  /* max: the upper edge of the top non-empty bucket. */
  assert_true(sum.max_us >= 12345.0);
  assert_close(sum.max_us, 12345, 1.0 / 64, "max");
  assert_int_equal(canary_hist_quantile(s, NULL, 0.2, &q), 0);
  assert_close(q, 100, 0.01, "q0.2");
  assert_int_equal(canary_hist_quantile(s, NULL, 0.21, &q), 0);
  assert_close(q, 200, 0.01, "q0.21");
  assert_int_equal(canary_hist_quantile(s, NULL, 1.0, &q), 0);
  assert_close(q, 12345, 0.01, "q1");

  /* Latencies beyond the range are clamped into the top bucket. */
  assert_int_equal(
      canary_route_record(fx->seg, r, 2, 1000000000000ULL, 200, -1), 0);
  assert_int_equal(canary_hist_snapshot(fx->seg, r, 2, s), 0);
  assert_int_equal(snap_count(s), 1);
  assert_int_equal(s->buckets[CANARY_HIST_BUCKETS - 1], 1);
  t_free(s);
  t_free(other);
  t_free(z);
}

static void hist_window_is_difference_of_snapshots(void **state) {
  struct test_fx *fx = *state;
  struct canary_hist_snapshot *a = snap_new(), *b = snap_new();
  struct canary_hist_snapshot *only = snap_new();
  struct canary_hist_summary sw, so;
  uint64_t rs = 77;
  int r = claim_published(fx->seg, "window");

  /* Before the window: fast and healthy. */
  for (int i = 0; i < 5000; i++)
    assert_int_equal(canary_route_record(fx->seg, r, 0,
                                         100 + test_rand_below(&rs, 400), 200,
                                         -1),
                     0);
  assert_int_equal(canary_hist_snapshot(fx->seg, r, 0, a), 0);
  /* In the window: slow and failing.  The same samples also go to
   * upstream 5, alone. */
  for (int i = 0; i < 3000; i++) {
    uint64_t v = 20000 + test_rand_below(&rs, 80000);
    int status = i % 10 == 0 ? 503 : 200;
    assert_int_equal(canary_route_record(fx->seg, r, 0, v, status, -1), 0);
    assert_int_equal(canary_route_record(fx->seg, r, 5, v, status, -1), 0);
  }
  assert_int_equal(canary_hist_snapshot(fx->seg, r, 0, b), 0);
  assert_int_equal(canary_hist_snapshot(fx->seg, r, 5, only), 0);

  assert_int_equal(canary_hist_summarize(b, a, &sw), 0);
  assert_int_equal(canary_hist_summarize(only, NULL, &so), 0);
  assert_int_equal(sw.count, 3000);
  assert_int_equal(sw.count, so.count);
  assert_int_equal(sw.errors, 300);
  assert_memory_equal(sw.status, so.status, sizeof sw.status);
  assert_true(sw.error_rate == so.error_rate);
  assert_true(sw.mean_us == so.mean_us);
  assert_true(sw.p50_us == so.p50_us);
  assert_true(sw.p95_us == so.p95_us);
  assert_true(sw.p99_us == so.p99_us);
  assert_true(sw.max_us == so.max_us);
  assert_true(sw.p50_us >= 20000); /* nothing of the fast part */
  {
    static const double qs[] = {0.001, 0.5, 0.9, 0.999, 1.0};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
      double qw, qo;
      assert_int_equal(canary_hist_quantile(b, a, qs[i], &qw), 0);
      assert_int_equal(canary_hist_quantile(only, NULL, qs[i], &qo), 0);
      assert_true(qw == qo);
    }
  }
  t_free(a);
  t_free(b);
  t_free(only);
}

/* ---- quantile accuracy ------------------------------------------------ */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double normal(uint64_t *rs) {
  double u1 = test_rand_unit(rs), u2 = test_rand_unit(rs);
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static uint64_t clamp_us(double v) {
  if (v < 0)
    return 0;
  if (v > 100000000.0) /* 100 s: inside the histogram */
    return 100000000;
  return (uint64_t)v;
}

enum { D_LOGNORMAL, D_PARETO, D_BIMODAL, D_SMALL, D_WIDE, D_COUNT };

static uint64_t draw(int dist, uint64_t *rs) {
  switch (dist) {
  case D_LOGNORMAL: /* median 3 ms, sigma 1 */
    return clamp_us(exp(log(3000.0) + normal(rs)));
  case D_PARETO: /* xm 1 ms, alpha 1.2: very heavy tail */
    return clamp_us(1000.0 / pow(test_rand_unit(rs), 1.0 / 1.2));
  case D_BIMODAL: /* 90 % ~2 ms, 10 % ~500 ms */
    return test_rand_below(rs, 10) == 0
               ? clamp_us(500000.0 + 50000.0 * normal(rs))
               : clamp_us(2000.0 + 200.0 * normal(rs));
  case D_SMALL: /* a 30..200 us upstream: the exact region */
    return 30 + test_rand_below(rs, 171);
  default: /* log-uniform 1 us .. 100 s */
    return clamp_us(exp(test_rand_unit(rs) * log(100000000.0)));
  }
}

static void hist_quantiles_within_one_percent(void **state) {
  struct test_fx *fx = *state;
  static const char *names[D_COUNT] = {"log-normal", "Pareto", "bimodal",
                                       "small", "log-uniform"};
  static const unsigned permille[] = {500, 900, 950, 990, 999};
  const uint64_t n = test_scaled_min(200000, 2000) / 1000 * 1000;
  uint64_t *vals = t_alloc(n * sizeof *vals);
  struct canary_hist_snapshot *s = snap_new();
  struct canary_hist_summary sum;
  int r = claim_published(fx->seg, "quantiles");

  assert_non_null(vals);
  for (int d = 0; d < D_COUNT; d++) {
    uint64_t rs = 1000 + (uint64_t)d;
    for (uint64_t i = 0; i < n; i++) {
      vals[i] = draw(d, &rs);
      assert_int_equal(canary_route_record(fx->seg, r, d, vals[i], 200, -1),
                       0);
    }
    qsort(vals, n, sizeof *vals, cmp_u64);
    assert_int_equal(canary_hist_snapshot(fx->seg, r, d, s), 0);
    assert_int_equal(snap_count(s), n);
    for (size_t k = 0; k < sizeof permille / sizeof permille[0]; k++) {
      /* Nearest rank: ceil(q * n), computed exactly in integers. */
      uint64_t rank = (permille[k] * n + 999) / 1000;
      double exact = (double)vals[rank - 1], got;
      char what[64];
      assert_int_equal(
          canary_hist_quantile(s, NULL, permille[k] / 1000.0, &got), 0);
      snprintf(what, sizeof what, "%s q%.3f", names[d], permille[k] / 1000.0);
      assert_close(got, exact, 0.01, what);
    }
    assert_int_equal(canary_hist_summarize(s, NULL, &sum), 0);
    assert_close(sum.p50_us, (double)vals[(500 * n + 999) / 1000 - 1], 0.01,
                 "summary p50");
    assert_close(sum.p95_us, (double)vals[(950 * n + 999) / 1000 - 1], 0.01,
                 "summary p95");
    assert_close(sum.p99_us, (double)vals[(990 * n + 999) / 1000 - 1], 0.01,
                 "summary p99");
    assert_true(sum.max_us >= (double)vals[n - 1]);
    {
      double total = 0;
      for (uint64_t i = 0; i < n; i++)
        total += (double)vals[i];
      assert_close(sum.mean_us, total / (double)n, 1e-9, "mean");
    }
  }
  t_free(vals);
  t_free(s);
}

/* ---- concurrent recording ---------------------------------------------- */

/* The samples child `id` records: deterministic, and concentrated on a
 * few buckets so that the processes really contend for cache lines. */
struct sample {
  uint64_t lat;
  int status;
  int src;
};

static struct sample sample_of(uint64_t *rs) {
  static const int statuses[] = {200, 200, 200, 201, 304,
                                 404, 500, 503, 0,   101};
  struct sample s;
  uint64_t x = test_rand_next(rs);
  switch (x % 4) {
  case 0:
    s.lat = 150;
    break;
  case 1:
    s.lat = 3000 + (x >> 8) % 3;
    break;
  case 2:
    s.lat = 1u << 20;
    break;
  default:
    s.lat = (x >> 16) % 5000000;
  }
  s.status = statuses[(x >> 40) % 10];
  s.src = (int)((x >> 48) % 5) - 1;
  return s;
}

enum { VIA_OPEN, VIA_INHERITED };

static void record_child(const char *path, canary_seg_t *inherited, int via,
                         int route, int id, uint64_t n, struct test_gate *g) {
  canary_seg_t *seg = inherited;
  uint64_t rs = 0xabc0 + (uint64_t)id;
  if (via == VIA_OPEN) {
    seg = NULL;
    CHILD_CHECK(test_seg_open(&seg, path, H_ROUTES, H_UPSTREAMS, 0, NULL, 0) ==
                    CANARY_SEG_ATTACHED,
                2);
  }
  test_gate_wait(g);
  for (uint64_t i = 0; i < n; i++) {
    struct sample s = sample_of(&rs);
    CHILD_CHECK(
        canary_route_record(seg, route, 0, s.lat, s.status, s.src) == 0, 3);
    if (i % 1000 == 0)
      CHILD_CHECK(canary_route_event(seg, route, CANARY_EVENT_OVERRIDE) == 0,
                  4);
  }
  if (via == VIA_OPEN)
    test_seg_close(seg);
  _exit(0);
}

/* Records the same samples sequentially into `route` and compares. */
static void expect_same_as_sequential(canary_seg_t *seg, int route,
                                      int seq_route, int kids, uint64_t n,
                                      uint64_t extra) {
  struct canary_hist_snapshot *got = snap_new(), *want = snap_new();
  struct canary_route_view vg, vw;

  for (int id = 0; id < kids; id++) {
    uint64_t rs = 0xabc0 + (uint64_t)id;
    for (uint64_t i = 0; i < n; i++) {
      struct sample s = sample_of(&rs);
      assert_int_equal(
          canary_route_record(seg, seq_route, 0, s.lat, s.status, s.src), 0);
      if (i % 1000 == 0)
        assert_int_equal(
            canary_route_event(seg, seq_route, CANARY_EVENT_OVERRIDE), 0);
    }
  }
  assert_int_equal(canary_hist_snapshot(seg, route, 0, got), 0);
  assert_int_equal(canary_hist_snapshot(seg, seq_route, 0, want), 0);
  assert_int_equal(snap_count(want), (uint64_t)kids * n + extra);
  if (snap_count(got) != snap_count(want))
    fail_msg("concurrent count %llu, sequential %llu",
             (unsigned long long)snap_count(got),
             (unsigned long long)snap_count(want));
  if (got->sum_us != want->sum_us)
    fail_msg("concurrent sum %llu, sequential %llu (lost updates)",
             (unsigned long long)got->sum_us,
             (unsigned long long)want->sum_us);
  for (int c = 0; c < 6; c++)
    if (got->status[c] != want->status[c])
      fail_msg("status class %d: concurrent %llu, sequential %llu", c,
               (unsigned long long)got->status[c],
               (unsigned long long)want->status[c]);
  for (int b = 0; b < CANARY_HIST_BUCKETS; b++)
    if (got->buckets[b] != want->buckets[b])
      fail_msg("bucket %d: concurrent %llu, sequential %llu", b,
               (unsigned long long)got->buckets[b],
               (unsigned long long)want->buckets[b]);
  assert_int_equal(canary_route_read(seg, route, &vg), 0);
  assert_int_equal(canary_route_read(seg, seq_route, &vw), 0);
  assert_memory_equal(vg.trace, vw.trace, sizeof vg.trace);
  assert_memory_equal(vg.events, vw.events, sizeof vg.events);
  t_free(got);
  t_free(want);
}

static void run_recorders(struct test_fx *fx, int via, int kids,
                          int parent_records_first) {
  const uint64_t n = test_scaled_min(1000000, 1000);
  pid_t pids[8];
  struct test_gate g;
  int r = claim_published(fx->seg, "concurrent");
  int seq = claim_published(fx->seg, "sequential");

  /* The parent records (and so takes its counters) before forking, as a
   * master process might; children then start from an inherited state.
   * Its samples are subtracted by recording them on the sequential side
   * too. */
  if (parent_records_first) {
    assert_int_equal(canary_route_record(fx->seg, r, 0, 42, 200, 0), 0);
    assert_int_equal(canary_route_record(fx->seg, seq, 0, 42, 200, 0), 0);
  }
  assert_int_equal(test_gate_init(&g), 0);
  for (int i = 0; i < kids; i++) {
    pids[i] = test_fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0)
      record_child(fx->path, fx->seg, via, r, i, n, &g);
  }
  test_gate_open(&g);
  for (int i = 0; i < kids; i++)
    test_wait_ok(pids[i]);
  expect_same_as_sequential(fx->seg, r, seq, kids, n,
                            parent_records_first ? 1 : 0);
}

static void hist_forked_recorders_total_exactly(void **state) {
  run_recorders(*state, VIA_OPEN, 4, 0);
}

static void hist_forked_recorders_on_inherited_handle(void **state) {
  run_recorders(*state, VIA_INHERITED, 4, 1);
}

/* A process with two handles on the segment closes one and keeps
 * recording through the other while another process records too. */
static void two_handle_child(const char *path, int route, uint64_t n,
                             int ready_fd, struct test_gate *g) {
  canary_seg_t *a = NULL, *b = NULL;
  uint64_t rs = 0xabc0;
  CHILD_CHECK(test_seg_open(&a, path, H_ROUTES, H_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  CHILD_CHECK(test_seg_open(&b, path, H_ROUTES, H_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              3);
  {
    struct sample s = sample_of(&rs);
    CHILD_CHECK(canary_route_record(a, route, 0, s.lat, s.status, s.src) == 0,
                4);
    s = sample_of(&rs);
    CHILD_CHECK(canary_route_record(b, route, 0, s.lat, s.status, s.src) == 0,
                5);
  }
  test_seg_close(a);
  CHILD_CHECK(write(ready_fd, "r", 1) == 1, 6);
  test_gate_wait(g);
  for (uint64_t i = 2; i < n; i++) {
    struct sample s = sample_of(&rs);
    CHILD_CHECK(canary_route_record(b, route, 0, s.lat, s.status, s.src) == 0,
                7);
    if (i % 1000 == 0)
      CHILD_CHECK(canary_route_event(b, route, CANARY_EVENT_OVERRIDE) == 0, 8);
  }
  test_seg_close(b);
  _exit(0);
}

static void hist_closing_one_of_two_handles_loses_nothing(void **state) {
  struct test_fx *fx = *state;
  const uint64_t n = test_scaled_min(1000000, 1000);
  struct test_gate g;
  int pfd[2];
  char c;
  pid_t p1, p2;
  int r = claim_published(fx->seg, "concurrent");
  int seq = claim_published(fx->seg, "sequential");

  assert_int_equal(test_gate_init(&g), 0);
  assert_int_equal(pipe(pfd), 0);
  p1 = test_fork();
  assert_true(p1 >= 0);
  if (p1 == 0) {
    close(pfd[0]);
    two_handle_child(fx->path, r, n, pfd[1], &g);
  }
  close(pfd[1]);
  assert_int_equal(read(pfd[0], &c, 1), 1);
  close(pfd[0]);
  /* The second recorder starts after the first closed its first handle. */
  p2 = test_fork();
  assert_true(p2 >= 0);
  if (p2 == 0)
    record_child(fx->path, NULL, VIA_OPEN, r, 1, n, &g);
  test_gate_open(&g);
  test_wait_ok(p1);
  test_wait_ok(p2);
  /* Child 1's events: record_child counts i % 1000 == 0 from i = 0; the
   * two-handle child from i = 2, so one event fewer. Add it here. */
  assert_int_equal(canary_route_event(fx->seg, r, CANARY_EVENT_OVERRIDE), 0);
  expect_same_as_sequential(fx->seg, r, seq, 2, n, 0);
}

/* ---- clock ------------------------------------------------------------ */

static void hist_clock_is_monotonic_microseconds(void **state) {
  double prev = canary_clock_us(), t0, t1;
  struct timespec ts;
  (void)state;

  for (int i = 0; i < 100000; i++) {
    double now = canary_clock_us();
    assert_true(now >= prev);
    prev = now;
  }
  /* Microseconds of CLOCK_MONOTONIC: comparable across processes. */
  clock_gettime(CLOCK_MONOTONIC, &ts);
  t0 = (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
  t1 = canary_clock_us();
  assert_true(t1 >= t0 && t1 - t0 < 1e6);
  t0 = canary_clock_us();
  usleep(20000);
  t1 = canary_clock_us();
  assert_true(t1 - t0 >= 20000.0);
  assert_true(t1 - t0 < 20000.0 * 50);
  /* Sub-millisecond resolution: distinct values within a millisecond.
   * The smallest step of a few tries, so that a try preempted on a busy
   * machine (or slowed by valgrind) does not count. */
  {
    double step = 1e9;
    for (int k = 0; k < 20; k++) {
      t0 = canary_clock_us();
      do
        t1 = canary_clock_us();
      while (t1 == t0);
      if (t1 - t0 < step)
        step = t1 - t0;
    }
    assert_true(step < 1000.0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(hist_rejects_bad_arguments, setup,
                                      teardown),
      cmocka_unit_test(hist_bucket_geometry),
      cmocka_unit_test_setup_teardown(hist_empty_is_zero, setup, teardown),
      cmocka_unit_test_setup_teardown(hist_status_classes, setup, teardown),
      cmocka_unit_test_setup_teardown(hist_record_snapshot_summarize, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(hist_window_is_difference_of_snapshots,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(hist_quantiles_within_one_percent, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(hist_forked_recorders_total_exactly,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          hist_forked_recorders_on_inherited_handle, setup, teardown),
      cmocka_unit_test_setup_teardown(
          hist_closing_one_of_two_handles_loses_nothing, setup, teardown),
      cmocka_unit_test(hist_clock_is_monotonic_microseconds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
