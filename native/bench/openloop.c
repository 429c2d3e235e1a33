/*
 * openloop.c - an open-loop HTTP/1.1 load generator.
 *
 *   openloop [-c CONNS] [-t TIMEOUT_MS] [-w WARMUP_S] [-o FILE]
 *            HOST PORT PATH RATE SECONDS
 *
 * Sends GET PATH to HOST:PORT at RATE requests per second for SECONDS,
 * over CONNS keep-alive connections (default 16; request k on connection
 * k % CONNS), on a fixed schedule: request k is due at start + k / RATE
 * whether or not earlier requests were answered.  A request due on a
 * connection still waiting for an answer is pipelined behind it
 * (HTTP/1.1), so the schedule never waits for the server.
 *
 * Latency is measured from the time a request was *due*, not from the
 * time it was written, to the end of its response.  A closed-loop
 * generator (wrk) sends a connection's next request only after the last
 * answer, so while the server stalls it stops asking, and the requests
 * that would have arrived meanwhile are never counted ("coordinated
 * omission"): a 100 ms stall shows up as a handful of slow requests
 * instead of the hundred an open stream of users would have seen.  Here
 * every request that fell due during a stall counts the stall.  The
 * generator's own lateness (a request written late because this process
 * was not running) counts too, and is reported on its own as the send
 * lag, so an overloaded generator shows.
 *
 * The first WARMUP_S seconds (default 0) follow the same schedule but
 * are not counted.  A request not answered within TIMEOUT_MS (default
 * 2000) of its due time is a timeout: its connection is closed, every
 * request waiting on it counts as a timeout, and it is opened again.  A
 * response that is not 2xx, a connection the server closes with requests
 * outstanding, and a malformed response count as errors.
 *
 * Prints "name value unit" lines, the format of the bench stages:
 *   openloop_sent, openloop_completed (2xx), openloop_errors,
 *   openloop_timeouts          requests due in the measured period
 *   openloop_rate              completed per second of that period
 *   openloop_p50_us ... openloop_p999_us, openloop_max_us
 *                              latency of the completed requests, nearest
 *                              rank
 *   openloop_send_lag_max_us   the latest a request was written after it
 *                              was due
 * With -o, every answered request of the measured period is written to
 * FILE as a line "due_ms status latency_us" (due time in milliseconds
 * from the start of that period), to see when the slow ones fell due.
 * Exit status 0; 2 on bad arguments; 1 when it cannot connect at all.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define INBUF 65536

struct conn {
  int fd;              /* -1: closed (opened again when a request falls due) */
  int want_out;        /* EPOLLOUT registered */
  uint64_t *due;       /* due times (ns) of the requests awaiting an answer */
  size_t head, n, cap; /* a ring, oldest first */
  char *out;           /* request bytes the socket has not taken yet */
  size_t out_len, out_cap;
  char in[INBUF];
  size_t in_len;
};

static struct sockaddr_storage addr;
static socklen_t addr_len;
static char request[2048];
static size_t request_len;
static int epfd;
static struct conn *conns;
static int nconns = 16;

/* The measured period: requests due at or after measure_from. */
static uint64_t measure_from;
static uint64_t sent, completed, errors, timeouts, lag_max;
static uint64_t *lat; /* ns, one per completed request */
static FILE *trace;   /* -o */
static size_t nlat, lat_cap;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (q == NULL) {
    fprintf(stderr, "openloop: out of memory\n");
    exit(1);
  }
  return q;
}

static int measured(uint64_t due) {
  return due >= measure_from;
}

static void due_push(struct conn *c, uint64_t t) {
  if (c->n == c->cap) {
    size_t cap = c->cap ? 2 * c->cap : 64;
    uint64_t *d = xrealloc(NULL, cap * sizeof *d);
    for (size_t i = 0; i < c->n; i++)
      d[i] = c->due[(c->head + i) % c->cap];
    free(c->due);
    c->due = d;
    c->head = 0;
    c->cap = cap;
  }
  c->due[(c->head + c->n) % c->cap] = t;
  c->n++;
}

