# canary-router — build, test, run and benchmark.
#
#   make run     start the demo (upstreams + gateway) on a fresh Debian 12
#   make test    every test: cmocka (plain, ASan+UBSan, valgrind), luacheck,
#                busted (schema, unit, integration), promtool
#   make test-kong  the integration, progression, chaos and hostile specs on
#                an installed Kong: KONG_ENV=/opt/kong-3.9.1/env.sh make test-kong
#   make bench   benchmarks; one "name value unit" line per figure and
#                build/bench.json
#
# `run` and `test` install their Debian packages first (`make deps`), so
# each works as the first command on a new machine.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build
# Keep the objects of every build flavour (sanitizer, fuzz) between runs.
.SECONDARY:

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
BINDIR     ?= $(PREFIX)/bin
BUILD      := build
CC         := gcc

# Debian packages this project uses (build, test, run, bench).
DEB_PACKAGES := build-essential pkg-config clang libclang-rt-14-dev \
	libck-dev libssl-dev libcmocka-dev valgrind \
	luajit2 libluajit2-5.1-dev lua-busted lua-cjson lua-yaml lua-check lua-penlight lua-socket \
	nginx-light libnginx-mod-http-lua lua-resty-core lua-resty-lrucache \
	luarocks wrk prometheus curl procps iproute2 redis-server

WARN    := -Wall -Wextra -Wstrict-prototypes -Wshadow -Wpointer-arith \
	-Wcast-align -Wmissing-prototypes -Werror
CSTD    := -std=c11 -D_GNU_SOURCE
INCS    := -Inative/include -Inative/src
CFLAGS  ?= -O2 -g
ALL_CFLAGS := $(CSTD) $(WARN) $(INCS) -fPIC -fvisibility=hidden $(CFLAGS)
LDLIBS  := -lcrypto -lpthread -lm
SAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fno-sanitize-recover=all

