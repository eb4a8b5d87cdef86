/* The kernel exec observer's in-process half (core_kernel.c), Linux only:
 * build_core.py adds this header to the cdef and core_kernel.c to the
 * sources on Linux alone, so no other platform links against it.
 *
 * nik_kernel_available: 0 if seccomp user notification exists, else -1
 * with errno (ENOSYS: no seccomp; EINVAL: no SECCOMP_FILTER; EOPNOTSUPP:
 * no SECCOMP_RET_USER_NOTIF, Linux < 5.0).
 *
 * nik_kernel_install: set no_new_privs first if asked, then install the
 * exec filter on every thread; the listener descriptor (close-on-exec), or
 * -1 with errno.
 *
 * nik_kernel_serve: answer every notification with CONTINUE until stop_fd
 * is readable or no filtered task is left; shared_fd is the observer's
 * page (struct nik_shared), whose last received id and the next few are
 * answered first, or -1.  Returns how many notifications it answered. */
int nik_kernel_available(void);
int nik_kernel_install(int no_new_privs);
int nik_kernel_serve(int listener, int stop_fd, int shared_fd);
