/* pytest-noinherit native core: FreeBSD, NetBSD, OpenBSD, DragonFly.
 *
 * /dev/fd lists every descriptor only when fdescfs is mounted on it;
 * otherwise it shows 0-2 (FreeBSD) or static nodes (OpenBSD), so the
 * generic poll() scan is used instead.  Sealing uses
 * close_range(CLOSE_RANGE_CLOEXEC) where the headers offer it (FreeBSD
 * 13.1+), else walks a snapshot.
 */
#define _FILE_OFFSET_BITS 64

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core_internal.h"

const char *nic_platform(void)
{
    return "bsd";
}

/* CPython's _is_fdescfs_mounted_on_dev_fd() (Modules/_posixsubprocess.c):
 * a file system mounted on /dev/fd has another st_dev than /dev. */
static int devfd_is_fdescfs(void)
{
    struct stat dev, devfd;
    if (stat("/dev", &dev) != 0 || stat("/dev/fd", &devfd) != 0)
        return 0;
    return dev.st_dev != devfd.st_dev;
}

static int snapshot_devfd(nic_entry *out, int cap)
{
    struct dirent *de;
    DIR *dir;
    int listing_fd, n = 0;

    listing_fd = open("/dev/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (listing_fd < 0) {
        /* No descriptor left (the scan is then complete) or no access. */
        if (errno == EMFILE || errno == ENFILE || errno == ENOENT || errno == EACCES)
            return nic_snapshot_scan(out, cap);
        return -1;
    }
    dir = fdopendir(listing_fd);
    if (dir == NULL) {
        int saved = errno;
        close(listing_fd);
        errno = saved;
        return -1;
    }
    while ((de = readdir(dir)) != NULL) {
        nic_entry e;
        int fd = nic_parse_fd(de->d_name);
        if (fd < 0 || fd == listing_fd)
            continue;
        if (nic_fill_entry(fd, &e) != 0)
            continue; /* closed since the listing */
        if (n < cap)
            out[n] = e;
        n++;
    }
    closedir(dir);
    nic_sort_entries(out, n < cap ? n : cap);
    return n;
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
        if (devfd_is_fdescfs())
            return snapshot_devfd(out, cap);
        return nic_snapshot_scan(out, cap);
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

#ifdef CLOSE_RANGE_CLOEXEC
static int cloexec_range(unsigned int first, unsigned int last)
{
    return close_range(first, last, CLOSE_RANGE_CLOEXEC);
}
#define NIC_CLOEXEC_RANGE cloexec_range
#else
#define NIC_CLOEXEC_RANGE NULL
#endif

int nic_seal(int low, const int *keep, int nkeep)
{
    return nic_seal_common(low, keep, nkeep, NIC_CLOEXEC_RANGE);
}

