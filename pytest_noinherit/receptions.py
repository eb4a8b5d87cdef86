"""Receptions: one child exec and the undeclared descriptors its program received.

Every source of children (spawns.py's wrappers and audit hook, fork-child
records, the exec probe's records in lineage.py) produces :class:`Spawn`
receptions and nothing else; the verdict (verdict.py) judges them.  This
module also holds what those sources share: describing a descriptor,
reading a live child's table, and the record files fork children write.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import types
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

from pytest_noinherit import fdtable, recorddir
from pytest_noinherit.allowances import ChildDescriptor
from pytest_noinherit.fdtable import FdEntry, FdTable

OBSERVED = "observed in the child"
PROBED = "observed by the exec probe"
PREDICTED = "predicted from the parent's table at spawn time"
REPORTED = "reported by the fork child just before exec"
AFTER_PREEXEC = "observed in the child after preexec_fn"

RECORD_SUFFIX = ".json"  # fork-child records; the exec probe's end in .rec
UNREADABLE = "unreadable record"
STDIO = 3  # descriptors below this are the child's stdio, never judged

Key = tuple[int, int, int]


class Spawn(NamedTuple):
    """One reception: a child's exec and the undeclared descriptors its program received.

    ``incomplete`` says why the child's table could not be seen whole; the
    verdict never reads such a reception as clean.
    """

    route: str
    pid: int | None
    argv: tuple[str, ...]
    how: str
    received: tuple[ChildDescriptor, ...]
    hint: str = ""  # what the caller can change: "close_fds=False", ...
    declared: tuple[int, ...] = ()  # pass_fds, file-action targets, kept on purpose
    incomplete: str = ""
    site: str = ""  # where the test started it: "tests/t.py:12 in test_x (subprocess.run)"

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the record directory and the JSON report."""
        d = self._asdict()
        d["argv"] = list(self.argv)
        d["received"] = [r._asdict() for r in self.received]
        d["declared"] = list(self.declared)
        return d

    @classmethod
    def from_record(cls, data: bytes) -> Spawn:
        """Parse a fork child's record file; ValueError if it is malformed."""
        return cls.from_json(json.loads(data))

    @classmethod
    def from_json(cls, data: object) -> Spawn:
        """Validate a record another process wrote; ValueError if it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("record is not an object")
        argv = data.get("argv")
        pid = data.get("pid")
        received = data.get("received")
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ValueError("argv must be a list of strings")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise ValueError("pid must be an integer")
        if not isinstance(received, list):
            raise ValueError("received must be a list")
        descs = tuple(_descriptor_from_json(d) for d in received)
        texts = [data.get(k, "") for k in ("route", "how", "hint", "incomplete", "site")]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("route, how and hint must be strings")
        declared = data.get("declared", [])
        if not (
            isinstance(declared, list)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in declared)
        ):
            raise ValueError("declared must be a list of integers")
        route, how, hint, incomplete, site = (str(t) for t in texts)
        return cls(route, pid, tuple(argv), how, descs, hint, tuple(declared), incomplete, site)


def _descriptor_from_json(data: object) -> ChildDescriptor:
    if not isinstance(data, dict):
        raise ValueError("descriptor is not an object")
    ints = [data.get(k) for k in ("fd", "dev", "ino")]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ints):
        raise ValueError("fd, dev and ino must be non-negative integers")
    texts = [data.get(k) for k in ("kind", "target")]
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("kind and target must be strings")
    opt = [data.get(k) for k in ("inheritable_since", "created_at")]
    if not all(o is None or isinstance(o, str) for o in opt):
        raise ValueError("inheritable_since and created_at must be strings")
    fd, dev, ino = (int(i) for i in ints)  # type: ignore[arg-type]
    return ChildDescriptor(fd, str(texts[0]), str(texts[1]), dev, ino, opt[0], opt[1])


#: origins(fd, dev, ino) -> (where it was created, where it became inheritable), patch mode.
Origins = Callable[[int, int, int], "tuple[str | None, str | None]"]


def describe_entry(entry: FdEntry, origins: Origins | None = None) -> ChildDescriptor:
    """Details for the report, read while the descriptor is still open.

    ``origins(fd, dev, ino)`` gives (where it was created, where it became
    inheritable) when patch mode records them.
    """
    try:
        details = fdtable.describe_entry(entry)
        kind, target = details.kind, str(details)
    except OSError:
        kind, target = entry.kind, "(closed before it could be described)"
    created = since = None
    if origins is not None:
        created, since = origins(entry.fd, entry.dev, entry.ino)
    return ChildDescriptor(entry.fd, kind, target, entry.dev, entry.ino, since, created)


def read_child_table(pid: int) -> dict[int, tuple[int, int]] | None:
    """fd -> (dev, ino) of a live child, or None when it cannot be read whole.

    Best effort: a process that already exited has an empty or partial
    /proc/<pid>/fd (proc(5)), so a zombie or vanished child gives None.
    """
    base = f"/proc/{pid}"
    table = {}
    try:
        for name in os.listdir(f"{base}/fd"):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(f"{base}/fd/{name}")
                table[int(name)] = (st.st_dev, st.st_ino)
        with open(f"{base}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in (b"Z", b"X", b"x") else table


def alive(pid: int) -> bool:
    """Whether pid still exists (a zombie does): kill(2) with signal 0."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def kept_on_purpose(at_fork: FdTable | None, now: FdTable) -> set[int]:
    """Descriptors a fork child holds inheritable on purpose at exec.

    A child that cleaned up (closed or replaced a descriptor that was
    inheritable at fork) kept the rest on purpose, as _posixsubprocess keeps
    pass_fds; one made inheritable or opened after the fork was meant for
    this exec.
    """
    if at_fork is None:
        return set()
    before = {e.fd: e for e in at_fork.inheritable() if e.fd >= STDIO}
    held = {e.fd: e for e in now.inheritable()}
    cleaned = any(fd not in held or held[fd].identity != e.identity for fd, e in before.items())
    return {
        fd
        for fd, e in held.items()
        if cleaned or fd not in before or before[fd].identity != e.identity
    }


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


