"""Child tracking: every process a test starts, and which descriptors it received.

Three sources feed one list of :class:`Spawn` records:

* wrappers around the spawn functions whose audit events lack what the verdict
  needs (``close_fds``/``pass_fds``, posix_spawn file actions): ``Popen``,
  ``os.posix_spawn[p]`` and ``_posixsubprocess.fork_exec``;
* an audit hook for ``os.system`` (the child exits before it returns, so the
  parent's table is the only witness) and for fork+exec: the hook runs in
  the fork child just before ``exec`` and writes what that child holds to a
  private record directory;
* records other processes write into that directory (the exec probe).

A spawn lists only the *undeclared* descriptors the child received: stdio,
``pass_fds``, file-action targets, descriptors a fork child kept through its
own clean-up and the session baseline are declared by construction.
Allowances are the caller's business (see monitor.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from pytest_noinherit import fdtable, probe
from pytest_noinherit.allowances import ChildDescriptor
from pytest_noinherit.fdtable import FdEntry, FdTable

OBSERVED = "observed in the child"
PROBED = "observed by the exec probe"
PREDICTED = "predicted from the parent's table at spawn time"
REPORTED = "reported by the fork child just before exec"

_RECORD_SUFFIX = ".json"
_UNREADABLE = "unreadable record"
_STDIO = 3
_MEMORY = 4096  # children remembered for the probe's verdicts
_CHILD_OF_TEST = "started by the test process"


@dataclasses.dataclass(frozen=True)
class Spawn:
    """One child start and the undeclared descriptors its program received."""

    route: str
    pid: int | None
    argv: tuple[str, ...]
    how: str
    received: tuple[ChildDescriptor, ...]
    hint: str = ""  # what the caller can change: "close_fds=False", ...
    declared: tuple[int, ...] = ()  # kept on purpose (a fork child's clean-up survivors)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the record directory and the JSON report."""
        d = dataclasses.asdict(self)
        d["argv"] = list(self.argv)
        return d

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
        texts = [data.get(k, "") for k in ("route", "how", "hint")]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("route, how and hint must be strings")
        declared = data.get("declared", [])
        if not (
            isinstance(declared, list)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in declared)
        ):
            raise ValueError("declared must be a list of integers")
        return cls(texts[0], pid, tuple(argv), texts[1], descs, texts[2], tuple(declared))


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

    Best effort (platform-facts 3a): a child that already exited shows an
    empty or partial table, so a zombie or vanished child gives None.
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


