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
 *
 * The per-test check (nic_snapshot_delta) first asks whether the open
 * numbers are still exactly the previous table's: the count equals the
 * previous table's size, and one select() over the previous table's
 * numbers does not fail with EBADF (fs/select.c max_select_fd() tests the
 * set against the open-fd bitmap a word at a time; select, unlike poll,
 * knows no soft limit and counts O_PATH descriptors as open).  Then
 * nothing is read per descriptor unless the caller wants the close-on-exec
 * flags, which Linux only reports one descriptor per call.
 */
#define _GNU_SOURCE /* syscall(), O_PATH, CLOSE_RANGE_CLOEXEC */
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
#define NIC_HAVE_ATOMICS 1
#endif

#include "core_internal.h"
#include "noinherit_delta.h"

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

/* Numbers reserved but not installed, as the last snapshot found them.  A
 * thread blocked in accept(2) holds the number the new connection will
 * get (get_unused_fd_flags() before the wait, net/socket.c): the count
 * includes it, nothing else shows it (poll() says POLLNVAL, F_GETFD EBADF,
 * the listing leaves it out), only select() finds it in the open-fd
 * bitmap.  pytest-rerunfailures' server thread does that in every pytest
 * process with pytest-xdist installed. */
#define NIC_RESERVED_MAX 8
static nic_shared_int reserved_count;
static nic_shared_int reserved_fds[NIC_RESERVED_MAX];

/* The reserved numbers learnt, ascending, into fds; how many. */
static int load_reserved(int *fds)
{
    int n = SHARED_LOAD(reserved_count);
    if (n < 0 || n > NIC_RESERVED_MAX)
        return 0;
    for (int i = 0; i < n; i++) {
        fds[i] = SHARED_LOAD(reserved_fds[i]);
        if (fds[i] < 0 || (i > 0 && fds[i] <= fds[i - 1]))
            return 0; /* torn by a concurrent store: learn again */
    }
    return n;
}

static void store_reserved(const int *fds, int n)
{
    SHARED_STORE(reserved_count, 0);
    for (int i = 0; i < n; i++)
        SHARED_STORE(reserved_fds[i], fds[i]);
    SHARED_STORE(reserved_count, n);
}

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
/* Reading one descriptor                                                  */

/* What a snapshot does with one slot, given its entry in the previous
 * table (if any). */
enum nic_read {
    READ_NEW,   /* no previous entry: F_GETFD + fstat */
    READ_FLAG,  /* F_GETFD; the previous identity when the flag is unchanged */
    READ_OPEN,  /* F_GETFD only to tell open from closed; the previous entry */
    READ_NONE   /* open by poll(): the previous entry as it is */
};

/* A descriptor to read, and its entry in the previous table (or NULL). */
struct candidate {
    int fd;
    int how;
    const nic_entry *old;
};

static uint64_t cloexec_bit(int fd_flags)
{
    return (fd_flags & FD_CLOEXEC) ? NIC_FLAG_CLOEXEC : 0;
}

/* One entry as c->how says.  0, or -1 when the descriptor is not open. */
static int fill_one(const struct candidate *c, nic_entry *e)
{
    if (c->how == READ_NONE) {
        *e = *c->old;
        return 0;
    }
    int flags = fcntl(c->fd, F_GETFD);
    if (flags < 0)
        return -1;
    if (c->old != NULL && (c->how == READ_OPEN || cloexec_bit(flags) == c->old->flags)) {
        *e = *c->old;
        return 0;
    }
    return nic_fill_entry_flags(c->fd, flags, e);
}

/* How to read a descriptor that is in the previous table and that poll()
 * did not show as open (closed, O_PATH, or beyond the poll range). */
static int read_unseen(int options)
{
    return (options & NIC_DELTA_FLAGS) ? READ_FLAG : READ_OPEN;
}

/* ---------------------------------------------------------------------- */
/* /proc/self/fd                                                           */

/* The listing's directory is opened afresh on every call and the fast
 * paths open nothing: a descriptor kept open between snapshots would show
 * in every other listing of /proc/self/fd (os.listdir, the pure backend,
 * pytester's --lsof check, the user's own leak checks), could be closed or
 * its number reused by the program, and would outlive fork() still
 * pointing at the parent's table (/proc/self resolves when the directory
 * is opened, proc(5)).  stat() by path costs the same one system call as
 * fstat() of a kept descriptor, and ~2 us more (the path walk), which
 * the per-test budget affords. */
