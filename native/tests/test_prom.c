/*
 * test_prom.c - the Prometheus text exposition.
 *
 * What a user would notice: a scrape that Prometheus rejects (one bad
 * line fails the whole scrape), a histogram whose +Inf bucket disagrees
 * with _count, a route name with a quote that breaks the output, a
 * dashboard showing 25 % canary weight as 2500.
 */
#include "test_util.h"

#include <ctype.h>
#include <math.h>

#define P_ROUTES 4u
#define P_UPSTREAMS 4u

/* The route label of route A: quote, backslash and newline. */
static const char weird_label[] = "we\"ird\\route\nx";

static int setup(void **state) {
  return test_fx_setup(state, P_ROUTES, P_UPSTREAMS);
}

static int teardown(void **state) {
  return test_fx_teardown(state);
}

/* ---- a small exposition-format parser -------------------------------- */

#define MAX_LABELS 8
#define MAX_SAMPLES 4096
#define MAX_FAMILIES 64

struct sample {
  char name[128];
  int nlabels;
  char lname[MAX_LABELS][32];
  char lval[MAX_LABELS][256];
  double value;
};

struct family {
  char name[128];
  char type[16];
  int has_samples;
  int closed; /* another family's samples came after this one's */
};

struct expo {
  struct sample *s;
  size_t ns;
  struct family f[MAX_FAMILIES];
  size_t nf;
};

static int name_start(int c) {
  return isalpha(c) || c == '_' || c == ':';
}

static int name_char(int c) {
  return isalnum(c) || c == '_' || c == ':';
}

static const char *parse_name(const char *p, const char *end, char *out,
                              size_t cap, int metric) {
  size_t n = 0;
  if (p >= end || !(metric ? name_start((unsigned char)*p)
                           : (isalpha((unsigned char)*p) || *p == '_')))
    return NULL;
  while (p < end && (metric ? name_char((unsigned char)*p)
                            : (isalnum((unsigned char)*p) || *p == '_'))) {
    if (n + 1 >= cap)
      return NULL;
    out[n++] = *p++;
  }
  out[n] = '\0';
  return p;
}

static int parse_value(const char *p, const char *end, double *out) {
  char buf[64];
  char *e;
  size_t n = (size_t)(end - p);
  if (n == 0 || n >= sizeof buf)
    return -1;
  memcpy(buf, p, n);
  buf[n] = '\0';
  if (strcmp(buf, "+Inf") == 0) {
    *out = INFINITY;
    return 0;
  }
  if (strcmp(buf, "-Inf") == 0) {
    *out = -INFINITY;
    return 0;
  }
  if (strcmp(buf, "NaN") == 0) {
    *out = NAN;
    return 0;
  }
  if (!(isdigit((unsigned char)buf[0]) || buf[0] == '-' || buf[0] == '+' ||
        buf[0] == '.'))
    return -1;
  *out = strtod(buf, &e);
  return *e == '\0' ? 0 : -1;
}

static struct family *family_of(struct expo *x, const char *sample_name) {
  static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
  for (size_t i = 0; i < x->nf; i++)
    if (strcmp(x->f[i].name, sample_name) == 0)
      return &x->f[i];
  for (size_t k = 0; k < 3; k++) {
    size_t ls = strlen(suffixes[k]), ln = strlen(sample_name);
    if (ln <= ls || strcmp(sample_name + ln - ls, suffixes[k]) != 0)
      continue;
    for (size_t i = 0; i < x->nf; i++)
      if (strlen(x->f[i].name) == ln - ls &&
          strncmp(x->f[i].name, sample_name, ln - ls) == 0 &&
          (strcmp(x->f[i].type, "histogram") == 0 ||
           strcmp(x->f[i].type, "summary") == 0))
        return &x->f[i];
  }
  return NULL;
}

