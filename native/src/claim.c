/*
 * claim.c - route slots: claiming a slot under a key, and giving it back.
 *
 * A route is a slot in the segment claimed under a string key (the plugin
 * instance id).  Claims and retirements are serialised by the
 * segment-wide claim lock (owner.c), tried once; no request path ever
 * takes it, and a live key already claimed is found without it.  A
 * route's slot is changed (relabelled, retired, revived, reused) only
 * under that route's writer lock too.  Key and label are written before
 * the slot's state turns READY (with a store fence between) and the key
 * never changes while the slot is READY or RETIRED, so readers that load
 * the state and then fence may compare the key directly.
 *
 * Instances come and go over a gateway's life (in DB mode every new
 * instance gets a new id), so slots of instances no longer configured are
 * retired: canary_route_retire() or, from the plugin's configure with the
 * complete set of live keys, canary_route_retire_except().  A retired
 * route is no longer exported and its statistics slots are retired with
 * it, but for the segment's grace period nothing else changes: requests still
 * in flight pick from its table and record into it, and a claim of the
 * same key (a config that comes back, a worker that has not seen the
 * change yet) brings it back as it was.  After the grace period a claim
 * of another key may reuse the slot, which then starts empty.
 */
#include "internal.h"

#include <ck_pr.h>
#include <stdlib.h>
#include <string.h>

int canary__route_ok(const canary_seg_t *seg, int route) {
  return seg != NULL && route >= 0 && (uint32_t)route < seg->max_routes;
}

int canary__ready_route(const canary_seg_t *seg, int route,
                        struct route_hdr **out) {
  if (!canary__route_ok(seg, route))
    return CANARY_EINVAL;
  *out = canary__route(seg, (uint32_t)route);
  return ck_pr_load_32(&(*out)->state) == ROUTE_READY ? 0 : CANARY_ENOENT;
}

static int key_ok(const char *key, size_t key_len) {
  return key != NULL && key_len > 0 && key_len < CANARY_KEY_MAX &&
         memchr(key, '\0', key_len) == NULL;
}

/* Compares a READY slot's key (immutable once READY) with key/key_len. */
static int key_equals(const struct route_hdr *r, const char *key,
                      size_t key_len) {
  return canary__bounded_len(r->key, CANARY_KEY_MAX) == key_len &&
         memcmp(r->key, key, key_len) == 0;
}

/* The slot holding `key` in state `state`, or -1. */
static int find_in(const canary_seg_t *seg, const char *key, size_t key_len,
                   uint32_t state) {
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    struct route_hdr *r = canary__route(seg, i);
    if (ck_pr_load_32(&r->state) != state)
      continue;
    /* Pairs with the store fence before the state in claim: the key we
     * compare next was complete before the state became visible. */
    ck_pr_fence_load();
    if (key_equals(r, key, key_len))
      return (int)i;
  }
  return -1;
}

int canary_route_find(const canary_seg_t *seg, const char *key,
                      size_t key_len) {
  int i;
  if (seg == NULL || !key_ok(key, key_len))
    return CANARY_EINVAL;
  i = find_in(seg, key, key_len, ROUTE_READY);
  return i >= 0 ? i : CANARY_ENOENT;
}

/* The length a label keeps in its slot: too long a label is cut between
 * UTF-8 characters, never inside one (the renderer would show a '?' for
 * the stump). */
static size_t label_cut(const char *label, size_t label_len) {
  if (label_len < CANARY_LABEL_MAX)
    return label_len;
  label_len = CANARY_LABEL_MAX - 1;
  while (label_len > 0 && ((unsigned char)label[label_len] & 0xc0) == 0x80)
    label_len--;
  return label_len;
}

/* Caller passes label_len already through label_cut(). */
static void store_label(struct route_hdr *r, const char *label,
                        size_t label_len) {
  char buf[CANARY_LABEL_MAX];
  memset(buf, 0, sizeof buf);
  canary__copy_str(buf, sizeof buf, label, label_len);
  canary__store_words(r->label, buf, CANARY_LABEL_MAX / 8);
}

