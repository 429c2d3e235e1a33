/*
 * prom.c - Prometheus text exposition of every claimed route.
 *
 * The renderer only reads: route tables through the same lock-free read
 * as a pick, counters with atomic loads.  It takes no lock, so a scrape
 * can never delay a request.
 *
 * The exposition format wants each metric family's samples together, but
 * the data is naturally per route and upstream.  So one pass gathers a
 * compact row per (route, upstream) — counts per status class, the
 * cumulative `le` counts, sum and quantiles — and the families are then
 * written from those rows.  Bucket boundaries (`le`) are fixed and the
 * same on every node, so `sum by (le)` over a cluster is a correct
 * cluster histogram.  A boundary counts every histogram bucket that
 * starts at or below it, so it is exact to one bucket width (<= 1/64 of
 * the boundary).
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
  const char *text; /* as printed */
  uint64_t us;
} le_bounds[] = {
    {"0.0005", 500},     {"0.001", 1000},       {"0.0025", 2500},
    {"0.005", 5000},     {"0.01", 10000},       {"0.025", 25000},
    {"0.05", 50000},     {"0.1", 100000},       {"0.25", 250000},
    {"0.5", 500000},     {"1", 1000000},        {"2.5", 2500000},
    {"5", 5000000},      {"10", 10000000},      {"30", 30000000},
    {"60", 60000000},
};
#define N_LE (sizeof le_bounds / sizeof le_bounds[0])

static const char *const status_text[6] = {"other", "1xx", "2xx",
                                           "3xx",   "4xx", "5xx"};
static const char *const source_text[CANARY_TRACE_SOURCES] = {
    "client", "traceparent", "generated", "rejected"};
static const char *const prog_state_text[] = {
    "none", "running", "paused", "promoted", "rolled_back"};
static const char *const gate_text[CANARY_GATE_RESULTS] = {
    "pass", "fail", "inconclusive"};
static const char *const event_text[4] = {"override", "override_denied",
                                          "fallback", "engine_error"};

/* Room for route="<label>",upstream="<name>" with every byte escaped. */
#define LABELS_MAX (2 * CANARY_LABEL_MAX + 2 * CANARY_NAME_MAX + 32)

struct row {
  int route; /* index into the views array */
  int upstream;
  size_t labels_len;
  char labels[LABELS_MAX]; /* {route="..",upstream=".." escaped, once */
  uint64_t status[6];
  uint64_t le[N_LE];
  uint64_t count;
  uint64_t sum_us;
  double p50, p95, p99;
};

struct out {
  char *buf;
  size_t cap;
  size_t len; /* grows past cap: then it is the length needed */
};

static void put(struct out *o, const char *s, size_t n) {
  if (o->len + n <= o->cap)
    memcpy(o->buf + o->len, s, n);
  o->len += n;
}

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

