"""The descriptor table: entries, snapshots, details, and the backend seam.

The backend is chosen once per process (``PYTEST_NOINHERIT_BACKEND``: ``auto``
by default, ``native`` or ``python``).  Both backends return a snapshot as a
flat ``array('Q')`` of five words per descriptor, so a table is one memcpy to
build and one memcmp to compare; :class:`FdEntry` objects are made only when
someone looks at an entry.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import errno
import functools
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
    "socket_target",
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
        return self._words is other._words or self._words == other._words

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
    except OSError as exc:  # EMFILE: no descriptor left to read the module with
        raise _load_error("native", exc) from exc
    except ImportError as exc:
        if _out_of_descriptors(exc):  # dlopen() of the extension, same cause
            raise _load_error("native", exc) from exc
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
    except OSError as exc:
        raise _load_error("python", exc) from exc
    except ImportError as exc:
        raise BackendError(f"no backend for this platform: {exc}") from exc
    return pure


def _out_of_descriptors(exc: Exception) -> bool:
    """Whether exc says the process (EMFILE) or the system (ENFILE) has no descriptor left."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    # dlopen() failures are ImportErrors carrying dlerror()'s text only.
    return any(os.strerror(e) in str(exc) for e in (errno.EMFILE, errno.ENFILE))


def _load_error(name: str, exc: Exception) -> BackendError:
    """The error for a backend module that could not be read; nothing is cached,
    so a later call tries again."""
    hint = (
        " (the descriptor table is full: take the first snapshot before it fills up,"
        " or raise RLIMIT_NOFILE)"
        if _out_of_descriptors(exc)
        else ""
    )
    return BackendError(f"cannot load the {name} backend: {exc}{hint}")


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


def snapshot_since(previous: FdTable, flags: bool = True) -> FdTable:
    """A snapshot that carries over previous's entries whose number is still open.

    Cheaper than snapshot(): new numbers are read in full, and an entry of
    previous is carried over as it was, without reading its descriptor when
    ``flags`` is false (on Linux the native backend then costs two system
    calls when nothing changed, at any table size), after reading its
    close-on-exec flag when ``flags`` is true (read in full if the flag
    changed).  The price: a descriptor closed and reopened at the same number
    in between keeps its old entry (with ``flags``, only if its flag is the
    same), and without ``flags`` a flag flipped on an open descriptor is not
    seen.  For the per-test check (docs/limits.md), never for the public API.
    previous itself is returned when nothing changed.  The Windows handle
    view is always read whole.
    """
    if UNIT == "handle":
        return snapshot()
    words = _impl().snapshot_since(previous._words, flags)
    return previous if words is previous._words else FdTable(words)


def get_inheritable(fd: int) -> bool:
    """Whether fd is inheritable; raises what :func:`os.get_inheritable` raises."""
    return bool(_impl().get_inheritable(fd))


def set_inheritable(fd: int, inheritable: bool) -> None:
    """Set fd's inheritable flag atomically; raises what :func:`os.set_inheritable` raises."""
    _impl().set_inheritable(fd, inheritable)


def seal(low: int = 3, keep: Iterable[int] = ()) -> None:
    """Mark every descriptor from low upward close-on-exec, except those in keep."""
    _impl().seal(low, list(keep))


#: The target of a descriptor whose path Linux will not read back: d_path()
#: writes it into one PATH_MAX page (fs/proc/base.c, do_proc_readlink).
LONG_PATH = "(path longer than 4095 bytes)"


def describe(fd: int) -> FdDetails:
    """Details of an open descriptor: its target, its precise kind, socket addresses.

    Raises only what :func:`os.fstat` raises for a descriptor that is not
    open (EBADF): whatever of the rest the system will not tell is left out,
    and every text is printable (see :func:`printable`).
    """
    impl = _impl()
    st_mode = os.fstat(fd).st_mode
    kind = kind_of(st_mode)
    target = _target(impl, fd)
    deleted = False
    if target is not None:
        kind = refined_kind(kind, target)
        deleted = target.endswith(" (deleted)") and kind != "memfd"
        target = printable(target)
    info = _socket_info(impl, fd) if kind == "socket" else None
    if info is None:
        return FdDetails(fd, kind, target, deleted)
    return _socket_details(FdDetails(fd, kind, target, deleted), info, _raw(impl), fd)


