"""The plugin beside other pytest plugins: clean suites stay clean, leaks are still caught.

Each test runs one real inner session with the other plugin switched on and
``--noinherit-strict`` (which also turns the exec probe on).  The inner suite
is the same everywhere: four clean tests that start children the common ways,
and one test that leaks a pipe end, so a combination can neither invent a
violation nor lose one.  The shared ``PYTEST_ADDOPTS`` switches xdist,
hypothesis and randomly off; a test that needs one of them puts it back.
"""

from __future__ import annotations

import importlib.util

import pytest

# Executed only in children: the coverage report shows whether they were measured.
CHILDMOD = """
def work():
    return sum(range(10))
"""

# multiprocessing's resource tracker keeps one pipe open for the rest of the
# process once a spawn has started it; started here, before any test, it is
# nobody's leak (test_multiprocessing_tracker_is_not_a_test_leak is the case
# without this conftest).
TRACKER_FIRST = """
from multiprocessing import resource_tracker

resource_tracker.ensure_running()
"""

CLEAN = """
import multiprocessing
import os
import subprocess
import sys


def test_python_child():
    subprocess.run([sys.executable, "-c", "import childmod; childmod.work()"], check=True)


def test_bin_true():
    subprocess.run(["/bin/true"], check=True)


def test_os_system():
    assert os.system("true") == 0


def test_multiprocessing_spawn():
    process = multiprocessing.get_context("spawn").Process(target=os.getpid)
    process.start()
    process.join()
    assert process.exitcode == 0
"""

LEAKY = """
import os
import subprocess


def leak_into_a_child():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        subprocess.run(["/bin/sleep", "0.05"], close_fds=False, check=True)
    finally:
        os.close(r)
        os.close(w)


def test_leaks():
    leak_into_a_child()
"""

STRICT = ("-p", "noinherit", "--noinherit-strict")
NO_RANDOMLY = ("-p", "no:randomly")  # it autoloads once installed and reorders the report

# What every combination must show for the suite above.
LEAK_REPORTED = [
    "*_ test_leaks _*",
    "noinherit: 1 descriptor nobody declared or allowed reached a child",
    "  fd * (pipe: pipe:*) leaked into pid * ?/bin/sleep 0.05? via subprocess.Popen, *",
    "*= noinherit summary =*",
    "VIOLATION fd * (pipe: pipe:*) reached a child of test_leaky.py::test_leaks (call)",
]


def requires(module: str) -> None:
    """Skip unless a plugin is installed, without importing it into this process.

    Importing pytest-randomly here (it brings importlib_metadata on 3.9)
    changes how later in-process sessions find entry points.
    """
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """pytester holding the clean and the leaky inner tests."""
    pytester.makepyfile(childmod=CHILDMOD, conftest=TRACKER_FIRST, test_clean=CLEAN)
    pytester.makepyfile(test_leaky=LEAKY)
    return pytester


def assert_only_the_leak(result: pytest.RunResult) -> None:
    """The leaky test failed with the report, and nothing else was flagged."""
    result.assert_outcomes(passed=4, failed=1, warnings=0)
    result.stdout.fnmatch_lines(LEAK_REPORTED)
    assert result.stdout.str().count("VIOLATION ") == 1
    result.stdout.no_fnmatch_line("LEFTOVER *")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_clean_suite_alone(suite: pytest.Pytester) -> None:
    """The control: without other plugins only the leaky test fails."""
    result = suite.runpytest(*STRICT, *NO_RANDOMLY)
    result.stdout.fnmatch_lines(["noinherit: backend *, strict on, probe *"])
    assert_only_the_leak(result)


def test_multiprocessing_tracker_is_not_a_test_leak(pytester: pytest.Pytester) -> None:
    """A spawn that starts multiprocessing's resource tracker is not warned about its pipe."""
    pytester.makepyfile(test_clean=CLEAN, childmod=CHILDMOD)
    result = pytester.runpytest(*STRICT, *NO_RANDOMLY)
    result.assert_outcomes(passed=4, warnings=0)


def measure_children(suite: pytest.Pytester) -> None:
    """Skip without pytest-cov and coverage >= 7.10; otherwise have coverage follow children."""
    requires("pytest_cov")
    coverage = pytest.importorskip("coverage")
    if coverage.version_info < (7, 10):
        pytest.skip("coverage < 7.10 has no [run] patch = subprocess")
    # coverage >= 7.10 starts itself in every Python child through its .pth
    # file when this is set (pytest-cov 7 left subprocess measurement to it).
    (suite.path / ".coveragerc").write_text("[run]\npatch = subprocess\n")


# Only a child runs childmod.work(): 100% means the children were measured.
CHILDREN_MEASURED = ["*coverage: platform*", "childmod.py * 2 * 0 * 100%*"]


def test_pytest_cov_with_subprocess_measurement(suite: pytest.Pytester) -> None:
    """pytest-cov measuring children: coverage's own tracer and data files are never flagged."""
    measure_children(suite)
    result = suite.runpytest(*STRICT, *NO_RANDOMLY, "--cov=.", "--cov-report=term-missing")
    assert_only_the_leak(result)
    result.stdout.fnmatch_lines(CHILDREN_MEASURED)


