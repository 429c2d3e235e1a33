/*
 * fuzz_segment.c - canary_seg_open and every reader on hostile files.
 *
 * The segment file outlives the processes that map it, so the engine
 * must take whatever it finds there: a file from another release, a
 * truncated one, an operator's typo, a bit flip.  The promise (DESIGN.md,
 * canary.h) is: an incompatible or corrupt file is set aside and
 * recreated, never trusted, never crashed on; read-only opens report it
 * and never touch it.  Header damage is caught by the header checks, but
 * route slots are not checksummed, so a file with a valid header can
 * still carry any bytes in its routes; every reader must survive that.
 *
 * Input: u8 mode % 3, u32 clock offset (ms) for progression calls,
 * u8 action % 7 (0..4 a canary_prog_action, 5 an unknown one, 6 none),
 * then by mode:
 *   0  the rest is the whole file;
 *   1  u8 fix flags, then the header fields as bytes (rest of the header
 *      page zero), then the body.  Fix flags set fields the fuzzer would
 *      rarely guess, so the checks behind them are reached:
 *        1 magic  2 layout version  4 header_bytes
 *        8 route_bytes, stat_bytes, prog_bytes, a valid grace period,
 *          max_prog_slots within 1..max_routes, and total_bytes from
 *          max_routes/max_stat_slots/max_prog_slots
 *        16 checksum (computed last)   32 file size = total_bytes
 *      The body is the rest of the input, zero-padded to total_bytes when
 *      flag 32 is set and total_bytes is at most 4 MiB;
 *   2  a valid segment made by the engine at start-up (3 routes of 2
 *      upstreams: one with a running progression, one plain, one free;
 *      samples recorded), then u8 flags (1: recompute the header
 *      checksum at the end), then patches until the input ends:
 *        u8 sel, u16 offset, u8 len % 16 + 1, len bytes
 *      sel & 7 picks a region (0 whole file, 1 header, 2 route header,
 *      3 its table buffers, 4 sequence line, 5 a statistics slot (its
 *      identity, forced counters, stripes and buckets), 6 the area of
 *      progression slot r (route 0 owns slot 0; the others are free), 7
 *      its parameters), (sel >> 3) % 3 the route,
 *      (sel >> 5) & 1 the upstream; the offset is taken modulo the region.
 *      This is what reaches route-level corruption.
 *
 * For each file the target opens it read-only, then read-write, and
 * checks: read-only never creates, never renames and never changes a
 * byte; both modes agree on whether the header is valid; a bad file is
 * renamed to <path>.bad-* with its bytes intact and a fresh segment made;
 * an error always comes with a reason.  On every attached segment it
 * calls, for every route index, canary_route_read, sticky and non-sticky
 * canary_route_pick, canary_hist_snapshot / _summarize on every
 * upstream, canary_prog_status, canary_prog_decisions (entries in order,
 * reasons terminated), and in read-write mode also
 * canary_route_record, canary_route_event, canary_prog_action and
 * canary_prog_tick (neither may leave a table the engine cannot read
 * back); then canary_prom_render, whose output must be well-formed
 * exposition even from corrupt data; and in read-write mode the slot
 * lifecycle over whatever the slots hold: retire every route but one,
 * claim one back, publish a reordered and a renamed table for it.  Errors are allowed; crashes,
 * sanitizer reports and out-of-range results are not.
 */
#include "fuzz_common.h"
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BODY_LIMIT (4u << 20) /* largest file the target will build */

#define T_ROUTES 3
#define T_UPS 2

static unsigned char *tmpl;
static size_t tmpl_len;
static char seg_path[4096];

/* The header checksum as segment.c computes it: FNV-1a over the fields
 * before `checksum` and over the progression pool's geometry.
 * Replicated so that mode 1 and 2 can get past the checksum to the
 * geometry checks behind it. */
static uint64_t header_checksum(const struct seg_header *h) {
  const unsigned char *p = (const unsigned char *)h;
  uint64_t x = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < offsetof(struct seg_header, checksum); i++) {
    x ^= p[i];
    x *= 0x100000001b3ULL;
  }
  for (size_t i = offsetof(struct seg_header, max_prog_slots);
       i < offsetof(struct seg_header, progs_exhausted); i++) {
    x ^= p[i];
    x *= 0x100000001b3ULL;
  }
  return x;
}

