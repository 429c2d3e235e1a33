/*
 * test_bluegreen.c - blue/green progressions (prog.c): preview, the
 * switch in one publish, post-promotion validation, switch-back, actions.
 *
 * Like test_prog.c, the windows run on a synthetic clock passed to
 * canary_prog_tick(); nothing sleeps.  Upstream 0 is blue, 1 is green.
 */
#include "test_util.h"

#define SEC 1e6 /* microseconds */

static void blue_green(struct canary_prog_params *p) {
  memset(p, 0, sizeof *p);
  p->strategy = CANARY_STRATEGY_BLUE_GREEN;
  p->canary = 1;
  p->nsteps = 2;
  p->steps[0] = 0;
  p->steps[1] = CANARY_WEIGHT_SCALE;
  p->interval_ms = 1000;
  p->pre_promotion_ms = 5000;
  p->post_promotion_ms = 3000;
  p->failure_limit = 2;
  p->on_success = CANARY_PROG_PROMOTE;
  test_judge_unset(&p->judge);
  p->judge.min_requests = 50;
  p->judge.max_error_rate = 0.01;
  p->judge.max_p99_us = 100 * 1000.0;
}

/* Blue 100 %, green 0 %, as the schema wants a blue/green route. */
static int bg_route(struct test_fx *fx, const struct canary_prog_params *p,
                    uint64_t hash) {
  struct canary_table t;
  const uint32_t w[2] = {10000, 0};
  char err[256] = "";
  int route = canary_route_claim(fx->seg, "bg", 2, "bg", 2), rc;
  test_table(&t, "up", 2, w);
  rc = canary_route_publish_prog(fx->seg, route, &t, p, hash, NULL, err,
                                 sizeof err);
  if (rc != 0)
    fprintf(stderr, "publish_prog: %s\n", err);
  assert_int_equal(rc, 0);
  return route;
}

/* n responses of upstream `up`: `errors` of them 503, at latency_us. */
static void traffic(struct test_fx *fx, int route, int up, int n, int errors,
                    uint64_t latency_us) {
  for (int i = 0; i < n; i++)
    assert_int_equal(canary_route_record(fx->seg, route, up, latency_us,
                                         i < errors ? 503 : 200, -1),
                     0);
}

static struct canary_route_view view;

static uint32_t green(struct test_fx *fx, int route) {
  assert_int_equal(canary_route_read(fx->seg, route, &view), 0);
  assert_int_equal(view.effective[0] + view.effective[1], CANARY_WEIGHT_SCALE);
  return view.effective[1];
}

static uint64_t generation(struct test_fx *fx, int route) {
  assert_int_equal(canary_route_read(fx->seg, route, &view), 0);
  return view.generation;
}

static uint32_t last_action(struct test_fx *fx, int route) {
  struct canary_decision d;
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, &d, 1), 1);
  return d.action;
}

static void test_params_rejected(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status cur, next;
  struct canary_hist_snapshot *snap = calloc(1, sizeof *snap);
  char err[256];

  assert_non_null(snap);
  blue_green(&p);
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), 0);
  assert_int_equal(canary_prog_check(&p, 3, err, sizeof err), CANARY_EINVAL);
  assert_non_null(strstr(err, "exactly 2 upstreams"));
  p.steps[0] = 1;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  assert_non_null(strstr(err, "steps must be 0 and 10000"));
  blue_green(&p);
  p.pre_promotion_ms = 99;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  assert_non_null(strstr(err, "pre_promotion"));
  blue_green(&p);
  p.post_promotion_ms = 0;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  blue_green(&p);
  p.strategy = 2;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  assert_non_null(strstr(err, "unknown strategy"));
  /* The canary strategy has no blue/green windows. */
  blue_green(&p);
  p.strategy = CANARY_STRATEGY_CANARY;
  p.steps[0] = 1000;
  assert_int_equal(canary_prog_check(&p, 2, err, sizeof err), CANARY_EINVAL);
  assert_non_null(strstr(err, "blue/green's"));
  /* Node scope only: the cluster's judge and apply refuse it. */
  blue_green(&p);
  memset(&cur, 0, sizeof cur);
  cur.state = CANARY_PROG_RUNNING;
  assert_int_equal(canary_prog_judge(&p, snap, snap, &cur, &next, NULL),
                   CANARY_EINVAL);
  {
    int route = bg_route(fx, &p, 5);
    assert_int_equal(canary_prog_apply(fx->seg, route, 5, &cur, 1, NULL,
                                       canary_clock_us(), NULL, err, sizeof err),
                     CANARY_ESTATE);
    assert_non_null(strstr(err, "judged by its node"));
    assert_int_equal(green(fx, route), 0);
  }
  free(snap);
}

