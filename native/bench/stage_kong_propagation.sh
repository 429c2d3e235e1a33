#!/usr/bin/env bash
# stage_kong_propagation.sh - weight propagation on real Kong, in both of
# its modes, measured as stage_propagation.sh measures the local host
# (propagation.lua): from an Admin API write returning until every worker
# routes with the new weights.  Runs only when KONG_ENV names an installed
# Kong (a file to source that puts `kong` on PATH); prints nothing
# otherwise.
#
#   DB-less     POST /config of the declarative file with the new
#               weights, what a DB-less Kong offers (it answers PATCH
#               with 405)
#   postgres    PATCH /plugins/{id} on a node with a private PostgreSQL
#               (kong/test-kong/pg.sh: Debian's server, its own data
#               directory and port on 127.0.0.1, removed afterwards),
#               Kong's defaults: worker_consistency eventual,
#               worker_state_update_frequency 5 s
#
# Kong: 2 workers, proxy 127.0.0.1:28400, Admin API :28401; benchmark
# upstreams :29031 (stable) and :29032 (canary); PostgreSQL :28432.
# PROP_TRIALS (default 20) round trips in each mode.
source "$(dirname "$0")/lib.sh"

[ -n "${KONG_ENV:-}" ] || exit 0
[ -r "$KONG_ENV" ] || die "KONG_ENV=$KONG_ENV is not a readable file"
KONG_ENV=$(cd "$(dirname "$KONG_ENV")" && pwd)/$(basename "$KONG_ENV")

TRIALS=${PROP_TRIALS:-20}
PROXY=28400
ADMIN=28401
PG_PORT=28432
PLUGIN_ID=0b5e1c4a-9d1f-4c7e-8a61-3f2d5b7c9e02
OUT=$BENCH_OUT/stage_kong_propagation
rm -rf "$OUT"
mkdir -p "$OUT"
need_free_ports $PROXY $ADMIN $PG_PORT

# Kong's tools in a subshell, so its PATH and LUA_PATH reach nothing else.
# shellcheck disable=SC1090
kong_sh() { ( set +u; . "$KONG_ENV"; set -u; "$@" ); }
KONG_VERSION=$(kong_sh kong version 2>/dev/null | awk '{ print $NF }')
[ -n "$KONG_VERSION" ] || die "KONG_ENV=$KONG_ENV: 'kong version' failed"

start_upstreams "$OUT/upstream" 29031 29032

PLUGIN_YAML="    plugins:
      - name: canary-router
        id: $PLUGIN_ID
        config:
          upstreams:
            - { name: automation-service, weight: 100 }
            - { name: automation-service-canary, weight: 0 }
          response_header: X-Canary-Upstream"
host_config "$OUT/kong.yml" 29031 29032 "$PLUGIN_YAML"

# The plugin as the other Kong stages load it: the build tree on Kong's
# package paths (the CLI's own commands read KONG_LUA_PACKAGE_PATH too).
kong_env() { # prefix extra-env...
  local prefix=$1
  shift
  env KONG_PREFIX="$prefix" \
    KONG_ROUTER_FLAVOR=traditional \
    KONG_NGINX_WORKER_PROCESSES=2 \
    KONG_PROXY_LISTEN="127.0.0.1:$PROXY" \
    KONG_ADMIN_LISTEN="127.0.0.1:$ADMIN" \
    KONG_STATUS_LISTEN=off \
    KONG_ADMIN_GUI_LISTEN=off \
    KONG_PROXY_ACCESS_LOG=/dev/null \
    KONG_ANONYMOUS_REPORTS=off \
    KONG_PLUGINS=bundled,canary-router \
    CANARY_ROUTER_SEGMENT="$prefix/canary-router.seg" \
    KONG_NGINX_MAIN_ENV=CANARY_ROUTER_SEGMENT \
    CANARY_ROUTER_LIB="$BENCH_ROOT/build/libcanary.so" \
    KONG_LUA_PACKAGE_PATH="$BENCH_ROOT/build/lua/?.lua;$BENCH_ROOT/build/lua/?/init.lua;;" \
    KONG_LUA_PACKAGE_CPATH="$BENCH_ROOT/build/?.so;;" \
    "$@"
}

