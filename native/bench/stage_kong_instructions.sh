#!/usr/bin/env bash
# stage_kong_instructions.sh - instructions per request on real Kong,
# counted by callgrind: the same variants as stage_kong_cpu.sh
# (kong_variants.sh), measured in a way a busy machine cannot disturb.
# Runs only when KONG_ENV names an installed Kong; prints nothing
# otherwise.
#
# CPU time per request moves by +-30 % on a shared machine; the number of
# instructions a request executes does not.  Each variant runs as one
# nginx process (master_process off, DB-less, the plugin from the build
# tree) under `valgrind --tool=callgrind`, with instrumentation off while
# Kong starts and counting only inside ngx_epoll_process_events: the
# handling of client and upstream I/O, which runs every phase of a
# request (rewrite to log, balancer, header and body filters), and none
# of the timers (Kong's and the plugin's background work, which does not
# scale with requests).  After KONG_INSN_WARM requests (default 6000, so
# that LuaJIT has compiled its traces), KONG_INSN_ROUNDS windows (default
# 3) of `wrk -t1 -c4 -d${KONG_INSN_SECONDS}s` (default 10) each give total
# instructions / requests; the idle rate measured the same way (a few
# thousand a second) is taken off.  Figures: the median per variant, the
# spread on stderr, each variant's instructions added over bare, and the
# two target ratios of kong_variants.sh.
#
# Ports: proxies 28500.. (one per variant), benchmark upstreams 29041 and
# 29042.  All variants start at once (valgrind's start takes a minute or
# two of CPU each); the windows then run one variant at a time.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kong_variants.sh"

[ -n "${KONG_ENV:-}" ] || exit 0
[ -r "$KONG_ENV" ] || die "KONG_ENV=$KONG_ENV is not a readable file"
# shellcheck disable=SC1090
. "$KONG_ENV"
command -v kong >/dev/null || die "KONG_ENV=$KONG_ENV puts no kong on PATH"
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"

WARM=${KONG_INSN_WARM:-6000}
ROUNDS=${KONG_INSN_ROUNDS:-3}
SECS=${KONG_INSN_SECONDS:-10}
# KONG_INSN_VARIANTS="bare canary": a subset (bare is always measured).
if [ -n "${KONG_INSN_VARIANTS:-}" ]; then
  read -ra VARIANTS <<<"bare ${KONG_INSN_VARIANTS//bare/}"
fi
UP1=29041
UP2=29042
declare -A PORT VG OUTF
port=28500
for v in "${VARIANTS[@]}"; do PORT[$v]=$port; port=$((port + 1)); done
need_free_ports "${PORT[@]}" $UP1 $UP2
ROOT_OUT=$BENCH_OUT/stage_kong_instructions
rm -rf "$ROOT_OUT"
mkdir -p "$ROOT_OUT"
start_upstreams "$ROOT_OUT/upstream" $UP1 $UP2
KONG_VERSION=$(kong version 2>/dev/null | awk '{ print $NF }')

# One process, no daemon, root: no worker user to hand the segment to.
for v in "${VARIANTS[@]}"; do
  prefix=$ROOT_OUT/$v
  mkdir -p "$prefix"
  kong_yml "$v" >"$prefix/kong.yml"
  kong_variant_env "$prefix" "127.0.0.1:${PORT[$v]}" \
    env KONG_NGINX_DAEMON=off KONG_NGINX_MAIN_MASTER_PROCESS=off KONG_NGINX_USER="root root" \
    kong prepare -p "$prefix" >"$prefix/prepare.log" 2>&1 ||
    die "$v: kong prepare failed: $(tail -n 5 "$prefix/prepare.log")"
  OUTF[$v]=$prefix/callgrind.out
  CANARY_ROUTER_SEGMENT=$prefix/canary-router.seg \
    valgrind --tool=callgrind --instr-atstart=no \
    --toggle-collect=ngx_epoll_process_events --callgrind-out-file="${OUTF[$v]}" \
    nginx -p "$prefix" -c nginx.conf >"$prefix/valgrind.log" 2>&1 &
  VG[$v]=$!
  on_exit "kill ${VG[$v]}"
done

say "# Kong $KONG_VERSION instructions per request (callgrind, inside ngx_epoll_process_events): $ROUNDS windows of ${SECS}s after $WARM requests (load $(machine_load))"
for v in "${VARIANTS[@]}"; do wait_http "http://127.0.0.1:${PORT[$v]}/x" 900; done

requests() { # variant seconds
  # shellcheck disable=SC2046
  wrk -t1 -c4 -d"$2s" $(variant_headers "$1") "http://127.0.0.1:${PORT[$1]}/x" | wrk_requests
}

# A counting window: count_start VARIANT, the work, count_stop VARIANT
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

declare -A MED
for v in "${VARIANTS[@]}"; do
  warm=0
  while [ "$warm" -lt "$WARM" ]; do warm=$((warm + $(requests "$v" 5 2>/dev/null || echo 0))); done
  count_start "$v"
  sleep "$SECS"
  idle=$(count_stop "$v")
  vals=""
  for _ in $(seq "$ROUNDS"); do
    count_start "$v"
    n=$(requests "$v" "$SECS") || die "$v: wrk failed"
    total=$(count_stop "$v")
    [ "$n" -gt 0 ] || die "$v: no requests completed"
    vals+="$(awk -v t="$total" -v i="$idle" -v n="$n" 'BEGIN { printf "%.0f", (t - i) / n }')"$'\n'
  done
  MED[$v]=$(printf '%s' "$vals" | median)
  figure "kong_insn_${v}_per_req" "${MED[$v]}" instructions
  say "#   $v: median ${MED[$v]} min $(printf '%s' "$vals" | sort -g | head -n1) max $(printf '%s' "$vals" | sort -g | tail -n1) instructions/request (idle $idle per ${SECS}s)"
done

added() { awk -v a="${MED[$1]}" -v b="${MED[bare]}" 'BEGIN { printf "%.0f", a - b }'; }
for v in "${VARIANTS[@]}"; do
  [ "$v" = bare ] && continue
  figure "kong_insn_${v}_added_per_req" "$(added "$v")" instructions
done
ratio() { awk -v a="$(added "$1")" -v b="$(added "$2")" 'BEGIN { if (b <= 0) print "nan"; else printf "%.2f", a / b }'; }
[ -n "${MED[correlation]:-}" ] && [ -n "${MED[canary]:-}" ] &&
  figure kong_insn_canary_added_vs_correlation "$(ratio canary correlation)" x
[ -n "${MED[assembled]:-}" ] && [ -n "${MED[canary_full]:-}" ] &&
  figure kong_insn_canary_full_added_vs_assembled "$(ratio canary_full assembled)" x
exit 0
