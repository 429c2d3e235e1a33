/*
 * judge.c - judging a canary's window, alone and against stable.
 *
 * A window is the difference of two cumulative snapshots of one upstream,
 * as Prometheus' rate() takes it.  The progression (prog.c) takes one for
 * the canary and one for the stable upstream over the same interval, and
 * `canarystat gate` does the same from the outside; both hand them to
 * canary_judge(), so a gate means one thing wherever it is judged.
 *
 * Gates come in three kinds:
 *
 *  - absolute limits on the canary alone (error rate, p95, p99), plain
 *    comparisons whatever the analysis;
 *  - gates relative to stable over the same window: p95 and p99 ratios
 *    and the error-rate delta with threshold analysis; with statistical
 *    analysis, a latency test and an error-rate test (below);
 *  - immediate-rollback limits (error rate, p99 ratio), which the
 *    progression also checks on every tick inside an open window.
 *
 * Statistical analysis asks whether the canary is worse than stable in a
 * way noise cannot explain, and by enough to matter, like Kayenta's
 * Mann-Whitney classifier:
 *
 *  - Latency.  A one-sided Mann-Whitney U test of "canary slower than
 *    stable", computed from the two histograms.  Samples in the same
 *    bucket are ties (a bucket is at most 1/64 of its values wide, which
 *    is the resolution of the data anyway): U of the canary is
 *    sum_b c_b * (S_<b + s_b / 2), where c_b and s_b are the canary's and
 *    stable's counts in bucket b and S_<b is stable's count below it.
 *    With n1, n2 samples and t_b = c_b + s_b, U has mean n1 n2 / 2 and,
 *    corrected for ties, variance n1 n2 / 12 * ((N + 1) - sum(t^3 - t) /
 *    (N (N - 1))); the p-value comes from the normal approximation with a
 *    continuity correction, which is accurate at the hundreds of samples
 *    a window needs anyway.  Significance alone is not enough: with
 *    thousands of requests a 2 % slowdown is significant.  So the size
 *    of the shift must exceed allowed_increase too.  The size is the
 *    Hodges-Lehmann estimate of the shift of log latency: the median of
 *    log x - log y over all n1 n2 (canary, stable) pairs, which exp()
 *    turns into a relative increase (0.3: 30 % slower).  Log scale makes
 *    it scale-free, so one allowed_increase fits a 3 ms and a 3 s
 *    service, and a multiplicative slowdown is estimated without bias.
 *    From buckets, bucket pair (a, b) holds c_a s_b differences of
 *    log mid_a - log mid_b; their weighted median is found by bisection
 *    on the shift d, each step counting the pairs at most d apart in one
 *    merge pass over the two bucket lists.  No allocation, O(buckets)
 *    per step, a few dozen steps.
 *  - Errors.  A one-sided two-proportion z test of "the canary's 5xx rate
 *    exceeds stable's by more than max_error_rate_delta" (0 when not
 *    set), pooled when that delta is 0, unpooled otherwise.  A shared
 *    outage raises both rates and fails nothing.
 *
 * A window with too few requests on a side that a gate needs is
 * inconclusive, never a pass: a gate that could not be judged must not
 * let a canary step up.
 */
#include "internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Largest ratio reported (a stable latency of 0 us), and |z| cap, so
 * that every figure stays finite for JSON and Prometheus. */
#define RATIO_MAX 1e6
#define Z_MAX 40.0
/* Bisection of the Hodges-Lehmann shift stops below this width, far
 * below a bucket's log width (1/64). */
#define HL_EPSILON 1e-7

static const char *const gate_names[CANARY_GATES] = {"error_rate",
                                                     "p95",
                                                     "p99",
                                                     "p95_ratio",
                                                     "p99_ratio",
                                                     "error_rate_delta",
                                                     "latency_increase",
                                                     "rollback_error_rate",
                                                     "rollback_p99_ratio"};

static const char *const action_names[CANARY_DO_ACTIONS] = {
    "none",     "step_up", "promote", "pause",
    "rollback", "abort",   "resume",  "switch"};

const char *canary_gate_name(int gate) {
  return gate >= 0 && gate < CANARY_GATES ? gate_names[gate] : "unknown";
}

const char *canary_action_name(int action) {
  return action >= 0 && action < CANARY_DO_ACTIONS ? action_names[action]
                                                   : "unknown";
}

