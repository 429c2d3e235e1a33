#!/usr/bin/env bash
# kong/host/ctl.sh - start, stop and reload the local Kong stand-in host.
#
#   kong/host/ctl.sh start|stop|reload|restart|status|render [options]
#
#   --prefix DIR          nginx prefix (default: servroot/ in the repo)
#   --config FILE         declarative config (default: kong/kong.yml)
#   --plugins LIST        comma-separated plugin names (default: canary-router)
#   --proxy-listen ADDR   default 127.0.0.1:8000
#   --admin-listen ADDR   default 127.0.0.1:8001
#   --status-listen ADDR  default 127.0.0.1:8007
#   --workers N           worker processes (default 2)
#   --segment PATH        the plugin's segment (CANARY_ROUTER_SEGMENT;
#                         default PREFIX/canary-router.seg)
#   --kong-version V      the Kong release to behave as: 3.9.1 (default) or
#                         3.4.2 (no `configure` phase)
#   --database MODE       off (DB-less, default) or postgres (DB mode, the
#                         host's shm document standing in for PostgreSQL)
#   --worker-consistency eventual|strict   DB mode (Kong's default eventual)
#   --worker-state-update-frequency SECONDS  DB mode rebuild timer (default 5)
#
# Options given to start are kept for reload and restart (PREFIX/.kong_host).
#
# start   generates PREFIX/conf/nginx.conf, starts nginx and returns once
#         the proxy, Admin API and status ports answer.
# stop    fast shutdown (like `kong stop`); returns once every nginx
#         process of the prefix is gone.  Also stops demo upstreams that
#         run.sh started under PREFIX/demo_upstream.
# reload  regenerates nginx.conf, checks it (`nginx -t`), sends HUP (like
#         `kong reload`: the config file is read again) and returns once
#         the new workers serve.
# render  only writes PREFIX/conf/nginx.conf (what start would run) and
#         prints its path; starts nothing.
#
# Lua modules are found in build/lua (the plugin, after `make build`),
# kong/host/lib, and anything already on $LUA_PATH (searched first).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

die() { echo "ctl.sh: $*" >&2; exit 1; }

cmd=${1:-}
[ -n "$cmd" ] || die "usage: ctl.sh start|stop|reload|restart|status [--prefix DIR] [--config FILE]"
shift

PREFIX=$ROOT/servroot
declare -A OPT=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix)        PREFIX=$2; shift 2 ;;
    --config)        OPT[config]=$2; shift 2 ;;
    --plugins)       OPT[plugins]=$2; shift 2 ;;
    --proxy-listen)  OPT[proxy_listen]=$2; shift 2 ;;
    --admin-listen)  OPT[admin_listen]=$2; shift 2 ;;
    --status-listen) OPT[status_listen]=$2; shift 2 ;;
    --workers)       OPT[workers]=$2; shift 2 ;;
    --log-level)     OPT[log_level]=$2; shift 2 ;;
    --segment)       OPT[segment]=$2; shift 2 ;;
    --kong-version)  OPT[kong_version]=$2; shift 2 ;;
    --database)      OPT[database]=$2; shift 2 ;;
    --worker-consistency) OPT[worker_consistency]=$2; shift 2 ;;
    --worker-state-update-frequency) OPT[worker_state_update_frequency]=$2; shift 2 ;;
    *) die "unknown option '$1'" ;;
  esac
done

mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
PIDFILE=$PREFIX/logs/nginx.pid
SETTINGS=$PREFIX/.kong_host

# Debian's nginx, whose lua module the config loads: not an OpenResty
# nginx a sourced Kong environment puts first on PATH.
NGINX=${CANARY_HOST_NGINX:-/usr/sbin/nginx}
[ -x "$NGINX" ] || die "$NGINX not found (apt-get install nginx-light libnginx-mod-http-lua)"
command -v luajit >/dev/null || die "luajit not found (apt-get install luajit2)"

