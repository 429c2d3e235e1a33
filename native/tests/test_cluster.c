/*
 * test_cluster.c - the engine's side of a cluster-scoped progression:
 * canary_prog_judge() (a window given as a snapshot, e.g. the sum of every
 * node's), NULL, canary_prog_apply() (a state decided elsewhere, applied
 * without judging) and canary_prog_breach() (the immediate limit alone).
 */
#include "test_util.h"

#define SEC 1e6 /* microseconds */

static void runbook(struct canary_prog_params *p) {
  const uint32_t steps[3] = {1000, 5000, 10000};
  test_runbook(p, steps, 3, 2);
}

/* A window of n requests at latency_us, `errors` of them 503. */
static void window_of(struct canary_hist_snapshot *w, uint64_t n,
                      uint64_t errors, uint64_t latency_us) {
  memset(w, 0, sizeof *w);
  w->buckets[canary_hist_bucket_of(latency_us)] = n;
  w->status[5] = errors;
  w->status[2] = n - errors;
  w->sum_us = n * latency_us;
}

static void running_at(struct canary_prog_status *st, uint32_t step) {
  memset(st, 0, sizeof *st);
  st->state = CANARY_PROG_RUNNING;
  st->step = step;
}

static uint32_t canary_effective(struct test_fx *fx, int route,
                                 uint64_t *gen) {
  struct canary_route_view v;
  assert_int_equal(canary_route_read(fx->seg, route, &v), 0);
  if (gen != NULL)
    *gen = v.generation;
  return v.effective[1];
}

static void test_judge_rejects_what_it_cannot_judge(void **state) {
  struct canary_prog_params p;
  struct canary_hist_snapshot w;
  struct canary_prog_status cur, next;
  (void)state;

  runbook(&p);
  window_of(&w, 100, 0, 1000);
  running_at(&cur, 0);
  assert_int_equal(canary_prog_judge(NULL, &w, NULL, &cur, &next, NULL),
                   CANARY_EINVAL);
  assert_int_equal(canary_prog_judge(&p, NULL, NULL, &cur, &next, NULL),
                   CANARY_EINVAL);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, NULL, NULL), CANARY_EINVAL);
  p.interval_ms = 1;
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_EINVAL);
  runbook(&p);
  cur.state = CANARY_PROG_PAUSED;
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_ESTATE);
  running_at(&cur, 3);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_ESTATE);
}

static void test_judge_steps_fails_and_promotes_like_a_node(void **state) {
  struct canary_prog_params p;
  struct canary_hist_snapshot w;
  struct canary_prog_status cur, next;
  (void)state;

  runbook(&p);
  running_at(&cur, 0);
  /* Too few requests: inconclusive, nothing moves. */
  window_of(&w, 49, 0, 1000);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_GATE_INCONCLUSIVE);
  assert_int_equal(next.step, 0);
  assert_int_equal(next.state, CANARY_PROG_RUNNING);
  assert_int_equal(next.evaluations[CANARY_GATE_INCONCLUSIVE], 1);
  /* A passing window steps up. */
  window_of(&w, 100, 0, 1000);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_GATE_PASS);
  assert_int_equal(next.step, 1);
  assert_int_equal(next.step_weight, 5000);
  assert_int_equal(next.window_requests, 100);
  assert_non_null(strstr(next.reason, "step 2 -> 50.00 %"));
  /* A failing window counts; failure_limit of them roll back. */
  cur = next;
  window_of(&w, 100, 5, 1000);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_GATE_FAIL);
  assert_int_equal(next.state, CANARY_PROG_RUNNING);
  assert_int_equal(next.failures, 1);
  assert_int_equal(next.step, 1);
  cur = next;
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_GATE_FAIL);
  assert_int_equal(next.state, CANARY_PROG_ROLLED_BACK);
  assert_int_equal(next.step_weight, 0);
  assert_non_null(strstr(next.reason, "rolled back after 2 failed windows"));
  /* The last step passing promotes (or holds). */
  running_at(&cur, 2);
  window_of(&w, 100, 0, 1000);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_GATE_PASS);
  assert_int_equal(next.state, CANARY_PROG_PROMOTED);
  p.on_success = CANARY_PROG_HOLD;
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_GATE_PASS);
  assert_int_equal(next.state, CANARY_PROG_PAUSED);
  assert_int_equal(next.step, 2);
}