@functools.cache
def _stdlib() -> tuple[str, ...]:
    """The stdlib folders; sysconfig.get_paths() costs more than the rest of
    this module's import, so it waits for the first call site."""
    import sysconfig

    return tuple({os.path.join(sysconfig.get_paths()[k], "") for k in ("stdlib", "platstdlib")})


# site-packages may lie inside the stdlib folder; what is installed there is not stdlib.
@functools.cache
def _installed() -> re.Pattern[str]:
    """Compiled at the first call site, not at import: most runs never need it."""
    return re.compile(r"[/\\](site|dist)-packages[/\\]")


_FRAMES = 40  # a spawn is rarely deeper than this below the code that asked for it


def call_site(
    route: str,
    depth: int = 2,
    root: str | None = None,
    frames: dict[str, CallFrame] | None = None,
) -> str:
    """Where the caller's code started a child: ``tests/t.py:12 in test_x (subprocess.run)``.

    The first frame outside the standard library, this package and the
    installed packages is the caller's (a wrapper such as coverage's patched
    ``os.execv`` is skipped); without one, the first installed package's.  The
    outermost standard-library function below it is the API it used
    (``subprocess.run``, ``os.spawnv``); without one, ``route``.  Paths are
    shown relative to ``root`` (the rootdir) when they lie below it.

    With ``frames``, the caller's frame is kept there under the site's text,
    so that a failure about this child can be raised *in* it (:func:`traceback_at`).
    """
    frame: Any = sys._getframe(depth)
    api: Any = None  # the outermost standard-library frame so far: named only once found
    library = None  # the first installed package's frame, if no project frame comes
    for _ in range(_FRAMES):
        if frame is None:
            break
        name = frame.f_code.co_filename
        if name.startswith(_PACKAGE):
            pass
        elif name.startswith("<frozen "):  # a frozen stdlib module: "<frozen os>"
            api = frame
        elif _installed().search(name):
            library = library or (name, frame.f_lineno, frame.f_code.co_name, api)
        elif name.startswith(_stdlib()):
            api = frame
        else:
            site = _site(name, frame.f_lineno, frame.f_code.co_name, _api(api, route), root)
            if frames is not None:
                frames.setdefault(site, CallFrame(frame, frame.f_lasti, frame.f_lineno))
            return site
        frame = frame.f_back
    if library is None:
        return _api(api, route)
    name, line, function, api = library
    return _site(name, line, function, _api(api, route), root)