LIB_SRC  := $(wildcard native/src/*.c)
LIB_OBJ  := $(LIB_SRC:native/src/%.c=$(BUILD)/obj/%.o)
# The cmocka binaries (plain and sanitizer) link objects with the fault
# points compiled in (native/src/fault.c); the shipped library has none.
FAULT    := -DCANARY_FAULT_POINTS
TEST_OBJ := $(LIB_SRC:native/src/%.c=$(BUILD)/tobj/%.o)
SAN_OBJ  := $(LIB_SRC:native/src/%.c=$(BUILD)/san/obj/%.o)
TEST_SRC := $(wildcard native/tests/test_*.c)
TESTS    := $(TEST_SRC:native/tests/%.c=$(BUILD)/tests/%)
SAN_TESTS := $(TEST_SRC:native/tests/%.c=$(BUILD)/san/tests/%)
HDRS     := $(wildcard native/include/*.h native/src/*.h native/tests/*.h)

# Lua modules as Kong loads them: kong.plugins.canary-router.<name>
PLUGIN_LUA := $(wildcard plugin/*.lua schema/schema.lua)
LUA_TREE   := $(BUILD)/lua/kong/plugins/canary-router

LUA_ENV := LUA_PATH="$(CURDIR)/$(BUILD)/lua/?.lua;$(CURDIR)/$(BUILD)/lua/?/init.lua;$(CURDIR)/kong/host/lib/?.lua;$(CURDIR)/spec/?.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;" \
	LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"

.PHONY: deps build lib cli lua test test-native test-san test-valgrind \
	check-cdef lint test-lua test-prom test-summary test-kong bench run reload stop install install-rock \
	clean format

# ---- dependencies ------------------------------------------------------

deps:
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(DEB_PACKAGES) 2>/dev/null \
		| awk '$$NF != "installed" {print $$1}'; \
		for p in $(DEB_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// }" ]; then \
		echo "deps: installing $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# ---- build -------------------------------------------------------------

build: lib cli lua

lib: $(BUILD)/libcanary.so

$(BUILD)/obj/%.o: native/src/%.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tobj/%.o: native/src/%.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(FAULT) -c -o $@ $<

$(BUILD)/san/obj/%.o: native/src/%.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(INCS) -fPIC $(SAN_FLAGS) $(FAULT) -c -o $@ $<

$(BUILD)/libcanary.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS)

$(BUILD)/libcanary.a: $(LIB_OBJ)
	ar rcs $@ $^

cli: $(BUILD)/canarystat

$(BUILD)/canarystat: $(wildcard native/cli/*.c) $(BUILD)/libcanary.a $(HDRS)
	@if [ -n "$(wildcard native/cli/*.c)" ]; then \
		$(CC) $(CSTD) $(WARN) $(INCS) $(CFLAGS) -o $@ $(wildcard native/cli/*.c) $(BUILD)/libcanary.a $(LDLIBS) -lm; \
	else touch $@; fi

lua: $(PLUGIN_LUA)
	@mkdir -p $(LUA_TREE)
	@for f in $(wildcard plugin/*.lua); do ln -sf $(CURDIR)/$$f $(LUA_TREE)/$$(basename $$f); done
	@if [ -f schema/schema.lua ]; then ln -sf $(CURDIR)/schema/schema.lua $(LUA_TREE)/schema.lua; fi

# ---- tests -------------------------------------------------------------

$(BUILD)/tests/%: native/tests/%.c $(TEST_OBJ) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(INCS) $(FAULT) -O1 -g -o $@ $< $(TEST_OBJ) $(LDLIBS) -lcmocka -lm

$(BUILD)/san/tests/%: native/tests/%.c $(SAN_OBJ) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(INCS) $(FAULT) $(SAN_FLAGS) -o $@ $< $(SAN_OBJ) $(LDLIBS) -lcmocka -lm

test: deps build
	@$(MAKE) --no-print-directory test-native test-san test-valgrind fuzz-smoke check-cdef lint test-lua test-prom test-summary
	@echo "make test: all suites passed"

test-native: $(TESTS)
	@for t in $(TESTS); do echo "== $$t"; $$t; done

test-san: $(SAN_TESTS)
	@for t in $(SAN_TESTS); do echo "== $$t (ASan+UBSan)"; \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $$t; done

# valgrind runs the same binaries with smaller sample counts (CANARY_TEST_SCALE).
# No gdbserver FIFOs: a test child that drops to another uid could not
# remove them.
test-valgrind: $(TESTS)
	@for t in $(TESTS); do echo "== $$t (valgrind)"; \
		CANARY_TEST_SCALE=50 valgrind -q --vgdb=no --error-exitcode=99 --leak-check=full \
		--errors-for-leak-kinds=definite,indirect --trace-children=yes $$t >/dev/null; done

# The ffi.cdef in plugin/engine.lua must declare exactly what canary.h does.
check-cdef: lib
	@$(LUA_ENV) luajit spec/tools/check_cdef.lua native/include/canary.h plugin/engine.lua

lint:
	@luacheck -q plugin schema spec kong/host

test-lua: build
	@rm -f $(BUILD)/test-summary.txt
	@$(LUA_ENV) CANARY_TEST_SUMMARY=$(CURDIR)/$(BUILD)/test-summary.txt \
		luajit /usr/bin/busted --no-auto-insulate -o utfTerminal spec/

# The figures of the chaos, hostile-input and fuzz runs; fails when a
# request failed or a count was lost.
test-summary:
	@luajit spec/tools/summary.lua $(BUILD)/test-summary.txt $(BUILD)/fuzz-summary.txt

# The same specs on real Kong (kong/test-kong/run.sh): DB-less, PostgreSQL
# (Debian's, installed here, not by `make deps`), unprivileged workers.
# Without KONG_ENV it says so and does nothing.
test-kong:
	@if [ -n "$${KONG_ENV:-}" ]; then \
		$(MAKE) --no-print-directory deps DEB_PACKAGES="$(DEB_PACKAGES) postgresql" && \
		$(MAKE) --no-print-directory build; fi
	@bash kong/test-kong/run.sh $(KONG_SETUPS)

test-prom:
	@if ls kong/*.rules.yml >/dev/null 2>&1; then \
		promtool check rules kong/*.rules.yml && promtool test rules kong/tests/*.yml; fi

# ---- bench, run --------------------------------------------------------

# C benchmarks (bench.c: engine vs lock-based baselines; accuracy.c;
# scale.c), linked statically against the engine.
BENCH_BINS := $(BUILD)/bench/bench $(BUILD)/bench/accuracy $(BUILD)/bench/scale \
	$(BUILD)/bench/openloop \
	$(BUILD)/bench/judge \
	$(BUILD)/bench/vgtoggle.so

$(BUILD)/bench/%: native/bench/%.c $(BUILD)/libcanary.a $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) $(INCS) -O2 -g -o $@ $< $(BUILD)/libcanary.a $(LDLIBS)

# callgrind's counting switch for stage_kong_own.sh (valgrind's header).
$(BUILD)/bench/vgtoggle.so: native/bench/vgtoggle.c
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(WARN) -O2 -shared -fPIC -o $@ $<

# With KONG_ENV the real-Kong stages run too; the propagation stage needs
# Debian's PostgreSQL, installed here as for test-kong.
bench: deps build $(BENCH_BINS)
	@if [ -n "$${KONG_ENV:-}" ]; then \
		$(MAKE) --no-print-directory deps DEB_PACKAGES="$(DEB_PACKAGES) postgresql"; fi
	@bash native/bench/run.sh

run: deps build
	@bash kong/host/run.sh

reload:
	@bash kong/host/ctl.sh reload

stop:
	@bash kong/host/ctl.sh stop

# ---- fuzzing (libFuzzer, clang) ------------------------------------------
# make fuzz FUZZ_SECONDS=N runs every target longer; make test runs
# fuzz-smoke (8 s per target plus every regression input).
include native/fuzz/fuzz.mk

# ---- install (used by the rockspec) --------------------------------------

install: lib cli
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR)
	install -m 0755 $(BUILD)/libcanary.so $(DESTDIR)$(LIBDIR)/libcanary.so
	@if [ -s $(BUILD)/canarystat ]; then install -m 0755 $(BUILD)/canarystat $(DESTDIR)$(BINDIR)/canarystat; fi

# `luarocks make` (see the rockspec): modules into LUA_LUADIR as
# kong.plugins.canary-router.*, libcanary.so into LUA_LIBDIR (on Kong's
# lua_package_cpath), canarystat into BINDIR.
LUA_LUADIR ?= $(PREFIX)/share/lua/5.1
LUA_LIBDIR ?= $(PREFIX)/lib/lua/5.1

install-rock: lib cli
	install -d $(DESTDIR)$(LUA_LUADIR)/kong/plugins/canary-router $(DESTDIR)$(LUA_LIBDIR) $(DESTDIR)$(BINDIR)
	install -m 0644 plugin/*.lua schema/schema.lua $(DESTDIR)$(LUA_LUADIR)/kong/plugins/canary-router/
	install -m 0755 $(BUILD)/libcanary.so $(DESTDIR)$(LUA_LIBDIR)/libcanary.so
	@if [ -s $(BUILD)/canarystat ]; then install -m 0755 $(BUILD)/canarystat $(DESTDIR)$(BINDIR)/canarystat; fi

format:
	clang-format -i native/include/*.h native/src/*.[ch] native/tests/*.[ch] native/cli/*.c native/bench/*.c

clean:
	rm -rf $(BUILD) servroot
