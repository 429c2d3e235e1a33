/*
 * stats.c - recording responses and events on a route.
 *
 * See internal.h for the counter stripes: the latency bucket is a shared
 * atomic add, every other counter lives in this process's own stripe.
 */
#include "internal.h"

#include <ck_pr.h>
#include <string.h>

int canary_route_record(canary_seg_t *seg, int route, int upstream,
                        uint64_t latency_us, int status, int trace_source) {
  struct route_hdr *r;
  struct up_stats *st;
  int cls, stripe;

  if (!canary__route_ok(seg, route) || upstream < 0 ||
      (uint32_t)upstream >= seg->max_upstreams || trace_source < -1 ||
      trace_source >= CANARY_TRACE_SOURCES)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  r = canary__route(seg, (uint32_t)route);
  if (ck_pr_load_32(&r->state) != ROUTE_READY)
    return CANARY_ENOENT;
  st = canary__stats(seg, (uint32_t)route, (uint32_t)upstream);
  cls = (status >= 100 && status <= 599) ? status / 100 : 0;
  stripe = canary__stripe(seg);
  /* Independent counters: no ordering among them is promised, a snapshot
   * may see one add and not yet another (like any Prometheus scrape).
   * The bucket is shared by all processes: one atomic add. */
  ck_pr_add_64(&st->buckets[canary__bucket_of(latency_us)], 1);
  canary__count(&st->stripes[stripe].sum_us, latency_us, stripe);
  canary__count(&st->stripes[stripe].status[cls], 1, stripe);
  if (trace_source >= 0)
    canary__count(&canary__route_stripes(seg, (uint32_t)route)[stripe]
                       .trace[trace_source],
                  1, stripe);
  return 0;
}

int canary_route_event(canary_seg_t *seg, int route, int event) {
  struct route_hdr *r;
  if (event < 0 || event >= CANARY_EVENTS)
    return CANARY_EINVAL;
  if (canary__ready_route(seg, route, &r) != 0)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  {
    int stripe = canary__stripe(seg);
    canary__count(
        &canary__route_stripes(seg, (uint32_t)route)[stripe].events[event], 1,
        stripe);
  }
  return 0;
}
