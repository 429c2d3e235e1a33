/*
 * test_route.c - route slots, weights tables, the publish protocol, picks.
 *
 * What a user would notice: a bad weights table that is half-applied; a
 * split that drifts from the configured 10 %; a user who flips between
 * stable and canary when the canary weight goes up; a sticky assignment
 * that changes with a release or differs between Kong nodes; a worker
 * that reads half of one table and half of another while the weights
 * change.  (A worker killed mid-publish: test_faults.c.)
 */
#include "test_util.h"

#define R_ROUTES 8u
#define R_UPSTREAMS 16u

static int setup(void **state) {
  return test_fx_setup(state, R_ROUTES, R_UPSTREAMS);
}

static int teardown(void **state) {
  return test_fx_teardown(state);
}

static int claim(canary_seg_t *seg, const char *key) {
  int r = canary_route_claim(seg, key, strlen(key), "", 0);
  assert_true(r >= 0);
  return r;
}

static uint64_t publish_ok(canary_seg_t *seg, int route,
                           const struct canary_table *t, uint64_t hash) {
  char err[256] = "";
  uint64_t gen = 0;
  int rc = canary_route_publish(seg, route, t, hash, &gen, err, sizeof err);
  if (rc != 0)
    fail_msg("publish failed: %d (%s): %s", rc, canary_strerror(rc), err);
  assert_true(gen > 0);
  return gen;
}

/* A view's table part equals t (configured and effective weights). */
static void assert_view_is(const struct canary_route_view *v,
                           const struct canary_table *t,
                           const uint32_t *effective) {
  assert_int_equal(v->n, t->n);
  for (uint32_t i = 0; i < t->n; i++) {
    assert_int_equal(v->weights[i], t->weights[i]);
    assert_int_equal(v->effective[i],
                     effective ? effective[i] : t->weights[i]);
    assert_string_equal(v->names[i], t->names[i]);
  }
}

/* ---- error paths ----------------------------------------------------- */

static void route_rejects_bad_indices(void **state) {
  struct test_fx *fx = *state;
  struct canary_route_view v;
  struct canary_hist_snapshot *s = t_alloc(sizeof *s);
  struct canary_table t;
  const uint32_t w[2] = {5000, 5000};
  const int bad[] = {-1, (int)R_ROUTES, 1000, INT_MIN, INT_MAX};
  struct canary_seg_info info;
  char err[128];

  assert_non_null(s);
  test_table(&t, "u", 2, w);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int r = bad[i];
    assert_true(canary_route_read(fx->seg, r, &v) < 0);
    assert_true(canary_route_pick(fx->seg, r, NULL, 0, NULL) < 0);
    assert_true(canary_route_pick(fx->seg, r, "k", 1, NULL) < 0);
    assert_true(
        canary_route_publish(fx->seg, r, &t, 1, NULL, err, sizeof err) < 0);
    assert_true(canary_route_set_effective(fx->seg, r, w, 2, NULL, err,
                                           sizeof err) < 0);
    assert_true(canary_route_record(fx->seg, r, 0, 10, 200, -1) < 0);
    assert_true(canary_route_event(fx->seg, r, 0) < 0);
    assert_true(canary_hist_snapshot(fx->seg, r, 0, s) < 0);
  }

  /* An index in range whose slot was never claimed. */
  assert_int_equal(canary_route_read(fx->seg, 3, &v), CANARY_ENOENT);
  assert_int_equal(canary_route_pick(fx->seg, 3, NULL, 0, NULL),
                   CANARY_ENOENT);
  assert_int_equal(canary_route_pick(fx->seg, 3, "k", 1, NULL), CANARY_ENOENT);
  assert_int_equal(
      canary_route_publish(fx->seg, 3, &t, 1, NULL, err, sizeof err),
      CANARY_ENOENT);
  assert_true(canary_route_record(fx->seg, 3, 0, 10, 200, -1) < 0);
  assert_true(canary_route_event(fx->seg, 3, 0) < 0);
  assert_int_equal(canary_hist_snapshot(fx->seg, 3, 0, s), 0);
  for (int b = 0; b < CANARY_HIST_BUCKETS; b++)
    assert_int_equal(s->buckets[b], 0);

  /* NULL handles and outputs. */
  assert_true(canary_route_read(NULL, 0, &v) < 0);
  assert_true(canary_route_pick(NULL, 0, NULL, 0, NULL) < 0);
  assert_true(canary_route_claim(NULL, "k", 1, "", 0) < 0);
  assert_true(canary_route_find(NULL, "k", 1) < 0);
  assert_true(canary_route_publish(NULL, 0, &t, 1, NULL, err, sizeof err) < 0);
  assert_true(canary_route_record(NULL, 0, 0, 1, 200, -1) < 0);

  /* None of that claimed anything. */
  assert_int_equal(canary_seg_info(fx->seg, &info), 0);
  assert_int_equal(info.routes_used, 0);
  t_free(s);
}

static void route_unpublished_is_enotpub(void **state) {
  struct test_fx *fx = *state;
  struct canary_route_view v;
  const uint32_t eff[2] = {5000, 5000};
  char err[128];
  int r = claim(fx->seg, "fresh");
  int rc;

  assert_int_equal(canary_route_pick(fx->seg, r, NULL, 0, NULL),
                   CANARY_ENOTPUB);
  assert_int_equal(canary_route_pick(fx->seg, r, "alice", 5, NULL),
                   CANARY_ENOTPUB);
  /* Reading a claimed but unpublished route: generation 0 ("never
   * published"), or ENOTPUB. */
  rc = canary_route_read(fx->seg, r, &v);
  assert_true(rc == 0 || rc == CANARY_ENOTPUB);
  if (rc == 0) {
    assert_int_equal(v.generation, 0);
    assert_int_equal(v.n, 0);
    assert_string_equal(v.key, "fresh");
  }
  /* No table, so nothing to set effective weights on. */
  assert_true(canary_route_set_effective(fx->seg, r, eff, 2, NULL, err,
                                         sizeof err) < 0);
  assert_int_equal(canary_route_pick(fx->seg, r, NULL, 0, NULL),
                   CANARY_ENOTPUB);
}

/* One invalid table per rule; each built from a valid base. */
struct bad_case {
  const char *what;
  void (*make)(struct canary_table *t);
};

