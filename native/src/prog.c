/*
 * prog.c - SLO-gated progression and automatic rollback.
 *
 * A progression walks the canary's weight through steps (10, 25, 50, 75,
 * 100 %), one window per step.  At the end of each window the canary's
 * traffic in that window and stable's over the same window — each the
 * difference between an upstream's cumulative histogram now and a copy
 * taken when the window opened, as Prometheus' rate() does — go to
 * canary_judge() (judge.c): too few requests is inconclusive (nothing
 * moves), a breach is a failure (rollback after failure_limit in a row),
 * otherwise the canary steps up.  The immediate-rollback limits are
 * judged on every tick against the window so far, and roll back at once.
 * In a dry run the same judgements are made and recorded, and nothing
 * else changes.
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
 * The window's base snapshots are rewritten by the judge while other
 * workers may read them for the immediate check, so they carry a
 * sequence word: readers skip the check (until the next tick) rather
 * than judge a half-written base.
 *
 * Every decision — a judged window, an immediate rollback, an operator
 * action — goes into the route's decision log: a ring of the last
 * CANARY_DECISIONS entries in the segment, so every worker and
 * canarystat read the same list.  Only the holder of the writer lock
 * appends; each slot has its own sequence word for lock-free readers.
 *
 * Blue/green is the same machine on two upstreams with two steps: green
 * (the `canary` upstream) at weight 0 (the preview: only overrides reach
 * it), then at 10000.  The preview is one window of pre_promotion_ms;
 * its pass moves to step 1 with one publish, so no generation ever holds
 * mixed weights, and an inconclusive preview pauses instead of waiting.
 * Step 1 is judged in windows of interval_ms (stable has no traffic then,
 * so the judge drops the relative gates); a failure rolls back, which at
 * weight 0 is the switch back to blue, again in one publish.  The phase
 * start and the passes since the switch say when the post-promotion
 * validation is over.
 */
#include "internal.h"

#include <ck_pr.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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

/* The blue/green rules of canary_prog_check() (n: upstreams). */
static int check_blue_green(const struct canary_prog_params *p, uint32_t n,
                            char *err, size_t err_len) {
  if (n != 2)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "blue/green needs exactly 2 upstreams, not %u", n);
  if (p->nsteps != 2 || p->steps[0] != 0 || p->steps[1] != CANARY_WEIGHT_SCALE)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "blue/green steps must be 0 and %d",
                        CANARY_WEIGHT_SCALE);
  if (p->pre_promotion_ms < MIN_INTERVAL_MS ||
      p->post_promotion_ms < MIN_INTERVAL_MS)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "pre_promotion and post_promotion must be at least "
                        "%u ms",
                        MIN_INTERVAL_MS);
  return 0;
}

int canary_prog_check(const struct canary_prog_params *p, uint32_t n,
                      char *err, size_t err_len) {
  int rc;
  if (p == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no progression");
  if (n < 2 || p->canary == 0 || p->canary >= n)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "canary must be upstream 2..%u, not %u", n,
                        p->canary + 1);
  if (p->strategy > CANARY_STRATEGY_BLUE_GREEN)
    return canary__fail(err, err_len, CANARY_EINVAL, "unknown strategy %u",
                        p->strategy);
  if (p->strategy == CANARY_STRATEGY_BLUE_GREEN) {
    rc = check_blue_green(p, n, err, err_len);
    if (rc != 0)
      return rc;
  } else if (p->pre_promotion_ms != 0 || p->post_promotion_ms != 0) {
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "pre_promotion and post_promotion are blue/green's");
  }
  /* Blue/green's steps were checked above. */
  if (p->strategy != CANARY_STRATEGY_BLUE_GREEN &&
      (p->nsteps == 0 || p->nsteps > CANARY_MAX_STEPS))
    return canary__fail(err, err_len, CANARY_EINVAL, "1..%d steps, not %u",
                        CANARY_MAX_STEPS, p->nsteps);
  for (uint32_t i = 0;
       p->strategy != CANARY_STRATEGY_BLUE_GREEN && i < p->nsteps; i++) {
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
  if (p->dry_run > 1)
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "dry_run must be 0 or 1, not %u", p->dry_run);
  return canary_judge_check(&p->judge, err, err_len);
}

/* Parameters read back from the segment are valid (the table they run on
 * had as many upstreams as a blue/green progression needs, or fewer than
 * the most a route has). */
static int params_ok(const struct canary_prog_params *p) {
  return canary_prog_check(p,
                           p->strategy == CANARY_STRATEGY_BLUE_GREEN
                               ? 2u
                               : (uint32_t)CANARY_MAX_UPSTREAMS,
                           NULL, 0) == 0;
}

/* The window now open: blue/green's preview is one window of
 * pre_promotion_ms, every other window lasts interval_ms. */
static uint32_t window_len_ms(const struct canary_prog_params *p,
                              uint32_t step) {
  return p->strategy == CANARY_STRATEGY_BLUE_GREEN && step == 0
             ? p->pre_promotion_ms
             : p->interval_ms;
}

static const char *const phase_text[2][6] = {
    {"none", "running", "paused", "promoted", "rolled_back", "unknown"},
    {"none", "preview", "paused", "promoted", "rolled_back",
     "post_promotion"}};

