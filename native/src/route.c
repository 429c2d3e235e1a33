/*
 * route.c - route slots, the weights publish protocol, and picking.
 *
 * A route is a slot in the segment claimed under a string key (the plugin
 * instance id).  Its weights table is read on every request by every
 * worker and written a few times a day by whoever applies a config change
 * or a progression step, so the design optimises the reader completely:
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
 *     front buffer.  Its writer word names a dead pid, which the next
 *     writer takes over (owner.c) before rewriting the back buffer.
 *
 * Writers exclude each other with the route's writer word; claims of new
 * slots with the segment-wide claim word.  Neither is ever looked at by a
 * request path.
 *
 * Key and label are written before the slot's state turns READY (with a
 * store fence between) and the key never changes afterwards, so readers
 * that load READY and then fence may compare the key directly.
 */
#include "internal.h"

#include <ck_pr.h>
#include <endian.h>
#include <string.h>

#define WRITER_TIMEOUT_MS 250u
#define READ_RETRIES 100000

/* ---- small helpers -------------------------------------------------- */

static int route_ok(const canary_seg_t *seg, int route) {
  return seg != NULL && route >= 0 && (uint32_t)route < seg->max_routes;
}

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

static int name_char_ok(unsigned char c) {
  return c > 0x20 && c < 0x7f && c != '"' && c != '\\';
}

static size_t bounded_len(const char *s, size_t cap) {
  const char *nul = memchr(s, '\0', cap);
  return nul == NULL ? cap : (size_t)(nul - s);
}

/* ---- validation ----------------------------------------------------- */

static int check_weights(const uint32_t *w, uint32_t n, char *err,
                         size_t err_len) {
  uint64_t sum = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (w[i] > CANARY_WEIGHT_SCALE)
      return canary__fail(err, err_len, CANARY_EWEIGHTS,
                          "weight of upstream %u is %u, above %d", i + 1,
                          w[i], CANARY_WEIGHT_SCALE);
    sum += w[i];
  }
  if (sum != CANARY_WEIGHT_SCALE)
    return canary__fail(err, err_len, CANARY_EWEIGHTS,
                        "weights sum to %llu, not %d",
                        (unsigned long long)sum, CANARY_WEIGHT_SCALE);
  return 0;
}

int canary_table_check(const struct canary_table *t, uint32_t max_upstreams,
                       char *err, size_t err_len) {
  int rc;
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
  rc = check_weights(t->weights, t->n, err, err_len);
  if (rc != 0)
    return rc;
  for (uint32_t i = 0; i < t->n; i++) {
    size_t len = bounded_len(t->names[i], CANARY_NAME_MAX);
    if (len == 0)
      return canary__fail(err, err_len, CANARY_EWEIGHTS,
                          "name of upstream %u is empty", i + 1);
    if (len == CANARY_NAME_MAX)
      return canary__fail(err, err_len, CANARY_EWEIGHTS,
                          "name of upstream %u is longer than %d bytes",
                          i + 1, CANARY_NAME_MAX - 1);
    for (size_t j = 0; j < len; j++)
      if (!name_char_ok((unsigned char)t->names[i][j]))
        return canary__fail(err, err_len, CANARY_EWEIGHTS,
                            "name of upstream %u has a forbidden byte "
                            "0x%02x at %zu",
                            i + 1, (unsigned char)t->names[i][j], j);
    for (uint32_t k = 0; k < i; k++)
      if (strcmp(t->names[k], t->names[i]) == 0)
        return canary__fail(err, err_len, CANARY_EWEIGHTS,
                            "upstream name '%s' appears twice", t->names[i]);
  }
  return 0;
}

/* ---- claims --------------------------------------------------------- */

static int key_ok(const char *key, size_t key_len) {
  return key != NULL && key_len > 0 && key_len < CANARY_KEY_MAX &&
         memchr(key, '\0', key_len) == NULL;
}

/* Compares a READY slot's key (immutable once READY) with key/key_len. */
static int key_equals(const struct route_hdr *r, const char *key,
                      size_t key_len) {
  return bounded_len(r->key, CANARY_KEY_MAX) == key_len &&
         memcmp(r->key, key, key_len) == 0;
}

