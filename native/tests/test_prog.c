/*
 * test_prog.c - SLO-gated progression: windows, steps, rollbacks, actions.
 *
 * canary_prog_tick() takes the time as an argument, so these tests drive
 * windows with a synthetic clock and never sleep.
 */
#include "test_util.h"

#define SEC 1e6 /* microseconds */

/* Stable 90 %, canary 10 %; a five-step progression with the runbook's
 * gates over 1 s windows. */
static void runbook(struct canary_prog_params *p) {
  const uint32_t steps[5] = {1000, 2500, 5000, 7500, 10000};
  test_runbook(p, steps, 5, 3);
}

/* n canary responses: `errors` of them 503, all at latency_us. */
static void traffic(struct test_fx *fx, int route, int n, int errors,
                    uint64_t latency_us) {
  for (int i = 0; i < n; i++)
    assert_int_equal(canary_route_record(fx->seg, route, 1, latency_us,
                                         i < errors ? 503 : 200, -1),
                     0);
}

static uint32_t canary_effective(struct test_fx *fx, int route) {
  struct canary_route_view v;
  assert_int_equal(canary_route_read(fx->seg, route, &v), 0);
  return v.effective[1];
}

static void test_params_rejected(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  char err[256];
  int route = canary_route_claim(fx->seg, "r", 1, "", 0);

  test_table(&t, "up", 2, w);
  runbook(&p);
  p.canary = 0;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  assert_non_null(strstr(err, "canary"));
  runbook(&p);
  p.steps[2] = p.steps[1];
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  assert_non_null(strstr(err, "increasing"));
  runbook(&p);
  p.interval_ms = 10;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  runbook(&p);
  p.nsteps = 0;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  runbook(&p);
  p.judge.max_error_rate = 2.0;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  /* A rejected progression publishes nothing. */
  runbook(&p);
  p.failure_limit = 0;
  assert_int_equal(canary_route_publish_prog(fx->seg, route, &t, &p, 1, NULL,
                                             err, sizeof err),
                   CANARY_EINVAL);
  {
    struct canary_route_view v;
    assert_int_equal(canary_route_read(fx->seg, route, &v), 0);
    assert_int_equal(v.generation, 0);
  }
  /* No progression: actions are refused, ticks do nothing. */
  assert_int_equal(canary_route_publish(fx->seg, route, &t, 1, NULL, err,
                                        sizeof err),
                   0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_ABORT, 0,
                                      NULL, err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(canary_prog_tick(fx->seg, route, canary_clock_us(), NULL),
                   0);
}

static void test_healthy_canary_walks_every_step(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  const uint32_t expect[5] = {1000, 2500, 5000, 7500, 10000};
  double now;
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  for (int step = 0; step < 5; step++) {
    assert_int_equal(canary_effective(fx, route), expect[step]);
    traffic(fx, route, 200, 1, 20000); /* 0.5 % errors, 20 ms */
    /* Not due yet: nothing judged. */
    assert_int_equal(canary_prog_tick(fx->seg, route, now + 0.5 * SEC, &st),
                     0);
    now += 1.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
    assert_int_equal(st.last_result, CANARY_GATE_PASS);
    assert_int_equal(st.window_requests, 200);
  }
  assert_int_equal(st.state, CANARY_PROG_PROMOTED);
  assert_int_equal(canary_effective(fx, route), 10000);
  assert_int_equal(st.evaluations[CANARY_GATE_PASS], 5);
  /* Promoted: further ticks change nothing. */
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 5 * SEC, &st), 0);
}

static void test_error_burst_rolls_back_at_once(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now;
  uint32_t gen;
  int route;

  runbook(&p);
  p.judge.rollback_error_rate = 0.10;
  route = test_route_with(fx, &p);
  now = canary_clock_us();           /* the window opened at the publish */
  traffic(fx, route, 100, 20, 5000); /* 20 % errors */
  /* Well inside the window: the immediate limit does not wait. */
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 0.2 * SEC, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_non_null(strstr(st.reason, "rolled back at once"));
  assert_int_equal(canary_effective(fx, route), 0);
  for (int i = 0; i < 20000; i++)
    assert_int_equal(canary_route_pick(fx->seg, route, NULL, 0, &gen), 0);
  for (int i = 0; i < 2000; i++) {
    char key[32];
    snprintf(key, sizeof key, "user-%d", i);
    assert_int_equal(
        canary_route_pick(fx->seg, route, key, strlen(key), &gen), 0);
  }
}

