/*
 * table.c - a route's weights table: validation and the publish protocol.
 *
 * A route's weights table is read on every request by every worker and
 * written a few times a day by whoever applies a config change or a
 * progression step, so the design optimises the reader completely:
 *
 *   - The table is double-buffered.  `generation` names the published
 *     buffer (tables[generation & 1]); a writer fills the other buffer and
 *     then advances `generation` with a single store.  A reader loads
 *     `generation`, copies what it needs from that buffer, and is done.
 *
 *   - The buffer a reader uses can only be rewritten by the publish after
 *     next (generation + 2).  Each buffer carries a sequence word, odd
 *     while being written; a reader that sees it odd, or changed across
 *     its copy, knows a newer generation has been published since it
 *     looked, and simply starts over from the newer generation.  It never
 *     waits for a writer: an odd sequence on the buffer it was pointed at
 *     implies that the other buffer is complete and already published.
 *
 *   - A writer killed halfway leaves an odd sequence on the *back* buffer
 *     and an unchanged `generation`, so readers keep using the intact
 *     front buffer.  The kernel drops the dead writer's lock, and the
 *     next writer rewrites the back buffer from its sequence on.
 *
 * Writers exclude each other with the route's writer lock (owner.c); no
 * request path ever takes it.  The test builds stop a writer at the
 * fault points below to kill it there.  This file knows nothing of
 * progressions.
 */
#include "internal.h"

#include <ck_pr.h>
#include <stdio.h>
#include <string.h>

/* Copies `words` 64-bit words from shared memory (8-byte aligned) with
 * atomic loads into a process-local buffer of any alignment. */
void canary__load_words(void *dst, const void *src, size_t words) {
  unsigned char *d = dst;
  uint64_t *s = (uint64_t *)(uintptr_t)src;
  for (size_t i = 0; i < words; i++) {
    uint64_t w = ck_pr_load_64(&s[i]);
    memcpy(d + i * 8, &w, 8);
  }
}

/* Copies `words` 64-bit words from a process-local buffer of any alignment
 * into shared memory (8-byte aligned) with atomic stores. */
void canary__store_words(void *dst, const void *src, size_t words) {
  uint64_t *d = dst;
  const unsigned char *s = src;
  for (size_t i = 0; i < words; i++) {
    uint64_t w;
    memcpy(&w, s + i * 8, 8);
    ck_pr_store_64(&d[i], w);
  }
}

/* The characters of a Kong upstream name (a hostname, with '_'): also
 * what a Prometheus label, a log line and an HTTP header carry as is. */
static int name_char_ok(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

size_t canary__bounded_len(const char *s, size_t cap) {
  const char *nul = memchr(s, '\0', cap);
  return nul == NULL ? cap : (size_t)(nul - s);
}

/* ---- validation ----------------------------------------------------- */

/* "90", "99.99", "100.5": hundredths of a percent as the percentage an
 * operator wrote, for messages. */
static void percent(char *out, size_t cap, uint64_t hundredths) {
  int n = snprintf(out, cap, "%llu.%02llu",
                   (unsigned long long)(hundredths / 100),
                   (unsigned long long)(hundredths % 100));
  while (n > 0 && (size_t)n < cap && out[n - 1] == '0')
    out[--n] = '\0';
  if (n > 0 && (size_t)n < cap && out[n - 1] == '.')
    out[--n] = '\0';
}

int canary__check_weights(const uint32_t *w, uint32_t n, char *err,
                          size_t err_len) {
  char got[32];
  uint64_t sum = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (w[i] > CANARY_WEIGHT_SCALE) {
      percent(got, sizeof got, w[i]);
      return canary__fail(err, err_len, CANARY_EWEIGHTS,
                          "weight of upstream %u must be between 0 and 100 "
                          "(got %s)",
                          i + 1, got);
    }
    sum += w[i];
  }
  if (sum != CANARY_WEIGHT_SCALE) {
    percent(got, sizeof got, sum);
    return canary__fail(err, err_len, CANARY_EWEIGHTS,
                        "weights must sum to 100 (got %s)", got);
  }
  return 0;
}

