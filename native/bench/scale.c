/*
 * scale.c - segment size per route, and the cost of rendering
 * /canary-router/metrics for many routes.
 *
 *   scale DIR [ROUTES] [RENDERS]
 *
 * Prints "name value unit" lines:
 *
 *   scale_route_bytes, scale_stat_slot_bytes, scale_prog_slot_bytes
 *       canary_seg_info.route_bytes, .stat_bytes and .prog_bytes: a
 *       route costs a route slot plus one statistics slot per configured
 *       upstream, plus a progression slot when it has a progression;
 *   scale_segment_bytes_<R>_routes
 *       the whole file for R routes sized as the plugin sizes it by
 *       default (CANARY_ROUTER_MAX_ROUTES=R, statistics slots 2R + 64,
 *       progression slots min(R, 64 + R/8));
 *   scale_segment_bytes_<R>_routes_all_progressions
 *       the same with a progression slot for every route
 *       (CANARY_ROUTER_MAX_PROGRESSIONS=R);
 *   scale_render_<R>x2_ms, scale_render_<R>x2_max_ms
 *       canary_prom_render() of R routes x 2 upstreams with data: median
 *       and worst CPU time of RENDERS renders, into a buffer already large
 *       enough;
 *   scale_render_chunked_<R>x2_ms
 *       the same exposition through canary_prom_begin/next/end in 64 KiB
 *       pieces, as the status endpoint renders it (median total);
 *   scale_render_chunk_max_<R>x2_ms
 *       the longest single canary_prom_next() call of all those renders:
 *       how long a scrape holds the worker's event loop at a time;
 *   scale_render_<R>x2_bytes
 *       the size of that exposition.
 *
 * Leaves DIR/scale-<R>.seg behind (R routes x 2 upstreams with data, and
 * room for the local host's own route), for stage_scale.sh to hand to the
 * local host.  Route r is claimed under the plugin instance id
 * "<r as 8 hex digits>-0000-4000-8000-000000000000", the one
 * stage_scale.sh gives the instance of its service-<r>, so the host keeps
 * them live (and their statistics) and its scrapes render all of them.
 */
#include "canary.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CPU time of this thread: what a render costs the worker that runs
 * it, whatever else the machine is doing. */