static void base_table(struct canary_table *t) {
  const uint32_t w[3] = {8000, 1500, 500};
  test_table(t, "up", 3, w);
  strcpy(t->names[0], "stable");
  strcpy(t->names[1], "canary");
  strcpy(t->names[2], "dark");
}

static void bad_n0(struct canary_table *t) {
  t->n = 0;
}
static void bad_n17(struct canary_table *t) {
  const uint32_t w[16] = {9985, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  test_table(t, "u", 16, w);
  t->n = 17;
}
static void bad_sum_low(struct canary_table *t) {
  t->weights[0] = 7999;
}
static void bad_sum_high(struct canary_table *t) {
  t->weights[0] = 8001;
}
static void bad_sum_zero(struct canary_table *t) {
  t->weights[0] = t->weights[1] = t->weights[2] = 0;
}
static void bad_weight_over(struct canary_table *t) {
  t->n = 2;
  t->weights[0] = 10001;
  t->weights[1] = 0;
}
/* Weights above the scale whose 32-bit sum wraps to exactly 10000. */
static void bad_weight_wraps(struct canary_table *t) {
  t->n = 2;
  t->weights[0] = 0x80000000u;
  t->weights[1] = 0x80000000u + 10000u;
}
static void bad_weight_wraps3(struct canary_table *t) {
  t->weights[0] = UINT32_MAX;
  t->weights[1] = 10001;
  t->weights[2] = 0;
}
static void bad_empty_name(struct canary_table *t) {
  t->names[1][0] = '\0';
}
static void bad_dup_name(struct canary_table *t) {
  strcpy(t->names[2], "stable");
}
static void bad_space(struct canary_table *t) {
  strcpy(t->names[1], "can ary");
}
static void bad_quote(struct canary_table *t) {
  strcpy(t->names[1], "can\"ary");
}
static void bad_backslash(struct canary_table *t) {
  strcpy(t->names[1], "can\\ary");
}
static void bad_newline(struct canary_table *t) {
  strcpy(t->names[1], "canary\n");
}
static void bad_tab(struct canary_table *t) {
  strcpy(t->names[1], "can\tary");
}
static void bad_ctrl(struct canary_table *t) {
  strcpy(t->names[1], "can\x01ary");
}
static void bad_del(struct canary_table *t) {
  strcpy(t->names[1], "can\x7f");
}
static void bad_utf8(struct canary_table *t) {
  strcpy(t->names[1], "can\xc3\xa9");
}
/* Punctuation outside [A-Za-z0-9._-]: Kong would not accept such an
 * upstream name either. */
static void bad_colon(struct canary_table *t) {
  strcpy(t->names[1], "canary:v2");
}
static void bad_slash(struct canary_table *t) {
  strcpy(t->names[1], "canary/v2");
}
static void bad_leading_space(struct canary_table *t) {
  strcpy(t->names[0], " stable");
}
/* 64 bytes and no NUL; the next name follows directly, so a strlen()
 * would run on into it. */
static void bad_64_no_nul(struct canary_table *t) {
  memset(t->names[1], 'a', CANARY_NAME_MAX);
}
/* The same in the last slot of the struct: nothing after it. */
static void bad_64_no_nul_last(struct canary_table *t) {
  bad_n17(t);
  t->n = 16;
  memset(t->names[15], 'z', CANARY_NAME_MAX);
}

static void route_table_validation_rejects_and_changes_nothing(void **state) {
  struct test_fx *fx = *state;
  const struct bad_case cases[] = {
      {"n = 0", bad_n0},
      {"n = 17", bad_n17},
      {"sum 9999", bad_sum_low},
      {"sum 10001", bad_sum_high},
      {"sum 0", bad_sum_zero},
      {"weight 10001", bad_weight_over},
      {"weights wrapping to 10000 (2 x 2^31)", bad_weight_wraps},
      {"weights wrapping to 10000 (UINT32_MAX)", bad_weight_wraps3},
      {"empty name", bad_empty_name},
      {"duplicate names", bad_dup_name},
      {"space in name", bad_space},
      {"quote in name", bad_quote},
      {"backslash in name", bad_backslash},
      {"newline in name", bad_newline},
      {"tab in name", bad_tab},
      {"control char in name", bad_ctrl},
      {"DEL in name", bad_del},
      {"non-ASCII name", bad_utf8},
      {"colon in name", bad_colon},
      {"slash in name", bad_slash},
      {"leading space", bad_leading_space},
      {"64-byte name without NUL", bad_64_no_nul},
      {"64-byte last name without NUL", bad_64_no_nul_last},
  };
  struct canary_table good, *t = t_alloc(sizeof *t);
  struct canary_route_view before, after;
  char err[256];
  uint64_t gen;
  int r = claim(fx->seg, "validated");

  assert_non_null(t);
  base_table(&good);
  assert_int_equal(canary_table_check(&good, R_UPSTREAMS, err, sizeof err), 0);
  gen = publish_ok(fx->seg, r, &good, 1);
  assert_int_equal(canary_route_read(fx->seg, r, &before), 0);

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t g = 777;
    int rc;

    base_table(t);
    cases[i].make(t);

    memset(err, 0, sizeof err);
    rc = canary_table_check(t, R_UPSTREAMS, err, sizeof err);
    if (rc != CANARY_EWEIGHTS)
      fail_msg("check %s: got %d, want CANARY_EWEIGHTS", cases[i].what, rc);
    if (err[0] == '\0')
      fail_msg("check %s: no message", cases[i].what);
    assert_true(strnlen(err, sizeof err) < sizeof err);

    memset(err, 0, sizeof err);
    rc = canary_route_publish(fx->seg, r, t, 2 + i, &g, err, sizeof err);
    if (rc != CANARY_EWEIGHTS)
      fail_msg("publish %s: got %d, want CANARY_EWEIGHTS", cases[i].what, rc);
    if (err[0] == '\0')
      fail_msg("publish %s: no message", cases[i].what);
    assert_int_equal(canary_route_read(fx->seg, r, &after), 0);
    if (memcmp(&before, &after, sizeof before) != 0)
      fail_msg("publish %s: the published table changed", cases[i].what);
    assert_int_equal(after.generation, gen);
    assert_true(canary_route_pick(fx->seg, r, NULL, 0, NULL) < 3);
  }
  t_free(t);
}