def _api(frame: Any, route: str) -> str:
    """The standard-library function a frame runs, ``subprocess.run``; route without one."""
    if frame is None:
        return route
    name = frame.f_code.co_filename
    module = name[8:-1] if name.startswith("<frozen ") else _stdlib_module(name)
    return f"{module}.{_function(frame)}"


class CallFrame(NamedTuple):
    """The caller's frame at the moment it started a child, and where it was."""

    frame: types.FrameType
    lasti: int
    lineno: int


def traceback_at(at: CallFrame) -> types.TracebackType:
    """A traceback that ends in the test's own frame, at the line that started the child.

    An exception raised with it ends its traceback there, so ``--pdb`` (which
    opens the last frame) stops in the test with its locals, not in this
    plugin, whose hooks run after the test returned.
    """
    return types.TracebackType(None, at.frame, at.lasti, at.lineno)


def _site(name: str, line: int, function: str, api: str, root: str | None) -> str:
    return f"{_shown_path(name, root)}:{line} in {function} ({api})"


def _function(frame: Any) -> str:
    """A frame's function as its caller wrote it: ``Popen``, not ``Popen.__init__``."""
    code = frame.f_code
    name = str(getattr(code, "co_qualname", code.co_name))  # co_qualname: Python 3.11
    if name == "__init__":
        owner = frame.f_locals.get("self")
        name = type(owner).__name__ if owner is not None else name
    return name.removesuffix(".__init__") if hasattr(str, "removesuffix") else name


@functools.lru_cache(maxsize=256)
def _stdlib_module(name: str) -> str:
    """``subprocess`` for the stdlib's subprocess.py (cached: os.path.relpath costs ~50 k
    instructions, and the same few files start every child)."""
    root = next(root for root in _stdlib() if name.startswith(root))
    return os.path.splitext(os.path.relpath(name, root))[0].replace(os.sep, ".")


def _shown_path(name: str, root: str | None) -> str:
    """A path relative to root (or the working directory) when it lies below it."""
    if root is not None and os.path.isabs(root) and os.path.isabs(name):
        return _shown_below(name, root)  # the answer cannot depend on the working directory
    return _relative_if_below(name, root or os.curdir)


@functools.lru_cache(maxsize=256)
def _shown_below(name: str, root: str) -> str:
    """_relative_if_below, cached: os.path.relpath costs ~50 k instructions."""
    return _relative_if_below(name, root)


def _relative_if_below(name: str, root: str) -> str:
    try:
        rel = os.path.relpath(name, root)
    except ValueError:  # another drive on Windows
        return name
    return name if rel.startswith("..") else rel


def argv_of(argv: Iterable[object]) -> tuple[str, ...]:
    try:
        return tuple(os.fsdecode(a) if isinstance(a, (str, bytes)) else str(a) for a in argv)
    except TypeError:
        return (str(argv),)


def write_record(directory: str, spawn: Spawn) -> None:
    """Write one fork-child record atomically; a child must never fail because of us."""
    with contextlib.suppress(ValueError, TypeError):
        recorddir.write(directory, json.dumps(spawn.to_json()).encode(), RECORD_SUFFIX)


def load_record(path: str) -> Spawn:
    """Read and remove one record; garbage becomes a spawn that says so."""
    try:
        return Spawn.from_record(recorddir.take_file(path))
    except (OSError, ValueError, RecursionError) as exc:  # RecordError is a ValueError
        return Spawn(UNREADABLE, None, (os.path.basename(path),), str(exc), ())
