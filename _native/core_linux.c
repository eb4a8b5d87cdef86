/* pytest-noinherit native core: Linux.
 *
 * Snapshot: a poll() scan validated by the open-fd count that
 * fstat("/proc/self/fd").st_size reports (Linux >= 6.2), falling back to a
 * raw getdents64 listing of /proc/self/fd, and to the generic scan when
 * /proc is unusable.  Why: poll() costs ~10 ns per slot while procfs
 * readdir costs ~0.4-0.8 us per descriptor, but poll() cannot see O_PATH
 * descriptors (they come back POLLNVAL) nor anything above the soft
 * RLIMIT_NOFILE, hence the count check (the project's platform notes,
 * sections 0 and 2, have the measurements).
 */
#define _GNU_SOURCE /* syscall(), O_PATH, CLOSE_RANGE_CLOEXEC */
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
#define NIC_HAVE_ATOMICS 1
#endif

#include "core_internal.h"

/* close_range(2) arrived in Linux 5.9 and CLOSE_RANGE_CLOEXEC in 5.11;
 * older headers lack one or both.  436 is close_range's number in the
 * unified syscall table on every architecture but alpha. */
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#if !defined(SYS_close_range) && defined(__NR_close_range)
#define SYS_close_range __NR_close_range
#endif
#if !defined(SYS_close_range) && !defined(__alpha__)
#define SYS_close_range 436
#endif

const char *nic_platform(void)
{
    return "linux";
}

/* ---------------------------------------------------------------------- */
/* The poll hint: one past the highest descriptor seen, rounded up to 64.
 * Threads racing on it store equally good values, so relaxed is enough. */

#define NIC_HINT_STEP 64

#ifdef NIC_HAVE_ATOMICS
static atomic_int poll_hint = NIC_HINT_STEP;
#define HINT_LOAD() atomic_load_explicit(&poll_hint, memory_order_relaxed)
#define HINT_STORE(v) atomic_store_explicit(&poll_hint, (v), memory_order_relaxed)
#else
static volatile int poll_hint = NIC_HINT_STEP;
#define HINT_LOAD() (poll_hint)
#define HINT_STORE(v) (poll_hint = (v))
#endif

static void raise_hint(int maxfd)
{
    if (maxfd < 0 || maxfd >= INT_MAX - NIC_HINT_STEP)
        return;
    int wanted = (maxfd + NIC_HINT_STEP) / NIC_HINT_STEP * NIC_HINT_STEP;
    if (wanted > HINT_LOAD())
        HINT_STORE(wanted);
}

/* ---------------------------------------------------------------------- */
/* /proc/self/fd                                                           */

/* Opened afresh on every call: a cached dirfd would survive fork() still
 * pointing at the parent's table (/proc/self resolves when the directory
 * is opened, proc(5)), and nothing stays
 * open between snapshots. */
static int open_fd_dir(void)
{
    int fd;
    do
        fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    return fd;
}

/* Errors of open_fd_dir() after which the generic scan is the right answer:
 * /proc is not mounted or not ours, or no descriptor is left.  On EMFILE
 * every fd below the soft limit is open, so the scan is complete. */
static int proc_unusable(int err)
{
    return err == ENOENT || err == EACCES || err == EPERM || err == ENOTDIR
        || err == EMFILE || err == ENFILE;
}

static void close_keep_errno(int fd)
{
    int saved = errno;
    close(fd);
    errno = saved;
}

/* struct linux_dirent64 from getdents64(2); glibc only exposes it since
 * 2.30, so the offsets are spelled out here. */
struct nic_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* NIC_METHOD_PROCFS over an open dirfd, which it leaves open.  Raw
 * getdents64 with a 32 KiB stack buffer as in CPython's
 * _close_open_fds_safe(): no opendir(), no malloc. */
/* The entry for fd in prev (ascending), or NULL. */
static const nic_entry *find_prev(const nic_entry *prev, int nprev, int fd)
{
    int lo = 0, hi = nprev;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (prev[mid].fd < (uint64_t)fd)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < nprev && prev[lo].fd == (uint64_t)fd ? &prev[lo] : NULL;
}

/* One entry, reusing prev's identity when the flag is unchanged (see
 * nic_snapshot_since); 0, or -1 when fd is not open. */
static int fill_since(int fd, const nic_entry *prev, int nprev, nic_entry *e)
{
    const nic_entry *old = prev ? find_prev(prev, nprev, fd) : NULL;
    if (old != NULL) {
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0)
            return -1;
        if (((flags & FD_CLOEXEC) ? NIC_FLAG_CLOEXEC : 0) == old->flags) {
            *e = *old;
            return 0;
        }
    }
    return nic_fill_entry(fd, e);
}

