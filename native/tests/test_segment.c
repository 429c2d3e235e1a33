/*
 * test_segment.c - creating, attaching, recovering and sharing the segment.
 *
 * What an operator would notice: two workers racing at start-up end up on
 * different segments (split counters and weights diverge); a corrupt file
 * crashes the gateway or is trusted; a read-only canarystat modifies the
 * file; counters reset on `nginx -s reload`; a file that another user can
 * write (or a symlink planted in its place) is used; a half-made file is
 * mapped; .bad-* copies fill the disk; a worker waits for ever at start.
 */
#include "test_util.h"

#include "internal.h" /* header layout, to corrupt files precisely */

#include <grp.h>
#include <sys/file.h>

#define SEG_ROUTES 8u
#define SEG_UPSTREAMS 4u

static int setup(void **state) {
  return test_fx_setup(state, 0, 0); /* a directory, no segment yet */
}

static int teardown(void **state) {
  return test_fx_teardown(state);
}

/* Counts "<base>.bad-<unix>-<pid>" files next to `path`; the last one's
 * name, time and pid go to the out-parameters (may be NULL). */
static int bad_files(const char *dir, const char *path, char *name_out,
                     size_t name_cap, long long *unix_out, long *pid_out) {
  const char *base = strrchr(path, '/');
  char prefix[PATH_MAX];
  size_t plen;
  DIR *d = opendir(dir);
  struct dirent *e;
  int count = 0;

  base = base ? base + 1 : path;
  snprintf(prefix, sizeof prefix, "%s.bad-", base);
  plen = strlen(prefix);
  if (d == NULL)
    return -1;
  while ((e = readdir(d)) != NULL) {
    long long u;
    long pid;
    int used = 0;
    if (strncmp(e->d_name, prefix, plen) != 0)
      continue;
    if (sscanf(e->d_name + plen, "%lld-%ld%n", &u, &pid, &used) != 2 ||
        e->d_name[plen + (size_t)used] != '\0')
      continue; /* not the documented name: does not count */
    count++;
    if (name_out)
      snprintf(name_out, name_cap, "%s/%s", dir, e->d_name);
    if (unix_out)
      *unix_out = u;
    if (pid_out)
      *pid_out = pid;
  }
  closedir(d);
  return count;
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* Makes a valid segment at path with one claimed route, closes it and
 * returns its bytes (malloc'd) in *data / *len. */
static void make_valid_file(const char *path, unsigned char **data,
                            size_t *len) {
  canary_seg_t *seg = NULL;
  char why[256] = "";
  int rc =
      test_seg_open(&seg, path, SEG_ROUTES, SEG_UPSTREAMS, 0, why, sizeof why);
  assert_int_equal(rc, CANARY_SEG_CREATED);
  assert_true(canary_route_claim(seg, "r", 1, "", 0) >= 0);
  test_seg_close(seg);
  *data = test_read_file(path, len);
  assert_non_null(*data);
}

/* Writes `data` to the fixture path, opens it read-write, and asserts the
 * documented recovery: CANARY_SEG_RECREATED, a non-empty `why`, the old
 * bytes kept unchanged in "<path>.bad-<unix>-<pid>", and a fresh, usable,
 * 0600 segment of the requested geometry in its place. */
static void expect_recreated(struct test_fx *fx, const void *data,
                             size_t len) {
  canary_seg_t *seg = NULL;
  char why[512];
  char bad[PATH_MAX];
  long long bad_unix = 0;
  long bad_pid = 0;
  struct canary_seg_info info;
  struct stat st;
  unsigned char *kept;
  size_t kept_len = 0;
  time_t t0, t1;
  int rc;

  assert_int_equal(test_write_file(fx->path, data, len), 0);
  memset(why, 0, sizeof why);
  t0 = time(NULL);
  rc = test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, why,
                     sizeof why);
  t1 = time(NULL);
  if (rc != CANARY_SEG_RECREATED)
    fail_msg("open of a bad file returned %d (%s), want RECREATED; why: %s",
             rc, canary_strerror(rc), why);
  assert_non_null(seg);
  if (why[0] == '\0')
    fail_msg("RECREATED without a reason in `why`");

  assert_int_equal(
      bad_files(fx->dir, fx->path, bad, sizeof bad, &bad_unix, &bad_pid), 1);
  assert_true(bad_unix >= (long long)t0 && bad_unix <= (long long)t1);
  assert_int_equal(bad_pid, (long)getpid());
  kept = test_read_file(bad, &kept_len);
  assert_non_null(kept);
  assert_int_equal(kept_len, len);
  if (len > 0)
    assert_memory_equal(kept, data, len);
  t_free(kept);

  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.max_routes, SEG_ROUTES);
  assert_int_equal(info.max_upstreams, SEG_UPSTREAMS);
  assert_int_equal(info.routes_used, 0);
  assert_int_equal(info.layout_version, CANARY_LAYOUT_VERSION);
  assert_int_equal(stat(fx->path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal((uint64_t)st.st_size, info.size);
  assert_int_equal(canary_route_claim(seg, "fresh", 5, "", 0), 0);
  test_seg_close(seg);

  /* The replacement is itself a good segment: it attaches next time. */
  seg = NULL;
  rc = test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, why,
                     sizeof why);
  assert_int_equal(rc, CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_find(seg, "fresh", 5), 0);
  test_seg_close(seg);
}

/* ---- argument errors ------------------------------------------------- */

static void seg_open_rejects_bad_arguments(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  char why[64];
  char missing[PATH_MAX];
  struct {
    const char *path;
    uint32_t routes, ups;
    int flags;
    const char *what;
  } cases[] = {
      {NULL, 8, 4, 0, "NULL path"},
      {"", 8, 4, 0, "empty path"},
      {fx->path, 0, 4, 0, "max_routes 0"},
      {fx->path, 65537, 4, 0, "max_routes 65537"},
      {fx->path, 8, 0, 0, "max_upstreams 0"},
      {fx->path, 8, 17, 0, "max_upstreams 17"},
      {fx->path, 8, 4, 0x40, "unknown flag"},
  };

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int rc;
    memset(why, 0, sizeof why);
    rc = test_seg_open(&seg, cases[i].path, cases[i].routes, cases[i].ups,
                       cases[i].flags, why, sizeof why);
    if (rc != CANARY_EINVAL)
      fail_msg("%s: got %d, want CANARY_EINVAL", cases[i].what, rc);
    if (why[0] == '\0')
      fail_msg("%s: `why` left empty", cases[i].what);
    /* Validated before touching anything: no file appears. */
    assert_false(file_exists(fx->path));
  }

  assert_int_equal(test_seg_open(NULL, fx->path, 8, 4, 0, NULL, 0),
                   CANARY_EINVAL);
  assert_false(file_exists(fx->path));

  /* `why` may be NULL; a short `why` is cut, never overrun. */
  assert_int_equal(test_seg_open(&seg, NULL, 8, 4, 0, NULL, 0), CANARY_EINVAL);
  memset(why, 'Z', sizeof why);
  assert_int_equal(test_seg_open(&seg, NULL, 8, 4, 0, why, 8), CANARY_EINVAL);
  assert_int_equal(strnlen(why, 8), 7);
  for (size_t i = 8; i < sizeof why; i++)
    assert_int_equal(why[i], 'Z');

  /* An impossible path is an error with a reason, not a crash. */
  test_path(missing, sizeof missing, fx->dir, "no/such/dir/seg");
  memset(why, 0, sizeof why);
  assert_true(test_seg_open(&seg, missing, 8, 4, 0, why, sizeof why) < 0);
  assert_true(why[0] != '\0');

  /* NULL-safe close; info validates its arguments. */
  canary_seg_close(NULL);
  {
    struct canary_seg_info info;
    assert_true(canary_seg_info(NULL, &info) < 0);
  }
}