static void route_table_limits_follow_the_segment(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *small = NULL;
  char path[PATH_MAX], err[256];
  const uint32_t w5[5] = {6000, 1000, 1000, 1000, 1000};
  const uint32_t w4[4] = {7000, 1000, 1000, 1000};
  struct canary_table t;
  struct canary_route_view v;
  int r;

  test_path(path, sizeof path, fx->dir, "small.seg");
  assert_int_equal(test_seg_open(&small, path, 2, 4, 0, NULL, 0),
                   CANARY_SEG_CREATED);
  r = claim(small, "r");
  test_table(&t, "u", 5, w5);
  assert_int_equal(canary_table_check(&t, 4, err, sizeof err),
                   CANARY_EWEIGHTS);
  assert_int_equal(canary_table_check(&t, 16, err, sizeof err), 0);
  err[0] = '\0';
  assert_int_equal(
      canary_route_publish(small, r, &t, 1, NULL, err, sizeof err),
      CANARY_EWEIGHTS);
  assert_true(err[0] != '\0');
  assert_int_equal(canary_route_read(small, r, &v), 0);
  assert_int_equal(v.generation, 0);
  test_table(&t, "u", 4, w4);
  publish_ok(small, r, &t, 1);
  test_seg_close(small);
}

static void route_valid_edge_tables_are_accepted(void **state) {
  struct test_fx *fx = *state;
  struct canary_table t;
  struct canary_route_view v;
  char err[256];
  const uint32_t w1[1] = {10000};
  const uint32_t w2[2] = {0, 10000};
  int r = claim(fx->seg, "edge");

  /* One upstream; all weight on the canary. */
  test_table(&t, "u", 1, w1);
  assert_int_equal(canary_table_check(&t, R_UPSTREAMS, err, sizeof err), 0);
  test_table(&t, "u", 2, w2);
  assert_int_equal(canary_table_check(&t, R_UPSTREAMS, err, sizeof err), 0);

  /* 63-byte names and every character of a Kong upstream name. */
  test_table(&t, "u", 2, w2);
  memset(t.names[0], 'x', CANARY_NAME_MAX - 1);
  t.names[0][CANARY_NAME_MAX - 1] = '\0';
  strcpy(t.names[1], "v1.2_canary-B.ABCXYZ.abcxyz.0189");
  assert_int_equal(canary_table_check(&t, R_UPSTREAMS, err, sizeof err), 0);

  /* What lies past n does not matter: garbage weights and names. */
  memset(t.names[2], '\x01', CANARY_NAME_MAX * (CANARY_MAX_UPSTREAMS - 2));
  for (int i = 2; i < CANARY_MAX_UPSTREAMS; i++)
    t.weights[i] = 0xdeadbeef;
  assert_int_equal(canary_table_check(&t, R_UPSTREAMS, err, sizeof err), 0);
  publish_ok(fx->seg, r, &t, 5);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.n, 2);
  assert_int_equal(strlen(v.names[0]), CANARY_NAME_MAX - 1);
  assert_string_equal(v.names[1], t.names[1]);
  for (int i = 0; i < 100; i++)
    assert_int_equal(canary_route_pick(fx->seg, r, NULL, 0, NULL), 1);
}

/* ---- claims ---------------------------------------------------------- */

