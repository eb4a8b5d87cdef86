/* Test driver for _native/core_windows.c: calls every function of
 * noinherit.h and noinherit_windows.h on real pipes, files, sockets and
 * children, prints one line per check and, last and alone on its line,
 * "N passed, M failed".  Exits 1 when a check failed.
 *
 * Built and run by build.sh with mingw-w64 and wine; child.exe (child.c)
 * must sit next to this program.
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>

#include <errno.h>
#include <fcntl.h>
#include <io.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "noinherit.h"
#include "noinherit_windows.h"

#ifndef WSA_FLAG_NO_HANDLE_INHERIT
#define WSA_FLAG_NO_HANDLE_INHERIT 0x80
#endif

#define S_TYPE_MASK 0170000u
#define S_FIFO 0010000u
#define S_REG 0100000u
#define S_SOCK 0140000u

#define TABLE_CAP 4096

static int passed, failed;

static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    printf("%s - ", ok ? "ok" : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (ok)
        passed++;
    else
        failed++;
}

static uint64_t hv(HANDLE h)
{
    return (uint64_t)(uintptr_t)h;
}

/* ---------------------------------------------------------------------- */

static nic_entry entries[TABLE_CAP];
static nic_handle handles[TABLE_CAP];

static const nic_entry *find_fd(int n, int fd)
{
    for (int i = 0; i < n && i < TABLE_CAP; i++)
        if (entries[i].fd == (uint64_t)fd)
            return &entries[i];
    return NULL;
}

static const nic_handle *find_handle(const nic_handle *table, int n, uint64_t value)
{
    for (int i = 0; i < n && i < TABLE_CAP; i++)
        if (table[i].handle == value)
            return &table[i];
    return NULL;
}

static int handle_inherit_bit(uint64_t value)
{
    int n = nic_win_handles(0, handles, TABLE_CAP);
    const nic_handle *h = n > 0 ? find_handle(handles, n, value) : NULL;
    if (h == NULL)
        return -1;
    return (h->attributes & NIC_OBJ_INHERIT) ? 1 : 0;
}

static int os_inherit(HANDLE h)
{
    DWORD flags = 0;
    if (!GetHandleInformation(h, &flags))
        return -1;
    return (flags & HANDLE_FLAG_INHERIT) ? 1 : 0;
}

/* ---------------------------------------------------------------------- */

static void test_platform(void)
{
    check(strcmp(nic_platform(), "windows") == 0, "nic_platform() is \"windows\" (%s)",
          nic_platform());
}

/* An inheritable pipe, wrapped in CRT descriptors. */
static HANDLE pipe_r, pipe_w;
static int fd_r = -1, fd_w = -1;

static void test_snapshot(void)
{
    SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
    const nic_entry *er, *ew;
    int n, n2, count;

    check(CreatePipe(&pipe_r, &pipe_w, &sa, 0) != 0, "CreatePipe with an inheritable SA");
    fd_r = _open_osfhandle((intptr_t)pipe_r, _O_RDONLY);
    fd_w = _open_osfhandle((intptr_t)pipe_w, _O_WRONLY);
    check(fd_r >= 0 && fd_w >= 0, "_open_osfhandle gives descriptors %d and %d", fd_r, fd_w);

    n = nic_snapshot(entries, TABLE_CAP, NIC_METHOD_AUTO);
    check(n >= 2 && n <= TABLE_CAP, "nic_snapshot(AUTO) lists %d descriptors", n);
    er = find_fd(n, fd_r);
    ew = find_fd(n, fd_w);
    check(er != NULL && ew != NULL, "the snapshot holds both pipe descriptors");
    check(er != NULL && ew != NULL && er->flags == 0 && ew->flags == 0,
          "both are inheritable (no NIC_FLAG_CLOEXEC)");
    check(er != NULL && (er->mode & S_TYPE_MASK) == S_FIFO, "the read end is a FIFO (mode %llo)",
          er ? (unsigned long long)er->mode : 0ULL);
    {
        int sorted = 1;
        for (int i = 1; i < n; i++)
            sorted &= entries[i - 1].fd < entries[i].fd;
        check(sorted, "the snapshot is in ascending descriptor order");
    }

    n2 = nic_snapshot(entries, TABLE_CAP, NIC_METHOD_NATIVE);
    check(n2 == n, "nic_snapshot(NATIVE) is the same table (%d, %d)", n2, n);
    count = nic_snapshot(NULL, 0, NIC_METHOD_AUTO);
    check(count == n, "nic_snapshot(NULL, 0) counts without filling (%d)", count);
    count = nic_snapshot(entries, 1, NIC_METHOD_AUTO);
    check(count == n, "a short buffer still returns the full count (%d)", count);

    errno = 0;
    check(nic_snapshot(entries, TABLE_CAP, NIC_METHOD_POLL) == -1 && errno == ENOSYS,
          "POLL is ENOSYS on Windows");
    errno = 0;
    check(nic_snapshot(entries, TABLE_CAP, NIC_METHOD_PROCFS) == -1 && errno == ENOSYS,
          "PROCFS is ENOSYS on Windows");
    errno = 0;
    check(nic_snapshot(entries, TABLE_CAP, NIC_METHOD_SCAN) == -1 && errno == ENOSYS,
          "SCAN is ENOSYS on Windows");
    errno = 0;
    check(nic_snapshot(entries, TABLE_CAP, 99) == -1 && errno == EINVAL,
          "an unknown method is EINVAL");
    errno = 0;
    check(nic_snapshot(NULL, 5, NIC_METHOD_AUTO) == -1 && errno == EINVAL,
          "a NULL buffer with cap > 0 is EINVAL");
}

