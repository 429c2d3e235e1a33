-- Schema of bench-probe (native/bench/probe_plugin): no settings.
return {
  name = "bench-probe",
  fields = {
    { config = { type = "record", fields = {} } },
  },
}
