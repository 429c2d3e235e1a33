-- plugin/redis.lua against a real redis-server (Debian's), started on a
-- private port: pipelining, AUTH (password, ACL user), SELECT, error
-- replies, refused connections, replies that are not RESP, timeouts and
-- a server restart.  Outside nginx the client runs over luasocket through
-- helpers.redis.tcp (same calls as ngx.socket.tcp); inside nginx the
-- cluster specs use it over cosockets.

local redis = require "kong.plugins.canary-router.redis"
local rs = require "helpers.redis"
local socket = require "socket"

local PORT = 6391
local PASSWORD = "pa55-w0rd-not-in-messages"
local OPTS = { tcp = rs.tcp }

local function conf(extra)
  local c = { host = "127.0.0.1", port = PORT, timeout = 1000, password = PASSWORD }
  for k, v in pairs(extra or {}) do
    if v == false then c[k] = nil else c[k] = v end
  end
  return c
end

describe("redis client", function()
  local srv

  setup(function()
    srv = rs.start { port = PORT, password = PASSWORD }
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  it("encodes commands as RESP arrays of bulk strings", function()
    assert.equal("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n42\r\n",
                 table.concat(redis.encode({ "SET", "k", 42 }, {})))
  end)

  it("pipelines commands and returns every reply in order, error replies in place",
     function()
    local r = assert(redis.connect(conf(), OPTS))
    local replies = assert(r:pipeline({
      { "DEL", "p:n", "p:h", "p:s" },
      { "INCR", "p:n" },
      { "INCRBY", "p:n", 41 },
      { "HINCRBY", "p:h", "b7", 3 },
      { "HINCRBY", "p:h", "b7", 4 },
      { "LPUSH", "p:n", "x" },          -- WRONGTYPE, the rest goes on
      { "SET", "p:s", "a\r\nb" },       -- binary-safe
      { "GET", "p:s" },
      { "GET", "p:missing" },
      { "HGETALL", "p:h" },
    }))
    assert.equal(10, #replies)
    assert.equal(1, replies[2])
    assert.equal(42, replies[3])
    assert.equal(7, replies[5])
    assert.matches("^WRONGTYPE", replies[6].err)
    assert.equal("OK", replies[7])
    assert.equal("a\r\nb", replies[8])
    assert.equal(redis.null, replies[9])
    assert.same({ "b7", "7" }, replies[10])
    -- the connection is still in step after an error reply
    assert.equal("PONG", r:command("PING"))
    r:close()
  end)

  it("returns a command's error reply as nil, err", function()
    local r = assert(redis.connect(conf(), OPTS))
    local v, err = r:command("NOSUCHCOMMAND", "x")
    assert.is_nil(v)
    assert.matches("^redis 127.0.0.1:" .. PORT .. ": ERR unknown command", err)
    r:close()
  end)

  describe("authenticates", function()
    it("with the password alone", function()
      local r = assert(redis.connect(conf(), OPTS))
      assert.equal("PONG", r:command("PING"))
      r:close()
    end)

    it("not at all without a password: the server refuses commands", function()
      local r = assert(redis.connect(conf { password = false }, OPTS))
      local v, err = r:command("GET", "a")
      assert.is_nil(v)
      assert.matches("NOAUTH", err)
      r:close()
    end)

    it("and says so, without the password, when it is wrong", function()
      local r, err = redis.connect(conf { password = "wrong-" .. PASSWORD }, OPTS)
      assert.is_nil(r)
      assert.matches("^redis 127.0.0.1:" .. PORT .. ": AUTH failed: WRONGPASS", err)
      assert.is_nil(err:find(PASSWORD, 1, true))
    end)

    it("with an ACL user and its password", function()
      assert.equal("OK", srv:cli("ACL", "SETUSER", "kong", "on", ">kong-pass", "~*",
                                 "+@all"))
      local r = assert(redis.connect(conf { username = "kong", password = "kong-pass" },
                                     OPTS))
      assert.equal("kong", r:command("ACL", "WHOAMI"))
      r:close()
      local _, err = redis.connect(conf { username = "kong", password = "nope" }, OPTS)
      assert.matches("AUTH failed: WRONGPASS", err)
    end)
  end)

  it("selects the configured database", function()
    local r3 = assert(redis.connect(conf { database = 3 }, OPTS))
    assert.equal("OK", r3:command("SET", "db:k", "three"))
    local r0 = assert(redis.connect(conf(), OPTS))
    assert.equal(redis.null, r0:command("GET", "db:k"))
    r0:close()
    assert.equal("three", r3:command("GET", "db:k"))
    r3:close()
    local r, err = redis.connect(conf { database = 99 }, OPTS)
    assert.is_nil(r)
    assert.matches("SELECT failed: ERR DB index is out of range", err)
  end)

  it("names the server when it cannot connect", function()
    local r, err = redis.connect(conf { port = PORT + 1 }, OPTS)
    assert.is_nil(r)
    assert.equal("redis 127.0.0.1:" .. (PORT + 1) .. ": connect: connection refused", err)
    local _, herr = redis.connect(conf { host = false }, OPTS)
    assert.equal("redis: no host configured", herr)
  end)

  describe("against a server that does not speak RESP", function()
    local fake

    before_each(function()
      fake = assert(socket.bind("127.0.0.1", 0))
    end)

    after_each(function()
      fake:close()
    end)

    local function connect_fake(timeout)
      local _, port = fake:getsockname()
      local r = assert(redis.connect({ host = "127.0.0.1", port = tonumber(port),
                                       timeout = timeout }, OPTS))
      local peer = assert(fake:accept())
      return r, peer
    end

    it("rejects a reply that is not RESP and closes the connection", function()
      local r, peer = connect_fake(1000)
      peer:send("HTTP/1.1 400 Bad Request\r\n")
      local v, err = r:command("PING")
      assert.is_nil(v)
      assert.matches("bad reply: unexpected 'HTTP/1.1 400 Bad Request' %(not RESP%)", err)
      local v2, err2 = r:command("PING")
      assert.is_nil(v2)
      assert.matches("not connected", err2)
      peer:close()
    end)

    it("rejects a bad bulk length and a bulk without CRLF", function()
      local r, peer = connect_fake(1000)
      peer:send("$abc\r\n")
      local _, err = r:command("GET", "x")
      assert.matches("bad reply: bulk length 'abc'", err)
      peer:close()
      r, peer = connect_fake(1000)
      peer:send("$2\r\nokXY")
      _, err = r:command("GET", "x")
      assert.matches("bad reply: bulk string not ended by CRLF", err)
      peer:close()
    end)

    it("times out a read after the configured timeout", function()
      local r, peer = connect_fake(200)
      local v, err = r:command("PING")
      assert.is_nil(v)
      assert.matches("read: timeout", err)
      peer:close()
    end)
  end)

  it("fails cleanly across a server restart, and connects again afterwards", function()
    local r = assert(redis.connect(conf(), OPTS))
    assert.equal("OK", r:command("SET", "restart:k", "v"))
    srv:stop()
    local v, err = r:command("GET", "restart:k")
    assert.is_nil(v)
    assert.matches("^redis 127.0.0.1:" .. PORT .. ": ", err)
    local r2, cerr = redis.connect(conf(), OPTS)
    assert.is_nil(r2)
    assert.matches("connect: connection refused", cerr)
    srv:start()
    r2 = assert(redis.connect(conf(), OPTS))
    assert.equal(redis.null, r2:command("GET", "restart:k"))   -- nothing persisted
    assert.equal("PONG", r2:command("PING"))
    r2:close()
  end)
end)