static nic_entry previous[TABLE_CAP];

static void test_snapshot_since(void)
{
    int n = nic_snapshot(previous, TABLE_CAP, NIC_METHOD_AUTO), m, same = 1;
    const nic_entry *er;

    m = nic_snapshot_since(entries, TABLE_CAP, previous, n);
    for (int i = 0; i < n && i < m; i++)
        same &= memcmp(&entries[i], &previous[i], sizeof entries[i]) == 0;
    check(m == n && same, "nic_snapshot_since(unchanged table) is the same table (%d)", m);

    /* A marker in prev proves reuse: same descriptor and flag -> copied. */
    for (int i = 0; i < n; i++)
        if (previous[i].fd == (uint64_t)fd_r)
            previous[i].mode = 0777;
    m = nic_snapshot_since(entries, TABLE_CAP, previous, n);
    er = find_fd(m, fd_r);
    check(er != NULL && er->mode == 0777, "an entry with the same flag is taken from prev");

    /* A changed flag means the entry is read afresh. */
    nic_set_inheritable(fd_r, 0);
    m = nic_snapshot_since(entries, TABLE_CAP, previous, n);
    er = find_fd(m, fd_r);
    check(er != NULL && er->flags == NIC_FLAG_CLOEXEC && (er->mode & S_TYPE_MASK) == S_FIFO,
          "an entry whose flag changed is read again");
    nic_set_inheritable(fd_r, 1);

    check(nic_snapshot_since(NULL, 0, NULL, 0) == n, "nic_snapshot_since without prev counts");
    errno = 0;
    check(nic_snapshot_since(entries, TABLE_CAP, NULL, 3) == -1 && errno == EINVAL,
          "nic_snapshot_since(prev NULL, nprev 3) EINVAL");
}

static void test_inheritable(void)
{
    int n;
    const nic_entry *ew;

    check(nic_get_inheritable(fd_w) == 1, "nic_get_inheritable(pipe) is 1");
    check(nic_set_inheritable(fd_w, 0) == 0, "nic_set_inheritable(pipe, 0)");
    check(nic_get_inheritable(fd_w) == 0, "... then nic_get_inheritable is 0");
    check(os_inherit(pipe_w) == 0, "... and GetHandleInformation agrees");
    n = nic_snapshot(entries, TABLE_CAP, NIC_METHOD_AUTO);
    ew = find_fd(n, fd_w);
    check(ew != NULL && ew->flags == NIC_FLAG_CLOEXEC, "... and the snapshot says CLOEXEC");
    check(handle_inherit_bit(hv(pipe_w)) == 0, "... and the handle table has no OBJ_INHERIT");
    check(nic_set_inheritable(fd_w, 1) == 0 && nic_get_inheritable(fd_w) == 1,
          "nic_set_inheritable(pipe, 1) round trip");
    check(handle_inherit_bit(hv(pipe_w)) == 1, "... and the handle table has OBJ_INHERIT again");

    errno = 0;
    check(nic_get_inheritable(7777) == -1 && errno == EBADF, "nic_get_inheritable(closed) EBADF");
    errno = 0;
    check(nic_set_inheritable(7777, 0) == -1 && errno == EBADF,
          "nic_set_inheritable(closed) EBADF");
    errno = 0;
    check(nic_get_inheritable(-1) == -1 && errno == EBADF, "nic_get_inheritable(-1) EBADF");

    /* The raw-handle variants. */
    check(nic_win_get_handle_inheritable(hv(pipe_r)) == 1, "nic_win_get_handle_inheritable is 1");
    check(nic_win_set_handle_inheritable(hv(pipe_r), 0) == 0 &&
              nic_win_get_handle_inheritable(hv(pipe_r)) == 0 && os_inherit(pipe_r) == 0,
          "nic_win_set_handle_inheritable(h, 0) clears HANDLE_FLAG_INHERIT");
    check(nic_win_set_handle_inheritable(hv(pipe_r), 1) == 0 &&
              nic_win_get_handle_inheritable(hv(pipe_r)) == 1 && os_inherit(pipe_r) == 1,
          "nic_win_set_handle_inheritable(h, 1) sets it again");
    errno = 0;
    check(nic_win_get_handle_inheritable(0x7ffffff0u) == -1 && errno == EBADF,
          "nic_win_get_handle_inheritable(bogus) EBADF");
    errno = 0;
    check(nic_win_set_handle_inheritable(0x7ffffff0u, 1) == -1 && errno == EBADF,
          "nic_win_set_handle_inheritable(bogus) EBADF");
}

