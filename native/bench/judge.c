/*
 * judge.c - the cost of judging one window, next to the judge it
 * replaces, in the same run.
 *
 *   judge [ITERATIONS]
 *
 * Prints one "name value unit" line per figure, each the best (lowest)
 * of several timed rounds.  Windows are snapshots filled from seeded
 * log-normal latencies (median 40 ms, log-sd 0.3: about 120 non-empty
 * buckets a side), 1000 canary and 9000 stable requests with 1 % errors:
 *
 *   judge_absolute_ns     today's judge: the canary's histogram alone
 *                         against max_error_rate / max_p95 / max_p99
 *   judge_threshold_ns    both histograms: the absolute limits plus
 *                         p95/p99 ratios and the error-rate delta
 *   judge_statistical_ns  both histograms, both tests: Mann-Whitney U and
 *                         the Hodges-Lehmann shift on latency, the
 *                         two-proportion test on errors, absolute limits
 *   judge_statistical_wide_ns  the same on windows spread over every
 *                         bucket (1 us .. 100 s): the worst case
 *
 * and the ratios of each to judge_absolute_ns.  A window is judged once
 * per progression interval (seconds to minutes) by one worker, never on
 * the request path.
 */
#include "canary.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUNDS 5

struct window {
  struct canary_hist_snapshot canary, stable;
};

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void report(const char *name, double value, const char *unit) {
  printf("%s %.2f %s\n", name, value, unit);
  fflush(stdout);
}

static uint64_t rng = 42;

static double unit_rand(void) { /* splitmix64, in (0, 1) */
  uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

static void add(struct canary_hist_snapshot *s, double us, int errors_in_100,
                int i) {
  uint64_t v = (uint64_t)us;
  int status = i % 100 < errors_in_100 ? 5 : 2;
  s->buckets[canary_hist_bucket_of(v)]++;
  s->sum_us += v;
  s->status[status]++;
}

static void lognormal(struct canary_hist_snapshot *s, int n, double median) {
  for (int i = 0; i < n; i++) {
    double g = sqrt(-2 * log(unit_rand())) * cos(2 * M_PI * unit_rand());
    add(s, median * exp(0.3 * g), 1, i);
  }
}

static void wide(struct canary_hist_snapshot *s, int n) {
  for (int i = 0; i < n; i++) /* log-uniform over 1 us .. 100 s */
    add(s, exp(unit_rand() * log(1e8)), 1, i);
}

static double sink;

static double measure(const struct canary_judge_params *p, uint32_t flags,
                      const struct window *w, int with_stable, long iters) {
  double best = 1e30;
  struct canary_judge_result r;
  for (int round = 0; round < ROUNDS; round++) {
    double t0 = now_ns(), dt;
    for (long i = 0; i < iters; i++) {
      canary_judge(p, flags, &w->canary, NULL, with_stable ? &w->stable : NULL,
                   NULL, &r);
      sink += r.canary_p99_us;
    }
    dt = (now_ns() - t0) / (double)iters;
    if (dt < best)
      best = dt;
  }
  return best;
}

static void unset(struct canary_judge_params *p) {
  memset(p, 0, sizeof *p);
  p->min_requests = 100;
  p->max_error_rate = p->max_p95_us = p->max_p99_us = -1;
  p->max_p95_ratio = p->max_p99_ratio = p->max_error_rate_delta = -1;
  p->rollback_error_rate = p->rollback_p99_ratio = -1;
  p->confidence = 0.98;
  p->allowed_increase = 0.25;
}

int main(int argc, char **argv) {
  long iters = argc > 1 ? atol(argv[1]) : 5000;
  struct window *w = calloc(2, sizeof *w);
  struct canary_judge_params absolute, threshold, statistical;
  double t_abs, t_thr, t_stat, t_wide;

  if (w == NULL || iters < 1)
    return 1;
  lognormal(&w[0].canary, 1000, 40000);
  lognormal(&w[0].stable, 9000, 40000);
  wide(&w[1].canary, 10000);
  wide(&w[1].stable, 90000);

  unset(&absolute);
  absolute.max_error_rate = 0.01;
  absolute.max_p95_us = 1e6;
  absolute.max_p99_us = 2e6;
  threshold = absolute;
  threshold.max_p95_ratio = 1.5;
  threshold.max_p99_ratio = 2;
  threshold.max_error_rate_delta = 0.01;
  statistical = absolute;
  statistical.analysis = CANARY_ANALYSIS_STATISTICAL;

  t_abs = measure(&absolute, CANARY_JUDGE_NO_BASELINE, &w[0], 0, iters);
  t_thr = measure(&threshold, 0, &w[0], 1, iters);
  t_stat = measure(&statistical, 0, &w[0], 1, iters);
  t_wide = measure(&statistical, 0, &w[1], 1, iters / 4 + 1);
  report("judge_absolute_ns", t_abs, "ns");
  report("judge_threshold_ns", t_thr, "ns");
  report("judge_statistical_ns", t_stat, "ns");
  report("judge_statistical_wide_ns", t_wide, "ns");
  report("judge_threshold_vs_absolute", t_thr / t_abs, "x");
  report("judge_statistical_vs_absolute", t_stat / t_abs, "x");
  report("judge_statistical_wide_vs_absolute", t_wide / t_abs, "x");
  free(w);
  return sink == 42.0; /* keeps the judgements from being optimised out */
}