static int open_fd_dir(void)
{
    int fd;
    do
        fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    return fd;
}

/* The number of open descriptors (st_size of /proc/self/fd, Linux >= 6.2),
 * or -1 where the kernel does not say (older kernels report 0). */
static long open_count(void)
{
    struct stat st;
    if (stat("/proc/self/fd", &st) != 0 || st.st_size <= 0 || st.st_size > INT_MAX / 2)
        return -1;
    return (long)st.st_size;
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

/* NIC_METHOD_PROCFS over an open dirfd, which it leaves open.  Raw
 * getdents64 with a 32 KiB stack buffer as in CPython's
 * _close_open_fds_safe(): no opendir(), no malloc.  A listed descriptor
 * of prev is read as read_unseen(options) says: the listing shows it
 * open, but not whether it is still the same one. */
static int snapshot_procfs(int dirfd, nic_entry *out, int cap, const nic_entry *prev, int nprev,
                           int options)
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
            struct candidate c = {fd, READ_NEW, prev ? find_prev(prev, nprev, fd) : NULL};
            if (c.old != NULL)
                c.how = read_unseen(options);
            nic_entry e;
            if (fill_one(&c, &e) != 0)
                continue; /* EBADF: closed since the listing */
            if (n < cap)
                out[n] = e;
            n++;
        }
    }
    nic_sort_entries(out, n < cap ? n : cap);
    return n;
}

static int procfs_and_close(int dirfd, nic_entry *out, int cap, const nic_entry *prev, int nprev,
                            int options)
{
    int n = snapshot_procfs(dirfd, out, cap, prev, nprev, options);
    close_keep_errno(dirfd);
    if (n >= 0 && n <= cap)
        learn(out, n, read_limit());
    return n;
}

static int listing(nic_entry *out, int cap, const nic_entry *prev, int nprev, int options)
{
    int dirfd = open_fd_dir();
    if (dirfd < 0)
        return proc_unusable(errno) ? nic_snapshot_scan(out, cap) : -1;
    return procfs_and_close(dirfd, out, cap, prev, nprev, options);
}

/* ---------------------------------------------------------------------- */
/* select(): which numbers are in the open-fd bitmap                       */

#define NIC_SELECT_STACK 256 /* words: 16 384 descriptors in 2 KiB of stack */
#define NIC_SELECT_MAX (1 << 20) /* Linux's default nr_open */
#define NIC_LONG_BITS (8 * (int)sizeof(unsigned long))

/* 1 when select() finds every one of fds[0..n) (ascending) in the open-fd
 * bitmap, 0 when one is not there or it cannot be told.
 *
 * select() fails with EBADF when a number in its sets is not open; it
 * tests that against the open-fd bitmap a word at a time before it polls
 * anything (fs/select.c max_select_fd), then polls each one (~10 ns for a
 * file without a poll method).  It has no soft-limit check (poll() has),
 * and O_PATH descriptors and reserved numbers are open to it (in the
 * bitmap; the poll skips them).  The kernel quietly cuts the sets at the
 * size of the descriptor table (core_sys_select), which only matters when
 * the highest number is past it, that is not open: the caller checks that
 * one.  glibc's FD_SETSIZE does not apply: the sets are passed as they are
 * (the kernel reads top + 1 bits). */
static int in_bitmap(const int *fds, int n)
{
    unsigned long stack_bits[NIC_SELECT_STACK];
    unsigned long *bits = stack_bits;
    int top = n > 0 ? fds[n - 1] : -1, rc;
    size_t words = (size_t)top / NIC_LONG_BITS + 1;

    if (n == 0)
        return 1;
    if (top < 0 || top >= NIC_SELECT_MAX)
        return 0;
    if (words > NIC_SELECT_STACK) {
        bits = malloc(words * sizeof *bits);
        if (bits == NULL)
            return 0;
    }
    memset(bits, 0, words * sizeof *bits);
    for (int i = 0; i < n; i++)
        bits[fds[i] / NIC_LONG_BITS] |= 1UL << (fds[i] % NIC_LONG_BITS);
    do {
        struct timeval now = {0, 0};
        rc = select(top + 1, (fd_set *)(void *)bits, NULL, NULL, &now);
    } while (rc < 0 && errno == EINTR);
    if (bits != stack_bits)
        free(bits);
    return rc >= 0;
}