/* Parses one sample line [p, end); returns NULL or an error message. */
static const char *parse_sample(const char *p, const char *end,
                                struct sample *s) {
  memset(s, 0, sizeof *s);
  p = parse_name(p, end, s->name, sizeof s->name, 1);
  if (p == NULL)
    return "bad metric name";
  if (p < end && *p == '{') {
    p++;
    while (p < end && *p != '}') {
      size_t n = 0;
      if (s->nlabels == MAX_LABELS)
        return "too many labels";
      p = parse_name(p, end, s->lname[s->nlabels], 32, 0);
      if (p == NULL)
        return "bad label name";
      if (end - p < 2 || p[0] != '=' || p[1] != '"')
        return "label without =\"";
      p += 2;
      for (;;) {
        char c;
        if (p >= end)
          return "unterminated label value";
        c = *p++;
        if (c == '"')
          break;
        if (c == '\\') {
          if (p >= end)
            return "dangling backslash";
          c = *p++;
          if (c == 'n')
            c = '\n';
          else if (c != '\\' && c != '"')
            return "bad escape in label value";
        }
        if (n + 1 >= sizeof s->lval[0])
          return "label value too long";
        s->lval[s->nlabels][n++] = c;
      }
      s->lval[s->nlabels][n] = '\0';
      for (int k = 0; k < s->nlabels; k++)
        if (strcmp(s->lname[k], s->lname[s->nlabels]) == 0)
          return "repeated label name";
      s->nlabels++;
      if (p < end && *p == ',')
        p++;
      else if (p < end && *p != '}')
        return "junk between labels";
    }
    if (p >= end)
      return "unterminated label set";
    p++; /* '}' */
  }
  if (p >= end || *p != ' ')
    return "no space before the value";
  p++;
  {
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    const char *vend = sp ? sp : end;
    if (parse_value(p, vend, &s->value) != 0)
      return "bad value";
    if (sp != NULL) { /* optional timestamp: an integer */
      const char *t = sp + 1;
      if (t >= end)
        return "trailing space";
      if (*t == '-')
        t++;
      if (t >= end)
        return "bad timestamp";
      for (; t < end; t++)
        if (!isdigit((unsigned char)*t))
          return "bad timestamp";
    }
  }
  return NULL;
}

/* Parses the whole exposition; fails the test on the first bad line. */
static void parse_expo(const char *text, size_t len, struct expo *x) {
  const char *p = text, *end = text + len;
  int lineno = 0;
  struct family *current = NULL;

  memset(x, 0, sizeof *x);
  x->s = t_alloc((size_t)(MAX_SAMPLES) * (sizeof *x->s));
  assert_non_null(x->s);
  if (len == 0 || text[len - 1] != '\n')
    fail_msg("exposition does not end with a newline");
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    lineno++;
    if (le == p)
      fail_msg("line %d is empty", lineno);
    if (*p == '#') {
      char kw[8] = "", name[128];
      const char *q = p + 1;
      if (q < le && *q == ' ')
        q++;
      if (le - q >= 5 && memcmp(q, "HELP ", 5) == 0)
        strcpy(kw, "HELP");
      else if (le - q >= 5 && memcmp(q, "TYPE ", 5) == 0)
        strcpy(kw, "TYPE");
      if (kw[0] != '\0') {
        q += 5;
        q = parse_name(q, le, name, sizeof name, 1);
        if (q == NULL)
          fail_msg("line %d: bad name in # %s", lineno, kw);
        if (strcmp(kw, "TYPE") == 0) {
          char type[16];
          size_t tl = (size_t)(le - q);
          if (tl < 2 || *q != ' ' || tl - 1 >= sizeof type)
            fail_msg("line %d: bad TYPE line", lineno);
          memcpy(type, q + 1, tl - 1);
          type[tl - 1] = '\0';
          if (strcmp(type, "counter") && strcmp(type, "gauge") &&
              strcmp(type, "histogram") && strcmp(type, "summary") &&
              strcmp(type, "untyped"))
            fail_msg("line %d: unknown type %s", lineno, type);
          for (size_t i = 0; i < x->nf; i++)
            if (strcmp(x->f[i].name, name) == 0)
              fail_msg("line %d: second TYPE for %s", lineno, name);
          assert_true(x->nf < MAX_FAMILIES);
          snprintf(x->f[x->nf].name, sizeof x->f[0].name, "%s", name);
          snprintf(x->f[x->nf].type, sizeof x->f[0].type, "%s", type);
          x->nf++;
        } else if (q < le && *q != ' ') {
          fail_msg("line %d: bad HELP line", lineno);
        }
      }
    } else {
      struct sample *s;
      struct family *f;
      const char *err;
      if (x->ns == MAX_SAMPLES)
        fail_msg("more than %d samples", MAX_SAMPLES);
      s = &x->s[x->ns];
      err = parse_sample(p, le, s);
      if (err != NULL)
        fail_msg("line %d: %s: %.*s", lineno, err, (int)(le - p), p);
      f = family_of(x, s->name);
      if (f == NULL)
        fail_msg("line %d: sample %s before (or without) its # TYPE", lineno,
                 s->name);
      if (f->closed)
        fail_msg("line %d: family %s is split (its samples are not "
                 "together)",
                 lineno, f->name);
      if (current != NULL && current != f)
        current->closed = 1;
      current = f;
      f->has_samples = 1;
      /* No duplicate series. */
      for (size_t i = 0; i < x->ns; i++) {
        const struct sample *o = &x->s[i];
        int same = strcmp(o->name, s->name) == 0 && o->nlabels == s->nlabels;
        for (int a = 0; same && a < s->nlabels; a++) {
          int found = 0;
          for (int b = 0; b < o->nlabels; b++)
            if (strcmp(s->lname[a], o->lname[b]) == 0 &&
                strcmp(s->lval[a], o->lval[b]) == 0)
              found = 1;
          same = found;
        }
        if (same)
          fail_msg("line %d: duplicate series %.*s", lineno, (int)(le - p), p);
      }
      x->ns++;
    }
    p = nl ? nl + 1 : end;
  }
}

