/* pytest-noinherit native core: any other POSIX system.
 *
 * No descriptor lister is known here, so the only snapshot is the generic
 * poll() scan, sealing walks that snapshot, and descriptors have no target.
 */
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <stddef.h>

#include "core_internal.h"

const char *nic_platform(void)
{
    return "posix";
}

int nic_snapshot(nic_entry *out, int cap, int method)
{
    switch (method) {
    case NIC_METHOD_AUTO:
    case NIC_METHOD_SCAN:
        return nic_snapshot_scan(out, cap);
    case NIC_METHOD_POLL:
    case NIC_METHOD_PROCFS:
    case NIC_METHOD_NATIVE:
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

