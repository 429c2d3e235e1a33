#!/usr/bin/env bash
# stage_scale.sh - segment bytes per route, metrics render time for many
# routes, and proxy latency while /canary-router/metrics is scraped.
#
# 1. build/bench/scale (scale.c): bytes per route, per statistics slot and
#    per progression slot, the segment for 1000 routes as the plugin
#    sizes it (and with a progression slot for every route), and the CPU
#    time of rendering 1000 routes x 2 upstreams with data, in one go and
#    in the pieces the status endpoint sends (with the longest piece).
# 2. build/bench/openloop (openloop.c), checked against an nginx worker
#    that answers at once and stalls once for 100 ms: every request
#    answered, and the stall in its p99 (a closed loop would hide it).
# 3. Scrape impact on the local host (1 worker, proxy 127.0.0.1:28200,
#    Admin API :28201, status :28202, upstreams :29011/:29012), twice:
#      one_route      a fresh segment: only the plugin's own route;
#      1000_routes    the segment scale.c filled (1000 routes x 2
#                     upstreams with data), with a config of 1000 more
#                     services whose plugin instances have the ids scale.c
#                     claimed their routes under: the host keeps them live
#                     (a route no instance claims is retired) and each
#                     scrape renders them all.
#    The gateway's one worker is pinned to CPU 1, so that every scrape
#    competes with all of its traffic and with nothing else (two workers
#    on one CPU would preempt each other in mid-piece); the load
#    generator, the upstream and the scrapers run on CPU 0.  Three modes:
#    no scraping (N); a background loop starting a `curl` of
#    /canary-router/metrics every 100 ms (S); and a control C, the same
#    curl loop on the status listener's /status (the same processes and
#    requests without the render, which tells the machine's share from
#    the metrics' own).  Alternating N S C N S C ..., SCALE_ROUNDS
#    (default 5) of each, SCALE_SECONDS (default 3) each, twice:
#      closed loop  `wrk --latency -t1 -c${SCALE_CONNS:-4}`: each
#                   connection sends its next request when the last is
#                   answered, so the worker runs at 100 % CPU and every
#                   microsecond a scrape takes queues every request.  Its
#                   N rounds measure the worker's capacity (requests/s).
#                   Figures *_closedloop_*.
#      open loop    build/bench/openloop at SCALE_LOAD_FRACTION (default
#                   0.5) of that capacity over SCALE_OL_CONNS (default 16)
#                   connections: requests on a fixed schedule whatever
#                   the answers, latency from the time each was due, the
#                   way a gateway with headroom sees its users' traffic.
#                   Figures *_openloop_*; the <= 1.2 target is judged on
#                   scale_openloop_p99_scraped_vs_not_*.
#    Figures are the medians of the rounds' p99 and their spread ((max -
#    min) / median over the rounds), the ratios S/N and S/C of the
#    medians, the scrape rate achieved, the median scrape time, and, from
#    the comment line that ends a scrape, over 20 scrapes under wrk's
#    load after the rounds: the longest time one scrape held the worker's
#    event loop between two yields (median and worst; target <= 2 ms), in
#    wall time (which includes whatever else the machine ran on the
#    worker's CPU) and in the worker's CPU time, and the scrape's time
#    held in all (wall and CPU; target <= 10 ms of CPU for 1000 x 2 in
#    the engine alone, the first stage's render figures).
# 4. With KONG_ENV naming an installed Kong (as for `make test-kong`), the
#    same on real Kong: a DB-less node with one worker (pinned to CPU 1),
#    proxy 127.0.0.1:28210, status :28212, with the one route and then
#    with the 1000-route segment and config (figures scale_kong_*).
source "$(dirname "$0")/lib.sh"

ROUTES=${SCALE_ROUTES:-1000}
ROUNDS=${SCALE_ROUNDS:-5}
SECS=${SCALE_SECONDS:-3}
CONNS=${SCALE_CONNS:-4}
OL_CONNS=${SCALE_OL_CONNS:-16}
FRACTION=${SCALE_LOAD_FRACTION:-0.5}
PROXY=28200
ADMIN=28201
STATUS=28202
KPROXY=28210
KSTATUS=28212
CHECK=28203
OUT=$BENCH_OUT/stage_scale
[ -x "$BENCH_ROOT/build/bench/scale" ] || die "build/bench/scale missing: make build/bench/scale"
OPENLOOP=$BENCH_ROOT/build/bench/openloop
[ -x "$OPENLOOP" ] || die "build/bench/openloop missing: make build/bench/openloop"
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
awk -v f="$FRACTION" 'BEGIN { exit !(f > 0 && f <= 1) }' || die "SCALE_LOAD_FRACTION=$FRACTION: want 0 < f <= 1"
need_free_ports $PROXY $ADMIN $STATUS $CHECK
rm -rf "$OUT"
mkdir -p "$OUT"
# The segments are large files (1000 routes: 55 MB): never leave them
# behind.
on_exit "rm -rf '$OUT/one_route' '$OUT/${ROUTES}_routes' '$OUT'/*.seg"

