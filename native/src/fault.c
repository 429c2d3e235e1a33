/*
 * fault.c - named fault points for the test builds.
 *
 * The tests must kill a writer in the middle of the real publish, the
 * real progression start and the real judge, not in an imitation of
 * them.  So those functions carry CANARY_FAULT("name") at the places
 * where a death matters (see internal.h).  In the shipped library the
 * macro is empty; the cmocka binaries are linked against objects built
 * with -DCANARY_FAULT_POINTS, where it calls canary__fault() below.
 *
 * A test process arms one point by name with canary__fault_arm(); when
 * that process reaches it for the nth time it writes the point's name
 * to the test's descriptor and stops there, in pause(), until the test
 * SIGKILLs it: exactly the state a worker killed at that instruction
 * leaves behind.  Arming is per process (a forked child inherits what
 * its parent armed, and normally arms its own).
 */
#include "internal.h"

#ifdef CANARY_FAULT_POINTS

#include <string.h>
#include <unistd.h>

static char armed[64];
static unsigned remaining;
static int notify = -1;

void canary__fault_arm(const char *name, unsigned nth, int notify_fd) {
  canary__copy_str(armed, sizeof armed, name, name ? strlen(name) : 0);
  remaining = nth;
  notify = notify_fd;
}

void canary__fault(const char *name) {
  if (armed[0] == '\0' || strcmp(name, armed) != 0 || remaining == 0)
    return;
  if (--remaining > 0)
    return;
  if (notify >= 0)
    (void)!write(notify, name, strlen(name));
  for (;;)
    pause();
}

#else

/* ISO C wants at least one declaration in a translation unit. */
typedef int canary_fault_points_off;

#endif
