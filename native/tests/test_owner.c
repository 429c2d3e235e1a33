/*
 * test_owner.c - writer locks and counter stripes across processes.
 *
 * What an operator would notice: requests counted twice or not at all
 * when more workers record than there are stripes; a worker killed while
 * it owned a stripe takes its counts with it, or its stripe is never
 * used again; after a pid is reused by another process (or in another
 * pid namespace, a container) every writer is refused for ever, or two
 * writers write at once; a forked child writes into its parent's stripe.
 *
 * The engine's locks are open-file-description locks on bytes of the
 * segment file (owner.c).  These tests look at which stripe a handle got
 * through internal.h, and count with the public snapshot.
 */
#include "test_util.h"

#include "internal.h" /* stripes, lock bytes, canary__lock_try */

#include <sched.h>

#define O_ROUTES 4u
#define O_UPSTREAMS 2u
#define SHARED_STRIPE ((int)CANARY_STRIPES - 1)

static int setup(void **state) {
  return test_fx_setup(state, O_ROUTES, O_UPSTREAMS);
}

static int teardown(void **state) {
  return test_fx_teardown(state);
}

static int route_ready(struct test_fx *fx, const char *key) {
  struct canary_table t;
  const uint32_t w[2] = {5000, 5000};
  int route = canary_route_claim(fx->seg, key, strlen(key), "", 0);
  assert_true(route >= 0);
  test_table(&t, "up", 2, w);
  assert_int_equal(canary_route_publish(fx->seg, route, &t, 1, NULL, NULL, 0),
                   0);
  return route;
}

/* 2xx responses of upstream 0 (a striped counter) and the sample count
 * (the shared latency buckets). */
static uint64_t ok_count(canary_seg_t *seg, int route, uint64_t *samples) {
  struct canary_hist_snapshot snap;
  struct canary_hist_summary sum;
  assert_int_equal(canary_hist_snapshot(seg, route, 0, &snap), 0);
  assert_int_equal(canary_hist_summarize(&snap, NULL, &sum), 0);
  if (samples != NULL)
    *samples = sum.count;
  return snap.status[2];
}

/* The 2xx counter of upstream 0 in one stripe. */
static uint64_t stripe_count(canary_seg_t *seg, int route, int stripe) {
  struct canary_route_view v;
  struct stat_slot *st;
  assert_int_equal(canary_route_read(seg, route, &v), 0);
  st = canary__stat_of(seg, (uint32_t)route, v.stats[0]);
  assert_non_null(st);
  return ck_pr_load_64(&st->stats.stripes[stripe].status[2]);
}

/* ---- more handles than stripes ----------------------------------------- */

#define MANY 70        /* handles in the parent: more than 63 stripes */
#define KID_HANDLES 30 /* per child, all on the shared stripe */
#define KIDS 3

static void many_child(const char *path, int route, struct test_gate *gate,
                       uint64_t per_handle) {
  canary_seg_t *h[KID_HANDLES];
  for (int i = 0; i < KID_HANDLES; i++)
    CHILD_CHECK(test_seg_open(&h[i], path, O_ROUTES, O_UPSTREAMS, 0, NULL,
                              0) == CANARY_SEG_ATTACHED,
                2);
  test_gate_wait(gate);
  for (uint64_t n = 0; n < per_handle; n++)
    for (int i = 0; i < KID_HANDLES; i++)
      CHILD_CHECK(canary_route_record(h[i], route, 0, 100 + n % 50, 200, -1) ==
                      0,
                  3);
  /* Every parent stripe is held: these handles share the last one. */
  for (int i = 0; i < KID_HANDLES; i++)
    CHILD_CHECK(h[i]->stripe == SHARED_STRIPE, 4);
  for (int i = 0; i < KID_HANDLES; i++)
    test_seg_close(h[i]);
  _exit(0);
}

