#!/usr/bin/env bash
# kong/host/run.sh - `make run`: the demo upstreams and a gateway running
# canary-router with kong/kong.yml, in servroot/, until Ctrl-C.
#
# With a `kong` binary on PATH, real Kong is started (DB-less, with
# kong/kong.conf); otherwise the local stand-in host (kong/host/ctl.sh).
# Either way the demo upstreams (kong/host/demo_upstream) serve the
# stable (127.0.0.1:9001) and canary (127.0.0.1:9002) versions.
#
#   kong/host/run.sh [--kong-version 3.4.2|3.9.1] [--database off|postgres]
#
# The options choose the Kong release and database mode the local host
# behaves as (kong/host/ctl.sh; default 3.9.1, DB-less, as real Kong runs
# here); they do not apply to a real Kong.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=${KONG_HOST_PREFIX:-$ROOT/servroot}
PLUGIN_ID=6f1c2d3e-4b5a-4c69-8d7e-9f0a1b2c3d4e
DEMO=$ROOT/kong/host/demo_upstream/ctl.sh

HOST_ARGS=()
DATABASE=off
while [ $# -gt 0 ]; do
  case "$1" in
    --kong-version) [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }
                    HOST_ARGS+=("$1" "$2"); shift 2 ;;
    --database)     [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }
                    HOST_ARGS+=("$1" "$2"); DATABASE=$2; shift 2 ;;
    *) echo "run.sh: unknown option '$1' (--kong-version V, --database off|postgres)" >&2
       exit 2 ;;
  esac
done

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
  DATABASE=off
  [ ${#HOST_ARGS[@]} -eq 0 ] ||
    echo "run.sh: ${HOST_ARGS[*]} apply to the local host only; starting real Kong DB-less" >&2
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
  bash "$ROOT/kong/host/ctl.sh" start --prefix "$PREFIX" --config "$ROOT/kong/kong.yml" \
    ${HOST_ARGS[@]+"${HOST_ARGS[@]}"}
  LOGS=$PREFIX/logs/error.log
fi

if [ "$DATABASE" = off ]; then
  CHANGE="  # move to 50/50, in every worker, without a reload: DB-less, post the whole
  # declarative config (Kong answers PATCH /plugins/{id} with 405 without a database)
  sed 's/weight: 90\$/weight: 50/; s/weight: 10\$/weight: 50/' $ROOT/kong/kong.yml > /tmp/kong-50.yml
  curl -s -o /dev/null -w '%{http_code}\\n' -X POST http://127.0.0.1:8001/config -F config=@/tmp/kong-50.yml"
else
  CHANGE="  # move to 50/50, in every worker, without a reload (with a database, each
  # worker takes it at its next rebuild, worker_state_update_frequency = 5 s)
  curl -s -X PATCH http://127.0.0.1:8001/plugins/$PLUGIN_ID \\
    -H 'Content-Type: application/json' \\
    -d '{\"config\":{\"upstreams\":[{\"name\":\"automation-service\",\"weight\":50},{\"name\":\"automation-service-canary\",\"weight\":50}]}}'"
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

$CHANGE

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
