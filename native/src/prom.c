/*
 * prom.c - Prometheus text exposition of every live route, in pieces.
 *
 * The renderer only reads: route tables through the same lock-free read
 * as a pick, counters with atomic loads.  It takes no lock, so a scrape
 * can never delay a request through the segment.  It could still delay
 * requests through the worker it runs in: with a thousand routes the
 * exposition is megabytes, and written in one go it held that worker's
 * event loop for tens of milliseconds, long enough to raise the p99 of
 * the traffic the worker proxies fifteenfold.  So a scrape is a cursor
 * (struct canary_prom) that the status endpoint advances a bounded step
 * at a time, yielding to the event loop in between.
 *
 * The exposition format wants each metric family's samples together, but
 * the data is naturally per route and upstream.  So a scrape first
 * gathers a compact row per (route, upstream) — counts per status class,
 * the cumulative `le` counts, sum and quantiles, labels escaped once —
 * a few dozen routes per step, and then writes the families one after the
 * other from those rows, as many whole units (one row of one family) per
 * step as fit the caller's buffer.  Every series is read once, so the
 * families of one scrape agree with each other even though the routes
 * were read a few steps apart (each series on its own is monotone, which
 * is all Prometheus asks).
 *
 * Bucket boundaries (`le`) are fixed and the same on every node, so
 * `sum by (le)` over a cluster is a correct cluster histogram.  A
 * boundary counts every histogram bucket that starts at or below it, so
 * it is exact to one bucket width (<= 1/64 of the boundary).  Numbers are
 * written with integer arithmetic, exactly, without trailing zeros:
 * seconds from microsecond sums with up to 6 decimals, quantiles (bucket
 * middles, whole or half microseconds) with up to 7, weights with up to
 * 4.
 *
 * Where a scrape's time goes (1000 routes x 2 upstreams, 7 MB): mostly
 * reading the buckets of the blocks in use, kilobytes per row that are
 * rarely in cache, so the lines of the next row and route are asked for
 * while this one is read; then writing, through a cursor that never
 * checks the room left within a unit.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each `le` as printed, with the rest of its label set and the space
 * before the value, so that a bucket line is three copies. */
#define LE(text, us) {",le=\"" text "\"} ", sizeof(",le=\"" text "\"} ") - 1, us}
static const struct {
  const char *text;
  size_t len;
  uint64_t us;
} le_bounds[] = {
    LE("0.0005", 500),     LE("0.001", 1000),       LE("0.0025", 2500),
    LE("0.005", 5000),     LE("0.01", 10000),       LE("0.025", 25000),
    LE("0.05", 50000),     LE("0.1", 100000),       LE("0.25", 250000),
    LE("0.5", 500000),     LE("1", 1000000),        LE("2.5", 2500000),
    LE("5", 5000000),      LE("10", 10000000),      LE("30", 30000000),
    LE("60", 60000000),    LE("+Inf", UINT64_MAX),
};
#undef LE
#define N_LE (sizeof le_bounds / sizeof le_bounds[0] - 1) /* +Inf apart */

/* Label values of the per-route families are spelled out, with the rest
 * of their line's label set, in the unit that writes them. */
#define N_EVENTS 4

/* Room for {route="<label>",upstream="<name>" with every byte escaped. */
#define LABELS_MAX (2 * CANARY_LABEL_MAX + 2 * CANARY_NAME_MAX + 32)
/* The most one unit (one row of one family) can write: a histogram row
 * is 19 lines of at most a metric name, LABELS_MAX, `le` and a value. */
#define UNIT_MAX (19 * (LABELS_MAX + 96))
/* Rows gathered per step: a few hundred microseconds of reading. */
#define GATHER_ROWS 64
#define GATHER_SLOTS 4096 /* route slots looked at per step, at most */

static_assert(UNIT_MAX < CANARY_PROM_CHUNK_MIN,
              "a chunk always holds at least one unit");

struct prom_route {
  size_t label_off, label_len; /* escaped route label, in text */
  uint32_t state, step;        /* progression */
  uint32_t strategy;           /* canary_prog_strategy */
  uint32_t dry;                /* dry run configured, or dry windows judged */
  uint32_t judged;             /* the last conclusive window is known */
  uint32_t judged_dry;         /* ... and was judged in a dry run */
  uint32_t gate_on;            /* bit g: gate g passed or failed in it */
  uint64_t evaluations[CANARY_GATE_RESULTS];
  uint64_t dry_evaluations[CANARY_GATE_RESULTS];
  double gate_value[CANARY_GATES]; /* seconds, fractions or ratios */
  double gate_limit[CANARY_GATES];
  uint64_t trace[CANARY_TRACE_SOURCES];
  uint64_t events[N_EVENTS];
};

struct prom_row {
  uint32_t route; /* index into routes */
  uint32_t effective;
  size_t labels_off, labels_len; /* {route="..",upstream=".." in text */
  uint64_t status[6];
  uint64_t forced[6];
  uint64_t le[N_LE];
  uint64_t count;
  uint64_t sum_us;
  int q[3]; /* bucket of p50, p95, p99; -1 when empty */
};

enum { POOL_ROUTES, POOL_STATS, POOL_PROGS, POOLS };

struct canary_prom {
  const canary_seg_t *seg;
  int gathered;       /* every route read */
  uint32_t next_slot; /* gathering: next route slot to read */
  uint32_t family;    /* writing: family index; N_FAMILIES: done */
  int headed;         /* HELP/TYPE of `family` written */
  size_t item;        /* next unit of `family` */
  struct prom_route *routes;
  size_t nroutes, routes_cap;
  struct prom_row *rows;
  size_t nrows, rows_cap;
  char *text;
  size_t text_len, text_cap;
  uint64_t slots[POOLS][3]; /* live, retired, free */
  uint64_t exhausted[POOLS];
  int le_last[N_LE];
  uint8_t le_of[CANARY_HIST_BUCKETS];
  /* The statistics slot of each row gathered in this step (NULL: none),
   * for the row pass (gather_rows). */
  const struct stat_slot *step_st[GATHER_ROWS + CANARY_MAX_UPSTREAMS];
  size_t step_rows0;                      /* the step's first row */
  struct table_data table;                /* scratch of gather_route */
  struct canary_decision decision;        /* scratch of gather_gates */
  char key[CANARY_KEY_MAX];               /* scratch of gather_route */
  uint64_t buckets[CANARY_HIST_BUCKETS]; /* scratch of read_row */
};