static void test_p99_breach_rolls_back_after_failure_limit(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now;
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  for (uint32_t w = 1; w <= 3; w++) {
    traffic(fx, route, 95, 0, 20000);
    traffic(fx, route, 5, 0, 3000000); /* 5 % at 3 s: p99 breach */
    now += 1.01 * SEC;
    canary_prog_tick(fx->seg, route, now, &st);
    assert_int_equal(st.last_result, CANARY_GATE_FAIL);
    assert_non_null(strstr(st.reason, "p99"));
    if (w < 3) {
      assert_int_equal(st.state, CANARY_PROG_RUNNING);
      assert_int_equal(st.failures, w);
      assert_int_equal(canary_effective(fx, route), 1000);
    }
  }
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_int_equal(canary_effective(fx, route), 0);
  assert_int_equal(st.evaluations[CANARY_GATE_FAIL], 3);
}

static void test_a_good_window_resets_failures(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now;
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  traffic(fx, route, 100, 50, 1000);
  now += 1.01 * SEC;
  canary_prog_tick(fx->seg, route, now, &st);
  assert_int_equal(st.failures, 1);
  assert_non_null(strstr(st.reason, "error rate"));
  traffic(fx, route, 100, 0, 1000);
  now += 1.01 * SEC;
  canary_prog_tick(fx->seg, route, now, &st);
  assert_int_equal(st.failures, 0);
  assert_int_equal(st.step, 1);
}

static void test_too_few_requests_never_promote(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now;
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  for (int w = 0; w < 4; w++) {
    traffic(fx, route, 10, 0, 1000); /* below min_requests 50 */
    now += 1.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 1);
    assert_int_equal(st.last_result, CANARY_GATE_INCONCLUSIVE);
  }
  assert_int_equal(st.step, 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.evaluations[CANARY_GATE_INCONCLUSIVE], 4);
  assert_int_equal(canary_effective(fx, route), 1000);
}

static void test_time_based_without_limits(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now;
  int route;

  runbook(&p);
  p.judge.max_error_rate = p.judge.max_p95_us = p.judge.max_p99_us = -1;
  p.on_success = CANARY_PROG_HOLD;
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  for (int w = 0; w < 5; w++) {
    now += 1.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  }
  assert_int_equal(st.state, CANARY_PROG_PAUSED); /* hold at the end */
  assert_int_equal(canary_effective(fx, route), 10000);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      NULL, NULL, 0),
                   0);
  canary_prog_status(fx->seg, route, now, &st);
  assert_int_equal(st.state, CANARY_PROG_PROMOTED);
}

static void test_operator_actions(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now;
  char err[256];
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_RESUME, now,
                                      NULL, err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PAUSE, now,
                                      NULL, err, sizeof err),
                   0);
  traffic(fx, route, 100, 0, 1000);
  now += 5 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 0);
  assert_int_equal(st.state, CANARY_PROG_PAUSED);
  assert_int_equal(st.step, 0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_RESUME, now,
                                      NULL, err, sizeof err),
                   0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      NULL, err, sizeof err),
                   0);
  assert_int_equal(canary_effective(fx, route), 2500);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_ABORT, now,
                                      NULL, err, sizeof err),
                   0);
  assert_int_equal(canary_effective(fx, route), 0);
  canary_prog_status(fx->seg, route, now, &st);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_non_null(strstr(st.reason, "aborted by operator"));
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_ABORT, now,
                                      NULL, err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      NULL, err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(
      canary_prog_action(fx->seg, route, 99, now, NULL, err, sizeof err),
      CANARY_EINVAL);
}