/* ---- create and attach ----------------------------------------------- */

static void seg_create_then_attach(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *a = NULL, *b = NULL;
  struct canary_seg_info ia, ib;
  struct stat st;
  char why[256] = "";
  time_t t0, t1;
  mode_t old;
  int rc;

  /* With umask 0 the engine's own mode is what lands on disk: the segment
   * holds routing state that no other user may read or change. */
  old = umask(0);
  t0 = time(NULL);
  rc = test_seg_open(&a, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, why,
                     sizeof why);
  t1 = time(NULL);
  umask(old);
  assert_int_equal(rc, CANARY_SEG_CREATED);
  assert_non_null(a);
  assert_int_equal(stat(fx->path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_true(S_ISREG(st.st_mode));

  assert_int_equal(canary_seg_info(a, &ia), 0);
  assert_int_equal(ia.max_routes, SEG_ROUTES);
  assert_int_equal(ia.max_upstreams, SEG_UPSTREAMS);
  assert_int_equal(ia.routes_used, 0);
  assert_int_equal(ia.layout_version, CANARY_LAYOUT_VERSION);
  assert_int_equal(ia.size, (uint64_t)st.st_size);
  assert_true(ia.route_bytes > 0);
  assert_true(ia.size >= ia.route_bytes * SEG_ROUTES);
  assert_true(ia.created_unix >= (uint64_t)t0 &&
              ia.created_unix <= (uint64_t)t1);

  /* A second open attaches, and an existing segment keeps its own sizes
   * whatever the caller asks for. */
  rc = test_seg_open(&b, fx->path, 2, 16, 0, why, sizeof why);
  assert_int_equal(rc, CANARY_SEG_ATTACHED);
  assert_int_equal(canary_seg_info(b, &ib), 0);
  assert_int_equal(ib.max_routes, SEG_ROUTES);
  assert_int_equal(ib.max_upstreams, SEG_UPSTREAMS);
  assert_int_equal(ib.size, ia.size);
  assert_int_equal(ib.created_unix, ia.created_unix);

  /* Both handles are the same memory. */
  assert_int_equal(canary_route_claim(a, "shared", 6, "Shared", 6), 0);
  assert_int_equal(canary_route_find(b, "shared", 6), 0);
  assert_int_equal(canary_seg_info(b, &ib), 0);
  assert_int_equal(ib.routes_used, 1);
  assert_int_equal(bad_files(fx->dir, fx->path, NULL, 0, NULL, NULL), 0);

  test_seg_close(a);
  test_seg_close(b);
}

/* nginx workers keep the segment mapped for their whole life: another
 * process (the next worker, canarystat) must still be able to attach at
 * once.  Checked in a child with a deadline, so that a blocking open is
 * reported as such instead of hanging the suite. */
static void attach_child(const char *path, int flags) {
  canary_seg_t *seg = NULL;
  int rc =
      test_seg_open(&seg, path, SEG_ROUTES, SEG_UPSTREAMS, flags, NULL, 0);
  CHILD_CHECK(rc == CANARY_SEG_ATTACHED, 2);
  CHILD_CHECK(canary_route_find(seg, "held", 4) == 0, 3);
  test_seg_close(seg);
  _exit(0);
}

static void expect_attach_while_mapped(const char *path, int flags,
                                       const char *what) {
  pid_t pid = test_fork();
  double deadline = test_now() + 5.0 * (double)test_time_limit(1);
  int st;

  assert_true(pid >= 0);
  if (pid == 0)
    attach_child(path, flags);
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
      break;
    if (test_now() > deadline) {
      kill(pid, SIGKILL);
      (void)test_wait_status(pid);
      fail_msg("%s open of a segment that another handle keeps mapped did "
               "not return within 5 s: it blocks (is the creation flock() "
               "still held through the mapping?)",
               what);
    }
    usleep(2000);
  }
  for (int i = 0; i < TEST_MAX_CHILDREN; i++)
    if (test_children()[i] == pid)
      test_children()[i] = 0;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("%s attach while mapped: child status 0x%x", what, st);
}

static void seg_attach_while_another_process_has_it_mapped(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *creator = NULL, *attached = NULL;

  /* The creator keeps its mapping, like the first nginx worker. */
  assert_int_equal(
      test_seg_open(&creator, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_CREATED);
  assert_int_equal(canary_route_claim(creator, "held", 4, "", 0), 0);
  expect_attach_while_mapped(fx->path, 0, "read-write");
  expect_attach_while_mapped(fx->path, CANARY_SEG_READONLY, "read-only");
  test_seg_close(creator);

  /* Same for a process that attached (rather than created) and stays. */
  assert_int_equal(test_seg_open(&attached, fx->path, SEG_ROUTES,
                                 SEG_UPSTREAMS, 0, NULL, 0),
                   CANARY_SEG_ATTACHED);
  expect_attach_while_mapped(fx->path, 0, "read-write (after attach)");
  test_seg_close(attached);
}

/* N children open a path that does not exist yet, all at the same moment.
 * Exactly one may initialise; the others must attach to the very same
 * segment (never set a half-made file aside). */
#define RACE_CHILDREN 6

static void race_child(const char *path, struct test_gate *gate, int me) {
  canary_seg_t *seg = NULL;
  struct canary_seg_info info;
  char key[32], why[256];
  double deadline;
  int rc, code;

  test_gate_wait(gate);
  rc =
      test_seg_open(&seg, path, SEG_ROUTES, SEG_UPSTREAMS, 0, why, sizeof why);
  CHILD_CHECK(rc != CANARY_SEG_RECREATED, 3);
  CHILD_CHECK(rc == CANARY_SEG_CREATED || rc == CANARY_SEG_ATTACHED, 2);
  code = rc == CANARY_SEG_CREATED ? 10 : 11;
  snprintf(key, sizeof key, "child-%d", me);
  CHILD_CHECK(test_claim_retry(seg, key, strlen(key), "", 0) >= 0, 4);

  /* Wait until every child has claimed its route in *this* segment. */
  deadline = test_now() + 10.0;
  for (;;) {
    CHILD_CHECK(canary_seg_info(seg, &info) == 0, 5);
    if (info.routes_used == RACE_CHILDREN)
      break;
    CHILD_CHECK(info.routes_used < RACE_CHILDREN, 6);
    CHILD_CHECK(test_now() < deadline, 7); /* others are elsewhere */
    usleep(1000);
  }
  for (int j = 0; j < RACE_CHILDREN; j++) {
    snprintf(key, sizeof key, "child-%d", j);
    CHILD_CHECK(canary_route_find(seg, key, strlen(key)) >= 0, 8);
  }
  test_seg_close(seg);
  _exit(code);
}

static void seg_concurrent_open_has_one_initialiser(void **state) {
  struct test_fx *fx = *state;
  uint64_t rounds = test_scaled_min(8, 2);

  for (uint64_t round = 0; round < rounds; round++) {
    char path[PATH_MAX], name[32];
    pid_t pids[RACE_CHILDREN];
    struct test_gate gate;
    int created = 0, attached = 0;
    canary_seg_t *seg = NULL;
    struct canary_seg_info info;

    snprintf(name, sizeof name, "race-%llu.seg", (unsigned long long)round);
    test_path(path, sizeof path, fx->dir, name);
    assert_int_equal(test_gate_init(&gate), 0);
    for (int i = 0; i < RACE_CHILDREN; i++) {
      pids[i] = test_fork();
      assert_true(pids[i] >= 0);
      if (pids[i] == 0)
        race_child(path, &gate, i);
    }
    test_gate_open(&gate);
    for (int i = 0; i < RACE_CHILDREN; i++) {
      int st = test_wait_status(pids[i]);
      if (st == 10)
        created++;
      else if (st == 11)
        attached++;
      else
        fail_msg("round %llu child %d exited %d (3: RECREATED, 7: not on "
                 "the same segment as the others)",
                 (unsigned long long)round, i, st);
    }
    assert_int_equal(created, 1);
    assert_int_equal(attached, RACE_CHILDREN - 1);
    assert_int_equal(bad_files(fx->dir, path, NULL, 0, NULL, NULL), 0);

    assert_int_equal(
        test_seg_open(&seg, path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
        CANARY_SEG_ATTACHED);
    assert_int_equal(canary_seg_info(seg, &info), 0);
    assert_int_equal(info.routes_used, RACE_CHILDREN);
    test_seg_close(seg);
  }
}

/* ---- recovery from bad files ----------------------------------------- */

static void seg_recovers_truncated_file(void **state) {
  struct test_fx *fx = *state;
  unsigned char *good;
  size_t len;

  make_valid_file(fx->path, &good, &len);
  /* Cut inside the route area: the header is intact, the size is not. */
  expect_recreated(fx, good, len / 2);
  t_free(good);
}

static void seg_recovers_file_shorter_than_header(void **state) {
  struct test_fx *fx = *state;
  unsigned char *good;
  size_t len;

  make_valid_file(fx->path, &good, &len);
  expect_recreated(fx, good, 100); /* magic and version, then nothing */
  t_free(good);
}

/* An existing empty file (a creator killed before it wrote anything, or
 * `touch`): either initialised in place (CREATED) or set aside
 * (RECREATED); both are recoveries, but never an error or a trusted
 * empty segment. */
static void seg_recovers_empty_file(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  struct canary_seg_info info;
  char why[256] = "";
  int rc;

  assert_int_equal(test_write_file(fx->path, "", 0), 0);
  rc = test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, why,
                     sizeof why);
  if (rc != CANARY_SEG_CREATED && rc != CANARY_SEG_RECREATED)
    fail_msg("empty file: open returned %d (%s): %s", rc, canary_strerror(rc),
             why);
  if (rc == CANARY_SEG_RECREATED) {
    assert_true(why[0] != '\0');
    assert_int_equal(bad_files(fx->dir, fx->path, NULL, 0, NULL, NULL), 1);
  }
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.max_routes, SEG_ROUTES);
  assert_int_equal(info.routes_used, 0);
  assert_int_equal(canary_route_claim(seg, "x", 1, "", 0), 0);
  test_seg_close(seg);
  seg = NULL;
  assert_int_equal(test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0,
                                 why, sizeof why),
                   CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_find(seg, "x", 1), 0);
  test_seg_close(seg);
}

