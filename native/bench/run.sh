#!/usr/bin/env bash
# make bench: runs every benchmark stage, prints "name value unit" lines and
# writes build/bench.json.  Ratios compare against the baseline measured in
# the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/bench.txt
: >"$out"

stage() { "$@" | tee -a "$out"; }

echo "# engine (C, this machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))"
stage build/bench/bench build/bench.seg "${BENCH_ITERS:-5000000}"

for extra in native/bench/stage_*.sh; do
  [ -e "$extra" ] || continue
  stage bash "$extra"
done

# Ratios against the baselines of the same run.
awk '
  { v[$1] = $2 }
  END {
    if (v["engine_record_ns"] > 0) {
      printf "record_speedup_vs_mutex %.2f x\n", v["baseline_record_mutex_ns"] / v["engine_record_ns"]
      printf "record_speedup_vs_shdict %.2f x\n", v["baseline_record_shdict_ns"] / v["engine_record_ns"]
    }
    if (v["engine_record_x2_ns"] > 0) {
      printf "record_x2_speedup_vs_mutex %.2f x\n", v["baseline_record_mutex_x2_ns"] / v["engine_record_x2_ns"]
      printf "record_x2_speedup_vs_shdict %.2f x\n", v["baseline_record_shdict_x2_ns"] / v["engine_record_x2_ns"]
    }
    # Real Kong (KONG_ENV) against the local host, both measured here.
    if (v["propagation_median_ms"] > 0) {
      if (v["kong_dbless_propagation_median_ms"] > 0)
        printf "kong_dbless_propagation_vs_host %.2f x\n", v["kong_dbless_propagation_median_ms"] / v["propagation_median_ms"]
      if (v["kong_postgres_propagation_median_ms"] > 0)
        printf "kong_postgres_propagation_vs_host %.2f x\n", v["kong_postgres_propagation_median_ms"] / v["propagation_median_ms"]
    }
  }' "$out" | tee -a "$out"

awk -v date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -v host="$(uname -srm)" '
  BEGIN { printf "{\n  \"date\": \"%s\",\n  \"machine\": \"%s\",\n  \"results\": [", date, host; sep = "" }
  NF == 3 && $1 !~ /^#/ { printf "%s\n    {\"name\": \"%s\", \"value\": %s, \"unit\": \"%s\"}", sep, $1, $2, $3; sep = "," }
  END { printf "\n  ]\n}\n" }' "$out" >build/bench.json
echo "wrote build/bench.json"
