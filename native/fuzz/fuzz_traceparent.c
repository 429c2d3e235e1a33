/*
 * fuzz_traceparent.c - W3C traceparent parsing and X-Trace-Id validation.
 *
 * Input: the raw header value, as a client would send it.
 *
 * Both functions are pure, so instead of only checking what an accepted
 * value looks like, the target compares them with an independent reading
 * of the rules canary.h documents, in both directions: the engine must
 * accept exactly what the rules accept.  A parser that rejects a valid
 * traceparent loses the client's trace as surely as one that accepts a
 * bad one corrupts it.
 *
 *   canary_traceparent_parse: version 00 exactly 55 chars; later versions
 *     at least 55 with '-' after the flags; lowercase hex; version ff,
 *     all-zero trace-id or parent-id rejected.
 *   canary_trace_id_valid: 1..CANARY_TRACE_HEADER_MAX bytes of
 *     [A-Za-z0-9._:-].
 *
 * When the parse succeeds the target also checks the outputs (ids are the
 * input's fields, NUL-terminated, flags the value of the flags field) and
 * that the canonical form "00-<id>-<parent>-<flags>" parses back to the
 * same values.  The engine gets the fuzzer's exact-size buffer, so ASan
 * reports any read past `len`.
 */
#include "fuzz_common.h"

#include <stdio.h>
#include <string.h>

static int is_lowhex(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int all_lowhex(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!is_lowhex(s[i]))
      return 0;
  return 1;
}

static int all_zero_chars(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != '0')
      return 0;
  return 1;
}

/* The documented traceparent rule, written from canary.h and the W3C
 * Trace Context spec rather than from trace.c. */
static int reference_traceparent(const uint8_t *s, size_t len) {
  if (len < CANARY_TRACEPARENT_LEN)
    return 0;
  if (!all_lowhex(s, 2) || s[2] != '-' || !all_lowhex(s + 3, 32) ||
      s[35] != '-' || !all_lowhex(s + 36, 16) || s[52] != '-' ||
      !all_lowhex(s + 53, 2))
    return 0;
  if (s[0] == 'f' && s[1] == 'f')
    return 0;
  if (s[0] == '0' && s[1] == '0' && len != CANARY_TRACEPARENT_LEN)
    return 0;
  if (len > CANARY_TRACEPARENT_LEN && s[55] != '-')
    return 0;
  return !all_zero_chars(s + 3, 32) && !all_zero_chars(s + 36, 16);
}

static int reference_trace_id(const uint8_t *s, size_t len) {
  if (len == 0 || len > CANARY_TRACE_HEADER_MAX)
    return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
          (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == ':' ||
          c == '-'))
      return 0;
  }
  return 1;
}

static unsigned hexval(unsigned char c) {
  return c <= '9' ? (unsigned)(c - '0') : (unsigned)(c - 'a' + 10);
}

/* Checks the outputs of an accepted parse against the input fields. */
static void check_accepted(const uint8_t *s, size_t len, const char *id,
                           const char *parent, uint8_t flags) {
  char canon[CANARY_TRACEPARENT_LEN + 1], id2[40], parent2[24];
  uint8_t flags2 = 0;
  int rc;

  FZ_CHECK(len >= CANARY_TRACEPARENT_LEN, "accepted %zu bytes (< 55)", len);
  FZ_CHECK(!(s[0] == 'f' && s[1] == 'f'), "accepted version ff");
  FZ_CHECK(strlen(id) == CANARY_TRACE_ID_LEN &&
               all_lowhex((const uint8_t *)id, CANARY_TRACE_ID_LEN) &&
               !all_zero_chars((const uint8_t *)id, CANARY_TRACE_ID_LEN),
           "trace-id out is \"%s\"", id);
  FZ_CHECK(strlen(parent) == CANARY_SPAN_ID_LEN &&
               all_lowhex((const uint8_t *)parent, CANARY_SPAN_ID_LEN) &&
               !all_zero_chars((const uint8_t *)parent, CANARY_SPAN_ID_LEN),
           "parent-id out is \"%s\"", parent);
  FZ_CHECK(memcmp(id, s + 3, 32) == 0 && memcmp(parent, s + 36, 16) == 0,
           "ids out are not the input's fields");
  FZ_CHECK((unsigned)flags == (hexval(s[53]) << 4 | hexval(s[54])),
           "flags out 0x%02x, field \"%c%c\"", flags, s[53], s[54]);

  /* What the gateway forwards upstream is the canonical version-00 form;
   * it must parse back to the same values. */
  snprintf(canon, sizeof canon, "00-%s-%s-%02x", id, parent, flags);
  memset(id2, 'x', sizeof id2);
  memset(parent2, 'x', sizeof parent2);
  rc = canary_traceparent_parse(canon, strlen(canon), id2, parent2, &flags2);
  FZ_CHECK(rc == 0, "canonical form \"%s\" rejected (%d)", canon, rc);
  FZ_CHECK(strcmp(id2, id) == 0 && strcmp(parent2, parent) == 0 &&
               flags2 == flags,
           "canonical form \"%s\" parsed to %s/%s/%02x", canon, id2, parent2,
           flags2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  char id[CANARY_TRACE_ID_LEN + 1 + 8], parent[CANARY_SPAN_ID_LEN + 1 + 8];
  uint8_t flags = 0;
  int rc, ref, valid;

  /* Poison the out-buffers so a missing NUL or short copy shows. */
  memset(id, 'Z', sizeof id);
  memset(parent, 'Z', sizeof parent);
  rc = canary_traceparent_parse(s, size, id, parent, &flags);
  ref = reference_traceparent(data, size);
  FZ_CHECK(rc == 0 || rc == CANARY_EINVAL, "parse returned %d", rc);
  FZ_CHECK((rc == 0) == ref,
           "parse %s \"%.*s\" (%zu bytes); the documented rule %s it",
           rc == 0 ? "accepted" : "rejected", (int)(size > 80 ? 80 : size), s,
           size, ref ? "accepts" : "rejects");
  if (rc == 0) {
    FZ_CHECK(id[CANARY_TRACE_ID_LEN + 1] == 'Z' &&
                 parent[CANARY_SPAN_ID_LEN + 1] == 'Z',
             "parse wrote past the documented 33/17 byte outputs");
    check_accepted(data, size, id, parent, flags);
  }
  /* NULL outputs are allowed and must not change the verdict. */
  FZ_CHECK(canary_traceparent_parse(s, size, NULL, NULL, NULL) == rc,
           "verdict changes with NULL outputs");

  valid = canary_trace_id_valid(s, size);
  FZ_CHECK(valid == 0 || valid == 1, "trace_id_valid returned %d", valid);
  FZ_CHECK(valid == reference_trace_id(data, size),
           "trace_id_valid says %d for \"%.*s\" (%zu bytes)", valid,
           (int)(size > 80 ? 80 : size), s, size);
  /* A value kept as X-Trace-Id is echoed in headers and logs: it must not
   * be able to split a header line or a log field. */
  if (valid)
    FZ_CHECK(memchr(s, '\r', size) == NULL && memchr(s, '\n', size) == NULL &&
                 memchr(s, ' ', size) == NULL && memchr(s, '"', size) == NULL,
             "kept trace id contains a separator");
  return 0;
}
