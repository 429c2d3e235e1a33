/*
 * test_trace.c - trace id generation, W3C traceparent parsing, client id
 * validation.
 *
 * What a user would notice: two requests (from two nginx workers) with the
 * same trace id, so their traces merge; a malformed traceparent accepted
 * and forwarded; a client's X-Trace-Id with a CR/LF reflected into a
 * response header.
 */
#include "test_util.h"

static int is_lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return 1;
}

static int all_zero_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != '0')
      return 0;
  return 1;
}

static unsigned hexval(char c) {
  return (unsigned)(c <= '9' ? c - '0' : c - 'a' + 10);
}

/* ---- generate -------------------------------------------------------- */

static void trace_generate_format(void **state) {
  (void)state;
  /* Exact-size heap buffers: an overrun is an ASan/valgrind error. */
  char *id = t_alloc(CANARY_TRACE_ID_LEN + 1);
  char *tp = t_alloc(CANARY_TRACEPARENT_LEN + 1);
  char pad[64];

  assert_non_null(id);
  assert_non_null(tp);
  assert_int_equal(canary_trace_generate(NULL, NULL), CANARY_EINVAL);
  for (int i = 0; i < 1000; i++) {
    char tid[33], pid[17];
    uint8_t flags = 0;

    memset(id, 'X', CANARY_TRACE_ID_LEN + 1);
    memset(tp, 'X', CANARY_TRACEPARENT_LEN + 1);
    assert_int_equal(canary_trace_generate(id, tp), 0);
    assert_int_equal(strlen(id), CANARY_TRACE_ID_LEN);
    assert_true(is_lower_hex(id, CANARY_TRACE_ID_LEN));
    assert_false(all_zero_hex(id, CANARY_TRACE_ID_LEN));
    assert_int_equal(strlen(tp), CANARY_TRACEPARENT_LEN);
    assert_memory_equal(tp, "00-", 3);
    assert_memory_equal(tp + 3, id, CANARY_TRACE_ID_LEN);
    assert_int_equal(tp[35], '-');
    assert_true(is_lower_hex(tp + 36, CANARY_SPAN_ID_LEN));
    assert_false(all_zero_hex(tp + 36, CANARY_SPAN_ID_LEN));
    assert_string_equal(tp + 52, "-01");
    /* It parses back: trace-id, parent-id, flags "sampled". */
    assert_int_equal(
        canary_traceparent_parse(tp, strlen(tp), tid, pid, &flags), 0);
    assert_string_equal(tid, id);
    assert_memory_equal(pid, tp + 36, 16);
    assert_int_equal(pid[16], '\0');
    assert_int_equal(flags, 1);
    /* A client could send it back as X-Trace-Id and keep it. */
    assert_int_equal(canary_trace_id_valid(id, strlen(id)), 1);
  }
  /* Without a traceparent: only the id, exactly 33 bytes written. */
  memset(pad, 'Z', sizeof pad);
  assert_int_equal(canary_trace_generate(pad, NULL), 0);
  assert_int_equal(strlen(pad), CANARY_TRACE_ID_LEN);
  for (size_t i = CANARY_TRACE_ID_LEN + 1; i < sizeof pad; i++)
    assert_int_equal(pad[i], 'Z');
  t_free(id);
  t_free(tp);
}

/* 16 raw bytes from 32 hex chars. */
struct id128 {
  uint64_t hi, lo;
};

static struct id128 parse_id(const char *hex) {
  struct id128 v = {0, 0};
  for (int i = 0; i < 16; i++)
    v.hi = v.hi << 4 | hexval(hex[i]);
  for (int i = 16; i < 32; i++)
    v.lo = v.lo << 4 | hexval(hex[i]);
  return v;
}

/* Writes n ids (and spans, as a second stream of ids) into out. */
static int generate_into(struct id128 *out, struct id128 *spans, size_t n) {
  char id[33], tp[56];
  for (size_t i = 0; i < n; i++) {
    if (canary_trace_generate(id, tp) != 0)
      return 2;
    if (strlen(id) != 32 || !is_lower_hex(id, 32) ||
        memcmp(tp + 3, id, 32) != 0)
      return 3;
    out[i] = parse_id(id);
    spans[i].hi = 0;
    spans[i].lo = 0;
    for (int k = 36; k < 52; k++)
      spans[i].lo = spans[i].lo << 4 | hexval(tp[k]);
  }
  return 0;
}

