"""The audit hook behind every tracker: C filter (native backend) or Python hook (pure).

Each case runs in a fresh interpreter: audit hooks cannot be removed (PEP 578).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
from pytest_noinherit import fdtable, spawns

class Tracker:
    problems = []
    seen = []

    def on_audit(self, event, args):
        self.seen.append(event)
        if event == "os.system" and args[0] == b"interrupt":
            raise KeyboardInterrupt("from the hook")
        if event == "os.system" and args[0] == b"error":
            raise ValueError("a bug in the tracker")

tracker = Tracker()
spawns._audit.activate(tracker)
c_filter = spawns._c_filter()  # True: the C filter is the one in place
sys.audit("x.y")
sys.audit("os.systemx")
os.system("error")
try:
    os.system("interrupt")
except KeyboardInterrupt as exc:
    print("aborted:", exc)
spawns._audit.deactivate(tracker)
os.system("true")
print(fdtable.backend(), c_filter, tracker.seen, tracker.problems)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the C filter is POSIX only")
@pytest.mark.parametrize("backend", ["native", "python"])
def test_hook_sees_its_events_only_and_can_abort_the_call(backend: str) -> None:
    """Only wanted events reach the tracker; BaseException aborts the call, Exception does not."""
    env = {**os.environ, "PYTEST_NOINHERIT_BACKEND": backend}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "aborted: from the hook"
    wanted = ["os.system", "os.system"]
    problems = ["os.system: ValueError('a bug in the tracker')"]
    assert out[1] == f"{backend} {backend == 'native'} {wanted} {problems}"


RELEASE_SCRIPT = """
import os, sys
from pytest_noinherit import spawns

class Tracker:
    problems = []

    def __init__(self):
        self.seen = []

    def on_audit(self, event, args):
        self.seen.append(event)

held = sys.getrefcount(spawns._audit_hook)
first = Tracker()
spawns._audit.activate(first)
during = sys.getrefcount(spawns._audit_hook)
spawns._audit.deactivate(first)
after = sys.getrefcount(spawns._audit_hook)
os.system("true")  # no tracker is active: nobody hears of it
second = Tracker()
spawns._audit.activate(second)
os.system("true")
spawns._audit.deactivate(second)
print(during - held, after - held, first.seen, second.seen)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the C filter is POSIX only")
@pytest.mark.parametrize(("backend", "kept"), [("native", 0), ("python", 1)])
def test_the_c_filter_lets_go_of_the_hook_between_sessions(backend: str, kept: int) -> None:
    """Once no tracker is active the C filter holds no reference (shutdown stays cheap),
    and the next session's tracker is heard again; sys.addaudithook keeps its hook for good."""
    env = {**os.environ, "PYTEST_NOINHERIT_BACKEND": backend}
    out = subprocess.run(
        [sys.executable, "-c", RELEASE_SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["1", str(kept), "[]", "['os.system']"]