const char *canary_prog_phase(uint32_t strategy, uint32_t state,
                              uint32_t step) {
  if (strategy > CANARY_STRATEGY_BLUE_GREEN || state > CANARY_PROG_ROLLED_BACK)
    return "unknown";
  if (strategy == CANARY_STRATEGY_BLUE_GREEN && state == CANARY_PROG_RUNNING &&
      step == 1)
    return phase_text[1][5];
  return phase_text[strategy][state];
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

/* The four snapshots of a window: canary and stable, now and at the
 * window's start.  45 KiB, so one per thread rather than on the stack. */
struct window_snaps {
  struct canary_hist_snapshot canary_now, canary_base;
  struct canary_hist_snapshot stable_now, stable_base;
};
static _Thread_local struct window_snaps snaps;

/* Caller holds the writer lock.  Rewrites the window bases from the
 * canary's and stable's current counters, guarded by base_seq. */
static void rebase(const canary_seg_t *seg, uint32_t route,
                   struct prog_area *pa, uint32_t canary, double now_us) {
  uint64_t s = ck_pr_load_64(&pa->base_seq);
  uint64_t start = (s & 1) ? s + 2 : s + 1;

  canary_hist_snapshot(seg, (int)route, (int)canary, &snaps.canary_now);
  canary_hist_snapshot(seg, (int)route, 0, &snaps.stable_now);
  ck_pr_store_64(&pa->base_seq, start);
  /* The odd sequence is visible before any base word changes. */
  ck_pr_fence_store();
  canary__store_words(&pa->base, &snaps.canary_now,
                      sizeof snaps.canary_now / 8);
  CANARY_FAULT("prog.rebase"); /* tests: killed with half the bases new */
  canary__store_words(&pa->stable_base, &snaps.stable_now,
                      sizeof snaps.stable_now / 8);
  /* The bases are complete before the sequence turns even. */
  ck_pr_fence_store();
  ck_pr_store_64(&pa->base_seq, start + 1);
  ck_pr_store_64(&pa->window_start_us, (uint64_t)now_us);
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Caller holds the writer lock: appends `d` to the decision log and
 * returns its sequence number. */
static uint64_t record(struct prog_area *pa, struct canary_decision *d) {
  uint64_t seq = ck_pr_load_64(&pa->decisions) + 1;
  struct decision_slot *slot = &pa->ring[seq % CANARY_DECISIONS];
  uint64_t v = ck_pr_load_64(&slot->lock);
  /* A writer that died mid-record left the word odd: skip past it. */
  uint64_t start = (v & 1) ? v + 2 : v + 1;

  d->seq = seq;
  d->unix_ms = wall_ms();
  ck_pr_store_64(&slot->lock, start);
  /* The odd word is visible before any word of the entry changes. */
  ck_pr_fence_store();
  canary__store_words(&slot->d, d, sizeof *d / 8);
  /* The entry is complete before its word turns even... */
  ck_pr_fence_store();
  ck_pr_store_64(&slot->lock, start + 1);
  /* ...and before the count that tells readers it exists. */
  ck_pr_fence_store();
  ck_pr_store_64(&pa->decisions, seq);
  /* The last decision with gates to show (canary_gate_value): a cluster
   * decision applied without the judge's result has none. */
  if ((d->origin == CANARY_ORIGIN_WINDOW ||
       d->origin == CANARY_ORIGIN_IMMEDIATE) &&
      d->judge.verdict != CANARY_GATE_INCONCLUSIVE)
    ck_pr_store_64(&pa->last_judged, seq);
  return seq;
}

/* Copies decision `seq` out of its slot.  0, or -1 when it has been
 * overwritten or keeps changing under the reader. */
static int read_decision(const struct prog_area *pa, uint64_t seq,
                         struct canary_decision *out) {
  const struct decision_slot *slot = &pa->ring[seq % CANARY_DECISIONS];
  for (int tries = 0; tries < 1000; tries++) {
    uint64_t l1 = ck_pr_load_64((uint64_t *)&slot->lock);
    if (l1 & 1)
      continue; /* being written (or its writer died: give up later) */
    /* The word before the entry it guards. */
    ck_pr_fence_load();
    canary__load_words(out, &slot->d, sizeof *out / 8);
    /* The entry before the word's re-check. */
    ck_pr_fence_load();
    if (ck_pr_load_64((uint64_t *)&slot->lock) != l1)
      continue;
    return out->seq == seq ? 0 : -1;
  }
  return -1;
}

void canary__prog_start(const canary_seg_t *seg, uint32_t route,
                        const struct canary_prog_params *p,
                        struct table_data *d, double now_us) {
  struct prog_area *pa = canary__prog(seg, route);
  struct canary_prog_params none;

  if (pa == NULL)
    return; /* no progression slot: publish.c released it (p == NULL) */
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
  ck_pr_store_64(&pa->immediate_ws, 0);
  ck_pr_store_64(&pa->phase_start_us, (uint64_t)now_us);
  ck_pr_store_64(&pa->phase_passes, 0);
  rebase(seg, route, pa, p->canary, now_us);
  if (p->strategy == CANARY_STRATEGY_BLUE_GREEN && !p->dry_run) {
    step_weights(d, p->canary, 0);
    set_reason(pa,
               "preview: green serves allowed overrides only, judged "
               "for %.0f s",
               p->pre_promotion_ms / 1e3);
  } else if (p->dry_run) {
    /* A dry run judges the configured weights and never changes them. */
    set_reason(pa, "dry run started at the configured weights");
  } else {
    step_weights(d, p->canary, p->steps[0]);
    set_reason(pa, "started at %.2f %%", p->steps[0] / 100.0);
  }
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

/* Fills `snaps` with the window so far: both sides now and their
 * bases.  Returns 0, or -1 when the bases were being rewritten (try
 * again next tick). */
static int window(const canary_seg_t *seg, uint32_t route,
                  struct prog_area *pa, uint32_t canary) {
  uint64_t s1 = ck_pr_load_64(&pa->base_seq);
  if (s1 & 1)
    return -1;
  /* Sequence before the base words it guards. */
  ck_pr_fence_load();
  canary__load_words(&snaps.canary_base, &pa->base,
                     sizeof snaps.canary_base / 8);
  canary__load_words(&snaps.stable_base, &pa->stable_base,
                     sizeof snaps.stable_base / 8);
  /* Base words before the sequence re-check. */
  ck_pr_fence_load();
  if (ck_pr_load_64(&pa->base_seq) != s1)
    return -1;
  canary_hist_snapshot(seg, (int)route, (int)canary, &snaps.canary_now);
  canary_hist_snapshot(seg, (int)route, 0, &snaps.stable_now);
  return 0;
}

/* Judges the window in `snaps`.  Stable is judged as the baseline unless
 * the published table gives it no traffic (the canary at 100 %). */
static int judge_snaps(const canary_seg_t *seg, struct route_hdr *r,
                       const struct canary_prog_params *p, uint32_t flags,
                       struct canary_judge_result *out) {
  struct table_data d;
  if (canary__read_table(seg, r, &d, NULL, 0) == 0 && d.effective[0] == 0)
    flags |= CANARY_JUDGE_NO_BASELINE;
  return canary_judge(&p->judge, flags, &snaps.canary_now, &snaps.canary_base,
                      &snaps.stable_now, &snaps.stable_base, out);
}

/* The canary's weight in the published table (what it serves now). */
static uint32_t canary_weight(const canary_seg_t *seg, struct route_hdr *r,
                              uint32_t canary) {
  struct table_data d;
  if (canary__read_table(seg, r, &d, NULL, 0) != 0 || canary >= d.n)
    return 0;
  return d.effective[canary];
}

/* Caller holds the writer lock: the figures of a judged window into the
 * status fields. */
static void store_figures(struct route_hdr *r, struct prog_area *pa,
                          uint32_t dry_run,
                          const struct canary_judge_result *j) {
  ck_pr_inc_64(dry_run ? &r->dry_evaluations[j->verdict]
                       : &r->evaluations[j->verdict]);
  ck_pr_store_32(&pa->last_result, j->verdict);
  ck_pr_store_64(&pa->window_requests, j->canary_requests);
  ck_pr_store_64(&pa->error_rate_bits, dbits(j->canary_error_rate));
  ck_pr_store_64(&pa->p95_bits, dbits(j->canary_p95_us));
  ck_pr_store_64(&pa->p99_bits, dbits(j->canary_p99_us));
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
  struct route_hdr *r = route_of(seg, route);
  struct prog_area *pa;
  uint64_t ws;

  if (out == NULL || r == NULL)
    return CANARY_EINVAL;
  pa = canary__prog(seg, (uint32_t)route);
  memset(out, 0, sizeof *out);
  for (int i = 0; i < CANARY_GATE_RESULTS; i++) {
    out->evaluations[i] = ck_pr_load_64(&r->evaluations[i]);
    out->dry_evaluations[i] = ck_pr_load_64(&r->dry_evaluations[i]);
  }
  if (pa == NULL) {
    /* No progression slot: none configured. */
    canary__copy_str(out->reason, sizeof out->reason,
                     "no progression configured",
                     strlen("no progression configured"));
    return 0;
  }
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
  out->dry_run = p.dry_run;
  out->analysis = p.judge.analysis;
  out->window_requests = ck_pr_load_64(&pa->window_requests);
  out->decisions = ck_pr_load_64(&pa->decisions);
  ws = ck_pr_load_64(&pa->window_start_us);
  out->window_age_ms = now_us > (double)ws ? (now_us - (double)ws) / 1e3 : 0;
  out->error_rate = bitsd(ck_pr_load_64(&pa->error_rate_bits));
  out->p95_us = bitsd(ck_pr_load_64(&pa->p95_bits));
  out->p99_us = bitsd(ck_pr_load_64(&pa->p99_bits));
  canary__load_words(out->reason, pa->reason, CANARY_REASON_MAX / 8);
  out->reason[CANARY_REASON_MAX - 1] = '\0';
  out->strategy = p.strategy;
  if (p.strategy == CANARY_STRATEGY_BLUE_GREEN) {
    ws = ck_pr_load_64(&pa->phase_start_us);
    out->phase_age_ms = now_us > (double)ws ? (now_us - (double)ws) / 1e3 : 0;
  }
  return 0;
}

int canary_prog_decisions(const canary_seg_t *seg, int route,
                          uint64_t from_seq, struct canary_decision *out,
                          uint32_t max) {
  struct prog_area *pa;
  uint64_t newest, seq;
  uint32_t n = 0;

  if (out == NULL || route_of(seg, route) == NULL)
    return CANARY_EINVAL;
  pa = canary__prog(seg, (uint32_t)route);
  if (pa == NULL)
    return 0; /* no progression, no decisions */
  newest = ck_pr_load_64(&pa->decisions);
  /* The count before the entries it announces. */
  ck_pr_fence_load();
  seq = from_seq == 0 || from_seq > newest ? newest : from_seq;
  if (from_seq > newest)
    return 0;
  if (max > CANARY_DECISIONS)
    max = CANARY_DECISIONS;
  for (; n < max && seq > 0 && newest - seq < CANARY_DECISIONS; seq--) {
    if (read_decision(pa, seq, &out[n]) != 0)
      break; /* overwritten since: everything older is gone too */
    out[n].judge.reason[CANARY_REASON_MAX - 1] = '\0';
    n++;
  }
  return (int)n;
}

int canary__prog_last_judged(const canary_seg_t *seg, int route,
                             struct canary_decision *out) {
  struct prog_area *pa;
  uint64_t seq;
  if (out == NULL || route_of(seg, route) == NULL)
    return -1;
  pa = canary__prog(seg, (uint32_t)route);
  if (pa == NULL)
    return -1;
  seq = ck_pr_load_64(&pa->last_judged);
  /* The sequence before the entry it names. */
  ck_pr_fence_load();
  if (seq == 0 || ck_pr_load_64(&pa->decisions) - seq >= CANARY_DECISIONS ||
      read_decision(pa, seq, out) != 0)
    return -1;
  out->judge.reason[CANARY_REASON_MAX - 1] = '\0';
  return 0;
}

/* Caller holds the writer lock: switches all traffic to green (step 1)
 * in one publish and opens the post-promotion phase. */
static void switch_to_green(const canary_seg_t *seg, struct route_hdr *r,
                            struct prog_area *pa,
                            const struct canary_prog_params *p,
                            double now_us) {
  ck_pr_store_32(&pa->step, 1);
  ck_pr_store_32(&pa->failures, 0);
  ck_pr_store_64(&pa->phase_passes, 0);
  ck_pr_store_64(&pa->phase_start_us, (uint64_t)now_us);
  publish_step(seg, r, p->canary, p->steps[1]);
}

/* Caller holds the writer lock: the outcome of a judged blue/green
 * window `d` (step, figures and verdict filled in).  Returns 1 when
 * weights or state changed. */
static int blue_green_window(const canary_seg_t *seg, struct route_hdr *r,
                             struct prog_area *pa,
                             const struct canary_prog_params *p,
                             struct canary_decision *d, double now_us) {
  const char *why = d->judge.reason;
  const char *dry = p->dry_run ? "dry run: would " : "";
  uint32_t step = d->step;
  double age_s = (now_us - (double)ck_pr_load_64(&pa->phase_start_us)) / 1e6;
  int changed = 0;

  if (d->judge.verdict == CANARY_GATE_FAIL) {
    uint32_t f = ck_pr_load_32(&pa->failures) + 1;
    ck_pr_store_32(&pa->failures, f);
    if (!d->judge.rollback && f < p->failure_limit) {
      set_reason(pa, "%s%s window failed (%u of %u): %s",
                 p->dry_run ? "dry run: " : "",
                 step == 0 ? "preview" : "post-promotion", f, p->failure_limit,
                 why);
      return 0;
    }
    d->action = CANARY_DO_ROLLBACK;
    d->weight = 0;
    if (step == 0)
      set_reason(pa, "%s%s green after its preview failed: %s", dry,
                 p->dry_run ? "roll back" : "rolled back", why);
    else
      set_reason(pa,
                 "%s%s to blue after %u failed post-promotion "
                 "window(s): %s",
                 dry, p->dry_run ? "switch back" : "switched back", f, why);
    if (!p->dry_run) {
      rollback(seg, r, pa, p->canary);
      changed = 1;
    }
    return changed;
  }
  if (step == 0) {
    if (d->judge.verdict == CANARY_GATE_PASS) {
      ck_pr_store_32(&pa->failures, 0);
      d->action = CANARY_DO_SWITCH;
      d->weight = p->steps[1];
      set_reason(pa,
                 "%s%s all traffic to green, preview passed: %s; "
                 "post-promotion validation for %.0f s",
                 dry, p->dry_run ? "switch" : "switched", why,
                 p->post_promotion_ms / 1e3);
      if (!p->dry_run)
        switch_to_green(seg, r, pa, p, now_us);
    } else {
      d->action = CANARY_DO_PAUSE;
      set_reason(pa, "%s%s until promoted: preview inconclusive: %s", dry,
                 p->dry_run ? "pause" : "paused", why);
      if (!p->dry_run)
        ck_pr_store_32(&pa->state, CANARY_PROG_PAUSED);
    }
    return !p->dry_run;
  }
  /* Post-promotion (never reached in a dry run: nothing switches). */
  if (d->judge.verdict == CANARY_GATE_PASS) {
    ck_pr_store_32(&pa->failures, 0);
    ck_pr_store_64(&pa->phase_passes, ck_pr_load_64(&pa->phase_passes) + 1);
  }
  if (ck_pr_load_64(&pa->phase_passes) > 0 &&
      ck_pr_load_32(&pa->failures) == 0 &&
      age_s * 1e3 >= (double)p->post_promotion_ms) {
    d->action = CANARY_DO_PROMOTE;
    ck_pr_store_32(&pa->state, CANARY_PROG_PROMOTED);
    set_reason(pa,
               "promoted: green passed %.0f s of post-promotion "
               "validation, blue is no longer the rollback target: %s",
               age_s, why);
    return 1;
  }
  set_reason(pa,
             "post-promotion %.0f of %.0f s, blue kept as the rollback "
             "target: %s",
             age_s, p->post_promotion_ms / 1e3, why);
  return 0;
}

/* Caller holds the writer lock and has claimed the window. */
static int judge_window(const canary_seg_t *seg, uint32_t route,
                        struct route_hdr *r, struct prog_area *pa,
                        const struct canary_prog_params *p, double now_us,
                        double window_ms, uint64_t *decided) {
  struct canary_decision d;
  const char *why = d.judge.reason;
  const char *dry = p->dry_run ? "dry run: would " : "";
  uint32_t step = ck_pr_load_32(&pa->step);
  int changed = 0;

  if (step >= p->nsteps)
    return CANARY_ECORRUPT; /* only a damaged segment says so */
  memset(&d, 0, sizeof d);
  if (window(seg, route, pa, p->canary) != 0)
    memset(&snaps, 0, sizeof snaps); /* judged as empty: inconclusive */
  if (judge_snaps(seg, r, p, 0, &d.judge) != 0)
    return CANARY_ECORRUPT; /* parameters were checked by the caller */
  store_figures(r, pa, p->dry_run, &d.judge);
  d.origin = CANARY_ORIGIN_WINDOW;
  d.window_ms = window_ms;
  d.dry_run = p->dry_run;
  d.step = step;
  d.step_weight = canary_weight(seg, r, p->canary);
  d.weight = d.step_weight;

  if (p->strategy == CANARY_STRATEGY_BLUE_GREEN) {
    changed = blue_green_window(seg, r, pa, p, &d, now_us);
  } else if (d.judge.verdict == CANARY_GATE_PASS) {
    ck_pr_store_32(&pa->failures, 0);
    if (step + 1 < p->nsteps) {
      d.action = CANARY_DO_STEP_UP;
      d.weight = p->steps[step + 1];
      set_reason(pa, "%sstep %u -> %.2f %%: %s (%.0f s window)",
                 p->dry_run ? "dry run: would " : "", step + 2,
                 p->steps[step + 1] / 100.0, why, window_ms / 1e3);
      if (!p->dry_run) {
        ck_pr_store_32(&pa->step, step + 1);
        publish_step(seg, r, p->canary, p->steps[step + 1]);
      }
    } else if (p->on_success == CANARY_PROG_PROMOTE) {
      d.action = CANARY_DO_PROMOTE;
      set_reason(pa, "%s%s at %.2f %%: %s", dry,
                 p->dry_run ? "promote" : "promoted", p->steps[step] / 100.0,
                 why);
      if (!p->dry_run)
        ck_pr_store_32(&pa->state, CANARY_PROG_PROMOTED);
    } else {
      d.action = CANARY_DO_PAUSE;
      set_reason(pa, "%sall steps passed; %s at %.2f %% until promoted", dry,
                 p->dry_run ? "hold" : "holding", p->steps[step] / 100.0);
      if (!p->dry_run)
        ck_pr_store_32(&pa->state, CANARY_PROG_PAUSED);
    }
    changed = !p->dry_run;
  } else if (d.judge.verdict == CANARY_GATE_FAIL) {
    uint32_t f = ck_pr_load_32(&pa->failures) + 1;
    ck_pr_store_32(&pa->failures, f);
    if (d.judge.rollback) {
      d.action = CANARY_DO_ROLLBACK;
      set_reason(pa, "%s%s at once: %s", dry,
                 p->dry_run ? "roll back" : "rolled back", why);
    } else if (f >= p->failure_limit) {
      d.action = CANARY_DO_ROLLBACK;
      set_reason(pa, "%s%s after %u failed windows: %s", dry,
                 p->dry_run ? "roll back" : "rolled back", f, why);
    } else {
      set_reason(pa, "%swindow failed (%u of %u): %s",
                 p->dry_run ? "dry run: " : "", f, p->failure_limit, why);
    }
    if (d.action == CANARY_DO_ROLLBACK)
      d.weight = 0;
    if (d.action == CANARY_DO_ROLLBACK && !p->dry_run) {
      rollback(seg, r, pa, p->canary);
      changed = 1;
    }
  } else {
    set_reason(pa, "%s%s", p->dry_run ? "dry run: " : "", why);
  }
  d.state = ck_pr_load_32(&pa->state);
  d.failures = ck_pr_load_32(&pa->failures);
  *decided = record(pa, &d);
  rebase(seg, route, pa, p->canary, now_us);
  return changed ? 2 : 1;
}

/* Whether any immediate-rollback limit is set. */
static int immediate_limits(const struct canary_prog_params *p) {
  return p->judge.rollback_error_rate >= 0 || p->judge.rollback_p99_ratio >= 0;
}

/* The immediate-rollback limits, checked on every tick against the
 * window so far (in cluster scope too, where the windows are judged
 * elsewhere).  Returns 2 (rolled back), 1 (a dry run's breach recorded)
 * or 0; *decided names the decision recorded.  `p` was loaded from a
 * RUNNING progression whose window opened at `ws`. */
static int immediate_check(canary_seg_t *seg, uint32_t route,
                           struct route_hdr *r, struct prog_area *pa,
                           const struct canary_prog_params *p, uint64_t ws,
                           uint64_t now, uint64_t *decided) {
  int rc = 0;

  /* In a dry run, an immediate breach is recorded once per window. */
  if (immediate_limits(p) &&
      !(p->dry_run && ck_pr_load_64(&pa->immediate_ws) == ws)) {
    static _Thread_local struct canary_decision d;
    memset(&d, 0, sizeof d);
    if (window(seg, route, pa, p->canary) == 0 &&
        judge_snaps(seg, r, p, CANARY_JUDGE_IMMEDIATE, &d.judge) == 0 &&
        d.judge.rollback &&
        canary__lock_try(seg, canary__writer_lock_off(seg, route)) == 0) {
      struct canary_prog_params now_p;
      /* Under the writer word: the progression may have been restarted
       * (other parameters, another canary) since we looked. */
      load_params(pa, &now_p);
      if (canary__prog(seg, route) == pa &&
          ck_pr_load_32(&pa->state) == CANARY_PROG_RUNNING &&
          memcmp(&now_p, p, sizeof *p) == 0 &&
          !(p->dry_run && ck_pr_load_64(&pa->immediate_ws) == ws)) {
        d.origin = CANARY_ORIGIN_IMMEDIATE;
        d.action = CANARY_DO_ROLLBACK;
        d.dry_run = p->dry_run;
        d.window_ms = now > ws ? (double)(now - ws) / 1e3 : 0;
        d.step = ck_pr_load_32(&pa->step);
        d.step_weight = canary_weight(seg, r, p->canary);
        d.weight = 0;
        store_figures(r, pa, p->dry_run, &d.judge);
        if (p->dry_run) {
          ck_pr_store_64(&pa->immediate_ws, ws);
          set_reason(pa, "dry run: would roll back at once: %s",
                     d.judge.reason);
          rc = 1;
        } else {
          rollback(seg, r, pa, p->canary);
          if (p->strategy == CANARY_STRATEGY_BLUE_GREEN && d.step == 1)
            set_reason(pa, "switched back to blue at once: %s",
                       d.judge.reason);
          else
            set_reason(pa, "rolled back at once: %s", d.judge.reason);
          rc = 2;
        }
        d.state = ck_pr_load_32(&pa->state);
        d.failures = ck_pr_load_32(&pa->failures);
        *decided = record(pa, &d);
      }
      canary__lock_release(seg, canary__writer_lock_off(seg, route));
    }
  }
  return rc;
}

int canary_prog_tick(canary_seg_t *seg, int route, double now_us,
                     struct canary_prog_status *out) {
  struct canary_prog_params p;
  struct route_hdr *r = route_of(seg, route);
  struct prog_area *pa;
  uint64_t ws, now = (uint64_t)now_us, decided = 0;
  uint32_t len_ms;
  int rc = 0;

  if (r == NULL)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  pa = canary__prog(seg, (uint32_t)route);
  if (pa == NULL || ck_pr_load_32(&pa->state) != CANARY_PROG_RUNNING)
    goto done;
  /* State before the parameters it makes valid. */
  ck_pr_fence_load();
  load_params(pa, &p);
  if (!params_ok(&p) || p.canary >= seg->max_upstreams ||
      ck_pr_load_32(&pa->step) >= p.nsteps)
    return CANARY_ECORRUPT;
  ws = ck_pr_load_64(&pa->window_start_us);
  len_ms = window_len_ms(&p, ck_pr_load_32(&pa->step));
  if (ws > now + (uint64_t)len_ms * 1000u * 10u) {
    /* A window from the future: the monotonic clock restarted (reboot).
     * Start a fresh window instead of waiting for that future. */
    ck_pr_cas_64(&pa->window_start_us, ws, now);
    goto done;
  }

  rc = immediate_check(seg, (uint32_t)route, r, pa, &p, ws, now, &decided);
  if (rc != 0)
    goto done;

  if (now < ws + (uint64_t)len_ms * 1000u)
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
  if (canary__prog(seg, (uint32_t)route) == pa &&
      ck_pr_load_32(&pa->state) == CANARY_PROG_RUNNING &&
      ck_pr_load_64(&pa->window_start_us) == now && params_ok(&p) &&
      p.canary < seg->max_upstreams)
    rc = judge_window(seg, (uint32_t)route, r, pa, &p, now_us,
                      (double)(now - ws) / 1e3, &decided);
  canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
done:
  if (out != NULL) {
    canary_prog_status(seg, route, now_us, out);
    out->decided = decided;
  }
  return rc;
}

/* Caller holds the writer lock; the progression is blue/green, running
 * or paused: `promote` in the preview switches to green and validates
 * (`promote_full` switches without validation), and during the
 * post-promotion validation either ends it. */
static void promote_blue_green(const canary_seg_t *seg, int route,
                               struct route_hdr *r, struct prog_area *pa,
                               const struct canary_prog_params *p, int action,
                               struct canary_decision *d, double now_us) {
  uint32_t step = ck_pr_load_32(&pa->step);
  if (step == 0) {
    switch_to_green(seg, r, pa, p, now_us);
    rebase(seg, (uint32_t)route, pa, p->canary, now_us);
  }
  if (step == 0 && action == CANARY_ACT_PROMOTE) {
    ck_pr_store_32(&pa->state, CANARY_PROG_RUNNING);
    set_reason(pa,
               "switched all traffic to green by operator; "
               "post-promotion validation for %.0f s",
               p->post_promotion_ms / 1e3);
    d->action = CANARY_DO_SWITCH;
    return;
  }
  ck_pr_store_32(&pa->state, CANARY_PROG_PROMOTED);
  set_reason(pa, "promoted by operator: all traffic on green, %s",
             step == 0 ? "without post-promotion validation"
                       : "post-promotion validation ended early");
  d->action = CANARY_DO_PROMOTE;
}

int canary_prog_action(canary_seg_t *seg, int route, int action, double now_us,
                       struct canary_prog_status *out, char *err,
                       size_t err_len) {
  static _Thread_local struct canary_decision d;
  struct canary_prog_params p;
  struct route_hdr *r = route_of(seg, route);
  struct prog_area *pa;
  uint32_t state, step;
  uint64_t decided = 0;
  int rc = 0;

  if (r == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no such route");
  if (action < CANARY_ACT_PROMOTE || action > CANARY_ACT_PROMOTE_FULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "unknown action %d",
                        action);
  if (seg->readonly)
    return canary__fail(err, err_len, CANARY_EREADONLY,
                        "segment attached read-only");
  rc = canary__lock_try(seg, canary__writer_lock_off(seg, (uint32_t)route));
  if (rc != 0)
    return canary__fail(err, err_len, rc,
                        rc == CANARY_EBUSY
                            ? "busy: another process is changing this "
                              "route; retry"
                            : "no lock on the segment file (replaced?)");
  /* Under the writer lock: the route's progression slot stays its own. */
  pa = canary__prog(seg, (uint32_t)route);
  if (pa == NULL) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "no progression configured on this route");
    goto out;
  }
  state = ck_pr_load_32(&pa->state);
  step = ck_pr_load_32(&pa->step);
  load_params(pa, &p);
  if (state != CANARY_PROG_NONE &&
      (state > CANARY_PROG_ROLLED_BACK || !params_ok(&p) || step >= p.nsteps ||
       p.canary >= seg->max_upstreams)) {
    rc = canary__fail(err, err_len, CANARY_ECORRUPT,
                      "progression state of this route is corrupt");
    goto out;
  }
  if (state == CANARY_PROG_NONE) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "no progression configured on this route");
    goto out;
  }
  memset(&d, 0, sizeof d);
  d.origin = CANARY_ORIGIN_OPERATOR;
  d.judge.verdict = CANARY_GATE_RESULTS; /* nothing judged */
  d.judge.failed_gate = CANARY_GATES;
  d.step = step;
  d.step_weight = canary_weight(seg, r, p.canary);
  switch (action) {
  case CANARY_ACT_PAUSE:
    if (state != CANARY_PROG_RUNNING) {
      rc = canary__fail(err, err_len, CANARY_ESTATE, "cannot pause: %s",
                        state_text[state]);
      break;
    }
    ck_pr_store_32(&pa->state, CANARY_PROG_PAUSED);
    set_reason(pa, "paused by operator at %.2f %%", p.steps[step] / 100.0);
    d.action = CANARY_DO_PAUSE;
    break;
  case CANARY_ACT_RESUME:
    if (state != CANARY_PROG_PAUSED) {
      rc = canary__fail(err, err_len, CANARY_ESTATE, "cannot resume: %s",
                        state_text[state]);
      break;
    }
    /* Blue/green resumes its post-promotion validation at step 1. */
    if (step + 1 >= p.nsteps && p.strategy != CANARY_STRATEGY_BLUE_GREEN) {
      rc = canary__fail(err, err_len, CANARY_ESTATE,
                        "every step has passed; promote instead");
      break;
    }
    ck_pr_store_32(&pa->failures, 0);
    rebase(seg, (uint32_t)route, pa, p.canary, now_us);
    ck_pr_store_32(&pa->state, CANARY_PROG_RUNNING);
    set_reason(pa, "resumed by operator at %.2f %%", p.steps[step] / 100.0);
    d.action = CANARY_DO_RESUME;
    break;
  case CANARY_ACT_PROMOTE:
  case CANARY_ACT_PROMOTE_FULL:
    if (state != CANARY_PROG_RUNNING && state != CANARY_PROG_PAUSED) {
      rc = canary__fail(err, err_len, CANARY_ESTATE, "cannot promote: %s",
                        state_text[state]);
      break;
    }
    if (p.strategy == CANARY_STRATEGY_BLUE_GREEN) {
      promote_blue_green(seg, route, r, pa, &p, action, &d, now_us);
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
      d.action = CANARY_DO_PROMOTE;
    } else {
      ck_pr_store_32(&pa->state, CANARY_PROG_RUNNING);
      set_reason(pa, "stepped by operator to %.2f %%",
                 p.steps[step] / 100.0);
      d.action = CANARY_DO_STEP_UP;
    }
    break;
  case CANARY_ACT_ABORT:
    if (state == CANARY_PROG_ROLLED_BACK) {
      rc = canary__fail(err, err_len, CANARY_ESTATE,
                        "already rolled back");
      break;
    }
    rollback(seg, r, pa, p.canary);
    if (p.strategy == CANARY_STRATEGY_BLUE_GREEN)
      set_reason(pa,
                 "aborted by operator: all traffic on blue, green at 0 %%");
    else
      set_reason(pa, "aborted by operator: canary at 0 %%");
    d.action = CANARY_DO_ABORT;
    break;
  }
  if (rc == 0) {
    d.weight = canary_weight(seg, r, p.canary);
    d.state = ck_pr_load_32(&pa->state);
    d.failures = ck_pr_load_32(&pa->failures);
    canary__load_words(d.judge.reason, pa->reason, CANARY_REASON_MAX / 8);
    decided = record(pa, &d);
  }
out:
  canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
  if (out != NULL) {
    canary_prog_status(seg, route, now_us, out);
    out->decided = decided;
  }
  return rc;
}
/* ---- cluster scope ------------------------------------------------------
 *
 * With progression.scope = cluster the nodes of a Kong cluster share one
 * progression through Redis (plugin/cluster.lua): each node adds its
 * windows up there, one node judges each window from the sum with
 * canary_prog_judge(), and every node applies the resulting state with
 * canary_prog_apply().  The segment's own window judging stands aside
 * (the plugin calls canary_prog_breach() instead of canary_prog_tick()),
 * but the immediate rollback limit is still checked here, on every node,
 * against this node's own traffic.
 */