/* ---- parameters ------------------------------------------------------ */

enum limit_kind { RATE, LATENCY, RATIO };

int canary_judge_check(const struct canary_judge_params *p, char *err,
                       size_t err_len) {
  if (p == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no judging parameters");
  if (p->analysis > CANARY_ANALYSIS_STATISTICAL)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "analysis must be threshold (0) or statistical (1), "
                        "not %u",
                        p->analysis);
  {
    const struct {
      double v;
      const char *name;
      enum limit_kind kind;
    } lim[] = {
        {p->max_error_rate, "max_error_rate", RATE},
        {p->max_p95_us, "max_p95_us", LATENCY},
        {p->max_p99_us, "max_p99_us", LATENCY},
        {p->max_p95_ratio, "max_p95_ratio", RATIO},
        {p->max_p99_ratio, "max_p99_ratio", RATIO},
        {p->max_error_rate_delta, "max_error_rate_delta", RATE},
        {p->rollback_error_rate, "rollback_error_rate", RATE},
        {p->rollback_p99_ratio, "rollback_p99_ratio", RATIO},
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
      double v = lim[i].v;
      if (isnan(v))
        return canary__fail(err, err_len, CANARY_EINVAL, "%s is not a number",
                            lim[i].name);
      if (v < 0)
        continue; /* not set */
      if (lim[i].kind == RATE && v > 1.0)
        return canary__fail(err, err_len, CANARY_EINVAL,
                            "%s must be a fraction 0..1 (negative: not "
                            "set), not %g",
                            lim[i].name, v);
      if (lim[i].kind == LATENCY && (v == 0.0 || isinf(v)))
        return canary__fail(err, err_len, CANARY_EINVAL,
                            "%s must be a finite latency above 0 "
                            "(negative: not set)",
                            lim[i].name);
      if (lim[i].kind == RATIO && (v < 1.0 || v > 1000.0))
        return canary__fail(err, err_len, CANARY_EINVAL,
                            "%s must be 1..1000 (negative: not set), not %g",
                            lim[i].name, v);
    }
  }
  if (p->analysis == CANARY_ANALYSIS_STATISTICAL) {
    if (p->max_p95_ratio >= 0 || p->max_p99_ratio >= 0)
      return canary__fail(err, err_len, CANARY_EINVAL,
                          "max_p95_ratio and max_p99_ratio apply to "
                          "threshold analysis; statistical analysis judges "
                          "latency with allowed_increase");
    if (!(p->confidence >= 0.5 && p->confidence < 1.0))
      return canary__fail(err, err_len, CANARY_EINVAL,
                          "confidence must be at least 0.5 and below 1, "
                          "not %g",
                          p->confidence);
    if (!(p->allowed_increase >= 0 && p->allowed_increase < INFINITY))
      return canary__fail(err, err_len, CANARY_EINVAL,
                          "allowed_increase must be a finite fraction of "
                          "0 or more, not %g",
                          p->allowed_increase);
  }
  return 0;
}

/* ---- the statistics -------------------------------------------------- */

/* The non-empty buckets of one side's window, in ascending order, with
 * the log of each bucket's middle. */
struct side {
  uint32_t n;
  double total;
  uint16_t bucket[CANARY_HIST_BUCKETS];
  double count[CANARY_HIST_BUCKETS];
  double log_mid[CANARY_HIST_BUCKETS];
};

static uint64_t window_count(const struct canary_hist_snapshot *now,
                             const struct canary_hist_snapshot *before,
                             int i) {
  if (before == NULL)
    return now->buckets[i];
  /* Counters never go back; a difference below 0 is a torn read. */
  return now->buckets[i] > before->buckets[i]
             ? now->buckets[i] - before->buckets[i]
             : 0;
}

static void gather(struct side *s, const struct canary_hist_snapshot *now,
                   const struct canary_hist_snapshot *before) {
  s->n = 0;
  s->total = 0;
  for (int i = 0; i < CANARY_HIST_BUCKETS; i++) {
    uint64_t c = window_count(now, before, i);
    double mid;
    if (c == 0)
      continue;
    mid = canary__bucket_mid(i);
    s->bucket[s->n] = (uint16_t)i;
    s->count[s->n] = (double)c;
    /* Bucket 0 holds 0 us (a clamped clock step): count it as 0.5 us. */
    s->log_mid[s->n] = log(mid > 0.5 ? mid : 0.5);
    s->total += (double)c;
    s->n++;
  }
}