/* An O_PATH descriptor to duplicate: F_DUPFD(start) of it gives the lowest
 * free number from start on (fs/file.c find_next_fd, a word of the open-fd
 * bitmap at a time), and closing a copy of it neither flushes anything
 * nor drops the process's POSIX locks on a file, as closing a copy of any
 * other kind would (fs/open.c filp_close).  open() itself takes the
 * lowest free number.  Each copy lives only until the next call, like the
 * listing's directory, so a thread that dup2()s onto a number it does not
 * own can lose its copy to us, as to any open(). */
static int open_probe(void)
{
    int fd;
    do
        fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    return fd;
}

/* The lowest free number from start on (start > probe), or -1. */
static int free_from(int probe, int start)
{
    int copy = fcntl(probe, F_DUPFD_CLOEXEC, start);
    if (copy >= 0)
        close(copy);
    return copy;
}

#define NIC_RESERVED_WALK 16

/* Numbers below upto that are taken in the open-fd bitmap but that the
 * table (out[0..n), ascending) does not hold: reserved ones, or O_PATH
 * descriptors poll() hid.  The lowest free numbers from 0 on step over
 * every taken one; a thread blocked in accept() holds what was the lowest
 * free number when it began to wait, so the first few free numbers
 * (NIC_RESERVED_WALK) are looked at only.  How many were found (at most
 * max), into found. */
static int taken_not_held(const nic_entry *out, int n, int upto, int *found, int max)
{
    int probe = open_probe(), from = 0, free_at = probe, nfound = 0, k = 0;

    if (probe < 0)
        return 0;
    for (int step = 0; step < NIC_RESERVED_WALK && nfound < max; step++) {
        for (int x = from; x < free_at && x < upto && nfound < max; x++) { /* all taken */
            while (k < n && out[k].fd < (uint64_t)x)
                k++;
            if (k == n || out[k].fd != (uint64_t)x)
                found[nfound++] = x;
        }
        if (free_at >= upto)
            break;
        from = free_at + 1;
        if ((free_at = free_from(probe, from)) < 0)
            break;
    }
    close(probe);
    return nfound;
}

/* ---------------------------------------------------------------------- */
/* NIC_METHOD_POLL                                                         */

#define NIC_POLL_STACK 1024

/* Large tables: the per-descriptor F_GETFD + fstat are two system calls at
 * the kernel's floor, so a second CPU is the only way left to go faster
 * (the fd table is read under RCU, so two readers do not contend).  The
 * helper thread takes chunks of the candidate list from a shared counter
 * as the calling thread does.  On an idle 2-vCPU machine a snapshot of
 * 10 000 descriptors then takes ~60 % of the one-thread time (5.7 vs
 * 9.4 ms, benchmarks/bench_snapshot.py part 1b), at ~10 % more CPU time;
 * so only with a CPU to spare (spare_cpu) and enough descriptors to read. */
#define NIC_SHARE_MIN 2048
#define NIC_SHARE_CHUNK 256
#define NIC_GONE UINT64_MAX

#ifdef NIC_HAVE_ATOMICS
struct fill_share {
    const struct candidate *cand;
    nic_entry *out;
    int ncand;
    atomic_int next;
};

static void *fill_share_run(void *arg)
{
    struct fill_share *job = arg;
    for (;;) {
        int first = atomic_fetch_add_explicit(&job->next, NIC_SHARE_CHUNK, memory_order_relaxed);
        if (first >= job->ncand)
            return NULL;
        int end = job->ncand - first < NIC_SHARE_CHUNK ? job->ncand : first + NIC_SHARE_CHUNK;
        for (int i = first; i < end; i++)
            if (fill_one(&job->cand[i], &job->out[i]) != 0)
                job->out[i].fd = NIC_GONE; /* closed meanwhile */
    }
}

