/*
 * test_lifecycle.c - a long-running gateway: statistics that belong to an
 * upstream's name, route slots that are given back, a pool that runs out.
 *
 * What a user would notice: reordering the upstream list moves a thousand
 * requests from `stable` to `canary` on the dashboard; replacing
 * `canary-v2` by `canary-v3` makes v3 inherit v2's errors; a counter that
 * goes back; a removed plugin instance exported forever; the 65th plugin
 * instance of a gateway's life silently failing open; a request forced by
 * a tester rolling a healthy canary back.
 *
 * Retirement times are arguments (now_us), so "after the grace period" is
 * a retirement stamped long ago: nothing here sleeps.
 */
#include "test_util.h"

#include "internal.h"

#define L_ROUTES 4u
#define L_UPSTREAMS 16u
#define SEC 1e6 /* microseconds */

/* A 4-route segment whose retired slots wait 1 s: a retirement stamped
 * at 1 us (the clock's first second) is past its grace. */
static int setup(void **state) {
  struct canary_seg_params p = {L_ROUTES, L_UPSTREAMS, 0, 0, 1, 0};
  struct test_fx *fx;
  if (test_fx_setup(state, 0, 0) != 0)
    return -1;
  fx = *state;
  return canary_seg_open_params(&fx->seg, fx->path, &p, NULL, 0) ==
                 CANARY_SEG_CREATED
             ? 0
             : -1;
}

#define LONG_AGO 1.0 /* us: a retirement past any 1 s grace */

static int teardown(void **state) {
  return test_fx_teardown(state);
}

static int claim(canary_seg_t *seg, const char *key) {
  int r = canary_route_claim(seg, key, strlen(key), key, strlen(key));
  if (r < 0)
    fail_msg("claim %s: %d (%s)", key, r, canary_strerror(r));
  return r;
}

/* Publishes upstreams named by a NULL-terminated list, all the weight on
 * the first. */
static int publish_names(canary_seg_t *seg, int route, uint64_t hash,
                         const char *const *names, char *err,
                         size_t err_len) {
  struct canary_table t;
  memset(&t, 0, sizeof t);
  for (t.n = 0; names[t.n] != NULL; t.n++)
    snprintf(t.names[t.n], CANARY_NAME_MAX, "%s", names[t.n]);
  t.weights[0] = CANARY_WEIGHT_SCALE;
  return canary_route_publish(seg, route, &t, hash, NULL, err, err_len);
}

static void publish_ok(canary_seg_t *seg, int route, uint64_t hash,
                       const char *const *names) {
  char err[256] = "";
  int rc = publish_names(seg, route, hash, names, err, sizeof err);
  if (rc != 0)
    fail_msg("publish: %d (%s): %s", rc, canary_strerror(rc), err);
}

/* Index of `name` in the route's published table, or -1. */
static int index_of(canary_seg_t *seg, int route, const char *name) {
  struct canary_route_view v;
  assert_int_equal(canary_route_read(seg, route, &v), 0);
  for (uint32_t i = 0; i < v.n; i++)
    if (strcmp(v.names[i], name) == 0)
      return (int)i;
  return -1;
}

/* Responses counted for `name` on the route (its status classes). */
static uint64_t count_of(canary_seg_t *seg, int route, const char *name) {
  struct canary_hist_snapshot *s = t_alloc(sizeof *s);
  uint64_t n = 0;
  int i = index_of(seg, route, name);
  if (i < 0)
    fail_msg("no upstream %s on route %d", name, route);
  assert_int_equal(canary_hist_snapshot(seg, route, i, s), 0);
  for (int c = 0; c < 6; c++)
    n += s->status[c];
  t_free(s);
  return n;
}

static void record_n(canary_seg_t *seg, int route, const char *name, int n,
                     int status) {
  int i = index_of(seg, route, name);
  assert_true(i >= 0);
  for (int k = 0; k < n; k++)
    assert_int_equal(canary_route_record(seg, route, i, 1000, status, -1), 0);
}

static char *render_all(canary_seg_t *seg) {
  size_t need = 0;
  char *buf;
  assert_int_equal(canary_prom_render(seg, NULL, 0, &need), CANARY_ENOSPC);
  buf = t_alloc(need + 1);
  assert_int_equal(canary_prom_render(seg, buf, need + 1, &need), 0);
  buf[need] = '\0';
  return buf;
}

/* The value of the sample line that starts with `series` ("name{...}"),
 * or -1 when there is none. */
static double sample(const char *text, const char *series) {
  const char *p = text;
  size_t n = strlen(series);
  while ((p = strstr(p, series)) != NULL) {
    if ((p == text || p[-1] == '\n') && p[n] == ' ')
      return strtod(p + n + 1, NULL);
    p += n;
  }
  return -1;
}

/* ---- statistics belong to a name ---------------------------------------- */

