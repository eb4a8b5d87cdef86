"""Child tracking: every process a test starts, and which descriptors it received.

Each source below only produces receptions (:class:`Spawn`, one per child
exec); :meth:`SpawnTracker.drain` merges the copies of one child into one
reception and monitor.py hands them to the verdict (verdict.py):

* wrappers around the spawn functions whose audit events lack what the verdict
  needs (``close_fds``/``pass_fds``, ``preexec_fn``, posix_spawn file
  actions): ``Popen``, ``os.posix_spawn[p]`` and ``_posixsubprocess.fork_exec``;
* an audit hook for ``os.system`` (the child exits before it returns, so the
  parent's table is the only witness) and for fork+exec: the hook runs in
  the fork child just before ``exec`` and writes what that child holds to a
  private record directory;
* records other processes write into that directory (the exec probe).

Where a child's own table was seen (the probe's record right after exec, a
``preexec_fn`` child's table just before it, a live child's ``/proc``
entries), it decides over the prediction from the parent's table.

A spawn lists only the *undeclared* descriptors the child received: stdio,
``pass_fds``, file-action targets, descriptors a fork child kept through its
own clean-up and the session baseline are declared by construction.
Allowances are the verdict's business.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable

from pytest_noinherit import fdtable, recorddir
from pytest_noinherit.allowances import ChildDescriptor
from pytest_noinherit.fdtable import FdEntry, FdTable
from pytest_noinherit.receptions import (
    AFTER_PREEXEC,
    OBSERVED,
    PREDICTED,
    PROBED,
    RECORD_SUFFIX,
    REPORTED,
    STDIO,
    CallFrame,
    Key,
    Origins,
    Spawn,
    argv_of,
    call_site,
    describe_entry,
    kept_on_purpose,
    read_child_table,
    write_record,
)
from pytest_noinherit.recorddir import RecordDirectory

if TYPE_CHECKING:
    from pytest_noinherit.lineage import ProbeLineage

__all__ = [
    "AFTER_PREEXEC",
    "OBSERVED",
    "PREDICTED",
    "PROBED",
    "REPORTED",
    "Spawn",
    "SpawnTracker",
    "describe_entry",
    "read_child_table",
]


class SpawnTracker:
    """Collects receptions for whoever drains them; installed for one session."""

    def __init__(self, baseline: set[Key], records: str | RecordDirectory) -> None:
        self.baseline = baseline
        # Read through the directory opened once; fork children write by path.
        self.records = records
        self.record_dir = records.path if isinstance(records, RecordDirectory) else records
        self.owner_pid = os.getpid()
        self._pending: list[Spawn] = []
        self._lock = threading.Lock()
        self._local = _Busy()
        self._fork_table: FdTable | None = None
        self._forked = False
        self._restore: list[tuple[object, str, object]] = []
        self.problems: list[str] = []  # internal errors, shown once in the summary
        self.probe_on = False
        self.origins: Origins | None = None  # patch mode's creation records
        self._lineage: ProbeLineage | None = None  # only with the probe or the kernel observer
        self.site_root: str | None = None  # call sites are shown relative to it
        # The frames of the call sites of this phase's receiving children, by site.
        self.site_frames: dict[str, CallFrame] = {}
        self._failed_execs: set[int] = set()  # children whose exec raised in the parent

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

    def lineage(self) -> ProbeLineage:
        """The matching of exec records with the children Python started."""
        if self._lineage is None:
            from pytest_noinherit.lineage import ProbeLineage

            self._lineage = ProbeLineage(self.records, self.owner_pid, self.baseline, self.problems)
        return self._lineage

    def quiet(self) -> bool:
        """Nothing to drain and no call-site frame kept: every phase's common case."""
        return not (self._pending or self._forked or self.probe_on or self.site_frames)

    def drain(self) -> list[Spawn]:
        """Every reception since the last drain, one per child exec.

        What Python knew of a child (route, argv, pass_fds) and what was seen
        of it (a fork child's record, the probe's record) are merged by pid:
        the table seen in the child decides which descriptors it received.
        """
        if not (self._pending or self._forked or self.probe_on):
            return []  # the common case
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending and isinstance(self.records, RecordDirectory) and self.records.empty():
            return []  # no child since the last drain, no record either: nothing to merge
        # Records exist only once some process forked: a fork child may exec
        # long after, so from then on every drain looks.
        told = pending + (self.read_records() if self._forked or self.probe_on else [])
        if self._failed_execs:
            failed, self._failed_execs = self._failed_execs, set()
            told = [s for s in told if s.pid not in failed]
        if not self.probe_on:
            return [s for s in told if s.received or s.incomplete]
        return self.lineage().drain(told, self.origins)

    def read_records(self) -> list[Spawn]:
        """Consume the record files fork children left; malformed ones become problems."""
        spawns: list[Spawn] = []
        for item in recorddir.consume(self.records, RECORD_SUFFIX, Spawn.from_record):
            if isinstance(item, Spawn):
                spawns.append(item)
            else:
                self.problems.append(f"fork child record ignored: {item}")
        return spawns

    def sweep(self) -> None:
        """At the end: take whatever is left in the record directory, saying what it was."""
        self.problems += [f"record directory: {e}" for e in recorddir.sweep(self.records, ())]

    def _add(self, spawn: Spawn) -> None:
        if os.getpid() != self.owner_pid:
            # A fork child spawning on its own: its memory is not ours.
            write_record(self.record_dir, spawn)
            return
        with self._lock:
            self._pending.append(spawn)

    # -- what a child receives ------------------------------------------------

    def describe(self, entry: FdEntry) -> ChildDescriptor:
        """describe_entry with this session's creation records."""
        return describe_entry(entry, self.origins)

    def _undeclared(
        self, entries: Iterable[FdEntry], declared: Iterable[int] = ()
    ) -> list[FdEntry]:
        kept = set(declared)
        return [
            e
            for e in entries
            if e.inheritable
            and e.fd >= STDIO
            and e.fd not in kept
            and (e.fd, e.dev, e.ino) not in self.baseline
        ]

    def _record_child(
        self,
        route: str,
        pid: int | None,
        argv: Iterable[object],
        before: Iterable[FdEntry],
        declared: Iterable[int],
        hint: str,
        after: Iterable[FdEntry] | None = None,
    ) -> None:
        """Work out what the child received, then record it as one reception.

        ``before`` and ``after`` are the parent's table around the spawn (as
        the child would see it: after file actions).  A descriptor in the
        same state in both was inherited whatever the child did since.  One
        that changed in between (another thread made it inheritable, or
        closed it) counts only if the live child's table shows it.  Without
        a readable child table the table before the spawn stands.
        """
        kept = tuple(declared)
        predicted = self._undeclared(before, kept)
        received, how = predicted, PREDICTED
        if after is not None and pid is not None:
            now = {(e.fd, e.identity): e for e in self._undeclared(after, kept)}
            steady = [e for e in predicted if (e.fd, e.identity) in now]
            changed = [e for e in predicted if (e.fd, e.identity) not in now]
            changed += [e for k, e in now.items() if k not in {(p.fd, p.identity) for p in steady}]
            held = read_child_table(pid) if predicted or changed else None
            if held is not None:
                how = OBSERVED
                seen = [e for e in changed if held.get(e.fd) == e.identity]
                received = sorted(steady + seen, key=lambda e: e.fd)
        if received or (self.probe_on and pid is not None):
            descs = tuple(map(self.describe, received))
            # A child that received something may fail the test: keep the frame.
            frames = self.site_frames if received else None
            site = call_site(route, 1, self.site_root, frames)
            self._add(Spawn(route, pid, argv_of(argv), how, descs, hint, kept, site=site))

    # -- wrappers ---------------------------------------------------------------

    def _enter(self) -> bool:
        """Whether this tracker inspects the spawn call starting now: it is the
        innermost session's, and this is the outermost spawn call of the thread
        (subprocess may call posix_spawn).  True marks the thread busy until
        the caller's ``finally`` clears it; False changes nothing.

        Every spawn of the session passes here, most with nothing to check
        (close_fds=True): plain code, not a ``@contextmanager``, keeps that cheap.
        """
        stack = _audit.stack
        if self._local.busy or not stack or stack[-1] is not self:
            return False
        self._local.busy = True
        return True

    @contextlib.contextmanager
    def _spawning(self) -> Iterator[bool]:
        """The test of _enter() as a context manager (the Windows tracker's wrappers)."""
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
        i_preexec = params.index("preexec_fn")

        def _execute_child(popen: Any, *args: Any, **kwargs: Any) -> Any:
            if not self._enter():
                return original(popen, *args, **kwargs)
            try:
                full = [popen, *args]
                close_fds = full[i_close] if len(full) > i_close else kwargs.get("close_fds", True)
                if close_fds and not self.probe_on:
                    # Stdio and pass_fds only reach the child: nothing to check.
                    return original(popen, *args, **kwargs)
                pass_fds = full[i_pass] if len(full) > i_pass else kwargs.get("pass_fds", ())
                preexec = full[i_preexec] if len(full) > i_preexec else kwargs.get("preexec_fn")
                table = None if close_fds else fdtable.snapshot()
                argv = popen.args if not isinstance(popen.args, (str, bytes)) else [popen.args]
                if table is not None and preexec is not None:
                    # The child records itself; a failed exec raises here, and
                    # then its record must not count.
                    witness = _PreexecWitness(self, table, pass_fds, preexec, argv)
                    if len(full) > i_preexec:
                        full[i_preexec] = witness
                    else:
                        kwargs["preexec_fn"] = witness
                    self._forked = True
                    try:
                        return original(*full, **kwargs)
                    except BaseException:
                        if isinstance(getattr(popen, "pid", None), int):
                            self._failed_execs.add(popen.pid)
                        raise
                result = original(popen, *args, **kwargs)
            finally:
                self._local.busy = False
            if table is not None:
                after = fdtable.snapshot()
                self._record_child(
                    "subprocess.Popen", popen.pid, argv, table, pass_fds, "close_fds=False", after
                )
            elif self.probe_on:
                self._record_child("subprocess.Popen", popen.pid, argv, (), pass_fds, "")
            return result

        return _execute_child

    def _wrap_posix_spawn(self, original: Callable[..., Any]) -> Callable[..., Any]:
        route = f"os.{original.__name__}"

        def posix_spawn(path: Any, argv: Any, env: Any, *args: Any, **kwargs: Any) -> Any:
            if not self._enter():
                return original(path, argv, env, *args, **kwargs)
            try:
                table = fdtable.snapshot()
                pid = original(path, argv, env, *args, **kwargs)
            finally:
                self._local.busy = False
            if table is not None:
                actions = kwargs.get("file_actions") or ()
                self._record_child(
                    route,
                    pid,
                    argv,
                    _after_file_actions(table, actions),
                    _action_targets(actions),
                    "no file actions close it",
                    _after_file_actions(fdtable.snapshot(), actions),
                )
            return pid

        return posix_spawn

    def _wrap_fork_exec(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def fork_exec(*args: Any, **kwargs: Any) -> Any:
            if not self._enter():
                return original(*args, **kwargs)
            try:
                close_fds, keep = (bool(args[2]), args[3]) if len(args) > 3 else (True, ())
                table = None if close_fds else fdtable.snapshot()
                pid = original(*args, **kwargs)
            finally:
                self._local.busy = False
            if table is not None:
                self._record_child(
                    "_posixsubprocess.fork_exec",
                    pid,
                    args[0] or (),
                    table,
                    keep or (),
                    "close_fds=False",
                    fdtable.snapshot(),
                )
            elif self.probe_on:
                self._record_child("_posixsubprocess.fork_exec", pid, args[0] or (), (), keep, "")
            return pid

        return fork_exec

    # -- audit events -----------------------------------------------------------

    def on_audit(self, event: str, args: tuple[Any, ...]) -> None:
        """Called by the process-wide audit hook while this tracker is active."""
        if event == "os.system":
            cmd = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else str(args[0])
            table = fdtable.snapshot()
            self._record_child("os.system", None, ["/bin/sh", "-c", cmd], table, (), "")
        elif event in ("os.fork", "os.forkpty"):
            # The child inherits this copy and compares it with its table at exec.
            self._fork_table = fdtable.snapshot()
            self._forked = True
        elif event == "os.exec" and os.getpid() != self.owner_pid:
            self._forked = True
            if _can_exec(args[0]):  # a failed exec (os.execvp tries every PATH entry) is none
                self._report_exec(args)

    def fork_child_reception(
        self, table: FdTable, at_fork: FdTable | None, how: str, kept: Iterable[int] = ()
    ) -> Spawn:
        """In a fork child about to exec: what the new program will hold."""
        declared = sorted(set(kept) | kept_on_purpose(at_fork, table))
        received = self._undeclared(table, declared)
        descs = tuple(map(self.describe, received))
        return Spawn("fork+exec", os.getpid(), (), how, descs, "", tuple(declared))

    def _report_exec(self, args: tuple[Any, ...]) -> None:
        """In a fork child about to exec: write what the new program will hold."""
        spawn = self.fork_child_reception(fdtable.snapshot(), self._fork_table, REPORTED)
        if not spawn.received and not self.probe_on:
            return  # with the probe on, the parent must hear of every fork child
        argv = args[1] if len(args) > 1 else ()
        hint = "fork+exec without closing it"
        spawn = spawn._replace(
            argv=argv_of(argv), hint=hint, site=call_site("os.exec*", 1, self.site_root)
        )
        write_record(self.record_dir, spawn)


class _PreexecWitness:
    """A ``preexec_fn`` that runs the caller's, then records the child's table.

    _posixsubprocess calls preexec_fn last before exec (after pass_fds were
    made inheritable and stdio was set up), and with close_fds=False nothing
    is closed after it: the table it sees is exactly what the program gets.
    The record is written like a fork child's, after the caller's function,
    so a preexec_fn that closes every descriptor cannot lose it.
    """

    def __init__(
        self, tracker: SpawnTracker, at_fork: FdTable, pass_fds: Iterable[int], user: Any, argv: Any
    ) -> None:
        self.tracker = tracker
        self.at_fork = at_fork
        self.pass_fds = tuple(pass_fds)
        self.user = user
        self.argv = argv_of(argv)

    def __call__(self) -> None:
        self.user()
        with contextlib.suppress(Exception):  # the child must never fail because of us
            table = fdtable.snapshot("procfs")  # no helper threads in a fork child
            spawn = self.tracker.fork_child_reception(
                table, self.at_fork, AFTER_PREEXEC, self.pass_fds
            )
            spawn = spawn._replace(
                route="subprocess.Popen",
                argv=self.argv,
                hint="close_fds=False",
                site=call_site("subprocess.Popen", 1, self.tracker.site_root),
            )
            write_record(self.tracker.record_dir, spawn)


def _can_exec(path: object) -> bool:
    """Whether execve(2) of path can succeed: a regular file we may execute."""
    if isinstance(path, int):
        return True  # fexecve(3) of an open descriptor: nothing to look up
    try:
        name = os.fspath(path)  # type: ignore[call-overload]
        return os.access(name, os.X_OK) and stat.S_ISREG(os.stat(name).st_mode)
    except (OSError, TypeError, ValueError):
        return False


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


#: The audit events any tracker acts on (PEP 578 names; os.spawn is Windows'
#: CRT spawn): every other event returns at the first test.
AUDIT_EVENTS = frozenset({"os.system", "os.fork", "os.forkpty", "os.exec", "os.spawn"})


class _Busy(threading.local):
    """Per thread: inside a wrapped spawn call (see SpawnTracker._enter)."""

    busy = False


class _AuditDispatch:
    """The one audit hook of this process.

    Audit hooks cannot be removed (PEP 578), so a single hook is added the
    first time a tracker activates and does nothing while none is active.
    Sessions nest (pytester's in-process runs): the innermost tracker acts.
    CPython calls a hook for every audit event of the process (imports,
    opens, compiles...: about ten per trivial test), so on the native
    backend the filter is C (``_native/core_audit.c``) and calls the Python
    hook for AUDIT_EVENTS only; elsewhere the hook is a plain function, not
    this object, since a function call with one set lookup is the cheapest
    Python can do.
    """

    def __init__(self) -> None:
        self.stack: list[SpawnTracker] = []
        self.python_hook = False  # added with sys.addaudithook: there for good
        self.c_filter = False  # the native core's filter calls _audit_hook

    @property
    def current(self) -> SpawnTracker | None:
        return self.stack[-1] if self.stack else None

    def activate(self, tracker: SpawnTracker) -> None:
        self.stack.append(tracker)
        if not (self.python_hook or self.c_filter):
            self.c_filter = _c_filter()
            if not self.c_filter:
                sys.addaudithook(_audit_hook)
                self.python_hook = True

    def deactivate(self, tracker: SpawnTracker) -> None:
        if tracker in self.stack:
            self.stack.remove(tracker)
        if not self.stack and self.c_filter:
            # The C hook stays, inert.  Holding _audit_hook until shutdown would
            # keep this package's modules alive into the interpreter's final
            # garbage collections, which then walk them (~4 M instructions).
            from pytest_noinherit import native

            native.release_audit_hook()
            self.c_filter = False


def _hook_for(stack: list[SpawnTracker]) -> Callable[[str, tuple[Any, ...]], None]:
    def noinherit_audit_hook(
        event: str, args: tuple[Any, ...], _wanted: frozenset[str] = AUDIT_EVENTS
    ) -> None:
        if event not in _wanted or not stack:
            return
        tracker = stack[-1]
        try:
            tracker.on_audit(event, args)
        except Exception as exc:  # never break the program that spawns
            tracker.problems.append(f"{event}: {exc!r}")

    # PEP 578 runs hooks untraced unless they say otherwise: let coverage and
    # debuggers see this one.
    noinherit_audit_hook.__cantrace__ = True  # type: ignore[attr-defined]
    return noinherit_audit_hook


def _c_filter() -> bool:
    """Put the native core's C filter in front of ``_audit_hook``, where there is one.

    The pure backend keeps the Python hook, as does Windows (native.add_audit_hook).
    """
    if sys.platform == "win32":
        return False
    try:
        if fdtable.backend() != "native":
            return False
    except fdtable.BackendError:
        return False
    from pytest_noinherit import native

    return native.add_audit_hook(__name__, "_audit_hook", AUDIT_EVENTS)


_audit = _AuditDispatch()
#: The hook; the C filter finds it by this name.
_audit_hook = _hook_for(_audit.stack)
