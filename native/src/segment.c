/*
 * segment.c - creating, validating and attaching the shared segment.
 *
 * The segment is a regular file mapped MAP_SHARED by every nginx worker,
 * by canarystat and by tests.  A file outlives the processes that map it,
 * which is what makes counters monotone across `nginx -s reload` and
 * worker crashes.  It also means the file may be anything when we come
 * to it, and that whoever can write it can steer every worker (rewrite
 * weights) or crash them all (truncate it: SIGBUS).  So:
 *
 *   - The file must be ours before anything in it is read: opened with
 *     O_NOFOLLOW (a symlink is refused), a regular file, owned by the
 *     process's effective uid, mode exactly 0600.  A file that fails
 *     this is refused with CANARY_EUNSAFE and left alone: it is not ours
 *     to move, and the plugin fails open.  (A read-only attach by root,
 *     canarystat run by the operator, may read a file owned by the
 *     gateway's user.)
 *
 *   - Nothing in it is trusted before it is checked, and a file that
 *     fails a check is renamed aside as "<path>.bad-<unix>-<pid>" (kept
 *     for forensics, at most BAD_COPIES_KEPT of them) and replaced, never
 *     repaired in place.  An empty file has nothing worth keeping and is
 *     simply replaced.
 *
 *   - A file is never visible at `path` before it is complete.  It is
 *     made under a temporary name in the same directory (O_EXCL,
 *     O_NOFOLLOW, 0600 checked with fchmod, blocks allocated with
 *     posix_fallocate so that a full disk fails here and not as SIGBUS
 *     in a worker, the header written), and then published with link(),
 *     which fails when `path` exists: of several processes creating at
 *     once exactly one wins, and the others attach the winner's file.
 *     A creator killed midway leaves only its temporary file, which the
 *     next read-write open removes (a creator holds an flock on its
 *     temporary file, so a temporary file nobody holds locked is stale).
 *
 *   - Setting a file aside is the only step that must be serialised: a
 *     process that judged the old file bad must not rename the new one a
 *     faster process has put in its place.  It takes an flock on the bad
 *     file, checks that `path` still names that very file, and renames it
 *     only then.  The name only ever changes by link() (when absent) or by
 *     a rename under that flock, so the check cannot go stale.  The flock
 *     is tried without blocking, for at most SET_ASIDE_WAIT_MS in all;
 *     nothing else in the engine takes it, and no request path opens.
 *
 * A root master can prepare the file for unprivileged workers
 * (canary_seg_prepare): the same steps, with the file given to the
 * workers' uid and gid, and without mapping it.
 *
 * The mapping's open file description is never locked: the writer locks
 * live on a description of their own (owner.c).
 */
#include "internal.h"

#include <ck_pr.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
#define OPEN_ATTEMPTS 8
#define SET_ASIDE_WAIT_MS 2000u
#define BAD_COPIES_KEPT 3

static uint64_t line_up(uint64_t n) {
  return (n + CANARY_CACHELINE - 1) / CANARY_CACHELINE * CANARY_CACHELINE;
}

uint64_t canary__route_bytes(void) {
  return line_up(sizeof(struct route_hdr)) + sizeof(struct route_seq) +
         CANARY_STRIPES * sizeof(struct route_stripe);
}

uint64_t canary__stat_bytes(void) {
  return line_up(sizeof(struct stat_slot));
}

static uint64_t segment_bytes(uint32_t max_routes, uint32_t max_stat_slots,
                              uint32_t max_prog_slots) {
  return CANARY_HEADER_BYTES + (uint64_t)max_routes * canary__route_bytes() +
         (uint64_t)max_stat_slots * canary__stat_bytes() +
         (uint64_t)max_prog_slots * canary__prog_bytes();
}

/* FNV-1a over the immutable header fields, so a header damaged after the
 * magic is still recognised as damaged: those before the checksum, and
 * the progression pool's geometry after the lock bytes. */