/* Caller holds the claim lock and, for a RETIRED slot, its writer lock.
 * Empties the slot for `key`: unpublished, counters and progression at
 * zero.  The table buffers keep their sequence words (they only grow, so
 * a reader delayed across the reuse still fails its re-check). */
static void reset_slot(const canary_seg_t *seg, uint32_t idx,
                       const char *key, size_t key_len) {
  struct route_hdr *r = canary__route(seg, idx);
  unsigned char *stripes = (unsigned char *)canary__route_stripes(seg, idx);
  char kbuf[CANARY_KEY_MAX];
  uint64_t *w;

  ck_pr_store_64(&r->generation, 0); /* picks now answer ENOTPUB */
  ck_pr_store_64(&canary__route_seq(seg, idx)->next, 0);
  w = (uint64_t *)(void *)stripes;
  for (size_t i = 0; i < CANARY_STRIPES * sizeof(struct route_stripe) / 8; i++)
    ck_pr_store_64(&w[i], 0);
  for (int i = 0; i < CANARY_GATE_RESULTS; i++) {
    ck_pr_store_64(&r->evaluations[i], 0);
    ck_pr_store_64(&r->dry_evaluations[i], 0);
  }
  canary__prog_forget(seg, idx);
  ck_pr_store_64(&r->retired_us, 0);
  memset(kbuf, 0, sizeof kbuf);
  memcpy(kbuf, key, key_len);
  canary__store_words(r->key, kbuf, CANARY_KEY_MAX / 8);
}

/* Caller holds the claim lock.  Tries to bring back a retired route with
 * its statistics; 0 when its statistics slots were reused meanwhile
 * (then the route's writer lock is still held, for reset_slot). */
static int revive(const canary_seg_t *seg, uint32_t idx) {
  struct route_hdr *r = canary__route(seg, idx);
  struct table_data d;
  int rc = canary__read_table(seg, r, &d, NULL, 1);
  /* Its progression slot first: when that was reused, the route starts
   * afresh rather than run its configuration without its progression. */
  if (!canary__prog_revive(seg, idx) ||
      (rc == 0 && !canary__stats_revive(seg, idx, &d)))
    return 0;
  /* The slots are live again before the route is. */
  ck_pr_fence_store();
  ck_pr_store_32(&r->state, ROUTE_READY);
  return 1;
}

/* The retired slot that has waited longest past its grace, or -1. */
static int spare_route(const canary_seg_t *seg, uint64_t now_us) {
  int best = -1;
  uint64_t best_at = UINT64_MAX;
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    struct route_hdr *r = canary__route(seg, i);
    uint64_t at;
    if (ck_pr_load_32(&r->state) != ROUTE_RETIRED)
      continue;
    at = ck_pr_load_64(&r->retired_us);
    if (canary__past_grace(seg, at, now_us) && at < best_at) {
      best = (int)i;
      best_at = at;
    }
  }
  return best;
}

/* Caller holds the claim lock and the route's writer lock: retires the
 * statistics slots of its table, then the route. */
static void retire_locked(const canary_seg_t *seg, uint32_t idx,
                          uint64_t now_us) {
  struct route_hdr *r = canary__route(seg, idx);
  struct table_data d;
  if (canary__read_table(seg, r, &d, NULL, 1) == 0)
    canary__stats_retire(seg, idx, &d, NULL, now_us);
  canary__prog_retire_route(seg, idx, now_us);
  ck_pr_store_64(&r->retired_us, now_us);
  /* The time is visible before the state that makes it matter. */
  ck_pr_fence_store();
  ck_pr_store_32(&r->state, ROUTE_RETIRED);
}

/* 1 when the READY slot r already carries this label (label_len after
 * label_cut()); a lock-free word copy, compared whole. */
static int label_is(const struct route_hdr *r, const char *label,
                    size_t label_len) {
  char cur[CANARY_LABEL_MAX];
  canary__load_words(cur, r->label, CANARY_LABEL_MAX / 8);
  cur[CANARY_LABEL_MAX - 1] = '\0';
  return strlen(cur) == label_len && memcmp(cur, label, label_len) == 0;
}

