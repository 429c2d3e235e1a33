/*
 * prog.c - SLO-gated progression and automatic rollback.
 *
 * A progression walks the canary's weight through steps (10, 25, 50, 75,
 * 100 %), one window per step.  At the end of each window the canary's
 * own traffic in that window — the difference between its cumulative
 * histogram now and a copy taken when the window opened, as Prometheus'
 * rate() does — is judged against the limits: too few requests is
 * inconclusive (nothing moves), a breach is a failure (rollback after
 * failure_limit in a row), otherwise the canary steps up.  An error rate
 * above rollback_error_rate rolls back at once, without waiting for the
 * window to end.
 *
 * Every worker calls canary_prog_tick() a few times a second; no process
 * is special, so a worker that dies changes nothing.  A due window is
 * claimed by a CAS of its start time to "now": exactly one caller wins,
 * and there is no lock that a dead winner could leave behind.  The winner
 * then tries the route's writer lock (owner.c; the kernel drops it if the
 * winner dies) to judge and to publish new effective weights; when
 * another process holds it, the winner gives the window back (a CAS to
 * the old start) and returns CANARY_EBUSY, so the window stays due and a
 * later tick judges it: no worker ever waits.  The weights travel through
 * the normal double-buffered publish, so every worker switches at its
 * next pick.
 *
 * The window's base snapshot is rewritten by the judge while other
 * workers may read its status counters for the immediate check, so it
 * carries a sequence word: readers skip the check (until the next tick)
 * rather than judge a half-written base.
 */
#include "internal.h"

#include <ck_pr.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MIN_INTERVAL_MS 100u

static const char *const state_text[] = {"none", "running", "paused",
                                         "promoted", "rolled back"};

static uint64_t dbits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static double bitsd(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

int canary_prog_check(const struct canary_prog_params *p, uint32_t n,
                      char *err, size_t err_len) {
  if (p == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no progression");
  if (n < 2 || p->canary == 0 || p->canary >= n)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "canary must be upstream 2..%u, not %u", n,
                        p->canary + 1);
  if (p->nsteps == 0 || p->nsteps > CANARY_MAX_STEPS)
    return canary__fail(err, err_len, CANARY_EINVAL, "1..%d steps, not %u",
                        CANARY_MAX_STEPS, p->nsteps);
  for (uint32_t i = 0; i < p->nsteps; i++) {
    if (p->steps[i] == 0 || p->steps[i] > CANARY_WEIGHT_SCALE)
      return canary__fail(err, err_len, CANARY_EINVAL,
                          "step %u weight %u outside 1..%d", i + 1,
                          p->steps[i], CANARY_WEIGHT_SCALE);
    if (i > 0 && p->steps[i] <= p->steps[i - 1])
      return canary__fail(err, err_len, CANARY_EINVAL,
                          "steps must be strictly increasing");
  }
  if (p->interval_ms < MIN_INTERVAL_MS)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "interval must be at least %u ms", MIN_INTERVAL_MS);
  if (p->failure_limit == 0)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "failure_limit must be at least 1");
  if (p->on_success > CANARY_PROG_HOLD)
    return canary__fail(err, err_len, CANARY_EINVAL, "unknown on_success");
  if (!(p->max_error_rate <= 1.0) || !(p->rollback_error_rate <= 1.0) ||
      isnan(p->max_p95_us) || isnan(p->max_p99_us) ||
      p->max_p95_us == 0.0 || p->max_p99_us == 0.0)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "limits must be rates in 0..1 or positive latencies "
                        "(negative: not set)");
  return 0;
}

/* Effective weights with the canary at w: the others share the rest in
 * proportion to their configured weights; the stable upstream takes the
 * rounding remainder (and everything, when the others are configured 0). */
static void step_weights(struct table_data *d, uint32_t canary, uint32_t w) {
  uint64_t others = 0;
  uint32_t rest = CANARY_WEIGHT_SCALE - w, given = 0;
  for (uint32_t i = 0; i < d->n; i++)
    if (i != canary)
      others += d->weights[i];
  for (uint32_t i = 0; i < d->n; i++) {
    if (i == canary)
      d->effective[i] = w;
    else if (i == 0 || others == 0)
      d->effective[i] = 0;
    else
      d->effective[i] = (uint32_t)((uint64_t)rest * d->weights[i] / others);
    if (i != canary)
      given += d->effective[i];
  }
  d->effective[0] += rest - given;
}

