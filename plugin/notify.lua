-- Notifications of progression decisions: a JSON POST to
-- progression.notify.url.
--
-- Sent off the request path from a zero-delay timer, over a cosocket
-- (ngx.socket.tcp), so nothing ever blocks a worker; retried with
-- exponential backoff (0.5 s, 1 s, 2 s ... at most 30 s apart, 8 attempts
-- in all) while the receiver is unreachable, too slow, or answers
-- anything but 2xx.  A failing receiver changes nothing else: the
-- decision is already made and recorded.  A worker that exits while it
-- waits to retry drops the notification, and says so.
--
-- Header values may carry credentials, and a URL may carry a password
-- (http://user:password@host/): neither is ever logged.  Logs name the
-- receiver as scheme://host:port/path.
--
-- Uses the `kong` global for logging only.

local cjson = require "cjson.safe"

local ngx = ngx
local type = type
local tostring = tostring
local tonumber = tonumber
local ipairs = ipairs
local concat = table.concat
local min = math.min
local ngx_null = ngx and ngx.null

local _M = {}

local MAX_ATTEMPTS = 8
local FIRST_BACKOFF = 0.5 -- seconds
local MAX_BACKOFF = 30
local DEFAULT_TIMEOUT = 5000 -- ms

-- Headers canary-router sets itself; notify.headers may not.
local RESERVED = {
  host = true, ["content-length"] = true, ["content-type"] = true,
  connection = true, ["transfer-encoding"] = true,
}

local function opt(v)
  if v == ngx_null then return nil end
  return v
end

-- scheme, userinfo, host, port, path of an http(s) URL, or nil, error.
function _M.parse_url(url)
  if type(url) ~= "string" or url:find("[%z\1-\32\127]") then
    return nil, "must be an http:// or https:// URL without spaces or " ..
                "control characters"
  end
  local scheme, authority, rest = url:match("^(https?)://([^/?#]*)(.*)$")
  if not scheme then
    return nil, "must start with http:// or https://"
  end
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  if not userinfo then hostport = authority end
  local host, port = hostport:match("^(%[[%x:.]+%])(.*)$")
  if not host then host, port = hostport:match("^([^:]*)(.*)$") end
  if host == "" then return nil, "has no host" end
  if port ~= "" then
    port = tonumber(port:match("^:(%d+)$"))
    if not port or port < 1 or port > 65535 then
      return nil, "has an invalid port"
    end
  else
    port = scheme == "https" and 443 or 80
  end
  local path = rest:gsub("#.*$", "")
  if path == "" or path:sub(1, 1) == "?" then path = "/" .. path end
  return scheme, userinfo, host, port, path
end

-- "Name: value" of notify.headers, or nil, error.
function _M.parse_header(line)
  if type(line) ~= "string" then return nil, "must be a string" end
  local name, value = line:match("^([A-Za-z0-9_-]+):[ \t]*(.-)[ \t]*$")
  if not name then
    return nil, "must be 'Name: value' with a header name of A-Z, a-z, " ..
                "0-9, '_' and '-'"
  end
  if value:find("[%z\1-\8\10-\31\127]") then
    return nil, "value of header '" .. name .. "' has control characters"
  end
  if RESERVED[name:lower()] then
    return nil, "header '" .. name .. "' is set by canary-router"
  end
  return name, value
end

-- The notify record compiled for sending, or nil when there is no URL.
-- The schema has validated it; anything it would reject is dropped here
-- with an error rather than sent.
function _M.compile(n)
  n = opt(n)
  if type(n) ~= "table" or opt(n.url) == nil then return nil end
  local scheme, userinfo, host, port, path = _M.parse_url(n.url)
  if not scheme then
    local err = userinfo -- parse_url's error; never the URL itself
    kong.log.err("canary-router: notify.url ", err, "; not notifying")
    return nil
  end
  local lines = {}
  if userinfo and userinfo ~= "" and ngx and ngx.encode_base64 then
    -- RFC 7617: user:password in the URL is Basic authentication.
    lines[#lines + 1] = "Authorization: Basic " ..
      ngx.encode_base64(ngx.unescape_uri(userinfo)) .. "\r\n"
  end
  for i, h in ipairs(opt(n.headers) or {}) do
    local name, value = _M.parse_header(h)
    if not name then
      kong.log.err("canary-router: notify.headers[", i, "] ", value,
                   "; not sent")
    else
      lines[#lines + 1] = name .. ": " .. value .. "\r\n"
    end
  end
  local default_port = (scheme == "https" and port == 443) or
                       (scheme == "http" and port == 80)
  local bare = host:match("^%[(.*)%]$") or host
  return {
    tls = scheme == "https",
    host = bare,
    port = port,
    path = path,
    host_header = default_port and host or (host .. ":" .. port),
    headers = concat(lines),
    timeout = opt(n.timeout) or DEFAULT_TIMEOUT,
    shown = scheme .. "://" .. host .. ":" .. port .. path:gsub("%?.*$", ""),
  }
end

-- One attempt: true, or nil and why.
local function post(n, body)
  local sock = ngx.socket.tcp()
  sock:settimeouts(n.timeout, n.timeout, n.timeout)
  local ok, err = sock:connect(n.host, n.port)
  if not ok then return nil, "connect: " .. tostring(err) end
  if n.tls then
    ok, err = sock:sslhandshake(nil, n.host, true)
    if not ok then
      sock:close()
      return nil, "TLS: " .. tostring(err)
    end
  end
  ok, err = sock:send({
    "POST ", n.path, " HTTP/1.1\r\nHost: ", n.host_header,
    "\r\nUser-Agent: canary-router\r\nContent-Type: application/json\r\n",
    "Content-Length: ", tostring(#body), "\r\nConnection: close\r\n",
    n.headers, "\r\n", body,
  })
  if not ok then
    sock:close()
    return nil, "send: " .. tostring(err)
  end
  local line
  line, err = sock:receive("*l")
  sock:close()
  if not line then return nil, "receive: " .. tostring(err) end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then return nil, "not an HTTP response" end
  if status < 200 or status > 299 then return nil, "HTTP " .. status end
  return true
end

local deliver

local function retry(n, body, attempt, what, err)
  if attempt >= MAX_ATTEMPTS then
    kong.log.err("canary-router: gave up notifying ", n.shown, " of ", what,
                 " after ", attempt, " attempts: ", err)
    return
  end
  local delay = min(FIRST_BACKOFF * 2 ^ (attempt - 1), MAX_BACKOFF)
  kong.log.warn("canary-router: notifying ", n.shown, " of ", what,
                " failed (attempt ", attempt, " of ", MAX_ATTEMPTS, "): ",
                err, "; retrying in ", delay, " s")
  local ok, terr = ngx.timer.at(delay, deliver, n, body, attempt + 1, what)
  if not ok then
    kong.log.err("canary-router: cannot retry notifying ", n.shown, " of ",
                 what, ": ", terr)
  end
end

deliver = function(premature, n, body, attempt, what)
  if premature then
    kong.log.warn("canary-router: worker exiting, notification of ", what,
                  " to ", n.shown, " dropped")
    return
  end
  local ok, err = post(n, body)
  if ok then
    if attempt > 1 then
      kong.log.notice("canary-router: notified ", n.shown, " of ", what,
                      " at attempt ", attempt)
    end
    return
  end
  retry(n, body, attempt, what, err)
end

-- Sends `payload` (a table, as JSON) to the compiled receiver `n` from a
-- timer; `what` names it in logs.  Returns at once.
function _M.send(n, payload, what)
  local body, err = cjson.encode(payload)
  if not body then
    kong.log.err("canary-router: cannot encode the notification of ", what,
                 ": ", err)
    return
  end
  local ok, terr = ngx.timer.at(0, deliver, n, body, 1, what)
  if not ok then
    kong.log.err("canary-router: cannot notify ", n.shown, " of ", what,
                 ": ", terr)
  end
end

return _M
