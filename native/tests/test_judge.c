/*
 * test_judge.c - canary_judge(): the rules of every gate, and property
 * tests of the statistical analysis on simulated windows.
 *
 * Windows are built directly as histogram snapshots (no segment): a
 * sample of latency v lands in canary_hist_bucket_of(v), like a record
 * does.  The simulated latencies are log-normal, drawn with a seeded
 * PRNG, so every run sees the same windows.  Under valgrind
 * ($CANARY_TEST_SCALE > 1) the property tests run a few windows to
 * exercise the code and skip the rate assertions, which need the full
 * count.
 */
#include "test_util.h"

#include <math.h>

#define MS 1000.0 /* microseconds */

struct window {
  struct canary_hist_snapshot canary_now, canary_before;
  struct canary_hist_snapshot stable_now, stable_before;
};

static void add(struct canary_hist_snapshot *s, double latency_us,
                int status) {
  uint64_t v = latency_us < 0 ? 0 : (uint64_t)(latency_us + 0.5);
  s->buckets[canary_hist_bucket_of(v)]++;
  s->sum_us += v;
  s->status[status / 100]++;
}

/* n samples at latency_us, the first `errors` of them 503s. */
static void fill(struct canary_hist_snapshot *s, int n, int errors,
                 double latency_us) {
  for (int i = 0; i < n; i++)
    add(s, latency_us, i < errors ? 503 : 200);
}

