-- Admin API endpoints of canary-router (Kong loads
-- kong.plugins.canary-router.api and mounts these routes).  They read and
-- change the engine's segment only, never Kong's database, so they work
-- the same in DB-less mode.

local status = require "kong.plugins.canary-router.status"

return {
  ["/canary-router/status"] = {
    GET = function()
      return kong.response.exit(200, status.collect())
    end,
  },
}