/* LSD radix sort on (hi, lo): 8 passes of 16 bits; tmp is scratch. */
static void radix_sort(struct id128 *a, struct id128 *tmp, size_t n) {
  size_t *cnt = t_alloc((size_t)(65536) * (sizeof *cnt));
  assert_non_null(cnt);
  for (int pass = 0; pass < 8; pass++) {
    int shift = (pass % 4) * 16;
    int use_hi = pass >= 4;
    size_t sum = 0;
    memset(cnt, 0, 65536 * sizeof *cnt);
    for (size_t i = 0; i < n; i++)
      cnt[((use_hi ? a[i].hi : a[i].lo) >> shift) & 0xffff]++;
    for (size_t d = 0; d < 65536; d++) {
      size_t c = cnt[d];
      cnt[d] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; i++)
      tmp[cnt[((use_hi ? a[i].hi : a[i].lo) >> shift) & 0xffff]++] = a[i];
    memcpy(a, tmp, n * sizeof *a);
  }
  t_free(cnt);
}

static void gen_child(struct id128 *ids, struct id128 *spans, size_t n,
                      struct test_gate *g) {
  test_gate_wait(g);
  _exit(generate_into(ids, spans, n));
}

static void trace_ids_unique_across_fork(void **state) {
  const size_t m = (size_t)test_scaled_min(1000000, 10000);
  /* Slots: parent's pre-fork id, 2 children, parent after the fork. */
  const size_t total = 1 + 3 * m;
  const size_t bytes = 2 * total * sizeof(struct id128);
  struct id128 *ids = test_shared_alloc(bytes);
  struct id128 *spans, *tmp;
  struct test_gate g;
  char id[33], tp[56];
  pid_t pids[2];
  (void)state;

  assert_non_null(ids);
  spans = ids + total;
  /* The parent's generator holds a batch when the children are forked. */
  assert_int_equal(canary_trace_generate(id, tp), 0);
  ids[0] = parse_id(id);
  spans[0].hi = 0;
  spans[0].lo = 0;
  for (int k = 36; k < 52; k++)
    spans[0].lo = spans[0].lo << 4 | hexval(tp[k]);

  assert_int_equal(test_gate_init(&g), 0);
  for (int c = 0; c < 2; c++) {
    pids[c] = test_fork();
    assert_true(pids[c] >= 0);
    if (pids[c] == 0)
      gen_child(ids + 1 + (size_t)c * m, spans + 1 + (size_t)c * m, m, &g);
  }
  test_gate_open(&g);
  assert_int_equal(generate_into(ids + 1 + 2 * m, spans + 1 + 2 * m, m), 0);
  for (int c = 0; c < 2; c++)
    test_wait_ok(pids[c]);

  tmp = t_alloc(total * sizeof *tmp);
  assert_non_null(tmp);
  for (int which = 0; which < 2; which++) {
    struct id128 *a = which == 0 ? ids : spans;
    radix_sort(a, tmp, total);
    for (size_t i = 1; i < total; i++)
      if (a[i].hi == a[i - 1].hi && a[i].lo == a[i - 1].lo)
        fail_msg("duplicate %s %016llx%016llx among %zu (parent before "
                 "and after fork, two children)",
                 which == 0 ? "trace id" : "span id",
                 (unsigned long long)a[i].hi, (unsigned long long)a[i].lo,
                 total);
  }
  t_free(tmp);
  test_shared_free(ids, bytes);
}

/* ---- traceparent ----------------------------------------------------- */

#define TID "4bf92f3577b34da6a3ce929d0e0e4736"
#define PID "00f067aa0ba902b7"

