-- kong_host.events: kong.worker_events, with the delivery semantics of
-- Kong 3.x's worker events (lua-resty-events through its compat layer,
-- resty/events/compat/init.lua, which kong/global.lua init_worker_events
-- configures) as far as a plugin can observe them:
--
--   register(handler, source, event)  handler(data, event, source, wid) for
--                                     each matching event; source or event
--                                     nil means any ("*")
--   unregister(handler)
--   post(source, event, data)         to every worker of this node, the
--                                     posting one included; data arrives as
--                                     a copy (encoded on the way, JSON here)
--   post_local(source, event, data)   to this worker only, the same table
--
-- Both return "done", or nil and an error; a missing source or event
-- raises ("source is required"), as resty.events' publish() asserts.
-- Handlers always run later, in a timer, never inside the post() call nor
-- on the request path (resty.events queues local events and runs them in
-- its events thread); an error in one is logged and the others still run.
--
-- Across workers the host uses its shm instead of lua-resty-events' unix
-- socket broker: post() appends the encoded event to the `kong_host` shm
-- (kept 60 s) and every worker reads new ones on a POLL-second timer
-- (kong_host.runtime drives it), so an event reaches every worker within
-- about POLL seconds; lua-resty-events takes a few milliseconds too.  A
-- worker sees the events posted after its init_worker, as a worker
-- connecting to the broker does.

local cjson = require "cjson.safe"

local ngx = ngx
local type = type
local ipairs = ipairs
local xpcall = xpcall
local tostring = tostring
local traceback = debug.traceback

local _M = {}

_M.POLL = 0.01

local DICT_NAME = "kong_host"
local SEQ_KEY = "events:seq"
local EVENT_PREFIX = "events:"
local TTL = 60
-- A sequence number taken but not yet written is waited for this many
-- polls (its poster is between incr and set), then skipped.
local MAX_GAP_POLLS = 100

local handlers = {}      -- list of { fn, source, event }
local local_queue = {}   -- events posted with post_local, not yet run
local local_scheduled = false
local last_seq           -- highest shm event this worker has handled
local gap_polls = 0


local function dict()
  return ngx.shared[DICT_NAME]
end


local function dispatch(source, event, data, wid)
  -- Like resty.events' callback.do_event: "*"/"*" handlers, then
  -- source/"*", then source/event.
  for pass = 1, 3 do
    for _, h in ipairs(handlers) do
      local match
      if pass == 1 then
        match = h.source == "*" and h.event == "*"
      elseif pass == 2 then
        match = h.source == source and h.event == "*"
      else
        match = h.source == source and h.event == event
      end
      if match then
        local ok, err = xpcall(h.fn, traceback, data, event, source, wid)
        if not ok then
          local str = type(data) == "table" and (cjson.encode(data) or "?") or tostring(data)
          ngx.log(ngx.ERR, "worker-events: event callback failed; source=", source,
                  ", event=", event, ", wid=", wid, " error='", tostring(err),
                  "', data=", str)
        end
      end
    end
  end
end


local function check_args(source, event)
  if type(source) ~= "string" or source == "" then
    error("source is required", 3)
  end
  if type(event) ~= "string" or event == "" then
    error("event is required", 3)
  end
end


function _M.register(fn, source, event, ...)
  if type(fn) ~= "function" then
    error("expected function, got: " .. type(fn), 2)
  end
  for _, e in ipairs({ event or "*", ... }) do
    handlers[#handlers + 1] = { fn = fn, source = source or "*", event = e }
  end
end
_M.register_weak = _M.register


function _M.unregister(fn)
  for i = #handlers, 1, -1 do
    if handlers[i].fn == fn then
      table.remove(handlers, i)
    end
  end
  return true
end


local function run_local(premature)
  local_scheduled = false
  if premature then
    return
  end
  local queue = local_queue
  local_queue = {}
  for _, e in ipairs(queue) do
    dispatch(e.source, e.event, e.data, e.wid)
  end
end


function _M.post_local(source, event, data)
  check_args(source, event)
  local_queue[#local_queue + 1] = { source = source, event = event, data = data,
                                    wid = ngx.worker.id() }
  if not local_scheduled then
    local ok, err = ngx.timer.at(0, run_local)
    if not ok then
      return nil, "failed to publish event: " .. tostring(err)
    end
    local_scheduled = true
  end
  return "done"
end


function _M.post(source, event, data)
  check_args(source, event)
  local json, err = cjson.encode({ source = source, event = event, data = data,
                                   wid = ngx.worker.id() })
  if not json then
    return nil, "failed to publish event: " .. tostring(err)
  end
  local d = dict()
  local seq
  seq, err = d:incr(SEQ_KEY, 1, 0)
  if not seq then
    return nil, "failed to publish event: " .. tostring(err)
  end
  local ok
  ok, err = d:safe_set(EVENT_PREFIX .. seq, json, TTL)
  if not ok then
    return nil, "failed to publish event: " .. tostring(err)
  end
  return "done"
end


-- The newest event's number (read before deciding what to deliver).
function _M.seq()
  return dict():get(SEQ_KEY) or 0
end


-- init_worker: events posted from now on are this worker's.
function _M.init_worker()
  last_seq = _M.seq()
end


-- Delivers the shm events up to `upto` (from seq(), read earlier by the
-- caller).  Called from a timer.
function _M.deliver(upto)
  local d = dict()
  while last_seq < upto do
    local n = last_seq + 1
    local json = d:get(EVENT_PREFIX .. n)
    if not json then
      gap_polls = gap_polls + 1
      if gap_polls < MAX_GAP_POLLS then
        return -- its poster has not written it yet; next poll
      end
      ngx.log(ngx.ERR, "worker-events: event ", n, " lost (expired or never written)")
    else
      local e = cjson.decode(json)
      if e then
        last_seq, gap_polls = n, 0
        dispatch(e.source, e.event, e.data, e.wid)
      end
    end
    last_seq, gap_polls = n, 0
  end
end


return _M
