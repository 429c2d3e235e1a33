# native/bench/lib.sh - helpers shared by the stage_*.sh benchmarks.
# Sourced, not run.  Every stage:
#
#   * listens only on 127.0.0.1, on ports 28000-29999 (other engineers run
#     tests on 8000/8001/8007/9001/9002 and 18000+), and checks that its
#     ports are free before it starts anything;
#   * registers a stop command for every server it starts (on_exit), run
#     from one EXIT trap, so an error or Ctrl-C never leaves a server up;
#   * prints its figures as "name value unit" on stdout; progress and
#     diagnostics go to stderr.

set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_DIR=$BENCH_ROOT/native/bench
BENCH_OUT=$BENCH_ROOT/build/bench
mkdir -p "$BENCH_OUT"

say() { echo "$*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# "name value unit", the format run.sh collects.
figure() { printf '%s %s %s\n' "$1" "$2" "$3"; }

# ---- cleanup ------------------------------------------------------------

BENCH_CLEANUP=()
on_exit() { BENCH_CLEANUP+=("$*"); }
run_cleanup() {
  local i
  for ((i = ${#BENCH_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${BENCH_CLEANUP[$i]}" >/dev/null 2>&1 || true
  done
  BENCH_CLEANUP=()
}
trap run_cleanup EXIT
trap 'exit 130' INT TERM

# ---- ports --------------------------------------------------------------

need_free_ports() {
  local p
  for p in "$@"; do
    [ "$p" -ge 28000 ] && [ "$p" -le 29999 ] || die "port $p outside 28000-29999"
    if [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
      die "port 127.0.0.1:$p is in use (a previous run left a server up?)"
    fi
  done
}

# ---- plain nginx instances ---------------------------------------------

# load_module lines for ndk and lua, taken from the system's
# /etc/nginx/modules-enabled/*.conf (relative paths there are relative to
# nginx's compiled-in prefix), so a generated config that runs with its own
# -p prefix loads exactly the modules the system nginx does.
lua_module_lines() {
  local prefix line path
  prefix=$(nginx -V 2>&1 | tr ' ' '\n' | sed -n 's/^--prefix=//p')
  prefix=${prefix:-/usr/share/nginx}
  for want in ndk_http_module ngx_http_lua_module; do
    line=$(cat /etc/nginx/modules-enabled/*.conf 2>/dev/null |
      grep -E "^[[:space:]]*load_module[[:space:]].*$want\.so" | head -n1 || true)
    path=$(echo "$line" | sed -E 's/^[[:space:]]*load_module[[:space:]]+([^;[:space:]]+).*/\1/')
    if [ -z "$path" ]; then
      path=/usr/lib/nginx/modules/$want.so
    elif [ "${path#/}" = "$path" ]; then
      path=$prefix/$path
    fi
    [ -f "$path" ] || die "nginx module $want not found ($path); apt-get install libnginx-mod-http-lua"
    echo "load_module $(readlink -f "$path");"
  done
}

# Common top of a generated nginx.conf: pid, error log, temp paths.
nginx_main_block() { # workers
  # Started as root, nginx would run its workers as nobody, who cannot
  # write the prefix (the FFI stage's segment lives there).
  if [ "$(id -u)" = 0 ]; then echo "user $(id -un) $(id -gn);"; fi
  cat <<EOF
worker_processes $1;
daemon on;
pid logs/nginx.pid;
error_log logs/error.log warn;
worker_rlimit_nofile 4096;
events { worker_connections 2048; }
EOF
}

nginx_http_common() {
  cat <<'EOF'
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

nginx_master_pid() { # prefix
  local f=$1/logs/nginx.pid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

nginx_worker_pids() { # prefix
  local m
  m=$(nginx_master_pid "$1") || return 0
  pgrep -P "$m" 2>/dev/null | sort -n | tr '\n' ' '
}

# Starts nginx on PREFIX/conf/nginx.conf (written by the caller) and
# registers its stop.
nginx_start() { # prefix
  local prefix=$1 out
  mkdir -p "$prefix/logs" "$prefix/tmp"
  rm -f "$prefix/logs/nginx.pid"
  out=$(nginx -p "$prefix/" -c conf/nginx.conf 2>&1) || { echo "$out" >&2; die "nginx failed to start in $prefix"; }
  on_exit nginx_stop "$prefix"
}

nginx_stop() { # prefix
  local prefix=$1 m pids p
  m=$(nginx_master_pid "$prefix") || return 0
  pids="$m $(nginx_worker_pids "$prefix")"
  kill -TERM "$m" 2>/dev/null || true
  for p in $pids; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -f "$prefix/logs/nginx.pid"
}

wait_http() { # url [timeout_s]
  local deadline=$((SECONDS + ${2:-10}))
  until [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true)" = 200 ]; do
    [ $SECONDS -lt $deadline ] || die "$1 did not answer 200"
    sleep 0.05
  done
}

# The benchmark upstream: one nginx worker answering a small 200 on each
# port (no Lua, so it costs the machine as little as possible).
start_upstreams() { # prefix port...
  local prefix=$1 servers="" p
  shift
  need_free_ports "$@"
  for p in "$@"; do
    servers+="
    server {
        listen 127.0.0.1:$p;
        location / { return 200 \"ok $p\n\"; }
    }"
  done
  mkdir -p "$prefix/conf"
  {
    echo "# Generated by native/bench - benchmark upstream."
    nginx_main_block 1
    echo "http {"
    nginx_http_common
    echo "    access_log off;"
    echo "    default_type text/plain;"
    echo "$servers"
    echo "}"
  } >"$prefix/conf/nginx.conf"
  nginx_start "$prefix"
  for p in "$@"; do wait_http "http://127.0.0.1:$p/"; done
}

# ---- the local Kong host -----------------------------------------------

# host_start PREFIX CONFIG PROXY ADMIN STATUS [PLUGINS]: kong/host/ctl.sh
# with 2 workers (the machine's core count; $HOST_WORKERS), plugins canary-router by
# default.  native/bench/noop_plugin is on LUA_PATH for the bench-noop
# plugin (stage_cpu.sh).
host_start() {
  local prefix=$1 config=$2 proxy=$3 admin=$4 status=$5 plugins=${6:-canary-router}
  need_free_ports "$proxy" "$admin" "$status"
  # The segment (a few MB for the default 64 routes; 55 MB for the
  # scale stage's 1000) is removed after the host stops (cleanups run in
  # reverse order).
  on_exit rm -f "$prefix/canary-router.seg"
  on_exit host_stop "$prefix"
  LUA_PATH="$BENCH_DIR/noop_plugin/?.lua;;" \
    bash "$BENCH_ROOT/kong/host/ctl.sh" start --prefix "$prefix" --config "$config" \
    --plugins "$plugins" --proxy-listen "127.0.0.1:$proxy" \
    --admin-listen "127.0.0.1:$admin" --status-listen "127.0.0.1:$status" \
    --workers "${HOST_WORKERS:-2}" --log-level warn >&2
}

# Restarts a started host with `reuseport` on its proxy listener, Kong
# 3.x's default (proxy_listen = 0.0.0.0:8000 reuseport backlog=16384):
# the kernel then spreads client connections over the workers by hash.
# Without it nginx hands a burst of new connections to whichever worker
# wakes first, usually all to one.  ctl.sh cannot take listen flags (it
# builds its readiness URL from --proxy-listen), so the generated config
# is edited and nginx started on it the way ctl.sh starts it.
host_reuseport() { # prefix proxy_port admin_port
  local prefix=$1 conf=$1/conf/nginx.conf deadline m
  bash "$BENCH_ROOT/kong/host/ctl.sh" stop --prefix "$prefix" >/dev/null
  sed -i "s/listen 127.0.0.1:$2 backlog=/listen 127.0.0.1:$2 reuseport backlog=/" "$conf"
  grep -q "listen 127.0.0.1:$2 reuseport" "$conf" || die "could not set reuseport in $conf"
  CANARY_ROUTER_SEGMENT=$prefix/canary-router.seg nginx -p "$prefix/" -c conf/nginx.conf ||
    die "host with reuseport failed to start ($prefix)"
  deadline=$((SECONDS + 15))
  # Ready when both workers registered in the Admin API (after their
  # plugins' init_worker) and the proxy answers.
  while :; do
    m=$(curl -s -m 2 "http://127.0.0.1:$3/" 2>/dev/null | grep -o '"workers":\[[0-9,]*\]' | grep -o '[0-9][0-9]*' | sort -n | tr '\n' ' ' || true)
    [ -n "$m" ] && [ "$m" = "$(nginx_worker_pids "$prefix")" ] &&
      [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$2/" || true)" != 000 ] && break
    [ $SECONDS -lt $deadline ] || die "host with reuseport did not become ready ($prefix)"
    sleep 0.1
  done
}

host_stop() { # prefix
  bash "$BENCH_ROOT/kong/host/ctl.sh" stop --prefix "$1" >/dev/null 2>&1 || true
}

# kong.yml for the host: route /ai -> service automation-service, upstreams
# automation-service (STABLE_PORT) and automation-service-canary
# (CANARY_PORT); PLUGIN_YAML (may be empty) is the service's plugins list.
host_config() { # file stable_port canary_port plugin_yaml
  cat >"$1" <<EOF
_format_version: "3.0"
services:
  - name: automation-service
    url: http://automation-service
    routes:
      - name: ai
        paths:
          - /ai
        strip_path: true
$4
upstreams:
  - name: automation-service
    targets:
      - target: 127.0.0.1:$2
        weight: 100
  - name: automation-service-canary
    targets:
      - target: 127.0.0.1:$3
        weight: 100
EOF
}

# ---- measuring ----------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# Sum of utime + stime (clock ticks) of the given pids, from
# /proc/<pid>/stat fields 14 and 15 (counted after the ')' that ends the
# command name, which may contain spaces).
cpu_ticks() {
  local p total=0 rest
  for p in "$@"; do
    rest=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || die "process $p is gone"
    # after "pid (comm) ": field 3 is state, so utime/stime are $12/$13.
    total=$((total + $(echo "$rest" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# Median of numbers on stdin (one per line).
median() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# (max - min) / median of numbers on stdin, in percent.
spread() {
  sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    if (NR == 0 || m == 0) print "nan"; else printf "%.0f\n", (v[NR] - v[1]) / m * 100 }'
}

# Requests completed in a wrk report (stdin); fails on non-2xx/socket errors.
wrk_requests() {
  awk '/requests in/ { n = $1 }
       /Non-2xx or 3xx responses/ { bad = $NF }
       /Socket errors/ { sock = $0 }
       END {
         if (bad > 0) { print "wrk: " bad " non-2xx/3xx responses" > "/dev/stderr"; exit 1 }
         if (sock != "") print "wrk: " sock > "/dev/stderr"
         print n + 0 }'
}

# p99 latency in microseconds from a `wrk --latency` report (stdin).
wrk_p99_us() {
  awk '$1 == "99%" {
         v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
         m = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1e6 : (u == "m") ? 6e7 : -1
         printf "%.0f\n", v * m; found = 1 }
       END { if (!found) exit 1 }'
}

machine_load() { cut -d' ' -f1-3 /proc/loadavg; }