static void test_phase_names(void **state) {
  (void)state;
  assert_string_equal(canary_prog_phase(1, CANARY_PROG_RUNNING, 0), "preview");
  assert_string_equal(canary_prog_phase(1, CANARY_PROG_RUNNING, 1),
                      "post_promotion");
  assert_string_equal(canary_prog_phase(1, CANARY_PROG_PAUSED, 0), "paused");
  assert_string_equal(canary_prog_phase(1, CANARY_PROG_ROLLED_BACK, 1),
                      "rolled_back");
  assert_string_equal(canary_prog_phase(0, CANARY_PROG_RUNNING, 1), "running");
  assert_string_equal(canary_prog_phase(0, 9, 0), "unknown");
  assert_string_equal(canary_prog_phase(2, 1, 0), "unknown");
  assert_string_equal(canary_action_name(CANARY_DO_SWITCH), "switch");
}

/* Preview: green has no weight, only its preview traffic is judged over
 * pre_promotion; the pass switches everything to green in exactly one
 * publish; post-promotion windows pass and the release completes. */
static void test_preview_passes_switches_once_and_completes(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  uint64_t gen;
  double now;
  int route;

  blue_green(&p);
  route = bg_route(fx, &p, 1);
  now = canary_clock_us();
  assert_int_equal(green(fx, route), 0);
  for (int i = 0; i < 1000; i++) {
    uint32_t g;
    assert_int_equal(canary_route_pick(fx->seg, route, NULL, 0, &g), 0);
  }
  canary_prog_status(fx->seg, route, now, &st);
  assert_int_equal(st.strategy, CANARY_STRATEGY_BLUE_GREEN);
  assert_string_equal(canary_prog_phase(st.strategy, st.state, st.step),
                      "preview");
  traffic(fx, route, 0, 500, 0, 5000);
  traffic(fx, route, 1, 60, 0, 5000); /* the preview requests */
  /* The preview is one window of pre_promotion, not of interval. */
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 1.5 * SEC, &st), 0);
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 4.5 * SEC, &st), 0);
  gen = generation(fx, route);
  now += 5.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 1);
  assert_int_equal(st.window_requests, 60);
  assert_int_equal(last_action(fx, route), CANARY_DO_SWITCH);
  /* One publish: the next generation already has everything on green. */
  assert_int_equal(generation(fx, route), gen + 1);
  assert_int_equal(green(fx, route), CANARY_WEIGHT_SCALE);
  assert_non_null(strstr(st.reason, "switched all traffic to green"));
  assert_true(st.phase_age_ms < 1);
  /* Post-promotion: green alone (blue has no traffic: absolute gates). */
  for (int w = 0; w < 3; w++) {
    traffic(fx, route, 1, 100, 0, 5000);
    now += 1.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st),
                     w < 2 ? 1 : 2);
    assert_int_equal(st.last_result, CANARY_GATE_PASS);
  }
  assert_int_equal(st.state, CANARY_PROG_PROMOTED);
  assert_int_equal(last_action(fx, route), CANARY_DO_PROMOTE);
  assert_int_equal(green(fx, route), CANARY_WEIGHT_SCALE);
  assert_int_equal(generation(fx, route), gen + 1);
}

/* Too few preview requests: paused (green still dark) until promoted by
 * hand; the operator's promote switches and validation follows. */
