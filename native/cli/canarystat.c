/*
 * canarystat - read canary-router's shared segment from the host.
 *
 *   canarystat [--segment PATH] [--json] [--watch SECONDS]
 *   canarystat gate --route R --canary NAME --window SECONDS
 *              [--max-error-rate PERCENT] [--max-p95-ms N] [--max-p99-ms N]
 *              [--min-requests N] [--duration SECONDS] [--segment PATH]
 *
 * The segment is attached read-only: canarystat can never change what
 * the gateway does.  The table shows, per route and upstream, the
 * effective weight and the traffic of the last sampling interval
 * (requests/s, error %, p50/p95/p99; requests an override forced apart)
 * and how full the segment's slot pools are; --json prints the
 * cumulative figures in the shape of the Admin API's GET
 * /canary-router/status.
 * `gate` is the runbook's metrics gate without Prometheus: it judges one
 * window after another for --duration, prints each verdict, fails fast
 * after more than 3 violations, and exits 0 (passed), 1 (failed) or 2
 * (bad usage, no segment, unknown route or upstream).
 */
#include "canary.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_PASS 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define MAX_VIOLATIONS 3

static const char *prog_state[] = {"none", "running", "paused", "promoted",
                                   "rolled_back"};
static const char *gate_text[] = {"pass", "fail", "inconclusive"};

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: canarystat [--segment PATH] [--json] [--watch SECONDS]\n"
          "       canarystat gate --route R --canary NAME --window SECONDS\n"
          "                  [--max-error-rate PERCENT] [--max-p95-ms N]\n"
          "                  [--max-p99-ms N] [--min-requests N]\n"
          "                  [--duration SECONDS] [--segment PATH]\n"
          "The segment defaults to $CANARY_ROUTER_SEGMENT, else\n"
          "/usr/local/kong/canary-router.seg.  Exit codes of gate: 0 passed,\n"
          "1 failed, 2 bad usage or no such segment/route/upstream.\n");
}

static const char *default_segment(void) {
  const char *env = getenv("CANARY_ROUTER_SEGMENT");
  return env && *env ? env : "/usr/local/kong/canary-router.seg";
}

static canary_seg_t *attach(const char *path) {
  canary_seg_t *seg = NULL;
  char why[512] = "";
  int rc = canary_seg_open(&seg, path, 1, 1, CANARY_SEG_READONLY, why,
                           sizeof why);
  if (rc < 0) {
    fprintf(stderr, "canarystat: %s: %s\n", canary_strerror(rc), why);
    return NULL;
  }
  return seg;
}

