/*
 * owner.c - writer exclusion that the kernel releases when its owner dies.
 *
 * Writers of shared state exclude each other: route claims (one lock for
 * the segment), publishes and progression decisions (one lock per route),
 * and the counter stripes (one lock per stripe, held for as long as a
 * handle records into it).  Lock-free readers never look at any of them.
 *
 * The writers are nginx workers, which are killed (SIGKILL, OOM, crash)
 * at any instruction, run single-threaded event loops that must never
 * sleep, and may live in different pid namespaces (two containers sharing
 * the segment file).  So a lock here must
 *
 *   - vanish with its owner, whatever killed it, with no cleanup code;
 *   - be tried once: a contended lock is CANARY_EBUSY at once, and the
 *     caller retries later (next tick, next request, the operator again);
 *   - not depend on pids, which are reused and mean different processes
 *     in different namespaces.
 *
 * The engine used to keep the owner's pid in a word and take over words
 * whose pid looked dead; a reused pid then looked alive for ever, and a
 * live owner in another namespace looked dead.  Open-file-description
 * locks (fcntl F_OFD_SETLK) have none of those problems: a lock belongs to
 * an open file description, the kernel drops it when the last descriptor
 * for that description is closed — which process exit does — and it
 * names no pid.  F_OFD_SETLK never blocks.
 *
 * Each lock is one byte of the segment file, at the file offset of a
 * placeholder field that is never read or written (seg_header.claim_lock,
 * .stripe_lock[i], route_hdr.writer_lock), so every lock has its own byte
 * and the layout documents where.  Locking a byte of a file does not
 * touch its contents or its mapping.
 *
 * Every writable handle opens the file once more for its locks (lock_fd).
 * That description is separate from the one the mapping holds: a mapping
 * keeps its description alive, and a forked child inherits its parent's
 * mappings, so locks taken on the mapping's description could outlive a
 * dead parent for as long as any child of it lived.
 *
 * Forked children.  A child shares its parent's open file descriptions,
 * and with them the parent's locks: through an inherited descriptor it
 * would "take" locks its parent holds.  So a pthread_atfork handler closes
 * the child's copy of every registered handle's lock descriptor (only
 * close(), which is async-signal-safe), and the handle reopens the file by
 * path when the child first needs a lock, checking that the path still
 * names the mapped file (same st_dev and st_ino).  A child that never uses
 * the handle thus never holds its parent's locks alive either.  Two
 * handles in one process have two descriptions, so they exclude each
 * other like two processes do.
 *
 * What a kill leaves behind.  A publish or a judge killed midway leaves a
 * half-written back buffer or base snapshot behind its sequence word
 * (table.c, prog.c); the next writer, who gets the lock the moment the
 * kernel has reaped the dead one's descriptors, rewrites it.  A killed
 * recorder's stripe keeps its counts; the next handle to lock that stripe
 * adds to them, so no total ever goes back.
 */
#include "internal.h"

#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/stat.h>
#include <unistd.h>

uint64_t canary__fork_count;

/* Registered handles: those with a lock descriptor.  The mutex is held
 * across fork() (prepare/parent/child handlers), so a child never sees
 * the list half-changed. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static canary_seg_t *reg_head;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void) { pthread_mutex_lock(&reg_mu); }

static void fork_parent(void) { pthread_mutex_unlock(&reg_mu); }

static void fork_child(void) {
  canary__fork_count++;
  for (canary_seg_t *s = reg_head; s != NULL; s = s->reg_next)
    if (s->lock_fd >= 0) {
      /* Our copy of the parent's description: dropping it releases none
       * of the parent's locks, and keeps us from using them. */
      close(s->lock_fd);
      s->lock_fd = -1;
    }
  pthread_mutex_unlock(&reg_mu);
}

static void reg_install(void) {
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

void canary__handle_register(canary_seg_t *seg) {
  pthread_once(&reg_once, reg_install);
  pthread_mutex_lock(&reg_mu);
  seg->reg_prev = NULL;
  seg->reg_next = reg_head;
  if (reg_head != NULL)
    reg_head->reg_prev = seg;
  reg_head = seg;
  pthread_mutex_unlock(&reg_mu);
}

void canary__handle_unregister(canary_seg_t *seg) {
  pthread_mutex_lock(&reg_mu);
  if (seg->reg_prev != NULL)
    seg->reg_prev->reg_next = seg->reg_next;
  else if (reg_head == seg)
    reg_head = seg->reg_next;
  if (seg->reg_next != NULL)
    seg->reg_next->reg_prev = seg->reg_prev;
  seg->reg_prev = seg->reg_next = NULL;
  if (seg->lock_fd >= 0) {
    /* Every lock of the handle (its stripe, at most) goes with it. */
    close(seg->lock_fd);
    seg->lock_fd = -1;
  }
  pthread_mutex_unlock(&reg_mu);
}

/* Opens the handle's lock descriptor (again, after a fork): the path must
 * still name the file we have mapped, or our locks would guard another
 * file. */
int canary__lock_open(canary_seg_t *seg) {
  struct stat st;
  int fd;

  if (seg->lock_fd >= 0)
    return 0;
  if (seg->readonly || seg->path == NULL)
    return CANARY_EIO;
  fd = open(seg->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return CANARY_EIO;
  if (fstat(fd, &st) != 0 || (uint64_t)st.st_dev != seg->dev ||
      (uint64_t)st.st_ino != seg->ino) {
    close(fd);
    return CANARY_EIO;
  }
  pthread_mutex_lock(&reg_mu);
  seg->lock_fd = fd;
  pthread_mutex_unlock(&reg_mu);
  return 0;
}

int canary__lock_try(canary_seg_t *seg, uint64_t off) {
  struct flock fl;
  int fd;

  if (canary__lock_open(seg) != 0)
    return CANARY_EIO;
  fd = seg->lock_fd;
  for (;;) {
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)off;
    fl.l_len = 1;
    fl.l_pid = 0; /* required by F_OFD_* */
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
      break;
    if (errno == EINTR)
      continue;
    return errno == EAGAIN || errno == EACCES ? CANARY_EBUSY : CANARY_EIO;
  }
  /* The system call orders memory on its own; the fence says so in the
   * code: nothing we read or write as the owner is done before the lock
   * is ours, so we start from the previous owner's last stores. */
  ck_pr_fence_memory();
  return 0;
}

void canary__lock_release(canary_seg_t *seg, uint64_t off) {
  struct flock fl;

  if (seg->lock_fd < 0)
    return; /* closed with the handle, or in a child: nothing held */
  /* Every store made as the owner is ordered before the lock is free,
   * so the next owner starts from the complete state. */
  ck_pr_fence_memory();
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)off;
  fl.l_len = 1;
  fl.l_pid = 0;
  while (fcntl(seg->lock_fd, F_OFD_SETLK, &fl) != 0 && errno == EINTR)
    ;
}

uint64_t canary__claim_lock_off(void) {
  return offsetof(struct seg_header, claim_lock);
}

uint64_t canary__stripe_lock_off(uint32_t stripe) {
  return offsetof(struct seg_header, stripe_lock) +
         (uint64_t)stripe * sizeof(uint32_t);
}

uint64_t canary__writer_lock_off(const canary_seg_t *seg, uint32_t route) {
  return CANARY_HEADER_BYTES + (uint64_t)route * seg->route_bytes +
         offsetof(struct route_hdr, writer_lock);
}
