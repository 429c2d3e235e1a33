/*
 * fuzz_common.c - see fuzz_common.h.
 */
#include "fuzz_common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* UBSan's defaults for every target.  The targets are built with
 * -fno-sanitize-recover=all except for `alignment`, which stays
 * recoverable so that a campaign can suppress one reported misaligned
 * access (fuzz.mk passes known-bugs.supp; UBSan honours suppressions only
 * for recoverable checks).  halt_on_error=1 keeps every report that is
 * not suppressed fatal, also when a binary is run by hand. */
const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void) {
  return "halt_on_error=1:print_stacktrace=1";
}

void fz_fail(const char *file, int line, const char *expr, const char *fmt,
             ...) {
  va_list ap;
  fprintf(stderr, "\n==FUZZ CHECK FAILED== %s:%d: %s\n  ", file, line, expr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  abort();
}

/* ---- input reader ---------------------------------------------------- */

uint8_t fz_u8(struct fz_in *in) {
  uint8_t v = 0;
  fz_bytes(in, &v, 1);
  return v;
}

uint16_t fz_u16(struct fz_in *in) {
  uint8_t b[2];
  fz_bytes(in, b, 2);
  return (uint16_t)(b[0] | b[1] << 8);
}

uint32_t fz_u32(struct fz_in *in) {
  uint32_t lo = fz_u16(in);
  return lo | (uint32_t)fz_u16(in) << 16;
}

uint64_t fz_u64(struct fz_in *in) {
  uint64_t lo = fz_u32(in);
  return lo | (uint64_t)fz_u32(in) << 32;
}

size_t fz_bytes(struct fz_in *in, void *dst, size_t want) {
  size_t got = want < in->n ? want : in->n;
  if (got > 0)
    memcpy(dst, in->p, got);
  if (want > got)
    memset((char *)dst + got, 0, want - got);
  in->p += got;
  in->n -= got;
  return got;
}

char *fz_dup(struct fz_in *in, size_t len, size_t *got) {
  size_t n = len < in->n ? len : in->n;
  /* malloc(0) under ASan returns a distinct pointer whose every access
   * is reported, which is what an empty field should be. */
  char *p = malloc(n);
  FZ_CHECK(p != NULL || n == 0, "harness: out of memory");
  if (n > 0)
    memcpy(p, in->p, n);
  in->p += n;
  in->n -= n;
  *got = n;
  return p;
}

/* ---- files ------------------------------------------------------------ */

static char tmpdir[PATH_MAX];

static void remove_tmpdir(void) {
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  char p[PATH_MAX + 256];

  if (d == NULL)
    return;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(tmpdir);
}

static const char *fz_tmpdir(void) {
  if (tmpdir[0] == '\0') {
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0')
      base = "/tmp";
    snprintf(tmpdir, sizeof tmpdir, "%s/canary-fuzz-XXXXXX", base);
    FZ_CHECK(mkdtemp(tmpdir) != NULL, "harness: mkdtemp %s: %s", tmpdir,
             strerror(errno));
    atexit(remove_tmpdir);
  }
  return tmpdir;
}

void fz_path(char *out, size_t cap, const char *name) {
  int n = snprintf(out, cap, "%s/%s", fz_tmpdir(), name);
  FZ_CHECK(n > 0 && (size_t)n < cap, "harness: path too long");
}

void fz_write_file(const char *path, const void *data, size_t len,
                   uint64_t size) {
  const char *p = data;
  size_t done = 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

  FZ_CHECK(fd >= 0, "harness: open %s: %s", path, strerror(errno));
  while (done < len) {
    ssize_t w = write(fd, p + done, len - done);
    FZ_CHECK(w > 0, "harness: write %s: %s", path, strerror(errno));
    done += (size_t)w;
  }
  if (size > len)
    FZ_CHECK(ftruncate(fd, (off_t)size) == 0, "harness: ftruncate %s: %s",
             path, strerror(errno));
  close(fd);
}

long fz_read_file(const char *path, void *buf, size_t cap) {
  size_t done = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd < 0)
    return -1;
  while (done < cap) {
    ssize_t r = read(fd, (char *)buf + done, cap - done);
    if (r <= 0)
      break;
    done += (size_t)r;
  }
  close(fd);
  return (long)done;
}