/* Not a check: which query nic_win_handles() can use here.  Class 51 is
 * missing before Windows 8 and in wine 8, where class 64 stands in. */
static void note_handle_query(void)
{
    typedef LONG(NTAPI * query_fn)(HANDLE, ULONG, PVOID, ULONG, PULONG);
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    query_fn query = ntdll ? (query_fn)(void (*)(void))GetProcAddress(ntdll,
                                                                      "NtQueryInformationProcess")
                           : NULL;
    unsigned char buf[64];
    ULONG needed = 0;
    LONG status = query ? query(GetCurrentProcess(), 51, buf, sizeof buf, &needed) : -1;
    printf("# NtQueryInformationProcess(ProcessHandleInformation=51): status 0x%08lx -> %s\n",
           (unsigned long)status,
           status == (LONG)0xC0000003L ? "not implemented, class 64 used" : "class 51 used");
}

static void test_handle_table(void)
{
    int n = nic_win_handles(0, handles, TABLE_CAP);
    const nic_handle *hr, *hw;
    HANDLE private_event;
    int sorted = 1;

    check(n > 0 && n <= TABLE_CAP, "nic_win_handles(0) lists %d handles", n);
    hr = find_handle(handles, n, hv(pipe_r));
    hw = find_handle(handles, n, hv(pipe_w));
    check(hr != NULL && hw != NULL, "it holds both pipe handles");
    check(hr != NULL && hw != NULL && (hr->attributes & NIC_OBJ_INHERIT) &&
              (hw->attributes & NIC_OBJ_INHERIT),
          "both with OBJ_INHERIT");
    for (int i = 1; i < n; i++)
        sorted &= handles[i - 1].handle < handles[i].handle;
    check(sorted, "the handle table is in ascending order");

    private_event = CreateEventW(NULL, TRUE, FALSE, NULL); /* not inheritable */
    n = nic_win_handles(GetCurrentProcessId(), handles, TABLE_CAP);
    hr = find_handle(handles, n, hv(private_event));
    check(hr != NULL && !(hr->attributes & NIC_OBJ_INHERIT),
          "nic_win_handles(own pid) shows a new event without OBJ_INHERIT");
    check(nic_win_handles(0, NULL, 0) == n, "nic_win_handles(0, NULL, 0) counts (%d)", n);
    CloseHandle(private_event);

    errno = 0;
    check(nic_win_handles(0, NULL, 3) == -1 && errno == EINVAL,
          "nic_win_handles with a NULL buffer and cap > 0 is EINVAL");
    errno = 0;
    n = nic_win_handles(0x7ffffff0UL, handles, TABLE_CAP);
    check(n == -1 && errno == ESRCH, "nic_win_handles(no such pid) is ESRCH (%d, errno %d)", n,
          errno);
}

/* ---------------------------------------------------------------------- */
/* The handle view                                                         */

static const nic_entry *find_value(const nic_entry *table, int n, uint64_t value)
{
    for (int i = 0; i < n && i < TABLE_CAP; i++)
        if (table[i].fd == value)
            return &table[i];
    return NULL;
}

static nic_entry view[TABLE_CAP];

/* Whether an open descriptor names h.  A descriptor whose handle was closed
 * behind the CRT's back (test_sockets leaves such) names whatever new handle
 * reuses the value, and the view then rightly lists it. */
static int named_by_descriptor(HANDLE h)
{
    static nic_entry fds[TABLE_CAP];
    int n = nic_snapshot(fds, TABLE_CAP, NIC_METHOD_AUTO);
    for (int i = 0; i < n && i < TABLE_CAP; i++)
        if (_get_osfhandle((int)fds[i].fd) == (intptr_t)h)
            return 1;
    return 0;
}

