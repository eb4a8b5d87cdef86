/* pytest-noinherit exec probe (detection layer C; design notes "platform facts" §3b).
 *
 * Loaded through LD_PRELOAD into every dynamically linked program a test
 * starts.  Its one piece of code is an ELF constructor that ld.so runs
 * after execve() and before the program's own code: it writes down which
 * descriptors the new program received (PEP 446 is about exactly this
 * moment) and returns.
 *
 * Constraints, each for a measured reason:
 *   - no libc at all, not even libgcc: the same file must load into glibc
 *     and musl programs, and a glibc-linked probe fails in musl on symbol
 *     versions and stack-protector/fortify references.  Build with
 *     -nostdlib -ffreestanding -fno-builtin -fno-stack-protector -fPIC
 *     -shared; system calls are inline asm (probe_syscalls.h);
 *   - the environment is read from /proc/self/environ, because musl calls
 *     constructors without (argc, argv, envp);
 *   - nothing the program can notice afterwards: every descriptor opened
 *     here is O_CLOEXEC and closed before returning, no signal disposition
 *     is touched, nothing is printed, errno does not exist here;
 *   - any failure means "no record", silently: the plugin's self-test
 *     (run /bin/true with one descriptor passed, expect one record that
 *     shows it and empty stderr) notices a probe that cannot work.
 *
 * With NOINHERIT_PROBE_DIR=<absolute dir> in the environment it writes
 * <dir>/<pid>-<monotonic ns>.rec, created as .tmp (O_CREAT|O_EXCL|O_NOFOLLOW,
 * mode 0600) and renamed so that a reader never sees half a record.  A
 * program that holds nothing beyond descriptors 0-2 received nothing, and
 * writes no record: that costs it three system calls (open /proc/self/fd,
 * fstat, close) instead of a record's thirty or so.  NOINHERIT_PROBE_ALL=1
 * asks for a record of every exec all the same (the run command lists every
 * process).  Under valgrind (VALGRIND_LAUNCHER set) the descriptors at and
 * above the RLIMIT_NOFILE soft limit are valgrind's own and are left out.  The record is streamed to the file in chunks, so it holds the
 * whole table whatever its size:
 *
 *   noinherit-probe 1
 *   pid <pid>
 *   ppid <ppid>
 *   time <CLOCK_MONOTONIC ns>
 *   exe <escaped readlink of /proc/self/exe>
 *   argv <escaped arg0> <escaped arg1> ...
 *   fd <fd> <F_GETFD> <F_GETFL> <st_dev> <st_ino> <st_mode> <escaped target>
 *   sock <fd> <SO_DOMAIN> <SO_TYPE> <local address> <peer address>
 *   ...
 *   truncated            (only when the table is incomplete: see below)
 *   end
 *
 * Fields are separated by single spaces, so an empty argument is an empty
 * field.  Escaping: every byte outside 0x21..0x7e, and the backslash, is
 * written as \xHH.  A failed fcntl() is its negative errno, a failed
 * fstat() is "-1 -1 -1", an unreadable link an empty target.
 *
 * A "sock" line follows the fd line of every descriptor whose st_mode is
 * S_IFSOCK, so that the plugin can describe a socket the test has closed
 * since (its target is only "socket:[inode]").  An address is the raw
 * sockaddr getsockname() or getpeername() returned, in lowercase hex, at
 * most sizeof(struct sockaddr_storage) bytes (its length is the field's
 * half); "-" where the call failed (no peer, a family without addresses).
 * A family or type getsockopt() would not tell is -1.  A reader that does
 * not know the line may skip it: nothing else in the record changes.
 *
 * "truncated" means some descriptors are missing: /proc/self/fd could not
 * be read to the end, the next line would have passed RLIMIT_FSIZE (a write
 * past it raises SIGXFSZ, which would kill the program before main), or a
 * write failed (the file is cut back to its last whole line first).  A
 * record that cannot even say that is still renamed into place, so the
 * reader sees something broken rather than nothing.
 */
#include "probe_syscalls.h"

#if NIP_SUPPORTED