/* Gives the claimed route idx its label.  Labels change under the route's
 * writer lock, so that two writers never interleave their words (readers
 * copying the label word by word may see a mixed label once, never bad
 * memory), and relabels of different routes never contend. */
static int relabel(canary_seg_t *seg, int idx, const char *label,
                   size_t label_len) {
  struct route_hdr *r = canary__route(seg, (uint32_t)idx);
  uint64_t off = canary__writer_lock_off(seg, (uint32_t)idx);
  int rc;

  if (label_len == 0 || label_is(r, label, label_len))
    return idx;
  rc = canary__lock_try(seg, off);
  if (rc != 0)
    return rc;
  if (!label_is(r, label, label_len))
    store_label(r, label, label_len);
  canary__lock_release(seg, off);
  return idx;
}

int canary_route_claim(canary_seg_t *seg, const char *key, size_t key_len,
                       const char *label, size_t label_len) {
  struct seg_header *h;
  int idx, rc;

  if (seg == NULL || !key_ok(key, key_len) || (label == NULL && label_len > 0))
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  label_len = label_cut(label, label_len);
  h = canary__header(seg);

  /* Every worker claims every instance's key: once the first has, the
   * others find it here without the claim lock. */
  idx = canary_route_find(seg, key, key_len);
  if (idx >= 0)
    return relabel(seg, idx, label, label_len);
  rc = canary__lock_try(seg, canary__claim_lock_off());
  if (rc != 0)
    return rc;
  idx = find_in(seg, key, key_len, ROUTE_READY);
  if (idx >= 0) {
    /* Claimed by another process since we looked. */
    canary__lock_release(seg, canary__claim_lock_off());
    return relabel(seg, idx, label, label_len);
  }

  /* The same key, retired and not reused: bring it back as it was. */
  idx = find_in(seg, key, key_len, ROUTE_RETIRED);
  if (idx >= 0) {
    struct route_hdr *r = canary__route(seg, (uint32_t)idx);
    uint64_t off = canary__writer_lock_off(seg, (uint32_t)idx);
    rc = canary__lock_try(seg, off);
    if (rc != 0) {
      idx = rc;
      goto out;
    }
    if (!revive(seg, (uint32_t)idx)) {
      /* Its statistics went to others meanwhile: start it afresh. */
      reset_slot(seg, (uint32_t)idx, key, key_len);
      store_label(r, label, label_len);
      ck_pr_fence_store();
      ck_pr_store_32(&r->state, ROUTE_READY);
    } else if (label_len > 0) {
      store_label(r, label, label_len);
    }
    canary__lock_release(seg, off);
    goto out;
  }

  /* A never-used slot, else the retired one that has waited longest. */
  idx = -1;
  for (uint32_t i = 0; i < seg->max_routes && idx < 0; i++)
    if (ck_pr_load_32(&canary__route(seg, i)->state) == ROUTE_FREE)
      idx = (int)i;
  if (idx >= 0) {
    struct route_hdr *r = canary__route(seg, (uint32_t)idx);
    char kbuf[CANARY_KEY_MAX];
    memset(kbuf, 0, sizeof kbuf);
    memcpy(kbuf, key, key_len);
    canary__store_words(r->key, kbuf, CANARY_KEY_MAX / 8);
    store_label(r, label, label_len);
    /* Key and label must be visible before the slot reads as READY. */
    ck_pr_fence_store();
    ck_pr_store_32(&r->state, ROUTE_READY);
    ck_pr_inc_32(&h->routes_used);
    goto out;
  }
  idx = spare_route(seg, (uint64_t)canary_clock_us());
  if (idx >= 0) {
    struct route_hdr *r = canary__route(seg, (uint32_t)idx);
    uint64_t off = canary__writer_lock_off(seg, (uint32_t)idx);
    rc = canary__lock_try(seg, off);
    if (rc != 0) {
      idx = rc;
      goto out;
    }
    reset_slot(seg, (uint32_t)idx, key, key_len);
    store_label(r, label, label_len);
    /* Everything of the new owner before the slot reads as READY. */
    ck_pr_fence_store();
    ck_pr_store_32(&r->state, ROUTE_READY);
    canary__lock_release(seg, off);
    goto out;
  }
  ck_pr_inc_64(&h->routes_exhausted);
  idx = CANARY_EFULL;
out:
  canary__lock_release(seg, canary__claim_lock_off());
  return idx;
}