static int snapshot_procfs(int dirfd, nic_entry *out, int cap, int *maxfd, const nic_entry *prev,
                           int nprev)
{
    union {
        char bytes[32768];
        uint64_t align;
    } buf;
    int n = 0;

    *maxfd = -1;
    for (;;) {
        long got = syscall(SYS_getdents64, dirfd, buf.bytes, sizeof buf.bytes);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (got == 0)
            break;
        for (long off = 0; off < got;) {
            unsigned short reclen;
            memcpy(&reclen, buf.bytes + off + offsetof(struct nic_dirent64, d_reclen),
                   sizeof reclen);
            int fd = nic_parse_fd(buf.bytes + off + offsetof(struct nic_dirent64, d_name));
            off += reclen;
            if (fd < 0 || fd == dirfd)
                continue;
            nic_entry e;
            if (fill_since(fd, prev, nprev, &e) != 0)
                continue; /* EBADF: closed since the listing */
            if (n < cap)
                out[n] = e;
            n++;
            if (fd > *maxfd)
                *maxfd = fd;
        }
    }
    nic_sort_entries(out, n < cap ? n : cap);
    return n;
}

static int procfs_and_close(int dirfd, nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    int maxfd;
    int n = snapshot_procfs(dirfd, out, cap, &maxfd, prev, nprev);
    close_keep_errno(dirfd);
    if (n >= 0)
        raise_hint(maxfd);
    return n;
}

/* ---------------------------------------------------------------------- */
/* NIC_METHOD_POLL                                                         */

#define NIC_POLL_STACK 1024

/* Large tables: the per-descriptor F_GETFD + fstat are two system calls at
 * the kernel's floor (~0.85 us together), so a second thread filling half
 * the entries is the only way left to go faster; the fd table is read
 * under RCU, so the halves do not contend.  Small tables never pay for it. */
#define NIC_PARALLEL_MIN 4096
#define NIC_GONE UINT64_MAX

struct fill_job {
    const int *fds;
    nic_entry *out;
    int n;
};

static void *fill_job_run(void *arg)
{
    struct fill_job *job = arg;
    for (int i = 0; i < job->n; i++)
        if (nic_fill_entry(job->fds[i], &job->out[i]) != 0)
            job->out[i].fd = NIC_GONE; /* closed meanwhile */
    return NULL;
}

/* Fill out[] from the open slots of pfd with two threads; -1 when it could
 * not (no memory, no thread), so the caller falls back to one. */
static int fill_parallel(const struct pollfd *pfd, int hint, int dirfd, nic_entry *out, int *maxfd)
{
    int *fds = malloc((size_t)hint * sizeof *fds);
    int count = 0, n = 0;
    pthread_t thread;
    struct fill_job low, high;

    if (fds == NULL)
        return -1;
    for (int i = 0; i < hint; i++)
        if (!(pfd[i].revents & POLLNVAL) && i != dirfd)
            fds[count++] = i;
    low = (struct fill_job){fds, out, count / 2};
    high = (struct fill_job){fds + low.n, out + low.n, count - low.n};
    if (pthread_create(&thread, NULL, fill_job_run, &high) != 0) {
        free(fds);
        return -1;
    }
    fill_job_run(&low);
    pthread_join(thread, NULL);
    free(fds);
    for (int i = 0; i < count; i++) {
        if (out[i].fd == NIC_GONE)
            continue;
        out[n++] = out[i];
        *maxfd = (int)out[i].fd;
    }
    return n;
}

/* poll() over [0, hint) with events = 0: closed slots come back POLLNVAL.
 * The result is trusted only when it accounts for every descriptor the
 * dirfd's st_size counts; O_PATH descriptors (POLLNVAL although open) are
 * looked for with F_GETFD first, anything still missing (above hint or
 * above the soft limit) sends us to the listing. */