static void claim_same_key_child(const char *path, struct test_gate *g,
                                 int me) {
  canary_seg_t *seg = NULL;
  char key[32];
  int a, b;
  CHILD_CHECK(test_seg_open(&seg, path, R_ROUTES, R_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  test_gate_wait(g);
  a = test_claim_retry(seg, "hot", 3, "", 0);
  snprintf(key, sizeof key, "own-%d", me);
  b = test_claim_retry(seg, key, strlen(key), "", 0);
  test_seg_close(seg);
  CHILD_CHECK(a >= 0 && b >= 0 && a != b, 3);
  _exit(a); /* the parent checks that everybody got the same slot */
}

static void route_claim_and_find(void **state) {
  struct test_fx *fx = *state;
  struct canary_route_view v;
  struct canary_seg_info info;
  char key63[64], key64[65];
  int a, b;

  /* Argument errors. */
  assert_true(canary_route_claim(fx->seg, "", 0, "", 0) < 0);
  assert_true(canary_route_claim(fx->seg, NULL, 3, "", 0) < 0);
  memset(key64, 'k', 64);
  key64[64] = '\0';
  assert_true(canary_route_claim(fx->seg, key64, 64, "", 0) < 0);
  assert_true(canary_route_find(fx->seg, "", 0) < 0);
  assert_int_equal(canary_route_find(fx->seg, "nope", 4), CANARY_ENOENT);
  assert_int_equal(canary_seg_info(fx->seg, &info), 0);
  assert_int_equal(info.routes_used, 0);

  a = canary_route_claim(fx->seg, "svc-a", 5, "Service A", 9);
  assert_true(a >= 0);
  assert_int_equal(canary_route_find(fx->seg, "svc-a", 5), a);
  /* Idempotent; an empty label keeps the old one, a new one replaces it. */
  assert_int_equal(canary_route_claim(fx->seg, "svc-a", 5, "", 0), a);
  assert_int_equal(canary_route_read(fx->seg, a, &v), 0);
  assert_string_equal(v.key, "svc-a");
  assert_string_equal(v.label, "Service A");
  assert_int_equal(canary_route_claim(fx->seg, "svc-a", 5, "Renamed", 7), a);
  assert_int_equal(canary_route_read(fx->seg, a, &v), 0);
  assert_string_equal(v.label, "Renamed");

  /* key_len, not a NUL, delimits the key. */
  b = canary_route_claim(fx->seg, "svc-bXXX", 5, "", 0);
  assert_true(b >= 0 && b != a);
  assert_int_equal(canary_route_find(fx->seg, "svc-b", 5), b);
  assert_int_equal(canary_route_find(fx->seg, "svc-bXXX", 8), CANARY_ENOENT);
  assert_int_equal(canary_route_find(fx->seg, "svc-", 4), CANARY_ENOENT);

  memset(key63, 'q', 63);
  key63[63] = '\0';
  assert_true(canary_route_claim(fx->seg, key63, 63, "", 0) >= 0);
  assert_true(canary_route_find(fx->seg, key63, 63) >= 0);

  assert_int_equal(canary_seg_info(fx->seg, &info), 0);
  assert_int_equal(info.routes_used, 3);

  /* Fill the segment: the next new key is EFULL, old keys still work. */
  for (uint32_t i = 3; i < R_ROUTES; i++) {
    char key[32];
    snprintf(key, sizeof key, "fill-%u", i);
    assert_true(canary_route_claim(fx->seg, key, strlen(key), "", 0) >= 0);
  }
  assert_int_equal(canary_route_claim(fx->seg, "one-more", 8, "", 0),
                   CANARY_EFULL);
  assert_int_equal(canary_route_claim(fx->seg, "svc-a", 5, "", 0), a);
  assert_int_equal(canary_seg_info(fx->seg, &info), 0);
  assert_int_equal(info.routes_used, R_ROUTES);
}

static void route_concurrent_claims_of_one_key_agree(void **state) {
  struct test_fx *fx = *state;
  const int kids = 5;
  pid_t pids[5];
  struct test_gate g;
  int slot = -1;
  struct canary_seg_info info;

  assert_int_equal(test_gate_init(&g), 0);
  for (int i = 0; i < kids; i++) {
    pids[i] = test_fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0)
      claim_same_key_child(fx->path, &g, i);
  }
  test_gate_open(&g);
  for (int i = 0; i < kids; i++) {
    int st = test_wait_status(pids[i]);
    assert_true(st >= 0 && st < (int)R_ROUTES);
    if (slot < 0)
      slot = st;
    assert_int_equal(st, slot);
  }
  assert_int_equal(canary_route_find(fx->seg, "hot", 3), slot);
  assert_int_equal(canary_seg_info(fx->seg, &info), 0);
  assert_int_equal(info.routes_used, 1 + kids);
}

/* ---- publish, republish, effective weights ---------------------------- */

static void route_publish_then_read_back(void **state) {
  struct test_fx *fx = *state;
  struct canary_table t1, t2;
  const uint32_t w1[3] = {9000, 700, 300};
  const uint32_t w2[2] = {2500, 7500};
  struct canary_route_view v;
  uint64_t g1, g2;
  uint32_t gp = 0;
  int r = claim(fx->seg, "svc");

  test_table(&t1, "a", 3, w1);
  g1 = publish_ok(fx->seg, r, &t1, 0x1111);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.generation, g1);
  assert_int_equal(v.config_hash, 0x1111);
  assert_view_is(&v, &t1, NULL);
  for (int i = 0; i < 1000; i++) {
    int p = canary_route_pick(fx->seg, r, NULL, 0, &gp);
    assert_true(p >= 0 && p < 3);
    assert_int_equal(gp, (uint32_t)g1);
  }

  test_table(&t2, "b", 2, w2);
  g2 = publish_ok(fx->seg, r, &t2, 0x2222);
  assert_true(g2 > g1);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.generation, g2);
  assert_int_equal(v.config_hash, 0x2222);
  assert_view_is(&v, &t2, NULL);
  /* Slots past n are not leftovers of the older, longer table. */
  assert_int_equal(v.weights[2], 0);
  assert_int_equal(v.effective[2], 0);
  assert_string_equal(v.names[2], "");
  for (int i = 0; i < 1000; i++) {
    int p = canary_route_pick(fx->seg, r, "user", 4, &gp);
    assert_true(p >= 0 && p < 2);
    assert_int_equal(gp, (uint32_t)g2);
  }
}

static void route_republish_identical_keeps_generation(void **state) {
  struct test_fx *fx = *state;
  struct canary_table t;
  const uint32_t w[2] = {9000, 1000};
  const uint32_t eff[2] = {7500, 2500};
  struct canary_route_view v;
  uint64_t g1, g2, g3, g4;
  char err[128];
  int r = claim(fx->seg, "svc");

  test_table(&t, "u", 2, w);
  g1 = publish_ok(fx->seg, r, &t, 42);
  /* Every worker re-applies the same config: a no-op. */
  g2 = publish_ok(fx->seg, r, &t, 42);
  assert_int_equal(g2, g1);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.generation, g1);

  /* Including while a progression step has set effective weights: the
   * re-applied config must not undo the step. */
  assert_int_equal(
      canary_route_set_effective(fx->seg, r, eff, 2, &g3, err, sizeof err), 0);
  assert_true(g3 > g1);
  g4 = publish_ok(fx->seg, r, &t, 42);
  assert_int_equal(g4, g3);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.generation, g3);
  assert_view_is(&v, &t, eff);

  /* Same table, other hash: a new config, effective = configured. */
  g4 = publish_ok(fx->seg, r, &t, 43);
  assert_true(g4 > g3);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_view_is(&v, &t, NULL);

  /* Other table, same hash: also new. */
  t.weights[0] = 8000;
  t.weights[1] = 2000;
  g1 = publish_ok(fx->seg, r, &t, 43);
  assert_true(g1 > g4);
  strcpy(t.names[1], "renamed");
  g2 = publish_ok(fx->seg, r, &t, 43);
  assert_true(g2 > g1);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_string_equal(v.names[1], "renamed");
}

