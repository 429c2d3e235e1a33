/*
 * gen_seeds.c - writes the seed corpora and the regression inputs.
 *
 *   gen_seeds <native/fuzz>   (make fuzz-seeds)
 *
 * Seeds are checked in; this program is how they were made, so that the
 * byte layouts stay next to the input formats they encode (documented at
 * the top of each fuzz_<name>.c) and the segment seed can be remade by
 * the engine when the layout changes.  It is built without sanitizers.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct buf {
  unsigned char *b;
  size_t n, cap;
};

static const char *root;

static void die(const char *what) {
  fprintf(stderr, "gen_seeds: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void put(struct buf *b, const void *p, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2;
    b->b = realloc(b->b, b->cap);
    if (b->b == NULL)
      die("realloc");
  }
  memcpy(b->b + b->n, p, n);
  b->n += n;
}

static void u8(struct buf *b, unsigned v) {
  unsigned char c = (unsigned char)v;
  put(b, &c, 1);
}

static void u16(struct buf *b, unsigned v) {
  u8(b, v & 0xff);
  u8(b, v >> 8 & 0xff);
}

static void u32(struct buf *b, uint32_t v) {
  u16(b, v & 0xffff);
  u16(b, v >> 16);
}

static void str(struct buf *b, const char *s) {
  put(b, s, strlen(s));
}

/* u8 length, then the bytes: the targets' string field. */
static void lstr(struct buf *b, const char *s) {
  u8(b, (unsigned)strlen(s));
  str(b, s);
}

static void save(const char *kind, const char *target, const char *name,
                 struct buf *b) {
  char path[4096];
  FILE *f;

  snprintf(path, sizeof path, "%s/%s", root, kind);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/%s/%s", root, kind, target);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/%s/%s/%s", root, kind, target, name);
  f = fopen(path, "wb");
  if (f == NULL || fwrite(b->b, 1, b->n, f) != b->n || fclose(f) != 0)
    die(path);
  free(b->b);
  memset(b, 0, sizeof *b);
}

/* ---- fuzz_traceparent: the header value as is ------------------------- */

static void text(const char *name, const char *s) {
  struct buf b = {0};
  str(&b, s);
  save("corpus", "fuzz_traceparent", name, &b);
}