measure() { # mode label
  wait_http "http://127.0.0.1:$PROXY/ai/x" 30
  luajit "$BENCH_DIR/propagation.lua" $PROXY $ADMIN $PLUGIN_ID "$TRIALS" "$1" >"$OUT/$2.txt" ||
    die "$2: propagation.lua failed"
  # propagation_max_ms ... -> kong_dbless_propagation_max_ms ...
  grep -v -e '^kong_db_update' -e '_connections ' "$OUT/$2.txt" |
    sed "s/^propagation_/kong_${2}_propagation_/"
}

# ---- DB-less -----------------------------------------------------------
say "# weight propagation on Kong $KONG_VERSION, 2 workers, $TRIALS round trips per mode (load $(machine_load))"
kong_sh kong_env "$OUT/dbless" env KONG_DATABASE=off KONG_DECLARATIVE_CONFIG="$OUT/kong.yml" \
  kong start >"$OUT/dbless-start.log" 2>&1 || die "DB-less: kong start failed: $(tail -n 5 "$OUT/dbless-start.log")"
on_exit "kong_sh kong stop -p '$OUT/dbless' >/dev/null 2>&1"
measure "file:$OUT/kong.yml" dbless
kong_sh kong stop -p "$OUT/dbless" >/dev/null 2>&1

# ---- PostgreSQL ----------------------------------------------------------
bash "$BENCH_ROOT/kong/test-kong/pg.sh" start "$OUT/pg" $PG_PORT >"$OUT/pg.log" 2>&1 ||
  die "PostgreSQL did not start: $(tail -n 5 "$OUT/pg.log")"
on_exit "bash '$BENCH_ROOT/kong/test-kong/pg.sh' stop '$OUT/pg' >/dev/null 2>&1"
PG=(KONG_DATABASE=postgres KONG_PG_HOST=127.0.0.1 "KONG_PG_PORT=$PG_PORT" KONG_PG_USER=kong
    KONG_PG_PASSWORD=kong KONG_PG_DATABASE=kong)
kong_sh kong_env "$OUT/postgres" env "${PG[@]}" kong migrations bootstrap >"$OUT/migrations.log" 2>&1 ||
  die "kong migrations bootstrap failed: $(tail -n 5 "$OUT/migrations.log")"
kong_sh kong_env "$OUT/postgres" env "${PG[@]}" kong start >"$OUT/postgres-start.log" 2>&1 ||
  die "postgres: kong start failed: $(tail -n 5 "$OUT/postgres-start.log")"
on_exit "kong_sh kong stop -p '$OUT/postgres' >/dev/null 2>&1"
wait_http "http://127.0.0.1:$ADMIN/status" 30
A=http://127.0.0.1:$ADMIN
api() { # method path json
  local code
  code=$(curl -s -o "$OUT/api.out" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' \
         --data "$3" "$A$2") || die "$1 $2: curl failed"
  case $code in 2*) ;; *) die "$1 $2 answered $code: $(cat "$OUT/api.out")" ;; esac
}
api POST /upstreams '{"name":"automation-service"}'
api POST /upstreams/automation-service/targets '{"target":"127.0.0.1:29031"}'
api POST /upstreams '{"name":"automation-service-canary"}'
api POST /upstreams/automation-service-canary/targets '{"target":"127.0.0.1:29032"}'
api POST /services '{"name":"automation-service","url":"http://automation-service"}'
api POST /services/automation-service/routes '{"name":"ai","paths":["/ai"],"strip_path":true}'
api POST /services/automation-service/plugins "{\"id\":\"$PLUGIN_ID\",\"name\":\"canary-router\",
  \"config\":{\"upstreams\":[{\"name\":\"automation-service\",\"weight\":100},
  {\"name\":\"automation-service-canary\",\"weight\":0}],\"response_header\":\"X-Canary-Upstream\"}}"
# Until every worker's router and plugins iterator has the new entities
# (worker_state_update_frequency).
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROXY/ai/x")" = 200 ] && break
  sleep 0.1
done
measure patch postgres
kong_sh kong stop -p "$OUT/postgres" >/dev/null 2>&1
