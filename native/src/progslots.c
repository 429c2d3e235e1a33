/*
 * progslots.c - progression slots: a progression area only for the
 * routes that have a progression.
 *
 * A progression area holds the canary's and stable's histograms at the
 * start of the open window and the log of the last CANARY_DECISIONS
 * decisions: some 60 KiB, five times what the rest of a route costs.
 * Every route used to carry one in its slot, so 1000 routes without any
 * progression took 60 MB for nothing.  Now the areas live in a pool of
 * their own (max_prog_slots, sized by CANARY_ROUTER_MAX_PROGRESSIONS),
 * and a route holds one only while its configuration has a progression:
 *
 *   - a publish with a progression gives the route a slot unless it has
 *     one (canary__prog_assign): its own retired slot when it still has
 *     one (the decision log comes back with it), else a free slot or
 *     the one retired longest ago past the segment's grace period,
 *     zeroed;
 *   - a publish without a progression retires the route's slot
 *     (canary__prog_release), and so does the route's retirement
 *     (canary__prog_retire_route);
 *   - when the pool has no slot to give, the publish fails with
 *     CANARY_EFULL and changes nothing: the route keeps its previous
 *     table (or, when it has none, the plugin serves stable), and the
 *     error says which variable to raise.
 *
 * The machinery is the statistics slots' (slots.c): states FREE, LIVE,
 * RETIRED; an epoch bumped at every hand-out and carried in the handle,
 * so a handle older than the grace period stops resolving instead of
 * reaching the slot's next owner; ownership changes only under the
 * segment's claim lock.  The route's handle (route_hdr.prog) changes only
 * under the claim lock and the route's writer lock too, so a holder of
 * the writer lock sees a stable area: the progression code (prog.c),
 * which judges and writes under that lock, resolves the handle again once
 * it holds it.  Readers (status, metrics, canarystat) resolve it
 * lock-free and see either no progression or a slot that is, or was
 * within the grace period, the route's.
 *
 * The windows-judged counters stay in the route slot (route_hdr): they
 * are Prometheus counters of the route, and must not go back to zero
 * when a progression is removed and its slot reused.
 */
#include "internal.h"

#include <ck_pr.h>
#include <string.h>

uint64_t canary__prog_bytes(void) {
  return (sizeof(struct prog_slot) + CANARY_CACHELINE - 1) /
         CANARY_CACHELINE * CANARY_CACHELINE;
}

/* The slot a handle names when it still belongs to `route`, else NULL. */
static struct prog_slot *slot_of(const canary_seg_t *seg, uint32_t route,
                                 uint32_t handle) {
  uint32_t idx = canary__stat_index(handle);
  struct prog_slot *ps;

  if (handle == 0 || idx >= seg->max_prog_slots)
    return NULL;
  ps = canary__prog_slot(seg, idx);
  if (ck_pr_load_32(&ps->hdr.state) == STAT_FREE)
    return NULL;
  /* The state before the identity it vouches for (hand_out stores the
   * identity, fences, then the state). */
  ck_pr_fence_load();
  if (ck_pr_load_32(&ps->hdr.route) != route ||
      (ck_pr_load_32(&ps->hdr.epoch) & CANARY_STAT_EPOCH_MASK) !=
          handle >> CANARY_STAT_INDEX_BITS)
    return NULL;
  return ps;
}

struct prog_area *canary__prog(const canary_seg_t *seg, uint32_t route) {
  struct prog_slot *ps =
      slot_of(seg, route, ck_pr_load_32(&canary__route(seg, route)->prog));
  return ps != NULL ? &ps->area : NULL;
}

int canary__prog_moves(const canary_seg_t *seg, uint32_t route, int wants) {
  struct prog_slot *ps =
      slot_of(seg, route, ck_pr_load_32(&canary__route(seg, route)->prog));
  if (!wants)
    return ck_pr_load_32(&canary__route(seg, route)->prog) != 0;
  return ps == NULL || ck_pr_load_32(&ps->hdr.state) != STAT_LIVE;
}

/* ---- hand-out, retirement, revival (claim lock held) ------------------ */

static void zero_words(void *dst, size_t bytes) {
  uint64_t *d = dst;
  for (size_t i = 0; i < bytes / 8; i++)
    ck_pr_store_64(&d[i], 0);
}

static void retire_slot(struct prog_slot *ps, uint64_t now_us) {
  if (ck_pr_load_32(&ps->hdr.state) != STAT_LIVE)
    return;
  ck_pr_store_64(&ps->hdr.retired_us, now_us);
  /* The time is visible before the state that makes it matter. */
  ck_pr_fence_store();
  ck_pr_store_32(&ps->hdr.state, STAT_RETIRED);
}

/* Hands slot idx to `route`: a new epoch first (never 0 in the handle's
 * bits, so that a handle is never 0), so that stale handles stop
 * resolving before the area changes under them; then the zeroed area and
 * the owner; the state last.  Returns the handle. */
