/* pytest-noinherit native core: the C side of the cffi module
 * pytest_noinherit._core.  Every function returns >= 0 on success and -1
 * with errno set on failure; no Python objects cross this boundary.
 *
 * This header is both the C declaration and the cffi cdef (build_core.py
 * reads it), so it may only use what cffi's parser understands.
 */

/* One open descriptor, five 64-bit words, so Python can copy a whole table
 * into an array('Q') in one memcpy and compare two tables with memcmp. */
typedef struct {
    uint64_t fd;
    uint64_t flags;   /* NIC_FLAG_* bits */
    uint64_t dev;     /* st_dev: with ino, the identity of the open file */
    uint64_t ino;
    uint64_t mode;    /* st_mode: the file type bits give the kind */
} nic_entry;

#define NIC_FLAG_CLOEXEC 1

/* Snapshot methods.  AUTO picks the fastest correct one for the platform. */
#define NIC_METHOD_AUTO 0
#define NIC_METHOD_POLL 1    /* Linux: poll() scan validated by the /proc/self/fd count */
#define NIC_METHOD_PROCFS 2  /* Linux: raw getdents64 over /proc/self/fd */
#define NIC_METHOD_SCAN 3    /* generic POSIX: poll() over [0, soft limit) + F_GETFD */
#define NIC_METHOD_NATIVE 4  /* the platform's own lister (proc_pidinfo, /dev/fd) */

/* Fill out[0..cap) with the process's open descriptors in ascending order,
 * the snapshot's own working descriptors excluded.  Returns the number of
 * open descriptors; when that is more than cap only cap entries are filled
 * and the caller retries with a larger buffer. */
int nic_snapshot(nic_entry *out, int cap, int method);

/* nic_snapshot(AUTO) for a caller that holds the previous snapshot (prev,
 * ascending), at any table size: a descriptor open in both with the same
 * flag keeps prev's identity instead of paying for an fstat, so the cost is
 * one F_GETFD per descriptor plus a full read of each new or changed one.
 * The F_GETFD stays: Linux reports one descriptor's close-on-exec flag per
 * call (fcntl, or a /proc/self/fdinfo/N read), and a flag flipped alone
 * changes nothing else the kernel counts.  A descriptor replaced in place
 * (closed and reopened at the same number with the same flag) between the
 * two calls is therefore not noticed; callers that must notice it use
 * nic_snapshot.  Platforms without a cheaper way fall back to nic_snapshot. */
int nic_snapshot_since(nic_entry *out, int cap, const nic_entry *prev, int nprev);

/* The inheritable flag (PEP 446): 1 inheritable, 0 close-on-exec. */
int nic_get_inheritable(int fd);
int nic_set_inheritable(int fd, int inheritable);

/* Mark every descriptor >= low close-on-exec, except the nkeep numbers in
 * keep (any order). */
int nic_seal(int low, const int *keep, int nkeep);

/* nic_seal's portable fallback (one F_SETFD per open descriptor), which
 * every platform without close_range(CLOSE_RANGE_CLOEXEC) uses; exported so
 * that it is exercised where close_range works too. */
int nic_seal_loop(int low, const int *keep, int nkeep);

/* What the descriptor refers to (readlink of /proc/self/fd/N on Linux,
 * F_GETPATH on macOS), NUL-terminated in buf.  Returns its length; a
 * length of size - 1 may be a truncated answer, so the caller retries with
 * a larger buffer.  -1 with EBADF when fd is not open, ENOSYS where the
 * platform cannot tell, or the system's own error (ENAMETOOLONG: Linux
 * refuses paths of PATH_MAX bytes or more). */
int nic_target(int fd, char *buf, int size);

/* Socket family, type and protocol, and the raw local and peer addresses
 * (sockaddr bytes; *len is the buffer size in, the address size out, 0 when
 * there is none).  -1 with ENOTSOCK for a descriptor that is no socket and
 * EBADF for one that is not open; any other failure of getsockopt,
 * getsockname or getpeername only leaves that part unknown (family or type
 * -1, protocol 0, address length 0). */
int nic_socket_info(int fd, int *family, int *type, int *protocol,
                    unsigned char *local, int *local_len,
                    unsigned char *peer, int *peer_len);

/* The platform backend compiled in: "linux", "darwin", "bsd" or "posix". */
const char *nic_platform(void);
