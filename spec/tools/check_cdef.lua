-- Checks that the ffi.cdef block of the FFI binding declares exactly what
-- native/include/canary.h declares, token for token after preprocessing.
--   luajit spec/tools/check_cdef.lua canary.h engine.lua [--write]
-- With --write the block is regenerated from the header instead.

local header, binding, mode = arg[1], arg[2], arg[3]
if not header or not binding then
  io.stderr:write("usage: check_cdef.lua canary.h engine.lua [--write]\n")
  os.exit(2)
end

local BEGIN, END = "ffi.cdef[[\n", "\n]] -- end of canary.h declarations"

local function preprocess()
  local p = assert(io.popen("cpp -P -DCANARY_API= " .. header))
  local out = p:read("*a")
  p:close()
  -- Keep the header's own declarations; drop <stdint.h>/<stddef.h>.
  local from = out:find("enum canary_errno", 1, true)
  assert(from, "canary.h: enum canary_errno not found")
  return out:sub(from)
end

-- Words and single punctuation characters, in order; spacing ignored.
local function tokens(s)
  local t, pos = {}, 1
  while true do
    local _, stop, tok = s:find("^%s*([%w_]+)", pos)
    if not tok then _, stop, tok = s:find("^%s*([^%w_%s])", pos) end
    if not tok then break end
    t[#t + 1] = tok
    pos = stop + 1
  end
  return table.concat(t, " ")
end

local f = assert(io.open(binding))
local src = f:read("*a")
f:close()
local b = src:find(BEGIN, 1, true)
local e = src:find(END, 1, true)
if not b or not e then
  io.stderr:write(binding .. ": cdef markers not found\n")
  os.exit(1)
end
local decl = preprocess()

if mode == "--write" then
  local pretty = decl:gsub("\n%s*\n", "\n"):gsub("%s+$", "")
  -- Long lines (the expanded error enum) are broken after commas.
  pretty = pretty:gsub("[^\n]+", function(line)
    if #line <= 90 then return line end
    return (line:gsub(", ", ",\n  "))
  end)
  local out = src:sub(1, b + #BEGIN - 1) .. pretty .. src:sub(e)
  f = assert(io.open(binding, "w"))
  f:write(out)
  f:close()
  print("check_cdef: rewrote the cdef block of " .. binding)
  os.exit(0)
end

if tokens(src:sub(b + #BEGIN, e - 1)) ~= tokens(decl) then
  io.stderr:write(("check_cdef: the ffi.cdef in %s differs from %s;\n" ..
    "run: luajit spec/tools/check_cdef.lua %s %s --write\n"):format(
    binding, header, header, binding))
  os.exit(1)
end
print("check_cdef: " .. binding .. " matches " .. header)