typedef unsigned long nip_size;
typedef unsigned long long nip_u64;

#define NIP_HIDDEN __attribute__((visibility("hidden")))

/* Compilers may turn a copy or fill loop into a memcpy/memset call even
 * under -fno-builtin.  These hidden definitions resolve such calls inside
 * the probe (nothing is imported), and the empty asm in each loop keeps the
 * compiler from recognising the loop as a call to itself. */
NIP_HIDDEN void *memcpy(void *dst, const void *src, nip_size n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) {
        *d++ = *s++;
        __asm__ volatile("" ::: "memory");
    }
    return dst;
}

NIP_HIDDEN void *memset(void *dst, int c, nip_size n)
{
    unsigned char *d = dst;
    while (n--) {
        *d++ = (unsigned char)c;
        __asm__ volatile("" ::: "memory");
    }
    return dst;
}

#define NIP_ENV_DIR "NOINHERIT_PROBE_DIR="
#define NIP_ENV_ALL "NOINHERIT_PROBE_ALL="
#define NIP_PATH_CAP 4096
#define NIP_CMDLINE_CAP 16384
/* The record is built here and written out whenever it fills up. */
#define NIP_BUF_CAP 65536
/* The most one descriptor writes: its fd line (six numbers and a target of
 * NIP_PATH_CAP bytes, each escaped to four) and, for a socket, its sock line
 * (four numbers and two addresses of NIP_SOCKADDR_SIZE bytes in hex).  A
 * descriptor's lines are always built whole in the buffer, so that lines
 * that do not fit under RLIMIT_FSIZE can be taken back. */
#define NIP_LINE_MAX (128 + 4 * NIP_PATH_CAP + 96 + 4 * NIP_SOCKADDR_SIZE)
/* Room kept under RLIMIT_FSIZE for "truncated\nend\n". */
#define NIP_RECORD_TAIL 32

/* Static rather than on the stack: the constructor runs on whatever stack
 * the program's main thread has.  Untouched .bss pages cost nothing. */
static char nip_io[65536] __attribute__((aligned(8)));
static char nip_dir[NIP_PATH_CAP];
static char nip_link[NIP_PATH_CAP];
static char nip_tmp_path[NIP_PATH_CAP + 64];
static char nip_rec_path[NIP_PATH_CAP + 64];
static char nip_rec[NIP_BUF_CAP];
static long nip_out = -1;   /* the .tmp file */
static nip_size nip_pos;    /* bytes waiting in nip_rec */
static nip_u64 nip_written; /* bytes already in the file */
static nip_u64 nip_whole;   /* file offset just after its last whole line */
static nip_u64 nip_limit;   /* the file may not grow past this (RLIMIT_FSIZE) */
static int nip_failed;      /* a write failed or would have passed nip_limit */

static long nip_close(long fd)
{
    return nip_sys1(NIP_SYS_close, fd);
}

static long nip_read(long fd, char *buf, nip_size len)
{
    long n;
    do {
        n = nip_sys3(NIP_SYS_read, fd, buf, len);
    } while (n == -NIP_EINTR);
    return n;
}

/* Length of the NOINHERIT_PROBE_DIR value, copied NUL-terminated into
 * nip_dir; 0 when the variable is absent, empty, unreadable or longer than
 * a path can be.  nip_all is set when NOINHERIT_PROBE_ALL is "1", and
 * nip_valgrind when VALGRIND_LAUNCHER is set: /proc/self/environ is then the
 * environment valgrind's launcher gave the tool, and the program runs under
 * valgrind, which keeps descriptors of its own at and above the
 * RLIMIT_NOFILE it shows the program (coregrind/m_main.c,
 * setup_file_descriptors).  The environment is scanned in chunks, so it may
 * be any size; like getenv(), the first entry of each name wins. */
static int nip_all, nip_valgrind;
static nip_u64 nip_fd_cap = ~0ull; /* descriptors from here on are valgrind's */

