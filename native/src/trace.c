/*
 * trace.c - trace ids: generation, W3C traceparent, client id validation.
 *
 * Ids are 128 random bits from OpenSSL's CSPRNG.  RAND_bytes costs about
 * a microsecond per call, far too much per request, so each thread keeps
 * a page of random bytes and hands out 16 (or 24) at a time, refilling
 * the page when it runs low.  The page is mapped with MADV_WIPEONFORK: a
 * forked child (every nginx worker is one) finds it zeroed and refills
 * from its own, re-seeded generator, so two processes can never hand out
 * the same bytes.  Where the kernel lacks WIPEONFORK a pthread_atfork
 * handler does the same job.
 */
#include "internal.h"

#include <openssl/rand.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define POOL_BYTES 4096u

struct pool {
  uint32_t filled; /* 0 after fork (wiped): must refill */
  uint32_t pos;
  unsigned char bytes[POOL_BYTES - 8];
};

static _Thread_local struct pool *tl_pool;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static int wipeonfork_works = 1;

static void child_after_fork(void) {
  /* Only the forking thread survives in the child; its pool is reset. */
  if (tl_pool != NULL)
    tl_pool->filled = 0;
}

static void register_atfork(void) {
  pthread_atfork(NULL, NULL, child_after_fork);
}

static struct pool *pool_get(void) {
  if (tl_pool == NULL) {
    void *p = mmap(NULL, sizeof(struct pool), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      return NULL;
    if (madvise(p, sizeof(struct pool), MADV_WIPEONFORK) != 0)
      wipeonfork_works = 0;
    if (!wipeonfork_works)
      pthread_once(&atfork_once, register_atfork);
    tl_pool = p;
  }
  return tl_pool;
}

/* Hands out n random bytes; refills the pool from the CSPRNG when needed. */
static const unsigned char *take(size_t n) {
  struct pool *p = pool_get();
  const unsigned char *r;
  if (p == NULL)
    return NULL;
  if (!p->filled || p->pos + n > sizeof p->bytes) {
    /* Anything but exactly 1 is a failure (OpenSSL also returns -1). */
    if (RAND_bytes(p->bytes, (int)sizeof p->bytes) != 1)
      return NULL;
    p->filled = 1;
    p->pos = 0;
  }
  r = p->bytes + p->pos;
  p->pos += (uint32_t)n;
  return r;
}

static const char hexdigits[] = "0123456789abcdef";

static void to_hex(char *out, const unsigned char *in, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hexdigits[in[i] >> 4];
    out[2 * i + 1] = hexdigits[in[i] & 15];
  }
}

static int all_zero(const unsigned char *p, size_t n) {
  unsigned char acc = 0;
  for (size_t i = 0; i < n; i++)
    acc |= p[i];
  return acc == 0;
}

int canary_trace_generate(char *id_out, char *tp_out) {
  const unsigned char *r;
  size_t need = tp_out != NULL ? 24 : 16;

  if (id_out == NULL)
    return CANARY_EINVAL;
  /* All-zero ids are invalid in W3C trace context; at 2^-64 odds per
   * draw, drawing again is the whole remedy. */
  do {
    r = take(need);
    if (r == NULL)
      return CANARY_ERAND;
  } while (all_zero(r, 16) || (tp_out != NULL && all_zero(r + 16, 8)));

  to_hex(id_out, r, 16);
  id_out[CANARY_TRACE_ID_LEN] = '\0';
  if (tp_out != NULL) {
    memcpy(tp_out, "00-", 3);
    memcpy(tp_out + 3, id_out, CANARY_TRACE_ID_LEN);
    tp_out[35] = '-';
    to_hex(tp_out + 36, r + 16, 8);
    memcpy(tp_out + 52, "-01", 3);
    tp_out[CANARY_TRACEPARENT_LEN] = '\0';
  }
  return 0;
}

static int lowhex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return 0;
  }
  return 1;
}

static int zeros(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != '0')
      return 0;
  return 1;
}

int canary_traceparent_parse(const char *s, size_t len, char *trace_id_out,
                             char *parent_id_out, uint8_t *flags_out) {
  if (s == NULL || len < CANARY_TRACEPARENT_LEN)
    return CANARY_EINVAL;
  /* version "-" trace-id "-" parent-id "-" flags */
  if (!lowhex(s, 2) || (s[0] == 'f' && s[1] == 'f') || s[2] != '-' ||
      !lowhex(s + 3, 32) || s[35] != '-' || !lowhex(s + 36, 16) ||
      s[52] != '-' || !lowhex(s + 53, 2))
    return CANARY_EINVAL;
  /* Version 00 has exactly these fields; later versions may append more,
   * always after another '-'. */
  if (s[0] == '0' && s[1] == '0') {
    if (len != CANARY_TRACEPARENT_LEN)
      return CANARY_EINVAL;
  } else if (len > CANARY_TRACEPARENT_LEN && s[55] != '-') {
    return CANARY_EINVAL;
  }
  if (zeros(s + 3, 32) || zeros(s + 36, 16))
    return CANARY_EINVAL;
  if (trace_id_out != NULL) {
    memcpy(trace_id_out, s + 3, 32);
    trace_id_out[32] = '\0';
  }
  if (parent_id_out != NULL) {
    memcpy(parent_id_out, s + 36, 16);
    parent_id_out[16] = '\0';
  }
  if (flags_out != NULL) {
    unsigned hi = (unsigned)(s[53] <= '9' ? s[53] - '0' : s[53] - 'a' + 10);
    unsigned lo = (unsigned)(s[54] <= '9' ? s[54] - '0' : s[54] - 'a' + 10);
    *flags_out = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

int canary_trace_id_valid(const char *s, size_t len) {
  if (s == NULL || len == 0 || len > CANARY_TRACE_HEADER_MAX)
    return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
          (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == ':' ||
          c == '-'))
      return 0;
  }
  return 1;
}

double canary_clock_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

double canary_thread_cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}
