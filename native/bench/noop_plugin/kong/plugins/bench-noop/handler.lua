-- bench-noop: a plugin with canary-router's phases (access and
-- header_filter) that does nothing in them.  stage_cpu.sh runs it on the
-- local host and stage_kong_instructions.sh on real Kong to measure what
-- the gateway charges any such plugin per request (the plugins iterator,
-- a coroutine for access, a pcall per phase), so canary-router's own
-- work can be told apart.
return {
  PRIORITY = 900,
  VERSION = "0.0.0",
  access = function(_, _) end,
  header_filter = function(_, _) end,
}
