"""Patch mode: the stdlib's descriptor creators held to PEP 446 for one session.

:func:`install` wraps every stdlib function that creates a descriptor, so that

* what it returns is non-inheritable: atomically where the system offers a
  flag (``O_CLOEXEC`` added to :func:`os.pipe2`, ``MSG_CMSG_CLOEXEC`` to
  ``recvmsg``, ``F_DUPFD`` turned into ``F_DUPFD_CLOEXEC``), otherwise right
  after creation (the :func:`os.forkpty` master, gh-139184);
* :func:`os.dup2` follows the text of PEP 446: the target is inheritable only
  when it is 0, 1 or 2 and differs from the source, unless ``inheritable=``
  is given;
* every descriptor gets a creation record, and every call that makes one
  inheritable records where that happened (:class:`CreationRecords`).

What is deliberately *not* replaced:

* ``io.FileIO`` and ``select.epoll`` (``devpoll``, ``kqueue``) are C types
  that already open with ``O_CLOEXEC``/``EPOLL_CLOEXEC``, so the patch has
  nothing to fix there.  A stand-in object would still break
  ``type(f) is io.FileIO``, ``super(io.FileIO, self)`` and dictionaries keyed
  by type, and would outlive the session in every module that imported the
  name while it was installed; :mod:`selectors` binds ``select.epoll`` at
  import time anyway.  Files get their record through ``open()``/``io.open()``
  (which create the ``FileIO``), and a test that later makes such a
  descriptor inheritable still gets an ``inheritable_since`` record.
* :func:`os.fdopen` and ``open(fd)`` wrap a descriptor that already exists:
  its record is the one its creator left.

Records are cheap on the hot path (``open()``, ``socket.socket()``): the
caller is kept as a ``(code, f_lasti)`` pair (``f_lineno`` costs more than a
syscall in a long function) and the object as a weak reference.  Its
``(st_dev, st_ino)`` identity is read later, by :meth:`CreationRecords.settle`,
while the object still holds the descriptor: ``os.fstat`` builds a whole
``stat_result`` and alone costs more than the 20 % budget of an
``open()``+``close()`` loop.  An object closed before it was settled can no
longer reach a child, so dropping its record loses nothing a spawn could
need, provided the records are settled before each spawn.  Descriptors that
functions return as plain integers have no owner to ask, so their identity is
read at once.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import dis
import functools
import importlib
import inspect
import io
import os
import socket
import sys
import sysconfig
import types
import weakref
from array import array
from collections.abc import Iterable, Sequence
from types import CodeType, FrameType, ModuleType
from typing import Any, Callable, NamedTuple, TypeVar, Union

__all__ = ["CreationRecords", "install"]

_STD_STREAMS = (0, 1, 2)
_MISSING: Any = object()

# The originals this module calls itself, so that its own work is never
# recorded nor patched.
_fstat = os.fstat
_set_inheritable = os.set_inheritable
_CLOEXEC_FLAG = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

# Pending object records are settled when there are more than this many:
# most belong to objects already gone, so the work is small.
_PENDING_LIMIT = 512
# The record tables are checked for closed descriptors when they outgrow
# twice their size after the last check (amortised O(1) per record).
_PRUNE_FLOOR = 256


# -- where a descriptor was created ------------------------------------------------

_OUTSIDE, _STDLIB, _PLUGIN = 0, 1, 2
_Site = tuple[Union[CodeType, None], int]  # (code, f_lasti); (None, -1) when unknown


def _prefixes(paths: Iterable[str]) -> tuple[str, ...]:
    found = set()
    for path in paths:
        if path:
            for variant in (os.path.abspath(path), os.path.realpath(path)):
                found.add(variant.rstrip(os.sep) + os.sep)
    return tuple(sorted(found))


def _site_prefixes() -> tuple[str, ...]:
    import site

    paths = sysconfig.get_paths()
    dirs = [paths.get("purelib", ""), paths.get("platlib", "")]
    with contextlib.suppress(AttributeError):
        dirs += site.getsitepackages()
    with contextlib.suppress(AttributeError):
        dirs.append(site.getusersitepackages())
    return _prefixes(dirs)


_PLUGIN_DIRS = _prefixes([os.path.dirname(__file__)])
_STDLIB_DIRS = _prefixes(
    [
        sysconfig.get_paths().get("stdlib", ""),
        sysconfig.get_paths().get("platstdlib", ""),
        os.path.dirname(contextlib.__file__),
    ]
)
_SITE_DIRS = _site_prefixes()
_kinds: dict[str, int] = {}  # co_filename -> _OUTSIDE, _STDLIB or _PLUGIN


def _classify(filename: str) -> int:
    """Whether a frame in filename belongs to the plugin, the stdlib or the user."""
    if filename.startswith("<frozen "):  # frozen stdlib modules (os, ... on 3.11+)
        return _STDLIB
    path = os.path.abspath(filename)
    if path.startswith(_PLUGIN_DIRS):
        return _PLUGIN
    # A site-packages directory may sit inside the stdlib directory.
    in_site = path.startswith(_SITE_DIRS) or any(
        part in ("site-packages", "dist-packages") for part in path.split(os.sep)
    )
    if not in_site and path.startswith(_STDLIB_DIRS):
        return _STDLIB
    return _OUTSIDE


def _where(frame: FrameType | None) -> _Site:
    """The first frame outside the stdlib and the plugin, as ``(code, f_lasti)``.

    When every frame is the stdlib's (a thread the stdlib started), the
    innermost stdlib frame stands in.
    """
    fallback: _Site = (None, -1)
    while frame is not None:
        code = frame.f_code
        kind = _kinds.get(code.co_filename)
        if kind is None:
            kind = _kinds[code.co_filename] = _classify(code.co_filename)
        if kind == _OUTSIDE:
            return code, frame.f_lasti
        if kind == _STDLIB and fallback[0] is None:
            fallback = (code, frame.f_lasti)
        frame = frame.f_back
    return fallback


def _line(code: CodeType, lasti: int) -> int | None:
    """The source line of the instruction at byte offset lasti (``frame.f_lasti``)."""
    lines = getattr(code, "co_lines", None)
    if lines is not None:  # 3.10+
        for start, end, line in lines():
            if start <= lasti < end:
                return int(line) if line is not None else None
        return None
    found = None
    for offset, line in dis.findlinestarts(code):
        if offset > lasti:
            break
        found = line
    return found


def _describe_site(site: _Site, root: str) -> str:
    code, lasti = site
    if code is None:
        return ""
    path = code.co_filename
    if os.path.isabs(path):
        with contextlib.suppress(ValueError):
            relative = os.path.relpath(path, root)
            if not relative.startswith(os.pardir + os.sep) and relative != os.pardir:
                path = relative
    line = _line(code, lasti)
    func = getattr(code, "co_qualname", code.co_name)
    return f" at {path}:{line if line is not None else '?'} in {func}"


# -- the records ---------------------------------------------------------------------


class _Created(NamedTuple):
    dev: int
    ino: int
    creator: str
    code: CodeType | None
    lasti: int
    test: str | None


class _Since(NamedTuple):
    dev: int
    ino: int
    how: str
    code: CodeType | None
    lasti: int
    created: _Created | None  # the creation record of the descriptor made inheritable


# (weak reference to the owner, creator, site, test id)
_Pending = tuple["weakref.ref[Any]", str, _Site, Union[str, None]]
_weakref = weakref.ref


def _fileno(obj: Any) -> int:
    """The descriptor obj holds, or -1 once it is closed or detached."""
    try:
        fd = obj.fileno()
    except (OSError, ValueError, AttributeError, TypeError):
        return -1
    return fd if isinstance(fd, int) else -1


class CreationRecords:
    """Who created each open descriptor, and who made it inheritable.

    Keyed by descriptor number; each record keeps the ``(st_dev, st_ino)`` of
    the open file it describes, so a record whose descriptor was closed and
    the number reused is recognised as gone.  Records of closed descriptors
    are dropped from time to time, so the tables stay about as large as the
    descriptor table.  Safe to use from any thread.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        """root: paths under it are shown relative to it (default: the working directory)."""
        self._root = os.fspath(root) if root is not None else None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._created: dict[int, _Created] = {}
        self._since: dict[int, _Since] = {}
        self._prune_at = _PRUNE_FLOOR

    def __len__(self) -> int:
        """How many descriptors have a creation record (pending ones included)."""
        return len(self._created) + len(self._pending)

    # -- reading ------------------------------------------------------------------

    def lookup(self, fd: int, dev: int, ino: int) -> tuple[str | None, str | None]:
        """``(created_at, inheritable_since)`` for the open file (dev, ino) at fd.

        Either is None when unknown: no patched creator made it, or the
        descriptor it described is gone.
        """
        self.settle()
        created = self._created.get(fd)
        if created is not None and (created.dev, created.ino) != (dev, ino):
            created = None
        since = self._since.get(fd)
        if since is not None and (
            (since.dev, since.ino) != (dev, ino) or since.created is not created
        ):
            since = None
        root = self._root if self._root is not None else os.getcwd()
        created_at = inheritable_since = None
        if created is not None:
            test = f" [{created.test}]" if created.test else ""
            where = _describe_site((created.code, created.lasti), root)
            created_at = f"created by {created.creator}{where}{test}"
        if since is not None:
            where = _describe_site((since.code, since.lasti), root)
            inheritable_since = f"made inheritable by {since.how}{where}"
        return created_at, inheritable_since

    def settle(self) -> None:
        """Read the identity of every object created since the last call.

        Call it before a child is created, so every descriptor the child can
        receive has a complete record; lookups and the integer creators call
        it too.
        """
        pending = self._pending
        while pending:
            try:
                ref, creator, (code, lasti), test = pending.popleft()
            except IndexError:  # another thread took the last one
                break
            owner = ref()
            if owner is None:
                continue
            fd = _fileno(owner)
            if fd < 0:
                continue
            try:
                st = _fstat(fd)
            except OSError:
                continue
            self._created[fd] = _Created(st.st_dev, st.st_ino, creator, code, lasti, test)
        if len(self._created) + len(self._since) > self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """Drop the records of descriptors that were closed or reused."""
        _prune_table(self._created)
        _prune_table(self._since)
        self._prune_at = max(_PRUNE_FLOOR, 2 * (len(self._created) + len(self._since)))

    # -- writing (called by the wrappers) -----------------------------------------

    def note_object(self, owner: Any, creator: str, site: _Site, test: str | None) -> None:
        """owner (a file or socket object) holds a new descriptor."""
        try:
            ref = _weakref(owner)
        except TypeError:  # not weakly referenceable: read the identity now
            fd = _fileno(owner)
            if fd >= 0:
                self.note_fds((fd,), creator, site, test)
            return
        pending = self._pending
        pending.append((ref, creator, site, test))
        if len(pending) > _PENDING_LIMIT:
            self.settle()

    def note_fds(self, fds: Iterable[int], creator: str, site: _Site, test: str | None) -> None:
        """Each of fds is a new descriptor."""
        # Everything pending is older than these: settle it first, so that it
        # cannot overwrite them.
        self.settle()
        code, lasti = site
        for fd in fds:
            try:
                st = _fstat(fd)
            except OSError:
                continue
            self._created[fd] = _Created(st.st_dev, st.st_ino, creator, code, lasti, test)

    def note_inheritable(self, fd: int, inheritable: bool, how: str, site: _Site) -> None:
        """fd was just made inheritable, or close-on-exec again."""
        if not inheritable:
            self._since.pop(fd, None)
            return
        self.settle()
        try:
            st = _fstat(fd)
        except OSError:
            return
        created = self._created.get(fd)
        if created is not None and (created.dev, created.ino) != (st.st_dev, st.st_ino):
            created = None  # the record of an earlier descriptor with this number
        code, lasti = site
        self._since[fd] = _Since(st.st_dev, st.st_ino, how, code, lasti, created)