/* Fill with a helper thread; -1 when it could not be started. */
static int fill_shared(const struct candidate *cand, int ncand, nic_entry *out)
{
    struct fill_share job = {cand, out, ncand, 0};
    pthread_t thread;
    sigset_t all, old;
    int n = 0, started;

    /* The helper runs no Python: no signal is delivered to it. */
    sigfillset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &old) != 0)
        return -1;
    started = pthread_create(&thread, NULL, fill_share_run, &job) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!started)
        return -1;
    fill_share_run(&job);
    pthread_join(thread, NULL);
    for (int i = 0; i < ncand; i++)
        if (out[i].fd != NIC_GONE)
            out[n++] = out[i];
    return n;
}

/* Whether a second CPU is likely to be free: this process may run on two,
 * and the load average leaves one idle.  On a busy machine the helper
 * waits for a CPU while holding a chunk, and the caller waits for it:
 * measured 1.4x the one-thread time on a 2-vCPU machine at a load of 2. */
static int spare_cpu(void)
{
    cpu_set_t set;
    double load;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) < 2)
        return 0;
    return getloadavg(&load, 1) == 1 && load + 1.0 <= (double)CPU_COUNT(&set);
}
#endif

/* Read every candidate into out (ascending when the candidates are);
 * returns how many are open, writing at most cap. */
static int fill_candidates(const struct candidate *cand, int ncand, nic_entry *out, int cap)
{
    int n = 0;
#ifdef NIC_HAVE_ATOMICS
    if (ncand >= NIC_SHARE_MIN && cap >= ncand) {
        int reads = 0;
        for (int i = 0; i < ncand; i++)
            reads += cand[i].how != READ_NONE;
        if (reads >= NIC_SHARE_MIN && spare_cpu()
            && (n = fill_shared(cand, ncand, out)) >= 0)
            return n;
        n = 0;
    }
#endif
    for (int i = 0; i < ncand; i++) {
        nic_entry e;
        if (fill_one(&cand[i], &e) != 0)
            continue; /* closed by another thread meanwhile */
        if (n < cap)
            out[n] = e;
        n++;
    }
    return n;
}

/* The general path, for nic_snapshot (prev NULL) and nic_snapshot_delta.
 *
 * stat("/proc/self/fd") by path says how many descriptors are open
 * (st_size, Linux >= 6.2, fs/proc/fd.c proc_fd_getattr) without opening
 * one.  poll() with events = 0 over a range that follows the table reports
 * closed slots as POLLNVAL; with a previous table only new slots cost an
 * fstat (and, when options has NIC_DELTA_FLAGS, slots whose flag changed;
 * without it an open slot of the previous table costs nothing).
 * Descriptors poll() cannot show are read one by one: O_PATH ones of the
 * previous table (poll() reports them POLLNVAL, they have no file
 * operations, open(2)) and those at or above the soft limit (the previous
 * table's and the last listing's).  The result is trusted only when it
 * holds exactly as many descriptors as the count; otherwise new O_PATH
 * descriptors are looked for among the closed slots when there are few,
 * and anything still missing (beyond the range, or a number reserved by a
 * thread blocked in accept(2), which the count includes) sends us to the
 * listing. */
