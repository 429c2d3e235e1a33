package = "kong-plugin-canary-router"
version = "0.1.0-1"

source = {
  url = "git+file:///canary-router",
  tag = "v0.1.0",
}

description = {
  summary = "Canary releases in the Kong gateway: weighted and sticky routing, " ..
            "trace IDs, per-upstream latency histograms, SLO-gated progression.",
  detailed = [[
    canary-router splits a route's traffic across upstreams by weight, optionally
    sticky, with tester overrides; propagates trace IDs (X-Trace-Id and W3C
    traceparent); keeps per-upstream latency histograms in shared memory, exported
    to Prometheus; and moves a canary through weight steps behind SLO gates with
    automatic rollback.  The engine is a C library (libcanary.so) used through
    LuaJIT FFI; `luarocks make` builds and installs it with the Lua modules.
  ]],
  license = "Apache-2.0",
}

dependencies = {
  "lua ~> 5.1",
}

-- The Makefile builds libcanary.so (and canarystat) and installs them
-- together with the Lua modules as kong.plugins.canary-router.*.
build = {
  type = "make",
  build_target = "build",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
  },
  install_target = "install-rock",
  install_variables = {
    LUA_LIBDIR = "$(LIBDIR)",
    LUA_LUADIR = "$(LUADIR)",
    BINDIR = "$(BINDIR)",
  },
}