static void stripes_more_handles_than_stripes(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *h[MANY];
  uint64_t per_handle = test_scaled_min(2000, 40), samples, want;
  int seen[CANARY_STRIPES] = {0};
  int route = route_ready(fx, "many");
  struct test_gate gate;
  pid_t kids[KIDS];

  for (int i = 0; i < MANY; i++)
    assert_int_equal(
        test_seg_open(&h[i], fx->path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0),
        CANARY_SEG_ATTACHED);
  for (int i = 0; i < MANY; i++)
    assert_int_equal(canary_route_record(h[i], route, 0, 100, 200, -1), 0);
  /* The first 63 handles own one stripe each; the rest share the last. */
  for (int i = 0; i < MANY; i++) {
    int s = h[i]->stripe;
    assert_true(s >= 0 && s < (int)CANARY_STRIPES);
    if (i < SHARED_STRIPE) {
      assert_int_equal(seen[s], 0);
      assert_true(s != SHARED_STRIPE);
    } else {
      assert_int_equal(s, SHARED_STRIPE);
    }
    seen[s]++;
  }

  /* Children record on the shared stripe while the parent records on all
   * of its handles, private and shared. */
  assert_int_equal(test_gate_init(&gate), 0);
  for (int k = 0; k < KIDS; k++) {
    kids[k] = test_fork();
    assert_true(kids[k] >= 0);
    if (kids[k] == 0)
      many_child(fx->path, route, &gate, per_handle);
  }
  test_gate_open(&gate);
  for (uint64_t n = 1; n < per_handle; n++)
    for (int i = 0; i < MANY; i++)
      assert_int_equal(canary_route_record(h[i], route, 0, 100, 200, -1), 0);
  for (int k = 0; k < KIDS; k++)
    test_wait_ok(kids[k]);

  want = (uint64_t)(MANY + KIDS * KID_HANDLES) * per_handle;
  assert_int_equal(ok_count(fx->seg, route, &samples), want);
  assert_int_equal(samples, want);
  assert_int_equal(stripe_count(fx->seg, route, SHARED_STRIPE),
                   (uint64_t)(MANY - SHARED_STRIPE + KIDS * KID_HANDLES) *
                       per_handle);
  for (int i = 0; i < MANY; i++)
    test_seg_close(h[i]);
}

/* ---- a stripe owner killed ---------------------------------------------- */

struct report {
  int stripe;
  pid_t grandchild;
};

/* Records n, then forks a child that only sleeps (it inherits the handle
 * and never uses it), reports, and waits to be killed.  The grandchild
 * reports too, once its fork() has returned: by then it has closed its
 * copy of the lock descriptor, which would otherwise keep the stripe's
 * lock alive after its parent's death. */
