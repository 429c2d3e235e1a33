#!/usr/bin/env bash
# stage_propagation.sh - time from an Admin API weight change (POST /config,
# DB-less, the host's default) returning until every worker routes with the
# new weights (see propagation.lua for the method), on the local host with 2 workers:
# proxy 127.0.0.1:28300, Admin API :28301, status :28302, benchmark
# upstreams :29021 (stable) and :29022 (canary).  PROP_TRIALS (default 20)
# round trips, i.e. 2 x PROP_TRIALS switches, 100/0 -> 0/100 and back.
# Also prints Kong's default db_update_frequency (5 s), the reference a
# database-backed Kong node polls for config changes at.
source "$(dirname "$0")/lib.sh"

TRIALS=${PROP_TRIALS:-20}
PROXY=28300
ADMIN=28301
STATUS=28302
PLUGIN_ID=0b5e1c4a-9d1f-4c7e-8a61-3f2d5b7c9e01
OUT=$BENCH_OUT/stage_propagation
rm -rf "$OUT"
mkdir -p "$OUT"
need_free_ports $PROXY $ADMIN $STATUS

start_upstreams "$OUT/upstream" 29021 29022
host_config "$OUT/kong.yml" 29021 29022 "    plugins:
      - name: canary-router
        id: $PLUGIN_ID
        config:
          upstreams:
            - name: automation-service
              weight: 100
            - name: automation-service-canary
              weight: 0
          response_header: X-Canary-Upstream"
host_start "$OUT/host" "$OUT/kong.yml" $PROXY $ADMIN $STATUS

say "# weight propagation: local host, 2 workers, $TRIALS round trips (load $(machine_load))"
luajit "$BENCH_DIR/propagation.lua" $PROXY $ADMIN $PLUGIN_ID "$TRIALS"
