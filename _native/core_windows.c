/* pytest-noinherit native core: Windows.
 *
 * On Windows the inheritable flag (PEP 446) is HANDLE_FLAG_INHERIT on the
 * OS handle behind a CRT descriptor, as in CPython's Python/fileutils.c
 * (get_inheritable / set_inheritable with MS_WINDOWS).  The seam of
 * noinherit.h is served from the CRT descriptor table; noinherit_windows.h
 * adds what only Windows has: the process handle table (which also holds
 * sockets and raw handles that no descriptor names) and a race-free look at
 * what a child really received (created suspended, inspected, resumed).
 *
 * Self-contained: core_common.c is POSIX code and is not compiled with it.
 * Only documented Win32 calls are linked; the two undocumented ntdll
 * queries are resolved at run time.  Built with mingw-w64 and run under
 * wine 8 only; see docs/windows.md for what that does and does not prove.
 */
#if !defined(_WIN32_WINNT) || _WIN32_WINNT < 0x0601
#undef _WIN32_WINNT
#define _WIN32_WINNT 0x0601 /* InitOnce, STARTUPINFOEX, GetFinalPathNameByHandleW */
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif

#include <winsock2.h> /* before windows.h, which would pull in winsock 1 */
#include <windows.h>

#include <errno.h>
#include <io.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "noinherit.h"
#include "noinherit_windows.h"

#ifdef _MSC_VER
#pragma comment(lib, "ws2_32.lib")
#endif

#ifndef ESRCH
#define ESRCH 3
#endif

/* st_mode type bits with their POSIX values, which Python's stat module
 * uses on every platform (the CRT's <sys/stat.h> has no S_IFSOCK). */
#define NIC_S_IFIFO 0010000u
#define NIC_S_IFCHR 0020000u
#define NIC_S_IFDIR 0040000u
#define NIC_S_IFREG 0100000u
#define NIC_S_IFSOCK 0140000u

/* The CRT descriptor table holds at most 8192 entries (the UCRT's
 * _NHANDLE_; the system msvcrt.dll has 2048), whatever _getmaxstdio()
 * says: that is the FILE* limit, and _open() can return descriptors above
 * it. */
#define NIC_CRT_FD_LIMIT 8192

/* How long nic_win_child_handles() waits for its child to exit. */
#define NIC_CHILD_WAIT_MS 60000

const char *nic_platform(void)
{
    return "windows";
}

/* ---------------------------------------------------------------------- */
/* Errors: Win32, winsock and NTSTATUS codes become errno values.  The
 * Win32 code is left in GetLastError() too, for cffi's ffi.getwinerror(). */

static int errno_from_win32(DWORD err)
{
    switch (err) {
    case ERROR_INVALID_HANDLE:
        return EBADF;
    case ERROR_ACCESS_DENIED:
        return EACCES;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
        return ENOMEM;
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
    case ERROR_INVALID_NAME:
    case ERROR_BAD_PATHNAME:
    case ERROR_DIRECTORY:
        return ENOENT;
    case ERROR_BAD_EXE_FORMAT:
    case ERROR_EXE_MACHINE_TYPE_MISMATCH:
        return ENOEXEC;
    case ERROR_INVALID_FUNCTION:
    case ERROR_NOT_SUPPORTED:
    case ERROR_CALL_NOT_IMPLEMENTED:
    case ERROR_PROC_NOT_FOUND:
        return ENOSYS;
    case ERROR_INSUFFICIENT_BUFFER:
        return ERANGE;
    case WAIT_TIMEOUT:
        return ETIMEDOUT;
    case WSAENOTSOCK:
        return ENOTSOCK;
    case WSAENOTCONN:
        return ENOTCONN;
    case WSAENOBUFS:
        return ENOBUFS;
    case WSAEFAULT:
        return EFAULT;
    default:
        return EINVAL;
    }
}

static int fail_win32(DWORD err)
{
    errno = errno_from_win32(err);
    SetLastError(err);
    return -1;
}

static int fail_errno(int err)
{
    errno = err;
    return -1;
}

/* ---------------------------------------------------------------------- */
/* ntdll, resolved once at run time: both queries are undocumented or only
 * semi-documented, and NtQueryInformationProcess class 51 exists from
 * Windows 8 on (and not at all in wine 8). */

#define NIC_STATUS_NOT_IMPLEMENTED ((LONG)0xC0000002L)
#define NIC_STATUS_INVALID_INFO_CLASS ((LONG)0xC0000003L)
#define NIC_STATUS_INFO_LENGTH_MISMATCH ((LONG)0xC0000004L)
#define NIC_STATUS_INVALID_CID ((LONG)0xC000000BL)
#define NIC_STATUS_NO_MEMORY ((LONG)0xC0000017L)
#define NIC_STATUS_ACCESS_DENIED ((LONG)0xC0000022L)
#define NIC_STATUS_BUFFER_TOO_SMALL ((LONG)0xC0000023L)

#define NIC_PROCESS_HANDLE_INFORMATION 51         /* PROCESSINFOCLASS */
#define NIC_SYSTEM_EXTENDED_HANDLE_INFORMATION 64 /* SYSTEM_INFORMATION_CLASS */

/* Largest buffer either query may grow to: a busy system has a few hundred
 * thousand handles of 40 bytes each. */