_Record = TypeVar("_Record", _Created, _Since)


def _prune_table(table: dict[int, _Record]) -> None:
    for fd, record in list(table.items()):
        try:
            st = _fstat(fd)
            alive = (st.st_dev, st.st_ino) == (record.dev, record.ino)
        except OSError:
            alive = False
        if not alive and table.get(fd) is record:
            del table[fd]


# -- the session stack ---------------------------------------------------------------


class _Session:
    __slots__ = ("current_test", "records")

    def __init__(self, records: CreationRecords, current_test: Callable[[], str | None]) -> None:
        self.records = records
        self.current_test = current_test


# The innermost installed session (pytester's in-process runs nest), or None:
# every wrapper reads it first and is a plain pass-through while it is None.
_active: _Session | None = None
_sessions: list[_Session] = []
_undo_steps: list[Callable[[], None]] = []  # run last to first


def _ensure_cloexec(fds: Iterable[int]) -> None:
    """Make fds close-on-exec right after creation, where no atomic flag existed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            _set_inheritable(fd, False)


# -- wrappers for module functions -----------------------------------------------------
#
# A replacement for a module function is a closure bound, as a method, to a
# _Home.  A bound method has no __get__: stored as a class attribute it never
# binds a second time, just like the builtin it stands for (``class A: o = open``
# keeps working).  Unlike an object with a Python __call__, it is called
# through vectorcall, which keeps the wrapper's own cost near that of a plain
# function call.  Once the session ends, every wrapper only forwards, so
# references taken meanwhile keep working.

_Call = Callable[..., Any]


class _Home:
    """The object a wrapper is bound to: where the wrapped name lives."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __reduce__(self) -> tuple[Callable[[str], ModuleType], tuple[str]]:
        # A bound method pickles as getattr(self, name): by name, like the
        # function it stands for, so whoever unpickles gets what the name is then.
        return importlib.import_module, (self.module,)

    def __repr__(self) -> str:
        return f"<pytest-noinherit patch of {self.module}.{self.name}>"


