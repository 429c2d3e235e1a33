/* vgtoggle.c - callgrind's collection switch, for stage_kong_own.sh's
 * bench-probe plugin (native/bench/probe_plugin): each call turns
 * counting on or off.  Outside valgrind the client request is a few
 * instructions that do nothing. */
#include <valgrind/callgrind.h>

void canary_bench_toggle_collect(void);

void canary_bench_toggle_collect(void) { CALLGRIND_TOGGLE_COLLECT; }
