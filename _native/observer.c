/* pytest-noinherit kernel exec observer (probe mode "kernel";
 * docs/how-it-works.md, "The kernel observer").
 *
 * A small process of its own that holds the listener of the seccomp filter
 * the test process installed on itself (core_kernel.c).  Every execve and
 * execveat of every process of the tree stops at system call entry and
 * waits for an answer here; this program reads what that task holds from
 * /proc (the descriptors without O_CLOEXEC are exactly what the new program
 * receives), writes it down in the exec probe's record format (probe.c)
 * into the record directory it was given, and only then lets the exec go
 * on (SECCOMP_USER_NOTIF_FLAG_CONTINUE, Linux >= 5.5): a child that runs
 * and exits at once is never judged before its record exists.
 *
 * Safety rules, because the filter is irrevocable and inherited:
 *   - every notification is answered with CONTINUE, whatever went wrong
 *     while looking (the problem is reported instead): no exec is ever
 *     refused or left waiting because of us;
 *   - the process exits only when the listener reports POLLHUP, i.e. no
 *     filtered task is left (kernel/seccomp.c, seccomp_notify_poll): a
 *     daemon started by a test can still exec after the session, and after
 *     this process is gone no exec could (ENOSYS once no listener is open);
 *   - it is started in a session of its own with stdio on /dev/null, never
 *     execs anything, and keeps no descriptor a test could see.
 *
 * Usage (by pytest_noinherit/kernel.py only):
 *   noinherit-observer --serve CONTROL_FD SHARED_FD
 *   noinherit-observer --self-test [nnp]
 *
 * The control descriptor is one end of an AF_UNIX SOCK_SEQPACKET pair.
 * Messages from the session: "listener" (with the listener as SCM_RIGHTS),
 * "dir 0|1" (with a record directory descriptor; 1: a record of every exec,
 * even of programs that receive only 0-2), "nodir", "ping"; each is
 * answered "ok" or "error <why>".  From here: "hello" once at start, and
 * "problem <text>" whenever something could not be observed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernel_filter.h"

#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif
#ifndef AUDIT_ARCH_ARM
#define AUDIT_ARCH_ARM (EM_ARM | __AUDIT_ARCH_LE)
#endif

#define OBS_ARGV_CAP 16384 /* bytes of argv recorded, as the probe's cmdline cap */
#define OBS_ARGS_MAX 4096  /* arguments looked at */
#define OBS_PATH_CAP 4096
#define OBS_FD_O_CLOEXEC 02000000 /* fdinfo(5) "flags:" is octal, O_CLOEXEC included */

/* ---- a growing byte buffer -------------------------------------------- */

struct obs_buf {
    char *data;
    size_t len, cap;
    int failed; /* out of memory: the record is not written */
};

