/*
 * owner.c - writer words that survive the death of their owner.
 *
 * Writers of shared state (route claims, table publishes) exclude each
 * other with a 32-bit word holding the owner's pid, 0 when free.  A
 * lock-free reader never looks at it: only writers wait, and only for a
 * bounded time.  nginx workers are killed (SIGKILL, OOM, crash) and a
 * word left behind by a dead process must not block the next writer
 * forever, so a waiter checks whether the owner still exists and, when it
 * does not, takes the word over with a CAS from the dead pid to its own.
 * Two waiters racing for the same dead word both CAS from the same value;
 * exactly one wins.
 *
 * Liveness is judged with kill(pid, 0) plus /proc/<pid>/stat, because a
 * killed child that its parent has not reaped yet is a zombie that still
 * answers kill(0).  Pid reuse could make a dead owner look alive; then the
 * waiter times out with CANARY_EBUSY (an error, never a corruption), and
 * the caller retries later.
 */
#include "internal.h"

#include <ck_pr.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int canary__pid_alive(uint32_t pid) {
  char path[64], buf[256];
  FILE *f;
  const char *p;

  if (pid == 0)
    return 0;
  if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
    return 0;
  snprintf(path, sizeof path, "/proc/%u/stat", pid);
  f = fopen(path, "r");
  if (f == NULL)
    return 1; /* kill() said it exists; no /proc to say otherwise */
  p = fgets(buf, sizeof buf, f);
  fclose(f);
  if (p == NULL)
    return 1;
  /* "pid (comm) S ...": the state follows the last ')'. */
  p = strrchr(buf, ')');
  if (p != NULL && (p[2] == 'Z' || p[2] == 'X'))
    return 0;
  return 1;
}

int canary__owner_acquire(uint32_t *word, unsigned timeout_ms) {
  uint32_t me = (uint32_t)getpid();
  struct timespec pause = {0, 200 * 1000}; /* 200 us */
  unsigned waited_us = 0;

  for (;;) {
    uint32_t cur = ck_pr_load_32(word);
    if (cur == 0 || cur == me || !canary__pid_alive(cur)) {
      /* The CAS is a full barrier on x86 and ck_pr_cas_32 is documented
       * as a full fence: nothing the new owner writes next can be seen
       * before the word names it. */
      if (ck_pr_cas_32(word, cur, me))
        return 0;
      continue; /* somebody else won; look again */
    }
    if (waited_us >= timeout_ms * 1000u)
      return CANARY_EBUSY;
    nanosleep(&pause, NULL);
    waited_us += 200;
  }
}

void canary__owner_release(uint32_t *word) {
  uint32_t me = (uint32_t)getpid();
  /* Order every store made while owning before the word is freed, so the
   * next owner starts from the complete state. */
  ck_pr_fence_store();
  ck_pr_cas_32(word, me, 0);
}