static void test_config_change_restarts_same_config_does_not(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  double now;
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  traffic(fx, route, 100, 0, 1000);
  now += 1.01 * SEC;
  canary_prog_tick(fx->seg, route, now, &st);
  assert_int_equal(st.step, 1);
  /* Another worker applies the same config: the progression goes on. */
  test_table(&t, "up", 2, w);
  assert_int_equal(
      canary_route_publish_prog(fx->seg, route, &t, &p, 7, NULL, NULL, 0), 0);
  assert_int_equal(canary_effective(fx, route), 2500);
  /* A changed config starts over at step 1. */
  assert_int_equal(
      canary_route_publish_prog(fx->seg, route, &t, &p, 8, NULL, NULL, 0), 0);
  assert_int_equal(canary_effective(fx, route), 1000);
  canary_prog_status(fx->seg, route, now, &st);
  assert_int_equal(st.step, 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
}

/* N forked workers tick at the same moment, with the same clock, round
 * after round: each due window must be judged exactly once.  They wait
 * at a start line (a word in shared memory they spin on) so that they
 * really race for the window; windows stay inconclusive (no traffic), so
 * the progression never ends and every round has a window to judge. */
#define JUDGES 6
#define JUDGE_ROUNDS 200

struct judge_race {
  uint32_t round;  /* the start line: children go when it reaches theirs */
  uint32_t done;   /* ticks finished, over all rounds */
  uint32_t busy;   /* ticks that found the writer lock held */
  double now[JUDGE_ROUNDS + 1];
  uint32_t judged[JUDGE_ROUNDS + 1]; /* ticks that judged, per round */
};

static void judge_child(canary_seg_t *seg, int route, struct judge_race *sh,
                        uint32_t rounds) {
  for (uint32_t r = 1; r <= rounds; r++) {
    int rc;
    while (__atomic_load_n(&sh->round, __ATOMIC_ACQUIRE) < r)
      ; /* spin: a sleep would spread the start over a millisecond */
    rc = canary_prog_tick(seg, route, sh->now[r], NULL);
    CHILD_CHECK(rc >= 0 || rc == CANARY_EBUSY, 2);
    if (rc >= 1)
      __atomic_add_fetch(&sh->judged[r], 1, __ATOMIC_SEQ_CST);
    if (rc == CANARY_EBUSY)
      __atomic_add_fetch(&sh->busy, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&sh->done, 1, __ATOMIC_SEQ_CST);
  }
  _exit(0);
}

static void test_one_judge_per_window_across_processes(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct judge_race *sh = test_shared_alloc(sizeof *sh);
  uint32_t rounds = (uint32_t)test_scaled_min(JUDGE_ROUNDS, 20);
  pid_t kids[JUDGES];
  int route;

  assert_non_null(sh);
  runbook(&p);
  route = test_route_with(fx, &p);
  for (uint32_t r = 1; r <= rounds; r++)
    sh->now[r] = canary_clock_us() + 1.5 * SEC + (double)r * 1.1 * SEC;
  /* The children tick through the handle they inherit, as nginx workers
   * use one their master opened: each reopens its lock descriptor. */
  for (int k = 0; k < JUDGES; k++) {
    kids[k] = test_fork();
    assert_true(kids[k] >= 0);
    if (kids[k] == 0)
      judge_child(fx->seg, route, sh, rounds);
  }
  for (uint32_t r = 1; r <= rounds; r++) {
    uint64_t judged;
    __atomic_store_n(&sh->round, r, __ATOMIC_RELEASE);
    while (__atomic_load_n(&sh->done, __ATOMIC_ACQUIRE) < r * JUDGES)
      usleep(50);
    canary_prog_status(fx->seg, route, sh->now[r], &st);
    judged = st.evaluations[CANARY_GATE_PASS] +
             st.evaluations[CANARY_GATE_FAIL] +
             st.evaluations[CANARY_GATE_INCONCLUSIVE];
    if (sh->judged[r] != 1 || judged != r)
      fail_msg("round %u: %u workers judged the window (%llu windows "
               "judged in all, want %u)",
               r, sh->judged[r], (unsigned long long)judged, r);
    assert_int_equal(sh->busy, 0); /* only the claim winner locks */
  }
  for (int k = 0; k < JUDGES; k++)
    test_wait_ok(kids[k]);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 0);
  assert_int_equal(st.evaluations[CANARY_GATE_INCONCLUSIVE], rounds);
  test_shared_free(sh, sizeof *sh);
}

static void test_clock_restart_opens_a_fresh_window(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  /* The window opened "in the future" of a clock that restarted. */
  assert_int_equal(canary_prog_tick(fx->seg, route, 1.0 * SEC, &st), 0);
  traffic(fx, route, 100, 0, 1000);
  assert_int_equal(canary_prog_tick(fx->seg, route, 2.1 * SEC, &st), 2);
  assert_int_equal(st.step, 1);
}

