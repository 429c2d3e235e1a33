/*
 * canarystat - read canary-router's shared segment from the host.
 *
 *   canarystat [--segment PATH] [--json] [--watch SECONDS]
 *   canarystat gate --route R --canary NAME --window SECONDS
 *              [--stable NAME] [--duration SECONDS]
 *              [--analysis threshold|statistical] [--confidence C]
 *              [--allowed-increase F] [--max-error-rate PERCENT]
 *              [--max-p95-ms N] [--max-p99-ms N] [--max-p95-ratio X]
 *              [--max-p99-ratio X] [--max-error-rate-delta POINTS]
 *              [--rollback-error-rate PERCENT] [--rollback-p99-ratio X]
 *              [--min-requests N] [--failure-limit N] [--segment PATH]
 *
 * The segment is attached read-only: canarystat can never change what
 * the gateway does.  The table shows, per route and upstream, the
 * effective weight and the traffic of the last sampling interval
 * (requests/s, error %, p50/p95/p99; requests an override forced apart),
 * how full the segment's slot pools are, and the progression's last
 * decision and why; --json prints the cumulative figures and the
 * decision log in the shape of the Admin API's GET /canary-router/status.
 *
 * `gate` is the runbook's metrics gate without Prometheus.  It judges
 * one window after another for --duration with canary_judge(), the
 * function the gateway's progression judges with, so every option means
 * what the progression field of the same name means: the canary against
 * fixed limits and against stable (the first upstream, or --stable) over
 * the same window.  Like the progression, it fails at once when
 * --failure-limit windows in a row failed (default 1) or an immediate-
 * rollback limit was breached, and passes when no such thing happened
 * and at least one window passed.  Exits 0 (passed), 1 (failed) or 2
 * (bad usage, no segment, unknown route or upstream).
 */
#include "canary.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_PASS 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

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
          "                  [--stable NAME] [--duration SECONDS]\n"
          "                  [--analysis threshold|statistical]\n"
          "                  [--confidence C] [--allowed-increase F]\n"
          "                  [--max-error-rate PERCENT] [--max-p95-ms N]\n"
          "                  [--max-p99-ms N] [--max-p95-ratio X]\n"
          "                  [--max-p99-ratio X]\n"
          "                  [--max-error-rate-delta POINTS]\n"
          "                  [--rollback-error-rate PERCENT]\n"
          "                  [--rollback-p99-ratio X] [--min-requests N]\n"
          "                  [--failure-limit N] [--segment PATH]\n"
          "The segment defaults to $CANARY_ROUTER_SEGMENT, else\n"
          "/usr/local/kong/canary-router.seg.  gate judges each window as\n"
          "the gateway's progression does (same options, same judge) and\n"
          "fails after --failure-limit failed windows in a row (default 1).\n"
          "Exit codes of gate: 0 passed, 1 failed, 2 bad usage or no such\n"
          "segment/route/upstream.\n");
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

/* ---- decisions ----------------------------------------------------- */

static const char *origin_text[] = {"window", "immediate", "operator",
                                    "cluster"};
static const char *check_text[] = {"off", "pass", "fail", "skipped"};
static const char *analysis_text[] = {"threshold", "statistical"};

/* Numbers in decisions carry 6 significant digits, as the status API's
 * do, so the two print the same values. */
static void num(double v) {
  printf("%.6g", isfinite(v) ? v : 0.0);
}

static void iso_time(uint64_t ms, char *buf, size_t cap) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  size_t n;
  gmtime_r(&t, &tm);
  n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, cap - n, ".%03uZ", (unsigned)(ms % 1000));
}