int canary_route_find(const canary_seg_t *seg, const char *key,
                      size_t key_len) {
  if (seg == NULL || !key_ok(key, key_len))
    return CANARY_EINVAL;
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    struct route_hdr *r = canary__route(seg, i);
    if (ck_pr_load_32(&r->state) != ROUTE_READY)
      continue;
    /* Pairs with the store fence before state = READY in claim: the key
     * we compare next was complete before READY became visible. */
    ck_pr_fence_load();
    if (key_equals(r, key, key_len))
      return (int)i;
  }
  return CANARY_ENOENT;
}

/* The length a label keeps in its slot: too long a label is cut between
 * UTF-8 characters, never inside one (the renderer would show a '?' for
 * the stump). */
static size_t label_cut(const char *label, size_t label_len) {
  if (label_len < CANARY_LABEL_MAX)
    return label_len;
  label_len = CANARY_LABEL_MAX - 1;
  while (label_len > 0 && ((unsigned char)label[label_len] & 0xc0) == 0x80)
    label_len--;
  return label_len;
}

/* Caller passes label_len already through label_cut(). */
static void store_label(struct route_hdr *r, const char *label,
                        size_t label_len) {
  char buf[CANARY_LABEL_MAX];
  memset(buf, 0, sizeof buf);
  canary__copy_str(buf, sizeof buf, label, label_len);
  canary__store_words(r->label, buf, CANARY_LABEL_MAX / 8);
}

int canary_route_claim(canary_seg_t *seg, const char *key, size_t key_len,
                       const char *label, size_t label_len) {
  struct seg_header *h;
  char cur[CANARY_LABEL_MAX];
  int idx, rc;

  if (seg == NULL || !key_ok(key, key_len) ||
      (label == NULL && label_len > 0))
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  label_len = label_cut(label, label_len);
  h = canary__header(seg);

  rc = canary__owner_acquire(&h->claim_owner, WRITER_TIMEOUT_MS);
  if (rc != 0)
    return rc;
  idx = canary_route_find(seg, key, key_len);
  if (idx >= 0) {
    struct route_hdr *r = canary__route(seg, (uint32_t)idx);
    canary__load_words(cur, r->label, CANARY_LABEL_MAX / 8);
    cur[CANARY_LABEL_MAX - 1] = '\0';
    /* Relabelling races only with readers copying the label word by
     * word; the worst they see is a mixed label once, never bad memory. */
    if (label_len > 0 && (strlen(cur) != label_len ||
                          memcmp(cur, label, label_len) != 0))
      store_label(r, label, label_len);
  } else {
    idx = CANARY_EFULL;
    for (uint32_t i = 0; i < seg->max_routes; i++) {
      struct route_hdr *r = canary__route(seg, i);
      char kbuf[CANARY_KEY_MAX];
      if (ck_pr_load_32(&r->state) != ROUTE_FREE)
        continue;
      memset(kbuf, 0, sizeof kbuf);
      memcpy(kbuf, key, key_len);
      canary__store_words(r->key, kbuf, CANARY_KEY_MAX / 8);
      store_label(r, label, label_len);
      /* Key and label must be visible before the slot reads as READY. */
      ck_pr_fence_store();
      ck_pr_store_32(&r->state, ROUTE_READY);
      ck_pr_inc_32(&h->routes_used);
      idx = (int)i;
      break;
    }
  }
  canary__owner_release(&h->claim_owner);
  return idx;
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
    ck_pr_store_32(&b->weights[i], d->weights[i]);
    ck_pr_store_32(&b->effective[i], d->effective[i]);
    ck_pr_store_32(&b->upper[i], d->upper[i]);
  }
  if (names_too)
    canary__store_words(b->names, d->names, sizeof d->names / 8);
}

/* Caller holds the route's writer word.  Writes d into the back buffer
 * and publishes it; returns the new generation. */
uint64_t canary__publish_locked(struct route_hdr *r,
                               const struct table_data *d) {
  uint64_t gen = ck_pr_load_64(&r->generation);
  struct table_buf *b = &r->tables[(gen + 1) & 1];
  uint64_t start = begin_write(b);

  write_data(b, d, 1);
  /* All data stores complete before the sequence turns even. */
  ck_pr_fence_store();
  ck_pr_store_64(&b->seq, start + 1);
  /* The buffer is complete before the generation points readers at it. */
  ck_pr_fence_store();
  ck_pr_store_64(&r->generation, gen + 1);
  return gen + 1;
}

/* Consistent copy of the published buffer.  Returns 0, CANARY_ENOTPUB or
 * CANARY_ECORRUPT (a buffer that never settles, or impossible contents). */
