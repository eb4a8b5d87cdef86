/* pytest-noinherit exec probe: raw Linux system calls, one block per arch.
 *
 * The probe links against nothing (no libc, no libgcc), so every kernel
 * call is an inline-asm trap.  Numbers come from the kernel's
 * arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
 * (arm64); flag values from the arch's uapi fcntl.h, which differ for
 * O_DIRECTORY and O_NOFOLLOW.  A call returns the result or -errno.
 *
 * NIP_SUPPORTED is 0 on every other architecture: probe.c then compiles to
 * a constructor that does nothing, which is also what the 32-bit stubs in
 * the $LIB tree are.
 */
#ifndef NIP_PROBE_SYSCALLS_H
#define NIP_PROBE_SYSCALLS_H

#if defined(__x86_64__) && !defined(__ILP32__)

#define NIP_SUPPORTED 1

#define NIP_SYS_read 0
#define NIP_SYS_write 1
#define NIP_SYS_close 3
#define NIP_SYS_fstat 5
#define NIP_SYS_pwrite64 18
#define NIP_SYS_getpid 39
#define NIP_SYS_getsockname 51
#define NIP_SYS_getpeername 52
#define NIP_SYS_getsockopt 55
#define NIP_SYS_fcntl 72
#define NIP_SYS_ftruncate 77
#define NIP_SYS_getppid 110
#define NIP_SYS_getdents64 217
#define NIP_SYS_clock_gettime 228
#define NIP_SYS_openat 257
#define NIP_SYS_unlinkat 263
#define NIP_SYS_renameat 264
#define NIP_SYS_readlinkat 267
#define NIP_SYS_prlimit64 302

#define NIP_O_DIRECTORY 0200000
#define NIP_O_NOFOLLOW 0400000

/* struct stat of arch/x86/include/uapi/asm/stat.h: st_nlink (8 bytes)
 * sits between st_ino and st_mode. */
#define NIP_STAT_DEV 0
#define NIP_STAT_INO 8
#define NIP_STAT_MODE 24
#define NIP_STAT_FILESIZE 48 /* st_size, after st_uid, st_gid, a pad and st_rdev */

static inline long nip_syscall(long n, long a, long b, long c, long d, long e)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}

#elif defined(__aarch64__) && !defined(__ILP32__)

#define NIP_SUPPORTED 1

#define NIP_SYS_getdents64 61
#define NIP_SYS_fcntl 25
#define NIP_SYS_unlinkat 35
#define NIP_SYS_ftruncate 46
#define NIP_SYS_openat 56
#define NIP_SYS_close 57
#define NIP_SYS_read 63
#define NIP_SYS_write 64
#define NIP_SYS_pwrite64 68
#define NIP_SYS_readlinkat 78
#define NIP_SYS_fstat 80
#define NIP_SYS_clock_gettime 113
#define NIP_SYS_getpid 172
#define NIP_SYS_getppid 173
#define NIP_SYS_getsockname 204
#define NIP_SYS_getpeername 205
#define NIP_SYS_getsockopt 209
#define NIP_SYS_prlimit64 261
/* arm64 has no renameat, only renameat2 (flags 0 = plain rename). */
#define NIP_SYS_renameat2 276

#define NIP_O_DIRECTORY 040000
#define NIP_O_NOFOLLOW 0100000

/* struct stat of include/uapi/asm-generic/stat.h: st_mode (4 bytes) right
 * after st_ino. */
#define NIP_STAT_DEV 0
#define NIP_STAT_INO 8
#define NIP_STAT_MODE 16
#define NIP_STAT_FILESIZE 48 /* st_size, after st_nlink..st_rdev and a pad */

static inline long nip_syscall(long n, long a, long b, long c, long d, long e)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4)
                     : "memory", "cc");
    return x0;
}

#else

#define NIP_SUPPORTED 0

#endif

#if NIP_SUPPORTED

/* Identical on both architectures. */
#define NIP_AT_FDCWD (-100)
#define NIP_O_RDONLY 0
#define NIP_O_WRONLY 01
#define NIP_O_CREAT 0100
#define NIP_O_EXCL 0200
#define NIP_O_CLOEXEC 02000000
#define NIP_F_GETFD 1
#define NIP_F_GETFL 3
#define NIP_CLOCK_MONOTONIC 1
#define NIP_RLIMIT_FSIZE 1
#define NIP_RLIMIT_NOFILE 7
#define NIP_EINTR 4
#define NIP_S_IFMT 0170000
#define NIP_S_IFSOCK 0140000
/* include/uapi/asm-generic/socket.h, which x86 and arm64 both use. */
#define NIP_SOL_SOCKET 1
#define NIP_SO_TYPE 3
#define NIP_SO_DOMAIN 39
/* sizeof(struct sockaddr_storage): the most any family's address takes. */
#define NIP_SOCKADDR_SIZE 128
/* Big enough for either arch's struct stat (144 and 128 bytes). */
#define NIP_STAT_SIZE 256

#define nip_sys0(n) nip_syscall((n), 0, 0, 0, 0, 0)
#define nip_sys1(n, a) nip_syscall((n), (long)(a), 0, 0, 0, 0)
#define nip_sys2(n, a, b) nip_syscall((n), (long)(a), (long)(b), 0, 0, 0)
#define nip_sys3(n, a, b, c) nip_syscall((n), (long)(a), (long)(b), (long)(c), 0, 0)
#define nip_sys4(n, a, b, c, d) \
    nip_syscall((n), (long)(a), (long)(b), (long)(c), (long)(d), 0)
#define nip_sys5(n, a, b, c, d, e) \
    nip_syscall((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e))

#ifdef NIP_SYS_renameat
#define nip_rename(from, to) \
    nip_sys4(NIP_SYS_renameat, NIP_AT_FDCWD, (from), NIP_AT_FDCWD, (to))
#else
#define nip_rename(from, to) \
    nip_sys5(NIP_SYS_renameat2, NIP_AT_FDCWD, (from), NIP_AT_FDCWD, (to), 0)
#endif

#endif /* NIP_SUPPORTED */

#endif /* NIP_PROBE_SYSCALLS_H */