static void seg_recovers_foreign_file(void **state) {
  struct test_fx *fx = *state;
  unsigned char *good, *junk;
  size_t len;
  uint64_t rs = 42;

  /* Random bytes exactly as long as a real segment, so that no size
   * check alone can tell. */
  make_valid_file(fx->path, &good, &len);
  junk = t_alloc(len);
  assert_non_null(junk);
  for (size_t i = 0; i < len; i++)
    junk[i] = (unsigned char)test_rand_next(&rs);
  expect_recreated(fx, junk, len);
  t_free(junk);
  t_free(good);
}

static void seg_recovers_other_layout_version(void **state) {
  struct test_fx *fx = *state;
  unsigned char *good;
  size_t len;
  uint32_t v = CANARY_LAYOUT_VERSION + 1;

  make_valid_file(fx->path, &good, &len);
  memcpy(good + offsetof(struct seg_header, layout_version), &v, sizeof v);
  expect_recreated(fx, good, len);
  t_free(good);
}

static void seg_recovers_checksum_mismatch(void **state) {
  struct test_fx *fx = *state;
  unsigned char *good;
  size_t len;
  uint64_t t;

  /* Change a field that nothing but the checksum vouches for. */
  make_valid_file(fx->path, &good, &len);
  memcpy(&t, good + offsetof(struct seg_header, created_unix), sizeof t);
  t ^= 1;
  memcpy(good + offsetof(struct seg_header, created_unix), &t, sizeof t);
  expect_recreated(fx, good, len);
  t_free(good);
}