static void reorder_keeps_every_names_counts(void **state) {
  struct test_fx *fx = *state;
  const char *const before[] = {"stable", "canary", NULL};
  const char *const after[] = {"canary", "stable", NULL};
  int r = claim(fx->seg, "svc");
  char *text;

  publish_ok(fx->seg, r, 1, before);
  record_n(fx->seg, r, "stable", 1000, 200);
  record_n(fx->seg, r, "canary", 10, 500);
  publish_ok(fx->seg, r, 2, after);

  assert_int_equal(index_of(fx->seg, r, "stable"), 1);
  assert_int_equal(count_of(fx->seg, r, "stable"), 1000);
  assert_int_equal(count_of(fx->seg, r, "canary"), 10);
  text = render_all(fx->seg);
  assert_true(sample(text, "canary_requests_total{route=\"svc\","
                           "upstream=\"stable\",status=\"2xx\"}") == 1000);
  assert_true(sample(text, "canary_requests_total{route=\"svc\","
                           "upstream=\"canary\",status=\"5xx\"}") == 10);
  assert_true(sample(text, "canary_requests_total{route=\"svc\","
                           "upstream=\"canary\",status=\"2xx\"}") == 0);
  t_free(text);
}

static void new_name_starts_at_zero_and_the_old_one_is_retired(void **state) {
  struct test_fx *fx = *state;
  const char *const v2[] = {"stable", "canary-v2", NULL};
  const char *const v3[] = {"stable", "canary-v3", NULL};
  struct canary_seg_info info;
  int r = claim(fx->seg, "svc");
  char *text;

  publish_ok(fx->seg, r, 1, v2);
  record_n(fx->seg, r, "canary-v2", 50, 500);
  publish_ok(fx->seg, r, 2, v3);

  assert_int_equal(count_of(fx->seg, r, "canary-v3"), 0);
  text = render_all(fx->seg);
  assert_null(strstr(text, "canary-v2"));
  assert_true(sample(text, "canary_requests_total{route=\"svc\","
                           "upstream=\"canary-v3\",status=\"5xx\"}") == 0);
  t_free(text);
  assert_int_equal(canary_seg_info(fx->seg, &info), 0);
  assert_int_equal(info.stat_slots_used, 3);
  assert_int_equal(info.stat_slots_retired, 1);
}

/* A pool of two slots: the replacement must reuse the retired slot, and
 * must not inherit what it counted. */
