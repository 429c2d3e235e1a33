/*
 * publish.c - publishing a route's configuration and reading it back.
 *
 * The entry points that change a route's table: a new configuration
 * (which may restart its progression, prog.c) and new effective weights.
 * Both go through the double-buffered publish of table.c under the
 * route's writer lock (owner.c), tried once: a caller that finds it held
 * gets CANARY_EBUSY and retries later, it never waits.  table.c knows nothing of progressions and prog.c
 * nothing of this file, so the dependencies run one way:
 * publish.c -> prog.c -> table.c.
 */
#include "internal.h"

#include <ck_pr.h>
#include <string.h>

static int same_config(const struct table_data *a,
                       const struct table_data *b) {
  if (a->config_hash != b->config_hash || a->n != b->n)
    return 0;
  for (uint32_t i = 0; i < a->n; i++)
    if (a->weights[i] != b->weights[i] ||
        strcmp(a->names[i], b->names[i]) != 0)
      return 0;
  return 1;
}

int canary_route_publish(canary_seg_t *seg, int route,
                         const struct canary_table *t, uint64_t config_hash,
                         uint64_t *gen_out, char *err, size_t err_len) {
  return canary_route_publish_prog(seg, route, t, NULL, config_hash, gen_out,
                                   err, err_len);
}

/* 1 when a and b hold the same set of names (so every name keeps its
 * statistics slot and none is handed out or retired). */
static int same_names(const struct table_data *a, const struct table_data *b) {
  if (a->n != b->n)
    return 0;
  for (uint32_t i = 0; i < b->n; i++) {
    int found = 0;
    for (uint32_t j = 0; j < a->n && !found; j++)
      found = strcmp(a->names[j], b->names[i]) == 0;
    if (!found)
      return 0;
  }
  return 1;
}

/* Caller holds the route's writer lock; cur and d have the same names.
 * Copies cur's statistics handles to d by name.  0 when one of them no
 * longer names a live slot of the route (a damaged segment): the caller
 * then hands out slots under the claim lock instead. */
static int keep_slots(const canary_seg_t *seg, uint32_t route,
                      const struct table_data *cur, struct table_data *d) {
  for (uint32_t i = 0; i < d->n; i++)
    for (uint32_t j = 0; j < cur->n; j++)
      if (strcmp(cur->names[j], d->names[i]) == 0) {
        if (canary__stat_of(seg, route, cur->stat[j]) == NULL)
          return 0;
        d->stat[i] = cur->stat[j];
      }
  return 1;
}