/* ---- read-only ------------------------------------------------------- */

static void expect_readonly_refuses(struct test_fx *fx, const void *data,
                                    size_t len, const char *what) {
  canary_seg_t *seg = NULL;
  struct stat before, after;
  unsigned char *now;
  size_t now_len = 0;
  char why[256];
  int rc;

  assert_int_equal(test_write_file(fx->path, data, len), 0);
  assert_int_equal(stat(fx->path, &before), 0);
  memset(why, 0, sizeof why);
  rc = test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                     CANARY_SEG_READONLY, why, sizeof why);
  if (rc >= 0)
    fail_msg("%s: read-only open returned %d, want an error", what, rc);
  if (why[0] == '\0')
    fail_msg("%s: read-only open failed without a reason", what);
  /* Untouched: same inode, same bytes, nothing set aside. */
  assert_int_equal(stat(fx->path, &after), 0);
  assert_int_equal(before.st_ino, after.st_ino);
  assert_int_equal(before.st_size, after.st_size);
  now = test_read_file(fx->path, &now_len);
  assert_non_null(now);
  assert_int_equal(now_len, len);
  if (len > 0)
    assert_memory_equal(now, data, len);
  t_free(now);
  assert_int_equal(bad_files(fx->dir, fx->path, NULL, 0, NULL, NULL), 0);
}

static void seg_readonly_never_touches_a_bad_file(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  unsigned char *good, *junk;
  size_t len;
  uint64_t rs = 7;
  char why[256] = "";

  /* A missing file is not created. */
  assert_true(test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                            CANARY_SEG_READONLY, why, sizeof why) < 0);
  assert_true(why[0] != '\0');
  assert_false(file_exists(fx->path));

  make_valid_file(fx->path, &good, &len);
  expect_readonly_refuses(fx, good, len / 2, "truncated");
  expect_readonly_refuses(fx, "", 0, "empty");
  junk = t_alloc(len);
  assert_non_null(junk);
  for (size_t i = 0; i < len; i++)
    junk[i] = (unsigned char)test_rand_next(&rs);
  expect_readonly_refuses(fx, junk, len, "foreign");
  good[offsetof(struct seg_header, created_unix)] ^= 1;
  expect_readonly_refuses(fx, good, len, "checksum");
  t_free(junk);
  t_free(good);
}

static void ro_nonsticky_pick_child(const char *path, int route) {
  canary_seg_t *ro = NULL;
  int rc;

  CHILD_CHECK(test_seg_open(&ro, path, SEG_ROUTES, SEG_UPSTREAMS,
                            CANARY_SEG_READONLY, NULL,
                            0) == CANARY_SEG_ATTACHED,
              2);
  /* A non-sticky pick advances the shared sequence, a write: on a
   * read-only mapping it must fail cleanly (or not write), never fault. */
  rc = canary_route_pick(ro, route, NULL, 0, NULL);
  test_seg_close(ro);
  CHILD_CHECK(rc == CANARY_EREADONLY || (rc >= 0 && rc < 2), 3);
  _exit(0);
}