/* What a decision did, for humans; the status API says the same. */
static void action_text(const struct canary_decision *d, char *buf,
                        size_t cap) {
  char what[96];
  double w = d->weight / 100.0;
  switch (d->action) {
  case CANARY_DO_STEP_UP:
    snprintf(what, sizeof what, "step up to %g %%", w);
    break;
  case CANARY_DO_PROMOTE:
    snprintf(what, sizeof what, "promote at %g %%", w);
    break;
  case CANARY_DO_PAUSE:
    /* Not a judged window: an operator's pause (here or, applied from
     * the cluster, on another node). */
    if (d->origin == CANARY_ORIGIN_OPERATOR || d->judge.verdict >= 3)
      snprintf(what, sizeof what, "pause");
    else
      snprintf(what, sizeof what, "hold at %g %% until promoted", w);
    break;
  case CANARY_DO_ROLLBACK:
    snprintf(what, sizeof what, "%s",
             d->origin == CANARY_ORIGIN_IMMEDIATE ? "roll back at once"
                                                  : "roll back");
    break;
  case CANARY_DO_ABORT:
    snprintf(what, sizeof what, "abort");
    break;
  case CANARY_DO_RESUME:
    snprintf(what, sizeof what, "resume");
    break;
  case CANARY_DO_SWITCH:
    snprintf(what, sizeof what, "switch to green");
    break;
  default:
    snprintf(what, sizeof what, "%s",
             d->judge.verdict == CANARY_GATE_FAIL ? "hold: window failed"
                                                  : "hold: inconclusive");
  }
  if (d->dry_run)
    snprintf(buf, cap, "dry run: %s%s",
             d->action == CANARY_DO_NOTHING ? "" : "would ", what);
  else
    snprintf(buf, cap, "%s", what);
}

/* A gate's figure in the unit its option is configured in: percent for
 * rates, points for the delta, ms for latencies. */
static double gate_unit(int g, double v) {
  switch (g) {
  case CANARY_GATE_ERROR_RATE:
  case CANARY_GATE_ERROR_RATE_DELTA:
  case CANARY_GATE_ROLLBACK_ERROR_RATE:
    return v * 100;
  case CANARY_GATE_P95:
  case CANARY_GATE_P99:
    return v / 1e3;
  default:
    return v;
  }
}

static void json_side(const char *name, double error_rate, double p50,
                      double p95, double p99) {
  printf(",\"%s\":{\"error_rate\":", name);
  num(error_rate * 100);
  printf(",\"p50_ms\":");
  num(p50 / 1e3);
  printf(",\"p95_ms\":");
  num(p95 / 1e3);
  printf(",\"p99_ms\":");
  num(p99 / 1e3);
  putchar('}');
}

/* `strategy` names the phase the decision left the progression in: a
 * blue/green step after it is 1 when green was left with all the weight
 * (nothing moves in a dry run), as the status API reckons it. */