static void buf_put(struct obs_buf *b, const void *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *grown;
        while (cap < b->len + n)
            cap *= 2;
        grown = realloc(b->data, cap);
        if (grown == NULL) {
            b->failed = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void buf_puts(struct obs_buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void buf_printf(struct obs_buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* The probe's escaping (probe.c, nip_put_escaped): every byte outside
 * 0x21..0x7e, and the backslash, as \xHH. */
static void buf_escaped(struct obs_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, start = 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > 0x20 && c < 0x7f && c != '\\')
            continue;
        buf_put(b, s + start, i - start);
        char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
        buf_put(b, e, 4);
        start = i + 1;
    }
    buf_put(b, s + start, n - start);
}

/* ---- talking to the session ------------------------------------------- */

static int control = -1;
static unsigned long problems_dropped;

static void say(const char *text)
{
    if (control >= 0)
        send(control, text, strlen(text), MSG_DONTWAIT | MSG_NOSIGNAL);
}

/* A problem is never fatal: it is told, and the exec goes on. */
static void problem(const char *fmt, ...)
{
    char text[512] = "problem ";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + 8, sizeof text - 8, fmt, ap);
    va_end(ap);
    if (control < 0 || send(control, text, strlen(text), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        problems_dropped++;
}

/* ---- reading the exec'ing task ---------------------------------------- */

struct obs_exec {
    pid_t tid;
    int compat;           /* 32-bit pointers (i386, x32, arm) */
    int at;               /* execveat */
    long dirfd;           /* execveat's dirfd */
    long flags;           /* execveat's flags */
    uint64_t filename;    /* the user-space address of the path */
    uint64_t argv;        /* ... of the argument vector */
};

/* Copy len bytes at addr of the task; 0 if all were read. */
static int peek(pid_t tid, uint64_t addr, void *out, size_t len)
{
    struct iovec local = {out, len}, remote = {(void *)(uintptr_t)addr, len};
    ssize_t n = process_vm_readv(tid, &local, 1, &remote, 1, 0);
    return n == (ssize_t)len ? 0 : -1;
}

/* A NUL-terminated string of the task, at most cap - 1 bytes; its length,
 * or -1.  Read up to each page end, so that a string ending just before an
 * unmapped page is still read. */
static long peek_string(pid_t tid, uint64_t addr, char *out, size_t cap)
{
    size_t len = 0;
    if (addr == 0)
        return -1;
    while (len + 1 < cap) {
        size_t chunk = 4096 - (size_t)((addr + len) & 4095);
        if (chunk > cap - 1 - len)
            chunk = cap - 1 - len;
        if (peek(tid, addr + len, out + len, chunk) != 0)
            return -1;
        char *nul = memchr(out + len, '\0', chunk);
        if (nul != NULL)
            return (long)(nul - out);
        len += chunk;
    }
    out[len] = '\0';
    return (long)len; /* cut at cap: still something to show */
}

/* The start of a small /proc file (one read), NUL-terminated; 0 if empty or unreadable. */
static int read_small(int dir, const char *path, char *text, size_t size)
{
    ssize_t n;
    int fd = openat(dir, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, text, size - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    return 1;
}

/* Tgid and PPid of /proc/<tid>/status (proc(5)); 0 if both were found. */
static int task_ids(pid_t tid, long *tgid, long *ppid)
{
    char path[64], text[4096];
    int found = 0;
    snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
    if (!read_small(AT_FDCWD, path, text, sizeof text))
        return -1;
    for (char *line = text; line != NULL && *line;) {
        char *next = strchr(line, '\n');
        if (strncmp(line, "Tgid:", 5) == 0) {
            *tgid = strtol(line + 5, NULL, 10);
            found |= 1;
        } else if (strncmp(line, "PPid:", 5) == 0) {
            *ppid = strtol(line + 5, NULL, 10);
            found |= 2;
        }
        line = next ? next + 1 : NULL;
    }
    return found == 3 ? 0 : -1;
}

/* The open-file flags of one descriptor from /proc/<tid>/fdinfo/<fd>, with
 * O_CLOEXEC included when it is set; -1 if it could not be read. */
static long fd_flags(int fdinfo_dir, const char *name)
{
    char text[256];
    if (!read_small(fdinfo_dir, name, text, sizeof text))
        return -1;
    char *flags = strstr(text, "flags:");
    return flags ? strtol(flags + 6, NULL, 8) : -1;
}

struct obs_fd {
    int fd;
    long flags;
};

/* The descriptors of the task that survive its exec: those without
 * O_CLOEXEC.  Returns 0, or -1 (errno) if the table could not be opened at
 * all; *beyond says whether any survivor is above 2, *complete whether
 * every descriptor could be looked at.  Descriptors 0-2 are looked at only
 * when one above them survives or want_stdio is set: a child that receives
 * nothing else gets no record, and the common exec costs one listing and
 * one fdinfo read per descriptor above 2. */
static int survivors(pid_t tid, int want_stdio, struct obs_fd **out, size_t *count, int *beyond,
                     int *complete)
{
    char path[64];
    struct obs_fd *list = NULL;
    size_t n = 0, cap = 0;
    int stdio[3], nstdio = 0;
    DIR *dir;
    struct dirent *e;

    *beyond = 0;
    *complete = 1;
    *out = NULL;
    *count = 0;
    /* fdinfo lists the same numbers as fd (proc(5)): one directory does. */
    snprintf(path, sizeof path, "/proc/%d/fdinfo", (int)tid);
    dir = opendir(path);
    if (dir == NULL)
        return -1;
    for (;;) {
        errno = 0;
        e = readdir(dir);
        if (e == NULL) {
            if (errno != 0)
                *complete = 0;
            break;
        }
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || *end != '\0')
            continue;
        if (fd <= 2) {
            stdio[nstdio++] = (int)fd; /* looked at below, if at all */
            continue;
        }
        long flags = fd_flags(dirfd(dir), e->d_name);
        if (flags < 0) {
            if (errno != ENOENT) /* ENOENT: closed by another thread meanwhile */
                *complete = 0;
            continue;
        }
        if (flags & OBS_FD_O_CLOEXEC)
            continue;
        if (n == cap) {
            struct obs_fd *grown = realloc(list, (cap = cap ? 2 * cap : 16) * sizeof *list);
            if (grown == NULL) {
                *complete = 0;
                break;
            }
            list = grown;
        }
        list[n].fd = (int)fd;
        list[n].flags = flags;
        n++;
        *beyond = 1;
    }
    if ((*beyond || want_stdio) && nstdio > 0) {
        for (int i = 0; i < nstdio; i++) {
            char name[4] = {(char)('0' + stdio[i]), '\0'};
            long flags = fd_flags(dirfd(dir), name);
            if (flags < 0 || (flags & OBS_FD_O_CLOEXEC))
                continue;
            if (n == cap) {
                struct obs_fd *grown = realloc(list, (cap = cap + 4) * sizeof *list);
                if (grown == NULL) {
                    *complete = 0;
                    break;
                }
                list = grown;
            }
            list[n].fd = stdio[i];
            list[n].flags = flags;
            n++;
        }
    }
    closedir(dir);
    *out = list;
    *count = n;
    return 0;
}

static int by_fd(const void *a, const void *b)
{
    return ((const struct obs_fd *)a)->fd - ((const struct obs_fd *)b)->fd;
}

/* The path the exec names, as this process can open it: absolute paths
 * under the task's root, relative ones under its cwd or execveat's dirfd. */
static int exec_path(const struct obs_exec *x, const char *name, char *out, size_t cap)
{
    int n;
    if (x->at && name[0] == '\0' && (x->flags & AT_EMPTY_PATH))
        n = snprintf(out, cap, "/proc/%d/fd/%ld", (int)x->tid, x->dirfd);
    else if (name[0] == '/')
        n = snprintf(out, cap, "/proc/%d/root%s", (int)x->tid, name);
    else if (x->at && (int)x->dirfd != AT_FDCWD)
        n = snprintf(out, cap, "/proc/%d/fd/%d/%s", (int)x->tid, (int)x->dirfd, name);
    else
        n = snprintf(out, cap, "/proc/%d/cwd/%s", (int)x->tid, name);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

enum { RUNS_NOT = 0, RUNS_ELF = 1, RUNS_SCRIPT = 2 };

/* Whether the kernel will run the file: a regular file with an execute bit
 * that starts with an ELF header or "#!" (fs/binfmt_elf.c,
 * fs/binfmt_script.c).  Anything else is an attempt that fails (execvp
 * tries every PATH entry), which is no reception.  head receives the first
 * bytes. */
static int runnable(const char *path, char *head, size_t cap, ssize_t *got)
{
    struct stat st;
    int fd;
    *got = 0;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || !(st.st_mode & 0111))
        return RUNS_NOT;
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return RUNS_ELF; /* execute-only for us: the kernel may well run it */
    *got = read(fd, head, cap);
    close(fd);
    if (*got >= 4 && memcmp(head, "\x7f" "ELF", 4) == 0)
        return RUNS_ELF;
    if (*got >= 2 && head[0] == '#' && head[1] == '!')
        return RUNS_SCRIPT;
    return RUNS_NOT;
}

/* The argument vector the task passes, each argument escaped, into b. */
static void put_args(struct obs_buf *b, const struct obs_exec *x, int skip_first)
{
    static char arg[OBS_ARGV_CAP];
    size_t total = 0;
    size_t width = x->compat ? 4 : 8;
    for (int i = 0; i < OBS_ARGS_MAX && total < OBS_ARGV_CAP && x->argv; i++) {
        uint64_t ptr = 0;
        uint32_t ptr32 = 0;
        if (x->compat ? peek(x->tid, x->argv + i * width, &ptr32, 4) != 0
                      : peek(x->tid, x->argv + i * width, &ptr, 8) != 0)
            break;
        if (x->compat)
            ptr = ptr32;
        if (ptr == 0)
            break;
        long n = peek_string(x->tid, ptr, arg, sizeof arg - total);
        if (n < 0)
            break;
        total += (size_t)n + 1;
        if (i == 0 && skip_first)
            continue;
        buf_put(b, " ", 1);
        buf_escaped(b, arg, (size_t)n);
    }
}

/* For a "#!" script: the interpreter and its one optional argument, as
 * fs/binfmt_script.c splits the first line; 0 if there is an interpreter. */
static int shebang(char *head, ssize_t got, char **interp, char **arg)
{
    char *end = memchr(head, '\n', (size_t)got);
    char *p = head + 2;
    if (end == NULL)
        end = head + got;
    *end = '\0';
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0')
        return -1;
    *interp = p;
    while (*p && *p != ' ' && *p != '\t')
        p++;
    *arg = NULL;
    if (*p) {
        *p++ = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        char *q = p + strlen(p);
        while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
            *--q = '\0';
        if (*p)
            *arg = p;
    }
    return 0;
}

/* ---- sockets ----------------------------------------------------------- */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#define OBS_SOCKADDR_SIZE 128 /* sizeof(struct sockaddr_storage) */

static void put_sockaddr(struct obs_buf *b, int r, const unsigned char *addr, socklen_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (r < 0) {
        buf_put(b, " -", 2);
        return;
    }
    if (len > OBS_SOCKADDR_SIZE)
        len = OBS_SOCKADDR_SIZE; /* what did not fit was never written */
    buf_put(b, " ", 1);
    for (socklen_t i = 0; i < len; i++) {
        char pair[2] = {hex[addr[i] >> 4], hex[addr[i] & 15]};
        buf_put(b, pair, 2);
    }
}

/* The probe's "sock" line (probe.c, nip_put_sock) for a socket of another
 * process, read through a duplicate (pidfd_getfd(2), Linux 5.6): without
 * it the plugin could only call a socket the test has closed since
 * "socket:[inode]", and address allowances would not match.  Nothing is
 * written when the duplicate cannot be had: the line is optional. */
static void put_sock(struct obs_buf *b, int *pidfd, long tgid, int fd)
{
    unsigned char local[OBS_SOCKADDR_SIZE] __attribute__((aligned(8)));
    unsigned char peer[OBS_SOCKADDR_SIZE] __attribute__((aligned(8)));
    socklen_t local_len = sizeof local, peer_len = sizeof peer, vlen;
    int domain = -1, type = -1, value, named, connected, copy;

    if (*pidfd == -1)
        *pidfd = (int)syscall(SYS_pidfd_open, (pid_t)tgid, 0);
    if (*pidfd < 0) {
        *pidfd = -2; /* not again for this record */
        return;
    }
    copy = (int)syscall(SYS_pidfd_getfd, *pidfd, fd, 0); /* close-on-exec (pidfd_getfd(2)) */
    if (copy < 0)
        return;
    named = getsockname(copy, (struct sockaddr *)local, &local_len);
    connected = getpeername(copy, (struct sockaddr *)peer, &peer_len);
    vlen = sizeof value;
    if (getsockopt(copy, SOL_SOCKET, SO_DOMAIN, &value, &vlen) == 0)
        domain = value;
    else if (named == 0 && local_len >= 2)
        domain = ((struct sockaddr *)local)->sa_family;
    vlen = sizeof value;
    if (getsockopt(copy, SOL_SOCKET, SO_TYPE, &value, &vlen) == 0)
        type = value;
    close(copy);
    buf_printf(b, "sock %d %d %d", fd, domain, type);
    put_sockaddr(b, named, local, local_len);
    put_sockaddr(b, connected, peer, peer_len);
    buf_put(b, "\n", 1);
}

/* ---- one notification ------------------------------------------------- */

static int record_dir = -1;
static int record_all;

/* Write the record as <pid>-<ns>.tmp and rename it to .rec (probe.c's
 * naming, which recorddir.py trusts); the final name, for taking it back
 * if the exec turns out never to happen. */
static int write_record(long pid, uint64_t ns, const struct obs_buf *b, char *final, size_t cap)
{
    char tmp[64];
    int fd = -1;
    for (int tries = 0; tries < 16 && fd < 0; tries++, ns++) {
        snprintf(tmp, sizeof tmp, "%ld-%llu.tmp", pid, (unsigned long long)ns);
        snprintf(final, cap, "%ld-%llu.rec", pid, (unsigned long long)ns);
        fd = openat(record_dir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = write(fd, b->data + off, b->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int saved = n < 0 ? errno : ENOSPC;
            close(fd);
            unlinkat(record_dir, tmp, 0);
            errno = saved;
            return -1;
        }
        off += (size_t)n;
    }
    if (close(fd) != 0 || renameat(record_dir, tmp, record_dir, final) != 0) {
        int saved = errno;
        unlinkat(record_dir, tmp, 0);
        errno = saved;
        return -1;
    }
    return 0;
}

/* What the task will hold after its exec, as a probe record; 1 if a record
 * was written (its name in final), 0 if none was due, -1 after a problem. */
static int observe(int listener, const struct seccomp_notif *req, char *final, size_t cap)
{
    static char name[OBS_PATH_CAP], path[OBS_PATH_CAP + 64], real[PATH_MAX], head[256];
    struct obs_exec x = {0};
    struct obs_fd *fds = NULL;
    size_t nfds = 0;
    int beyond, complete, kind, result = 0, hidden = 0;
    long tgid = req->pid, ppid = 0;
    unsigned int nr = (unsigned int)req->data.nr & ~NIK_X32_BIT;
    ssize_t got = 0;

    x.tid = (pid_t)req->pid;
    x.compat = req->data.arch == AUDIT_ARCH_I386 || req->data.arch == AUDIT_ARCH_ARM ||
               (req->data.arch == AUDIT_ARCH_X86_64 && (req->data.nr & NIK_X32_BIT));
    x.at = nr == 322 || nr == 545 || nr == 358 || nr == 281 || nr == 387;
    if (x.at) {
        x.dirfd = (long)(int)req->data.args[0];
        x.filename = req->data.args[1];
        x.argv = req->data.args[2];
        x.flags = (long)req->data.args[4];
    } else {
        x.filename = req->data.args[0];
        x.argv = req->data.args[1];
    }

    if (survivors(x.tid, record_all, &fds, &nfds, &beyond, &complete) != 0) {
        if (errno == ENOENT || errno == ESRCH)
            return 0; /* the task is gone */
        /* Not readable (another user's setuid program, a sandbox): the
         * record says its table is incomplete rather than nothing. */
        complete = 0;
        beyond = 1;
        hidden = 1;
    }
    if (!beyond && !record_all) {
        free(fds);
        return 0; /* it receives only 0-2: nothing to say (the probe's rule) */
    }
    if (peek_string(x.tid, x.filename, name, sizeof name) < 0) {
        if (!hidden) {
            free(fds);
            return 0; /* an exec of an unreadable name fails with EFAULT */
        }
        name[0] = '\0'; /* its memory is as closed to us as its table */
    }
    if (exec_path(&x, name, path, sizeof path) != 0) {
        free(fds);
        return 0;
    }
    /* A task we cannot look into may exec anything: its record (marked
     * truncated) is written whether or not the exec will succeed. */
    kind = hidden ? RUNS_ELF : runnable(path, head, sizeof head - 1, &got);
    if (kind == RUNS_NOT) {
        free(fds);
        return 0; /* a failed attempt: ENOENT, EACCES, ENOEXEC */
    }
    if (task_ids(x.tid, &tgid, &ppid) != 0) {
        free(fds);
        return 0; /* gone while we looked */
    }

    struct obs_buf b = {0};
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t ns = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    buf_printf(&b, "noinherit-probe 1\npid %ld\nppid %ld\ntime %llu\nexe ", tgid, ppid,
               (unsigned long long)ns);
    char *interp = NULL, *interp_arg = NULL;
    if (kind == RUNS_SCRIPT) {
        head[got] = '\0';
        if (shebang(head, got, &interp, &interp_arg) != 0)
            interp = NULL;
    }
    const char *exe = interp ? interp : path;
    if (realpath(exe, real) != NULL)
        buf_escaped(&b, real, strlen(real));
    else if (interp)
        buf_escaped(&b, interp, strlen(interp));
    buf_puts(&b, "\nargv");
    if (interp) {
        /* What /proc/<pid>/cmdline will say: the interpreter, its argument,
         * the script as named, then the arguments after the first. */
        buf_put(&b, " ", 1);
        buf_escaped(&b, interp, strlen(interp));
        if (interp_arg) {
            buf_put(&b, " ", 1);
            buf_escaped(&b, interp_arg, strlen(interp_arg));
        }
        buf_put(&b, " ", 1);
        buf_escaped(&b, name, strlen(name));
        put_args(&b, &x, 1);
    } else {
        put_args(&b, &x, 0);
    }
    buf_put(&b, "\n", 1);

    qsort(fds, nfds, sizeof *fds, by_fd);
    int pidfd = -1;
    for (size_t i = 0; i < nfds; i++) {
        char link[OBS_PATH_CAP];
        struct stat st;
        ssize_t n;
        snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)x.tid, fds[i].fd);
        if (stat(path, &st) != 0) {
            if (errno == ENOENT)
                continue; /* closed by another thread meanwhile */
            complete = 0;
            continue;
        }
        n = readlink(path, link, sizeof link);
        /* F_GETFD after exec is 0 for every survivor; F_GETFL is the
         * open-file flags without the O_CLOEXEC fdinfo adds. */
        buf_printf(&b, "fd %d 0 %ld %llu %llu %u ", fds[i].fd,
                   fds[i].flags & ~(long)OBS_FD_O_CLOEXEC, (unsigned long long)st.st_dev,
                   (unsigned long long)st.st_ino, (unsigned int)st.st_mode);
        if (n > 0)
            buf_escaped(&b, link, (size_t)n);
        buf_put(&b, "\n", 1);
        if (S_ISSOCK(st.st_mode))
            put_sock(&b, &pidfd, tgid, fds[i].fd);
    }
    if (pidfd >= 0)
        close(pidfd);
    free(fds);
    if (!complete)
        buf_puts(&b, "truncated\n");
    buf_puts(&b, "end\n");

    /* Everything read from /proc may belong to a task that died and whose
     * pid was reused since; only a notification still pending proves it
     * was this one (seccomp_unotify(2)). */
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) != 0) {
        free(b.data);
        return 0;
    }
    if (b.failed) {
        problem("no memory for the record of pid %ld", tgid);
        result = -1;
    } else if (write_record(tgid, ns, &b, final, cap) != 0) {
        problem("the record of pid %ld was not written: %s", tgid, strerror(errno));
        result = -1;
    } else {
        result = 1;
    }
    free(b.data);
    return result;
}

