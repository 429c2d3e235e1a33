/*
 * stats.c - recording responses and events on a route.
 *
 * See internal.h for the counter stripes: the latency bucket is a shared
 * atomic add, every other counter lives in this process's own stripe.
 */
#include "internal.h"

#include <ck_pr.h>
#include <string.h>

int canary_stat_record(canary_seg_t *seg, int route, uint32_t stat,
                       uint64_t latency_us, int status, int trace_source,
                       int flags) {
  struct route_hdr *r;
  struct stat_slot *st;
  int cls, stripe;

  if (!canary__route_ok(seg, route) || trace_source < -1 ||
      trace_source >= CANARY_TRACE_SOURCES ||
      (flags & ~CANARY_RECORD_FORCED) != 0)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  r = canary__route(seg, (uint32_t)route);
  /* A retired route still counts what was picked before it retired. */
  if (ck_pr_load_32(&r->state) == ROUTE_FREE)
    return CANARY_ENOENT;
  st = canary__stat_of(seg, (uint32_t)route, stat);
  if (st == NULL)
    return CANARY_ENOENT;
  cls = (status >= 100 && status <= 599) ? status / 100 : 0;
  if (flags & CANARY_RECORD_FORCED) {
    /* Rare (testers), so plain shared adds; never in the histogram that
     * progression gates judge. */
    ck_pr_add_64(&st->forced.sum_us, latency_us);
    ck_pr_add_64(&st->forced.status[cls], 1);
    stripe = -1;
  } else {
    int b = canary__bucket_of(latency_us);
    uint32_t block = 1u << (b / 64);
    stripe = canary__stripe(seg);
    /* Mark the bucket's block in use before counting in it (readers copy
     * only marked blocks); the load keeps this a read of the line the
     * handle check just loaded, except the first time. */
    if (!(ck_pr_load_32(&st->hdr.nonempty) & block))
      ck_pr_or_32(&st->hdr.nonempty, block);
    /* Independent counters: no ordering among them is promised, a
     * snapshot may see one add and not yet another (like any Prometheus
     * scrape).  The bucket is shared by all processes: one atomic add. */
    ck_pr_add_64(&st->stats.buckets[b], 1);
    canary__count(&st->stats.stripes[stripe].sum_us, latency_us, stripe);
    canary__count(&st->stats.stripes[stripe].status[cls], 1, stripe);
  }
  if (trace_source >= 0) {
    if (stripe < 0)
      stripe = canary__stripe(seg);
    canary__count(&canary__route_stripes(seg, (uint32_t)route)[stripe]
                       .trace[trace_source],
                  1, stripe);
  }
  return 0;
}

int canary_route_record(canary_seg_t *seg, int route, int upstream,
                        uint64_t latency_us, int status, int trace_source) {
  struct route_hdr *r;
  struct table_data d;
  int rc;

  if (!canary__route_ok(seg, route) || upstream < 0 ||
      (uint32_t)upstream >= seg->max_upstreams || trace_source < -1 ||
      trace_source >= CANARY_TRACE_SOURCES)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  r = canary__route(seg, (uint32_t)route);
  if (ck_pr_load_32(&r->state) == ROUTE_FREE)
    return CANARY_ENOENT;
  rc = canary__read_table(seg, r, &d, NULL, 0);
  if (rc != 0)
    return rc;
  if ((uint32_t)upstream >= d.n)
    return CANARY_EINVAL;
  return canary_stat_record(seg, route, d.stat[upstream], latency_us, status,
                            trace_source, 0);
}

int canary_route_event(canary_seg_t *seg, int route, int event) {
  if (event < 0 || event >= CANARY_EVENTS || !canary__route_ok(seg, route))
    return CANARY_EINVAL;
  /* Like records: a retired route still counts its last requests. */
  if (ck_pr_load_32(&canary__route(seg, (uint32_t)route)->state) ==
      ROUTE_FREE)
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