static const char *label(const struct sample *s, const char *name) {
  for (int i = 0; i < s->nlabels; i++)
    if (strcmp(s->lname[i], name) == 0)
      return s->lval[i];
  return NULL;
}

/* Does s have name `name` and every given label=value pair? */
static int matches(const struct sample *s, const char *name,
                   const char *const *kv) {
  if (strcmp(s->name, name) != 0)
    return 0;
  for (; kv[0] != NULL; kv += 2) {
    const char *v = label(s, kv[0]);
    if (v == NULL || strcmp(v, kv[1]) != 0)
      return 0;
  }
  return 1;
}

/* The value of the one sample that matches; fails when none or several. */
static double value_of(const struct expo *x, const char *name,
                       const char *const *kv) {
  const struct sample *hit = NULL;
  int n = 0;
  for (size_t i = 0; i < x->ns; i++)
    if (matches(&x->s[i], name, kv)) {
      hit = &x->s[i];
      n++;
    }
  if (n != 1)
    fail_msg("%d samples of %s{%s=%s,...}, want exactly 1", n, name,
             kv[0] ? kv[0] : "", kv[0] ? kv[1] : "");
  return hit->value;
}

static const struct family *family(const struct expo *x, const char *name) {
  for (size_t i = 0; i < x->nf; i++)
    if (strcmp(x->f[i].name, name) == 0)
      return &x->f[i];
  fail_msg("no # TYPE for family %s", name);
  return NULL;
}

/* ---- fixture data ---------------------------------------------------- */

/* Latencies recorded per upstream of route A, in microseconds. */
static const uint64_t stable_lat[] = {1100, 2100, 3100};
static const uint64_t canary_lat[] = {510000, 700};

static void fill(struct test_fx *fx, int *ra, int *rb) {
  struct canary_table t;
  const uint32_t wa[2] = {7500, 2500};
  const uint32_t wb[1] = {10000};

  *ra = canary_route_claim(fx->seg, "svc-a", 5, weird_label,
                           strlen(weird_label));
  assert_true(*ra >= 0);
  test_table(&t, "u", 2, wa);
  strcpy(t.names[0], "stable");
  strcpy(t.names[1], "canary");
  assert_int_equal(canary_route_publish(fx->seg, *ra, &t, 1, NULL, NULL, 0),
                   0);
  assert_int_equal(canary_route_record(fx->seg, *ra, 0, stable_lat[0], 200,
                                       CANARY_TRACE_GENERATED),
                   0);
  assert_int_equal(canary_route_record(fx->seg, *ra, 0, stable_lat[1], 200,
                                       CANARY_TRACE_GENERATED),
                   0);
  assert_int_equal(canary_route_record(fx->seg, *ra, 0, stable_lat[2], 204,
                                       CANARY_TRACE_CLIENT),
                   0);
  assert_int_equal(
      canary_route_record(fx->seg, *ra, 1, canary_lat[0], 500, -1), 0);
  assert_int_equal(canary_route_record(fx->seg, *ra, 1, canary_lat[1], 404,
                                       CANARY_TRACE_TRACEPARENT),
                   0);

  *rb = canary_route_claim(fx->seg, "svc-b", 5, "svc-b", 5);
  assert_true(*rb >= 0);
  test_table(&t, "only", 1, wb);
  assert_int_equal(canary_route_publish(fx->seg, *rb, &t, 2, NULL, NULL, 0),
                   0);
  /* A claimed route that never got a table: must not break the output. */
  assert_true(canary_route_claim(fx->seg, "svc-c", 5, "c", 1) >= 0);
}

static char *render(canary_seg_t *seg, size_t *len) {
  size_t cap = 1024, need = 0;
  char *buf = NULL;
  for (int tries = 0; tries < 6; tries++) {
    int rc;
    buf = t_realloc(buf, cap);
    assert_non_null(buf);
    rc = canary_prom_render(seg, buf, cap, &need);
    if (rc == 0) {
      assert_true(need <= cap);
      *len = need;
      return buf;
    }
    assert_int_equal(rc, CANARY_ENOSPC);
    assert_true(need > cap);
    cap = need + 1;
  }
  fail_msg("render never fit");
  return NULL;
}

/* ---- tests ------------------------------------------------------------ */