/* One-sided p-value of a standard normal z: P(Z >= z). */
static double upper_tail(double z) {
  return 0.5 * erfc(z / sqrt(2.0));
}

/* Mann-Whitney U of the canary against stable (both non-empty), and the
 * p-value of "the canary is slower". */
static void mann_whitney(const struct side *c, const struct side *s,
                         double *u_out, double *p_out) {
  double n1 = c->total, n2 = s->total, big_n = n1 + n2;
  double u = 0, below = 0, ties = 0, var;
  uint32_t i = 0, j = 0;

  /* Merge the two ascending bucket lists; equal buckets are ties. */
  while (i < c->n || j < s->n) {
    int bc = i < c->n ? c->bucket[i] : CANARY_HIST_BUCKETS;
    int bs = j < s->n ? s->bucket[j] : CANARY_HIST_BUCKETS;
    double cc = 0, sc = 0, t;
    if (bc <= bs)
      cc = c->count[i++];
    if (bs <= bc)
      sc = s->count[j++];
    u += cc * (below + sc / 2);
    below += sc;
    t = cc + sc;
    ties += t * t * t - t;
  }
  var = n1 * n2 / 12.0 * ((big_n + 1) - ties / (big_n * (big_n - 1)));
  *u_out = u;
  if (!(var > 0)) {
    *p_out = 1.0; /* every sample tied: no evidence either way */
    return;
  }
  /* Continuity correction: U moves in steps of 1/2. */
  *p_out = upper_tail((u - n1 * n2 / 2.0 - 0.5) / sqrt(var));
}

/* (canary, stable) pairs whose log-latency difference is at most d:
 * x - y <= d holds for every y >= x - d, and x - d grows with x, so one
 * pass over both lists counts them all. */
static double pairs_at_most(const struct side *c, const struct side *s,
                            double d) {
  double pairs = 0, below = 0;
  uint32_t j = 0;
  for (uint32_t i = 0; i < c->n; i++) {
    double t = c->log_mid[i] - d;
    while (j < s->n && s->log_mid[j] < t)
      below += s->count[j++];
    pairs += c->count[i] * (s->total - below);
  }
  return pairs;
}

/* Hodges-Lehmann estimate of the canary's relative latency increase:
 * exp(median of the pairwise log differences) - 1. */
static double hodges_lehmann(const struct side *c, const struct side *s) {
  double half = c->total * s->total / 2.0;
  /* Below the smallest difference no pair counts; at the largest, all. */
  double lo = c->log_mid[0] - s->log_mid[s->n - 1] - 1.0;
  double hi = c->log_mid[c->n - 1] - s->log_mid[0];
  while (hi - lo > HL_EPSILON) {
    double mid = lo + (hi - lo) / 2;
    if (pairs_at_most(c, s, mid) >= half)
      hi = mid;
    else
      lo = mid;
  }
  return exp(hi) - 1.0;
}

/* One-sided two-proportion test of "p1 - p2 > delta". */
static void two_proportions(double e1, double n1, double e2, double n2,
                            double delta, double *z_out, double *p_out) {
  double p1 = e1 / n1, p2 = e2 / n2, se, z;
  if (delta == 0) {
    double pooled = (e1 + e2) / (n1 + n2);
    se = sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2));
  } else {
    se = sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2);
  }
  if (se > 0)
    z = (p1 - p2 - delta) / se;
  else /* both rates 0 or 1: the difference is exact */
    z = p1 - p2 > delta ? Z_MAX : (p1 - p2 < delta ? -Z_MAX : 0);
  if (z > Z_MAX)
    z = Z_MAX;
  if (z < -Z_MAX)
    z = -Z_MAX;
  *z_out = z;
  *p_out = upper_tail(z);
}

/* ---- the judge ------------------------------------------------------- */

static int is_relative(int g) {
  return g == CANARY_GATE_P95_RATIO || g == CANARY_GATE_P99_RATIO ||
         g == CANARY_GATE_ERROR_RATE_DELTA ||
         g == CANARY_GATE_LATENCY_INCREASE ||
         g == CANARY_GATE_ROLLBACK_P99_RATIO;
}

static int is_rollback(int g) {
  return g == CANARY_GATE_ROLLBACK_ERROR_RATE ||
         g == CANARY_GATE_ROLLBACK_P99_RATIO;
}