/* ---- judging against stable, dry runs, the decision log -------------- */

/* n stable (upstream 0) responses: `errors` of them 503, at latency_us. */
static void stable_traffic(struct test_fx *fx, int route, int n, int errors,
                           uint64_t latency_us) {
  for (int i = 0; i < n; i++)
    assert_int_equal(canary_route_record(fx->seg, route, 0, latency_us,
                                         i < errors ? 503 : 200, -1),
                     0);
}

static struct canary_decision *decision_log(void) {
  return t_alloc(CANARY_DECISIONS * sizeof(struct canary_decision));
}

/* The runbook's relative rules, far below the absolute limits. */
static void relative(struct canary_prog_params *p) {
  runbook(p);
  p->failure_limit = 1;
  p->judge.max_p99_ratio = 2;
}

static void test_latency_regression_against_stable(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_decision *log = decision_log();
  double now = canary_clock_us();
  char *metrics = t_alloc(1 << 20);
  size_t len;
  int route;

  relative(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  /* 60 ms against 20 ms: 3x stable, far below max_p99_ms 2000. */
  stable_traffic(fx, route, 900, 0, 20000);
  traffic(fx, route, 100, 0, 60000);
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_int_equal(canary_effective(fx, route), 0);
  assert_non_null(strstr(st.reason, "rolled back after 1 failed windows"));
  assert_non_null(strstr(st.reason, "max_p99_ratio"));
  assert_int_equal(st.decided, 1);
  assert_int_equal(st.decisions, 1);

  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 50), 1);
  assert_int_equal(log[0].seq, 1);
  assert_int_equal(log[0].origin, CANARY_ORIGIN_WINDOW);
  assert_int_equal(log[0].action, CANARY_DO_ROLLBACK);
  assert_int_equal(log[0].dry_run, 0);
  assert_int_equal(log[0].step_weight, 1000);
  assert_int_equal(log[0].weight, 0);
  assert_int_equal(log[0].state, CANARY_PROG_ROLLED_BACK);
  assert_int_equal(log[0].judge.verdict, CANARY_GATE_FAIL);
  assert_int_equal(log[0].judge.failed_gate, CANARY_GATE_P99_RATIO);
  assert_int_equal(log[0].judge.canary_requests, 100);
  assert_int_equal(log[0].judge.stable_requests, 900);
  assert_float_equal(log[0].judge.gates[CANARY_GATE_P99_RATIO].value, 3.0,
                     0.05);
  assert_int_equal(log[0].judge.gates[CANARY_GATE_P99].check,
                   CANARY_CHECK_PASS);
  assert_true(log[0].unix_ms > 1500000000000ull);
  assert_float_equal(log[0].window_ms, 1010, 50);

  /* The metrics show the last judged window's gates. */
  assert_int_equal(canary_prom_render(fx->seg, metrics, 1 << 20, &len), 0);
  metrics[len] = '\0';
  assert_non_null(strstr(
      metrics, "canary_gate_value{route=\"ai\",gate=\"p99_ratio\"} 2.99"));
  assert_non_null(strstr(
      metrics, "canary_gate_limit{route=\"ai\",gate=\"p99_ratio\"} 2\n"));
  assert_non_null(
      strstr(metrics, "canary_gate_limit{route=\"ai\",gate=\"p99\"} 2\n"));
  assert_non_null(strstr(metrics, "canary_gate_evaluations_total{route=\"ai\","
                                  "result=\"fail\"} 1\n"));
  assert_null(strstr(metrics, ",dry_run="));
}

static void test_stable_is_judged_over_the_same_window(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now = canary_clock_us();
  int route;

  relative(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  /* Window 1: both sides slow alike (a slow dependency): passes. */
  stable_traffic(fx, route, 900, 0, 100000);
  traffic(fx, route, 100, 0, 100000);
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.step, 1);
  /* Window 2: stable is fast again, the canary 3x slower than it.
   * Against stable's cumulative history (mostly 100 ms) it would pass. */
  stable_traffic(fx, route, 750, 0, 20000);
  traffic(fx, route, 250, 0, 60000);
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_non_null(strstr(st.reason, "2.99x stable's 20.1 ms"));
}

