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

int canary_route_publish_prog(canary_seg_t *seg, int route,
                              const struct canary_table *t,
                              const struct canary_prog_params *prog,
                              uint64_t config_hash, uint64_t *gen_out,
                              char *err, size_t err_len) {
  struct table_data d, cur;
  struct route_hdr *r;
  uint64_t gen;
  int rc;

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
  rc = canary__lock_try(seg, canary__writer_lock_off(seg, (uint32_t)route));
  if (rc != 0)
    return canary__fail(err, err_len, rc,
                        rc == CANARY_EBUSY
                            ? "another process is publishing this route"
                            : "no lock on the segment file (replaced?)");
  if (canary__read_table(seg, r, &cur, &gen, 1) == 0 &&
      same_config(&cur, &d)) {
    canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
    if (gen_out != NULL)
      *gen_out = gen;
    return 0;
  }
  /* The progression starts before the table that goes with it is
   * published: the table is the commit point.  A writer killed in
   * between leaves the old table, which no worker's config matches, so
   * the next publish of this config (every worker makes one) starts the
   * progression again and publishes. */
  canary__prog_start(seg, (uint32_t)route, prog, &d, canary_clock_us());
  CANARY_FAULT("publish.prog_started");
  canary__compute_upper(&d);
  gen = canary__publish_locked(r, &d);
  canary__lock_release(seg, canary__writer_lock_off(seg, (uint32_t)route));
  if (gen_out != NULL)
    *gen_out = gen;
  return 0;
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
    for (uint32_t k = 0; k < CANARY_STRIPES; k++) {
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
  return 0;
}