static void test_inconclusive_preview_pauses_until_promoted(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  char err[256];
  uint64_t gen;
  double now;
  int route;

  blue_green(&p);
  route = bg_route(fx, &p, 1);
  now = canary_clock_us();
  traffic(fx, route, 1, 10, 0, 5000);
  now += 5.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_PAUSED);
  assert_int_equal(st.last_result, CANARY_GATE_INCONCLUSIVE);
  assert_non_null(strstr(st.reason, "preview inconclusive"));
  assert_int_equal(last_action(fx, route), CANARY_DO_PAUSE);
  assert_int_equal(green(fx, route), 0);
  /* Paused: later windows do nothing. */
  traffic(fx, route, 1, 100, 0, 5000);
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 20 * SEC, &st), 0);
  assert_int_equal(green(fx, route), 0);
  gen = generation(fx, route);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      &st, err, sizeof err),
                   0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 1);
  assert_int_equal(last_action(fx, route), CANARY_DO_SWITCH);
  assert_int_equal(generation(fx, route), gen + 1);
  assert_int_equal(green(fx, route), CANARY_WEIGHT_SCALE);
  /* A promote during the validation ends it. */
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      &st, err, sizeof err),
                   0);
  assert_int_equal(st.state, CANARY_PROG_PROMOTED);
  assert_int_equal(green(fx, route), CANARY_WEIGHT_SCALE);
}

/* A green failing after the switch goes back to blue in one publish;
 * the decision says so. */
static void test_failing_green_is_switched_back(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_decision d;
  uint64_t gen;
  double now;
  int route;

  blue_green(&p);
  route = bg_route(fx, &p, 1);
  now = canary_clock_us();
  traffic(fx, route, 1, 60, 0, 5000);
  now += 5.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.step, 1);
  /* First failed window: still on green (failure_limit 2). */
  traffic(fx, route, 1, 100, 10, 5000);
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 1);
  assert_int_equal(st.failures, 1);
  assert_int_equal(green(fx, route), CANARY_WEIGHT_SCALE);
  gen = generation(fx, route);
  traffic(fx, route, 1, 100, 10, 5000);
  now += 1.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_int_equal(generation(fx, route), gen + 1);
  assert_int_equal(green(fx, route), 0);
  assert_int_equal(view.effective[0], CANARY_WEIGHT_SCALE);
  assert_int_equal(canary_prog_decisions(fx->seg, route, 0, &d, 1), 1);
  assert_int_equal(d.action, CANARY_DO_ROLLBACK);
  assert_int_equal(d.weight, 0);
  assert_int_equal(d.step, 1);
  assert_int_equal(d.judge.verdict, CANARY_GATE_FAIL);
  assert_non_null(strstr(st.reason, "switched back to blue after 2"));
  /* Rolled back is final for this configuration. */
  traffic(fx, route, 1, 100, 0, 5000);
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 10 * SEC, &st), 0);
  assert_int_equal(green(fx, route), 0);
}

/* The immediate limit switches back mid-window, and a failed preview
 * rolls green back without it ever having had traffic. */
static void test_immediate_switch_back_and_failed_preview(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  double now;
  int route;

  blue_green(&p);
  p.judge.rollback_error_rate = 0.2;
  route = bg_route(fx, &p, 1);
  now = canary_clock_us();
  traffic(fx, route, 1, 60, 0, 5000);
  now += 5.01 * SEC;
  assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 2);
  assert_int_equal(st.step, 1);
  traffic(fx, route, 1, 100, 50, 5000);
  assert_int_equal(canary_prog_tick(fx->seg, route, now + 0.2 * SEC, &st), 2);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_non_null(strstr(st.reason, "switched back to blue at once"));
  assert_int_equal(green(fx, route), 0);

  /* Another configuration: its preview fails twice. */
  p.judge.rollback_error_rate = -1;
  route = bg_route(fx, &p, 2);
  now = canary_clock_us();
  for (int w = 0; w < 2; w++) {
    traffic(fx, route, 1, 60, 30, 5000);
    now += 5.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st),
                     w == 0 ? 1 : 2);
    assert_int_equal(green(fx, route), 0);
  }
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  assert_int_equal(st.step, 0);
  assert_non_null(strstr(st.reason, "after its preview failed"));
}

