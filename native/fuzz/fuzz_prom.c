/*
 * fuzz_prom.c - Prometheus exposition of routes whose labels come from
 * the input.
 *
 * Route keys and labels are operator (and so attacker-adjacent) strings:
 * plugin instance ids, route names.  They end up inside quoted label
 * values, where a raw quote or newline would let one route forge or
 * break another's series.  This target claims routes under keys and
 * labels taken from the input (any bytes: quotes, backslashes, newlines,
 * NUL, UTF-8, over-long), publishes tables, records samples and events,
 * renders, and checks the output two ways:
 *
 *   - format (fz_prom_check): only HELP/TYPE comments and well-formed
 *     samples, label values escaped, the length as reported;
 *   - content, against a model of what was recorded: every
 *     canary_requests_total / _count / _sum / canary_upstream_weight /
 *     canary_trace_ids_total / canary_events_total sample expected is
 *     there with its value, and no other; a summary's _sum/_count (when
 *     the quantile family is a summary) match too; each histogram series has
 *     increasing `le`, non-decreasing counts that match the samples
 *     recorded (a boundary counts every bucket starting at or below it),
 *     and +Inf equal to _count; quantiles are within 1 % of the exact
 *     nearest-rank value of the clamped samples.  Label values are
 *     compared after unescaping with what the engine documents: the label,
 *     or the key when the label is empty, truncated to at most 127 bytes
 *     between UTF-8 characters, cut at a NUL, control bytes and bytes that
 *     are not well-formed UTF-8 shown as '?'.
 *
 * Finally canary_prom_render is called with a buffer too small by a
 * fuzz-chosen amount (1 byte .. all of it): it must return CANARY_ENOSPC
 * with the full length, and write nothing but a prefix of the full output
 * into it.
 *
 * Input (fields past the end read as 0):
 *   u8 claims % 7
 *   per claim:
 *     u8 key_len % 72, key bytes      (0 and >= 64 are invalid keys)
 *     u8 label_len, label bytes       (>= 128 is truncated by the engine)
 *     u8 pub   bit7: do not publish; n = 1 + (pub & 3) % 3
 *              bit6: names from the input, else "stable", "canary", "c2"
 *     (n-1) x u16 canary weights      (each % what is left; stable: rest)
 *     bit6: n x (u8 len % 64, bytes mapped into the name charset)
 *     u8 samples % 32, each: u8 upstream % 4 (3 is invalid), u32 latency,
 *                            u16 status, u8 source % 6 - 1 (4 invalid)
 *     u8 events % 8, each: u8 event % 10 - 1 (-1, 8 invalid)
 *   u16 capacity seed for the ENOSPC checks
 */
#include "fuzz_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ROUTES 4 /* segment size; a fifth distinct key gets EFULL */
#define UPS 3
#define MAX_LAT 256

/* What was recorded for one upstream name. */
struct model_stats {
  char name[CANARY_NAME_MAX];
  uint64_t status[6];
  uint64_t sum;
  uint64_t lat[MAX_LAT];
  size_t nlat;
};

/* At most 7 publishes of 3 names each, so the statistics pool of the
 * segment (MAX_STAT_SLOTS) never runs out and a name that left always
 * gets its slot back. */
#define MAX_STAT_SLOTS 32
#define RETIRED_MAX 24

struct model_route {
  int claimed, published;
  char key[CANARY_KEY_MAX];
  char label[CANARY_LABEL_MAX];
  struct canary_table t;
  /* Statistics belong to names: those of the table's upstreams, by
   * index, and those of names that left (kept: they come back with the
   * name). */
  struct model_stats up[UPS];
  struct model_stats retired[RETIRED_MAX];
  int nretired;
  uint64_t trace[CANARY_TRACE_SOURCES];
  uint64_t events[CANARY_EVENTS];
};

struct model {
  struct model_route r[ROUTES];
  int used;
};

/* A modelled scalar sample: metric, route, upstream, one extra label. */
struct scalar {
  char metric[64];
  char route[CANARY_LABEL_MAX];
  char upstream[CANARY_NAME_MAX];
  char extra[32]; /* "status=2xx" etc., or "" */
  double value;
  int matched;
};