static void test_immediate_p99_ratio_rolls_back_mid_window(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_decision *log = decision_log();
  double now = canary_clock_us();
  int route;

  runbook(&p);
  p.judge.rollback_p99_ratio = 3;
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  stable_traffic(fx, route, 450, 0, 10000);
  traffic(fx, route, 50, 0, 25000); /* 2.5x: below the limit */
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 0.2 * SEC, &st), 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  traffic(fx, route, 50, 0, 45000); /* p99 now 4.5x */
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 0.3 * SEC, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_non_null(strstr(st.reason, "rolled back at once"));
  assert_non_null(strstr(st.reason, "rollback_p99_ratio 3.00"));
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 50), 1);
  assert_int_equal(log[0].origin, CANARY_ORIGIN_IMMEDIATE);
  assert_int_equal(log[0].action, CANARY_DO_ROLLBACK);
  assert_int_equal(log[0].judge.rollback, 1);
  assert_int_equal(st.decided, log[0].seq);
}

static void test_a_shared_outage_does_not_roll_back(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now = canary_clock_us();
  int route;

  runbook(&p);
  p.judge.max_error_rate = -1;
  p.judge.max_error_rate_delta = 0.02;
  p.failure_limit = 1;
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  for (int w = 0; w < 4; w++) {
    stable_traffic(fx, route, 900, 45, 20000); /* 5 % on both sides */
    traffic(fx, route, 200, 10, 20000);
    now += 1.01 * SEC;
    canary_prog_tick(fx->seg, route, now, &st);
    assert_int_equal(st.last_result, CANARY_GATE_PASS);
  }
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 4);
}

static void test_statistical_canary_equal_to_stable_promotes(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  const uint32_t steps[2] = {5000, 10000};
  double now = canary_clock_us();
  int route;

  runbook(&p);
  p.nsteps = 2;
  memcpy(p.steps, steps, sizeof steps);
  test_judge_unset(&p.judge);
  p.judge.analysis = CANARY_ANALYSIS_STATISTICAL;
  p.judge.min_requests = 100;
  route = test_route_with(fx, &p);
  now = canary_clock_us();        /* the window opened at the publish */
  for (int i = 0; i < 300; i++) { /* the same spread on both sides */
    stable_traffic(fx, route, 1, 0, 18000 + 13 * (uint64_t)i);
    traffic(fx, route, 1, 0, 18000 + 13 * (uint64_t)((i * 7) % 300));
  }
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.step, 1);
  assert_int_equal(canary_effective(fx, route), 10000);
  /* At 100 % stable serves nothing: there is nothing to compare with,
   * and that must not hold the canary at its last step forever. */
  traffic(fx, route, 300, 0, 20000);
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_PROMOTED);
  assert_non_null(strstr(st.reason, "no stable traffic"));
}

