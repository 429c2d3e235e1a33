#!/usr/bin/env bash
# stage_cluster.sh - a cluster-scoped progression (progression.scope =
# cluster) on three local-host nodes sharing one redis-server (Debian's):
# how far apart the nodes take each step, and Redis commands per node per
# second (see cluster.lua).  Redis on 127.0.0.1:28990, nodes on
# 28911-28933, their upstreams on 28942-28947.
source "$(dirname "$0")/lib.sh"

need_free_ports 28990 28911 28912 28913 28921 28922 28923 28931 28932 28933 \
  28942 28943 28944 28945 28946 28947
say "# cluster progression: 3 nodes x 2 workers, Redis, 1 s windows (load $(machine_load))"
cd "$BENCH_ROOT"
LUA_PATH="$BENCH_ROOT/build/lua/?.lua;$BENCH_ROOT/build/lua/?/init.lua;$BENCH_ROOT/kong/host/lib/?.lua;$BENCH_ROOT/spec/?.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;" \
LUA_CPATH="$BENCH_ROOT/build/?.so;;" \
  luajit "$BENCH_DIR/cluster.lua"
