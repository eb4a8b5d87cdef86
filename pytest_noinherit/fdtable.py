"""The descriptor table: entries, snapshots, details, and the backend seam.

The backend is chosen once per process (``PYTEST_NOINHERIT_BACKEND``: ``auto``
by default, ``native`` or ``python``).  Both backends return a snapshot as a
flat ``array('Q')`` of five words per descriptor, so a table is one memcpy to
build and one memcmp to compare; :class:`FdEntry` objects are made only when
someone looks at an entry.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import stat
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, NamedTuple

__all__ = [
    "BackendError",
    "FdDetails",
    "FdEntry",
    "FdTable",
    "backend",
    "backend_reason",
    "describe",
    "get_inheritable",
    "seal",
    "set_inheritable",
    "snapshot",
]

BACKEND_ENV = "PYTEST_NOINHERIT_BACKEND"
#: What a table entry's number is: a descriptor, or on Windows a handle value,
#: since a Windows child receives handles (the CRT descriptors are a view of some).
UNIT = "handle" if sys.platform == "win32" else "fd"
_WORDS = 5
_CLOEXEC = 1

_KIND_BY_TYPE = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFIFO: "pipe",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFLNK: "symlink",
}

# readlink() prefixes of anonymous inodes (fs/anon_inodes.c names) and the
# kind each one is reported as.
_ANON_KINDS = {
    "[eventfd]": "eventfd",
    "[eventpoll]": "epoll",
    "[signalfd]": "signalfd",
    "[timerfd]": "timerfd",
    "inotify": "inotify",
    "[fanotify]": "fanotify",
    "[pidfd]": "pidfd",
    "[io_uring]": "io_uring",
    "[userfaultfd]": "userfaultfd",
    "bpf-map": "bpf",
    "bpf-prog": "bpf",
    "[perf_event]": "perf_event",
}
KINDS = (
    frozenset(_KIND_BY_TYPE.values())
    | frozenset(_ANON_KINDS.values())
    | {
        "anon",
        "memfd",
        "tty",
    }
)


class BackendError(RuntimeError):
    """The backend asked for through PYTEST_NOINHERIT_BACKEND cannot be used."""


class FdEntry(NamedTuple):
    """One open descriptor as a snapshot saw it."""

    fd: int
    inheritable: bool
    kind: str
    dev: int
    ino: int
    mode: int

    @property
    def identity(self) -> tuple[int, int]:
        """(st_dev, st_ino): equal for every descriptor of the same open file."""
        return (self.dev, self.ino)


class FdDetails(NamedTuple):
    """What a descriptor refers to, read on demand (never on the hot path)."""

    fd: int
    kind: str
    target: str | None
    deleted: bool = False
    family: str | None = None
    socktype: str | None = None
    local: str | None = None
    peer: str | None = None

    def __str__(self) -> str:
        if self.family is not None:
            where = f" {self.local or '(unbound)'}"
            if self.peer:
                where += f" -> {self.peer}"
            return f"{self.family}/{self.socktype}{where}"
        return self.target or self.kind


def kind_of(mode: int) -> str:
    """The kind of a descriptor from its st_mode; ``anon`` for anonymous inodes."""
    return _KIND_BY_TYPE.get(stat.S_IFMT(mode), "anon")


def _entry(row: tuple[int, ...]) -> FdEntry:
    fd, flags, dev, ino, mode = row
    return FdEntry(fd, not flags & _CLOEXEC, kind_of(mode), dev, ino, mode)


class FdTable:
    """A snapshot of the process's descriptor table, indexed by descriptor number."""

    __slots__ = ("_fds", "_words")

    def __init__(self, words: array[int]) -> None:
        self._words = words
        self._fds: dict[int, int] | None = None

    def _rows(self) -> Iterator[tuple[int, ...]]:
        it = iter(self._words)
        return zip(*([it] * _WORDS))

    def _index(self) -> dict[int, int]:
        if self._fds is None:
            self._fds = {fd: i for i, fd in enumerate(self._words[::_WORDS])}
        return self._fds

    def __len__(self) -> int:
        return len(self._words) // _WORDS

    def __iter__(self) -> Iterator[FdEntry]:
        return map(_entry, self._rows())

    def __contains__(self, fd: object) -> bool:
        return fd in self._index()

    def __getitem__(self, fd: int) -> FdEntry:
        i = self._index()[fd] * _WORDS
        return _entry(tuple(self._words[i : i + _WORDS]))

    def get(self, fd: int) -> FdEntry | None:
        """The entry for fd, or None when it was not open."""
        i = self._index().get(fd)
        return None if i is None else _entry(tuple(self._words[i * _WORDS : (i + 1) * _WORDS]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FdTable):
            return NotImplemented
        return self._words == other._words

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<FdTable {len(self)} open: {' '.join(_short(e) for e in self)}>"

    def fds(self) -> list[int]:
        """The open descriptor numbers, ascending."""
        return list(self._words[::_WORDS])

    def inheritable(self) -> list[FdEntry]:
        """The entries that would survive exec."""
        return [e for e in self if e.inheritable]

    def keys(self) -> set[tuple[int, int, int]]:
        """(fd, dev, ino) of every entry: what "the same descriptor" means across tables."""
        return {(row[0], row[2], row[3]) for row in self._rows()}

    def added_since(self, before: FdTable) -> list[FdEntry]:
        """Entries absent from before, or now referring to another open file."""
        if self == before:
            return []
        old = before.keys()
        return [e for e in self if (e.fd, e.dev, e.ino) not in old]

    def made_inheritable_since(self, before: FdTable) -> list[FdEntry]:
        """Entries that were in before as close-on-exec and are inheritable now."""
        if self == before:
            return []
        return [
            e
            for e in self
            if e.inheritable
            and (old := before.get(e.fd)) is not None
            and old.identity == e.identity
            and not old.inheritable
        ]


def _short(entry: FdEntry) -> str:
    return f"{entry.fd}{'' if entry.inheritable else 'c'}:{entry.kind}"


# -- the backend seam ---------------------------------------------------------


@functools.cache
def _choice() -> tuple[ModuleType, str, str]:
    """(module, name, why): resolved once per process."""
    wanted = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "native", "python"):
        raise BackendError(
            f"{BACKEND_ENV}={wanted!r} is not a backend; use 'auto', 'native' or 'python'"
        )
    if wanted == "python":
        return _pure(), "python", f"forced by {BACKEND_ENV}=python"
    try:
        from pytest_noinherit import native
    except ImportError as exc:
        if wanted == "native":
            raise BackendError(
                f"{BACKEND_ENV}=native but the native core is not available: {exc}"
                " (reinstall with a C compiler and cffi)"
            ) from exc
        return _pure(), "python", "the native core was not compiled at install"
    why = f"forced by {BACKEND_ENV}=native" if wanted == "native" else "compiled core"
    return native, "native", f"{why}, {native.platform()}"