static void test_dry_run_records_and_changes_nothing(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_decision *log = decision_log();
  const uint32_t steps[3] = {2000, 5000, 10000};
  char *metrics = t_alloc(1 << 20);
  double now = canary_clock_us();
  size_t len;
  int route, n;

  relative(&p);
  p.nsteps = 3;
  memcpy(p.steps, steps, sizeof steps);
  p.failure_limit = 2;
  p.judge.rollback_error_rate = 0.5;
  p.dry_run = 1;
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  /* The configured weights, not the first step's. */
  assert_int_equal(canary_effective(fx, route), 1000);

  /* A healthy window: would step up; nothing moves. */
  stable_traffic(fx, route, 900, 0, 20000);
  traffic(fx, route, 100, 0, 20000);
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 1);
  assert_int_equal(st.step, 0);
  assert_int_equal(st.dry_run, 1);
  assert_non_null(strstr(st.reason, "dry run: would step 2 -> 50.00 %"));
  /* Two regressed windows: would roll back; nothing moves. */
  for (int w = 0; w < 2; w++) {
    stable_traffic(fx, route, 900, 0, 20000);
    traffic(fx, route, 100, 0, 60000);
    now += 1.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 1);
  }
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.failures, 2);
  assert_non_null(strstr(st.reason, "dry run: would roll back after 2"));
  assert_int_equal(canary_effective(fx, route), 1000);
  /* An immediate breach is recorded once per window, however many
   * ticks see it. */
  traffic(fx, route, 100, 100, 20000);
  for (int t = 1; t <= 5; t++)
    canary_prog_tick(fx->seg, route, now + t * 0.1 * SEC, &st);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_non_null(strstr(st.reason, "dry run: would roll back at once"));
  assert_int_equal(canary_effective(fx, route), 1000);

  assert_int_equal(st.evaluations[CANARY_GATE_PASS] +
                       st.evaluations[CANARY_GATE_FAIL] +
                       st.evaluations[CANARY_GATE_INCONCLUSIVE],
                   0);
  assert_int_equal(st.dry_evaluations[CANARY_GATE_PASS], 1);
  assert_int_equal(st.dry_evaluations[CANARY_GATE_FAIL], 3);
  n = canary_prog_decisions(fx->seg, route, 0, log, 50);
  assert_int_equal(n, 4);
  assert_int_equal(log[0].origin, CANARY_ORIGIN_IMMEDIATE);
  assert_int_equal(log[0].action, CANARY_DO_ROLLBACK);
  assert_int_equal(log[1].action, CANARY_DO_ROLLBACK);
  assert_int_equal(log[2].action, CANARY_DO_NOTHING);
  assert_int_equal(log[3].action, CANARY_DO_STEP_UP);
  assert_int_equal(log[0].weight, 0);    /* would roll back */
  assert_int_equal(log[2].weight, 1000); /* would hold */
  assert_int_equal(log[3].weight, 5000); /* would step up */
  for (int i = 0; i < n; i++) {
    assert_int_equal(log[i].dry_run, 1);
    assert_int_equal(log[i].step_weight, 1000);
    assert_int_equal(log[i].state, CANARY_PROG_RUNNING);
  }
  assert_int_equal(canary_prom_render(fx->seg, metrics, 1 << 20, &len), 0);
  metrics[len] = '\0';
  assert_non_null(strstr(metrics, "canary_gate_evaluations_total{route=\"ai\","
                                  "result=\"fail\",dry_run=\"true\"} 3\n"));
  assert_non_null(strstr(metrics, "canary_gate_evaluations_total{route=\"ai\","
                                  "result=\"fail\"} 0\n"));
  assert_non_null(strstr(metrics, "canary_gate_value{route=\"ai\",gate="
                                  "\"rollback_error_rate\",dry_run=\"true\"} "
                                  "1\n"));
  assert_non_null(strstr(metrics, "canary_gate_limit{route=\"ai\",gate="
                                  "\"rollback_error_rate\",dry_run=\"true\"} "
                                  "0.5\n"));
}

static void test_decision_log_keeps_the_last_50_newest_first(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_decision *log = decision_log();
  double now = canary_clock_us();
  canary_seg_t *ro = NULL;
  char err[256];
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 50), 0);
  for (int i = 1; i <= 60; i++) {
    int act = i % 2 ? CANARY_ACT_PAUSE : CANARY_ACT_RESUME;
    assert_int_equal(
        canary_prog_action(fx->seg, route, act, now, &st, err, sizeof err), 0);
    assert_int_equal(st.decided, (uint64_t)i);
  }
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 50), 50);
  for (int i = 0; i < 50; i++) {
    assert_int_equal(log[i].seq, 60 - i);
    assert_int_equal(log[i].origin, CANARY_ORIGIN_OPERATOR);
    assert_int_equal(log[i].action,
                     log[i].seq % 2 ? CANARY_DO_PAUSE : CANARY_DO_RESUME);
    assert_int_equal(log[i].judge.verdict, CANARY_GATE_RESULTS);
    assert_non_null(
        strstr(log[i].judge.reason, log[i].seq % 2 ? "paused" : "resumed"));
  }
  assert_int_equal(canary_prog_decisions(fx->seg, route, 55, log, 3), 3);
  assert_int_equal(log[0].seq, 55);
  assert_int_equal(log[2].seq, 53);
  /* Overwritten, and not yet made. */
  assert_int_equal(canary_prog_decisions(fx->seg, route, 10, log, 3), 0);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 61, log, 3), 0);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, NULL, 3),
                   CANARY_EINVAL);
  /* A failed action records nothing. */
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_RESUME, now,
                                      &st, err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(st.decided, 0);
  assert_int_equal(st.decisions, 60);
  /* canarystat's read-only view reads the same log. */
  assert_true(
      test_seg_open(&ro, fx->path, 1, 1, CANARY_SEG_READONLY, NULL, 0) >= 0);
  assert_int_equal(canary_prog_decisions(ro, route, 0, log, 1), 1);
  assert_int_equal(log[0].seq, 60);
  test_seg_close(ro);
}