struct out {
  char *buf;
  size_t cap;
  size_t len; /* grows past cap: then it is the length needed */
};

static inline void put(struct out *o, const char *s, size_t n) {
  if (o->len + n <= o->cap)
    memcpy(o->buf + o->len, s, n);
  o->len += n;
}

/* A string literal: its length is known, so the copy is inlined. */
#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

/* Length of the valid UTF-8 character at p (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF), or 0.  Prometheus rejects a
 * scrape with a label that is not UTF-8, so one bad route name would
 * otherwise blind monitoring for every route. */
static size_t utf8_len(const unsigned char *p) {
  unsigned char lo = 0x80, hi = 0xbf;
  size_t n;
  if (p[0] < 0x80)
    return 1;
  if (p[0] >= 0xc2 && p[0] <= 0xdf)
    n = 2;
  else if (p[0] >= 0xe0 && p[0] <= 0xef)
    n = 3;
  else if (p[0] >= 0xf0 && p[0] <= 0xf4)
    n = 4;
  else
    return 0;
  if (p[0] == 0xe0)
    lo = 0xa0;
  else if (p[0] == 0xed)
    hi = 0x9f;
  else if (p[0] == 0xf0)
    lo = 0x90;
  else if (p[0] == 0xf4)
    hi = 0x8f;
  if (p[1] < lo || p[1] > hi)
    return 0; /* also stops at the NUL */
  for (size_t i = 2; i < n; i++)
    if (p[i] < 0x80 || p[i] > 0xbf)
      return 0;
  return n;
}

/* Label values: escape backslash, quote and newline as the format says;
 * other control bytes and bytes that are not UTF-8 become '?', so nothing
 * can end a line early or spoil the scrape. */
static void put_label(struct out *o, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  const unsigned char *q = p;
  /* Fast path: plain printable ASCII needs no escaping at all. */
  while (*q >= 0x20 && *q < 0x7f && *q != '"' && *q != '\\')
    q++;
  if (*q == '\0') {
    put(o, s, (size_t)(q - p));
    return;
  }
  while (*p) {
    size_t n = utf8_len(p);
    if (*p == '\\')
      put(o, "\\\\", 2);
    else if (*p == '"')
      put(o, "\\\"", 2);
    else if (*p == '\n')
      put(o, "\\n", 2);
    else if (n == 0 || *p < 0x20 || *p == 0x7f)
      put(o, "?", 1);
    else
      put(o, (const char *)p, n);
    p += n ? n : 1;
  }
}

/* ---- gathering --------------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t need, size_t size) {
  size_t n = *cap ? *cap : 16;
  void *q;
  if (need <= *cap)
    return 0;
  while (n < need)
    n *= 2;
  q = realloc(*p, n * size);
  if (q == NULL)
    return CANARY_ENOMEM;
  *p = q;
  *cap = n;
  return 0;
}

/* Appends an escaped label (or label pair) to the text arena. */
static int add_text(struct canary_prom *p, const char *route_label,
                    const char *upstream, size_t *off, size_t *len) {
  char tmp[LABELS_MAX];
  struct out o = {tmp, sizeof tmp, 0};
  int rc;
  puts_(&o, "{route=\"");
  put_label(&o, route_label);
  if (upstream != NULL) {
    puts_(&o, "\",upstream=\"");
    put_label(&o, upstream);
  }
  puts_(&o, "\"");
  if (o.len > o.cap)
    return CANARY_ECORRUPT; /* cannot happen: bounded by LABELS_MAX */
  rc = grow((void **)&p->text, &p->text_cap, p->text_len + o.len, 1);
  if (rc != 0)
    return rc;
  memcpy(p->text + p->text_len, tmp, o.len);
  *off = p->text_len;
  *len = o.len;
  p->text_len += o.len;
  return 0;
}

/* The buckets of p50, p95 and p99 by the nearest-rank rule of
 * canary_hist_summarize(), in one walk: the ranks only grow, so each
 * quantile's walk goes on from the last one's bucket, or starts at the
 * `le` range its rank falls in when that lies further on (row->le tells
 * which), and skips blocks never written (their bucket copies are stale
 * scratch, their counts zero).  `seen` counts the buckets before b. */
static void quantiles(struct prom_row *row, const uint64_t *buckets,
                      uint32_t blocks, const int *le_last) {
  static const double qs[3] = {0.50, 0.95, 0.99};
  const int last = CANARY_HIST_BUCKETS - 1;
  uint64_t seen = 0;
  int b = 0;
  for (int i = 0; i < 3; i++) {
    uint64_t rank;
    size_t k = 0;
    row->q[i] = -1;
    if (row->count == 0)
      continue;
    rank = canary__rank(qs[i], row->count);
    while (k < N_LE && row->le[k] < rank)
      k++;
    /* The rank lies in range k: after le_last[k-1], up to le_last[k]. */
    if (k > 0 && le_last[k - 1] + 1 > b) {
      b = le_last[k - 1] + 1;
      seen = row->le[k - 1];
    }
    /* Here seen < rank: le[k-1] < rank, and the last quantile stopped at
     * the first bucket that reached a rank no larger. */
    while (b < last) {
      uint64_t v;
      if (!(blocks & (1u << (b / 64)))) {
        b = (b / 64 + 1) * 64 < last ? (b / 64 + 1) * 64 : last;
        continue; /* zero throughout: cannot reach the rank */
      }
      if ((b & 7) == 0 && b + 8 <= last) {
        /* Eight buckets at a time while they stay below the rank (eight
         * never straddle a block, nor take in the last bucket). */
        const uint64_t *e = &buckets[b];
        uint64_t s8 = e[0] + e[1] + e[2] + e[3] + e[4] + e[5] + e[6] + e[7];
        if (seen + s8 < rank) {
          seen += s8;
          b += 8;
          continue;
        }
      }
      v = buckets[b];
      if (seen + v >= rank)
        break;
      seen += v;
      b++;
    }
    row->q[i] = b;
  }
}