/* ---- the session's commands ------------------------------------------- */

static int listener = -1;

static int take_fd(struct msghdr *msg)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int fd;
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
            return fd;
        }
    }
    return -1;
}

/* One command; 0 if the control socket is gone (the session ended). */
static int command(void)
{
    char text[256];
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int))];
    } cmsg;
    struct iovec iov = {text, sizeof text - 1};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.space;
    msg.msg_controllen = sizeof cmsg.space;
    ssize_t n = recvmsg(control, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0)
        return 0;
    text[n] = '\0';
    int fd = take_fd(&msg);
    if (strcmp(text, "listener") == 0 && fd >= 0 && listener < 0) {
        listener = fd;
        say("ok");
    } else if (strncmp(text, "dir ", 4) == 0 && fd >= 0) {
        if (record_dir >= 0)
            close(record_dir);
        record_dir = fd;
        record_all = text[4] == '1';
        say("ok");
    } else if (strcmp(text, "nodir") == 0) {
        if (record_dir >= 0)
            close(record_dir);
        record_dir = -1;
        say("ok");
    } else if (strcmp(text, "ping") == 0) {
        say("ok");
    } else {
        if (fd >= 0)
            close(fd);
        say("error unknown command");
    }
    return 1;
}

/* ---- the loop --------------------------------------------------------- */