static void traceparent_vectors(void **state) {
  static const struct {
    const char *s;
    int ok;
    uint8_t flags;
    const char *why;
  } v[] = {
      {"00-" TID "-" PID "-01", 1, 1, "W3C example"},
      {"00-" TID "-" PID "-00", 1, 0, "not sampled"},
      {"00-" TID "-" PID "-ff", 1, 0xff, "unknown flags are kept"},
      {"00-" TID "-" PID "-09", 1, 9, "flags 09"},
      {"01-" TID "-" PID "-01", 1, 1, "future version, no suffix"},
      {"cc-" TID "-" PID "-01-xyz", 1, 1, "future version with suffix"},
      {"fe-" TID "-" PID "-01-", 1, 1, "future version, empty suffix"},
      {"ff-" TID "-" PID "-01", 0, 0, "version ff"},
      {"00-" TID "-" PID "-01-xyz", 0, 0, "version 00 with a suffix"},
      {"00-" TID "-" PID "-010", 0, 0, "version 00, 56 chars"},
      {"00-" TID "-" PID "-01 ", 0, 0, "version 00, trailing space"},
      {"cc-" TID "-" PID "-01x", 0, 0, "future version, no dash after"},
      {"0A-" TID "-" PID "-01", 0, 0, "uppercase version"},
      {"00-4BF92F3577B34DA6A3CE929D0E0E4736-" PID "-01", 0, 0,
       "uppercase trace-id"},
      {"00-" TID "-00F067AA0BA902B7-01", 0, 0, "uppercase parent-id"},
      {"00-" TID "-" PID "-0A", 0, 0, "uppercase flags"},
      {"00-00000000000000000000000000000000-" PID "-01", 0, 0,
       "all-zero trace-id"},
      {"00-" TID "-0000000000000000-01", 0, 0, "all-zero parent-id"},
      {"00-" TID "-" PID "-1", 0, 0, "short flags"},
      {"00-" TID "-" PID "-", 0, 0, "no flags"},
      {"00-4bf92f3577b34da6a3ce929d0e0e473-" PID "-01", 0, 0,
       "trace-id 31 chars"},
      {"00-4bf92f3577b34da6a3ce929d0e0e47366-" PID "-01", 0, 0,
       "trace-id 33 chars"},
      {"00-" TID "-00f067aa0ba902b-01", 0, 0, "parent-id 15 chars"},
      {"00-" TID "-00f067aa0ba902b77-01", 0, 0, "parent-id 17 chars"},
      {"0-" TID "-" PID "-01", 0, 0, "version 1 char"},
      {"000-" TID "-" PID "-01", 0, 0, "version 3 chars"},
      {"00_" TID "-" PID "-01", 0, 0, "underscore for dash"},
      {"00-" TID "_" PID "-01", 0, 0, "underscore for second dash"},
      {"00-" TID "-" PID "_01", 0, 0, "underscore for third dash"},
      {"00" TID PID "01xxx", 0, 0, "no dashes"},
      {"00 " TID " " PID " 01", 0, 0, "spaces for dashes"},
      {"00-4bf92f3577b34da6a3ce929d0e0e473g-" PID "-01", 0, 0,
       "non-hex g in trace-id"},
      {"00-" TID "-00f067aa0ba902bz-01", 0, 0, "non-hex z in parent-id"},
      {"0g-" TID "-" PID "-01", 0, 0, "non-hex version"},
      {"00-" TID "-" PID "-0x", 0, 0, "non-hex flags"},
      {" 00-" TID "-" PID "-01", 0, 0, "leading space"},
      {"00-" TID "-" PID, 0, 0, "missing flags field"},
      {"", 0, 0, "empty"},
      {"00", 0, 0, "version only"},
  };
  (void)state;

  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    char tid[40], pid[24];
    uint8_t flags = 0x5a;
    size_t len = strlen(v[i].s);
    int rc;

    memset(tid, 'Q', sizeof tid);
    memset(pid, 'Q', sizeof pid);
    rc = canary_traceparent_parse(v[i].s, len, tid, pid, &flags);
    if (v[i].ok && rc != 0)
      fail_msg("rejected valid traceparent (%s): \"%s\" -> %d", v[i].why,
               v[i].s, rc);
    if (!v[i].ok && rc != CANARY_EINVAL)
      fail_msg("accepted invalid traceparent (%s): \"%s\" -> %d", v[i].why,
               v[i].s, rc);
    if (v[i].ok) {
      assert_string_equal(tid, TID);
      assert_string_equal(pid, PID);
      assert_int_equal(flags, v[i].flags);
      assert_int_equal(tid[33], 'Q'); /* 33 bytes written, no more */
      assert_int_equal(pid[17], 'Q');
      /* Outputs are optional. */
      assert_int_equal(canary_traceparent_parse(v[i].s, len, NULL, NULL, NULL),
                       0);
    }
  }

  /* The length, not a NUL, delimits the input. */
  {
    const char *s = "00-" TID "-" PID "-01garbage";
    char tid[33];
    assert_int_equal(canary_traceparent_parse(s, 55, tid, NULL, NULL), 0);
    assert_string_equal(tid, TID);
    assert_int_equal(canary_traceparent_parse(s, 54, NULL, NULL, NULL),
                     CANARY_EINVAL);
    assert_int_equal(canary_traceparent_parse(s, strlen(s), NULL, NULL, NULL),
                     CANARY_EINVAL);
  }
  /* A NUL inside. */
  {
    char s[56];
    memcpy(s, "00-" TID "-" PID "-01", 56);
    s[10] = '\0';
    assert_int_equal(canary_traceparent_parse(s, 55, NULL, NULL, NULL),
                     CANARY_EINVAL);
  }
  assert_int_equal(canary_traceparent_parse(NULL, 55, NULL, NULL, NULL),
                   CANARY_EINVAL);
}