static void make_template(void) {
  static const struct canary_prog_params prog = {
      .canary = 1,
      .nsteps = 3,
      .steps = {1000, 5000, 10000},
      .interval_ms = 100,
      .failure_limit = 2,
      .on_success = CANARY_PROG_PROMOTE,
      .judge = {.min_requests = 1,
                .max_error_rate = 0.5,
                .max_p95_us = -1,
                .max_p99_us = -1,
                .max_p95_ratio = -1,
                .max_p99_ratio = 3,
                .max_error_rate_delta = 0.2,
                .rollback_error_rate = 0.9,
                .rollback_p99_ratio = 10,
                .confidence = 0.98,
                .allowed_increase = 0.25},
  };
  struct canary_table t = {.n = 2, .weights = {9000, 1000}};
  canary_seg_t *seg;
  char path[4096], why[256];
  int rc, r0, r1;
  long got;

  snprintf(t.names[0], sizeof t.names[0], "stable");
  snprintf(t.names[1], sizeof t.names[1], "canary");
  fz_path(path, sizeof path, "template.seg");
  rc = canary_seg_open(&seg, path, T_ROUTES, T_UPS, 0, why, sizeof why);
  FZ_CHECK(rc == CANARY_SEG_CREATED, "template: %d %s", rc, why);
  r0 = canary_route_claim(seg, "prog-route", 10, "progressive", 11);
  r1 = canary_route_claim(seg, "plain-route", 11, "", 0);
  FZ_CHECK(r0 == 0 && r1 == 1, "template claims %d %d", r0, r1);
  rc = canary_route_publish_prog(seg, r0, &t, &prog, 1, NULL, why, sizeof why);
  FZ_CHECK(rc == 0, "template publish_prog: %d %s", rc, why);
  rc = canary_route_publish(seg, r1, &t, 2, NULL, why, sizeof why);
  FZ_CHECK(rc == 0, "template publish: %d %s", rc, why);
  for (int i = 0; i < 50; i++)
    for (int r = 0; r < 2; r++)
      for (int u = 0; u < T_UPS; u++)
        canary_route_record(seg, r, u, 100u + 37u * (unsigned)i,
                            i % 10 ? 200 : 503, i % 4);
  canary_route_event(seg, r1, CANARY_EVENT_FALLBACK);
  canary_seg_close(seg);

  tmpl_len = CANARY_HEADER_BYTES + canary__route_bytes() * T_ROUTES +
             canary__stat_bytes() * T_ROUTES * T_UPS +
             canary__prog_bytes() * T_ROUTES;
  tmpl = malloc(tmpl_len);
  FZ_CHECK(tmpl != NULL, "harness: out of memory");
  got = fz_read_file(path, tmpl, tmpl_len);
  FZ_CHECK(got == (long)tmpl_len, "template is %ld bytes, expected %zu", got,
           tmpl_len);
  unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  make_template();
  fz_path(seg_path, sizeof seg_path, "fuzz.seg");
  return 0;
}

/* ---- building the file ------------------------------------------------ */

struct file {
  unsigned char *p;
  size_t len;
};

static void file_from_header(struct fz_in *in, struct file *f) {
  struct seg_header h;
  uint8_t fix = fz_u8(in);
  size_t size = CANARY_HEADER_BYTES + in->n;

  fz_bytes(in, &h, sizeof h);
  if (fix & 1)
    h.magic = CANARY_MAGIC;
  if (fix & 2)
    h.layout_version = CANARY_LAYOUT_VERSION;
  if (fix & 4)
    h.header_bytes = CANARY_HEADER_BYTES;
  if (fix & 8) {
    h.route_bytes = canary__route_bytes();
    h.stat_bytes = canary__stat_bytes();
    h.prog_bytes = canary__prog_bytes();
    if (h.retire_grace_s == 0 || h.retire_grace_s > 86400)
      h.retire_grace_s = CANARY_RETIRE_GRACE_S;
    if (h.max_prog_slots == 0 || h.max_prog_slots > h.max_routes)
      h.max_prog_slots = h.max_routes;
    h.total_bytes = CANARY_HEADER_BYTES +
                    (uint64_t)h.max_routes * h.route_bytes +
                    (uint64_t)h.max_stat_slots * h.stat_bytes +
                    (uint64_t)h.max_prog_slots * h.prog_bytes;
  }
  if (fix & 16)
    h.checksum = header_checksum(&h);
  if ((fix & 32) && h.total_bytes >= size && h.total_bytes <= BODY_LIMIT)
    size = (size_t)h.total_bytes;
  f->len = size;
  f->p = calloc(1, size);
  FZ_CHECK(f->p != NULL, "harness: out of memory");
  memcpy(f->p, &h, sizeof h);
  fz_bytes(in, f->p + CANARY_HEADER_BYTES, in->n);
}