int canary_route_publish_prog(canary_seg_t *seg, int route,
                              const struct canary_table *t,
                              const struct canary_prog_params *prog,
                              uint64_t config_hash, uint64_t *gen_out,
                              char *err, size_t err_len) {
  struct table_data d, cur;
  struct route_hdr *r;
  uint64_t gen, wlock;
  int rc, claim = 0;

  if (seg == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no segment");
  if (seg->readonly)
    return canary__fail(err, err_len, CANARY_EREADONLY,
                        "segment attached read-only");
  rc = canary__ready_route(seg, route, &r);
  if (rc != 0)
    return canary__fail(err, err_len, rc, "route %d is not claimed", route);
  rc = canary_table_check(t, seg->max_upstreams, err, err_len);
  if (rc != 0)
    return rc;
  if (prog != NULL) {
    rc = canary_prog_check(prog, t->n, err, err_len);
    if (rc != 0)
      return rc;
  }
  wlock = canary__writer_lock_off(seg, (uint32_t)route);

  memset(&d, 0, sizeof d);
  d.config_hash = config_hash;
  d.n = t->n;
  for (uint32_t i = 0; i < t->n; i++) {
    d.weights[i] = t->weights[i];
    d.effective[i] = t->weights[i];
    canary__copy_str(d.names[i], CANARY_NAME_MAX, t->names[i],
                     strlen(t->names[i]));
  }

  /* Every worker applies the same config change; only the first one
   * publishes, the rest find it in place and keep (for instance) the
   * effective weights a progression has set since.  That is the common
   * case, so it is decided lock-free first, and again under the lock. */
  if (canary__read_table(seg, r, &cur, &gen, 1) == 0 &&
      same_config(&cur, &d)) {
    if (gen_out != NULL)
      *gen_out = gen;
    return 0;
  }

  /* Statistics slots change hands only under the segment's claim lock,
   * taken before the route's writer lock (the order claims use too).  A
   * change of weights alone needs only the writer lock.  Each is tried
   * once: CANARY_EBUSY at once, nothing changed. */
  for (;;) {
    int have_cur, names_move, prog_move;
    if (claim) {
      rc = canary__lock_try(seg, canary__claim_lock_off());
      if (rc != 0)
        return canary__fail(err, err_len, rc,
                            rc == CANARY_EBUSY
                                ? "another process is claiming slots"
                                : "no lock on the segment file (replaced?)");
    }
    rc = canary__lock_try(seg, wlock);
    if (rc != 0) {
      if (claim)
        canary__lock_release(seg, canary__claim_lock_off());
      return canary__fail(err, err_len, rc,
                          rc == CANARY_EBUSY
                              ? "another process is publishing this route"
                              : "no lock on the segment file (replaced?)");
    }
    /* Retired while we waited: its slots are no longer its to hand out. */
    if (ck_pr_load_32(&r->state) != ROUTE_READY) {
      rc = canary__fail(err, err_len, CANARY_ENOENT,
                        "route %d was retired", route);
      goto unlock;
    }
    have_cur = canary__read_table(seg, r, &cur, &gen, 1) == 0;
    if (have_cur && same_config(&cur, &d)) {
      rc = 0;
      goto unlock;
    }
    names_move = !have_cur || !same_names(&cur, &d) ||
                 !keep_slots(seg, (uint32_t)route, &cur, &d);
    /* A progression slot to take or to give back (progslots.c). */
    prog_move = canary__prog_moves(seg, (uint32_t)route, prog != NULL);
    if ((names_move || prog_move) && !claim) {
      canary__lock_release(seg, wlock);
      claim = 1;
      continue;
    }
    /* Whether a progression slot is free is known before any statistics
     * slot changes hands: a publish refused for want of either changes
     * nothing. */
    if (prog_move && prog != NULL) {
      rc = canary__prog_assign(seg, (uint32_t)route, 1, err, err_len);
      if (rc != 0)
        goto unlock;
    }
    if (names_move) {
      rc = canary__stats_assign(seg, (uint32_t)route, have_cur ? &cur : NULL,
                                &d, err, err_len);
      if (rc != 0)
        goto unlock;
    }
    if (prog_move && prog != NULL)
      (void)canary__prog_assign(seg, (uint32_t)route, 0, NULL, 0);
    else if (prog_move)
      canary__prog_release(seg, (uint32_t)route,
                           (uint64_t)canary_clock_us());
    /* The progression starts before the table that goes with it is
     * published: the table is the commit point.  A writer killed in
     * between leaves the old table, which no worker's config matches, so
     * the next publish of this config (every worker makes one) starts the
     * progression again and publishes.  Its window base is the new
     * table's canary: canary_hist_snapshot() resolves indexes through d
     * meanwhile. */
    canary__snapshot_through(seg, (uint32_t)route, &d);
    canary__prog_start(seg, (uint32_t)route, prog, &d, canary_clock_us());
    canary__snapshot_through(NULL, 0, NULL);
    CANARY_FAULT("publish.prog_started");
    canary__compute_upper(&d);
    gen = canary__publish_locked(r, &d);
    /* Names that left stop counting only now that no new pick can
     * choose them; requests already picked still record (grace). */
    if (names_move && have_cur)
      canary__stats_retire(seg, (uint32_t)route, &cur, &d,
                           (uint64_t)canary_clock_us());
    rc = 0;
  unlock:
    canary__lock_release(seg, wlock);
    if (claim)
      canary__lock_release(seg, canary__claim_lock_off());
    if (rc == 0 && gen_out != NULL)
      *gen_out = gen;
    return rc;
  }
}

int canary_route_set_effective(canary_seg_t *seg, int route,
                               const uint32_t *effective, uint32_t n,
                               uint64_t *gen_out, char *err, size_t err_len) {
  struct table_data d;
  struct route_hdr *r;
  uint64_t gen;
  int rc;

  if (seg == NULL || effective == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no segment or table");
  if (seg->readonly)
    return canary__fail(err, err_len, CANARY_EREADONLY,
                        "segment attached read-only");
  rc = canary__ready_route(seg, route, &r);
  if (rc != 0)
    return canary__fail(err, err_len, rc, "route %d is not claimed", route);
  rc = canary__lock_try(seg, canary__writer_lock_off(seg, (uint32_t)route));
  if (rc != 0)
    return canary__fail(err, err_len, rc,
                        rc == CANARY_EBUSY
                            ? "another process is publishing this route"
                            : "no lock on the segment file (replaced?)");
  rc = canary__read_table(seg, r, &d, &gen, 1);
  if (rc == 0 && n != d.n)
    rc = canary__fail(err, err_len, CANARY_EWEIGHTS,
                      "%u effective weights for %u upstreams", n, d.n);
  if (rc == 0)
    rc = canary__check_weights(effective, n, err, err_len);
  if (rc == 0) {
    memcpy(d.effective, effective, n * sizeof *effective);
    canary__compute_upper(&d);
    gen = canary__publish_locked(r, &d);
    if (gen_out != NULL)
      *gen_out = gen;
  }
  canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
  return rc;
}

/* ---- reading -------------------------------------------------------- */

int canary_route_read(const canary_seg_t *seg, int route,
                      struct canary_route_view *out) {
  struct table_data d;
  struct route_hdr *r;
  int rc;

  if (out == NULL)
    return CANARY_EINVAL;
  rc = canary__ready_route(seg, route, &r);
  if (rc != 0)
    return rc;
  memset(out, 0, sizeof *out);
  memcpy(out->key, r->key, CANARY_KEY_MAX); /* immutable once READY */
  out->key[CANARY_KEY_MAX - 1] = '\0';
  canary__load_words(out->label, r->label, CANARY_LABEL_MAX / 8);
  out->label[CANARY_LABEL_MAX - 1] = '\0';
  {
    const struct route_stripe *rs =
        canary__route_stripes(seg, (uint32_t)route);
    /* Only stripes ever written can hold counts. */
    for (uint64_t m = canary__stripes_used(seg); m != 0; m &= m - 1) {
      uint32_t k = (uint32_t)__builtin_ctzll(m);
      for (int i = 0; i < CANARY_TRACE_SOURCES; i++)
        out->trace[i] += ck_pr_load_64((uint64_t *)&rs[k].trace[i]);
      for (int i = 0; i < CANARY_EVENTS; i++)
        out->events[i] += ck_pr_load_64((uint64_t *)&rs[k].events[i]);
    }
  }
  rc = canary__read_table(seg, r, &d, &out->generation, 1);
  if (rc == CANARY_ENOTPUB)
    return 0; /* claimed, nothing published yet: generation 0 */
  if (rc != 0)
    return rc;
  out->config_hash = d.config_hash;
  out->n = d.n;
  memcpy(out->weights, d.weights, sizeof d.weights);
  memcpy(out->effective, d.effective, sizeof d.effective);
  memcpy(out->names, d.names, sizeof d.names);
  for (uint32_t u = 0; u < d.n; u++) {
    const struct stat_slot *st =
        canary__stat_of(seg, (uint32_t)route, d.stat[u]);
    out->stats[u] = d.stat[u];
    for (int c = 0; st != NULL && c < 6; c++)
      out->forced[u][c] =
          ck_pr_load_64((uint64_t *)(uintptr_t)&st->forced.status[c]);
  }
  return 0;
}