/* Reads statistics slot st into row in one pass: status classes and sum
 * from the stripes in use, and the latency buckets of the blocks in use,
 * summed per `le` range (le_of[b] is the first boundary whose bucket,
 * le_last, is at or above bucket b: a boundary counts every bucket that
 * starts at or below it) while they are copied to `buckets` for the
 * quantile walk.  Blocks never written are zero and never touched. */
static void read_row(const canary_seg_t *seg, const struct stat_slot *st,
                     struct prom_row *row, uint64_t *buckets,
                     const uint8_t *le_of, const int *le_last) {
  const struct up_stats *us = &st->stats;
  uint64_t part[N_LE + 1], acc = 0;
  /* Only bits of real blocks: the word may hold anything in a damaged
   * segment. */
  uint32_t blocks = ck_pr_load_32((uint32_t *)(uintptr_t)&st->hdr.nonempty) &
                    CANARY_BLOCKS_MASK;

  for (uint64_t m = canary__stripes_used(seg); m != 0; m &= m - 1) {
    const struct up_stripe *sp = &us->stripes[__builtin_ctzll(m)];
    row->sum_us += ck_pr_load_64((uint64_t *)(uintptr_t)&sp->sum_us);
    for (int c = 0; c < 6; c++)
      row->status[c] += ck_pr_load_64((uint64_t *)(uintptr_t)&sp->status[c]);
  }
  memset(part, 0, sizeof part);
  for (uint32_t m = blocks; m != 0; m &= m - 1) {
    int b = 64 * __builtin_ctz(m);
    int b1 = b + 64 < CANARY_HIST_BUCKETS ? b + 64 : CANARY_HIST_BUCKETS;
    /* Runs of buckets under the same boundary: a tight sum each. */
    for (size_t k = le_of[b]; b < b1; k++) {
      int end = k < N_LE && le_last[k] + 1 < b1 ? le_last[k] + 1 : b1;
      uint64_t sum = 0;
      for (; b < end; b++) {
        uint64_t v = ck_pr_load_64((uint64_t *)(uintptr_t)&us->buckets[b]);
        buckets[b] = v;
        sum += v;
      }
      part[k] += sum;
    }
  }
  for (size_t k = 0; k <= N_LE; k++) {
    acc += part[k];
    if (k < N_LE)
      row->le[k] = acc;
  }
  row->count = acc;
  quantiles(row, buckets, blocks, le_last);
}

/* The gates of the route's last conclusive window, from its decision
 * log (an inconclusive window measures nothing).  Latencies in seconds. */
static void gather_gates(const canary_seg_t *seg, uint32_t i,
                         struct prom_route *pr, struct canary_decision *d) {
  if (canary__prog_last_judged(seg, (int)i, d) != 0 || d->seq == 0)
    return; /* nothing judged, or no longer in the log */
  pr->judged = 1;
  pr->judged_dry = d->dry_run != 0;
  for (int g = 0; g < CANARY_GATES; g++) {
    const struct canary_gate_check *k = &d->judge.gates[g];
    double scale = (g == CANARY_GATE_P95 || g == CANARY_GATE_P99) ? 1e6 : 1;
    if (k->check != CANARY_CHECK_PASS && k->check != CANARY_CHECK_FAIL)
      continue;
    pr->gate_on |= 1u << g;
    pr->gate_value[g] = k->value / scale;
    pr->gate_limit[g] = k->limit / scale;
  }
}

/* Reads route slot i into a route and its rows.  The same reads as
 * canary_route_read() and canary_prog_status(), without the copies a
 * scrape of a thousand routes does not need (the full view, the
 * progression's parameters and reason). */
