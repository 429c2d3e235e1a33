-- The project's own servers (the local host and the demo upstreams) run
-- on Debian's nginx, whose modules their configs load, even when a
-- sourced Kong environment puts OpenResty's nginx first on PATH, as it
-- does for anyone who starts `make run` against an installed Kong.

local function tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

describe("project servers", function()
  it("start Debian's nginx, not the first nginx on PATH", function()
    local dir = tmpdir()
    -- an nginx that only says it is the wrong one
    local f = assert(io.open(dir .. "/nginx", "w"))
    f:write("#!/bin/sh\necho 'impostor nginx' >&2\nexit 1\n")
    f:close()
    os.execute("chmod +x " .. dir .. "/nginx")
    local path = "PATH=" .. dir .. ":$PATH "
    -- the demo upstreams
    local ctl = "bash kong/host/demo_upstream/ctl.sh"
    local args = " --prefix " .. dir .. "/up --servers demo:19481"
    local rc, out = run(path .. ctl .. " start" .. args)
    run(ctl .. " stop" .. args)
    -- the local host, on private ports
    local hctl = "bash kong/host/ctl.sh"
    local hargs = " --prefix " .. dir .. "/host --proxy-listen 127.0.0.1:19482" ..
                  " --admin-listen 127.0.0.1:19483 --status-listen 127.0.0.1:19484" ..
                  " --workers 1"
    local hrc, hout = run(path .. hctl .. " start" .. hargs)
    run(hctl .. " stop" .. hargs)
    os.execute("rm -rf " .. dir)
    assert.equal(0, rc, out)
    assert.not_matches("impostor", out)
    assert.equal(0, hrc, hout)
    assert.not_matches("impostor", hout)
  end)
end)