def test_pytest_cov_under_xdist(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-cov and pytest-xdist together: workers measured, one violation at the controller."""
    measure_children(suite)
    requires("xdist")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:randomly")
    result = suite.runpytest(*STRICT, "-n", "2", "--cov=.", "--cov-report=term-missing")
    result.stdout.fnmatch_lines(["created: 2/2 workers"])
    assert_only_the_leak(result)
    result.stdout.fnmatch_lines(CHILDREN_MEASURED)


@pytest.mark.parametrize("method", ["thread", "signal"])
def test_pytest_timeout(suite: pytest.Pytester, method: str) -> None:
    """pytest-timeout's thread and signal methods leave the verdicts alone."""
    requires("pytest_timeout")
    result = suite.runpytest(*STRICT, *NO_RANDOMLY, "--timeout=30", f"--timeout-method={method}")
    result.stdout.fnmatch_lines([f"timeout method: {method}"])
    assert_only_the_leak(result)


def test_pytest_timeout_wins_over_the_violation(pytester: pytest.Pytester) -> None:
    """A test that leaks and then times out fails with the timeout; the leak is still listed."""
    requires("pytest_timeout")
    pytester.makepyfile(
        test_slow=LEAKY
        + """
import time

def test_leaks_then_hangs():
    leak_into_a_child()
    time.sleep(30)
"""
    )
    result = pytester.runpytest(
        *STRICT, *NO_RANDOMLY, "--timeout=2", "--timeout-method=signal", "-k", "hangs"
    )
    result.assert_outcomes(failed=1, errors=1, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "E   *Failed: Timeout (>2.0s) from pytest-timeout.",
            "*- Captured noinherit call -*",
            "fd * (pipe: pipe:*)",
            "*= noinherit summary =*",
            "VIOLATION fd * (pipe: pipe:*) reached a child of"
            " test_slow.py::test_leaks_then_hangs (call)",
            "FAILED test_slow.py::test_leaks_then_hangs - Failed: Timeout*",
        ]
    )


def test_pytest_rerunfailures(suite: pytest.Pytester) -> None:
    """Under --reruns a leak in an attempt that is rerun and passes is still reported."""
    requires("pytest_rerunfailures")
    suite.makepyfile(
        test_flaky="""
        from pathlib import Path

        from test_leaky import leak_into_a_child

        ATTEMPTS = Path(__file__).with_name("attempts")

        def test_leaks_on_first_attempt_only():
            if not ATTEMPTS.exists():
                ATTEMPTS.write_text("1")
                leak_into_a_child()
        """
    )
    result = suite.runpytest(*STRICT, *NO_RANDOMLY, "--reruns", "2")
    result.assert_outcomes(passed=5, failed=1, warnings=0)
    assert result.parseoutcomes()["rerun"] == 3
    result.stdout.fnmatch_lines_random(
        [
            "VIOLATION fd * (pipe: *) reached a child of"
            " test_flaky.py::test_leaks_on_first_attempt_only (call)",
            "VIOLATION fd * (pipe: *) reached a child of test_leaky.py::test_leaks (call)",
        ]
    )
    # One per attempt: the flaky test's first, and all three of the leaky one's.
    assert result.stdout.str().count("VIOLATION ") == 4
    result.stdout.fnmatch_lines(["FAILED test_leaky.py::test_leaks - Failed: noinherit: *"])
    result.stdout.no_fnmatch_line("FAILED test_flaky.py*")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pytest_randomly(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """In random order the leak is still blamed on the leaky test, and only on it."""
    requires("pytest_randomly")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:xdist -p no:hypothesispytest")
    result = suite.runpytest(*STRICT, "-p", "randomly", f"--randomly-seed={seed}")
    result.stdout.fnmatch_lines([f"Using --randomly-seed={seed}"])
    assert_only_the_leak(result)


def test_pytest_xdist(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under -n 2 the workers' verdicts reach the controller: one violation, the rest clean."""
    requires("xdist")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:randomly")
    result = suite.runpytest(*STRICT, "-n", "2")
    result.stdout.fnmatch_lines(["created: 2/2 workers"])
    assert_only_the_leak(result)


NESTED = f"""
{TRACKER_FIRST}
pytest_plugins = ["pytester"]

CLEAN = {CLEAN!r}
LEAKY = {LEAKY!r}
CHILDMOD = {CHILDMOD!r}
ARGS = ("-p", "noinherit", "--noinherit-strict", "-p", "no:randomly", "-p", "no:xdist",
        "-p", "no:hypothesispytest")


def nested_suite(pytester):
    pytester.makepyfile(test_clean=CLEAN, test_leaky=LEAKY, childmod=CHILDMOD)
    pytester.makeconftest({TRACKER_FIRST!r})


def test_nested_in_process(pytester):
    nested_suite(pytester)
    result = pytester.runpytest_inprocess(*ARGS)
    result.assert_outcomes(passed=4, failed=1)
    assert result.stdout.str().count("VIOLATION ") == 1


def test_nested_in_subprocess(pytester):
    nested_suite(pytester)
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(passed=4, failed=1)
    assert result.stdout.str().count("VIOLATION ") == 1
"""


def test_pytester_nested_sessions(pytester: pytest.Pytester) -> None:
    """A test using pytester in and out of process is not blamed for its nested session's leak."""
    pytester.makepyfile(test_nested=NESTED)
    result = pytester.runpytest(*STRICT, *NO_RANDOMLY, "-p", "pytester")
    result.assert_outcomes(passed=2, warnings=0)
    result.stdout.no_fnmatch_line("VIOLATION *")
    result.stdout.no_fnmatch_line("LEFTOVER *")