/* Decimal without printf: the bucket lines are most of a scrape. */
static void put_u64(struct out *o, uint64_t v) {
  char tmp[24];
  size_t n = sizeof tmp;
  do {
    tmp[--n] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  put(o, tmp + n, sizeof tmp - n);
}

__attribute__((format(printf, 2, 3))) static void putf(struct out *o,
                                                       const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0)
    put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

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

static void family(struct out *o, const char *name, const char *type,
                   const char *help) {
  putf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{route="..",upstream=".." (route-level series: no upstream). */
static void series(struct out *o, const char *name,
                   const struct canary_route_view *v, int upstream) {
  puts_(o, name);
  puts_(o, "{route=\"");
  put_label(o, v->label[0] ? v->label : v->key);
  if (upstream >= 0) {
    puts_(o, "\",upstream=\"");
    put_label(o, v->names[upstream]);
  }
  puts_(o, "\"");
}

/* name{route="..",<key>="<val>"} n, for the per-route families. */
static void route_line(struct out *o, const char *name,
                       const struct canary_route_view *v, const char *key,
                       const char *val, uint64_t n) {
  series(o, name, v, -1);
  put(o, ",", 1);
  puts_(o, key);
  puts_(o, "=\"");
  puts_(o, val);
  puts_(o, "\"} ");
  put_u64(o, n);
  put(o, "\n", 1);
}

/* name + a row's labels, escaped once when the row was filled. */
static void row_series(struct out *o, const char *name, const struct row *r) {
  puts_(o, name);
  put(o, r->labels, r->labels_len);
}

/* One pass over a snapshot: the cumulative count at every `le`, and the
 * quantiles by the same nearest-rank rule as canary_hist_summarize().
 * le_last[k] is the bucket holding le_bounds[k]: a boundary counts every
 * bucket that starts at or below it. */
static void fill_row(const canary_seg_t *seg, int slot,
                     const struct canary_route_view *v, struct row *row,
                     struct canary_hist_snapshot *snap, const int *le_last) {
  static const double qs[3] = {0.50, 0.95, 0.99};
  double *qv[3] = {&row->p50, &row->p95, &row->p99};
  uint64_t rank[3], count = 0, acc = 0;
  struct out lo = {row->labels, sizeof row->labels, 0};
  size_t k = 0, qi = 0;

  series(&lo, "", v, row->upstream);
  row->labels_len = lo.len <= lo.cap ? lo.len : 0;
  canary_hist_snapshot(seg, slot, row->upstream, snap);
  memcpy(row->status, snap->status, sizeof row->status);
  row->sum_us = snap->sum_us;
  for (int b = 0; b < CANARY_HIST_BUCKETS; b++)
    count += snap->buckets[b];
  row->count = count;
  row->p50 = row->p95 = row->p99 = 0;
  for (int i = 0; i < 3; i++)
    rank[i] = count ? canary__rank(qs[i], count) : 0;
  if (count == 0)
    qi = 3;
  for (int b = 0; b < CANARY_HIST_BUCKETS; b++) {
    acc += snap->buckets[b];
    while (qi < 3 && acc >= rank[qi])
      *qv[qi++] = canary__bucket_mid(b);
    while (k < N_LE && le_last[k] == b)
      row->le[k++] = acc;
    if (k == N_LE && qi == 3)
      break;
  }
  while (k < N_LE)
    row->le[k++] = count;
}

/* The progression's judging, per route: windows judged by verdict, and
 * every gate judged in the last conclusive window (a pass or a fail; an
 * inconclusive window measures nothing), its measured value next to its
 * limit, in base units (seconds for latencies, fractions for rates and
 * deltas, plain multiples for ratios).  Judgements of a dry run, which
 * applied nothing, carry dry_run="true".  slots[i] is views[i]'s route
 * slot.  Returns 0 or CANARY_ENOMEM. */
static int gate_families(struct out *o, const canary_seg_t *seg,
                         const struct canary_route_view *views,
                         const struct canary_prog_status *progs,
                         const int *slots, size_t nviews) {
  struct canary_decision *last = calloc(nviews ? nviews : 1, sizeof *last);
  static const char *const family_name[2] = {"canary_gate_value",
                                             "canary_gate_limit"};
  static const char *const family_help[2] = {
      "Measured value of each gate in the last conclusive window "
      "(seconds, fractions or ratios).",
      "Configured limit of each gate judged in the last conclusive window."};

  if (last == NULL)
    return CANARY_ENOMEM;
  family(o, "canary_gate_evaluations_total", "counter",
         "Progression windows judged, by verdict; dry_run=\"true\": "
         "judged in a dry run, nothing applied.");
  for (size_t i = 0; i < nviews; i++) {
    int dry = progs[i].dry_run;
    for (int g = 0; g < CANARY_GATE_RESULTS; g++) {
      route_line(o, "canary_gate_evaluations_total", &views[i], "result",
                 gate_text[g], progs[i].evaluations[g]);
      dry |= progs[i].dry_evaluations[g] != 0;
    }
    for (int g = 0; dry && g < CANARY_GATE_RESULTS; g++) {
      series(o, "canary_gate_evaluations_total", &views[i], -1);
      puts_(o, ",result=\"");
      puts_(o, gate_text[g]);
      puts_(o, "\",dry_run=\"true\"} ");
      put_u64(o, progs[i].dry_evaluations[g]);
      put(o, "\n", 1);
    }
    if (progs[i].state == CANARY_PROG_NONE ||
        canary__prog_last_judged(seg, slots[i], &last[i]) != 0)
      last[i].seq = 0; /* nothing judged (or no longer in the log) */
  }
  for (int f = 0; f < 2; f++) {
    family(o, family_name[f], "gauge", family_help[f]);
    for (size_t i = 0; i < nviews; i++) {
      if (last[i].seq == 0)
        continue;
      for (int g = 0; g < CANARY_GATES; g++) {
        const struct canary_gate_check *k = &last[i].judge.gates[g];
        double v = f == 0 ? k->value : k->limit;
        if (k->check != CANARY_CHECK_PASS && k->check != CANARY_CHECK_FAIL)
          continue;
        if (g == CANARY_GATE_P95 || g == CANARY_GATE_P99)
          v /= 1e6; /* microseconds -> seconds */
        series(o, family_name[f], &views[i], -1);
        puts_(o, ",gate=\"");
        puts_(o, canary_gate_name(g));
        puts_(o, last[i].dry_run ? "\",dry_run=\"true\"} " : "\"} ");
        putf(o, "%.9g\n", v);
      }
    }
  }
  free(last);
  return 0;
}

int canary_prom_render(const canary_seg_t *seg, char *buf, size_t cap,
                       size_t *len_out) {
  struct canary_route_view *views = NULL;
  struct canary_prog_status *progs = NULL;
  struct canary_hist_snapshot *snap = NULL;
  int *slots = NULL;
  struct row *rows = NULL;
  size_t nviews = 0, nrows = 0;
  struct out o = {buf, buf ? cap : 0, 0};
  int le_last[N_LE];
  int rc = 0;

  if (seg == NULL || len_out == NULL)
    return CANARY_EINVAL;
  for (size_t k = 0; k < N_LE; k++)
    le_last[k] = canary__bucket_of(le_bounds[k].us);
  views = calloc(seg->max_routes, sizeof *views);
  progs = calloc(seg->max_routes, sizeof *progs);
  slots = calloc(seg->max_routes, sizeof *slots);
  rows = calloc((size_t)seg->max_routes * seg->max_upstreams, sizeof *rows);
  snap = malloc(sizeof *snap);
  if (!views || !progs || !slots || !rows || !snap) {
    rc = CANARY_ENOMEM;
    goto done;
  }
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    struct canary_route_view *v = &views[nviews];
    if (canary_route_read(seg, (int)i, v) != 0 || v->generation == 0)
      continue; /* free, unpublished, or unreadable: nothing to say */
    if (canary_prog_status(seg, (int)i, 0, &progs[nviews]) != 0)
      progs[nviews].state = CANARY_PROG_NONE;
    slots[nviews] = (int)i;
    for (uint32_t u = 0; u < v->n; u++) {
      rows[nrows].route = (int)nviews;
      rows[nrows].upstream = (int)u;
      fill_row(seg, (int)i, v, &rows[nrows], snap, le_last);
      nrows++;
    }
    nviews++;
  }

  family(&o, "canary_requests_total", "counter",
         "Responses per route, upstream and status class.");
  for (size_t r = 0; r < nrows; r++)
    for (int c = 1; c < 6; c++) {
      if (c == 1 && rows[r].status[1] == 0)
        continue; /* 1xx only when seen */
      row_series(&o, "canary_requests_total", &rows[r]);
      puts_(&o, ",status=\"");
      puts_(&o, status_text[c]);
      puts_(&o, "\"} ");
      put_u64(&o, rows[r].status[c]);
      put(&o, "\n", 1);
    }

  family(&o, "canary_upstream_latency_seconds", "histogram",
         "Upstream latency: request handed to the upstream until its "
         "response header.");
  for (size_t r = 0; r < nrows; r++) {
    for (size_t k = 0; k <= N_LE; k++) {
      row_series(&o, "canary_upstream_latency_seconds_bucket", &rows[r]);
      puts_(&o, ",le=\"");
      puts_(&o, k < N_LE ? le_bounds[k].text : "+Inf");
      puts_(&o, "\"} ");
      put_u64(&o, k < N_LE ? rows[r].le[k] : rows[r].count);
      put(&o, "\n", 1);
    }
    row_series(&o, "canary_upstream_latency_seconds_sum", &rows[r]);
    putf(&o, "} %.6f\n", (double)rows[r].sum_us / 1e6);
    row_series(&o, "canary_upstream_latency_seconds_count", &rows[r]);
    puts_(&o, "} ");
    put_u64(&o, rows[r].count);
    put(&o, "\n", 1);
  }

  /* Quantiles computed here are a summary in Prometheus' terms (the only
   * type that may carry a `quantile` label), with its _sum and _count. */
  family(&o, "canary_upstream_latency_quantile_seconds", "summary",
         "Upstream latency quantiles since the segment was created, "
         "within 1 %; per node, do not aggregate.");
  for (size_t r = 0; r < nrows; r++) {
    const double q[3] = {rows[r].p50, rows[r].p95, rows[r].p99};
    const char *qt[3] = {"0.5", "0.95", "0.99"};
    for (int k = 0; k < 3; k++) {
      row_series(&o, "canary_upstream_latency_quantile_seconds", &rows[r]);
      putf(&o, ",quantile=\"%s\"} %.6f\n", qt[k], q[k] / 1e6);
    }
    row_series(&o, "canary_upstream_latency_quantile_seconds_sum", &rows[r]);
    putf(&o, "} %.6f\n", (double)rows[r].sum_us / 1e6);
    row_series(&o, "canary_upstream_latency_quantile_seconds_count",
               &rows[r]);
    puts_(&o, "} ");
    put_u64(&o, rows[r].count);
    put(&o, "\n", 1);
  }

  family(&o, "canary_upstream_weight", "gauge",
         "Effective routing weight of the upstream, 0..1.");
  for (size_t r = 0; r < nrows; r++) {
    const struct canary_route_view *v = &views[rows[r].route];
    row_series(&o, "canary_upstream_weight", &rows[r]);
    putf(&o, "} %.4f\n",
         (double)v->effective[rows[r].upstream] / CANARY_WEIGHT_SCALE);
  }

  family(&o, "canary_progression_step", "gauge",
         "Current progression step, 1-based; 0 without a progression.");
  for (size_t i = 0; i < nviews; i++) {
    series(&o, "canary_progression_step", &views[i], -1);
    puts_(&o, "} ");
    put_u64(&o, progs[i].state == CANARY_PROG_NONE ? 0u : progs[i].step + 1);
    put(&o, "\n", 1);
  }

  family(&o, "canary_progression_state", "gauge",
         "1 for the progression's current state, 0 for the others.");
  for (size_t i = 0; i < nviews; i++)
    for (uint32_t st = CANARY_PROG_NONE; st <= CANARY_PROG_ROLLED_BACK; st++)
      route_line(&o, "canary_progression_state", &views[i], "state",
                 prog_state_text[st], progs[i].state == st);

  rc = gate_families(&o, seg, views, progs, slots, nviews);
  if (rc != 0)
    goto done;

  family(&o, "canary_trace_ids_total", "counter",
         "Requests by where their trace ID came from.");
  for (size_t i = 0; i < nviews; i++)
    for (int t = 0; t < CANARY_TRACE_SOURCES; t++)
      route_line(&o, "canary_trace_ids_total", &views[i], "source",
                 source_text[t], views[i].trace[t]);

  family(&o, "canary_events_total", "counter",
         "Overrides honoured or denied, fallbacks to the stable upstream, "
         "engine errors that failed open.");
  for (size_t i = 0; i < nviews; i++)
    for (int e = 0; e < 4; e++)
      route_line(&o, "canary_events_total", &views[i], "event",
                 event_text[e], views[i].events[e]);

  *len_out = o.len;
  if (o.len > o.cap)
    rc = CANARY_ENOSPC;
done:
  free(views);
  free(progs);
  free(slots);
  free(rows);
  free(snap);
  return rc;
}