static uint64_t header_checksum(const struct seg_header *h) {
  const unsigned char *p = (const unsigned char *)h;
  size_t n = offsetof(struct seg_header, checksum);
  size_t from = offsetof(struct seg_header, max_prog_slots);
  size_t to = offsetof(struct seg_header, progs_exhausted);
  uint64_t x = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) {
    x ^= p[i];
    x *= 0x100000001b3ULL;
  }
  for (size_t i = from; i < to; i++) {
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
      h->max_prog_slots == 0 || h->max_prog_slots > h->max_routes ||
      h->retire_grace_s == 0 || h->retire_grace_s > MAX_GRACE_S ||
      h->route_bytes != canary__route_bytes() ||
      h->stat_bytes != canary__stat_bytes() ||
      h->prog_bytes != canary__prog_bytes() ||
      h->total_bytes != segment_bytes(h->max_routes, h->max_stat_slots,
                                      h->max_prog_slots))
    return "header geometry is inconsistent";
  if (h->total_bytes != st_size)
    return "file size does not match the header (truncated or extended)";
  return NULL;
}

/* What the caller wants of the file: the geometry of a new segment
 * (checked, defaults filled in), and for canary_seg_prepare() the owner
 * to give it. */
struct want {
  struct canary_seg_params p;
  int prepare;
  uint32_t uid;
  uint32_t gid;
};

/* The directory and base name of path, for the files made next to it. */
static int split_path(const char *path, char *dir, size_t dir_cap,
                      const char **base) {
  const char *slash = strrchr(path, '/');
  size_t n;
  if (slash == NULL) {
    *base = path;
    return snprintf(dir, dir_cap, ".") < (int)dir_cap ? 0 : -1;
  }
  *base = slash + 1;
  n = slash == path ? 1 : (size_t)(slash - path);
  if (n >= dir_cap)
    return -1;
  memcpy(dir, path, n);
  dir[n] = '\0';
  return 0;
}

/* Refuses a file that someone else could have written (see the opening
 * comment).  0, or CANARY_EUNSAFE with the reason. */
static int check_safe(const char *path, const struct stat *st,
                      const struct want *w, int readonly, char *why,
                      size_t why_len) {
  uint32_t me = (uint32_t)geteuid(), owner = (uint32_t)st->st_uid;
  int owner_ok;

  if (!S_ISREG(st->st_mode))
    return canary__fail(why, why_len, CANARY_EUNSAFE,
                        "%s is not a regular file; refusing it", path);
  if (w != NULL && w->prepare)
    owner_ok = owner == me || owner == w->uid;
  else
    owner_ok = owner == me || (readonly && me == 0);
  if (!owner_ok && w != NULL && w->prepare)
    return canary__fail(why, why_len, CANARY_EUNSAFE,
                        "%s is owned by uid %u, neither by this process "
                        "(uid %u) nor by the workers (uid %u); refusing it "
                        "(it is not ours to use or to move)",
                        path, owner, me, w->uid);
  if (!owner_ok)
    return canary__fail(why, why_len, CANARY_EUNSAFE,
                        "%s is owned by uid %u, not by uid %u that runs "
                        "this process; refusing it (it is not ours to "
                        "use or to move)",
                        path, owner, me);
  if ((st->st_mode & 07777) != 0600)
    return canary__fail(why, why_len, CANARY_EUNSAFE,
                        "%s has mode %04o; it must be 0600 (no group or "
                        "other access); refusing it",
                        path, (unsigned)(st->st_mode & 07777));
  return 0;
}

static void fill_header(struct seg_header *h,
                        const struct canary_seg_params *p) {
  memset(h, 0, sizeof *h);
  h->magic = CANARY_MAGIC;
  h->layout_version = CANARY_LAYOUT_VERSION;
  h->header_bytes = CANARY_HEADER_BYTES;
  h->total_bytes =
      segment_bytes(p->max_routes, p->max_stat_slots, p->max_prog_slots);
  h->route_bytes = canary__route_bytes();
  h->max_routes = p->max_routes;
  h->max_upstreams = p->max_upstreams;
  h->created_unix = (uint64_t)time(NULL);
  h->stat_bytes = canary__stat_bytes();
  h->max_stat_slots = p->max_stat_slots;
  h->retire_grace_s = p->retire_grace_s;
  h->max_prog_slots = p->max_prog_slots;
  h->prog_bytes = canary__prog_bytes();
  h->checksum = header_checksum(h);
}

/* Removes the temporary files of creators that died: every creator holds
 * an flock on its own, so one we can lock is nobody's. */
