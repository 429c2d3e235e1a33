/*
 * accuracy.c - quantile accuracy of our histogram against Kong's
 * prometheus plugin buckets with Prometheus' histogram_quantile.
 *
 * For each latency distribution (fixed seeds, N samples in integer
 * microseconds) the exact p50/p90/p95/p99/p99.9 are the nearest-rank
 * values of the sorted samples (rank = ceil(q * N), the definition the
 * engine documents).  Then:
 *
 *   ours  every sample goes through a real segment with
 *         canary_route_record(), one route per distribution; the
 *         quantile is canary_hist_quantile() of canary_hist_snapshot().
 *   kong  the samples, in milliseconds (exact, not rounded to Kong's
 *         integer ms, which only helps Kong), counted into Kong's
 *         prometheus plugin buckets (le = 25, 50, 80, 100, 250, 400, 700,
 *         1000, 2000, 5000, 10000, 30000, 60000, +Inf ms); the quantile is
 *         Prometheus' histogram_quantile: find the first bucket whose
 *         cumulative count reaches rank = q * count, interpolate linearly
 *         between its lower bound (0 for the first) and its upper bound; a
 *         rank in the +Inf bucket yields the highest finite bound.
 *
 * Prints the relative error |estimate - exact| / exact per distribution
 * and quantile as a table on stderr, and "name value unit" lines on
 * stdout: the maximum per distribution and overall, for each method.
 *
 *   accuracy [SEGMENT_PATH] [SAMPLES]
 */
#include "canary.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_US 100000000ULL /* 100 s: the top of the engine's range */

static const double QS[] = {0.5, 0.9, 0.95, 0.99, 0.999};
static const char *const QNAMES[] = {"p50", "p90", "p95", "p99", "p99.9"};
#define NQ (sizeof QS / sizeof QS[0])

static const double KONG_LE_MS[] = {25,   50,   80,   100,   250,   400,  700,
                                    1000, 2000, 5000, 10000, 30000, 60000};
#define NKONG (sizeof KONG_LE_MS / sizeof KONG_LE_MS[0])

/* ---- deterministic random numbers (splitmix64) ------------------------- */

static uint64_t rng_state;