static void seg_readonly_attach_reads_and_refuses_writes(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *rw = NULL, *ro = NULL;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  const uint32_t eff[2] = {5000, 5000};
  struct canary_route_view v_rw, v_ro, v_after;
  struct canary_hist_snapshot *s_rw, *s_ro, *s_after;
  struct canary_seg_info info;
  unsigned char *bytes_before, *bytes_after;
  size_t len_before, len_after, plen;
  char err[128], prom[1 << 16];
  uint64_t gen;
  int route, rc;
  pid_t pid;

  s_rw = t_alloc(sizeof *s_rw);
  s_ro = t_alloc(sizeof *s_ro);
  s_after = t_alloc(sizeof *s_after);
  assert_non_null(s_rw);
  assert_non_null(s_ro);
  assert_non_null(s_after);

  assert_int_equal(
      test_seg_open(&rw, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_CREATED);
  route = canary_route_claim(rw, "svc", 3, "Service", 7);
  assert_true(route >= 0);
  test_table(&t, "up", 2, w);
  assert_int_equal(
      canary_route_publish(rw, route, &t, 1, &gen, err, sizeof err), 0);
  assert_int_equal(canary_route_record(rw, route, 0, 1500, 200, 2), 0);
  assert_int_equal(canary_route_record(rw, route, 1, 2500, 503, 0), 0);

  bytes_before = test_read_file(fx->path, &len_before);
  assert_non_null(bytes_before);

  /* Sizes passed to a read-only open do not matter. */
  rc = test_seg_open(&ro, fx->path, 1, 1, CANARY_SEG_READONLY, NULL, 0);
  assert_int_equal(rc, CANARY_SEG_ATTACHED);
  assert_int_equal(canary_seg_info(ro, &info), 0);
  assert_int_equal(info.max_routes, SEG_ROUTES);
  assert_int_equal(info.max_upstreams, SEG_UPSTREAMS);
  assert_int_equal(info.routes_used, 1);

  /* Reads work and see what the writer wrote. */
  assert_int_equal(canary_route_find(ro, "svc", 3), route);
  assert_int_equal(canary_route_read(rw, route, &v_rw), 0);
  assert_int_equal(canary_route_read(ro, route, &v_ro), 0);
  assert_memory_equal(&v_rw, &v_ro, sizeof v_rw);
  assert_int_equal(v_ro.generation, gen);
  assert_int_equal(canary_hist_snapshot(rw, route, 1, s_rw), 0);
  assert_int_equal(canary_hist_snapshot(ro, route, 1, s_ro), 0);
  assert_memory_equal(s_rw, s_ro, sizeof *s_rw);
  assert_int_equal(canary_prom_render(ro, prom, sizeof prom, &plen), 0);
  assert_true(plen > 0);
  /* Sticky picks only read. */
  assert_int_equal(canary_route_pick(ro, route, "alice", 5, NULL),
                   canary_route_pick(rw, route, "alice", 5, NULL));

  /* Every write is refused. */
  assert_int_equal(canary_route_claim(ro, "svc", 3, "Other", 5),
                   CANARY_EREADONLY);
  assert_int_equal(canary_route_claim(ro, "new", 3, "", 0), CANARY_EREADONLY);
  assert_int_equal(
      canary_route_publish(ro, route, &t, 2, NULL, err, sizeof err),
      CANARY_EREADONLY);
  assert_int_equal(
      canary_route_set_effective(ro, route, eff, 2, NULL, err, sizeof err),
      CANARY_EREADONLY);
  assert_int_equal(canary_route_record(ro, route, 0, 100, 200, -1),
                   CANARY_EREADONLY);
  assert_int_equal(canary_route_event(ro, route, CANARY_EVENT_FALLBACK),
                   CANARY_EREADONLY);

  pid = test_fork();
  assert_true(pid >= 0);
  if (pid == 0)
    ro_nonsticky_pick_child(fx->path, route);
  {
    int st = test_wait_status(pid);
    if (st != 0)
      fail_msg("non-sticky pick on a read-only segment: child exited %d "
               "(%s)",
               st,
               st == 128 + SIGSEGV ? "SIGSEGV: pick wrote to the read-only "
                                     "mapping"
               : st == 3           ? "unexpected return code"
                                   : "see test");
  }

  /* Nothing changed, byte for byte. */
  assert_int_equal(canary_route_read(rw, route, &v_after), 0);
  assert_memory_equal(&v_rw, &v_after, sizeof v_rw);
  assert_int_equal(canary_hist_snapshot(rw, route, 1, s_after), 0);
  assert_memory_equal(s_rw, s_after, sizeof *s_rw);
  bytes_after = test_read_file(fx->path, &len_after);
  assert_non_null(bytes_after);
  assert_int_equal(len_after, len_before);
  assert_memory_equal(bytes_before, bytes_after, len_before);

  t_free(bytes_before);
  t_free(bytes_after);
  t_free(s_rw);
  t_free(s_ro);
  t_free(s_after);
  test_seg_close(ro);
  test_seg_close(rw);
}

/* ---- persistence ----------------------------------------------------- */

static uint64_t snap_count(const struct canary_hist_snapshot *s) {
  uint64_t c = 0;
  for (int i = 0; i < CANARY_HIST_BUCKETS; i++)
    c += s->buckets[i];
  return c;
}

/* A worker that records and then dies without closing anything. */
static void crash_child(const char *path, int fd) {
  canary_seg_t *seg = NULL;
  int route;
  CHILD_CHECK(test_seg_open(&seg, path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL,
                            0) == CANARY_SEG_ATTACHED,
              2);
  route = canary_route_find(seg, "svc", 3);
  CHILD_CHECK(route >= 0, 3);
  for (int i = 0; i < 50; i++)
    CHILD_CHECK(canary_route_record(seg, route, 0, 700, 200, 1) == 0, 4);
  CHILD_CHECK(write(fd, "k", 1) == 1, 5);
  for (;;)
    pause(); /* until SIGKILL */
}

static void seg_survives_reopen_with_counters_intact(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  struct canary_table t;
  const uint32_t w[2] = {7500, 2500};
  struct canary_route_view v1, v2;
  struct canary_hist_snapshot *s1, *s2;
  uint64_t gen, last_count = 0, last_sum = 0;
  int route, sticky;
  char err[128];

  s1 = t_alloc(sizeof *s1);
  s2 = t_alloc(sizeof *s2);
  assert_non_null(s1);
  assert_non_null(s2);

  assert_int_equal(
      test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_CREATED);
  route = canary_route_claim(seg, "svc", 3, "Service", 7);
  assert_true(route >= 0);
  test_table(&t, "up", 2, w);
  assert_int_equal(
      canary_route_publish(seg, route, &t, 99, &gen, err, sizeof err), 0);
  for (int i = 0; i < 100; i++)
    assert_int_equal(canary_route_record(seg, route, 0, 1000 + (uint64_t)i,
                                         200, CANARY_TRACE_GENERATED),
                     0);
  assert_int_equal(canary_route_event(seg, route, CANARY_EVENT_OVERRIDE), 0);
  sticky = canary_route_pick(seg, route, "bob", 3, NULL);
  assert_int_equal(canary_route_read(seg, route, &v1), 0);
  assert_int_equal(canary_hist_snapshot(seg, route, 0, s1), 0);
  test_seg_close(seg);
  seg = NULL;

  /* A reload: everything is still there. */
  assert_int_equal(
      test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_find(seg, "svc", 3), route);
  assert_int_equal(canary_route_read(seg, route, &v2), 0);
  assert_memory_equal(&v1, &v2, sizeof v1);
  assert_int_equal(v2.generation, gen);
  assert_int_equal(v2.trace[CANARY_TRACE_GENERATED], 100);
  assert_int_equal(v2.events[CANARY_EVENT_OVERRIDE], 1);
  assert_int_equal(canary_hist_snapshot(seg, route, 0, s2), 0);
  assert_memory_equal(s1, s2, sizeof *s1);
  assert_int_equal(canary_route_pick(seg, route, "bob", 3, NULL), sticky);
  last_count = snap_count(s2);
  last_sum = s2->sum_us;
  assert_int_equal(last_count, 100);

  /* A worker crashes mid-flight: what it recorded stays. */
  {
    int pfd[2];
    char c;
    pid_t pid;
    assert_int_equal(pipe(pfd), 0);
    pid = test_fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(pfd[0]);
      crash_child(fx->path, pfd[1]);
    }
    close(pfd[1]);
    assert_int_equal(read(pfd[0], &c, 1), 1);
    close(pfd[0]);
    kill(pid, SIGKILL);
    assert_int_equal(test_wait_status(pid), 128 + SIGKILL);
  }

  /* Several reloads: counters only grow. */
  for (int cycle = 0; cycle < 3; cycle++) {
    uint64_t c;
    test_seg_close(seg);
    seg = NULL;
    assert_int_equal(
        test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
        CANARY_SEG_ATTACHED);
    assert_int_equal(canary_hist_snapshot(seg, route, 0, s2), 0);
    c = snap_count(s2);
    assert_true(c >= last_count);
    assert_true(s2->sum_us >= last_sum);
    if (cycle == 0)
      assert_int_equal(c, 150); /* 100 + the crashed worker's 50 */
    assert_int_equal(s2->status[2], c);
    last_count = c;
    last_sum = s2->sum_us;
    assert_int_equal(canary_route_record(seg, route, 0, 5, 200, -1), 0);
  }
  assert_int_equal(canary_hist_snapshot(seg, route, 0, s2), 0);
  assert_int_equal(snap_count(s2), 153);
  assert_int_equal(canary_route_read(seg, route, &v2), 0);
  assert_int_equal(v2.generation, gen);
  assert_int_equal(v2.trace[CANARY_TRACE_TRACEPARENT], 50);

  test_seg_close(seg);
  t_free(s1);
  t_free(s2);
}