#define MAX_SCALARS 512

struct scalars {
  struct scalar s[MAX_SCALARS];
  int n;
};

/* Observation state for the callback. */
struct observe {
  const struct model *m;
  struct scalars *seen;
  /* current histogram / quantile series, to check order within it */
  char series[CANARY_LABEL_MAX + CANARY_NAME_MAX + 8];
  double last_le, last_bucket, last_q, last_qv;
  int in_buckets;
  uint64_t inf_count;
  int have_inf;
};

static struct model model;
static struct scalars expected, seen;

/* Bytes of the well-formed UTF-8 sequence at p (RFC 3629, table 3-7 of
 * Unicode: no overlong forms, no surrogates, nothing past U+10FFFF), or 0.
 * Written from the standard's table, independently of the engine. */
static size_t model_utf8(const unsigned char *p) {
  static const struct {
    unsigned char first_lo, first_hi, second_lo, second_hi, len;
  } rows[] = {
      {0xc2, 0xdf, 0x80, 0xbf, 2}, {0xe0, 0xe0, 0xa0, 0xbf, 3},
      {0xe1, 0xec, 0x80, 0xbf, 3}, {0xed, 0xed, 0x80, 0x9f, 3},
      {0xee, 0xef, 0x80, 0xbf, 3}, {0xf0, 0xf0, 0x90, 0xbf, 4},
      {0xf1, 0xf3, 0x80, 0xbf, 4}, {0xf4, 0xf4, 0x80, 0x8f, 4},
  };
  if (p[0] < 0x80)
    return 1;
  for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
    if (p[0] < rows[r].first_lo || p[0] > rows[r].first_hi)
      continue;
    if (p[1] < rows[r].second_lo || p[1] > rows[r].second_hi)
      return 0;
    for (size_t i = 2; i < rows[r].len; i++)
      if (p[i] < 0x80 || p[i] > 0xbf)
        return 0;
    return rows[r].len;
  }
  return 0;
}

/* What a label value reads as after unescaping, per the engine's rule:
 * control bytes and bytes that are not well-formed UTF-8 become '?'. */
static void displayed(char *out, size_t cap, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = 0;
  while (*p && n + 1 < cap) {
    size_t len = model_utf8(p);
    if (len == 0 || (*p < 0x20 && *p != '\n') || *p == 0x7f) {
      out[n++] = '?';
      p++;
      continue;
    }
    if (n + len >= cap)
      break;
    memcpy(out + n, p, len);
    n += len;
    p += len;
  }
  out[n] = '\0';
}

static const char *route_text(const struct model_route *r) {
  return r->label[0] ? r->label : r->key;
}

static void add_scalar(struct scalars *ss, const char *metric,
                       const char *route, const char *upstream,
                       const char *extra, double value) {
  struct scalar *s;
  FZ_CHECK(ss->n < MAX_SCALARS, "harness: too many samples");
  s = &ss->s[ss->n++];
  snprintf(s->metric, sizeof s->metric, "%s", metric);
  snprintf(s->route, sizeof s->route, "%s", route);
  snprintf(s->upstream, sizeof s->upstream, "%s", upstream);
  snprintf(s->extra, sizeof s->extra, "%s", extra);
  s->value = value;
  s->matched = 0;
}