static void test_apply_rejects_bad_states(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  char err[256];
  int bare = canary_route_claim(fx->seg, "bare", 4, "", 0), route;

  test_table(&t, "up", 2, w);
  assert_int_equal(
      canary_route_publish(fx->seg, bare, &t, 1, NULL, err, sizeof err), 0);
  running_at(&st, 1);
  assert_int_equal(
      canary_prog_apply(fx->seg, bare, 1, &st, 0, NULL, 0, NULL, err, sizeof err),
      CANARY_ESTATE);
  assert_non_null(strstr(err, "no progression"));
  assert_int_equal(
      canary_prog_apply(fx->seg, 99, 7, &st, 0, NULL, 0, NULL, err, sizeof err),
      CANARY_EINVAL);
  runbook(&p);
  route = test_route_with(fx, &p);
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, NULL, 0, NULL, 0, NULL, err, sizeof err),
      CANARY_EINVAL);
  st.state = CANARY_PROG_NONE;
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, 0, NULL, err, sizeof err),
      CANARY_EINVAL);
  running_at(&st, 3); /* a 3-step progression has steps 0..2 */
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, 0, NULL, err, sizeof err),
      CANARY_EINVAL);
  assert_non_null(strstr(err, "step 4 of a 3-step"));
  /* A state decided for another configuration of the route. */
  running_at(&st, 1);
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 8, &st, 0, NULL, 0, NULL, err, sizeof err),
      CANARY_ESTATE);
  assert_non_null(strstr(err, "another configuration"));
  assert_int_equal(canary_effective(fx, route, NULL), 1000);
}

static void test_apply_sets_weights_without_judging(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st, got;
  char err[256];
  uint64_t gen1, gen2;
  double now = canary_clock_us();
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  running_at(&st, 1);
  st.last_result = CANARY_GATE_PASS;
  snprintf(st.reason, sizeof st.reason, "cluster says 50");
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, &st, 1, NULL, now, NULL, err, sizeof err), 2);
  assert_int_equal(canary_effective(fx, route, &gen1), 5000);
  assert_int_equal(canary_prog_status(fx->seg, route, now, &got), 0);
  assert_int_equal(got.step, 1);
  assert_int_equal(got.evaluations[CANARY_GATE_PASS], 1);
  assert_string_equal(got.reason, "cluster says 50");
  /* The same state again publishes nothing. */
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, now, NULL, err, sizeof err), 1);
  assert_int_equal(canary_effective(fx, route, &gen2), 5000);
  assert_int_equal(gen1, gen2);
  /* Paused keeps the step's weight. */
  st.state = CANARY_PROG_PAUSED;
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, now, NULL, err, sizeof err), 2);
  assert_int_equal(canary_effective(fx, route, NULL), 5000);
  /* Rolled back: canary at 0, and no later state brings it back. */
  st.state = CANARY_PROG_ROLLED_BACK;
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, now, NULL, err, sizeof err), 2);
  assert_int_equal(canary_effective(fx, route, NULL), 0);
  running_at(&st, 2);
  assert_int_equal(
      canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, now, NULL, err, sizeof err),
      CANARY_ESTATE);
  assert_non_null(strstr(err, "rolled back on this node"));
  assert_int_equal(canary_effective(fx, route, NULL), 0);
}

/* Every node's decision log holds a cluster-scoped progression: the node
 * that judged a window records the judge's whole result, every other node
 * the state it applied (CANARY_ORIGIN_CLUSTER: verdict, the canary's
 * window figures, the reason), and a state that was not judged and
 * changes nothing is not recorded again. */