static void test_win_snapshot(void)
{
    SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
    wchar_t dir[MAX_PATH], path[MAX_PATH];
    WSADATA data;
    HANDLE ir, iw, nr, nw, event, file;
    SOCKET sock, nsock;
    const nic_entry *e, *f;
    int n, n2, fd_file, strict = 1, covered = 1;

    /* Raw handles that no descriptor names: only the inheritable count. */
    check(CreatePipe(&ir, &iw, &sa, 0) != 0, "an inheritable pipe without descriptors");
    check(CreatePipe(&nr, &nw, NULL, 0) != 0, "a non-inheritable pipe without descriptors");
    event = CreateEventW(NULL, TRUE, FALSE, NULL);
    WSAStartup(MAKEWORD(2, 2), &data); /* test_sockets, which starts it, runs later */
    sock = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    nsock = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0,
                       WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    check(event != NULL && sock != INVALID_SOCKET && nsock != INVALID_SOCKET,
          "an event and two sockets without descriptors");
    check(!named_by_descriptor(ir) && !named_by_descriptor(iw) && !named_by_descriptor(nr) &&
              !named_by_descriptor(nw) && !named_by_descriptor(event) &&
              !named_by_descriptor((HANDLE)sock) && !named_by_descriptor((HANDLE)nsock),
          "no descriptor names any of them (runs before test_sockets leaves stale ones)");
    /* A descriptor that no child gets: still in the view, marked CLOEXEC. */
    GetTempPathW(MAX_PATH, dir);
    GetTempFileNameW(dir, L"nic", 0, path);
    fd_file = _wopen(path, _O_RDWR | _O_BINARY | _O_NOINHERIT);
    file = fd_file >= 0 ? (HANDLE)_get_osfhandle(fd_file) : INVALID_HANDLE_VALUE;
    check(fd_file >= 0 && os_inherit(file) == 0, "_wopen(_O_NOINHERIT) gives descriptor %d",
          fd_file);

    n = nic_win_snapshot(view, TABLE_CAP);
    check(n > 0 && n <= TABLE_CAP, "nic_win_snapshot lists %d handles", n);
    for (int i = 1; i < n && i < TABLE_CAP; i++)
        strict &= view[i - 1].fd < view[i].fd;
    check(n > 1 && strict, "it is ascending, each handle once");

    e = find_value(view, n, hv(ir));
    f = find_value(view, n, hv(iw));
    check(e != NULL && f != NULL && e->flags == 0 && f->flags == 0,
          "it holds both ends of the inheritable pipe, inheritable");
    check(e != NULL && (e->mode & S_TYPE_MASK) == S_FIFO, "... as S_IFIFO (mode %llo)",
          e ? (unsigned long long)e->mode : 0ULL);
    check(find_value(view, n, hv(nr)) == NULL && find_value(view, n, hv(nw)) == NULL,
          "it has no end of the non-inheritable pipe");
    check(find_value(view, n, hv(event)) == NULL, "it has no non-inheritable event");

    e = find_value(view, n, hv(file));
    check(e != NULL && e->flags == NIC_FLAG_CLOEXEC && (e->mode & S_TYPE_MASK) == S_REG,
          "it holds the _O_NOINHERIT file's handle as CLOEXEC S_IFREG");
    n2 = nic_snapshot(entries, TABLE_CAP, NIC_METHOD_AUTO);
    f = find_fd(n2, fd_file);
    check(e != NULL && f != NULL && e->ino != 0 && e->dev == f->dev && e->ino == f->ino,
          "... with the identity nic_snapshot gives its descriptor");
    for (int i = 0; i < n2 && i < TABLE_CAP; i++) {
        intptr_t h = _get_osfhandle((int)entries[i].fd);
        if (entries[i].fd > 2 && h != -1 && h != -2 && find_value(view, n, (uint64_t)h) == NULL)
            covered = 0;
    }
    check(covered, "it holds the handle of every descriptor >= 3 of nic_snapshot (%d)", n2);
    {
        int std_absent = 1;
        for (int i = 0; i < 3; i++) {
            intptr_t h = _get_osfhandle(i);
            HANDLE s = GetStdHandle(i == 0 ? STD_INPUT_HANDLE
                                           : i == 1 ? STD_OUTPUT_HANDLE : STD_ERROR_HANDLE);
            if ((h != -1 && h != -2 && find_value(view, n, (uint64_t)h) != NULL) ||
                (s != NULL && s != INVALID_HANDLE_VALUE &&
                 find_value(view, n, (uint64_t)(uintptr_t)s) != NULL))
                std_absent = 0;
        }
        check(std_absent, "it leaves out the standard handles");
    }

    e = find_value(view, n, (uint64_t)sock);
    check(e != NULL && e->flags == 0 && (e->mode & S_TYPE_MASK) == S_SOCK,
          "it holds the default WSASocketW as an inheritable S_IFSOCK");
    check(find_value(view, n, (uint64_t)nsock) == NULL,
          "it has no WSA_FLAG_NO_HANDLE_INHERIT socket");

    /* The view follows the flag, not the kind of object. */
    nic_win_set_handle_inheritable(hv(event), 1);
    n2 = nic_win_snapshot(view, TABLE_CAP);
    e = find_value(view, n2, hv(event));
    check(n2 == n + 1 && e != NULL && e->flags == 0,
          "an event made inheritable joins the view (%d -> %d)", n, n2);
    nic_win_set_handle_inheritable(hv(event), 0);
    n2 = nic_win_snapshot(view, TABLE_CAP);
    check(n2 == n && find_value(view, n2, hv(event)) == NULL, "... and leaves it again (%d)",
          n2);

    /* The nic_snapshot contract: the count whatever the buffer. */
    check(nic_win_snapshot(NULL, 0) == n, "nic_win_snapshot(NULL, 0) counts (%d)", n);
    {
        static nic_entry one[2];
        memset(one, 0xAB, sizeof one);
        n2 = nic_win_snapshot(one, 1);
        check(n2 == n && memcmp(&one[0], &view[0], sizeof one[0]) == 0,
              "nic_win_snapshot(cap 1) fills the first entry and returns the count (%d)", n2);
        check(one[1].fd == 0xABABABABABABABABULL, "... and writes nothing past it");
    }
    errno = 0;
    check(nic_win_snapshot(NULL, 3) == -1 && errno == EINVAL,
          "nic_win_snapshot(NULL, 3) is EINVAL");
    errno = 0;
    check(nic_win_snapshot(view, -1) == -1 && errno == EINVAL,
          "nic_win_snapshot(cap -1) is EINVAL");

    _close(fd_file);
    DeleteFileW(path);
    closesocket(sock);
    closesocket(nsock);
    WSACleanup();
    CloseHandle(event);
    CloseHandle(ir);
    CloseHandle(iw);
    CloseHandle(nr);
    CloseHandle(nw);
}