int canary_prog_breach(canary_seg_t *seg, int route, double now_us,
                       struct canary_prog_status *out) {
  struct canary_prog_params p;
  struct route_hdr *r = route_of(seg, route);
  struct prog_area *pa;
  uint64_t ws, decided = 0;
  int rc = 0;

  if (r == NULL)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  pa = canary__prog(seg, (uint32_t)route);
  if (pa != NULL && ck_pr_load_32(&pa->state) == CANARY_PROG_RUNNING) {
    /* State before the parameters it makes valid. */
    ck_pr_fence_load();
    load_params(pa, &p);
    if (!params_ok(&p) || p.canary >= seg->max_upstreams)
      return CANARY_ECORRUPT;
    ws = ck_pr_load_64(&pa->window_start_us);
    rc = immediate_check(seg, (uint32_t)route, r, pa, &p, ws,
                         (uint64_t)now_us, &decided);
  }
  if (out != NULL) {
    canary_prog_status(seg, route, now_us, out);
    out->decided = decided;
  }
  return rc;
}

/* The reason text of a cluster-judged state (truncated like the
 * segment's own reasons). */
static void reason_into(char *buf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reason_into(char *buf, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, CANARY_REASON_MAX, fmt, ap);
  va_end(ap);
}

int canary_prog_judge(const struct canary_prog_params *p,
                      const struct canary_hist_snapshot *canary,
                      const struct canary_hist_snapshot *stable,
                      const struct canary_prog_status *cur,
                      struct canary_prog_status *next,
                      struct canary_judge_result *j_out) {
  static _Thread_local struct canary_judge_result j;
  const char *dry = "", *why = j.reason;
  uint32_t step, flags = 0;

  if (p == NULL || canary == NULL || cur == NULL || next == NULL ||
      canary_prog_check(p, CANARY_MAX_UPSTREAMS, NULL, 0) != 0 ||
      p->strategy != CANARY_STRATEGY_CANARY) /* blue/green: node scope */
    return CANARY_EINVAL;
  if (cur->state != CANARY_PROG_RUNNING || cur->step >= p->nsteps)
    return CANARY_ESTATE;
  step = cur->step;
  /* Stable serves nothing with the canary at 100 %: no baseline. */
  if (stable == NULL || p->steps[step] == CANARY_WEIGHT_SCALE)
    flags |= CANARY_JUDGE_NO_BASELINE;
  if (canary_judge(&p->judge, flags, canary, NULL, stable, NULL, &j) != 0)
    return CANARY_EINVAL;
  if (p->dry_run)
    dry = "dry run: would ";
  *next = *cur;
  next->last_result = j.verdict;
  if (p->dry_run)
    next->dry_evaluations[j.verdict]++;
  else
    next->evaluations[j.verdict]++;
  next->window_requests = j.canary_requests;
  next->error_rate = j.canary_error_rate;
  next->p95_us = j.canary_p95_us;
  next->p99_us = j.canary_p99_us;
  if (j.verdict == CANARY_GATE_PASS) {
    next->failures = 0;
    if (step + 1 < p->nsteps) {
      reason_into(next->reason,
               "%sstep %u -> %.2f %%: %s (cluster window)", dry, step + 2,
               p->steps[step + 1] / 100.0, why);
      if (!p->dry_run)
        next->step = step + 1;
    } else if (p->on_success == CANARY_PROG_PROMOTE) {
      reason_into(next->reason, "%s%s at %.2f %%: %s", dry,
               p->dry_run ? "promote" : "promoted", p->steps[step] / 100.0,
               why);
      if (!p->dry_run)
        next->state = CANARY_PROG_PROMOTED;
    } else {
      reason_into(next->reason,
               "%sall steps passed; %s at %.2f %% until promoted", dry,
               p->dry_run ? "hold" : "holding", p->steps[step] / 100.0);
      if (!p->dry_run)
        next->state = CANARY_PROG_PAUSED;
    }
  } else if (j.verdict == CANARY_GATE_FAIL) {
    next->failures = cur->failures + 1;
    if (j.rollback || next->failures >= p->failure_limit) {
      if (j.rollback)
        reason_into(next->reason, "%s%s at once: %s", dry,
                 p->dry_run ? "roll back" : "rolled back", why);
      else
        reason_into(next->reason,
                 "%s%s after %u failed windows: %s", dry,
                 p->dry_run ? "roll back" : "rolled back", next->failures,
                 why);
      if (!p->dry_run)
        next->state = CANARY_PROG_ROLLED_BACK;
    } else {
      reason_into(next->reason,
               "%swindow failed (%u of %u): %s", p->dry_run ? "dry run: " : "",
               next->failures, p->failure_limit, why);
    }
  } else {
    reason_into(next->reason, "%s%s",
             p->dry_run ? "dry run: " : "", why);
  }
  next->step_weight = next->state == CANARY_PROG_ROLLED_BACK
                          ? 0
                          : p->steps[next->step];
  if (j_out != NULL)
    *j_out = j;
  return (int)j.verdict;
}