static void traceparent_seeds(void) {
  char longid[200];

  /* W3C Trace Context examples and the ways a header goes wrong. */
  text("valid-sampled",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  text("valid-unsampled",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  text("future-version-extra",
       "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-"
       "future-will-not-be-like");
  text("future-version-exact",
       "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  text("bad-future-no-dash",
       "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09xyz");
  text("bad-version-ff",
       "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  text("bad-uppercase",
       "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01");
  text("bad-zero-trace-id",
       "00-00000000000000000000000000000000-00f067aa0ba902b7-01");
  text("bad-zero-parent-id",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01");
  text("bad-v00-trailing",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra");
  text("bad-short-flags",
       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1");
  text("bad-separator",
       "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01");
  text("bad-non-hex",
       "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01");
  text("x-trace-id-ok", "req-7f3a.B_c:42");
  text("x-trace-id-injection", "abc\r\nSet-Cookie: x=1");
  memset(longid, 'a', sizeof longid);
  longid[CANARY_TRACE_HEADER_MAX] = '\0';
  text("x-trace-id-128", longid);
  longid[CANARY_TRACE_HEADER_MAX] = 'a';
  longid[CANARY_TRACE_HEADER_MAX + 1] = '\0';
  text("x-trace-id-129", longid);
}

/* ---- fuzz_weights ------------------------------------------------------ */

struct wseed {
  unsigned flags, n, mu;
  uint32_t w[CANARY_MAX_UPSTREAMS];
  const char *names[CANARY_MAX_UPSTREAMS];
  unsigned m; /* flags & 8 */
  uint32_t eff[CANARY_MAX_UPSTREAMS];
  unsigned which, amount; /* flags & 32 */
  const char *keys[4];
};

static void weights(const char *kind, const char *name,
                    const struct wseed *s) {
  struct buf b = {0};
  u8(&b, s->flags);
  if (s->flags & 2)
    u32(&b, s->n);
  else
    u8(&b, s->n);
  u8(&b, s->mu);
  for (int i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
    if (s->flags & 1)
      u32(&b, s->w[i]);
    else
      u16(&b, s->w[i]);
  }
  for (int i = 0; i < CANARY_MAX_UPSTREAMS; i++)
    lstr(&b, s->names[i] ? s->names[i] : "");
  if (s->flags & 8) {
    u8(&b, s->m);
    for (unsigned i = 0; i < s->m; i++)
      u16(&b, s->eff[i]);
  }
  if (s->flags & 32) {
    u8(&b, s->which);
    u16(&b, s->amount);
  }
  for (int i = 0; i < 4 && s->keys[i]; i++)
    lstr(&b, s->keys[i]);
  save(kind, "fuzz_weights", name, &b);
}

static void weights_seeds(void) {
  static char names16[CANARY_MAX_UPSTREAMS][8];
  struct wseed s;

  /* The runbook's release: stable 90 %, canary 10 %. */
  memset(&s, 0, sizeof s);
  s.n = 2;
  s.mu = 16;
  s.w[0] = 9000;
  s.w[1] = 1000;
  s.names[0] = "automation-stable";
  s.names[1] = "automation-canary";
  s.keys[0] = "user-1";
  s.keys[1] = "consumer:alice";
  weights("corpus", "valid-90-10", &s);

  /* Then every follow-up check: effective 75/25, full split, raise. */
  s.flags = 8 | 16 | 32;
  s.m = 2;
  s.eff[0] = 7500;
  s.eff[1] = 2500;
  s.which = 0;
  s.amount = 2500;
  weights("corpus", "valid-effective-split-raise", &s);

  /* Invalid ways: sum, weight range, duplicate, charset, lengths. */
  s.flags = 0;
  s.w[1] = 1001;
  weights("corpus", "bad-sum", &s);
  s.w[0] = 0;
  s.w[1] = 10001;
  weights("corpus", "bad-weight-range", &s);
  s.w[0] = 9000;
  s.w[1] = 1000;
  s.names[1] = "automation-stable";
  weights("corpus", "bad-duplicate-name", &s);
  s.names[1] = "can\"ary";
  weights("corpus", "bad-name-quote", &s);
  s.names[1] = "can ary";
  weights("corpus", "bad-name-space", &s);
  s.names[1] =
      "0123456789012345678901234567890123456789012345678901234567890123";
  weights("corpus", "bad-name-64-bytes", &s);
  s.names[1] = "";
  weights("corpus", "bad-name-empty", &s);
  s.names[1] = "automation-canary";
  s.mu = 1;
  weights("corpus", "bad-n-above-max", &s);
  s.mu = 16;
  s.n = 0;
  weights("corpus", "bad-n-zero", &s);
  s.flags = 1 | 2;
  s.n = 2;
  s.w[0] = 0xffffffffu;
  s.w[1] = 10001;
  weights("corpus", "bad-u32-overflow", &s);

  /* Sixteen upstreams at 6.25 % each, every check. */
  memset(&s, 0, sizeof s);
  s.flags = 8 | 16 | 32;
  s.n = 16;
  s.mu = 16;
  s.m = 16;
  for (int i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
    snprintf(names16[i], sizeof names16[i], "u%d", i);
    s.names[i] = names16[i];
    s.w[i] = 625;
    s.eff[i] = i == 0 ? 0 : i == 15 ? 1250 : 625;
  }
  s.which = 3;
  s.amount = 100;
  s.keys[0] = "k";
  weights("corpus", "valid-16", &s);

  /* misaligned-words: any valid publish reported the misaligned copy of
   * table_data.names (table.c canary__store_words/canary__load_words;
   * fixed in 18c1a6a). */
  memset(&s, 0, sizeof s);
  s.n = 1;
  s.mu = 16;
  s.w[0] = 10000;
  s.names[0] = "stable";
  weights("regressions", "misaligned-words", &s);
}

/* ---- fuzz_prom --------------------------------------------------------- */

static void prom_claim(struct buf *b, const char *key, size_t key_len,
                       const char *label, size_t label_len, unsigned pub,
                       unsigned canary_weight, unsigned samples) {
  u8(b, (unsigned)key_len);
  put(b, key, key_len);
  u8(b, (unsigned)label_len);
  put(b, label, label_len);
  u8(b, pub);
  for (unsigned u = 1; u < 1 + (pub & 3) % 3; u++)
    u16(b, canary_weight);
  if (pub & 64)
    for (unsigned u = 0; u < 1 + (pub & 3) % 3; u++) {
      u8(b, 3);
      u8(b, 'a' + u);
      u8(b, '{' - '!');
      u8(b, ',' - '!');
    }
  u8(b, samples);
  for (unsigned k = 0; k < samples; k++) {
    u8(b, k % 3);               /* upstream */
    u32(b, 50u + 997u * k * k); /* latency, us */
    u16(b, k % 7 ? 200 : 503);  /* status */
    u8(b, k % 5 + 1);           /* source 0..4 (4: invalid) */
  }
  u8(b, 3); /* events */
  u8(b, 1); /* override */
  u8(b, 3); /* fallback */
  u8(b, 9); /* 8: invalid */
}

static void prom_seeds(void) {
  static const char tricky[] = "a\"b\\c\nd\re\x01"
                               "f\x7f \xc3\xa9t\xc3\xa9 \xe2\x82\xac} ,=";
  static const char nul_label[] = "before\0after";
  char longlabel[200];
  struct buf b = {0};

  /* Two routes whose labels need every escape, one published with three
   * upstreams, one with one. */
  u8(&b, 2);
  prom_claim(&b, "route-1", 7, tricky, sizeof tricky - 1, 2, 1500, 20);
  prom_claim(&b, "route-2", 7, "plain", 5, 0, 0, 5);
  u16(&b, 100);
  save("corpus", "fuzz_prom", "escapes", &b);

  /* Empty label: the key (with a quote) is the route label. */
  u8(&b, 1);
  prom_claim(&b, "key\"with\\quote", 14, "", 0, 1, 2500, 8);
  u16(&b, 7);
  save("corpus", "fuzz_prom", "key-as-label", &b);

  /* A NUL inside the label, and a label past 127 bytes. */
  memset(longlabel, 'L', sizeof longlabel);
  u8(&b, 2);
  prom_claim(&b, "nul", 3, nul_label, sizeof nul_label - 1, 0, 0, 3);
  prom_claim(&b, "long", 4, longlabel, sizeof longlabel, 1, 5000, 3);
  u16(&b, 1000);
  save("corpus", "fuzz_prom", "nul-and-long-label", &b);

  /* A relabel of an existing key, invalid keys (empty, 64 bytes). */
  u8(&b, 4);
  prom_claim(&b, "r1", 2, "first", 5, 2, 3000, 4);
  prom_claim(&b, "r1", 2, "relabelled\n", 11, 128, 0, 2);
  prom_claim(&b, "", 0, "x", 1, 0, 0, 0);
  prom_claim(
      &b, "0123456789012345678901234567890123456789012345678901234567890123",
      64, "too-long-key", 12, 0, 0, 0);
  u16(&b, 3);
  save("corpus", "fuzz_prom", "relabel-bad-keys", &b);

  /* Six claims: a key with a NUL, four routes (names from the input),
   * and a fifth distinct key for the full segment (EFULL). */
  u8(&b, 6);
  prom_claim(&b, "a\0b", 3, "x", 1, 0, 0, 0);
  prom_claim(&b, "r1", 2, "one", 3, 64 | 2, 3000, 4);
  prom_claim(&b, "r2", 2, "two", 3, 64 | 1, 100, 1);
  prom_claim(&b, "r3", 2, "one", 3, 0, 0, 1);
  prom_claim(&b, "r4", 2, "", 0, 128, 0, 1);
  prom_claim(&b, "r5", 2, "full", 4, 0, 0, 1);
  u16(&b, 0);
  save("corpus", "fuzz_prom", "claims-full", &b);
}

/* ---- fuzz_segment ------------------------------------------------------ */

/* A small segment made by the engine: 1 route, 1 upstream, published,
 * with samples.  Returns its bytes (malloc'd). */
static unsigned char *small_segment(size_t *len) {
  char path[] = "/tmp/canary-seed-XXXXXX", why[256];
  struct canary_table t = {.n = 1, .weights = {10000}};
  canary_seg_t *seg;
  unsigned char *p;
  FILE *f;
  struct stat st;
  int fd = mkstemp(path);

  if (fd < 0)
    die("mkstemp");
  close(fd);
  unlink(path);
  if (canary_seg_open(&seg, path, 1, 1, 0, why, sizeof why) < 0) {
    fprintf(stderr, "gen_seeds: segment: %s\n", why);
    exit(1);
  }
  snprintf(t.names[0], sizeof t.names[0], "stable");
  canary_route_claim(seg, "seed-route", 10, "seed \"route\"", 12);
  canary_route_publish(seg, 0, &t, 1, NULL, NULL, 0);
  for (int i = 0; i < 20; i++)
    canary_route_record(seg, 0, 0, 100u + 311u * (unsigned)i,
                        i % 5 ? 200 : 500, i % 4);
  canary_seg_close(seg);
  if (stat(path, &st) != 0)
    die(path);
  *len = (size_t)st.st_size;
  p = malloc(*len);
  f = fopen(path, "rb");
  if (p == NULL || f == NULL || fread(p, 1, *len, f) != *len)
    die(path);
  fclose(f);
  unlink(path);
  return p;
}

/* mode, clock offset for progression calls, operator action (6: none) */
static void seg_start(struct buf *b, unsigned mode, uint32_t tick_ms) {
  u8(b, mode);
  u32(b, tick_ms);
  u8(b, 6);
}

static void seg_start_action(struct buf *b, uint32_t tick_ms,
                             unsigned action) {
  u8(b, 2);
  u32(b, tick_ms);
  u8(b, action);
}

static void seg_header(struct buf *b, unsigned fix, uint32_t routes,
                       uint32_t ups) {
  struct seg_header h;
  memset(&h, 0, sizeof h);
  h.magic = CANARY_MAGIC;
  h.layout_version = CANARY_LAYOUT_VERSION;
  h.header_bytes = CANARY_HEADER_BYTES;
  h.max_routes = routes;
  h.max_upstreams = ups;
  u8(b, fix);
  put(b, &h, sizeof h);
}

/* mode 2 patch: region/route/upstream selector, offset, bytes. */
static void patch(struct buf *b, unsigned sel, unsigned off, const void *p,
                  size_t n) {
  u8(b, sel);
  u16(b, off);
  u8(b, (unsigned)n - 1);
  put(b, p, n);
}

static void segment_seeds(void) {
  struct buf b = {0};
  size_t len;
  unsigned char *seg = small_segment(&len);
  uint32_t v;

  /* A route slot, a statistics slot and the one progression slot a
   * segment has at least (59 KiB): about 90 KiB. */
  if (len > 128 * 1024)
    fprintf(stderr, "gen_seeds: warning: segment seed is %zu bytes\n", len);
  seg_start(&b, 0, 1000);
  put(&b, seg, len);
  save("corpus", "fuzz_segment", "raw-valid-1x1", &b);

  seg_start(&b, 0, 0);
  put(&b, seg, CANARY_HEADER_BYTES + 100);
  save("corpus", "fuzz_segment", "raw-truncated", &b);

  seg_start(&b, 0, 0);
  str(&b, "# not a canary-router segment\n");
  save("corpus", "fuzz_segment", "raw-foreign", &b);

  seg_start(&b, 0, 0);
  save("corpus", "fuzz_segment", "raw-empty", &b);
  free(seg);

  /* mode 1: header fields with all fixes: a valid, empty segment. */
  seg_start(&b, 1, 0);
  seg_header(&b, 63, 1, 1);
  save("corpus", "fuzz_segment", "header-valid", &b);
  seg_start(&b, 1, 0);
  seg_header(&b, 63 & ~16, 2, 3);
  save("corpus", "fuzz_segment", "header-bad-checksum", &b);
  seg_start(&b, 1, 0);
  seg_header(&b, 63, 65536, 16);
  save("corpus", "fuzz_segment", "header-huge-geometry", &b);
  seg_start(&b, 1, 0);
  seg_header(&b, 63, 0, 17);
  save("corpus", "fuzz_segment", "header-bad-geometry", &b);

  /* mode 2: the start-up template, intact and with route damage. */
  seg_start(&b, 2, 500);
  u8(&b, 0);
  save("corpus", "fuzz_segment", "template", &b);

  seg_start(&b, 2, 500);
  u8(&b, 0);
  v = 99; /* n of both table buffers of route 1 */
  patch(&b, 3 | 1 << 3, (unsigned)offsetof(struct table_buf, n), &v, 4);
  patch(&b, 3 | 1 << 3,
        (unsigned)(sizeof(struct table_buf) + offsetof(struct table_buf, n)),
        &v, 4);
  save("corpus", "fuzz_segment", "template-bad-n", &b);

  seg_start(&b, 2, 500);
  u8(&b, 0);
  v = 1; /* an odd sequence on both buffers: a writer that never ends */
  patch(&b, 3, (unsigned)offsetof(struct table_buf, seq), &v, 1);
  patch(&b, 3,
        (unsigned)(sizeof(struct table_buf) + offsetof(struct table_buf, seq)),
        &v, 1);
  save("corpus", "fuzz_segment", "template-odd-seq", &b);

  seg_start(&b, 2, 500);
  u8(&b, 0);
  v = 7; /* progression state out of range */
  patch(&b, 6, (unsigned)offsetof(struct prog_area, state), &v, 4);
  save("corpus", "fuzz_segment", "template-bad-prog-state", &b);

  seg_start(&b, 2, 500);
  u8(&b, 1); /* routes_used after the checksum: not covered by it */
  v = 0xffffffffu;
  patch(&b, 1, (unsigned)offsetof(struct seg_header, routes_used), &v, 4);
  save("corpus", "fuzz_segment", "template-routes-used", &b);

  /* The template with each operator action (abort, pause, promote). */
  seg_start_action(&b, 500, CANARY_ACT_ABORT);
  u8(&b, 0);
  save("corpus", "fuzz_segment", "template-abort", &b);
  seg_start_action(&b, 0, CANARY_ACT_PAUSE);
  u8(&b, 0);
  save("corpus", "fuzz_segment", "template-pause", &b);
  seg_start_action(&b, 200, CANARY_ACT_PROMOTE_FULL);
  u8(&b, 0);
  save("corpus", "fuzz_segment", "template-promote-full", &b);

  /* ro-pick: any read-only attach; the non-sticky pick used to fault
   * there (fixed in db282fe) and must return CANARY_EREADONLY. */
  seg_start(&b, 2, 0);
  u8(&b, 0);
  save("regressions", "fuzz_segment", "ro-pick", &b);

  /* prog-step: a running progression whose step is 40, past steps[20];
   * the window is due 1 s later.  judge_window() read steps[40] (fixed in
   * fda3850: the tick answers CANARY_ECORRUPT). */
  seg_start(&b, 2, 1000);
  u8(&b, 0);
  v = 40;
  patch(&b, 6, (unsigned)offsetof(struct prog_area, step), &v, 4);
  save("regressions", "fuzz_segment", "prog-step", &b);

  /* prog-canary: route 0 runs a progression with canary upstream 1, but
   * its table (both buffers) says n = 1 with upper[0] = 10000, which
   * reads as a valid one-upstream table.  The due window passes, and
   * step_weights() builds effective weights without the canary's share:
   * the published table sums to 5000 and every later read or pick gets
   * CANARY_ECORRUPT (fixed in fda3850: publish_step refuses the index). */
  seg_start(&b, 2, 1000);
  u8(&b, 0);
  for (unsigned k = 0; k < 2; k++) {
    unsigned base = k * (unsigned)sizeof(struct table_buf);
    v = 1;
    patch(&b, 3, base + (unsigned)offsetof(struct table_buf, n), &v, 4);
    v = CANARY_WEIGHT_SCALE;
    patch(&b, 3, base + (unsigned)offsetof(struct table_buf, upper), &v, 4);
  }
  save("regressions", "fuzz_segment", "prog-canary", &b);

  /* prog-action: route 0's stored progression says its last step
   * (steps[2]) is 20000, above the 10000 scale; a PROMOTE_FULL action
   * publishes it, step_weights() computes 10000 - 20000 in uint32_t, and
   * the table left behind reads as CANARY_ECORRUPT.  (Found by the
   * 120 s campaign on cf44ed5; canary_prog_tick() checks the parameters
   * with canary_prog_check() first, canary_prog_action() does not.) */
  seg_start_action(&b, 0, CANARY_ACT_PROMOTE_FULL);
  u8(&b, 0);
  v = 20000;
  patch(&b, 7,
        (unsigned)(offsetof(struct canary_prog_params, steps) +
                   2 * sizeof(uint32_t)),
        &v, 4);
  save("regressions", "fuzz_segment", "prog-action", &b);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: gen_seeds <native/fuzz directory>\n");
    return 2;
  }
  root = argv[1];
  traceparent_seeds();
  weights_seeds();
  prom_seeds();
  segment_seeds();
  return 0;
}