master_pid() {
  [ -s "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

worker_pids() {
  local m
  m=$(master_pid) || return 0
  pgrep -P "$m" 2>/dev/null | sort -n || true
}

# Settings survive between start and reload in PREFIX/.kong_host.
load_settings() {
  if [ -f "$SETTINGS" ]; then
    while IFS='=' read -r k v; do
      [ -n "$k" ] && [ -z "${OPT[$k]:-}" ] && OPT[$k]=$v
    done < "$SETTINGS"
  fi
  : "${OPT[config]:=$ROOT/kong/kong.yml}"
  : "${OPT[plugins]:=canary-router}"
  : "${OPT[proxy_listen]:=127.0.0.1:8000}"
  : "${OPT[admin_listen]:=127.0.0.1:8001}"
  : "${OPT[status_listen]:=127.0.0.1:8007}"
  : "${OPT[workers]:=2}"
  : "${OPT[log_level]:=notice}"
  : "${OPT[kong_version]:=3.9.1}"
  : "${OPT[database]:=off}"
  : "${OPT[worker_consistency]:=eventual}"
  : "${OPT[worker_state_update_frequency]:=5}"
  case "${OPT[kong_version]}" in
    3.4.2|3.9.1) ;;
    *) die "--kong-version must be 3.4.2 or 3.9.1, got '${OPT[kong_version]}'" ;;
  esac
  case "${OPT[database]}" in
    off|postgres) ;;
    *) die "--database must be off or postgres, got '${OPT[database]}'" ;;
  esac
  case "${OPT[worker_consistency]}" in
    eventual|strict) ;;
    *) die "--worker-consistency must be eventual or strict, got '${OPT[worker_consistency]}'" ;;
  esac
  [[ "${OPT[worker_state_update_frequency]}" =~ ^[0-9]+(\.[0-9]+)?$ ]] &&
    [[ ! "${OPT[worker_state_update_frequency]}" =~ ^0+(\.0+)?$ ]] ||
    die "--worker-state-update-frequency must be a number of seconds > 0, got '${OPT[worker_state_update_frequency]}'"
  [ -f "${OPT[config]}" ] || die "declarative config '${OPT[config]}' not found"
  OPT[config]=$(cd "$(dirname "${OPT[config]}")" && pwd)/$(basename "${OPT[config]}")
  local user_path=${LUA_PATH:-}
  user_path=${user_path%%;;*}
  user_path=${user_path%;}
  OPT[lua_path]="${user_path:+$user_path;}$ROOT/build/lua/?.lua;$ROOT/build/lua/?/init.lua;$ROOT/kong/host/lib/?.lua;$ROOT/kong/host/lib/?/init.lua;;"
  local user_cpath=${LUA_CPATH:-}
  user_cpath=${user_cpath%%;;*}
  user_cpath=${user_cpath%;}
  OPT[lua_cpath]="${user_cpath:+$user_cpath;}$ROOT/build/?.so;;"
  : "${OPT[segment]:=$PREFIX/canary-router.seg}"
  if [ "$(id -u)" = 0 ]; then
    OPT[user]="$(id -un) $(id -gn)"
  else
    OPT[user]=""
  fi
}

save_settings() {
  : > "$SETTINGS"
  for k in config plugins proxy_listen admin_listen status_listen workers log_level segment \
           kong_version database worker_consistency worker_state_update_frequency; do
    echo "$k=${OPT[$k]}" >> "$SETTINGS"
  done
}

render_conf() {
  mkdir -p "$PREFIX/conf" "$PREFIX/logs" "$PREFIX/tmp"
  local args=(prefix="$PREFIX")
  for k in config plugins proxy_listen admin_listen status_listen workers log_level lua_path \
           lua_cpath segment user kong_version database worker_consistency \
           worker_state_update_frequency; do
    args+=("$k=${OPT[$k]}")
  done
  luajit "$ROOT/kong/host/lib/kong_host/nginx_conf.lua" "${args[@]}" > "$PREFIX/conf/nginx.conf.new"
  mv "$PREFIX/conf/nginx.conf.new" "$PREFIX/conf/nginx.conf"
}

nginx_cmd() {
  CANARY_ROUTER_SEGMENT=${OPT[segment]} "$NGINX" -p "$PREFIX/" -c conf/nginx.conf "$@"
}

http_code() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# Pids of the workers that finished init_worker, as the Admin API lists
# them (each worker registers itself after its plugins' init_worker).
registered_workers() {
  curl -s -m 2 "http://${OPT[admin_listen]}/" 2>/dev/null |
    grep -o '"workers":\[[0-9,]*\]' | grep -o '[0-9][0-9]*' || true
}

