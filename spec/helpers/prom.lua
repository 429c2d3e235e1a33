-- spec/helpers/prom.lua: read canary-router's Prometheus text in specs.
--
--   local prom = require "helpers.prom"
--   local s = prom.parse(text)            -- { ['name{labels}'] = value, ... }
--   prom.value(text, "canary_events_total", { event = "fallback" })
--   prom.sum(text, "canary_requests_total", { upstream = "x" })
--   local ok, out = prom.check(text)      -- promtool check metrics
--   local back = prom.went_back(before, after)  -- counters that decreased
--   prom.label_values(text)               -- { [value] = true } of every label

local _M = {}

-- Counter-like series: they may only grow while the gateway runs.
local function is_counter(name)
  return name:match("_total$") or name:match("_bucket$") or name:match("_count$")
         or name:match("_sum$")
end

--- Every sample line as series text -> number.
function _M.parse(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local series, v = line:match("^(.-)%s+(%S+)$")
      if series then out[series] = tonumber(v) end
    end
  end
  return out
end

local function labels_of(series)
  local name, rest = series:match("^([%w_:]+)(.*)$")
  local labels = {}
  if rest and rest:sub(1, 1) == "{" then
    local i = 2
    while i <= #rest do
      local k, j = rest:match("^([%w_]+)=\"()", i)
      if not k then break end
      local v, p = {}, j
      while p <= #rest do
        local ch = rest:sub(p, p)
        if ch == "\\" then
          local nx = rest:sub(p + 1, p + 1)
          v[#v + 1] = nx == "n" and "\n" or nx
          p = p + 2
        elseif ch == "\"" then
          break
        else
          v[#v + 1] = ch
          p = p + 1
        end
      end
      labels[k] = table.concat(v)
      i = p + 1
      if rest:sub(i, i) == "," then i = i + 1 end
    end
  end
  return name, labels
end
_M.labels_of = labels_of

local function matches(labels, want)
  for k, v in pairs(want or {}) do
    if labels[k] ~= v then return false end
  end
  return true
end

--- Sum of the samples of metric `name` whose labels include `want`
-- (label values unescaped); 0 when there is none.
function _M.sum(text, name, want)
  local total = 0
  for series, v in pairs(type(text) == "table" and text or _M.parse(text)) do
    local n, labels = labels_of(series)
    if n == name and matches(labels, want) then total = total + v end
  end
  return total
end

--- The one sample of `name` with labels `want`, or nil.
function _M.value(text, name, want)
  local found
  for series, v in pairs(type(text) == "table" and text or _M.parse(text)) do
    local n, labels = labels_of(series)
    if n == name and matches(labels, want) then
      assert(found == nil, "more than one sample of " .. name .. " matches")
      found = v
    end
  end
  return found
end

--- Every label value in the text, as a set.
function _M.label_values(text)
  local set = {}
  for series in pairs(type(text) == "table" and text or _M.parse(text)) do
    local _, labels = labels_of(series)
    for _, v in pairs(labels) do set[v] = true end
  end
  return set
end

--- Counter series present in both that went down: a list of
-- "series: before -> after" strings (empty when all are monotone).
-- A counter missing from `after` counts as going back.
function _M.went_back(before, after)
  local bad = {}
  for series, v in pairs(before) do
    local name = series:match("^([%w_:]+)")
    if is_counter(name) then
      local now = after[series]
      if now == nil or now < v then
        bad[#bad + 1] = ("%s: %s -> %s"):format(series, v, tostring(now))
      end
    end
  end
  table.sort(bad)
  return bad
end

--- Runs `promtool check metrics` on the text; returns ok, its output.
-- Metrics once the requests already answered are all recorded.  The
-- plugin records in the log phase, which nginx runs after the response
-- went out, so a scrape sent the moment the last answer arrived can miss
-- it (as in Kong).  `fetch` returns the metrics text; it is called until
-- two reads 50 ms apart agree (at most 2 s).  Only for quiet moments: under
-- load the text never settles.
function _M.settled(fetch)
  local socket = require "socket"
  local last = fetch()
  for _ = 1, 40 do
    socket.sleep(0.05)
    local now = fetch()
    if now == last then return now end
    last = now
  end
  return last
end

function _M.check(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  -- popen():close() does not tell the exit status in LuaJIT: echo it.
  local p = io.popen("promtool check metrics < " .. path .. " 2>&1; echo \"__exit=$?\"")
  local out = p:read("*a")
  p:close()
  os.remove(path)
  local code = tonumber(out:match("__exit=(%d+)%s*$"))
  return code == 0, (out:gsub("__exit=%d+%s*$", ""))
end

return _M
