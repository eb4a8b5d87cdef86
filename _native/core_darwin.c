/* pytest-noinherit native core: macOS.
 *
 * The kernel lists a process's descriptors in one call,
 * proc_pidinfo(PROC_PIDLISTFDS) (what psutil uses); F_GETFD and fstat then
 * describe each.  F_GETPATH gives a vnode's path.  There is no
 * close_range, so sealing walks a snapshot.
 */
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <fcntl.h>
#include <libproc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/param.h>
#include <sys/proc_info.h>
#include <unistd.h>

#include "core_internal.h"

const char *nic_platform(void)
{
    return "darwin";
}

static int snapshot_pidinfo(nic_entry *out, int cap)
{
    pid_t pid = getpid();
    struct proc_fdinfo *fds = NULL;
    int got = 0, n = 0;

    for (;;) {
        /* A NULL buffer asks for the size the table needs now; some slack
         * covers descriptors opened by other threads before the next call. */
        int size = proc_pidinfo(pid, PROC_PIDLISTFDS, 0, NULL, 0);
        if (size <= 0)
            goto fail;
        size += 64 * (int)sizeof *fds;
        struct proc_fdinfo *grown = realloc(fds, (size_t)size);
        if (grown == NULL) {
            errno = ENOMEM;
            goto fail;
        }
        fds = grown;
        got = proc_pidinfo(pid, PROC_PIDLISTFDS, 0, fds, size);
        if (got <= 0)
            goto fail;
        if (got < size)
            break; /* a full buffer may have cut the list short: retry */
    }

    for (size_t i = 0; i < (size_t)got / sizeof *fds; i++) {
        nic_entry e;
        if (nic_fill_entry(fds[i].proc_fd, &e) != 0)
            continue; /* closed since the listing */
        if (n < cap)
            out[n] = e;
        n++;
    }
    free(fds);
    nic_sort_entries(out, n < cap ? n : cap);
    return n;

fail:
    if (errno == 0)
        errno = EIO; /* libproc may return 0 without saying why */
    {
        int saved = errno;
        free(fds);
        errno = saved;
    }
    return -1;
}

int nic_snapshot(nic_entry *out, int cap, int method)
{
    if (cap < 0 || (cap > 0 && out == NULL)) {
        errno = EINVAL;
        return -1;
    }
    switch (method) {
    case NIC_METHOD_AUTO:
    case NIC_METHOD_NATIVE:
        errno = 0;
        return snapshot_pidinfo(out, cap);
    case NIC_METHOD_SCAN:
        return nic_snapshot_scan(out, cap);
    case NIC_METHOD_POLL:
    case NIC_METHOD_PROCFS:
        errno = ENOSYS;
        return -1;
    default:
        errno = EINVAL;
        return -1;
    }
}

int nic_seal(int low, const int *keep, int nkeep)
{
    return nic_seal_common(low, keep, nkeep, NULL);
}

int nic_target(int fd, char *buf, int size)
{
    char path[MAXPATHLEN];
    size_t len;

    if (buf == NULL || size <= 0) {
        errno = EINVAL;
        return -1;
    }
    if (fcntl(fd, F_GETPATH, path) < 0) {
        if (fcntl(fd, F_GETFD) < 0)
            return -1; /* EBADF: not open */
        errno = ENOSYS; /* open, but no vnode: pipe, socket, kqueue... */
        return -1;
    }
    len = strnlen(path, sizeof path);
    if (len > (size_t)size - 1)
        len = (size_t)size - 1;
    memcpy(buf, path, len);
    buf[len] = '\0';
    return (int)len;
}