static nip_size nip_find_env(void)
{
    enum { NAME, SKIP, DIR, ALL } state = NAME;
    static const char dir_name[] = NIP_ENV_DIR, all_name[] = NIP_ENV_ALL;
    static const char vg_name[] = "VALGRIND_LAUNCHER=";
    /* How much of each name the entry has matched so far; -1 once it differs. */
    long dir_match = 0, all_match = 0, vg_match = 0;
    int dir_seen = 0, all_seen = 0, vg_seen = 0, dir_bad = 0;
    nip_size len = 0, all_len = 0;
    long fd, n, i;

    nip_all = 0;
    nip_valgrind = 0;
    fd = nip_sys4(NIP_SYS_openat, NIP_AT_FDCWD, "/proc/self/environ",
                  NIP_O_RDONLY | NIP_O_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    while (!(dir_seen && all_seen && vg_seen && state == SKIP)) {
        n = nip_read(fd, nip_io, sizeof nip_io);
        if (n < 0) {
            dir_bad = 1;
            break;
        }
        if (n == 0) /* EOF: a value without its NUL still counts */
            break;
        for (i = 0; i < n; i++) {
            char c = nip_io[i];
            if (c == '\0') {
                state = NAME;
                dir_match = dir_seen ? -1 : 0;
                all_match = all_seen ? -1 : 0;
                vg_match = vg_seen ? -1 : 0;
                if (dir_seen && all_seen && vg_seen) {
                    state = SKIP;
                    break;
                }
            } else if (state == DIR) {
                if (len + 1 >= sizeof nip_dir)
                    dir_bad = 1; /* too long to be a usable directory */
                else
                    nip_dir[len++] = c;
            } else if (state == ALL) {
                nip_all = ++all_len == 1 && c == '1';
            } else if (state == NAME) {
                if (dir_match >= 0)
                    dir_match = c == dir_name[dir_match] ? dir_match + 1 : -1;
                if (all_match >= 0)
                    all_match = c == all_name[all_match] ? all_match + 1 : -1;
                if (vg_match >= 0)
                    vg_match = c == vg_name[vg_match] ? vg_match + 1 : -1;
                if (dir_match == (long)sizeof dir_name - 1) {
                    state = DIR;
                    dir_seen = 1;
                } else if (all_match == (long)sizeof all_name - 1) {
                    state = ALL;
                    all_seen = 1;
                } else if (vg_match == (long)sizeof vg_name - 1) {
                    state = SKIP;
                    vg_seen = nip_valgrind = 1;
                } else if (dir_match < 0 && all_match < 0 && vg_match < 0) {
                    state = SKIP;
                }
            }
        }
    }
    nip_close(fd);
    if (dir_bad)
        len = 0;
    nip_dir[len] = '\0';
    return len;
}

/* Whether the program holds a descriptor beyond 0-2, leaving out the one
 * this opens to look; 1 when it cannot tell, so that a record is written. */
static int nip_beyond_stdio(void)
{
    char st[NIP_STAT_SIZE] __attribute__((aligned(8))); /* struct stat */
    long dirfd, n, off;
    unsigned short reclen;
    nip_u64 open_fds;
    int beyond = 0;

    dirfd = nip_sys4(NIP_SYS_openat, NIP_AT_FDCWD, "/proc/self/fd",
                     NIP_O_RDONLY | NIP_O_DIRECTORY | NIP_O_CLOEXEC, 0);
    if (dirfd < 0)
        return 1;
    /* openat() took the lowest free number (open(2)), so 3 means 0-2 are
     * all open; st_size of /proc/self/fd is the number of open descriptors
     * (Linux >= 6.2, 0 before), so 4 then means there is nothing else. */
    if (dirfd == 3 && nip_sys2(NIP_SYS_fstat, dirfd, st) == 0) {
        memcpy(&open_fds, st + NIP_STAT_FILESIZE, sizeof open_fds);
        if (open_fds == 4) {
            nip_close(dirfd);
            return 0;
        }
    }
    while (!beyond) {
        n = nip_sys3(NIP_SYS_getdents64, dirfd, nip_io, sizeof nip_io);
        if (n == -NIP_EINTR)
            continue;
        if (n < 0)
            beyond = 1;
        if (n <= 0)
            break;
        /* struct linux_dirent64, as in nip_put_fds */
        for (off = 0; off < n && !beyond; off += reclen) {
            const char *p = nip_io + off + 19;
            long fd = 0;
            memcpy(&reclen, nip_io + off + 16, sizeof reclen);
            if (*p < '0' || *p > '9')
                continue;
            for (; *p >= '0' && *p <= '9'; p++)
                fd = fd * 10 + (*p - '0');
            beyond = fd > 2 && fd != dirfd && (nip_u64)fd < nip_fd_cap;
        }
    }
    nip_close(dirfd);
    return beyond;
}

/* --- streaming the record through nip_rec ------------------------------ */

/* Writes out the buffer.  On failure nip_failed is set and nip_whole still
 * says how much of the file is whole lines. */
static void nip_flush(void)
{
    nip_size done = 0, i;
    long n;

    if (nip_failed || nip_pos == 0)
        return;
    if (nip_written + nip_pos > nip_limit) {
        nip_failed = 1;
        return;
    }
    while (done < nip_pos) {
        n = nip_sys3(NIP_SYS_write, nip_out, nip_rec + done, nip_pos - done);
        if (n == -NIP_EINTR)
            continue;
        if (n <= 0) {
            nip_failed = 1;
            break;
        }
        done += (nip_size)n;
    }
    for (i = done; i > 0; i--) {
        if (nip_rec[i - 1] == '\n') {
            nip_whole = nip_written + i;
            break;
        }
    }
    nip_written += done;
    nip_pos = 0;
}

static void nip_put(const char *s, nip_size n)
{
    if (n > sizeof nip_rec - nip_pos)
        nip_flush();
    if (nip_failed)
        return;
    memcpy(nip_rec + nip_pos, s, n);
    nip_pos += n;
}

static void nip_puts(const char *s)
{
    nip_size n = 0;
    while (s[n])
        n++;
    nip_put(s, n);
}

/* Decimal digits of v into the end of buf[24]; returns the first digit. */
static char *nip_utoa(nip_u64 v, char *buf)
{
    char *p = buf + 24;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p;
}

static void nip_put_u64(nip_u64 v)
{
    char buf[24];
    char *p = nip_utoa(v, buf);
    nip_put(p, (nip_size)(buf + 24 - p));
}

static void nip_put_long(long v)
{
    if (v < 0) {
        nip_put("-", 1);
        nip_put_u64(-(nip_u64)v);
    } else {
        nip_put_u64((nip_u64)v);
    }
}

/* Untrusted bytes (paths, arguments): only 0x21..0x7e other than the
 * backslash stand for themselves, so a record line never holds a space,
 * newline or non-ASCII byte it did not put there itself. */
static void nip_put_escaped(const char *s, nip_size n)
{
    static const char hex[] = "0123456789abcdef";
    nip_size i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > 0x20 && c < 0x7f && c != '\\') {
            nip_put((const char *)&c, 1);
        } else {
            char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            nip_put(e, 4);
        }
    }
}