static int gather_route(struct canary_prom *p, uint32_t i) {
  const canary_seg_t *seg = p->seg;
  struct route_hdr *r = canary__route(seg, i);
  struct table_data *d = &p->table;
  const struct route_stripe *rs;
  const struct prog_area *pa;
  struct prom_route *pr;
  char label[CANARY_LABEL_MAX];
  const char *shown;
  int rc;

  if (ck_pr_load_32(&r->state) != ROUTE_READY)
    return 0; /* free or retired: not exported */
  /* The state before the key and label it vouches for (see claim.c). */
  ck_pr_fence_load();
  if (canary__read_table(seg, r, d, NULL, 1) != 0)
    return 0; /* unpublished or unreadable: nothing to say */
  if ((rc = grow((void **)&p->routes, &p->routes_cap, p->nroutes + 1,
                 sizeof *p->routes)) != 0 ||
      (rc = grow((void **)&p->rows, &p->rows_cap, p->nrows + d->n,
                 sizeof *p->rows)) != 0)
    return rc;
  pr = &p->routes[p->nroutes];
  memset(pr, 0, sizeof *pr);
  canary__load_words(label, r->label, CANARY_LABEL_MAX / 8);
  label[CANARY_LABEL_MAX - 1] = '\0';
  memcpy(p->key, r->key, CANARY_KEY_MAX); /* immutable while READY */
  p->key[CANARY_KEY_MAX - 1] = '\0';
  shown = label[0] ? label : p->key;
  rc = add_text(p, shown, NULL, &pr->label_off, &pr->label_len);
  if (rc != 0)
    return rc;
  pa = canary__prog(seg, i); /* NULL: no progression */
  pr->state = pa == NULL ? CANARY_PROG_NONE
                         : ck_pr_load_32((uint32_t *)(uintptr_t)&pa->state);
  if (pr->state > CANARY_PROG_ROLLED_BACK)
    pr->state = CANARY_PROG_NONE; /* damaged: as canary_prog_status */
  pr->step =
      pa == NULL ? 0 : ck_pr_load_32((uint32_t *)(uintptr_t)&pa->step);
  for (int g = 0; g < CANARY_GATE_RESULTS; g++) {
    pr->evaluations[g] = ck_pr_load_64(&r->evaluations[g]);
    pr->dry_evaluations[g] = ck_pr_load_64(&r->dry_evaluations[g]);
    pr->dry |= pr->dry_evaluations[g] != 0;
  }
  if (pa != NULL && pr->state != CANARY_PROG_NONE) {
    pr->dry |= ck_pr_load_32((uint32_t *)(uintptr_t)&pa->params.dry_run) != 0;
    pr->strategy =
        ck_pr_load_32((uint32_t *)(uintptr_t)&pa->params.strategy) ==
                CANARY_STRATEGY_BLUE_GREEN
            ? CANARY_STRATEGY_BLUE_GREEN
            : CANARY_STRATEGY_CANARY;
    gather_gates(seg, i, pr, &p->decision);
  }
  rs = canary__route_stripes(seg, i);
  for (uint64_t m = canary__stripes_used(seg); m != 0; m &= m - 1) {
    const struct route_stripe *k = &rs[__builtin_ctzll(m)];
    for (int t = 0; t < CANARY_TRACE_SOURCES; t++)
      pr->trace[t] += ck_pr_load_64((uint64_t *)(uintptr_t)&k->trace[t]);
    for (int e = 0; e < N_EVENTS; e++)
      pr->events[e] += ck_pr_load_64((uint64_t *)(uintptr_t)&k->events[e]);
  }
  /* The rows' statistics are read by gather_rows, after the step's
   * routes. */
  for (uint32_t u = 0; u < d->n; u++) {
    struct prom_row *row = &p->rows[p->nrows];
    const struct stat_slot *st = canary__stat_of(seg, i, d->stat[u]);
    memset(row, 0, sizeof *row);
    row->route = (uint32_t)p->nroutes;
    row->effective = d->effective[u];
    rc = add_text(p, shown, d->names[u], &row->labels_off, &row->labels_len);
    if (rc != 0)
      return rc;
    if (st != NULL)
      __builtin_prefetch(&st->hdr.nonempty);
    p->step_st[p->nrows - p->step_rows0] = st;
    p->nrows++;
  }
  p->nroutes++;
  return 0;
}

/* Asks for every line the row of st will read: the stripes in use and
 * the buckets of the blocks in use (hint only: read_row reads `nonempty`
 * again). */
static void prefetch_row(const struct stat_slot *st, uint64_t stripes) {
  uint32_t blocks;
  if (st == NULL)
    return;
  blocks = ck_pr_load_32((uint32_t *)(uintptr_t)&st->hdr.nonempty) &
           CANARY_BLOCKS_MASK;
  __builtin_prefetch(&st->forced);
  for (uint64_t m = stripes; m != 0; m &= m - 1)
    __builtin_prefetch(&st->stats.stripes[__builtin_ctzll(m)]);
  for (uint32_t m = blocks; m != 0; m &= m - 1)
    for (int b = 64 * __builtin_ctz(m), e = b + 64; b < e; b += 8)
      __builtin_prefetch(&st->stats.buckets[b]);
}

/* Reads the statistics of the rows gathered in this step.  Reading a row
 * is a few kilobytes of buckets that are rarely in cache: the lines of
 * the next row are asked for while this one is read, so their misses
 * overlap with work instead of following each other. */
static void gather_rows(struct canary_prom *p) {
  uint64_t stripes = canary__stripes_used(p->seg);
  size_t n = p->nrows - p->step_rows0;
  if (n > 0)
    prefetch_row(p->step_st[0], stripes);
  for (size_t j = 0; j < n; j++) {
    struct prom_row *row = &p->rows[p->step_rows0 + j];
    const struct stat_slot *st = p->step_st[j];
    if (j + 1 < n)
      prefetch_row(p->step_st[j + 1], stripes);
    if (st == NULL) {
      memset(row->q, 0xff, sizeof row->q); /* no quantiles: -1 */
      continue;
    }
    read_row(p->seg, st, row, p->buckets, p->le_of, p->le_last);
    for (int c = 0; c < 6; c++)
      row->forced[c] =
          ck_pr_load_64((uint64_t *)(uintptr_t)&st->forced.status[c]);
  }
}

/* Pool gauges, once every route is read. */
static void gather_segment(struct canary_prom *p) {
  struct canary_seg_info info;
  if (canary_seg_info(p->seg, &info) != 0)
    return;
  p->slots[POOL_ROUTES][0] = info.routes_used - info.routes_retired;
  p->slots[POOL_ROUTES][1] = info.routes_retired;
  p->slots[POOL_ROUTES][2] = info.max_routes - info.routes_used;
  p->slots[POOL_STATS][0] = info.stat_slots_used - info.stat_slots_retired;
  p->slots[POOL_STATS][1] = info.stat_slots_retired;
  p->slots[POOL_STATS][2] = info.max_stat_slots - info.stat_slots_used;
  p->exhausted[POOL_ROUTES] = info.routes_exhausted;
  p->exhausted[POOL_STATS] = info.stat_slots_exhausted;
  p->slots[POOL_PROGS][0] = info.prog_slots_used - info.prog_slots_retired;
  p->slots[POOL_PROGS][1] = info.prog_slots_retired;
  p->slots[POOL_PROGS][2] = info.max_prog_slots - info.prog_slots_used;
  p->exhausted[POOL_PROGS] = info.prog_slots_exhausted;
}

/* Asks for the lines gather_route will read of route slot i, whose
 * header line was asked for one route earlier: its key and label, the
 * table buffer its generation selects, and its counter stripes in use
 * (hints only; gather_route reads everything again, properly ordered). */
