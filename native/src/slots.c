/*
 * slots.c - statistics slots: an upstream's counters belong to its name.
 *
 * A route's statistics used to live at fixed positions in its slot, one
 * per upstream index, and were labelled with whatever name sat at that
 * index.  Reordering the upstream list then moved a thousand requests
 * from `stable` to `canary`, and replacing `canary-v2` by `canary-v3` in
 * place made v3 inherit v2's history.  Memory was also sized for the
 * worst case: every route reserved CANARY_MAX_UPSTREAMS histograms.
 *
 * Now the statistics of every configured upstream live in a slot of a
 * segment-wide pool, owned by (route, upstream name).  A published table
 * carries, next to each upstream's name and weight, the handle of its
 * slot, and a publish assigns them (canary__stats_assign):
 *
 *   - a name the current table already has keeps its slot, wherever it
 *     moves in the list: a reorder changes no series;
 *   - a name with a retired slot on this route (it left recently) gets
 *     that slot back, counts included: a counter never goes back;
 *   - any other name gets a fresh slot, zeroed: a new name starts at 0;
 *   - names that left have their slots retired once the new table is
 *     published (canary__stats_retire): no longer exported, still
 *     counting for requests picked before the publish.
 *
 * Requests record by handle, the one their pick's generation published,
 * so a publish between pick and record cannot move a count to another
 * name.  A retired slot is handed out again only after the segment's
 * grace period; each hand-out bumps the slot's epoch, which is
 * part of the handle, so a request older than that (a long download)
 * cannot count into the next owner: its record is dropped.
 *
 * Ownership changes (hand-out, retirement, revival) happen only under
 * the segment's claim lock, so they never race each other and need no
 * CAS; recorders read a slot's identity lock-free.  A slot's counters are
 * zeroed by the claim-word holder before any table references the slot.
 */
#include "internal.h"

#include <ck_pr.h>
#include <stdio.h>
#include <string.h>

int canary__past_grace(const canary_seg_t *seg, uint64_t retired_us,
                       uint64_t now_us) {
  if (retired_us > now_us + seg->grace_us)
    return 1; /* retired "in the future": the clock restarted (reboot) */
  return now_us >= retired_us && now_us - retired_us >= seg->grace_us;
}

struct stat_slot *canary__stat_of(const canary_seg_t *seg, uint32_t route,
                                  uint32_t handle) {
  uint32_t idx = canary__stat_index(handle);
  struct stat_slot *st;

  if (idx >= seg->max_stat_slots)
    return NULL;
  st = canary__stat_slot(seg, idx);
  if (ck_pr_load_32(&st->hdr.state) == STAT_FREE)
    return NULL;
  /* The state is read before the identity it vouches for (the claim lock
   * holder stores the identity, fences, then sets the state). */
  ck_pr_fence_load();
  if (ck_pr_load_32(&st->hdr.route) != route ||
      (ck_pr_load_32(&st->hdr.epoch) & CANARY_STAT_EPOCH_MASK) !=
          handle >> CANARY_STAT_INDEX_BITS)
    return NULL;
  return st;
}

uint32_t canary__stat_snapshot(const canary_seg_t *seg,
                               const struct stat_slot *st,
                               struct canary_hist_snapshot *out) {
  struct up_stats *s = (struct up_stats *)(uintptr_t)&st->stats;
  uint64_t stripes = canary__stripes_used(seg);
  uint32_t blocks =
      ck_pr_load_32((uint32_t *)(uintptr_t)&st->hdr.nonempty) &
      CANARY_BLOCKS_MASK;
  /* Each counter is read atomically; the snapshot as a whole is not a
   * single instant, which only matters to the last few samples.  Blocks
   * and stripes never written read as zeros without touching them. */
  out->sum_us = 0;
  memset(out->status, 0, sizeof out->status);
  for (; stripes != 0; stripes &= stripes - 1) {
    uint32_t k = (uint32_t)__builtin_ctzll(stripes);
    out->sum_us += ck_pr_load_64(&s->stripes[k].sum_us);
    for (int i = 0; i < 6; i++)
      out->status[i] += ck_pr_load_64(&s->stripes[k].status[i]);
  }
  for (int b = 0; b < CANARY_HIST_BUCKETS; b += 64) {
    int end = b + 64 < CANARY_HIST_BUCKETS ? b + 64 : CANARY_HIST_BUCKETS;
    if (blocks & (1u << (b / 64)))
      for (int i = b; i < end; i++)
        out->buckets[i] = ck_pr_load_64(&s->buckets[i]);
    else
      memset(&out->buckets[b], 0, (size_t)(end - b) * sizeof out->buckets[0]);
  }
  return blocks;
}

