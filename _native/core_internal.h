/* pytest-noinherit native core: helpers shared by core_common.c and the one
 * platform file (core_linux.c, core_darwin.c, core_bsd.c or core_posix.c)
 * compiled next to it.  Not part of the cffi cdef: Python never sees these.
 */
#ifndef NIC_CORE_INTERNAL_H
#define NIC_CORE_INTERNAL_H

#include <stdint.h>

#include "noinherit.h"

/* Keep the helpers out of the extension's dynamic symbol table. */
#if defined(__GNUC__) || defined(__clang__)
#define NIC_HIDDEN __attribute__((visibility("hidden")))
#else
#define NIC_HIDDEN
#endif

/* Fill *e for fd: FD_CLOEXEC from F_GETFD, identity and type from fstat.
 * -1 with errno EBADF when fd is not open. */
NIC_HIDDEN int nic_fill_entry(int fd, nic_entry *e);

/* nic_fill_entry for a caller that already holds fd's F_GETFD answer. */
NIC_HIDDEN int nic_fill_entry_flags(int fd, int fd_flags, nic_entry *e);

/* The soft RLIMIT_NOFILE, clamped to [0, 1 << 20] (RLIM_INFINITY included):
 * the upper bound of every poll() scan, since poll() refuses nfds above it. */
NIC_HIDDEN int nic_scan_limit(void);

/* NIC_METHOD_SCAN: poll() with events = 0 over [0, nic_scan_limit()) in
 * chunks; POLLNVAL slots get an F_GETFD too, because poll() reports O_PATH
 * descriptors as POLLNVAL.  Same contract as nic_snapshot(). */
NIC_HIDDEN int nic_snapshot_scan(nic_entry *out, int cap);

/* A decimal directory entry name (/proc/self/fd, /dev/fd) as a descriptor;
 * -1 for ".", ".." or anything else that is no fd number. */
NIC_HIDDEN int nic_parse_fd(const char *name);

/* Sort out[0..n) by fd, cheaply when it is already sorted. */
NIC_HIDDEN void nic_sort_entries(nic_entry *out, int n);

/* A cloexec-range primitive: mark [first, last] close-on-exec.  0 or -1 with
 * errno; ENOSYS or EINVAL mean "not available here, use the loop". */
typedef int (*nic_cloexec_range_fn)(unsigned int first, unsigned int last);

/* nic_seal() for every platform: call range on each gap between the sorted
 * kept descriptors, or (range NULL, ENOSYS, EINVAL) mark each open
 * descriptor of a snapshot one by one. */
NIC_HIDDEN int nic_seal_common(int low, const int *keep, int nkeep,
                               nic_cloexec_range_fn range);

#endif
