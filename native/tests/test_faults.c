/*
 * test_faults.c - writers killed inside the real publish and judge code.
 *
 * What an operator would notice: a worker killed (OOM, crash, SIGKILL)
 * in the middle of publishing weights or of judging a canary window makes
 * the other workers read a mixed or broken table, fail their picks, see
 * the generation go back, or never publish again; or it leaves a
 * progression that no later config or tick can bring back in line.
 *
 * Every test stops a writer at one named fault point inside the engine
 * (CANARY_FAULT in table.c, publish.c, prog.c; compiled into the test
 * builds only, see fault.c) and SIGKILLs it there.  Forked readers check
 * every table they see the whole time: before, while the writer is
 * stopped, and after it is dead.  While it lives, another writer is
 * refused at once (the lock is held, and nobody waits for it); as soon
 * as it is dead, another writer succeeds, and the state is consistent.
 */
#include "test_util.h"

#include "internal.h" /* fault points, the progression area */

#define F_ROUTES 4u
#define F_UPSTREAMS 4u
#define READERS 2
#define TABLES 3
#define HASH0 0x100u
#define SEC 1e6
#define INTERVAL_MS 1000u

struct shared {
  uint32_t ready;
  uint32_t stop;
  uint64_t reads[READERS];
};

static int setup(void **state) {
  return test_fx_setup(state, F_ROUTES, F_UPSTREAMS);
}

static int teardown(void **state) {
  return test_fx_teardown(state);
}

/* Table k, published with config hash HASH0 + k. */
static void table(int k, struct canary_table *t) {
  static const uint32_t w[TABLES][3] = {
      {9000, 1000, 0}, {5000, 2500, 2500}, {0, 10000, 0}};
  static const uint32_t n[TABLES] = {2, 3, 2};
  static const char *const prefix[TABLES] = {"a", "b", "c"};
  test_table(t, prefix[k], n[k], w[k]);
}

/* canary 1, 10 -> 50 -> 100 %, one window a second; time-based unless
 * `gated` (then a window with more than 10 % of 5xx fails at once). */
static void params(struct canary_prog_params *p, int gated) {
  memset(p, 0, sizeof *p);
  p->canary = 1;
  p->nsteps = 3;
  p->steps[0] = 1000;
  p->steps[1] = 5000;
  p->steps[2] = 10000;
  p->interval_ms = INTERVAL_MS;
  p->failure_limit = 1;
  p->on_success = CANARY_PROG_PROMOTE;
  test_judge_unset(&p->judge);
  p->judge.min_requests = gated ? 10 : 0;
  p->judge.max_error_rate = gated ? 0.1 : -1;
}

/* ---- readers ----------------------------------------------------------- */

/* Exit codes of a reader, for the failure message. */
static const char *reader_failure(int st) {
  switch (st) {
  case 10:
    return "read failed";
  case 11:
    return "generation went back";
  case 12:
    return "a table that was never published (mixed or garbage)";
  case 13:
    return "effective weights do not sum to 10000";
  case 14:
    return "a pick failed";
  case 15:
    return "progression status unreadable or impossible";
  default:
    return "?";
  }
}

/* The view is one of the published tables, whole. */
static int view_ok(const struct canary_route_view *v,
                   const struct canary_table *tables) {
  const struct canary_table *t;
  uint32_t sum = 0;

  if (v->config_hash < HASH0 || v->config_hash >= HASH0 + TABLES)
    return 12;
  t = &tables[v->config_hash - HASH0];
  if (v->n != t->n)
    return 12;
  for (uint32_t i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
    if (i >= t->n) {
      if (v->weights[i] != 0 || v->effective[i] != 0)
        return 12;
      continue;
    }
    if (v->weights[i] != t->weights[i] ||
        strcmp(v->names[i], t->names[i]) != 0)
      return 12;
    sum += v->effective[i];
  }
  return sum == CANARY_WEIGHT_SCALE ? 0 : 13;
}

