/*
 * test_util.h - helpers shared by the cmocka suites in native/tests.
 *
 * Static inline functions only, so that every test binary stays one
 * translation unit and -Wmissing-prototypes / -Wunused-function stay
 * quiet for the helpers a given suite does not use.
 *
 * Scale: the same binaries run natively, under ASan+UBSan and under
 * valgrind.  Large sample counts go through test_scaled(), which divides
 * them by $CANARY_TEST_SCALE (the valgrind run sets 50).
 *
 * Forked children never use cmocka assertions (a failing assertion would
 * longjmp into the child's copy of the test runner and go on running the
 * rest of the suite there).  They check with CHILD_CHECK, leave with
 * _exit(), and report through their exit status, which the parent checks
 * with test_wait_ok() / test_wait_status().
 */
#ifndef CANARY_TEST_UTIL_H
#define CANARY_TEST_UTIL_H

/* cmocka.h needs these first; the blank line keeps clang-format from
 * sorting it above them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "canary.h"

/* In a forked child: leave with `code` (1..125) when `cond` is false. */
#define CHILD_CHECK(cond, code)                                               \
  do {                                                                        \
    if (!(cond))                                                              \
      _exit(code);                                                            \
  } while (0)

/* Divisor for sample counts: $CANARY_TEST_SCALE, at least 1. */
static inline unsigned long test_scale(void) {
  const char *s = getenv("CANARY_TEST_SCALE");
  char *end;
  unsigned long v;

  if (s == NULL || *s == '\0')
    return 1;
  v = strtoul(s, &end, 10);
  if (*end != '\0' || v == 0)
    return 1;
  return v;
}

/* Seconds a test (or a child) may run; longer under valgrind's scale. */
static inline unsigned test_time_limit(unsigned seconds) {
  return test_scale() > 1 ? seconds * 4 : seconds;
}

/* n divided by the scale, but never below `floor_n`. */
static inline uint64_t test_scaled_min(uint64_t n, uint64_t floor_n) {
  uint64_t v = n / test_scale();
  return v < floor_n ? floor_n : v;
}

static inline uint64_t test_scaled(uint64_t n) {
  return test_scaled_min(n, 1);
}

static inline double test_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Deterministic PRNG (splitmix64): tests must be reproducible. */
static inline uint64_t test_rand_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static inline uint64_t test_rand_below(uint64_t *s, uint64_t n) {
  return test_rand_next(s) % n;
}

/* Uniform in (0, 1). */
static inline double test_rand_unit(uint64_t *s) {
  return ((double)(test_rand_next(s) >> 11) + 0.5) *
         (1.0 / 9007199254740992.0);
}

/* ---- watchdog and children ------------------------------------------ */

/* Children forked with test_fork(), so the watchdog can end them. */
#define TEST_MAX_CHILDREN 64

static inline pid_t *test_children(void) {
  static pid_t pids[TEST_MAX_CHILDREN];
  return pids;
}

/* A call that blocks forever (a lock nobody releases) must fail the run,
 * not hang it: SIGALRM ends the test binary and every child it forked. */
static inline void test_watchdog_fired(int sig) {
  static const char msg[] =
      "\nwatchdog: a test ran past its time limit (a call blocked?); "
      "killing its children and failing\n";
  pid_t *pids = test_children();
  (void)sig;
  (void)!write(2, msg, sizeof msg - 1);
  for (int i = 0; i < TEST_MAX_CHILDREN; i++)
    if (pids[i] > 0)
      kill(pids[i], SIGKILL);
  _exit(125);
}

static inline void test_watchdog_arm(unsigned seconds) {
  signal(SIGALRM, test_watchdog_fired);
  alarm(test_time_limit(seconds));
}

static inline void test_watchdog_disarm(void) {
  alarm(0);
}

/* fork() for tests: the child gets its own alarm (default action: die,
 * which its parent sees as status 128 + SIGALRM). */