static int snapshot_poll(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    struct pollfd stack_pfd[NIC_POLL_STACK];
    struct pollfd *pfd = stack_pfd;
    struct stat st;
    int dirfd, hint, limit, n = 0, maxfd = -1;
    long expected, visible = 0;

    dirfd = open_fd_dir();
    if (dirfd < 0)
        return proc_unusable(errno) ? nic_snapshot_scan(out, cap) : -1;
    if (fstat(dirfd, &st) != 0 || st.st_size <= 0)
        return procfs_and_close(dirfd, out, cap, prev, nprev); /* Linux < 6.2 says 0 */
    expected = (long)st.st_size - 1;              /* the dirfd itself */

    /* poll() refuses nfds above the soft limit; asking for the limit costs a
     * system call, so it is read only once the hint is large enough to
     * matter or poll() has said EINVAL (below). */
    hint = HINT_LOAD();
    if (hint > NIC_POLL_STACK) {
        limit = nic_scan_limit();
        if (hint > limit)
            hint = limit;
    }
    if (expected > hint)
        return procfs_and_close(dirfd, out, cap, prev, nprev);
    if (hint > NIC_POLL_STACK) {
        pfd = malloc((size_t)hint * sizeof *pfd);
        if (pfd == NULL)
            return procfs_and_close(dirfd, out, cap, prev, nprev);
    }

    for (int i = 0; i < hint; i++) {
        pfd[i].fd = i;
        pfd[i].events = 0;
        pfd[i].revents = 0;
    }
    while (poll(pfd, (nfds_t)hint, 0) < 0) {
        if (errno == EINVAL && hint > (limit = nic_scan_limit()) && expected <= limit) {
            hint = limit; /* the soft limit was lowered below the hint */
            continue;
        }
        if (errno != EINTR && errno != EAGAIN) {
            if (pfd != stack_pfd)
                free(pfd);
            return procfs_and_close(dirfd, out, cap, prev, nprev);
        }
    }
    for (int i = 0; i < hint; i++)
        if (!(pfd[i].revents & POLLNVAL) && i != dirfd)
            visible++;
    if (visible < expected) {
        for (int i = 0; i < hint; i++) {
            if ((pfd[i].revents & POLLNVAL) && i != dirfd && fcntl(i, F_GETFD) >= 0) {
                pfd[i].revents = 0; /* O_PATH */
                visible++;
            }
        }
    }
    if (visible != expected) {
        if (pfd != stack_pfd)
            free(pfd);
        return procfs_and_close(dirfd, out, cap, prev, nprev);
    }

    n = -1;
    if (expected >= NIC_PARALLEL_MIN && cap >= expected)
        n = fill_parallel(pfd, hint, dirfd, out, &maxfd);
    for (int i = 0, serial = n < 0 ? (n = 0, 1) : 0; serial && i < hint; i++) {
        nic_entry e;
        if ((pfd[i].revents & POLLNVAL) || i == dirfd)
            continue;
        if (fill_since(i, prev, nprev, &e) != 0)
            continue; /* closed by another thread meanwhile */
        if (n < cap)
            out[n] = e;
        n++;
        maxfd = i;
    }
    if (pfd != stack_pfd)
        free(pfd);
    close(dirfd);
    raise_hint(maxfd);
    return n;
}

int nic_snapshot_since(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    if (cap < 0 || (cap > 0 && out == NULL) || nprev < 0 || (nprev > 0 && prev == NULL)) {
        errno = EINVAL;
        return -1;
    }
    return snapshot_poll(out, cap, prev, nprev);
}

int nic_snapshot(nic_entry *out, int cap, int method)
{
    int dirfd;

    if (cap < 0 || (cap > 0 && out == NULL)) {
        errno = EINVAL;
        return -1;
    }
    switch (method) {
    case NIC_METHOD_AUTO:
    case NIC_METHOD_POLL:
    case NIC_METHOD_NATIVE:
        return snapshot_poll(out, cap, NULL, 0);
    case NIC_METHOD_PROCFS:
        dirfd = open_fd_dir();
        if (dirfd < 0)
            return proc_unusable(errno) ? nic_snapshot_scan(out, cap) : -1;
        return procfs_and_close(dirfd, out, cap, NULL, 0);
    case NIC_METHOD_SCAN:
        return nic_snapshot_scan(out, cap);
    default:
        errno = EINVAL;
        return -1;
    }
}

/* ---------------------------------------------------------------------- */
/* Seal and target                                                         */

static int cloexec_range(unsigned int first, unsigned int last)
{
#ifdef SYS_close_range
    return syscall(SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC) == 0 ? 0 : -1;
#else
    (void)first;
    (void)last;
    errno = ENOSYS;
    return -1;
#endif
}

int nic_seal(int low, const int *keep, int nkeep)
{
    return nic_seal_common(low, keep, nkeep, cloexec_range);
}

int nic_target(int fd, char *buf, int size)
{
    char path[sizeof "/proc/self/fd/" + 3 * sizeof(int)];
    ssize_t len;

    if (buf == NULL || size <= 0) {
        errno = EINVAL;
        return -1;
    }
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    /* readlink truncates silently: a result of size - 1 bytes tells the
     * caller to retry with more room (noinherit.h). */
    len = readlink(path, buf, (size_t)size - 1);
    if (len < 0) {
        int err = errno;
        if (fcntl(fd, F_GETFD) < 0)
            return -1; /* EBADF: the descriptor is not open */
        /* Open, yet no link: /proc is not mounted.  ENAMETOOLONG: the path
         * does not fit the PATH_MAX page d_path() writes it into
         * (fs/proc/base.c, do_proc_readlink), whatever buffer we offer. */
        errno = err == ENOENT ? ENOSYS : err;
        return -1;
    }
    buf[len] = '\0';
    return (int)len;
}