static void reader(const char *path, int route, struct shared *sh, int me) {
  canary_seg_t *seg = NULL;
  struct canary_table tables[TABLES];
  struct canary_route_view v;
  struct canary_prog_status ps;
  uint64_t last = 0;
  char key[32];

  for (int k = 0; k < TABLES; k++)
    table(k, &tables[k]);
  CHILD_CHECK(test_seg_open(&seg, path, F_ROUTES, F_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  __atomic_add_fetch(&sh->ready, 1, __ATOMIC_SEQ_CST);
  for (uint64_t i = 0; !__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE); i++) {
    int p, rc;
    CHILD_CHECK(canary_route_read(seg, route, &v) == 0, 10);
    CHILD_CHECK(v.generation >= last, 11);
    last = v.generation;
    rc = view_ok(&v, tables);
    CHILD_CHECK(rc == 0, rc);
    p = canary_route_pick(seg, route, NULL, 0, NULL);
    CHILD_CHECK(p >= 0 && p < 3, 14);
    snprintf(key, sizeof key, "user-%llu", (unsigned long long)(i % 997));
    p = canary_route_pick(seg, route, key, strlen(key), NULL);
    CHILD_CHECK(p >= 0 && p < 3, 14);
    CHILD_CHECK(canary_prog_status(seg, route, canary_clock_us(), &ps) == 0,
                15);
    CHILD_CHECK(ps.state <= CANARY_PROG_ROLLED_BACK &&
                    (ps.state == CANARY_PROG_NONE || ps.step < ps.nsteps),
                15);
    __atomic_store_n(&sh->reads[me], i + 1, __ATOMIC_RELEASE);
  }
  test_seg_close(seg);
  _exit(0);
}

/* Waits until every reader has read `n` more times; fails at once if one
 * has stopped (a reader stalled behind the writer hangs here until the
 * watchdog fires, which fails the run too). */
static void readers_progress(struct shared *sh, const pid_t *pids,
                             uint64_t n) {
  uint64_t from[READERS];
  for (int i = 0; i < READERS; i++)
    from[i] = __atomic_load_n(&sh->reads[i], __ATOMIC_ACQUIRE);
  for (int i = 0; i < READERS; i++) {
    while (__atomic_load_n(&sh->reads[i], __ATOMIC_ACQUIRE) < from[i] + n) {
      int st;
      if (waitpid(pids[i], &st, WNOHANG) == pids[i]) {
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        for (int j = 0; j < TEST_MAX_CHILDREN; j++)
          if (test_children()[j] == pids[i])
            test_children()[j] = 0;
        fail_msg("reader %d stopped with %d: %s", i, code,
                 reader_failure(code));
      }
      usleep(500);
    }
  }
}

static void start_readers(struct test_fx *fx, int route, struct shared *sh,
                          pid_t *pids) {
  for (int i = 0; i < READERS; i++) {
    pids[i] = test_fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0)
      reader(fx->path, route, sh, i);
  }
  while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < READERS)
    usleep(500);
}

static void stop_readers(struct shared *sh, const pid_t *pids) {
  __atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);
  for (int i = 0; i < READERS; i++) {
    int st = test_wait_status(pids[i]);
    if (st != 0)
      fail_msg("reader %d exited %d: %s", i, st, reader_failure(st));
  }
}

/* ---- the writer --------------------------------------------------------- */

enum action { PUBLISH_LOOP, PUBLISH_PROG, TICK };

struct writer {
  const char *point;
  unsigned nth;       /* stop at the nth time the point is reached */
  enum action action;
  double now_us;      /* TICK: the clock it ticks with */
};

