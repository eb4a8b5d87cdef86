"""Child tracking on Windows: every child a test starts, and which handles it received.

A Windows child receives handles, by value, from ``CreateProcess``: every
inheritable one when ``bInheritHandles`` is true, only those of a
``PROC_THREAD_ATTRIBUTE_HANDLE_LIST`` when the call carries one, none
otherwise (:mod:`pytest_noinherit.windows` holds these rules).  Two routes
reach it from Python, and the tracker sits on both:

* ``_winapi.CreateProcess``, which ``subprocess.Popen``, ``multiprocessing``
  and ``asyncio`` all call: its arguments say what the child is given, and
  the child is started suspended so that its handle table can be read before
  it runs a single instruction (observed, not predicted), then resumed;
* the CRT (``os.system``, ``os.spawn*``, ``os.exec*``), which inherits every
  inheritable handle: seen through audit events, predicted from the table.

The result is the same :class:`~pytest_noinherit.spawns.Spawn` the POSIX
tracker makes, so the verdict, allowances and reports are shared; only the
numbers are handle values (:data:`pytest_noinherit.fdtable.UNIT`).

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any, Callable, Protocol

from pytest_noinherit import fdtable, windows
from pytest_noinherit.fdtable import FdTable
from pytest_noinherit.receptions import OBSERVED, PREDICTED, Spawn, argv_of
from pytest_noinherit.spawns import SpawnTracker, _audit

#: The ``hint`` of each route: what the caller can change (findings.fix_for).
POPEN_HINT = "close_fds=False"
CREATE_PROCESS_HINT = "bInheritHandles=True"
CRT_HINT = "the CRT inherits every inheritable handle"


class WindowsApi(Protocol):
    """The three calls the tracker needs beyond the handle view, as a seam for tests."""

    def child_handles(self, pid: int) -> set[int]:
        """The handle values process ``pid`` holds; OSError when it cannot be read."""

    def resume_thread(self, thread: int) -> None:
        """``ResumeThread``; OSError when it fails."""

    def terminate(self, process: int) -> None:
        """``TerminateProcess(process, 1)``."""


class NativeWindowsApi:  # pragma: windows only
    """:class:`WindowsApi` on the native core and ``_winapi``: Windows only."""

    def __init__(self) -> None:
        from pytest_noinherit import native

        self._native: Any = native

    def child_handles(self, pid: int) -> set[int]:
        return {handle for handle, _attributes in self._native.process_handles(pid)}

    def resume_thread(self, thread: int) -> None:
        self._native.resume_thread(thread)

    def terminate(self, process: int) -> None:
        import _winapi

        getattr(_winapi, "TerminateProcess")(process, 1)  # noqa: B009  # typeshed: win32 only


class WindowsSpawnTracker(SpawnTracker):
    """:class:`SpawnTracker` for ``CreateProcess`` and the CRT's spawns."""

    def __init__(
        self,
        baseline: set[tuple[int, int, int]],
        record_dir: str,
        api: WindowsApi | None = None,
    ) -> None:
        super().__init__(baseline, record_dir)
        self.api: WindowsApi = api if api is not None else NativeWindowsApi()

    def install(self, winapi: Any = None) -> None:
        """Wrap ``Popen._execute_child`` (for the route's name) and ``_winapi.CreateProcess``."""
        import subprocess

        if winapi is None:
            import _winapi as winapi  # type: ignore[import-not-found,no-redef,unused-ignore]
        self._wrap(subprocess.Popen, "_execute_child", self._wrap_popen)
        self._wrap(winapi, "CreateProcess", self._wrap_create_process)
        _audit.activate(self)

    # -- wrappers ---------------------------------------------------------------

    def _wrap_popen(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import inspect

        i_close = list(inspect.signature(original).parameters).index("close_fds")

        def _execute_child(popen: Any, *args: Any, **kwargs: Any) -> Any:
            full = (popen, *args)
            close_fds = full[i_close] if len(full) > i_close else kwargs.get("close_fds", True)
            # Popen turns close_fds into CreateProcess's arguments itself
            # (windows.popen_inherits); the wrapper below judges those, and
            # only needs the route's name and what the caller passed.
            outer = getattr(self._local, "route", None)
            self._local.route = ("subprocess.Popen", POPEN_HINT if not close_fds else "")
            try:
                return original(popen, *args, **kwargs)
            finally:
                self._local.route = outer

        return _execute_child

    def _wrap_create_process(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def CreateProcess(*args: Any) -> Any:  # the name it stands for
            # (application_name, command_line, proc_attrs, thread_attrs,
            #  inherit_handles, creation_flags, env_mapping, current_directory,
            #  startup_info), positional only, as _winapi takes them.
            with self._spawning() as outer:
                if not outer or len(args) != 9 or not args[4]:
                    # bInheritHandles=FALSE: the child receives no handle at all.
                    return original(*args)
                route, hint = getattr(self._local, "route", None) or (
                    "_winapi.CreateProcess",
                    CREATE_PROCESS_HINT,
                )
                rules = windows.create_process_inherits(args[4], args[8], hint)
                if rules.handle_list is not None:
                    # The child gets exactly the listed handles, all declared:
                    # Popen's usual call (pipes with close_fds=True).
                    return original(*args)
                table = fdtable.snapshot()
                flags = int(args[5] or 0)
                ours = not flags & windows.CREATE_SUSPENDED
                result = original(*args[:5], flags | windows.CREATE_SUSPENDED, *args[6:])
                process, thread, pid = result[0], result[1], int(result[2])
                try:
                    held = self.api.child_handles(pid)
                except OSError:
                    held = None  # judged from the prediction instead
                finally:
                    if ours:
                        self._resume(process, thread, pid)
            self._record_windows_child(route, pid, [args[1] or args[0]], table, rules, held)
            return result

        return CreateProcess

    def _resume(self, process: int, thread: int, pid: int) -> None:
        """Let the child run; one that cannot be resumed must not hang its test."""
        try:
            self.api.resume_thread(thread)
        except OSError as exc:
            self.api.terminate(process)
            raise OSError(
                exc.errno, f"noinherit: could not resume child pid {pid}, terminated it: {exc}"
            ) from exc

    # -- what a child receives ------------------------------------------------

    def _record_windows_child(
        self,
        route: str,
        pid: int | None,
        argv: Iterable[object],
        table: FdTable,
        rules: windows.Inheritance,
        held: set[int] | None,
    ) -> None:
        """The undeclared handles the child received, observed when its table was read."""
        inheritable = {e.fd for e in table if e.inheritable}
        try:
            given = rules.child_handles(inheritable)
        except ValueError:  # a listed handle was not inheritable, yet CreateProcess took it
            given = set(rules.handle_list or ()) & inheritable
        how = PREDICTED
        if held is not None:
            # The child was suspended when read: what it holds is what it got.
            given &= held
            how = OBSERVED
        candidates = self._undeclared((e for e in table if e.fd in given), rules.declared)
        if candidates:
            descs = tuple(map(self.describe, candidates))
            self._add(Spawn(route, pid, argv_of(argv), how, descs, rules.hint))

    # -- audit events -----------------------------------------------------------

    def on_audit(self, event: str, args: tuple[Any, ...]) -> None:
        """The CRT's spawns: every inheritable handle goes to the child."""
        if event == "os.system":
            shell = os.environ.get("COMSPEC", "cmd.exe")
            argv: list[object] = [shell, "/c", args[0]]
        elif event == "os.spawn":
            argv = list(args[2]) if len(args) > 2 and args[2] is not None else [args[1]]
        elif event == "os.exec":
            argv = list(args[1]) if len(args) > 1 and args[1] is not None else [args[0]]
        else:
            return
        rules = dataclasses.replace(windows.crt_spawn_inherits(), hint=CRT_HINT)
        self._record_windows_child(event, None, argv, fdtable.snapshot(), rules, None)
