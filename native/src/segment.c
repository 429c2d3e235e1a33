/*
 * segment.c - creating, validating and attaching the shared segment.
 *
 * The segment is a regular file mapped MAP_SHARED by every nginx worker,
 * by canarystat and by tests.  A file outlives the processes that map it,
 * which is what makes counters monotone across `nginx -s reload` and
 * worker crashes.  It also means the file may be anything when we come
 * to it: left by an older release with another layout, truncated by a
 * full disk, overwritten by an operator's typo.  So nothing in it is
 * trusted before it is checked, and a file that fails a check is renamed
 * aside (kept for forensics) and replaced, never repaired in place.
 *
 * Opening is the only place where processes take a blocking lock: an
 * flock() on the file serialises "create or validate", so that exactly
 * one of several processes opening a new path at once initialises it and
 * the others see a complete header.  flock() locks die with their owner,
 * so a process killed while initialising cannot wedge the others; the
 * next one finds a zero magic or a short file and sets it aside.  Request
 * paths never take this lock.  It must be dropped explicitly (unlock_close):
 * the lock belongs to the open file description, and a MAP_SHARED mapping
 * keeps that alive after close(), so closing the descriptor alone would
 * hold the lock for as long as the segment stays mapped.
 *
 * The header's magic is written last, after a store fence, so a header
 * with the right magic is always complete.  Blocks are allocated with
 * posix_fallocate() at creation: a sparse file on a full disk would
 * otherwise turn the first store into a page into SIGBUS in a worker.
 */
#include "internal.h"

#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROUTES_LIMIT 65536u
#define MAX_GRACE_S 86400u
#define OPEN_ATTEMPTS 4

static uint64_t line_up(uint64_t n) {
  return (n + CANARY_CACHELINE - 1) / CANARY_CACHELINE * CANARY_CACHELINE;
}

uint64_t canary__route_bytes(void) {
  return line_up(sizeof(struct route_hdr)) + sizeof(struct route_seq) +
         CANARY_STRIPES * sizeof(struct route_stripe) +
         line_up(sizeof(struct prog_area));
}

uint64_t canary__stat_bytes(void) {
  return line_up(sizeof(struct stat_slot));
}

static uint64_t segment_bytes(uint32_t max_routes, uint32_t max_stat_slots) {
  return CANARY_HEADER_BYTES + (uint64_t)max_routes * canary__route_bytes() +
         (uint64_t)max_stat_slots * canary__stat_bytes();
}

/* FNV-1a over the immutable header fields, so a header damaged after the
 * magic is still recognised as damaged. */
static uint64_t header_checksum(const struct seg_header *h) {
  const unsigned char *p = (const unsigned char *)h;
  size_t n = offsetof(struct seg_header, checksum);
  uint64_t x = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) {
    x ^= p[i];
    x *= 0x100000001b3ULL;
  }
  return x;
}

/* Checks a header read from a file of st_size bytes.  Returns NULL when it
 * is valid, or a sentence saying what is wrong. */
static const char *header_problem(const struct seg_header *h,
                                  uint64_t st_size) {
  if (st_size < sizeof(struct seg_header))
    return "file is shorter than a segment header (truncated)";
  if (h->magic != CANARY_MAGIC)
    return h->magic == 0 ? "header has no magic (initialisation never "
                           "completed)"
                         : "not a canary-router segment (foreign magic)";
  if (h->layout_version != CANARY_LAYOUT_VERSION)
    return "segment has another layout version";
  if (h->checksum != header_checksum(h))
    return "header checksum mismatch";
  if (h->header_bytes != CANARY_HEADER_BYTES || h->max_routes == 0 ||
      h->max_routes > MAX_ROUTES_LIMIT || h->max_upstreams == 0 ||
      h->max_upstreams > CANARY_MAX_UPSTREAMS || h->max_stat_slots == 0 ||
      h->max_stat_slots > CANARY_STAT_SLOTS_LIMIT ||
      h->retire_grace_s == 0 || h->retire_grace_s > MAX_GRACE_S ||
      h->route_bytes != canary__route_bytes() ||
      h->stat_bytes != canary__stat_bytes() ||
      h->total_bytes != segment_bytes(h->max_routes, h->max_stat_slots))
    return "header geometry is inconsistent";
  if (h->total_bytes != st_size)
    return "file size does not match the header (truncated or extended)";
  return NULL;
}