static void test_file_and_target(void)
{
    wchar_t dir[MAX_PATH], path[MAX_PATH];
    char buf[1024], tiny[4];
    int fd_inh, fd_noinh, n, len;
    const nic_entry *e1, *e2;

    GetTempPathW(MAX_PATH, dir);
    GetTempFileNameW(dir, L"nic", 0, path);
    fd_inh = _wopen(path, _O_RDWR | _O_BINARY);
    fd_noinh = _wopen(path, _O_RDWR | _O_BINARY | _O_NOINHERIT);
    check(fd_inh >= 0 && fd_noinh >= 0, "_wopen a temporary file twice (%d, %d)", fd_inh,
          fd_noinh);

    n = nic_snapshot(entries, TABLE_CAP, NIC_METHOD_AUTO);
    e1 = find_fd(n, fd_inh);
    e2 = find_fd(n, fd_noinh);
    check(e1 != NULL && e1->flags == 0, "a plain _wopen descriptor is inheritable");
    check(e2 != NULL && e2->flags == NIC_FLAG_CLOEXEC, "_O_NOINHERIT gives NIC_FLAG_CLOEXEC");
    check(e1 != NULL && (e1->mode & S_TYPE_MASK) == S_REG, "a disk file is S_IFREG");
    check(e1 != NULL && e2 != NULL && e1->ino != 0 && e1->dev == e2->dev && e1->ino == e2->ino,
          "both descriptors have the same nonzero identity (volume serial, file index)");

    len = nic_target(fd_inh, buf, (int)sizeof buf);
    {
        char name[MAX_PATH];
        const wchar_t *base = wcsrchr(path, L'\\');
        WideCharToMultiByte(CP_UTF8, 0, base ? base + 1 : path, -1, name, (int)sizeof name, NULL,
                            NULL);
        check(len > 0 && strstr(buf, name) != NULL && strncmp(buf, "\\\\?\\", 4) != 0,
              "nic_target names the file (%s)", len > 0 ? buf : "-");
    }
    len = nic_target(fd_inh, tiny, (int)sizeof tiny);
    check(len == 3 && tiny[3] == '\0', "nic_target truncates to the buffer");
    errno = 0;
    check(nic_target(fd_r, buf, (int)sizeof buf) == -1 && errno == ENOSYS,
          "nic_target(pipe) is ENOSYS");
    errno = 0;
    check(nic_target(7777, buf, (int)sizeof buf) == -1 && errno == EBADF,
          "nic_target(closed) is EBADF");
    errno = 0;
    check(nic_target(fd_inh, NULL, 10) == -1 && errno == EINVAL, "nic_target(NULL buf) EINVAL");

    _close(fd_inh);
    _close(fd_noinh);
    DeleteFileW(path);
}