/* ---- files that are not ours ------------------------------------------ */

/* Both opens (read-write and, when `ro_too`, read-only) of the fixture
 * path are refused as unsafe with `needle` in the reason, and the file is
 * left exactly where and as it was: it is not ours to move. */
static void expect_unsafe(struct test_fx *fx, const char *needle, int ro_too) {
  canary_seg_t *seg = NULL;
  unsigned char *before = NULL, *after = NULL;
  size_t before_len = 0, after_len = 0;
  char why[512];
  struct stat st0, st1;
  int rc;

  assert_int_equal(lstat(fx->path, &st0), 0);
  if (S_ISREG(st0.st_mode))
    before = test_read_file(fx->path, &before_len);
  for (int ro = 0; ro <= ro_too; ro++) {
    memset(why, 0, sizeof why);
    rc = test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                       ro ? CANARY_SEG_READONLY : 0, why, sizeof why);
    if (rc != CANARY_EUNSAFE)
      fail_msg("%s open returned %d (%s), want CANARY_EUNSAFE; why: %s",
               ro ? "read-only" : "read-write", rc, canary_strerror(rc), why);
    assert_null(seg);
    if (strstr(why, needle) == NULL || strstr(why, fx->path) == NULL)
      fail_msg("reason \"%s\" does not name the file and \"%s\"", why,
               needle);
  }
  assert_string_equal(canary_strerror(CANARY_EUNSAFE),
                      "segment file is unsafe");
  assert_int_equal(lstat(fx->path, &st1), 0);
  assert_int_equal(st1.st_ino, st0.st_ino);
  assert_int_equal(st1.st_mode, st0.st_mode);
  assert_int_equal(st1.st_uid, st0.st_uid);
  if (before != NULL) {
    after = test_read_file(fx->path, &after_len);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len);
    t_free(after);
    t_free(before);
  }
  assert_int_equal(bad_files(fx->dir, fx->path, NULL, 0, NULL, NULL), 0);
}

static void seg_refuses_a_symlink(void **state) {
  struct test_fx *fx = *state;
  char target[PATH_MAX];
  unsigned char *data, *now;
  size_t len, now_len;

  test_path(target, sizeof target, fx->dir, "real.seg");
  make_valid_file(target, &data, &len);
  assert_int_equal(symlink(target, fx->path), 0);
  expect_unsafe(fx, "symbolic link", 1);
  now = test_read_file(target, &now_len);
  assert_int_equal(now_len, len);
  assert_memory_equal(now, data, len);
  t_free(now);
  t_free(data);
}

static void seg_refuses_group_or_other_access(void **state) {
  struct test_fx *fx = *state;
  static const mode_t modes[] = {0640, 0604, 0660, 0644, 0606, 0700, 0610};
  canary_seg_t *seg = NULL;
  unsigned char *data;
  size_t len;

  make_valid_file(fx->path, &data, &len);
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    char needle[32];
    assert_int_equal(chmod(fx->path, modes[i]), 0);
    snprintf(needle, sizeof needle, "mode %04o", (unsigned)modes[i]);
    expect_unsafe(fx, needle, 1);
  }
  /* The same file, made private again, is ours. */
  assert_int_equal(chmod(fx->path, 0600), 0);
  assert_int_equal(
      test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_find(seg, "r", 1), 0);
  test_seg_close(seg);
  t_free(data);
}

static void seg_refuses_what_is_not_a_regular_file(void **state) {
  struct test_fx *fx = *state;
  assert_int_equal(mkfifo(fx->path, 0600), 0);
  /* (and never blocks on the FIFO waiting for a writer) */
  expect_unsafe(fx, "not a regular file", 1);
}

#define NOBODY 65534u

/* Root only: a file of another user is refused read-write; root may still
 * read it (canarystat run by the operator). */
static void seg_refuses_a_file_of_another_user(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  unsigned char *data;
  size_t len;

  if (geteuid() != 0)
    skip();
  make_valid_file(fx->path, &data, &len);
  assert_int_equal(chown(fx->path, NOBODY, NOBODY), 0);
  expect_unsafe(fx, "owned by uid 65534", 0);
  assert_int_equal(test_seg_open(&seg, fx->path, 0, 0, CANARY_SEG_READONLY,
                                 NULL, 0),
                   CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_find(seg, "r", 1), 0);
  test_seg_close(seg);
  t_free(data);
}

/* ---- a root master preparing the file for its workers ------------------ */

/* canary_seg_prepare() with the default statistics pool and grace. */
static int prepare_for(const char *path, uint32_t routes, uint32_t ups,
                       uint32_t uid, uint32_t gid, char *why,
                       size_t why_len) {
  struct canary_seg_params p = {routes, ups, 0, 0, 0, 0};
  return canary_seg_prepare(path, &p, uid, gid, why, why_len);
}

/* A worker: drops to `uid`, then attaches and writes. */
static void worker_as(const char *path, uint32_t uid) {
  canary_seg_t *seg = NULL;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  int route;

  CHILD_CHECK(setgroups(0, NULL) == 0, 2);
  CHILD_CHECK(setgid((gid_t)uid) == 0 && setuid((uid_t)uid) == 0, 3);
  CHILD_CHECK(geteuid() == uid, 4);
  CHILD_CHECK(test_seg_open(&seg, path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL,
                            0) == CANARY_SEG_ATTACHED,
              5);
  route = canary_route_claim(seg, "w", 1, "worker", 6);
  CHILD_CHECK(route >= 0, 6);
  test_table(&t, "up", 2, w);
  CHILD_CHECK(canary_route_publish(seg, route, &t, 1, NULL, NULL, 0) == 0, 7);
  for (int i = 0; i < 10; i++)
    CHILD_CHECK(canary_route_record(seg, route, 0, 100, 200, -1) == 0, 8);
  test_seg_close(seg);
  _exit(0);
}

static void seg_prepare_rejects_bad_arguments(void **state) {
  struct test_fx *fx = *state;
  char why[128];
  uint32_t me = (uint32_t)geteuid(), gid = (uint32_t)getegid();

  memset(why, 0, sizeof why);
  assert_int_equal(prepare_for(NULL, 8, 4, me, gid, why, sizeof why),
                   CANARY_EINVAL);
  assert_true(why[0] != '\0');
  assert_int_equal(prepare_for("", 8, 4, me, gid, NULL, 0),
                   CANARY_EINVAL);
  assert_int_equal(prepare_for(fx->path, 0, 4, me, gid, NULL, 0),
                   CANARY_EINVAL);
  assert_int_equal(prepare_for(fx->path, 8, 17, me, gid, NULL, 0),
                   CANARY_EINVAL);
  assert_false(file_exists(fx->path));
  /* For oneself it is a create that does not map. */
  assert_int_equal(prepare_for(fx->path, 8, 4, me, gid, why,
                                      sizeof why),
                   CANARY_SEG_CREATED);
  assert_int_equal(prepare_for(fx->path, 8, 4, me, gid, why,
                                      sizeof why),
                   CANARY_SEG_ATTACHED);
}

