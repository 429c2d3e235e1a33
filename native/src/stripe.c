/*
 * stripe.c - per-process counter stripes (see internal.h for why).
 *
 * A handle remembers its stripe together with the process's fork count at
 * the time of the claim.  A fork() bumps the count in the child (a
 * pthread_atfork handler), so a child that inherited its parent's handle
 * claims a stripe of its own at its first record instead of writing into
 * the parent's.  That check is one comparison on the request path.
 *
 * Handles are per thread for recording: two threads that record through
 * the same handle would share a stripe.  nginx workers are single-threaded.
 */
#include "internal.h"

#include <pthread.h>
#include <unistd.h>

uint64_t canary__fork_count;

static void child(void) { canary__fork_count++; }

static pthread_once_t hook_once = PTHREAD_ONCE_INIT;

static void install(void) { pthread_atfork(NULL, NULL, child); }

void canary__fork_hook(void) { pthread_once(&hook_once, install); }

int canary__stripe_claim(canary_seg_t *seg) {
  struct seg_header *h = canary__header(seg);
  uint32_t me = (uint32_t)getpid();

  seg->stripe = CANARY_STRIPES - 1; /* the shared one, unless we get ours */
  seg->stripe_fork = canary__fork_count;
  if (seg->readonly)
    return seg->stripe;
  for (uint32_t i = 0; i < CANARY_STRIPES - 1; i++) {
    uint32_t cur = ck_pr_load_32(&h->stripe_owner[i]);
    /* A stripe already ours belongs to another handle of this process:
     * sharing it would let that handle's close free a stripe we still
     * write.  So only free stripes and those of dead processes qualify. */
    if (cur != 0 && (cur == me || canary__pid_alive(cur)))
      continue;
    /* A full barrier: our first counter store cannot be seen before the
     * stripe names us (the dead owner's last stores are long visible). */
    if (ck_pr_cas_32(&h->stripe_owner[i], cur, me)) {
      seg->stripe = (int)i;
      /* Readers skip stripes never used; ours is, from before our first
       * count (the OR is a full barrier). */
      ck_pr_or_64(&h->stripes_used, 1ULL << i);
      break;
    }
  }
  return seg->stripe;
}

void canary__stripe_release(canary_seg_t *seg) {
  if (seg->readonly || seg->stripe < 0 || seg->stripe >= (int)CANARY_STRIPES - 1 ||
      seg->stripe_fork != canary__fork_count)
    return;
  /* Our counter stores before the stripe is free for another writer. */
  ck_pr_fence_store();
  ck_pr_cas_32(&canary__header(seg)->stripe_owner[seg->stripe],
               (uint32_t)getpid(), 0);
  seg->stripe = -1;
}
