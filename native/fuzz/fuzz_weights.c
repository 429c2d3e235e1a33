/*
 * fuzz_weights.c - weights tables: validation, publish, read and pick.
 *
 * Input, field by field (fields past the end of the input read as 0):
 *
 *   u8  flags   bit0 weights are u32 (else u16)
 *               bit1 n is a u32 (else a u8)
 *               bit2 fix up the last of the first n weights so they sum
 *                    to 10000 when that is possible (reaches valid tables
 *                    without the fuzzer having to solve the sum)
 *               bit3 then set effective weights from the input
 *               bit4 then check the split over 10000 non-sticky picks
 *               bit5 then raise one canary at the stable's expense and
 *                    check that sticky users of that canary stay on it
 *   u8|u32 n
 *   u8  max_upstreams passed to canary_table_check
 *   16 x u16|u32 weights
 *   16 x (u8 len % 65, len bytes)   names; the rest of each name zeroed
 *   bit3: u8 m % 17, m x u16        effective weights for set_effective
 *   bit5: u8 canary, u16 amount
 *   rest: up to 8 x (u8 len % 64, len bytes)   sticky keys
 *
 * canary_table_check() is compared, in both directions, with the rules as
 * canary.h documents them (n in 1..max_upstreams, weights <= 10000 summing
 * to exactly 10000, names 1..63 bytes of A-Z, a-z, 0-9, '.', '_' and '-',
 * unique).  max_upstreams outside 1..16 is not
 * documented; the engine then allows 16, and the target only checks that
 * it never accepts what the 16-upstream rules reject.
 *
 * Valid tables are then published into one real segment (created once
 * in a per-process directory, route claimed once, 16 upstreams) and read
 * back; publishes that must fail must change nothing.  Picks must land on
 * an upstream < n whose effective weight is > 0, sticky picks must depend
 * on the key's bucket only, and the documented promises are checked
 * exactly: a republish with the same hash is a no-op that keeps effective
 * weights; over any 10000 consecutive non-sticky picks the split equals
 * the effective weights; raising a canary only adds buckets to it.
 */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PICKS 1000
#define MAX_KEYS 8
#define GENERATED_KEYS 256

static canary_seg_t *seg;
static int route = -1;
static uint64_t next_hash = 1;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  char path[4096], why[256];
  int rc;

  (void)argc;
  (void)argv;
  fz_path(path, sizeof path, "weights.seg");
  rc =
      canary_seg_open(&seg, path, 1, CANARY_MAX_UPSTREAMS, 0, why, sizeof why);
  FZ_CHECK(rc == CANARY_SEG_CREATED, "segment: %d %s", rc, why);
  route = canary_route_claim(seg, "fuzz-weights", 12, "weights", 7);
  FZ_CHECK(route == 0, "claim returned %d", route);
  return 0;
}

/* Every new upstream name takes a statistics slot, and names that leave
 * keep theirs through the grace period: over a campaign the 16 slots of
 * this segment run out.  That is the documented CANARY_EFULL; the target
 * then starts over on a fresh segment (the route gets no table), where
 * the publish must succeed. */
static void fresh_segment(void) {
  char path[4096], why[256];
  int rc;
  canary_seg_close(seg);
  fz_path(path, sizeof path, "weights.seg");
  unlink(path);
  rc =
      canary_seg_open(&seg, path, 1, CANARY_MAX_UPSTREAMS, 0, why, sizeof why);
  FZ_CHECK(rc == CANARY_SEG_CREATED, "segment: %d %s", rc, why);
  route = canary_route_claim(seg, "fuzz-weights", 12, "weights", 7);
  FZ_CHECK(route == 0, "claim returned %d", route);
}