static canary_seg_t *handle_new(void *base, const struct seg_header *h,
                                int readonly) {
  canary_seg_t *seg = calloc(1, sizeof *seg);
  if (seg == NULL)
    return NULL;
  seg->base = base;
  seg->size = h->total_bytes;
  seg->readonly = readonly;
  seg->max_routes = h->max_routes;
  seg->max_upstreams = h->max_upstreams;
  seg->route_bytes = h->route_bytes;
  seg->max_stat_slots = h->max_stat_slots;
  seg->stat_bytes = h->stat_bytes;
  seg->stat_offset =
      CANARY_HEADER_BYTES + (uint64_t)h->max_routes * h->route_bytes;
  seg->grace_us = (uint64_t)h->retire_grace_s * 1000000u;
  seg->stripe = -1;
  canary__fork_hook();
  return seg;
}

/* Maps an already validated file.  *out is set on success. */
static int map_file(int fd, const struct seg_header *h, int readonly,
                    canary_seg_t **out, char *why, size_t why_len) {
  void *base = mmap(NULL, h->total_bytes,
                    readonly ? PROT_READ : PROT_READ | PROT_WRITE,
                    MAP_SHARED, fd, 0);
  if (base == MAP_FAILED)
    return canary__fail(why, why_len, CANARY_EIO, "mmap: %s",
                        strerror(errno));
  *out = handle_new(base, h, readonly);
  if (*out == NULL) {
    munmap(base, h->total_bytes);
    return CANARY_ENOMEM;
  }
  return 0;
}

/* Initialises an empty file that the caller holds flock()ed. */
static int init_file(int fd, const struct canary_seg_params *p,
                     canary_seg_t **out, char *why, size_t why_len) {
  struct seg_header h;
  uint64_t size = segment_bytes(p->max_routes, p->max_stat_slots);
  int rc;

  (void)fchmod(fd, 0600); /* the umask may only narrow this */
  rc = posix_fallocate(fd, 0, (off_t)size);
  if (rc != 0)
    return canary__fail(why, why_len, CANARY_EIO,
                        "cannot allocate %llu bytes for the segment: %s",
                        (unsigned long long)size, strerror(rc));

  memset(&h, 0, sizeof h);
  h.magic = CANARY_MAGIC;
  h.layout_version = CANARY_LAYOUT_VERSION;
  h.header_bytes = CANARY_HEADER_BYTES;
  h.total_bytes = size;
  h.route_bytes = canary__route_bytes();
  h.max_routes = p->max_routes;
  h.max_upstreams = p->max_upstreams;
  h.created_unix = (uint64_t)time(NULL);
  h.stat_bytes = canary__stat_bytes();
  h.max_stat_slots = p->max_stat_slots;
  h.retire_grace_s = p->retire_grace_s;
  h.checksum = header_checksum(&h);

  rc = map_file(fd, &h, 0, out, why, why_len);
  if (rc != 0)
    return rc;
  {
    struct seg_header *sh = canary__header(*out);
    /* The file is fresh (all zero) and only we hold the flock, but other
     * processes may map it the moment we unlock: write every field with
     * the magic still zero, then fence, then publish the magic. */
    ck_pr_store_32(&sh->layout_version, h.layout_version);
    ck_pr_store_32(&sh->header_bytes, h.header_bytes);
    ck_pr_store_64(&sh->total_bytes, h.total_bytes);
    ck_pr_store_64(&sh->route_bytes, h.route_bytes);
    ck_pr_store_32(&sh->max_routes, h.max_routes);
    ck_pr_store_32(&sh->max_upstreams, h.max_upstreams);
    ck_pr_store_64(&sh->created_unix, h.created_unix);
    ck_pr_store_64(&sh->stat_bytes, h.stat_bytes);
    ck_pr_store_32(&sh->max_stat_slots, h.max_stat_slots);
    ck_pr_store_32(&sh->retire_grace_s, h.retire_grace_s);
    ck_pr_store_64(&sh->checksum, h.checksum);
    /* Orders all header stores before the magic that vouches for them. */
    ck_pr_fence_store();
    ck_pr_store_64(&sh->magic, h.magic);
  }
  return 0;
}