static void remove_stale_temps(const char *path) {
  char dir[PATH_MAX], prefix[NAME_MAX + 8];
  const char *base;
  struct dirent *e;
  size_t plen;
  DIR *d;

  if (split_path(path, dir, sizeof dir, &base) != 0 ||
      (size_t)snprintf(prefix, sizeof prefix, "%s.tmp-", base) >=
          sizeof prefix)
    return;
  plen = strlen(prefix);
  d = opendir(dir);
  if (d == NULL)
    return;
  while ((e = readdir(d)) != NULL) {
    struct stat st, now;
    int fd;
    if (strncmp(e->d_name, prefix, plen) != 0)
      continue;
    fd = openat(dirfd(d), e->d_name,
                O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
      continue;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        flock(fd, LOCK_EX | LOCK_NB) == 0 &&
        fstatat(dirfd(d), e->d_name, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
        now.st_ino == st.st_ino && now.st_dev == st.st_dev)
      (void)unlinkat(dirfd(d), e->d_name, 0);
    close(fd); /* drops the flock */
  }
  closedir(d);
}

/* Makes a complete segment file under a temporary name and publishes it
 * at `path` with link().  Errors name `path`, not the temporary name, so
 * that the same failure reads the same every time (it is logged once).  Returns 1 with *fd_out open on it (ours, now at
 * path), 0 when another process published first or took our temporary
 * file for a stale one (attach theirs, or try again), or an error. */
static int create_file(const char *path, const struct want *w, int *fd_out,
                       char *why, size_t why_len) {
  static uint64_t made;
  char tmp[PATH_MAX];
  struct seg_header h;
  int rc, fd, e;

  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-%d-%llu", path,
                       (int)getpid(),
                       (unsigned long long)ck_pr_faa_64(&made, 1)) >=
      sizeof tmp)
    return canary__fail(why, why_len, CANARY_EINVAL, "path too long: %s",
                        path);
  fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return canary__fail(why, why_len, CANARY_EIO, "cannot create %s: %s",
                        path, strerror(errno));
  /* Ours while we make it: remove_stale_temps() in other processes
   * leaves a locked temporary file alone. */
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return 0; /* taken for stale in the instant before: start over */
  }
  /* The umask may have narrowed 0600; the file must be exactly that. */
  if (fchmod(fd, 0600) != 0) {
    rc = canary__fail(why, why_len, CANARY_EIO, "cannot chmod 0600 %s: %s",
                      path, strerror(errno));
    goto fail;
  }
  if (w->prepare && fchown(fd, (uid_t)w->uid, (gid_t)w->gid) != 0) {
    rc = canary__fail(why, why_len, CANARY_EIO,
                      "cannot give %s to uid %u gid %u: %s", path, w->uid,
                      w->gid, strerror(errno));
    goto fail;
  }
  fill_header(&h, &w->p);
  e = posix_fallocate(fd, 0, (off_t)h.total_bytes);
  if (e != 0) {
    rc = canary__fail(why, why_len, CANARY_EIO,
                      "cannot allocate %llu bytes for the segment: %s",
                      (unsigned long long)h.total_bytes, strerror(e));
    goto fail;
  }
  /* Nobody can see this file yet: the header goes in whole, magic and
   * all; link() below is what makes it visible. */
  if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
    rc = canary__fail(why, why_len, CANARY_EIO, "cannot write %s: %s", path,
                      strerror(errno));
    goto fail;
  }
  CANARY_FAULT("create.written");
  if (link(tmp, path) != 0) {
    e = errno;
    (void)unlink(tmp);
    close(fd);
    if (e == EEXIST || e == ENOENT)
      return 0; /* another creator won, or our file was taken: start over */
    return canary__fail(why, why_len, CANARY_EIO, "cannot link %s: %s", path,
                        strerror(e));
  }
  (void)unlink(tmp);
  (void)flock(fd, LOCK_UN);
  *fd_out = fd;
  return 1;
fail:
  (void)unlink(tmp);
  close(fd);
  return rc;
}

/* Keeps at most `keep` "<base>.bad-<unix>-<pid>" files next to path,
 * removing the oldest (by the time in the name, then by ctime). */