#define NIC_QUERY_LIMIT (256UL * 1024 * 1024)

typedef LONG(NTAPI *nic_query_process_fn)(HANDLE, ULONG, PVOID, ULONG, PULONG);
typedef LONG(NTAPI *nic_query_system_fn)(ULONG, PVOID, ULONG, PULONG);
typedef ULONG(NTAPI *nic_status_to_dos_fn)(LONG);

/* PROCESS_HANDLE_TABLE_ENTRY_INFO and PROCESS_HANDLE_SNAPSHOT_INFORMATION
 * (class 51), under our own names: not every SDK declares them. */
typedef struct {
    HANDLE HandleValue;
    ULONG_PTR HandleCount;
    ULONG_PTR PointerCount;
    ULONG GrantedAccess;
    ULONG ObjectTypeIndex;
    ULONG HandleAttributes;
    ULONG Reserved;
} nic_process_handle_entry;

typedef struct {
    ULONG_PTR NumberOfHandles;
    ULONG_PTR Reserved;
    nic_process_handle_entry Handles[1];
} nic_process_handle_snapshot;

/* SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX and SYSTEM_HANDLE_INFORMATION_EX
 * (class 64): full-width pid and handle, unlike the legacy class 16. */
typedef struct {
    PVOID Object;
    ULONG_PTR UniqueProcessId;
    ULONG_PTR HandleValue;
    ULONG GrantedAccess;
    USHORT CreatorBackTraceIndex;
    USHORT ObjectTypeIndex;
    ULONG HandleAttributes;
    ULONG Reserved;
} nic_system_handle_entry;

typedef struct {
    ULONG_PTR NumberOfHandles;
    ULONG_PTR Reserved;
    nic_system_handle_entry Handles[1];
} nic_system_handle_information;

static struct {
    nic_query_process_fn query_process;
    nic_query_system_fn query_system;
    nic_status_to_dos_fn status_to_dos;
} ntdll;

static INIT_ONCE ntdll_once = INIT_ONCE_STATIC_INIT;

/* GetProcAddress returns FARPROC; going through void (*)(void) is the
 * conversion both MSVC and GCC's -Wcast-function-type accept. */
#define NIC_PROC(module, name) ((void (*)(void))GetProcAddress((module), (name)))

static BOOL CALLBACK resolve_ntdll(PINIT_ONCE once, PVOID param, PVOID *context)
{
    HMODULE module = GetModuleHandleW(L"ntdll.dll"); /* mapped into every process */
    (void)once;
    (void)param;
    (void)context;
    if (module != NULL) {
        ntdll.query_process = (nic_query_process_fn)NIC_PROC(module, "NtQueryInformationProcess");
        ntdll.query_system = (nic_query_system_fn)NIC_PROC(module, "NtQuerySystemInformation");
        ntdll.status_to_dos = (nic_status_to_dos_fn)NIC_PROC(module, "RtlNtStatusToDosError");
    }
    return TRUE;
}

static int fail_status(LONG status)
{
    switch (status) {
    case NIC_STATUS_NO_MEMORY:
        return fail_errno(ENOMEM);
    case NIC_STATUS_ACCESS_DENIED:
        return fail_win32(ERROR_ACCESS_DENIED);
    case NIC_STATUS_INVALID_CID:
        return fail_errno(ESRCH);
    case NIC_STATUS_NOT_IMPLEMENTED:
    case NIC_STATUS_INVALID_INFO_CLASS:
        return fail_errno(ENOSYS);
    default:
        if (ntdll.status_to_dos != NULL)
            return fail_win32(ntdll.status_to_dos(status));
        return fail_errno(EINVAL);
    }
}

/* ---------------------------------------------------------------------- */
/* Winsock, started once: getsockopt() answers WSANOTINITIALISED before. */

static INIT_ONCE winsock_once = INIT_ONCE_STATIC_INIT;
static int winsock_error; /* WSAStartup's answer, 0 when it worked */

static BOOL CALLBACK start_winsock(PINIT_ONCE once, PVOID param, PVOID *context)
{
    WSADATA data;
    (void)once;
    (void)param;
    (void)context;
    /* Never WSACleanup'd: the process (or CPython's _socket) owns winsock
     * for as long as it lives; WSAStartup only counts references. */
    winsock_error = WSAStartup(MAKEWORD(2, 2), &data);
    return TRUE;
}

