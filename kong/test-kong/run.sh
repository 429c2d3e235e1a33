#!/usr/bin/env bash
# kong/test-kong/run.sh - `make test-kong`: the integration, progression,
# chaos and hostile specs against an installed Kong, in three setups.
#
#   KONG_ENV=/opt/kong-3.9.1/env.sh make test-kong
#   KONG_ENV=... bash kong/test-kong/run.sh [dbless] [postgres] [unprivileged]
#
# KONG_ENV names a file to source that puts that Kong's `kong`, `resty`
# and `luarocks` on PATH.  Nothing of Kong lives in this repository: this
# script only runs the Kong it is given.
#
#   1. The plugin is installed as an operator installs it: `luarocks make`
#      of the rockspec with that Kong's luarocks, into a tree of its own
#      (build/test-kong/<version>/tree; the Kong installation is shared, so
#      it stays untouched), which the generated kong.conf puts on
#      lua_package_path / lua_package_cpath, as README's install section
#      tells an operator with a separate tree.
#   2. Each setup runs the same spec files as `make test` (integration,
#      progression, analysis, Kong's runloop as a probe plugin sees it
#      (the parts of spec/12-kong for this version and setup), blue/green,
#      chaos,
#      hostile, Kong setups, and the cluster specs with two Kong nodes
#      sharing a redis-server), with
#      spec/helpers/host.lua driving `kong start/reload/stop` instead of the
#      local host (CANARY_TEST_KONG=<setup>):
#        dbless        database = off; config with POST /config
#        postgres      database = postgres on a private PostgreSQL this
#                      script starts (kong/test-kong/pg.sh, 127.0.0.1:54329)
#                      and removes afterwards, even on failure; `kong
#                      migrations bootstrap`, then copies of that
#                      database for the cluster specs' other nodes;
#                      config with `kong config db_import`, changes
#                      with PATCH
#        unprivileged  DB-less, workers as nobody:nogroup, root-owned prefix
#      Workers run as root in the first two (like the local host started
#      as root); the third is the one that proves the unprivileged case.
#   3. Each setup prints "<setup>: N passed, N failed"; the target fails
#      when any spec failed or errored.
#
# Environment: SPECS (spec files, default the ones above; the cluster
# specs not in the unprivileged setup), PG_PORT
# (54329), CANARY_CHAOS_RELOADS (reloads under load in the chaos spec;
# 6 here, 50 in `make test`: Kong's master runs its whole init again at
# each reload, up to ten seconds on a busy two-core machine).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

if [ -z "${KONG_ENV:-}" ]; then
  echo "make test-kong: needs KONG_ENV, a file to source that puts an installed Kong's"
  echo "  kong, resty and luarocks on PATH, e.g."
  echo "    KONG_ENV=/opt/kong-3.9.1/env.sh make test-kong"
  echo "  Nothing run."
  exit 0
fi
[ -r "$KONG_ENV" ] || { echo "test-kong: KONG_ENV '$KONG_ENV' is not a readable file" >&2; exit 1; }
KONG_ENV=$(cd "$(dirname "$KONG_ENV")" && pwd)/$(basename "$KONG_ENV")
export KONG_ENV

SETUPS=("$@")
[ ${#SETUPS[@]} -gt 0 ] || SETUPS=(dbless postgres unprivileged)
for s in "${SETUPS[@]}"; do
  case "$s" in dbless|postgres|unprivileged) ;; *)
    echo "test-kong: unknown setup '$s' (dbless, postgres, unprivileged)" >&2; exit 1 ;;
  esac
done
# The cluster specs run in the DB-less and PostgreSQL setups: what the
# unprivileged one changes (the workers' user, the segment's owner) is
# proven by the others there, and two more Kong nodes would take minutes.
SINGLE_SPECS="spec/10-integration_spec.lua spec/11-progression_spec.lua spec/12-analysis_spec.lua spec/12-kong_spec.lua spec/13-bluegreen_spec.lua spec/20-chaos_spec.lua spec/21-hostile_spec.lua spec/30-kong_spec.lua"
CLUSTER_SPECS="spec/31-cluster_spec.lua spec/32-cluster_tls_spec.lua"
setup_specs() {
  if [ -n "${SPECS:-}" ]; then echo "$SPECS"
  elif [ "$1" = unprivileged ]; then echo "$SINGLE_SPECS"
  else echo "$SINGLE_SPECS $CLUSTER_SPECS"; fi
}
PG_PORT=${PG_PORT:-54329}
export CANARY_CHAOS_RELOADS=${CANARY_CHAOS_RELOADS:-6}

# Kong's own tools, in a subshell so that its PATH/LUA_PATH never reach
# busted (which runs on Debian's LuaJIT with the project's LUA_ENV).
kong_sh() {
  ( set +u; . "$KONG_ENV"; set -u; "$@" )
}

KONG_VERSION=$(kong_sh kong version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n 1) ||
  true
[ -n "$KONG_VERSION" ] || { echo "test-kong: 'kong version' failed after sourcing $KONG_ENV" >&2; exit 1; }
export CANARY_KONG_VERSION=$KONG_VERSION
WORK=$ROOT/build/test-kong/$KONG_VERSION
TREE=$WORK/tree
mkdir -p "$WORK"
echo "== test-kong: Kong $KONG_VERSION ($KONG_ENV), setups: ${SETUPS[*]}"

