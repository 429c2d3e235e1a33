-- spec/tools/summary.lua: the figures block printed at the end of
-- `make test`.
--
--   luajit spec/tools/summary.lua [TEST_SUMMARY [FUZZ_SUMMARY]]
--
-- TEST_SUMMARY (default $CANARY_TEST_SUMMARY or build/test-summary.txt)
-- holds the `key n` lines the integration specs append through
-- spec/helpers/summary.lua; lines with the same key add up.
-- FUZZ_SUMMARY (default build/fuzz-summary.txt) holds one
-- `<target> <executions>` line per fuzz target; optional.
--
-- Exits 1 when a request failed or a count was lost, or when there are
-- no figures at all (the integration specs did not run).

local test_path = arg[1] or os.getenv("CANARY_TEST_SUMMARY")
if not test_path or test_path == "" then test_path = "build/test-summary.txt" end
local fuzz_path = arg[2] or "build/fuzz-summary.txt"

-- Sums the integer on each `key n` line per key; nil when no file.
local function read_sums(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local sums, n = {}, 0
  for line in f:lines() do
    local key, value = line:match("^%s*([^#%s]%S*)%s+(%d+)%s*$")
    if key then
      sums[key] = (sums[key] or 0) + tonumber(value)
      n = n + 1
    end
  end
  f:close()
  return sums, n
end

local function total(sums)
  local t = 0
  for _, v in pairs(sums) do t = t + v end
  return t
end

local figures = read_sums(test_path)
local fuzz, fuzz_targets = read_sums(fuzz_path)

local out = {}
local function line(label, value, note)
  out[#out + 1] = ("  %-26s %12s%s"):format(label, value, note and ("   " .. note) or "")
end

out[#out + 1] = "== canary-router test figures"
if fuzz then
  local t = total(fuzz)
  line("fuzz executions run", t, ("(%d targets)"):format(fuzz_targets))
else
  line("fuzz executions run", "-", "(no " .. fuzz_path .. ")")
end

local failed, why
if not figures then
  out[#out + 1] = "  no integration figures: " .. test_path .. " is missing"
  failed, why = true, "the integration specs wrote no figures"
else
  local function get(key) return figures[key] or 0 end
  line("hostile inputs tried", get("hostile_inputs"))
  line("workers killed (kill -9)", get("workers_killed"),
       ("(%d connections cut with them)"):format(get("kill_socket_errors")))
  line("reloads done", get("reloads"))
  line("requests sent", get("requests_sent"))
  line("requests failed", get("requests_failed"), get("requests_failed") ~= 0 and "MUST BE 0")
  line("counts lost", get("counts_lost"), get("counts_lost") ~= 0 and "MUST BE 0")
  failed = get("requests_failed") ~= 0 or get("counts_lost") ~= 0
  why = "requests failed or counts were lost"
end
print(table.concat(out, "\n"))
if failed then
  print("== FAILED: " .. why)
  os.exit(1)
end
os.exit(0)