# Everything this stage starts runs at a higher priority than the rest
# of the machine (nice SCALE_NICE, default -15, when run as root): on a
# shared machine other work on the same CPUs otherwise preempts the
# gateway worker, the upstream and the load generator in mid-request,
# in every mode alike, and buries the scrape's own effect.
NICE=0
[ "$(id -u)" = 0 ] && NICE=${SCALE_NICE:--15}
on0() { nice -n "$NICE" taskset -c 0 "$@"; }
pin() { # cpu pid
  taskset -pc "$1" "$2" >/dev/null
  renice -n "$NICE" -p "$2" >/dev/null
}

say "# scale (load $(machine_load))"
"$BENCH_ROOT/build/bench/scale" "$OUT" "$ROUTES" 50

start_upstreams "$OUT/upstream" 29011 29012
for pid in $(nginx_worker_pids "$OUT/upstream"); do pin 0 "$pid"; done
host_config "$OUT/kong.yml" 29011 29012 "    plugins:
      - name: canary-router
        config:
          upstreams:
            - name: automation-service
              weight: 90
            - name: automation-service-canary
              weight: 10"

# The gateway under test: its proxy and status ports, and its workers
# (pinned to CPU 1 by pin_gateway).
GW_PROXY=$PROXY
GW_STATUS=$STATUS
pin_gateway() { # pid...
  local pid
  for pid in "$@"; do pin 1 "$pid"; done
}

# Field NAME of openloop's output on stdin.
ol() { awk -v k="openloop_$1" '$1 == k { print $2; found = 1 } END { exit !found }'; }

# The open-loop generator against one nginx worker (CPU 1) that answers
# at once, in a chunked response, and while it stalls 100 ms once (a
# busy loop in the worker): every request is answered, and the stall is
# in the p99.  Of 2000 requests due at 1000/s, about 100 fall due during
# the stall and wait for the rest of it: 5 % of them 0-100 ms, so the
# p99 is well above 50 ms.  A generator that measured from the time it
# sent, or sent only after each answer, would show a few slow requests
# among thousands.
openloop_check() {
  local p=$OUT/openloop_check out
  mkdir -p "$p/conf"
  {
    lua_module_lines
    nginx_main_block 1
    echo "http {"
    nginx_http_common
    cat <<EOF
    access_log off;
    server {
        listen 127.0.0.1:$CHECK;
        location / { return 200 "ok\n"; }
        location /chunked { content_by_lua_block { ngx.print("a") ngx.flush() ngx.print("bc") } }
        location /stall { content_by_lua_block {
            local t = ngx.now()
            repeat ngx.update_time() until ngx.now() - t >= 0.1
            ngx.say("stalled") } }
    }
}
EOF
  } >"$p/conf/nginx.conf"
  nginx_start "$p"
  wait_http "http://127.0.0.1:$CHECK/"
  # shellcheck disable=SC2046
  pin_gateway $(nginx_worker_pids "$p")
  out=$(on0 "$OPENLOOP" -c 4 127.0.0.1 $CHECK / 1000 2)
  if [ "$(echo "$out" | ol completed)" != 2000 ] || [ "$(echo "$out" | ol errors)" != 0 ] ||
    [ "$(echo "$out" | ol timeouts)" != 0 ]; then
    die "openloop check: not every request answered: $out"
  fi
  figure scale_openloop_check_p99_us "$(echo "$out" | ol p99_us)" us
  out=$(on0 "$OPENLOOP" -c 4 127.0.0.1 $CHECK /chunked 500 1)
  [ "$(echo "$out" | ol completed)" = 500 ] || die "openloop check: chunked responses lost: $out"
  (sleep 1 && on0 curl -s -o /dev/null "http://127.0.0.1:$CHECK/stall") &
  out=$(on0 "$OPENLOOP" -c 4 127.0.0.1 $CHECK / 1000 2)
  wait $!
  [ "$(echo "$out" | ol completed)" = 2000 ] || die "openloop check: requests lost around the stall: $out"
  figure scale_openloop_check_stall_p99_us "$(echo "$out" | ol p99_us)" us
  awk -v v="$(echo "$out" | ol p99_us)" 'BEGIN { exit !(v >= 50000) }' ||
    die "openloop check: a 100 ms stall of the server is not in the p99: $out"
  nginx_stop "$p"
}
say "# openloop check: 1 nginx worker on CPU 1, openloop on CPU 0 (load $(machine_load))"
openloop_check

