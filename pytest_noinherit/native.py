"""The native backend: the only module that touches the cffi ``ffi`` and ``lib``.

Every function validates its arguments the way :mod:`os` does, calls one C
function of ``pytest_noinherit._core`` and copies the result out into plain
Python objects; a C failure (-1 with ``errno``) becomes :class:`OSError`.
Importing this module raises :class:`ImportError` when the extension was not
built, so the caller can fall back to the pure-Python backend.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import array
import errno
import operator
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, SupportsIndex

from pytest_noinherit._core import ffi, lib

__all__ = [
    "ENTRY_WORDS",
    "METHODS",
    "TRUNCATED",
    "get_inheritable",
    "platform",
    "seal",
    "set_inheritable",
    "snapshot",
    "snapshot_since",
    "socket_info",
    "target",
]

#: Words of an entry in a :func:`snapshot` array: fd, flags, dev, ino, mode.
ENTRY_WORDS = 5
_ENTRY_BYTES = ENTRY_WORDS * 8
if ffi.sizeof("nic_entry") != _ENTRY_BYTES:  # a stale or foreign build: use the fallback
    raise ImportError(f"pytest_noinherit._core: nic_entry is {ffi.sizeof('nic_entry')} bytes")

#: Snapshot method names and their C values.
METHODS: dict[str, int] = {
    "auto": lib.NIC_METHOD_AUTO,
    "poll": lib.NIC_METHOD_POLL,
    "procfs": lib.NIC_METHOD_PROCFS,
    "scan": lib.NIC_METHOD_SCAN,
    "native": lib.NIC_METHOD_NATIVE,
}

_INT_MAX = 2 ** (ffi.sizeof("int") * 8 - 1) - 1
_INT_MIN = -_INT_MAX - 1
# Room for a PATH_MAX (Linux) or MAXPATHLEN (macOS) path and its NUL, plus
# the byte that tells a whole answer from a truncated one (noinherit.h).
_TARGET_SIZE = 4097
_TARGET_LIMIT = 1 << 16
#: What a target cut short at ``_TARGET_LIMIT`` bytes ends with.
TRUNCATED = "... (truncated)"
_SOCKADDR_SIZE = 128  # sizeof(struct sockaddr_storage)


# The C side writes every entry it reports and Python reads no further, so
# zeroing the buffer (cffi's default) would only cost time on big tables.
_new_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


def _c_int(value: SupportsIndex) -> int:
    """``value`` as a C int, refused exactly as :func:`os.get_inheritable` refuses it."""
    try:
        number = operator.index(value)
    except TypeError:
        os.get_inheritable(value)  # type: ignore[arg-type]  # raises os's own TypeError
        raise
    if not _INT_MIN <= number <= _INT_MAX:
        os.get_inheritable(number)  # raises os's own OverflowError, worded per version
        raise OverflowError("Python int too large to convert to C int")
    return number


def _raise_errno() -> NoReturn:
    """Raise the OSError for the errno the last C call left."""
    err = ffi.errno
    raise OSError(err, os.strerror(err))


def snapshot(method: str = "auto") -> array.array[int]:
    """The open descriptors in ascending order, five ``Q`` words each (see ENTRY_WORDS)."""
    try:
        code = METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown snapshot method {method!r}") from None
    scratch = _scratch_pool.pop() if _scratch_pool else _Scratch()
    try:
        while True:
            n = lib.nic_snapshot(scratch.out, scratch.cap, code)
            if n < 0:
                _raise_errno()
            if n <= scratch.cap:
                return scratch.copy(n)
            scratch.fit(n + n // 2)  # the table grew; retry with room to spare
    finally:
        _scratch_pool.append(scratch)


def snapshot_since(previous: array.array[int], flags: bool = True) -> array.array[int]:
    """The table now, carrying over previous's entries whose number is still open.

    New numbers are read in full.  With ``flags`` each carried descriptor's
    close-on-exec flag is read too (one ``F_GETFD`` each) and one whose flag
    changed is read in full; without it nothing is read per descriptor when
    the open numbers are previous's (on Linux: one ``stat`` for the count and
    one ``select`` over previous's numbers).  ``previous`` itself is returned
    when the table is unchanged.  A descriptor closed and reopened at the same
    number between the two calls keeps its old entry (with another flag too,
    unless ``flags``): for cheap repeated checks only (noinherit_delta.h).
    Platforms without the incremental read read everything.
    """
    scratch = _scratch_pool.pop() if _scratch_pool else _Scratch()
    try:
        if scratch.words is not previous:
            scratch.view = ffi.from_buffer("nic_entry[]", previous)
            scratch.words = previous
        nprev = len(previous) // ENTRY_WORDS
        scratch.fit(nprev + 64)
        options = _DELTA_FLAGS if flags else 0
        same = scratch.same
        while True:
            n = _delta(scratch.out, scratch.cap, scratch.view, nprev, options, same)
            if n < 0:
                _raise_errno()
            if same[0]:
                return previous
            if n <= scratch.cap:
                return scratch.copy(n)
            scratch.fit(n + n // 2)
    finally:
        _scratch_pool.append(scratch)


class _Scratch:
    """What snapshot() and snapshot_since() reuse from one call to the next.

    The per-test check runs once per test, and each cffi allocation costs
    about as much as its C call when nothing changed (~3 k instructions; an
    attribute of a threading.local ~600): the output buffer and the flag are
    reused, and the view of the previous table is kept while the same table
    comes back (unchanged).  Entries are copied out of the buffer, so reuse
    is safe.  Each thread takes one from ``_scratch_pool`` for the length of
    a call (list.pop and append are atomic), usually the one it gave back.
    """

    __slots__ = ("cap", "out", "same", "view", "words")

    def __init__(self) -> None:
        self.words: array.array[int] | None = None  # the table ``view`` shows
        self.view: Any = None
        self.cap = 64
        self.out: Any = _new_uncleared("nic_entry[]", self.cap)
        self.same: Any = ffi.new("int *")

    def fit(self, wanted: int) -> None:
        """Room for wanted entries; a buffer much too large for them is given back."""
        if not wanted <= self.cap <= 4 * wanted + 256:
            self.cap = max(wanted, 64)
            self.out = _new_uncleared("nic_entry[]", self.cap)

    def copy(self, n: int) -> array.array[int]:
        table: array.array[int] = array.array("Q")
        table.frombytes(ffi.buffer(self.out, n * _ENTRY_BYTES))
        return table


_scratch_pool = [_Scratch()]


if hasattr(lib, "nic_snapshot_delta"):  # every POSIX build (noinherit_delta.h)
    _delta = lib.nic_snapshot_delta
    _DELTA_FLAGS: int = lib.NIC_DELTA_FLAGS
else:  # Windows: the handle view has no incremental read

    def _delta(out: Any, cap: int, prev: Any, nprev: int, options: int, same: Any) -> int:
        return lib.nic_snapshot_since(out, cap, prev, nprev)

    _DELTA_FLAGS = 1


def _fill(ctype: str, cap: int, call: Callable[[Any, int], int]) -> tuple[Any, int]:
    """Run a table call (count/cap contract), growing the buffer until the table fits."""
    while True:
        buf = _new_uncleared(ctype, cap)
        n = call(buf, cap)
        if n < 0:
            _raise_errno()
        if n <= cap:
            return buf, n
        cap = n + n // 2  # the table grew; retry with room to spare


def _read(call: Callable[[Any, int], int]) -> array.array[int]:
    """Run a snapshot call into a flat array of entries."""
    buf, n = _fill("nic_entry[]", 64, call)
    table: array.array[int] = array.array("Q")
    table.frombytes(ffi.buffer(buf, n * _ENTRY_BYTES))
    return table


def get_inheritable(fd: int) -> bool:
    """Whether ``fd`` is inheritable (PEP 446), like :func:`os.get_inheritable`."""
    result = lib.nic_get_inheritable(_c_int(fd))
    if result < 0:
        _raise_errno()
    return bool(result)


def set_inheritable(fd: int, inheritable: bool) -> None:
    """Set ``fd``'s inheritable flag, like :func:`os.set_inheritable`."""
    c_fd = _c_int(fd)
    flag = _c_int(inheritable)
    if lib.nic_set_inheritable(c_fd, 1 if flag else 0) < 0:
        _raise_errno()


