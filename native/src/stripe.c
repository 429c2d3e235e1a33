/*
 * stripe.c - per-handle counter stripes (see internal.h for why).
 *
 * A handle claims a stripe by taking that stripe's lock (owner.c) and
 * keeps the lock for as long as it records: while it holds it, no other
 * handle, in this process or any other, can write the stripe, which is
 * what lets it update the counters with plain atomic stores.  The kernel
 * drops the lock when the handle is closed or its process dies, and the
 * next handle that claims the stripe goes on adding to the counts there:
 * totals never go back.
 *
 * A handle remembers its stripe together with the process's fork count at
 * the time of the claim.  A fork() bumps the count in the child (owner.c),
 * so a child that inherited its parent's handle claims a stripe of its own
 * at its first record instead of writing into the parent's.  That check
 * is one comparison on the request path.
 *
 * Handles are per thread for recording: two threads that record through
 * the same handle would share a stripe.  nginx workers are single-threaded.
 */
#include "internal.h"

#include <ck_pr.h>

int canary__stripe_claim(canary_seg_t *seg) {
  struct seg_header *h = canary__header(seg);
  seg->stripe = CANARY_STRIPES - 1; /* the shared one, unless we get ours */
  seg->stripe_fork = canary__fork_count;
  if (seg->readonly)
    return seg->stripe;
  for (uint32_t i = 0; i < CANARY_STRIPES - 1; i++) {
    int rc = canary__lock_try(seg, canary__stripe_lock_off(i));
    if (rc == 0) {
      /* The lock is a full barrier (owner.c): our first counter load
       * sees the last store of the stripe's previous owner. */
      seg->stripe = (int)i;
      /* Readers skip stripes never used; ours is, from before our first
       * count (the OR is a full barrier). */
      ck_pr_or_64(&h->stripes_used, 1ULL << i);
      break;
    }
    if (rc != CANARY_EBUSY)
      break; /* no lock descriptor: record in the shared stripe */
  }
  return seg->stripe;
}