# A curl of PATH on the status listener every 100 ms, each in the
# background so a slow scrape does not lower the rate; one line per
# scrape in LOG: code, seconds, bytes.
scraper() { # log path
  while :; do
    on0 curl -s -o /dev/null -m 10 -w '%{http_code} %{time_total} %{size_download}\n' \
      "http://127.0.0.1:$GW_STATUS$2" >>"$1" &
    sleep 0.1
  done
}

# Scrapes of /canary-router/metrics one after the other while wrk loads
# the proxy, each reduced to the figures of the comment line that ends
# it: the longest hold of the event loop and the time held in all
# (microseconds), one line per scrape in LOG.
hold_probe() { # log url
  local i
  on0 wrk -t1 -c"$CONNS" -d3s "$2" >/dev/null &
  local w=$!
  for i in $(seq 20); do
    on0 curl -s -m 10 "http://127.0.0.1:$GW_STATUS/canary-router/metrics" |
      awk '$3 == "scrape:" { print $7, $9, $15, $17 }' >>"$1"
    sleep 0.1
  done
  wait "$w" || true
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

# One round of LOOP load (closed: wrk; open: openloop at RATE) on URL
# for SECS seconds.  Prints the p99 in microseconds and, closed, the
# requests per second, open, the requests not answered.
load_round() { # loop url label
  local out n p99
  if [ "$1" = closed ]; then
    out=$(on0 wrk --latency -t1 -c"$CONNS" -d"${SECS}s" "$2")
    n=$(echo "$out" | wrk_requests) || die "$3: wrk reported errors"
    p99=$(echo "$out" | wrk_p99_us) || die "$3: no p99 in wrk's output"
    echo "$p99 $(awk -v n="$n" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }')"
  else
    out=$(on0 "$OPENLOOP" -c "$OL_CONNS" -w 0.5 127.0.0.1 "$GW_PROXY" /ai/x "$RATE" "$SECS") ||
      die "$3: openloop failed"
    p99=$(echo "$out" | ol p99_us) || die "$3: no p99 in openloop's output"
    echo "$p99 $(($(echo "$out" | ol errors) + $(echo "$out" | ol timeouts)))"
  fi
}

# measure LABEL MODES: MODES is "N S C" (or "N S").  N: no scraping;
# S: /canary-router/metrics 10 times a second; C (control): the status
# listener's /status at the same rate, i.e. the same curl processes and
# requests without the render, which tells the machine's share (the
# load generator, the upstream and the scrapers share CPU 0) from the
# metrics' own.  First closed loop (wrk), whose N rounds give the
# worker's capacity, then open loop at FRACTION of it.
measure() { # label modes
  local label=$1 modes=$2 r mode res t0 n before path url loop lost=0
  local mn ms mc capacity
  declare -A p99s=() rps=()
  url="http://127.0.0.1:$GW_PROXY/ai/x"
  : >"$OUT/$label.S.scrapes"
  : >"$OUT/$label.C.scrapes"
  : >"$OUT/$label.S.rate"
  on0 wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null # warm-up
  for loop in closed open; do
    if [ "$loop" = open ]; then
      capacity=$(echo ${rps[N]} | tr ' ' '\n' | median)
      RATE=$(awk -v c="$capacity" -v f="$FRACTION" 'BEGIN { printf "%.0f", c * f }')
      figure "${PFX}capacity_${label}_rps" "$capacity" 1/s
      figure "${PFX}openloop_rate_${label}_rps" "$RATE" 1/s
      say "#   $label: capacity $capacity requests/s (wrk, N rounds); open loop at $RATE/s"
    fi
    p99s=()
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
        res=$(load_round "$loop" "$url" "$label")
        if [ "$mode" != N ]; then
          stop_scraper
          sleep 1 # let the last scrapes finish
          n=$(($(wc -l <"$OUT/$label.$mode.scrapes") - before))
          [ "$mode" = S ] && echo "$n $(date +%s.%N) $t0" >>"$OUT/$label.S.rate"
        fi
        p99s[$mode]+="${res% *} "
        if [ "$loop" = closed ]; then
          rps[$mode]+="${res#* } "
        else
          lost=$((lost + ${res#* }))
        fi
        say "#   $label $loop loop round $r $mode: p99 ${res% *} us"
      done
    done
    mn=$(echo ${p99s[N]} | tr ' ' '\n' | median)
    ms=$(echo ${p99s[S]} | tr ' ' '\n' | median)
    figure "${PFX}${loop}loop_p99_not_scraped_${label}_us" "$mn" us
    figure "${PFX}${loop}loop_p99_not_scraped_${label}_spread" "$(echo ${p99s[N]} | tr ' ' '\n' | spread)" %
    figure "${PFX}${loop}loop_p99_scraped_${label}_us" "$ms" us
    figure "${PFX}${loop}loop_p99_scraped_${label}_spread" "$(echo ${p99s[S]} | tr ' ' '\n' | spread)" %
    figure "${PFX}${loop}loop_p99_scraped_vs_not_${label}" "$(awk -v a="$ms" -v b="$mn" 'BEGIN { printf "%.2f", a / b }')" x
    if [ -n "${p99s[C]:-}" ]; then
      mc=$(echo ${p99s[C]} | tr ' ' '\n' | median)
      figure "${PFX}${loop}loop_p99_control_status_${label}_us" "$mc" us
      figure "${PFX}${loop}loop_p99_control_status_${label}_spread" "$(echo ${p99s[C]} | tr ' ' '\n' | spread)" %
      figure "${PFX}${loop}loop_p99_scraped_vs_control_${label}" "$(awk -v a="$ms" -v b="$mc" 'BEGIN { printf "%.2f", a / b }')" x
    fi
  done
  # Requests the open loop sent and never got a 2xx for (errors and
  # timeouts): 0 unless the gateway failed.
  figure "${PFX}openloop_unanswered_${label}" "$lost" requests
  local bad
  bad=$(awk '$1 != 200 || $3 == 0' "$OUT/$label.S.scrapes" | wc -l)
  [ "$bad" = 0 ] || say "#   $label: $bad scrapes failed"
  figure "${PFX}scrapes_per_s_${label}" \
    "$(awk '{ n += $1; t += $2 - $3 - 1 } END { printf "%.1f", n / t }' "$OUT/$label.S.rate")" 1/s
  figure "${PFX}scrape_http_ms_${label}" \
    "$(awk '$1 == 200 { print $2 * 1000 }' "$OUT/$label.S.scrapes" | median | xargs printf '%.2f')" ms
  figure "${PFX}scrape_bytes_${label}" \
    "$(awk '$1 == 200 { b = $3 } END { print b + 0 }' "$OUT/$label.S.scrapes")" bytes
  : >"$OUT/$label.holds"
  hold_probe "$OUT/$label.holds" "$url"
  figure "${PFX}scrape_longest_hold_${label}_us" "$(awk '{ print $1 }' "$OUT/$label.holds" | median)" us
  figure "${PFX}scrape_longest_hold_max_${label}_us" \
    "$(awk '$1 > m { m = $1 } END { print m + 0 }' "$OUT/$label.holds")" us
  figure "${PFX}scrape_held_${label}_ms" \
    "$(awk '{ print $2 / 1000 }' "$OUT/$label.holds" | median | xargs printf '%.2f')" ms
  figure "${PFX}scrape_longest_hold_cpu_${label}_us" "$(awk '{ print $3 }' "$OUT/$label.holds" | median)" us
  figure "${PFX}scrape_longest_hold_cpu_max_${label}_us" \
    "$(awk '$3 > m { m = $3 } END { print m + 0 }' "$OUT/$label.holds")" us
  figure "${PFX}scrape_cpu_${label}_ms" \
    "$(awk '{ print $4 / 1000 }' "$OUT/$label.holds" | median | xargs printf '%.2f')" ms
}

PFX=scale_
export HOST_WORKERS=1

# The plugin's own route only.
host_start "$OUT/one_route" "$OUT/kong.yml" $PROXY $ADMIN $STATUS
# shellcheck disable=SC2046
pin_gateway $(nginx_worker_pids "$OUT/one_route")
say "# scrape impact, one route: 1 gateway worker on CPU 1, wrk -c$CONNS / openloop -c$OL_CONNS on CPU 0, ${SECS}s rounds, N S C x $ROUNDS (load $(machine_load))"
measure one_route "N S C"
host_stop "$OUT/one_route"

# The 1000-route config: a service and plugin instance per route, with
# the id scale.c claimed the route under.
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

# The 1000-route segment: the host attaches it (an existing valid segment
# keeps its geometry).
mkdir -p "$OUT/${ROUTES}_routes"
cp "$OUT/scale-$ROUTES.seg" "$OUT/${ROUTES}_routes/canary-router.seg"
host_start "$OUT/${ROUTES}_routes" "$OUT/kong-$ROUTES.yml" $PROXY $ADMIN $STATUS
# shellcheck disable=SC2046
pin_gateway $(nginx_worker_pids "$OUT/${ROUTES}_routes")
live=$(curl -s "http://127.0.0.1:$STATUS/canary-router/metrics" | grep -c '^canary_progression_step{' || true)
[ "$live" -gt "$ROUTES" ] || die "the host exports $live routes, expected $ROUTES + 1"
say "# scrape impact, $ROUTES routes: 1 gateway worker on CPU 1, wrk -c$CONNS / openloop -c$OL_CONNS on CPU 0, ${SECS}s rounds, N S C x $ROUNDS (load $(machine_load))"
measure "${ROUTES}_routes" "N S C"
host_stop "$OUT/${ROUTES}_routes"

# ---- real Kong --------------------------------------------------------

if [ -z "${KONG_ENV:-}" ]; then
  rm -f "$OUT/scale-$ROUTES.seg"
  exit 0
fi
[ -r "$KONG_ENV" ] || die "KONG_ENV=$KONG_ENV is not a readable file"
# shellcheck disable=SC1090
. "$KONG_ENV"
command -v kong >/dev/null || die "KONG_ENV=$KONG_ENV puts no kong on PATH"
need_free_ports $KPROXY $KSTATUS

# A DB-less Kong node with one worker pinned to CPU 1, on CONFIG, with
# the segment already in PREFIX (if any).
kong_start() { # prefix config
  local prefix=$1 master w
  KONG_PREFIX=$prefix \
  KONG_DATABASE=off \
  KONG_DECLARATIVE_CONFIG=$2 \
  KONG_NGINX_WORKER_PROCESSES=1 \
  KONG_PROXY_LISTEN="127.0.0.1:$KPROXY reuseport backlog=4096" \
  KONG_STATUS_LISTEN="127.0.0.1:$KSTATUS" \
  KONG_ADMIN_LISTEN=off \
  KONG_PROXY_ACCESS_LOG=/dev/null \
  KONG_ANONYMOUS_REPORTS=off \
  KONG_PLUGINS=bundled,canary-router \
  CANARY_ROUTER_SEGMENT=$prefix/canary-router.seg \
  CANARY_ROUTER_MAX_ROUTES=$((ROUTES + 8)) \
  KONG_NGINX_MAIN_ENV="CANARY_ROUTER_SEGMENT; env CANARY_ROUTER_MAX_ROUTES" \
  KONG_LUA_PACKAGE_PATH="$BENCH_ROOT/build/lua/?.lua;$BENCH_ROOT/build/lua/?/init.lua;;" \
  KONG_LUA_PACKAGE_CPATH="$BENCH_ROOT/build/?.so;;" \
    kong start >"$prefix/start.log" 2>&1 || die "kong start failed: $(tail -n 5 "$prefix/start.log")"
  on_exit "kong stop -p '$prefix'; rm -f '$prefix/canary-router.seg'"
  master=$(cat "$prefix/pids/nginx.pid")
  for w in $(pgrep -P "$master"); do pin_gateway "$w"; done
  wait_http "http://127.0.0.1:$KPROXY/ai/x" 60
}

GW_PROXY=$KPROXY
GW_STATUS=$KSTATUS
PFX=scale_kong_
KONG_VERSION=$(kong version 2>/dev/null | awk '{ print $NF }')

mkdir -p "$OUT/kong_one_route"
kong_start "$OUT/kong_one_route" "$OUT/kong.yml"
say "# Kong $KONG_VERSION scrape impact, one route: 1 worker on CPU 1, wrk / openloop on CPU 0, N S C x $ROUNDS (load $(machine_load))"
measure one_route "N S C"
kong stop -p "$OUT/kong_one_route" >/dev/null 2>&1 || true

mkdir -p "$OUT/kong_${ROUTES}_routes"
mv "$OUT/scale-$ROUTES.seg" "$OUT/kong_${ROUTES}_routes/canary-router.seg"
kong_start "$OUT/kong_${ROUTES}_routes" "$OUT/kong-$ROUTES.yml"
live=$(curl -s "http://127.0.0.1:$KSTATUS/canary-router/metrics" | grep -c '^canary_progression_step{' || true)
[ "$live" -gt "$ROUTES" ] || die "Kong exports $live routes, expected $ROUTES + 1"
say "# Kong $KONG_VERSION scrape impact, $ROUTES routes: 1 worker on CPU 1, wrk / openloop on CPU 0, N S C x $ROUNDS (load $(machine_load))"
measure "${ROUTES}_routes" "N S C"
kong stop -p "$OUT/kong_${ROUTES}_routes" >/dev/null 2>&1 || true
