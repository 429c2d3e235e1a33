#!/usr/bin/env bash
# stage_kong_own.sh - instructions per request in the plugins' own phase
# handlers on real Kong: what each plugin executes, its PDK and nginx
# calls included, without Kong's work around it.  Runs only when
# KONG_ENV names an installed Kong; prints nothing otherwise.
#
# stage_kong_instructions.sh counts whole requests; there, two starts of
# the same configuration differ by up to 10 k instructions (LuaJIT forms
# different traces of Kong's own code at each start), as much as a
# plugin adds.  Here the bench-probe plugin (native/bench/probe_plugin)
# turns callgrind's counting on and off around each phase handler of
# canary-router, correlation-id and prometheus (callgrind started with
# counting off, vgtoggle.so switching it), so a count covers only the
# handlers.  correlation-id's count moves by under 1 % between starts;
# canary-router's by up to a third, with how LuaJIT compiles its
# handlers in each start (callgrind shows it as the interpreter's share).
#
# Variants (kong_variants.sh): correlation, canary (defaults), assembled
# (weighted + prometheus + correlation-id) and canary_full; KONG_OWN_ALT
# (or KONG_INSN_ALT) = another build directory adds canary_alt, canary's
# config with that build's plugin.  Each variant runs as KONG_OWN_STARTS
# nginx processes (default 2, master_process off, DB-less); after
# KONG_OWN_WARM requests (default 6000) each process counts
# KONG_OWN_ROUNDS windows (default 2) of `wrk -t1 -c4 -d${KONG_OWN_SECONDS}s`
# (default 10).  Figures: kong_own_insn_<variant>_per_req (median over
# processes of their medians, spread over processes) and
#   kong_own_insn_canary_vs_correlation    (compare: the <= 0.8 target)
#   kong_own_insn_canary_full_vs_assembled (compare: the <= 0.5 target)
#   kong_own_insn_canary_vs_alt            (with an alternative build)
#
# Ports: proxies 28600.., benchmark upstreams 29051 and 29052.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kong_variants.sh"

load_kong_env
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control not found (apt-get install valgrind)"
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
TOGGLE=$BENCH_ROOT/build/bench/vgtoggle.so
[ -r "$TOGGLE" ] || die "$TOGGLE missing: make build/bench/vgtoggle.so"

WARM=${KONG_OWN_WARM:-6000}
ROUNDS=${KONG_OWN_ROUNDS:-2}
SECS=${KONG_OWN_SECONDS:-10}
STARTS=${KONG_OWN_STARTS:-2}
ALT=${KONG_OWN_ALT:-${KONG_INSN_ALT:-}}
VARIANTS=(correlation canary assembled canary_full)
if [ -n "$ALT" ]; then
  [ -r "$ALT/libcanary.so" ] && [ -d "$ALT/lua" ] || die "$ALT has no lua/ and libcanary.so"
  VARIANTS+=(canary_alt)
fi
UP1=29051
UP2=29052
declare -A PORT VG OUTF
callgrind_procs stage_kong_own 28600 $UP1 $UP2

# bench-probe loaded, vgtoggle.so on the Lua C path, counting off until
# a handler switches it on.
for p in "${PROCS[@]}"; do
  v=${p%.*}
  prefix=$ROOT_OUT/$p
  mkdir -p "$prefix"
  kong_yml "$v" >"$prefix/kong.yml"
  tree=${BENCH_ROOT}/build
  [ "$v" = canary_alt ] && tree=$ALT
  callgrind_kong "$p" "$prefix" "${PORT[$p]}" "$tree" \
    KONG_PLUGINS=bundled,canary-router,bench-probe \
    KONG_LUA_PACKAGE_PATH="$tree/lua/?.lua;$tree/lua/?/init.lua;$BENCH_DIR/probe_plugin/?.lua;;" \
    KONG_LUA_PACKAGE_CPATH="$tree/?.so;$(dirname "$TOGGLE")/?.so;;" \
    -- --collect-atstart=no
done

say "# Kong $KONG_VERSION instructions per request in the plugins' own phase handlers (callgrind, bench-probe): $STARTS processes per variant, each $ROUNDS windows of ${SECS}s after $WARM requests (load $(machine_load))"
for p in "${PROCS[@]}"; do wait_http "http://127.0.0.1:${PORT[$p]}/x" 900; done

requests() { # process seconds
  local v=${1%.*}
  # shellcheck disable=SC2046
  wrk -t1 -c4 -d"$2s" --timeout 30s $(variant_headers "${v%_alt}") \
    "http://127.0.0.1:${PORT[$1]}/x" | wrk_requests
}

declare -A VALS MED
for p in "${PROCS[@]}"; do
  warm=0
  while [ "$warm" -lt "$WARM" ]; do warm=$((warm + $(requests "$p" 5 2>/dev/null || echo 0))); done
  vals=""
  for _ in $(seq "$ROUNDS"); do
    w=$(count_window "$p" "$SECS") || exit 1
    vals+="$(awk -v t="${w#* }" -v n="${w% *}" 'BEGIN { printf "%.0f", t / n }')"$'\n'
  done
  med=$(printf '%s' "$vals" | median)
  VALS[${p%.*}]+="$med"$'\n'
  say "#   $p: median $med min $(printf '%s' "$vals" | sort -g | head -n1) max $(printf '%s' "$vals" | sort -g | tail -n1) instructions/request in the handlers"
done

for v in "${VARIANTS[@]}"; do
  MED[$v]=$(printf '%s' "${VALS[$v]}" | median)
  figure "kong_own_insn_${v}_per_req" "${MED[$v]}" instructions
  figure "kong_own_insn_${v}_spread" "$(printf '%s' "${VALS[$v]}" | spread)" %
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }
figure kong_own_insn_canary_vs_correlation "$(ratio "${MED[canary]}" "${MED[correlation]}")" x
figure kong_own_insn_canary_full_vs_assembled "$(ratio "${MED[canary_full]}" "${MED[assembled]}")" x
[ -n "$ALT" ] && figure kong_own_insn_canary_vs_alt "$(ratio "${MED[canary]}" "${MED[canary_alt]}")" x
exit 0
