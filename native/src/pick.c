/*
 * pick.c - choosing an upstream for a request, lock-free.
 *
 * The reader side of the publish protocol in table.c, specialised for the
 * request path: no copy of the table, only a scan of the published
 * buffer's cumulative bounds, validated by its sequence word and the
 * generation afterwards.
 */
#include "internal.h"

#include <ck_pr.h>
#include <endian.h>
#include <string.h>

/* Little-endian 64-bit load of n <= 8 bytes (zero-padded).  Explicit
 * byte order keeps buckets identical on every architecture. */
static inline uint64_t load_le(const unsigned char *p, size_t n) {
  uint64_t w = 0;
  memcpy(&w, p, n);
  return le64toh(w);
}

/* Fixed, seedless: every worker, every node and every release must put a
 * key in the same bucket.  Golden values in test_route.c pin it. */
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

  if (!canary__route_ok(seg, route))
    return CANARY_EINVAL;
  r = canary__route(seg, (uint32_t)route);
  if (key != NULL && key_len > 0) {
    pos = canary_sticky_bucket(key, key_len);
  } else if (seg->readonly) {
    return CANARY_EREADONLY; /* the sequence is a shared write */
  } else {
    /* One shared counter per route for all processes; fetch-and-add is
     * the only shared write of a pick. */
    uint64_t n =
        ck_pr_faa_64(&canary__route_seq(seg, (uint32_t)route)->next, 1);
    pos =
        (uint32_t)((n % CANARY_WEIGHT_SCALE) * SEQ_STEP % CANARY_WEIGHT_SCALE);
  }

  for (int tries = 0; tries < CANARY_READ_RETRIES; tries++) {
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