/* "argv" plus one escaped field per NUL-terminated argument of
 * /proc/self/cmdline, read up to NIP_CMDLINE_CAP bytes. */
static void nip_put_argv(void)
{
    nip_size len = 0, start, i;
    long fd, n;
    int any;

    nip_puts("argv");
    fd = nip_sys4(NIP_SYS_openat, NIP_AT_FDCWD, "/proc/self/cmdline",
                  NIP_O_RDONLY | NIP_O_CLOEXEC, 0);
    if (fd < 0) {
        nip_put("\n", 1);
        return;
    }
    while (len < NIP_CMDLINE_CAP) {
        n = nip_read(fd, nip_io + len, NIP_CMDLINE_CAP - len);
        if (n <= 0)
            break;
        len += (nip_size)n;
    }
    nip_close(fd);
    any = len > 0; /* argc 0 reads as empty, argc 1 with "" as one NUL */
    if (len > 0 && nip_io[len - 1] == '\0')
        len--; /* the terminator of the last argument */
    start = 0;
    for (i = 0; any && i <= len; i++) {
        if (i == len || nip_io[i] == '\0') {
            nip_put(" ", 1);
            nip_put_escaped(nip_io + start, i - start);
            start = i + 1;
        }
    }
    nip_put("\n", 1);
}

