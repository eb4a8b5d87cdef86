"""The pure-Python backend: the reference every other backend must agree with.

It uses only what the standard library offers (``os.listdir`` on
``/proc/self/fd``, ``fcntl``, ``os.fstat``), so it runs wherever CPython runs
on Linux and serves as the fallback when the native core was not built.
The functions mirror ``pytest_noinherit.native`` one for one.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import errno
import fcntl
import operator
import os
import resource
import socket
import sys
from array import array
from collections.abc import Callable, Iterable

__all__ = [
    "get_inheritable",
    "platform",
    "seal",
    "set_inheritable",
    "snapshot",
    "snapshot_since",
    "socket_info",
    "target",
]

_FD_DIR = "/proc/self/fd" if sys.platform.startswith("linux") else "/dev/fd"
_METHODS = ("auto", "poll", "procfs", "scan", "native")
# Same ceiling as the native scan: a slot loop must stay bounded.
_SCAN_CEILING = 1 << 20


def _entry(out: array[int], fd: int) -> None:
    """Append fd's five words to out; skip it silently when it is not open."""
    try:
        fd_flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        st = os.fstat(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return
        raise
    out.extend((fd, fd_flags & fcntl.FD_CLOEXEC, st.st_dev, st.st_ino, st.st_mode))


def _listed_fds() -> list[int] | None:
    """The numbers listed in the fd directory, or None when it cannot be read."""
    try:
        names = os.listdir(_FD_DIR)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOENT, errno.EACCES, errno.ENOTDIR):
            return None
        raise
    return sorted(int(name) for name in names)


def _scanned_fds() -> list[int]:
    """Every slot below the soft limit: the fallback without an fd directory."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft > _SCAN_CEILING:
        soft = _SCAN_CEILING
    return list(range(soft))


def snapshot(method: str = "auto") -> array[int]:
    """Every open descriptor as five words (fd, flags, dev, ino, mode), by fd."""
    if method not in _METHODS:
        raise ValueError(f"unknown snapshot method {method!r}; expected one of {_METHODS}")
    fds = None if method == "scan" else _listed_fds()
    if fds is None:
        fds = _scanned_fds()
    out: array[int] = array("Q")
    # The directory listing's own descriptor is closed by now: _entry skips
    # it (EBADF) unless another thread reused the number, as it should.
    for fd in fds:
        _entry(out, fd)
    return out


def snapshot_since(previous: array[int], flags: bool = True) -> array[int]:
    """snapshot(), carrying over previous's entries whose number is still open.

    With ``flags`` an entry is carried only when the descriptor's flag is
    unchanged (it is read afresh otherwise); without, whatever the flag.
    previous itself is returned when the table is unchanged, as the native
    backend does.
    """
    prev = {previous[i]: i for i in range(0, len(previous), 5)}
    out: array[int] = array("Q")
    fds = _listed_fds()
    for fd in fds if fds is not None else _scanned_fds():
        i = prev.get(fd)
        if i is None:
            _entry(out, fd)
            continue
        try:
            # Open?  The listing's own descriptor is closed by now, and it
            # may have had the number of one of previous's.
            flag = fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        except OSError:
            continue
        if not flags or flag == previous[i + 1]:
            out.extend(previous[i : i + 5])
        else:
            _entry(out, fd)
    return previous if out == previous else out


def _check_fd(fd: int) -> int:
    """Validate fd the way os.get_inheritable does."""
    try:
        fd = operator.index(fd)
    except TypeError:
        os.get_inheritable(fd)  # raises os's own TypeError, worded per version
        raise
    if not -(2**31) <= fd < 2**31:
        os.get_inheritable(fd)  # raises os's own OverflowError
        raise OverflowError("Python int too large to convert to C int")
    if fd < 0:  # fcntl.fcntl() would raise ValueError; the system call says EBADF
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return fd


def get_inheritable(fd: int) -> bool:
    """Whether fd survives exec (PEP 446's inheritable flag)."""
    fd = _check_fd(fd)
    return not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def set_inheritable(fd: int, inheritable: int) -> None:
    """Set or clear fd's inheritable flag."""
    fd = _check_fd(fd)
    inheritable = operator.index(inheritable)
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    wanted = flags & ~fcntl.FD_CLOEXEC if inheritable else flags | fcntl.FD_CLOEXEC
    if wanted != flags:
        fcntl.fcntl(fd, fcntl.F_SETFD, wanted)


def seal(low: int = 3, keep: Iterable[int] = ()) -> None:
    """Mark every descriptor from low upward close-on-exec, except those in keep."""
    low = _check_fd(low)
    kept = {_check_fd(fd) for fd in keep}
    table = snapshot()
    for i in range(0, len(table), 5):
        fd = table[i]
        if fd >= low and fd not in kept and not table[i + 1] & fcntl.FD_CLOEXEC:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFD, table[i + 1] | fcntl.FD_CLOEXEC)
            except OSError as exc:  # closed by another thread meanwhile
                if exc.errno != errno.EBADF:
                    raise