int canary__read_table(const canary_seg_t *seg, struct route_hdr *r,
                      struct table_data *d, uint64_t *gen_out,
                      int names_too) {
  for (int tries = 0; tries < READ_RETRIES; tries++) {
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
    }
    if (names_too)
      canary__load_words(d->names, b->names, sizeof d->names / 8);
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

static int ready_route(const canary_seg_t *seg, int route,
                       struct route_hdr **out) {
  if (!route_ok(seg, route))
    return CANARY_EINVAL;
  *out = canary__route(seg, (uint32_t)route);
  return ck_pr_load_32(&(*out)->state) == ROUTE_READY ? 0 : CANARY_ENOENT;
}

static int same_config(const struct table_data *a,
                       const struct table_data *b) {
  if (a->config_hash != b->config_hash || a->n != b->n)
    return 0;
  for (uint32_t i = 0; i < a->n; i++)
    if (a->weights[i] != b->weights[i] ||
        strcmp(a->names[i], b->names[i]) != 0)
      return 0;
  return 1;
}

int canary_route_publish(canary_seg_t *seg, int route,
                         const struct canary_table *t, uint64_t config_hash,
                         uint64_t *gen_out, char *err, size_t err_len) {
  return canary_route_publish_prog(seg, route, t, NULL, config_hash, gen_out,
                                   err, err_len);
}

int canary_route_publish_prog(canary_seg_t *seg, int route,
                              const struct canary_table *t,
                              const struct canary_prog_params *prog,
                              uint64_t config_hash, uint64_t *gen_out,
                              char *err, size_t err_len) {
  struct table_data d, cur;
  struct route_hdr *r;
  uint64_t gen;
  int rc;

  if (seg == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no segment");
  if (seg->readonly)
    return canary__fail(err, err_len, CANARY_EREADONLY,
                        "segment attached read-only");
  rc = ready_route(seg, route, &r);
  if (rc != 0)
    return canary__fail(err, err_len, rc, "route %d is not claimed", route);
  rc = canary_table_check(t, seg->max_upstreams, err, err_len);
  if (rc != 0)
    return rc;
  if (prog != NULL) {
    rc = canary_prog_check(prog, t->n, err, err_len);
    if (rc != 0)
      return rc;
  }

  memset(&d, 0, sizeof d);
  d.config_hash = config_hash;
  d.n = t->n;
  for (uint32_t i = 0; i < t->n; i++) {
    d.weights[i] = t->weights[i];
    d.effective[i] = t->weights[i];
    canary__copy_str(d.names[i], CANARY_NAME_MAX, t->names[i],
                     strlen(t->names[i]));
  }

  rc = canary__owner_acquire(&r->writer, WRITER_TIMEOUT_MS);
  if (rc != 0)
    return canary__fail(err, err_len, rc,
                        "another process is publishing this route");
  /* Every worker applies the same config change; only the first one
   * publishes, the rest find it in place and keep (for instance) the
   * effective weights a progression has set since. */
  if (canary__read_table(seg, r, &cur, &gen, 1) == 0 &&
      same_config(&cur, &d)) {
    canary__owner_release(&r->writer);
    if (gen_out != NULL)
      *gen_out = gen;
    return 0;
  }
  canary__prog_start(seg, (uint32_t)route, prog, &d, canary_clock_us());
  canary__compute_upper(&d);
  gen = canary__publish_locked(r, &d);
  canary__owner_release(&r->writer);
  if (gen_out != NULL)
    *gen_out = gen;
  return 0;
}

int canary_route_set_effective(canary_seg_t *seg, int route,
                               const uint32_t *effective, uint32_t n,
                               uint64_t *gen_out, char *err,
                               size_t err_len) {
  struct table_data d;
  struct route_hdr *r;
  uint64_t gen;
  int rc;

  if (seg == NULL || effective == NULL)
    return canary__fail(err, err_len, CANARY_EINVAL, "no segment or table");
  if (seg->readonly)
    return canary__fail(err, err_len, CANARY_EREADONLY,
                        "segment attached read-only");
  rc = ready_route(seg, route, &r);
  if (rc != 0)
    return canary__fail(err, err_len, rc, "route %d is not claimed", route);
  rc = canary__owner_acquire(&r->writer, WRITER_TIMEOUT_MS);
  if (rc != 0)
    return canary__fail(err, err_len, rc,
                        "another process is publishing this route");
  rc = canary__read_table(seg, r, &d, &gen, 1);
  if (rc == 0 && n != d.n)
    rc = canary__fail(err, err_len, CANARY_EWEIGHTS,
                      "%u effective weights for %u upstreams", n, d.n);
  if (rc == 0)
    rc = check_weights(effective, n, err, err_len);
  if (rc == 0) {
    memcpy(d.effective, effective, n * sizeof *effective);
    canary__compute_upper(&d);
    gen = canary__publish_locked(r, &d);
    if (gen_out != NULL)
      *gen_out = gen;
  }
  canary__owner_release(&r->writer);
  return rc;
}

int canary__route_publish_stall(canary_seg_t *seg, int route,
                                const struct canary_table *t) {
  struct route_hdr *r;
  struct table_buf *b;
  int rc = ready_route(seg, route, &r);
  if (rc != 0 || t == NULL)
    return rc != 0 ? rc : CANARY_EINVAL;
  rc = canary__owner_acquire(&r->writer, WRITER_TIMEOUT_MS);
  if (rc != 0)
    return rc;
  b = &r->tables[(ck_pr_load_64(&r->generation) + 1) & 1];
  begin_write(b);
  ck_pr_store_32(&b->n, t->n);
  for (uint32_t i = 0; i < t->n / 2; i++)
    ck_pr_store_32(&b->weights[i], t->weights[i]);
  return 0; /* writer word held, buffer odd: as if killed right here */
}

/* ---- reading -------------------------------------------------------- */

int canary_route_read(const canary_seg_t *seg, int route,
                      struct canary_route_view *out) {
  struct table_data d;
  struct route_hdr *r;
  int rc;

  if (out == NULL)
    return CANARY_EINVAL;
  rc = ready_route(seg, route, &r);
  if (rc != 0)
    return rc;
  memset(out, 0, sizeof *out);
  memcpy(out->key, r->key, CANARY_KEY_MAX); /* immutable once READY */
  out->key[CANARY_KEY_MAX - 1] = '\0';
  canary__load_words(out->label, r->label, CANARY_LABEL_MAX / 8);
  out->label[CANARY_LABEL_MAX - 1] = '\0';
  {
    const struct route_stripe *rs =
        canary__route_stripes(seg, (uint32_t)route);
    for (uint32_t k = 0; k < CANARY_STRIPES; k++) {
      for (int i = 0; i < CANARY_TRACE_SOURCES; i++)
        out->trace[i] += ck_pr_load_64((uint64_t *)&rs[k].trace[i]);
      for (int i = 0; i < CANARY_EVENTS; i++)
        out->events[i] += ck_pr_load_64((uint64_t *)&rs[k].events[i]);
    }
  }
  rc = canary__read_table(seg, r, &d, &out->generation, 1);
  if (rc == CANARY_ENOTPUB)
    return 0; /* claimed, nothing published yet: generation 0 */
  if (rc != 0)
    return rc;
  out->config_hash = d.config_hash;
  out->n = d.n;
  memcpy(out->weights, d.weights, sizeof d.weights);
  memcpy(out->effective, d.effective, sizeof d.effective);
  memcpy(out->names, d.names, sizeof d.names);
  return 0;
}

/* ---- picking -------------------------------------------------------- */

/* Little-endian 64-bit load of n <= 8 bytes (zero-padded).  Explicit
 * byte order keeps buckets identical on every architecture. */
static inline uint64_t load_le(const unsigned char *p, size_t n) {
  uint64_t w = 0;
  memcpy(&w, p, n);
  return le64toh(w);
}

/* Fixed, seedless: every worker, every node and every release must put a
 * key in the same bucket.  Golden test values in test_route.c pin it. */
uint32_t canary_sticky_bucket(const char *key, size_t key_len) {
  const unsigned char *p = (const unsigned char *)key;
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)key_len;
  size_t i = 0;

  if (key == NULL)
    key_len = 0;
  for (; i + 8 <= key_len; i += 8) {
    h = (h ^ load_le(p + i, 8)) * 0xff51afd7ed558ccdULL;
    h ^= h >> 32;
  }
  if (i < key_len) {
    h = (h ^ load_le(p + i, key_len - i)) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 32;
  }
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 32;
  /* Multiply-shift range reduction: the top 32 bits scaled to 0..9999. */
  return (uint32_t)(((h >> 32) * CANARY_WEIGHT_SCALE) >> 32);
}

/* Golden-ratio step on the 0..9999 line.  Coprime with 10000, so any
 * 10000 consecutive sequence values visit every point exactly once, and
 * short runs are spread evenly (low discrepancy). */
#define SEQ_STEP 6181u

int canary_route_pick(canary_seg_t *seg, int route, const char *key,
                      size_t key_len, uint32_t *gen_out) {
  struct route_hdr *r;
  uint32_t pos;

  if (!route_ok(seg, route))
    return CANARY_EINVAL;
  r = canary__route(seg, (uint32_t)route);
  if (key != NULL && key_len > 0) {
    pos = canary_sticky_bucket(key, key_len);
  } else if (seg->readonly) {
    return CANARY_EREADONLY; /* the sequence is a shared write */
  } else {
    /* One shared counter per route for all processes; fetch-and-add is
     * the only shared write of a pick. */
    uint64_t n = ck_pr_faa_64(&canary__route_seq(seg, (uint32_t)route)->next,
                              1);
    pos = (uint32_t)((n % CANARY_WEIGHT_SCALE) * SEQ_STEP %
                     CANARY_WEIGHT_SCALE);
  }

  for (int tries = 0; tries < READ_RETRIES; tries++) {
    uint64_t gen = ck_pr_load_64(&r->generation);
    struct table_buf *b;
    uint64_t s1;
    uint32_t n, idx = CANARY_MAX_UPSTREAMS;

    if (gen == 0)
      return ck_pr_load_32(&r->state) == ROUTE_READY ? CANARY_ENOTPUB
                                                      : CANARY_ENOENT;
    /* Generation before the buffer it selects. */
    ck_pr_fence_load();
    b = &r->tables[gen & 1];
    s1 = ck_pr_load_64(&b->seq);
    if (s1 & 1)
      continue;
    /* Sequence before the data it guards. */
    ck_pr_fence_load();
    n = ck_pr_load_32(&b->n);
    if (n == 0 || n > seg->max_upstreams)
      n = 0; /* torn or corrupt; decided after the re-check */
    for (uint32_t i = 0; i < n; i++)
      if (pos < ck_pr_load_32(&b->upper[i])) {
        idx = i;
        break;
      }
    /* Data before the sequence re-check. */
    ck_pr_fence_load();
    if (ck_pr_load_64(&b->seq) != s1)
      continue;
    /* Same generation still: see canary__read_table. */
    ck_pr_fence_load();
    if (ck_pr_load_64(&r->generation) != gen)
      continue;
    if (idx >= n)
      return CANARY_ECORRUPT;
    if (gen_out != NULL)
      *gen_out = (uint32_t)gen;
    return (int)idx;
  }
  return CANARY_ECORRUPT;
}

/* ---- recording ------------------------------------------------------ */

int canary_route_record(canary_seg_t *seg, int route, int upstream,
                        uint64_t latency_us, int status, int trace_source) {
  struct route_hdr *r;
  struct up_stats *st;
  int cls, stripe;

  if (!route_ok(seg, route) || upstream < 0 ||
      (uint32_t)upstream >= seg->max_upstreams || trace_source < -1 ||
      trace_source >= CANARY_TRACE_SOURCES)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  r = canary__route(seg, (uint32_t)route);
  if (ck_pr_load_32(&r->state) != ROUTE_READY)
    return CANARY_ENOENT;
  st = canary__stats(seg, (uint32_t)route, (uint32_t)upstream);
  cls = (status >= 100 && status <= 599) ? status / 100 : 0;
  stripe = canary__stripe(seg);
  /* Independent counters: no ordering among them is promised, a snapshot
   * may see one add and not yet another (like any Prometheus scrape).
   * The bucket is shared by all processes: one atomic add. */
  ck_pr_add_64(&st->buckets[canary__bucket_of(latency_us)], 1);
  canary__count(&st->stripes[stripe].sum_us, latency_us, stripe);
  canary__count(&st->stripes[stripe].status[cls], 1, stripe);
  if (trace_source >= 0)
    canary__count(
        &canary__route_stripes(seg, (uint32_t)route)[stripe].trace[trace_source],
        1, stripe);
  return 0;
}

int canary_route_event(canary_seg_t *seg, int route, int event) {
  struct route_hdr *r;
  if (event < 0 || event >= CANARY_EVENTS)
    return CANARY_EINVAL;
  if (ready_route(seg, route, &r) != 0)
    return CANARY_EINVAL;
  if (seg->readonly)
    return CANARY_EREADONLY;
  {
    int stripe = canary__stripe(seg);
    canary__count(
        &canary__route_stripes(seg, (uint32_t)route)[stripe].events[event], 1,
        stripe);
  }
  return 0;
}