static int serve(struct nik_shared *shared)
{
    struct seccomp_notif_sizes sizes;
    size_t size = sizeof(struct seccomp_notif);
    struct seccomp_notif *req;
    unsigned long failures = 0;

    if (nik_seccomp(SECCOMP_GET_NOTIF_SIZES, 0, &sizes) == 0 && sizes.seccomp_notif > size)
        size = sizes.seccomp_notif;
    req = calloc(1, size);
    if (req == NULL)
        return 1;
    say("hello");
    for (;;) {
        struct pollfd fds[2] = {{listener, POLLIN, 0}, {control, POLLIN, 0}};
        int n = poll(fds, 2, -1); /* a negative fd is skipped (poll(2)) */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            problem("poll: %s", strerror(errno));
            sleep(1);
            continue;
        }
        if (fds[1].revents) {
            if (!command()) {
                /* The session is over: nobody reads records any more.  The
                 * listener stays, for every exec still to come. */
                close(control);
                control = -1;
                if (record_dir >= 0)
                    close(record_dir);
                record_dir = -1;
                if (listener < 0)
                    return 0; /* no filter was ever installed */
            }
        }
        if (listener < 0 || !fds[0].revents)
            continue;
        if (fds[0].revents & POLLIN) {
            char final[96];
            memset(req, 0, size);
            if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) != 0) {
                /* ENOENT: the task was killed before we took it */
                if (errno != ENOENT && errno != EINTR && failures++ < 3)
                    problem("SECCOMP_IOCTL_NOTIF_RECV: %s", strerror(errno));
                continue;
            }
            if (shared != NULL) {
                __atomic_store_n(&shared->received, req->id, __ATOMIC_RELEASE);
                __atomic_store_n(&shared->any, 1, __ATOMIC_RELEASE);
            }
            int wrote = record_dir >= 0 ? observe(listener, req, final, sizeof final) : 0;
            if (nik_continue(listener, req->id) != 0 && wrote == 1 && errno == ENOENT)
                unlinkat(record_dir, final, 0); /* killed while we wrote: no exec */
            continue;
        }
        if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL))
            return 0; /* no filtered task is left */
    }
}