static void prefetch_route(const canary_seg_t *seg, uint32_t i) {
  const struct route_hdr *r = canary__route(seg, i);
  const struct route_stripe *rs;
  const struct table_buf *b;
  const char *names;
  if (ck_pr_load_32((uint32_t *)(uintptr_t)&r->state) != ROUTE_READY)
    return;
  b = &r->tables[ck_pr_load_64((uint64_t *)(uintptr_t)&r->generation) & 1];
  for (const char *c = r->key; c < (const char *)&r->tables[0]; c += 64)
    __builtin_prefetch(c);
  for (const char *c = (const char *)b; c < b->names[0]; c += 64)
    __builtin_prefetch(c);
  names = b->names[0];
  __builtin_prefetch(names);
  __builtin_prefetch(names + 64);
  rs = canary__route_stripes(seg, i);
  for (uint64_t m = canary__stripes_used(seg); m != 0; m &= m - 1)
    __builtin_prefetch(&rs[__builtin_ctzll(m)]);
}

/* One gathering step.  Returns 1 while routes are left, 0 when done. */
static int gather_step(struct canary_prom *p, int *err) {
  uint32_t looked = 0;
  p->step_rows0 = p->nrows;
  while (p->next_slot < p->seg->max_routes) {
    uint32_t i = p->next_slot;
    if (p->nrows - p->step_rows0 >= GATHER_ROWS || looked >= GATHER_SLOTS) {
      gather_rows(p);
      return 1;
    }
    /* Route slots are kilobytes apart: the header of the route after
     * next and the lines of the next one are asked for now, so that
     * their misses overlap with reading this one. */
    if (i + 2 < p->seg->max_routes)
      __builtin_prefetch(canary__route(p->seg, i + 2));
    if (i + 1 < p->seg->max_routes)
      prefetch_route(p->seg, i + 1);
    *err = gather_route(p, p->next_slot);
    if (*err != 0)
      return 0;
    p->next_slot++;
    looked++;
  }
  gather_rows(p);
  gather_segment(p);
  return 0;
}

/* ---- writing ----------------------------------------------------------- */

/* A unit writes through a cursor with room for UNIT_MAX bytes (see
 * write_units), so no write checks the room left: a scrape is tens of
 * thousands of lines, and the checks and calls per piece of a line were
 * a good part of its time. */

static inline char *w_put(char *w, const char *s, size_t n) {
  memcpy(w, s, n);
  return w + n;
}

/* A string literal: its length is known, so the copy is inlined. */
#define W_LIT(w, lit) w_put((w), (lit), sizeof(lit) - 1)

static char *w_str(char *w, const char *s) {
  return w_put(w, s, strlen(s));
}