/* ---- hand-out, revival, retirement (claim lock held) ------------------ */

static int name_is(const struct stat_slot *st, const char *name) {
  char cur[CANARY_NAME_MAX];
  canary__load_words(cur, st->hdr.name, CANARY_NAME_MAX / 8);
  cur[CANARY_NAME_MAX - 1] = '\0';
  return strcmp(cur, name) == 0;
}

static void zero_words(void *dst, size_t bytes) {
  uint64_t *d = dst;
  for (size_t i = 0; i < bytes / 8; i++)
    ck_pr_store_64(&d[i], 0);
}

/* Hands slot `idx` (FREE, or RETIRED past its grace) to (route, name):
 * new epoch first, so that stale handles stop matching before the
 * counters they would add to are zeroed; then identity and zeros; the
 * state last.  Returns the new handle. */
static uint32_t hand_out(const canary_seg_t *seg, uint32_t idx,
                         uint32_t route, const char *name) {
  struct stat_slot *st = canary__stat_slot(seg, idx);
  uint32_t epoch = ck_pr_load_32(&st->hdr.epoch) + 1;
  char nbuf[CANARY_NAME_MAX];

  ck_pr_store_32(&st->hdr.epoch, epoch);
  /* The epoch is visible before the counters change under it. */
  ck_pr_fence_store();
  zero_words(&st->forced, sizeof st->forced);
  zero_words(&st->stats, sizeof st->stats);
  ck_pr_store_32(&st->hdr.nonempty, 0);
  memset(nbuf, 0, sizeof nbuf);
  canary__copy_str(nbuf, sizeof nbuf, name, strlen(name));
  canary__store_words(st->hdr.name, nbuf, CANARY_NAME_MAX / 8);
  ck_pr_store_32(&st->hdr.route, route);
  ck_pr_store_64(&st->hdr.retired_us, 0);
  /* Identity and zeros before the state that makes readers trust them. */
  ck_pr_fence_store();
  ck_pr_store_32(&st->hdr.state, STAT_LIVE);
  return canary__stat_handle(idx, epoch);
}

/* The route's retired slot for `name`, or -1. */
static int find_retired(const canary_seg_t *seg, uint32_t route,
                        const char *name) {
  for (uint32_t i = 0; i < seg->max_stat_slots; i++) {
    struct stat_slot *st = canary__stat_slot(seg, i);
    if (ck_pr_load_32(&st->hdr.state) == STAT_RETIRED &&
        ck_pr_load_32(&st->hdr.route) == route && name_is(st, name))
      return (int)i;
  }
  return -1;
}

/* A slot to hand out: a free one, else the retired one that left longest
 * ago, if its grace has passed.  -1 when the pool is exhausted. */
static int find_spare(const canary_seg_t *seg, uint64_t now_us) {
  int best = -1;
  uint64_t best_at = UINT64_MAX;
  for (uint32_t i = 0; i < seg->max_stat_slots; i++) {
    struct stat_slot *st = canary__stat_slot(seg, i);
    uint32_t state = ck_pr_load_32(&st->hdr.state);
    uint64_t at;
    if (state == STAT_FREE)
      return (int)i;
    if (state != STAT_RETIRED)
      continue;
    at = ck_pr_load_64(&st->hdr.retired_us);
    if (canary__past_grace(seg, at, now_us) && at < best_at) {
      best = (int)i;
      best_at = at;
    }
  }
  return best;
}