static void prune_bad_copies(const char *path, int keep) {
  char dir[PATH_MAX], prefix[NAME_MAX + 8];
  const char *base;
  size_t plen;

  if (split_path(path, dir, sizeof dir, &base) != 0 ||
      (size_t)snprintf(prefix, sizeof prefix, "%s.bad-", base) >=
          sizeof prefix)
    return;
  plen = strlen(prefix);
  for (int round = 0; round < 64; round++) {
    char oldest[NAME_MAX + 1] = "";
    long long oldest_unix = 0;
    struct timespec oldest_ct = {0, 0};
    struct dirent *e;
    int count = 0;
    DIR *d = opendir(dir);

    if (d == NULL)
      return;
    while ((e = readdir(d)) != NULL) {
      struct stat st;
      long long u;
      long pid;
      int used = 0;
      if (strncmp(e->d_name, prefix, plen) != 0 ||
          sscanf(e->d_name + plen, "%lld-%ld%n", &u, &pid, &used) != 2 ||
          e->d_name[plen + (size_t)used] != '\0' ||
          fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        continue;
      count++;
      if (oldest[0] == '\0' || u < oldest_unix ||
          (u == oldest_unix &&
           (st.st_ctim.tv_sec < oldest_ct.tv_sec ||
            (st.st_ctim.tv_sec == oldest_ct.tv_sec &&
             st.st_ctim.tv_nsec < oldest_ct.tv_nsec)))) {
        canary__copy_str(oldest, sizeof oldest, e->d_name,
                         strlen(e->d_name));
        oldest_unix = u;
        oldest_ct = st.st_ctim;
      }
    }
    if (count <= keep || unlinkat(dirfd(d), oldest, 0) != 0) {
      closedir(d);
      return;
    }
    closedir(d);
  }
}

/* Sets the bad file open on fd (st: its fstat) aside: renamed to
 * "<path>.bad-<unix>-<pid>", or removed when empty.  Returns 1 when this
 * process did so, 0 when `path` no longer names that file (another
 * process set it aside first), or an error; `why` says what happened. */
static int set_aside(int fd, const struct stat *st, const char *path,
                     const char *problem, char *why, size_t why_len) {
  struct timespec pause = {0, 1000 * 1000}; /* 1 ms */
  struct stat now;
  char bad[PATH_MAX];
  unsigned waited_ms = 0;
  int rc = 1;

  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR)
      continue;
    if (errno != EWOULDBLOCK)
      return canary__fail(why, why_len, CANARY_EIO, "flock %s: %s", path,
                          strerror(errno));
    if (waited_ms >= SET_ASIDE_WAIT_MS)
      return canary__fail(why, why_len, CANARY_EBUSY,
                          "%s: %s; another process has held it locked for "
                          "%u ms, so it cannot be set aside now",
                          path, problem, SET_ASIDE_WAIT_MS);
    nanosleep(&pause, NULL);
    waited_ms++;
  }
  if (lstat(path, &now) != 0 || now.st_ino != st->st_ino ||
      now.st_dev != st->st_dev) {
    rc = 0;
  } else if (st->st_size == 0) {
    if (unlink(path) != 0)
      rc = canary__fail(why, why_len, CANARY_EIO,
                        "%s is empty and cannot be removed: %s", path,
                        strerror(errno));
  } else {
    prune_bad_copies(path, BAD_COPIES_KEPT - 1);
    snprintf(bad, sizeof bad, "%s.bad-%lld-%d", path, (long long)time(NULL),
             (int)getpid());
    if (rename(path, bad) == 0)
      canary__fail(why, why_len, 0, "%s; moved aside to %s", problem, bad);
    else
      rc = canary__fail(why, why_len, CANARY_EIO,
                        "%s: %s; could not move it aside: %s", path,
                        problem, strerror(errno));
  }
  (void)flock(fd, LOCK_UN);
  return rc;
}

/* Finds or makes a valid segment file at `path`.  On success *fd_out is
 * open read-write on it, *h holds its header and *st its fstat, and the
 * result is a canary_seg_opened value. */