static int ensure_winsock(void)
{
    InitOnceExecuteOnce(&winsock_once, start_winsock, NULL, NULL);
    if (winsock_error != 0)
        return fail_win32((DWORD)winsock_error);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* CRT descriptors to handles.
 *
 * The UCRT's _get_osfhandle() calls the invalid parameter handler for a
 * descriptor that is not open, and the default handler ends the process.
 * CPython brackets such calls with _Py_BEGIN/END_SUPPRESS_IPH, a no-op
 * thread-local handler; so do we.  The system msvcrt.dll (mingw-w64's
 * default runtime) only has a process-wide handler, which a library must
 * not swap under other threads; its _get_osfhandle() answers -1 with EBADF
 * (that is what wine's msvcrt does; not checked against real Windows). */

#if defined(_MSC_VER) || defined(_UCRT)
#define NIC_SUPPRESS_IPH 1
#ifndef _MSC_VER
/* Exported by the UCRT; older mingw-w64 headers do not declare it. */
_CRTIMP _invalid_parameter_handler __cdecl
_set_thread_local_invalid_parameter_handler(_invalid_parameter_handler handler);
#endif

static void __cdecl ignore_invalid_parameter(const wchar_t *expression, const wchar_t *function,
                                             const wchar_t *file, unsigned int line,
                                             uintptr_t reserved)
{
    (void)expression;
    (void)function;
    (void)file;
    (void)line;
    (void)reserved;
}
#endif

/* The OS handle behind fd, or INVALID_HANDLE_VALUE with errno EBADF.  -2
 * (_NO_CONSOLE_FILENO) is a standard stream of a process without a
 * console: open in the CRT, but no handle a child could receive. */
static HANDLE crt_handle(int fd)
{
    intptr_t h;
#ifdef NIC_SUPPRESS_IPH
    _invalid_parameter_handler old = _set_thread_local_invalid_parameter_handler(ignore_invalid_parameter);
#endif
    h = fd < 0 ? -1 : _get_osfhandle(fd);
#ifdef NIC_SUPPRESS_IPH
    _set_thread_local_invalid_parameter_handler(old);
#endif
    if (h == -1 || h == -2) {
        errno = EBADF;
        return INVALID_HANDLE_VALUE;
    }
    return (HANDLE)h;
}

/* Windows 7 console pseudo-handles: not kernel handles, so the inherit flag
 * cannot be changed; CPython skips them the same way (fileutils.c
 * set_inheritable, subprocess._filter_handle_list). */
static int is_console_pseudo_handle(HANDLE h)
{
    return ((uintptr_t)h & 3) == 3 && GetFileType(h) == FILE_TYPE_CHAR;
}

static int fd_limit(void)
{
    int stdio_limit = _getmaxstdio();
    return stdio_limit > NIC_CRT_FD_LIMIT ? stdio_limit : NIC_CRT_FD_LIMIT;
}

/* A handle that winsock knows: SO_TYPE is the probe CPython's socket
 * module and ours on POSIX use too. */
static int is_socket(HANDLE h)
{
    int type = 0;
    int len = (int)sizeof type;
    if (ensure_winsock() != 0)
        return 0;
    return getsockopt((SOCKET)h, SOL_SOCKET, SO_TYPE, (char *)&type, &len) == 0;
}

/* ---------------------------------------------------------------------- */
/* The inheritable flag                                                    */

static int get_handle_inheritable(HANDLE h)
{
    DWORD flags = 0;
    if (!GetHandleInformation(h, &flags))
        return fail_win32(GetLastError());
    return (flags & HANDLE_FLAG_INHERIT) ? 1 : 0;
}

static int set_handle_inheritable(HANDLE h, int inheritable)
{
    if (!SetHandleInformation(h, HANDLE_FLAG_INHERIT, inheritable ? HANDLE_FLAG_INHERIT : 0))
        return fail_win32(GetLastError());
    return 0;
}

int nic_get_inheritable(int fd)
{
    HANDLE h = crt_handle(fd);
    if (h == INVALID_HANDLE_VALUE)
        return -1;
    return get_handle_inheritable(h);
}

int nic_set_inheritable(int fd, int inheritable)
{
    HANDLE h = crt_handle(fd);
    if (h == INVALID_HANDLE_VALUE)
        return -1;
    if (is_console_pseudo_handle(h))
        return 0; /* nothing to change, nothing a child could receive twice */
    return set_handle_inheritable(h, inheritable);
}

int nic_win_get_handle_inheritable(uint64_t handle)
{
    return get_handle_inheritable((HANDLE)(uintptr_t)handle);
}

int nic_win_set_handle_inheritable(uint64_t handle, int inheritable)
{
    return set_handle_inheritable((HANDLE)(uintptr_t)handle, inheritable);
}

/* ---------------------------------------------------------------------- */
/* Snapshot of the CRT descriptors                                         */

static void fill_identity(HANDLE h, nic_entry *e)
{
    BY_HANDLE_FILE_INFORMATION info;
    if (!GetFileInformationByHandle(h, &info))
        return; /* pipes on some systems, devices: no identity, 0/0 */
    e->dev = info.dwVolumeSerialNumber;
    e->ino = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow;
    if (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY)
        e->mode = NIC_S_IFDIR;
}

static uint64_t entry_flags(HANDLE h)
{
    DWORD flags = 0;
    if (GetHandleInformation(h, &flags))
        return (flags & HANDLE_FLAG_INHERIT) ? 0 : NIC_FLAG_CLOEXEC;
    if (is_console_pseudo_handle(h))
        return 0; /* a console stream reaches every console child */
    return NIC_FLAG_CLOEXEC; /* closed behind the CRT's back: nothing to inherit */
}

/* Kind and identity: GetFileType, GetFileInformationByHandle and the socket
 * probe, each a kernel (or wineserver) round trip. */
static void fill_kind(HANDLE h, nic_entry *e)
{
    e->dev = e->ino = e->mode = 0;
    switch (GetFileType(h)) {
    case FILE_TYPE_DISK:
        e->mode = NIC_S_IFREG;
        fill_identity(h, e);
        break;
    case FILE_TYPE_CHAR:
        e->mode = NIC_S_IFCHR;
        break;
    case FILE_TYPE_PIPE: /* sockets say "pipe" too */
        if (is_socket(h)) {
            e->mode = NIC_S_IFSOCK;
        } else {
            e->mode = NIC_S_IFIFO;
            fill_identity(h, e);
            e->mode = NIC_S_IFIFO; /* whatever the attributes claimed */
        }
        break;
    default:
        if (is_socket(h))
            e->mode = NIC_S_IFSOCK;
        break;
    }
}

/* The CRT table; an entry of prev (ascending) with the same descriptor and
 * flag is reused instead of asking for kind and identity again. */
static int snapshot_crt(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    int n = 0, j = 0, limit = fd_limit();

    for (int fd = 0; fd < limit; fd++) {
        HANDLE h = crt_handle(fd);
        nic_entry *e;
        if (h == INVALID_HANDLE_VALUE)
            continue;
        if (n >= cap) {
            n++; /* only counting now */
            continue;
        }
        e = &out[n++];
        e->fd = (uint64_t)fd;
        e->flags = entry_flags(h);
        while (j < nprev && prev[j].fd < (uint64_t)fd)
            j++;
        if (j < nprev && prev[j].fd == (uint64_t)fd && prev[j].flags == e->flags) {
            e->dev = prev[j].dev;
            e->ino = prev[j].ino;
            e->mode = prev[j].mode;
        } else {
            fill_kind(h, e);
        }
    }
    return n;
}

int nic_snapshot(nic_entry *out, int cap, int method)
{
    if (method == NIC_METHOD_POLL || method == NIC_METHOD_PROCFS || method == NIC_METHOD_SCAN)
        return fail_errno(ENOSYS);
    if (method != NIC_METHOD_AUTO && method != NIC_METHOD_NATIVE)
        return fail_errno(EINVAL);
    if (cap < 0 || (cap > 0 && out == NULL))
        return fail_errno(EINVAL);
    return snapshot_crt(out, cap, NULL, 0);
}

int nic_snapshot_since(nic_entry *out, int cap, const nic_entry *prev, int nprev)
{
    if (cap < 0 || (cap > 0 && out == NULL) || nprev < 0 || (nprev > 0 && prev == NULL))
        return fail_errno(EINVAL);
    return snapshot_crt(out, cap, prev, nprev);
}

/* ---------------------------------------------------------------------- */
/* Seal                                                                    */

static int compare_ints(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int nic_seal(int low, const int *keep, int nkeep)
{
    int *sorted = NULL;
    int next = 0, limit, rc = 0;
    DWORD saved = 0;

    if (low < 0 || nkeep < 0 || (nkeep > 0 && keep == NULL))
        return fail_errno(EINVAL);
    if (nkeep > 0) {
        sorted = malloc((size_t)nkeep * sizeof *sorted);
        if (sorted == NULL)
            return fail_errno(ENOMEM);
        memcpy(sorted, keep, (size_t)nkeep * sizeof *sorted);
        qsort(sorted, (size_t)nkeep, sizeof *sorted, compare_ints);
    }

    limit = fd_limit();
    for (int fd = low; fd < limit; fd++) {
        HANDLE h;
        DWORD flags = 0;
        while (next < nkeep && sorted[next] < fd)
            next++;
        if (next < nkeep && sorted[next] == fd)
            continue;
        h = crt_handle(fd);
        if (h == INVALID_HANDLE_VALUE || is_console_pseudo_handle(h))
            continue;
        if (!GetHandleInformation(h, &flags) || !(flags & HANDLE_FLAG_INHERIT))
            continue; /* already sealed, or a stale handle nothing can inherit */
        if (!SetHandleInformation(h, HANDLE_FLAG_INHERIT, 0) && rc == 0) {
            rc = -1;
            saved = GetLastError();
        }
    }
    free(sorted);
    return rc == 0 ? 0 : fail_win32(saved);
}

/* ---------------------------------------------------------------------- */
/* What a descriptor refers to                                             */

/* Copy the NUL-terminated UTF-8 text src into buf[0..size), cutting at a
 * character boundary when it does not fit (as readlink truncates). */
static int copy_utf8(char *buf, int size, const char *src, int len)
{
    if (len > size - 1) {
        len = size - 1;
        while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80)
            len--; /* src[len] continues a character: cut before it */
    }
    memcpy(buf, src, (size_t)len);
    buf[len] = '\0';
    return len;
}

/* nic_target and nic_win_handle_target.  h is INVALID_HANDLE_VALUE when
 * crt_handle() found no descriptor: EBADF, but only after the argument
 * check, as on POSIX. */
static int handle_target(HANDLE h, char *buf, int size)
{
    wchar_t small[MAX_PATH + 16];
    wchar_t *path = small, *shown;
    DWORD cap = (DWORD)(sizeof small / sizeof small[0]), len;
    char *utf8 = NULL;
    int n, rc;

    if (buf == NULL || size <= 0)
        return fail_errno(EINVAL);
    if (h == INVALID_HANDLE_VALUE)
        return fail_errno(EBADF);
    /* A handle that is not open (closed behind the CRT's back, or a bogus
     * value) is FILE_TYPE_UNKNOWN: ENOSYS too, "unknowable" to Python,
     * which it is for a descriptor the CRT still calls open. */
    if (GetFileType(h) != FILE_TYPE_DISK)
        return fail_errno(ENOSYS); /* pipes, sockets, consoles have no path */

    for (;;) {
        len = GetFinalPathNameByHandleW(h, path, cap, FILE_NAME_NORMALIZED | VOLUME_NAME_DOS);
        if (len == 0) {
            DWORD err = GetLastError();
            if (path != small)
                free(path);
            return fail_win32(err);
        }
        if (len < cap)
            break;
        /* Too small: len is the size needed, the NUL included. */
        if (path != small)
            free(path);
        cap = len + 1;
        path = malloc(cap * sizeof *path);
        if (path == NULL)
            return fail_errno(ENOMEM);
    }

    /* "\\?\C:\x" -> "C:\x" and "\\?\UNC\srv\share" -> "\\srv\share", as
     * ntpath.realpath() shows them. */
    shown = path;
    if (wcsncmp(path, L"\\\\?\\UNC\\", 8) == 0) {
        shown = path + 6;
        shown[0] = L'\\';
    } else if (wcsncmp(path, L"\\\\?\\", 4) == 0 && path[4] != L'\0' && path[5] == L':') {
        shown = path + 4;
    }

    n = WideCharToMultiByte(CP_UTF8, 0, shown, -1, NULL, 0, NULL, NULL);
    if (n > 0 && (utf8 = malloc((size_t)n)) != NULL)
        n = WideCharToMultiByte(CP_UTF8, 0, shown, -1, utf8, n, NULL, NULL);
    if (n <= 0 || utf8 == NULL) {
        DWORD err = utf8 == NULL ? ERROR_NOT_ENOUGH_MEMORY : GetLastError();
        free(utf8);
        if (path != small)
            free(path);
        return fail_win32(err);
    }
    rc = copy_utf8(buf, size, utf8, n - 1);
    free(utf8);
    if (path != small)
        free(path);
    return rc;
}

int nic_target(int fd, char *buf, int size)
{
    return handle_target(crt_handle(fd), buf, size);
}

int nic_win_handle_target(uint64_t handle, char *buf, int size)
{
    return handle_target((HANDLE)(uintptr_t)handle, buf, size);
}

/* ---------------------------------------------------------------------- */
/* Sockets                                                                 */

static void copy_address(unsigned char *dst, int *dst_len, const struct sockaddr_storage *ss,
                         int len)
{
    int n = len;
    if (dst_len == NULL)
        return;
    if (dst == NULL || *dst_len <= 0 || len <= 0) {
        *dst_len = 0;
        return;
    }
    if (n > (int)sizeof *ss)
        n = (int)sizeof *ss;
    if (n > *dst_len)
        n = *dst_len;
    memcpy(dst, ss, (size_t)n);
    *dst_len = n;
}

/* nic_socket_info and nic_win_handle_socket_info: a SOCKET is a handle. */
static int socket_info(SOCKET s, int *family, int *type, int *protocol, unsigned char *local,
                       int *local_len, unsigned char *peer, int *peer_len)
{
    struct sockaddr_storage ss;
    WSAPROTOCOL_INFOW info;
    int value = 0, vlen = (int)sizeof value, sslen, ilen = (int)sizeof info;

    if (ensure_winsock() != 0)
        return -1;

    /* SO_TYPE is the "is this a socket" probe: WSAENOTSOCK -> ENOTSOCK. */
    if (getsockopt(s, SOL_SOCKET, SO_TYPE, (char *)&value, &vlen) != 0)
        return fail_win32((DWORD)WSAGetLastError());
    if (type != NULL)
        *type = value;

    memset(&ss, 0, sizeof ss);
    sslen = (int)sizeof ss;
    if (getsockname(s, (struct sockaddr *)&ss, &sslen) != 0) {
        int err = WSAGetLastError();
        if (err != WSAEINVAL) /* Windows' answer for an unbound socket */
            return fail_win32((DWORD)err);
        sslen = 0;
    }
    copy_address(local, local_len, &ss, sslen);

    /* Family and protocol: SO_PROTOCOL_INFOW knows both even when the
     * socket is unbound and getsockname() had nothing to say. */
    memset(&info, 0, sizeof info);
    if (getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, (char *)&info, &ilen) == 0) {
        if (family != NULL)
            *family = info.iAddressFamily;
        if (protocol != NULL)
            *protocol = info.iProtocol;
    } else {
        if (family != NULL)
            *family = sslen > 0 ? ss.ss_family : 0;
        if (protocol != NULL)
            *protocol = 0;
    }

    memset(&ss, 0, sizeof ss);
    sslen = (int)sizeof ss;
    if (getpeername(s, (struct sockaddr *)&ss, &sslen) == 0) {
        copy_address(peer, peer_len, &ss, sslen);
    } else {
        int err = WSAGetLastError();
        if (err != WSAENOTCONN && err != WSAEINVAL)
            return fail_win32((DWORD)err);
        if (peer_len != NULL)
            *peer_len = 0; /* listening, unconnected or datagram */
    }
    return 0;
}

int nic_socket_info(int fd, int *family, int *type, int *protocol, unsigned char *local,
                    int *local_len, unsigned char *peer, int *peer_len)
{
    HANDLE h = crt_handle(fd);
    if (h == INVALID_HANDLE_VALUE)
        return -1;
    return socket_info((SOCKET)h, family, type, protocol, local, local_len, peer, peer_len);
}

int nic_win_handle_socket_info(uint64_t handle, int *family, int *type, int *protocol,
                               unsigned char *local, int *local_len, unsigned char *peer,
                               int *peer_len)
{
    return socket_info((SOCKET)(uintptr_t)handle, family, type, protocol, local, local_len, peer,
                       peer_len);
}

/* ---------------------------------------------------------------------- */
/* The process handle table                                                */

/* A growing buffer for one query: STATUS_INFO_LENGTH_MISMATCH asks for a
 * bigger one, and the table may grow again between two calls. */
#ifndef NIC_QUERY_FIRST_SIZE /* build.sh sets it tiny once, to exercise the growth */
#define NIC_QUERY_FIRST_SIZE 0
#endif

static LONG query_handles(HANDLE process, ULONG klass, void **buf_out, ULONG *size_out)
{
    ULONG size = NIC_QUERY_FIRST_SIZE > 0    ? (ULONG)NIC_QUERY_FIRST_SIZE
                 : process != NULL ? 16UL * 1024
                                   : 256UL * 1024;

    for (;;) {
        ULONG needed = 0;
        LONG status;
        void *buf = malloc(size);
        if (buf == NULL)
            return NIC_STATUS_NO_MEMORY;
        if (process != NULL)
            status = ntdll.query_process(process, klass, buf, size, &needed);
        else
            status = ntdll.query_system(klass, buf, size, &needed);
        if (status >= 0) {
            *buf_out = buf;
            *size_out = size;
            return status;
        }
        free(buf);
        if (status != NIC_STATUS_INFO_LENGTH_MISMATCH && status != NIC_STATUS_BUFFER_TOO_SMALL)
            return status;
        /* Class 64's needed size is a hint at best: never trust it to grow. */
        if (needed > size)
            size = needed + needed / 4;
        else
            size *= 2;
        if (size > NIC_QUERY_LIMIT)
            return NIC_STATUS_NO_MEMORY;
    }
}

/* A growable list of nic_handle. */
typedef struct {
    nic_handle *items;
    size_t count, cap;
} handle_vec;

static int push_handle(handle_vec *list, uint64_t value, uint64_t attributes, uint64_t access,
                       uint64_t type_index)
{
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 64;
        nic_handle *grown = realloc(list->items, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        list->items = grown;
        list->cap = cap;
    }
    list->items[list->count].handle = value;
    list->items[list->count].attributes = attributes;
    list->items[list->count].access = access;
    list->items[list->count].type_index = type_index;
    list->count++;
    return 0;
}

/* Class 51 on a process handle (Windows 8+). */
static LONG handles_by_process(HANDLE process, handle_vec *list)
{
    nic_process_handle_snapshot *snap = NULL;
    ULONG size = 0;
    size_t fits, count;
    LONG status;

    if (ntdll.query_process == NULL)
        return NIC_STATUS_NOT_IMPLEMENTED;
    status = query_handles(process, NIC_PROCESS_HANDLE_INFORMATION, (void **)&snap, &size);
    if (status < 0)
        return status;
    fits = (size - offsetof(nic_process_handle_snapshot, Handles)) / sizeof snap->Handles[0];
    count = snap->NumberOfHandles < fits ? snap->NumberOfHandles : fits;
    for (size_t i = 0; i < count; i++) {
        const nic_process_handle_entry *h = &snap->Handles[i];
        if (push_handle(list, (uint64_t)(uintptr_t)h->HandleValue, h->HandleAttributes,
                        h->GrantedAccess, h->ObjectTypeIndex) != 0) {
            free(snap);
            return NIC_STATUS_NO_MEMORY;
        }
    }
    free(snap);
    return 0;
}

/* Class 64, every process's handles, filtered by pid. */
static LONG handles_by_system(DWORD pid, handle_vec *list)
{
    nic_system_handle_information *info = NULL;
    ULONG size = 0;
    size_t fits, count;
    LONG status;

    if (ntdll.query_system == NULL)
        return NIC_STATUS_NOT_IMPLEMENTED;
    status = query_handles(NULL, NIC_SYSTEM_EXTENDED_HANDLE_INFORMATION, (void **)&info, &size);
    if (status < 0)
        return status;
    fits = (size - offsetof(nic_system_handle_information, Handles)) / sizeof info->Handles[0];
    count = info->NumberOfHandles < fits ? info->NumberOfHandles : fits;
    for (size_t i = 0; i < count; i++) {
        const nic_system_handle_entry *h = &info->Handles[i];
        if (h->UniqueProcessId != (ULONG_PTR)pid)
            continue;
        if (push_handle(list, h->HandleValue, h->HandleAttributes, h->GrantedAccess,
                        h->ObjectTypeIndex) != 0) {
            free(info);
            return NIC_STATUS_NO_MEMORY;
        }
    }
    free(info);
    return 0;
}

static int compare_handles(const void *a, const void *b)
{
    uint64_t x = ((const nic_handle *)a)->handle, y = ((const nic_handle *)b)->handle;
    return (x > y) - (x < y);
}

/* The unsorted table of the process (process may be NULL: class 64 only)
 * appended to list; on failure list may hold a partial table. */
static LONG read_handle_table(HANDLE process, DWORD pid, handle_vec *list)
{
    size_t start = list->count;
    LONG status = NIC_STATUS_NOT_IMPLEMENTED;

    InitOnceExecuteOnce(&ntdll_once, resolve_ntdll, NULL, NULL);
    if (process != NULL)
        status = handles_by_process(process, list);
    if (status < 0) {
        /* Class 51 is missing before Windows 8 and in wine 8
         * (STATUS_INVALID_INFO_CLASS), or refused for this process: class
         * 64 needs no handle to the process at all. */
        list->count = start;
        status = handles_by_system(pid, list);
    }
    return status;
}

/* The table of the process (process may be NULL: class 64 only), sorted,
 * copied into out[0..cap).  Returns the count or -1 with errno. */
static int process_handles(HANDLE process, DWORD pid, nic_handle *out, int cap)
{
    handle_vec list = {NULL, 0, 0};
    LONG status = read_handle_table(process, pid, &list);
    int n;

    if (status < 0) {
        free(list.items);
        return fail_status(status);
    }
    if (list.count > (size_t)INT_MAX) {
        free(list.items);
        return fail_errno(EOVERFLOW);
    }
    if (list.count > 1)
        qsort(list.items, list.count, sizeof *list.items, compare_handles);
    n = (int)list.count;
    if (cap > 0)
        memcpy(out, list.items, (size_t)(n < cap ? n : cap) * sizeof *out);
    free(list.items);
    return n;
}

int nic_win_handles(unsigned long pid, nic_handle *out, int cap)
{
    HANDLE process;
    DWORD open_error = 0;
    int n;

    if (cap < 0 || (cap > 0 && out == NULL))
        return fail_errno(EINVAL);
    if (pid == 0 || pid == GetCurrentProcessId())
        return process_handles(GetCurrentProcess(), GetCurrentProcessId(), out, cap);

    /* Class 51 needs query and duplicate rights on the process. */
    process = OpenProcess(PROCESS_QUERY_INFORMATION | PROCESS_DUP_HANDLE, FALSE, (DWORD)pid);
    if (process == NULL)
        open_error = GetLastError();
    n = process_handles(process, (DWORD)pid, out, cap);
    if (process != NULL)
        CloseHandle(process);
    /* No such process: class 64 just had nothing for that pid. */
    if (n == 0 && open_error == ERROR_INVALID_PARAMETER)
        return fail_errno(ESRCH);
    return n;
}

/* ---------------------------------------------------------------------- */
/* The handle view: what a child started with bInheritHandles=TRUE gets,
 * plus what the CRT descriptors name                                      */

/* The standard handles: behind descriptors 0, 1 and 2, and GetStdHandle's. */
static void standard_handles(HANDLE std[6])
{
    static const DWORD std_ids[] = {STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE};
    for (int i = 0; i < 3; i++) {
        std[i] = crt_handle(i);
        std[3 + i] = GetStdHandle(std_ids[i]);
    }
}

static int is_standard_handle(HANDLE h, const HANDLE std[6])
{
    for (int i = 0; i < 6; i++)
        if (h == std[i])
            return 1;
    return 0;
}

int nic_win_snapshot(nic_entry *out, int cap)
{
    handle_vec list = {NULL, 0, 0};
    size_t kept = 0, unique = 0;
    LONG status;
    int limit = fd_limit();
    HANDLE std[6];

    if (cap < 0 || (cap > 0 && out == NULL))
        return fail_errno(EINVAL);
    standard_handles(std);
    /* Winsock first: whatever WSAStartup keeps open is then in every
     * snapshot, the first one included, not only from the second on. */
    InitOnceExecuteOnce(&winsock_once, start_winsock, NULL, NULL);

    status = read_handle_table(GetCurrentProcess(), GetCurrentProcessId(), &list);
    if (status < 0) {
        free(list.items);
        return fail_status(status);
    }
    /* Only the inheritable handles of the table: the rest no child gets. */
    for (size_t i = 0; i < list.count; i++)
        if (list.items[i].attributes & NIC_OBJ_INHERIT)
            list.items[kept++] = list.items[i];
    list.count = kept;

    /* Every descriptor's handle, inheritable or not, as nic_snapshot. */
    for (int fd = 0; fd < limit; fd++) {
        HANDLE h = crt_handle(fd);
        if (h == INVALID_HANDLE_VALUE)
            continue;
        if (push_handle(&list, (uint64_t)(uintptr_t)h, 0, 0, 0) != 0) {
            free(list.items);
            return fail_errno(ENOMEM);
        }
    }

    /* A descriptor's inheritable handle is in both halves: keep one.  The
     * standard handles are left out: every child is meant to get them, as
     * descriptors 0, 1 and 2 on POSIX, and pytest's capture replaces them
     * (dup2) with new handle values at every test. */
    if (list.count > 1)
        qsort(list.items, list.count, sizeof *list.items, compare_handles);
    for (size_t i = 0; i < list.count; i++)
        if ((unique == 0 || list.items[unique - 1].handle != list.items[i].handle) &&
            !is_standard_handle((HANDLE)(uintptr_t)list.items[i].handle, std))
            list.items[unique++] = list.items[i];
    if (unique > (size_t)INT_MAX) {
        free(list.items);
        return fail_errno(EOVERFLOW);
    }

    for (size_t i = 0; i < unique && i < (size_t)cap; i++) {
        HANDLE h = (HANDLE)(uintptr_t)list.items[i].handle;
        out[i].fd = list.items[i].handle;
        out[i].flags = entry_flags(h);
        fill_kind(h, &out[i]);
    }
    free(list.items);
    return (int)unique;
}

/* ---------------------------------------------------------------------- */
/* Threads                                                                 */

int nic_win_resume_thread(uint64_t thread)
{
    DWORD previous = ResumeThread((HANDLE)(uintptr_t)thread);
    if (previous == (DWORD)-1)
        return fail_win32(GetLastError());
    return (int)previous; /* at most MAXIMUM_SUSPEND_COUNT */
}

/* ---------------------------------------------------------------------- */
/* What a child receives                                                   */

int nic_win_child_handles(const wchar_t *cmdline, int inherit_handles,
                          const uint64_t *handle_list, int nlist, nic_handle *out, int cap,
                          unsigned long *pid_out)
{
    STARTUPINFOEXW si;
    PROCESS_INFORMATION pi;
    LPPROC_THREAD_ATTRIBUTE_LIST attributes = NULL;
    HANDLE *handles = NULL;
    wchar_t *line = NULL;
    DWORD flags = CREATE_SUSPENDED, err = 0;
    SIZE_T attributes_size = 0;
    size_t len;
    int initialized = 0, n = -1, saved_errno = 0;

    if (cmdline == NULL || nlist < 0 || (nlist > 0 && handle_list == NULL) || cap < 0 ||
        (cap > 0 && out == NULL))
        return fail_errno(EINVAL);
    if (pid_out != NULL)
        *pid_out = 0;

    /* CreateProcessW may write into its command line. */
    len = wcslen(cmdline);
    line = malloc((len + 1) * sizeof *line);
    if (line == NULL)
        return fail_errno(ENOMEM);
    memcpy(line, cmdline, (len + 1) * sizeof *line);

    memset(&si, 0, sizeof si);
    si.StartupInfo.cb = sizeof si.StartupInfo;
    if (nlist > 0) {
        /* The list must outlive CreateProcessW: UpdateProcThreadAttribute
         * keeps a pointer to it, not a copy. */
        handles = malloc((size_t)nlist * sizeof *handles);
        if (handles == NULL) {
            err = ERROR_NOT_ENOUGH_MEMORY;
            goto done;
        }
        for (int i = 0; i < nlist; i++)
            handles[i] = (HANDLE)(uintptr_t)handle_list[i];
        InitializeProcThreadAttributeList(NULL, 1, 0, &attributes_size); /* asks the size */
        attributes = malloc(attributes_size);
        if (attributes == NULL) {
            err = ERROR_NOT_ENOUGH_MEMORY;
            goto done;
        }
        if (!InitializeProcThreadAttributeList(attributes, 1, 0, &attributes_size)) {
            err = GetLastError();
            goto done;
        }
        initialized = 1;
        if (!UpdateProcThreadAttribute(attributes, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, handles,
                                       (SIZE_T)nlist * sizeof *handles, NULL, NULL)) {
            err = GetLastError();
            goto done;
        }
        si.StartupInfo.cb = sizeof si;
        si.lpAttributeList = attributes;
        flags |= EXTENDED_STARTUPINFO_PRESENT;
    }

    if (!CreateProcessW(NULL, line, NULL, NULL, inherit_handles ? TRUE : FALSE, flags, NULL, NULL,
                        &si.StartupInfo, &pi)) {
        err = GetLastError();
        goto done;
    }
    if (pid_out != NULL)
        *pid_out = pi.dwProcessId;

    /* The child is suspended before its first instruction: its table holds
     * exactly what CreateProcess gave it, nothing it opened itself. */
    n = process_handles(pi.hProcess, pi.dwProcessId, out, cap);
    if (n < 0) {
        saved_errno = errno;
        err = GetLastError();
    }

    if (ResumeThread(pi.hThread) == (DWORD)-1) {
        if (n >= 0) {
            err = GetLastError();
            n = -1;
        }
        TerminateProcess(pi.hProcess, 1);
    }
    if (WaitForSingleObject(pi.hProcess, NIC_CHILD_WAIT_MS) != WAIT_OBJECT_0) {
        TerminateProcess(pi.hProcess, 1);
        WaitForSingleObject(pi.hProcess, INFINITE);
        if (n >= 0) {
            err = WAIT_TIMEOUT;
            n = -1;
        }
    }
    CloseHandle(pi.hThread);
    CloseHandle(pi.hProcess);

done:
    if (initialized)
        DeleteProcThreadAttributeList(attributes);
    free(attributes);
    free(handles);
    free(line);
    if (n >= 0)
        return n;
    if (saved_errno != 0) {
        SetLastError(err);
        return fail_errno(saved_errno);
    }
    return fail_win32(err);
}