static void prom_too_small_buffer_reports_the_length(void **state) {
  struct test_fx *fx = *state;
  char small[64];
  size_t need = 0, len = 0;
  char *buf;
  int ra, rb, rc;

  fill(fx, &ra, &rb);
  assert_true(canary_prom_render(NULL, small, sizeof small, &need) < 0);
  assert_true(canary_prom_render(fx->seg, small, sizeof small, NULL) < 0);

  memset(small, 0x5a, sizeof small);
  rc = canary_prom_render(fx->seg, small, 16, &need);
  assert_int_equal(rc, CANARY_ENOSPC);
  assert_true(need > 16);
  for (size_t i = 16; i < sizeof small; i++)
    if ((unsigned char)small[i] != 0x5a)
      fail_msg("render wrote byte %zu of a 16-byte buffer", i);
  need = 0;
  assert_int_equal(canary_prom_render(fx->seg, small, 0, &need),
                   CANARY_ENOSPC);
  assert_true(need > 0);

  /* Growing to the reported length (repeatedly, if it said "so far")
   * succeeds; the final length fits. */
  buf = render(fx->seg, &len);
  assert_true(len > 16);
  /* Exactly the reported length is enough. */
  {
    char *exact = t_alloc(len);
    size_t len2 = 0;
    assert_non_null(exact);
    assert_int_equal(canary_prom_render(fx->seg, exact, len, &len2), 0);
    assert_int_equal(len2, len);
    assert_memory_equal(exact, buf, len);
    t_free(exact);
  }
  t_free(buf);
}

static void prom_every_line_is_valid(void **state) {
  struct test_fx *fx = *state;
  struct expo x;
  size_t len;
  char *buf;
  int ra, rb;

  /* Empty segment first: nothing claimed, so no route series; only the
   * segment's pool gauges. */
  buf = render(fx->seg, &len);
  if (len > 0) {
    parse_expo(buf, len, &x);
    for (size_t i = 0; i < x.ns; i++)
      assert_null(label(&x.s[i], "route"));
    t_free(x.s);
  }
  t_free(buf);

  fill(fx, &ra, &rb);
  buf = render(fx->seg, &len);
  parse_expo(buf, len, &x);
  assert_true(x.ns > 20);
  t_free(x.s);
  t_free(buf);
}

static void prom_families_and_values(void **state) {
  struct test_fx *fx = *state;
  struct expo x;
  size_t len;
  char *buf;
  int ra, rb;

  fill(fx, &ra, &rb);
  buf = render(fx->seg, &len);
  parse_expo(buf, len, &x);

  assert_string_equal(family(&x, "canary_requests_total")->type, "counter");
  assert_string_equal(family(&x, "canary_upstream_latency_seconds")->type,
                      "histogram");
  assert_string_equal(family(&x, "canary_upstream_weight")->type, "gauge");
  assert_string_equal(family(&x, "canary_trace_ids_total")->type, "counter");
  {
    /* DESIGN.md calls them gauges; a summary (quantile samples plus _sum
     * and _count) is the Prometheus type made for them.  Either works. */
    const char *qt =
        family(&x, "canary_upstream_latency_quantile_seconds")->type;
    if (strcmp(qt, "gauge") != 0 && strcmp(qt, "summary") != 0)
      fail_msg("quantile family has type %s", qt);
  }

  /* Requests by status class. */
  {
    const char *s2[] = {"route",  weird_label, "upstream", "stable",
                        "status", "2xx",       NULL};
    const char *c5[] = {"route",  weird_label, "upstream", "canary",
                        "status", "5xx",       NULL};
    const char *c4[] = {"route",  weird_label, "upstream", "canary",
                        "status", "4xx",       NULL};
    assert_true(value_of(&x, "canary_requests_total", s2) == 3);
    assert_true(value_of(&x, "canary_requests_total", c5) == 1);
    assert_true(value_of(&x, "canary_requests_total", c4) == 1);
  }

  /* Effective weights as fractions. */
  {
    const char *ws[] = {"route", weird_label, "upstream", "stable", NULL};
    const char *wc[] = {"route", weird_label, "upstream", "canary", NULL};
    const char *wb[] = {"route", "svc-b", "upstream", "only0", NULL};
    assert_true(fabs(value_of(&x, "canary_upstream_weight", ws) - 0.75) <
                1e-9);
    assert_true(fabs(value_of(&x, "canary_upstream_weight", wc) - 0.25) <
                1e-9);
    assert_true(fabs(value_of(&x, "canary_upstream_weight", wb) - 1.0) < 1e-9);
  }

  /* Trace id sources, per route. */
  {
    const char *g[] = {"route", weird_label, "source", "generated", NULL};
    const char *c[] = {"route", weird_label, "source", "client", NULL};
    const char *t[] = {"route", weird_label, "source", "traceparent", NULL};
    assert_true(value_of(&x, "canary_trace_ids_total", g) == 2);
    assert_true(value_of(&x, "canary_trace_ids_total", c) == 1);
    assert_true(value_of(&x, "canary_trace_ids_total", t) == 1);
  }

  /* Quantile gauges: within 1 % of the nearest-rank value. */
  {
    const char *q50[] = {"route",    weird_label, "upstream", "stable",
                         "quantile", "0.5",       NULL};
    const char *q99[] = {"route",    weird_label, "upstream", "stable",
                         "quantile", "0.99",      NULL};
    double v50 = value_of(&x, "canary_upstream_latency_quantile_seconds", q50);
    double v99 = value_of(&x, "canary_upstream_latency_quantile_seconds", q99);
    assert_true(fabs(v50 - 0.0021) <= 0.0021 * 0.01 + 1e-6);
    assert_true(fabs(v99 - 0.0031) <= 0.0031 * 0.01 + 1e-6);
  }
  t_free(x.s);
  t_free(buf);
}