/* A standard normal deviate (Box-Muller). */
static double normal(uint64_t *seed) {
  double u1 = test_rand_unit(seed), u2 = test_rand_unit(seed);
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* n log-normal latencies with median median_us and log-sd sigma. */
static void lognormal(struct canary_hist_snapshot *s, int n, double median_us,
                      double sigma, uint64_t *seed) {
  for (int i = 0; i < n; i++)
    add(s, median_us * exp(sigma * normal(seed)), 200);
}

/* n requests, each a 5xx with probability rate. */
static void binomial(struct canary_hist_snapshot *s, int n, double rate,
                     uint64_t *seed) {
  for (int i = 0; i < n; i++)
    add(s, 20 * MS, test_rand_unit(seed) < rate ? 500 : 200);
}

static int judge(const struct canary_judge_params *p, uint32_t flags,
                 struct window *w, struct canary_judge_result *r) {
  return canary_judge(p, flags, &w->canary_now, &w->canary_before,
                      &w->stable_now, &w->stable_before, r);
}

static struct window *new_window(void) {
  return t_alloc(sizeof(struct window));
}

/* ---- parameters ------------------------------------------------------ */

static void expect_rejected(const struct canary_judge_params *p,
                            const char *needle) {
  char err[256] = "";
  assert_int_equal(canary_judge_check(p, err, sizeof err), CANARY_EINVAL);
  if (strstr(err, needle) == NULL)
    fail_msg("error '%s' does not name '%s'", err, needle);
}

static void test_bad_parameters_are_rejected(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  (void)state;

  assert_int_equal(canary_judge_check(NULL, NULL, 0), CANARY_EINVAL);
  test_judge_unset(&p);
  p.analysis = 2;
  expect_rejected(&p, "analysis");
  test_judge_unset(&p);
  p.max_error_rate = 1.5;
  expect_rejected(&p, "max_error_rate");
  test_judge_unset(&p);
  p.max_error_rate_delta = NAN;
  expect_rejected(&p, "max_error_rate_delta is not a number");
  test_judge_unset(&p);
  p.max_p99_us = 0;
  expect_rejected(&p, "max_p99_us");
  test_judge_unset(&p);
  p.max_p95_us = INFINITY;
  expect_rejected(&p, "max_p95_us");
  test_judge_unset(&p);
  p.max_p99_ratio = 0.5;
  expect_rejected(&p, "max_p99_ratio must be 1..1000");
  test_judge_unset(&p);
  p.rollback_p99_ratio = 1001;
  expect_rejected(&p, "rollback_p99_ratio");
  test_judge_unset(&p);
  p.analysis = CANARY_ANALYSIS_STATISTICAL;
  p.max_p95_ratio = 2;
  expect_rejected(&p, "apply to threshold analysis");
  test_judge_unset(&p);
  p.analysis = CANARY_ANALYSIS_STATISTICAL;
  p.confidence = 1.0;
  expect_rejected(&p, "confidence");
  p.confidence = 0.4;
  expect_rejected(&p, "confidence");
  test_judge_unset(&p);
  p.analysis = CANARY_ANALYSIS_STATISTICAL;
  p.allowed_increase = -0.1;
  expect_rejected(&p, "allowed_increase");
  /* Threshold analysis does not use them: any value passes. */
  p.analysis = CANARY_ANALYSIS_THRESHOLD;
  assert_int_equal(canary_judge_check(&p, NULL, 0), 0);

  /* canary_judge refuses what the check refuses, and bad calls; `out`
   * stays untouched. */
  memset(&r, 0x5a, sizeof r);
  p.max_error_rate = 2;
  assert_int_equal(judge(&p, 0, w, &r), CANARY_EINVAL);
  test_judge_unset(&p);
  assert_int_equal(judge(&p, 4, w, &r), CANARY_EINVAL);
  assert_int_equal(canary_judge(&p, 0, &w->canary_now, NULL, NULL, NULL, &r),
                   CANARY_EINVAL);
  assert_int_equal(canary_judge(&p, 0, NULL, NULL, &w->stable_now, NULL, &r),
                   CANARY_EINVAL);
  assert_int_equal(
      canary_judge(NULL, 0, &w->canary_now, NULL, &w->stable_now, NULL, &r),
      CANARY_EINVAL);
  assert_int_equal(((unsigned char *)&r)[0], 0x5a);
  assert_int_equal(canary_judge(&p, CANARY_JUDGE_NO_BASELINE, &w->canary_now,
                                NULL, NULL, NULL, &r),
                   0);
  assert_string_equal(canary_gate_name(CANARY_GATE_P99_RATIO), "p99_ratio");
  assert_string_equal(canary_gate_name(CANARY_GATES), "unknown");
  assert_string_equal(canary_action_name(CANARY_DO_ROLLBACK), "rollback");
  assert_string_equal(canary_action_name(-1), "unknown");
}

/* ---- threshold analysis ---------------------------------------------- */

static void test_absolute_limits(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  (void)state;

  test_judge_unset(&p);
  /* No gate: purely time-based. */
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  assert_non_null(strstr(r.reason, "time-based"));

  p.min_requests = 100;
  p.max_error_rate = 0.01;
  p.max_p95_us = 50 * MS;
  p.max_p99_us = 100 * MS;
  fill(&w->canary_now, 99, 0, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_INCONCLUSIVE);
  assert_int_equal(r.gates[CANARY_GATE_P99].check, CANARY_CHECK_SKIPPED);
  assert_int_equal(r.gates[CANARY_GATE_P95_RATIO].check, CANARY_CHECK_OFF);
  assert_non_null(strstr(r.reason, "99 requests < min_requests 100"));

  fill(&w->canary_now, 1, 0, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  assert_int_equal(r.gates[CANARY_GATE_ERROR_RATE].check, CANARY_CHECK_PASS);
  /* Stable's traffic plays no part in absolute limits. */
  assert_int_equal(r.stable_requests, 0);

  /* 2 % errors out of 200: fails max_error_rate 1 %. */
  fill(&w->canary_now, 100, 4, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_ERROR_RATE);
  assert_float_equal(r.gates[CANARY_GATE_ERROR_RATE].value, 0.02, 1e-9);
  assert_non_null(strstr(r.reason, "error rate 2.00 % > max_error_rate"));

  /* The window, not the cumulative figures: `before` holds the errors. */
  w->canary_before = w->canary_now;
  fill(&w->canary_now, 150, 0, 20 * MS);
  fill(&w->canary_now, 50, 0, 120 * MS); /* 25 % at 120 ms */
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.canary_requests, 200);
  assert_int_equal(r.canary_errors, 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_P95);
  assert_int_equal(r.gates[CANARY_GATE_P99].check, CANARY_CHECK_FAIL);
  assert_non_null(strstr(r.reason, "p95 "));
  assert_non_null(strstr(r.reason, "max_p95_ms 50.0"));
}

static void test_relative_gates(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  (void)state;

  test_judge_unset(&p);
  p.min_requests = 50;
  p.max_p99_ratio = 2;
  p.max_p95_us = 1000 * MS; /* far above both */
  fill(&w->stable_now, 900, 0, 20 * MS);
  fill(&w->canary_now, 100, 0, 60 * MS); /* 3x stable */
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_P99_RATIO);
  assert_int_equal(r.gates[CANARY_GATE_P95].check, CANARY_CHECK_PASS);
  assert_float_equal(r.gates[CANARY_GATE_P99_RATIO].value, 3.0, 0.05);
  assert_float_equal(r.gates[CANARY_GATE_P99_RATIO].limit, 2.0, 0);
  assert_int_equal(r.stable_requests, 900);
  assert_non_null(strstr(r.reason, "max_p99_ratio 2.00"));
  assert_int_equal(r.rollback, 0);

  /* 1.5x passes. */
  memset(&w->canary_now, 0, sizeof w->canary_now);
  fill(&w->canary_now, 100, 0, 30 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  assert_float_equal(r.gates[CANARY_GATE_P99_RATIO].value, 1.5, 0.03);

  /* Too little stable traffic: a relative gate cannot be judged, and an
   * unjudged gate never lets a canary through. */
  memset(&w->stable_now, 0, sizeof w->stable_now);
  fill(&w->stable_now, 49, 0, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_INCONCLUSIVE);
  assert_int_equal(r.gates[CANARY_GATE_P99_RATIO].check, CANARY_CHECK_SKIPPED);
  assert_non_null(strstr(r.reason, "stable had 49 requests"));
  /* ... unless an absolute limit fails anyway. */
  p.max_p95_us = 25 * MS;
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_P95);

  /* No stable traffic by design (canary at 100 %): relative gates are
   * skipped, the window passes on the absolute limits. */
  p.max_p95_us = 1000 * MS;
  assert_int_equal(judge(&p, CANARY_JUDGE_NO_BASELINE, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  assert_int_equal(r.gates[CANARY_GATE_P99_RATIO].check, CANARY_CHECK_SKIPPED);
  assert_non_null(strstr(r.reason, "no stable traffic"));
}

static void test_error_rate_delta_and_a_shared_outage(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  (void)state;

  test_judge_unset(&p);
  p.min_requests = 100;
  p.max_error_rate_delta = 0.02;
  /* Both sides at 5 %: a shared outage is not the canary's fault. */
  fill(&w->stable_now, 1000, 50, 20 * MS);
  fill(&w->canary_now, 200, 10, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  assert_float_equal(r.gates[CANARY_GATE_ERROR_RATE_DELTA].value, 0, 1e-12);
  /* The same window fails an absolute 1 % limit. */
  p.max_error_rate = 0.01;
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_ERROR_RATE);
  p.max_error_rate = -1;
  /* 8 % against 5 %: 3 points above, more than 2. */
  memset(&w->canary_now, 0, sizeof w->canary_now);
  fill(&w->canary_now, 200, 16, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_ERROR_RATE_DELTA);
  assert_float_equal(r.gates[CANARY_GATE_ERROR_RATE_DELTA].value, 0.03, 1e-12);
  assert_non_null(strstr(r.reason, "3.00 points above stable's 5.00 %"));
}

static void test_immediate_rollback_limits(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  (void)state;

  test_judge_unset(&p);
  p.min_requests = 20;
  p.max_error_rate = 0.01;
  p.rollback_error_rate = 0.10;
  p.rollback_p99_ratio = 3;
  fill(&w->stable_now, 500, 0, 10 * MS);
  fill(&w->canary_now, 100, 5, 20 * MS); /* 5 %, 2x */
  /* Immediate: only the rollback limits are judged. */
  assert_int_equal(judge(&p, CANARY_JUDGE_IMMEDIATE, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  assert_int_equal(r.rollback, 0);
  assert_int_equal(r.gates[CANARY_GATE_ERROR_RATE].check, CANARY_CHECK_OFF);
  assert_int_equal(r.gates[CANARY_GATE_ROLLBACK_P99_RATIO].check,
                   CANARY_CHECK_PASS);
  /* The window judge fails max_error_rate, without a rollback. */
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_ERROR_RATE);
  assert_int_equal(r.rollback, 0);
  /* 100 more requests, and all 200 at 40 ms, 4x stable: breaches
   * rollback_p99_ratio, and max_error_rate (2.5 %) too; the reason
   * names the rollback limit first. */
  fill(&w->canary_now, 100, 0, 40 * MS);
  memset(&w->canary_now.buckets, 0, sizeof w->canary_now.buckets);
  w->canary_now.buckets[canary_hist_bucket_of(40000)] = 200;
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.rollback, 1);
  assert_int_equal(r.failed_gate, CANARY_GATE_ROLLBACK_P99_RATIO);
  assert_non_null(strstr(r.reason, "rollback_p99_ratio 3.00"));
  assert_int_equal(judge(&p, CANARY_JUDGE_IMMEDIATE, w, &r), 0);
  assert_int_equal(r.rollback, 1);
  /* Below min_requests nothing rolls back. */
  memset(&w->canary_now, 0, sizeof w->canary_now);
  fill(&w->canary_now, 19, 19, 500 * MS);
  assert_int_equal(judge(&p, CANARY_JUDGE_IMMEDIATE, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_INCONCLUSIVE);
  assert_int_equal(r.rollback, 0);
}

/* ---- statistical analysis: exact cases ------------------------------- */

static void statistical(struct canary_judge_params *p) {
  test_judge_unset(p);
  p->analysis = CANARY_ANALYSIS_STATISTICAL;
  p->min_requests = 100;
}

static void test_mann_whitney_by_hand(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  (void)state;

  /* Canary {10, 20, 30} ms, stable {5, 15, 25, 35} ms (one each, no
   * ties): U = 1 + 2 + 3 = 6 of 12 pairs, mean 6, variance
   * 3 * 4 * 8 / 12 = 8, z = (6 - 6 - 0.5) / sqrt(8), p = 0.5702. */
  statistical(&p);
  p.min_requests = 1;
  fill(&w->canary_now, 1, 0, 10 * MS);
  fill(&w->canary_now, 1, 0, 20 * MS);
  fill(&w->canary_now, 1, 0, 30 * MS);
  for (int i = 0; i < 4; i++)
    fill(&w->stable_now, 1, 0, (5 + 10 * i) * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_float_equal(r.gates[CANARY_GATE_LATENCY_INCREASE].statistic, 6.0,
                     1e-9);
  assert_float_equal(r.gates[CANARY_GATE_LATENCY_INCREASE].p_value, 0.5702,
                     1e-4);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);

  /* Ties by bucket: everything in one bucket is no evidence at all. */
  memset(w, 0, sizeof *w);
  fill(&w->canary_now, 300, 0, 20 * MS);
  fill(&w->stable_now, 300, 0, 20 * MS);
  p.min_requests = 100;
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_float_equal(r.gates[CANARY_GATE_LATENCY_INCREASE].p_value, 1.0, 0);
  assert_float_equal(r.gates[CANARY_GATE_LATENCY_INCREASE].value, 0.0, 1e-6);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);

  /* Every canary sample above every stable one, 3x: significant and
   * far above the allowed 25 %. */
  memset(&w->canary_now, 0, sizeof w->canary_now);
  fill(&w->canary_now, 300, 0, 60 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_LATENCY_INCREASE);
  assert_float_equal(r.gates[CANARY_GATE_LATENCY_INCREASE].value, 2.0, 0.03);
  assert_true(r.gates[CANARY_GATE_LATENCY_INCREASE].p_value < 1e-6);
  assert_non_null(strstr(r.reason, "allowed_increase 25.0 %"));
  /* Faster is never a failure, however significant. */
  assert_int_equal(
      canary_judge(&p, 0, &w->stable_now, NULL, &w->canary_now, NULL, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  assert_true(r.gates[CANARY_GATE_LATENCY_INCREASE].value < -0.6);
}

static void test_two_proportions_exact(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  (void)state;

  /* 2 % against 1 % at 2000 requests per side: pooled rate 1.5 %,
   * z = 0.01 / sqrt(0.015 * 0.985 * 2 / 2000) = 2.60, p = 0.0047 < 0.02. */
  statistical(&p);
  fill(&w->canary_now, 2000, 40, 20 * MS);
  fill(&w->stable_now, 2000, 20, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_ERROR_RATE_DELTA);
  assert_float_equal(r.gates[CANARY_GATE_ERROR_RATE_DELTA].statistic, 2.60,
                     0.01);
  assert_float_equal(r.gates[CANARY_GATE_ERROR_RATE_DELTA].p_value, 0.0047,
                     0.0002);
  assert_non_null(strstr(r.reason, "error rate 2.00 % vs stable's 1.00 %"));
  /* Equal rates: nothing to see. */
  memset(&w->canary_now, 0, sizeof w->canary_now);
  fill(&w->canary_now, 2000, 20, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  /* A shared outage, 5 % on both sides, with a tolerated delta of 2
   * points: not significant either. */
  p.max_error_rate_delta = 0.02;
  memset(w, 0, sizeof *w);
  fill(&w->canary_now, 2000, 100, 20 * MS);
  fill(&w->stable_now, 2000, 100, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_PASS);
  /* 10 % against 5 % is 5 points above, significantly more than 2. */
  memset(&w->canary_now, 0, sizeof w->canary_now);
  fill(&w->canary_now, 2000, 200, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  /* Absolute limits still apply in statistical analysis. */
  p.max_error_rate_delta = -1;
  p.max_error_rate = 0.04;
  memset(w, 0, sizeof *w);
  fill(&w->canary_now, 2000, 100, 20 * MS);
  fill(&w->stable_now, 2000, 100, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_FAIL);
  assert_int_equal(r.failed_gate, CANARY_GATE_ERROR_RATE);
  /* Too few stable requests for the tests: inconclusive. */
  p.max_error_rate = -1;
  memset(&w->stable_now, 0, sizeof w->stable_now);
  fill(&w->stable_now, 99, 0, 20 * MS);
  assert_int_equal(judge(&p, 0, w, &r), 0);
  assert_int_equal(r.verdict, CANARY_GATE_INCONCLUSIVE);
}

/* ---- statistical analysis: properties -------------------------------- */

/* Full-count runs only: the rates need their samples. */
static int full_scale(void) {
  return test_scale() == 1;
}

/* Fraction of `windows` simulated latency windows (200 requests per
 * side, log-normal, sigma 0.2, stable median 40 ms, canary `factor`
 * times slower) that fail; *mean_increase gets the average estimate. */
static double latency_fail_rate(const struct canary_judge_params *p,
                                double factor, int windows, uint64_t seed,
                                double *mean_increase) {
  struct window *w = new_window();
  struct canary_judge_result r;
  int fails = 0;
  double sum = 0;
  for (int i = 0; i < windows; i++) {
    memset(w, 0, sizeof *w);
    lognormal(&w->canary_now, 200, 40 * MS * factor, 0.2, &seed);
    lognormal(&w->stable_now, 200, 40 * MS, 0.2, &seed);
    assert_int_equal(judge(p, 0, w, &r), 0);
    assert_int_not_equal(r.verdict, CANARY_GATE_INCONCLUSIVE);
    fails += r.verdict == CANARY_GATE_FAIL;
    sum += r.gates[CANARY_GATE_LATENCY_INCREASE].value;
  }
  t_free(w);
  if (mean_increase != NULL)
    *mean_increase = sum / windows;
  return (double)fails / windows;
}

/* Sampling slack: three standard deviations of a rate q over n. */
static double slack(double q, int n) {
  return 3 * sqrt(q * (1 - q) / n);
}

static void
test_equal_latency_fails_at_most_one_minus_confidence(void **state) {
  struct canary_judge_params p;
  int windows = (int)test_scaled_min(2000, 20);
  double rate, inc;
  (void)state;

  /* allowed_increase 0: the failure rate is the test's alone, and must
   * match 1 - confidence (not exceed it, and not be 0: a test that
   * never fails cannot catch anything). */
  statistical(&p);
  p.allowed_increase = 0;
  rate = latency_fail_rate(&p, 1.0, windows, 11, &inc);
  print_message("equal latency, allowed_increase 0: %.4f of %d windows "
                "fail (1 - confidence = %.2f), mean increase %+.4f\n",
                rate, windows, 1 - p.confidence, inc);
  if (full_scale()) {
    assert_true(rate <= 0.02 + slack(0.02, windows));
    assert_true(rate >= 0.005);
    assert_true(fabs(inc) < 0.005);
  }
  /* The default allowed increase: equal canaries essentially never fail. */
  p.allowed_increase = 0.25;
  rate = latency_fail_rate(&p, 1.0, windows, 12, NULL);
  if (full_scale())
    assert_true(rate <= 0.02);
}

static void test_slower_canaries(void **state) {
  struct canary_judge_params p;
  int windows = (int)test_scaled_min(1000, 20);
  double rate, inc;
  (void)state;

  statistical(&p); /* confidence 0.98, allowed_increase 0.25 */
  rate = latency_fail_rate(&p, 1.3, windows, 21, &inc);
  print_message("1.3x slower: %.4f of %d windows fail, mean estimated "
                "increase %+.4f\n",
                rate, windows, inc);
  if (full_scale()) {
    assert_true(rate >= 0.95);
    /* Hodges-Lehmann on log latency estimates the factor itself. */
    assert_true(fabs(inc - 0.3) < 0.01);
  }
  rate = latency_fail_rate(&p, 1.1, windows, 22, &inc);
  print_message("1.1x slower: %.4f of %d windows fail, mean estimated "
                "increase %+.4f\n",
                rate, windows, inc);
  if (full_scale()) {
    assert_true(rate <= 0.02);
    assert_true(fabs(inc - 0.1) < 0.01);
  }
}

static void test_error_rates_sampled(void **state) {
  struct canary_judge_params p;
  struct window *w = new_window();
  struct canary_judge_result r;
  int windows = (int)test_scaled_min(1000, 10);
  int fails_worse = 0, fails_equal = 0;
  uint64_t seed = 31;
  (void)state;

  statistical(&p);
  for (int i = 0; i < windows; i++) {
    memset(w, 0, sizeof *w);
    binomial(&w->canary_now, 2000, 0.02, &seed);
    binomial(&w->stable_now, 2000, 0.01, &seed);
    assert_int_equal(judge(&p, 0, w, &r), 0);
    fails_worse += r.verdict == CANARY_GATE_FAIL;
    memset(w, 0, sizeof *w);
    binomial(&w->canary_now, 2000, 0.01, &seed);
    binomial(&w->stable_now, 2000, 0.01, &seed);
    assert_int_equal(judge(&p, 0, w, &r), 0);
    fails_equal += r.verdict == CANARY_GATE_FAIL;
  }
  print_message("errors 2 %% vs 1 %%, 2000 per side: %.4f of %d windows "
                "fail; 1 %% vs 1 %%: %.4f\n",
                (double)fails_worse / windows, windows,
                (double)fails_equal / windows);
  if (full_scale()) {
    /* The test's power at this size and confidence is 0.71 (z = 2.60
     * against a critical 2.05); each window's own counts vary. */
    assert_true((double)fails_worse / windows >= 0.6);
    assert_true((double)fails_equal / windows <= 0.02 + slack(0.02, windows));
  }
}

/* Frees what a test allocated, also when an assertion cut it short. */
static int release(void **state) {
  (void)state;
  test_release_all();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_bad_parameters_are_rejected, release),
      cmocka_unit_test_teardown(test_absolute_limits, release),
      cmocka_unit_test_teardown(test_relative_gates, release),
      cmocka_unit_test_teardown(test_error_rate_delta_and_a_shared_outage,
                                release),
      cmocka_unit_test_teardown(test_immediate_rollback_limits, release),
      cmocka_unit_test_teardown(test_mann_whitney_by_hand, release),
      cmocka_unit_test_teardown(test_two_proportions_exact, release),
      cmocka_unit_test_teardown(
          test_equal_latency_fails_at_most_one_minus_confidence, release),
      cmocka_unit_test_teardown(test_slower_canaries, release),
      cmocka_unit_test_teardown(test_error_rates_sampled, release),
  };
  return cmocka_run_group_tests_name("judge", tests, NULL, NULL);
}