/* Drops the open-time flock and the descriptor; the mapping stays. */
static void unlock_close(int fd) {
  (void)flock(fd, LOCK_UN);
  close(fd);
}

/* Renames a bad file aside as "<path>.bad-<unix>-<pid>". */
static void set_aside(const char *path, char *why, size_t why_len,
                      const char *problem) {
  char bad[4096];
  snprintf(bad, sizeof bad, "%s.bad-%lld-%d", path, (long long)time(NULL),
           (int)getpid());
  if (rename(path, bad) == 0)
    canary__fail(why, why_len, 0, "%s; moved aside to %s", problem, bad);
  else
    canary__fail(why, why_len, 0, "%s; could not move it aside (%s)",
                 problem, strerror(errno));
}

static int open_readonly(canary_seg_t **out, const char *path, char *why,
                         size_t why_len) {
  struct seg_header h;
  struct stat st;
  const char *problem;
  ssize_t got;
  int rc, fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd < 0)
    return canary__fail(why, why_len, CANARY_EIO, "cannot open %s: %s",
                        path, strerror(errno));
  memset(&h, 0, sizeof h);
  got = pread(fd, &h, sizeof h, 0);
  if (fstat(fd, &st) != 0 || got < 0) {
    rc = canary__fail(why, why_len, CANARY_EIO, "cannot read %s: %s", path,
                      strerror(errno));
    close(fd);
    return rc;
  }
  problem = header_problem(&h, (uint64_t)st.st_size);
  if (problem != NULL) {
    close(fd);
    return canary__fail(why, why_len, CANARY_ECORRUPT, "%s: %s", path,
                        problem);
  }
  rc = map_file(fd, &h, 1, out, why, why_len);
  close(fd);
  return rc == 0 ? CANARY_SEG_ATTACHED : rc;
}

int canary_seg_open(canary_seg_t **out, const char *path,
                    uint32_t max_routes, uint32_t max_upstreams, int flags,
                    char *why, size_t why_len) {
  struct canary_seg_params p = {max_routes, max_upstreams, 0,
                                (uint32_t)flags, 0};
  return canary_seg_open_params(out, path, &p, why, why_len);
}