class SpawnTracker:
    """Collects spawns for whoever drains them; installed for one session."""

    def __init__(self, baseline: set[tuple[int, int, int]], record_dir: str) -> None:
        self.baseline = baseline
        self.record_dir = record_dir
        self.owner_pid = os.getpid()
        self._pending: list[Spawn] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._fork_table: FdTable | None = None
        self._forked = False
        self._restore: list[tuple[object, str, object]] = []
        self.problems: list[str] = []  # internal errors, shown once in the summary
        # With the exec probe on: pid -> descriptors declared for it, for every
        # child Python started (their verdict is already made), and what each
        # recorded process got from the test, to follow grandchildren.
        self.probe_on = False
        self.origins: Origins | None = None  # patch mode's creation records
        self._known: dict[int, frozenset[int]] = {}
        self._lineage: dict[int, _Lineage] = {}

    # -- installation ---------------------------------------------------------

    def install(self) -> None:
        """Wrap the spawn functions and start listening to audit events."""
        import subprocess

        self._wrap(subprocess.Popen, "_execute_child", self._wrap_popen)
        import posix

        for name in ("posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                # The same function under two names: code calls either.
                wrapper = self._wrap(os, name, self._wrap_posix_spawn)
                self._restore.append((posix, name, getattr(posix, name)))
                setattr(posix, name, wrapper)
        with contextlib.suppress(ImportError):
            import _posixsubprocess

            self._wrap(_posixsubprocess, "fork_exec", self._wrap_fork_exec)
        _audit.activate(self)

    def uninstall(self) -> None:
        """Put every wrapped function back; the audit hook goes inert."""
        _audit.deactivate(self)
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()

    def _wrap(self, owner: object, name: str, factory: Callable[[Any], Any]) -> Any:
        original = getattr(owner, name)
        self._restore.append((owner, name, original))
        wrapper: Any = functools.wraps(original)(factory(original))
        if not isinstance(owner, type):
            # A builtin stored as a class attribute does not bind; a Python
            # function would, so module functions get a non-binding callable.
            wrapper = _Builtinlike(wrapper)
        setattr(owner, name, wrapper)
        return wrapper

    # -- draining -------------------------------------------------------------

    def drain(self) -> list[Spawn]:
        """Every spawn seen since the last drain, records from children included.

        A descriptor is reported once, for the first spawn that lists it, so
        the order matters: the probe's observations of the test's own
        children first (observed beats predicted), then what Python saw, then
        the probe's deeper descendants (a grandchild only repeats its parent).
        """
        if not (self._pending or self._forked or self.probe_on):
            return []  # the common case, every phase of every test: stay cheap
        with self._lock:
            pending, self._pending = self._pending, []
        # Records exist only once some process forked: a fork child may exec
        # long after, so from then on every drain looks.
        forked = self.read_records() if self._forked or self.probe_on else []
        for spawn in forked:
            if spawn.pid is not None:
                self._remember(spawn.pid, spawn.declared)
        probed = self._probe_spawns() if self.probe_on else []
        children = [s for s in probed if s.hint == _CHILD_OF_TEST]
        deeper = [s for s in probed if s.hint != _CHILD_OF_TEST]
        return children + forked + pending + deeper

    def _remember(self, pid: int | None, declared: Iterable[int]) -> None:
        """A child Python started: the probe must not judge it a second time."""
        if pid is None or not self.probe_on:
            return
        if len(self._known) > _MEMORY:
            self._known.pop(next(iter(self._known)))
        self._known[pid] = frozenset(declared)

    def _probe_spawns(self) -> list[Spawn]:
        """Judge the exec probe's records: which descriptors came from the test.

        A descriptor reaches a process from its parent program: it came from
        the test if the parent's own record shows the same open file there,
        or if the parent is the test process itself.  One the chain does not
        lead back to (a shell opened it itself) is not the test's leak.
        """
        spawns = []
        owner_keys: set[tuple[int, int, int]] | None = None
        for rec in probe.read_records(self.record_dir):
            if isinstance(rec, probe.RecordError):
                self.problems.append(f"exec probe record ignored: {rec}")
                continue
            fds = {
                f.fd: f
                for f in rec.fds
                if f.fd >= _STDIO
                and f.fd_flags >= 0  # closed while the probe looked
                and (f.fd, f.dev, f.ino) not in self.baseline
            }
            earlier = self._lineage.get(rec.pid)  # the same process exec'd again
            parent = earlier or self._lineage.get(rec.ppid)
            known = self._known.pop(rec.pid, None) if earlier is None else None
            if known is not None:  # started by Python: already judged
                from_test, declared = set(fds), known
            elif parent is not None:
                from_test = {n for n, f in fds.items() if parent.held.get(n) == (f.dev, f.ino)}
                declared = parent.declared
            elif rec.ppid == self.owner_pid:
                from_test, declared = set(fds), frozenset()
            else:  # an ancestor without a record: trust only what the test still holds
                if owner_keys is None:
                    owner_keys = fdtable.snapshot().keys()
                from_test = {n for n, f in fds.items() if (n, f.dev, f.ino) in owner_keys}
                declared = frozenset()
            if len(self._lineage) > _MEMORY:
                self._lineage.pop(next(iter(self._lineage)))
            self._lineage[rec.pid] = _Lineage(
                {n: (fds[n].dev, fds[n].ino) for n in from_test}, declared
            )
            received = sorted(from_test - declared) if known is None else []
            if received:
                descs = tuple(self._probe_descriptor(fds[n]) for n in received)
                relation = _CHILD_OF_TEST if rec.ppid == self.owner_pid else f"pid {rec.ppid}"
                spawns.append(Spawn("exec probe", rec.pid, rec.argv, PROBED, descs, relation))
        return spawns

    def read_records(self) -> list[Spawn]:
        """Consume the record files other processes left; malformed ones become spawns too."""
        spawns: list[Spawn] = []
        try:
            entries = list(os.scandir(self.record_dir))
        except OSError:
            return spawns
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.name.endswith(_RECORD_SUFFIX):
                continue
            spawn = _load_record(entry.path)
            if spawn.route == _UNREADABLE:
                self.problems.append(f"fork child record ignored: {spawn.argv[0]}: {spawn.how}")
            else:
                spawns.append(spawn)
        return spawns

    def _add(self, spawn: Spawn) -> None:
        if os.getpid() != self.owner_pid:
            # A fork child spawning on its own: its memory is not ours.
            _write_record(self.record_dir, spawn)
            return
        with self._lock:
            self._pending.append(spawn)

    # -- what a child receives ------------------------------------------------

    def describe(self, entry: FdEntry) -> ChildDescriptor:
        """describe_entry with this session's creation records."""
        return describe_entry(entry, self.origins)

    def _probe_descriptor(self, f: probe.ProbeFd) -> ChildDescriptor:
        kind = fdtable.refined_kind(fdtable.kind_of(f.mode), f.target)
        created = since = None
        if self.origins is not None:
            created, since = self.origins(f.fd, f.dev, f.ino)
        return ChildDescriptor(f.fd, kind, f.target, f.dev, f.ino, since, created)

    def _undeclared(
        self, entries: Iterable[FdEntry], declared: Iterable[int] = ()
    ) -> list[FdEntry]:
        kept = set(declared)
        return [
            e
            for e in entries
            if e.inheritable
            and e.fd >= _STDIO
            and e.fd not in kept
            and (e.fd, e.dev, e.ino) not in self.baseline
        ]

    def _record_child(
        self,
        route: str,
        pid: int | None,
        argv: Iterable[object],
        candidates: list[FdEntry],
        hint: str,
    ) -> None:
        """Observe the child if it still lives, then describe what it received."""
        how = PREDICTED
        if pid is not None and candidates:
            # The prediction is exact for these routes; the child's table can
            # only confirm it.  A child already tearing down its table (it
            # exits at once) or closing the descriptor itself still received it.
            held = read_child_table(pid)
            if held is not None and all(held.get(e.fd) == e.identity for e in candidates):
                how = OBSERVED
        if candidates:
            self._add(
                Spawn(route, pid, _argv(argv), how, tuple(map(self.describe, candidates)), hint)
            )

    # -- wrappers ---------------------------------------------------------------

    @contextlib.contextmanager
    def _spawning(self) -> Iterator[bool]:
        """True when this tracker should inspect the spawn: it is the innermost
        session's, and this is the outermost spawn call of the thread
        (subprocess may call posix_spawn)."""
        busy = getattr(self._local, "busy", False)
        self._local.busy = True
        try:
            yield _audit.current is self and not busy
        finally:
            self._local.busy = busy

    def _wrap_popen(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import inspect

        params = list(inspect.signature(original).parameters)
        i_close, i_pass = params.index("close_fds"), params.index("pass_fds")

        def _execute_child(popen: Any, *args: Any, **kwargs: Any) -> Any:
            full = (popen, *args)
            close_fds = full[i_close] if len(full) > i_close else kwargs.get("close_fds", True)
            pass_fds = full[i_pass] if len(full) > i_pass else kwargs.get("pass_fds", ())
            with self._spawning() as outer:
                # close_fds=True hands the child stdio and pass_fds only: nothing to check.
                table = fdtable.snapshot() if outer and not close_fds else None
                result = original(popen, *args, **kwargs)
            if outer:
                self._remember(popen.pid, pass_fds)
            if table is not None:
                argv = popen.args if not isinstance(popen.args, (str, bytes)) else [popen.args]
                self._record_child(
                    "subprocess.Popen",
                    popen.pid,
                    argv,
                    self._undeclared(table, pass_fds),
                    "close_fds=False",
                )
            return result

        return _execute_child

    def _wrap_posix_spawn(self, original: Callable[..., Any]) -> Callable[..., Any]:
        route = f"os.{original.__name__}"

        def posix_spawn(path: Any, argv: Any, env: Any, *args: Any, **kwargs: Any) -> Any:
            with self._spawning() as outer:
                table = fdtable.snapshot() if outer else None
                pid = original(path, argv, env, *args, **kwargs)
            if table is not None:
                actions = kwargs.get("file_actions") or ()
                candidates = _after_file_actions(table, actions)
                self._remember(pid, _action_targets(actions))
                self._record_child(
                    route, pid, argv, self._undeclared(candidates), "no file actions close it"
                )
            return pid

        return posix_spawn

    def _wrap_fork_exec(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def fork_exec(*args: Any, **kwargs: Any) -> Any:
            close_fds, keep = (bool(args[2]), args[3]) if len(args) > 3 else (True, ())
            with self._spawning() as outer:
                table = fdtable.snapshot() if outer and not close_fds else None
                pid = original(*args, **kwargs)
            if outer:
                self._remember(pid, keep or ())
            if table is not None:
                self._record_child(
                    "_posixsubprocess.fork_exec",
                    pid,
                    args[0] or (),
                    self._undeclared(table, keep),
                    "close_fds=False",
                )
            return pid

        return fork_exec

    # -- audit events -----------------------------------------------------------

    def on_audit(self, event: str, args: tuple[Any, ...]) -> None:
        """Called by the process-wide audit hook while this tracker is active."""
        if event == "os.system":
            cmd = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else str(args[0])
            candidates = self._undeclared(fdtable.snapshot())
            self._record_child("os.system", None, ["/bin/sh", "-c", cmd], candidates, "")
        elif event in ("os.fork", "os.forkpty"):
            # The child inherits this copy and compares it with its table at exec.
            self._fork_table = fdtable.snapshot()
            self._forked = True
        elif event == "os.exec" and os.getpid() != self.owner_pid:
            self._forked = True
            self._report_exec(args)

    def _report_exec(self, args: tuple[Any, ...]) -> None:
        """In a fork child about to exec: write what the new program will hold."""
        table = fdtable.snapshot()
        at_fork = self._fork_table
        declared: list[int] = []
        if at_fork is not None:
            before = {e.fd: e for e in at_fork.inheritable() if e.fd >= _STDIO}
            now = {e.fd: e for e in table.inheritable()}
            cleaned = any(
                fd not in now or now[fd].identity != e.identity for fd, e in before.items()
            )
            # A child that cleaned up kept the rest on purpose (as _posixsubprocess
            # keeps pass_fds); one that made a descriptor inheritable after fork
            # meant it for this exec.
            declared = [
                fd
                for fd, e in now.items()
                if cleaned or fd not in before or before[fd].identity != e.identity
            ]
        received = self._undeclared(table, declared)
        if not received and not self.probe_on:
            return  # with the probe on, the parent must hear of every fork child
        argv = args[1] if len(args) > 1 else ()
        spawn = Spawn(
            "fork+exec",
            os.getpid(),
            _argv(argv),
            REPORTED,
            tuple(map(self.describe, received)),
            "fork+exec without closing it",
            tuple(declared),
        )
        _write_record(self.record_dir, spawn)


def _after_file_actions(table: FdTable, actions: Iterable[Any]) -> list[FdEntry]:
    """The parent's entries that survive posix_spawn's file actions, in order.

    OPEN and DUP2 targets are declared by the caller, so they are dropped;
    CLOSE and CLOSEFROM remove descriptors.
    """
    alive = {e.fd: e for e in table}
    closefrom = getattr(os, "POSIX_SPAWN_CLOSEFROM", None)
    for action in actions:
        with contextlib.suppress(TypeError, IndexError, ValueError):
            tag, fd = action[0], int(action[1])
            if tag in (os.POSIX_SPAWN_OPEN, os.POSIX_SPAWN_CLOSE):
                alive.pop(fd, None)
            elif tag == os.POSIX_SPAWN_DUP2:
                alive.pop(int(action[2]), None)
            elif closefrom is not None and tag == closefrom:
                alive = {n: e for n, e in alive.items() if n < fd}
    return list(alive.values())


def _action_targets(actions: Iterable[Any]) -> set[int]:
    """Descriptors posix_spawn's OPEN and DUP2 actions create in the child."""
    targets = set()
    for action in actions:
        with contextlib.suppress(TypeError, IndexError, ValueError):
            if action[0] == os.POSIX_SPAWN_OPEN:
                targets.add(int(action[1]))
            elif action[0] == os.POSIX_SPAWN_DUP2:
                targets.add(int(action[2]))
    return targets


@dataclasses.dataclass(frozen=True)
class _Lineage:
    """What one recorded process got from the test (fd -> identity), and its declarations."""

    held: dict[int, tuple[int, int]]
    declared: frozenset[int]


def _argv(argv: Iterable[object]) -> tuple[str, ...]:
    try:
        return tuple(os.fsdecode(a) if isinstance(a, (str, bytes)) else str(a) for a in argv)
    except TypeError:
        return (str(argv),)


def _write_record(directory: str, spawn: Spawn) -> None:
    """Write one record atomically; a child must never fail because of us."""
    name = f"{os.getpid()}-{time.monotonic_ns()}{_RECORD_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(OSError, ValueError, TypeError):
        fd = os.open(os.path.join(directory, name), flags, 0o600)
        try:
            os.write(fd, json.dumps(spawn.to_json()).encode())
        finally:
            os.close(fd)


def _load_record(path: str) -> Spawn:
    """Read and remove one record; garbage becomes a spawn that says so."""
    try:
        return Spawn.from_json(json.loads(probe.take_file(path)))
    except (OSError, ValueError, RecursionError) as exc:  # RecordError is a ValueError
        return Spawn(_UNREADABLE, None, (os.path.basename(path),), str(exc), ())


class _Builtinlike:
    """A callable without __get__, so it behaves like the builtin it stands for."""

    __slots__ = ("__dict__", "_call")

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call
        self.__dict__.update(getattr(call, "__dict__", {}))
        for attr in ("__name__", "__qualname__", "__doc__", "__module__", "__wrapped__"):
            if hasattr(call, attr):
                self.__dict__[attr] = getattr(call, attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self.__dict__.get("__wrapped__", self._call))


class _AuditDispatch:
    """The one audit hook of this process.

    Audit hooks cannot be removed (PEP 578), so a single hook is added the
    first time a tracker activates and does nothing while none is active.
    Sessions nest (pytester's in-process runs): the innermost tracker acts.
    """

    # PEP 578 runs hooks untraced unless they say otherwise: let coverage and
    # debuggers see this one.
    __cantrace__ = True

    def __init__(self) -> None:
        self.stack: list[SpawnTracker] = []
        self.added = False

    @property
    def current(self) -> SpawnTracker | None:
        return self.stack[-1] if self.stack else None

    def activate(self, tracker: SpawnTracker) -> None:
        self.stack.append(tracker)
        if not self.added:
            sys.addaudithook(self)
            self.added = True

    def deactivate(self, tracker: SpawnTracker) -> None:
        if tracker in self.stack:
            self.stack.remove(tracker)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.stack or not event.startswith("os."):
            return
        tracker = self.stack[-1]
        try:
            tracker.on_audit(event, args)
        except Exception as exc:  # never break the program that spawns
            tracker.problems.append(f"{event}: {exc!r}")


_audit = _AuditDispatch()