static uint64_t next_u64(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Uniform on (0, 1): never 0, so logs and divisions are safe. */
static double unit(void) {
  return ((double)(next_u64() >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(void) { /* Box-Muller */
  return sqrt(-2.0 * log(unit())) * cos(2.0 * M_PI * unit());
}

static uint64_t clamp_us(double v) {
  if (!(v >= 1.0))
    return 1;
  if (v > (double)MAX_US)
    return MAX_US;
  return (uint64_t)llround(v);
}

enum dist { UNIFORM, LOGNORMAL, PARETO, BIMODAL, NDIST };
static const char *const DNAMES[NDIST] = {"uniform", "lognormal", "pareto",
                                          "bimodal"};
static const char *const DDESC[NDIST] = {
    "uniform 1..100 ms", "log-normal median 20 ms, sigma 1",
    "Pareto xm 5 ms, alpha 1.5",
    "bimodal 90% N(5 ms, 0.5 ms) + 10% N(200 ms, 20 ms)"};

static uint64_t sample(enum dist d) {
  switch (d) {
  case UNIFORM:
    return clamp_us(1000.0 + unit() * 99000.0);
  case LOGNORMAL:
    return clamp_us(exp(log(20000.0) + normal()));
  case PARETO:
    return clamp_us(5000.0 / pow(unit(), 1.0 / 1.5));
  case BIMODAL:
    if (unit() < 0.9)
      return clamp_us(5000.0 + 500.0 * normal());
    return clamp_us(200000.0 + 20000.0 * normal());
  default:
    return 1;
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Nearest rank, with the engine's epsilon (0.95 * 100 is rank 95). */
static double exact_quantile(const uint64_t *sorted, size_t n, double q) {
  size_t rank = (size_t)ceil(q * (double)n - 1e-9);
  if (rank < 1)
    rank = 1;
  if (rank > n)
    rank = n;
  return (double)sorted[rank - 1];
}

/* Prometheus' bucketQuantile (promql/quantile.go) over cumulative counts
 * cum[0..NKONG] where cum[NKONG] is the +Inf bucket.  Returns ms. */
static double prom_histogram_quantile(const uint64_t *cum, double q) {
  double total = (double)cum[NKONG], rank, start, count;
  size_t b = 0;
  if (total == 0)
    return NAN;
  rank = q * total;
  while (b < NKONG && (double)cum[b] < rank)
    b++;
  if (b == NKONG) /* in the +Inf bucket */
    return KONG_LE_MS[NKONG - 1];
  start = 0.0;
  count = (double)cum[b];
  if (b > 0) {
    start = KONG_LE_MS[b - 1];
    count -= (double)cum[b - 1];
    rank -= (double)cum[b - 1];
  }
  return start + (KONG_LE_MS[b] - start) * (rank / count);
}

static double rel(double est, double exact) {
  return fabs(est - exact) / exact;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "build/bench/accuracy.seg";
  size_t n = argc > 2 ? (size_t)atol(argv[2]) : 1000000;
  uint64_t *v = malloc(n * sizeof *v);
  struct canary_hist_snapshot *snap = malloc(sizeof *snap);
  canary_seg_t *seg = NULL;
  struct canary_table t;
  char why[256];
  double ours_all = 0, kong_all = 0;
  int rc;

  if (v == NULL || snap == NULL || n < 1000)
    return 1;
  unlink(path);
  rc = canary_seg_open(&seg, path, NDIST, 1, 0, why, sizeof why);
  if (rc < 0) {
    fprintf(stderr, "accuracy: %s: %s\n", canary_strerror(rc), why);
    return 1;
  }
  memset(&t, 0, sizeof t);
  t.n = 1;
  t.weights[0] = CANARY_WEIGHT_SCALE;
  strcpy(t.names[0], "upstream");

  fprintf(stderr, "%-10s %-6s %14s %14s %9s %14s %9s\n", "dist", "q",
          "exact_us", "ours_us", "ours_err", "kong_us", "kong_err");
  for (int d = 0; d < NDIST; d++) {
    uint64_t cum[NKONG + 1] = {0};
    double ours_max = 0, kong_max = 0;
    int route = canary_route_claim(seg, DNAMES[d], strlen(DNAMES[d]), "", 0);
    if (route < 0 ||
        canary_route_publish(seg, route, &t, 0, NULL, why, sizeof why) < 0) {
      fprintf(stderr, "accuracy: cannot set up route %s\n", DNAMES[d]);
      return 1;
    }
    rng_state = 0x5eed0000ULL + (uint64_t)d; /* fixed seed per distribution */
    for (size_t i = 0; i < n; i++) {
      double ms;
      size_t b = 0;
      v[i] = sample((enum dist)d);
      canary_route_record(seg, route, 0, v[i], 200, -1);
      ms = (double)v[i] / 1000.0;
      while (b < NKONG && ms > KONG_LE_MS[b])
        b++;
      cum[b]++; /* per bucket for now, cumulated below */
    }
    for (size_t b = 1; b <= NKONG; b++)
      cum[b] += cum[b - 1];
    qsort(v, n, sizeof *v, cmp_u64);
    if (canary_hist_snapshot(seg, route, 0, snap) < 0) {
      fprintf(stderr, "accuracy: snapshot failed\n");
      return 1;
    }
    for (size_t k = 0; k < NQ; k++) {
      double exact = exact_quantile(v, n, QS[k]), ours, kong, eo, ek;
      canary_hist_quantile(snap, NULL, QS[k], &ours);
      kong = prom_histogram_quantile(cum, QS[k]) * 1000.0;
      eo = rel(ours, exact);
      ek = rel(kong, exact);
      fprintf(stderr, "%-10s %-6s %14.0f %14.1f %8.3f%% %14.1f %8.2f%%\n",
              DNAMES[d], QNAMES[k], exact, ours, eo * 100, kong, ek * 100);
      ours_max = fmax(ours_max, eo);
      kong_max = fmax(kong_max, ek);
    }
    fprintf(stderr, "  (%s, %zu samples)\n", DDESC[d], n);
    printf("accuracy_ours_%s_max_rel_err %.3f %%\n", DNAMES[d],
           ours_max * 100);
    printf("accuracy_kong_%s_max_rel_err %.2f %%\n", DNAMES[d],
           kong_max * 100);
    ours_all = fmax(ours_all, ours_max);
    kong_all = fmax(kong_all, kong_max);
  }
  printf("accuracy_ours_max_rel_err %.3f %%\n", ours_all * 100);
  printf("accuracy_kong_max_rel_err %.2f %%\n", kong_all * 100);
  printf("accuracy_samples_per_distribution %zu samples\n", n);
  canary_seg_close(seg);
  unlink(path);
  free(snap);
  free(v);
  return 0;
}
