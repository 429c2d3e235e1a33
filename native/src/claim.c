/*
 * claim.c - route slots: finding and claiming a slot under a key.
 *
 * A route is a slot in the segment claimed under a string key (the plugin
 * instance id).  Claims of new slots are serialised by the segment-wide
 * claim lock (owner.c), tried once; no request path ever takes it, and a
 * key already claimed is found without it.  A new label for a claimed
 * slot is written under that route's writer lock.  Key and label are
 * written before the slot's state turns READY (with a store fence
 * between) and the key never changes afterwards, so readers that load
 * READY and then fence may compare the key directly.
 */
#include "internal.h"

#include <ck_pr.h>
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

int canary_route_find(const canary_seg_t *seg, const char *key,
                      size_t key_len) {
  if (seg == NULL || !key_ok(key, key_len))
    return CANARY_EINVAL;
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    struct route_hdr *r = canary__route(seg, i);
    if (ck_pr_load_32(&r->state) != ROUTE_READY)
      continue;
    /* Pairs with the store fence before state = READY in claim: the key
     * we compare next was complete before READY became visible. */
    ck_pr_fence_load();
    if (key_equals(r, key, key_len))
      return (int)i;
  }
  return CANARY_ENOENT;
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
  idx = canary_route_find(seg, key, key_len);
  if (idx >= 0) {
    /* Claimed by another process since we looked. */
    canary__lock_release(seg, canary__claim_lock_off());
    return relabel(seg, idx, label, label_len);
  }
  idx = CANARY_EFULL;
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    struct route_hdr *r = canary__route(seg, i);
    char kbuf[CANARY_KEY_MAX];
    if (ck_pr_load_32(&r->state) != ROUTE_FREE)
      continue;
    memset(kbuf, 0, sizeof kbuf);
    memcpy(kbuf, key, key_len);
    canary__store_words(r->key, kbuf, CANARY_KEY_MAX / 8);
    store_label(r, label, label_len);
    /* Key and label must be visible before the slot reads as READY. */
    ck_pr_fence_store();
    ck_pr_store_32(&r->state, ROUTE_READY);
    ck_pr_inc_32(&h->routes_used);
    idx = (int)i;
    break;
  }
  canary__lock_release(seg, canary__claim_lock_off());
  return idx;
}
