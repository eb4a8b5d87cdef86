/* pytest-noinherit native core: the POSIX code every platform shares.
 *
 * The inheritable flag follows CPython's Python/fileutils.c
 * (get_inheritable / set_inheritable, PEP 446); the generic snapshot is a
 * poll() scan; nic_socket_info reads what getsockopt/getsockname/getpeername
 * say about a socket.  The platform file supplies nic_snapshot, nic_seal,
 * nic_target and nic_platform.
 */
#define _GNU_SOURCE /* O_PATH on glibc; ignored elsewhere */
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
#define NIC_HAVE_ATOMICS 1
#endif

#include "core_internal.h"
#include "noinherit_delta.h"

/* ---------------------------------------------------------------------- */
/* The inheritable flag                                                    */

int nic_get_inheritable(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -1;
    return !(flags & FD_CLOEXEC);
}

/* Slow path of CPython's set_inheritable(): F_SETFD only when the bit
 * changes, which saves a syscall for descriptors already in the wanted
 * state. */
static int set_inheritable_fcntl(int fd, int inheritable)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -1;
    int wanted = inheritable ? (flags & ~FD_CLOEXEC) : (flags | FD_CLOEXEC);
    if (wanted == flags)
        return 0;
    return fcntl(fd, F_SETFD, wanted) < 0 ? -1 : 0;
}

#if defined(FIOCLEX) && defined(FIONCLEX)
/* CPython's ioctl_works: -1 unknown, 0 ioctl refused, 1 ioctl works.  A
 * relaxed atomic as in CPython since gh-117657; threads racing to store the
 * same answer is harmless. */
#ifdef NIC_HAVE_ATOMICS
static atomic_int ioctl_works = -1;
#define IOCTL_WORKS_LOAD() atomic_load_explicit(&ioctl_works, memory_order_relaxed)
#define IOCTL_WORKS_STORE(v) atomic_store_explicit(&ioctl_works, (v), memory_order_relaxed)
#else
static volatile int ioctl_works = -1;
#define IOCTL_WORKS_LOAD() (ioctl_works)
#define IOCTL_WORKS_STORE(v) (ioctl_works = (v))
#endif
#endif

int nic_set_inheritable(int fd, int inheritable)
{
#if defined(FIOCLEX) && defined(FIONCLEX)
    if (IOCTL_WORKS_LOAD() != 0) {
        /* One syscall instead of two (fileutils.c set_inheritable). */
        if (ioctl(fd, inheritable ? FIONCLEX : FIOCLEX, NULL) == 0) {
            IOCTL_WORKS_STORE(1);
            return 0;
        }
        if (errno == ENOTTY || errno == EACCES) {
            /* ENOTTY: Illumos (bpo-22258); EACCES: SELinux policy on
             * Android (bpo-27057).  Never try ioctl again. */
            IOCTL_WORKS_STORE(0);
        } else if (errno != EBADF) {
            return -1;
        }
        /* EBADF: O_PATH descriptors refuse ioctl but accept fcntl
         * (bpo-44849); a closed fd fails fcntl with EBADF too.  The cache
         * is left alone: ioctl works for every other descriptor. */
    }
#endif
    return set_inheritable_fcntl(fd, inheritable);
}

/* ---------------------------------------------------------------------- */
/* Entries and the generic scan                                            */

int nic_fill_entry(int fd, nic_entry *e)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -1;
    return nic_fill_entry_flags(fd, flags, e);
}

/* fstat(2) by its own system call where glibc's struct stat is the
 * kernel's: glibc >= 2.33 turns fstat() into newfstatat(fd, "",
 * AT_EMPTY_PATH), whose empty-path check costs ~20 % more per call (on
 * x86-64, Linux 6.18: 380 vs 470 ns), and this is half of the snapshot's
 * floor of two system calls per descriptor. */
static int fstat_fd(int fd, struct stat *st)
{
#if defined(__linux__) && defined(__x86_64__) && defined(SYS_fstat)
    return (int)syscall(SYS_fstat, fd, st);
#else
    return fstat(fd, st);
#endif
}

int nic_fill_entry_flags(int fd, int fd_flags, nic_entry *e)
{
    struct stat st;
    e->fd = (uint64_t)fd;
    e->flags = (fd_flags & FD_CLOEXEC) ? NIC_FLAG_CLOEXEC : 0;
    if (fstat_fd(fd, &st) == 0) {
        e->dev = (uint64_t)st.st_dev;
        e->ino = (uint64_t)st.st_ino;
        e->mode = (uint64_t)st.st_mode;
    } else if (errno == EBADF) {
        return -1; /* closed by another thread since F_GETFD */
    } else {
        /* Open but not describable (e.g. EOVERFLOW): still listed, since
         * the flag is what the snapshot is for. */
        e->dev = e->ino = e->mode = 0;
    }
    return 0;
}

