"""The Windows spawn path (winspawns.py), run here against real Linux children.

No Windows CPython runs on this machine (docs/windows.md), so these tests put
``WindowsSpawnTracker`` over a stand-in for ``_winapi.CreateProcess`` that
keeps CreateProcess's inheritance contract with real processes: descriptors
play the handles, ``bInheritHandles`` is ``close_fds=False``, a handle list
is ``pass_fds``, and a "suspended" child is stopped (SIGSTOP) before it execs
its program, so its table is read before it runs and it resumes on SIGCONT.
What they check is the tracker's own logic: which spawns it inspects, the
verdict, observation versus prediction, resuming, and that the result is the
same :class:`Spawn` and the same report fields as on POSIX.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_noinherit import fdtable, findings, spawns, windows
from pytest_noinherit.winspawns import (
    CREATE_PROCESS_HINT,
    CRT_HINT,
    POPEN_HINT,
    WindowsSpawnTracker,
)

BASELINE = fdtable.snapshot()  # at import, before any test opened anything
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc"),
    # The stand-in children receive leaky pipes on purpose: the plugin running
    # on this suite (tox -e self) must let them through.
    pytest.mark.allow_inherit(kind="pipe"),
]


class StartupInfo:
    """The fields of subprocess.STARTUPINFO that CreateProcess reads."""

    def __init__(self, handle_list: list[int] | None = None, std: tuple[int, ...] = ()) -> None:
        self.dwFlags = windows.STARTF_USESTDHANDLES if std else 0
        self.hStdInput, self.hStdOutput, self.hStdError = (*std, None, None, None)[:3]
        self.lpAttributeList = {"handle_list": handle_list} if handle_list is not None else {}


class LinuxWinapi:
    """``_winapi.CreateProcess`` with real Linux children (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.children: list[subprocess.Popen[bytes]] = []

    def CreateProcess(self, *args: Any) -> tuple[int, int, int, int]:
        self.calls.append(args)
        _app, command_line, _pa, _ta, inherit, flags, _env, _cwd, info = args
        listed = (info.lpAttributeList or {}).get("handle_list") if info else None
        if not inherit:
            pass_fds: tuple[int, ...] = ()
        elif listed:
            pass_fds = tuple(listed)
        else:
            pass_fds = ()
        stop = "kill -STOP $$; " if flags & windows.CREATE_SUSPENDED else ""
        child = subprocess.Popen(
            ["/bin/sh", "-c", f"{stop}exec {command_line}"],
            close_fds=not (inherit and not listed),
            pass_fds=pass_fds,
        )
        self.children.append(child)
        if stop:
            _wait_stopped(child.pid)
        return (child.pid, child.pid, child.pid, child.pid)


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] == b"T":
                return
        time.sleep(0.001)
    raise AssertionError(f"child {pid} never stopped")


class LinuxApi:
    """The tracker's WindowsApi over /proc and signals."""

    def __init__(self, fail_read: bool = False, fail_resume: bool = False) -> None:
        self.fail_read, self.fail_resume = fail_read, fail_resume
        self.resumed: list[int] = []
        self.terminated: list[int] = []

    def child_handles(self, pid: int) -> set[int]:
        if self.fail_read:
            raise PermissionError(13, "access denied")
        return {int(n) for n in os.listdir(f"/proc/{pid}/fd")}

    def resume_thread(self, thread: int) -> None:
        if self.fail_resume:
            raise OSError(6, "the handle is invalid")
        self.resumed.append(thread)
        os.kill(thread, signal.SIGCONT)

    def terminate(self, process: int) -> None:
        self.terminated.append(process)
        os.kill(process, signal.SIGKILL)


@pytest.fixture
def winapi() -> Iterator[LinuxWinapi]:
    api = LinuxWinapi()
    yield api
    for child in api.children:
        with _suppress():
            os.kill(child.pid, signal.SIGCONT)
        child.wait(timeout=10)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)  # type: ignore[arg-type]


def _session_baseline() -> set[tuple[int, int, int]]:
    """What this process inherited (a CI runner's descriptors), as the plugin's baseline."""
    return {(e.fd, e.dev, e.ino) for e in BASELINE.inheritable() if e.fd >= 3}


def _tracker(winapi: LinuxWinapi, api: LinuxApi, tmp_path: Any) -> WindowsSpawnTracker:
    tracker = WindowsSpawnTracker(_session_baseline(), str(tmp_path), api)
    tracker.install(winapi)
    return tracker


@pytest.fixture
def leaky_pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    yield r, w
    os.close(r)
    os.close(w)