def _bind(call: _Call, original: Any, module: str, name: str) -> _Call:
    """call (whose first parameter receives the _Home) as the stand-in for original."""
    call.__name__ = name
    call.__qualname__ = getattr(original, "__qualname__", name)
    call.__module__ = module
    call.__doc__ = getattr(original, "__doc__", None)
    call.__wrapped__ = original  # type: ignore[attr-defined]
    with contextlib.suppress(TypeError, ValueError):  # builtins without a text signature
        signature = inspect.signature(original)
        home = inspect.Parameter("_home", inspect.Parameter.POSITIONAL_ONLY)
        call.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[home, *signature.parameters.values()]
        )
    return types.MethodType(call, _Home(module, name))


def _open_call(original: _Call, creator: str) -> _Call:
    """``open()``/``io.open()``: the ``FileIO`` inside already uses ``O_CLOEXEC``."""

    def call(_home: _Home, file: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(file, *args, **kwargs)
        session = _active
        if session is not None and not isinstance(file, int):  # open(fd) creates nothing
            session.records.note_object(
                result, creator, _where(sys._getframe(1)), session.current_test()
            )
        return result

    return call


def _object_call(original: _Call, creator: str) -> _Call:
    """A function returning a new socket object, or a tuple of them."""

    def call(_home: _Home, *args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        session = _active
        if session is not None:
            site = _where(sys._getframe(1))
            test = session.current_test()
            for owner in result if isinstance(result, tuple) else (result,):
                session.records.note_object(owner, creator, site, test)
        return result

    return call


class _Flag(NamedTuple):
    """Where a creator takes its flags, and the bit that means close-on-exec."""

    position: int | None  # None: keyword only
    name: str | None  # None: positional only
    bit: int
    when_absent: bool  # add it when the caller passes no flags (the default lacks it)


def _with_flag(
    flag: _Flag, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    at = flag.position
    if at is not None and len(args) > at:
        if isinstance(args[at], int):
            args = (*args[:at], args[at] | flag.bit, *args[at + 1 :])
    elif flag.name is not None and flag.name in kwargs:
        if isinstance(kwargs[flag.name], int):
            kwargs = {**kwargs, flag.name: kwargs[flag.name] | flag.bit}
    elif flag.name is not None and flag.when_absent:
        kwargs = {**kwargs, flag.name: flag.bit}
    return args, kwargs


def _flags_given(flag: _Flag, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The flags the caller passed (0 when none)."""
    at = flag.position
    if at is not None and len(args) > at:
        value = args[at]
    elif flag.name is not None:
        value = kwargs.get(flag.name, 0)
    else:
        value = 0
    return value if isinstance(value, int) else 0


def _without_echo(result: Any, at: int) -> Any:
    """result with MSG_CMSG_CLOEXEC taken out of its msg_flags at index at.

    Linux copies MSG_CMSG_CLOEXEC from the flags into msg_flags
    (net/socket.c, ____sys_recvmsg); a caller that did not ask for it must
    not see it (test_socket's testSendAndRecvFds checks msg_flags == 0).
    """
    if isinstance(result, tuple) and len(result) > at and result[at] & _CLOEXEC_FLAG:
        return (*result[:at], result[at] & ~_CLOEXEC_FLAG, *result[at + 1 :])
    return result


def _fds_of(result: Any) -> tuple[int, ...]:
    if isinstance(result, int):
        return (result,)
    return tuple(fd for fd in result if isinstance(fd, int) and fd >= 0)


def _fd_call(original: _Call, creator: str, flag: _Flag | None = None) -> _Call:
    """A function returning a new descriptor number, or a tuple of them.

    With flag, the close-on-exec bit is added to the call (atomic).
    """

    def call(_home: _Home, *args: Any, **kwargs: Any) -> Any:
        session = _active
        if session is None:
            return original(*args, **kwargs)
        if flag is not None:
            args, kwargs = _with_flag(flag, args, kwargs)
        result = original(*args, **kwargs)
        session.records.note_fds(
            _fds_of(result), creator, _where(sys._getframe(1)), session.current_test()
        )
        return result

    return call


def _forkpty_call(original: _Call, creator: str) -> _Call:
    """``os.forkpty()``/``pty.fork()``.

    libc's forkpty() opens the master without ``O_CLOEXEC`` (gh-139184, fixed
    in 3.15 by gh-139408) and offers no flag, so the parent fixes it at once;
    another thread's fork+exec in between still gets it.  The child returns
    untouched.
    """

    def call(_home: _Home) -> Any:
        pid, fd = result = original()
        session = _active
        if session is not None and pid != 0 and fd >= 0:
            _ensure_cloexec((fd,))
            session.records.note_fds(
                (fd,), creator, _where(sys._getframe(1)), session.current_test()
            )
        return result

    return call


def _dup2_call(original: _Call, creator: str) -> _Call:
    """``os.dup2()`` as PEP 446 words it: fd2 is inheritable only when it is 0,
    1 or 2 and differs from fd; an explicit ``inheritable=`` wins.  CPython's
    default is inheritable=True for every target (os_dup2_impl in
    Modules/posixmodule.c)."""

    def call(_home: _Home, fd: int, fd2: int, inheritable: bool = _MISSING) -> Any:
        session = _active
        if session is None or fd == fd2:
            # dup2(fd, fd) creates nothing and changes no flag; the original
            # with inheritable=False would fail with EINVAL (dup3).
            if inheritable is _MISSING:
                return original(fd, fd2)
            return original(fd, fd2, inheritable)
        if inheritable is _MISSING:
            inheritable = fd2 in _STD_STREAMS
        result = original(fd, fd2, inheritable)
        site = _where(sys._getframe(1))
        session.records.note_fds((fd2,), creator, site, session.current_test())
        if inheritable:
            session.records.note_inheritable(fd2, True, creator, site)
        return result

    return call


def _set_inheritable_call(original: _Call, creator: str) -> _Call:
    """``os.set_inheritable()``: records where a descriptor became inheritable."""

    def call(_home: _Home, fd: int, inheritable: bool, /) -> None:
        original(fd, inheritable)
        session = _active
        if session is not None:
            session.records.note_inheritable(
                fd, bool(inheritable), creator, _where(sys._getframe(1))
            )

    return call


def _fcntl_call(original: _Call, fcntl: ModuleType) -> _Call:
    """``fcntl.fcntl()``: ``F_DUPFD`` becomes ``F_DUPFD_CLOEXEC`` (atomic); a
    ``F_SETFD`` that clears ``FD_CLOEXEC`` is recorded as making fd inheritable."""
    dupfd: int = fcntl.F_DUPFD
    # Where F_DUPFD_CLOEXEC is missing (old systems), F_DUPFD is fixed afterwards.
    dupfd_cloexec: int | None = getattr(fcntl, "F_DUPFD_CLOEXEC", None)
    setfd: int = fcntl.F_SETFD
    cloexec_bit: int = fcntl.FD_CLOEXEC
    watched = frozenset(c for c in (dupfd, dupfd_cloexec, setfd) if c is not None)

    def call(_home: _Home, fd: Any, cmd: int, arg: Any = 0, /) -> Any:
        session = _active
        if session is None or cmd not in watched:
            return original(fd, cmd, arg)
        if cmd == setfd:
            result = original(fd, cmd, arg)
            if isinstance(arg, int):
                session.records.note_inheritable(
                    fd if isinstance(fd, int) else _fileno(fd),
                    not arg & cloexec_bit,
                    "fcntl.fcntl(F_SETFD)",
                    _where(sys._getframe(1)),
                )
            return result
        if cmd == dupfd and dupfd_cloexec is not None:
            result = original(fd, dupfd_cloexec, arg)
        else:
            result = original(fd, cmd, arg)
            if cmd == dupfd:
                _ensure_cloexec((result,))
        name = "fcntl.fcntl(F_DUPFD)" if cmd == dupfd else "fcntl.fcntl(F_DUPFD_CLOEXEC)"
        session.records.note_fds((result,), name, _where(sys._getframe(1)), session.current_test())
        return result

    return call


def _recv_fds_call(
    original: _Call, creator: str, flags_at: int | None, fds_at: int | None
) -> _Call:
    """``socket.recv_fds()`` and ``multiprocessing.reduction.recvfds()``.

    Neither passes ``MSG_CMSG_CLOEXEC`` to ``recvmsg`` (recvmsg(2): descriptors
    received through SCM_RIGHTS are inheritable without it).
    The flag is added where the function takes flags (3.11's recv_fds ignores
    them, though); the patched ``socket.socket.recvmsg`` adds it for any
    ``socket.socket``; whatever is still inheritable is fixed at once.
    flags_at is the index of the flags argument; fds_at that of the fd list
    in the result (None: the result is the list).
    """
    flag = _Flag(flags_at, "flags", _CLOEXEC_FLAG, True) if flags_at is not None else None

    def call(_home: _Home, *args: Any, **kwargs: Any) -> Any:
        session = _active
        if session is None:
            return original(*args, **kwargs)
        echo = False
        if flag is not None and flag.bit:
            echo = not _flags_given(flag, args, kwargs) & flag.bit
            args, kwargs = _with_flag(flag, args, kwargs)
        result = original(*args, **kwargs)
        if echo:
            result = _without_echo(result, 2)
        fds = _fds_of(result if fds_at is None else result[fds_at])
        _ensure_cloexec(fds)
        session.records.note_fds(fds, creator, _where(sys._getframe(1)), session.current_test())
        return result

    return call


# -- wrappers for socket.socket methods (plain functions: they must bind) --------------


def _socket_methods(cls: type[socket.socket]) -> dict[str, _Call]:
    """Replacements for the methods of socket.socket that create descriptors.

    socket.socket is a Python class: its methods are replaced on the class and
    the class itself stays, so isinstance, pickling and subclasses are untouched.
    recvmsg and recvmsg_into are inherited from _socket.socket; the patch adds
    them to socket.socket and the undo deletes them again.
    """
    init: _Call = cls.__init__
    accept: _Call = cls.accept
    dup: _Call = cls.dup
    set_inheritable: _Call = cls.set_inheritable
    # Missing on Windows; the replacements are then left out.
    recvmsg: _Call | None = getattr(cls, "recvmsg", None)
    recvmsg_into: _Call | None = getattr(cls, "recvmsg_into", None)

    def __init__(
        self: socket.socket, family: Any = -1, type: Any = -1, proto: Any = -1, fileno: Any = None
    ) -> None:
        init(self, family, type, proto, fileno)
        session = _active
        if session is not None and fileno is None:  # fileno=...: adopts an existing one
            session.records.note_object(
                self, "socket.socket()", _where(sys._getframe(1)), session.current_test()
            )

    def accept_(self: socket.socket) -> tuple[socket.socket, Any]:
        result: tuple[socket.socket, Any] = accept(self)
        session = _active
        if session is not None:
            session.records.note_object(
                result[0],
                "socket.socket.accept()",
                _where(sys._getframe(1)),
                session.current_test(),
            )
        return result

    def dup_(self: socket.socket) -> socket.socket:
        result: socket.socket = dup(self)
        session = _active
        if session is not None:
            session.records.note_object(
                result, "socket.socket.dup()", _where(sys._getframe(1)), session.current_test()
            )
        return result

    def set_inheritable_(self: socket.socket, inheritable: bool) -> None:
        set_inheritable(self, inheritable)  # records os.set_inheritable(), overwritten below
        session = _active
        if session is not None:
            session.records.note_inheritable(
                self.fileno(),
                bool(inheritable),
                "socket.socket.set_inheritable()",
                _where(sys._getframe(1)),
            )

    pairs: dict[str, tuple[_Call, _Call]] = {
        "__init__": (__init__, init),
        "accept": (accept_, accept),
        "dup": (dup_, dup),
        "set_inheritable": (set_inheritable_, set_inheritable),
    }
    for name, original in (("recvmsg", recvmsg), ("recvmsg_into", recvmsg_into)):
        if original is not None:
            pairs[name] = (_recvmsg_method(original, f"socket.socket.{name}()"), original)
    for replacement, original in pairs.values():
        for attr in ("__name__", "__qualname__", "__doc__"):
            with contextlib.suppress(AttributeError):
                setattr(replacement, attr, getattr(original, attr))
        replacement.__wrapped__ = original  # type: ignore[attr-defined]
    return {name: replacement for name, (replacement, _) in pairs.items()}


def _recvmsg_method(original: _Call, creator: str) -> _Call:
    """recvmsg()/recvmsg_into() passing ``MSG_CMSG_CLOEXEC``, so SCM_RIGHTS
    descriptors arrive close-on-exec (atomic)."""

    def method(self: socket.socket, first: Any, ancbufsize: int = 0, flags: int = 0, /) -> Any:
        session = _active
        if session is None:
            return original(self, first, ancbufsize, flags)
        result = original(self, first, ancbufsize, flags | _CLOEXEC_FLAG)
        if not flags & _CLOEXEC_FLAG:
            result = _without_echo(result, 2)
        if result[1]:
            _received(session, result[1], creator, sys._getframe(1))
        return result

    return method


def _received(session: _Session, ancdata: Sequence[Any], creator: str, frame: FrameType) -> None:
    """Record (and, without ``MSG_CMSG_CLOEXEC``, fix) the SCM_RIGHTS descriptors."""
    fds = array("i")
    rights = getattr(socket, "SCM_RIGHTS", None)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == rights:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not fds:
        return
    if not _CLOEXEC_FLAG:
        _ensure_cloexec(fds)
    session.records.note_fds(fds, creator, _where(frame), session.current_test())


# -- installation ----------------------------------------------------------------------

_Factory = Callable[[_Call, str], _Call]  # (original, creator) -> call


def _patch(owner: Any, name: str, replacement: Any) -> None:
    original = vars(owner).get(name, _MISSING)

    def restore() -> None:
        if original is not _MISSING:
            setattr(owner, name, original)
        elif name in vars(owner):
            delattr(owner, name)

    _undo_steps.append(restore)
    setattr(owner, name, replacement)


def _add_to_capability_sets(original: Any, wrapper: Any) -> None:
    """Put wrapper next to original in os.supports_dir_fd and its siblings.

    ``os.open in os.supports_dir_fd`` is how callers ask whether a function
    takes ``dir_fd=`` (test_posix's test_open_dir_fd skips otherwise).
    """
    for name in ("supports_dir_fd", "supports_fd", "supports_follow_symlinks"):
        members = getattr(os, name, None)
        if isinstance(members, set) and original in members and wrapper not in members:
            members.add(wrapper)
            _undo_steps.append(functools.partial(members.discard, wrapper))


def _patch_function(
    modules: Sequence[ModuleType], name: str, factory: _Factory, creator: str = ""
) -> None:
    """Replace name in the first module, and in the others that hold the same object."""
    home = modules[0]
    original = getattr(home, name, None)
    if original is None:  # not on this platform or this Python
        return
    creator = creator or f"{home.__name__}.{name}()"
    wrapper = _bind(factory(original, creator), original, home.__name__, name)
    for module in modules:
        if getattr(module, name, None) is original:
            _patch(module, name, wrapper)
    _add_to_capability_sets(original, wrapper)


def _flagged(flag: _Flag) -> _Factory:
    return lambda original, creator: _fd_call(original, creator, flag)


def _apply() -> None:
    """Put every wrapper in place, remembering what each name held."""
    # os re-exports the functions of posix (nt): both names get the wrapper.
    oses = [os, *(m for m in (sys.modules.get(os.name),) if m is not None)]
    _patch_function([io, builtins], "open", _open_call, "open()")

    for name in ("open", "pipe", "dup", "openpty", "pidfd_open"):
        _patch_function(oses, name, _fd_call)
    _patch_function(oses, "pipe2", _flagged(_Flag(0, None, os.O_CLOEXEC, False)))
    # eventfd() and memfd_create() default to their CLOEXEC flag, but a caller
    # passing flags=0 gets an inheritable descriptor.
    if hasattr(os, "EFD_CLOEXEC"):
        _patch_function(oses, "eventfd", _flagged(_Flag(1, "flags", os.EFD_CLOEXEC, False)))
    if hasattr(os, "MFD_CLOEXEC"):
        _patch_function(oses, "memfd_create", _flagged(_Flag(1, "flags", os.MFD_CLOEXEC, False)))
    _patch_function(oses, "posix_openpt", _flagged(_Flag(0, None, os.O_CLOEXEC, False)))
    if hasattr(os, "TFD_CLOEXEC"):
        _patch_function(
            oses, "timerfd_create", _flagged(_Flag(None, "flags", os.TFD_CLOEXEC, True))
        )
    _patch_function(oses, "forkpty", _forkpty_call)
    _patch_function(oses, "dup2", _dup2_call)
    _patch_function(oses, "set_inheritable", _set_inheritable_call)

    _patch_function([socket], "socketpair", _object_call)
    _patch_function([socket], "fromfd", _object_call)
    _patch_function([socket], "dup", _fd_call)
    _patch_function([socket], "recv_fds", lambda o, c: _recv_fds_call(o, c, 3, 1))
    for name, method in _socket_methods(socket.socket).items():
        _patch(socket.socket, name, method)

    # Imported here, not when the plugin loads: pty and multiprocessing cost
    # a few milliseconds and only patch mode needs them.  Neither pty nor
    # fcntl exists on Windows.
    with contextlib.suppress(ImportError):
        import pty

        _patch_function([pty], "fork", _forkpty_call)
        _patch_function([pty], "openpty", _fd_call)
    with contextlib.suppress(ImportError):
        import fcntl

        _patch_function([fcntl], "fcntl", lambda o, _: _fcntl_call(o, fcntl))
    from multiprocessing import reduction

    _patch_function(
        [reduction],
        "recvfds",
        lambda o, c: _recv_fds_call(o, c, None, None),
        "multiprocessing.reduction.recvfds()",
    )


def _unapply() -> None:
    while _undo_steps:
        _undo_steps.pop()()


def install(records: CreationRecords, current_test: Callable[[], str | None]) -> Callable[[], None]:
    """Patch the stdlib's descriptor creators, recording into records; return the undo.

    current_test gives the id of the running test (None between tests).
    Installs nest without stacking: the wrappers are put in place once, the
    innermost session records, and the last undo puts back the identical
    original objects.  Each undo is idempotent and may run in any order.
    """
    global _active
    session = _Session(records, current_test)
    if not _sessions:
        try:
            _apply()
        except BaseException:
            _unapply()
            raise
    _sessions.append(session)
    _active = session

    def undo() -> None:
        global _active
        if session not in _sessions:
            return
        _sessions.remove(session)
        _active = _sessions[-1] if _sessions else None
        if not _sessions:
            _unapply()

    return undo