/* " <hex>" of an address getsockname/getpeername wrote, or " -" when the
 * call failed (r < 0).  A length past the buffer is what the kernel would
 * have written had there been room (socket(7)): only the buffer is real. */
static void nip_put_sockaddr(long r, const unsigned char *addr, unsigned int len)
{
    static const char hex[] = "0123456789abcdef";
    char text[2 * NIP_SOCKADDR_SIZE];
    unsigned int i;

    if (r < 0) {
        nip_put(" -", 2);
        return;
    }
    if (len > NIP_SOCKADDR_SIZE)
        len = NIP_SOCKADDR_SIZE;
    for (i = 0; i < len; i++) {
        text[2 * i] = hex[addr[i] >> 4];
        text[2 * i + 1] = hex[addr[i] & 15];
    }
    nip_put(" ", 1);
    nip_put(text, 2 * len);
}

/* The "sock ..." line of a socket, what the native core's nic_socket_info
 * reads: SO_DOMAIN (the address's sa_family where the option is refused),
 * SO_TYPE, and both addresses.  Whatever a call refuses is -1 or "-": a
 * socket without a peer, or a family without addresses, is still a socket. */
static void nip_put_sock(long fd)
{
    unsigned char local[NIP_SOCKADDR_SIZE] __attribute__((aligned(8)));
    unsigned char peer[NIP_SOCKADDR_SIZE] __attribute__((aligned(8)));
    unsigned int local_len = sizeof local, peer_len = sizeof peer;
    unsigned int vlen;
    int domain = -1, type = -1, value;
    long named, connected;

    named = nip_sys3(NIP_SYS_getsockname, fd, local, &local_len);
    connected = nip_sys3(NIP_SYS_getpeername, fd, peer, &peer_len);
    vlen = sizeof value;
    if (nip_sys5(NIP_SYS_getsockopt, fd, NIP_SOL_SOCKET, NIP_SO_DOMAIN, &value, &vlen) == 0)
        domain = value;
    else if (named == 0 && local_len >= 2) {
        unsigned short family; /* sa_family_t, the address's first member */
        memcpy(&family, local, sizeof family);
        domain = family;
    }
    vlen = sizeof value;
    if (nip_sys5(NIP_SYS_getsockopt, fd, NIP_SOL_SOCKET, NIP_SO_TYPE, &value, &vlen) == 0)
        type = value;

    nip_puts("sock ");
    nip_put_long(fd);
    nip_put(" ", 1);
    nip_put_long(domain);
    nip_put(" ", 1);
    nip_put_long(type);
    nip_put_sockaddr(named, local, local_len);
    nip_put_sockaddr(connected, peer, peer_len);
    nip_put("\n", 1);
}

/* One "fd ..." line for descriptor fd, and its "sock ..." line when it is a
 * socket; dirfd is the open /proc/self/fd. */
static void nip_put_fd(long fd, long dirfd, const char *name)
{
    char st[NIP_STAT_SIZE] __attribute__((aligned(8))); /* struct stat */
    unsigned int mode = 0;
    long r;

    nip_puts("fd ");
    nip_put_long(fd);
    nip_put(" ", 1);
    nip_put_long(nip_sys2(NIP_SYS_fcntl, fd, NIP_F_GETFD));
    nip_put(" ", 1);
    nip_put_long(nip_sys2(NIP_SYS_fcntl, fd, NIP_F_GETFL));
    nip_put(" ", 1);
    if (nip_sys2(NIP_SYS_fstat, fd, st) == 0) {
        nip_u64 dev, ino;
        memcpy(&dev, st + NIP_STAT_DEV, sizeof dev);
        memcpy(&ino, st + NIP_STAT_INO, sizeof ino);
        memcpy(&mode, st + NIP_STAT_MODE, sizeof mode);
        nip_put_u64(dev);
        nip_put(" ", 1);
        nip_put_u64(ino);
        nip_put(" ", 1);
        nip_put_u64(mode);
    } else {
        nip_puts("-1 -1 -1");
    }
    nip_put(" ", 1);
    r = nip_sys4(NIP_SYS_readlinkat, dirfd, name, nip_link, sizeof nip_link);
    if (r > 0)
        nip_put_escaped(nip_link, (nip_size)r);
    nip_put("\n", 1);
    if ((mode & NIP_S_IFMT) == NIP_S_IFSOCK)
        nip_put_sock(fd);
}

