/*
 * test_headers.c - canary_headers_find, the one pass over a request's
 * headers that gives the plugin the headers its config reads.
 *
 * What a user would notice: a tester's override header ignored because
 * it came in upper case, or after other headers; a repeated trace header
 * where the second value wins instead of the first (Kong reads the
 * first); a header matched by a prefix of its name.
 */
#include "test_util.h"

#define H(k, v) {(int32_t)(sizeof(k) - 1), (const uint8_t *)(k), \
                  (int32_t)(sizeof(v) - 1), (const uint8_t *)(v)}

/* traceparent, trace header, tracestate, sticky (unused), override. */
static const char NAMES[] = "traceparent\0x-trace-id\0tracestate\0\0x-canary";
#define N_NAMES 5

static void finds_first_of_each_in_any_case(void **state) {
  (void)state;
  const canary_header_t hs[] = {
      H("host", "example"),         H("X-CANARY", "always"),
      H("x-trace-id", "first-id"),  H("X_Trace_Id", "second-id"),
      H("x-canary", "never"),       H("x-trace-i", "prefix"),
      H("traceparentx", "longer"),
  };
  int32_t found[N_NAMES];
  assert_int_equal(canary_headers_find(hs, 7, NAMES, N_NAMES, found), 2);
  assert_int_equal(found[0], -1); /* traceparent: only a longer name */
  assert_int_equal(found[1], 2);  /* the first x-trace-id */
  assert_int_equal(found[2], -1);
  assert_int_equal(found[3], -1); /* a slot not looked for */
  assert_int_equal(found[4], 1);  /* X-CANARY before x-canary */
}

static void underscore_reads_as_dash(void **state) {
  (void)state;
  const canary_header_t hs[] = {H("X_Trace_Id", "id"), H("Trace_State", "t")};
  int32_t found[N_NAMES];
  assert_int_equal(canary_headers_find(hs, 2, NAMES, N_NAMES, found), 1);
  assert_int_equal(found[1], 0);
  assert_int_equal(found[2], -1); /* "trace-state" is not "tracestate" */
}

static void finds_after_many_headers(void **state) {
  (void)state;
  enum { N = 300 };
  static canary_header_t hs[N];
  for (int i = 0; i < N - 2; i++)
    hs[i] = (canary_header_t)H("x-filler-0001", "v");
  hs[N - 2] = (canary_header_t)H("tracestate", "v=1");
  hs[N - 1] = (canary_header_t)H("traceparent", "00-x");
  int32_t found[N_NAMES];
  assert_int_equal(canary_headers_find(hs, N, NAMES, N_NAMES, found), 2);
  assert_int_equal(found[0], N - 1);
  assert_int_equal(found[2], N - 2);
}

static void bad_input(void **state) {
  (void)state;
  const canary_header_t hs[] = {H("x-canary", "a"), {0, NULL, 0, NULL},
                                {-3, (const uint8_t *)"x", 0, NULL}};
  int32_t found[CANARY_HEADERS_FIND_MAX + 1];
  assert_int_equal(canary_headers_find(NULL, 1, NAMES, N_NAMES, found), CANARY_EINVAL);
  assert_int_equal(canary_headers_find(hs, -1, NAMES, N_NAMES, found), CANARY_EINVAL);
  assert_int_equal(canary_headers_find(hs, 1, NULL, N_NAMES, found), CANARY_EINVAL);
  assert_int_equal(canary_headers_find(hs, 1, NAMES, N_NAMES, NULL), CANARY_EINVAL);
  assert_int_equal(canary_headers_find(hs, 1, NAMES, -1, found), CANARY_EINVAL);
  assert_int_equal(canary_headers_find(hs, 1, "", CANARY_HEADERS_FIND_MAX + 1, found),
                   CANARY_EINVAL);
  /* Entries without a key are skipped; no headers at all find nothing. */
  assert_int_equal(canary_headers_find(hs, 3, NAMES, N_NAMES, found), 1);
  assert_int_equal(found[4], 0);
  assert_int_equal(canary_headers_find(NULL, 0, NAMES, N_NAMES, found), 0);
  assert_int_equal(found[4], -1);
}

static int group_setup(void **state) {
  (void)state;
  test_watchdog_arm(60);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  test_watchdog_disarm();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(finds_first_of_each_in_any_case),
      cmocka_unit_test(underscore_reads_as_dash),
      cmocka_unit_test(finds_after_many_headers),
      cmocka_unit_test(bad_input),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
