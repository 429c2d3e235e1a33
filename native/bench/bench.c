/*
 * bench.c - engine micro-benchmarks against lock-based baselines, same run.
 *
 * Prints one "name value unit" line per figure.  Each figure is the best
 * (lowest) of several timed rounds, which filters out scheduler noise on
 * a shared machine.  Baselines record the same three counters a record
 * touches (bucket, sum, status class):
 *
 *   mutex    a process-shared pthread mutex around three plain adds;
 *   shdict   what an ngx.shared.DICT:incr does per counter: build the
 *            key string, hash it, take the zone's lock, find the node,
 *            add, unlock — three times.
 *
 * The "x2" figures run two processes on one segment at once (this
 * machine has two cores), where the lock-free design should scale and the
 * locks should not.
 */
#include "canary.h"

#include <ck_pr.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 5

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void report(const char *name, double value, const char *unit) {
  printf("%s %.2f %s\n", name, value, unit);
  fflush(stdout);
}

/* ---- baselines --------------------------------------------------------- */

struct mutex_hist {
  pthread_mutex_t mu;
  uint64_t sum, status[6], buckets[CANARY_HIST_BUCKETS];
};

#define SHDICT_SLOTS 8192u

struct shdict_node {
  uint32_t hash;
  char key[48];
  uint64_t value;
};

struct shdict {
  uint32_t lock; /* spin lock, like ngx_shmtx on a zone */
  struct shdict_node nodes[SHDICT_SLOTS];
};

static void shdict_lock(uint32_t *l) {
  while (!ck_pr_cas_32(l, 0, 1))
    ck_pr_stall();
}

static void shdict_unlock(uint32_t *l) {
  ck_pr_fence_store();
  ck_pr_store_32(l, 0);
}