int fz_remove_bad(const char *path, const void *expect, size_t expect_len) {
  const char *slash = strrchr(path, '/');
  char dir[PATH_MAX], prefix[NAME_MAX + 8], p[PATH_MAX + 256];
  DIR *d;
  struct dirent *e;
  int found = 0;

  FZ_CHECK(slash != NULL, "harness: path %s has no directory", path);
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  snprintf(prefix, sizeof prefix, "%s.bad-", slash + 1);
  d = opendir(dir);
  FZ_CHECK(d != NULL, "harness: opendir %s: %s", dir, strerror(errno));
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
      continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (expect != NULL) {
      struct stat st;
      char *got = malloc(expect_len + 1);
      long n;
      FZ_CHECK(got != NULL, "harness: out of memory");
      n = fz_read_file(p, got, expect_len + 1);
      FZ_CHECK(stat(p, &st) == 0 && (uint64_t)st.st_size == expect_len &&
                   n == (long)expect_len &&
                   (expect_len == 0 || memcmp(got, expect, expect_len) == 0),
               "the file set aside as %s is not the file that was there "
               "(%lld bytes, expected %zu)",
               p, (long long)st.st_size, expect_len);
      free(got);
    }
    unlink(p);
    found++;
  }
  closedir(d);
  return found;
}

/* ---- known bugs -------------------------------------------------------- */

int fz_known_bug(const char *id) {
  const char *list = getenv("CANARY_FUZZ_KNOWN_BUGS");
  size_t n = strlen(id);

  for (const char *p = list; p != NULL && *p != '\0';) {
    size_t w;
    while (*p == ' ' || *p == ',')
      p++;
    w = strcspn(p, " ,");
    if (w == n && memcmp(p, id, n) == 0)
      return 1;
    p += w;
  }
  return 0;
}

/* ---- Prometheus text format -------------------------------------------- */

static int metric_start(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         c == ':';
}

static int metric_char(unsigned char c) {
  return metric_start(c) || (c >= '0' && c <= '9');
}

/* Label names may not contain ':'. */
static int label_start(unsigned char c) {
  return metric_start(c) && c != ':';
}

static int label_char(unsigned char c) {
  return metric_char(c) && c != ':';
}

/* Reads a name at *p (line end e) into out; returns its length or 0. */
static size_t take_name(const char **p, const char *e, char *out, size_t cap,
                        int label) {
  const char *s = *p;
  size_t n = 0;
  if (s >= e || !(label ? label_start((unsigned char)*s)
                        : metric_start((unsigned char)*s)))
    return 0;
  while (s + n < e && (label ? label_char((unsigned char)s[n])
                             : metric_char((unsigned char)s[n])))
    n++;
  if (n >= cap)
    return 0;
  memcpy(out, s, n);
  out[n] = '\0';
  *p = s + n;
  return n;
}

struct family {
  char name[128];
  char type[16];
};

struct prom_state {
  struct family fams[64];
  int nfams;
  int pending_help; /* a HELP was read, its TYPE must come next */
  const char *line; /* for messages */
  size_t line_len;
};

#define LINE_CHECK(st, cond, what)                                            \
  FZ_CHECK(cond, "bad exposition line (%s): \"%.*s\"", what,                  \
           (int)((st)->line_len > 300 ? 300 : (st)->line_len), (st)->line)

static void comment_line(struct prom_state *st, const char *p, const char *e) {
  char name[128];
  int help;

  LINE_CHECK(st,
             (size_t)(e - p) > 7 && (memcmp(p, "# HELP ", 7) == 0 ||
                                     memcmp(p, "# TYPE ", 7) == 0),
             "comment other than # HELP / # TYPE");
  help = p[2] == 'H';
  p += 7;
  LINE_CHECK(st, take_name(&p, e, name, sizeof name, 0) > 0,
             "bad metric name in comment");
  LINE_CHECK(st, p < e && *p == ' ' && p + 1 < e, "comment without text");
  p++;
  if (help) {
    LINE_CHECK(st, !st->pending_help, "HELP after HELP");
    for (int i = 0; i < st->nfams; i++)
      LINE_CHECK(st, strcmp(st->fams[i].name, name) != 0,
                 "family announced twice");
    LINE_CHECK(st, st->nfams < (int)(sizeof st->fams / sizeof st->fams[0]),
               "more families than the checker holds");
    snprintf(st->fams[st->nfams].name, sizeof st->fams[0].name, "%s", name);
    st->fams[st->nfams].type[0] = '\0';
    st->nfams++;
    st->pending_help = 1;
    return;
  }
  LINE_CHECK(
      st, st->pending_help && strcmp(st->fams[st->nfams - 1].name, name) == 0,
      "TYPE without the family's HELP just before it");
  {
    static const char *const types[] = {"counter", "gauge", "histogram",
                                        "summary", "untyped"};
    size_t n = (size_t)(e - p);
    int ok = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
      if (strlen(types[i]) == n && memcmp(types[i], p, n) == 0)
        ok = 1;
    LINE_CHECK(st, ok, "unknown TYPE");
    snprintf(st->fams[st->nfams - 1].type, sizeof st->fams[0].type, "%.*s",
             (int)n, p);
  }
  st->pending_help = 0;
}