def seal(low: int = 3, keep: Iterable[int] = (), method: str = "auto") -> None:
    """Make every descriptor >= ``low`` close-on-exec, except those in ``keep``.

    ``method="loop"`` forces the portable fallback used where close_range
    cannot set the flag.
    """
    if method not in ("auto", "loop"):
        raise ValueError(f"unknown seal method {method!r}")
    c_low = _c_int(low)
    kept = [_c_int(fd) for fd in keep]
    call = lib.nic_seal_loop if method == "loop" else lib.nic_seal
    if call(c_low, ffi.new("int[]", kept), len(kept)) < 0:
        _raise_errno()


def target(fd: int) -> str | None:
    """What ``fd`` refers to (a path, ``pipe:[ino]``...), or None where unknowable.

    An answer that fills the buffer may have been cut short, so the buffer
    grows until it has room to spare; one still cut short at
    ``_TARGET_LIMIT`` says so with ``TRUNCATED`` at its end.
    """
    c_fd = _c_int(fd)
    size = _TARGET_SIZE
    while True:
        buf = ffi.new("char[]", size)
        n = lib.nic_target(c_fd, buf, size)
        if n < 0:
            if ffi.errno == errno.ENOSYS:
                return None
            _raise_errno()
        if n < size - 1:
            return os.fsdecode(ffi.buffer(buf, n)[:])
        if size >= _TARGET_LIMIT:
            return os.fsdecode(ffi.buffer(buf, n)[:]) + TRUNCATED
        size *= 2


def socket_info(fd: int) -> tuple[int, int, int, bytes, bytes] | None:
    """``(family, type, protocol, local, peer)`` raw sockaddr bytes, or None for a non-socket.

    Only EBADF raises: what the system will not tell is -1 (family, type), 0
    (protocol) or ``b""`` (an address), as in ``nic_socket_info``.
    """
    c_fd = _c_int(fd)
    return _socket_info(lambda *out: lib.nic_socket_info(c_fd, *out))