static inline pid_t test_fork(void) {
  pid_t pid = fork();
  pid_t *pids = test_children();
  if (pid == 0) {
    /* cmocka catches fatal signals and longjmps into its runner; in a
     * child that would run the rest of the suite there.  A crashing child
     * must die, so the parent sees the signal in its status. */
    static const int fatal[] = {SIGSEGV, SIGBUS,  SIGILL,
                                SIGFPE,  SIGABRT, SIGSYS};
    for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
      signal(fatal[i], SIG_DFL);
    memset(pids, 0, sizeof(pid_t) * TEST_MAX_CHILDREN);
    signal(SIGALRM, SIG_DFL);
    alarm(test_time_limit(30));
  } else if (pid > 0) {
    for (int i = 0; i < TEST_MAX_CHILDREN; i++)
      if (pids[i] == 0) {
        pids[i] = pid;
        break;
      }
  }
  return pid;
}

/* ---- memory and handles that survive a failed assertion -------------- */

/* A failing cmocka assertion longjmps out of the test, past its free()
 * and canary_seg_close() calls.  Leaked blocks would then be inherited by
 * the children of later tests and fail their valgrind leak check, turning
 * one failure into many.  So test memory and segment handles are tracked
 * here and released by the fixture's teardown. */
#define TEST_MAX_TRACKED 128

struct test_tracked {
  void *p;
  int is_seg;
};

static inline struct test_tracked *test_tracked(void) {
  static struct test_tracked t[TEST_MAX_TRACKED];
  return t;
}

static inline void *test_track(void *p, int is_seg) {
  struct test_tracked *t = test_tracked();
  if (p == NULL)
    return NULL;
  for (int i = 0; i < TEST_MAX_TRACKED; i++)
    if (t[i].p == NULL) {
      t[i].p = p;
      t[i].is_seg = is_seg;
      return p;
    }
  fail_msg("test_track: more than %d live allocations", TEST_MAX_TRACKED);
  return p;
}

static inline int test_untrack(void *p) {
  struct test_tracked *t = test_tracked();
  if (p == NULL)
    return 0;
  for (int i = 0; i < TEST_MAX_TRACKED; i++)
    if (t[i].p == p) {
      t[i].p = NULL;
      return 1;
    }
  return 0;
}

/* Zero-filled, tracked; never NULL (fails the test instead). */
static inline void *t_alloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (p == NULL)
    fail_msg("out of memory (%zu bytes)", n);
  return test_track(p, 0);
}

static inline void *t_realloc(void *p, size_t n) {
  void *q;
  test_untrack(p);
  q = realloc(p, n ? n : 1);
  if (q == NULL)
    fail_msg("out of memory (%zu bytes)", n);
  return test_track(q, 0);
}

static inline void t_free(void *p) {
  test_untrack(p);
  free(p);
}

/* canary_seg_open() whose handle is closed by teardown if the test
 * fails before it does. */
static inline int test_seg_open(canary_seg_t **out, const char *path,
                                uint32_t max_routes, uint32_t max_upstreams,
                                int flags, char *why, size_t why_len) {
  int rc = canary_seg_open(out, path, max_routes, max_upstreams, flags, why,
                           why_len);
  if (rc >= 0 && out != NULL && *out != NULL)
    test_track(*out, 1);
  return rc;
}

static inline void test_seg_close(canary_seg_t *seg) {
  test_untrack(seg);
  canary_seg_close(seg);
}

/* Releases everything still tracked (teardown). */
static inline void test_release_all(void) {
  struct test_tracked *t = test_tracked();
  for (int i = 0; i < TEST_MAX_TRACKED; i++)
    if (t[i].p != NULL) {
      if (t[i].is_seg)
        canary_seg_close(t[i].p);
      else
        free(t[i].p);
      t[i].p = NULL;
    }
}

/* ---- temporary directories and segment paths ------------------------ */

/* Creates a private directory for one test; returns 0 or -1. */
static inline int test_dir_make(char *dir, size_t cap) {
  const char *base = getenv("TMPDIR");
  if (base == NULL || *base == '\0')
    base = "/tmp";
  if ((size_t)snprintf(dir, cap, "%s/canary-test-XXXXXX", base) >= cap)
    return -1;
  return mkdtemp(dir) == NULL ? -1 : 0;
}

