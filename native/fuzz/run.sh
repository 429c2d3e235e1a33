#!/usr/bin/env bash
# run.sh - runs the libFuzzer targets for fuzz.mk.
#
#   run.sh OUT FUZZDIR keep|fresh SECONDS TARGET...
#       fuzz each target for SECONDS on a working copy of its seed corpus
#       (FUZZDIR/corpus/TARGET): "keep" reuses OUT/corpus/TARGET so a
#       campaign builds on the last one, "fresh" starts from the seeds in
#       OUT/smoke-corpus/TARGET.  Prints the executions of each target and
#       "fuzz: N executions, M crashes".
#   run.sh OUT FUZZDIR regressions 0 TARGET...
#       run every file in FUZZDIR/regressions/TARGET/ once through TARGET.
#       A file is named after the bug it reproduces (<bug id>, optionally
#       <bug id>.<n>); it runs with every known-bug switch except its own
#       (CANARY_FUZZ_KNOWN_BUGS, the groups of known-bugs.supp), so it
#       fails while, and only while, its own bug is there.
#
# Exits non-zero on any crash, leak, timeout, sanitizer report or failed
# invariant.  The input and the log are kept: OUT/artifacts/TARGET/ and
# OUT/logs/TARGET.log.
set -uo pipefail

out=$1 fuzzdir=$2 mode=$3 secs=$4
shift 4

# The targets make their segment files in a directory of their own under
# $TMPDIR and remove it at exit; a run that crashes leaves it behind, so
# keep those under OUT (make clean) rather than in /tmp.
export TMPDIR=$out/tmp
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR"

# UBSan: known-bugs.supp holds the reported, unfixed bugs; a campaign
# suppresses them so it can look for new ones.
campaign_ubsan="suppressions=$fuzzdir/known-bugs.supp:halt_on_error=1:print_stacktrace=1"

# known-bugs.supp without the group of bug $1 (groups start at "# bug: ").
supp_without() {
  awk -v id="$1" '/^# bug: / { skip = ($3 == id) } !skip' \
    "$fuzzdir/known-bugs.supp"
}

# CANARY_FUZZ_KNOWN_BUGS without bug $1.
known_without() {
  local b rest=""
  for b in ${CANARY_FUZZ_KNOWN_BUGS:-}; do
    [ "$b" = "$1" ] || rest="$rest $b"
  done
  echo "${rest# }"
}

# The interesting part of a failed run's log: from the first report on.
show_failure() {
  local log=$1
  local from
  from=$(grep -n -m1 -E '==FUZZ CHECK FAILED==|ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:|ALARM:|out-of-memory|DEADLYSIGNAL' "$log" | cut -d: -f1)
  sed -n "${from:-1},+40p" "$log" | sed 's/^/    /'
  grep -E 'Test unit written to' "$log" | sed 's/^/    /'
}

if [ "$mode" = regressions ]; then
  total=0 failed=0
  for t in "$@"; do
    dir=$fuzzdir/regressions/$t
    [ -d "$dir" ] || continue
    for f in "$dir"/*; do
      [ -f "$f" ] || continue
      total=$((total + 1))
      id=$(basename "$f")
      id=${id%%.*}
      log=$out/logs/regression-$t-$(basename "$f").log
      supp=$out/logs/regression-$t-$(basename "$f").supp
      mkdir -p "$out/logs"
      supp_without "$id" >"$supp"
      if CANARY_FUZZ_KNOWN_BUGS="$(known_without "$id")" \
        UBSAN_OPTIONS="suppressions=$supp:halt_on_error=1:print_stacktrace=1" \
        "$out/$t" "$f" >"$log" 2>&1; then
        echo "regression $t/$(basename "$f"): ok"
      else
        failed=$((failed + 1))
        echo "regression $t/$(basename "$f"): FAILED (log: $log)"
        show_failure "$log"
      fi
    done
  done
  echo "fuzz regressions: $total inputs, $failed failed"
  [ "$failed" -eq 0 ]
  exit
fi

total=0 crashes=0
# One "<target> <executions>" line per target, for make test's summary.
summary=$out/../fuzz-summary.txt
: >"$summary"
for t in "$@"; do
  if [ "$mode" = fresh ]; then
    work=$out/smoke-corpus/$t
    rm -rf "$work"
  else
    work=$out/corpus/$t
  fi
  art=$out/artifacts/$t/
  log=$out/logs/$t.log
  mkdir -p "$work" "$art" "$out/logs"
  # Seeds into the working copy; new inputs found there stay out of git.
  for s in "$fuzzdir/corpus/$t"/*; do
    [ -f "$s" ] && [ ! -e "$work/$(basename "$s")" ] && cp "$s" "$work/"
  done

  UBSAN_OPTIONS="$campaign_ubsan" "$out/$t" "$work" \
    -max_total_time="$secs" -print_final_stats=1 -timeout=25 \
    -rss_limit_mb=2048 -artifact_prefix="$art" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  execs=${execs:-0}
  total=$((total + execs))
  echo "$t $execs" >>"$summary"
  if [ "$rc" -eq 0 ]; then
    echo "$t: $execs executions, 0 crashes"
  else
    crashes=$((crashes + 1))
    echo "$t: $execs executions, 1 crash (exit $rc; log: $log)"
    show_failure "$log"
  fi
done
echo "fuzz: $total executions, $crashes crashes"
[ "$crashes" -eq 0 ]