int nic_scan_limit(void)
{
    const rlim_t ceiling = (rlim_t)1 << 20; /* Linux's default nr_open */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 256; /* CPython's safe_get_max_fd() last resort */
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > ceiling)
        return (int)ceiling;
    return (int)rl.rlim_cur;
}

/* poll() with timeout 0 only fails transiently with EINTR or EAGAIN. */
static int poll_now(struct pollfd *pfd, int count)
{
    for (;;) {
        if (poll(pfd, (nfds_t)count, 0) >= 0)
            return 0;
        if (errno != EINTR && errno != EAGAIN)
            return -1;
    }
}

#define NIC_POLL_CHUNK 1024 /* 8 KiB of stack; never above a soft limit */

int nic_snapshot_scan(nic_entry *out, int cap)
{
    struct pollfd pfd[NIC_POLL_CHUNK];
    int limit = nic_scan_limit();
    int n = 0;

    if (cap < 0 || (cap > 0 && out == NULL)) {
        errno = EINVAL;
        return -1;
    }
    for (int base = 0; base < limit; base += NIC_POLL_CHUNK) {
        int count = limit - base < NIC_POLL_CHUNK ? limit - base : NIC_POLL_CHUNK;
        for (int i = 0; i < count; i++) {
            pfd[i].fd = base + i;
            pfd[i].events = 0;
            pfd[i].revents = 0;
        }
        if (poll_now(pfd, count) < 0)
            return -1;
        for (int i = 0; i < count; i++) {
            nic_entry e;
#ifndef O_PATH
            if (pfd[i].revents & POLLNVAL)
                continue;
#endif
            /* With O_PATH, POLLNVAL is not proof: poll() reports it for
             * O_PATH descriptors too (they have no file operations,
             * open(2)), so F_GETFD decides. */
            if (nic_fill_entry(base + i, &e) != 0)
                continue;
            if (n < cap)
                out[n] = e;
            n++;
        }
    }
    return n;
}

int nic_parse_fd(const char *name)
{
    long value = 0;
    if (*name == '\0')
        return -1;
    for (; *name; name++) {
        if (*name < '0' || *name > '9')
            return -1;
        value = value * 10 + (*name - '0');
        if (value > INT_MAX)
            return -1;
    }
    return (int)value;
}

static int compare_entries(const void *a, const void *b)
{
    uint64_t x = ((const nic_entry *)a)->fd, y = ((const nic_entry *)b)->fd;
    return (x > y) - (x < y);
}

void nic_sort_entries(nic_entry *out, int n)
{
    for (int i = 1; i < n; i++) {
        if (out[i - 1].fd > out[i].fd) {
            qsort(out, (size_t)n, sizeof *out, compare_entries);
            return;
        }
    }
}

/* ---------------------------------------------------------------------- */
/* Seal                                                                    */