/* Decimal without printf: the bucket lines are most of a scrape. */
static char *w_u64(char *w, uint64_t v) {
  char *e;
  size_t d = 1;
  for (uint64_t t = v; t >= 10; t /= 10)
    d++;
  e = w + d;
  do {
    *--e = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  return w + d;
}

static inline char *w_u64_nl(char *w, uint64_t v) {
  w = w_u64(w, v);
  *w++ = '\n';
  return w;
}

/* v / 10^digits exactly, without the trailing zeros of the fraction (and
 * without the point when it is whole): 0.9 for 9000 with 4 digits. */
static char *w_fixed(char *w, uint64_t v, unsigned digits) {
  uint64_t scale = 1;
  for (unsigned i = 0; i < digits; i++)
    scale *= 10;
  w = w_u64(w, v / scale);
  v %= scale;
  if (v == 0)
    return w;
  while (v % 10 == 0) {
    v /= 10;
    digits--;
  }
  *w++ = '.';
  for (unsigned i = digits; i > 0; i--) {
    w[i - 1] = (char)('0' + v % 10);
    v /= 10;
  }
  return w + digits;
}

/* A label set ending a series name, and what closes it: `,key="val"} `
 * and the like, with their lengths. */
struct lit {
  const char *s;
  size_t n;
};
#define LIT(text)                                                             \
  { text, sizeof(text) - 1 }

static inline char *w_lit(char *w, struct lit l) {
  return w_put(w, l.s, l.n);
}

static inline char *w_row(char *w, const struct canary_prom *p,
                          const struct prom_row *r) {
  return w_put(w, p->text + r->labels_off, r->labels_len);
}

static inline char *w_route(char *w, const struct canary_prom *p,
                            const struct prom_route *r) {
  return w_put(w, p->text + r->label_off, r->label_len);
}

/* name{route="..",<closing> n: the name a literal. */
#define W_ROUTE_LINE(w, p, r, name, closing, n)                               \
  w_u64_nl(w_lit(w_route(W_LIT((w), name), (p), (r)), (closing)), (n))

/* Seconds from the middle of bucket b: (low + high) / 2 microseconds,
 * a whole or half microsecond, so 7 decimals are exact. */
static char *w_bucket_seconds(char *w, int b) {
  if (b < 0) {
    *w++ = '0';
    return w;
  }
  return w_fixed(
      w, (canary_hist_bucket_low(b) + canary_hist_bucket_high(b)) * 5, 7);
}

/* ,status="2xx"}  and the like (classes 1xx..5xx). */
static const struct lit status_labels[6] = {LIT(""),
                                            LIT(",status=\"1xx\"} "),
                                            LIT(",status=\"2xx\"} "),
                                            LIT(",status=\"3xx\"} "),
                                            LIT(",status=\"4xx\"} "),
                                            LIT(",status=\"5xx\"} ")};

static char *unit_requests(char *w, const struct canary_prom *p, size_t i) {
  const struct prom_row *r = &p->rows[i];
  for (int c = 1; c < 6; c++) {
    if (c == 1 && r->status[1] == 0)
      continue; /* 1xx only when seen */
    w = W_LIT(w, "canary_requests_total");
    w = w_row(w, p, r);
    w = w_lit(w, status_labels[c]);
    w = w_u64_nl(w, r->status[c]);
  }
  return w;
}

static char *unit_forced(char *w, const struct canary_prom *p, size_t i) {
  const struct prom_row *r = &p->rows[i];
  for (int c = 1; c < 6; c++) {
    if (r->forced[c] == 0)
      continue; /* forced requests are rare: only classes seen */
    w = W_LIT(w, "canary_forced_requests_total");
    w = w_row(w, p, r);
    w = w_lit(w, status_labels[c]);
    w = w_u64_nl(w, r->forced[c]);
  }
  return w;
}

/* The _sum (seconds) and _count lines that close a histogram or a
 * summary. */
static char *w_sum_count(char *w, const struct canary_prom *p,
                         const struct prom_row *r, struct lit sum,
                         struct lit count) {
  w = w_lit(w, sum);
  w = w_row(w, p, r);
  w = W_LIT(w, "} ");
  w = w_fixed(w, r->sum_us, 6);
  *w++ = '\n';
  w = w_lit(w, count);
  w = w_row(w, p, r);
  w = W_LIT(w, "} ");
  return w_u64_nl(w, r->count);
}

/* The bucket lines share their name and labels: written once, then
 * copied from the first line in one go. */
static char *unit_histogram(char *w, const struct canary_prom *p, size_t i) {
  const struct prom_row *r = &p->rows[i];
  const char *first = w;
  size_t pre;
  w = W_LIT(w, "canary_upstream_latency_seconds_bucket");
  w = w_row(w, p, r);
  pre = (size_t)(w - first);
  for (size_t k = 0; k <= N_LE; k++) {
    if (k > 0)
      w = w_put(w, first, pre);
    w = w_put(w, le_bounds[k].text, le_bounds[k].len);
    w = w_u64_nl(w, k < N_LE ? r->le[k] : r->count);
  }
  static const struct lit sum = LIT("canary_upstream_latency_seconds_sum");
  static const struct lit count = LIT("canary_upstream_latency_seconds_count");
  return w_sum_count(w, p, r, sum, count);
}

/* Quantiles computed here are a summary in Prometheus' terms (the only
 * type that may carry a `quantile` label), with its _sum and _count. */
static char *unit_quantiles(char *w, const struct canary_prom *p, size_t i) {
  static const struct lit qt[3] = {LIT(",quantile=\"0.5\"} "),
                                   LIT(",quantile=\"0.95\"} "),
                                   LIT(",quantile=\"0.99\"} ")};
  const struct prom_row *r = &p->rows[i];
  for (int k = 0; k < 3; k++) {
    w = W_LIT(w, "canary_upstream_latency_quantile_seconds");
    w = w_row(w, p, r);
    w = w_lit(w, qt[k]);
    w = w_bucket_seconds(w, r->q[k]);
    *w++ = '\n';
  }
  static const struct lit sum =
      LIT("canary_upstream_latency_quantile_seconds_sum");
  static const struct lit count =
      LIT("canary_upstream_latency_quantile_seconds_count");
  return w_sum_count(w, p, r, sum, count);
}

static char *unit_weight(char *w, const struct canary_prom *p, size_t i) {
  const struct prom_row *r = &p->rows[i];
  w = W_LIT(w, "canary_upstream_weight");
  w = w_row(w, p, r);
  w = W_LIT(w, "} ");
  w = w_fixed(w, r->effective, 4); /* 0..10000 is 0..1 */
  *w++ = '\n';
  return w;
}

static char *unit_step(char *w, const struct canary_prom *p, size_t i) {
  const struct prom_route *r = &p->routes[i];
  static const struct lit closing = LIT("} ");
  return W_ROUTE_LINE(w, p, r, "canary_progression_step", closing,
                      r->state == CANARY_PROG_NONE ? 0u : r->step + 1);
}

/* A blue/green route reports its phases (canary_prog_phase()) instead of
 * the canary's states: its running state is "preview" or
 * "post_promotion". */
static char *unit_state(char *w, const struct canary_prom *p, size_t i) {
  static const char *const bg_phases[] = {"none",           "preview",
                                          "post_promotion", "paused",
                                          "promoted",       "rolled_back"};
  static const struct lit bg_closing[] = {
      LIT(",state=\"none\"} "),           LIT(",state=\"preview\"} "),
      LIT(",state=\"post_promotion\"} "), LIT(",state=\"paused\"} "),
      LIT(",state=\"promoted\"} "),       LIT(",state=\"rolled_back\"} ")};
  static const struct lit closing[] = {
      LIT(",state=\"none\"} "), LIT(",state=\"running\"} "),
      LIT(",state=\"paused\"} "), LIT(",state=\"promoted\"} "),
      LIT(",state=\"rolled_back\"} ")};
  const struct prom_route *r = &p->routes[i];
  if (r->strategy == CANARY_STRATEGY_BLUE_GREEN) {
    const char *now = canary_prog_phase(r->strategy, r->state, r->step);
    for (size_t k = 0; k < sizeof bg_phases / sizeof bg_phases[0]; k++)
      w = W_ROUTE_LINE(w, p, r, "canary_progression_state", bg_closing[k],
                       strcmp(now, bg_phases[k]) == 0);
    return w;
  }
  for (uint32_t st = CANARY_PROG_NONE; st <= CANARY_PROG_ROLLED_BACK; st++)
    w = W_ROUTE_LINE(w, p, r, "canary_progression_state", closing[st],
                     r->state == st);
  return w;
}

static char *unit_gates(char *w, const struct canary_prom *p, size_t i) {
  static const struct lit closing[CANARY_GATE_RESULTS] = {
      LIT(",result=\"pass\"} "), LIT(",result=\"fail\"} "),
      LIT(",result=\"inconclusive\"} ")};
  static const struct lit dry[CANARY_GATE_RESULTS] = {
      LIT(",result=\"pass\",dry_run=\"true\"} "),
      LIT(",result=\"fail\",dry_run=\"true\"} "),
      LIT(",result=\"inconclusive\",dry_run=\"true\"} ")};
  const struct prom_route *r = &p->routes[i];
  for (int g = 0; g < CANARY_GATE_RESULTS; g++)
    w = W_ROUTE_LINE(w, p, r, "canary_gate_evaluations_total", closing[g],
                     r->evaluations[g]);
  for (int g = 0; r->dry && g < CANARY_GATE_RESULTS; g++)
    w = W_ROUTE_LINE(w, p, r, "canary_gate_evaluations_total", dry[g],
                     r->dry_evaluations[g]);
  return w;
}

/* One family of the last conclusive window's gates: value or limit. */
static char *gate_lines(char *w, const struct canary_prom *p, size_t i,
                        const char *name, int limit) {
  const struct prom_route *r = &p->routes[i];
  char num[40];
  for (int g = 0; r->judged && g < CANARY_GATES; g++) {
    double v = limit ? r->gate_limit[g] : r->gate_value[g];
    int n;
    if (!(r->gate_on & (1u << g)) || !isfinite(v))
      continue; /* not judged, or a damaged log entry: nothing to say */
    if (fpclassify(v) == FP_SUBNORMAL)
      v = 0; /* no gate measures below 1e-308; only damage writes that */
    n = snprintf(num, sizeof num, "%.9g\n", v);
    w = w_str(w, name);
    w = w_route(w, p, r);
    w = W_LIT(w, ",gate=\"");
    w = w_str(w, canary_gate_name(g));
    w = r->judged_dry ? W_LIT(w, "\",dry_run=\"true\"} ") : W_LIT(w, "\"} ");
    w = w_put(w, num, n > 0 && (size_t)n < sizeof num ? (size_t)n : 0);
  }
  return w;
}

static char *unit_gate_value(char *w, const struct canary_prom *p, size_t i) {
  return gate_lines(w, p, i, "canary_gate_value", 0);
}

static char *unit_gate_limit(char *w, const struct canary_prom *p, size_t i) {
  return gate_lines(w, p, i, "canary_gate_limit", 1);
}

static char *unit_trace(char *w, const struct canary_prom *p, size_t i) {
  static const struct lit closing[CANARY_TRACE_SOURCES] = {
      LIT(",source=\"client\"} "), LIT(",source=\"traceparent\"} "),
      LIT(",source=\"generated\"} "), LIT(",source=\"rejected\"} ")};
  const struct prom_route *r = &p->routes[i];
  for (int t = 0; t < CANARY_TRACE_SOURCES; t++)
    w = W_ROUTE_LINE(w, p, r, "canary_trace_ids_total", closing[t],
                     r->trace[t]);
  return w;
}

static char *unit_events(char *w, const struct canary_prom *p, size_t i) {
  static const struct lit closing[N_EVENTS] = {
      LIT(",event=\"override\"} "), LIT(",event=\"override_denied\"} "),
      LIT(",event=\"fallback\"} "), LIT(",event=\"engine_error\"} ")};
  const struct prom_route *r = &p->routes[i];
  for (int e = 0; e < N_EVENTS; e++)
    w = W_ROUTE_LINE(w, p, r, "canary_events_total", closing[e], r->events[e]);
  return w;
}

static const char *const pool_text[POOLS] = {"routes", "upstreams",
                                             "progressions"};

static char *unit_slots(char *w, const struct canary_prom *p, size_t i) {
  static const char *const state[3] = {"live", "retired", "free"};
  for (int s = 0; s < 3; s++) {
    w = W_LIT(w, "canary_slots{pool=\"");
    w = w_str(w, pool_text[i]);
    w = W_LIT(w, "\",state=\"");
    w = w_str(w, state[s]);
    w = W_LIT(w, "\"} ");
    w = w_u64_nl(w, p->slots[i][s]);
  }
  return w;
}

static char *unit_exhausted(char *w, const struct canary_prom *p, size_t i) {
  w = W_LIT(w, "canary_slots_exhausted_total{pool=\"");
  w = w_str(w, pool_text[i]);
  w = W_LIT(w, "\"} ");
  return w_u64_nl(w, p->exhausted[i]);
}

enum { PER_ROW, PER_ROUTE, PER_POOL };

static const struct family {
  const char *name, *type, *help;
  int per;
  char *(*unit)(char *w, const struct canary_prom *p, size_t i);
} families[] = {
    {"canary_requests_total", "counter",
     "Responses per route, upstream and status class (requests an override "
     "forced are in canary_forced_requests_total).",
     PER_ROW, unit_requests},
    {"canary_forced_requests_total", "counter",
     "Responses to requests an override forced onto the upstream; never "
     "judged by progression gates.",
     PER_ROW, unit_forced},
    {"canary_upstream_latency_seconds", "histogram",
     "Upstream latency: request handed to the upstream until its response "
     "header.",
     PER_ROW, unit_histogram},
    {"canary_upstream_latency_quantile_seconds", "summary",
     "Upstream latency quantiles since the upstream was configured, within "
     "1 %; per node, do not aggregate.",
     PER_ROW, unit_quantiles},
    {"canary_upstream_weight", "gauge",
     "Effective routing weight of the upstream, 0..1.", PER_ROW, unit_weight},
    {"canary_progression_step", "gauge",
     "Current progression step, 1-based; 0 without a progression.",
     PER_ROUTE, unit_step},
    {"canary_progression_state", "gauge",
     "1 for the progression's current state, 0 for the others.", PER_ROUTE,
     unit_state},
    {"canary_gate_evaluations_total", "counter",
     "Progression windows judged, by verdict; dry_run=\"true\": judged in a "
     "dry run, nothing applied.",
     PER_ROUTE, unit_gates},
    {"canary_gate_value", "gauge",
     "Measured value of each gate in the last conclusive window (seconds, "
     "fractions or ratios).",
     PER_ROUTE, unit_gate_value},
    {"canary_gate_limit", "gauge",
     "Configured limit of each gate judged in the last conclusive window.",
     PER_ROUTE, unit_gate_limit},
    {"canary_trace_ids_total", "counter",
     "Requests by where their trace ID came from.", PER_ROUTE, unit_trace},
    {"canary_events_total", "counter",
     "Overrides honoured or denied, fallbacks to the stable upstream, "
     "engine errors that failed open.",
     PER_ROUTE, unit_events},
    {"canary_slots", "gauge",
     "Segment slots by pool (routes, upstream statistics, progressions) "
     "and state; "
     "retired slots are reused after their grace period.",
     PER_POOL, unit_slots},
    {"canary_slots_exhausted_total", "counter",
     "Claims and publishes refused because a pool had no free slot (the "
     "route fails open to its stable upstream).",
     PER_POOL, unit_exhausted},
};
#define N_FAMILIES (sizeof families / sizeof families[0])

static size_t units_of(const struct canary_prom *p, const struct family *f) {
  return f->per == PER_ROW     ? p->nrows
         : f->per == PER_ROUTE ? p->nroutes
                               : (size_t)POOLS;
}

static char *head(char *w, const struct family *f) {
  w = W_LIT(w, "# HELP ");
  w = w_str(w, f->name);
  *w++ = ' ';
  w = w_str(w, f->help);
  w = W_LIT(w, "\n# TYPE ");
  w = w_str(w, f->name);
  *w++ = ' ';
  w = w_str(w, f->type);
  *w++ = '\n';
  return w;
}

/* Writes units into o; with `chunked`, only while a whole unit surely
 * fits.  A unit goes straight into o's buffer when UNIT_MAX bytes are
 * left in it, else (the one-go render near or past the end of its
 * buffer) through `spill`, which put() copies or only counts.  Returns
 * 1 while units are left, 0 when the exposition is complete. */
static int write_units(struct canary_prom *p, struct out *o, int chunked) {
  char spill[UNIT_MAX];
  while (p->family < N_FAMILIES) {
    const struct family *f = &families[p->family];
    int room = o->len + UNIT_MAX <= o->cap;
    char *w0, *w;
    if (chunked && !room)
      return 1;
    if (p->headed && p->item >= units_of(p, f)) {
      p->family++;
      p->headed = 0;
      p->item = 0;
      continue;
    }
    w0 = room ? o->buf + o->len : spill;
    if (!p->headed) {
      w = head(w0, f);
      p->headed = 1;
    } else {
      w = f->unit(w0, p, p->item++);
    }
    if (room)
      o->len += (size_t)(w - w0);
    else
      put(o, spill, (size_t)(w - w0));
  }
  return 0;
}

/* ---- the scrape cursor ------------------------------------------------- */

/* The last finished scrape of this process, kept for the next one: its
 * arrays (a megabyte for a thousand routes) are then already the right
 * size and mapped.  Allocated afresh, they cost every scrape hundreds of
 * page faults, a tenth of its render time.  One scrape at a time owns
 * it: it is taken and given back with an atomic swap, so concurrent
 * scrapes (threads) each get their own.  It is process-local memory,
 * never in the segment; it lives until the process exits. */
static struct canary_prom *spare;

static void prom_free(struct canary_prom *p) {
  if (p == NULL)
    return;
  free(p->routes);
  free(p->rows);
  free(p->text);
  free(p);
}

int canary_prom_begin(const canary_seg_t *seg, canary_prom_t **out) {
  struct canary_prom *p;
  if (seg == NULL || out == NULL)
    return CANARY_EINVAL;
  *out = NULL;
  p = ck_pr_fas_ptr(&spare, NULL);
  if (p != NULL) {
    /* Keep the arrays, start everything else afresh. */
    struct canary_prom keep = *p;
    memset(p, 0, sizeof *p);
    p->routes = keep.routes;
    p->routes_cap = keep.routes_cap;
    p->rows = keep.rows;
    p->rows_cap = keep.rows_cap;
    p->text = keep.text;
    p->text_cap = keep.text_cap;
  } else {
    p = calloc(1, sizeof *p);
    if (p == NULL)
      return CANARY_ENOMEM;
  }
  p->seg = seg;
  for (size_t k = 0; k < N_LE; k++)
    p->le_last[k] = canary__bucket_of(le_bounds[k].us);
  for (int b = 0, k = 0; b < CANARY_HIST_BUCKETS; b++) {
    while (k < (int)N_LE && p->le_last[k] < b)
      k++;
    p->le_of[b] = (uint8_t)k;
  }
  *out = p;
  return 0;
}

void canary_prom_end(canary_prom_t *p) {
  if (p == NULL)
    return;
  p->seg = NULL; /* the handle may be closed before the next scrape */
  prom_free(ck_pr_fas_ptr(&spare, p));
}

int canary_prom_next(canary_prom_t *p, char *buf, size_t cap,
                     size_t *len_out) {
  struct out o = {buf, cap, 0};
  int more;
  if (p == NULL || buf == NULL || len_out == NULL ||
      cap < CANARY_PROM_CHUNK_MIN)
    return CANARY_EINVAL;
  *len_out = 0;
  if (!p->gathered) {
    int err = 0;
    if (gather_step(p, &err))
      return 1; /* more routes to read first */
    if (err != 0)
      return err;
    p->gathered = 1;
  }
  more = write_units(p, &o, 1);
  *len_out = o.len;
  return more;
}

int canary_prom_render(const canary_seg_t *seg, char *buf, size_t cap,
                       size_t *len_out) {
  struct out o = {buf, buf ? cap : 0, 0};
  canary_prom_t *p;
  int rc, err = 0;

  if (seg == NULL || len_out == NULL)
    return CANARY_EINVAL;
  rc = canary_prom_begin(seg, &p);
  if (rc != 0)
    return rc;
  while (gather_step(p, &err))
    ;
  if (err == 0) {
    write_units(p, &o, 0);
    *len_out = o.len;
    rc = o.len > o.cap ? CANARY_ENOSPC : 0;
  } else {
    rc = err;
  }
  canary_prom_end(p);
  return rc;
}