static void load_params(const struct prog_area *pa,
                        struct canary_prog_params *p) {
  canary__load_words(p, &pa->params, sizeof *p / 8);
}

static void set_reason(struct prog_area *pa, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_reason(struct prog_area *pa, const char *fmt, ...) {
  char buf[CANARY_REASON_MAX];
  va_list ap;
  memset(buf, 0, sizeof buf);
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  canary__store_words(pa->reason, buf, sizeof buf / 8);
}

/* Caller holds the writer lock.  Rewrites the window base from the
 * canary's current counters, guarded by base_seq. */
static void rebase(const canary_seg_t *seg, uint32_t route,
                   struct prog_area *pa, uint32_t canary, double now_us) {
  struct canary_hist_snapshot snap;
  uint64_t s = ck_pr_load_64(&pa->base_seq);
  uint64_t start = (s & 1) ? s + 2 : s + 1;
  size_t half = sizeof snap / 16; /* words: a fault point between halves */

  canary_hist_snapshot(seg, (int)route, (int)canary, &snap);
  ck_pr_store_64(&pa->base_seq, start);
  /* The odd sequence is visible before any base word changes. */
  ck_pr_fence_store();
  canary__store_words(&pa->base, &snap, half);
  CANARY_FAULT("prog.rebase");
  canary__store_words((uint64_t *)(void *)&pa->base + half,
                      (const unsigned char *)&snap + half * 8,
                      sizeof snap / 8 - half);
  /* The base is complete before the sequence turns even. */
  ck_pr_fence_store();
  ck_pr_store_64(&pa->base_seq, start + 1);
  ck_pr_store_64(&pa->window_start_us, (uint64_t)now_us);
}

void canary__prog_start(const canary_seg_t *seg, uint32_t route,
                        const struct canary_prog_params *p,
                        struct table_data *d, double now_us) {
  struct prog_area *pa = canary__prog(seg, route);
  struct canary_prog_params none;

  if (p == NULL) {
    memset(&none, 0, sizeof none);
    canary__store_words(&pa->params, &none, sizeof none / 8);
    ck_pr_store_32(&pa->state, CANARY_PROG_NONE);
    set_reason(pa, "no progression configured");
    return;
  }
  canary__store_words(&pa->params, p, sizeof *p / 8);
  ck_pr_store_32(&pa->step, 0);
  ck_pr_store_32(&pa->failures, 0);
  ck_pr_store_64(&pa->window_requests, 0);
  step_weights(d, p->canary, p->steps[0]);
  rebase(seg, route, pa, p->canary, now_us);
  set_reason(pa, "started at %.2f %%", p->steps[0] / 100.0);
  /* Parameters and base before the state that makes ticks use them. */
  ck_pr_fence_store();
  ck_pr_store_32(&pa->state, CANARY_PROG_RUNNING);
}

/* Caller holds the writer lock: publishes the canary at weight w.  A
 * canary index the table does not have (a corrupt segment) publishes
 * nothing: the weights would not add up. */
static void publish_step(const canary_seg_t *seg, struct route_hdr *r,
                         uint32_t canary, uint32_t w) {
  struct table_data d;
  if (canary__read_table(seg, r, &d, NULL, 1) != 0 || canary == 0 ||
      canary >= d.n || w > CANARY_WEIGHT_SCALE)
    return;
  step_weights(&d, canary, w);
  canary__compute_upper(&d);
  canary__publish_locked(r, &d);
}

static void rollback(const canary_seg_t *seg, struct route_hdr *r,
                     struct prog_area *pa, uint32_t canary) {
  publish_step(seg, r, canary, 0);
  CANARY_FAULT("rollback.weights");
  /* Weights first: by the time anyone reads "rolled back", no worker
   * picks the canary any more. */
  ck_pr_fence_store();
  ck_pr_store_32(&pa->state, CANARY_PROG_ROLLED_BACK);
}

/* Window figures: now minus base.  Returns 0, or -1 when the base was
 * being rewritten (try again next tick). */
static int window(const canary_seg_t *seg, uint32_t route,
                  struct prog_area *pa, uint32_t canary,
                  struct canary_hist_summary *out) {
  static _Thread_local struct canary_hist_snapshot now, base;
  uint64_t s1 = ck_pr_load_64(&pa->base_seq);
  if (s1 & 1)
    return -1;
  /* Sequence before the base words it guards. */
  ck_pr_fence_load();
  canary__load_words(&base, &pa->base, sizeof base / 8);
  /* Base words before the sequence re-check. */
  ck_pr_fence_load();
  if (ck_pr_load_64(&pa->base_seq) != s1)
    return -1;
  canary_hist_snapshot(seg, (int)route, (int)canary, &now);
  return canary_hist_summarize(&now, &base, out) == 0 ? 0 : -1;
}

static struct route_hdr *route_of(const canary_seg_t *seg, int route) {
  struct route_hdr *r;
  if (seg == NULL || route < 0 || (uint32_t)route >= seg->max_routes)
    return NULL;
  r = canary__route(seg, (uint32_t)route);
  return ck_pr_load_32(&r->state) == ROUTE_READY ? r : NULL;
}

int canary_prog_status(const canary_seg_t *seg, int route, double now_us,
                       struct canary_prog_status *out) {
  struct canary_prog_params p;
  struct prog_area *pa;
  uint64_t ws;

  if (out == NULL || route_of(seg, route) == NULL)
    return CANARY_EINVAL;
  pa = canary__prog(seg, (uint32_t)route);
  memset(out, 0, sizeof *out);
  out->state = ck_pr_load_32(&pa->state);
  if (out->state > CANARY_PROG_ROLLED_BACK)
    return CANARY_ECORRUPT;
  /* State before the parameters it makes valid (pairs with the store
   * fence before the state in canary__prog_start): a progression that
   * starts while we look is either not running yet or whole. */
  ck_pr_fence_load();
  load_params(pa, &p);
  out->step = ck_pr_load_32(&pa->step);
  out->nsteps = p.nsteps <= CANARY_MAX_STEPS ? p.nsteps : 0;
  out->canary = p.canary;
  out->step_weight =
      out->step < out->nsteps ? p.steps[out->step] : 0;
  if (out->state == CANARY_PROG_ROLLED_BACK)
    out->step_weight = 0;
  out->failures = ck_pr_load_32(&pa->failures);
  out->last_result = ck_pr_load_32(&pa->last_result);
  out->interval_ms = p.interval_ms;
  for (int i = 0; i < CANARY_GATE_RESULTS; i++)
    out->evaluations[i] = ck_pr_load_64(&pa->evaluations[i]);
  out->window_requests = ck_pr_load_64(&pa->window_requests);
  ws = ck_pr_load_64(&pa->window_start_us);
  out->window_age_ms = now_us > (double)ws ? (now_us - (double)ws) / 1e3 : 0;
  out->error_rate = bitsd(ck_pr_load_64(&pa->error_rate_bits));
  out->p95_us = bitsd(ck_pr_load_64(&pa->p95_bits));
  out->p99_us = bitsd(ck_pr_load_64(&pa->p99_bits));
  canary__load_words(out->reason, pa->reason, CANARY_REASON_MAX / 8);
  out->reason[CANARY_REASON_MAX - 1] = '\0';
  return 0;
}

/* Judges a window: result and, on failure, which limit. */
static int judge(const struct canary_prog_params *p,
                 const struct canary_hist_summary *w, char *why,
                 size_t why_len) {
  int limited = p->max_error_rate >= 0 || p->max_p95_us > 0 ||
                p->max_p99_us > 0 || p->rollback_error_rate >= 0;
  if (!limited) {
    snprintf(why, why_len, "time-based step (%llu requests)",
             (unsigned long long)w->count);
    return CANARY_GATE_PASS;
  }
  if (w->count < p->min_requests || w->count == 0) {
    snprintf(why, why_len, "inconclusive: %llu requests < min_requests %u",
             (unsigned long long)w->count, p->min_requests);
    return CANARY_GATE_INCONCLUSIVE;
  }
  if (p->max_error_rate >= 0 && w->error_rate > p->max_error_rate) {
    snprintf(why, why_len,
             "error rate %.2f %% > max_error_rate %.2f %% over %llu requests",
             w->error_rate * 100, p->max_error_rate * 100,
             (unsigned long long)w->count);
    return CANARY_GATE_FAIL;
  }
  if (p->max_p95_us > 0 && w->p95_us > p->max_p95_us) {
    snprintf(why, why_len, "p95 %.1f ms > max_p95_ms %.1f over %llu requests",
             w->p95_us / 1e3, p->max_p95_us / 1e3,
             (unsigned long long)w->count);
    return CANARY_GATE_FAIL;
  }
  if (p->max_p99_us > 0 && w->p99_us > p->max_p99_us) {
    snprintf(why, why_len, "p99 %.1f ms > max_p99_ms %.1f over %llu requests",
             w->p99_us / 1e3, p->max_p99_us / 1e3,
             (unsigned long long)w->count);
    return CANARY_GATE_FAIL;
  }
  snprintf(why, why_len,
           "passed: error rate %.2f %%, p95 %.1f ms, p99 %.1f ms, %llu "
           "requests",
           w->error_rate * 100, w->p95_us / 1e3, w->p99_us / 1e3,
           (unsigned long long)w->count);
  return CANARY_GATE_PASS;
}

/* Caller holds the writer lock and has claimed the window. */
static int judge_window(const canary_seg_t *seg, uint32_t route,
                        struct route_hdr *r, struct prog_area *pa,
                        const struct canary_prog_params *p, double now_us,
                        double window_ms) {
  struct canary_hist_summary w;
  char why[CANARY_REASON_MAX - 48];
  uint32_t step = ck_pr_load_32(&pa->step);
  int result, changed = 0;

  if (step >= p->nsteps)
    return CANARY_ECORRUPT; /* only a damaged segment says so */
  if (window(seg, route, pa, p->canary, &w) != 0)
    memset(&w, 0, sizeof w);
  result = judge(p, &w, why, sizeof why);
  ck_pr_inc_64(&pa->evaluations[result]);
  ck_pr_store_32(&pa->last_result, (uint32_t)result);
  ck_pr_store_64(&pa->window_requests, w.count);
  ck_pr_store_64(&pa->error_rate_bits, dbits(w.error_rate));
  ck_pr_store_64(&pa->p95_bits, dbits(w.p95_us));
  ck_pr_store_64(&pa->p99_bits, dbits(w.p99_us));

  if (result == CANARY_GATE_PASS) {
    ck_pr_store_32(&pa->failures, 0);
    if (step + 1 < p->nsteps) {
      ck_pr_store_32(&pa->step, step + 1);
      publish_step(seg, r, p->canary, p->steps[step + 1]);
      set_reason(pa, "step %u -> %.2f %%: %s (%.0f s window)", step + 2,
                 p->steps[step + 1] / 100.0, why, window_ms / 1e3);
    } else if (p->on_success == CANARY_PROG_PROMOTE) {
      ck_pr_store_32(&pa->state, CANARY_PROG_PROMOTED);
      set_reason(pa, "promoted at %.2f %%: %s", p->steps[step] / 100.0, why);
    } else {
      ck_pr_store_32(&pa->state, CANARY_PROG_PAUSED);
      set_reason(pa, "all steps passed; holding at %.2f %% until promoted",
                 p->steps[step] / 100.0);
    }
    changed = 1;
  } else if (result == CANARY_GATE_FAIL) {
    uint32_t f = ck_pr_load_32(&pa->failures) + 1;
    ck_pr_store_32(&pa->failures, f);
    if (f >= p->failure_limit) {
      rollback(seg, r, pa, p->canary);
      set_reason(pa, "rolled back after %u failed windows: %s", f, why);
      changed = 1;
    } else {
      set_reason(pa, "window failed (%u of %u): %s", f, p->failure_limit,
                 why);
    }
  } else {
    set_reason(pa, "%s", why);
  }
  rebase(seg, route, pa, p->canary, now_us);
  return changed ? 2 : 1;
}

int canary_prog_tick(canary_seg_t *seg, int route, double now_us,
                     struct canary_prog_status *out) {
  struct canary_prog_params p;
  struct route_hdr *r = route_of(seg, route);
  struct prog_area *pa;
  uint64_t ws, now = (uint64_t)now_us;
  int rc = 0;

  if (r == NULL)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  pa = canary__prog(seg, (uint32_t)route);
  if (ck_pr_load_32(&pa->state) != CANARY_PROG_RUNNING)
    goto done;
  /* State before the parameters it makes valid. */
  ck_pr_fence_load();
  load_params(pa, &p);
  if (canary_prog_check(&p, CANARY_MAX_UPSTREAMS, NULL, 0) != 0 ||
      p.canary >= seg->max_upstreams ||
      ck_pr_load_32(&pa->step) >= p.nsteps)
    return CANARY_ECORRUPT;
  ws = ck_pr_load_64(&pa->window_start_us);
  if (ws > now + (uint64_t)p.interval_ms * 1000u * 10u) {
    /* A window from the future: the monotonic clock restarted (reboot).
     * Start a fresh window instead of waiting for that future. */
    ck_pr_cas_64(&pa->window_start_us, ws, now);
    goto done;
  }

  if (p.rollback_error_rate >= 0) {
    struct canary_hist_summary w;
    uint64_t floor = p.min_requests > 0 ? p.min_requests : 1;
    if (window(seg, (uint32_t)route, pa, p.canary, &w) == 0 &&
        w.count >= floor && w.error_rate > p.rollback_error_rate &&
        canary__lock_try(seg, canary__writer_lock_off(seg, (uint32_t)route)) ==
            0) {
      struct canary_prog_params now_p;
      /* Under the writer lock: the progression may have been restarted
       * (other parameters, another canary) since we looked. */
      load_params(pa, &now_p);
      if (ck_pr_load_32(&pa->state) == CANARY_PROG_RUNNING &&
          memcmp(&now_p, &p, sizeof p) == 0) {
        rollback(seg, r, pa, p.canary);
        ck_pr_inc_64(&pa->evaluations[CANARY_GATE_FAIL]);
        ck_pr_store_32(&pa->last_result, CANARY_GATE_FAIL);
        ck_pr_store_64(&pa->window_requests, w.count);
        ck_pr_store_64(&pa->error_rate_bits, dbits(w.error_rate));
        ck_pr_store_64(&pa->p95_bits, dbits(w.p95_us));
        ck_pr_store_64(&pa->p99_bits, dbits(w.p99_us));
        set_reason(pa,
                   "rolled back at once: error rate %.2f %% > "
                   "rollback_error_rate %.2f %% over %llu requests",
                   w.error_rate * 100, p.rollback_error_rate * 100,
                   (unsigned long long)w.count);
        rc = 2;
      }
      canary__lock_release(seg,
                           canary__writer_lock_off(seg, (uint32_t)route));
      if (rc != 0)
        goto done;
    }
  }

  if (now < ws + (uint64_t)p.interval_ms * 1000u)
    goto done;
  /* Claim the due window: one CAS winner per window, nothing to leak. */
  if (!ck_pr_cas_64(&pa->window_start_us, ws, now))
    goto done;
  CANARY_FAULT("tick.claimed");
  rc = canary__lock_try(seg, canary__writer_lock_off(seg, (uint32_t)route));
  if (rc != 0) {
    /* Give the window back, so it stays due and a later tick judges it.
     * The CAS fails, harmlessly, when a publish has restarted the
     * progression (a new window start) in the meantime. */
    ck_pr_cas_64(&pa->window_start_us, now, ws);
    return rc;
  }
  /* A publish may have restarted the progression between our CAS and the
   * writer lock: then the window start is no longer ours, and the
   * parameters we loaded may be stale.  Judge only our window, with the
   * parameters in force now. */
  load_params(pa, &p);
  if (ck_pr_load_32(&pa->state) == CANARY_PROG_RUNNING &&
      ck_pr_load_64(&pa->window_start_us) == now &&
      canary_prog_check(&p, CANARY_MAX_UPSTREAMS, NULL, 0) == 0 &&
      p.canary < seg->max_upstreams)
    rc = judge_window(seg, (uint32_t)route, r, pa, &p, now_us,
                      (double)(now - ws) / 1e3);
  canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
done:
  if (out != NULL)
    canary_prog_status(seg, route, now_us, out);
  return rc;
}

int canary_prog_action(canary_seg_t *seg, int route, int action,
                       double now_us, char *err, size_t err_len) {
  struct canary_prog_params p;
  struct route_hdr *r = route_of(seg, route);
  struct prog_area *pa;
  uint32_t state, step;
  int rc = 0;

  if (r == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no such route");
  if (action < CANARY_ACT_PROMOTE || action > CANARY_ACT_PROMOTE_FULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "unknown action %d",
                        action);
  if (seg->readonly)
    return canary__fail(err, err_len, CANARY_EREADONLY,
                        "segment attached read-only");
  pa = canary__prog(seg, (uint32_t)route);
  rc = canary__lock_try(seg, canary__writer_lock_off(seg, (uint32_t)route));
  if (rc != 0)
    return canary__fail(err, err_len, rc,
                        rc == CANARY_EBUSY
                            ? "busy: another process is changing this "
                              "route; retry"
                            : "no lock on the segment file (replaced?)");
  state = ck_pr_load_32(&pa->state);
  step = ck_pr_load_32(&pa->step);
  load_params(pa, &p);
  if (state != CANARY_PROG_NONE &&
      (state > CANARY_PROG_ROLLED_BACK ||
       canary_prog_check(&p, CANARY_MAX_UPSTREAMS, NULL, 0) != 0 ||
       step >= p.nsteps || p.canary >= seg->max_upstreams)) {
    rc = canary__fail(err, err_len, CANARY_ECORRUPT,
                      "progression state of this route is corrupt");
    goto out;
  }
  if (state == CANARY_PROG_NONE) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "no progression configured on this route");
    goto out;
  }
  switch (action) {
  case CANARY_ACT_PAUSE:
    if (state != CANARY_PROG_RUNNING) {
      rc = canary__fail(err, err_len, CANARY_ESTATE, "cannot pause: %s",
                        state_text[state]);
      break;
    }
    ck_pr_store_32(&pa->state, CANARY_PROG_PAUSED);
    set_reason(pa, "paused by operator at %.2f %%", p.steps[step] / 100.0);
    break;
  case CANARY_ACT_RESUME:
    if (state != CANARY_PROG_PAUSED) {
      rc = canary__fail(err, err_len, CANARY_ESTATE, "cannot resume: %s",
                        state_text[state]);
      break;
    }
    if (step + 1 >= p.nsteps) {
      rc = canary__fail(err, err_len, CANARY_ESTATE,
                        "every step has passed; promote instead");
      break;
    }
    ck_pr_store_32(&pa->failures, 0);
    rebase(seg, (uint32_t)route, pa, p.canary, now_us);
    ck_pr_store_32(&pa->state, CANARY_PROG_RUNNING);
    set_reason(pa, "resumed by operator at %.2f %%", p.steps[step] / 100.0);
    break;
  case CANARY_ACT_PROMOTE:
  case CANARY_ACT_PROMOTE_FULL:
    if (state != CANARY_PROG_RUNNING && state != CANARY_PROG_PAUSED) {
      rc = canary__fail(err, err_len, CANARY_ESTATE, "cannot promote: %s",
                        state_text[state]);
      break;
    }
    step = (action == CANARY_ACT_PROMOTE_FULL || step + 1 >= p.nsteps)
               ? p.nsteps - 1
               : step + 1;
    ck_pr_store_32(&pa->step, step);
    ck_pr_store_32(&pa->failures, 0);
    publish_step(seg, r, p.canary, p.steps[step]);
    rebase(seg, (uint32_t)route, pa, p.canary, now_us);
    if (step + 1 >= p.nsteps) {
      ck_pr_store_32(&pa->state, CANARY_PROG_PROMOTED);
      set_reason(pa, "promoted by operator to %.2f %%",
                 p.steps[step] / 100.0);
    } else {
      ck_pr_store_32(&pa->state, CANARY_PROG_RUNNING);
      set_reason(pa, "stepped by operator to %.2f %%",
                 p.steps[step] / 100.0);
    }
    break;
  case CANARY_ACT_ABORT:
    if (state == CANARY_PROG_ROLLED_BACK) {
      rc = canary__fail(err, err_len, CANARY_ESTATE,
                        "already rolled back");
      break;
    }
    rollback(seg, r, pa, p.canary);
    set_reason(pa, "aborted by operator: canary at 0 %%");
    break;
  }
out:
  canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
  return rc;
}