static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static uint64_t rng = 42;
static double unit(void) { /* splitmix64 -> (0, 1) */
  uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

/* Sized as the plugin sizes a segment by default for `routes` routes
 * (runtime.lua), or with `progs` progression slots when not 0. */
static int open_seg(canary_seg_t **seg, const char *path, uint32_t routes,
                    uint32_t progs) {
  uint32_t dflt = 64 + routes / 8 < routes ? 64 + routes / 8 : routes;
  struct canary_seg_params p = {routes, 16, 2 * routes + 64, 0, 0,
                                progs ? progs : dflt};
  char why[256];
  int rc;
  unlink(path);
  rc = canary_seg_open_params(seg, path, &p, why, sizeof why);
  if (rc < 0)
    fprintf(stderr, "scale: %s: %s: %s\n", path, canary_strerror(rc), why);
  return rc;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "build/bench";
  int routes = argc > 2 ? atoi(argv[2]) : 1000;
  int renders = argc > 3 ? atoi(argv[3]) : 50;
  char path[512], err[256];
  struct canary_seg_info info;
  canary_seg_t *seg = NULL;
  struct canary_table t;
  size_t cap, len = 0;
  char *buf;
  double *ms;

  if (routes < 1 || renders < 1)
    return 2;
  ms = calloc((size_t)renders, sizeof *ms);
  if (ms == NULL)
    return 1;

  /* Geometry: a segment for `routes` routes as the plugin sizes it. */
  snprintf(path, sizeof path, "%s/scale-geometry.seg", dir);
  if (open_seg(&seg, path, (uint32_t)routes, 0) < 0)
    return 1;
  canary_seg_info(seg, &info);
  printf("scale_route_bytes %llu bytes\n",
         (unsigned long long)info.route_bytes);
  printf("scale_stat_slot_bytes %llu bytes\n",
         (unsigned long long)info.stat_bytes);
  printf("scale_prog_slot_bytes %llu bytes\n",
         (unsigned long long)info.prog_bytes);
  printf("scale_segment_bytes_%d_routes %llu bytes\n", routes,
         (unsigned long long)info.size);
  printf("scale_prog_slots_%d_routes %u slots\n", routes,
         info.max_prog_slots);
  canary_seg_close(seg);
  unlink(path);
  if (open_seg(&seg, path, (uint32_t)routes, (uint32_t)routes) < 0)
    return 1;
  canary_seg_info(seg, &info);
  printf("scale_segment_bytes_%d_routes_all_progressions %llu bytes\n",
         routes, (unsigned long long)info.size);
  canary_seg_close(seg);
  unlink(path);

  /* routes x 2 upstreams with data (+ a few free route slots for the
   * host's own routes). */
  snprintf(path, sizeof path, "%s/scale-%d.seg", dir, routes);
  if (open_seg(&seg, path, (uint32_t)routes + 8, 0) < 0)
    return 1;
  memset(&t, 0, sizeof t);
  t.n = 2;
  t.weights[0] = 9000;
  t.weights[1] = 1000;
  strcpy(t.names[0], "automation-service");
  strcpy(t.names[1], "automation-service-canary");
  for (int r = 0; r < routes; r++) {
    char key[64], label[64];
    /* The plugin instance ids stage_scale.sh configures the host with,
     * so the host finds these routes live and keeps them. */
    int k = snprintf(key, sizeof key, "%08x-0000-4000-8000-000000000000",
                     (unsigned)r);
    int l = snprintf(label, sizeof label, "service-%04d", r);
    int slot = canary_route_claim(seg, key, (size_t)k, label, (size_t)l);
    if (slot < 0 ||
        canary_route_publish(seg, slot, &t, 0, NULL, err, sizeof err) < 0) {
      fprintf(stderr, "scale: cannot publish route %d\n", r);
      return 1;
    }
    /* Log-normal latencies around 20 ms, a few 5xx, every trace source:
     * a few hundred non-empty buckets per upstream. */
    for (int i = 0; i < 2000; i++) {
      int up = i % 10 == 0;
      uint64_t us = (uint64_t)exp(log(20000.0) + sqrt(-2 * log(unit())) *
                                                     cos(6.2831853 * unit()));
      canary_route_record(seg, slot, up, us, i % 97 == 0 ? 503 : 200, i % 3);
    }
  }

  cap = 0;
  buf = NULL;
  if (canary_prom_render(seg, buf, cap, &len) != CANARY_ENOSPC)
    return 1;
  cap = len * 2;
  buf = malloc(cap);
  if (buf == NULL || canary_prom_render(seg, buf, cap, &len) != 0)
    return 1;
  for (int i = 0; i < renders; i++) {
    double t0 = now_ms();
    if (canary_prom_render(seg, buf, cap, &len) != 0)
      return 1;
    ms[i] = now_ms() - t0;
  }
  qsort(ms, (size_t)renders, sizeof *ms, cmp_double);
  printf("scale_render_%dx2_ms %.3f ms\n", routes, ms[renders / 2]);
  printf("scale_render_%dx2_max_ms %.3f ms\n", routes, ms[renders - 1]);

  /* In pieces, as the status endpoint does it. */
  {
    static char chunk[65536];
    double step_max = 0;
    for (int i = 0; i < renders; i++) {
      canary_prom_t *p = NULL;
      size_t total = 0, n = 0;
      double t0 = now_ms();
      int more = 1;
      if (canary_prom_begin(seg, &p) != 0)
        return 1;
      while (more == 1) {
        double s0 = now_ms();
        more = canary_prom_next(p, chunk, sizeof chunk, &n);
        if (now_ms() - s0 > step_max)
          step_max = now_ms() - s0;
        total += n;
      }
      canary_prom_end(p);
      ms[i] = now_ms() - t0;
      if (more != 0 || total != len)
        return 1;
    }
    qsort(ms, (size_t)renders, sizeof *ms, cmp_double);
    printf("scale_render_chunked_%dx2_ms %.3f ms\n", routes, ms[renders / 2]);
    printf("scale_render_chunk_max_%dx2_ms %.3f ms\n", routes, step_max);
  }
  printf("scale_render_%dx2_bytes %zu bytes\n", routes, len);
  canary_seg_close(seg);
  free(buf);
  free(ms);
  return 0;
}