static void test_seal(void)
{
    SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
    HANDLE r, w, r2, w2;
    int fds[4], low, below_before[64], keep[2];

    CreatePipe(&r, &w, &sa, 0);
    CreatePipe(&r2, &w2, &sa, 0);
    fds[0] = _open_osfhandle((intptr_t)r, _O_RDONLY);
    fds[1] = _open_osfhandle((intptr_t)w, _O_WRONLY);
    fds[2] = _open_osfhandle((intptr_t)r2, _O_RDONLY);
    fds[3] = _open_osfhandle((intptr_t)w2, _O_WRONLY);
    low = fds[0];
    for (int i = 1; i < 4; i++)
        if (fds[i] < low)
            low = fds[i];
    for (int fd = 0; fd < 64; fd++)
        below_before[fd] = fd < low ? nic_get_inheritable(fd) : 0;

    keep[0] = fds[2];
    keep[1] = 9999; /* a kept number that is not open is harmless */
    check(nic_seal(low, keep, 2) == 0, "nic_seal(%d, keep {%d, 9999})", low, fds[2]);
    check(nic_get_inheritable(fds[0]) == 0 && nic_get_inheritable(fds[1]) == 0 &&
              nic_get_inheritable(fds[3]) == 0,
          "every descriptor >= low is sealed");
    check(nic_get_inheritable(fds[2]) == 1, "the kept one stays inheritable");
    {
        int same = 1;
        for (int fd = 0; fd < low && fd < 64; fd++)
            same &= nic_get_inheritable(fd) == below_before[fd];
        check(same, "descriptors below low are untouched");
    }
    check(nic_seal(low, NULL, 0) == 0 && nic_get_inheritable(fds[2]) == 0,
          "nic_seal without keep seals the rest");
    errno = 0;
    check(nic_seal(-1, NULL, 0) == -1 && errno == EINVAL, "nic_seal(low < 0) EINVAL");
    errno = 0;
    check(nic_seal(0, NULL, 2) == -1 && errno == EINVAL, "nic_seal(keep NULL, nkeep 2) EINVAL");
    for (int i = 0; i < 4; i++)
        _close(fds[i]);
}

static void test_sockets(void)
{
    WSADATA data;
    SOCKET plain, noinh, client;
    struct sockaddr_in addr;
    int addrlen = (int)sizeof addr, fd_listen, fd_client, n, family, type, protocol;
    unsigned char local[128], peer[128];
    int local_len, peer_len;
    const nic_entry *e;

    check(WSAStartup(MAKEWORD(2, 2), &data) == 0, "WSAStartup");
    plain = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    noinh = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0,
                       WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    check(plain != INVALID_SOCKET && noinh != INVALID_SOCKET, "WSASocketW twice");
    check(nic_win_get_handle_inheritable(plain) == 1, "a default WSASocketW is inheritable");
    check(nic_win_get_handle_inheritable(noinh) == 0,
          "WSA_FLAG_NO_HANDLE_INHERIT is not inheritable");
    check(handle_inherit_bit(plain) == 1 && handle_inherit_bit(noinh) == 0,
          "the handle table's OBJ_INHERIT agrees for both sockets");

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    n = bind(plain, (struct sockaddr *)&addr, (int)sizeof addr) == 0 && listen(plain, 4) == 0 &&
        getsockname(plain, (struct sockaddr *)&addr, &addrlen) == 0;
    check(n && addr.sin_port != 0, "bind and listen on 127.0.0.1 (port %u)",
          (unsigned)ntohs(addr.sin_port));

    fd_listen = _open_osfhandle((intptr_t)plain, 0);
    n = nic_snapshot(entries, TABLE_CAP, NIC_METHOD_AUTO);
    e = find_fd(n, fd_listen);
    check(e != NULL && (e->mode & S_TYPE_MASK) == S_SOCK && e->flags == 0,
          "a socket descriptor is an inheritable S_IFSOCK in the snapshot");

    local_len = (int)sizeof local;
    peer_len = (int)sizeof peer;
    check(nic_socket_info(fd_listen, &family, &type, &protocol, local, &local_len, peer,
                          &peer_len) == 0,
          "nic_socket_info(listening socket)");
    check(family == AF_INET && type == SOCK_STREAM && protocol == IPPROTO_TCP,
          "... AF_INET, SOCK_STREAM, IPPROTO_TCP (%d, %d, %d)", family, type, protocol);
    check(local_len == (int)sizeof(struct sockaddr_in) &&
              ((struct sockaddr_in *)local)->sin_port == addr.sin_port && peer_len == 0,
          "... its local address, and no peer");

    client = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_NO_HANDLE_INHERIT);
    check(connect(client, (struct sockaddr *)&addr, (int)sizeof addr) == 0, "connect a client");
    fd_client = _open_osfhandle((intptr_t)client, 0);
    local_len = (int)sizeof local;
    peer_len = (int)sizeof peer;
    check(nic_socket_info(fd_client, &family, &type, &protocol, local, &local_len, peer,
                          &peer_len) == 0 &&
              peer_len == (int)sizeof(struct sockaddr_in) &&
              ((struct sockaddr_in *)peer)->sin_port == addr.sin_port,
          "nic_socket_info(connected socket) has the listener as peer");

    local_len = (int)sizeof local;
    peer_len = (int)sizeof peer;
    errno = 0;
    check(nic_socket_info(fd_r, &family, &type, &protocol, local, &local_len, peer, &peer_len) ==
                  -1 &&
              errno == ENOTSOCK,
          "nic_socket_info(pipe) is ENOTSOCK");
    errno = 0;
    check(nic_socket_info(7777, &family, &type, &protocol, local, &local_len, peer, &peer_len) ==
                  -1 &&
              errno == EBADF,
          "nic_socket_info(closed) is EBADF");

    /* The CRT descriptors only borrowed the sockets: closesocket, not _close. */
    closesocket(client);
    closesocket(plain);
    closesocket(noinh);
}

