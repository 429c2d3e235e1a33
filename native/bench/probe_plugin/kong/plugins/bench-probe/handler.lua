-- bench-probe: loaded (never configured) by stage_kong_own.sh so that
-- callgrind counts only the phase handlers of the plugins a variant
-- configures.  At init_worker it wraps the request phases of the
-- plugins in PROBED in a switch that turns callgrind's counting on for
-- the handler and off after it (vgtoggle.so, found on the Lua C path).
-- Kong calls a handler through plugin.handler[phase] at every request
-- (runloop: execute_collected_plugins_iterator), so the wrapped function
-- is the one that runs.  What is counted is everything the handler
-- executes, the PDK and nginx calls it makes included; Kong's own work
-- around it (the plugins iterator, its walk of the configuration, the
-- balancer) is not.
local ffi = require "ffi"

local PROBED = { "canary-router", "correlation-id", "prometheus" }
local PHASES = { "rewrite", "access", "header_filter", "body_filter", "log" }

ffi.cdef "void canary_bench_toggle_collect(void);"
local lib

local function wrap(toggle, handler, phase)
  local f = handler[phase]
  handler[phase] = function(self, conf)
    toggle()
    local ok, err = pcall(f, self, conf)
    toggle()
    if not ok then error(err, 0) end
  end
end

return {
  PRIORITY = 1,
  VERSION = "0.0.0",
  init_worker = function()
    local path = assert(package.searchpath("vgtoggle", package.cpath),
                        "bench-probe: vgtoggle.so not on the Lua C path")
    -- The library stays referenced: a collected ffi.load() handle would
    -- unload it under the wrapped handlers.
    lib = ffi.load(path)
    local toggle = lib.canary_bench_toggle_collect
    for _, name in ipairs(PROBED) do
      local ok, handler = pcall(require, "kong.plugins." .. name .. ".handler")
      if ok and type(handler) == "table" then
        for _, phase in ipairs(PHASES) do
          if handler[phase] then wrap(toggle, handler, phase) end
        end
      end
    end
  end,
}