/* The name as a message shows it: printable ASCII as is, anything else
 * as \xNN, so no byte of a hostile name reaches a log line raw. */
static void shown(char *out, size_t cap, const char *name, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 5 < cap; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c >= 0x20 && c < 0x7f) {
      out[o++] = (char)c;
    } else {
      snprintf(out + o, cap - o, "\\x%02x", c);
      o += 4;
    }
  }
  out[o] = '\0';
}

int canary_name_check(const char *name, size_t name_len, char *err,
                      size_t err_len) {
  char show[4 * CANARY_NAME_MAX + 8];
  if (err != NULL && err_len > 0)
    err[0] = '\0';
  if (name == NULL || name_len == 0)
    return canary__fail(err, err_len, CANARY_EWEIGHTS,
                        "upstream name must not be empty");
  if (name_len >= CANARY_NAME_MAX) {
    shown(show, sizeof show, name, 16);
    return canary__fail(err, err_len, CANARY_EWEIGHTS,
                        "upstream name '%s...' is longer than %d characters",
                        show, CANARY_NAME_MAX - 1);
  }
  for (size_t j = 0; j < name_len; j++)
    if (!name_char_ok((unsigned char)name[j])) {
      shown(show, sizeof show, name, name_len);
      return canary__fail(err, err_len, CANARY_EWEIGHTS,
                          "invalid upstream name '%s': allowed characters "
                          "are A-Z, a-z, 0-9, '.', '_', and '-'",
                          show);
    }
  return 0;
}

int canary_table_check(const struct canary_table *t, uint32_t max_upstreams,
                       char *err, size_t err_len) {
  if (err != NULL && err_len > 0)
    err[0] = '\0';
  if (t == NULL)
    return canary__fail(err, err_len, CANARY_EWEIGHTS, "no table");
  if (max_upstreams == 0 || max_upstreams > CANARY_MAX_UPSTREAMS)
    max_upstreams = CANARY_MAX_UPSTREAMS;
  if (t->n == 0 || t->n > max_upstreams)
    return canary__fail(err, err_len, CANARY_EWEIGHTS,
                        "%u upstreams; this segment allows 1..%u", t->n,
                        max_upstreams);
  for (uint32_t i = 0; i < t->n; i++) {
    int rc = canary_name_check(
        t->names[i], canary__bounded_len(t->names[i], CANARY_NAME_MAX), err,
        err_len);
    if (rc != 0)
      return rc;
    for (uint32_t k = 0; k < i; k++)
      if (strcmp(t->names[k], t->names[i]) == 0)
        return canary__fail(err, err_len, CANARY_EWEIGHTS,
                            "duplicate upstream name '%s'", t->names[i]);
  }
  return canary__check_weights(t->weights, t->n, err, err_len);
}

/* ---- publishing ----------------------------------------------------- */

void canary__compute_upper(struct table_data *d) {
  uint32_t acc = 0;
  for (uint32_t i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
    if (i < d->n)
      acc += d->effective[i];
    d->upper[i] = i < d->n ? acc : CANARY_WEIGHT_SCALE;
  }
}

/* Marks buffer b as being written: odd sequence.  A previous writer that
 * died may have left it odd already; stepping by two keeps it odd and
 * different, so no reader can match a sequence it read before. */
static uint64_t begin_write(struct table_buf *b) {
  uint64_t s = ck_pr_load_64(&b->seq);
  uint64_t start = (s & 1) ? s + 2 : s + 1;
  ck_pr_store_64(&b->seq, start);
  /* The odd sequence must be visible before any data store, so a reader
   * that copies a partly written buffer fails its sequence re-check. */
  ck_pr_fence_store();
  return start;
}

static void write_data(struct table_buf *b, const struct table_data *d,
                       int names_too) {
  ck_pr_store_64(&b->config_hash, d->config_hash);
  ck_pr_store_32(&b->n, d->n);
  for (uint32_t i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
    if (i == d->n / 2)
      CANARY_FAULT("publish.data");
    ck_pr_store_32(&b->weights[i], d->weights[i]);
    ck_pr_store_32(&b->effective[i], d->effective[i]);
    ck_pr_store_32(&b->upper[i], d->upper[i]);
    ck_pr_store_32(&b->stat[i], d->stat[i]);
  }
  if (names_too)
    canary__store_words(b->names, d->names, sizeof d->names / 8);
}