static void region(uint8_t sel, size_t *start, size_t *len) {
  struct canary_seg fake = {
      .base = tmpl,
      .size = tmpl_len,
      .max_routes = T_ROUTES,
      .max_upstreams = T_UPS,
      .route_bytes = canary__route_bytes(),
      .max_stat_slots = T_ROUTES * T_UPS,
      .stat_bytes = canary__stat_bytes(),
      .stat_offset = CANARY_HEADER_BYTES + T_ROUTES * canary__route_bytes(),
      .max_prog_slots = T_ROUTES,
      .prog_bytes = canary__prog_bytes(),
      .prog_offset = CANARY_HEADER_BYTES + T_ROUTES * canary__route_bytes() +
                     T_ROUTES * T_UPS * canary__stat_bytes()};
  uint32_t route = (uint32_t)(sel >> 3) % T_ROUTES;
  uint32_t up = (uint32_t)(sel >> 5) & 1;
  struct route_hdr *r = canary__route(&fake, route);
  struct prog_slot *ps = canary__prog_slot(&fake, route);
  struct prog_area *pa = &ps->area;
  unsigned char *p = tmpl;
  size_t n = tmpl_len;

  switch (sel & 7) {
  case 1:
    n = sizeof(struct seg_header);
    break;
  case 2:
    p = (unsigned char *)r;
    n = sizeof *r;
    break;
  case 3:
    p = (unsigned char *)r->tables;
    n = sizeof r->tables;
    break;
  case 4:
    p = (unsigned char *)canary__route_seq(&fake, route);
    n = sizeof(struct route_seq);
    break;
  case 5:
    /* Slots were handed out in order: route r's upstream u has 2r + u. */
    p = (unsigned char *)canary__stat_slot(&fake, route * T_UPS + up);
    n = sizeof(struct stat_slot);
    break;
  case 6:
    p = (unsigned char *)pa;
    n = sizeof *pa;
    break;
  case 7:
    p = (unsigned char *)&pa->params;
    n = sizeof pa->params;
    break;
  }
  *start = (size_t)(p - tmpl);
  *len = n;
}

static void file_from_template(struct fz_in *in, struct file *f) {
  uint8_t flags = fz_u8(in);

  f->len = tmpl_len;
  f->p = malloc(tmpl_len);
  FZ_CHECK(f->p != NULL, "harness: out of memory");
  memcpy(f->p, tmpl, tmpl_len);
  while (in->n > 0) {
    uint8_t sel = fz_u8(in);
    uint16_t off = fz_u16(in);
    size_t len = fz_u8(in) % 16 + 1, start, n;
    region(sel, &start, &n);
    start += off % n;
    if (start + len > tmpl_len)
      len = tmpl_len - start;
    fz_bytes(in, f->p + start, len);
  }
  if (flags & 1) {
    struct seg_header h;
    memcpy(&h, f->p, sizeof h);
    h.checksum = header_checksum(&h);
    memcpy(f->p, &h, sizeof h);
  }
}

/* ---- exercising an attached segment ----------------------------------- */

static void check_cstr(const char *s, size_t cap, const char *what) {
  FZ_CHECK(memchr(s, '\0', cap) != NULL, "%s is not NUL-terminated", what);
}

/* What the input asks of the progression: an operator action (one of
 * canary_prog_action, one past them to check the EINVAL, or none) and
 * the clock reading for it and for the tick. */
struct prog_input {
  int action;
  double now_us;
};