static inline void test_path(char *out, size_t cap, const char *dir,
                             const char *name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

/* Removes every file in `dir` (segments, .bad-* copies), then `dir`. */
static inline void test_dir_remove(const char *dir) {
  DIR *d;
  struct dirent *e;
  char p[PATH_MAX];

  if (dir == NULL || dir[0] == '\0')
    return;
  d = opendir(dir);
  if (d != NULL) {
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
        continue;
      snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

/* A per-test fixture: a private directory, a segment path in it and,
 * when max_routes != 0, an open read-write segment. */
struct test_fx {
  char dir[PATH_MAX / 2];
  char path[PATH_MAX];
  canary_seg_t *seg;
};

static inline int test_fx_setup(void **state, uint32_t max_routes,
                                uint32_t max_upstreams) {
  struct test_fx *fx = calloc(1, sizeof *fx);
  char why[256] = "";

  if (fx == NULL)
    return -1;
  test_watchdog_arm(90);
  if (test_dir_make(fx->dir, sizeof fx->dir) != 0) {
    free(fx);
    return -1;
  }
  test_path(fx->path, sizeof fx->path, fx->dir, "canary.seg");
  if (max_routes != 0) {
    int rc = canary_seg_open(&fx->seg, fx->path, max_routes, max_upstreams, 0,
                             why, sizeof why);
    if (rc != CANARY_SEG_CREATED) {
      fprintf(stderr, "fixture: canary_seg_open -> %d (%s) %s\n", rc,
              canary_strerror(rc), why);
      test_dir_remove(fx->dir);
      free(fx);
      return -1;
    }
  }
  *state = fx;
  return 0;
}

static inline int test_fx_teardown(void **state) {
  struct test_fx *fx = *state;
  test_watchdog_disarm();
  test_release_all();
  if (fx != NULL) {
    canary_seg_close(fx->seg);
    test_dir_remove(fx->dir);
    free(fx);
  }
  *state = NULL;
  return 0;
}

/* ---- processes ------------------------------------------------------ */

/* Reaps `pid`; returns its exit status, or 128 + signal number. */
static inline int test_wait_status(pid_t pid) {
  int st;
  pid_t r;

  do {
    r = waitpid(pid, &st, 0);
  } while (r < 0 && errno == EINTR);
  if (r != pid)
    return -1;
  for (int i = 0; i < TEST_MAX_CHILDREN; i++)
    if (test_children()[i] == pid)
      test_children()[i] = 0;
  if (WIFEXITED(st))
    return WEXITSTATUS(st);
  if (WIFSIGNALED(st))
    return 128 + WTERMSIG(st);
  return -1;
}

/* Asserts that child `pid` exited with status 0. */
#define test_wait_ok(pid)                                                     \
  do {                                                                        \
    int test_wait_ok_st = test_wait_status(pid);                              \
    if (test_wait_ok_st != 0)                                                 \
      fail_msg("child %d exited with %d (>128: killed by signal %d)",         \
               (int)(pid), test_wait_ok_st,                                   \
               test_wait_ok_st > 128 ? test_wait_ok_st - 128 : 0);            \
  } while (0)

/* A start line for forked children: each child blocks in
 * test_gate_wait() until the parent calls test_gate_open(), so they all
 * start at (nearly) the same moment. */
struct test_gate {
  int fd[2];
};

static inline int test_gate_init(struct test_gate *g) {
  return pipe(g->fd);
}

/* In the child. */
static inline void test_gate_wait(struct test_gate *g) {
  char c;
  ssize_t r;
  close(g->fd[1]);
  do {
    r = read(g->fd[0], &c, 1);
  } while (r < 0 && errno == EINTR);
  close(g->fd[0]);
}

/* In the parent, after forking every child: EOF releases all of them. */
static inline void test_gate_open(struct test_gate *g) {
  close(g->fd[0]);
  close(g->fd[1]);
}

/* Anonymous memory shared with forked children, zero-filled. */
static inline void *test_shared_alloc(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static inline void test_shared_free(void *p, size_t bytes) {
  if (p != NULL)
    munmap(p, bytes);
}

/* ---- files ---------------------------------------------------------- */

static inline int test_write_file(const char *path, const void *data,
                                  size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  const unsigned char *p = data;
  if (fd < 0)
    return -1;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w <= 0) {
      close(fd);
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return close(fd);
}

/* Reads a whole file into a malloc'd buffer; returns it (NULL on error). */
static inline unsigned char *test_read_file(const char *path, size_t *len) {
  struct stat st;
  unsigned char *buf;
  size_t off = 0;
  int fd = open(path, O_RDONLY);

  if (fd < 0)
    return NULL;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return NULL;
  }
  buf = t_alloc((size_t)st.st_size + 1);
  while (off < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
    if (r <= 0)
      break;
    off += (size_t)r;
  }
  close(fd);
  *len = off;
  return buf;
}

/* canary_route_claim() the way a caller racing other processes uses it:
 * the claim lock is tried once, so CANARY_EBUSY means "another process is
 * claiming right now, try again" (a worker retries at its next tick). */
static inline int test_claim_retry(canary_seg_t *seg, const char *key,
                                   size_t key_len, const char *label,
                                   size_t label_len) {
  for (;;) {
    int rc = canary_route_claim(seg, key, key_len, label, label_len);
    if (rc != CANARY_EBUSY)
      return rc;
    usleep(100);
  }
}

/* ---- weights tables ------------------------------------------------- */

/* Fills a table with n upstreams named "<prefix><i>" and the weights. */
static inline void test_table(struct canary_table *t, const char *prefix,
                              uint32_t n, const uint32_t *weights) {
  memset(t, 0, sizeof *t);
  t->n = n;
  for (uint32_t i = 0; i < n && i < CANARY_MAX_UPSTREAMS; i++) {
    t->weights[i] = weights[i];
    snprintf(t->names[i], CANARY_NAME_MAX, "%s%u", prefix, i);
  }
}

/* Judging parameters with no gate set: threshold analysis, the
 * statistical defaults of the plugin config (confidence 0.98, allowed
 * increase 0.25), min_requests 0. */
static inline void test_judge_unset(struct canary_judge_params *j) {
  memset(j, 0, sizeof *j);
  j->analysis = CANARY_ANALYSIS_THRESHOLD;
  j->max_error_rate = j->max_p95_us = j->max_p99_us = -1;
  j->max_p95_ratio = j->max_p99_ratio = j->max_error_rate_delta = -1;
  j->rollback_error_rate = j->rollback_p99_ratio = -1;
  j->confidence = 0.98;
  j->allowed_increase = 0.25;
}

/* ---- progressions --------------------------------------------------- */

/* The runbook's progression over `nsteps` steps (weights on 0..10000) of
 * upstream 1: promote at the end, the runbook's absolute gates (error
 * rate 1 %, p95 1 s, p99 2 s) over 1 s windows of at least 50 requests,
 * `failure_limit` failed windows in a row pause. */
static inline void test_runbook(struct canary_prog_params *p,
                                const uint32_t *steps, uint32_t nsteps,
                                uint32_t failure_limit) {
  memset(p, 0, sizeof *p);
  p->canary = 1;
  p->nsteps = nsteps;
  memcpy(p->steps, steps, nsteps * sizeof *steps);
  p->interval_ms = 1000;
  p->failure_limit = failure_limit;
  p->on_success = CANARY_PROG_PROMOTE;
  test_judge_unset(&p->judge);
  p->judge.min_requests = 50;
  p->judge.max_error_rate = 0.01;
  p->judge.max_p95_us = 1000 * 1000.0;
  p->judge.max_p99_us = 2000 * 1000.0;
}

/* Claims route "r" (label "ai") and publishes stable "up0" 90 % and
 * canary "up1" 10 % with progression p; returns the route. */
static inline int test_route_with(struct test_fx *fx,
                                  const struct canary_prog_params *p) {
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

#endif /* CANARY_TEST_UTIL_H */
