-- bench-noop: a plugin that does nothing in access, header_filter and
-- log.  stage_cpu.sh runs it on the local host to measure what the host
-- charges any plugin per request (coroutine for access, pcall per phase,
-- kong.ctx.plugin), so canary-router's own work can be told apart.
return {
  PRIORITY = 900,
  VERSION = "0.0.0",
  access = function(_, _) end,
  header_filter = function(_, _) end,
  log = function(_, _) end,
}