static int compare_ints(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The gaps between the sorted, distinct kept fds, as in CPython's
 * _close_range_except() (Modules/_posixsubprocess.c). */
static int seal_ranges(int low, const int *keep, int nkeep,
                       nic_cloexec_range_fn range)
{
    unsigned int first = (unsigned int)low;
    for (int i = 0; i < nkeep; i++) {
        unsigned int k = (unsigned int)keep[i];
        if (k > first && range(first, k - 1) != 0)
            return -1;
        first = k + 1;
    }
    return range(first, ~0U);
}

static int seal_loop(int low, const int *keep, int nkeep)
{
    int cap = 256, n, rc = 0, saved = 0;
    nic_entry *buf = NULL;

    for (;;) {
        nic_entry *grown = realloc(buf, (size_t)cap * sizeof *buf);
        if (grown == NULL) {
            free(buf);
            errno = ENOMEM;
            return -1;
        }
        buf = grown;
        n = nic_snapshot(buf, cap, NIC_METHOD_AUTO);
        if (n < 0) {
            saved = errno;
            free(buf);
            errno = saved;
            return -1;
        }
        if (n <= cap)
            break;
        cap = n + 64; /* the table grew between the calls */
    }
    for (int i = 0; i < n; i++) {
        int fd = (int)buf[i].fd;
        if (fd < low || (buf[i].flags & NIC_FLAG_CLOEXEC))
            continue;
        if (nkeep > 0 && bsearch(&fd, keep, (size_t)nkeep, sizeof *keep, compare_ints))
            continue;
        /* EBADF: closed meanwhile, nothing left to seal. */
        if (nic_set_inheritable(fd, 0) != 0 && errno != EBADF && rc == 0) {
            rc = -1;
            saved = errno;
        }
    }
    free(buf);
    if (rc != 0)
        errno = saved;
    return rc;
}

int nic_seal_common(int low, const int *keep, int nkeep, nic_cloexec_range_fn range)
{
    int *sorted = NULL, nsorted = 0, rc;

    if (low < 0 || nkeep < 0 || (nkeep > 0 && keep == NULL)) {
        errno = EINVAL;
        return -1;
    }
    if (nkeep > 0) {
        sorted = malloc((size_t)nkeep * sizeof *sorted);
        if (sorted == NULL) {
            errno = ENOMEM;
            return -1;
        }
        for (int i = 0; i < nkeep; i++)
            if (keep[i] >= low)
                sorted[nsorted++] = keep[i];
        qsort(sorted, (size_t)nsorted, sizeof *sorted, compare_ints);
        int distinct = 0;
        for (int i = 0; i < nsorted; i++)
            if (distinct == 0 || sorted[distinct - 1] != sorted[i])
                sorted[distinct++] = sorted[i];
        nsorted = distinct;
    }
    rc = -1;
    errno = ENOSYS;
    if (range != NULL)
        rc = seal_ranges(low, sorted, nsorted, range);
    /* ENOSYS: no close_range (Linux < 5.9); EINVAL: no CLOSE_RANGE_CLOEXEC
     * (Linux < 5.11).  Either fails on the first call, before any change. */
    if (rc != 0 && (errno == ENOSYS || errno == EINVAL))
        rc = seal_loop(low, sorted, nsorted);
    int saved = errno;
    free(sorted);
    errno = saved;
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Sockets                                                                 */

static void copy_address(unsigned char *dst, int *dst_len,
                         const struct sockaddr_storage *ss, socklen_t len)
{
    size_t n = len;
    if (dst_len == NULL)
        return;
    if (dst == NULL || *dst_len <= 0) {
        *dst_len = 0;
        return;
    }
    if (n > sizeof *ss) /* the kernel truncated it to our buffer */
        n = sizeof *ss;
    if (n > (size_t)*dst_len)
        n = (size_t)*dst_len;
    memcpy(dst, ss, n);
    *dst_len = (int)n;
}

int nic_socket_info(int fd, int *family, int *type, int *protocol,
                    unsigned char *local, int *local_len,
                    unsigned char *peer, int *peer_len)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    int value, named = 0;
    socklen_t vlen = sizeof value;

    /* SO_TYPE exists everywhere: ENOTSOCK answers "no socket", EBADF "not
     * open".  Any other refusal (a security module denying getsockopt)
     * still leaves an open socket to describe, of unknown type (-1). */
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &vlen) != 0) {
        if (errno == ENOTSOCK || errno == EBADF)
            return -1;
        value = -1;
    }
    if (type != NULL)
        *type = value;

    /* Past this point only EBADF is an error: a family without addresses
     * (getsockname is EOPNOTSUPP for AF_XDP, getpeername for AF_PACKET)
     * or a refusal means "no address", never "no description". */
    memset(&ss, 0, sizeof ss);
    sslen = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) == 0) {
        named = 1;
        copy_address(local, local_len, &ss, sslen);
    } else if (errno == EBADF) {
        return -1;
    } else if (local_len != NULL) {
        *local_len = 0;
    }

    if (family != NULL) {
        *family = named ? ss.ss_family : -1; /* -1: unknown */
#ifdef SO_DOMAIN
        vlen = sizeof value;
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &vlen) == 0)
            *family = value;
#endif
    }
    if (protocol != NULL) {
        *protocol = 0; /* unknown where SO_PROTOCOL is missing (macOS) */
#ifdef SO_PROTOCOL
        vlen = sizeof value;
        if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &value, &vlen) == 0)
            *protocol = value;
#endif
    }

    memset(&ss, 0, sizeof ss);
    sslen = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &sslen) == 0) {
        copy_address(peer, peer_len, &ss, sslen);
    } else if (errno == EBADF) {
        return -1;
    } else if (peer_len != NULL) {
        *peer_len = 0; /* listening, unconnected, datagram, or no peers at all */
    }
    return 0;
}

int nic_seal_loop(int low, const int *keep, int nkeep)
{
    return nic_seal_common(low, keep, nkeep, NULL);
}

/* Platforms that cannot name what a descriptor refers to keep this one. */
__attribute__((weak)) int nic_target(int fd, char *buf, int size)
{
    (void)fd;
    (void)buf;
    (void)size;
    errno = ENOSYS;
    return -1;
}

/* Platforms without a cheaper way than a full snapshot keep these two; the
 * Linux backend defines its own (a weak symbol yields to it at link time). */
__attribute__((weak)) int nic_snapshot_since(nic_entry *out, int cap, const nic_entry *prev,
                                             int nprev)
{
    (void)prev;
    (void)nprev;
    return nic_snapshot(out, cap, NIC_METHOD_AUTO);
}

__attribute__((weak)) int nic_snapshot_delta(nic_entry *out, int cap, const nic_entry *prev,
                                             int nprev, int options, int *same)
{
    if (nprev < 0 || (nprev > 0 && prev == NULL) || (options & ~NIC_DELTA_FLAGS) != 0) {
        errno = EINVAL;
        return -1;
    }
    if (same != NULL)
        *same = 0;
    return nic_snapshot(out, cap, NIC_METHOD_AUTO);
}
