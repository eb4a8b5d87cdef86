/* The seccomp filter of the kernel exec observer (docs/how-it-works.md),
 * shared by the in-process install (core_kernel.c) and the observer's
 * self-test (observer.c), so that the self-test proves the very program
 * the session installs.
 *
 * Every execve and execveat of every ABI the kernel may run is stopped
 * with SECCOMP_RET_USER_NOTIF; every other system call is allowed without
 * leaving the kernel's BPF interpreter.  The numbers are the kernel's own
 * (arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl,
 * include/uapi/asm-generic/unistd.h, arch/arm/tools/syscall.tbl): x32
 * shares AUDIT_ARCH_X86_64 and sets __X32_SYSCALL_BIT in the number. */
#ifndef NIK_KERNEL_FILTER_H
#define NIK_KERNEL_FILTER_H

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Kernel headers older than the features may lack the names. */
#ifndef SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#endif
#ifndef SECCOMP_FILTER_FLAG_TSYNC_ESRCH
#define SECCOMP_FILTER_FLAG_TSYNC_ESRCH (1UL << 4)
#endif
#ifndef SECCOMP_RET_USER_NOTIF
#define SECCOMP_RET_USER_NOTIF 0x7fc00000U
#endif
#ifndef SECCOMP_GET_ACTION_AVAIL
#define SECCOMP_GET_ACTION_AVAIL 2
#endif
#ifndef SECCOMP_GET_NOTIF_SIZES
#define SECCOMP_GET_NOTIF_SIZES 3
#endif
#ifndef SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE (1UL << 0)
#endif
#ifndef AUDIT_ARCH_AARCH64
#define AUDIT_ARCH_AARCH64 (EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE)
#endif
#ifndef SYS_seccomp
#if defined(__x86_64__)
#define SYS_seccomp 317
#elif defined(__aarch64__)
#define SYS_seccomp 277
#endif
#endif

#define NIK_X32_BIT 0x40000000U
#define NIK_FLAGS                                                                  \
    (SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_TSYNC |               \
     SECCOMP_FILTER_FLAG_TSYNC_ESRCH)

#define NIK_LD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, field))
#define NIK_IS(value, to) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (value), (to), 0)
#define NIK_RET(action) BPF_STMT(BPF_RET | BPF_K, (action))

/* Jump offsets count from the next instruction; the targets are named by
 * their index in the comments. */
static const struct sock_filter nik_filter_code[] = {
    /* 0 */ NIK_LD(arch),
    /* 1 */ NIK_IS(AUDIT_ARCH_X86_64, 4),   /* -> 6 */
    /* 2 */ NIK_IS(AUDIT_ARCH_I386, 9),     /* -> 12 */
    /* 3 */ NIK_IS(AUDIT_ARCH_AARCH64, 12), /* -> 16 */
    /* 4 */ NIK_IS(AUDIT_ARCH_ARM, 15),     /* -> 20 */
    /* 5 */ NIK_RET(SECCOMP_RET_ALLOW),
    /* 6: x86_64 and x32 */ NIK_LD(nr),
    /* 7 */ NIK_IS(59, 16), /* execve -> 24 */
    /* 8 */ NIK_IS(322, 15), /* execveat */
    /* 9 */ NIK_IS(NIK_X32_BIT | 520, 14),
    /* 10 */ NIK_IS(NIK_X32_BIT | 545, 13),
    /* 11 */ NIK_RET(SECCOMP_RET_ALLOW),
    /* 12: i386 */ NIK_LD(nr),
    /* 13 */ NIK_IS(11, 10),
    /* 14 */ NIK_IS(358, 9),
    /* 15 */ NIK_RET(SECCOMP_RET_ALLOW),
    /* 16: aarch64 */ NIK_LD(nr),
    /* 17 */ NIK_IS(221, 6),
    /* 18 */ NIK_IS(281, 5),
    /* 19 */ NIK_RET(SECCOMP_RET_ALLOW),
    /* 20: 32-bit arm */ NIK_LD(nr),
    /* 21 */ NIK_IS(11, 2),
    /* 22 */ NIK_IS(387, 1),
    /* 23 */ NIK_RET(SECCOMP_RET_ALLOW),
    /* 24 */ NIK_RET(SECCOMP_RET_USER_NOTIF),
};

static inline long nik_seccomp(unsigned int op, unsigned int flags, void *args)
{
#ifdef SYS_seccomp
    return syscall(SYS_seccomp, op, flags, args);
#else
    (void)op;
    (void)flags;
    (void)args;
    errno = ENOSYS;
    return -1;
#endif
}

/* Install the filter on every thread of the calling process; the listener
 * descriptor (close-on-exec), or -1 with errno.  The caller has
 * CAP_SYS_ADMIN or has set no_new_privs (seccomp(2)). */
static inline int nik_install_filter(void)
{
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof nik_filter_code / sizeof nik_filter_code[0]),
        .filter = (struct sock_filter *)nik_filter_code,
    };
    return (int)nik_seccomp(SECCOMP_SET_MODE_FILTER, NIK_FLAGS, &prog);
}

/* 0 if this kernel has seccomp user notification, -1 with errno if not:
 * ENOSYS (no seccomp), EINVAL (no SECCOMP_FILTER), EOPNOTSUPP (no
 * SECCOMP_RET_USER_NOTIF, before Linux 5.0). */
static inline int nik_user_notif_available(void)
{
    unsigned int action = SECCOMP_RET_USER_NOTIF;
    return (int)nik_seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &action);
}

/* What the observer shares with the process that started it, in one page
 * of a memfd: the id of the last notification it received, written right
 * after SECCOMP_IOCTL_NOTIF_RECV returns.  If the observer dies holding a
 * notification it has not answered, the kernel keeps that exec waiting for
 * a reply on the listener; ids are consecutive per filter
 * (kernel/seccomp.c, seccomp_next_notify_id), so whoever takes over
 * answers this one and the next few, and no exec is left blocked. */
struct nik_shared {
    uint64_t received;
    uint64_t any; /* 1 once received holds an id */
};
#define NIK_ORPHANS 8 /* ids after the last received one answered on take-over */

/* Let the exec of notification id go on as if no filter were there. */
static inline int nik_continue(int listener, uint64_t id)
{
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

#endif
