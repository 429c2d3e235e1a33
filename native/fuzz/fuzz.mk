# native/fuzz/fuzz.mk - libFuzzer targets for libcanary.
#
# Included by the main Makefile, after it defines the variables below:
#
#     include native/fuzz/fuzz.mk
#
# Uses from the main Makefile: CSTD WARN INCS LDLIBS BUILD LIB_SRC.
# LIB_SRC and BUILD appear in prerequisite lists, which make expands when
# it reads this file, so the include must come after they are defined.
# Or stand-alone:  make -f Makefile -f native/fuzz/fuzz.mk fuzz-smoke
#
#   fuzz-build   build every target into $(BUILD)/fuzz/
#   fuzz         run each target for FUZZ_SECONDS (default 60) on a working
#                copy of its corpus ($(BUILD)/fuzz/corpus/<target>, kept
#                between runs so coverage accumulates); prints executions
#                per target and "fuzz: N executions, M crashes"
#   fuzz-smoke   the same for 8 s per target on a fresh copy (make test),
#                then every input under native/fuzz/regressions/<target>/
#                once through its target
#   fuzz-seeds   regenerate the checked-in seed corpora (gen_seeds.c)
#
# Every target fails on any crash, leak, sanitizer report or broken
# invariant; the input is kept under $(BUILD)/fuzz/artifacts/<target>/.
# To replay one:  $(BUILD)/fuzz/fuzz_<target> <file>
#
# Known engine bugs: a campaign steps around bugs that are reported but
# not fixed yet, so it can still find new ones: FUZZ_KNOWN_BUGS names the
# guarded states (see fz_known_bug() in the targets) and known-bugs.supp
# suppresses their UBSan reports.  Each has a reproducer named after it
# under regressions/<target>/, which fuzz-smoke runs with every switch but
# its own: it fails until that bug is fixed.  With the fix, delete the id
# here and its group in known-bugs.supp (the reproducer stays).

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 8
FUZZ_KNOWN_BUGS ?=

FUZZ_DIR     := native/fuzz
FUZZ_OUT     := $(BUILD)/fuzz
FUZZ_TARGETS := fuzz_traceparent fuzz_weights fuzz_prom fuzz_segment
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_OUT)/%)
FUZZ_OBJ     := $(LIB_SRC:native/src/%.c=$(FUZZ_OUT)/obj/%.o)
FUZZ_HDRS    := $(wildcard native/include/*.h native/src/*.h) \
	$(FUZZ_DIR)/fuzz_common.h

# -fno-sanitize-recover=all makes every UBSan report fatal, so libFuzzer
# keeps the input; `alignment` alone stays recoverable so that
# known-bugs.supp can suppress it (UBSan suppresses recoverable checks
# only) -- __ubsan_default_options in fuzz_common.c sets halt_on_error=1,
# which keeps any report that is not suppressed fatal.
FUZZ_SAN := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fno-sanitize-recover=all -fsanitize-recover=alignment
FUZZ_CFLAGS := $(CSTD) $(WARN) $(INCS) -I$(FUZZ_DIR) $(FUZZ_SAN)

.PHONY: fuzz-build fuzz fuzz-smoke fuzz-seeds

fuzz-build: $(FUZZ_BINS)

# The library with coverage instrumentation but without libFuzzer's main.
$(FUZZ_OUT)/obj/%.o: native/src/%.c $(FUZZ_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_OUT)/common.o: $(FUZZ_DIR)/fuzz_common.c $(FUZZ_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_BINS): $(FUZZ_OUT)/%: $(FUZZ_DIR)/%.c $(FUZZ_OUT)/common.o \
		$(FUZZ_OBJ) $(FUZZ_HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< \
		$(FUZZ_OUT)/common.o $(FUZZ_OBJ) $(LDLIBS)

FUZZ_RUN = CANARY_FUZZ_KNOWN_BUGS="$(FUZZ_KNOWN_BUGS)" \
	bash $(FUZZ_DIR)/run.sh $(FUZZ_OUT) $(FUZZ_DIR)

fuzz: $(FUZZ_BINS)
	@$(FUZZ_RUN) keep $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: $(FUZZ_BINS)
	@$(FUZZ_RUN) fresh $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)
	@$(FUZZ_RUN) regressions 0 $(FUZZ_TARGETS)

# Seeds are plain files; this only rewrites them from gen_seeds.c (the
# segment seeds come from the engine, so they follow layout changes).
fuzz-seeds: $(LIB_SRC) $(FUZZ_DIR)/gen_seeds.c $(FUZZ_HDRS)
	@mkdir -p $(FUZZ_OUT)
	$(FUZZ_CC) $(CSTD) $(WARN) $(INCS) -I$(FUZZ_DIR) -O1 -g \
		-o $(FUZZ_OUT)/gen_seeds $(FUZZ_DIR)/gen_seeds.c $(LIB_SRC) $(LDLIBS)
	$(FUZZ_OUT)/gen_seeds $(FUZZ_DIR)