static void writer(const char *path, int route, const struct writer *w,
                   int fd) {
  canary_seg_t *seg = NULL;
  struct canary_table t;
  struct canary_prog_params p;

  CHILD_CHECK(test_seg_open(&seg, path, F_ROUTES, F_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  canary__fault_arm(w->point, w->nth, fd);
  switch (w->action) {
  case PUBLISH_LOOP:
    for (uint32_t i = 1;; i++) {
      table((int)(i % 2), &t);
      CHILD_CHECK(canary_route_publish(seg, route, &t, HASH0 + i % 2, NULL,
                                       NULL, 0) == 0,
                  3);
    }
    break;
  case PUBLISH_PROG:
    table(1, &t);
    params(&p, 0);
    canary_route_publish_prog(seg, route, &t, &p, HASH0 + 1, NULL, NULL, 0);
    break;
  case TICK:
    canary_prog_tick(seg, route, w->now_us, NULL);
    break;
  }
  _exit(4); /* never reached the point */
}

/* Forks the writer and waits until it stands at its fault point. */
static pid_t stop_writer_at(struct test_fx *fx, int route,
                            const struct writer *w) {
  char got[64] = "";
  int pfd[2];
  ssize_t n;
  pid_t pid;

  assert_int_equal(pipe(pfd), 0);
  pid = test_fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(pfd[0]);
    writer(fx->path, route, w, pfd[1]);
  }
  close(pfd[1]);
  n = read(pfd[0], got, sizeof got - 1);
  close(pfd[0]);
  if (n <= 0)
    fail_msg("the writer exited %d before reaching %s",
             test_wait_status(pid), w->point);
  assert_string_equal(got, w->point);
  return pid;
}

/* Kills the stopped writer.  `zombie`: leave it unreaped (a parent that has
 * not waited yet); the caller reaps it later with test_wait_status(). */
static void kill_writer(pid_t pid, int zombie) {
  assert_int_equal(kill(pid, SIGKILL), 0);
  if (zombie) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    assert_int_equal(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
    assert_int_equal(si.si_pid, pid);
  } else {
    assert_int_equal(test_wait_status(pid), 128 + SIGKILL);
  }
}

static uint64_t reads_enough(void) {
  return test_scaled_min(3000, 60);
}

static void view(struct test_fx *fx, int route, struct canary_route_view *v) {
  assert_int_equal(canary_route_read(fx->seg, route, v), 0);
}

static uint64_t publish_now(struct test_fx *fx, int route, int k) {
  struct canary_table t;
  char err[256] = "";
  uint64_t gen = 0;
  int rc;

  table(k, &t);
  rc = canary_route_publish(fx->seg, route, &t, HASH0 + (uint64_t)k, &gen, err,
                            sizeof err);
  if (rc != 0)
    fail_msg("publish after the writer died: %d (%s): %s", rc,
             canary_strerror(rc), err);
  return gen;
}

/* While the writer is stopped holding the route's lock: another writer is
 * refused at once, with a reason, and nothing changes. */
static void refused_while_held(struct test_fx *fx, int route) {
  struct canary_route_view before, after;
  struct canary_table t;
  char err[256] = "";
  int rc;

  view(fx, route, &before);
  table(2, &t);
  rc = canary_route_publish(fx->seg, route, &t, HASH0 + 2, NULL, err,
                            sizeof err);
  assert_int_equal(rc, CANARY_EBUSY);
  assert_true(err[0] != '\0');
  err[0] = '\0';
  rc = canary_prog_action(fx->seg, route, CANARY_ACT_ABORT, canary_clock_us(),
                          NULL, err, sizeof err);
  assert_int_equal(rc, CANARY_EBUSY);
  assert_non_null(strstr(err, "retry"));
  view(fx, route, &after);
  assert_int_equal(after.generation, before.generation);
}

/* ---- publish ------------------------------------------------------------ */

/* A writer stopped at `point` during its third publish (table 1, after
 * tables 1 and 0), then killed. */
static void killed_in_publish(struct test_fx *fx, const char *point,
                              int zombie) {
  struct shared *sh = test_shared_alloc(sizeof *sh);
  struct writer w = {point, 3, PUBLISH_LOOP, 0};
  struct canary_route_view v;
  uint64_t gen_dead, gen;
  pid_t readers[READERS], pid;
  int route = canary_route_claim(fx->seg, "killed", 6, "", 0);

  assert_non_null(sh);
  assert_true(route >= 0);
  publish_now(fx, route, 0);
  start_readers(fx, route, sh, readers);
  pid = stop_writer_at(fx, route, &w);

  /* Readers are not held up by the stopped writer, and still see the
   * table of its second publish. */
  readers_progress(sh, readers, reads_enough());
  view(fx, route, &v);
  assert_int_equal(v.config_hash, HASH0 + 0);
  gen_dead = v.generation;
  refused_while_held(fx, route);

  kill_writer(pid, zombie);
  readers_progress(sh, readers, reads_enough());
  view(fx, route, &v);
  assert_int_equal(v.generation, gen_dead);
  assert_int_equal(v.config_hash, HASH0 + 0);

  /* The lock died with the writer: the next publish is the next
   * generation, whole. */
  gen = publish_now(fx, route, 2);
  assert_int_equal(gen, gen_dead + 1);
  view(fx, route, &v);
  assert_int_equal(v.generation, gen);
  assert_int_equal(v.config_hash, HASH0 + 2);
  for (int i = 0; i < 100; i++)
    assert_int_equal(canary_route_pick(fx->seg, route, NULL, 0, NULL), 1);
  readers_progress(sh, readers, reads_enough());
  assert_int_equal(publish_now(fx, route, 1), gen + 1);
  readers_progress(sh, readers, reads_enough());
  stop_readers(sh, readers);
  if (zombie)
    assert_int_equal(test_wait_status(pid), 128 + SIGKILL);
  test_shared_free(sh, sizeof *sh);
}

/* After the odd sequence, before any data. */
static void killed_after_odd_sequence(void **state) {
  killed_in_publish(*state, "publish.odd", 0);
}

/* Half the upstreams written; the dead writer is not reaped yet. */
static void killed_mid_data_unreaped(void **state) {
  killed_in_publish(*state, "publish.data", 1);
}

/* Data complete, sequence still odd. */
static void killed_before_even_sequence(void **state) {
  killed_in_publish(*state, "publish.even", 0);
}

/* Buffer complete and even, generation not yet advanced. */
static void killed_before_generation_store(void **state) {
  killed_in_publish(*state, "publish.gen", 0);
}

/* Between the progression's start and the publish of its table: the new
 * progression's state is written, its table is not.  The table is the
 * commit point, so the next publish of that config (every worker makes
 * one) is no no-op: it starts the progression again and publishes. */
static void killed_between_progression_start_and_publish(void **state) {
  struct test_fx *fx = *state;
  struct shared *sh = test_shared_alloc(sizeof *sh);
  struct writer w = {"publish.prog_started", 1, PUBLISH_PROG, 0};
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_route_view v;
  struct canary_table t;
  char err[256] = "";
  uint64_t gen_dead, gen = 0;
  pid_t readers[READERS], pid;
  int route = canary_route_claim(fx->seg, "prog-start", 10, "", 0);

  assert_non_null(sh);
  assert_true(route >= 0);
  publish_now(fx, route, 0);
  view(fx, route, &v);
  gen_dead = v.generation;
  start_readers(fx, route, sh, readers);
  pid = stop_writer_at(fx, route, &w);
  readers_progress(sh, readers, reads_enough());
  refused_while_held(fx, route);
  kill_writer(pid, 0);
  readers_progress(sh, readers, reads_enough());
  view(fx, route, &v);
  assert_int_equal(v.generation, gen_dead);
  assert_int_equal(v.config_hash, HASH0 + 0);

  table(1, &t);
  params(&p, 0);
  assert_int_equal(canary_route_publish_prog(fx->seg, route, &t, &p,
                                             HASH0 + 1, &gen, err, sizeof err),
                   0);
  assert_int_equal(gen, gen_dead + 1);
  view(fx, route, &v);
  assert_int_equal(v.config_hash, HASH0 + 1);
  assert_int_equal(v.effective[1], p.steps[0]);
  assert_int_equal(canary_prog_status(fx->seg, route, canary_clock_us(), &st),
                   0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 0);
  readers_progress(sh, readers, reads_enough());
  stop_readers(sh, readers);
  test_shared_free(sh, sizeof *sh);
}

/* ---- progression -------------------------------------------------------- */

/* A route with table 0 and a progression started now (gated or not). */
static int prog_route(struct test_fx *fx, const char *key, int gated) {
  struct canary_prog_params p;
  struct canary_table t;
  char err[256] = "";
  int route = canary_route_claim(fx->seg, key, strlen(key), "", 0);

  assert_true(route >= 0);
  table(0, &t);
  params(&p, gated);
  if (canary_route_publish_prog(fx->seg, route, &t, &p, HASH0 + 0, NULL, err,
                                sizeof err) != 0)
    fail_msg("publish_prog: %s", err);
  return route;
}

static uint64_t judged(struct test_fx *fx, int route,
                       struct canary_prog_status *st) {
  assert_int_equal(canary_prog_status(fx->seg, route, canary_clock_us(), st),
                   0);
  return st->evaluations[CANARY_GATE_PASS] +
         st->evaluations[CANARY_GATE_FAIL] +
         st->evaluations[CANARY_GATE_INCONCLUSIVE];
}

/* Killed right after claiming a due window (no lock taken yet): that
 * window is lost, nothing else; the next window is judged once. */
static void killed_after_window_claim(void **state) {
  struct test_fx *fx = *state;
  struct shared *sh = test_shared_alloc(sizeof *sh);
  struct canary_prog_status st;
  double now = canary_clock_us() + 1.5 * INTERVAL_MS * 1e3;
  struct writer w = {"tick.claimed", 1, TICK, now};
  pid_t readers[READERS], pid;
  int route = prog_route(fx, "claimed", 0);

  assert_non_null(sh);
  start_readers(fx, route, sh, readers);
  pid = stop_writer_at(fx, route, &w);
  readers_progress(sh, readers, reads_enough());
  kill_writer(pid, 0);
  readers_progress(sh, readers, reads_enough());

  assert_int_equal(judged(fx, route, &st), 0);
  assert_int_equal(st.step, 0);
  /* The claimed window is not due any more ... */
  assert_int_equal(canary_prog_tick(fx->seg, route, now, NULL), 0);
  /* ... the next one is, and is judged once: 10 -> 50 %. */
  assert_int_equal(canary_prog_tick(fx->seg, route,
                                    now + INTERVAL_MS * 1e3 + 1, &st),
                   2);
  assert_int_equal(judged(fx, route, &st), 1);
  assert_int_equal(st.step, 1);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  publish_now(fx, route, 0);
  readers_progress(sh, readers, reads_enough());
  stop_readers(sh, readers);
  test_shared_free(sh, sizeof *sh);
}

/* Killed halfway through rewriting the window's base (holding the lock):
 * the step it decided stands, the half-written base is never judged
 * from, and the next judge rewrites it. */
static void killed_mid_rebase(void **state) {
  struct test_fx *fx = *state;
  struct shared *sh = test_shared_alloc(sizeof *sh);
  struct canary_prog_status st;
  struct canary_route_view v;
  double now = canary_clock_us() + 1.5 * INTERVAL_MS * 1e3;
  struct writer w = {"prog.rebase", 1, TICK, now};
  struct prog_area *pa;
  pid_t readers[READERS], pid;
  int route = prog_route(fx, "rebase", 0);

  assert_non_null(sh);
  pa = canary__prog(fx->seg, (uint32_t)route);
  start_readers(fx, route, sh, readers);
  pid = stop_writer_at(fx, route, &w);
  readers_progress(sh, readers, reads_enough());
  refused_while_held(fx, route);
  kill_writer(pid, 0);
  readers_progress(sh, readers, reads_enough());

  assert_int_equal(judged(fx, route, &st), 1);
  assert_int_equal(st.step, 1);
  view(fx, route, &v);
  assert_int_equal(v.effective[1], 5000);
  assert_int_equal(ck_pr_load_64(&pa->base_seq) & 1, 1); /* half-written */
  assert_int_equal(canary_prog_tick(fx->seg, route,
                                    now + INTERVAL_MS * 1e3 + 1, &st),
                   2);
  assert_int_equal(judged(fx, route, &st), 2);
  assert_int_equal(ck_pr_load_64(&pa->base_seq) & 1, 0); /* rewritten */
  assert_int_equal(st.step, 2);
  view(fx, route, &v);
  assert_int_equal(v.effective[1], 10000);
  readers_progress(sh, readers, reads_enough());
  stop_readers(sh, readers);
  test_shared_free(sh, sizeof *sh);
}

/* Killed between a rollback's weights and its state: the canary is at 0
 * already (weights first), and an operator's abort, which no longer
 * waits for anything, completes the rollback. */
static void killed_between_rollback_weights_and_state(void **state) {
  struct test_fx *fx = *state;
  struct shared *sh = test_shared_alloc(sizeof *sh);
  struct canary_prog_status st;
  struct canary_route_view v;
  double now = canary_clock_us() + 1.5 * INTERVAL_MS * 1e3;
  struct writer w = {"rollback.weights", 1, TICK, now};
  char err[256] = "";
  pid_t readers[READERS], pid;
  int route = prog_route(fx, "rollback", 1);

  assert_non_null(sh);
  for (int i = 0; i < 100; i++)
    assert_int_equal(canary_route_record(fx->seg, route, 1, 1000, 503, -1),
                     0);
  start_readers(fx, route, sh, readers);
  pid = stop_writer_at(fx, route, &w);
  readers_progress(sh, readers, reads_enough());
  refused_while_held(fx, route);
  kill_writer(pid, 0);
  readers_progress(sh, readers, reads_enough());

  view(fx, route, &v);
  assert_int_equal(v.effective[1], 0);
  assert_int_equal(canary_prog_action(fx->seg, route, CANARY_ACT_ABORT,
                                      canary_clock_us(), NULL, err,
                                      sizeof err),
                   0);
  assert_int_equal(judged(fx, route, &st), 1);
  assert_int_equal(st.state, CANARY_PROG_ROLLED_BACK);
  view(fx, route, &v);
  assert_int_equal(v.effective[1], 0);
  for (int i = 0; i < 100; i++)
    assert_int_equal(canary_route_pick(fx->seg, route, NULL, 0, NULL), 0);
  readers_progress(sh, readers, reads_enough());
  stop_readers(sh, readers);
  test_shared_free(sh, sizeof *sh);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(killed_after_odd_sequence, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(killed_mid_data_unreaped, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(killed_before_even_sequence, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(killed_before_generation_store, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          killed_between_progression_start_and_publish, setup, teardown),
      cmocka_unit_test_setup_teardown(killed_after_window_claim, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(killed_mid_rebase, setup, teardown),
      cmocka_unit_test_setup_teardown(
          killed_between_rollback_weights_and_state, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