def _call(winapi: Any, inherit: bool, info: Any = None, flags: int = 0) -> Any:
    return winapi.CreateProcess(None, "/bin/true", None, None, inherit, flags, None, None, info)


def test_inherit_handles_true_observes_the_leak(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    api = LinuxApi()
    tracker = _tracker(winapi, api, tmp_path)
    try:
        _call(winapi, True)
    finally:
        tracker.uninstall()
    (spawn,) = tracker.drain()
    assert spawn.route == "_winapi.CreateProcess"
    assert spawn.how == spawns.OBSERVED
    assert spawn.hint == CREATE_PROCESS_HINT
    assert [d.fd for d in spawn.received] == [leaky_pipe[1]]
    assert spawn.received[0].kind == "pipe"
    # The tracker asked for a suspended child, read it, then let it run.
    assert winapi.calls[0][5] & windows.CREATE_SUSPENDED
    assert api.resumed == [spawn.pid]
    assert winapi.children[0].wait(timeout=10) == 0


def test_no_inherit_handles_is_not_inspected(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    api = LinuxApi()
    tracker = _tracker(winapi, api, tmp_path)
    try:
        _call(winapi, False)  # multiprocessing's call: nothing is inherited
    finally:
        tracker.uninstall()
    assert tracker.drain() == []
    assert not winapi.calls[0][5] & windows.CREATE_SUSPENDED
    assert api.resumed == []


def test_handle_list_declares_what_it_names(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    r, w = leaky_pipe
    other = os.dup(r)
    os.set_inheritable(other, True)
    tracker = _tracker(winapi, LinuxApi(), tmp_path)
    try:
        _call(winapi, True, StartupInfo(handle_list=[w]))
        _call(winapi, True, StartupInfo(std=(other,)))  # standard handles are declared too
    finally:
        tracker.uninstall()
        os.close(other)
    (spawn,) = tracker.drain()  # the first child received only what it listed
    assert [d.fd for d in spawn.received] == [w]
    assert spawn.pid == winapi.children[1].pid
    # A child restricted to its list is not even suspended: nothing to judge.
    assert not winapi.calls[0][5] & windows.CREATE_SUSPENDED
    assert winapi.calls[1][5] & windows.CREATE_SUSPENDED


def test_unreadable_child_falls_back_to_the_prediction(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    tracker = _tracker(winapi, LinuxApi(fail_read=True), tmp_path)
    try:
        _call(winapi, True)
    finally:
        tracker.uninstall()
    (spawn,) = tracker.drain()
    assert spawn.how == spawns.PREDICTED
    assert [d.fd for d in spawn.received] == [leaky_pipe[1]]


def test_observation_drops_what_the_child_did_not_get(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int], monkeypatch: Any
) -> None:
    """A suspended child cannot have closed anything: its table is the truth."""
    api = LinuxApi()
    monkeypatch.setattr(api, "child_handles", lambda pid: set())
    tracker = _tracker(winapi, api, tmp_path)
    try:
        _call(winapi, True)
    finally:
        tracker.uninstall()
    assert tracker.drain() == []
    assert len(api.resumed) == 1


def test_a_caller_suspended_child_stays_suspended(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    api = LinuxApi()
    tracker = _tracker(winapi, api, tmp_path)
    try:
        _call(winapi, True, flags=windows.CREATE_SUSPENDED)
    finally:
        tracker.uninstall()
    (spawn,) = tracker.drain()
    assert spawn.how == spawns.OBSERVED
    assert api.resumed == []  # the caller resumes it, not us


def test_a_child_that_cannot_resume_is_terminated_with_a_clear_error(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    api = LinuxApi(fail_resume=True)
    tracker = _tracker(winapi, api, tmp_path)
    try:
        with pytest.raises(OSError, match="noinherit: could not resume child pid"):
            _call(winapi, True)
    finally:
        tracker.uninstall()
    assert api.terminated == [winapi.children[0].pid]


def test_baseline_handles_are_never_blamed(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    st = os.fstat(leaky_pipe[1])
    baseline = {*_session_baseline(), (leaky_pipe[1], st.st_dev, st.st_ino)}
    tracker = WindowsSpawnTracker(baseline, str(tmp_path), LinuxApi())
    tracker.install(winapi)
    try:
        _call(winapi, True)
    finally:
        tracker.uninstall()
    assert tracker.drain() == []


def test_crt_spawns_are_predicted_from_the_audit_event(
    tmp_path: Any, leaky_pipe: tuple[int, int]
) -> None:
    tracker = WindowsSpawnTracker(_session_baseline(), str(tmp_path), LinuxApi())
    tracker.on_audit("os.system", ("echo hi",))
    tracker.on_audit("os.spawn", (0, "prog.exe", ["prog", "-x"], None))
    tracker.on_audit("os.exec", ("prog.exe", ["prog"], None))
    tracker.on_audit("os.startfile", ("doc.txt",))  # ShellExecute: bInheritHandles=FALSE
    got = tracker.drain()
    assert [(s.route, s.argv, s.how, s.hint) for s in got] == [
        (
            "os.system",
            (os.environ.get("COMSPEC", "cmd.exe"), "/c", "echo hi"),
            spawns.PREDICTED,
            CRT_HINT,
        ),
        ("os.spawn", ("prog", "-x"), spawns.PREDICTED, CRT_HINT),
        ("os.exec", ("prog",), spawns.PREDICTED, CRT_HINT),
    ]
    assert all([d.fd for d in s.received] == [leaky_pipe[1]] for s in got)


def test_popen_names_its_route_and_hint(tmp_path: Any, leaky_pipe: tuple[int, int]) -> None:
    """Popen on Windows reaches CreateProcess from inside _execute_child."""
    seen: list[tuple[str, str] | None] = []

    class FakePopen:
        def _execute_child(
            self, args: Any, executable: Any, preexec_fn: Any, close_fds: bool
        ) -> None:
            seen.append(tracker._local.route)

    tracker = WindowsSpawnTracker(set(), str(tmp_path), LinuxApi())
    wrapped = tracker._wrap_popen(FakePopen._execute_child)
    wrapped(FakePopen(), ["x"], None, None, False)
    wrapped(FakePopen(), ["x"], None, None, close_fds=True)
    assert seen == [("subprocess.Popen", POPEN_HINT), ("subprocess.Popen", "")]
    assert getattr(tracker._local, "route", None) is None


def test_the_report_has_the_posix_fields(
    winapi: LinuxWinapi, tmp_path: Any, leaky_pipe: tuple[int, int], monkeypatch: Any
) -> None:
    """Same Spawn, same finding keys, Windows words: handles in hex and handle advice."""
    tracker = _tracker(winapi, LinuxApi(), tmp_path)
    try:
        _call(winapi, True)
    finally:
        tracker.uninstall()
    (spawn,) = tracker.drain()
    posix = findings.child_finding(findings.VIOLATION, "t", "call", spawn, spawn.received[0])
    assert spawns.Spawn.from_json(json.loads(json.dumps(spawn.to_json()))) == spawn
    monkeypatch.setattr(findings, "UNIT", "handle")
    f = findings.child_finding(findings.VIOLATION, "t", "call", spawn, spawn.received[0])
    assert f.keys() == posix.keys()
    w = leaky_pipe[1]
    assert findings.describe_fd(f).startswith(f"handle {w:#x} (pipe: ")
    fix = findings.fix_for(f)
    assert "PROC_THREAD_ATTRIBUTE_HANDLE_LIST" in fix
    assert f"os.set_handle_inheritable({w:#x}, False)" in fix
    f["hint"] = POPEN_HINT
    assert f"lpAttributeList={{'handle_list': [{w:#x}]}}" in findings.fix_for(f)


def test_install_wraps_and_uninstall_restores(tmp_path: Any) -> None:
    fake = types.SimpleNamespace(CreateProcess=lambda *a: a)
    original_popen = subprocess.Popen._execute_child  # type: ignore[attr-defined]
    tracker = WindowsSpawnTracker(set(), str(tmp_path), LinuxApi())
    tracker.install(fake)
    assert fake.CreateProcess.__wrapped__ is not None
    tracker.uninstall()
    assert subprocess.Popen._execute_child is original_popen  # type: ignore[attr-defined]
    assert fake.CreateProcess(1, 2) == (1, 2)


def test_create_process_rules_read_the_startupinfo() -> None:
    both = windows.create_process_inherits(True, StartupInfo(handle_list=[8, 4], std=(12, 16, 20)))
    assert both.handle_list == (8, 4)
    assert both.declared == (4, 8, 12, 16, 20)
    assert windows.create_process_inherits(True, StartupInfo(handle_list=[])).handle_list is None
    no_std = StartupInfo()
    no_std.hStdInput = 12  # ignored without STARTF_USESTDHANDLES
    assert windows.create_process_inherits(True, no_std).declared == ()
    none = windows.create_process_inherits(False, None, "h")
    assert (none.inherit_handles, none.handle_list, none.declared, none.hint) == (
        False,
        None,
        (),
        "h",
    )
    assert none.child_handles({4, 8}) == set()
