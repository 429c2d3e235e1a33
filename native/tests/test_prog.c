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
static int route_with(struct test_fx *fx, struct canary_prog_params *p) {
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  char err[256] = "";
  int route = canary_route_claim(fx->seg, "r", 1, "ai", 2), rc;
  test_table(&t, "up", 2, w);
  rc = canary_route_publish_prog(fx->seg, route, &t, p, 7, NULL, err,
                                 sizeof err);
  if (rc != 0)
    fprintf(stderr, "publish_prog: %s\n", err);
  assert_int_equal(rc, 0);
  return route;
}

static void runbook(struct canary_prog_params *p) {
  const uint32_t steps[5] = {1000, 2500, 5000, 7500, 10000};
  memset(p, 0, sizeof *p);
  p->canary = 1;
  p->nsteps = 5;
  memcpy(p->steps, steps, sizeof steps);
  p->interval_ms = 1000;
  p->min_requests = 50;
  p->failure_limit = 3;
  p->on_success = CANARY_PROG_PROMOTE;
  p->max_error_rate = 0.01;
  p->max_p95_us = 1000 * 1000.0;
  p->max_p99_us = 2000 * 1000.0;
  p->rollback_error_rate = -1;
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
  p.max_error_rate = 2.0;
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
                                      err, sizeof err),
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
  route = route_with(fx, &p);
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
  p.rollback_error_rate = 0.10;
  route = route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
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
  route = route_with(fx, &p);
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
  route = route_with(fx, &p);
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
  route = route_with(fx, &p);
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
  p.max_error_rate = p.max_p95_us = p.max_p99_us = -1;
  p.on_success = CANARY_PROG_HOLD;
  route = route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  for (int w = 0; w < 5; w++) {
    now += 1.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  }
  assert_int_equal(st.state, CANARY_PROG_PAUSED); /* hold at the end */
  assert_int_equal(canary_effective(fx, route), 10000);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      NULL, 0),
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
  route = route_with(fx, &p);
  now = canary_clock_us(); /* the window opened at the publish */
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_RESUME, now,
                                      err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PAUSE, now,
                                      err, sizeof err),
                   0);
  traffic(fx, route, 100, 0, 1000);
  now += 5 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 0);
  assert_int_equal(st.state, CANARY_PROG_PAUSED);
  assert_int_equal(st.step, 0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_RESUME, now,
                                      err, sizeof err),
                   0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      err, sizeof err),
                   0);
  assert_int_equal(canary_effective(fx, route), 2500);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_ABORT, now,
                                      err, sizeof err),
                   0);
  assert_int_equal(canary_effective(fx, route), 0);
  canary_prog_status(fx->seg, route, now, &st);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_non_null(strstr(st.reason, "aborted by operator"));
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_ABORT, now,
                                      err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      err, sizeof err),
                   CANARY_ESTATE);
  assert_int_equal(canary_prog_action(fx->seg, route, 99, now, err,
                                      sizeof err),
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
  route = route_with(fx, &p);
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
  route = route_with(fx, &p);
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
  route = route_with(fx, &p);
  /* The window opened "in the future" of a clock that restarted. */
  assert_int_equal(canary_prog_tick(fx->seg, route, 1.0 * SEC, &st), 0);
  traffic(fx, route, 100, 0, 1000);
  assert_int_equal(canary_prog_tick(fx->seg, route, 2.1 * SEC, &st), 2);
  assert_int_equal(st.step, 1);
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
          test_one_judge_per_window_across_processes, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_clock_restart_opens_a_fresh_window,
                                      setup, test_fx_teardown),
  };
  return cmocka_run_group_tests_name("progression", tests, NULL, NULL);
}