int canary__stats_assign(const canary_seg_t *seg, uint32_t route,
                         const struct table_data *cur, struct table_data *d,
                         char *err, size_t err_len) {
  enum { KEPT, REVIVED, FRESH };
  uint8_t how[CANARY_MAX_UPSTREAMS];
  uint64_t now = (uint64_t)canary_clock_us();

  for (uint32_t i = 0; i < d->n; i++) {
    int slot = -1;
    how[i] = KEPT;
    for (uint32_t j = 0; cur != NULL && j < cur->n && slot < 0; j++)
      if (strcmp(cur->names[j], d->names[i]) == 0 &&
          canary__stat_of(seg, route, cur->stat[j]) != NULL) {
        d->stat[i] = cur->stat[j];
        slot = (int)canary__stat_index(cur->stat[j]);
      }
    if (slot >= 0)
      continue;
    slot = find_retired(seg, route, d->names[i]);
    if (slot >= 0) {
      struct stat_slot *st = canary__stat_slot(seg, (uint32_t)slot);
      how[i] = REVIVED;
      d->stat[i] = canary__stat_handle((uint32_t)slot,
                                       ck_pr_load_32(&st->hdr.epoch));
      ck_pr_store_32(&st->hdr.state, STAT_LIVE);
      continue;
    }
    slot = find_spare(seg, now);
    if (slot < 0) {
      /* Give back what this publish took, as it was. */
      for (uint32_t k = 0; k < i; k++) {
        struct stat_slot *st =
            canary__stat_slot(seg, canary__stat_index(d->stat[k]));
        if (how[k] == REVIVED)
          ck_pr_store_32(&st->hdr.state, STAT_RETIRED);
        else if (how[k] == FRESH)
          ck_pr_store_32(&st->hdr.state, STAT_FREE);
      }
      ck_pr_inc_64(&canary__header(seg)->stats_exhausted);
      return canary__fail(
          err, err_len, CANARY_EFULL,
          "no free statistics slot for upstream '%s': all %u are in use "
          "or retired less than %llu s ago (raise "
          "CANARY_ROUTER_MAX_UPSTREAM_SLOTS)",
          d->names[i], seg->max_stat_slots,
          (unsigned long long)(seg->grace_us / 1000000u));
    }
    how[i] = FRESH;
    d->stat[i] = hand_out(seg, (uint32_t)slot, route, d->names[i]);
  }
  return 0;
}

void canary__stats_retire(const canary_seg_t *seg, uint32_t route,
                          const struct table_data *cur,
                          const struct table_data *d, uint64_t now_us) {
  for (uint32_t j = 0; j < cur->n; j++) {
    struct stat_slot *st = canary__stat_of(seg, route, cur->stat[j]);
    int kept = 0;
    for (uint32_t i = 0; d != NULL && i < d->n && !kept; i++)
      kept = d->stat[i] == cur->stat[j];
    if (kept || st == NULL || ck_pr_load_32(&st->hdr.state) != STAT_LIVE)
      continue;
    ck_pr_store_64(&st->hdr.retired_us, now_us);
    /* The time is visible before the state that makes it matter. */
    ck_pr_fence_store();
    ck_pr_store_32(&st->hdr.state, STAT_RETIRED);
  }
}

int canary__stats_revive(const canary_seg_t *seg, uint32_t route,
                         const struct table_data *d) {
  for (uint32_t i = 0; i < d->n; i++)
    if (canary__stat_of(seg, route, d->stat[i]) == NULL)
      return 0;
  for (uint32_t i = 0; i < d->n; i++)
    ck_pr_store_32(&canary__stat_of(seg, route, d->stat[i])->hdr.state,
                   STAT_LIVE);
  return 1;
}
