"""The plugin leaves the process as it found it, and survives a hostile process."""

from __future__ import annotations

import _posixsubprocess
import os
import posix
import subprocess

import pytest

LEAKY_SESSION = """
import os, subprocess

def test_spawns():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        subprocess.run(["/bin/true"], close_fds=False)
        os.system("true")
        os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
    finally:
        os.close(r)
        os.close(w)
"""


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.mark.allow_inherit(kind="pipe")  # the inner session leaks on purpose, in this process
def test_in_process_session_restores_everything(pytester: pytest.Pytester) -> None:
    """After an in-process session: the same functions, environment and descriptors."""
    pytester.makepyfile(LEAKY_SESSION)
    originals = {
        "Popen._execute_child": subprocess.Popen._execute_child,
        "os.posix_spawn": os.posix_spawn,
        "posix.posix_spawnp": posix.posix_spawnp,
        "fork_exec": _posixsubprocess.fork_exec,
    }
    # pytest itself owns PYTEST_CURRENT_TEST, and the inner session clears it.
    environ = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    fds = _fds()
    result = pytester.runpytest_inprocess("-p", "noinherit", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*leaked into*via subprocess.Popen*"])
    assert subprocess.Popen._execute_child is originals["Popen._execute_child"]
    assert os.posix_spawn is originals["os.posix_spawn"]
    assert posix.posix_spawnp is originals["posix.posix_spawnp"]
    assert _posixsubprocess.fork_exec is originals["fork_exec"]
    assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == environ
    assert _fds() == fds
    # The audit hook cannot be removed (PEP 578); it must be inert now.
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        assert os.system("true") == 0
    finally:
        os.close(r)
        os.close(w)


INNER_LEAK = """
import os, subprocess

def test_leak():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        subprocess.run(["/bin/true"], close_fds=False)
    finally:
        os.close(r)
        os.close(w)
"""


def test_nested_sessions_do_not_stack(pytester: pytest.Pytester) -> None:
    """An in-process session inside a plugin-enabled session judges its own tests once."""
    pytester.makepyfile(
        test_outer=f"""
        pytest_plugins = ["pytester"]
        INNER = {INNER_LEAK!r}

        def test_nested(pytester):
            pytester.makepyfile(test_inner=INNER)
            inner = pytester.runpytest_inprocess("-p", "noinherit")
            inner.assert_outcomes(failed=1)
            assert inner.stdout.str().count("VIOLATION ") == 1

        def test_outer_still_judged():
            exec(compile(INNER, "inner", "exec"), globals())
            test_leak()
        """
    )
    result = pytester.runpytest_subprocess("-p", "noinherit", "-p", "pytester")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_outer.py::test_outer_still_judged*"])


def test_exhausted_descriptor_table(pytester: pytest.Pytester) -> None:
    """A test that uses up every descriptor gets its own outcome, never an internal error."""
    pytester.makepyfile(
        """
        import os, resource, subprocess

        def test_exhaust():
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
            opened = []
            try:
                try:
                    while True:
                        opened.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    pass
                os.set_inheritable(opened[-1], True)
                os.close(opened.pop(0))
                os.system("true")
            finally:
                for fd in opened:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        """
    )
    result = pytester.runpytest_subprocess("-p", "noinherit")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*leaked into a child [[]/bin/sh -c true] via os.system*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