static void json_decision(const struct canary_decision *d,
                          uint32_t strategy) {
  const struct canary_judge_result *j = &d->judge;
  uint32_t after = d->dry_run ? d->step
                              : (uint32_t)(d->weight == CANARY_WEIGHT_SCALE);
  char buf[160];
  int first = 1;

  iso_time(d->unix_ms, buf, sizeof buf);
  printf("{\"seq\":%llu,\"time\":\"%s\",\"unix_ms\":%llu,\"origin\":\"%s\","
         "\"event\":\"%s\",\"action\":",
         (unsigned long long)d->seq, buf, (unsigned long long)d->unix_ms,
         d->origin <= CANARY_ORIGIN_CLUSTER ? origin_text[d->origin]
                                            : "unknown",
         canary_action_name((int)d->action));
  action_text(d, buf, sizeof buf);
  json_str(buf);
  printf(",\"dry_run\":%s,\"step\":%u,\"step_weight\":%g,\"weight\":%g,"
         "\"state\":\"%s\",\"phase\":\"%s\",\"failures\":%u,"
         "\"window_s\":",
         d->dry_run ? "true" : "false", d->step + 1, d->step_weight / 100.0,
         d->weight / 100.0,
         d->state <= CANARY_PROG_ROLLED_BACK ? prog_state[d->state]
                                             : "unknown",
         canary_prog_phase(strategy, d->state, after), d->failures);
  num(d->window_ms / 1e3);
  if (d->origin == CANARY_ORIGIN_CLUSTER) {
    /* Applied from the cluster's state: what it carries of the window
     * the judging node saw (that node's log has the gates). */
    if (j->verdict < 3) {
      printf(",\"verdict\":\"%s\",\"analysis\":\"%s\","
             "\"requests\":{\"canary\":%llu},\"canary\":{\"error_rate\":",
             gate_text[j->verdict], analysis_text[j->analysis ? 1 : 0],
             (unsigned long long)j->canary_requests);
      num(j->canary_error_rate * 100);
      printf(",\"p95_ms\":");
      num(j->canary_p95_us / 1e3);
      printf(",\"p99_ms\":");
      num(j->canary_p99_us / 1e3);
      putchar('}');
    }
  } else if (d->origin != CANARY_ORIGIN_OPERATOR && j->verdict < 3) {
    printf(",\"verdict\":\"%s\",\"analysis\":\"%s\","
           "\"requests\":{\"canary\":%llu,\"stable\":%llu},"
           "\"errors\":{\"canary\":%llu,\"stable\":%llu}",
           gate_text[j->verdict], analysis_text[j->analysis ? 1 : 0],
           (unsigned long long)j->canary_requests,
           (unsigned long long)j->stable_requests,
           (unsigned long long)j->canary_errors,
           (unsigned long long)j->stable_errors);
    json_side("canary", j->canary_error_rate, j->canary_p50_us,
              j->canary_p95_us, j->canary_p99_us);
    json_side("stable", j->stable_error_rate, j->stable_p50_us,
              j->stable_p95_us, j->stable_p99_us);
    printf(",\"gates\":[");
    for (int g = 0; g < CANARY_GATES; g++) {
      const struct canary_gate_check *k = &j->gates[g];
      if (k->check == CANARY_CHECK_OFF || k->check > CANARY_CHECK_SKIPPED)
        continue;
      printf("%s{\"gate\":\"%s\",\"limit\":", first ? "" : ",",
             canary_gate_name(g));
      first = 0;
      num(gate_unit(g, k->limit));
      printf(",\"result\":\"%s\"", check_text[k->check]);
      if (k->check != CANARY_CHECK_SKIPPED) {
        printf(",\"value\":");
        num(gate_unit(g, k->value));
        if (j->analysis == CANARY_ANALYSIS_STATISTICAL &&
            (g == CANARY_GATE_LATENCY_INCREASE ||
             g == CANARY_GATE_ERROR_RATE_DELTA)) {
          printf(",\"statistic\":");
          num(k->statistic);
          printf(",\"p_value\":");
          num(k->p_value);
        }
      }
      putchar('}');
    }
    putchar(']');
  }
  printf(",\"reason\":");
  json_str(j->reason);
  putchar('}');
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
    struct canary_decision *log = calloc(CANARY_DECISIONS, sizeof *log);
    int n =
        log ? canary_prog_decisions(seg, route, 0, log, CANARY_DECISIONS) : 0;
    printf(",\"progression\":{\"state\":\"%s\",\"strategy\":\"%s\","
           "\"phase\":\"%s\",\"step\":%u,\"steps\":%u,"
           "\"canary\":%u,\"step_weight\":%u,\"failures\":%u,"
           "\"last_result\":\"%s\",\"dry_run\":%s,\"analysis\":\"%s\","
           "\"evaluations\":{\"pass\":%llu,"
           "\"fail\":%llu,\"inconclusive\":%llu},\"reason\":",
           prog_state[ps.state],
           ps.strategy == CANARY_STRATEGY_BLUE_GREEN ? "blue_green" : "canary",
           canary_prog_phase(ps.strategy, ps.state, ps.step), ps.step + 1,
           ps.nsteps, ps.canary + 1, ps.step_weight, ps.failures,
           gate_text[ps.last_result < 3 ? ps.last_result : 0],
           ps.dry_run ? "true" : "false", analysis_text[ps.analysis ? 1 : 0],
           (unsigned long long)ps.evaluations[0],
           (unsigned long long)ps.evaluations[1],
           (unsigned long long)ps.evaluations[2]);
    json_str(ps.reason);
    printf("},\"decisions\":[");
    for (int i = 0; i < n; i++) {
      if (i)
        putchar(',');
      json_decision(&log[i], ps.strategy);
    }
    putchar(']');
    free(log);
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
         "\"progressions\":{\"live\":%u,\"retired\":%u,\"free\":%u,"
         "\"exhausted\":%llu},\"retire_grace_s\":%u}",
         info.routes_used - info.routes_retired, info.routes_retired,
         info.max_routes - info.routes_used,
         (unsigned long long)info.routes_exhausted,
         info.stat_slots_used - info.stat_slots_retired,
         info.stat_slots_retired, info.max_stat_slots - info.stat_slots_used,
         (unsigned long long)info.stat_slots_exhausted,
         info.prog_slots_used - info.prog_slots_retired,
         info.prog_slots_retired, info.max_prog_slots - info.prog_slots_used,
         (unsigned long long)info.prog_slots_exhausted, info.retire_grace_s);
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
         "slots live (%u retired), %u of %u progression slots live (%u "
         "retired)%s\n",
         info.routes_used - info.routes_retired, info.max_routes,
         info.routes_retired, info.stat_slots_used - info.stat_slots_retired,
         info.max_stat_slots, info.stat_slots_retired,
         info.prog_slots_used - info.prog_slots_retired, info.max_prog_slots,
         info.prog_slots_retired,
         info.routes_exhausted + info.stat_slots_exhausted +
                     info.prog_slots_exhausted >
                 0
             ? "; EXHAUSTED at times: raise CANARY_ROUTER_MAX_ROUTES, "
               "CANARY_ROUTER_MAX_UPSTREAM_SLOTS or "
               "CANARY_ROUTER_MAX_PROGRESSIONS"
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
        ps.state != CANARY_PROG_NONE && b[i].upstream + 1 == v.n) {
      struct canary_decision d;
      printf("  progression: %s%s, step %u/%u (%.2f%%): %s\n",
             canary_prog_phase(ps.strategy, ps.state, ps.step),
             ps.dry_run ? " (dry run)" : "", ps.step + 1, ps.nsteps,
             ps.step_weight / 100.0, ps.reason);
      if (canary_prog_decisions(seg, b[i].route, 0, &d, 1) == 1) {
        char when[40], what[160];
        iso_time(d.unix_ms, when, sizeof when);
        action_text(&d, what, sizeof what);
        printf("  last decision #%llu at %s (%s): %s%s%s: %s\n",
               (unsigned long long)d.seq, when,
               d.origin <= CANARY_ORIGIN_CLUSTER ? origin_text[d.origin]
                                                 : "unknown",
               d.judge.verdict < 3 ? gate_text[d.judge.verdict] : "",
               d.judge.verdict < 3 ? " -> " : "", what, d.judge.reason);
      }
    }
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