/* ---- the self-test ---------------------------------------------------- */

/* Install the filter on this process alone, run one child that execs this
 * program with a pipe it did not mark close-on-exec, observe it as serve()
 * would and let it go on; prints "ok" or why not.  Everything the session
 * needs is tried, in a process that exits afterwards. */
static int self_test(int nnp)
{
    int pipefd[2], status, lst;
    pid_t child;
    char *why = NULL;
    static char buf[256];

    if (nik_user_notif_available() != 0) {
        int e = errno;
        printf("unavailable %s\n",
               e == ENOSYS ? "this kernel has no seccomp() system call"
               : e == EINVAL ? "seccomp filters are not enabled in this kernel"
               : e == EOPNOTSUPP ? "this kernel has no seccomp user notification (Linux 5.0)"
                                 : strerror(e));
        return 1;
    }
    if (access("/proc/self/fdinfo", R_OK) != 0) {
        printf("unavailable /proc is not mounted: the observer reads /proc/<pid>/fdinfo\n");
        return 1;
    }
    if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        printf("unavailable prctl(PR_SET_NO_NEW_PRIVS): %s\n", strerror(errno));
        return 1;
    }
    lst = nik_install_filter();
    if (lst < 0) {
        int e = errno;
        if (e == EINVAL)
            why = "this kernel cannot give a listener to a filter synchronised over threads"
                  " (SECCOMP_FILTER_FLAG_TSYNC_ESRCH, Linux 5.7)";
        else if (e == EBUSY)
            why = "an ancestor process already installed a seccomp filter with a listener"
                  " (only one per process tree, seccomp(2) EBUSY): an outer session"
                  " under --noinherit-probe=kernel, or a container supervisor";
        else if (e == EACCES)
            why = "installing a seccomp filter needs CAP_SYS_ADMIN or no_new_privs";
        else if (e == EPERM || e == ENOSYS)
            why = "seccomp(SECCOMP_SET_MODE_FILTER) was refused (a sandbox's own filter?)";
        printf("unavailable %s (%s)\n", why ? why : "seccomp(SECCOMP_SET_MODE_FILTER) failed",
               strerror(e));
        return 1;
    }
    if (pipe(pipefd) != 0) {
        printf("unavailable pipe: %s\n", strerror(errno));
        return 1;
    }
    child = fork();
    if (child == 0) {
        char *args[] = {"noinherit-observer", "--exit", NULL};
        close(pipefd[0]);
        execv("/proc/self/exe", args);
        _exit(127);
    }
    close(pipefd[1]);
    struct pollfd p = {lst, POLLIN, 0};
    if (child < 0 || poll(&p, 1, 10000) != 1 || !(p.revents & POLLIN)) {
        printf("unavailable the self-test child's exec was not notified\n");
        if (child > 0)
            kill(child, SIGKILL);
        return 1;
    }
    struct seccomp_notif *req = calloc(1, 4096);
    if (req == NULL || ioctl(lst, SECCOMP_IOCTL_NOTIF_RECV, req) != 0) {
        printf("unavailable SECCOMP_IOCTL_NOTIF_RECV: %s\n", strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    struct obs_fd *fds = NULL;
    size_t nfds = 0;
    int beyond, complete, seen = 0;
    if (survivors((pid_t)req->pid, 1, &fds, &nfds, &beyond, &complete) != 0)
        why = "the exec'ing child's /proc/<pid>/fd could not be read";
    for (size_t i = 0; i < nfds; i++)
        seen |= fds[i].fd == pipefd[1];
    free(fds);
    if (why == NULL && !seen)
        why = "the pipe the self-test child holds was not found in /proc/<pid>/fdinfo";
    if (why == NULL && peek_string((pid_t)req->pid, req->data.args[0], buf, sizeof buf) < 0)
        why = "process_vm_readv cannot read the exec'ing child's arguments";
    if (nik_continue(lst, req->id) != 0) {
        printf("unavailable SECCOMP_USER_NOTIF_FLAG_CONTINUE was refused (Linux 5.5): %s\n",
               strerror(errno));
        kill(child, SIGKILL);
        return 1;
    }
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("unavailable the self-test child did not run after CONTINUE\n");
        return 1;
    }
    if (why != NULL) {
        printf("unavailable %s\n", why);
        return 1;
    }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--exit") == 0)
        return 0;
    if (argc >= 2 && strcmp(argv[1], "--self-test") == 0)
        return self_test(argc >= 3 && strcmp(argv[2], "nnp") == 0);
    if (argc < 4 || strcmp(argv[1], "--serve") != 0) {
        fprintf(stderr, "usage: %s --serve CONTROL_FD SHARED_FD | --self-test [nnp]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    control = atoi(argv[2]);
    int shared_fd = atoi(argv[3]);
    struct nik_shared *shared = NULL;
    if (shared_fd >= 0) {
        void *page = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
        if (page != MAP_FAILED)
            shared = page;
        close(shared_fd);
    }
    /* Neither descriptor may reach anything: nothing here execs, but a
     * leak of our own must not be possible either. */
    fcntl(control, F_SETFD, FD_CLOEXEC);
    return serve(shared);
}