static int settle(const char *path, const struct want *w, int *fd_out,
                  struct seg_header *h, struct stat *st, char *why,
                  size_t why_len) {
  int recreated = 0;

  remove_stale_temps(path);
  for (int attempt = 0; attempt < OPEN_ATTEMPTS; attempt++) {
    const char *problem;
    int rc, fd, created = 0;

    /* O_NONBLOCK: a FIFO planted at the path must not block us (it is
     * refused below); for a regular file the flag changes nothing. */
    fd = open(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      rc = create_file(path, w, &fd, why, why_len);
      if (rc < 0)
        return rc;
      if (rc == 0)
        continue;
      created = 1;
    } else if (fd < 0 && errno == ELOOP) {
      return canary__fail(why, why_len, CANARY_EUNSAFE,
                          "%s is a symbolic link; refusing to follow it",
                          path);
    } else if (fd < 0) {
      return canary__fail(why, why_len, CANARY_EIO, "cannot open %s: %s",
                          path, strerror(errno));
    }
    if (fstat(fd, st) != 0) {
      rc = canary__fail(why, why_len, CANARY_EIO, "cannot stat %s: %s",
                        path, strerror(errno));
      close(fd);
      return rc;
    }
    rc = check_safe(path, st, w, 0, why, why_len);
    if (rc != 0) {
      close(fd);
      return rc;
    }
    memset(h, 0, sizeof *h);
    if (pread(fd, h, sizeof *h, 0) < 0) {
      rc = canary__fail(why, why_len, CANARY_EIO, "cannot read %s: %s",
                        path, strerror(errno));
      close(fd);
      return rc;
    }
    problem = header_problem(h, (uint64_t)st->st_size);
    if (problem != NULL) {
      rc = set_aside(fd, st, path, problem, why, why_len);
      close(fd);
      if (rc < 0)
        return rc;
      if (rc == 1 && st->st_size > 0)
        recreated = 1;
      continue;
    }
    *fd_out = fd;
    if (recreated)
      return CANARY_SEG_RECREATED;
    return created ? CANARY_SEG_CREATED : CANARY_SEG_ATTACHED;
  }
  return canary__fail(why, why_len, CANARY_EIO,
                      "%s keeps changing under us; giving up", path);
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
  seg->max_prog_slots = h->max_prog_slots;
  seg->prog_bytes = h->prog_bytes;
  seg->prog_offset =
      seg->stat_offset + (uint64_t)h->max_stat_slots * h->stat_bytes;
  seg->grace_us = (uint64_t)h->retire_grace_s * 1000000u;
  seg->stripe = -1;
  seg->lock_fd = -1;
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

static void handle_free(canary_seg_t *seg) {
  if (!seg->readonly)
    canary__handle_unregister(seg); /* closes the lock descriptor */
  munmap(seg->base, seg->size);
  free(seg->path);
  free(seg);
}

static int open_readonly(canary_seg_t **out, const char *path, char *why,
                         size_t why_len) {
  struct seg_header h;
  struct stat st;
  const char *problem;
  ssize_t got;
  int rc, fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

  if (fd < 0 && errno == ELOOP)
    return canary__fail(why, why_len, CANARY_EUNSAFE,
                        "%s is a symbolic link; refusing to follow it", path);
  if (fd < 0)
    return canary__fail(why, why_len, CANARY_EIO, "cannot open %s: %s",
                        path, strerror(errno));
  if (fstat(fd, &st) != 0) {
    rc = canary__fail(why, why_len, CANARY_EIO, "cannot stat %s: %s", path,
                      strerror(errno));
    close(fd);
    return rc;
  }
  rc = check_safe(path, &st, NULL, 1, why, why_len);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  memset(&h, 0, sizeof h);
  got = pread(fd, &h, sizeof h, 0);
  if (got < 0) {
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

/* Checks the geometry of a new segment and fills in its defaults. */
static int check_params(struct canary_seg_params *p, char *why,
                        size_t why_len) {
  if (p->max_routes == 0 || p->max_routes > MAX_ROUTES_LIMIT)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "max_routes must be 1..%u", MAX_ROUTES_LIMIT);
  if (p->max_upstreams == 0 || p->max_upstreams > CANARY_MAX_UPSTREAMS)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "max_upstreams must be 1..%d", CANARY_MAX_UPSTREAMS);
  if (p->max_stat_slots == 0) {
    uint64_t dflt = (uint64_t)p->max_routes * p->max_upstreams;
    p->max_stat_slots = (uint32_t)(dflt < CANARY_STAT_SLOTS_LIMIT
                                       ? dflt
                                       : CANARY_STAT_SLOTS_LIMIT);
  }
  if (p->max_stat_slots > CANARY_STAT_SLOTS_LIMIT)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "max_stat_slots must be 1..%u",
                        CANARY_STAT_SLOTS_LIMIT);
  if (p->max_prog_slots == 0)
    p->max_prog_slots = p->max_routes;
  if (p->max_prog_slots > p->max_routes)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "max_prog_slots must be 1..max_routes (%u), not %u",
                        p->max_routes, p->max_prog_slots);
  if (p->retire_grace_s == 0)
    p->retire_grace_s = CANARY_RETIRE_GRACE_S;
  if (p->retire_grace_s > MAX_GRACE_S)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "retire_grace_s must be 1..%u", MAX_GRACE_S);
  return 0;
}