/* Whatever progression state they find, actions and ticks change weights
 * through the engine's own publish: they must never leave a table that
 * the engine itself refuses to read (every pick would fail). */
static void unreadable_after(const canary_seg_t *seg, int route,
                             int was_readable, const char *what) {
  static struct canary_route_view v;
  int rc;
  if (!was_readable)
    return;
  rc = canary_route_read(seg, route, &v);
  FZ_CHECK(rc == 0, "%s on route %d left an unreadable table (%d)", what,
           route, rc);
}

/* KNOWN BUG "prog-action": canary_prog_action() (prog.c) does not run
 * canary_prog_check() on the parameters it finds in the segment, as
 * canary_prog_tick() does, so a promote publishes a step weight above
 * 10000 and leaves a table that sums to something else.  Only actions on
 * routes whose stored parameters fail that check are stepped around. */
static int prog_params_bad(const canary_seg_t *seg, int route) {
  struct canary_prog_params p;
  memcpy(&p, &canary__prog(seg, (uint32_t)route)->params, sizeof p);
  return canary_prog_check(&p, CANARY_MAX_UPSTREAMS, NULL, 0) != 0;
}

/* Slots change hands over whatever they hold: retire all routes but
 * one, bring one back, publish a reordered and then a renamed table.
 * Errors are fine; the tables the engine publishes must read back, and
 * the exposition must stay well-formed. */
static void lifecycle(canary_seg_t *seg, const struct prog_input *act) {
  static const char keep[] = "prog-route";
  struct canary_table t = {.n = 2, .weights = {5000, 5000}};
  static struct canary_route_view v;
  char *out;
  size_t len;
  int r, rc;

  rc = canary_route_retire_except(seg, keep, sizeof keep, act->now_us);
  FZ_CHECK(rc >= 0 || rc == CANARY_EBUSY || rc == CANARY_EINVAL,
           "retire_except: %d", rc);
  r = canary_route_claim(seg, "plain-route", 11, "", 0);
  if (r < 0)
    return;
  snprintf(t.names[0], sizeof t.names[0], "canary");
  snprintf(t.names[1], sizeof t.names[1], "stable");
  if (canary_route_publish(seg, r, &t, 77, NULL, NULL, 0) == 0) {
    FZ_CHECK(canary_route_read(seg, r, &v) == 0, "reordered table unreadable");
    canary_route_record(seg, r, 1, 99, 503, -1);
  }
  snprintf(t.names[0], sizeof t.names[0], "stable-v2");
  if (canary_route_publish(seg, r, &t, 78, NULL, NULL, 0) == 0)
    FZ_CHECK(canary_route_read(seg, r, &v) == 0, "renamed table unreadable");
  out = fz_prom_render(seg, &len, &rc);
  FZ_CHECK(out != NULL || rc == CANARY_ENOMEM, "render failed: %d", rc);
  if (out != NULL)
    fz_prom_check(out, len, NULL, NULL);
  free(out);
}