/* What a cluster state applied here did, as a decision's action: the
 * change of state or step it makes on this node, or, for a window judged
 * in a dry run (nothing changes), what canary_prog_judge()'s rules would
 * have done. */
static uint32_t applied_action(const struct canary_prog_params *p,
                               uint32_t state, uint32_t step,
                               const struct canary_prog_status *st,
                               int dry_run, int rollback) {
  if (dry_run) {
    if (st->last_result == CANARY_GATE_PASS)
      return step + 1 < p->nsteps                   ? CANARY_DO_STEP_UP
             : p->on_success == CANARY_PROG_PROMOTE ? CANARY_DO_PROMOTE
                                                    : CANARY_DO_PAUSE;
    if (st->last_result == CANARY_GATE_FAIL &&
        (rollback || st->failures >= p->failure_limit))
      return CANARY_DO_ROLLBACK;
    return CANARY_DO_NOTHING;
  }
  if (st->state != state) {
    switch (st->state) {
    case CANARY_PROG_ROLLED_BACK:
      return CANARY_DO_ROLLBACK;
    case CANARY_PROG_PROMOTED:
      return CANARY_DO_PROMOTE;
    case CANARY_PROG_PAUSED:
      return CANARY_DO_PAUSE;
    default:
      return CANARY_DO_RESUME;
    }
  }
  return st->step > step ? CANARY_DO_STEP_UP : CANARY_DO_NOTHING;
}