/* Parses `"value"` at *p into l; returns 0 on a format violation. */
static int take_value(const char **pp, const char *e,
                      struct fz_prom_label *l) {
  const char *p = *pp;
  size_t n = 0;
  if (p >= e || *p != '"')
    return 0;
  for (p++; p < e && *p != '"'; p++) {
    unsigned char c = (unsigned char)*p;
    char out;
    if (c == '\\') {
      if (++p >= e)
        return 0;
      if (*p == '\\' || *p == '"')
        out = *p;
      else if (*p == 'n')
        out = '\n';
      else
        return 0; /* the format defines no other escape */
    } else if (c < 0x20 || c == 0x7f) {
      return 0; /* a raw control byte could end or corrupt the line */
    } else {
      out = (char)c;
    }
    if (n + 1 >= sizeof l->value)
      return 0;
    l->value[n++] = out;
  }
  if (p >= e)
    return 0; /* unterminated */
  l->value[n] = '\0';
  l->value_len = n;
  *pp = p + 1;
  return 1;
}

static void sample_line(struct prom_state *st, const char *p, const char *e,
                        fz_prom_fn fn, void *ctx) {
  struct fz_prom_sample s;
  struct family *f;
  char num[64];
  char *end;
  size_t n;

  memset(&s, 0, sizeof s);
  LINE_CHECK(st, st->nfams > 0 && !st->pending_help,
             "sample before its family's HELP and TYPE");
  f = &st->fams[st->nfams - 1];
  LINE_CHECK(st, take_name(&p, e, s.name, sizeof s.name, 0) > 0,
             "bad metric name");
  n = strlen(f->name);
  /* Histograms have only _bucket/_sum/_count series, summaries their
   * quantiles plus _sum/_count, every other type the bare name. */
  if (strcmp(f->type, "histogram") == 0 || strcmp(f->type, "summary") == 0) {
    const char *suffix = s.name + n;
    LINE_CHECK(st,
               strncmp(s.name, f->name, n) == 0 &&
                   ((strcmp(f->type, "histogram") == 0 &&
                     strcmp(suffix, "_bucket") == 0) ||
                    (strcmp(f->type, "summary") == 0 && *suffix == '\0') ||
                    strcmp(suffix, "_sum") == 0 ||
                    strcmp(suffix, "_count") == 0),
               "sample outside the family announced before it");
  } else {
    LINE_CHECK(st, strcmp(s.name, f->name) == 0,
               "sample outside the family announced before it");
  }
  if (p < e && *p == '{') {
    p++;
    while (p < e && *p != '}') {
      struct fz_prom_label *l;
      LINE_CHECK(st, s.nlabels < FZ_PROM_LABELS, "too many labels");
      l = &s.labels[s.nlabels];
      LINE_CHECK(st, take_name(&p, e, l->name, sizeof l->name, 1) > 0,
                 "bad label name");
      LINE_CHECK(st, p < e && *p == '=', "label without '='");
      p++;
      LINE_CHECK(st, take_value(&p, e, l),
                 "bad label value (raw quote or control byte, bad escape, "
                 "or unterminated)");
      for (int i = 0; i < s.nlabels; i++)
        LINE_CHECK(st, strcmp(s.labels[i].name, l->name) != 0,
                   "label repeated");
      s.nlabels++;
      if (p < e && *p == ',')
        p++;
      else
        LINE_CHECK(st, p < e && *p == '}', "labels not closed by '}'");
    }
    LINE_CHECK(st, p < e && *p == '}', "labels not closed by '}'");
    p++;
  }
  LINE_CHECK(st, p < e && *p == ' ', "no single space before the value");
  p++;
  n = (size_t)(e - p);
  LINE_CHECK(st, n > 0 && n < sizeof num && *p != ' ' && *p != '\t',
             "missing or oversized value");
  memcpy(num, p, n);
  num[n] = '\0';
  if (strcmp(num, "+Inf") == 0 || strcmp(num, "-Inf") == 0 ||
      strcmp(num, "NaN") == 0) {
    s.value = strtod(num, NULL);
  } else {
    /* Plain decimal numbers only: strtod would also take "inf", hex
     * floats and leading blanks, which the format does not allow. */
    for (size_t i = 0; i < n; i++)
      LINE_CHECK(st,
                 (num[i] >= '0' && num[i] <= '9') || num[i] == '.' ||
                     num[i] == '-' || num[i] == '+' || num[i] == 'e' ||
                     num[i] == 'E',
                 "value is not a decimal number");
    errno = 0;
    s.value = strtod(num, &end);
    LINE_CHECK(st, end == num + n && errno == 0, "value is not a number");
  }
  /* "le" belongs to histogram buckets and "quantile" to summary
   * quantiles, each there and nowhere else. */
  n = strlen(f->name);
  LINE_CHECK(st,
             (fz_prom_label(&s, "le") != NULL) ==
                 (strcmp(f->type, "histogram") == 0 &&
                  strcmp(s.name + n, "_bucket") == 0),
             "le label missing from a bucket or outside one");
  LINE_CHECK(st,
             (fz_prom_label(&s, "quantile") != NULL) ==
                 (strcmp(f->type, "summary") == 0 && s.name[n] == '\0'),
             "quantile label missing from a summary quantile or outside one");
  s.family = f->name;
  s.type = f->type;
  if (fn != NULL)
    fn(&s, ctx);
}