/* A prepared file has the statistics pool and grace period it was
 * prepared with, and prepare refuses what open would refuse. */
static void seg_prepare_sizes_the_statistics_pool(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params p = {SEG_ROUTES, SEG_UPSTREAMS, 5, 0, 7, 0};
  struct canary_seg_info info;
  canary_seg_t *seg = NULL;
  uint32_t me = (uint32_t)geteuid(), gid = (uint32_t)getegid();

  assert_int_equal(canary_seg_prepare(fx->path, NULL, me, gid, NULL, 0),
                   CANARY_EINVAL);
  p.flags = CANARY_SEG_READONLY;
  assert_int_equal(canary_seg_prepare(fx->path, &p, me, gid, NULL, 0),
                   CANARY_EINVAL);
  p.flags = 0;
  p.max_stat_slots = CANARY_STAT_SLOTS_LIMIT + 1;
  assert_int_equal(canary_seg_prepare(fx->path, &p, me, gid, NULL, 0),
                   CANARY_EINVAL);
  assert_false(file_exists(fx->path));
  p.max_stat_slots = 5;
  assert_int_equal(canary_seg_prepare(fx->path, &p, me, gid, NULL, 0),
                   CANARY_SEG_CREATED);
  /* Workers asking for other sizes attach the prepared geometry. */
  assert_int_equal(test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                                 0, NULL, 0),
                   CANARY_SEG_ATTACHED);
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.max_stat_slots, 5);
  assert_int_equal(info.retire_grace_s, 7);
  assert_int_equal(info.max_routes, SEG_ROUTES);
  test_seg_close(seg);
}

static void seg_prepare_gives_the_file_to_the_workers(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  struct canary_hist_snapshot *snap = t_alloc(sizeof *snap);
  char why[512] = "", other[PATH_MAX];
  unsigned char *data;
  size_t len;
  struct stat st;
  pid_t pid;
  int route;

  if (geteuid() != 0)
    skip();
  assert_int_equal(chmod(fx->dir, 0711), 0); /* workers reach the file */
  assert_int_equal(prepare_for(fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                                      NOBODY, NOBODY, why, sizeof why),
                   CANARY_SEG_CREATED);
  assert_int_equal(stat(fx->path, &st), 0);
  assert_int_equal(st.st_uid, NOBODY);
  assert_int_equal(st.st_gid, NOBODY);
  assert_int_equal(st.st_mode & 07777, 0600);

  pid = test_fork();
  assert_true(pid >= 0);
  if (pid == 0)
    worker_as(fx->path, NOBODY);
  test_wait_ok(pid);

  /* The workers' file is not root's to write, but root may read it. */
  expect_unsafe(fx, "owned by uid 65534", 0);
  assert_int_equal(test_seg_open(&seg, fx->path, 0, 0, CANARY_SEG_READONLY,
                                 NULL, 0),
                   CANARY_SEG_ATTACHED);
  route = canary_route_find(seg, "w", 1);
  assert_true(route >= 0);
  assert_int_equal(canary_hist_snapshot(seg, route, 0, snap), 0);
  assert_int_equal(snap->status[2], 10);
  test_seg_close(seg);

  /* A restart of the master validates the file and keeps its data. */
  assert_int_equal(prepare_for(fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                                      NOBODY, NOBODY, why, sizeof why),
                   CANARY_SEG_ATTACHED);
  assert_int_equal(test_seg_open(&seg, fx->path, 0, 0, CANARY_SEG_READONLY,
                                 NULL, 0),
                   CANARY_SEG_ATTACHED);
  assert_int_equal(canary_route_find(seg, "w", 1), route);
  test_seg_close(seg);

  /* A file root made earlier is given to the workers. */
  test_path(other, sizeof other, fx->dir, "root.seg");
  make_valid_file(other, &data, &len);
  t_free(data);
  assert_int_equal(prepare_for(other, SEG_ROUTES, SEG_UPSTREAMS, NOBODY,
                                      NOBODY, why, sizeof why),
                   CANARY_SEG_ATTACHED);
  assert_int_equal(stat(other, &st), 0);
  assert_int_equal(st.st_uid, NOBODY);
  assert_int_equal(st.st_mode & 07777, 0600);

  /* A third user's file, a file open to others, a symlink: refused. */
  assert_int_equal(chown(fx->path, 1234, 1234), 0);
  memset(why, 0, sizeof why);
  assert_int_equal(prepare_for(fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                                      NOBODY, NOBODY, why, sizeof why),
                   CANARY_EUNSAFE);
  assert_non_null(strstr(why, "owned by uid 1234"));
  assert_int_equal(stat(fx->path, &st), 0);
  assert_int_equal(st.st_uid, 1234);
  assert_int_equal(chown(fx->path, NOBODY, NOBODY), 0);
  assert_int_equal(chmod(fx->path, 0640), 0);
  assert_int_equal(prepare_for(fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                                      NOBODY, NOBODY, why, sizeof why),
                   CANARY_EUNSAFE);
  assert_non_null(strstr(why, "mode 0640"));
  assert_int_equal(unlink(other), 0);
  assert_int_equal(symlink(fx->path, other), 0);
  assert_int_equal(prepare_for(other, SEG_ROUTES, SEG_UPSTREAMS, NOBODY,
                                      NOBODY, why, sizeof why),
                   CANARY_EUNSAFE);
  assert_non_null(strstr(why, "symbolic link"));
  t_free(snap);
}

/* ---- setting aside, creating ------------------------------------------- */

/* At most three .bad-* copies are kept: the oldest goes first; other
 * files in the directory are never touched. */
