/*
 * fuzz_common.h - helpers shared by the libFuzzer targets in native/fuzz.
 *
 * Every target is one fuzz_<name>.c plus fuzz_common.c, linked with the
 * library sources, all built with -fsanitize=fuzzer,address,undefined (see
 * fuzz.mk).  The helpers here are what each target would otherwise copy:
 *
 *   - an input reader that never fails: fuzz bytes are consumed field by
 *     field and a field past the end of the input reads as zero, so every
 *     prefix of an input is itself a meaningful input;
 *   - a per-process temporary directory for segment files, removed at
 *     exit (libFuzzer leaves through exit(), so atexit runs; after a crash
 *     the directory stays behind for inspection);
 *   - FZ_CHECK, which reports a broken invariant and aborts, so libFuzzer
 *     saves the input as a crash artifact like any sanitizer report;
 *   - a strict checker of the Prometheus text exposition format, shared by
 *     fuzz_prom (sane data) and fuzz_segment (corrupt data);
 *   - fz_known_bug(), the switch that lets a fuzzing campaign step around
 *     an engine bug that is already reported (see fuzz.mk, FUZZ_KNOWN_BUGS)
 *     while the regression inputs keep failing until it is fixed.
 */
#ifndef CANARY_FUZZ_COMMON_H
#define CANARY_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "canary.h"

/* The libFuzzer entry points; declared here so -Wmissing-prototypes holds. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Reports `expr` and the formatted detail on stderr, then aborts. */
void fz_fail(const char *file, int line, const char *expr, const char *fmt,
             ...) __attribute__((noreturn, format(printf, 4, 5)));

/* Aborts with a message when `cond` is false.  Not compiled out: these
 * checks are the point of the targets. */
#define FZ_CHECK(cond, ...)                                                   \
  do {                                                                        \
    if (!(cond))                                                              \
      fz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                        \
  } while (0)

/* ---- input reader -------------------------------------------------- */

struct fz_in {
  const uint8_t *p;
  size_t n;
};

uint8_t fz_u8(struct fz_in *in);
uint16_t fz_u16(struct fz_in *in); /* little-endian */
uint32_t fz_u32(struct fz_in *in);
uint64_t fz_u64(struct fz_in *in);

/* Copies up to `want` bytes into dst, zero-fills the rest of `want`, and
 * returns how many came from the input. */
size_t fz_bytes(struct fz_in *in, void *dst, size_t want);

/* A malloc'd copy of the next `len` bytes (fewer when the input ends,
 * *got says how many), sized exactly, so ASan flags any read past the
 * length the engine was given.  Never NULL; free() it. */
char *fz_dup(struct fz_in *in, size_t len, size_t *got);

/* ---- files --------------------------------------------------------- */

/* "<tmpdir>/<name>" for this process; the directory is created on first
 * use under $TMPDIR (or /tmp) and removed with its contents at exit. */
void fz_path(char *out, size_t cap, const char *name);

/* Writes `len` bytes as the whole content of `path` (truncating), and
 * extends the file with zeros to `size` bytes when size > len. */
void fz_write_file(const char *path, const void *data, size_t len,
                   uint64_t size);

/* Reads at most cap bytes of `path` into buf; returns the byte count, or
 * -1 when the file cannot be opened. */
long fz_read_file(const char *path, void *buf, size_t cap);

/* Removes every "<path>.bad-*" file that canary_seg_open() set aside,
 * and returns how many there were.  When `expect` is not NULL, each must
 * hold exactly expect_len bytes equal to `expect` (the engine promises to
 * keep a bad file for forensics, not to alter it). */
int fz_remove_bad(const char *path, const void *expect, size_t expect_len);

/* ---- known, reported engine bugs ------------------------------------ */

/* 1 when `id` is listed in $CANARY_FUZZ_KNOWN_BUGS (space separated). */
int fz_known_bug(const char *id);

/* ---- Prometheus text format ---------------------------------------- */

#define FZ_PROM_LABELS 8
#define FZ_PROM_VALUE_MAX 512

struct fz_prom_label {
  char name[64];
  char value[FZ_PROM_VALUE_MAX]; /* unescaped */
  size_t value_len;
};

struct fz_prom_sample {
  char name[128];
  const char *family; /* the family whose HELP/TYPE preceded it */
  const char *type;   /* that family's TYPE */
  int nlabels;
  struct fz_prom_label labels[FZ_PROM_LABELS];
  double value;
};

typedef void (*fz_prom_fn)(const struct fz_prom_sample *s, void *ctx);

/* Checks that buf[0, len) is a well-formed exposition: only "# HELP" and
 * "# TYPE" comments and `name{labels} value` samples, one per line, each
 * ending in '\n'; label values hold no raw quote, newline or other control
 * byte and only the escapes \\ \" \n; every sample belongs to the family
 * announced just before it (histograms: _bucket/_sum/_count, summaries:
 * quantiles/_sum/_count); `le` only on buckets and `quantile` only on
 * summary quantiles; no family is announced twice; no NUL byte anywhere.
 * Calls fn (may be NULL) for every sample.  Aborts on the first
 * violation. */
void fz_prom_check(const char *buf, size_t len, fz_prom_fn fn, void *ctx);

/* Value of label `name` in s, or NULL. */
const struct fz_prom_label *fz_prom_label(const struct fz_prom_sample *s,
                                          const char *name);

/* Renders seg fully into a malloc'd buffer (free() it), checking the
 * length contract: sizing call, exact-capacity call, nothing written past
 * the reported length.  Returns NULL when rendering fails for a reason
 * other than ENOSPC (then *rc_out says why). */
char *fz_prom_render(const canary_seg_t *seg, size_t *len_out, int *rc_out);

#endif /* CANARY_FUZZ_COMMON_H */