/* The options of `gate`, in the units the user gives them (percent, ms);
 * < 0: not set. */
struct gate {
  const char *route;
  const char *canary;
  const char *stable;   /* NULL: the first upstream */
  const char *analysis; /* NULL: threshold */
  double window, duration;
  double max_error_rate, max_p95_ms, max_p99_ms;
  double max_p95_ratio, max_p99_ratio, max_error_rate_delta;
  double rollback_error_rate, rollback_p99_ratio;
  double confidence, allowed_increase;
  double min_requests, failure_limit;
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

static int find_upstream(const struct canary_route_view *v, const char *name) {
  for (uint32_t u = 0; u < v->n; u++)
    if (strcmp(v->names[u], name) == 0)
      return (int)u;
  return -1;
}

static double unset_or(double v, double scale) {
  return v < 0 ? -1 : v * scale;
}

/* The options as the judge's parameters, the progression's units.
 * Returns 0, or EXIT_USAGE after saying what is wrong. */
static int gate_params(const struct gate *g, struct canary_judge_params *p) {
  const struct {
    double v;
    const char *opt;
  } pct[] = {{g->max_error_rate, "--max-error-rate"},
             {g->max_error_rate_delta, "--max-error-rate-delta"},
             {g->rollback_error_rate, "--rollback-error-rate"}};
  char err[256];

  for (size_t i = 0; i < sizeof pct / sizeof pct[0]; i++)
    if (pct[i].v > 100) {
      fprintf(stderr, "canarystat: %s is in percent, 0..100, not %g\n",
              pct[i].opt, pct[i].v);
      return EXIT_USAGE;
    }
  if (g->failure_limit < 1 ||
      g->failure_limit != (double)(long)g->failure_limit ||
      g->min_requests != (double)(uint32_t)g->min_requests) {
    fprintf(stderr, "canarystat: --failure-limit (1 or more) and "
                    "--min-requests are whole numbers\n");
    return EXIT_USAGE;
  }
  memset(p, 0, sizeof *p);
  if (g->analysis == NULL || strcmp(g->analysis, "threshold") == 0) {
    p->analysis = CANARY_ANALYSIS_THRESHOLD;
  } else if (strcmp(g->analysis, "statistical") == 0) {
    p->analysis = CANARY_ANALYSIS_STATISTICAL;
  } else {
    fprintf(stderr,
            "canarystat: --analysis is threshold or statistical, "
            "not '%s'\n",
            g->analysis);
    return EXIT_USAGE;
  }
  p->min_requests = (uint32_t)g->min_requests;
  p->max_error_rate = unset_or(g->max_error_rate, 0.01);
  p->max_p95_us = unset_or(g->max_p95_ms, 1000);
  p->max_p99_us = unset_or(g->max_p99_ms, 1000);
  p->max_p95_ratio = g->max_p95_ratio;
  p->max_p99_ratio = g->max_p99_ratio;
  p->max_error_rate_delta = unset_or(g->max_error_rate_delta, 0.01);
  p->rollback_error_rate = unset_or(g->rollback_error_rate, 0.01);
  p->rollback_p99_ratio = g->rollback_p99_ratio;
  p->confidence = g->confidence;
  p->allowed_increase = g->allowed_increase;
  if (canary_judge_check(p, err, sizeof err) != 0) {
    fprintf(stderr, "canarystat gate: %s\n", err);
    return EXIT_USAGE;
  }
  return 0;
}

static int run_gate(const canary_seg_t *seg, const struct gate *g,
                    const struct canary_judge_params *p) {
  static const char *verdict_text[] = {"pass", "FAIL", "inconclusive"};
  struct canary_hist_snapshot *snap = calloc(4, sizeof *snap);
  struct canary_hist_snapshot *cb = snap, *cn = snap + 1, *sb = snap + 2,
                              *sn = snap + 3;
  struct canary_judge_result r;
  struct canary_route_view v;
  int route, up, st, windows, rc = EXIT_USAGE, failures = 0;
  int counts[CANARY_GATE_RESULTS] = {0, 0, 0};
  uint32_t stable_weight;

  if (snap == NULL)
    return EXIT_USAGE;
  route = find_route(seg, g->route, &v);
  if (route < 0) {
    fprintf(stderr, "canarystat: no route '%s' in the segment\n", g->route);
    goto out;
  }
  up = find_upstream(&v, g->canary);
  st = g->stable ? find_upstream(&v, g->stable) : 0;
  if (up < 0 || st < 0) {
    fprintf(stderr, "canarystat: route '%s' has no upstream '%s'\n", g->route,
            up < 0 ? g->canary : g->stable);
    goto out;
  }
  if (up == st) {
    fprintf(stderr,
            "canarystat: '%s' is the stable upstream; name the "
            "canary with --canary and stable with --stable\n",
            g->canary);
    goto out;
  }
  windows = (int)(g->duration / g->window + 0.5);
  if (windows < 1)
    windows = 1;
  canary_hist_snapshot(seg, route, up, cb);
  canary_hist_snapshot(seg, route, st, sb);
  stable_weight = v.effective[st];
  printf("judging %s against %s on %s: %d window%s of %g s, %s analysis\n",
         v.names[up], v.names[st], g->route, windows, windows > 1 ? "s" : "",
         g->window,
         p->analysis == CANARY_ANALYSIS_STATISTICAL ? "statistical"
                                                   : "threshold");
  fflush(stdout);
  for (int w = 1; w <= windows; w++) {
    uint32_t flags = 0;
    if (!nap(g->window)) {
      fprintf(stderr, "canarystat: interrupted\n");
      rc = EXIT_FAIL;
      goto out;
    }
    canary_hist_snapshot(seg, route, up, cn);
    canary_hist_snapshot(seg, route, st, sn);
    /* Stable served nothing by design (the canary had all the traffic):
     * the gateway judges such a window on its absolute limits alone. */
    if (canary_route_read(seg, route, &v) == 0 && stable_weight == 0 &&
        v.effective[st] == 0)
      flags |= CANARY_JUDGE_NO_BASELINE;
    stable_weight = v.effective[st];
    canary_judge(p, flags, cn, cb, sn, sb, &r);
    *cb = *cn;
    *sb = *sn;
    counts[r.verdict]++;
    if (r.verdict == CANARY_GATE_PASS)
      failures = 0;
    else if (r.verdict == CANARY_GATE_FAIL)
      failures++;
    printf("window %d/%d: canary %llu requests, %.2f %% errors, p95 %.1f ms,"
           " p99 %.1f ms; stable %llu, %.2f %%, %.1f ms, %.1f ms: %s: %s\n",
           w, windows, (unsigned long long)r.canary_requests,
           r.canary_error_rate * 100, r.canary_p95_us / 1e3,
           r.canary_p99_us / 1e3, (unsigned long long)r.stable_requests,
           r.stable_error_rate * 100, r.stable_p95_us / 1e3,
           r.stable_p99_us / 1e3, verdict_text[r.verdict], r.reason);
    fflush(stdout);
    if (r.verdict == CANARY_GATE_FAIL &&
        (r.rollback || failures >= (int)g->failure_limit)) {
      if (r.rollback)
        printf("gate failed: an immediate-rollback limit was breached\n");
      else
        printf("gate failed: %d failed window%s in a row (failure limit "
               "%d)\n",
               failures, failures > 1 ? "s" : "", (int)g->failure_limit);
      rc = EXIT_FAIL;
      goto out;
    }
  }
  if (counts[CANARY_GATE_PASS] == 0) {
    printf("gate failed: no window passed (%d failed, %d inconclusive)\n",
           counts[CANARY_GATE_FAIL], counts[CANARY_GATE_INCONCLUSIVE]);
    rc = EXIT_FAIL;
  } else {
    printf("gate passed: %d passed, %d failed, %d inconclusive\n",
           counts[CANARY_GATE_PASS], counts[CANARY_GATE_FAIL],
           counts[CANARY_GATE_INCONCLUSIVE]);
    rc = EXIT_PASS;
  }
out:
  free(snap);
  return rc;
}

/* ---- main ---------------------------------------------------------- */

int main(int argc, char **argv) {
  enum {
    O_SEGMENT = 256,
    O_JSON,
    O_WATCH,
    O_ROUTE,
    O_CANARY,
    O_STABLE,
    O_WINDOW,
    O_ERR,
    O_P95,
    O_P99,
    O_P95R,
    O_P99R,
    O_DELTA,
    O_RB_ERR,
    O_RB_P99R,
    O_ANALYSIS,
    O_CONFIDENCE,
    O_ALLOWED,
    O_MIN,
    O_FAILURES,
    O_DURATION,
    O_HELP
  };
  static const struct option opts[] = {
      {"segment", required_argument, NULL, O_SEGMENT},
      {"json", no_argument, NULL, O_JSON},
      {"watch", required_argument, NULL, O_WATCH},
      {"route", required_argument, NULL, O_ROUTE},
      {"canary", required_argument, NULL, O_CANARY},
      {"stable", required_argument, NULL, O_STABLE},
      {"window", required_argument, NULL, O_WINDOW},
      {"max-error-rate", required_argument, NULL, O_ERR},
      {"max-p95-ms", required_argument, NULL, O_P95},
      {"max-p99-ms", required_argument, NULL, O_P99},
      {"max-p95-ratio", required_argument, NULL, O_P95R},
      {"max-p99-ratio", required_argument, NULL, O_P99R},
      {"max-error-rate-delta", required_argument, NULL, O_DELTA},
      {"rollback-error-rate", required_argument, NULL, O_RB_ERR},
      {"rollback-p99-ratio", required_argument, NULL, O_RB_P99R},
      {"analysis", required_argument, NULL, O_ANALYSIS},
      {"confidence", required_argument, NULL, O_CONFIDENCE},
      {"allowed-increase", required_argument, NULL, O_ALLOWED},
      {"min-requests", required_argument, NULL, O_MIN},
      {"failure-limit", required_argument, NULL, O_FAILURES},
      {"duration", required_argument, NULL, O_DURATION},
      {"help", no_argument, NULL, O_HELP},
      {NULL, 0, NULL, 0}};
  struct gate g = {.max_error_rate = -1,
                   .max_p95_ms = -1,
                   .max_p99_ms = -1,
                   .max_p95_ratio = -1,
                   .max_p99_ratio = -1,
                   .max_error_rate_delta = -1,
                   .rollback_error_rate = -1,
                   .rollback_p99_ratio = -1,
                   .confidence = 0.98,
                   .allowed_increase = 0.25,
                   .failure_limit = 1};
  struct canary_judge_params jp;
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
    case O_STABLE:
      g.stable = optarg;
      break;
    case O_ANALYSIS:
      g.analysis = optarg;
      break;
    case O_WATCH: target = &watch; break;
    case O_WINDOW: target = &g.window; break;
    case O_ERR: target = &g.max_error_rate; break;
    case O_P95: target = &g.max_p95_ms; break;
    case O_P99: target = &g.max_p99_ms; break;
    case O_P95R:
      target = &g.max_p95_ratio;
      break;
    case O_P99R:
      target = &g.max_p99_ratio;
      break;
    case O_DELTA:
      target = &g.max_error_rate_delta;
      break;
    case O_RB_ERR:
      target = &g.rollback_error_rate;
      break;
    case O_RB_P99R:
      target = &g.rollback_p99_ratio;
      break;
    case O_CONFIDENCE:
      target = &g.confidence;
      break;
    case O_ALLOWED:
      target = &g.allowed_increase;
      break;
    case O_MIN: target = &g.min_requests; break;
    case O_FAILURES:
      target = &g.failure_limit;
      break;
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
    if (gate_params(&g, &jp) != 0)
      return EXIT_USAGE;
  }

  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  seg = attach(path);
  if (seg == NULL)
    return EXIT_USAGE;
  if (is_gate)
    rc = run_gate(seg, &g, &jp);
  else if (json)
    rc = print_json(seg, path);
  else
    rc = run_table(seg, watch);
  canary_seg_close(seg);
  return rc;
}
