#!/usr/bin/env bash
# stage_judge.sh - the cost of judging one progression window
# (native/bench/judge.c): today's absolute-limit judge on the canary's
# histogram alone, the threshold judge against stable (both histograms),
# and the statistical judge (Mann-Whitney U, Hodges-Lehmann shift,
# two-proportion test), measured in the same run, with their ratios.
# JUDGE_ITERS (default 5000) judgements per round, best of 5 rounds.
source "$(dirname "$0")/lib.sh"

BIN=$BENCH_ROOT/build/bench/judge
[ -x "$BIN" ] || die "build/bench/judge missing: make build/bench/judge"
say "# judging one window: absolute limits vs against stable (threshold, statistical)"
"$BIN" "${JUDGE_ITERS:-5000}"