/* abort in every phase: blue has everything at once; resume continues a
 * paused post-promotion validation; promote_full skips it. */
static void test_actions_in_every_phase(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  char err[256];
  double now = canary_clock_us();
  int route;

  blue_green(&p);
  for (uint64_t cfg = 1; cfg <= 3; cfg++) {
    route = bg_route(fx, &p, cfg);
    if (cfg >= 2)
      assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE,
                                          now, &st, err, sizeof err),
                       0);
    if (cfg == 3)
      assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PAUSE,
                                          now, &st, err, sizeof err),
                       0);
    assert_int_equal(green(fx, route), cfg >= 2 ? CANARY_WEIGHT_SCALE : 0);
    assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_ABORT, now,
                                        &st, err, sizeof err),
                     0);
    assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
    assert_int_equal(green(fx, route), 0);
    assert_int_equal(last_action(fx, route), CANARY_DO_ABORT);
    assert_non_null(strstr(st.reason, "all traffic on blue"));
  }
  route = bg_route(fx, &p, 4);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE, now,
                                      &st, err, sizeof err),
                   0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PAUSE, now,
                                      &st, err, sizeof err),
                   0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_RESUME, now,
                                      &st, err, sizeof err),
                   0);
  assert_string_equal(canary_prog_phase(st.strategy, st.state, st.step),
                      "post_promotion");
  route = bg_route(fx, &p, 5);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE_FULL,
                                      now, &st, err, sizeof err),
                   0);
  assert_int_equal(st.state, CANARY_PROG_PROMOTED);
  assert_int_equal(green(fx, route), CANARY_WEIGHT_SCALE);
}

/* A dry run judges the preview and records the switch it would make,
 * and green never gets public traffic. */
static void test_dry_run_only_records(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_decision d;
  uint64_t gen;
  double now;
  int route;

  blue_green(&p);
  p.dry_run = 1;
  route = bg_route(fx, &p, 1);
  now = canary_clock_us();
  gen = generation(fx, route);
  for (int w = 0; w < 2; w++) {
    traffic(fx, route, 1, 60, 0, 5000);
    now += 5.01 * SEC;
    assert_int_equal(canary_prog_tick(fx->seg, route, now, &st), 1);
    assert_int_equal(canary_prog_decisions(fx->seg, route, 0, &d, 1), 1);
    assert_int_equal(d.action, CANARY_DO_SWITCH);
    assert_int_equal(d.dry_run, 1);
    assert_int_equal(d.weight, CANARY_WEIGHT_SCALE);
  }
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 0);
  assert_int_equal(st.dry_evaluations[CANARY_GATE_PASS], 2);
  assert_non_null(strstr(st.reason, "dry run: would switch"));
  assert_int_equal(generation(fx, route), gen);
  assert_int_equal(green(fx, route), 0);
}

/* Forked pickers on one segment while a forked worker's tick switches:
 * every pick of the old generation went to blue, every pick of the new
 * one to green, and no other generation was ever seen. */
#define PICKERS 4

struct switch_race {
  uint32_t go;
  uint32_t stop;
  uint32_t switched;
  uint64_t blue, green;
};

static void picker(canary_seg_t *seg, int route, struct switch_race *sh,
                   uint32_t gen0, int sticky) {
  char key[32];
  uint64_t n = 0;
  while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
    ;
  while (!__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE)) {
    uint32_t g = 0;
    int len = snprintf(key, sizeof key, "user-%llu", (unsigned long long)n++);
    int idx = canary_route_pick(seg, route, sticky ? key : NULL,
                                sticky ? (size_t)len : 0, &g);
    CHILD_CHECK(idx == 0 || idx == 1, 2);
    CHILD_CHECK(g == gen0 || g == gen0 + 1, 3);
    CHILD_CHECK(idx == (g == gen0 + 1), 4);
    __atomic_add_fetch(idx ? &sh->green : &sh->blue, 1, __ATOMIC_RELAXED);
  }
  _exit(0);
}