def _pure() -> ModuleType:
    """The reference backend; it needs POSIX (fcntl), so it is imported on demand."""
    try:
        from pytest_noinherit import pure
    except ImportError as exc:
        raise BackendError(f"no backend for this platform: {exc}") from exc
    return pure


def _impl() -> ModuleType:
    return _choice()[0]


def backend() -> str:
    """``"native"`` or ``"python"``: which backend this process uses."""
    return _choice()[1]


def backend_reason() -> str:
    """Why that backend was chosen, for the report header."""
    return _choice()[2]


def snapshot(method: str = "auto") -> FdTable:
    """Read the whole descriptor table in one call.

    On Windows the table is the handle view (:data:`UNIT`): the handle behind
    every CRT descriptor and every inheritable handle, the standard handles
    left out, each entry numbered by its handle value.
    """
    impl = _impl()
    if UNIT == "handle" and method == "auto":
        return FdTable(impl.handle_snapshot())
    return FdTable(impl.snapshot(method))


def snapshot_since(previous: FdTable) -> FdTable:
    """A snapshot that trusts previous for descriptors whose flag did not change.

    Cheaper than snapshot() (no fstat for them), at the price of missing a
    descriptor closed and reopened at the same number with the same flag in
    between: for the per-test check, never for the public API.  The Windows
    handle view is always read whole.
    """
    if UNIT == "handle":
        return snapshot()
    return FdTable(_impl().snapshot_since(previous._words))