static void route_set_effective(void **state) {
  struct test_fx *fx = *state;
  struct canary_table t;
  const uint32_t w[3] = {5000, 3000, 2000};
  const uint32_t rollback[3] = {10000, 0, 0};
  const uint32_t bad_sum[3] = {5000, 3000, 1999};
  const uint32_t bad_big[3] = {10001, 0, 0};
  struct canary_route_view v, v2;
  uint64_t g0, g1, g2 = 0;
  char err[256];
  int r = claim(fx->seg, "svc");

  test_table(&t, "u", 3, w);
  g0 = publish_ok(fx->seg, r, &t, 9);

  /* Errors first: wrong n, bad sums; nothing changes. */
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  err[0] = '\0';
  assert_int_equal(canary_route_set_effective(fx->seg, r, rollback, 2, NULL,
                                              err, sizeof err),
                   CANARY_EWEIGHTS);
  assert_true(err[0] != '\0');
  err[0] = '\0';
  assert_int_equal(canary_route_set_effective(fx->seg, r, bad_sum, 3, NULL,
                                              err, sizeof err),
                   CANARY_EWEIGHTS);
  assert_true(err[0] != '\0');
  err[0] = '\0';
  assert_int_equal(canary_route_set_effective(fx->seg, r, bad_big, 3, NULL,
                                              err, sizeof err),
                   CANARY_EWEIGHTS);
  assert_true(err[0] != '\0');
  assert_true(canary_route_set_effective(fx->seg, r, NULL, 3, NULL, err,
                                         sizeof err) < 0);
  assert_int_equal(canary_route_read(fx->seg, r, &v2), 0);
  assert_memory_equal(&v, &v2, sizeof v);

  /* A rollback: configured weights stay, effective ones change, every
   * pick (sticky or not) goes to the stable upstream. */
  assert_int_equal(canary_route_set_effective(fx->seg, r, rollback, 3, &g1,
                                              err, sizeof err),
                   0);
  assert_true(g1 > g0);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.generation, g1);
  assert_int_equal(v.config_hash, 9);
  assert_view_is(&v, &t, rollback);
  for (int i = 0; i < 2000; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    assert_int_equal(canary_route_pick(fx->seg, r, NULL, 0, NULL), 0);
    assert_int_equal(canary_route_pick(fx->seg, r, key, strlen(key), NULL), 0);
  }
  /* A new config resets effective to configured. */
  g2 = publish_ok(fx->seg, r, &t, 10);
  assert_true(g2 > g1);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_view_is(&v, &t, NULL);
}

/* ---- (a) split accuracy ---------------------------------------------- */

/* Picks `m` times and checks every window of CANARY_WEIGHT_SCALE
 * consecutive picks against the effective weights: within +-50 (0.5 %),
 * which the contract promises, and exactly, which the design gives. */
static void check_windows(canary_seg_t *seg, int route,
                          const struct canary_table *t, uint64_t gen,
                          uint8_t *picks, size_t m, const char *what) {
  uint32_t cnt[CANARY_MAX_UPSTREAMS] = {0};
  long worst = 0;
  size_t worst_at = 0;
  uint32_t worst_up = 0;
  const size_t W = CANARY_WEIGHT_SCALE;

  for (size_t i = 0; i < m; i++) {
    uint32_t gp = 0;
    int p = canary_route_pick(seg, route, NULL, 0, &gp);
    if (p < 0 || (uint32_t)p >= t->n)
      fail_msg("%s: pick %zu returned %d (n = %u)", what, i, p, t->n);
    if (gp != (uint32_t)gen)
      fail_msg("%s: pick used generation %u, published %llu", what, gp,
               (unsigned long long)gen);
    picks[i] = (uint8_t)p;
  }
  for (size_t i = 0; i < W; i++)
    cnt[picks[i]]++;
  for (size_t start = 0;; start++) {
    for (uint32_t u = 0; u < t->n; u++) {
      long d = (long)cnt[u] - (long)t->weights[u];
      if (labs(d) > labs(worst)) {
        worst = d;
        worst_at = start;
        worst_up = u;
      }
    }
    if (start + W >= m)
      break;
    cnt[picks[start]]--;
    cnt[picks[start + W]]++;
  }
  if (labs(worst) > 50)
    fail_msg("%s: window at %zu gives upstream %u %+ld picks off its weight "
             "%u (limit +-50 = 0.5 %%)",
             what, worst_at, worst_up, worst, t->weights[worst_up]);
  if (worst != 0)
    fail_msg("%s: window at %zu gives upstream %u %+ld picks off its weight "
             "%u; the sequence should make every window exact",
             what, worst_at, worst_up, worst, t->weights[worst_up]);
}

static void random_table(uint64_t *rs, struct canary_table *t) {
  uint32_t n = 2 + (uint32_t)test_rand_below(rs, 15);
  uint32_t w[CANARY_MAX_UPSTREAMS];
  uint32_t left = CANARY_WEIGHT_SCALE;

  for (uint32_t i = 1; i < n; i++) {
    uint64_t kind = test_rand_below(rs, 8);
    uint32_t v;
    if (kind == 0)
      v = 1; /* a single bucket */
    else if (kind == 1)
      v = 0;
    else if (kind == 2)
      v = left; /* everything that is left */
    else
      v = (uint32_t)test_rand_below(rs, (uint64_t)left * 2 / (n - i) + 1);
    if (v > left)
      v = left;
    w[i] = v;
    left -= v;
  }
  w[0] = left;
  test_table(t, "up", n, w);
}

