-- spec/helpers/seglock.lua: holds one of the engine's writer locks from
-- the spec process, as a worker busy (or stopped) in a publish or a claim
-- would, so that specs can see what the plugin does when it finds one
-- held.  The engine's locks are open-file-description locks on single
-- bytes of the segment file (native/src/owner.c); the offsets below are
-- static_assert'ed in native/src/internal.h.
--
--   local seglock = require "helpers.seglock"
--   local held = assert(seglock.hold(path, seglock.CLAIM))
--   ...
--   seglock.release(held)

local ffi = require "ffi"

pcall(ffi.cdef, [[
struct canary_spec_flock {
  short l_type; short l_whence; int64_t l_start; int64_t l_len; int l_pid;
};
]])
pcall(ffi.cdef, "int open(const char *path, int flags, ...);")
pcall(ffi.cdef, "int fcntl(int fd, int cmd, ...);")
pcall(ffi.cdef, "int close(int fd);")

local O_RDWR, O_CLOEXEC = 2, 0x80000
local F_OFD_SETLK, F_WRLCK = 37, 1

local _M = {
  CLAIM = 72,        -- offsetof(struct seg_header, claim_lock)
  HEADER_BYTES = 4096,
  WRITER = 4,        -- offsetof(struct route_hdr, writer_lock)
}

-- The byte of a route's writer lock (route: 0-based slot index).
function _M.writer(route, route_bytes)
  return _M.HEADER_BYTES + route * route_bytes + _M.WRITER
end

-- Takes the lock at `offset` of the segment file at `path`; returns a
-- handle, or nil and the reason.
function _M.hold(path, offset)
  local fd = ffi.C.open(path, O_RDWR + O_CLOEXEC)
  if fd < 0 then return nil, "cannot open " .. path end
  local fl = ffi.new("struct canary_spec_flock")
  fl.l_type = F_WRLCK
  fl.l_whence = 0
  fl.l_start = offset
  fl.l_len = 1
  if ffi.C.fcntl(fd, F_OFD_SETLK, fl) ~= 0 then
    ffi.C.close(fd)
    return nil, "lock at " .. offset .. " is held by someone else"
  end
  return { fd = fd }
end

-- Drops the lock (closing the description drops every lock on it).
function _M.release(h)
  if h and h.fd then
    ffi.C.close(h.fd)
    h.fd = nil
  end
end

return _M