static uint64_t due_pop(struct conn *c) {
  uint64_t t = c->due[c->head];
  c->head = (c->head + 1) % c->cap;
  c->n--;
  return t;
}

/* Closes c; the requests still waiting on it count as `why` (errors or
 * timeouts) when they are in the measured period. */
static void conn_drop(struct conn *c, uint64_t *why) {
  while (c->n > 0)
    if (measured(due_pop(c)))
      (*why)++;
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  c->in_len = 0;
  c->out_len = 0;
  c->want_out = 0;
}

static int conn_open(struct conn *c) {
  struct epoll_event ev;
  int one = 1;
  c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    return -1;
  /* A blocking connect (loopback answers at once), then non-blocking. */
  if (connect(c->fd, (struct sockaddr *)&addr, addr_len) != 0 ||
      fcntl(c->fd, F_SETFL, O_NONBLOCK) != 0) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  ev.data.ptr = c;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  return 0;
}

static void want_out(struct conn *c, int on) {
  struct epoll_event ev;
  if (c->want_out == on)
    return;
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
  ev.data.ptr = c;
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
  c->want_out = on;
}

/* Writes what the socket takes; 0, or -1 when the connection failed. */
static int conn_flush(struct conn *c) {
  size_t off = 0;
  while (off < c->out_len) {
    ssize_t w = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      return -1;
    }
    off += (size_t)w;
  }
  memmove(c->out, c->out + off, c->out_len - off);
  c->out_len -= off;
  want_out(c, c->out_len > 0);
  return 0;
}

static void send_request(struct conn *c, uint64_t due, uint64_t now) {
  if (measured(due)) {
    sent++;
    if (now - due > lag_max)
      lag_max = now - due;
  }
  if (c->fd < 0 && conn_open(c) != 0) {
    if (measured(due))
      errors++;
    return;
  }
  if (c->out_len + request_len > c->out_cap) {
    c->out_cap = 2 * (c->out_len + request_len);
    c->out = xrealloc(c->out, c->out_cap);
  }
  memcpy(c->out + c->out_len, request, request_len);
  c->out_len += request_len;
  due_push(c, due);
  if (conn_flush(c) != 0)
    conn_drop(c, &errors);
}

/* Case-insensitive search for a header name at a line start in
 * [p, end); returns its value or NULL. */
static const char *header(const char *p, const char *end, const char *name) {
  size_t n = strlen(name);
  for (;;) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL)
      return NULL;
    p = nl + 1;
    if ((size_t)(end - p) > n && strncasecmp(p, name, n) == 0) {
      p += n;
      while (p < end && (*p == ' ' || *p == '\t'))
        p++;
      return p;
    }
  }
}

/* Length of the complete response at the start of buf, with its status:
 * > 0; 0 while it is incomplete; -1 when it is malformed. */