static void reused_slot_starts_at_zero(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params p = {2, 4, 2, 0, 1, 0};
  const char *const v2[] = {"stable", "canary-v2", NULL};
  const char *const v3[] = {"stable", "canary-v3", NULL};
  const char *const v4[] = {"stable", "canary-v4", NULL};
  canary_seg_t *seg = NULL;
  char path[PATH_MAX], err[256];
  int r;

  test_path(path, sizeof path, fx->dir, "two.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &p, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  r = claim(seg, "svc");
  publish_ok(seg, r, 1, v2);
  record_n(seg, r, "canary-v2", 70, 500);
  /* v3 needs a slot: v2's is retired only by this very publish. */
  assert_int_equal(publish_names(seg, r, 2, v3, err, sizeof err),
                   CANARY_EFULL);
  assert_non_null(strstr(err, "CANARY_ROUTER_MAX_UPSTREAM_SLOTS"));
  /* Through an intermediate table, v2's slot retires; with the clock past
   * its grace (1 s), v4 takes it over. */
  {
    const char *const only[] = {"stable", NULL};
    publish_ok(seg, r, 3, only);
    struct stat_slot *st = NULL;
    for (uint32_t i = 0; i < 2; i++)
      if (ck_pr_load_32(&canary__stat_slot(seg, i)->hdr.state) ==
          STAT_RETIRED)
        st = canary__stat_slot(seg, i);
    assert_non_null(st);
    /* Stamped long ago: as if the grace period had passed. */
    ck_pr_store_64(&st->hdr.retired_us, 1);
  }
  publish_ok(seg, r, 4, v4);
  assert_int_equal(count_of(seg, r, "canary-v4"), 0);
  test_untrack(seg);
  canary_seg_close(seg);
}

static void counters_never_go_back_when_a_name_returns(void **state) {
  struct test_fx *fx = *state;
  const char *const v2[] = {"stable", "canary-v2", NULL};
  const char *const v3[] = {"stable", "canary-v3", NULL};
  int r = claim(fx->seg, "svc");

  publish_ok(fx->seg, r, 1, v2);
  record_n(fx->seg, r, "canary-v2", 40, 200);
  publish_ok(fx->seg, r, 2, v3); /* a config flip ... */
  record_n(fx->seg, r, "canary-v3", 5, 200);
  publish_ok(fx->seg, r, 3, v2); /* ... and back */
  assert_int_equal(count_of(fx->seg, r, "canary-v2"), 40);
  publish_ok(fx->seg, r, 4, v3);
  assert_int_equal(count_of(fx->seg, r, "canary-v3"), 5);
}

/* A request picked under one table and recorded after a publish that
 * reordered it counts for the upstream that served it. */
static void record_lands_on_the_upstream_that_served(void **state) {
  struct test_fx *fx = *state;
  const char *const before[] = {"stable", "canary", NULL};
  const char *const after[] = {"canary", "stable", NULL};
  struct canary_route_view v;
  uint32_t gen = 0, stat;
  int r = claim(fx->seg, "svc"), up;

  publish_ok(fx->seg, r, 1, before);
  up = canary_route_pick(fx->seg, r, NULL, 0, &gen); /* stable: all weight */
  assert_int_equal(up, 0);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal((uint32_t)v.generation, gen);
  stat = v.stats[up];
  publish_ok(fx->seg, r, 2, after); /* while the request is in flight */
  assert_int_equal(
      canary_stat_record(fx->seg, r, stat, 1000, 200, -1, 0), 0);
  assert_int_equal(count_of(fx->seg, r, "stable"), 1);
  assert_int_equal(count_of(fx->seg, r, "canary"), 0);
}

/* A handle kept past its slot's reuse (a request older than the grace
 * period) is dropped, not counted into the slot's next owner. */
static void stale_handle_never_counts_into_the_next_owner(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params p = {2, 4, 2, 0, 1, 0};
  const char *const a[] = {"stable", "canary-a", NULL};
  const char *const only[] = {"stable", NULL};
  const char *const b[] = {"stable", "canary-b", NULL};
  struct canary_route_view v;
  canary_seg_t *seg = NULL;
  char path[PATH_MAX];
  uint32_t stale;
  int r;

  test_path(path, sizeof path, fx->dir, "two.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &p, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  r = claim(seg, "svc");
  publish_ok(seg, r, 1, a);
  assert_int_equal(canary_route_read(seg, r, &v), 0);
  stale = v.stats[1];
  publish_ok(seg, r, 2, only);
  /* Retired within the grace period: the late record still counts. */
  assert_int_equal(canary_stat_record(seg, r, stale, 10, 200, -1, 0), 0);
  for (uint32_t i = 0; i < 2; i++)
    if (ck_pr_load_32(&canary__stat_slot(seg, i)->hdr.state) == STAT_RETIRED)
      ck_pr_store_64(&canary__stat_slot(seg, i)->hdr.retired_us, 1);
  publish_ok(seg, r, 3, b); /* canary-b reuses canary-a's slot */
  assert_int_equal(canary_route_read(seg, r, &v), 0);
  assert_int_equal(canary__stat_index(v.stats[1]), canary__stat_index(stale));
  assert_int_equal(canary_stat_record(seg, r, stale, 10, 500, -1, 0),
                   CANARY_ENOENT);
  assert_int_equal(count_of(seg, r, "canary-b"), 0);
  test_untrack(seg);
  canary_seg_close(seg);
}

/* The window base of a progression started by a publish that reorders
 * the table is the new table's canary, not whatever sat at its index. */
static void progression_window_starts_from_the_new_canary(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_table t;
  struct canary_prog_status ps;
  char err[256] = "";
  int r = claim(fx->seg, "svc");

  memset(&p, 0, sizeof p);
  p.nsteps = 1;
  p.steps[0] = 1000;
  p.interval_ms = 60000;
  p.failure_limit = 3;
  test_judge_unset(&p.judge);
  p.judge.min_requests = 10;
  p.judge.rollback_error_rate = 0.5;

  memset(&t, 0, sizeof t);
  t.n = 3;
  strcpy(t.names[0], "a");
  strcpy(t.names[1], "b");
  strcpy(t.names[2], "c");
  t.weights[0] = 8000;
  t.weights[1] = 1000;
  t.weights[2] = 1000;
  p.canary = 2;
  assert_int_equal(
      canary_route_publish_prog(fx->seg, r, &t, &p, 1, NULL, err, sizeof err),
      0);
  record_n(fx->seg, r, "b", 1000, 200); /* b is busy and healthy */
  /* Reorder: c moves to index 1, where b was. */
  strcpy(t.names[1], "c");
  strcpy(t.names[2], "b");
  p.canary = 1;
  assert_int_equal(
      canary_route_publish_prog(fx->seg, r, &t, &p, 2, NULL, err, sizeof err),
      0);
  record_n(fx->seg, r, "c", 20, 503); /* the canary fails */
  assert_true(canary_prog_tick(fx->seg, r, canary_clock_us(), &ps) >= 0);
  assert_int_equal(ps.state, CANARY_PROG_ROLLED_BACK);
}

/* ---- forced requests ---------------------------------------------------- */

static void forced_requests_are_counted_apart_and_never_judged(void **state) {
  struct test_fx *fx = *state;
  struct canary_prog_params p;
  struct canary_table t;
  struct canary_route_view v;
  struct canary_prog_status ps;
  struct canary_hist_snapshot *s = t_alloc(sizeof *s);
  char err[256] = "", *text;
  int r = claim(fx->seg, "svc");

  memset(&p, 0, sizeof p);
  p.canary = 1;
  p.nsteps = 1;
  p.steps[0] = 1000;
  p.interval_ms = 60000;
  p.failure_limit = 1;
  test_judge_unset(&p.judge);
  p.judge.min_requests = 10;
  p.judge.rollback_error_rate = 0.5;
  memset(&t, 0, sizeof t);
  t.n = 2;
  strcpy(t.names[0], "stable");
  strcpy(t.names[1], "canary");
  t.weights[0] = 9000;
  t.weights[1] = 1000;
  assert_int_equal(
      canary_route_publish_prog(fx->seg, r, &t, &p, 1, NULL, err, sizeof err),
      0);
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  /* A client forces 100 requests onto the canary and they all fail. */
  for (int i = 0; i < 100; i++)
    assert_int_equal(canary_stat_record(fx->seg, r, v.stats[1], 5000, 503,
                                        CANARY_TRACE_GENERATED,
                                        CANARY_RECORD_FORCED),
                     0);
  assert_int_equal(canary_prog_tick(fx->seg, r, canary_clock_us(), &ps), 0);
  assert_int_equal(ps.state, CANARY_PROG_RUNNING);
  assert_int_equal(canary_hist_snapshot(fx->seg, r, 1, s), 0);
  assert_int_equal(s->status[5], 0);
  /* Still visible, apart. */
  assert_int_equal(canary_route_read(fx->seg, r, &v), 0);
  assert_int_equal(v.forced[1][5], 100);
  assert_int_equal(v.trace[CANARY_TRACE_GENERATED], 100);
  text = render_all(fx->seg);
  assert_true(sample(text, "canary_forced_requests_total{route=\"svc\","
                           "upstream=\"canary\",status=\"5xx\"}") == 100);
  assert_true(sample(text, "canary_requests_total{route=\"svc\","
                           "upstream=\"canary\",status=\"5xx\"}") == 0);
  t_free(text);
  /* Unforced failures are judged as before. */
  for (int i = 0; i < 20; i++)
    assert_int_equal(
        canary_stat_record(fx->seg, r, v.stats[1], 5000, 503, -1, 0), 0);
  assert_int_equal(canary_prog_tick(fx->seg, r, canary_clock_us(), &ps), 2);
  assert_int_equal(ps.state, CANARY_PROG_ROLLED_BACK);
  assert_true(canary_stat_record(fx->seg, r, v.stats[1], 1, 200, -1, 2) < 0);
  t_free(s);
}

/* ---- route slots ---------------------------------------------------------- */

/* 100 instances over a 4-slot segment's life, each removed when the next
 * comes: every one claims, publishes, routes and records; only the live
 * ones are exported. */
static void many_instances_over_the_segments_life_keep_working(void **state) {
  struct test_fx *fx = *state;
  const char *const names[] = {"stable", "canary", NULL};
  struct canary_seg_info info;
  char live[3][32];

  memset(live, 0, sizeof live);
  for (int i = 0; i < 100; i++) {
    char key[32], keys[3 * 32], *text;
    size_t klen = 0;
    int r;
    snprintf(key, sizeof key, "instance-%03d", i);
    r = claim(fx->seg, key);
    publish_ok(fx->seg, r, (uint64_t)i, names);
    assert_int_equal(canary_route_pick(fx->seg, r, NULL, 0, NULL), 0);
    record_n(fx->seg, r, "stable", 3, 200);
    /* The configuration now holds this instance and the previous two. */
    memmove(live[0], live[1], sizeof live[0] * 2);
    snprintf(live[2], sizeof live[2], "%s", key);
    for (int k = 0; k < 3; k++)
      if (live[k][0] != '\0') {
        size_t n = strlen(live[k]) + 1;
        memcpy(keys + klen, live[k], n);
        klen += n;
      }
    assert_true(canary_route_retire_except(fx->seg, keys, klen, LONG_AGO) <=
                1);
    text = render_all(fx->seg);
    for (int k = 0; k < 3; k++)
      if (live[k][0] != '\0') {
        char series[160];
        snprintf(series, sizeof series,
                 "canary_upstream_weight{route=\"%s\",upstream=\"stable\"}",
                 live[k]);
        assert_true(sample(text, series) == 1.0);
      }
    if (i >= 3) {
      char old[48];
      snprintf(old, sizeof old, "route=\"instance-%03d\"", i - 3);
      assert_null(strstr(text, old)); /* retired: no longer exported */
    }
    t_free(text);
  }
  assert_int_equal(canary_seg_info(fx->seg, &info), 0);
  assert_int_equal(info.routes_exhausted, 0);
  assert_int_equal(info.stat_slots_exhausted, 0);
  assert_int_equal(info.routes_used, L_ROUTES);
  assert_int_equal(info.routes_retired, 1);
}

static void retired_route_comes_back_with_its_counts(void **state) {
  struct test_fx *fx = *state;
  const char *const names[] = {"stable", "canary", NULL};
  int r = claim(fx->seg, "svc"), r2;
  char *text;

  publish_ok(fx->seg, r, 1, names);
  record_n(fx->seg, r, "stable", 100, 200);
  assert_int_equal(canary_route_retire(fx->seg, r, canary_clock_us()), 0);
  assert_int_equal(canary_route_retire(fx->seg, r, canary_clock_us()),
                   CANARY_ENOENT);
  text = render_all(fx->seg);
  assert_null(strstr(text, "route=\"svc\""));
  t_free(text);
  /* In flight when it retired: still routed and counted. */
  assert_int_equal(canary_route_pick(fx->seg, r, NULL, 0, NULL), 0);
  assert_int_equal(canary_route_record(fx->seg, r, 0, 10, 200, -1), 0);
  /* The instance is configured again: same slot, nothing lost. */
  r2 = claim(fx->seg, "svc");
  assert_int_equal(r2, r);
  assert_int_equal(count_of(fx->seg, r, "stable"), 101);
}

/* Within the grace period a retired slot is not reused, so requests in
 * flight on it stay safe; the claim fails clearly and is counted. */
static void grace_period_keeps_retired_slots(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params p = {L_ROUTES, L_UPSTREAMS, 0, 0, 0, 0}; /* 300 s */
  const char *const names[] = {"stable", "canary", NULL};
  struct canary_seg_info info;
  canary_seg_t *seg = NULL;
  char path[PATH_MAX];
  int r = -1;

  test_path(path, sizeof path, fx->dir, "grace.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &p, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  for (uint32_t i = 0; i < L_ROUTES; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%u", i);
    r = claim(seg, key);
    publish_ok(seg, r, 1, names);
  }
  assert_int_equal(canary_route_retire(seg, r, canary_clock_us()), 0);
  assert_int_equal(canary_route_claim(seg, "new", 3, "", 0), CANARY_EFULL);
  assert_int_equal(canary_route_pick(seg, r, NULL, 0, NULL), 0);
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.routes_exhausted, 1);
  /* Once the grace period is over, the slot is reused, empty. */
  ck_pr_store_64(&canary__route(seg, (uint32_t)r)->retired_us,
                 (uint64_t)(canary_clock_us() - 301 * SEC));
  assert_int_equal(canary_route_claim(seg, "new", 3, "", 0), r);
  assert_int_equal(canary_route_pick(seg, r, NULL, 0, NULL), CANARY_ENOTPUB);
  test_untrack(seg);
  canary_seg_close(seg);
}