/* The characters of a Kong upstream name. */
static int name_byte_ok(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* The documented rules for a table, limit = allowed upstreams. */
static int reference_valid(const struct canary_table *t, uint32_t limit) {
  uint64_t sum = 0;
  size_t len[CANARY_MAX_UPSTREAMS];

  if (t->n == 0 || t->n > limit)
    return 0;
  for (uint32_t i = 0; i < t->n; i++) {
    if (t->weights[i] > CANARY_WEIGHT_SCALE)
      return 0;
    sum += t->weights[i];
  }
  if (sum != CANARY_WEIGHT_SCALE)
    return 0;
  for (uint32_t i = 0; i < t->n; i++) {
    const char *nul = memchr(t->names[i], '\0', CANARY_NAME_MAX);
    len[i] = nul == NULL ? CANARY_NAME_MAX : (size_t)(nul - t->names[i]);
    if (len[i] == 0 || len[i] > CANARY_NAME_MAX - 1)
      return 0;
    for (size_t j = 0; j < len[i]; j++)
      if (!name_byte_ok((unsigned char)t->names[i][j]))
        return 0;
    for (uint32_t k = 0; k < i; k++)
      if (len[k] == len[i] && memcmp(t->names[k], t->names[i], len[i]) == 0)
        return 0;
  }
  return 1;
}

static void read_input_table(struct fz_in *in, uint8_t flags,
                             struct canary_table *t) {
  memset(t, 0, sizeof *t);
  t->n = (flags & 2) ? fz_u32(in) : fz_u8(in);
}

static void read_weights_names(struct fz_in *in, uint8_t flags,
                               struct canary_table *t) {
  for (int i = 0; i < CANARY_MAX_UPSTREAMS; i++)
    t->weights[i] = (flags & 1) ? fz_u32(in) : fz_u16(in);
  for (int i = 0; i < CANARY_MAX_UPSTREAMS; i++) {
    size_t len = fz_u8(in) % (CANARY_NAME_MAX + 1);
    fz_bytes(in, t->names[i], len); /* the rest stays zero */
  }
  if ((flags & 4) && t->n >= 1 && t->n <= CANARY_MAX_UPSTREAMS) {
    uint64_t others = 0;
    for (uint32_t i = 0; i + 1 < t->n; i++)
      others += t->weights[i];
    if (others <= CANARY_WEIGHT_SCALE)
      t->weights[t->n - 1] = (uint32_t)(CANARY_WEIGHT_SCALE - others);
  }
}

static void read_view(struct canary_route_view *v) {
  int rc = canary_route_read(seg, route, v);
  FZ_CHECK(rc == 0, "route_read returned %d (%s)", rc, canary_strerror(rc));
}

/* Checks that v holds exactly t with the given effective weights. */
static void check_view(const struct canary_route_view *v,
                       const struct canary_table *t, const uint32_t *eff,
                       uint64_t hash) {
  FZ_CHECK(v->n == t->n, "read n %u, published %u", v->n, t->n);
  FZ_CHECK(v->config_hash == hash, "read hash %llu, published %llu",
           (unsigned long long)v->config_hash, (unsigned long long)hash);
  for (uint32_t i = 0; i < t->n; i++) {
    FZ_CHECK(v->weights[i] == t->weights[i], "weight %u: read %u, put %u", i,
             v->weights[i], t->weights[i]);
    FZ_CHECK(v->effective[i] == eff[i], "effective %u: read %u, want %u", i,
             v->effective[i], eff[i]);
    FZ_CHECK(strcmp(v->names[i], t->names[i]) == 0,
             "name %u: read \"%s\", put \"%s\"", i, v->names[i], t->names[i]);
  }
}

/* One pick; checks the index against the table in v. */
static int pick(const struct canary_route_view *v, const char *key,
                size_t key_len) {
  uint32_t gen = 0;
  int idx = canary_route_pick(seg, route, key, key_len, &gen);
  FZ_CHECK(idx >= 0 && (uint32_t)idx < v->n,
           "pick returned %d for a table of %u", idx, v->n);
  FZ_CHECK(v->effective[idx] > 0, "pick chose upstream %d of weight 0", idx);
  FZ_CHECK(gen == (uint32_t)v->generation, "pick used generation %u, not %llu",
           gen, (unsigned long long)v->generation);
  return idx;
}

struct keys {
  int n;
  char *key[MAX_KEYS];
  size_t len[MAX_KEYS];
};

/* Sticky picks: the index may depend on the key's bucket only. */
static void sticky_picks(const struct canary_route_view *v,
                         const struct keys *k) {
  int by_bucket_idx[MAX_KEYS];
  uint32_t by_bucket[MAX_KEYS];

  for (int i = 0; i < k->n; i++) {
    uint32_t b = canary_sticky_bucket(k->key[i], k->len[i]);
    int idx;
    FZ_CHECK(b < CANARY_WEIGHT_SCALE, "bucket %u", b);
    FZ_CHECK(b == canary_sticky_bucket(k->key[i], k->len[i]),
             "bucket of a key changes");
    if (k->len[i] == 0)
      continue; /* an empty key means a non-sticky pick */
    idx = pick(v, k->key[i], k->len[i]);
    FZ_CHECK(idx == pick(v, k->key[i], k->len[i]), "sticky pick changes");
    by_bucket[i] = b;
    by_bucket_idx[i] = idx;
    for (int j = 0; j < i; j++)
      if (k->len[j] > 0 && by_bucket[j] == b)
        FZ_CHECK(by_bucket_idx[j] == idx,
                 "two keys of bucket %u went to %d and %d", b,
                 by_bucket_idx[j], idx);
  }
}

/* Over any 10000 consecutive non-sticky picks the split is exact. */
static void full_cycle(const struct canary_route_view *v) {
  uint32_t count[CANARY_MAX_UPSTREAMS] = {0};
  for (int i = 0; i < CANARY_WEIGHT_SCALE; i++)
    count[pick(v, NULL, 0)]++;
  for (uint32_t i = 0; i < v->n; i++)
    FZ_CHECK(count[i] == v->effective[i],
             "upstream %u got %u of 10000 picks at effective weight %u", i,
             count[i], v->effective[i]);
}

static int set_effective(const uint32_t *eff, uint32_t m) {
  char err[128];
  uint32_t *copy = malloc(m * sizeof *copy); /* exact size, for ASan */
  int rc;
  FZ_CHECK(copy != NULL || m == 0, "harness: out of memory");
  if (m > 0)
    memcpy(copy, eff, m * sizeof *copy);
  err[0] = '\0';
  rc = canary_route_set_effective(seg, route, copy, m, NULL, err, sizeof err);
  FZ_CHECK(rc == 0 || err[0] != '\0', "set_effective failed without a reason");
  free(copy);
  return rc;
}

/* Raising canary j by `amount` at the expense of upstream 0 may only add
 * buckets to j: every sticky user of j stays on j. */
static void raise_canary(const struct canary_route_view *v,
                         const struct canary_table *t, const struct keys *k,
                         uint8_t which, uint16_t amount) {
  static int before[GENERATED_KEYS + MAX_KEYS];
  uint32_t eff[CANARY_MAX_UPSTREAMS], j, d;
  struct canary_route_view after;
  char key[32];
  int rc;

  if (v->n < 2)
    return;
  j = 1 + which % (v->n - 1);
  d = amount % (v->effective[0] + 1);
  memcpy(eff, v->effective, sizeof eff);
  eff[0] -= d;
  eff[j] += d;
  for (int i = 0; i < GENERATED_KEYS + k->n; i++) {
    if (i < GENERATED_KEYS) {
      int n = snprintf(key, sizeof key, "user-%d", i);
      before[i] = pick(v, key, (size_t)n);
    } else if (k->len[i - GENERATED_KEYS] > 0) {
      before[i] =
          pick(v, k->key[i - GENERATED_KEYS], k->len[i - GENERATED_KEYS]);
    }
  }
  rc = set_effective(eff, v->n);
  FZ_CHECK(rc == 0, "valid effective weights rejected: %d", rc);
  read_view(&after);
  check_view(&after, t, eff, v->config_hash);
  for (int i = 0; i < GENERATED_KEYS + k->n; i++) {
    int now;
    if (i < GENERATED_KEYS) {
      int n = snprintf(key, sizeof key, "user-%d", i);
      now = pick(&after, key, (size_t)n);
    } else if (k->len[i - GENERATED_KEYS] > 0) {
      now =
          pick(&after, k->key[i - GENERATED_KEYS], k->len[i - GENERATED_KEYS]);
    } else {
      continue;
    }
    FZ_CHECK(before[i] != (int)j || now == (int)j,
             "raising upstream %u by %u moved a sticky user of it to %d", j, d,
             now);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fz_in in = {data, size};
  struct canary_table t;
  struct canary_route_view before, v, again;
  struct keys keys;
  uint32_t eff[CANARY_MAX_UPSTREAMS], m = 0, limit;
  uint8_t flags, mu, which = 0;
  uint16_t amount = 0;
  char err[256], *small;
  int rc, ref, ref16;
  uint64_t gen = 0, gen2 = 0, hash;

  flags = fz_u8(&in);
  read_input_table(&in, flags, &t);
  mu = fz_u8(&in);
  read_weights_names(&in, flags, &t);
  if (flags & 8) {
    m = fz_u8(&in) % (CANARY_MAX_UPSTREAMS + 1);
    for (uint32_t i = 0; i < m; i++)
      eff[i] = fz_u16(&in);
  }
  if (flags & 32) {
    which = fz_u8(&in);
    amount = fz_u16(&in);
  }
  keys.n = 0;
  while (in.n > 0 && keys.n < MAX_KEYS) {
    size_t len = fz_u8(&in) % CANARY_KEY_MAX;
    keys.key[keys.n] = fz_dup(&in, len, &keys.len[keys.n]);
    keys.n++;
  }

  /* ---- validation, against the documented rules */
  limit = (mu >= 1 && mu <= CANARY_MAX_UPSTREAMS) ? mu : CANARY_MAX_UPSTREAMS;
  ref = reference_valid(&t, limit);
  ref16 = reference_valid(&t, CANARY_MAX_UPSTREAMS);
  memset(err, 'x', sizeof err);
  rc = canary_table_check(&t, mu, err, sizeof err);
  FZ_CHECK(rc == 0 || rc == CANARY_EWEIGHTS, "table_check returned %d", rc);
  if (mu >= 1 && mu <= CANARY_MAX_UPSTREAMS)
    FZ_CHECK((rc == 0) == ref,
             "table_check %s a table the documented rules %s (n %u, "
             "max_upstreams %u): %s",
             rc == 0 ? "accepted" : "rejected", ref ? "accept" : "reject", t.n,
             mu, err);
  else if (rc == 0)
    FZ_CHECK(ref16, "table_check accepted an invalid table (max_upstreams %u)",
             mu);
  FZ_CHECK(rc == 0 ? err[0] == '\0' : err[0] != '\0' && strlen(err) < 256,
           "error text \"%.40s\" does not match the verdict %d", err, rc);
  /* The reason must fit any buffer it is given, and NULL is allowed. */
  small = malloc(7);
  FZ_CHECK(small != NULL, "harness: out of memory");
  FZ_CHECK(canary_table_check(&t, mu, small, 7) == rc &&
               canary_table_check(&t, mu, NULL, 0) == rc,
           "verdict depends on the error buffer");
  free(small);

  /* ---- publish into the real segment */
  read_view(&before);
  hash = next_hash++;
  rc = canary_route_publish(seg, route, &t, hash, &gen, err, sizeof err);
  if (!ref16) {
    FZ_CHECK(rc == CANARY_EWEIGHTS, "publish of an invalid table: %d", rc);
    read_view(&v);
    FZ_CHECK(v.generation == before.generation,
             "a rejected publish changed the generation");
    goto done;
  }
  if (rc == CANARY_EFULL) {
    FZ_CHECK(strstr(err, "statistics slot") != NULL,
             "publish EFULL without saying why: %s", err);
    read_view(&v);
    FZ_CHECK(v.generation == before.generation,
             "a publish refused for want of slots changed the table");
    fresh_segment();
    read_view(&before);
    rc = canary_route_publish(seg, route, &t, hash, &gen, err, sizeof err);
  }
  FZ_CHECK(rc == 0, "publish of a valid table: %d (%s)", rc, err);
  FZ_CHECK(gen == before.generation + 1,
           "publish made generation %llu after %llu", (unsigned long long)gen,
           (unsigned long long)before.generation);
  read_view(&v);
  FZ_CHECK(v.generation == gen, "read generation %llu, published %llu",
           (unsigned long long)v.generation, (unsigned long long)gen);
  check_view(&v, &t, t.weights, hash);

  /* Documented: the same table with the same hash is a no-op. */
  rc = canary_route_publish(seg, route, &t, hash, &gen2, NULL, 0);
  FZ_CHECK(rc == 0 && gen2 == gen, "republish: %d, generation %llu -> %llu",
           rc, (unsigned long long)gen, (unsigned long long)gen2);

  for (int i = 0; i < PICKS; i++)
    pick(&v, NULL, 0);
  sticky_picks(&v, &keys);

  if (flags & 8) {
    uint64_t sum = 0;
    int ok = m == t.n;
    for (uint32_t i = 0; i < m; i++) {
      ok = ok && eff[i] <= CANARY_WEIGHT_SCALE;
      sum += eff[i];
    }
    ok = ok && sum == CANARY_WEIGHT_SCALE;
    rc = set_effective(eff, m);
    FZ_CHECK((rc == 0) == ok,
             "set_effective of %u weights (sum %llu) for %u "
             "upstreams returned %d",
             m, (unsigned long long)sum, t.n, rc);
    read_view(&again);
    if (rc == 0) {
      FZ_CHECK(again.generation == v.generation + 1,
               "set_effective did not publish");
      check_view(&again, &t, eff, hash);
      /* A worker re-applying the same config must keep these weights. */
      rc = canary_route_publish(seg, route, &t, hash, &gen2, NULL, 0);
      FZ_CHECK(rc == 0 && gen2 == again.generation,
               "republish after set_effective: %d", rc);
      read_view(&v);
      check_view(&v, &t, eff, hash);
    } else {
      FZ_CHECK(rc == CANARY_EWEIGHTS, "set_effective returned %d", rc);
      FZ_CHECK(again.generation == v.generation,
               "a rejected set_effective changed the generation");
    }
    for (int i = 0; i < PICKS; i++)
      pick(&v, NULL, 0);
    sticky_picks(&v, &keys);
  }
  if (flags & 16)
    full_cycle(&v);
  if (flags & 32)
    raise_canary(&v, &t, &keys, which, amount);

done:
  for (int i = 0; i < keys.n; i++)
    free(keys.key[i]);
  return 0;
}
