#!/usr/bin/env bash
# kong/test-kong/pg.sh - a private PostgreSQL for `make test-kong`'s DB
# mode: Debian's postgresql, its own data directory and port on
# 127.0.0.1, a `kong` role and database; nothing of the system's clusters
# is touched.
#
#   pg.sh start DIR PORT    initdb DIR (as the postgres user: initdb refuses
#                           root), start it, create role/db kong (password kong)
#   pg.sh copy DIR PORT FROM TO
#                           database TO (owner kong) as a copy of FROM, e.g.
#                           a migrated `kong` for a second Kong node
#   pg.sh stop DIR          stop it and remove DIR (safe when not running)
#
# Idempotent: `start` on a running DIR only checks it answers.

set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }

cmd=${1:-}
DIR=${2:-}
PORT=${3:-54329}
[ -n "$cmd" ] && [ -n "$DIR" ] || die "usage: pg.sh start DIR PORT | copy DIR PORT FROM TO | stop DIR"

BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$BIN" ] && [ -x "$BIN/initdb" ] ||
  die "PostgreSQL server binaries not found (apt-get install postgresql)"

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

psql_pg() {
  as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"
}

start() {
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$DIR"
  fi
  chmod 0700 "$DIR"
  if [ ! -s "$DIR/data/PG_VERSION" ]; then
    as_pg "$BIN/initdb" -D "$DIR/data" -U postgres -A trust --no-sync -E UTF8 >"$DIR/initdb.log" 2>&1 ||
      { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  fi
  if ! as_pg "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    # fsync off: a throw-away test database, not one to keep.
    as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
      -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" \
      start >/dev/null || { tail -n 20 "$DIR/postgres.log" >&2; die "PostgreSQL did not start"; }
  fi
  if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = 'kong'")" != 1 ]; then
    psql_pg -c "CREATE ROLE kong LOGIN PASSWORD 'kong'"
  fi
  if [ "$(psql_pg -c "SELECT 1 FROM pg_database WHERE datname = 'kong'")" != 1 ]; then
    psql_pg -c "CREATE DATABASE kong OWNER kong"
  fi
  echo "pg.sh: PostgreSQL on 127.0.0.1:$PORT (data $DIR/data)"
}

copy() {
  local from=${4:-} to=${5:-}
  [[ "$from" =~ ^[a-z_][a-z0-9_]*$ && "$to" =~ ^[a-z_][a-z0-9_]*$ ]] ||
    die "copy needs two database names (lower case, digits, _)"
  PGOPTIONS="-c client_min_messages=warning" psql_pg -c "DROP DATABASE IF EXISTS $to"
  # a template must have no other session: nothing may use FROM meanwhile
  psql_pg -c "CREATE DATABASE $to OWNER kong TEMPLATE $from"
}

stop() {
  [ -d "$DIR" ] || return 0
  DIR=$(cd "$DIR" && pwd)
  if [ -s "$DIR/data/PG_VERSION" ]; then
    as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
  echo "pg.sh: PostgreSQL stopped, $DIR removed"
}

case "$cmd" in
  start) start ;;
  copy)  copy "$@" ;;
  stop)  stop ;;
  *) die "unknown command '$cmd' (start|copy|stop)" ;;
esac