static void arm(struct canary_judge_result *r, int g, double limit) {
  if (limit < 0)
    return;
  r->gates[g].limit = limit;
  r->gates[g].check = CANARY_CHECK_PASS; /* until judged otherwise */
}

static double ratio(double canary, double stable) {
  if (stable > 0)
    return canary / stable < RATIO_MAX ? canary / stable : RATIO_MAX;
  return canary > 0 ? RATIO_MAX : 1.0;
}

static void verdict_of(struct canary_gate_check *k, int failed) {
  k->check = failed ? CANARY_CHECK_FAIL : CANARY_CHECK_PASS;
}

/* Appends to the reason (truncating, never overflowing). */
static void say(struct canary_judge_result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void say(struct canary_judge_result *r, const char *fmt, ...) {
  size_t len = strlen(r->reason);
  va_list ap;
  if (len + 1 >= sizeof r->reason)
    return;
  va_start(ap, fmt);
  vsnprintf(r->reason + len, sizeof r->reason - len, fmt, ap);
  va_end(ap);
}

static void fail_reason(struct canary_judge_result *r,
                        const struct canary_judge_params *p) {
  int g = (int)r->failed_gate;
  const struct canary_gate_check *k = &r->gates[g];
  double alpha = 1 - p->confidence;

  switch (g) {
  case CANARY_GATE_ERROR_RATE:
  case CANARY_GATE_ROLLBACK_ERROR_RATE:
    say(r, "error rate %.2f %% > %s %.2f %% over %llu requests",
        k->value * 100,
        g == CANARY_GATE_ERROR_RATE ? "max_error_rate" : "rollback_error_rate",
        k->limit * 100, (unsigned long long)r->canary_requests);
    break;
  case CANARY_GATE_P95:
  case CANARY_GATE_P99:
    say(r, "%s %.1f ms > max_%s_ms %.1f over %llu requests", gate_names[g],
        k->value / 1e3, gate_names[g], k->limit / 1e3,
        (unsigned long long)r->canary_requests);
    break;
  case CANARY_GATE_P95_RATIO:
    say(r, "p95 %.1f ms is %.2fx stable's %.1f ms > max_p95_ratio %.2f",
        r->canary_p95_us / 1e3, k->value, r->stable_p95_us / 1e3, k->limit);
    break;
  case CANARY_GATE_P99_RATIO:
  case CANARY_GATE_ROLLBACK_P99_RATIO:
    say(r, "p99 %.1f ms is %.2fx stable's %.1f ms > %s %.2f",
        r->canary_p99_us / 1e3, k->value, r->stable_p99_us / 1e3,
        g == CANARY_GATE_P99_RATIO ? "max_p99_ratio" : "rollback_p99_ratio",
        k->limit);
    break;
  case CANARY_GATE_ERROR_RATE_DELTA:
    if (p->analysis == CANARY_ANALYSIS_STATISTICAL)
      say(r,
          "error rate %.2f %% vs stable's %.2f %%: more than %.2f points "
          "higher, p = %.4f < %.4f",
          r->canary_error_rate * 100, r->stable_error_rate * 100,
          k->limit * 100, k->p_value, alpha);
    else
      say(r,
          "error rate %.2f %% is %.2f points above stable's %.2f %% > "
          "max_error_rate_delta %.2f",
          r->canary_error_rate * 100, k->value * 100,
          r->stable_error_rate * 100, k->limit * 100);
    break;
  case CANARY_GATE_LATENCY_INCREASE:
    say(r,
        "latency %+.1f %% vs stable > allowed_increase %.1f %%, "
        "Mann-Whitney p = %.4f < %.4f",
        k->value * 100, k->limit * 100, k->p_value, alpha);
    break;
  default:
    break;
  }
  if (is_relative(g))
    say(r, " (%llu vs %llu requests)", (unsigned long long)r->canary_requests,
        (unsigned long long)r->stable_requests);
}

static void pass_reason(struct canary_judge_result *r, int relative_judged,
                        int no_baseline) {
  const struct canary_gate_check *lat =
      &r->gates[CANARY_GATE_LATENCY_INCREASE];
  const struct canary_gate_check *err =
      &r->gates[CANARY_GATE_ERROR_RATE_DELTA];

  say(r, "passed%s: ",
      no_baseline ? " (no stable traffic: absolute "
                    "limits only)"
                  : "");
  if (relative_judged && r->analysis == CANARY_ANALYSIS_STATISTICAL) {
    say(r,
        "latency %+.1f %% (p = %.3f), errors %+.2f points (p = %.3f), "
        "%llu vs %llu requests",
        lat->value * 100, lat->p_value, err->value * 100, err->p_value,
        (unsigned long long)r->canary_requests,
        (unsigned long long)r->stable_requests);
    return;
  }
  say(r, "error rate %.2f %%, p95 %.1f ms, p99 %.1f ms, %llu requests",
      r->canary_error_rate * 100, r->canary_p95_us / 1e3,
      r->canary_p99_us / 1e3, (unsigned long long)r->canary_requests);
  if (relative_judged)
    say(r, "; stable %.2f %%, %.1f ms, %.1f ms, %llu",
        r->stable_error_rate * 100, r->stable_p95_us / 1e3,
        r->stable_p99_us / 1e3, (unsigned long long)r->stable_requests);
}

int canary_judge(const struct canary_judge_params *p, uint32_t flags,
                 const struct canary_hist_snapshot *canary_now,
                 const struct canary_hist_snapshot *canary_before,
                 const struct canary_hist_snapshot *stable_now,
                 const struct canary_hist_snapshot *stable_before,
                 struct canary_judge_result *out) {
  struct canary_hist_summary cs, ss;
  struct canary_judge_result r;
  int immediate, baseline, statistical, armed = 0, relative_judged = 0;
  int stable_short = 0;
  uint64_t floor;

  if (p == NULL || canary_now == NULL || out == NULL ||
      (flags &
       ~(uint32_t)(CANARY_JUDGE_NO_BASELINE | CANARY_JUDGE_IMMEDIATE)) != 0 ||
      (stable_now == NULL && !(flags & CANARY_JUDGE_NO_BASELINE)) ||
      canary_judge_check(p, NULL, 0) != 0)
    return CANARY_EINVAL;
  immediate = (flags & CANARY_JUDGE_IMMEDIATE) != 0;
  baseline = (flags & CANARY_JUDGE_NO_BASELINE) == 0;
  statistical = p->analysis == CANARY_ANALYSIS_STATISTICAL;

  memset(&r, 0, sizeof r);
  canary_hist_summarize(canary_now, canary_before, &cs);
  if (stable_now != NULL)
    canary_hist_summarize(stable_now, stable_before, &ss);
  else
    memset(&ss, 0, sizeof ss);
  r.analysis = p->analysis;
  r.failed_gate = CANARY_GATES;
  r.canary_requests = cs.count;
  /* errors and count are read a moment apart: never more errors than
   * requests in a figure we judge. */
  r.canary_errors = cs.errors < cs.count ? cs.errors : cs.count;
  r.stable_requests = ss.count;
  r.stable_errors = ss.errors < ss.count ? ss.errors : ss.count;
  r.canary_error_rate = cs.error_rate;
  r.stable_error_rate = ss.error_rate;
  r.canary_p50_us = cs.p50_us;
  r.canary_p95_us = cs.p95_us;
  r.canary_p99_us = cs.p99_us;
  r.stable_p50_us = ss.p50_us;
  r.stable_p95_us = ss.p95_us;
  r.stable_p99_us = ss.p99_us;

  /* The gates this judgement applies. */
  if (!immediate) {
    arm(&r, CANARY_GATE_ERROR_RATE, p->max_error_rate);
    arm(&r, CANARY_GATE_P95, p->max_p95_us);
    arm(&r, CANARY_GATE_P99, p->max_p99_us);
    if (statistical) {
      arm(&r, CANARY_GATE_ERROR_RATE_DELTA,
          p->max_error_rate_delta >= 0 ? p->max_error_rate_delta : 0);
      arm(&r, CANARY_GATE_LATENCY_INCREASE, p->allowed_increase);
    } else {
      arm(&r, CANARY_GATE_P95_RATIO, p->max_p95_ratio);
      arm(&r, CANARY_GATE_P99_RATIO, p->max_p99_ratio);
      arm(&r, CANARY_GATE_ERROR_RATE_DELTA, p->max_error_rate_delta);
    }
  }
  arm(&r, CANARY_GATE_ROLLBACK_ERROR_RATE, p->rollback_error_rate);
  arm(&r, CANARY_GATE_ROLLBACK_P99_RATIO, p->rollback_p99_ratio);
  for (int g = 0; g < CANARY_GATES; g++)
    armed |= r.gates[g].check != CANARY_CHECK_OFF;

  if (!armed) {
    r.verdict = CANARY_GATE_PASS;
    say(&r, "time-based step (%llu requests)", (unsigned long long)cs.count);
    *out = r;
    return 0;
  }
  floor = p->min_requests > 0 ? p->min_requests : 1;
  if (cs.count < floor) {
    for (int g = 0; g < CANARY_GATES; g++)
      if (r.gates[g].check != CANARY_CHECK_OFF)
        r.gates[g].check = CANARY_CHECK_SKIPPED;
    r.verdict = CANARY_GATE_INCONCLUSIVE;
    say(&r, "inconclusive: %llu requests < min_requests %u",
        (unsigned long long)cs.count, p->min_requests);
    *out = r;
    return 0;
  }

  for (int g = 0; g < CANARY_GATES; g++) {
    struct canary_gate_check *k = &r.gates[g];
    if (k->check == CANARY_CHECK_OFF)
      continue;
    if (is_relative(g) && (!baseline || ss.count < floor)) {
      k->check = CANARY_CHECK_SKIPPED;
      stable_short |= baseline;
      continue;
    }
    switch (g) {
    case CANARY_GATE_ERROR_RATE:
    case CANARY_GATE_ROLLBACK_ERROR_RATE:
      k->value = cs.error_rate;
      verdict_of(k, k->value > k->limit);
      break;
    case CANARY_GATE_P95:
      k->value = cs.p95_us;
      verdict_of(k, k->value > k->limit);
      break;
    case CANARY_GATE_P99:
      k->value = cs.p99_us;
      verdict_of(k, k->value > k->limit);
      break;
    case CANARY_GATE_P95_RATIO:
      k->value = ratio(cs.p95_us, ss.p95_us);
      verdict_of(k, k->value > k->limit);
      break;
    case CANARY_GATE_P99_RATIO:
    case CANARY_GATE_ROLLBACK_P99_RATIO:
      k->value = ratio(cs.p99_us, ss.p99_us);
      verdict_of(k, k->value > k->limit);
      break;
    case CANARY_GATE_ERROR_RATE_DELTA:
      k->value = cs.error_rate - ss.error_rate;
      if (statistical) {
        two_proportions((double)r.canary_errors, (double)cs.count,
                        (double)r.stable_errors, (double)ss.count, k->limit,
                        &k->statistic, &k->p_value);
        verdict_of(k, k->p_value < 1 - p->confidence);
      } else {
        verdict_of(k, k->value > k->limit);
      }
      break;
    case CANARY_GATE_LATENCY_INCREASE: {
      /* Two bucket lists: ~50 KiB, on the stack of whoever judges, so
       * concurrent judges in one process share nothing. */
      struct side c, s;
      gather(&c, canary_now, canary_before);
      gather(&s, stable_now, stable_before);
      mann_whitney(&c, &s, &k->statistic, &k->p_value);
      k->value = hodges_lehmann(&c, &s);
      verdict_of(k, k->p_value < 1 - p->confidence && k->value > k->limit);
      break;
    }
    default:
      break;
    }
    relative_judged |= is_relative(g);
  }

  /* The reason names the first failed gate, an immediate-rollback gate
   * first: that is what the progression acts on. */
  for (int g = 0; g < CANARY_GATES; g++) {
    if (r.gates[g].check != CANARY_CHECK_FAIL)
      continue;
    if (is_rollback(g))
      r.rollback = 1;
    if (r.failed_gate == CANARY_GATES ||
        (is_rollback(g) && !is_rollback((int)r.failed_gate)))
      r.failed_gate = (uint32_t)g;
  }
  if (r.failed_gate != CANARY_GATES) {
    r.verdict = CANARY_GATE_FAIL;
    fail_reason(&r, p);
  } else if (stable_short) {
    r.verdict = CANARY_GATE_INCONCLUSIVE;
    say(&r, "inconclusive: stable had %llu requests < min_requests %u",
        (unsigned long long)ss.count, p->min_requests);
  } else {
    r.verdict = CANARY_GATE_PASS;
    pass_reason(&r, relative_judged, !baseline);
  }
  *out = r;
  return 0;
}