static void owner_child(const char *path, int route, uint64_t n,
                        struct report *rep, int fd) {
  canary_seg_t *seg = NULL;
  pid_t g;
  CHILD_CHECK(test_seg_open(&seg, path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  for (uint64_t i = 0; i < n; i++)
    CHILD_CHECK(canary_route_record(seg, route, 0, 100, 200, -1) == 0, 3);
  rep->stripe = seg->stripe;
  g = fork();
  CHILD_CHECK(g >= 0, 4);
  if (g == 0) {
    alarm(test_time_limit(30)); /* not the test's child: end on our own */
    CHILD_CHECK(write(fd, "g", 1) == 1, 6);
    for (;;)
      pause();
  }
  rep->grandchild = g;
  CHILD_CHECK(write(fd, "r", 1) == 1, 5);
  for (;;)
    pause();
}

static void recorder_child(const char *path, int route, uint64_t n,
                           struct report *rep) {
  canary_seg_t *seg = NULL;
  CHILD_CHECK(test_seg_open(&seg, path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  for (uint64_t i = 0; i < n; i++)
    CHILD_CHECK(canary_route_record(seg, route, 0, 100, 200, -1) == 0, 3);
  rep->stripe = seg->stripe;
  test_seg_close(seg);
  _exit(0);
}

static void stripe_of_a_killed_owner_is_taken_over(void **state) {
  struct test_fx *fx = *state;
  struct report *rep = test_shared_alloc(sizeof *rep);
  uint64_t n = test_scaled_min(5000, 100), m = test_scaled_min(3000, 60);
  int route = route_ready(fx, "takeover");
  int pfd[2], owned;
  char c;
  pid_t a, b;

  assert_non_null(rep);
  assert_int_equal(pipe(pfd), 0);
  a = test_fork();
  assert_true(a >= 0);
  if (a == 0) {
    close(pfd[0]);
    owner_child(fx->path, route, n, rep, pfd[1]);
  }
  close(pfd[1]);
  /* Both the owner and its child have reported. */
  assert_int_equal(read(pfd[0], &c, 1), 1);
  assert_int_equal(read(pfd[0], &c, 1), 1);
  close(pfd[0]);
  owned = rep->stripe;
  assert_true(owned >= 0 && owned < SHARED_STRIPE);

  /* While the owner lives, nobody else gets its stripe. */
  assert_int_equal(canary_route_record(fx->seg, route, 0, 100, 200, -1), 0);
  assert_true(fx->seg->stripe != owned);

  /* SIGKILL; the child it forked still holds copies of its descriptors
   * (but closed its copy of the lock descriptor at fork). */
  kill(a, SIGKILL);
  assert_int_equal(test_wait_status(a), 128 + SIGKILL);
  assert_int_equal(stripe_count(fx->seg, route, owned), n);

  b = test_fork();
  assert_true(b >= 0);
  if (b == 0)
    recorder_child(fx->path, route, m, rep);
  test_wait_ok(b);
  kill(rep->grandchild, SIGKILL); /* not ours to reap: init adopted it */
  /* The dead owner's stripe was free again, and kept its counts. */
  assert_int_equal(rep->stripe, owned);
  assert_int_equal(stripe_count(fx->seg, route, owned), n + m);
  assert_int_equal(ok_count(fx->seg, route, NULL), n + m + 1);
  test_shared_free(rep, sizeof *rep);
}

/* ---- pids play no part --------------------------------------------------- */

/* The lock bytes sit where the engine used to keep owner pids.  A dead
 * owner's pid reused by a live process made every writer wait and then
 * fail for ever, and stripes look taken.  Writing the pid of a live
 * process (and our own) into every one of those words reproduces what a
 * reused pid did; with kernel locks it must change nothing. */
static void stale_pids_in_the_file_change_nothing(void **state) {
  struct test_fx *fx = *state;
  struct report *rep = test_shared_alloc(sizeof *rep);
  struct seg_header *h = canary__header(fx->seg);
  struct canary_prog_params p;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  const uint32_t eff[2] = {8000, 2000};
  char err[256] = "";
  pid_t live, kid;
  int route = route_ready(fx, "stale"), fresh;

  assert_non_null(rep);
  live = test_fork();
  assert_true(live >= 0);
  if (live == 0) {
    for (;;)
      pause();
  }
  ck_pr_store_32(&h->claim_lock, (uint32_t)live);
  for (uint32_t i = 0; i < CANARY_STRIPES - 1; i++)
    ck_pr_store_32(&h->stripe_lock[i], i % 2 ? (uint32_t)live
                                             : (uint32_t)getpid());
  for (uint32_t r = 0; r < O_ROUTES; r++)
    ck_pr_store_32(&canary__route(fx->seg, r)->writer_lock, (uint32_t)live);

  fresh = canary_route_claim(fx->seg, "fresh", 5, "", 0);
  assert_true(fresh >= 0);
  test_table(&t, "up", 2, w);
  memset(&p, 0, sizeof p);
  p.canary = 1;
  p.nsteps = 2;
  p.steps[0] = 1000;
  p.steps[1] = 10000;
  p.interval_ms = 1000;
  p.failure_limit = 1;
  test_judge_unset(&p.judge);
  assert_int_equal(canary_route_publish_prog(fx->seg, fresh, &t, &p, 9, NULL,
                                             err, sizeof err),
                   0);
  assert_int_equal(canary_route_set_effective(fx->seg, route, eff, 2, NULL,
                                              err, sizeof err),
                   0);
  assert_int_equal(canary_prog_action(fx->seg, fresh, CANARY_ACT_PROMOTE,
                                      canary_clock_us(), NULL, err,
                                      sizeof err),
                   0);
  assert_int_equal(canary_prog_action(fx->seg, fresh, CANARY_ACT_ABORT,
                                      canary_clock_us(), NULL, err,
                                      sizeof err),
                   0);
  /* Stripes: a new process gets a private one, the first. */
  kid = test_fork();
  assert_true(kid >= 0);
  if (kid == 0)
    recorder_child(fx->path, route, 10, rep);
  test_wait_ok(kid);
  assert_int_equal(rep->stripe, 0);
  assert_int_equal(stripe_count(fx->seg, route, 0), 10);

  kill(live, SIGKILL);
  assert_int_equal(test_wait_status(live), 128 + SIGKILL);
  test_shared_free(rep, sizeof *rep);
}

/* A process in another pid namespace (another container on the same
 * file): its pid means nothing here, its locks still hold.  Needs
 * CAP_SYS_ADMIN for unshare(CLONE_NEWPID); skipped without it.  The
 * child reports 'S' (skip) or 'P' and the pid, in our namespace, of its
 * own child, pid 1 of the new namespace, which takes stripe 0 and stops
 * in a publish holding the route's lock (it says so on `fault_fd`); the
 * child exits once it has reaped that holder. */
static void ns_holder_timeout(int sig) {
  (void)sig;
  _exit(124);
}

static void ns_holder(const char *path, int route, int fd, int fault_fd) {
  canary_seg_t *seg = NULL;
  struct canary_table t;
  const uint32_t w[2] = {1000, 9000};
  pid_t g;

  if (unshare(CLONE_NEWPID) != 0) {
    CHILD_CHECK(write(fd, "S", 1) == 1, 5);
    _exit(0);
  }
  g = fork();
  CHILD_CHECK(g >= 0, 2);
  if (g > 0) {
    char msg[1 + sizeof g];
    msg[0] = 'P';
    memcpy(msg + 1, &g, sizeof g);
    CHILD_CHECK(write(fd, msg, sizeof msg) == (ssize_t)sizeof msg, 3);
    /* Until the test kills it: then it is dead, its locks gone. */
    CHILD_CHECK(waitpid(g, NULL, 0) == g, 10);
    _exit(0);
  }
  /* Not the test's child, and as the namespace's init immune to signals
   * it has no handler for: end on our own if the test goes wrong. */
  signal(SIGALRM, ns_holder_timeout);
  alarm(test_time_limit(30));
  CHILD_CHECK(getpid() == 1, 4);
  CHILD_CHECK(test_seg_open(&seg, path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              6);
  CHILD_CHECK(canary_route_record(seg, route, 0, 100, 200, -1) == 0, 7);
  CHILD_CHECK(seg->stripe == 0, 8);
  test_table(&t, "ns", 2, w);
  canary__fault_arm("publish.even", 1, fault_fd);
  canary_route_publish(seg, route, &t, 77, NULL, NULL, 0);
  _exit(9);
}

static void lock_holder_in_another_pid_namespace(void **state) {
  struct test_fx *fx = *state;
  struct canary_table t;
  const uint32_t w[2] = {2000, 8000};
  canary_seg_t *other = NULL;
  int route = route_ready(fx, "ns"), pfd[2], ffd[2];
  char buf[1 + sizeof(pid_t)], name[32] = "";
  pid_t p, g = 0;

  assert_int_equal(pipe(pfd), 0);
  assert_int_equal(pipe(ffd), 0);
  p = test_fork();
  assert_true(p >= 0);
  if (p == 0) {
    close(pfd[0]);
    close(ffd[0]);
    ns_holder(fx->path, route, pfd[1], ffd[1]);
  }
  close(pfd[1]);
  close(ffd[1]);
  assert_int_equal(read(pfd[0], buf, 1), 1);
  if (buf[0] == 'S') {
    close(pfd[0]);
    close(ffd[0]);
    test_wait_ok(p);
    skip(); /* no CAP_SYS_ADMIN here */
  }
  assert_int_equal(buf[0], 'P');
  assert_int_equal(read(pfd[0], buf + 1, sizeof g), (ssize_t)sizeof g);
  memcpy(&g, buf + 1, sizeof g);
  close(pfd[0]);
  if (read(ffd[0], name, sizeof name - 1) <= 0) {
    close(ffd[0]);
    kill(g, SIGKILL);
    kill(p, SIGKILL);
    fail_msg("the holder in the new namespace failed (its parent: %d)",
             test_wait_status(p));
  }
  close(ffd[0]);
  assert_string_equal(name, "publish.even");

  test_table(&t, "up", 2, w);
  assert_int_equal(canary_route_publish(fx->seg, route, &t, 5, NULL, NULL, 0),
                   CANARY_EBUSY);
  assert_int_equal(
      test_seg_open(&other, fx->path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_record(other, route, 0, 100, 200, -1), 0);
  assert_int_equal(other->stripe, 1);
  test_seg_close(other);

  kill(g, SIGKILL);
  test_wait_ok(p); /* it has reaped the holder */
  /* Both of the dead holder's locks are free: the route's and stripe 0. */
  assert_int_equal(canary_route_publish(fx->seg, route, &t, 5, NULL, NULL, 0),
                   0);
  assert_int_equal(canary_route_record(fx->seg, route, 0, 100, 200, -1), 0);
  assert_int_equal(fx->seg->stripe, 0);
}

/* ---- handles and forks --------------------------------------------------- */

/* Two handles of one process hold different open file descriptions:
 * they exclude each other like two processes. */
static void two_handles_in_one_process_exclude_each_other(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *b = NULL, *c = NULL;
  struct canary_table t;
  const uint32_t w[2] = {3000, 7000};
  int route = route_ready(fx, "two");
  uint64_t off = canary__writer_lock_off(fx->seg, (uint32_t)route);

  assert_int_equal(
      test_seg_open(&b, fx->path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_record(fx->seg, route, 0, 100, 200, -1), 0);
  assert_int_equal(canary_route_record(b, route, 0, 100, 200, -1), 0);
  assert_int_equal(fx->seg->stripe, 0);
  assert_int_equal(b->stripe, 1);

  test_table(&t, "up", 2, w);
  assert_int_equal(canary__lock_try(fx->seg, off), 0);
  assert_int_equal(canary_route_publish(b, route, &t, 3, NULL, NULL, 0),
                   CANARY_EBUSY);
  /* A new label goes under the route's lock too; an unchanged one does
   * not need it, nor does another route's label. */
  assert_int_equal(canary_route_claim(b, "two", 3, "Two", 3), CANARY_EBUSY);
  assert_int_equal(canary_route_claim(b, "two", 3, "", 0), route);
  assert_true(canary_route_claim(b, "else", 4, "Else", 4) >= 0);
  assert_true(canary_route_claim(b, "else", 4, "Other", 5) >= 0);
  canary__lock_release(fx->seg, off);
  assert_int_equal(canary_route_claim(b, "two", 3, "Two", 3), route);
  assert_int_equal(canary_route_publish(b, route, &t, 3, NULL, NULL, 0), 0);

  /* The claim lock: a new key waits for it, a known key does not. */
  assert_int_equal(canary__lock_try(fx->seg, canary__claim_lock_off()), 0);
  assert_int_equal(canary_route_claim(b, "new", 3, "", 0), CANARY_EBUSY);
  assert_int_equal(canary_route_claim(b, "two", 3, "", 0), route);
  canary__lock_release(fx->seg, canary__claim_lock_off());
  assert_true(canary_route_claim(b, "new", 3, "", 0) >= 0);

  /* Closing a handle frees its stripe for the next one. */
  test_seg_close(b);
  assert_int_equal(
      test_seg_open(&c, fx->path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_record(c, route, 0, 100, 200, -1), 0);
  assert_int_equal(c->stripe, 1);
  test_seg_close(c);
  assert_int_equal(ok_count(fx->seg, route, NULL), 3);
}

/* A judge that finds the route's lock held (another worker publishing)
 * gives its window back and says busy at once: the window stays due, and
 * the next tick judges it. */
static void busy_judge_leaves_the_window_due(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *b = NULL;
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  int route = canary_route_claim(fx->seg, "judge", 5, "", 0);
  uint64_t off;
  double now;

  assert_true(route >= 0);
  memset(&p, 0, sizeof p);
  p.canary = 1;
  p.nsteps = 2;
  p.steps[0] = 1000;
  p.steps[1] = 10000;
  p.interval_ms = 1000;
  p.failure_limit = 1;
  test_judge_unset(&p.judge);
  test_table(&t, "up", 2, w);
  assert_int_equal(
      canary_route_publish_prog(fx->seg, route, &t, &p, 1, NULL, NULL, 0), 0);
  now = canary_clock_us() + 1.5 * 1e6;
  assert_int_equal(
      test_seg_open(&b, fx->path, O_ROUTES, O_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_ATTACHED);
  off = canary__writer_lock_off(fx->seg, (uint32_t)route);

  assert_int_equal(canary__lock_try(fx->seg, off), 0);
  assert_int_equal(canary_prog_tick(b, route, now, &st), CANARY_EBUSY);
  canary__lock_release(fx->seg, off);
  assert_int_equal(canary_prog_status(b, route, now, &st), 0);
  assert_int_equal(st.evaluations[CANARY_GATE_PASS], 0);
  assert_int_equal(st.step, 0);
  /* Same clock: the window is still due. */
  assert_int_equal(canary_prog_tick(b, route, now, &st), 2);
  assert_int_equal(st.evaluations[CANARY_GATE_PASS], 1);
  assert_int_equal(st.step, 1);
  test_seg_close(b);
}

/* A child using the handle its parent opened gets locks of its own, and
 * leaves the parent's alone when it exits. */
static void inherited_child(canary_seg_t *seg, int route,
                            struct report *rep) {
  struct canary_table t;
  const uint32_t w[2] = {4000, 6000};
  CHILD_CHECK(canary_route_record(seg, route, 0, 100, 200, -1) == 0, 2);
  rep->stripe = seg->stripe;
  test_table(&t, "up", 2, w);
  CHILD_CHECK(canary_route_publish(seg, route, &t, 4, NULL, NULL, 0) == 0, 3);
  _exit(0);
}

static void inherited_handle_takes_its_own_locks(void **state) {
  struct test_fx *fx = *state;
  struct report *rep = test_shared_alloc(sizeof *rep);
  int route = route_ready(fx, "inherit");
  pid_t kid;

  assert_non_null(rep);
  assert_int_equal(canary_route_record(fx->seg, route, 0, 100, 200, -1), 0);
  assert_int_equal(fx->seg->stripe, 0);
  kid = test_fork();
  assert_true(kid >= 0);
  if (kid == 0)
    inherited_child(fx->seg, route, rep);
  test_wait_ok(kid);
  assert_int_equal(rep->stripe, 1);
  /* Our stripe is still ours: a new process gets the next free one. */
  kid = test_fork();
  assert_true(kid >= 0);
  if (kid == 0)
    recorder_child(fx->path, route, 1, rep);
  test_wait_ok(kid);
  assert_int_equal(rep->stripe, 1);
  assert_int_equal(canary_route_record(fx->seg, route, 0, 100, 200, -1), 0);
  assert_int_equal(fx->seg->stripe, 0);
  assert_int_equal(stripe_count(fx->seg, route, 0), 2);
  assert_int_equal(ok_count(fx->seg, route, NULL), 4);
  test_shared_free(rep, sizeof *rep);
}

/* Read-only handles take no locks and own no stripe. */
static void readonly_handle_takes_no_lock(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *ro = NULL;
  int route = route_ready(fx, "ro");

  assert_int_equal(test_seg_open(&ro, fx->path, 0, 0, CANARY_SEG_READONLY,
                                 NULL, 0),
                   CANARY_SEG_ATTACHED);
  assert_int_equal(ro->lock_fd, -1);
  assert_int_equal(canary__lock_try(ro, canary__claim_lock_off()),
                   CANARY_EIO);
  assert_int_equal(canary_route_record(ro, route, 0, 100, 200, -1),
                   CANARY_EREADONLY);
  test_seg_close(ro);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(readonly_handle_takes_no_lock, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          two_handles_in_one_process_exclude_each_other, setup, teardown),
      cmocka_unit_test_setup_teardown(inherited_handle_takes_its_own_locks,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(busy_judge_leaves_the_window_due, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(stripes_more_handles_than_stripes, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(stripe_of_a_killed_owner_is_taken_over,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(stale_pids_in_the_file_change_nothing,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(lock_holder_in_another_pid_namespace,
                                      setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