int canary_route_retire(canary_seg_t *seg, int route, double now_us) {
  struct route_hdr *r;
  uint64_t off;
  int rc;

  if (!canary__route_ok(seg, route) || !(now_us >= 0))
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  r = canary__route(seg, (uint32_t)route);
  off = canary__writer_lock_off(seg, (uint32_t)route);
  rc = canary__lock_try(seg, canary__claim_lock_off());
  if (rc != 0)
    return rc;
  if (ck_pr_load_32(&r->state) != ROUTE_READY) {
    rc = CANARY_ENOENT;
  } else if ((rc = canary__lock_try(seg, off)) == 0) {
    retire_locked(seg, (uint32_t)route, (uint64_t)now_us);
    canary__lock_release(seg, off);
  }
  canary__lock_release(seg, canary__claim_lock_off());
  return rc;
}

/* The keys of canary_route_retire_except(), sorted for binary search:
 * a thousand routes against a thousand keys stays a fraction of a
 * millisecond in the configure phase. */
struct key_ref {
  const char *p;
  size_t n;
};

static int key_cmp(const void *a, const void *b) {
  const struct key_ref *x = a, *y = b;
  size_t n = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->p, y->p, n);
  return c != 0 ? c : (x->n > y->n) - (x->n < y->n);
}

/* Splits the NUL-separated list into a sorted array (malloc'd, *out;
 * NULL when empty).  Returns the count, or CANARY_ENOMEM. */
static int key_list(const char *list, size_t len, struct key_ref **out) {
  size_t n = 0, at;
  struct key_ref *k;
  *out = NULL;
  for (at = 0; at < len; at += canary__bounded_len(list + at, len - at) + 1)
    n++;
  if (n == 0)
    return 0;
  if (n > INT32_MAX || (k = malloc(n * sizeof *k)) == NULL)
    return CANARY_ENOMEM;
  n = 0;
  for (at = 0; at < len; n++) {
    k[n].p = list + at;
    k[n].n = canary__bounded_len(list + at, len - at);
    at += k[n].n + 1;
  }
  qsort(k, n, sizeof *k, key_cmp);
  *out = k;
  return (int)n;
}

int canary_route_retire_except(canary_seg_t *seg, const char *keys,
                               size_t keys_len, double now_us) {
  struct key_ref *list;
  int rc, nkeys, retired = 0;

  if (seg == NULL || (keys == NULL && keys_len > 0) || !(now_us >= 0))
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  nkeys = key_list(keys, keys_len, &list);
  if (nkeys < 0)
    return nkeys;
  rc = canary__lock_try(seg, canary__claim_lock_off());
  if (rc != 0) {
    free(list);
    return rc;
  }
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    struct route_hdr *r = canary__route(seg, i);
    struct key_ref me;
    if (ck_pr_load_32(&r->state) != ROUTE_READY)
      continue;
    /* See find_in: the key was complete before READY was visible. */
    ck_pr_fence_load();
    me.p = r->key;
    me.n = canary__bounded_len(r->key, CANARY_KEY_MAX);
    if (nkeys > 0 &&
        bsearch(&me, list, (size_t)nkeys, sizeof *list, key_cmp) != NULL)
      continue;
    /* A busy writer keeps its route until the next call. */
    if (canary__lock_try(seg, canary__writer_lock_off(seg, i)) != 0)
      continue;
    retire_locked(seg, i, (uint64_t)now_us);
    canary__lock_release(seg, canary__writer_lock_off(seg, i));
    retired++;
  }
  canary__lock_release(seg, canary__claim_lock_off());
  free(list);
  return retired;
}