/* The fd lines, from a getdents64 walk of /proc/self/fd (the descriptor
 * used for the walk and the record file itself are left out by number:
 * both were free numbers when the program started).  Returns 1 when the
 * table is complete, 0 when some lines are missing. */
static int nip_put_fds(void)
{
    long dirfd, n, off;
    unsigned short reclen;
    int complete = 1, stop = 0;

    dirfd = nip_sys4(NIP_SYS_openat, NIP_AT_FDCWD, "/proc/self/fd",
                     NIP_O_RDONLY | NIP_O_DIRECTORY | NIP_O_CLOEXEC, 0);
    if (dirfd < 0)
        return 0;
    while (!stop) {
        n = nip_sys3(NIP_SYS_getdents64, dirfd, nip_io, sizeof nip_io);
        if (n == -NIP_EINTR)
            continue;
        if (n < 0)
            complete = 0;
        if (n <= 0)
            break;
        /* struct linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen,
         * u8 d_type, char d_name[]; records are 8-byte aligned. */
        for (off = 0; off < n && !stop; off += reclen) {
            const char *name = nip_io + off + 19;
            const char *p = name;
            long fd = 0;
            nip_size line;
            memcpy(&reclen, nip_io + off + 16, sizeof reclen);
            if (*p < '0' || *p > '9')
                continue; /* "." and ".." */
            for (; *p >= '0' && *p <= '9'; p++)
                fd = fd * 10 + (*p - '0');
            if (*p != '\0' || fd == dirfd || fd == nip_out || (nip_u64)fd >= nip_fd_cap)
                continue;
            if (sizeof nip_rec - nip_pos < NIP_LINE_MAX)
                nip_flush();
            if (nip_failed)
                break;
            line = nip_pos;
            nip_put_fd(fd, dirfd, name);
            if (nip_written + nip_pos + NIP_RECORD_TAIL > nip_limit) {
                nip_pos = line; /* past RLIMIT_FSIZE: take the line back */
                complete = 0;
                stop = 1;
            }
        }
        if (nip_failed)
            stop = 1;
    }
    nip_close(dirfd);
    return complete;
}

/* dst = dir "/" base suffix, NUL-terminated; -1 when it does not fit. */
static int nip_join(char *dst, nip_size cap, const char *base, nip_size base_len,
                    const char *suffix)
{
    nip_size dir_len = 0, n = 0;
    while (nip_dir[dir_len])
        dir_len++;
    while (suffix[n])
        n++;
    if (dir_len + 1 + base_len + n + 1 > cap)
        return -1;
    memcpy(dst, nip_dir, dir_len);
    dst[dir_len] = '/';
    memcpy(dst + dir_len + 1, base, base_len);
    memcpy(dst + dir_len + 1 + base_len, suffix, n + 1);
    return 0;
}

/* After a failed write: cut the file back to its whole lines and say
 * "truncated", so that the reader knows the table is incomplete. */
static void nip_mark_truncated(void)
{
    static const char tail[] = "truncated\nend\n";
    nip_size done = 0;
    long n;

    if (nip_sys2(NIP_SYS_ftruncate, nip_out, nip_whole) != 0)
        return;
    while (done < sizeof tail - 1) {
        n = nip_sys4(NIP_SYS_pwrite64, nip_out, tail + done, sizeof tail - 1 - done,
                     nip_whole + done);
        if (n == -NIP_EINTR)
            continue;
        if (n <= 0)
            return;
        done += (nip_size)n;
    }
}