# 1. Install the rock into its own tree, as an operator would.
rm -rf "$TREE"
if ! out=$(kong_sh luarocks make --tree "$TREE" kong-plugin-canary-router-0.1.0-1.rockspec 2>&1); then
  echo "$out" >&2
  echo "test-kong: luarocks make failed" >&2
  exit 1
fi
echo "$out" | tail -n 1
for f in share/lua/5.1/kong/plugins/canary-router/handler.lua \
         share/lua/5.1/kong/plugins/canary-router/schema.lua lib/lua/5.1/libcanary.so; do
  [ -e "$TREE/$f" ] || { echo "test-kong: the rock did not install $f" >&2; exit 1; }
done
# Unprivileged workers read the tree: it must be readable by anyone, as
# an installed rock in /usr/local is.
chmod -R a+rX "$WORK"
export CANARY_KONG_TREE=$TREE
# The schema validates names and weights with the engine, so Kong's CLI
# (`kong config db_import`, which does not apply kong.conf's
# lua_package_cpath) must find libcanary.so too: an operator with a tree
# of its own names the library the same way (README, install).
export CANARY_ROUTER_LIB=$TREE/lib/lua/5.1/libcanary.so

PG_DIR=$WORK/pg
cleanup() {
  bash "$ROOT/kong/test-kong/pg.sh" stop "$PG_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

LUA_PATH_SPEC="$ROOT/build/lua/?.lua;$ROOT/build/lua/?/init.lua;$ROOT/kong/host/lib/?.lua;$ROOT/spec/?.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;"
LUA_CPATH_SPEC="$ROOT/build/?.so;;"

declare -A RESULT
failed_any=0
for setup in "${SETUPS[@]}"; do
  echo
  echo "== test-kong: Kong $KONG_VERSION, setup '$setup'"
  t0=$SECONDS
  if [ "$setup" = postgres ]; then
    bash "$ROOT/kong/test-kong/pg.sh" stop "$PG_DIR" >/dev/null
    bash "$ROOT/kong/test-kong/pg.sh" start "$PG_DIR" "$PG_PORT"
    export CANARY_KONG_PG_PORT=$PG_PORT
    if ! out=$(kong_sh env KONG_DATABASE=postgres KONG_PG_HOST=127.0.0.1 KONG_PG_PORT="$PG_PORT" \
               KONG_PG_USER=kong KONG_PG_PASSWORD=kong KONG_PG_DATABASE=kong \
               KONG_PLUGINS=bundled,canary-router KONG_PREFIX="$WORK/migrations" \
               KONG_LUA_PACKAGE_PATH="$TREE/share/lua/5.1/?.lua;$TREE/share/lua/5.1/?/init.lua;;" \
               KONG_LUA_PACKAGE_CPATH="$TREE/lib/lua/5.1/?.so;;" \
               kong migrations bootstrap 2>&1); then
      echo "$out" >&2
      echo "test-kong: kong migrations bootstrap failed" >&2
      RESULT[$setup]="0 passed, 1 failed (migrations bootstrap)"
      failed_any=1
      cleanup
      continue
    fi
    echo "$out" | tail -n 1
    # Specs that run several nodes side by side give each its own
    # database (spec/helpers/host.lua): copies of the migrated one.
    for db in kong_node2 kong_node3; do
      bash "$ROOT/kong/test-kong/pg.sh" copy "$PG_DIR" "$PG_PORT" kong "$db"
    done
  fi
  summary=$WORK/summary-$setup.txt
  rm -f "$summary"
  log=$WORK/busted-$setup.log
  set +e
  # shellcheck disable=SC2086
  LUA_PATH="$LUA_PATH_SPEC" LUA_CPATH="$LUA_CPATH_SPEC" CANARY_TEST_KONG=$setup \
    CANARY_TEST_SUMMARY=$summary \
    luajit /usr/bin/busted --no-auto-insulate -o utfTerminal $(setup_specs "$setup") 2>&1 |
    tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$setup" = postgres ] && cleanup
  # busted's last line: "N successes / N failures / N errors / N pending : T seconds"
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '[0-9]+ successes? / [0-9]+ failures? / ' |
         tail -n 1 || true)
  ok=$(echo "$line" | grep -oE '^[0-9]+' || echo 0)
  nf=$(echo "$line" | grep -oE '[0-9]+ failures?' | grep -oE '[0-9]+' || echo 0)
  ne=$(echo "$line" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+' || echo 0)
  np=$(echo "$line" | grep -oE '[0-9]+ pending' | grep -oE '[0-9]+' || echo 0)
  bad=$((nf + ne))
  if [ -z "$line" ] || { [ "$rc" != 0 ] && [ "$bad" = 0 ]; }; then bad=$((bad + 1)); fi
  RESULT[$setup]="$ok passed, $bad failed${np:+, $np pending} ($((SECONDS - t0)) s)"
  echo "test-kong: Kong $KONG_VERSION $setup: ${RESULT[$setup]}"
  [ "$bad" = 0 ] || failed_any=1
done

echo
echo "== test-kong: Kong $KONG_VERSION"
for setup in "${SETUPS[@]}"; do
  printf '  %-13s %s\n' "$setup" "${RESULT[$setup]}"
done
exit $failed_any
