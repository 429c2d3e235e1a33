#!/usr/bin/env bash
# stage_scale.sh - segment bytes per route, metrics render time for many
# routes, and proxy latency while /canary-router/metrics is scraped.
#
# 1. build/bench/scale (scale.c): bytes per route and per statistics slot,
#    the segment for 1000 routes as the plugin sizes it, and the CPU time
#    of rendering 1000 routes x 2 upstreams with data, in one go and in
#    the pieces the status endpoint sends (with the longest piece).
# 2. Scrape impact on the local host (2 workers, proxy 127.0.0.1:28200,
#    Admin API :28201, status :28202, upstreams :29011/:29012), twice:
#      one_route      a fresh segment: only the plugin's own route;
#      1000_routes    the segment scale.c filled (1000 routes x 2
#                     upstreams with data), with a config of 1000 more
#                     services whose plugin instances have the ids scale.c
#                     claimed their routes under: the host keeps them live
#                     (a route no instance claims is retired) and each
#                     scrape renders them all.
#    Each: `wrk --latency -t1 -c${SCALE_CONNS:-4} -d${SCALE_SECONDS:-5}s`
#    on the proxy with no scraping (N), while a background loop starts a
#    `curl` of /canary-router/metrics every 100 ms (S), and with a control
#    C: the same curl loop on the status listener's /status (see
#    measure); alternating N S C N S C ..., SCALE_ROUNDS (default 3) of
#    each.  Figures are the medians of wrk's p99, their ratios, the scrape
#    rate achieved and the median scrape time.  wrk's load is closed-loop
#    (each connection sends its next request when the last is answered),
#    so p99 includes the queueing of 4 connections on 2 workers.
source "$(dirname "$0")/lib.sh"

ROUTES=${SCALE_ROUTES:-1000}
ROUNDS=${SCALE_ROUNDS:-3}
SECS=${SCALE_SECONDS:-5}
CONNS=${SCALE_CONNS:-4}
PROXY=28200
ADMIN=28201
STATUS=28202
OUT=$BENCH_OUT/stage_scale
[ -x "$BENCH_ROOT/build/bench/scale" ] || die "build/bench/scale missing: make build/bench/scale"
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
need_free_ports $PROXY $ADMIN $STATUS
rm -rf "$OUT"
mkdir -p "$OUT"
# The segments are large files (1000 routes: 55 MB): never leave them
# behind.
on_exit "rm -rf '$OUT/one_route' '$OUT/${ROUTES}_routes' '$OUT'/*.seg"

say "# scale (load $(machine_load))"
"$BENCH_ROOT/build/bench/scale" "$OUT" "$ROUTES" 50

start_upstreams "$OUT/upstream" 29011 29012
host_config "$OUT/kong.yml" 29011 29012 "    plugins:
      - name: canary-router
        config:
          upstreams:
            - name: automation-service
              weight: 90
            - name: automation-service-canary
              weight: 10"

# A curl of PATH on the status listener every 100 ms, each in the
# background so a slow scrape does not lower the rate; one line per
# scrape in LOG.
scraper() { # log path
  while :; do
    curl -s -o /dev/null -m 10 -w '%{http_code} %{time_total} %{size_download}\n' \
      "http://127.0.0.1:$STATUS$2" >>"$1" &
    sleep 0.1
  done
}

SCRAPER_PID=""
stop_scraper() {
  if [ -n "$SCRAPER_PID" ]; then
    kill "$SCRAPER_PID" 2>/dev/null || true
    wait "$SCRAPER_PID" 2>/dev/null || true
    SCRAPER_PID=""
  fi
}
on_exit stop_scraper