static uint32_t crc_like(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

/* incr(key, by): the key's hash picks a slot, probing linearly. */
static void shdict_incr(struct shdict *d, const char *key, size_t n,
                        uint64_t by) {
  uint32_t h = crc_like(key, n);
  shdict_lock(&d->lock);
  for (uint32_t i = 0; i < SHDICT_SLOTS; i++) {
    struct shdict_node *nd = &d->nodes[(h + i) % SHDICT_SLOTS];
    if (nd->hash == 0) {
      nd->hash = h;
      memcpy(nd->key, key, n);
      nd->key[n] = '\0';
    }
    if (nd->hash == h && memcmp(nd->key, key, n) == 0 &&
        nd->key[n] == '\0') {
      nd->value += by;
      break;
    }
  }
  shdict_unlock(&d->lock);
}

/* Builds "route:upstream:suffix" the way a Lua exporter concatenates. */
static size_t make_key(char *out, const char *suffix, int bucket) {
  size_t n = 0;
  const char *prefix = "ai:automation-service-canary:";
  while (*prefix)
    out[n++] = *prefix++;
  while (*suffix)
    out[n++] = *suffix++;
  if (bucket >= 0) {
    char digits[12];
    int k = 0;
    do {
      digits[k++] = (char)('0' + bucket % 10);
      bucket /= 10;
    } while (bucket > 0);
    while (k > 0)
      out[n++] = digits[--k];
  }
  return n;
}

/* ---- workloads --------------------------------------------------------- */

struct ctx {
  canary_seg_t *seg;
  int route;
  uint32_t stat; /* statistics handle of the canary, as the plugin keeps */
  struct mutex_hist *mh;
  struct shdict *sd;
  char keys[1024][40];
  uint64_t lat[1024];
};

enum op {
  OP_PICK,
  OP_PICK_STICKY,
  OP_RECORD,
  OP_TRACE,
  OP_RECORD_MUTEX,
  OP_RECORD_SHDICT
};

static uint64_t sink;

static void run_op(struct ctx *c, enum op op, long iters) {
  uint32_t gen;
  char id[33], tp[56];
  for (long i = 0; i < iters; i++) {
    unsigned j = (unsigned)i & 1023u;
    switch (op) {
    case OP_PICK:
      sink += (uint64_t)canary_route_pick(c->seg, c->route, NULL, 0, &gen);
      break;
    case OP_PICK_STICKY:
      sink += (uint64_t)canary_route_pick(c->seg, c->route, c->keys[j], 36,
                                          &gen);
      break;
    case OP_RECORD:
      /* The plugin's path: by the handle its pick's table gave. */
      canary_stat_record(c->seg, c->route, c->stat, c->lat[j], 200, -1, 0);
      break;
    case OP_TRACE:
      canary_trace_generate(id, tp);
      sink += (uint64_t)id[0];
      break;
    case OP_RECORD_MUTEX: {
      int b = canary_hist_bucket_of(c->lat[j]);
      pthread_mutex_lock(&c->mh->mu);
      c->mh->buckets[b]++;
      c->mh->sum += c->lat[j];
      c->mh->status[2]++;
      pthread_mutex_unlock(&c->mh->mu);
      break;
    }
    case OP_RECORD_SHDICT: {
      char key[64];
      size_t n;
      n = make_key(key, "bucket:", canary_hist_bucket_of(c->lat[j]));
      shdict_incr(c->sd, key, n, 1);
      n = make_key(key, "sum", -1);
      shdict_incr(c->sd, key, n, c->lat[j]);
      n = make_key(key, "2xx", -1);
      shdict_incr(c->sd, key, n, 1);
      break;
    }
    }
  }
}

/* Best-of-ROUNDS ns per op, with `procs` processes running at once. */
static double measure(struct ctx *c, enum op op, long iters, int procs) {
  double best = 1e30;
  for (int r = 0; r < ROUNDS; r++) {
    double t0 = now_ns(), dt;
    pid_t kids[8];
    for (int p = 1; p < procs; p++) {
      kids[p] = fork();
      if (kids[p] == 0) {
        run_op(c, op, iters);
        _exit(0);
      }
    }
    run_op(c, op, iters);
    for (int p = 1; p < procs; p++)
      waitpid(kids[p], NULL, 0);
    dt = (now_ns() - t0) / (double)iters;
    if (dt < best)
      best = dt;
  }
  return best;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "build/bench.seg";
  long iters = argc > 2 ? atol(argv[2]) : 5000000;
  struct canary_table t;
  pthread_mutexattr_t ma;
  char why[256], err[256];
  struct ctx *c = calloc(1, sizeof *c);
  int rc;

  if (c == NULL)
    return 1;
  unlink(path);
  rc = canary_seg_open(&c->seg, path, 8, 4, 0, why, sizeof why);
  if (rc < 0) {
    fprintf(stderr, "bench: %s: %s\n", canary_strerror(rc), why);
    return 1;
  }
  c->route = canary_route_claim(c->seg, "bench", 5, "bench", 5);
  memset(&t, 0, sizeof t);
  t.n = 2;
  t.weights[0] = 9000;
  t.weights[1] = 1000;
  strcpy(t.names[0], "automation-service");
  strcpy(t.names[1], "automation-service-canary");
  if (c->route < 0 ||
      canary_route_publish(c->seg, c->route, &t, 1, NULL, err, sizeof err)) {
    fprintf(stderr, "bench: cannot publish: %s\n", err);
    return 1;
  }
  {
    struct canary_route_view v;
    if (canary_route_read(c->seg, c->route, &v) != 0)
      return 1;
    c->stat = v.stats[1];
  }
  srand(42);
  for (int i = 0; i < 1024; i++) {
    snprintf(c->keys[i], sizeof c->keys[i], "%08x-%04x-4%03x-a%03x-%012x",
             (unsigned)rand(), i, i, i, (unsigned)rand());
    c->lat[i] = 200 + (uint64_t)(rand() % 200000);
  }
  c->mh = mmap(NULL, sizeof *c->mh, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  c->sd = mmap(NULL, sizeof *c->sd, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (c->mh == MAP_FAILED || c->sd == MAP_FAILED)
    return 1;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&c->mh->mu, &ma);

  report("engine_pick_ns", measure(c, OP_PICK, iters, 1), "ns");
  report("engine_pick_sticky_ns", measure(c, OP_PICK_STICKY, iters, 1),
         "ns");
  report("engine_record_ns", measure(c, OP_RECORD, iters, 1), "ns");
  report("engine_trace_id_ns", measure(c, OP_TRACE, iters, 1), "ns");
  report("baseline_record_mutex_ns", measure(c, OP_RECORD_MUTEX, iters, 1),
         "ns");
  report("baseline_record_shdict_ns",
         measure(c, OP_RECORD_SHDICT, iters, 1), "ns");
  report("engine_record_x2_ns", measure(c, OP_RECORD, iters, 2), "ns");
  report("baseline_record_mutex_x2_ns",
         measure(c, OP_RECORD_MUTEX, iters, 2), "ns");
  report("baseline_record_shdict_x2_ns",
         measure(c, OP_RECORD_SHDICT, iters / 4, 2), "ns");
  report("engine_pick_x2_ns", measure(c, OP_PICK, iters, 2), "ns");

  fprintf(stderr, "(sink %llu)\n", (unsigned long long)sink);
  canary_seg_close(c->seg);
  unlink(path);
  free(c);
  return 0;
}
