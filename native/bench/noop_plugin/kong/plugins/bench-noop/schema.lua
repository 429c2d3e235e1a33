-- Schema of bench-noop (native/bench/noop_plugin): no settings.
return {
  name = "bench-noop",
  fields = {
    { config = { type = "record", fields = {} } },
  },
}