static void build_expected(const struct model *m, struct scalars *ex) {
  static const char *const cls[6] = {"other", "1xx", "2xx",
                                     "3xx",   "4xx", "5xx"};
  static const char *const src[CANARY_TRACE_SOURCES] = {
      "client", "traceparent", "generated", "rejected"};
  static const char *const ev[4] = {"override", "override_denied", "fallback",
                                    "engine_error"};
  char route[CANARY_LABEL_MAX], extra[32];

  ex->n = 0;
  for (int i = 0; i < ROUTES; i++) {
    const struct model_route *r = &m->r[i];
    if (!r->published)
      continue;
    displayed(route, sizeof route, route_text(r));
    for (uint32_t u = 0; u < r->t.n; u++) {
      const char *up = r->t.names[u];
      for (int c = 1; c < 6; c++) {
        if (c == 1 && r->up[u].status[1] == 0)
          continue;
        snprintf(extra, sizeof extra, "status=%s", cls[c]);
        add_scalar(ex, "canary_requests_total", route, up, extra,
                   (double)r->up[u].status[c]);
      }
      add_scalar(ex, "canary_upstream_latency_seconds_count", route, up, "",
                 (double)r->up[u].nlat);
      add_scalar(ex, "canary_upstream_latency_seconds_sum", route, up, "",
                 (double)r->up[u].sum / 1e6);
      add_scalar(ex, "canary_upstream_weight", route, up, "",
                 (double)r->t.weights[u] / CANARY_WEIGHT_SCALE);
    }
    for (int s = 0; s < CANARY_TRACE_SOURCES; s++) {
      snprintf(extra, sizeof extra, "source=%s", src[s]);
      add_scalar(ex, "canary_trace_ids_total", route, "", extra,
                 (double)r->trace[s]);
    }
    for (int e = 0; e < 4; e++) {
      snprintf(extra, sizeof extra, "event=%s", ev[e]);
      add_scalar(ex, "canary_events_total", route, "", extra,
                 (double)r->events[e]);
    }
  }
}

/* The single model route/upstream a series names, or -1 when none or
 * several do (two routes may display the same label). */