int canary_seg_open(canary_seg_t **out, const char *path,
                    uint32_t max_routes, uint32_t max_upstreams, int flags,
                    char *why, size_t why_len) {
  struct canary_seg_params p = {max_routes, max_upstreams, 0,
                                (uint32_t)flags, 0, 0};
  return canary_seg_open_params(out, path, &p, why, why_len);
}

int canary_seg_open_params(canary_seg_t **out, const char *path,
                           const struct canary_seg_params *params, char *why,
                           size_t why_len) {
  struct want w;
  struct seg_header h;
  struct stat st;
  canary_seg_t *seg;
  int opened, rc, fd = -1;

  if (why != NULL && why_len > 0)
    why[0] = '\0';
  if (out == NULL || path == NULL || path[0] == '\0' || params == NULL)
    return canary__fail(why, why_len, CANARY_EINVAL, "no segment path");
  *out = NULL;
  memset(&w, 0, sizeof w);
  w.p = *params;
  if (w.p.flags & ~(uint32_t)CANARY_SEG_READONLY)
    return canary__fail(why, why_len, CANARY_EINVAL, "unknown flags 0x%x",
                        w.p.flags);
  if (w.p.flags & CANARY_SEG_READONLY)
    return open_readonly(out, path, why, why_len);
  rc = check_params(&w.p, why, why_len);
  if (rc != 0)
    return rc;

  opened = settle(path, &w, &fd, &h, &st, why, why_len);
  if (opened < 0)
    return opened;
  rc = map_file(fd, &h, 0, &seg, why, why_len);
  close(fd); /* the mapping keeps the file; it never carries a lock */
  if (rc != 0)
    return rc;
  seg->dev = (uint64_t)st.st_dev;
  seg->ino = (uint64_t)st.st_ino;
  seg->path = strdup(path);
  if (seg->path == NULL) {
    munmap(seg->base, seg->size);
    free(seg);
    return CANARY_ENOMEM;
  }
  canary__handle_register(seg);
  /* The locks' own description (owner.c), opened now so that a file
   * replaced under us is an error here rather than at the first write. */
  if (canary__lock_open(seg) != 0) {
    handle_free(seg);
    return canary__fail(why, why_len, CANARY_EIO,
                        "%s was replaced while it was being opened", path);
  }
  *out = seg;
  return opened;
}

int canary_seg_prepare(const char *path, const struct canary_seg_params *p,
                       uint32_t uid, uint32_t gid, char *why,
                       size_t why_len) {
  struct want w;
  struct seg_header h;
  struct stat st;
  int opened, rc = 0, fd = -1;

  if (why != NULL && why_len > 0)
    why[0] = '\0';
  if (path == NULL || path[0] == '\0' || p == NULL)
    return canary__fail(why, why_len, CANARY_EINVAL, "no segment path");
  memset(&w, 0, sizeof w);
  w.p = *p;
  w.prepare = 1;
  w.uid = uid;
  w.gid = gid;
  if (w.p.flags != 0)
    return canary__fail(why, why_len, CANARY_EINVAL,
                        "unknown flags 0x%x (prepare makes a writable "
                        "segment)",
                        w.p.flags);
  rc = check_params(&w.p, why, why_len);
  if (rc != 0)
    return rc;
  opened = settle(path, &w, &fd, &h, &st, why, why_len);
  if (opened < 0)
    return opened;
  if (((uint32_t)st.st_uid != uid || (uint32_t)st.st_gid != gid) &&
      fchown(fd, (uid_t)uid, (gid_t)gid) != 0)
    rc = canary__fail(why, why_len, CANARY_EIO,
                      "cannot give %s to uid %u gid %u: %s", path, uid, gid,
                      strerror(errno));
  close(fd);
  return rc != 0 ? rc : opened;
}

void canary_seg_close(canary_seg_t *seg) {
  if (seg == NULL)
    return;
  handle_free(seg);
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
  out->prog_bytes = seg->prog_bytes;
  out->max_prog_slots = seg->max_prog_slots;
  out->prog_slots_exhausted = ck_pr_load_64(&h->progs_exhausted);
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
  for (uint32_t i = 0; i < seg->max_prog_slots; i++) {
    uint32_t st = ck_pr_load_32(&canary__prog_slot(seg, i)->hdr.state);
    out->prog_slots_used += st != STAT_FREE;
    out->prog_slots_retired += st == STAT_RETIRED;
  }
  return 0;
}