def get_inheritable(fd: int) -> bool:
    """Whether fd is inheritable; raises what :func:`os.get_inheritable` raises."""
    return bool(_impl().get_inheritable(fd))


def set_inheritable(fd: int, inheritable: bool) -> None:
    """Set fd's inheritable flag atomically; raises what :func:`os.set_inheritable` raises."""
    _impl().set_inheritable(fd, inheritable)


def seal(low: int = 3, keep: Iterable[int] = ()) -> None:
    """Mark every descriptor from low upward close-on-exec, except those in keep."""
    _impl().seal(low, list(keep))


def describe(fd: int) -> FdDetails:
    """Details of an open descriptor: its target, its precise kind, socket addresses."""
    impl = _impl()
    st_mode = os.fstat(fd).st_mode
    kind = kind_of(st_mode)
    target = impl.target(fd)
    deleted = False
    if target is not None:
        kind = refined_kind(kind, target)
        deleted = target.endswith(" (deleted)") and kind != "memfd"
    info = impl.socket_info(fd) if kind == "socket" else None
    if info is None:
        return FdDetails(fd, kind, target, deleted)
    return _socket_details(FdDetails(fd, kind, target, deleted), info, impl)


def describe_entry(entry: FdEntry) -> FdDetails:
    """:func:`describe` for an entry of a snapshot: a descriptor, or on Windows a handle."""
    if UNIT == "fd":
        return describe(entry.fd)
    impl = _impl()
    info = impl.handle_socket_info(entry.fd) if entry.kind == "socket" else None
    if info is None:
        target = impl.handle_target(entry.fd)
        return FdDetails(entry.fd, entry.kind, target or f"{entry.kind} handle {entry.fd:#x}")
    return _socket_details(FdDetails(entry.fd, "socket", None), info, impl)


def _socket_details(base: FdDetails, info: tuple[Any, ...], impl: ModuleType) -> FdDetails:
    """base with the family, type and addresses of a backend's socket_info answer."""
    family, socktype, _proto, local, peer = info
    if isinstance(local, (bytes, bytearray)) and impl.__name__.endswith(".native"):
        local = _decode_sockaddr(family, bytes(local))
        peer = _decode_sockaddr(family, bytes(peer)) if peer else None
    return base._replace(
        family=_enum_name(socket.AddressFamily, family, "AF_"),
        socktype=_enum_name(socket.SocketKind, socktype, "SOCK_"),
        local=_format_address(local),
        peer=_format_address(peer) if peer else None,
    )


def refined_kind(kind: str, target: str) -> str:
    """The precise kind from a readlink target: eventfd, memfd, tty..."""
    if target.startswith("anon_inode:"):
        return _ANON_KINDS.get(target[len("anon_inode:") :], "anon")
    if target.startswith("pidfd:"):
        return "pidfd"
    if target.startswith("/memfd:"):
        return "memfd"
    if kind == "chr" and (target.startswith(("/dev/pts/", "/dev/tty")) or target == "/dev/ptmx"):
        return "tty"
    return kind


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum(value).name)
    except ValueError:
        return f"{prefix}{value}"


def _decode_sockaddr(family: int, raw: bytes) -> object:
    """Turn raw sockaddr bytes into what socket.getsockname() would return."""
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack("!H", raw[2:4])[0]
        return (str(ipaddress.IPv4Address(raw[4:8])), port)
    if family == socket.AF_INET6 and len(raw) >= 28:
        port, flow = struct.unpack("!HI", raw[2:8])
        scope = struct.unpack("=I", raw[24:28])[0]
        return (str(ipaddress.IPv6Address(raw[8:24])), port, flow, scope)
    if family == getattr(socket, "AF_UNIX", None):
        path = raw[2:]
        if path[:1] == b"\0":
            return path  # abstract namespace: getsockname() gives bytes too
        return os.fsdecode(path.split(b"\0", 1)[0])
    return raw[2:]


def _format_address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(addr, (bytes, bytearray)):
        text = bytes(addr)
        return (
            "@" + text[1:].decode("utf-8", "backslashreplace") if text[:1] == b"\0" else repr(text)
        )
    return str(addr)