/* Checks one (route, upstream) histogram against the recorded values. */
static void check_histogram(const struct expo *x, const char *route,
                            const char *upstream, const uint64_t *lat,
                            size_t n, double *les, size_t *nles) {
  const char *kv[] = {"route", route, "upstream", upstream, NULL};
  double prev_le = -1, prev_count = 0, sum_s = 0;
  size_t k = 0;
  int saw_inf = 0;

  for (size_t i = 0; i < n; i++)
    sum_s += (double)lat[i] / 1e6;
  for (size_t i = 0; i < x->ns; i++) {
    const struct sample *s = &x->s[i];
    const char *le;
    double lev;
    size_t at_most = 0, surely = 0;
    char *e;
    if (!matches(s, "canary_upstream_latency_seconds_bucket", kv))
      continue;
    le = label(s, "le");
    assert_non_null(le);
    assert_false(saw_inf); /* +Inf is the last bucket */
    if (strcmp(le, "+Inf") == 0) {
      saw_inf = 1;
      lev = INFINITY;
    } else {
      lev = strtod(le, &e);
      assert_true(*e == '\0' && lev > 0);
      if (*nles == 0 || k >= *nles)
        les[k] = lev;
      else if (les[k] != lev)
        fail_msg("le boundaries differ between series (%g vs %g): "
                 "sum by (le) across upstreams or nodes breaks",
                 les[k], lev);
      k++;
    }
    if (!(lev > prev_le))
      fail_msg("le %s not above the previous %g", le, prev_le);
    if (s->value < prev_count)
      fail_msg("bucket le=%s count %g below the previous %g", le, s->value,
               prev_count);
    /* Cumulative counts against the data: exact to one histogram bucket
     * (1/64) around the boundary. */
    for (size_t j = 0; j < n; j++) {
      double v = (double)lat[j] / 1e6;
      if (v <= lev * (1.0 + 1.0 / 64))
        at_most++;
      if (v <= lev / (1.0 + 1.0 / 64))
        surely++;
    }
    if (s->value > (double)at_most || s->value < (double)surely)
      fail_msg("%s/%s bucket le=%s has %g, want %zu..%zu", route, upstream, le,
               s->value, surely, at_most);
    prev_le = lev;
    prev_count = s->value;
  }
  if (!saw_inf)
    fail_msg("%s/%s: no le=\"+Inf\" bucket", route, upstream);
  if (*nles == 0)
    *nles = k;
  else
    assert_int_equal(k, *nles);
  assert_true(prev_count == (double)n);
  assert_true(value_of(x, "canary_upstream_latency_seconds_count", kv) ==
              prev_count);
  assert_true(fabs(value_of(x, "canary_upstream_latency_seconds_sum", kv) -
                   sum_s) <= 1e-6 + sum_s * 1e-9);
}

static void prom_histogram_buckets(void **state) {
  struct test_fx *fx = *state;
  struct expo x;
  double les[256];
  size_t nles = 0, len;
  char *buf;
  int ra, rb;

  fill(fx, &ra, &rb);
  buf = render(fx->seg, &len);
  parse_expo(buf, len, &x);
  check_histogram(&x, weird_label, "stable", stable_lat, 3, les, &nles);
  check_histogram(&x, weird_label, "canary", canary_lat, 2, les, &nles);
  check_histogram(&x, "svc-b", "only0", NULL, 0, les, &nles);
  assert_true(nles >= 5);
  /* Useful boundaries for a web service: some below 5 ms, some above 1 s. */
  assert_true(les[0] <= 0.005);
  assert_true(les[nles - 1] >= 1.0);
  t_free(x.s);
  t_free(buf);
}

