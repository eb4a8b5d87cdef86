"""The verdict model through real sessions: each test judged on its own children.

Order, reruns, xdist, skips and the source of an observation never change
which tests fail; what the child was seen to hold beats the prediction.
"""

from __future__ import annotations

import re

import pytest

from pytest_noinherit import probe

needs_probe = pytest.mark.skipif(probe.library() is None, reason="exec probe not built")

# Two tests whose children each receive a pipe made inheritable at import,
# one clean test between them.
IMPORT_TIME_LEAK = """
import os, subprocess

R, W = os.pipe()
os.set_inheritable(W, True)

def test_first_child():
    subprocess.run(["/bin/true"], close_fds=False, check=True)

def test_clean():
    subprocess.run(["/bin/true"], check=True)

def test_second_child():
    subprocess.run(["/bin/true"], close_fds=False, check=True)
"""


def failed_tests(result: pytest.RunResult) -> set[str]:
    """The node ids of the failed or erroring tests, from the short test summary."""
    return set(re.findall(r"^(?:FAILED|ERROR) (\S+::\S+)", result.stdout.str(), re.M))


EXPECTED = {"test_leak.py::test_first_child", "test_leak.py::test_second_child"}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="in-order"),
        pytest.param(
            [
                "test_leak.py::test_second_child",
                "test_leak.py::test_clean",
                "test_leak.py::test_first_child",
            ],
            id="reversed",
        ),
        pytest.param(["--reruns", "1"], id="reruns"),
        pytest.param(["-n", "2"], id="xdist"),
        pytest.param(["--noinherit-strict"], id="strict"),
    ],
)
def test_the_same_tests_fail_whatever_the_order(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """Orders, reruns, xdist and strict mode give the same failed set for one leaking suite."""
    if "-n" in args:
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")
    pytester.makepyfile(test_leak=IMPORT_TIME_LEAK)
    result = pytester.runpytest("-p", "noinherit", "-rfE", *args)
    assert failed_tests(result) == EXPECTED, result.stdout.str()
    assert result.ret == 1
    if "--reruns" in args:
        assert result.parseoutcomes() == {"passed": 1, "failed": 2, "rerun": 2}


@pytest.mark.parametrize("seed", ["1", "2", "3"])
def test_the_same_tests_fail_under_randomly(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, seed: str
) -> None:
    """pytest-randomly's shuffles do not change the verdict."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:xdist")
    pytester.makepyfile(test_leak=IMPORT_TIME_LEAK)
    result = pytester.runpytest("-p", "noinherit", f"--randomly-seed={seed}", "-rfE")
    assert failed_tests(result) == EXPECTED, result.stdout.str()


@pytest.mark.parametrize("name", ["test_first_child", "test_second_child"])
def test_a_single_node_id_fails_alone(pytester: pytest.Pytester, name: str) -> None:
    """Run on its own, each leaking test fails just as it does in the whole suite."""
    pytester.makepyfile(test_leak=IMPORT_TIME_LEAK)
    result = pytester.runpytest("-p", "noinherit", "-rfE", f"test_leak.py::{name}")
    assert failed_tests(result) == {f"test_leak.py::{name}"}


def test_last_failed_reruns_still_fail(pytester: pytest.Pytester) -> None:
    """--lf runs only the failed tests, and they fail again."""
    pytester.makepyfile(test_leak=IMPORT_TIME_LEAK)
    pytester.runpytest("-p", "noinherit")
    result = pytester.runpytest("-p", "noinherit", "--lf", "-rfE")
    assert failed_tests(result) == EXPECTED


def test_import_time_spawn_does_not_use_up_the_report(pytester: pytest.Pytester) -> None:
    """A child at import time is listed outside any test; later tests' children still fail."""
    pytester.makepyfile(
        test_leak=IMPORT_TIME_LEAK.replace(
            "def test_first_child",
            'subprocess.run(["/bin/true"], close_fds=False)\n\ndef test_first_child',
        )
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict", "-rfE")
    assert failed_tests(result) == EXPECTED
    result.stdout.fnmatch_lines(
        [
            "*noinherit summary*",
            "VIOLATION fd * (pipe: *) reached the children of 3 tests: (outside"
            " any test) (outside),"
            " test_leak.py::test_first_child (call), test_leak.py::test_second_child (call)",
            "    came from: import or collection time, before any test",
        ]
    )


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [
        ('pytest.skip("no tool here")', {"skipped": 1, "errors": 1}),
        ('pytest.xfail("known bug")', {"xfailed": 1, "errors": 1}),
        ('assert False, "own failure"', {"failed": 1, "errors": 1}),
        ("pass", {"failed": 1}),
    ],
)
def test_own_outcome_never_hides_the_violation(
    pytester: pytest.Pytester, ending: str, outcome: dict[str, int]
) -> None:
    """Skipped, xfailed or failed: the outcome stays, and the violation errors the teardown."""
    pytester.makepyfile(
        f"""
        import os, pytest

        def test_runs_a_tool():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            try:
                os.system("true")
            finally:
                os.close(r); os.close(w)
            {ending}
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report=out.json")
    result.assert_outcomes(**outcome)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*leaked into a child [[]/bin/sh -c true[]] via os.system*"])
    assert '"type": "violation"' in (pytester.path / "out.json").read_text()


def test_violation_in_setup_of_a_skipped_test(pytester: pytest.Pytester) -> None:
    """A fixture whose child leaks and that then skips: skipped, and its teardown errors."""
    pytester.makepyfile(
        """
        import os, subprocess, pytest

        @pytest.fixture
        def tool():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            subprocess.run(["/bin/true"], close_fds=False)
            os.close(r); os.close(w)
            pytest.skip("tool missing")

        def test_uses_tool(tool):
            pass
        """
    )
    result = pytester.runpytest("-p", "noinherit")
    result.assert_outcomes(skipped=1, errors=1)
    result.stdout.fnmatch_lines(["  (in setup) fd * (pipe: *) leaked into *"])


def test_spawnv_of_a_missing_program_is_no_reception(pytester: pytest.Pytester) -> None:
    """os.spawnv of a program that does not exist exec'd nothing: no violation."""
    pytester.makepyfile(
        """
        import os

        def test_missing_program():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            try:
                status = os.spawnv(os.P_WAIT, "/nonexistent/tool", ["tool"])
            finally:
                os.close(r); os.close(w)
            assert status == 127

        def test_execvp_tries_the_path_then_runs():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            try:
                env = {**os.environ, "PATH": "/nonexistent:/usr/bin:/bin"}
                assert os.spawnvpe(os.P_WAIT, "true", ["true"], env) == 0
            finally:
                os.close(r); os.close(w)
        """
    )
    result = pytester.runpytest("-p", "noinherit", "-rfE")
    result.assert_outcomes(passed=1, failed=1)
    assert failed_tests(result) == {
        "test_spawnv_of_a_missing_program_is_no_reception.py::test_execvp_tries_the_path_then_runs"
    }
    assert result.stdout.str().count("VIOLATION ") == 1


def test_preexec_fn_that_closes_is_judged_exactly(pytester: pytest.Pytester) -> None:
    """What the child holds after preexec_fn decides: closed there, it was never received."""
    pytester.makepyfile(
        """
        import os, subprocess

        def leaky():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            return r, w

        def test_preexec_closes_everything():
            r, w = leaky()
            try:
                subprocess.run(
                    ["/bin/true"], close_fds=False, preexec_fn=lambda: os.closerange(3, 1024)
                )
            finally:
                os.close(r); os.close(w)

        def test_preexec_that_keeps_it_still_leaks():
            r, w = leaky()
            try:
                subprocess.run(["/bin/true"], close_fds=False, preexec_fn=lambda: None)
            finally:
                os.close(r); os.close(w)
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=off", "-rfE")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*leaked into pid * [[]/bin/true[]] via subprocess.Popen, observed"
            " in the child after preexec_fn"
        ]
    )
    assert failed_tests(result) == {
        "test_preexec_fn_that_closes_is_judged_exactly.py::test_preexec_that_keeps_it_still_leaks"
    }


# Simulates another thread acting between the wrapper's snapshot and the
# fork: the replaced fork function makes a descriptor inheritable (or closes
# one) right before the real fork, every time, so the race is deterministic.
RACE = """
import os, subprocess, sys, pytest

def between_snapshot_and_fork(monkeypatch, action):
    if hasattr(subprocess, "_fork_exec"):
        owner, name = subprocess, "_fork_exec"
    else:
        import _posixsubprocess as owner
        name = "fork_exec"
    real = getattr(owner, name)
    def fork_exec(*args, **kwargs):
        action()
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, fork_exec)
    monkeypatch.setattr(subprocess, "_USE_POSIX_SPAWN", False, raising=False)

def test_made_inheritable_after_the_snapshot(monkeypatch):
    r, w = os.pipe()
    between_snapshot_and_fork(monkeypatch, lambda: os.set_inheritable(w, True))
    try:
        subprocess.run(["sleep", "0.3"], close_fds=False)
    finally:
        os.close(r); os.close(w)

def test_closed_after_the_snapshot(monkeypatch):
    r, w = os.pipe()
    os.set_inheritable(w, True)
    between_snapshot_and_fork(monkeypatch, lambda: os.close(w))
    try:
        subprocess.run(["sleep", "0.3"], close_fds=False)
    finally:
        os.close(r)
"""


def test_a_live_child_corrects_the_prediction(pytester: pytest.Pytester) -> None:
    """A descriptor changed between the snapshot and the fork: the live child's table decides."""
    pytester.makepyfile(test_race=RACE)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=off", "-rfE")
    assert failed_tests(result) == {"test_race.py::test_made_inheritable_after_the_snapshot"}
    result.stdout.fnmatch_lines(
        ["*leaked into pid * [[]sleep 0.3[]] via subprocess.Popen, observed in the child"]
    )


@needs_probe
def test_probe_sees_the_race_too(pytester: pytest.Pytester) -> None:
    """With the exec probe the child's table right after exec decides, both ways."""
    pytester.makepyfile(test_race=RACE)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=on", "-rfE")
    assert failed_tests(result) == {"test_race.py::test_made_inheritable_after_the_snapshot"}
    result.stdout.fnmatch_lines(
        ["*leaked into pid * [[]sleep 0.3[]] via subprocess.Popen, observed by the exec probe"]
    )


@needs_probe
@pytest.mark.parametrize("how", ["os.system", "ctypes"])
def test_probe_record_matches_path_allowances(pytester: pytest.Pytester, how: str) -> None:
    """A socket seen by the probe is described with its address, so path= allowances match."""
    start = 'os.system("true")' if how == "os.system" else 'ctypes.CDLL(None).system(b"true")'
    pytester.makepyfile(
        f"""
        import ctypes, os, socket, pytest

        def serve(tmp_path):
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(tmp_path / "app.sock"))
            s.set_inheritable(True)
            return s

        @pytest.mark.allow_inherit(path="*/app.sock")
        def test_allowed(tmp_path):
            with serve(tmp_path):
                {start}

        def test_not_allowed(tmp_path):
            with serve(tmp_path):
                {start}
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict", "-rfE")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*fd * (socket: AF_UNIX/SOCK_STREAM */app.sock) leaked into"
            " *observed by the exec probe",
            "*allowed by marker on *::test_allowed: path=*/app.sock:",
        ]
    )
    # One child, one reception: the Python-side copy of the shell is not reported again.
    assert result.stdout.str().count("VIOLATION ") == 1
    result.stdout.no_fnmatch_line("*socket:[[]*")


NESTED = '''
pytest_plugins = ["pytester"]
INNER = """
import os, subprocess

def test_inner_leak():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        subprocess.run(["sh", "-c", "/bin/true"], close_fds=False)
    finally:
        os.close(r); os.close(w)
"""

def test_runs_an_inner_session(pytester):
    pytester.makepyfile(test_inner=INNER)
    inner = pytester.runpytest_inprocess("-p", "noinherit", "--noinherit-probe=off")
    inner.assert_outcomes(failed=1)
    assert inner.stdout.str().count("VIOLATION ") == 1

def test_outer_probe_resumes():
    import os
    assert os.environ.get("NOINHERIT_PROBE_DIR")
'''


@needs_probe
def test_nested_session_is_judged_on_its_own(pytester: pytest.Pytester) -> None:
    """An in-process inner session without the probe never feeds the outer session's records."""
    pytester.makepyfile(test_outer=NESTED)
    result = pytester.runpytest_subprocess(
        "-p", "noinherit", "-p", "pytester", "--noinherit-strict", "--noinherit-probe=on", "-rfE"
    )
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("VIOLATION *")


@needs_probe
def test_thousands_of_children_in_one_phase_keep_their_pass_fds(pytester: pytest.Pytester) -> None:
    """4 300 children with pass_fds in one test, probe on: none is judged without its pass_fds."""
    pytester.makepyfile(
        """
        import os, subprocess

        def test_many_children():
            r, w = os.pipe()
            try:
                for _ in range(4300):
                    subprocess.run(["/bin/true"], pass_fds=(w,), check=True)
            finally:
                os.close(r); os.close(w)
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("VIOLATION *")