# Ready: every listener answers, and every current worker process has
# registered (a worker stuck in a plugin's init_worker never does).
wait_ready() {
  local deadline=$((SECONDS + ${KONG_HOST_START_TIMEOUT:-15}))
  while [ $SECONDS -lt $deadline ]; do
    if [ "$(http_code "http://${OPT[admin_listen]}/status")" = 200 ] &&
       [ "$(http_code "http://${OPT[status_listen]}/status")" = 200 ] &&
       [ "$(http_code "http://${OPT[proxy_listen]}/")" != 000 ]; then
      local live=" $(worker_pids | tr '\n' ' ') " n=0 p
      for p in $(registered_workers); do
        case "$live" in *" $p "*) n=$((n + 1)) ;; esac
      done
      [ "$n" -ge "${OPT[workers]}" ] && return 0
    fi
    master_pid >/dev/null || break
    sleep 0.1
  done
  local m
  if m=$(master_pid); then
    echo "ctl.sh: workers alive: $(worker_pids | tr '\n' ' '); registered (init_worker done):" \
         $(registered_workers) >&2
  fi
  return 1
}

start() {
  if master_pid >/dev/null; then
    die "already running in $PREFIX (pid $(master_pid)); use 'stop' or 'reload'"
  fi
  load_settings
  render_conf
  save_settings
  rm -f "$PIDFILE"
  if ! out=$(nginx_cmd 2>&1); then
    echo "$out" >&2
    die "nginx failed to start (see above and $PREFIX/logs/error.log)"
  fi
  if ! wait_ready; then
    tail -n 20 "$PREFIX/logs/error.log" >&2 || true
    stop_gateway >/dev/null
    die "gateway did not become ready (stopped it again)"
  fi
  echo "kong_host started in $PREFIX (pid $(master_pid)): proxy ${OPT[proxy_listen]}, admin ${OPT[admin_listen]}, status ${OPT[status_listen]}"
}

stop_gateway() {
  local m pids
  if ! m=$(master_pid); then
    rm -f "$PIDFILE"
    return 0
  fi
  pids="$m $(worker_pids | tr '\n' ' ')"
  kill -TERM "$m" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while [ $SECONDS -lt $deadline ]; do
    local alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.05
  done
  for p in $pids; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  rm -f "$PIDFILE"
  echo "kong_host stopped ($PREFIX)"
}

stop() {
  stop_gateway
  if [ -d "$PREFIX/demo_upstream" ]; then
    bash "$ROOT/kong/host/demo_upstream/ctl.sh" stop --prefix "$PREFIX/demo_upstream" >/dev/null
  fi
}

reload() {
  local m
  m=$(master_pid) || die "not running in $PREFIX"
  load_settings
  render_conf
  local out
  if ! out=$(nginx_cmd -t 2>&1); then
    echo "$out" >&2
    die "new configuration is invalid; the running gateway is unchanged"
  fi
  save_settings
  local old
  old=" $(worker_pids | tr '\n' ' ') "
  kill -HUP "$m"
  # Ready when the workers registered in the Admin API are all new ones
  # (each worker records its pid at init_worker) and they answer.
  local deadline=$((SECONDS + 15))
  while [ $SECONDS -lt $deadline ]; do
    local pids fresh=1 n=0
    pids=$(registered_workers)
    for p in $pids; do
      n=$((n + 1))
      case "$old" in *" $p "*) fresh=0 ;; esac
    done
    if [ "$fresh" = 1 ] && [ "$n" -ge "${OPT[workers]}" ] && wait_ready; then
      echo "kong_host reloaded ($PREFIX): workers" $pids
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$PREFIX/logs/error.log" >&2 || true
  die "new workers did not come up after reload"
}

status() {
  local m
  if m=$(master_pid); then
    echo "kong_host running in $PREFIX: master $m, workers $(worker_pids | tr '\n' ' ')"
    return 0
  fi
  echo "kong_host not running in $PREFIX"
  return 3
}

case "$cmd" in
  start)   start ;;
  stop)    stop ;;
  reload)  reload ;;
  restart) stop_gateway; start ;;
  status)  status ;;
  render)  load_settings; render_conf; echo "$PREFIX/conf/nginx.conf" ;;
  *) die "unknown command '$cmd' (start|stop|reload|restart|status|render)" ;;
esac