static void nip_probe(void)
{
    struct {
        long sec, nsec;
    } now;
    char base[64];
    nip_size base_len = 0;
    nip_u64 ns, fsize[2];
    long pid, r;
    char num[24];
    char *p;
    int complete;

    if (nip_find_env() == 0 || nip_dir[0] != '/')
        return; /* off, or a relative path that would follow the child's cwd */
    nip_fd_cap = ~0ull;
    if (nip_valgrind && nip_sys4(NIP_SYS_prlimit64, 0, NIP_RLIMIT_NOFILE, 0, fsize) == 0)
        nip_fd_cap = fsize[0]; /* what valgrind shows the program */
    if (!nip_all && !nip_beyond_stdio())
        return; /* received nothing beyond stdio: nothing to say */
    pid = nip_sys0(NIP_SYS_getpid);
    if (nip_sys2(NIP_SYS_clock_gettime, NIP_CLOCK_MONOTONIC, &now) != 0)
        return;
    ns = (nip_u64)now.sec * 1000000000ull + (nip_u64)now.nsec;

    /* <pid>-<ns>: one pid can exec many times, each exec is a new record. */
    p = nip_utoa((nip_u64)pid, num);
    while (p < num + 24)
        base[base_len++] = *p++;
    base[base_len++] = '-';
    p = nip_utoa(ns, num);
    while (p < num + 24)
        base[base_len++] = *p++;
    if (nip_join(nip_tmp_path, sizeof nip_tmp_path, base, base_len, ".tmp") < 0 ||
        nip_join(nip_rec_path, sizeof nip_rec_path, base, base_len, ".rec") < 0)
        return;

    nip_limit = ~0ull;
    if (nip_sys4(NIP_SYS_prlimit64, 0, NIP_RLIMIT_FSIZE, 0, fsize) == 0)
        nip_limit = fsize[0];
    nip_pos = 0;
    nip_written = 0;
    nip_whole = 0;
    nip_failed = 0;
    /* Opened before the table is read, and left out of it by number. */
    nip_out = nip_sys4(NIP_SYS_openat, NIP_AT_FDCWD, nip_tmp_path,
                       NIP_O_WRONLY | NIP_O_CREAT | NIP_O_EXCL | NIP_O_NOFOLLOW | NIP_O_CLOEXEC,
                       0600);
    if (nip_out < 0)
        return;

    nip_puts("noinherit-probe 1\npid ");
    nip_put_long(pid);
    nip_puts("\nppid ");
    nip_put_long(nip_sys0(NIP_SYS_getppid));
    nip_puts("\ntime ");
    nip_put_u64(ns);
    nip_puts("\nexe ");
    r = nip_sys4(NIP_SYS_readlinkat, NIP_AT_FDCWD, "/proc/self/exe", nip_link,
                 sizeof nip_link);
    if (r > 0)
        nip_put_escaped(nip_link, (nip_size)r);
    nip_put("\n", 1);
    nip_put_argv();
    if (nip_written + nip_pos + NIP_RECORD_TAIL > nip_limit) {
        /* Not even the header fits under RLIMIT_FSIZE: no record. */
        nip_close(nip_out);
        nip_sys3(NIP_SYS_unlinkat, NIP_AT_FDCWD, nip_tmp_path, 0);
        return;
    }
    complete = nip_put_fds();
    if (!complete)
        nip_puts("truncated\n");
    nip_puts("end\n");
    nip_flush();
    if (nip_failed)
        nip_mark_truncated();
    r = nip_close(nip_out);
    (void)r; /* a failed close is a failed write, which the reader will see */
    if (nip_rename(nip_tmp_path, nip_rec_path) != 0)
        nip_sys3(NIP_SYS_unlinkat, NIP_AT_FDCWD, nip_tmp_path, 0);
}

__attribute__((constructor(101), used)) static void nip_probe_init(void)
{
    nip_probe();
}

#else /* !NIP_SUPPORTED */

/* Other architectures (and the 32-bit stubs): load, do nothing.  A stub
 * still has to exist for every ABI whose $LIB directory ld.so may look in,
 * because a missing preload object makes ld.so print an error into the
 * program's stderr. */
__attribute__((constructor(101), used)) static void nip_probe_init(void)
{
}

#endif