/* ---------------------------------------------------------------------- */
/* The raw-handle variants                                                 */

static void test_handle_target(void)
{
    wchar_t dir[MAX_PATH], path[MAX_PATH];
    char by_fd[1024], by_handle[1024], tiny[4];
    HANDLE r, w;
    int fd, a, b;

    GetTempPathW(MAX_PATH, dir);
    GetTempFileNameW(dir, L"nic", 0, path);
    fd = _wopen(path, _O_RDWR | _O_BINARY);
    a = nic_target(fd, by_fd, (int)sizeof by_fd);
    b = nic_win_handle_target((uint64_t)_get_osfhandle(fd), by_handle, (int)sizeof by_handle);
    check(a > 0 && b == a && strcmp(by_fd, by_handle) == 0,
          "nic_win_handle_target(file handle) is nic_target of its descriptor (%s)",
          b > 0 ? by_handle : "-");
    check(nic_win_handle_target((uint64_t)_get_osfhandle(fd), tiny, (int)sizeof tiny) == 3 &&
              tiny[3] == '\0',
          "nic_win_handle_target truncates to the buffer");

    CreatePipe(&r, &w, NULL, 0);
    errno = 0;
    check(nic_win_handle_target(hv(r), by_handle, (int)sizeof by_handle) == -1 && errno == ENOSYS,
          "nic_win_handle_target(pipe) is ENOSYS");
    /* Like nic_target for a descriptor whose handle was closed behind the
     * CRT's back: unknowable rather than an error. */
    errno = 0;
    b = nic_win_handle_target(0x7ffffff0u, by_handle, (int)sizeof by_handle);
    check(b == -1 && errno == ENOSYS, "nic_win_handle_target(bogus) is ENOSYS (errno %d)", errno);
    errno = 0;
    check(nic_win_handle_target(hv(r), NULL, 10) == -1 && errno == EINVAL,
          "nic_win_handle_target(NULL buf) is EINVAL");
    errno = 0;
    check(nic_target(7777, NULL, 10) == -1 && errno == EINVAL,
          "nic_target(closed, NULL buf) is still EINVAL first");

    CloseHandle(r);
    CloseHandle(w);
    _close(fd);
    DeleteFileW(path);
}

static void test_handle_socket_info(void)
{
    SOCKET s;
    HANDLE r, w;
    struct sockaddr_in addr;
    unsigned char local[128], peer[128];
    int addrlen = (int)sizeof addr, family = -1, type = -1, protocol = -1, local_len, peer_len;

    s = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_NO_HANDLE_INHERIT);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    check(s != INVALID_SOCKET && bind(s, (struct sockaddr *)&addr, (int)sizeof addr) == 0 &&
              getsockname(s, (struct sockaddr *)&addr, &addrlen) == 0 && addr.sin_port != 0,
          "a TCP socket without descriptor bound to 127.0.0.1 (port %u)",
          (unsigned)ntohs(addr.sin_port));

    local_len = (int)sizeof local;
    peer_len = (int)sizeof peer;
    check(nic_win_handle_socket_info((uint64_t)s, &family, &type, &protocol, local, &local_len,
                                     peer, &peer_len) == 0,
          "nic_win_handle_socket_info(bound socket)");
    check(family == AF_INET && type == SOCK_STREAM && protocol == IPPROTO_TCP,
          "... AF_INET, SOCK_STREAM, IPPROTO_TCP (%d, %d, %d)", family, type, protocol);
    check(local_len == (int)sizeof(struct sockaddr_in) &&
              ((struct sockaddr_in *)local)->sin_port == addr.sin_port && peer_len == 0,
          "... the bound port, and no peer");

    CreatePipe(&r, &w, NULL, 0);
    local_len = (int)sizeof local;
    peer_len = (int)sizeof peer;
    errno = 0;
    check(nic_win_handle_socket_info(hv(r), &family, &type, &protocol, local, &local_len, peer,
                                     &peer_len) == -1 &&
              errno == ENOTSOCK,
          "nic_win_handle_socket_info(pipe) is ENOTSOCK");

    CloseHandle(r);
    CloseHandle(w);
    closesocket(s);
}

static DWORD WINAPI mark_ran(LPVOID param)
{
    InterlockedExchange((volatile LONG *)param, 1);
    return 0;
}

