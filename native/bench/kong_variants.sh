# shellcheck shell=bash
# native/bench/kong_variants.sh - the Kong configurations the real-Kong
# benchmark stages compare (sourced after lib.sh; UP1 and UP2 are the
# benchmark upstreams' ports):
#
#   bare          a service on 127.0.0.1:UP1, no plugin
#   weighted      the service on an Upstream with targets 90/10
#   correlation   bare + correlation-id (uuid, echoed)
#   prometheus    bare + prometheus, every metric switched on
#   assembled     weighted + prometheus (all) + correlation-id: what a
#                 user assembles today for a canary
#   canary        canary-router defaults: upstreams 90/10, trace IDs
#                 (X-Trace-Id + traceparent, echoed), histograms
#   canary_full   canary-router sticky by header with an ip fallback,
#                 override allowed from 127.0.0.1, response header, a
#                 progression (1 h steps); requests carry X-User
#
# and, for telling apart what Kong charges from what the plugin does
# (FLOOR_VARIANTS, measured by stage_kong_instructions.sh):
#
#   noop          bare + bench-noop (native/bench/noop_plugin): a plugin
#                 with canary-router's phases (access, header_filter)
#                 doing nothing; what Kong charges any such plugin
#   upstreams     canary's services and Upstreams, no plugin: what Kong's
#                 balancer charges for a service on an Upstream
#
# Ratios: each variant's cost added over bare, and
#   canary added / correlation added       (target <= 0.8)
#   canary_full added / assembled added    (target <= 0.5)

VARIANTS=(bare weighted correlation prometheus assembled canary canary_full)
FLOOR_VARIANTS=(noop upstreams)

# The declarative config of one variant: services, upstreams, plugins.
kong_yml() { # variant
  # shellcheck disable=SC2153 # UP1/UP2 are set by the sourcing stage
  local svc_url="http://127.0.0.1:$UP1" plugins="" upstreams=""
  local weighted="  - name: weighted
    targets:
      - { target: 127.0.0.1:$UP1, weight: 90 }
      - { target: 127.0.0.1:$UP2, weight: 10 }"
  local two="  - name: stable
    targets: [{ target: 127.0.0.1:$UP1 }]
  - name: canary
    targets: [{ target: 127.0.0.1:$UP2 }]"
  local corr="      - name: correlation-id
        config: { header_name: X-Trace-Id, generator: uuid, echo_downstream: true }"
  local prom="      - name: prometheus
        config: { status_code_metrics: true, latency_metrics: true,
                  bandwidth_metrics: true, upstream_health_metrics: true }"
  local canary="      - name: canary-router
        config:
          upstreams:
            - { name: stable, weight: 90 }
            - { name: canary, weight: 10 }"
  case $1 in
    bare) ;;
    weighted) svc_url=http://weighted; upstreams=$weighted ;;
    correlation) plugins=$corr ;;
    prometheus) plugins=$prom ;;
    assembled) svc_url=http://weighted; upstreams=$weighted; plugins="$corr
$prom" ;;
    noop) plugins="      - name: bench-noop" ;;
    upstreams) svc_url=http://stable; upstreams=$two ;;
    canary | canary_alt) svc_url=http://stable; upstreams=$two; plugins=$canary ;;
    canary_full) svc_url=http://stable; upstreams=$two; plugins="$canary
          sticky: { by: header, header: X-User, fallback: [ip] }
          override: { header: X-Canary, allow_from: [127.0.0.1] }
          response_header: X-Canary-Upstream
          progression:
            canary: canary
            steps: [10, 50, 100]
            interval: 3600
            max_error_rate: 1
            max_p99_ms: 2000" ;;
  esac
  cat <<EOF
_format_version: "3.0"
services:
  - name: bench
    url: $svc_url
    routes: [{ name: bench, paths: [/] }]
$( [ -n "$plugins" ] && printf '    plugins:\n%s\n' "$plugins" )
$( [ -n "$upstreams" ] && printf 'upstreams:\n%s\n' "$upstreams" )
EOF
}

# Runs "$@" with the environment of one DB-less Kong node of one worker:
# kong_variant_env PREFIX PROXY_LISTEN cmd...  (the plugin from the build
# tree, or from KV_TREE: another build directory with lua/ and
# libcanary.so; KONG_DECLARATIVE_CONFIG is PREFIX/kong.yml).
kong_variant_env() {
  local prefix=$1 listen=$2 tree=${KV_TREE:-$BENCH_ROOT/build}
  shift 2
  env KONG_PREFIX="$prefix" \
    KONG_DATABASE=off \
    KONG_DECLARATIVE_CONFIG="$prefix/kong.yml" \
    KONG_ROUTER_FLAVOR=traditional \
    KONG_NGINX_WORKER_PROCESSES=1 \
    KONG_PROXY_LISTEN="$listen" \
    KONG_ADMIN_LISTEN=off \
    KONG_STATUS_LISTEN=off \
    KONG_PROXY_ACCESS_LOG=/dev/null \
    KONG_ANONYMOUS_REPORTS=off \
    KONG_PLUGINS=bundled,canary-router,bench-noop \
    CANARY_ROUTER_SEGMENT="$prefix/canary-router.seg" \
    KONG_NGINX_MAIN_ENV=CANARY_ROUTER_SEGMENT \
    KONG_LUA_PACKAGE_PATH="$tree/lua/?.lua;$tree/lua/?/init.lua;$BENCH_DIR/noop_plugin/?.lua;;" \
    KONG_LUA_PACKAGE_CPATH="$tree/?.so;;" \
    "$@"
}