static void test_apply_records_the_decisions(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_hist_snapshot w;
  struct canary_prog_status cur, next;
  struct canary_judge_result j, other;
  struct canary_decision log[8];
  char err[256];
  uint64_t seq = 99;
  double now = canary_clock_us();
  int route;

  runbook(&p);
  route = test_route_with(fx, &p);
  /* The node that judged: a passing window at step 0, gate by gate. */
  running_at(&cur, 0);
  window_of(&w, 100, 0, 1000);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, &j),
                   CANARY_GATE_PASS);
  assert_int_equal(j.canary_requests, 100);
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 1, &j, now,
                                     &seq, err, sizeof err),
                   2);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 8), 1);
  assert_true(seq > 0);
  assert_int_equal(log[0].seq, seq);
  assert_int_equal(log[0].origin, CANARY_ORIGIN_WINDOW);
  assert_int_equal(log[0].action, CANARY_DO_STEP_UP);
  assert_int_equal(log[0].step, 0);
  assert_int_equal(log[0].step_weight, 1000);
  assert_int_equal(log[0].weight, 5000);
  assert_int_equal(log[0].window_ms, 1000);
  assert_int_equal(log[0].judge.verdict, CANARY_GATE_PASS);
  assert_int_equal(log[0].judge.gates[CANARY_GATE_ERROR_RATE].check,
                   CANARY_CHECK_PASS);
  assert_string_equal(log[0].judge.reason, j.reason);

  /* Another node applies the next window's failure: a summary.  A judge
   * result that is not this state's verdict is refused. */
  cur = next;
  window_of(&w, 100, 5, 1000);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, &other),
                   CANARY_GATE_FAIL);
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 1, &j, now,
                                     &seq, err, sizeof err),
                   CANARY_EINVAL);
  assert_int_equal(seq, 0);
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 0, &other,
                                     now, &seq, err, sizeof err),
                   CANARY_EINVAL);
  other.failed_gate = CANARY_GATES + 1; /* not a judge's result */
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 1, &other,
                                     now, &seq, err, sizeof err),
                   CANARY_EINVAL);
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 1, NULL, now,
                                     &seq, err, sizeof err),
                   1);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 8), 2);
  assert_int_equal(log[0].seq, seq);
  assert_int_equal(log[0].origin, CANARY_ORIGIN_CLUSTER);
  assert_int_equal(log[0].action, CANARY_DO_NOTHING);
  assert_int_equal(log[0].judge.verdict, CANARY_GATE_FAIL);
  assert_int_equal(log[0].judge.canary_requests, 100);
  assert_float_equal(log[0].judge.canary_error_rate, 0.05, 1e-9);
  assert_int_equal(log[0].judge.gates[CANARY_GATE_ERROR_RATE].check,
                   CANARY_CHECK_OFF);
  assert_int_equal(log[0].judge.failed_gate, CANARY_GATES);
  assert_int_equal(log[0].failures, 1);
  assert_int_equal(log[0].step_weight, 5000);
  assert_int_equal(log[0].weight, 5000);
  assert_string_equal(log[0].judge.reason, next.reason);

  /* The same state again, not judged: nothing new. */
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 0, NULL, now,
                                     &seq, err, sizeof err),
                   1);
  assert_int_equal(seq, 0);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 8), 2);

  /* A pause another node's operator made, then its rollback. */
  next.state = CANARY_PROG_PAUSED;
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 0, NULL, now,
                                     &seq, err, sizeof err),
                   2);
  next.state = CANARY_PROG_ROLLED_BACK;
  snprintf(next.reason, sizeof next.reason, "aborted by operator");
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 0, NULL, now,
                                     &seq, err, sizeof err),
                   2);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 8), 4);
  assert_int_equal(log[1].action, CANARY_DO_PAUSE);
  assert_int_equal(log[0].seq, seq);
  assert_int_equal(log[0].origin, CANARY_ORIGIN_CLUSTER);
  assert_int_equal(log[0].action, CANARY_DO_ROLLBACK);
  assert_int_equal(log[0].judge.verdict, CANARY_GATE_RESULTS);
  assert_int_equal(log[0].window_ms, 0);
  assert_int_equal(log[0].weight, 0);
  assert_int_equal(log[0].state, CANARY_PROG_ROLLED_BACK);
  assert_string_equal(log[0].judge.reason, "aborted by operator");
}

/* A dry run on another node: the decision says what the window would
 * have done, and nothing moves. */
