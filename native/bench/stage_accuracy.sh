#!/usr/bin/env bash
# stage_accuracy.sh - quantile accuracy of our histogram and of Kong's
# prometheus plugin buckets with histogram_quantile (see accuracy.c):
# uniform, log-normal, Pareto and bimodal latencies, ACCURACY_SAMPLES
# (default 1e6) each, fixed seeds.  The per-quantile table goes to stderr.
source "$(dirname "$0")/lib.sh"

BIN=$BENCH_ROOT/build/bench/accuracy
[ -x "$BIN" ] || die "build/bench/accuracy missing: make build/bench/accuracy"
say "# quantile accuracy: max relative error vs exact nearest-rank p50/p90/p95/p99/p99.9"
"$BIN" "$BENCH_OUT/accuracy.seg" "${ACCURACY_SAMPLES:-1000000}"