static int find_series(const struct model *m, const char *route,
                       const char *upstream, int *u_out) {
  char d[CANARY_LABEL_MAX];
  int found = -1, count = 0;
  for (int i = 0; i < ROUTES; i++) {
    const struct model_route *r = &m->r[i];
    if (!r->published)
      continue;
    displayed(d, sizeof d, route_text(r));
    if (strcmp(d, route) != 0)
      continue;
    for (uint32_t u = 0; u < r->t.n; u++)
      if (strcmp(r->t.names[u], upstream) == 0) {
        found = i;
        *u_out = (int)u;
        count++;
      }
  }
  return count == 1 ? found : -1;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Exact nearest-rank quantile of the samples as recorded (clamped). */
static double exact_quantile(const struct model_route *r, int u, double q) {
  uint64_t v[MAX_LAT], top = canary_hist_bucket_high(CANARY_HIST_BUCKETS - 1);
  size_t n = r->up[u].nlat, rank;
  if (n == 0)
    return 0;
  for (size_t i = 0; i < n; i++)
    v[i] = r->up[u].lat[i] < top ? r->up[u].lat[i] : top;
  qsort(v, n, sizeof v[0], cmp_u64);
  rank = (size_t)ceil(q * (double)n - 1e-9);
  if (rank < 1)
    rank = 1;
  if (rank > n)
    rank = n;
  return (double)v[rank - 1];
}

/* Samples at or below le_us by the engine's documented rule: a boundary
 * counts every histogram bucket that starts at or below it. */
static uint64_t count_le(const struct model_route *r, int u, uint64_t le_us) {
  uint64_t c = 0;
  for (size_t i = 0; i < r->up[u].nlat; i++)
    if (canary_hist_bucket_low(canary_hist_bucket_of(r->up[u].lat[i])) <= le_us)
      c++;
  return c;
}

static void observe_bucket(struct observe *o, const struct fz_prom_sample *s,
                           const char *route, const char *up) {
  const struct fz_prom_label *le = fz_prom_label(s, "le");
  char key[sizeof o->series];
  double bound;
  int u, i;

  snprintf(key, sizeof key, "%s\x1f%s", route, up);
  if (!o->in_buckets || strcmp(key, o->series) != 0) {
    FZ_CHECK(!o->in_buckets || o->have_inf,
             "histogram series ended without le=\"+Inf\"");
    snprintf(o->series, sizeof o->series, "%s", key);
    o->in_buckets = 1;
    o->have_inf = 0;
    o->last_le = -1;
    o->last_bucket = 0;
  }
  FZ_CHECK(!o->have_inf, "bucket after le=\"+Inf\"");
  bound = strcmp(le->value, "+Inf") == 0 ? INFINITY : strtod(le->value, NULL);
  FZ_CHECK(bound > o->last_le, "le \"%s\" not above the previous bound",
           le->value);
  FZ_CHECK(s->value >= o->last_bucket, "bucket counts decrease at le=\"%s\"",
           le->value);
  o->last_le = bound;
  o->last_bucket = s->value;
  if (isinf(bound)) {
    o->have_inf = 1;
    o->inf_count = (uint64_t)s->value;
  }
  i = find_series(o->m, route, up, &u);
  if (i < 0)
    return;
  if (isinf(bound))
    FZ_CHECK(s->value == (double)o->m->r[i].up[u].nlat,
             "+Inf bucket %.0f, %zu samples recorded", s->value,
             o->m->r[i].up[u].nlat);
  else
    FZ_CHECK(s->value == (double)count_le(&o->m->r[i], u,
                                          (uint64_t)llround(bound * 1e6)),
             "bucket le=\"%s\" of %s/%s counts %.0f, the samples give %llu",
             le->value, route, up, s->value,
             (unsigned long long)count_le(&o->m->r[i], u,
                                          (uint64_t)llround(bound * 1e6)));
}

static void observe_quantile(struct observe *o, const struct fz_prom_sample *s,
                             const char *route, const char *up) {
  const struct fz_prom_label *ql = fz_prom_label(s, "quantile");
  double q, exact, got = s->value * 1e6;
  int u, i;

  FZ_CHECK(ql != NULL, "quantile sample without quantile label");
  q = strtod(ql->value, NULL);
  FZ_CHECK(q > 0 && q <= 1, "quantile label \"%s\"", ql->value);
  FZ_CHECK(s->value >= 0, "negative quantile");
  i = find_series(o->m, route, up, &u);
  if (i < 0)
    return;
  exact = exact_quantile(&o->m->r[i], u, q);
  /* 1 % as documented, plus the 0.5 us the %.6f seconds rounding adds. */
  FZ_CHECK(fabs(got - exact) <= exact * 0.01 + 0.5 + 1e-6,
           "q%s of %s/%s is %.1f us, exact nearest-rank value %.1f us",
           ql->value, route, up, got, exact);
}

/* A summary's _sum and _count cover the same samples as the histogram. */
static void observe_summary(struct observe *o, const struct fz_prom_sample *s,
                            const char *route, const char *up) {
  const struct model_route *r;
  size_t n = strlen(s->family);
  int u, i = find_series(o->m, route, up, &u);

  if (i < 0)
    return;
  r = &o->m->r[i];
  if (strcmp(s->name + n, "_count") == 0)
    FZ_CHECK(s->value == (double)r->up[u].nlat,
             "%s of %s/%s is %.0f, %zu recorded", s->name, route, up, s->value,
             r->up[u].nlat);
  else if (strcmp(s->name + n, "_sum") == 0)
    FZ_CHECK(fabs(s->value - (double)r->up[u].sum / 1e6) <= 5e-7,
             "%s of %s/%s is %.6f, the samples sum to %.6f", s->name, route,
             up, s->value, (double)r->up[u].sum / 1e6);
}

static void on_sample(const struct fz_prom_sample *s, void *ctx) {
  struct observe *o = ctx;
  const struct fz_prom_label *route = fz_prom_label(s, "route");
  const struct fz_prom_label *up = fz_prom_label(s, "upstream");
  const char *upv = up != NULL ? up->value : "";
  char extra[32] = "";

  if (strncmp(s->name, "canary_", 7) != 0 ||
      strncmp(s->name, "canary_slots", 12) == 0)
    return; /* the segment's pool families: no route, not modelled */
  FZ_CHECK(route != NULL, "%s sample without a route label", s->name);
  /* Label values are C strings in the engine: a NUL cannot show up. */
  FZ_CHECK(strlen(route->value) == route->value_len,
           "NUL inside a route label value");
  FZ_CHECK(route->value_len < CANARY_LABEL_MAX,
           "route label of %zu bytes; the engine keeps at most %d",
           route->value_len, CANARY_LABEL_MAX - 1);
  if (strcmp(s->name, "canary_upstream_latency_seconds_bucket") == 0) {
    observe_bucket(o, s, route->value, upv);
    return;
  }
  if (o->in_buckets) {
    FZ_CHECK(o->have_inf, "histogram series ended without le=\"+Inf\"");
    o->in_buckets = 0;
  }
  if (strcmp(s->name, "canary_upstream_latency_quantile_seconds") == 0) {
    observe_quantile(o, s, route->value, upv);
    return;
  }
  if (strcmp(s->type, "summary") == 0) {
    observe_summary(o, s, route->value, upv);
    return;
  }
  if (strcmp(s->name, "canary_requests_total") == 0 ||
      strcmp(s->name, "canary_trace_ids_total") == 0 ||
      strcmp(s->name, "canary_events_total") == 0) {
    const struct fz_prom_label *x;
    FZ_CHECK(s->nlabels >= 2, "%s without its own label", s->name);
    x = &s->labels[s->nlabels - 1];
    FZ_CHECK(x != route && x != up, "%s: last label is not its own", s->name);
    snprintf(extra, sizeof extra, "%s=%s", x->name, x->value);
  } else if (strcmp(s->name, "canary_upstream_latency_seconds_count") != 0 &&
             strcmp(s->name, "canary_upstream_latency_seconds_sum") != 0 &&
             strcmp(s->name, "canary_upstream_weight") != 0) {
    return; /* progression families: not modelled here */
  }
  add_scalar(o->seen, s->name, route->value, upv, extra, s->value);
}

/* Every expected scalar sample is rendered once with its value, and no
 * modelled sample is rendered that was not expected. */
static void compare_scalars(struct scalars *ex, struct scalars *got) {
  for (int i = 0; i < got->n; i++) {
    struct scalar *g = &got->s[i];
    int ok = 0;
    for (int j = 0; j < ex->n && !ok; j++) {
      struct scalar *e = &ex->s[j];
      /* %.6f seconds and %.4f weights: compare within the printed digits */
      double tol = strcmp(e->metric, "canary_upstream_weight") == 0 ? 5e-5
                   : strstr(e->metric, "_sum") != NULL              ? 5e-7
                                                                    : 0;
      if (e->matched || strcmp(e->metric, g->metric) != 0 ||
          strcmp(e->route, g->route) != 0 ||
          strcmp(e->upstream, g->upstream) != 0 ||
          strcmp(e->extra, g->extra) != 0 || fabs(e->value - g->value) > tol)
        continue;
      e->matched = ok = 1;
    }
    FZ_CHECK(ok,
             "rendered %s{route=\"%s\",upstream=\"%s\",%s} %.6f, which "
             "the recorded data does not give",
             g->metric, g->route, g->upstream, g->extra, g->value);
  }
  for (int j = 0; j < ex->n; j++)
    FZ_CHECK(ex->s[j].matched,
             "missing %s{route=\"%s\",upstream=\"%s\",%s} %.6f",
             ex->s[j].metric, ex->s[j].route, ex->s[j].upstream,
             ex->s[j].extra, ex->s[j].value);
}

static int key_ok(const char *k, size_t len) {
  return len > 0 && len < CANARY_KEY_MAX && memchr(k, '\0', len) == NULL;
}

/* The characters of a Kong upstream name, the engine's rule. */
static const char name_charset[] =
    "-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/* Claims one route as the input says, updating the model. */
static int claim(canary_seg_t *seg, struct model *m, struct fz_in *in) {
  size_t klen, llen, lcap;
  char *key = fz_dup(in, fz_u8(in) % (CANARY_KEY_MAX + 8), &klen);
  char *label = fz_dup(in, fz_u8(in), &llen);
  int idx, want = CANARY_EINVAL;

  if (key_ok(key, klen)) {
    want = m->used < ROUTES ? m->used : CANARY_EFULL;
    for (int i = 0; i < m->used; i++)
      if (strlen(m->r[i].key) == klen && memcmp(m->r[i].key, key, klen) == 0)
        want = i;
  }
  idx = canary_route_claim(seg, key, klen, label, llen);
  FZ_CHECK(idx == want, "claim returned %d, expected %d", idx, want);
  if (key_ok(key, klen))
    FZ_CHECK(canary_route_find(seg, key, klen) ==
                 (idx >= 0 ? idx : CANARY_ENOENT),
             "find disagrees with claim");
  else
    FZ_CHECK(canary_route_find(seg, key, klen) == CANARY_EINVAL,
             "find accepted an invalid key");
  if (idx >= 0) {
    struct model_route *r = &m->r[idx];
    if (idx == m->used) {
      m->used++;
      r->claimed = 1;
      memcpy(r->key, key, klen);
      r->key[klen] = '\0';
    }
    /* The engine keeps at most 127 bytes, cut before a UTF-8
     * continuation byte, and, being C, stops at a NUL. */
    lcap = llen;
    if (lcap > CANARY_LABEL_MAX - 1) {
      lcap = CANARY_LABEL_MAX - 1;
      while (lcap > 0 && ((unsigned char)label[lcap] & 0xc0) == 0x80)
        lcap--;
    }
    if (llen > 0) {
      memcpy(r->label, label, lcap);
      r->label[lcap] = '\0';
    }
  }
  free(key);
  free(label);
  return idx;
}

/* Builds and publishes the claim's table when the input asks for one. */
static void publish(canary_seg_t *seg, struct model_route *r, int idx,
                    struct fz_in *in, uint64_t hash) {
  static const char *const fixed[UPS] = {"stable", "canary", "c2"};
  struct canary_table t;
  uint8_t pub = fz_u8(in);
  uint32_t left = CANARY_WEIGHT_SCALE;
  int rc, valid;

  memset(&t, 0, sizeof t);
  t.n = 1 + (pub & 3) % 3;
  for (uint32_t u = 1; u < t.n; u++) {
    t.weights[u] = fz_u16(in) % (left + 1);
    left -= t.weights[u];
  }
  t.weights[0] = left;
  for (uint32_t u = 0; u < t.n; u++) {
    if (pub & 64) {
      size_t len = fz_u8(in) % CANARY_NAME_MAX;
      if (len == 0)
        len = 1;
      for (size_t j = 0; j < len; j++)
        t.names[u][j] = name_charset[fz_u8(in) % (sizeof name_charset - 1)];
    } else {
      snprintf(t.names[u], sizeof t.names[u], "%s", fixed[u]);
    }
  }
  if (idx < 0 || (pub & 128))
    return;
  valid = 1;
  for (uint32_t u = 0; u < t.n; u++)
    for (uint32_t k = 0; k < u; k++)
      if (strcmp(t.names[u], t.names[k]) == 0)
        valid = 0; /* names from the input may repeat */
  rc = canary_route_publish(seg, idx, &t, hash, NULL, NULL, 0);
  FZ_CHECK(rc == (valid ? 0 : CANARY_EWEIGHTS), "publish returned %d", rc);
  if (rc == 0) {
    struct model_stats next[UPS];
    /* A name keeps its statistics wherever it moves, gets back what it
     * had when it left, or starts at zero; names that leave keep theirs
     * aside. */
    memset(next, 0, sizeof next);
    for (uint32_t u = 0; u < t.n; u++) {
      int found = 0;
      for (uint32_t j = 0; r->published && j < r->t.n && !found; j++)
        if (strcmp(r->up[j].name, t.names[u]) == 0) {
          next[u] = r->up[j];
          found = 1;
        }
      for (int k = 0; k < r->nretired && !found; k++)
        if (strcmp(r->retired[k].name, t.names[u]) == 0) {
          next[u] = r->retired[k];
          r->retired[k] = r->retired[--r->nretired];
          found = 1;
        }
      snprintf(next[u].name, sizeof next[u].name, "%s", t.names[u]);
    }
    for (uint32_t j = 0; r->published && j < r->t.n; j++) {
      int kept = 0;
      for (uint32_t u = 0; u < t.n && !kept; u++)
        kept = strcmp(r->up[j].name, t.names[u]) == 0;
      if (!kept) {
        FZ_CHECK(r->nretired < RETIRED_MAX, "harness: too many names");
        r->retired[r->nretired++] = r->up[j];
      }
    }
    memcpy(r->up, next, sizeof next);
    r->published = 1;
    r->t = t;
  }
}

static void record(canary_seg_t *seg, struct model_route *r, int idx,
                   struct fz_in *in) {
  int samples = fz_u8(in) % 32, events;
  for (int k = 0; k < samples; k++) {
    int up = fz_u8(in) % 4;
    uint64_t lat = fz_u32(in);
    int status = fz_u16(in);
    int source = fz_u8(in) % 6 - 1;
    /* Statistics need a published table with that upstream. */
    int want = up >= UPS || source >= CANARY_TRACE_SOURCES ? CANARY_EINVAL
               : idx < 0 || !r->published                   ? CANARY_ENOTPUB
               : (uint32_t)up >= r->t.n                     ? CANARY_EINVAL
                                                            : 0;
    int cls = status >= 100 && status <= 599 ? status / 100 : 0;
    int rc;
    if (idx < 0)
      continue;
    rc = canary_route_record(seg, idx, up, lat, status, source);
    FZ_CHECK(rc == want, "record(up %d, source %d) returned %d, expected %d",
             up, source, rc, want);
    if (rc != 0)
      continue;
    r->up[up].status[cls]++;
    r->up[up].sum += lat;
    if (r->up[up].nlat < MAX_LAT)
      r->up[up].lat[r->up[up].nlat++] = lat;
    if (source >= 0)
      r->trace[source]++;
  }
  events = fz_u8(in) % 8;
  for (int k = 0; k < events; k++) {
    int ev = fz_u8(in) % 10 - 1;
    int rc;
    if (idx < 0)
      continue;
    rc = canary_route_event(seg, idx, ev);
    FZ_CHECK(rc == (ev >= 0 && ev < CANARY_EVENTS ? 0 : CANARY_EINVAL),
             "event %d returned %d", ev, rc);
    if (rc == 0)
      r->events[ev]++;
  }
}

/* A buffer of `cap` bytes (exactly, for ASan) must get ENOSPC, the full
 * length, and only a prefix of the full output. */
static void too_small(const canary_seg_t *seg, const char *full, size_t len,
                      size_t cap) {
  char *b = malloc(cap);
  size_t got = 0, i = 0;
  int rc;

  FZ_CHECK(b != NULL || cap == 0, "harness: out of memory");
  if (cap > 0)
    memset(b, 0xa5, cap);
  rc = canary_prom_render(seg, b, cap, &got);
  FZ_CHECK(rc == CANARY_ENOSPC && got == len,
           "render into %zu of %zu bytes: %d, length %zu", cap, len, rc, got);
  while (i < cap && b[i] == full[i])
    i++;
  for (; i < cap; i++)
    FZ_CHECK((unsigned char)b[i] == 0xa5,
             "render into %zu bytes wrote byte %zu that is not the output's",
             cap, i);
  free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fz_in in = {data, size};
  struct observe o;
  canary_seg_t *seg;
  char path[4096], why[256], *out;
  size_t len;
  int rc, claims;
  uint16_t capseed;

  fz_path(path, sizeof path, "prom.seg");
  unlink(path);
  rc = canary_seg_open_params(
      &seg, path,
      &(struct canary_seg_params){ROUTES, UPS, MAX_STAT_SLOTS, 0, 0, 0}, why,
      sizeof why);
  FZ_CHECK(rc == CANARY_SEG_CREATED, "segment: %d %s", rc, why);
  unlink(path); /* the mapping stays; nothing is left behind */

  memset(&model, 0, sizeof model);
  claims = fz_u8(&in) % 7;
  for (int c = 0; c < claims; c++) {
    int idx = claim(seg, &model, &in);
    struct model_route *r = idx >= 0 ? &model.r[idx] : NULL;
    publish(seg, r, idx, &in, (uint64_t)c + 1);
    record(seg, r, idx, &in);
  }
  capseed = fz_u16(&in);

  out = fz_prom_render(seg, &len, &rc);
  FZ_CHECK(out != NULL, "render failed: %d (%s)", rc, canary_strerror(rc));
  memset(&o, 0, sizeof o);
  o.m = &model;
  o.seen = &seen;
  seen.n = 0;
  fz_prom_check(out, len, on_sample, &o);
  FZ_CHECK(!o.in_buckets || o.have_inf, "last histogram series unfinished");
  build_expected(&model, &expected);
  compare_scalars(&expected, &seen);

  /* One short buffer per input (each render walks every histogram):
   * capseed 0 gives len - 1, the off-by-one case; len - 1 gives 0. */
  too_small(seg, out, len, len - 1 - capseed % len);

  free(out);
  canary_seg_close(seg);
  return 0;
}