def target(fd: int) -> str | None:
    """What fd refers to: a path, ``socket:[ino]``, ``pipe:[ino]``, ``anon_inode:...``."""
    fd = _check_fd(fd)
    if not sys.platform.startswith("linux"):
        return None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        # No such entry: the descriptor is closed, or /proc is not mounted.
        fcntl.fcntl(fd, fcntl.F_GETFD)  # EBADF when closed
        return None


def socket_info(fd: int) -> tuple[int, int, int, object, object] | None:
    """Family, type, protocol, local and peer address of a socket, or None for a non-socket.

    Mirrors ``nic_socket_info``: only EBADF is an error.  A family or type the
    system will not tell is -1, a protocol 0, and an address that cannot be
    read (AF_XDP has none, AF_PACKET no peer) None.
    """
    fd = _check_fd(fd)
    # socket.socket() applies socket.getdefaulttimeout() to the descriptor it
    # wraps, making a blocking socket non-blocking (Modules/socketmodule.c,
    # init_sockobject); the status flags are put back as they were.
    status = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        # Explicit arguments: socket(fileno=fd) alone would detect them and
        # fail on the first getsockname() or getsockopt() refused; this only
        # checks that fd is an open socket (ENOTSOCK, EBADF).
        sock = _borrow(fd, socket.AF_UNIX, socket.SOCK_STREAM, 0)
        if sock is None:
            return None
        try:
            socktype = _sockopt(sock, "SO_TYPE", -1)
            protocol = _sockopt(sock, "SO_PROTOCOL", 0)
            family = _sockopt(sock, "SO_DOMAIN", -1)
        finally:
            sock.detach()
        if family < 0:
            family = _detected_family(fd)
        if family < 0:
            return (family, socktype, protocol, None, None)
        # The address buffer CPython offers is sized by the object's family
        # (getsockaddrlen), so the addresses are read through one of the
        # socket's own family.
        sock = _borrow(fd, family, socktype if socktype >= 0 else socket.SOCK_STREAM, protocol)
        if sock is None:  # pragma: no cover - it was a socket a moment ago
            return None
        try:
            local = _address(sock.getsockname)
            peer = _address(sock.getpeername)
        finally:
            sock.detach()
        return (family, socktype, protocol, local, peer)
    finally:
        if fcntl.fcntl(fd, fcntl.F_GETFL) != status:
            fcntl.fcntl(fd, fcntl.F_SETFL, status)


def _borrow(fd: int, family: int, socktype: int, protocol: int) -> socket.socket | None:
    """A socket object for fd that does not own it (detach() gives it back), or None."""
    try:
        return socket.socket(family, socktype, protocol, fileno=fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            return None
        raise


def _sockopt(sock: socket.socket, name: str, unknown: int) -> int:
    """An integer SOL_SOCKET option, or unknown where it is missing or refused."""
    option = getattr(socket, name, None)
    if option is None:
        return unknown
    try:
        return sock.getsockopt(socket.SOL_SOCKET, option)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise
        return unknown


def _address(call: Callable[[], object]) -> object:
    """getsockname() or getpeername(), or None when there is no address to read."""
    try:
        return call()
    except OSError as exc:
        # EOPNOTSUPP, ENOTCONN, a refusal, or CPython's "bad family" (no errno)
        if exc.errno == errno.EBADF:
            raise
        return None


def _detected_family(fd: int) -> int:
    """The family CPython detects (getsockname()'s sa_family where SO_DOMAIN is missing)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise
        return -1
    try:
        return int(sock.family)
    finally:
        sock.detach()


def platform() -> str:
    """The platform this backend reads: the fd directory it lists."""
    return sys.platform