def _target(impl: ModuleType, fd: int) -> str | None:
    """impl.target(fd), with what it cannot read turned into an honest answer."""
    try:
        target: str | None = impl.target(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise
        return LONG_PATH if exc.errno == errno.ENAMETOOLONG else None
    return target


def _socket_info(impl: ModuleType, fd: int) -> tuple[Any, ...] | None:
    """impl.socket_info(fd); both backends raise EBADF only, this makes sure of it."""
    try:
        info: tuple[Any, ...] | None = impl.socket_info(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise
        return None
    return info


def describe_entry(entry: FdEntry) -> FdDetails:
    """:func:`describe` for an entry of a snapshot: a descriptor, or on Windows a handle."""
    if UNIT == "fd":
        return describe(entry.fd)
    impl = _impl()
    info = impl.handle_socket_info(entry.fd) if entry.kind == "socket" else None
    if info is None:
        target = impl.handle_target(entry.fd)
        text = printable(target) if target else f"{entry.kind} handle {entry.fd:#x}"
        return FdDetails(entry.fd, entry.kind, text)
    return _socket_details(FdDetails(entry.fd, "socket", None), info, _raw(impl))


def socket_target(
    family: int, type_: int, local: bytes | None, peer: bytes | None
) -> tuple[str, str]:
    """(kind, target text) of a socket, as :func:`describe` would report it.

    family and type_ are what getsockopt(SO_DOMAIN, SO_TYPE) said (-1 where
    it would not tell), local and peer the raw sockaddr bytes of
    getsockname() and getpeername() (None where there was no address): what
    the exec probe records of a socket the test process may no longer hold.
    The text is ``str()`` of the :class:`FdDetails` that describe() returns
    for a socket with those values.
    """
    info = (family, type_, 0, local, peer)
    return "socket", str(_socket_details(FdDetails(-1, "socket", None), info, raw=True))


def _raw(impl: ModuleType) -> bool:
    """Whether impl.socket_info gives raw sockaddr bytes (the native core) or
    what Python's socket module decoded (the reference)."""
    return impl.__name__.endswith(".native")


# Families whose addresses both backends decode alike: CPython's
# makesockaddr() (Modules/socketmodule.c) for the reference, _decode_sockaddr
# for the native core's raw bytes.  Any other family is shown without its
# addresses, since the reference cannot read their bytes.
_DECODED_FAMILIES = frozenset(
    getattr(socket, name)
    for name in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET", "AF_VSOCK")
    if hasattr(socket, name)
)


def _socket_details(base: FdDetails, info: tuple[Any, ...], raw: bool, fd: int = -1) -> FdDetails:
    """base with the family, type and addresses of a socket_info answer.

    raw says the addresses are sockaddr bytes, to be decoded the way
    CPython's makesockaddr() would; otherwise they are what it returned.
    """
    family, socktype, _proto, local, peer = info
    if family not in _DECODED_FAMILIES:
        local = peer = None
    elif raw:
        local = _decode_sockaddr(family, bytes(local), fd) if local else None
        peer = _decode_sockaddr(family, bytes(peer), fd) if peer else None
    return base._replace(
        family=_enum_name(socket.AddressFamily, family, "AF_"),
        socktype=_enum_name(socket.SocketKind, socktype, "SOCK_"),
        local=_address_text(family, local),
        peer=_address_text(family, peer),
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
    if value < 0:  # the system would not tell (nic_socket_info)
        return f"{prefix}UNKNOWN"
    try:
        return str(enum(value).name)
    except ValueError:
        return f"{prefix}{value}"


def _decode_sockaddr(family: int, raw: bytes, fd: int = -1) -> object:  # noqa: PLR0911 - one branch per family
    """Turn raw sockaddr bytes into what socket.getsockname() would return.

    fd is the socket they came from, which names AF_PACKET interfaces as
    CPython does (SIOCGIFNAME on the socket itself).
    """
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack("!H", raw[2:4])[0]
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6 and len(raw) >= 28:
        port, flow = struct.unpack("!HI", raw[2:8])
        scope = struct.unpack("=I", raw[24:28])[0]
        return (_ipv6_host(raw[8:24], scope), port, flow, scope)
    if family == getattr(socket, "AF_UNIX", None):
        path = raw[2:]
        if path[:1] == b"\0":
            return path  # abstract namespace: getsockname() gives bytes too
        return os.fsdecode(path.split(b"\0", 1)[0])
    if family == getattr(socket, "AF_NETLINK", None) and len(raw) >= 12:
        pid, groups = struct.unpack("=II", raw[4:12])  # struct sockaddr_nl
        return (pid, groups)
    if family == getattr(socket, "AF_PACKET", None) and len(raw) >= 12:
        # struct sockaddr_ll: protocol (network order), ifindex, hatype,
        # pkttype, halen, then up to 8 address bytes
        (proto,) = struct.unpack("!H", raw[2:4])
        index, hatype, pkttype, halen = struct.unpack("=iHBB", raw[4:12])
        return (_interface_name(fd, index), proto, pkttype, hatype, raw[12 : 12 + halen])
    if family == getattr(socket, "AF_VSOCK", None) and len(raw) >= 12:
        port, cid = struct.unpack("=II", raw[4:12])  # struct sockaddr_vm
        return (cid, port)
    return raw[2:]


def _ipv6_host(packed: bytes, scope: int) -> str:
    """The host as getnameinfo(NI_NUMERICHOST) writes it, which CPython uses.

    glibc appends the scope of a link-local address: the interface name, or
    its number when there is none.
    """
    host = socket.inet_ntop(socket.AF_INET6, packed)
    # IN6_IS_ADDR_LINKLOCAL (fe80::/10) or IN6_IS_ADDR_MC_LINKLOCAL (ff02::/16-ish)
    link_local = (packed[0], packed[1] & 0xC0) == (0xFE, 0x80) or (
        packed[0] == 0xFF and packed[1] & 0x0F == 2
    )
    if scope and link_local:
        try:
            return f"{host}%{socket.if_indextoname(scope)}"
        except (OSError, AttributeError):
            return f"{host}%{scope}"
    return host


def _interface_name(fd: int, index: int) -> str:
    """The name of interface index in fd's network namespace, or ''.

    Without the socket (fd -1: a probe record of one the test has closed)
    the name is looked up in this process's namespace, which the children
    of a test share unless they set up their own.
    """
    if index <= 0 or not sys.platform.startswith("linux"):
        return ""
    if fd < 0:
        try:
            return socket.if_indextoname(index)
        except OSError:
            return ""
    import fcntl

    # struct ifreq: ifr_name[IFNAMSIZ], then ifr_ifindex in the union (40 bytes on LP64)
    request = struct.pack("=16si20x", b"", index)
    try:
        answer = fcntl.ioctl(fd, _SIOCGIFNAME, request)
    except OSError:
        return ""
    return answer[:16].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_SIOCGIFNAME = 0x8910  # linux/sockios.h


def _address_text(family: int, addr: object) -> str | None:
    """An address as shown to the user, or None when there is none (an unnamed socket)."""
    if addr is None or addr in ("", b""):
        return None
    return _format_address(addr, family)


def _format_address(addr: object, family: int | None = None) -> str:
    """A decoded address as printable text (family picks the formats that need it)."""
    if isinstance(addr, tuple):
        if family == getattr(socket, "AF_NETLINK", None) and len(addr) == 2:
            return f"pid={addr[0]},groups={addr[1]:#x}"
        if family == getattr(socket, "AF_PACKET", None) and len(addr) == 5:
            ifname, proto, _pkttype, _hatype, hardware = addr
            # CPython builds proto as a C short: mask it back to the ethertype.
            where = f"{printable(ifname) or '*'},proto={proto & 0xFFFF:#06x}"
            return where + (f",hw={bytes(hardware).hex(':')}" if hardware else "")
        if len(addr) >= 2:
            host, port = printable(str(addr[0])), addr[1]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(addr, (bytes, bytearray)):
        raw = bytes(addr)
        if raw[:1] == b"\0":  # abstract unix name, shown the way ss(8) does
            return "@" + printable(os.fsdecode(raw[1:]))
        return repr(raw)
    return printable(str(addr))


def printable(text: str) -> str:
    """text with every character that is not printable escaped as repr() would.

    Bytes that did not decode (surrogateescape) become ``\\xHH``, as the
    exec probe writes them; spaces and printable non-ASCII stay as they are.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (PEP 383)
        code -= 0xDC00
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