static void test_switch_is_one_generation_across_processes(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct switch_race *sh = test_shared_alloc(sizeof *sh);
  pid_t kids[PICKERS + 1];
  uint32_t gen0;
  double due;
  int route;

  assert_non_null(sh);
  blue_green(&p);
  route = bg_route(fx, &p, 1);
  gen0 = (uint32_t)generation(fx, route);
  due = canary_clock_us() + 5.01 * SEC;
  traffic(fx, route, 1, 60, 0, 5000);
  for (int k = 0; k < PICKERS; k++) {
    kids[k] = test_fork();
    assert_true(kids[k] >= 0);
    if (kids[k] == 0)
      picker(fx->seg, route, sh, gen0, k % 2);
  }
  /* The switch comes from another worker's tick. */
  kids[PICKERS] = test_fork();
  assert_true(kids[PICKERS] >= 0);
  if (kids[PICKERS] == 0) {
    while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
      ;
    while (__atomic_load_n(&sh->blue, __ATOMIC_RELAXED) < 2000)
      ;
    CHILD_CHECK(canary_prog_tick(fx->seg, route, due, NULL) == 2, 5);
    __atomic_store_n(&sh->switched, 1, __ATOMIC_RELEASE);
    _exit(0);
  }
  __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
  test_wait_ok(kids[PICKERS]);
  while (__atomic_load_n(&sh->green, __ATOMIC_RELAXED) < 2000) {
    /* A picker that saw a mixed or unknown generation has exited. */
    for (int k = 0; k < PICKERS; k++) {
      int st = 0;
      if (waitpid(kids[k], &st, WNOHANG) == kids[k])
        fail_msg("picker %d exited during the switch: status %d", k,
                 WEXITSTATUS(st));
    }
    usleep(100);
  }
  __atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);
  for (int k = 0; k < PICKERS; k++)
    test_wait_ok(kids[k]);
  assert_int_equal(generation(fx, route), (uint64_t)gen0 + 1);
  assert_int_equal(green(fx, route), CANARY_WEIGHT_SCALE);
  test_shared_free(sh, sizeof *sh);
}

/* The metrics name the phase. */
static void test_metrics_report_the_phase(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  size_t cap = 1 << 22, len = 0;
  char *buf = malloc(cap), err[256];
  int route;

  assert_non_null(buf);
  blue_green(&p);
  route = bg_route(fx, &p, 1);
  assert_int_equal(canary_prom_render(fx->seg, buf, cap, &len), 0);
  buf[len] = '\0';
  assert_non_null(strstr(
      buf, "canary_progression_state{route=\"bg\",state=\"preview\"} 1"));
  assert_non_null(strstr(
      buf,
      "canary_progression_state{route=\"bg\",state=\"post_promotion\"} 0"));
  assert_null(strstr(buf, "state=\"running\""));
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_PROMOTE,
                                      canary_clock_us(), NULL, err,
                                      sizeof err),
                   0);
  assert_int_equal(canary_prom_render(fx->seg, buf, cap, &len), 0);
  buf[len] = '\0';
  assert_non_null(strstr(
      buf,
      "canary_progression_state{route=\"bg\",state=\"post_promotion\"} 1"));
  assert_non_null(strstr(
      buf, "canary_progression_state{route=\"bg\",state=\"preview\"} 0"));
  free(buf);
}

static int setup(void **state) {
  return test_fx_setup(state, 4, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_params_rejected, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_phase_names, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_preview_passes_switches_once_and_completes, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_inconclusive_preview_pauses_until_promoted, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_failing_green_is_switched_back,
                                      setup, test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_immediate_switch_back_and_failed_preview, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_dry_run_only_records, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_actions_in_every_phase, setup,
                                      test_fx_teardown),
      cmocka_unit_test_setup_teardown(
          test_switch_is_one_generation_across_processes, setup,
          test_fx_teardown),
      cmocka_unit_test_setup_teardown(test_metrics_report_the_phase, setup,
                                      test_fx_teardown),
  };
  return cmocka_run_group_tests_name("blue/green", tests, NULL, NULL);
}