static int snapshot_poll(nic_entry *out, int cap, const nic_entry *prev, int nprev, int options,
                         long expected)
{
    struct pollfd stack_pfd[NIC_POLL_STACK];
    struct pollfd *pfd = stack_pfd;
    struct candidate *cand = NULL;
    int limit, range, top = -1, ncand = 0, visible = 0, n, last, nhigh;
    int seen = (options & NIC_DELTA_FLAGS) ? READ_FLAG : READ_NONE;

    if (expected < 0)
        expected = open_count();
    if (expected < 0)
        return listing(out, cap, prev, nprev, options);

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
            return listing(out, cap, prev, nprev, options);
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
            cand[ncand++] = (struct candidate){i, old ? seen : READ_NEW, old};
        } else if (old != NULL) {
            cand[ncand++] = (struct candidate){i, read_unseen(options), old}; /* O_PATH, or closed */
        }
    }
    /* Beyond the range: the previous table's, then the last listing's. */
    for (last = range - 1; j < nprev; j++) {
        if (prev[j].fd > (uint64_t)last && prev[j].fd <= (uint64_t)INT_MAX) {
            last = (int)prev[j].fd;
            cand[ncand++] = (struct candidate){last, read_unseen(options), &prev[j]};
        }
    }
    for (int k = 0, above = range - 1; k < nhigh; k++) {
        int fd = SHARED_LOAD(high_fds[k]);
        if (fd <= above)
            continue; /* torn by a concurrent listing: ignore */
        above = fd;
        if (prev == NULL || find_prev(prev, nprev, fd) == NULL)
            cand[ncand++] = (struct candidate){fd, READ_NEW, NULL};
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
    if (n < expected && n <= cap && expected - n <= NIC_RESERVED_MAX) {
        /* Reserved numbers (see NIC_RESERVED_MAX) explain the gap?  Those
         * of the first free ones that are still no descriptor are. */
        int found[NIC_RESERVED_MAX], reserved[NIC_RESERVED_MAX], nfound, nreserved = 0;
        nic_sort_entries(out, n);
        nfound = taken_not_held(out, n, range, found, (int)(expected - n));
        for (int i = 0; i < nfound; i++) {
            nic_entry e;
            if (nic_fill_entry(found[i], &e) != 0)
                reserved[nreserved++] = found[i];
            else if (n < cap)
                out[n++] = e; /* an O_PATH descriptor after all */
            else
                n++;
        }
        if (n + nreserved == expected) {
            store_reserved(reserved, nreserved);
            expected = n;
        }
    } else if (n == expected) {
        SHARED_STORE(reserved_count, 0);
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
    return listing(out, cap, prev, nprev, options);
}

/* ---------------------------------------------------------------------- */
/* Nothing changed?                                                        */

/* Whether number is taken (installed or reserved) without being open:
 * F_DUPFD from it gives the lowest free number from it on (fs/file.c
 * find_next_fd), of an O_PATH descriptor (see holes_only).  select() cannot
 * tell for a number past the highest open one (see in_bitmap). */
static int reserved_now(int number)
{
    int probe, next;
    if (fcntl(number, F_GETFD) >= 0 || errno != EBADF)
        return 0; /* a descriptor now */
    if ((probe = open_probe()) < 0)
        return 0;
    next = probe == number ? probe : probe < number ? free_from(probe, number) : -1;
    close(probe);
    return probe != number && next != number;
}

/* 1 when every descriptor of prev (highest top) is still open and every
 * reserved number still reserved, 0 when not or it cannot be told.  prev
 * is checked to be ascending on the way. */
static int all_open(const nic_entry *prev, int nprev, int top, const int *reserved, int nreserved)
{
    int stack_fds[1024];
    int *fds = stack_fds, n = 0, rc = 0;

    if (nprev + nreserved > 1024) {
        fds = malloc(((size_t)nprev + (size_t)nreserved) * sizeof *fds);
        if (fds == NULL)
            return 0;
    }
    for (int i = 0, r = 0; i < nprev || r < nreserved;) {
        if (i < nprev && (prev[i].fd > (uint64_t)top || (i > 0 && prev[i].fd <= prev[i - 1].fd)))
            goto done; /* not ascending: the general path ignores what is out of order */
        if (i < nprev && r < nreserved && (uint64_t)reserved[r] == prev[i].fd)
            goto done; /* learnt from another table */
        if (r < nreserved && (i == nprev || (uint64_t)reserved[r] < prev[i].fd))
            fds[n++] = reserved[r++];
        else
            fds[n++] = (int)prev[i++].fd;
    }
    /* The set's top is below the table's size when top is open (the
     * highest reserved one past top is looked at alone). */
    if (!in_bitmap(fds, n) || fcntl(top, F_GETFD) < 0)
        goto done;
    for (int r = 0; r < nreserved; r++) {
        if (reserved[r] > top ? !reserved_now(reserved[r]) : fcntl(reserved[r], F_GETFD) >= 0)
            goto done;
    }
    rc = 1;
done:
    if (fds != stack_fds)
        free(fds);
    return rc;
}

/* The lowest number above after that prev (ascending, distinct) does not
 * hold, by binary search: prev[i].fd - i never decreases, and a run of
 * consecutive numbers is where it stays the same. */
static int next_free(const nic_entry *prev, int n, int after)
{
    uint64_t h = (uint64_t)after + 1;
    int lo = 0, hi = n;
    while (lo < hi) { /* the first entry at or above h */
        int mid = lo + (hi - lo) / 2;
        if (prev[mid].fd < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == n || prev[lo].fd != h)
        return (int)h;
    uint64_t run = prev[lo].fd - (uint64_t)lo;
    hi = n;
    while (lo < hi) { /* the first entry past the run */
        int mid = lo + (hi - lo) / 2;
        if (prev[mid].fd - (uint64_t)mid == run)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (int)(prev[lo - 1].fd + 1);
}

/* next_free, skipping the reserved numbers too (ascending, few). */
static int next_unused(const nic_entry *prev, int n, int after, const int *reserved, int nreserved)
{
    int h = next_free(prev, n, after);
    for (int r = 0; r < nreserved; r++)
        if (reserved[r] == h)
            h = next_free(prev, n, h);
    return h;
}

/* Large tables with few holes (a pool of descriptors opened in a row, the
 * usual shape): whether the open numbers in [0, top] are exactly prev's
 * first n (ascending, the last one top, all below the soft limit).  1 yes,
 * 0 no, -1 cannot tell (the caller asks select()).
 *
 * The kernel hands out the lowest free number (open(2)), and
 * F_DUPFD(start) the lowest free one from start on, both found in the
 * open-fd bitmap a word at a time (fs/file.c find_next_fd): one open() and
 * one F_DUPFD per hole of prev below top walk every free number up to
 * top + 1, so they prove every other number in between open.  The
 * descriptor duplicated is an O_PATH one, whose close neither flushes
 * anything nor drops the process's POSIX locks on a file (fs/open.c
 * filp_close); each copy lives only until the next call, like the
 * listing's directory, so a thread that dup2()s onto a number it does not
 * own can lose its copy to us, as to any open(). */
static int holes_only(const nic_entry *prev, int n, int top, const int *reserved, int nreserved)
{
    int want = next_unused(prev, n, -1, reserved, nreserved), rc = 1;
    int probe = open_probe();

    if (probe < 0)
        return -1;
    if (probe != want)
        rc = 0;
    while (rc == 1 && want <= top) {
        int got = free_from(probe, want + 1);
        want = next_unused(prev, n, want, reserved, nreserved);
        if (got < 0)
            rc = -1; /* EMFILE, EINVAL: the soft limit moved */
        else if (got != want)
            rc = 0;
    }
    close(probe);
    /* The walk saw every number up to want taken; a reserved one must
     * still be no descriptor, and past want, still taken. */
    for (int r = 0; rc == 1 && r < nreserved; r++)
        if (reserved[r] > want ? !reserved_now(reserved[r]) : fcntl(reserved[r], F_GETFD) >= 0)
            rc = 0;
    return rc;
}

#define NIC_HOLES_MAX 16  /* 2 system calls each: the per-test check stays under 40 */
#define NIC_HOLES_MIN 512 /* below it, select() costs less than open() */

/* 1 when the open numbers are still exactly prev's and the reserved ones
 * (as many as the count says), 0 when not or it cannot be told.  prev is
 * checked to be ascending where it is read whole anyway (select); the walk
 * reads a few entries of it, and a prev out of order can then only come
 * back as it is. */
static int same_numbers(const nic_entry *prev, int nprev, const int *reserved, int nreserved)
{
    int limit = SHARED_LOAD(known_limit), low = nprev, top, low_top, holes;

    if (prev[nprev - 1].fd >= (uint64_t)INT_MAX)
        return 0;
    top = (int)prev[nprev - 1].fd;
    if (limit <= 0)
        limit = read_limit();
    while (low > 0 && prev[low - 1].fd >= (uint64_t)limit)
        low--;
    low_top = low > 0 ? (int)prev[low - 1].fd : -1;
    holes = low_top + 1 - low;
    for (int r = 0; r < nreserved; r++)
        holes -= reserved[r] < low_top;
    if (low >= NIC_HOLES_MIN && holes >= 0 && holes <= NIC_HOLES_MAX && nprev - low <= NIC_HIGH_MAX
        && (nreserved == 0 || reserved[nreserved - 1] < limit)) {
        int rc = holes_only(prev, low, low_top, reserved, nreserved);
        if (rc == 0)
            return 0;
        if (rc == 1) {
            /* Above the soft limit nothing new can appear (see NIC_HIGH_MAX),
             * and the count says nothing did elsewhere: what is left to
             * tell is whether those of prev (valgrind's) are still open,
             * in one select() and the F_GETFD that shows it saw them all. */
            int high[NIC_HIGH_MAX];
            for (int k = low; k < nprev; k++)
                high[k - low] = (int)prev[k].fd;
            return nprev == low || (in_bitmap(high, nprev - low) && fcntl(top, F_GETFD) >= 0);
        }
    }
    return all_open(prev, nprev, top, reserved, nreserved);
}

/* With NIC_DELTA_FLAGS: F_GETFD of every descriptor of prev, when the count
 * says they may be the only ones open.  nprev (out holds the table: prev
 * with the entries whose flag changed read afresh, or as much of it as
 * cap allows) when every one is open; 0 with *same set when none changed;
 * -1 when one is closed (or closed meanwhile), for the general path. */
static int flags_of(nic_entry *out, int cap, const nic_entry *prev, int nprev, int *same)
{
    int changed = 0;
    for (int i = 0; i < nprev; i++) {
        if (prev[i].fd >= (uint64_t)INT_MAX || (i > 0 && prev[i].fd <= prev[i - 1].fd))
            return -1; /* not ascending: the general path ignores what is out of order */
        int flags = fcntl((int)prev[i].fd, F_GETFD);
        if (flags < 0)
            return -1;
        if (cloexec_bit(flags) == prev[i].flags) {
            if (changed && i < cap)
                out[i] = prev[i];
            continue;
        }
        if (!changed && cap > 0)
            memcpy(out, prev, (size_t)(i < cap ? i : cap) * sizeof *out);
        changed = 1;
        nic_entry e;
        if (nic_fill_entry_flags((int)prev[i].fd, flags, &e) != 0)
            return -1;
        if (i < cap)
            out[i] = e;
    }
    if (!changed) {
        *same = 1;
        return 0;
    }
    return nprev;
}

int nic_snapshot_delta(nic_entry *out, int cap, const nic_entry *prev, int nprev, int options,
                       int *same)
{
    int unused, reserved[NIC_RESERVED_MAX], nreserved;
    long expected;

    if (cap < 0 || (cap > 0 && out == NULL) || nprev < 0 || (nprev > 0 && prev == NULL)
        || (options & ~NIC_DELTA_FLAGS) != 0) {
        errno = EINVAL;
        return -1;
    }
    if (same == NULL)
        same = &unused;
    *same = 0;
    if (nprev == 0)
        return snapshot_poll(out, cap, NULL, 0, options, -1);

    /* The count first: when it differs, something surely changed. */
    nreserved = load_reserved(reserved);
    expected = open_count();
    if (expected == nprev + nreserved) {
        if (options & NIC_DELTA_FLAGS) {
            if (flags_of(out, cap, prev, nprev, same) >= 0
                && (nreserved == 0 || all_open(prev, nprev, (int)prev[nprev - 1].fd, reserved,
                                                nreserved)))
                return nprev; /* out untouched when the table is the same */
            *same = 0;
        } else if (same_numbers(prev, nprev, reserved, nreserved)) {
            *same = 1;
            return nprev;
        }
    }
    return snapshot_poll(out, cap, prev, nprev, options, expected);
}

int nic_snapshot_since(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    int same, n = nic_snapshot_delta(out, cap, prev, nprev, NIC_DELTA_FLAGS, &same);
    if (n > 0 && same && cap > 0)
        memcpy(out, prev, (size_t)(n < cap ? n : cap) * sizeof *out);
    return n;
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
        return snapshot_poll(out, cap, NULL, 0, 0, -1);
    case NIC_METHOD_PROCFS:
        return listing(out, cap, NULL, 0, 0);
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