static void exercise(canary_seg_t *seg, int readonly,
                     const struct prog_input *act) {
  struct canary_seg_info info;
  static struct canary_route_view v;
  static struct canary_hist_snapshot snap;
  struct canary_hist_summary sum;
  struct canary_prog_status ps;
  char *out;
  size_t len;
  int rc;

  FZ_CHECK(canary_seg_info(seg, &info) == 0, "seg_info failed");
  FZ_CHECK(info.max_routes >= 1 && info.max_routes <= 65536 &&
               info.max_upstreams >= 1 &&
               info.max_upstreams <= CANARY_MAX_UPSTREAMS &&
               info.max_prog_slots >= 1 &&
               info.max_prog_slots <= info.max_routes &&
               info.size == CANARY_HEADER_BYTES +
                                (uint64_t)info.max_routes * info.route_bytes +
                                (uint64_t)info.max_stat_slots *
                                    info.stat_bytes +
                                (uint64_t)info.max_prog_slots *
                                    info.prog_bytes,
           "attached a segment of impossible geometry (%u routes, %u "
           "upstreams, %llu bytes)",
           info.max_routes, info.max_upstreams, (unsigned long long)info.size);

  for (int r = -1; r <= (int)info.max_routes; r++) {
    int valid = r >= 0 && r < (int)info.max_routes, idx, view_ok;

    rc = canary_route_read(seg, r, &v);
    FZ_CHECK(valid || rc == CANARY_EINVAL, "read of route %d: %d", r, rc);
    view_ok = rc == 0 && v.generation > 0;
    if (rc == 0) {
      check_cstr(v.key, sizeof v.key, "key");
      check_cstr(v.label, sizeof v.label, "label");
      FZ_CHECK(v.generation == 0 || (v.n >= 1 && v.n <= info.max_upstreams),
               "read a table of %u upstreams", v.n);
      for (uint32_t u = 0; u < v.n; u++)
        check_cstr(v.names[u], sizeof v.names[u], "upstream name");
    }

    idx = canary_route_pick(seg, r, "user-42", 7, NULL);
    FZ_CHECK(idx < (int)info.max_upstreams, "sticky pick %d", idx);
    FZ_CHECK(valid || idx == CANARY_EINVAL, "pick of route %d: %d", r, idx);
    /* Nothing else writes this file: the pick sees the table just read. */
    if (view_ok && idx >= 0)
      FZ_CHECK((uint32_t)idx < v.n, "sticky pick %d of a table of %u", idx,
               v.n);
    /* A non-sticky pick advances the shared sequence: on a read-only
     * mapping it must refuse (regressions/fuzz_segment/ro-pick: it used
     * to fault there). */
    idx = canary_route_pick(seg, r, NULL, 0, NULL);
    if (readonly)
      FZ_CHECK(idx == (valid ? CANARY_EREADONLY : CANARY_EINVAL),
               "non-sticky pick of route %d on a read-only segment: %d", r,
               idx);
    FZ_CHECK(idx < (int)info.max_upstreams, "pick %d", idx);
    if (view_ok && idx >= 0)
      FZ_CHECK((uint32_t)idx < v.n, "pick %d of a table of %u", idx, v.n);

    if (!valid)
      continue;
    for (int u = 0; u <= (int)info.max_upstreams; u++) {
      rc = canary_hist_snapshot(seg, r, u, &snap);
      FZ_CHECK(rc == (u < (int)info.max_upstreams ? 0 : CANARY_EINVAL),
               "hist_snapshot(%d, %d): %d", r, u, rc);
      if (rc == 0)
        FZ_CHECK(canary_hist_summarize(&snap, NULL, &sum) == 0,
                 "summarize failed");
    }
    rc = canary_prog_status(seg, r, act->now_us, &ps);
    FZ_CHECK(rc == 0 || rc == CANARY_EINVAL || rc == CANARY_ECORRUPT,
             "prog_status: %d", rc);
    if (rc == 0)
      check_cstr(ps.reason, sizeof ps.reason, "progression reason");
    {
      static struct canary_decision dl[CANARY_DECISIONS];
      rc = canary_prog_decisions(seg, r, 0, dl, CANARY_DECISIONS);
      FZ_CHECK(rc == CANARY_EINVAL || (rc >= 0 && rc <= CANARY_DECISIONS),
               "prog_decisions: %d", rc);
      for (int k = 0; k < rc; k++) {
        FZ_CHECK(dl[k].seq != 0 && (k == 0 || dl[k].seq == dl[k - 1].seq - 1),
                 "decision %d: seq %llu out of order", k,
                 (unsigned long long)dl[k].seq);
        check_cstr(dl[k].judge.reason, sizeof dl[k].judge.reason,
                   "decision reason");
      }
    }
    if (readonly) {
      FZ_CHECK(canary_route_record(seg, r, 0, 1, 200, -1) == CANARY_EREADONLY,
               "record on a read-only segment");
      continue;
    }
    canary_route_record(seg, r, 0, 1234, 200, CANARY_TRACE_GENERATED);
    canary_route_event(seg, r, CANARY_EVENT_OVERRIDE);
    if (act->action <= CANARY_ACT_PROMOTE_FULL + 1 &&
        !(fz_known_bug("prog-action") && prog_params_bad(seg, r))) {
      char err[256] = "";
      rc = canary_prog_action(seg, r, act->action, act->now_us, NULL, err,
                              sizeof err);
      FZ_CHECK(rc <= 0 && (rc == 0 || err[0] != '\0'),
               "prog_action %d on route %d: %d without a reason", act->action,
               r, rc);
      if (act->action > CANARY_ACT_PROMOTE_FULL)
        FZ_CHECK(rc == CANARY_EINVAL, "unknown action accepted: %d", rc);
      unreadable_after(seg, r, view_ok, "prog_action");
    }
    rc = canary_prog_tick(seg, r, act->now_us, &ps);
    FZ_CHECK(rc <= 2, "prog_tick returned %d", rc);
    unreadable_after(seg, r, view_ok, "prog_tick");
  }

  out = fz_prom_render(seg, &len, &rc);
  FZ_CHECK(out != NULL || rc == CANARY_ENOMEM, "render failed: %d (%s)", rc,
           canary_strerror(rc));
  if (out != NULL)
    fz_prom_check(out, len, NULL, NULL);
  free(out);
  if (!readonly)
    lifecycle(seg, act);
}