static void test_apply_records_a_dry_run(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_hist_snapshot w;
  struct canary_prog_status cur, next;
  struct canary_decision log[2];
  uint64_t seq = 0;
  int route;

  runbook(&p);
  p.dry_run = 1;
  route = test_route_with(fx, &p);
  running_at(&cur, 0);
  window_of(&w, 100, 0, 1000);
  assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, NULL),
                   CANARY_GATE_PASS);
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 1, NULL,
                                     canary_clock_us(), &seq, NULL, 0),
                   1);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 2), 1);
  assert_int_equal(log[0].seq, seq);
  assert_int_equal(log[0].dry_run, 1);
  assert_int_equal(log[0].action, CANARY_DO_STEP_UP);
  assert_int_equal(log[0].weight, 5000);
  assert_int_equal(log[0].state, CANARY_PROG_RUNNING);
  assert_int_equal(canary_effective(fx, route, NULL), 1000);
  /* A judge's result without the end of its reason: read back as a C
   * string (canary_prog_decisions cuts it). */
  {
    struct canary_judge_result j;
    assert_int_equal(canary_prog_judge(&p, &w, NULL, &cur, &next, &j),
                     CANARY_GATE_PASS);
    memset(j.reason, 'x', sizeof j.reason);
    assert_int_equal(canary_prog_apply(fx->seg, route, 7, &next, 1, &j,
                                       canary_clock_us(), &seq, NULL, 0),
                     1);
    assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 2), 2);
    assert_int_equal(strlen(log[0].judge.reason), sizeof j.reason - 1);
  }
}

/* Every worker of a node may apply the cluster's state: the weights are
 * published once. */
static void test_apply_from_many_processes_publishes_once(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  uint64_t gen0, gen1;
  pid_t kids[6];
  int changed = 0, route;

  runbook(&p);
  route = test_route_with(fx, &p);
  canary_effective(fx, route, &gen0);
  running_at(&st, 2);
  for (int k = 0; k < 6; k++) {
    kids[k] = test_fork();
    assert_true(kids[k] >= 0);
    if (kids[k] == 0) {
      int rc;
      do
        rc = canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, canary_clock_us(), NULL,
                               NULL, 0);
      while (rc == CANARY_EBUSY);
      _exit(rc == 2 ? 2 : rc == 1 ? 1 : 3);
    }
  }
  for (int k = 0; k < 6; k++) {
    int code = test_wait_status(kids[k]);
    assert_true(code == 1 || code == 2);
    changed += code == 2;
  }
  assert_int_equal(changed, 1);
  assert_int_equal(canary_effective(fx, route, &gen1), 10000);
  assert_int_equal(gen1, gen0 + 1);
  /* ...and the change recorded once. */
  {
    struct canary_decision log[8];
    assert_int_equal(canary_prog_decisions(fx->seg, route, 0, log, 8), 1);
    assert_int_equal(log[0].action, CANARY_DO_STEP_UP);
  }
}