int canary_seg_open_params(canary_seg_t **out, const char *path,
                           const struct canary_seg_params *params, char *why,
                           size_t why_len) {
  struct canary_seg_params p;
  int recreated = 0;

  if (why != NULL && why_len > 0)
    why[0] = '\0';
  if (out == NULL || path == NULL || path[0] == '\0' || params == NULL)
    return canary__fail(why, why_len, CANARY_EINVAL, "no segment path");
  *out = NULL;
  p = *params;
  if (p.flags & ~(uint32_t)CANARY_SEG_READONLY)
    return canary__fail(why, why_len, CANARY_EINVAL, "unknown flags 0x%x",
                        p.flags);
  if (p.flags & CANARY_SEG_READONLY)
    return open_readonly(out, path, why, why_len);
  if (p.max_routes == 0 || p.max_routes > MAX_ROUTES_LIMIT)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "max_routes must be 1..%u", MAX_ROUTES_LIMIT);
  if (p.max_upstreams == 0 || p.max_upstreams > CANARY_MAX_UPSTREAMS)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "max_upstreams must be 1..%d", CANARY_MAX_UPSTREAMS);
  if (p.max_stat_slots == 0) {
    uint64_t dflt = (uint64_t)p.max_routes * p.max_upstreams;
    p.max_stat_slots = (uint32_t)(dflt < CANARY_STAT_SLOTS_LIMIT
                                      ? dflt
                                      : CANARY_STAT_SLOTS_LIMIT);
  }
  if (p.max_stat_slots > CANARY_STAT_SLOTS_LIMIT)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "max_stat_slots must be 1..%u",
                        CANARY_STAT_SLOTS_LIMIT);
  if (p.retire_grace_s == 0)
    p.retire_grace_s = CANARY_RETIRE_GRACE_S;
  if (p.retire_grace_s > MAX_GRACE_S)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "retire_grace_s must be 1..%u", MAX_GRACE_S);

  for (int attempt = 0; attempt < OPEN_ATTEMPTS; attempt++) {
    struct stat st, pst;
    struct seg_header h;
    const char *problem;
    int rc, fd;

    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
      return canary__fail(why, why_len, CANARY_EIO, "cannot open %s: %s",
                          path, strerror(errno));
    if (flock(fd, LOCK_EX) != 0) {
      rc = canary__fail(why, why_len, CANARY_EIO, "flock %s: %s", path,
                        strerror(errno));
      close(fd);
      return rc;
    }
    /* Another process may have renamed the file aside while we waited
     * for the lock: then our fd names a retired inode; start over. */
    if (fstat(fd, &st) != 0 || stat(path, &pst) != 0 ||
        st.st_ino != pst.st_ino || st.st_dev != pst.st_dev) {
      unlock_close(fd);
      continue;
    }
    if (st.st_size == 0) {
      rc = init_file(fd, &p, out, why, why_len);
      if (rc != 0)
        (void)unlink(path); /* ours, empty: leave no half-made file */
      unlock_close(fd);
      if (rc != 0)
        return rc;
      return recreated ? CANARY_SEG_RECREATED : CANARY_SEG_CREATED;
    }
    memset(&h, 0, sizeof h);
    if (pread(fd, &h, sizeof h, 0) < 0) {
      rc = canary__fail(why, why_len, CANARY_EIO, "cannot read %s: %s",
                        path, strerror(errno));
      unlock_close(fd);
      return rc;
    }
    problem = header_problem(&h, (uint64_t)st.st_size);
    if (problem != NULL) {
      set_aside(path, why, why_len, problem);
      recreated = 1;
      unlock_close(fd);
      continue;
    }
    rc = map_file(fd, &h, 0, out, why, why_len);
    unlock_close(fd);
    if (rc != 0)
      return rc;
    return recreated ? CANARY_SEG_RECREATED : CANARY_SEG_ATTACHED;
  }
  return canary__fail(why, why_len, CANARY_EIO,
                      "%s keeps changing under us; giving up", path);
}

void canary_seg_close(canary_seg_t *seg) {
  if (seg == NULL)
    return;
  canary__stripe_release(seg);
  munmap(seg->base, seg->size);
  free(seg);
}

int canary_seg_info(const canary_seg_t *seg, struct canary_seg_info *out) {
  struct seg_header *h;
  if (seg == NULL || out == NULL)
    return CANARY_EINVAL;
  h = canary__header(seg);
  memset(out, 0, sizeof *out);
  out->size = seg->size;
  out->route_bytes = seg->route_bytes;
  out->max_routes = seg->max_routes;
  out->max_upstreams = seg->max_upstreams;
  out->stat_bytes = seg->stat_bytes;
  out->max_stat_slots = seg->max_stat_slots;
  out->retire_grace_s = (uint32_t)(seg->grace_us / 1000000u);
  /* Geometry was copied at attach; the rest changes or is shared. */
  out->created_unix = ck_pr_load_64(&h->created_unix);
  out->layout_version = CANARY_LAYOUT_VERSION;
  out->routes_exhausted = ck_pr_load_64(&h->routes_exhausted);
  out->stat_slots_exhausted = ck_pr_load_64(&h->stats_exhausted);
  /* Counted from the slots themselves, so the figures are right even in
   * a segment whose counters a crash left behind. */
  for (uint32_t i = 0; i < seg->max_routes; i++) {
    uint32_t st = ck_pr_load_32(&canary__route(seg, i)->state);
    out->routes_used += st != ROUTE_FREE;
    out->routes_retired += st == ROUTE_RETIRED;
  }
  for (uint32_t i = 0; i < seg->max_stat_slots; i++) {
    uint32_t st = ck_pr_load_32(&canary__stat_slot(seg, i)->hdr.state);
    out->stat_slots_used += st != STAT_FREE;
    out->stat_slots_retired += st == STAT_RETIRED;
  }
  return 0;
}