/* Readers in other processes copy entries while they are rewritten: no
 * copy may mix two decisions.  The writer cycles pause, resume, promote
 * (12 decisions from step 1 to promoted, then a restart), so the entry a
 * slot held 50 decisions earlier is of another kind, and a torn copy
 * shows an action that disagrees with its own state or reason. */
static int decision_consistent(const struct canary_decision *d) {
  switch (d->action) {
  case CANARY_DO_PAUSE:
    return d->state == CANARY_PROG_PAUSED && d->weight == d->step_weight &&
           strncmp(d->judge.reason, "paused", 6) == 0;
  case CANARY_DO_RESUME:
    return d->state == CANARY_PROG_RUNNING && d->weight == d->step_weight &&
           strncmp(d->judge.reason, "resumed", 7) == 0;
  case CANARY_DO_STEP_UP:
    return d->state == CANARY_PROG_RUNNING && d->weight > d->step_weight &&
           strncmp(d->judge.reason, "stepped", 7) == 0;
  case CANARY_DO_PROMOTE:
    return d->state == CANARY_PROG_PROMOTED && d->weight == 10000 &&
           strncmp(d->judge.reason, "promoted", 8) == 0;
  default:
    return 0;
  }
}

static void test_decision_log_readers_never_see_torn_entries(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  const int acts[3] = {CANARY_ACT_PAUSE, CANARY_ACT_RESUME,
                       CANARY_ACT_PROMOTE};
  double now = canary_clock_us();
  uint64_t total = test_scaled_min(12000, 240) / 12 * 12;
  uint64_t made = 0;
  int route;
  pid_t kids[2];

  runbook(&p);
  route = test_route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  test_table(&t, "up", 2, w);
  for (int k = 0; k < 2; k++) {
    kids[k] = test_fork();
    assert_true(kids[k] >= 0);
    if (kids[k] == 0) {
      static struct canary_decision log[CANARY_DECISIONS];
      uint64_t seen = 0;
      while (seen < total) {
        int n = canary_prog_decisions(fx->seg, route, 0, log, 50);
        CHILD_CHECK(n >= 0 && n <= 50, 2);
        for (int i = 0; i < n; i++) {
          CHILD_CHECK(i == 0 || log[i].seq == log[i - 1].seq - 1, 3);
          CHILD_CHECK(decision_consistent(&log[i]), 4);
        }
        if (n > 0)
          seen = log[0].seq;
      }
      _exit(0);
    }
  }
  for (uint64_t cycle = 0; made < total; cycle++) {
    for (int i = 0; i < 12; i++)
      assert_int_equal(
          canary_prog_action(fx->seg, route, acts[i % 3], now, NULL, NULL, 0),
          0);
    made += 12;
    /* A new configuration starts over at step 1, recording nothing. */
    assert_int_equal(canary_route_publish_prog(fx->seg, route, &t, &p,
                                               100 + cycle, NULL, NULL, 0),
                     0);
  }
  for (int k = 0; k < 2; k++)
    assert_int_equal(test_wait_status(kids[k]), 0);
}

static int setup(void **state) { return test_fx_setup(state, 4, 2); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_params_rejected, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_healthy_canary_walks_every_step,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_error_burst_rolls_back_at_once,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_p99_breach_rolls_back_after_failure_limit, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_a_good_window_resets_failures,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_too_few_requests_never_promote,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_time_based_without_limits, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_operator_actions, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_config_change_restarts_same_config_does_not, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_one_judge_per_window_across_processes, setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_clock_restart_opens_a_fresh_window,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_latency_regression_against_stable,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_stable_is_judged_over_the_same_window, setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_immediate_p99_ratio_rolls_back_mid_window, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_a_shared_outage_does_not_roll_back,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_statistical_canary_equal_to_stable_promotes, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_dry_run_records_and_changes_nothing,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_decision_log_keeps_the_last_50_newest_first, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_decision_log_readers_never_see_torn_entries, setup,
          test_fx_teardown),
  };
  return cmocka_run_group_tests_name("progression", tests, NULL, NULL);
}