/* ---- the statistics pool -------------------------------------------------- */

static void exhausted_pool_fails_the_publish_and_changes_nothing(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params p = {4, 4, 3, 0, 0, 0};
  const char *const two[] = {"stable", "canary", NULL};
  const char *const other[] = {"stable2", "canary2", NULL};
  struct canary_seg_info info;
  canary_seg_t *seg = NULL;
  char path[PATH_MAX], err[256] = "";
  int a, b;

  test_path(path, sizeof path, fx->dir, "three.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &p, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  a = claim(seg, "a");
  b = claim(seg, "b");
  publish_ok(seg, a, 1, two);
  assert_int_equal(publish_names(seg, b, 1, other, err, sizeof err),
                   CANARY_EFULL);
  assert_non_null(strstr(err, "canary2"));
  assert_int_equal(canary_route_pick(seg, b, NULL, 0, NULL), CANARY_ENOTPUB);
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.stat_slots_exhausted, 1);
  /* stable2 got the third slot, and gave it back when canary2 found
   * none: still one free. */
  assert_int_equal(info.stat_slots_used, 2);
  assert_int_equal(info.max_stat_slots, 3);
  assert_int_equal(canary_route_pick(seg, a, NULL, 0, NULL), 0);
  assert_int_equal(canary_route_record(seg, a, 1, 10, 200, -1), 0);
  test_untrack(seg);
  canary_seg_close(seg);
}

