/* pytest-noinherit native core: Linux.
 *
 * Snapshot: a poll() scan validated by the open-fd count that
 * stat("/proc/self/fd").st_size reports (Linux >= 6.2), falling back to a
 * raw getdents64 listing of /proc/self/fd, and to the generic scan when
 * /proc is unusable.  Why: poll() costs ~10 ns per slot while procfs
 * readdir costs ~0.4-0.8 us per descriptor (the kernel builds a dentry for
 * each, fs/proc/fd.c proc_readfd_common), but poll() cannot see O_PATH
 * descriptors (they come back POLLNVAL) nor anything above the soft
 * RLIMIT_NOFILE (it refuses nfds above it), hence the count check.
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
/* What the last complete snapshot learnt, for the next one to start from. */
/* Each value is only a starting point that the open-fd count validates
 * (see snapshot_poll), so threads racing on them cost at most a slower
 * path: relaxed loads and stores are enough, and a child after fork()
 * inherits values that are as good as its parent's. */

#define NIC_HINT_STEP 64
/* Descriptors at or above the soft RLIMIT_NOFILE that the last listing
 * found.  poll() cannot see them (it refuses nfds above the soft limit)
 * and nothing can create new ones while the limit stays below them
 * (dup2(2) says EBADF, open(2) never returns them): they are valgrind's
 * own (it shows the program a soft limit below them and lets F_GETFD and
 * fstat through), or were opened before the limit was lowered. */
#define NIC_HIGH_MAX 64

#ifdef NIC_HAVE_ATOMICS
typedef atomic_int nic_shared_int;
#define SHARED_LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define SHARED_STORE(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)
#else
typedef volatile int nic_shared_int;
#define SHARED_LOAD(x) (x)
#define SHARED_STORE(x, v) ((x) = (v))
#endif

/* One past the highest descriptor below the soft limit, rounded up to
 * NIC_HINT_STEP: it follows the table down as well as up. */
static nic_shared_int poll_hint = NIC_HINT_STEP;
/* The soft limit when it was last read; 0 before the first read. */
static nic_shared_int known_limit;
static nic_shared_int high_count;
static nic_shared_int high_fds[NIC_HIGH_MAX];

static int round_hint(int maxfd)
{
    if (maxfd < 0)
        return NIC_HINT_STEP;
    if (maxfd >= INT_MAX - 2 * NIC_HINT_STEP)
        return INT_MAX - NIC_HINT_STEP;
    return (maxfd + NIC_HINT_STEP) / NIC_HINT_STEP * NIC_HINT_STEP;
}

static int read_limit(void)
{
    int limit = nic_scan_limit();
    SHARED_STORE(known_limit, limit);
    return limit;
}

/* Remember a complete, ascending table: the poll range for the next call,
 * and the descriptors above the soft limit that poll() cannot see. */
static void learn(const nic_entry *out, int n, int limit)
{
    int low = -1, first_high = n;
    for (int i = n - 1; i >= 0; i--) {
        if ((int)out[i].fd < limit) {
            low = (int)out[i].fd;
            break;
        }
        first_high = i;
    }
    SHARED_STORE(poll_hint, round_hint(low));
    if (n - first_high > NIC_HIGH_MAX) {
        SHARED_STORE(high_count, 0); /* too many to remember: the listing finds them */
        return;
    }
    for (int i = first_high; i < n; i++)
        SHARED_STORE(high_fds[i - first_high], (int)out[i].fd);
    SHARED_STORE(high_count, n - first_high);
}

/* ---------------------------------------------------------------------- */
/* /proc/self/fd                                                           */

/* The listing's directory is opened afresh on every call and the fast
 * path opens nothing: a descriptor kept open between snapshots would show
 * in every other listing of /proc/self/fd (os.listdir, the pure backend,
 * the user's own leak checks) and would outlive fork() still pointing at
 * the parent's table (/proc/self resolves when the directory is opened,
 * proc(5)). */
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

/* One entry: with old (fd's entry in the previous table), old's identity
 * when the flag is unchanged, so one F_GETFD instead of F_GETFD + fstat
 * (see nic_snapshot_since).  0, or -1 when fd is not open. */
static int fill_from(int fd, const nic_entry *old, nic_entry *e)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -1;
    if (old != NULL && ((flags & FD_CLOEXEC) ? NIC_FLAG_CLOEXEC : 0) == old->flags) {
        *e = *old;
        return 0;
    }
    return nic_fill_entry_flags(fd, flags, e);
}

/* NIC_METHOD_PROCFS over an open dirfd, which it leaves open.  Raw
 * getdents64 with a 32 KiB stack buffer as in CPython's
 * _close_open_fds_safe(): no opendir(), no malloc. */
