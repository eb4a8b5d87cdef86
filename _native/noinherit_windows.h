/* pytest-noinherit native core: the Windows-only additions to noinherit.h.
 *
 * On Windows a child receives HANDLEs, not descriptors: every handle whose
 * HANDLE_FLAG_INHERIT is set when CreateProcess(bInheritHandles=TRUE) runs,
 * or only those listed in PROC_THREAD_ATTRIBUTE_HANDLE_LIST.  The CRT
 * descriptors of noinherit.h are a view of some of them; these functions see
 * the whole process handle table.  Like noinherit.h this is also cffi cdef
 * text (build_core.py appends it on win32), so only cffi-parsable C here and
 * no include guard; read_cdef() drops the #include lines.
 */
#include <stdint.h>
#include <wchar.h>

/* One entry of a process handle table, four 64-bit words like nic_entry. */
typedef struct {
    uint64_t handle;      /* the HANDLE value; inheritance preserves it */
    uint64_t attributes;  /* OBJ_* bits: NIC_OBJ_INHERIT is the inherit flag */
    uint64_t access;      /* the granted ACCESS_MASK */
    uint64_t type_index;  /* the object type number (kernel specific) */
} nic_handle;

#define NIC_OBJ_INHERIT 2

/* The handle table of process pid (0: this process) in ascending handle
 * order: NtQueryInformationProcess(ProcessHandleInformation), or, where that
 * class is missing (Windows 7, wine 8), NtQuerySystemInformation(
 * SystemExtendedHandleInformation) filtered by pid.  Same contract as
 * nic_snapshot(): returns the count, fills at most cap entries. */
int nic_win_handles(unsigned long pid, nic_handle *out, int cap);

/* The handle view of this process, as nic_entry (fd is the HANDLE value):
 * the handle behind every CRT descriptor, and every handle of the table with
 * OBJ_INHERIT, which no descriptor needs to name (sockets, raw handles),
 * except the standard handles (descriptors 0-2, GetStdHandle).  One entry
 * per handle, ascending; flags, dev, ino and mode as nic_snapshot()
 * gives them for a descriptor.  Same count/cap contract as nic_snapshot();
 * -1 with errno when the handle table cannot be read. */
int nic_win_snapshot(nic_entry *out, int cap);

/* nic_target() for a handle that no descriptor needs to name: the path of a
 * disk file, ENOSYS for anything else (a handle that is not open included). */
int nic_win_handle_target(uint64_t handle, char *buf, int size);

/* nic_socket_info() for a SOCKET, which is a handle: ENOTSOCK for a handle
 * that is no socket. */
int nic_win_handle_socket_info(uint64_t handle, int *family, int *type, int *protocol,
                               unsigned char *local, int *local_len,
                               unsigned char *peer, int *peer_len);

/* ResumeThread(thread): the previous suspend count (1 for a thread created
 * with CREATE_SUSPENDED), or -1 with errno. */
int nic_win_resume_thread(uint64_t thread);

/* HANDLE_FLAG_INHERIT of any handle of this process: 1, 0 or -1. */
int nic_win_get_handle_inheritable(uint64_t handle);
int nic_win_set_handle_inheritable(uint64_t handle, int inheritable);

/* Start cmdline suspended with CreateProcessW(bInheritHandles =
 * inherit_handles), restricted to the nlist handles of handle_list through
 * PROC_THREAD_ATTRIBUTE_HANDLE_LIST when nlist > 0; read the child's handle
 * table into out (as nic_win_handles) before it runs a single instruction of
 * its own, then resume it and wait for it to exit.  *pid_out (if not NULL)
 * gets its pid.  Returns the child's handle count, or -1 with errno. */
int nic_win_child_handles(const wchar_t *cmdline, int inherit_handles,
                          const uint64_t *handle_list, int nlist,
                          nic_handle *out, int cap, unsigned long *pid_out);