/* ---- one file ----------------------------------------------------------- */

static void run(const struct file *f, const struct prog_input *act) {
  canary_seg_t *seg = NULL;
  unsigned char *after;
  char why[512];
  int ro, rw, bad;
  long got;

  fz_write_file(seg_path, f->p, f->len, f->len);

  memset(why, 0, sizeof why);
  ro = canary_seg_open(&seg, seg_path, 0, 0, CANARY_SEG_READONLY, why,
                       sizeof why);
  FZ_CHECK(ro == CANARY_SEG_ATTACHED || ro == CANARY_ECORRUPT ||
               ro == CANARY_EIO,
           "read-only open returned %d (%s)", ro, why);
  FZ_CHECK(ro >= 0 || (why[0] != '\0' && seg == NULL),
           "read-only open failed (%d) without a reason", ro);
  if (ro >= 0) {
    exercise(seg, 1, act);
    canary_seg_close(seg);
  }
  /* Read-only: never renamed, never written. */
  after = malloc(f->len + 1);
  FZ_CHECK(after != NULL, "harness: out of memory");
  got = fz_read_file(seg_path, after, f->len + 1);
  FZ_CHECK(got == (long)f->len &&
               (f->len == 0 || memcmp(after, f->p, f->len) == 0),
           "a read-only open changed or moved the file");
  free(after);
  FZ_CHECK(fz_remove_bad(seg_path, NULL, 0) == 0,
           "a read-only open set the file aside");

  memset(why, 0, sizeof why);
  rw = canary_seg_open(&seg, seg_path, 1, 1, 0, why, sizeof why);
  if (ro == CANARY_SEG_ATTACHED)
    FZ_CHECK(rw == CANARY_SEG_ATTACHED,
             "read-only attached but read-write returned %d (%s)", rw, why);
  else if (f->len == 0)
    FZ_CHECK(rw == CANARY_SEG_CREATED, "empty file: read-write returned %d",
             rw);
  else
    FZ_CHECK(rw == CANARY_SEG_RECREATED,
             "read-only refused the file (%d), read-write returned %d (%s)",
             ro, rw, why);
  if (rw == CANARY_SEG_RECREATED)
    FZ_CHECK(why[0] != '\0', "recreated without saying why");
  if (rw >= 0) {
    exercise(seg, 0, act);
    canary_seg_close(seg);
  }
  bad = fz_remove_bad(seg_path, f->p, f->len);
  FZ_CHECK(bad == (rw == CANARY_SEG_RECREATED),
           "%d files set aside after open returned %d", bad, rw);
  unlink(seg_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fz_in in = {data, size};
  struct file f;
  uint8_t mode = fz_u8(&in) % 3;
  struct prog_input act;

  act.now_us = canary_clock_us() + (double)fz_u32(&in) * 1e3;
  act.action = fz_u8(&in) % (CANARY_ACT_PROMOTE_FULL + 3);

  switch (mode) {
  case 0:
    f.len = in.n;
    f.p = malloc(f.len);
    FZ_CHECK(f.p != NULL || f.len == 0, "harness: out of memory");
    fz_bytes(&in, f.p, f.len);
    break;
  case 1:
    file_from_header(&in, &f);
    break;
  default:
    file_from_template(&in, &f);
    break;
  }
  run(&f, &act);
  free(f.p);
  return 0;
}