static void test_breach_rolls_back_but_never_judges_a_window(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now = canary_clock_us();
  int route;

  runbook(&p);
  p.judge.rollback_error_rate = 0.10;
  route = test_route_with(fx, &p);
  for (int i = 0; i < 100; i++)
    assert_int_equal(canary_route_record(fx->seg, route, 1, 1000, 200, -1), 0);
  /* Windows long past their end: a node-scoped tick would step up. */
  assert_int_equal(canary_prog_breach(fx->seg, route, now + 5 * SEC, &st), 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 0);
  assert_int_equal(st.evaluations[CANARY_GATE_PASS] +
                       st.evaluations[CANARY_GATE_FAIL] +
                       st.evaluations[CANARY_GATE_INCONCLUSIVE],
                   0);
  /* An error burst (30 of 130 > 10 %) rolls back at once. */
  for (int i = 0; i < 30; i++)
    assert_int_equal(canary_route_record(fx->seg, route, 1, 1000, 503, -1), 0);
  assert_int_equal(canary_prog_breach(fx->seg, route, now + 6 * SEC, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_non_null(strstr(st.reason, "rolled back at once"));
  assert_int_equal(canary_effective(fx, route, NULL), 0);
  assert_int_equal(canary_prog_breach(NULL, route, now, NULL), CANARY_EINVAL);
}

/* Applying a state opens a fresh local window for the immediate limit:
 * errors from before it no longer count. */
static void test_apply_restarts_the_local_window(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now = canary_clock_us();
  int route;

  runbook(&p);
  p.judge.rollback_error_rate = 0.10;
  p.judge.min_requests = 10;
  route = test_route_with(fx, &p);
  for (int i = 0; i < 5; i++)
    assert_int_equal(canary_route_record(fx->seg, route, 1, 1000, 503, -1), 0);
  running_at(&st, 1);
  assert_int_equal(canary_prog_apply(fx->seg, route, 7, &st, 0, NULL, now, NULL, NULL, 0),
                   2);
  for (int i = 0; i < 10; i++)
    assert_int_equal(canary_route_record(fx->seg, route, 1, 1000, 200, -1), 0);
  /* 5 errors in 15 would breach; 0 in 10 does not. */
  assert_int_equal(canary_prog_breach(fx->seg, route, now + SEC, &st), 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
}

/* Differential: the same windows judged by a node's own tick and by
 * canary_prog_judge() (given the snapshot difference) end in the same
 * step, state, NULL, failures and verdict, window after window. */
static void test_judge_agrees_with_a_node_tick(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status tick, cur, next;
  struct canary_hist_snapshot before, after, win;
  const int errors[5] = {0, 3, 0, 2, 2}; /* per 100: pass, fail, pass, ... */
  double now;
  int route;

  runbook(&p);
  p.nsteps = 3;
  p.failure_limit = 2;
  route = test_route_with(fx, &p);
  /* After the publish, which starts the first window on the real clock:
   * read before it, a slow publish (valgrind on a loaded machine) left
   * the first window unfinished at now + 1.1 s. */
  now = canary_clock_us();
  running_at(&cur, 0);
  for (int w = 0; w < 5; w++) {
    assert_int_equal(canary_hist_snapshot(fx->seg, route, 1, &before), 0);
    for (int i = 0; i < 100; i++)
      assert_int_equal(canary_route_record(fx->seg, route, 1, 2000,
                                           i < errors[w] ? 503 : 200, -1),
                       0);
    assert_int_equal(canary_hist_snapshot(fx->seg, route, 1, &after), 0);
    memset(&win, 0, sizeof win);
    win.sum_us = after.sum_us - before.sum_us;
    for (int i = 0; i < 6; i++)
      win.status[i] = after.status[i] - before.status[i];
    for (int b = 0; b < CANARY_HIST_BUCKETS; b++)
      win.buckets[b] = after.buckets[b] - before.buckets[b];
    now += 1.1 * SEC;
    assert_true(canary_prog_tick(fx->seg, route, now, &tick) >= 1);
    assert_true(canary_prog_judge(&p, &win, NULL, &cur, &next, NULL) >= 0);
    assert_int_equal(next.state, tick.state);
    assert_int_equal(next.step, tick.step);
    assert_int_equal(next.failures, tick.failures);
    assert_int_equal(next.last_result, tick.last_result);
    assert_int_equal(next.window_requests, tick.window_requests);
    if (next.state != CANARY_PROG_RUNNING)
      break;
    cur = next;
  }
  assert_int_equal(next.state, CANARY_PROG_ROLLED_BACK);
}

static int setup(void **state) {
  return test_fx_setup(state, 8, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_judge_rejects_what_it_cannot_judge),
      cmocka_unit_test(test_judge_steps_fails_and_promotes_like_a_node),
      cmocka_unit_test_setup_teardown(test_judge_agrees_with_a_node_tick,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_apply_rejects_bad_states, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_apply_records_the_decisions,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_apply_records_a_dry_run, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_apply_sets_weights_without_judging,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_apply_from_many_processes_publishes_once, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_breach_rolls_back_but_never_judges_a_window, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_apply_restarts_the_local_window,
                                      setup, test_fx_teardown),
  };
  return cmocka_run_group_tests_name("cluster progression", tests, NULL, NULL);
}