static long parse_response(const char *buf, size_t len, int *status) {
  const char *end = buf + len, *hend, *v;
  size_t hlen;
  if (len < 12)
    return 0;
  hend = memmem(buf, len, "\r\n\r\n", 4);
  if (hend == NULL)
    return len >= INBUF ? -1 : 0;
  if (memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ')
    return -1;
  *status = atoi(buf + 9);
  hlen = (size_t)(hend - buf) + 4;
  if ((v = header(buf, hend + 2, "content-length:")) != NULL) {
    size_t body = strtoul(v, NULL, 10);
    return hlen + body <= len ? (long)(hlen + body) : 0;
  }
  if ((v = header(buf, hend + 2, "transfer-encoding:")) != NULL &&
      strncasecmp(v, "chunked", 7) == 0) {
    const char *p = buf + hlen;
    for (;;) {
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      char *e;
      unsigned long n;
      if (nl == NULL)
        return 0;
      n = strtoul(p, &e, 16);
      if (e == p)
        return -1;
      p = nl + 1;
      if (n == 0) {
        /* Trailers, if any, end with an empty line. */
        for (;;) {
          nl = memchr(p, '\n', (size_t)(end - p));
          if (nl == NULL)
            return 0;
          if (nl == p || (nl == p + 1 && *p == '\r'))
            return (long)(nl + 1 - buf);
          p = nl + 1;
        }
      }
      if ((size_t)(end - p) < n + 2)
        return 0;
      p += n + 2; /* data and its CRLF */
    }
  }
  if (*status == 204 || *status == 304 || *status / 100 == 1)
    return (long)hlen;
  return -1; /* a body delimited by the close: not keep-alive */
}

static void record(uint64_t due, int status, uint64_t now) {
  if (!measured(due))
    return;
  if (trace != NULL)
    fprintf(trace, "%.3f %d %.1f\n", (double)(due - measure_from) / 1e6,
            status, (double)(now - due) / 1e3);
  if (status / 100 != 2) {
    errors++;
    return;
  }
  completed++;
  if (nlat == lat_cap) {
    lat_cap = lat_cap ? 2 * lat_cap : 4096;
    lat = xrealloc(lat, lat_cap * sizeof *lat);
  }
  lat[nlat++] = now > due ? now - due : 0;
}

static void conn_read(struct conn *c) {
  for (;;) {
    ssize_t r = recv(c->fd, c->in + c->in_len, INBUF - c->in_len, 0);
    uint64_t now = now_ns();
    long used;
    int status = 0;
    if (r < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return;
      conn_drop(c, &errors);
      return;
    }
    if (r == 0) {
      conn_drop(c, &errors); /* closed by the server */
      return;
    }
    c->in_len += (size_t)r;
    while ((used = parse_response(c->in, c->in_len, &status)) > 0) {
      if (c->n == 0) {
        conn_drop(c, &errors); /* an answer nobody asked for */
        return;
      }
      record(due_pop(c), status, now);
      memmove(c->in, c->in + used, c->in_len - (size_t)used);
      c->in_len -= (size_t)used;
    }
    if (used < 0) {
      conn_drop(c, &errors);
      return;
    }
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Nearest rank, in microseconds. */
static double pct(double q) {
  size_t r;
  if (nlat == 0)
    return 0;
  r = (size_t)ceil(q * (double)nlat);
  if (r < 1)
    r = 1;
  if (r > nlat)
    r = nlat;
  return (double)lat[r - 1] / 1000.0;
}

static int usage(void) {
  fprintf(stderr, "usage: openloop [-c CONNS] [-t TIMEOUT_MS] [-w WARMUP_S] "
                  "[-o FILE] HOST PORT PATH RATE SECONDS\n");
  return 2;
}

int main(int argc, char **argv) {
  struct addrinfo hints, *ai = NULL;
  double rate, seconds, warmup = 0, timeout_ms = 2000;
  uint64_t t0, total, k = 0, interval_ns, timeout_ns, end_ns, next_check = 0;
  int opt, opened = 0;

  while ((opt = getopt(argc, argv, "c:t:w:o:")) != -1) {
    if (opt == 'o') {
      trace = fopen(optarg, "w");
      if (trace == NULL) {
        perror(optarg);
        return 2;
      }
    } else if (opt == 'c')
      nconns = atoi(optarg);
    else if (opt == 't')
      timeout_ms = atof(optarg);
    else if (opt == 'w')
      warmup = atof(optarg);
    else
      return usage();
  }
  if (argc - optind != 5)
    return usage();
  rate = atof(argv[optind + 3]);
  seconds = atof(argv[optind + 4]);
  if (nconns < 1 || nconns > MAX_CONNS || !(rate > 0) || !(seconds > 0) ||
      warmup < 0 || !(timeout_ms > 0) || argv[optind + 2][0] != '/')
    return usage();
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(argv[optind], argv[optind + 1], &hints, &ai) != 0 ||
      ai == NULL) {
    fprintf(stderr, "openloop: cannot resolve %s:%s\n", argv[optind],
            argv[optind + 1]);
    return 2;
  }
  memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
  addr_len = ai->ai_addrlen;
  freeaddrinfo(ai);
  request_len =
      (size_t)snprintf(request, sizeof request,
                       "GET %s HTTP/1.1\r\nHost: %s:%s\r\n"
                       "User-Agent: openloop\r\n\r\n",
                       argv[optind + 2], argv[optind], argv[optind + 1]);
  if (request_len >= sizeof request)
    return usage();

  epfd = epoll_create1(EPOLL_CLOEXEC);
  conns = calloc((size_t)nconns, sizeof *conns);
  if (epfd < 0 || conns == NULL)
    return 1;
  for (int i = 0; i < nconns; i++) {
    conns[i].fd = -1;
    opened += conn_open(&conns[i]) == 0;
  }
  if (opened == 0) {
    fprintf(stderr, "openloop: cannot connect to %s:%s\n", argv[optind],
            argv[optind + 1]);
    return 1;
  }

  interval_ns = (uint64_t)(1e9 / rate);
  if (interval_ns == 0)
    interval_ns = 1;
  timeout_ns = (uint64_t)(timeout_ms * 1e6);
  total = (uint64_t)((warmup + seconds) * rate);
  t0 = now_ns() + 1000000; /* connections settle first */
  measure_from = t0 + (uint64_t)(warmup * 1e9);
  end_ns = t0 + total * interval_ns;
  lat_cap = (size_t)(seconds * rate) + 16;
  lat = xrealloc(NULL, lat_cap * sizeof *lat);

  for (;;) {
    struct epoll_event ev[64];
    struct timespec wait;
    uint64_t now = now_ns(), next;
    size_t outstanding = 0;
    int n;

    /* Every request due by now, on its connection. */
    while (k < total && t0 + k * interval_ns <= now) {
      send_request(&conns[k % (uint64_t)nconns], t0 + k * interval_ns, now);
      k++;
    }
    /* Requests past their timeout, every 10 ms. */
    if (now >= next_check) {
      for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->n > 0 && now - c->due[c->head] > timeout_ns)
          conn_drop(c, &timeouts);
        outstanding += c->n;
      }
      next_check = now + 10000000;
      if (k >= total && (outstanding == 0 || now > end_ns + timeout_ns))
        break;
    }
    next = k < total ? t0 + k * interval_ns : now + 10000000;
    if (next > next_check)
      next = next_check;
    next = next > now ? next - now : 0;
    wait.tv_sec = (time_t)(next / 1000000000u);
    wait.tv_nsec = (long)(next % 1000000000u);
    n = epoll_pwait2(epfd, ev, 64, &wait, NULL);
    for (int i = 0; i < n; i++) {
      struct conn *c = ev[i].data.ptr;
      if (c->fd < 0)
        continue;
      if (ev[i].events & EPOLLOUT && conn_flush(c) != 0) {
        conn_drop(c, &errors);
        continue;
      }
      if (ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        conn_read(c);
    }
  }
  for (int i = 0; i < nconns; i++)
    conn_drop(&conns[i], &timeouts); /* left at the end: unanswered */

  qsort(lat, nlat, sizeof *lat, cmp_u64);
  printf("openloop_sent %llu requests\n", (unsigned long long)sent);
  printf("openloop_completed %llu requests\n", (unsigned long long)completed);
  printf("openloop_errors %llu requests\n", (unsigned long long)errors);
  printf("openloop_timeouts %llu requests\n", (unsigned long long)timeouts);
  printf("openloop_rate %.1f 1/s\n", (double)completed / seconds);
  printf("openloop_p50_us %.1f us\n", pct(0.50));
  printf("openloop_p90_us %.1f us\n", pct(0.90));
  printf("openloop_p99_us %.1f us\n", pct(0.99));
  printf("openloop_p999_us %.1f us\n", pct(0.999));
  printf("openloop_max_us %.1f us\n", nlat ? (double)lat[nlat - 1] / 1e3 : 0);
  printf("openloop_send_lag_max_us %.1f us\n", (double)lag_max / 1e3);
  for (int i = 0; i < nconns; i++) {
    free(conns[i].due);
    free(conns[i].out);
  }
  free(conns);
  free(lat);
  close(epfd);
  if (trace != NULL && fclose(trace) != 0)
    return 1;
  return 0;
}
