#!/usr/bin/env bash
# kong/host/run.sh - `make run`: the demo upstreams and a gateway running
# canary-router with kong/kong.yml, in servroot/, until Ctrl-C.
#
# With a `kong` binary on PATH, real Kong is started (DB-less, with
# kong/kong.conf); otherwise the local stand-in host (kong/host/ctl.sh).
# Either way the demo upstreams (kong/host/demo_upstream) serve the
# stable (127.0.0.1:9001) and canary (127.0.0.1:9002) versions.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=${KONG_HOST_PREFIX:-$ROOT/servroot}
DEMO=$ROOT/kong/host/demo_upstream/ctl.sh

if [ ! -e "$ROOT/build/lua/kong/plugins/canary-router/handler.lua" ]; then
  echo "run.sh: the plugin is not built; run 'make build' (or 'make run') first" >&2
  exit 1
fi

mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
export CANARY_ROUTER_SEGMENT=$PREFIX/canary-router.seg

USE_KONG=0
if command -v kong >/dev/null 2>&1; then
  USE_KONG=1
fi

stopping=0
sleeper=
cleanup() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap - INT TERM EXIT
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null || true
  echo
  echo "stopping..."
  if [ "$USE_KONG" = 1 ]; then
    kong stop -p "$PREFIX/kong" >/dev/null 2>&1 || true
  else
    bash "$ROOT/kong/host/ctl.sh" stop --prefix "$PREFIX" || true
  fi
  bash "$DEMO" stop --prefix "$PREFIX/demo_upstream" || true
}

# Leftovers of an earlier run that was not stopped cleanly.
bash "$ROOT/kong/host/ctl.sh" stop --prefix "$PREFIX" >/dev/null 2>&1 || true
bash "$DEMO" stop --prefix "$PREFIX/demo_upstream" >/dev/null 2>&1 || true

trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

bash "$DEMO" start --prefix "$PREFIX/demo_upstream"

if [ "$USE_KONG" = 1 ]; then
  echo "real Kong found ($(command -v kong)): starting it with kong/kong.conf (DB-less)"
  KONG_PREFIX=$PREFIX/kong \
  KONG_LUA_PACKAGE_PATH="$ROOT/build/lua/?.lua;$ROOT/build/lua/?/init.lua;;" \
  KONG_LUA_PACKAGE_CPATH="$ROOT/build/?.so;;" \
    kong start -c "$ROOT/kong/kong.conf"
  # DB-less, the way an operator runs it: the configuration is posted, so
  # `kong reload` keeps whatever was posted since (see kong/kong.conf).
  for _ in $(seq 50); do
    curl -fs -o /dev/null http://127.0.0.1:8001/status && break
    sleep 0.2
  done
  curl -fsS -o /dev/null -X POST http://127.0.0.1:8001/config -F config=@"$ROOT/kong/kong.yml"
  LOGS=$PREFIX/kong/logs/error.log
else
  bash "$ROOT/kong/host/ctl.sh" start --prefix "$PREFIX" --config "$ROOT/kong/kong.yml"
  LOGS=$PREFIX/logs/error.log
fi

cat <<EOF

canary-router is running ($([ "$USE_KONG" = 1 ] && echo "Kong" || echo "local Kong stand-in host")):
  proxy      http://127.0.0.1:8000/ai      (route 'ai': 90 % stable, 10 % canary)
  admin API  http://127.0.0.1:8001
  metrics    http://127.0.0.1:8007/canary-router/metrics
  upstreams  http://127.0.0.1:9001 (stable)  http://127.0.0.1:9002 (canary)
  segment    $CANARY_ROUTER_SEGMENT
  logs       $LOGS

Try, in another terminal:

  # a request through /ai: which version answered, and its trace id
  curl -si http://127.0.0.1:8000/ai/hello -H 'X-Trace-Id: demo-1'

  # the plugin instance and its config
  curl -s http://127.0.0.1:8001/plugins

  # move to 50/50, in every worker, without a reload (DB-less: post the
  # edited declarative config)
  sed -e '/name: automation-service\$/{n;s/weight: .*/weight: 50/}' \\
      -e '/name: automation-service-canary\$/{n;s/weight: .*/weight: 50/}' \\
      kong/kong.yml > /tmp/step.yml
  curl -s -X POST http://127.0.0.1:8001/config -F config=@/tmp/step.yml

  # the split over 200 requests
  for i in \$(seq 200); do curl -s -o /dev/null -D - http://127.0.0.1:8000/ai/x | grep -i '^x-canary-upstream'; done | sort | uniq -c

  # make the canary slow and flaky, then read the metrics
  curl -s -X POST http://127.0.0.1:9002/__control -d '{"latency_ms": 40, "error_rate": 0.2}'
  curl -s http://127.0.0.1:8007/canary-router/metrics

Ctrl-C stops everything.
EOF

# Wait for Ctrl-C; `wait` on a background sleep lets the trap run at once.
while true; do
  sleep 3600 &
  sleeper=$!
  wait "$sleeper" || true
done
