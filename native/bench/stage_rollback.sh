#!/usr/bin/env bash
# stage_rollback.sh - time from the moment the canary starts failing until
# the last request the gateway sends it, with an automatic progression
# (interval 1 s, rollback_error_rate 10 %) on the local host with 2 workers
# under wrk load: proxy 127.0.0.1:28400, Admin API :28401, status :28402,
# demo upstreams (with run-time error control) on :29031 / :29032.  See
# rollback.lua for the method.  Goal: under one interval plus 100 ms.
source "$(dirname "$0")/lib.sh"

TRIALS=${ROLLBACK_TRIALS:-5}
PROXY=28400
ADMIN=28401
STATUS=28402
PLUGIN_ID=5d0c6b1a-2e3f-4a5b-8c7d-9e0f1a2b3c4d
OUT=$BENCH_OUT/stage_rollback
rm -rf "$OUT"
mkdir -p "$OUT"
need_free_ports $PROXY $ADMIN $STATUS 29031 29032

DEMO=$BENCH_ROOT/kong/host/demo_upstream/ctl.sh
on_exit bash "$DEMO" stop --prefix "$OUT/upstream"
bash "$DEMO" start --prefix "$OUT/upstream" \
  --servers automation-service:29031,automation-service-canary:29032 >&2

host_config "$OUT/kong.yml" 29031 29032 "    plugins:
      - name: canary-router
        id: $PLUGIN_ID
        config:
          upstreams:
            - name: automation-service
              weight: 90
            - name: automation-service-canary
              weight: 10"
host_start "$OUT/host" "$OUT/kong.yml" $PROXY $ADMIN $STATUS

say "# rollback: breach to last canary-bound request, $TRIALS trials (load $(machine_load))"
luajit "$BENCH_DIR/rollback.lua" $PROXY $ADMIN $PLUGIN_ID 29032 "$TRIALS"