void fz_prom_check(const char *buf, size_t len, fz_prom_fn fn, void *ctx) {
  static struct prom_state st; /* 10 KiB; off the fuzzer's stack */
  size_t pos = 0;

  memset(&st, 0, sizeof st);
  FZ_CHECK(len > 0 && buf[len - 1] == '\n',
           "exposition is empty or does not end with a newline");
  FZ_CHECK(memchr(buf, '\0', len) == NULL, "NUL byte at %zu in exposition",
           (size_t)((const char *)memchr(buf, '\0', len) - buf));
  while (pos < len) {
    const char *p = buf + pos;
    const char *e = memchr(p, '\n', len - pos);
    st.line = p;
    st.line_len = (size_t)(e - p);
    LINE_CHECK(&st, e > p, "empty line");
    if (*p == '#')
      comment_line(&st, p, e);
    else
      sample_line(&st, p, e, fn, ctx);
    pos = (size_t)(e - buf) + 1;
  }
  FZ_CHECK(!st.pending_help, "exposition ends after a HELP without TYPE");
}

const struct fz_prom_label *fz_prom_label(const struct fz_prom_sample *s,
                                          const char *name) {
  for (int i = 0; i < s->nlabels; i++)
    if (strcmp(s->labels[i].name, name) == 0)
      return &s->labels[i];
  return NULL;
}

#define SENTINEL_BYTES 64

char *fz_prom_render(const canary_seg_t *seg, size_t *len_out, int *rc_out) {
  size_t need = 0, len = 0;
  char *buf;
  int rc;

  /* Sizing call: no buffer at all must still report the full length. */
  rc = canary_prom_render(seg, NULL, 0, &need);
  *rc_out = rc;
  if (rc != CANARY_ENOSPC) {
    FZ_CHECK(rc < 0, "render into no buffer returned %d, not ENOSPC", rc);
    return NULL;
  }
  FZ_CHECK(need > 0, "ENOSPC with a needed length of 0");
  buf = malloc(need + SENTINEL_BYTES);
  FZ_CHECK(buf != NULL, "harness: out of memory");
  memset(buf, 0xa5, need + SENTINEL_BYTES);
  /* Exactly the reported length must be enough, and nothing may be
   * written past it (a single process: nothing changes in between). */
  rc = canary_prom_render(seg, buf, need, &len);
  *rc_out = rc;
  FZ_CHECK(rc == 0, "render into the %zu bytes it asked for returned %d (%s)",
           need, rc, canary_strerror(rc));
  FZ_CHECK(len == need, "render reported %zu bytes after asking for %zu", len,
           need);
  for (size_t i = need; i < need + SENTINEL_BYTES; i++)
    FZ_CHECK((unsigned char)buf[i] == 0xa5,
             "render wrote byte %zu, past the length %zu it reported", i,
             need);
  *len_out = len;
  return buf;
}
