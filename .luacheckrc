-- luacheck configuration for every Lua file in the project.
std = "ngx_lua"
max_line_length = 100
unused_args = false

-- `kong` is the PDK global Kong (and the local host) provides; plugins
-- write into its per-request tables (kong.ctx.plugin).
globals = { "kong" }

files["spec/"] = {
  std = "+busted",
  globals = { "kong", "ngx" },
}
files["spec/tools/"] = { std = "luajit" }
files["kong/host/"] = { globals = { "kong" } }