int canary_prog_apply(canary_seg_t *seg, int route, uint64_t config_hash,
                      const struct canary_prog_status *st, int judged,
                      const struct canary_judge_result *j, double now_us,
                      uint64_t *decided, char *err, size_t err_len) {
  struct canary_prog_params p;
  struct table_data d;
  struct route_hdr *r = route_of(seg, route);
  struct prog_area *pa;
  char reason[CANARY_REASON_MAX];
  uint32_t state, step;
  uint64_t seq;
  int changed, rc;

  if (decided != NULL)
    *decided = 0;
  if (r == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no such route");
  if (st == NULL || st->state < CANARY_PROG_RUNNING ||
      st->state > CANARY_PROG_ROLLED_BACK || st->step >= CANARY_MAX_STEPS ||
      st->last_result >= CANARY_GATE_RESULTS ||
      (j != NULL && (!judged || j->verdict != st->last_result ||
                     j->analysis > CANARY_ANALYSIS_STATISTICAL ||
                     j->failed_gate > CANARY_GATES)))
    return canary__fail(err, err_len, CANARY_EINVAL,
                        "not a progression state to apply");
  if (seg->readonly)
    return canary__fail(err, err_len, CANARY_EREADONLY,
                        "segment attached read-only");
  if (canary__lock_try(seg, canary__writer_lock_off(seg, (uint32_t)route)) != 0)
    return canary__fail(err, err_len, CANARY_EBUSY,
                        "another process is changing this route");
  /* Under the writer lock: the route's progression slot stays its own. */
  pa = canary__prog(seg, (uint32_t)route);
  if (pa == NULL) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "no progression configured on this route");
    goto out;
  }
  state = ck_pr_load_32(&pa->state);
  step = ck_pr_load_32(&pa->step);
  load_params(pa, &p);
  if (state == CANARY_PROG_NONE) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "no progression configured on this route");
    goto out;
  }
  /* Under the writer word, so no publish can slip in between: a state
   * decided for one configuration never lands on another. */
  if (canary__read_table(seg, r, &d, NULL, 1) != 0 ||
      d.config_hash != config_hash) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "the route now has another configuration");
    goto out;
  }
  if (state > CANARY_PROG_ROLLED_BACK || !params_ok(&p) ||
      p.canary >= seg->max_upstreams || step >= p.nsteps) {
    rc = canary__fail(err, err_len, CANARY_ECORRUPT,
                      "progression state of this route is corrupt");
    goto out;
  }
  if (p.strategy != CANARY_STRATEGY_CANARY) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "a blue/green progression is judged by its node");
    goto out;
  }
  if (st->step >= p.nsteps) {
    rc = canary__fail(err, err_len, CANARY_EINVAL,
                      "step %u of a %u-step progression", st->step + 1,
                      p.nsteps);
    goto out;
  }
  /* A rollback is final for a configuration, on this node too: a state
   * from before it (a stale cluster state) must not bring the canary
   * back. */
  if (state == CANARY_PROG_ROLLED_BACK &&
      st->state != CANARY_PROG_ROLLED_BACK) {
    rc = canary__fail(err, err_len, CANARY_ESTATE,
                      "rolled back on this node");
    goto out;
  }
  changed = state != st->state || step != st->step;
  memcpy(reason, st->reason, sizeof reason);
  reason[sizeof reason - 1] = '\0';
  ck_pr_store_32(&pa->step, st->step);
  ck_pr_store_32(&pa->failures, st->failures);
  ck_pr_store_32(&pa->last_result, st->last_result);
  ck_pr_store_64(&pa->window_requests, st->window_requests);
  ck_pr_store_64(&pa->error_rate_bits, dbits(st->error_rate));
  ck_pr_store_64(&pa->p95_bits, dbits(st->p95_us));
  ck_pr_store_64(&pa->p99_bits, dbits(st->p99_us));
  if (judged)
    ck_pr_inc_64(&r->evaluations[st->last_result]);
  set_reason(pa, "%s", reason);
  if (changed) {
    if (st->state == CANARY_PROG_ROLLED_BACK) {
      rollback(seg, r, pa, p.canary);
    } else {
      publish_step(seg, r, p.canary, p.steps[st->step]);
      /* Weights before the state, as in rollback(): whoever reads the
       * new state finds the new weights published. */
      ck_pr_fence_store();
      ck_pr_store_32(&pa->state, st->state);
    }
  }
  if (judged || changed) {
    struct canary_decision dec;
    memset(&dec, 0, sizeof dec);
    if (j != NULL) {
      /* The node that judged the window: its whole result. */
      dec.origin = CANARY_ORIGIN_WINDOW;
      dec.judge = *j; /* its reason is cut to a C string when read */
    } else {
      dec.origin = CANARY_ORIGIN_CLUSTER;
      dec.judge.verdict = judged ? st->last_result : CANARY_GATE_RESULTS;
      dec.judge.analysis = p.judge.analysis;
      dec.judge.failed_gate = CANARY_GATES;
      dec.judge.canary_requests = st->window_requests;
      dec.judge.canary_error_rate = st->error_rate;
      dec.judge.canary_p95_us = st->p95_us;
      dec.judge.canary_p99_us = st->p99_us;
      memcpy(dec.judge.reason, reason, sizeof dec.judge.reason);
    }
    dec.window_ms = judged ? p.interval_ms : 0;
    dec.dry_run = judged && p.dry_run;
    dec.action = applied_action(&p, state, step, st, (int)dec.dry_run,
                                j != NULL && j->rollback);
    dec.step = step;
    dec.step_weight = state == CANARY_PROG_ROLLED_BACK ? 0 : p.steps[step];
    dec.weight = st->state == CANARY_PROG_ROLLED_BACK ? 0 : p.steps[st->step];
    if (dec.dry_run) /* what it would have set, as in node scope */
      dec.weight = dec.action == CANARY_DO_STEP_UP    ? p.steps[step + 1]
                   : dec.action == CANARY_DO_ROLLBACK ? 0
                                                      : p.steps[step];
    dec.state = st->state;
    dec.failures = st->failures;
    seq = record(pa, &dec);
    if (decided != NULL)
      *decided = seq;
  }
  /* The node's own window (for the immediate limit) restarts with every
   * state applied, as it does after each judged window in node scope. */
  rebase(seg, (uint32_t)route, pa, p.canary, now_us);
  rc = changed ? 2 : 1;
out:
  canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
  return rc;
}