def _socket_info(call: Callable[..., int]) -> tuple[int, int, int, bytes, bytes] | None:
    family = ffi.new("int *")
    sock_type = ffi.new("int *")
    protocol = ffi.new("int *")
    local = ffi.new("unsigned char[]", _SOCKADDR_SIZE)
    local_len = ffi.new("int *", _SOCKADDR_SIZE)
    peer = ffi.new("unsigned char[]", _SOCKADDR_SIZE)
    peer_len = ffi.new("int *", _SOCKADDR_SIZE)
    if call(family, sock_type, protocol, local, local_len, peer, peer_len) < 0:
        if ffi.errno == errno.ENOTSOCK:
            return None
        _raise_errno()
    return (
        family[0],
        sock_type[0],
        protocol[0],
        ffi.buffer(local, local_len[0])[:],
        ffi.buffer(peer, peer_len[0])[:],
    )


def platform() -> str:
    """The platform backend compiled in: ``linux``, ``darwin``, ``bsd``, ``posix``, ``windows``."""
    name: bytes = ffi.string(lib.nic_platform())
    return name.decode("ascii")


def add_audit_hook(module: str, attribute: str, events: Iterable[str]) -> bool:
    """Filter audit events in C: call ``module.attribute(event, args)`` for ``events`` only.

    One C audit hook (PEP 578) for the process; a second call replaces the
    callable and the names.  False where the core has none (Windows, PyPy)
    or it could not be added: the caller then adds a Python hook
    (``_native/noinherit_audit.h``).
    """
    add = getattr(lib, "nic_audit_add_hook", None)  # POSIX builds only
    if add is None:
        return False
    names = [ffi.new("char[]", event.encode("ascii")) for event in events]
    result: int = add(module.encode(), attribute.encode(), ffi.new("char *[]", names), len(names))
    return result == 0


def release_audit_hook() -> None:
    """Let the C filter of :func:`add_audit_hook` drop its callable until the next call.

    The hook itself stays (PEP 578 hooks cannot be removed) and ignores every event.
    """
    release = getattr(lib, "nic_audit_release", None)
    if release is not None:
        release()


# -- Windows: the handle table (_native/noinherit_windows.h) --------------------
#
# Handles are pointer-sized values, passed to C as uint64_t.  These functions
# exist only on Windows, as their C counterparts do.

if sys.platform == "win32":

    def handle_snapshot() -> array.array[int]:
        """This process's handle view, five ``Q`` words per handle like :func:`snapshot`.

        The handle behind every CRT descriptor and every handle with the inherit
        flag, ascending; the first word of an entry is the handle value.
        """
        return _read(lib.nic_win_snapshot)

    def process_handles(pid: int = 0) -> list[tuple[int, int]]:
        """``(handle, attributes)`` of every handle of process ``pid`` (0: this one), ascending."""
        buf, n = _fill("nic_handle[]", 256, lambda out, cap: lib.nic_win_handles(pid, out, cap))
        return [(int(buf[i].handle), int(buf[i].attributes)) for i in range(n)]

    def handle_target(handle: int) -> str | None:
        """The path of a disk file handle; None for pipes, sockets and devices."""
        buf = ffi.new("char[]", _TARGET_SIZE)
        n = lib.nic_win_handle_target(handle, buf, _TARGET_SIZE)
        if n < 0:
            if ffi.errno == errno.ENOSYS:
                return None
            _raise_errno()
        path: bytes = ffi.buffer(buf, n)[:]
        return path.decode("utf-8", "replace")

    def handle_socket_info(handle: int) -> tuple[int, int, int, bytes, bytes] | None:
        """:func:`socket_info` for a socket handle (a ``SOCKET`` value)."""
        return _socket_info(lambda *out: lib.nic_win_handle_socket_info(handle, *out))

    def resume_thread(thread: int) -> None:
        """Resume a thread created suspended (``ResumeThread``)."""
        if lib.nic_win_resume_thread(thread) < 0:
            _raise_errno()


if sys.platform.startswith("linux") and hasattr(lib, "nik_kernel_install"):
    # The kernel exec observer's in-process half (noinherit_kernel.h); kernel.py
    # is its only user.

    def kernel_available() -> None:
        """Nothing if seccomp user notification exists; else OSError saying why."""
        if lib.nik_kernel_available() < 0:
            _raise_errno()

    def kernel_install(no_new_privs: bool) -> int:
        """Install the exec filter on every thread (no_new_privs first if asked); the listener."""
        fd = lib.nik_kernel_install(1 if no_new_privs else 0)
        if fd < 0:
            _raise_errno()
        return fd

    def kernel_serve(listener: int, stop_fd: int, shared_fd: int) -> int:
        """Answer every notification with CONTINUE until stop_fd is readable; how many.

        cffi releases the GIL for the call, so no exec waits for Python.
        """
        return lib.nik_kernel_serve(_c_int(listener), _c_int(stop_fd), _c_int(shared_fd))