static void test_resume_thread(void)
{
    static volatile LONG ran;
    HANDLE t;
    int prev;

    ran = 0;
    t = CreateThread(NULL, 0, mark_ran, (LPVOID)&ran, CREATE_SUSPENDED, NULL);
    check(t != NULL, "CreateThread(CREATE_SUSPENDED)");
    Sleep(50);
    check(ran == 0, "... the thread has not run");
    prev = nic_win_resume_thread(hv(t));
    check(prev == 1, "nic_win_resume_thread gives the previous suspend count 1 (%d)", prev);
    check(WaitForSingleObject(t, 10000) == WAIT_OBJECT_0 && ran == 1, "... and the thread ran");
    CloseHandle(t);

    /* Suspended twice: resuming counts down, the thread runs at zero. */
    ran = 0;
    t = CreateThread(NULL, 0, mark_ran, (LPVOID)&ran, CREATE_SUSPENDED, NULL);
    SuspendThread(t);
    prev = nic_win_resume_thread(hv(t));
    Sleep(50);
    check(prev == 2 && ran == 0, "a thread suspended twice: 2, and it still waits (%d)", prev);
    prev = nic_win_resume_thread(hv(t));
    check(prev == 1 && WaitForSingleObject(t, 10000) == WAIT_OBJECT_0 && ran == 1,
          "... then 1, and it runs (%d)", prev);
    CloseHandle(t);

    errno = 0;
    prev = nic_win_resume_thread(0x7ffffff0u);
    check(prev == -1 && errno == EBADF, "nic_win_resume_thread(bogus) is EBADF (%d, errno %d)",
          prev, errno);
}

static void test_children(void)
{
    SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
    wchar_t exe[MAX_PATH], cmd[MAX_PATH + 8], *slash;
    HANDLE a, b, c, unused;
    static nic_handle child[TABLE_CAP];
    uint64_t only_a[1];
    unsigned long pid = 0;
    int n;

    GetModuleFileNameW(NULL, exe, MAX_PATH);
    slash = wcsrchr(exe, L'\\');
    if (slash != NULL)
        slash[1] = L'\0';
    cmd[0] = L'"';
    cmd[1] = L'\0';
    wcscat(cmd, exe);
    wcscat(cmd, L"child.exe\"");

    /* a and b inheritable, c not. */
    check(CreatePipe(&a, &b, &sa, 0) != 0, "CreatePipe for the children");
    check(CreatePipe(&c, &unused, NULL, 0) != 0, "a non-inheritable pipe");

    n = nic_win_child_handles(cmd, 1, NULL, 0, child, TABLE_CAP, &pid);
    check(n >= 0 && pid != 0, "nic_win_child_handles(bInheritHandles TRUE): %d handles, pid %lu",
          n, pid);
    check(find_handle(child, n, hv(a)) != NULL && find_handle(child, n, hv(b)) != NULL,
          "... the child holds both inheritable handles, by value");
    check(find_handle(child, n, hv(a)) != NULL &&
              (find_handle(child, n, hv(a))->attributes & NIC_OBJ_INHERIT),
          "... still marked OBJ_INHERIT");
    check(find_handle(child, n, hv(c)) == NULL, "... and not the non-inheritable one");

    only_a[0] = hv(a);
    n = nic_win_child_handles(cmd, 1, only_a, 1, child, TABLE_CAP, &pid);
    check(n >= 0, "nic_win_child_handles(HANDLE_LIST = {a}): %d handles", n);
    check(find_handle(child, n, hv(a)) != NULL && find_handle(child, n, hv(b)) == NULL,
          "... the child holds only the listed handle");

    n = nic_win_child_handles(cmd, 0, NULL, 0, child, TABLE_CAP, &pid);
    check(n >= 0, "nic_win_child_handles(bInheritHandles FALSE): %d handles", n);
    check(find_handle(child, n, hv(a)) == NULL && find_handle(child, n, hv(b)) == NULL,
          "... the child holds neither");

    n = nic_win_child_handles(cmd, 1, NULL, 0, NULL, 0, NULL);
    check(n > 0, "nic_win_child_handles with no buffer still counts (%d)", n);

    errno = 0;
    n = nic_win_child_handles(L"\"C:\\no\\such\\program.exe\"", 1, NULL, 0, child, TABLE_CAP,
                              &pid);
    check(n == -1 && errno == ENOENT && pid == 0,
          "a missing program is ENOENT (%d, errno %d)", n, errno);
    errno = 0;
    check(nic_win_child_handles(NULL, 1, NULL, 0, child, TABLE_CAP, &pid) == -1 && errno == EINVAL,
          "a NULL command line is EINVAL");
    errno = 0;
    check(nic_win_child_handles(cmd, 1, NULL, 2, child, TABLE_CAP, &pid) == -1 && errno == EINVAL,
          "a NULL handle list with nlist > 0 is EINVAL");

    CloseHandle(a);
    CloseHandle(b);
    CloseHandle(c);
    CloseHandle(unused);
}

int main(void)
{
    /* "\n", not "\r\n": the summary line is read by scripts on Linux. */
    _setmode(_fileno(stdout), _O_BINARY);
    test_platform();
    test_snapshot();
    test_snapshot_since();
    test_inheritable();
    note_handle_query();
    test_handle_table();
    test_win_snapshot();
    test_file_and_target();
    test_seal();
    test_sockets();
    test_handle_target();
    test_handle_socket_info();
    test_resume_thread();
    test_children();
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed ? 1 : 0;
}
