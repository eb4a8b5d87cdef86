/* The kernel exec observer's in-process half (docs/how-it-works.md, "The
 * kernel observer"): install the seccomp filter on every thread, and answer
 * notifications when the observer process is gone.
 *
 * The observer itself (observer.c) is a process of its own: it must outlive
 * this one while any filtered process is left.  What runs here is only
 * what has to happen inside the filtered process (seccomp filters apply to
 * the calling thread group), and the take-over loop, which cffi runs with
 * the GIL released so that no exec of any thread waits for Python.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include "kernel_filter.h"
#include "noinherit_kernel.h"

int nik_kernel_available(void)
{
    return nik_user_notif_available();
}

int nik_kernel_install(int no_new_privs)
{
    /* Without CAP_SYS_ADMIN, seccomp() requires no_new_privs (seccomp(2));
     * TSYNC then sets it on every thread, as the filter is. */
    if (no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return nik_install_filter();
}

/* One answer per notification; the caller's errno of the last failure is
 * left alone: a failed RECV or SEND only means that exec is gone. */
static void nik_answer_one(int listener, void *buf, size_t size)
{
    memset(buf, 0, size);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf) != 0)
        return; /* ENOENT: the task died before we could take it */
    nik_continue(listener, ((struct seccomp_notif *)buf)->id);
}

int nik_kernel_serve(int listener, int stop_fd, int shared_fd)
{
    struct seccomp_notif_sizes sizes;
    struct pollfd fds[2];
    size_t size = sizeof(struct seccomp_notif);
    void *buf;
    int answered = 0;

    if (nik_seccomp(SECCOMP_GET_NOTIF_SIZES, 0, &sizes) == 0 && sizes.seccomp_notif > size)
        size = sizes.seccomp_notif;
    buf = calloc(1, size);
    if (buf == NULL)
        return -1;
    if (shared_fd >= 0) {
        struct nik_shared *shared =
            mmap(NULL, sizeof *shared, PROT_READ, MAP_SHARED, shared_fd, 0);
        if (shared != MAP_FAILED) {
            if (__atomic_load_n(&shared->any, __ATOMIC_ACQUIRE)) {
                uint64_t id = __atomic_load_n(&shared->received, __ATOMIC_ACQUIRE);
                for (uint64_t k = 0; k <= NIK_ORPHANS; k++)
                    nik_continue(listener, id + k); /* ENOENT for ids not waiting */
            }
            munmap(shared, sizeof *shared);
        }
    }
    fds[0].fd = listener;
    fds[0].events = POLLIN;
    fds[1].fd = stop_fd;
    fds[1].events = POLLIN;
    for (;;) {
        int n = poll(fds, stop_fd >= 0 ? 2 : 1, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (stop_fd >= 0 && fds[1].revents)
            break;
        if (fds[0].revents & POLLIN) {
            nik_answer_one(listener, buf, size);
            answered++;
            continue;
        }
        if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL))
            break; /* no filtered task is left, or the listener is gone */
    }
    free(buf);
    return answered;
}
