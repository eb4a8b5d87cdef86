/* pytest-noinherit native core: the per-test check (core_linux.c, and a
 * full read in core_common.c for the other POSIX platforms).  POSIX builds
 * only, so a separate header like noinherit_windows.h: build_core.py adds
 * it to the cdef everywhere but Windows, whose nic_snapshot_since reads
 * the handle view whole anyway.
 *
 * Also part of the cffi cdef (build_core.py), so cffi's parser only.
 */

/* Options of nic_snapshot_delta. */
#define NIC_DELTA_FLAGS 1 /* read every descriptor's close-on-exec flag */

/* The table now, for a caller that holds the previous one (prev,
 * ascending): what nic_snapshot would return, except that an entry of prev
 * whose number is still open is carried over as it was, without reading
 * the descriptor; new numbers are read in full.  With NIC_DELTA_FLAGS each
 * carried descriptor's flag is read too (one F_GETFD each) and one whose
 * flag changed is read in full, which is nic_snapshot_since.
 *
 * When the table is prev exactly, *same is set to 1, out is left
 * untouched and nprev is returned; otherwise *same is 0 and the call
 * behaves as nic_snapshot (count returned, at most cap entries written).
 * same may be NULL.
 *
 * Cost on Linux when nothing changed: stat("/proc/self/fd") for the count
 * and one select() over prev's numbers (it fails with EBADF when one of
 * them is closed), plus one F_GETFD; with NIC_DELTA_FLAGS, the count and
 * one F_GETFD per descriptor instead.  Otherwise one poll() over a range
 * that follows the table, and a read per new (and, with NIC_DELTA_FLAGS,
 * per flipped) descriptor.  A descriptor closed and reopened at the same
 * number between the two calls keeps prev's entry: with the same flag in
 * any case, with another one too unless NIC_DELTA_FLAGS.  Callers that
 * must notice that use nic_snapshot.  Other POSIX platforms read
 * everything (nic_snapshot, *same 0). */
int nic_snapshot_delta(nic_entry *out, int cap, const nic_entry *prev, int nprev, int options,
                       int *same);
