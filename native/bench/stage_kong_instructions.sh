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
# thousand a second) is taken off.
#
# Between starts of the same variant the count moves by up to 10 %
# (LuaJIT forms different traces each start), more than some of the
# differences measured, so each variant runs as KONG_INSN_STARTS
# processes (default 3): its figure is the median over the processes'
# medians, and the spread over processes is printed.  Figures: each
# variant's instructions per request, its instructions added over bare,
# the two target ratios of kong_variants.sh, and the floor any plugin
# like canary-router pays on Kong (FLOOR_VARIANTS): Kong's charge for a
# plugin with its phases (noop - bare), for a service on an Upstream
# (upstreams - bare), and what canary-router adds beyond both
# (canary - noop - upstreams + bare).
#
# KONG_INSN_ALT=DIR adds the variant canary_alt: canary's configuration
# with the plugin from another build directory (lua/ and libcanary.so,
# e.g. a worktree's build/), so that a change is measured against its
# base in the same run (kong_insn_canary_vs_alt).
#
# Ports: proxies 28500.. (one per process), benchmark upstreams 29041
# and 29042.  All processes start at once (valgrind's start takes a
# minute or two of CPU each); the windows then run one at a time, the
# starts of a variant interleaved with the other variants'.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kong_variants.sh"

load_kong_env
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"

WARM=${KONG_INSN_WARM:-6000}
ROUNDS=${KONG_INSN_ROUNDS:-3}
SECS=${KONG_INSN_SECONDS:-10}
STARTS=${KONG_INSN_STARTS:-3}
VARIANTS+=("${FLOOR_VARIANTS[@]}")
# KONG_INSN_VARIANTS="bare canary": a subset (bare is always measured).
if [ -n "${KONG_INSN_VARIANTS:-}" ]; then
  read -ra VARIANTS <<<"bare ${KONG_INSN_VARIANTS//bare/}"
fi
if [ -n "${KONG_INSN_ALT:-}" ]; then
  [ -r "$KONG_INSN_ALT/libcanary.so" ] && [ -d "$KONG_INSN_ALT/lua" ] ||
    die "KONG_INSN_ALT=$KONG_INSN_ALT has no lua/ and libcanary.so"
  VARIANTS+=(canary_alt)
fi
UP1=29041
UP2=29042
declare -A PORT VG OUTF
callgrind_procs stage_kong_instructions 28500 $UP1 $UP2

for p in "${PROCS[@]}"; do
  v=${p%.*}
  prefix=$ROOT_OUT/$p
  mkdir -p "$prefix"
  kong_yml "$v" >"$prefix/kong.yml"
  tree=""
  [ "$v" = canary_alt ] && tree=$KONG_INSN_ALT
  callgrind_kong "$p" "$prefix" "${PORT[$p]}" "$tree" -- --toggle-collect=ngx_epoll_process_events
done

say "# Kong $KONG_VERSION instructions per request (callgrind, inside ngx_epoll_process_events): $STARTS processes per variant, each $ROUNDS windows of ${SECS}s after $WARM requests (load $(machine_load))"
for p in "${PROCS[@]}"; do wait_http "http://127.0.0.1:${PORT[$p]}/x" 900; done

requests() { # process seconds
  # A request under callgrind with counting on, on a machine busy with
  # the other processes' start, can take longer than wrk's default 2 s.
  # shellcheck disable=SC2046
  wrk -t1 -c4 -d"$2s" --timeout 30s $(variant_headers "${1%.*}") \
    "http://127.0.0.1:${PORT[$1]}/x" | wrk_requests
}

declare -A PMED VALS MED
for p in "${PROCS[@]}"; do
  warm=0
  while [ "$warm" -lt "$WARM" ]; do warm=$((warm + $(requests "$p" 5 2>/dev/null || echo 0))); done
  count_start "$p"
  sleep "$SECS"
  idle=$(count_stop "$p")
  vals=""
  for _ in $(seq "$ROUNDS"); do
    w=$(count_window "$p" "$SECS") || exit 1
    vals+="$(awk -v t="${w#* }" -v i="$idle" -v n="${w% *}" 'BEGIN { printf "%.0f", (t - i) / n }')"$'\n'
  done
  PMED[$p]=$(printf '%s' "$vals" | median)
  VALS[${p%.*}]+="${PMED[$p]}"$'\n'
  say "#   $p: median ${PMED[$p]} min $(printf '%s' "$vals" | sort -g | head -n1) max $(printf '%s' "$vals" | sort -g | tail -n1) instructions/request (idle $idle per ${SECS}s)"
done

for v in "${VARIANTS[@]}"; do
  MED[$v]=$(printf '%s' "${VALS[$v]}" | median)
  figure "kong_insn_${v}_per_req" "${MED[$v]}" instructions
  figure "kong_insn_${v}_spread" "$(printf '%s' "${VALS[$v]}" | spread)" %
  say "#   $v: median over $STARTS processes ${MED[$v]}, processes $(printf '%s' "${VALS[$v]}" | sort -g | tr '\n' ' ')"
done

have() { for x in "$@"; do [ -n "${MED[$x]:-}" ] || return 1; done; }
added() { awk -v a="${MED[$1]}" -v b="${MED[bare]}" 'BEGIN { printf "%.0f", a - b }'; }
for v in "${VARIANTS[@]}"; do
  [ "$v" = bare ] && continue
  figure "kong_insn_${v}_added_per_req" "$(added "$v")" instructions
done
ratio() { # a b: a / b, or nothing when b is not positive
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'
}
report_ratio() { # name a b
  local r
  r=$(ratio "$2" "$3")
  if [ -n "$r" ]; then figure "$1" "$r" x; else say "#   $1: no ratio (denominator $3 <= 0)"; fi
}
have correlation canary &&
  report_ratio kong_insn_canary_added_vs_correlation "$(added canary)" "$(added correlation)"
have assembled canary_full &&
  report_ratio kong_insn_canary_full_added_vs_assembled "$(added canary_full)" "$(added assembled)"
if have noop upstreams canary; then
  figure kong_insn_plugin_dispatch_per_req "$(added noop)" instructions
  figure kong_insn_upstream_entities_per_req "$(added upstreams)" instructions
  own=$(awk -v c="${MED[canary]}" -v n="${MED[noop]}" -v u="${MED[upstreams]}" -v b="${MED[bare]}" \
    'BEGIN { printf "%.0f", c - n - u + b }')
  figure kong_insn_canary_own_per_req "$own" instructions
  have correlation &&
    report_ratio kong_insn_canary_own_vs_correlation_own "$own" \
      "$(awk -v c="${MED[correlation]}" -v n="${MED[noop]}" 'BEGIN { printf "%.0f", c - n }')"
fi
have canary canary_alt &&
  report_ratio kong_insn_canary_vs_alt "${MED[canary]}" "${MED[canary_alt]}"
exit 0