static int snapshot_procfs(int dirfd, nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    union {
        char bytes[32768];
        uint64_t align;
    } buf;
    int n = 0;

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
            if (fill_from(fd, prev ? find_prev(prev, nprev, fd) : NULL, &e) != 0)
                continue; /* EBADF: closed since the listing */
            if (n < cap)
                out[n] = e;
            n++;
        }
    }
    nic_sort_entries(out, n < cap ? n : cap);
    return n;
}

static int procfs_and_close(int dirfd, nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    int n = snapshot_procfs(dirfd, out, cap, prev, nprev);
    close_keep_errno(dirfd);
    if (n >= 0 && n <= cap)
        learn(out, n, read_limit());
    return n;
}

static int listing(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    int dirfd = open_fd_dir();
    if (dirfd < 0)
        return proc_unusable(errno) ? nic_snapshot_scan(out, cap) : -1;
    return procfs_and_close(dirfd, out, cap, prev, nprev);
}

/* ---------------------------------------------------------------------- */
/* NIC_METHOD_POLL                                                         */

#define NIC_POLL_STACK 1024

/* A descriptor to read, and its entry in the previous table (or NULL). */
struct candidate {
    int fd;
    const nic_entry *old;
};

/* Large tables: the per-descriptor F_GETFD + fstat are two system calls at
 * the kernel's floor, so a second thread filling half the entries is the
 * only way left to go faster; the fd table is read under RCU, so the halves
 * do not contend.  Off (0) by default: on a 2-vCPU machine the second
 * thread did not win measurably at 10 000 or 20 000 descriptors
 * (benchmarks/bench_snapshot.py), and it costs a thread per snapshot. */
#ifndef NIC_PARALLEL_MIN
#define NIC_PARALLEL_MIN 0
#endif
#define NIC_GONE UINT64_MAX

struct fill_job {
    const struct candidate *cand;
    nic_entry *out;
    int n;
};

static void *fill_job_run(void *arg)
{
    struct fill_job *job = arg;
    for (int i = 0; i < job->n; i++)
        if (fill_from(job->cand[i].fd, job->cand[i].old, &job->out[i]) != 0)
            job->out[i].fd = NIC_GONE; /* closed meanwhile */
    return NULL;
}

/* Read every candidate into out (ascending when the candidates are);
 * returns how many are open, writing at most cap. */
static int fill_candidates(const struct candidate *cand, int ncand, nic_entry *out, int cap)
{
    int n = 0;
    if (NIC_PARALLEL_MIN > 0 && ncand >= NIC_PARALLEL_MIN && cap >= ncand) {
        pthread_t thread;
        struct fill_job low = {cand, out, ncand / 2};
        struct fill_job high = {cand + low.n, out + low.n, ncand - low.n};
        if (pthread_create(&thread, NULL, fill_job_run, &high) == 0) {
            fill_job_run(&low);
            pthread_join(thread, NULL);
            for (int i = 0; i < ncand; i++)
                if (out[i].fd != NIC_GONE)
                    out[n++] = out[i];
            return n;
        }
    }
    for (int i = 0; i < ncand; i++) {
        nic_entry e;
        if (fill_from(cand[i].fd, cand[i].old, &e) != 0)
            continue; /* closed by another thread meanwhile */
        if (n < cap)
            out[n] = e;
        n++;
    }
    return n;
}

/* The fast path, for nic_snapshot (prev NULL) and nic_snapshot_since.
 *
 * stat("/proc/self/fd") by path says how many descriptors are open
 * (st_size, Linux >= 6.2, fs/proc/fd.c proc_fd_getattr) without opening
 * one.  poll() with events = 0 over a range that follows the table reports
 * closed slots as POLLNVAL; with a previous table only new slots and slots
 * whose flag changed cost an fstat.  Descriptors poll() cannot show are
 * read one by one: O_PATH ones of the previous table (poll() reports them
 * POLLNVAL, they have no file operations, open(2)) and those at or above
 * the soft limit (the previous table's and the last listing's).  The
 * result is trusted only when it holds exactly as many descriptors as the
 * count; otherwise new O_PATH descriptors are looked for among the closed
 * slots when there are few, and anything still missing (beyond the range,
 * or a number reserved by a thread blocked in accept(2), which the count
 * includes) sends us to the listing. */