static void segment_follows_the_configuration(void **state) {
  struct test_fx *fx = *state;
  /* As the plugin sizes it by default for CANARY_ROUTER_MAX_ROUTES=1000:
   * 2 statistics slots per route and 64 spare, a progression slot for
   * every route up to 64 and for one in 8 beyond (runtime.lua). */
  struct canary_seg_params p = {1000, 16, 2 * 1000 + 64, 0, 0, 64 + 1000 / 8};
  struct canary_seg_info info;
  canary_seg_t *seg = NULL;
  char path[PATH_MAX];

  test_path(path, sizeof path, fx->dir, "big.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &p, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  assert_int_equal(canary_seg_info(seg, &info), 0);
  /* No route reserves statistics for upstreams it does not have, nor a
   * progression area (two window bases and the decision log, about
   * 60 KB) it has no progression for: 1000 routes x 2 upstreams fit in
   * 64 MB, with a progression on 189 of them. */
  assert_true(info.route_bytes + sizeof(struct prog_area) / 2 <
              info.prog_bytes);
  assert_int_equal(info.max_prog_slots, 64 + 1000 / 8);
  assert_int_equal(info.size,
                   CANARY_HEADER_BYTES + 1000 * info.route_bytes +
                       (2 * 1000 + 64) * info.stat_bytes +
                       (64 + 1000 / 8) * info.prog_bytes);
  assert_true(info.size <= 64ull * 1024 * 1024);
  assert_int_equal(info.retire_grace_s, CANARY_RETIRE_GRACE_S);
  test_untrack(seg);
  canary_seg_close(seg);
}

/* ---- progression slots ---------------------------------------------------- */

static void time_based(struct canary_prog_params *p) {
  memset(p, 0, sizeof *p);
  p->canary = 1;
  p->nsteps = 3;
  p->steps[0] = 1000;
  p->steps[1] = 5000;
  p->steps[2] = 10000;
  p->interval_ms = 1000;
  p->failure_limit = 1;
  test_judge_unset(&p->judge); /* no gate: every window passes */
}

static int publish_prog(canary_seg_t *seg, int route, uint64_t hash,
                        const struct canary_prog_params *p, char *err,
                        size_t err_len) {
  struct canary_table t;
  memset(&t, 0, sizeof t);
  t.n = 2;
  strcpy(t.names[0], "stable");
  strcpy(t.names[1], "canary");
  t.weights[0] = 9000;
  t.weights[1] = 1000;
  return canary_route_publish_prog(seg, route, &t, p, hash, NULL, err,
                                   err_len);
}

/* A 4-route segment with 2 progression slots: routes take one only
 * while they have a progression, the third is refused with a clear error
 * and changes nothing, a removed progression's slot waits out its grace
 * and keeps the route's judged-window counters. */
static void progression_slots_follow_the_configuration(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params sp = {4, 4, 0, 0, 1, 2};
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_route_view v;
  struct canary_seg_info info;
  struct canary_decision dec[4];
  canary_seg_t *seg = NULL;
  char path[PATH_MAX], err[256] = "";
  int a, b, c;

  test_path(path, sizeof path, fx->dir, "progs.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &sp, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  a = claim(seg, "a");
  b = claim(seg, "b");
  c = claim(seg, "c");
  time_based(&p);
  /* Plain routes take no progression slot. */
  assert_int_equal(publish_prog(seg, c, 1, NULL, err, sizeof err), 0);
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.prog_slots_used, 0);
  assert_int_equal(publish_prog(seg, a, 2, &p, err, sizeof err), 0);
  assert_int_equal(publish_prog(seg, b, 3, &p, err, sizeof err), 0);
  /* The pool is full: refused, the route keeps what it had. */
  assert_int_equal(publish_prog(seg, c, 4, &p, err, sizeof err),
                   CANARY_EFULL);
  assert_non_null(strstr(err, "CANARY_ROUTER_MAX_PROGRESSIONS"));
  assert_int_equal(canary_route_read(seg, c, &v), 0);
  assert_int_equal(v.config_hash, 1);
  assert_int_equal(v.effective[1], 1000);
  assert_int_equal(canary_prog_status(seg, c, canary_clock_us(), &st), 0);
  assert_int_equal(st.state, CANARY_PROG_NONE);
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.prog_slots_used, 2);
  assert_int_equal(info.prog_slots_exhausted, 1);
  /* a and b run, each in its own area. */
  assert_int_equal(canary_prog_tick(seg, a, canary_clock_us() + 1.5 * SEC,
                                    &st),
                   2);
  assert_int_equal(st.step, 1);
  assert_int_equal(st.evaluations[CANARY_GATE_PASS], 1);
  assert_int_equal(canary_prog_status(seg, b, canary_clock_us(), &st), 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 0);
  assert_int_equal(canary_prog_decisions(seg, b, 0, dec, 4), 0);
  /* a drops its progression: its slot retires, its counter stays. */
  assert_int_equal(publish_prog(seg, a, 5, NULL, err, sizeof err), 0);
  assert_int_equal(canary_prog_status(seg, a, canary_clock_us(), &st), 0);
  assert_int_equal(st.state, CANARY_PROG_NONE);
  assert_int_equal(st.evaluations[CANARY_GATE_PASS], 1);
  assert_int_equal(canary_prog_decisions(seg, a, 0, dec, 4), 0);
  assert_int_equal(canary_route_read(seg, a, &v), 0);
  assert_int_equal(v.effective[1], 1000); /* the configured weights */
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.prog_slots_used, 2);
  assert_int_equal(info.prog_slots_retired, 1);
  /* Within its grace the slot is not for c... */
  assert_int_equal(publish_prog(seg, c, 4, &p, err, sizeof err),
                   CANARY_EFULL);
  /* ...but a gets it back, with its decision log. */
  assert_int_equal(publish_prog(seg, a, 6, &p, err, sizeof err), 0);
  assert_int_equal(canary_prog_decisions(seg, a, 0, dec, 4), 1);
  assert_int_equal(canary_prog_status(seg, a, canary_clock_us(), &st), 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(st.step, 0); /* a new progression starts at step 1 */
  test_untrack(seg);
  canary_seg_close(seg);
}