static void prom_escapes_route_labels(void **state) {
  struct test_fx *fx = *state;
  struct expo x;
  size_t len;
  char *buf, *text;
  int ra, rb, seen = 0;

  fill(fx, &ra, &rb);
  buf = render(fx->seg, &len);
  text = t_alloc(len + 1);
  assert_non_null(text);
  memcpy(text, buf, len);
  text[len] = '\0';
  /* Escaped exactly as the format says. */
  assert_non_null(strstr(text, "route=\"we\\\"ird\\\\route\\nx\""));
  /* And the raw label never appears (it would end a line early). */
  assert_null(strstr(text, "ird\\route\nx"));
  parse_expo(buf, len, &x);
  for (size_t i = 0; i < x.ns; i++) {
    const char *r = label(&x.s[i], "route");
    if (r != NULL && strcmp(r, weird_label) == 0)
      seen++;
  }
  assert_true(seen > 10);

  /* Other control bytes in a label cannot break a line either. */
  assert_int_equal(
      canary_route_claim(fx->seg, "svc-a", 5, "tab\there\rcr", 12), ra);
  t_free(x.s);
  t_free(buf);
  t_free(text);
  buf = render(fx->seg, &len);
  parse_expo(buf, len, &x);
  t_free(x.s);
  t_free(buf);
}

static void prom_many_routes_and_upstreams(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *big = NULL;
  char path[PATH_MAX];
  struct expo x;
  size_t len;
  char *buf;
  uint64_t rs = 3;

  test_path(path, sizeof path, fx->dir, "big.seg");
  assert_int_equal(test_seg_open(&big, path, 6, 16, 0, NULL, 0),
                   CANARY_SEG_CREATED);
  for (int r = 0; r < 6; r++) {
    struct canary_table t;
    uint32_t w[16];
    char key[32];
    int idx;
    for (int i = 0; i < 16; i++)
      w[i] = 625;
    snprintf(key, sizeof key, "route-%d", r);
    idx = canary_route_claim(big, key, strlen(key), key, strlen(key));
    assert_true(idx >= 0);
    test_table(&t, "up", 16, w);
    assert_int_equal(canary_route_publish(big, idx, &t, 1, NULL, NULL, 0), 0);
    for (int i = 0; i < 2000; i++)
      assert_int_equal(
          canary_route_record(big, idx, (int)test_rand_below(&rs, 16),
                              test_rand_below(&rs, 200000000),
                              100 + (int)test_rand_below(&rs, 500),
                              (int)test_rand_below(&rs, 5) - 1),
          0);
  }
  buf = render(big, &len);
  parse_expo(buf, len, &x);
  for (size_t i = 0; i < x.ns; i++) {
    /* +Inf == _count for every series. */
    const struct sample *s = &x.s[i];
    const char *const inf[] = {"le", "+Inf", NULL};
    if (matches(s, "canary_upstream_latency_seconds_bucket", inf)) {
      const char *kv[] = {"route", label(s, "route"), "upstream",
                          label(s, "upstream"), NULL};
      assert_true(value_of(&x, "canary_upstream_latency_seconds_count", kv) ==
                  s->value);
    }
  }
  t_free(x.s);
  t_free(buf);
  test_seg_close(big);
}

/* Route "<prefix>-<r>" claimed and published with two upstreams, up0
 * and up1, weighted w[0] and w[1]. */
static int two_upstream_route(canary_seg_t *seg, const char *prefix, int r,
                              const uint32_t w[2]) {
  struct canary_table t;
  char key[32];
  int idx;
  snprintf(key, sizeof key, "%s-%02d", prefix, r);
  idx = canary_route_claim(seg, key, strlen(key), key, strlen(key));
  assert_true(idx >= 0);
  test_table(&t, "up", 2, w);
  assert_int_equal(canary_route_publish(seg, idx, &t, 1, NULL, NULL, 0), 0);
  return idx;
}

/* 40 routes x 2 upstreams with data, in their own segment. */
static canary_seg_t *forty_routes(struct test_fx *fx) {
  canary_seg_t *seg = NULL;
  char path[PATH_MAX];
  uint64_t rs = 11;

  test_path(path, sizeof path, fx->dir, "forty.seg");
  assert_int_equal(test_seg_open(&seg, path, 40, 2, 0, NULL, 0),
                   CANARY_SEG_CREATED);
  for (int r = 0; r < 40; r++) {
    const uint32_t w[2] = {9000, 1000};
    int idx = two_upstream_route(seg, "route", r, w);
    for (int i = 0; i < 200; i++)
      assert_int_equal(
          canary_route_record(seg, idx, i % 2, test_rand_below(&rs, 3000000),
                              i % 17 ? 200 : 503, i % 4),
          0);
  }
  return seg;
}