/* Caller holds the route's writer lock.  Writes d into the back buffer
 * and publishes it; returns the new generation. */
uint64_t canary__publish_locked(struct route_hdr *r,
                                const struct table_data *d) {
  uint64_t gen = ck_pr_load_64(&r->generation);
  struct table_buf *b = &r->tables[(gen + 1) & 1];
  uint64_t start = begin_write(b);

  CANARY_FAULT("publish.odd");
  write_data(b, d, 1);
  /* All data stores complete before the sequence turns even. */
  ck_pr_fence_store();
  CANARY_FAULT("publish.even");
  ck_pr_store_64(&b->seq, start + 1);
  /* The buffer is complete before the generation points readers at it. */
  ck_pr_fence_store();
  CANARY_FAULT("publish.gen");
  ck_pr_store_64(&r->generation, gen + 1);
  return gen + 1;
}

/* Consistent copy of the published buffer.  Returns 0, CANARY_ENOTPUB or
 * CANARY_ECORRUPT (a buffer that never settles, or impossible contents). */
int canary__read_table(const canary_seg_t *seg, struct route_hdr *r,
                       struct table_data *d, uint64_t *gen_out,
                       int names_too) {
  for (int tries = 0; tries < CANARY_READ_RETRIES; tries++) {
    uint64_t gen = ck_pr_load_64(&r->generation);
    struct table_buf *b;
    uint64_t s1, s2;

    if (gen == 0)
      return CANARY_ENOTPUB;
    /* Load the generation before the buffer it selects. */
    ck_pr_fence_load();
    b = &r->tables[gen & 1];
    s1 = ck_pr_load_64(&b->seq);
    if (s1 & 1)
      continue; /* rewritten by a newer publish: use the newer one */
    /* The sequence is read before the data it guards. */
    ck_pr_fence_load();
    d->config_hash = ck_pr_load_64(&b->config_hash);
    d->n = ck_pr_load_32(&b->n);
    for (uint32_t i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
      d->weights[i] = ck_pr_load_32(&b->weights[i]);
      d->effective[i] = ck_pr_load_32(&b->effective[i]);
      d->upper[i] = ck_pr_load_32(&b->upper[i]);
      d->stat[i] = ck_pr_load_32(&b->stat[i]);
    }
    if (names_too) {
      /* The names in use only (a scrape reads a thousand tables); the
       * others read as empty. */
      uint32_t used = d->n < CANARY_MAX_UPSTREAMS ? d->n : CANARY_MAX_UPSTREAMS;
      canary__load_words(d->names, b->names, used * CANARY_NAME_MAX / 8);
      memset(d->names[used], 0, (CANARY_MAX_UPSTREAMS - used) * CANARY_NAME_MAX);
    }
    /* The data is read before the sequence is checked again. */
    ck_pr_fence_load();
    s2 = ck_pr_load_64(&b->seq);
    if (s1 != s2)
      continue;
    /* A reader delayed between loading `generation` and the buffer's
     * sequence may have copied the publish after next, complete and
     * consistent but newer than `gen`: the generation must still be the
     * one we started from, or the contents would carry the wrong number.
     * The fence keeps this load after the sequence re-check. */
    ck_pr_fence_load();
    if (ck_pr_load_64(&r->generation) != gen)
      continue;
    if (d->n == 0 || d->n > seg->max_upstreams ||
        d->upper[d->n - 1] != CANARY_WEIGHT_SCALE)
      return CANARY_ECORRUPT;
    for (uint32_t i = 1; i < d->n; i++)
      if (d->upper[i] < d->upper[i - 1])
        return CANARY_ECORRUPT;
    if (names_too)
      for (uint32_t i = 0; i < CANARY_MAX_UPSTREAMS; i++)
        d->names[i][CANARY_NAME_MAX - 1] = '\0';
    if (gen_out != NULL)
      *gen_out = gen;
    return 0;
  }
  return CANARY_ECORRUPT;
}