static void seg_keeps_three_bad_copies(void **state) {
  struct test_fx *fx = *state;
  static const char *const keep[] = {"canary.seg.bad-x", "other.seg.bad-1-1",
                                     "canary.seg.bad-5-5-5"};
  canary_seg_t *seg = NULL;
  char p[PATH_MAX], name[PATH_MAX], why[512];
  long long u = 0;
  long pid = 0;

  for (int i = 0; i < 3; i++) {
    char n[64];
    snprintf(n, sizeof n, "canary.seg.bad-%d-1", 1000 + i);
    test_path(p, sizeof p, fx->dir, n);
    assert_int_equal(test_write_file(p, "old", 3), 0);
  }
  for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
    test_path(p, sizeof p, fx->dir, keep[i]);
    assert_int_equal(test_write_file(p, "x", 1), 0);
  }
  assert_int_equal(test_write_file(fx->path, "not a segment", 13), 0);
  assert_int_equal(test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0,
                                 why, sizeof why),
                   CANARY_SEG_RECREATED);
  test_seg_close(seg);

  assert_int_equal(bad_files(fx->dir, fx->path, NULL, 0, NULL, NULL), 3);
  test_path(p, sizeof p, fx->dir, "canary.seg.bad-1000-1");
  assert_false(file_exists(p)); /* the oldest */
  test_path(p, sizeof p, fx->dir, "canary.seg.bad-1001-1");
  assert_true(file_exists(p));
  test_path(p, sizeof p, fx->dir, "canary.seg.bad-1002-1");
  assert_true(file_exists(p));
  for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
    test_path(p, sizeof p, fx->dir, keep[i]);
    assert_true(file_exists(p));
  }
  /* The newest, the file just set aside, is kept whole. */
  (void)bad_files(fx->dir, fx->path, name, sizeof name, &u, &pid);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(test_write_file(fx->path, "junk", 4), 0);
    assert_int_equal(test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS,
                                   0, why, sizeof why),
                     CANARY_SEG_RECREATED);
    test_seg_close(seg);
    assert_true(bad_files(fx->dir, fx->path, NULL, 0, NULL, NULL) <= 3);
  }
}

/* Another process holds the bad file locked (as one setting it aside
 * would, but for ever): the open gives up after a bounded wait, with a
 * reason, and leaves the file alone. */
static void flock_child(const char *path, int fd) {
  int f = open(path, O_RDONLY);
  CHILD_CHECK(f >= 0, 2);
  CHILD_CHECK(flock(f, LOCK_EX) == 0, 3);
  CHILD_CHECK(write(fd, "l", 1) == 1, 4);
  for (;;)
    pause();
}

static void seg_set_aside_wait_is_bounded(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  char why[512] = "", c;
  int pfd[2], rc;
  pid_t pid;

  assert_int_equal(test_write_file(fx->path, "not a segment", 13), 0);
  assert_int_equal(pipe(pfd), 0);
  pid = test_fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(pfd[0]);
    flock_child(fx->path, pfd[1]);
  }
  close(pfd[1]);
  assert_int_equal(read(pfd[0], &c, 1), 1);
  close(pfd[0]);

  rc = test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, why,
                     sizeof why);
  if (rc != CANARY_EBUSY)
    fail_msg("open returned %d (%s): %s", rc, canary_strerror(rc), why);
  assert_non_null(strstr(why, "locked"));
  assert_int_equal(bad_files(fx->dir, fx->path, NULL, 0, NULL, NULL), 0);

  kill(pid, SIGKILL);
  assert_int_equal(test_wait_status(pid), 128 + SIGKILL);
  assert_int_equal(test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0,
                                 why, sizeof why),
                   CANARY_SEG_RECREATED);
  test_seg_close(seg);
}

/* Entries of the directory other than `except`. */
static int other_entries(const char *dir, const char *except) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  if (d == NULL)
    return -1;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
        strcmp(e->d_name, except) != 0)
      n++;
  closedir(d);
  return n;
}

static void creator_child(const char *path, int fd) {
  canary_seg_t *seg = NULL;
  canary__fault_arm("create.written", 1, fd);
  test_seg_open(&seg, path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0);
  _exit(2); /* never reached the point */
}

/* A creator stopped (then killed) with its file complete but not yet
 * published: nothing half-made is ever at the path; others create and
 * attach as if it did not exist, and its temporary file is cleared once
 * it is dead. */
static void seg_creator_killed_midway_leaves_no_half_file(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  char got[32] = "";
  int pfd[2];
  pid_t pid;

  assert_int_equal(pipe(pfd), 0);
  pid = test_fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(pfd[0]);
    creator_child(fx->path, pfd[1]);
  }
  close(pfd[1]);
  if (read(pfd[0], got, sizeof got - 1) <= 0)
    fail_msg("creator exited %d before its fault point",
             test_wait_status(pid));
  close(pfd[0]);

  assert_false(file_exists(fx->path));
  assert_int_equal(other_entries(fx->dir, "canary.seg"), 1); /* its temp */
  assert_int_equal(
      test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_CREATED);
  assert_int_equal(other_entries(fx->dir, "canary.seg"), 1); /* still its */
  test_seg_close(seg);

  kill(pid, SIGKILL);
  assert_int_equal(test_wait_status(pid), 128 + SIGKILL);
  assert_int_equal(
      test_seg_open(&seg, fx->path, SEG_ROUTES, SEG_UPSTREAMS, 0, NULL, 0),
      CANARY_SEG_ATTACHED);
  test_seg_close(seg);
  assert_int_equal(other_entries(fx->dir, "canary.seg"), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(seg_open_rejects_bad_arguments, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_readonly_never_touches_a_bad_file,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(seg_recovers_truncated_file, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_recovers_file_shorter_than_header,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(seg_recovers_empty_file, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_recovers_foreign_file, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_recovers_other_layout_version, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_recovers_checksum_mismatch, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          seg_attach_while_another_process_has_it_mapped, setup, teardown),
      cmocka_unit_test_setup_teardown(seg_create_then_attach, setup, teardown),
      cmocka_unit_test_setup_teardown(seg_concurrent_open_has_one_initialiser,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          seg_readonly_attach_reads_and_refuses_writes, setup, teardown),
      cmocka_unit_test_setup_teardown(seg_survives_reopen_with_counters_intact,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(seg_refuses_a_symlink, setup, teardown),
      cmocka_unit_test_setup_teardown(seg_refuses_group_or_other_access, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_refuses_what_is_not_a_regular_file,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(seg_refuses_a_file_of_another_user,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(seg_prepare_rejects_bad_arguments, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_prepare_sizes_the_statistics_pool,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          seg_prepare_gives_the_file_to_the_workers, setup, teardown),
      cmocka_unit_test_setup_teardown(seg_keeps_three_bad_copies, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(seg_set_aside_wait_is_bounded, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          seg_creator_killed_midway_leaves_no_half_file, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