/* Latency shapes that put the quantile ranks and `le` boundaries in
 * awkward places: nothing, one sample, two modes with empty blocks
 * between, one bucket only, values past the top bucket, ranks exactly on
 * boundaries, p50 and p95 in one `le` range, and random spreads.  The
 * second mode of shape 2 (2^21 us) is the first bucket of its block. */
static void record_shape(canary_seg_t *seg, int route, int up, int shape,
                         uint64_t *rs) {
  static const uint64_t on_bounds[][2] = {
      {1000, 50}, {2500, 45}, {5000, 4}, {10000, 1}};
  switch (shape) {
  case 0:
    return; /* nothing: quantiles 0 */
  case 1:
    assert_int_equal(canary_route_record(seg, route, up,
                                         1 + test_rand_below(rs, 5000000), 200,
                                         -1),
                     0);
    return;
  case 2:
    for (int i = 0; i < 100; i++)
      assert_int_equal(
          canary_route_record(seg, route, up, i < 97 ? 50 : 1u << 21, 200, -1),
          0);
    return;
  case 3:
    for (int i = 0; i < 50; i++)
      assert_int_equal(canary_route_record(seg, route, up, 20000, 200, -1), 0);
    return;
  case 4:
    for (int i = 0; i < 20; i++)
      assert_int_equal(canary_route_record(seg, route, up,
                                           i % 2 ? 1000 : 500000000, 200, -1),
                       0);
    return;
  case 5:
    for (size_t k = 0; k < 4; k++)
      for (uint64_t i = 0; i < on_bounds[k][1]; i++)
        assert_int_equal(
            canary_route_record(seg, route, up, on_bounds[k][0], 200, -1), 0);
    return;
  case 6:
    for (int i = 0; i < 100; i++)
      assert_int_equal(
          canary_route_record(seg, route, up, i < 60 ? 20000 : 24000, 200, -1),
          0);
    return;
  default:
    /* Log-uniform from 1 us to about 300 s. */
    for (int i = 0; i < 150; i++) {
      double e = (double)test_rand_below(rs, 1000000) / 1000000.0 * 19.5;
      assert_int_equal(
          canary_route_record(seg, route, up, (uint64_t)exp2(e), 200, -1), 0);
    }
  }
}

/* Every quantile the exposition shows is exactly the bucket
 * canary_hist_summarize() finds, and every cumulative `le` count exactly
 * the buckets that start at or below the boundary, for each shape, over
 * more rows than one step reads. */
static void prom_quantiles_and_buckets_are_exact(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = NULL;
  char path[PATH_MAX];
  struct expo x;
  uint64_t rs = 5;
  size_t len, checked = 0;
  int idx[40];
  char *buf;

  test_path(path, sizeof path, fx->dir, "shapes.seg");
  assert_int_equal(test_seg_open(&seg, path, 40, 2, 0, NULL, 0),
                   CANARY_SEG_CREATED);
  for (int r = 0; r < 40; r++) {
    const uint32_t w[2] = {5000, 5000};
    idx[r] = two_upstream_route(seg, "shape", r, w);
    record_shape(seg, idx[r], 0, r % 9, &rs);
    record_shape(seg, idx[r], 1, (r / 9 + r) % 9, &rs);
  }
  buf = render(seg, &len);
  parse_expo(buf, len, &x);
  for (int r = 0; r < 40; r++) {
    for (int up = 0; up < 2; up++) {
      static const char *const qn[3] = {"0.5", "0.95", "0.99"};
      struct canary_hist_snapshot snap;
      struct canary_hist_summary sum;
      double want[3];
      char route[32], upstream[32];
      const char *kv[] = {"route", route, "upstream", upstream, NULL};
      size_t les = 0;
      snprintf(route, sizeof route, "shape-%02d", r);
      snprintf(upstream, sizeof upstream, "up%d", up);
      assert_int_equal(canary_hist_snapshot(seg, idx[r], up, &snap), 0);
      assert_int_equal(canary_hist_summarize(&snap, NULL, &sum), 0);
      want[0] = sum.p50_us;
      want[1] = sum.p95_us;
      want[2] = sum.p99_us;
      for (int q = 0; q < 3; q++) {
        const char *kq[] = {"route",    route, "upstream", upstream,
                            "quantile", qn[q], NULL};
        double v =
            value_of(&x, "canary_upstream_latency_quantile_seconds", kq);
        if (fabs(v * 1e6 - want[q]) > 1e-3)
          fail_msg("%s/%s quantile %s: %.7f s, summary says %.1f us", route,
                   upstream, qn[q], v, want[q]);
      }
      for (size_t i = 0; i < x.ns; i++) {
        const struct sample *s = &x.s[i];
        const char *le;
        uint64_t want_n = 0;
        if (!matches(s, "canary_upstream_latency_seconds_bucket", kv))
          continue;
        le = label(s, "le");
        if (strcmp(le, "+Inf") == 0) {
          want_n = sum.count;
        } else {
          int b = canary_hist_bucket_of((uint64_t)llround(atof(le) * 1e6));
          for (int k = 0; k <= b; k++)
            want_n += snap.buckets[k];
        }
        if (s->value != (double)want_n)
          fail_msg("%s/%s le=%s: %.0f, buckets say %llu", route, upstream, le,
                   s->value, (unsigned long long)want_n);
        les++;
      }
      assert_true(les > 10);
      assert_true(value_of(&x, "canary_upstream_latency_seconds_count", kv) ==
                  (double)sum.count);
      assert_true(
          fabs(value_of(&x, "canary_upstream_latency_seconds_sum", kv) -
               (double)snap.sum_us / 1e6) <= 1e-9 + snap.sum_us * 1e-15);
      checked++;
    }
  }
  assert_int_equal(checked, 80);
  t_free(x.s);
  t_free(buf);
  test_seg_close(seg);
}