/* A retired route's progression slot goes, after the grace period, to
 * another route, which starts from an empty area; the retired route,
 * claimed back, starts afresh instead of running without its area. */
static void retired_routes_progression_slot_is_reused(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params sp = {4, 4, 0, 0, 1, 1};
  struct canary_prog_params p;
  struct canary_prog_status st;
  struct canary_route_view v;
  struct canary_decision dec[4];
  canary_seg_t *seg = NULL;
  char path[PATH_MAX], err[256] = "";
  int a, b;

  test_path(path, sizeof path, fx->dir, "reuse.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &sp, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  time_based(&p);
  a = claim(seg, "a");
  b = claim(seg, "b");
  assert_int_equal(publish_prog(seg, a, 1, &p, err, sizeof err), 0);
  assert_int_equal(canary_prog_action(seg, a, CANARY_ACT_PAUSE,
                                      canary_clock_us(), &st, err,
                                      sizeof err),
                   0);
  assert_int_equal(publish_prog(seg, b, 2, &p, err, sizeof err),
                   CANARY_EFULL);
  assert_int_equal(canary_route_retire(seg, a, LONG_AGO), 0);
  assert_int_equal(publish_prog(seg, b, 2, &p, err, sizeof err), 0);
  assert_int_equal(canary_prog_status(seg, b, canary_clock_us(), &st), 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  assert_int_equal(canary_prog_decisions(seg, b, 0, dec, 4), 0);
  /* a comes back: its slot is b's now, so it starts unpublished. */
  assert_int_equal(claim(seg, "a"), a);
  assert_int_equal(canary_route_read(seg, a, &v), 0);
  assert_int_equal(v.generation, 0);
  assert_int_equal(canary_prog_status(seg, a, canary_clock_us(), &st), 0);
  assert_int_equal(st.state, CANARY_PROG_NONE);
  assert_int_equal(publish_prog(seg, a, 1, &p, err, sizeof err),
                   CANARY_EFULL);
  assert_int_equal(canary_prog_status(seg, b, canary_clock_us(), &st), 0);
  assert_int_equal(st.state, CANARY_PROG_RUNNING);
  test_untrack(seg);
  canary_seg_close(seg);
}

/* Processes publishing progressions on their own routes at once, more
 * of them than there are progression slots: exactly as many succeed as
 * there are slots, no two routes share one, the rest are refused. */
#define RACERS 6u
#define RACE_SLOTS 4u

struct race {
  int rc[RACERS];
};

static void racer(const char *path, int route, int me, struct race *res,
                  struct test_gate *g) {
  canary_seg_t *seg = NULL;
  struct canary_prog_params p;
  int rc;
  CHILD_CHECK(canary_seg_open(&seg, path, RACERS, 4, 0, NULL, 0) ==
                  CANARY_SEG_ATTACHED,
              2);
  time_based(&p);
  test_gate_wait(g);
  /* The claim lock is tried once: a busy one is retried, as the
   * plugin's tick does. */
  while ((rc = publish_prog(seg, route, 10 + (uint64_t)me, &p, NULL, 0)) ==
         CANARY_EBUSY)
    ;
  res->rc[me] = rc;
  canary_seg_close(seg);
  _exit(0);
}

static void concurrent_publishes_share_no_progression_slot(void **state) {
  struct test_fx *fx = *state;
  struct canary_seg_params sp = {RACERS, 4, 0, 0, 1, RACE_SLOTS};
  struct race *res = test_shared_alloc(sizeof *res);
  struct canary_seg_info info;
  struct test_gate g;
  canary_seg_t *seg = NULL;
  char path[PATH_MAX];
  pid_t pids[RACERS];
  int routes[RACERS], ok = 0, full = 0;

  assert_non_null(res);
  test_path(path, sizeof path, fx->dir, "race.seg");
  assert_int_equal(canary_seg_open_params(&seg, path, &sp, NULL, 0),
                   CANARY_SEG_CREATED);
  test_track(seg, 1);
  for (unsigned i = 0; i < RACERS; i++) {
    char key[16];
    snprintf(key, sizeof key, "r%u", i);
    routes[i] = claim(seg, key);
  }
  assert_int_equal(test_gate_init(&g), 0);
  for (unsigned i = 0; i < RACERS; i++) {
    pids[i] = test_fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0)
      racer(path, routes[i], (int)i, res, &g);
  }
  test_gate_open(&g);
  for (unsigned i = 0; i < RACERS; i++)
    assert_int_equal(test_wait_status(pids[i]), 0);
  for (unsigned i = 0; i < RACERS; i++) {
    struct canary_prog_status st;
    assert_true(res->rc[i] == 0 || res->rc[i] == CANARY_EFULL);
    assert_int_equal(canary_prog_status(seg, routes[i], canary_clock_us(), &st),
                     0);
    assert_int_equal(st.state, res->rc[i] == 0 ? CANARY_PROG_RUNNING
                                               : CANARY_PROG_NONE);
    ok += res->rc[i] == 0;
    full += res->rc[i] == CANARY_EFULL;
    /* Each running route has an area of its own. */
    for (unsigned j = 0; j < i; j++)
      if (res->rc[i] == 0 && res->rc[j] == 0)
        assert_ptr_not_equal(canary__prog(seg, (uint32_t)routes[i]),
                             canary__prog(seg, (uint32_t)routes[j]));
  }
  assert_int_equal(ok, RACE_SLOTS);
  assert_int_equal(full, RACERS - RACE_SLOTS);
  assert_int_equal(canary_seg_info(seg, &info), 0);
  assert_int_equal(info.prog_slots_used, RACE_SLOTS);
  assert_int_equal(info.prog_slots_exhausted, RACERS - RACE_SLOTS);
  test_shared_free(res, sizeof *res);
  test_untrack(seg);
  canary_seg_close(seg);
}

/* ---- forked processes ----------------------------------------------------- */

/* Children pick, look the handle up in the table of their pick's
 * generation, and record, tallying per name, while the parent reorders
 * the table as fast as it can.  Every name's total must be exact. */
struct tally {
  uint64_t per[4][2]; /* [child][0: stable, 1: canary] */
};

static void recorder(const char *path, int route, int me, uint64_t n,
                     struct tally *t, struct test_gate *g) {
  canary_seg_t *seg = NULL;
  struct canary_route_view v;
  CHILD_CHECK(canary_seg_open(&seg, path, L_ROUTES, L_UPSTREAMS, 0, NULL,
                              0) == CANARY_SEG_ATTACHED,
              2);
  test_gate_wait(g);
  for (uint64_t i = 0; i < n;) {
    uint32_t gen = 0;
    int up = canary_route_pick(seg, route, NULL, 0, &gen);
    CHILD_CHECK(up >= 0, 3);
    CHILD_CHECK(canary_route_read(seg, route, &v) == 0, 4);
    if ((uint32_t)v.generation != gen)
      continue; /* republished in between: pick again */
    CHILD_CHECK(canary_stat_record(seg, route, v.stats[up], 100, 200, -1,
                                   0) == 0,
                5);
    t->per[me][strcmp(v.names[up], "stable") == 0 ? 0 : 1]++;
    i++;
  }
  canary_seg_close(seg);
  _exit(0);
}

static void concurrent_reorders_lose_and_move_nothing(void **state) {
  struct test_fx *fx = *state;
  const char *const ab[] = {"stable", "canary", NULL};
  const char *const ba[] = {"canary", "stable", NULL};
  struct tally *t = test_shared_alloc(sizeof *t);
  const uint64_t n = test_scaled_min(20000, 500);
  struct canary_table tab;
  struct test_gate g;
  pid_t pids[4];
  uint64_t want[2] = {0, 0};
  int r = claim(fx->seg, "svc"), alive = 4;

  assert_non_null(t);
  /* 70/30 by position: both names serve, unevenly, so a count that
   * followed the position instead of the name would show. */
  memset(&tab, 0, sizeof tab);
  tab.n = 2;
  tab.weights[0] = 7000;
  tab.weights[1] = 3000;
  strcpy(tab.names[0], "stable");
  strcpy(tab.names[1], "canary");
  assert_int_equal(canary_route_publish(fx->seg, r, &tab, 0, NULL, NULL, 0),
                   0);
  assert_int_equal(test_gate_init(&g), 0);
  for (int i = 0; i < 4; i++) {
    pids[i] = test_fork();
    assert_true(pids[i] >= 0);
    if (pids[i] == 0)
      recorder(fx->path, r, i, n, t, &g);
  }
  test_gate_open(&g);
  for (uint64_t k = 1; alive > 0; k++) {
    const char *const *order = k % 2 ? ba : ab;
    strcpy(tab.names[0], order[0]);
    strcpy(tab.names[1], order[1]);
    assert_int_equal(
        canary_route_publish(fx->seg, r, &tab, k, NULL, NULL, 0), 0);
    alive = 0;
    for (int i = 0; i < 4; i++)
      if (pids[i] > 0) {
        int st;
        pid_t w = waitpid(pids[i], &st, WNOHANG);
        if (w == 0) {
          alive++;
        } else {
          assert_true(w == pids[i] && WIFEXITED(st) &&
                      WEXITSTATUS(st) == 0);
          for (int c = 0; c < TEST_MAX_CHILDREN; c++)
            if (test_children()[c] == pids[i])
              test_children()[c] = 0;
          pids[i] = 0;
        }
      }
  }
  for (int i = 0; i < 4; i++) {
    want[0] += t->per[i][0];
    want[1] += t->per[i][1];
  }
  assert_int_equal(want[0] + want[1], 4 * n);
  assert_true(want[0] > 0 && want[1] > 0);
  assert_int_equal(count_of(fx->seg, r, "stable"), want[0]);
  assert_int_equal(count_of(fx->seg, r, "canary"), want[1]);
  test_shared_free(t, sizeof *t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(reorder_keeps_every_names_counts, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          new_name_starts_at_zero_and_the_old_one_is_retired, setup,
          teardown),
      cmocka_unit_test_setup_teardown(reused_slot_starts_at_zero, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          counters_never_go_back_when_a_name_returns, setup, teardown),
      cmocka_unit_test_setup_teardown(
          record_lands_on_the_upstream_that_served, setup, teardown),
      cmocka_unit_test_setup_teardown(
          stale_handle_never_counts_into_the_next_owner, setup, teardown),
      cmocka_unit_test_setup_teardown(
          progression_window_starts_from_the_new_canary, setup, teardown),
      cmocka_unit_test_setup_teardown(
          forced_requests_are_counted_apart_and_never_judged, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          many_instances_over_the_segments_life_keep_working, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          retired_route_comes_back_with_its_counts, setup, teardown),
      cmocka_unit_test_setup_teardown(grace_period_keeps_retired_slots, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          exhausted_pool_fails_the_publish_and_changes_nothing, setup,
          teardown),
      cmocka_unit_test_setup_teardown(segment_follows_the_configuration,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          progression_slots_follow_the_configuration, setup, teardown),
      cmocka_unit_test_setup_teardown(
          retired_routes_progression_slot_is_reused, setup, teardown),
      cmocka_unit_test_setup_teardown(
          concurrent_publishes_share_no_progression_slot, setup, teardown),
      cmocka_unit_test_setup_teardown(
          concurrent_reorders_lose_and_move_nothing, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