# Request headers per variant (wrk -H ...).
variant_headers() { # variant
  [ "$1" = canary_full ] && echo "-H X-User:user-4711"
  return 0
}

# Sources KONG_ENV for a real-Kong stage: the stage ends quietly without
# it, and dies when it names no readable file or puts no kong on PATH.
load_kong_env() {
  [ -n "${KONG_ENV:-}" ] || exit 0
  [ -r "$KONG_ENV" ] || die "KONG_ENV=$KONG_ENV is not a readable file"
  # shellcheck disable=SC1090
  . "$KONG_ENV"
  command -v kong >/dev/null || die "KONG_ENV=$KONG_ENV puts no kong on PATH"
}

# The processes of a callgrind stage: STARTS of each of VARIANTS, named
# "variant.start" (a variant's starts interleaved with the other
# variants'), on ports from BASE_PORT on; the stage's output directory
# and its two benchmark upstreams.
#   callgrind_procs STAGE BASE_PORT UP1 UP2
# sets PROCS, PORT[...] (an array the stage declares), ROOT_OUT and
# KONG_VERSION.
callgrind_procs() {
  local port=$2 s v p
  PROCS=()
  for s in $(seq "$STARTS"); do
    for v in "${VARIANTS[@]}"; do PROCS+=("$v.$s"); done
  done
  for p in "${PROCS[@]}"; do PORT[$p]=$port; port=$((port + 1)); done
  need_free_ports "${PORT[@]}" "$3" "$4"
  ROOT_OUT=$BENCH_OUT/$1
  rm -rf "$ROOT_OUT"
  mkdir -p "$ROOT_OUT"
  start_upstreams "$ROOT_OUT/upstream" "$3" "$4"
  KONG_VERSION=$(kong version 2>/dev/null | awk '{ print $NF }')
}

# The instruction stages' Kong processes (stage_kong_instructions.sh,
# stage_kong_own.sh): one DB-less nginx process each (master_process
# off, no daemon, root: no worker user to hand the segment to) under
# callgrind, instrumentation off until a window opens.
#   callgrind_kong PROCESS PREFIX PORT TREE [VAR=value...] [-- valgrind option...]
# (TREE: a build directory, empty for this one; PREFIX/kong.yml written
# before) sets VG[PROCESS] (its pid) and OUTF[PROCESS] (callgrind's
# output file), arrays the stage declares.
callgrind_kong() {
  local p=$1 prefix=$2 port=$3 tree=$4 envs=()
  shift 4
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  KV_TREE=$tree kong_variant_env "$prefix" "127.0.0.1:$port" \
    env KONG_NGINX_DAEMON=off KONG_NGINX_MAIN_MASTER_PROCESS=off KONG_NGINX_USER="root root" \
    "${envs[@]}" kong prepare -p "$prefix" >"$prefix/prepare.log" 2>&1 ||
    die "$p: kong prepare failed: $(tail -n 5 "$prefix/prepare.log")"
  OUTF[$p]=$prefix/callgrind.out
  CANARY_ROUTER_SEGMENT=$prefix/canary-router.seg \
    valgrind --tool=callgrind --instr-atstart=no "$@" --callgrind-out-file="${OUTF[$p]}" \
    nginx -p "$prefix" -c nginx.conf >"$prefix/valgrind.log" 2>&1 &
  VG[$p]=$!
  on_exit "kill ${VG[$p]}"
}

# A counting window: count_start PROCESS, the work, count_stop PROCESS
# (prints the instructions counted in between).
count_start() {
  rm -f "${OUTF[$1]}"*
  callgrind_control -z "${VG[$1]}" >/dev/null 2>&1
  callgrind_control -i on "${VG[$1]}" >/dev/null 2>&1
}
count_stop() {
  local f=${OUTF[$1]}
  callgrind_control -i off "${VG[$1]}" >/dev/null 2>&1
  callgrind_control -d "${VG[$1]}" >/dev/null 2>&1
  for _ in $(seq 50); do
    grep -qs '^totals:' "$f"* && break
    sleep 0.1
  done
  cat "$f"* | awk '/^totals:/ { s += $2 } END { print s + 0 }'
}

# One counting window of SECS seconds of load on PROCESS; a window in
# which no request completes (callgrind on a busy machine) is measured
# again, up to three times.  Prints "requests instructions"; run it as
# w=$(count_window P SECS) || exit 1 (die in a command substitution
# leaves only that subshell).
count_window() { # process seconds
  local n total try
  for try in 1 2 3; do
    count_start "$1"
    n=$(requests "$1" "$2") || die "$1: wrk failed"
    total=$(count_stop "$1")
    if [ "$n" -gt 0 ]; then
      echo "$n $total"
      return
    fi
    [ "$try" = 3 ] && die "$1: no request completed in three windows"
    say "#   $1: no request completed in a window; again"
  done
}