/* ---- client trace ids ------------------------------------------------- */

static void trace_id_valid_vectors(void **state) {
  static const struct {
    const char *s;
    size_t len;
    int ok;
  } v[] = {
      {"a", 1, 1},
      {"Z", 1, 1},
      {"0", 1, 1},
      {"-", 1, 1},
      {"abc-DEF_123.456:789", 19, 1},
      {"4bf92f3577b34da6a3ce929d0e0e4736", 32, 1},
      {"req:2024-01-01T00:00:00.000", 27, 1},
      {"", 0, 0},
      {"a b", 3, 0},
      {"a\rb", 3, 0},
      {"a\nb", 3, 0},
      {"a\r\nSet-Cookie: x=1", 18, 0},
      {"a\0b", 3, 0},
      {"a\tb", 3, 0},
      {"a\"b", 3, 0},
      {"a'b", 3, 0},
      {"a\\b", 3, 0},
      {"a/b", 3, 0},
      {"a;b", 3, 0},
      {"a,b", 3, 0},
      {"a=b", 3, 0},
      {"<script>", 8, 0},
      {"caf\xc3\xa9", 5, 0},
      {"\x80", 1, 0},
      {"\xff", 1, 0},
      {"a\x7f", 2, 0},
      {"a\x01", 2, 0},
  };
  char buf[200];
  (void)state;

  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    int got = canary_trace_id_valid(v[i].s, v[i].len);
    if (got != v[i].ok)
      fail_msg("trace id vector %zu (len %zu): got %d, want %d", i, v[i].len,
               got, v[i].ok);
  }
  /* Every byte outside [A-Za-z0-9._:-] is refused, alone or inside. */
  for (int c = 0; c < 256; c++) {
    int want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
               c == '-';
    char s[3] = {'x', (char)c, 'y'};
    assert_int_equal(canary_trace_id_valid(s, 3), want);
  }
  /* Length 1..128. */
  memset(buf, 'a', sizeof buf);
  assert_int_equal(canary_trace_id_valid(buf, 128), 1);
  assert_int_equal(canary_trace_id_valid(buf, 129), 0);
  assert_int_equal(canary_trace_id_valid(buf, 200), 0);
  assert_int_equal(canary_trace_id_valid(buf, SIZE_MAX), 0);
  /* The length, not a NUL, delimits the value. */
  assert_int_equal(canary_trace_id_valid("abc def", 3), 1);
  assert_int_equal(canary_trace_id_valid(NULL, 0), 0);
  assert_int_equal(canary_trace_id_valid(NULL, 5), 0);
}

/* No files here; the group only arms the watchdog. */
static int group_setup(void **state) {
  (void)state;
  test_watchdog_arm(120);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  test_watchdog_disarm();
  test_release_all();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(traceparent_vectors),
      cmocka_unit_test(trace_id_valid_vectors),
      cmocka_unit_test(trace_generate_format),
      cmocka_unit_test(trace_ids_unique_across_fork),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