/* Sleeps `seconds` unless interrupted; returns 0 when interrupted. */
static int nap(double seconds) {
  struct timespec ts = {(time_t)seconds,
                        (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (!stop && nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
  return !stop;
}

static int parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  *out = strtod(s, &end);
  return errno == 0 && end != s && *end == '\0' && *out >= 0;
}

/* ---- JSON ---------------------------------------------------------- */

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

static double ms2(double us) { /* microseconds -> ms, 2 decimals */
  return (double)(long long)(us / 10 + 0.5) / 100;
}

static void json_route(const canary_seg_t *seg, int route,
                       const struct canary_route_view *v) {
  struct canary_hist_snapshot *snap = malloc(sizeof *snap);
  struct canary_prog_status ps;
  if (snap == NULL)
    return;
  printf("{\"plugin_id\":");
  json_str(v->key);
  printf(",\"route\":");
  json_str(v->label[0] ? v->label : v->key);
  printf(",\"generation\":%llu,\"upstreams\":[",
         (unsigned long long)v->generation);
  for (uint32_t u = 0; u < v->n; u++) {
    struct canary_hist_summary s;
    const uint64_t *f = v->forced[u];
    canary_hist_snapshot(seg, route, (int)u, snap);
    canary_hist_summarize(snap, NULL, &s);
    printf("%s{\"name\":", u ? "," : "");
    json_str(v->names[u]);
    printf(",\"weight\":%g,\"effective_weight\":%g,\"requests\":%llu,"
           "\"errors\":%llu,\"error_rate\":%.17g,\"p50_ms\":%g,"
           "\"p95_ms\":%g,\"p99_ms\":%g,\"status\":{\"1xx\":%llu,"
           "\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu}",
           v->weights[u] / 100.0, v->effective[u] / 100.0,
           (unsigned long long)s.count, (unsigned long long)s.errors,
           s.error_rate, ms2(s.p50_us), ms2(s.p95_us), ms2(s.p99_us),
           (unsigned long long)s.status[1], (unsigned long long)s.status[2],
           (unsigned long long)s.status[3], (unsigned long long)s.status[4],
           (unsigned long long)s.status[5]);
    /* Requests an override forced here: not in the figures above. */
    printf(",\"forced\":{\"count\":%llu,\"1xx\":%llu,\"2xx\":%llu,"
           "\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu}}",
           (unsigned long long)(f[0] + f[1] + f[2] + f[3] + f[4] + f[5]),
           (unsigned long long)f[1], (unsigned long long)f[2],
           (unsigned long long)f[3], (unsigned long long)f[4],
           (unsigned long long)f[5]);
  }
  printf("],\"trace_ids\":{\"client\":%llu,\"traceparent\":%llu,"
         "\"generated\":%llu,\"rejected\":%llu}",
         (unsigned long long)v->trace[0], (unsigned long long)v->trace[1],
         (unsigned long long)v->trace[2], (unsigned long long)v->trace[3]);
  printf(",\"events\":{\"override\":%llu,\"override_denied\":%llu,"
         "\"fallback\":%llu,\"engine_error\":%llu}",
         (unsigned long long)v->events[0], (unsigned long long)v->events[1],
         (unsigned long long)v->events[2], (unsigned long long)v->events[3]);
  if (canary_prog_status(seg, route, canary_clock_us(), &ps) == 0 &&
      ps.state != CANARY_PROG_NONE) {
    printf(",\"progression\":{\"state\":\"%s\",\"step\":%u,\"steps\":%u,"
           "\"canary\":%u,\"step_weight\":%u,\"failures\":%u,"
           "\"last_result\":\"%s\",\"evaluations\":{\"pass\":%llu,"
           "\"fail\":%llu,\"inconclusive\":%llu},\"reason\":",
           prog_state[ps.state], ps.step + 1, ps.nsteps, ps.canary + 1,
           ps.step_weight, ps.failures,
           gate_text[ps.last_result < 3 ? ps.last_result : 0],
           (unsigned long long)ps.evaluations[0],
           (unsigned long long)ps.evaluations[1],
           (unsigned long long)ps.evaluations[2]);
    json_str(ps.reason);
    putchar('}');
  }
  putchar('}');
  free(snap);
}

static int print_json(const canary_seg_t *seg, const char *path) {
  struct canary_seg_info info;
  struct canary_route_view v;
  int first = 1;
  canary_seg_info(seg, &info);
  printf("{\"segment\":");
  json_str(path);
  printf(",\"slots\":{\"routes\":{\"live\":%u,\"retired\":%u,"
         "\"free\":%u,\"exhausted\":%llu},\"upstreams\":{\"live\":%u,"
         "\"retired\":%u,\"free\":%u,\"exhausted\":%llu},"
         "\"retire_grace_s\":%u}",
         info.routes_used - info.routes_retired, info.routes_retired,
         info.max_routes - info.routes_used,
         (unsigned long long)info.routes_exhausted,
         info.stat_slots_used - info.stat_slots_retired,
         info.stat_slots_retired, info.max_stat_slots - info.stat_slots_used,
         (unsigned long long)info.stat_slots_exhausted, info.retire_grace_s);
  printf(",\"data\":[");
  for (uint32_t r = 0; r < info.max_routes; r++) {
    if (canary_route_read(seg, (int)r, &v) != 0 || v.generation == 0)
      continue;
    if (!first)
      putchar(',');
    first = 0;
    json_route(seg, (int)r, &v);
  }
  printf("]}\n");
  return EXIT_PASS;
}

/* ---- table --------------------------------------------------------- */

struct sample {
  int route;
  uint32_t upstream;
  char key[CANARY_KEY_MAX];   /* route and upstream name: the identity of */
  char name[CANARY_NAME_MAX]; /* the statistics, whatever the position */
  struct canary_hist_snapshot snap;
};

static int take(const canary_seg_t *seg, struct sample **out, size_t *n) {
  struct canary_seg_info info;
  struct canary_route_view v;
  size_t cap = 0;
  canary_seg_info(seg, &info);
  *out = NULL;
  *n = 0;
  for (uint32_t r = 0; r < info.max_routes; r++) {
    if (canary_route_read(seg, (int)r, &v) != 0 || v.generation == 0)
      continue;
    for (uint32_t u = 0; u < v.n; u++) {
      if (*n == cap) {
        struct sample *p;
        cap = cap ? cap * 2 : 8;
        p = realloc(*out, cap * sizeof **out);
        if (p == NULL)
          return -1;
        *out = p;
      }
      (*out)[*n].route = (int)r;
      (*out)[*n].upstream = u;
      memcpy((*out)[*n].key, v.key, sizeof v.key);
      memcpy((*out)[*n].name, v.names[u], sizeof v.names[u]);
      canary_hist_snapshot(seg, (int)r, (int)u, &(*out)[*n].snap);
      (*n)++;
    }
  }
  return 0;
}

static void print_table(const canary_seg_t *seg, const struct sample *a,
                        size_t na, const struct sample *b, size_t nb,
                        double seconds) {
  struct canary_route_view v;
  struct canary_seg_info info;
  int last_route = -1;
  canary_seg_info(seg, &info);
  printf("segment: %u of %u route slots live (%u retired), %u of %u upstream "
         "slots live (%u retired)%s\n",
         info.routes_used - info.routes_retired, info.max_routes,
         info.routes_retired, info.stat_slots_used - info.stat_slots_retired,
         info.max_stat_slots, info.stat_slots_retired,
         info.routes_exhausted + info.stat_slots_exhausted > 0
             ? "; EXHAUSTED at times: raise CANARY_ROUTER_MAX_ROUTES or "
               "CANARY_ROUTER_MAX_UPSTREAM_SLOTS"
             : "");
  printf("%-24s %-28s %7s %9s %7s %9s %9s %9s %10s %8s\n", "ROUTE",
         "UPSTREAM", "WEIGHT", "REQ/S", "ERR%", "P50ms", "P95ms", "P99ms",
         "REQUESTS", "FORCED");
  for (size_t i = 0; i < nb; i++) {
    struct canary_hist_summary w, total;
    const struct canary_hist_snapshot *before = NULL;
    struct canary_prog_status ps;
    for (size_t j = 0; j < na; j++)
      if (a[j].route == b[i].route && strcmp(a[j].key, b[i].key) == 0 &&
          strcmp(a[j].name, b[i].name) == 0)
        before = &a[j].snap;
    if (canary_route_read(seg, b[i].route, &v) != 0)
      continue;
    canary_hist_summarize(&b[i].snap, before, &w);
    canary_hist_summarize(&b[i].snap, NULL, &total);
    printf("%-24.24s %-28.28s %6.2f%% %9.1f ",
           v.label[0] ? v.label : v.key, v.names[b[i].upstream],
           v.effective[b[i].upstream] / 100.0,
           seconds > 0 ? (double)w.count / seconds : 0.0);
    if (w.count > 0)
      printf("%6.2f%% %9.2f %9.2f %9.2f", w.error_rate * 100,
             w.p50_us / 1e3, w.p95_us / 1e3, w.p99_us / 1e3);
    else
      printf("%7s %9s %9s %9s", "-", "-", "-", "-");
    {
      const uint64_t *f = v.forced[b[i].upstream];
      printf(" %10llu %8llu\n", (unsigned long long)total.count,
             (unsigned long long)(f[0] + f[1] + f[2] + f[3] + f[4] + f[5]));
    }
    if (b[i].route != last_route &&
        canary_prog_status(seg, b[i].route, canary_clock_us(), &ps) == 0 &&
        ps.state != CANARY_PROG_NONE && b[i].upstream + 1 == v.n)
      printf("  progression: %s, step %u/%u (%.2f%%): %s\n",
             prog_state[ps.state], ps.step + 1, ps.nsteps,
             ps.step_weight / 100.0, ps.reason);
    if (b[i].upstream + 1 == v.n)
      last_route = b[i].route;
  }
}

static int run_table(const canary_seg_t *seg, double watch) {
  double interval = watch > 0 ? watch : 1.0;
  struct sample *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  if (take(seg, &a, &na) != 0)
    return EXIT_USAGE;
  do {
    double t0 = canary_clock_us();
    if (!nap(interval))
      break;
    if (take(seg, &b, &nb) != 0)
      break;
    if (watch > 0)
      printf("\033[H\033[2J");
    print_table(seg, a, na, b, nb, (canary_clock_us() - t0) / 1e6);
    fflush(stdout);
    free(a);
    a = b;
    na = nb;
    b = NULL;
  } while (watch > 0 && !stop);
  free(a);
  free(b);
  return EXIT_PASS;
}

/* ---- gate ---------------------------------------------------------- */

struct gate {
  const char *route;
  const char *canary;
  double window, duration;
  double max_error_rate, max_p95_ms, max_p99_ms; /* < 0: not set */
  double min_requests;
};

static int find_route(const canary_seg_t *seg, const char *name,
                      struct canary_route_view *v) {
  struct canary_seg_info info;
  canary_seg_info(seg, &info);
  for (uint32_t r = 0; r < info.max_routes; r++)
    if (canary_route_read(seg, (int)r, v) == 0 && v->generation != 0 &&
        (strcmp(v->label, name) == 0 || strcmp(v->key, name) == 0))
      return (int)r;
  return -1;
}

static int run_gate(const canary_seg_t *seg, const struct gate *g) {
  struct canary_hist_snapshot *before = malloc(sizeof *before);
  struct canary_hist_snapshot *now = malloc(sizeof *now);
  struct canary_route_view v;
  int route, up = -1, violations = 0, conclusive = 0, windows, rc;

  if (before == NULL || now == NULL)
    return EXIT_USAGE;
  route = find_route(seg, g->route, &v);
  if (route < 0) {
    fprintf(stderr, "canarystat: no route '%s' in the segment\n", g->route);
    rc = EXIT_USAGE;
    goto out;
  }
  for (uint32_t u = 0; u < v.n; u++)
    if (strcmp(v.names[u], g->canary) == 0)
      up = (int)u;
  if (up < 0) {
    fprintf(stderr, "canarystat: route '%s' has no upstream '%s'\n",
            g->route, g->canary);
    rc = EXIT_USAGE;
    goto out;
  }
  windows = (int)(g->duration / g->window + 0.5);
  if (windows < 1)
    windows = 1;
  canary_hist_snapshot(seg, route, up, before);
  for (int w = 1; w <= windows; w++) {
    struct canary_hist_summary s;
    char why[160] = "";
    const char *verdict = "pass";
    if (!nap(g->window)) {
      fprintf(stderr, "canarystat: interrupted\n");
      rc = EXIT_FAIL;
      goto out;
    }
    canary_hist_snapshot(seg, route, up, now);
    canary_hist_summarize(now, before, &s);
    *before = *now;
    if ((double)s.count < g->min_requests || s.count == 0) {
      verdict = "inconclusive";
      snprintf(why, sizeof why, " (fewer than %.0f requests)",
               g->min_requests);
    } else {
      conclusive++;
      if (g->max_error_rate >= 0 && s.error_rate * 100 > g->max_error_rate)
        snprintf(why, sizeof why, " (error rate > %.2f %%)",
                 g->max_error_rate);
      else if (g->max_p95_ms >= 0 && s.p95_us / 1e3 > g->max_p95_ms)
        snprintf(why, sizeof why, " (p95 > %.1f ms)", g->max_p95_ms);
      else if (g->max_p99_ms >= 0 && s.p99_us / 1e3 > g->max_p99_ms)
        snprintf(why, sizeof why, " (p99 > %.1f ms)", g->max_p99_ms);
      if (why[0]) {
        verdict = "FAIL";
        violations++;
      }
    }
    printf("window %d/%d: %llu requests, error %.2f %%, p95 %.1f ms, "
           "p99 %.1f ms: %s%s\n",
           w, windows, (unsigned long long)s.count, s.error_rate * 100,
           s.p95_us / 1e3, s.p99_us / 1e3, verdict, why);
    fflush(stdout);
    if (violations > MAX_VIOLATIONS) {
      printf("gate failed: %d violations (more than %d)\n", violations,
             MAX_VIOLATIONS);
      rc = EXIT_FAIL;
      goto out;
    }
  }
  if (conclusive == 0) {
    printf("gate failed: no window had enough requests to judge\n");
    rc = EXIT_FAIL;
  } else if (violations > 0 && violations >= conclusive) {
    printf("gate failed: every judged window violated the SLO\n");
    rc = EXIT_FAIL;
  } else {
    printf("gate passed: %d judged windows, %d violations\n", conclusive,
           violations);
    rc = EXIT_PASS;
  }
out:
  free(before);
  free(now);
  return rc;
}

/* ---- main ---------------------------------------------------------- */

int main(int argc, char **argv) {
  enum { O_SEGMENT = 256, O_JSON, O_WATCH, O_ROUTE, O_CANARY, O_WINDOW,
         O_ERR, O_P95, O_P99, O_MIN, O_DURATION, O_HELP };
  static const struct option opts[] = {
      {"segment", required_argument, NULL, O_SEGMENT},
      {"json", no_argument, NULL, O_JSON},
      {"watch", required_argument, NULL, O_WATCH},
      {"route", required_argument, NULL, O_ROUTE},
      {"canary", required_argument, NULL, O_CANARY},
      {"window", required_argument, NULL, O_WINDOW},
      {"max-error-rate", required_argument, NULL, O_ERR},
      {"max-p95-ms", required_argument, NULL, O_P95},
      {"max-p99-ms", required_argument, NULL, O_P99},
      {"min-requests", required_argument, NULL, O_MIN},
      {"duration", required_argument, NULL, O_DURATION},
      {"help", no_argument, NULL, O_HELP},
      {NULL, 0, NULL, 0}};
  struct gate g = {NULL, NULL, 0, 0, -1, -1, -1, 0};
  const char *path = default_segment();
  int json = 0, is_gate = 0, c, rc;
  double watch = 0;
  canary_seg_t *seg;

  if (argc > 1 && strcmp(argv[1], "gate") == 0) {
    is_gate = 1;
    argv++;
    argc--;
  }
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    double *target = NULL;
    switch (c) {
    case O_SEGMENT: path = optarg; break;
    case O_JSON: json = 1; break;
    case O_ROUTE: g.route = optarg; break;
    case O_CANARY: g.canary = optarg; break;
    case O_WATCH: target = &watch; break;
    case O_WINDOW: target = &g.window; break;
    case O_ERR: target = &g.max_error_rate; break;
    case O_P95: target = &g.max_p95_ms; break;
    case O_P99: target = &g.max_p99_ms; break;
    case O_MIN: target = &g.min_requests; break;
    case O_DURATION: target = &g.duration; break;
    case O_HELP: usage(stdout); return EXIT_PASS;
    default: usage(stderr); return EXIT_USAGE;
    }
    if (target != NULL && !parse_double(optarg, target)) {
      fprintf(stderr, "canarystat: '%s' is not a non-negative number\n",
              optarg);
      return EXIT_USAGE;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "canarystat: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return EXIT_USAGE;
  }
  if (is_gate) {
    if (g.route == NULL || g.canary == NULL || g.window <= 0) {
      fprintf(stderr, "canarystat gate: --route, --canary and --window "
                      "are required\n");
      usage(stderr);
      return EXIT_USAGE;
    }
    if (g.duration <= 0)
      g.duration = g.window;
  }

  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  seg = attach(path);
  if (seg == NULL)
    return EXIT_USAGE;
  if (is_gate)
    rc = run_gate(seg, &g);
  else if (json)
    rc = print_json(seg, path);
  else
    rc = run_table(seg, watch);
  canary_seg_close(seg);
  return rc;
}
