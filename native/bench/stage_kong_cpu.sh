#!/usr/bin/env bash
# stage_kong_cpu.sh - CPU per request on real Kong, canary-router against
# what a Kong user assembles without it.  Runs only when KONG_ENV names an
# installed Kong (a file to source that puts `kong` on PATH); prints
# nothing otherwise.
#
# Seven Kong nodes run side by side, DB-less, one worker each, all
# proxying to the same benchmark upstream (one nginx worker answering a
# small 200 on 127.0.0.1:29001 and :29002, keep-alive); the variants and
# the two target ratios are in kong_variants.sh.  Proxy ports 28200,
# 28210, ... 28260 in the order of VARIANTS.
#
# The Kong workers are pinned to CPU 1, wrk and the upstream to CPU 0.
# Each run reads utime+stime of the node's worker (/proc/<pid>/stat)
# around `wrk -t1 -c16 -d${KONG_CPU_SECONDS}s` (default 3) and divides by
# the requests wrk completed.  After a warm-up of each node, the variants
# alternate in rounds (KONG_CPU_ROUNDS, default 7); figures are medians,
# with min and max on stderr.  What carries over to other machines is the
# ratios: each variant's CPU added over bare, and
#
#   kong_canary_added_vs_correlation   canary added / correlation added
#                                      (target <= 0.8)
#   kong_canary_full_added_vs_assembled canary_full added / assembled added
#                                      (target <= 0.5)
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kong_variants.sh"

load_kong_env
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"

ROUNDS=${KONG_CPU_ROUNDS:-7}
SECS=${KONG_CPU_SECONDS:-3}
UP1=29001
UP2=29002
declare -A PORT=([bare]=28200 [weighted]=28210 [correlation]=28220 [prometheus]=28230
                 [assembled]=28240 [canary]=28250 [canary_full]=28260)
declare -A PREFIX WRK_ARGS WORKER

need_free_ports "${PORT[@]}"
ROOT_OUT=$BENCH_OUT/stage_kong_cpu
rm -rf "$ROOT_OUT"
mkdir -p "$ROOT_OUT"

start_upstreams "$ROOT_OUT/upstream" $UP1 $UP2
for pid in $(nginx_worker_pids "$ROOT_OUT/upstream"); do taskset -pc 0 "$pid" >/dev/null; done

KONG_VERSION=$(kong version 2>/dev/null | awk '{ print $NF }')

kong_node() { # variant
  local v=$1 prefix=$ROOT_OUT/$1 port=${PORT[$1]}
  mkdir -p "$prefix"
  kong_yml "$v" >"$prefix/kong.yml"
  kong_variant_env "$prefix" "127.0.0.1:$port reuseport backlog=4096" \
    kong start >"$prefix/start.log" 2>&1 || die "$v: kong start failed: $(tail -n 5 "$prefix/start.log")"
  on_exit "kong stop -p '$prefix'"
  PREFIX[$v]=$prefix
  local master workers
  master=$(cat "$prefix/pids/nginx.pid")
  workers=$(pgrep -P "$master" | tr '\n' ' ')
  # One worker, plus Kong's privileged agent when configured: the worker
  # is the process serving the proxy listener.
  for w in $workers; do
    if [ -n "$(ss -Hltnp "sport = :$port" 2>/dev/null | grep "pid=$w,")" ]; then WORKER[$v]=$w; fi
  done
  [ -n "${WORKER[$v]:-}" ] || WORKER[$v]=$(echo "$workers" | awk '{ print $1 }')
  taskset -pc 1 "${WORKER[$v]}" >/dev/null
}

for v in "${VARIANTS[@]}"; do kong_node "$v"; done
for v in "${VARIANTS[@]}"; do WRK_ARGS[$v]=$(variant_headers "$v"); done

for v in "${VARIANTS[@]}"; do wait_http "http://127.0.0.1:${PORT[$v]}/x"; done
curl -s -D - -o /dev/null "http://127.0.0.1:${PORT[canary]}/x" | grep -qi '^X-Trace-Id:' ||
  die "canary: no X-Trace-Id header (is the plugin running?)"
curl -s -D - -o /dev/null -H 'X-User: u' "http://127.0.0.1:${PORT[canary_full]}/x" |
  grep -qi '^X-Canary-Upstream:' || die "canary_full: no X-Canary-Upstream header"
curl -s -D - -o /dev/null "http://127.0.0.1:${PORT[correlation]}/x" | grep -qi '^X-Trace-Id:' ||
  die "correlation: no X-Trace-Id header"

run_one() { # variant seconds -> "us_per_req rps"
  local v=$1 secs=$2 t0 t1 out reqs
  t0=$(cpu_ticks "${WORKER[$v]}")
  # shellcheck disable=SC2086
  out=$(taskset -c 0 wrk -t1 -c16 -d"${secs}s" ${WRK_ARGS[$v]} "http://127.0.0.1:${PORT[$v]}/x") ||
    die "$v: wrk failed"
  t1=$(cpu_ticks "${WORKER[$v]}")
  reqs=$(echo "$out" | wrk_requests) || die "$v: wrk reported errors: $out"
  [ "$reqs" -gt 0 ] || die "$v: no requests completed"
  awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" -v s="$secs" \
    'BEGIN { printf "%.3f %.0f\n", d / hz * 1e6 / n, n / s }'
}

say "# Kong $KONG_VERSION CPU per request: 1 worker each on CPU 1, wrk -t1 -c16 -d${SECS}s on CPU 0, $ROUNDS rounds (load $(machine_load))"
for v in "${VARIANTS[@]}"; do run_one "$v" 2 >/dev/null; done # warm-up (JIT, caches)

declare -A RES MED
for r in $(seq "$ROUNDS"); do
  line="#   round $r:"
  for v in "${VARIANTS[@]}"; do
    res=$(run_one "$v" "$SECS")
    RES[$v]+="$res"$'\n'
    line+=" $v=${res%% *}us"
  done
  say "$line"
done

for v in "${VARIANTS[@]}"; do
  vals=$(printf '%s' "${RES[$v]}" | awk 'NF { print $1 }')
  MED[$v]=$(echo "$vals" | median)
  figure "kong_cpu_${v}_us_per_req" "$(printf '%.2f' "${MED[$v]}")" us
  say "#   $v: median $(printf '%.1f' "${MED[$v]}") min $(echo "$vals" | sort -g | head -n1) max $(echo "$vals" | sort -g | tail -n1) us/req"
done
added() { awk -v a="${MED[$1]}" -v b="${MED[bare]}" 'BEGIN { printf "%.2f", a - b }'; }
for v in "${VARIANTS[@]}"; do
  [ "$v" = bare ] && continue
  figure "kong_cpu_${v}_added_us_per_req" "$(added "$v")" us
done
ratio() { awk -v a="$(added "$1")" -v b="$(added "$2")" 'BEGIN { if (b <= 0) print "nan"; else printf "%.2f", a / b }'; }
figure kong_canary_added_vs_correlation "$(ratio canary correlation)" x
figure kong_canary_full_added_vs_assembled "$(ratio canary_full assembled)" x