static void route_split_matches_weights_in_every_window(void **state) {
  struct test_fx *fx = *state;
  static const uint32_t edges[][CANARY_MAX_UPSTREAMS + 1] = {
      /* n, weights... */
      {2, 1, 9999},
      {2, 9999, 1},
      {2, 0, 10000},
      {2, 10000, 0},
      {2, 5000, 5000},
      {3, 3333, 3333, 3334},
      {3, 1, 1, 9998},
      {1, 10000},
      {16, 9985, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
      {16, 625, 625, 625, 625, 625, 625, 625, 625, 625, 625, 625, 625, 625,
       625, 625, 625},
  };
  const size_t nedges = sizeof edges / sizeof edges[0];
  const size_t nrandom = (size_t)test_scaled_min(60, 4);
  const size_t m = 2 * CANARY_WEIGHT_SCALE + 3001;
  uint8_t *picks = t_alloc(m);
  uint64_t rs = 2024;
  int r = claim(fx->seg, "split");

  assert_non_null(picks);
  for (size_t k = 0; k < nedges + nrandom; k++) {
    struct canary_table t;
    char what[64];
    uint64_t gen;

    if (k < nedges) {
      test_table(&t, "up", edges[k][0], &edges[k][1]);
    } else {
      random_table(&rs, &t);
    }
    /* Start the measured run anywhere in the shared sequence. */
    for (uint64_t skip = test_rand_below(&rs, 7919); skip > 0; skip--)
      (void)canary_route_pick(fx->seg, r, NULL, 0, NULL);
    gen = publish_ok(fx->seg, r, &t, 1000 + k);
    snprintf(what, sizeof what, "table %zu (n=%u, w0=%u, w1=%u)", k, t.n,
             t.weights[0], t.weights[1]);
    check_windows(fx->seg, r, &t, gen, picks, m, what);
  }
  t_free(picks);
}

/* All processes together: K children picking at once, a multiple of
 * 10000 picks in total, give exactly that multiple of the weights. */
static void split_child(const char *path, int route, struct test_gate *g,
                        uint64_t picks, uint64_t *counts) {
  canary_seg_t *seg = NULL;
  uint64_t local[CANARY_MAX_UPSTREAMS] = {0};
  CHILD_CHECK(test_seg_open(&seg, path, R_ROUTES, R_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  test_gate_wait(g);
  for (uint64_t i = 0; i < picks; i++) {
    int p = canary_route_pick(seg, route, NULL, 0, NULL);
    CHILD_CHECK(p >= 0 && p < 3, 3);
    local[p]++;
  }
  test_seg_close(seg);
  for (int i = 0; i < CANARY_MAX_UPSTREAMS; i++)
    counts[i] = local[i];
  _exit(0);
}

static void route_split_is_exact_across_processes(void **state) {
  struct test_fx *fx = *state;
  const int kids = 3;
  const uint64_t rounds = test_scaled_min(10, 1);
  const uint32_t w[3] = {1234, 4321, 4445};
  struct canary_table t;
  uint64_t *counts = test_shared_alloc(sizeof(uint64_t) * 16 * 3);
  uint64_t total[3] = {0, 0, 0};
  pid_t pids[3];
  struct test_gate g;
  int r = claim(fx->seg, "multi");

  assert_non_null(counts);
  test_table(&t, "u", 3, w);
  publish_ok(fx->seg, r, &t, 1);
  for (int i = 0; i < 1234; i++) /* anywhere in the sequence */
    (void)canary_route_pick(fx->seg, r, NULL, 0, NULL);
  assert_int_equal(test_gate_init(&g), 0);
  for (int i = 0; i < kids; i++) {
    pids[i] = test_fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0)
      split_child(fx->path, r, &g, rounds * CANARY_WEIGHT_SCALE,
                  counts + 16 * i);
  }
  test_gate_open(&g);
  for (int i = 0; i < kids; i++)
    test_wait_ok(pids[i]);
  for (int i = 0; i < kids; i++)
    for (int u = 0; u < 3; u++)
      total[u] += counts[16 * i + u];
  for (int u = 0; u < 3; u++)
    assert_int_equal(total[u], (uint64_t)kids * rounds * w[u]);
  test_shared_free(counts, sizeof(uint64_t) * 16 * 3);
}

/* ---- (b) sticky monotonicity ----------------------------------------- */

/* One key per sticky bucket, so that exact bucket counts can be checked.
 * keys[b] is the key for bucket b, 15 bytes max. */
#define KEY_CAP 16

static char *keys_for_every_bucket(void) {
  char *keys = t_alloc((size_t)(CANARY_WEIGHT_SCALE) * (KEY_CAP));
  size_t found = 0;
  assert_non_null(keys);
  for (uint32_t i = 0; found < CANARY_WEIGHT_SCALE && i < 10000000u; i++) {
    char k[KEY_CAP];
    uint32_t b;
    int len = snprintf(k, sizeof k, "user-%u", i);
    b = canary_sticky_bucket(k, (size_t)len);
    assert_true(b < CANARY_WEIGHT_SCALE);
    if (keys[(size_t)b * KEY_CAP] == '\0') {
      memcpy(keys + (size_t)b * KEY_CAP, k, (size_t)len + 1);
      found++;
    }
  }
  assert_int_equal(found, CANARY_WEIGHT_SCALE);
  return keys;
}

static int sticky_pick(canary_seg_t *seg, int r, const char *keys,
                       uint32_t b) {
  const char *k = keys + (size_t)b * KEY_CAP;
  return canary_route_pick(seg, r, k, strlen(k), NULL);
}

static void route_sticky_two_upstreams_only_gain_keys(void **state) {
  struct test_fx *fx = *state;
  static const uint32_t steps[] = {0,    1,    2,    10,   100,  500,  1000,
                                   2500, 5000, 7500, 9000, 9999, 10000};
  char *keys = keys_for_every_bucket();
  uint8_t *on1 = t_alloc((size_t)(CANARY_WEIGHT_SCALE) * (1));
  const size_t nextra = (size_t)test_scaled_min(20000, 2000);
  uint64_t rs = 99;
  int r = claim(fx->seg, "sticky2");

  assert_non_null(on1);
  for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
    uint32_t w[2] = {CANARY_WEIGHT_SCALE - steps[s], steps[s]};
    struct canary_table t;
    uint32_t count = 0;

    test_table(&t, "u", 2, w);
    publish_ok(fx->seg, r, &t, 500 + s);
    for (uint32_t b = 0; b < CANARY_WEIGHT_SCALE; b++) {
      int p = sticky_pick(fx->seg, r, keys, b);
      assert_true(p == 0 || p == 1);
      if (on1[b] && p != 1)
        fail_msg("bucket %u (key %s) was on the canary at a lower weight "
                 "and left it at weight %u",
                 b, keys + (size_t)b * KEY_CAP, steps[s]);
      on1[b] = (uint8_t)p;
      count += (uint32_t)p;
    }
    /* The canary holds exactly its weight in buckets. */
    assert_int_equal(count, steps[s]);
    /* Any key lands where its bucket does. */
    for (size_t i = 0; i < nextra; i++) {
      char k[32];
      int len = snprintf(k, sizeof k, "sess-%016llx",
                         (unsigned long long)test_rand_next(&rs));
      uint32_t b = canary_sticky_bucket(k, (size_t)len);
      assert_int_equal(canary_route_pick(fx->seg, r, k, (size_t)len, NULL),
                       on1[b]);
    }
  }
  t_free(on1);
  t_free(keys);
}

static void route_sticky_raising_one_canary_keeps_its_keys(void **state) {
  struct test_fx *fx = *state;
  char *keys = keys_for_every_bucket();
  uint8_t *before = t_alloc(CANARY_WEIGHT_SCALE);
  const size_t ntables = (size_t)test_scaled_min(16, 2);
  uint64_t rs = 4242, hash = 1;
  int r = claim(fx->seg, "stickyN");

  assert_non_null(before);
  for (size_t k = 0; k < ntables; k++) {
    struct canary_table t;
    /* n upstreams, upstream 0 holds most of the weight. */
    uint32_t n = 3 + (uint32_t)test_rand_below(&rs, 14);
    uint32_t w[CANARY_MAX_UPSTREAMS], left = CANARY_WEIGHT_SCALE;
    for (uint32_t i = 1; i < n; i++) {
      w[i] = (uint32_t)test_rand_below(&rs, 4000 / n);
      left -= w[i];
    }
    w[0] = left;
    test_table(&t, "u", n, w);
    publish_ok(fx->seg, r, &t, hash++);
    for (uint32_t b = 0; b < CANARY_WEIGHT_SCALE; b++) {
      int p = sticky_pick(fx->seg, r, keys, b);
      assert_true(p >= 0 && (uint32_t)p < n);
      before[b] = (uint8_t)p;
    }

    for (uint32_t up = 1; up < n; up++) {
      struct canary_table t2 = t;
      uint32_t delta = 1 + (uint32_t)test_rand_below(&rs, w[0]);
      uint32_t count = 0;
      t2.weights[0] -= delta;
      t2.weights[up] += delta;
      publish_ok(fx->seg, r, &t2, hash++);
      for (uint32_t b = 0; b < CANARY_WEIGHT_SCALE; b++) {
        int p = sticky_pick(fx->seg, r, keys, b);
        if (before[b] == up && p != (int)up)
          fail_msg("table %zu: raising upstream %u by %u moved bucket %u "
                   "from it to %d",
                   k, up, delta, b, p);
        count += p == (int)up;
      }
      assert_int_equal(count, t2.weights[up]);
    }
  }
  t_free(before);
  t_free(keys);
}

/* ---- (c) sticky determinism ------------------------------------------ */

/* Golden values.  A seedless hash must give these forever: every worker,
 * every Kong node and every release of the engine puts a user in the same
 * bucket.  If this test fails, sticky users would move on upgrade. */
static const struct {
  const char *key;
  size_t len;
  uint32_t bucket;
} golden[] = {
    {"", 0, 7890},
    {"a", 1, 6112},
    {"b", 1, 7101},
    {"alice", 5, 7608},
    {"bob", 3, 8459},
    {"user-1", 6, 8053},
    {"user-2", 6, 8343},
    {"10.0.0.1", 8, 9008},
    {"192.168.1.254", 13, 5290},
    {"2001:db8::1", 11, 6543},
    {"consumer:8a7b2c", 15, 9616},
    {"1234567", 7, 6018},
    {"12345678", 8, 5877},
    {"123456789", 9, 4221},
    {"123456789012345", 15, 9246},
    {"1234567890123456", 16, 6001},
    {"12345678901234567", 17, 3463},
    {"cookie=3f9a1c0e-5b7d-4e2a-9c8b-1d2e3f4a5b6c", 43, 7575},
    {"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde", 63,
     283},
    {"ab\0cd", 5, 3895},
    {"\xff\xfe\x80", 3, 4618},
    {"\x80\x81\x82\x83\x84\x85\x86\x87\x88", 9, 1008},
};

static void route_sticky_bucket_is_fixed_and_seedless(void **state) {
  const size_t nkeys = 100000;
  uint32_t groups[100] = {0};
  double chi2 = 0.0;
  (void)state;

  for (size_t i = 0; i < sizeof golden / sizeof golden[0]; i++) {
    uint32_t b = canary_sticky_bucket(golden[i].key, golden[i].len);
    if (b != golden[i].bucket)
      fail_msg("sticky bucket of golden key %zu changed: %u, was %u", i, b,
               golden[i].bucket);
  }
  /* The length, not a NUL, delimits the key. */
  assert_int_equal(canary_sticky_bucket("abcdef", 3),
                   canary_sticky_bucket("abc", 3));
  assert_int_equal(canary_sticky_bucket("ab\0cd", 5),
                   canary_sticky_bucket("ab\0cd", 5));

  /* Spread: 100 000 similar keys over 100 groups of 100 buckets. */
  for (size_t i = 0; i < nkeys; i++) {
    char k[32];
    int len = snprintf(k, sizeof k, "10.0.%zu.%zu", i / 256, i % 256);
    uint32_t b = canary_sticky_bucket(k, (size_t)len);
    assert_true(b < CANARY_WEIGHT_SCALE);
    groups[b / 100]++;
  }
  for (int g = 0; g < 100; g++) {
    double d = (double)groups[g] - (double)nkeys / 100.0;
    chi2 += d * d / ((double)nkeys / 100.0);
  }
  /* 99 degrees of freedom: mean 99, sd 14; 200 is > 7 sd. */
  if (chi2 > 200.0)
    fail_msg("sticky buckets are unevenly spread: chi2 = %.1f", chi2);
}

/* ---- (d) concurrent publish and read ---------------------------------- */

#define FLIP_TABLES 4
#define GEN_MAP (1u << 20)

struct flip_shared {
  uint32_t ready;
  uint32_t done;
  uint64_t published;
  uint64_t reads[8];
  uint64_t changes[8];
  uint8_t gen_table[GEN_MAP]; /* generation -> table id + 1 */
};

/* Table k: n = 2, 3, 5, 16; weights and names encode k. */
static void flip_table(int k, struct canary_table *t) {
  static const uint32_t ns[FLIP_TABLES] = {2, 3, 5, 16};
  uint32_t n = ns[k], w[CANARY_MAX_UPSTREAMS], left = CANARY_WEIGHT_SCALE;
  char prefix[8];
  for (uint32_t i = 1; i < n; i++) {
    w[i] = 100 * (uint32_t)(k + 1) + i;
    left -= w[i];
  }
  w[0] = left;
  snprintf(prefix, sizeof prefix, "t%d-", k);
  test_table(t, prefix, n, w);
}

static int flip_match(const struct canary_route_view *v,
                      const struct canary_table *tables) {
  int k = (int)(v->config_hash - 0x5000);
  const struct canary_table *t;
  if (k < 0 || k >= FLIP_TABLES)
    return -1;
  t = &tables[k];
  if (v->n != t->n)
    return -1;
  for (uint32_t i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
    uint32_t want = i < t->n ? t->weights[i] : 0;
    if (v->weights[i] != want || v->effective[i] != want)
      return -1;
    if (i < t->n && strcmp(v->names[i], t->names[i]) != 0)
      return -1;
  }
  return k;
}

static void flip_reader(const char *path, int route, struct flip_shared *sh,
                        int me) {
  canary_seg_t *seg = NULL;
  struct canary_table tables[FLIP_TABLES];
  struct canary_route_view v;
  uint64_t last_gen = 0, reads = 0, changes = 0;
  char key[32];

  for (int k = 0; k < FLIP_TABLES; k++)
    flip_table(k, &tables[k]);
  CHILD_CHECK(test_seg_open(&seg, path, R_ROUTES, R_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  __atomic_add_fetch(&sh->ready, 1, __ATOMIC_SEQ_CST);
  while (!__atomic_load_n(&sh->done, __ATOMIC_ACQUIRE) || reads < 1000) {
    int k, p, id;
    uint32_t g32 = 0;

    CHILD_CHECK(canary_route_read(seg, route, &v) == 0, 5);
    k = flip_match(&v, tables);
    CHILD_CHECK(k >= 0, 10); /* a mix of tables, or garbage */
    CHILD_CHECK(v.generation >= last_gen, 11);
    id = __atomic_load_n(&sh->gen_table[v.generation % GEN_MAP],
                         __ATOMIC_ACQUIRE);
    CHILD_CHECK(id == 0 || id == k + 1, 12); /* contents of another gen */
    if (v.generation != last_gen)
      changes++;
    last_gen = v.generation;

    p = canary_route_pick(seg, route, NULL, 0, &g32);
    CHILD_CHECK(p >= 0 && p < CANARY_MAX_UPSTREAMS, 13);
    id = __atomic_load_n(&sh->gen_table[g32 % GEN_MAP], __ATOMIC_ACQUIRE);
    CHILD_CHECK(id == 0 || (uint32_t)p < tables[id - 1].n, 14);

    snprintf(key, sizeof key, "u%llu", (unsigned long long)(reads % 977));
    p = canary_route_pick(seg, route, key, strlen(key), &g32);
    CHILD_CHECK(p >= 0 && p < CANARY_MAX_UPSTREAMS, 15);
    id = __atomic_load_n(&sh->gen_table[g32 % GEN_MAP], __ATOMIC_ACQUIRE);
    CHILD_CHECK(id == 0 || (uint32_t)p < tables[id - 1].n, 16);
    reads++;
  }
  sh->reads[me] = reads;
  sh->changes[me] = changes;
  test_seg_close(seg);
  _exit(0);
}

static void flip_publisher(const char *path, int route, struct flip_shared *sh,
                           int readers, uint64_t max_publishes,
                           double seconds) {
  canary_seg_t *seg = NULL;
  struct canary_table tables[FLIP_TABLES];
  double t0 = test_now(), end;
  uint64_t i;

  for (int k = 0; k < FLIP_TABLES; k++)
    flip_table(k, &tables[k]);
  CHILD_CHECK(test_seg_open(&seg, path, R_ROUTES, R_UPSTREAMS, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < (uint32_t)readers) {
    CHILD_CHECK(test_now() - t0 < 20.0, 3);
    usleep(100);
  }
  end = test_now() + seconds;
  for (i = 1; i <= max_publishes && test_now() < end; i++) {
    int k = (int)(i % FLIP_TABLES);
    uint64_t gen = 0;
    CHILD_CHECK(canary_route_publish(seg, route, &tables[k], 0x5000 + k, &gen,
                                     NULL, 0) == 0,
                20);
    CHILD_CHECK(gen < GEN_MAP, 21);
    __atomic_store_n(&sh->gen_table[gen], (uint8_t)(k + 1), __ATOMIC_RELEASE);
  }
  sh->published = i - 1;
  __atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
  test_seg_close(seg);
  _exit(0);
}

static void route_readers_never_see_a_mixed_table(void **state) {
  struct test_fx *fx = *state;
  const int readers = 6;
  struct flip_shared *sh = test_shared_alloc(sizeof *sh);
  struct canary_table t0;
  pid_t pids[8];
  uint64_t changes = 0, reads = 0, gen;
  int r = claim(fx->seg, "flip");

  assert_non_null(sh);
  flip_table(0, &t0);
  gen = publish_ok(fx->seg, r, &t0, 0x5000);
  sh->gen_table[gen] = 1;
  for (int i = 0; i < readers; i++) {
    pids[i] = test_fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0)
      flip_reader(fx->path, r, sh, i);
  }
  pids[readers] = test_fork();
  assert_true(pids[readers] >= 0);
  if (pids[readers] == 0)
    flip_publisher(fx->path, r, sh, readers, test_scaled_min(300000, 3000),
                   1.0);
  for (int i = 0; i <= readers; i++) {
    int st = test_wait_status(pids[i]);
    if (st != 0)
      fail_msg("%s %d exited %d (10: mixed table, 11: generation went "
               "back, 12: contents of another generation, 14/16: pick "
               "index >= n of its generation, 20: publish failed)",
               i < readers ? "reader" : "publisher", i, st);
  }
  for (int i = 0; i < readers; i++) {
    changes += sh->changes[i];
    reads += sh->reads[i];
  }
  /* The test only means something if the readers saw tables change. */
  assert_true(sh->published > 100);
  if (changes < 10)
    fail_msg("readers saw only %llu table changes in %llu reads",
             (unsigned long long)changes, (unsigned long long)reads);
  test_shared_free(sh, sizeof *sh);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(route_rejects_bad_indices, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(route_unpublished_is_enotpub, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          route_table_validation_rejects_and_changes_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(route_table_limits_follow_the_segment,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(route_valid_edge_tables_are_accepted,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(route_claim_and_find, setup, teardown),
      cmocka_unit_test_setup_teardown(route_concurrent_claims_of_one_key_agree,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(route_publish_then_read_back, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          route_republish_identical_keeps_generation, setup, teardown),
      cmocka_unit_test_setup_teardown(route_set_effective, setup, teardown),
      cmocka_unit_test_setup_teardown(
          route_split_matches_weights_in_every_window, setup, teardown),
      cmocka_unit_test_setup_teardown(route_split_is_exact_across_processes,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          route_sticky_two_upstreams_only_gain_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(
          route_sticky_raising_one_canary_keeps_its_keys, setup, teardown),
      cmocka_unit_test(route_sticky_bucket_is_fixed_and_seedless),
      cmocka_unit_test_setup_teardown(route_readers_never_see_a_mixed_table,
                                      setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