# measure LABEL MODES: MODES is "N S C" (or "N S").  N: no scraping;
# S: /canary-router/metrics 10 times a second; C (control): the status
# listener's /status at the same rate, i.e. the same curl processes and
# requests without the render, which tells the machine's share (2 cores
# already busy with wrk, gateway and upstream) from the metrics' own.
measure() { # label modes
  local label=$1 modes=$2 r mode out p99 t0 n before path
  declare -A p99s=()
  : >"$OUT/$label.S.scrapes"
  : >"$OUT/$label.C.scrapes"
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$PROXY/ai/x" >/dev/null # warm-up
  for r in $(seq "$ROUNDS"); do
    for mode in $modes; do
      if [ "$mode" != N ]; then
        path=/canary-router/metrics
        [ "$mode" = C ] && path=/status
        scraper "$OUT/$label.$mode.scrapes" "$path" &
        SCRAPER_PID=$!
        t0=$(date +%s.%N)
        before=$(wc -l <"$OUT/$label.$mode.scrapes")
      fi
      out=$(wrk --latency -t1 -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$PROXY/ai/x")
      echo "$out" | wrk_requests >/dev/null || die "$label: wrk reported errors"
      p99=$(echo "$out" | wrk_p99_us) || die "$label: no p99 in wrk's output"
      if [ "$mode" != N ]; then
        stop_scraper
        sleep 1 # let the last scrapes finish
        n=$(($(wc -l <"$OUT/$label.$mode.scrapes") - before))
        echo "$n $(date +%s.%N) $t0" >>"$OUT/$label.$mode.rate"
      fi
      p99s[$mode]+="$p99 "
      say "#   $label round $r $mode: p99 ${p99} us"
    done
  done
  local mn ms mc bad
  mn=$(echo ${p99s[N]} | tr ' ' '\n' | median)
  ms=$(echo ${p99s[S]} | tr ' ' '\n' | median)
  bad=$(awk '$1 != 200 || $3 == 0' "$OUT/$label.S.scrapes" | wc -l)
  [ "$bad" = 0 ] || say "#   $label: $bad scrapes failed"
  figure "scale_p99_not_scraped_${label}_us" "$mn" us
  figure "scale_p99_scraped_${label}_us" "$ms" us
  figure "scale_p99_scraped_vs_not_${label}" "$(awk -v a="$ms" -v b="$mn" 'BEGIN { printf "%.2f", a / b }')" x
  if [ -n "${p99s[C]:-}" ]; then
    mc=$(echo ${p99s[C]} | tr ' ' '\n' | median)
    figure "scale_p99_control_status_${label}_us" "$mc" us
    figure "scale_p99_scraped_vs_control_${label}" "$(awk -v a="$ms" -v b="$mc" 'BEGIN { printf "%.2f", a / b }')" x
  fi
  figure "scale_scrapes_per_s_${label}" \
    "$(awk '{ n += $1; t += $2 - $3 - 1 } END { printf "%.1f", n / t }' "$OUT/$label.S.rate")" 1/s
  figure "scale_scrape_http_ms_${label}" \
    "$(awk '$1 == 200 { print $2 * 1000 }' "$OUT/$label.S.scrapes" | median | xargs printf '%.2f')" ms
  figure "scale_scrape_bytes_${label}" \
    "$(awk '$1 == 200 { b = $3 } END { print b + 0 }' "$OUT/$label.S.scrapes")" bytes
}

# The plugin's own route only.
host_start "$OUT/one_route" "$OUT/kong.yml" $PROXY $ADMIN $STATUS
say "# scrape impact, one route: wrk -t1 -c$CONNS -d${SECS}s --latency, N S C x $ROUNDS"
measure one_route "N S C"
host_stop "$OUT/one_route"

# The 1000-route segment: the host attaches it (an existing valid segment
# keeps its geometry); its config adds a service and plugin instance per
# route, with the id scale.c claimed the route under.
mkdir -p "$OUT/${ROUTES}_routes"
mv "$OUT/scale-$ROUTES.seg" "$OUT/${ROUTES}_routes/canary-router.seg"
{
  sed '/^upstreams:/,$d' "$OUT/kong.yml"
  for r in $(seq 0 $((ROUTES - 1))); do
    printf '  - name: service-%04d
    url: http://automation-service
' "$r"
    printf '    routes:
      - name: service-%04d
        paths:
          - /s%04d
' "$r" "$r"
    printf '    plugins:
      - name: canary-router
        id: %08x-0000-4000-8000-000000000000
' "$r"
    printf '        config:
          upstreams:
'
    printf '            - name: automation-service
              weight: 90
'
    printf '            - name: automation-service-canary
              weight: 10
'
  done
  sed -n '/^upstreams:/,$p' "$OUT/kong.yml"
} >"$OUT/kong-$ROUTES.yml"
host_start "$OUT/${ROUTES}_routes" "$OUT/kong-$ROUTES.yml" $PROXY $ADMIN $STATUS
live=$(curl -s "http://127.0.0.1:$STATUS/canary-router/metrics" | grep -c '^canary_progression_step{' || true)
[ "$live" -gt "$ROUTES" ] || die "the host exports $live routes, expected $ROUTES + 1"
say "# scrape impact, $ROUTES routes: wrk -t1 -c$CONNS -d${SECS}s --latency, N S C x $ROUNDS"
measure "${ROUTES}_routes" "N S C"
host_stop "$OUT/${ROUTES}_routes"