static uint32_t hand_out(const canary_seg_t *seg, uint32_t idx,
                         uint32_t route) {
  struct prog_slot *ps = canary__prog_slot(seg, idx);
  uint32_t epoch = ck_pr_load_32(&ps->hdr.epoch) + 1;

  if ((epoch & CANARY_STAT_EPOCH_MASK) == 0)
    epoch++;
  ck_pr_store_32(&ps->hdr.epoch, epoch);
  /* The epoch is visible before the area changes under it. */
  ck_pr_fence_store();
  zero_words(&ps->area, sizeof ps->area);
  ck_pr_store_32(&ps->hdr.route, route);
  ck_pr_store_64(&ps->hdr.retired_us, 0);
  /* Owner and zeros before the state that makes readers trust them. */
  ck_pr_fence_store();
  ck_pr_store_32(&ps->hdr.state, STAT_LIVE);
  return canary__stat_handle(idx, epoch);
}

int canary__prog_assign(const canary_seg_t *seg, uint32_t route,
                        int check_only, char *err, size_t err_len) {
  struct route_hdr *r = canary__route(seg, route);
  struct prog_slot *ps = slot_of(seg, route, ck_pr_load_32(&r->prog));
  uint64_t now = (uint64_t)canary_clock_us(), best_at = UINT64_MAX;
  int own = -1, spare = -1, free_at = -1;

  if (ps != NULL) {
    /* Its own slot (retired by a publish that died before it cleared the
     * handle): back in use. */
    if (!check_only)
      ck_pr_store_32(&ps->hdr.state, STAT_LIVE);
    return 0;
  }
  /* Its own slot first (retired when its progression was removed, or
   * handed out by a publish that died before it set the handle), else
   * a free one, else the one retired longest ago past its grace. */
  for (uint32_t i = 0; i < seg->max_prog_slots && own < 0; i++) {
    struct prog_slot *s = canary__prog_slot(seg, i);
    uint32_t state = ck_pr_load_32(&s->hdr.state);
    uint64_t at;
    if (state == STAT_FREE) {
      if (free_at < 0)
        free_at = (int)i;
      continue;
    }
    if (ck_pr_load_32(&s->hdr.route) == route) {
      own = (int)i;
      continue;
    }
    if (state != STAT_RETIRED)
      continue;
    at = ck_pr_load_64(&s->hdr.retired_us);
    if (canary__past_grace(seg, at, now) && at < best_at) {
      spare = (int)i;
      best_at = at;
    }
  }
  if (free_at >= 0)
    spare = free_at;
  if (check_only && (own >= 0 || spare >= 0))
    return 0;
  if (own >= 0) {
    struct prog_slot *s = canary__prog_slot(seg, (uint32_t)own);
    ck_pr_store_32(&s->hdr.state, STAT_LIVE);
    /* The slot is live again before the route names it. */
    ck_pr_fence_store();
    ck_pr_store_32(&r->prog, canary__stat_handle(
                                 (uint32_t)own, ck_pr_load_32(&s->hdr.epoch)));
    return 0;
  }
  if (spare < 0) {
    ck_pr_inc_64(&canary__header(seg)->progs_exhausted);
    return canary__fail(
        err, err_len, CANARY_EFULL,
        "no free progression slot: all %u are in use or retired less than "
        "%llu s ago (raise CANARY_ROUTER_MAX_PROGRESSIONS)",
        seg->max_prog_slots, (unsigned long long)(seg->grace_us / 1000000u));
  }
  {
    uint32_t h = hand_out(seg, (uint32_t)spare, route);
    /* The slot is whole before the route names it. */
    ck_pr_fence_store();
    ck_pr_store_32(&r->prog, h);
  }
  return 0;
}

void canary__prog_release(const canary_seg_t *seg, uint32_t route,
                          uint64_t now_us) {
  struct route_hdr *r = canary__route(seg, route);
  struct prog_slot *ps = slot_of(seg, route, ck_pr_load_32(&r->prog));
  /* Retired first, then unnamed: a writer killed in between leaves a
   * handle to a retired slot, which the next publish releases again. */
  if (ps != NULL)
    retire_slot(ps, now_us);
  ck_pr_store_32(&r->prog, 0);
}

void canary__prog_retire_route(const canary_seg_t *seg, uint32_t route,
                               uint64_t now_us) {
  for (uint32_t i = 0; i < seg->max_prog_slots; i++) {
    struct prog_slot *ps = canary__prog_slot(seg, i);
    if (ck_pr_load_32(&ps->hdr.state) == STAT_LIVE &&
        ck_pr_load_32(&ps->hdr.route) == route)
      retire_slot(ps, now_us);
  }
}

int canary__prog_revive(const canary_seg_t *seg, uint32_t route) {
  uint32_t h = ck_pr_load_32(&canary__route(seg, route)->prog);
  struct prog_slot *ps = slot_of(seg, route, h);
  if (h == 0)
    return 1; /* it had no progression */
  if (ps == NULL)
    return 0; /* reused meanwhile */
  ck_pr_store_32(&ps->hdr.state, STAT_LIVE);
  return 1;
}

void canary__prog_forget(const canary_seg_t *seg, uint32_t route) {
  struct route_hdr *r = canary__route(seg, route);
  ck_pr_store_32(&r->prog, 0);
  /* The route slot goes to another key: slots this index still owns
   * (retired with it, past their grace like the route) must not come
   * back to the new owner. */
  for (uint32_t i = 0; i < seg->max_prog_slots; i++) {
    struct prog_slot *ps = canary__prog_slot(seg, i);
    if (ck_pr_load_32(&ps->hdr.state) != STAT_FREE &&
        ck_pr_load_32(&ps->hdr.route) == route)
      ck_pr_store_32(&ps->hdr.state, STAT_FREE);
  }
}