static int snapshot_poll(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    struct pollfd stack_pfd[NIC_POLL_STACK];
    struct pollfd *pfd = stack_pfd;
    struct candidate *cand = NULL;
    struct stat st;
    int limit, range, top = -1, ncand = 0, visible = 0, n, last, nhigh;
    long expected;

    if (stat("/proc/self/fd", &st) != 0)
        return listing(out, cap, prev, nprev);
    if (st.st_size <= 0)
        return listing(out, cap, prev, nprev); /* Linux < 6.2 says 0 */
    expected = (long)st.st_size;
    if (expected > INT_MAX / 2)
        return listing(out, cap, prev, nprev);

    /* The range: one past the highest descriptor below the soft limit that
     * the previous table (or the last snapshot) saw, plus room for a few
     * new ones, and never below the count: new descriptors take the lowest
     * free numbers. */
    limit = SHARED_LOAD(known_limit);
    if (limit <= 0)
        limit = read_limit();
    if (prev != NULL) {
        for (int i = nprev - 1; i >= 0; i--) {
            if (prev[i].fd < (uint64_t)limit) {
                top = (int)prev[i].fd;
                break;
            }
        }
        range = round_hint(top);
    } else {
        range = SHARED_LOAD(poll_hint);
    }
    if (range < expected)
        range = (int)expected;
    range = round_hint(range + range / 16);
    if (range > limit)
        range = limit;

    if (range > NIC_POLL_STACK) {
        pfd = malloc((size_t)range * sizeof *pfd);
        if (pfd == NULL)
            return listing(out, cap, prev, nprev);
    }
    for (int i = 0; i < range; i++) {
        pfd[i].fd = i;
        pfd[i].events = 0;
        pfd[i].revents = 0;
    }
    while (poll(pfd, (nfds_t)range, 0) < 0) {
        if (errno == EINVAL && range > (limit = read_limit())) {
            range = limit; /* the soft limit was lowered below the range */
            continue;
        }
        if (errno != EINTR && errno != EAGAIN)
            goto slow;
    }

    nhigh = SHARED_LOAD(high_count);
    if (nhigh < 0 || nhigh > NIC_HIGH_MAX)
        nhigh = 0;
    cand = malloc(((size_t)range + (size_t)nprev + NIC_HIGH_MAX) * sizeof *cand);
    if (cand == NULL)
        goto slow;

    /* The open slots, merged with the previous table (ascending; anything
     * out of order in it is ignored). */
    int j = 0;
    for (int i = 0; i < range; i++) {
        const nic_entry *old = NULL;
        while (j < nprev && prev[j].fd < (uint64_t)i)
            j++;
        if (j < nprev && prev[j].fd == (uint64_t)i)
            old = &prev[j];
        if (!(pfd[i].revents & POLLNVAL)) {
            visible++;
            cand[ncand++] = (struct candidate){i, old};
        } else if (old != NULL) {
            cand[ncand++] = (struct candidate){i, old}; /* O_PATH, or closed */
        }
    }
    /* Beyond the range: the previous table's, then the last listing's. */
    for (last = range - 1; j < nprev; j++) {
        if (prev[j].fd > (uint64_t)last && prev[j].fd <= (uint64_t)INT_MAX) {
            last = (int)prev[j].fd;
            cand[ncand++] = (struct candidate){last, &prev[j]};
        }
    }
    for (int k = 0, above = range - 1; k < nhigh; k++) {
        int fd = SHARED_LOAD(high_fds[k]);
        if (fd <= above)
            continue; /* torn by a concurrent listing: ignore */
        above = fd;
        if (prev == NULL || find_prev(prev, nprev, fd) == NULL)
            cand[ncand++] = (struct candidate){fd, NULL};
    }

    n = fill_candidates(cand, ncand, out, cap);

    /* Missing ones among the closed slots: O_PATH descriptors opened since.
     * One F_GETFD per closed slot, so only when that is not more work than
     * the listing (about two system calls' worth per descriptor). */
    if (n < expected && (long)(range - visible) <= 2 * expected + NIC_HINT_STEP) {
        for (int i = 0, k = 0; i < range && n < expected; i++) {
            while (k < ncand && cand[k].fd < i)
                k++;
            if (!(pfd[i].revents & POLLNVAL) || (k < ncand && cand[k].fd == i))
                continue;
            nic_entry e;
            if (nic_fill_entry(i, &e) != 0)
                continue;
            if (n < cap)
                out[n] = e;
            n++;
        }
    }
    if (n != expected)
        goto slow;
    free(cand);
    if (pfd != stack_pfd)
        free(pfd);
    if (n <= cap) {
        nic_sort_entries(out, n);
        learn(out, n, limit);
    }
    return n;

slow:
    free(cand);
    if (pfd != stack_pfd)
        free(pfd);
    return listing(out, cap, prev, nprev);
}

int nic_snapshot_since(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    if (cap < 0 || (cap > 0 && out == NULL) || nprev < 0 || (nprev > 0 && prev == NULL)) {
        errno = EINVAL;
        return -1;
    }
    return snapshot_poll(out, cap, nprev > 0 ? prev : NULL, nprev);
}

int nic_snapshot(nic_entry *out, int cap, int method)
{
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
        return listing(out, cap, NULL, 0);
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