/* The scrape in pieces of the smallest allowed size: every piece whole
 * lines within its size, and together exactly the one-go exposition,
 * valid, every family together. */
static void prom_pieces_make_one_valid_exposition(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = forty_routes(fx);
  char *piece = t_alloc(CANARY_PROM_CHUNK_MIN);
  char *whole, *joined;
  size_t len, at = 0, n = 0, pieces = 0;
  canary_prom_t *p = NULL;
  struct expo x;
  int more = 1;

  whole = render(seg, &len);
  joined = t_alloc(len + 1);
  assert_int_equal(canary_prom_begin(seg, &p), 0);
  while (more == 1) {
    more = canary_prom_next(p, piece, CANARY_PROM_CHUNK_MIN, &n);
    assert_true(more == 0 || more == 1);
    assert_true(n <= CANARY_PROM_CHUNK_MIN);
    if (n == 0)
      continue;
    assert_true(piece[n - 1] == '\n'); /* whole lines only */
    assert_true(at + n <= len);
    memcpy(joined + at, piece, n);
    at += n;
    pieces++;
  }
  canary_prom_end(p);
  assert_true(pieces > 4);
  assert_int_equal(at, len);
  assert_memory_equal(joined, whole, len);
  parse_expo(joined, at, &x); /* families contiguous, HELP/TYPE once */
  assert_true(x.ns > 1000);
  t_free(x.s);
  t_free(whole);
  t_free(joined);
  t_free(piece);
  test_seg_close(seg);
}

/* Reading routes is spread over steps too: 80 rows take at least two
 * steps before the first byte is written. */
static void prom_steps_do_bounded_work(void **state) {
  struct test_fx *fx = *state;
  canary_seg_t *seg = forty_routes(fx);
  char *piece = t_alloc(CANARY_PROM_CHUNK_MIN);
  canary_prom_t *p = NULL;
  size_t n = 0;
  int silent = 0, rc;

  assert_int_equal(canary_prom_begin(seg, &p), 0);
  while ((rc = canary_prom_next(p, piece, CANARY_PROM_CHUNK_MIN, &n)) == 1 &&
         n == 0)
    silent++;
  assert_int_equal(rc, 1);
  assert_true(silent >= 1); /* 80 rows: 64, then 16 with the first bytes */
  canary_prom_end(p);

  /* Misuse: a buffer below the minimum, NULLs. */
  assert_int_equal(canary_prom_begin(seg, &p), 0);
  assert_int_equal(canary_prom_next(p, piece, CANARY_PROM_CHUNK_MIN - 1, &n),
                   CANARY_EINVAL);
  assert_int_equal(canary_prom_next(p, NULL, CANARY_PROM_CHUNK_MIN, &n),
                   CANARY_EINVAL);
  assert_int_equal(canary_prom_next(NULL, piece, CANARY_PROM_CHUNK_MIN, &n),
                   CANARY_EINVAL);
  canary_prom_end(p);
  canary_prom_end(NULL);
  assert_int_equal(canary_prom_begin(NULL, &p), CANARY_EINVAL);
  assert_int_equal(canary_prom_begin(seg, NULL), CANARY_EINVAL);
  t_free(piece);
  test_seg_close(seg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(prom_too_small_buffer_reports_the_length,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(prom_every_line_is_valid, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(prom_families_and_values, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(prom_histogram_buckets, setup, teardown),
      cmocka_unit_test_setup_teardown(prom_escapes_route_labels, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(prom_pieces_make_one_valid_exposition,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(prom_steps_do_bounded_work, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(prom_many_routes_and_upstreams, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(prom_quantiles_and_buckets_are_exact,
                                      setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
