"""The bundled examples do what the README says: leaky twins fail with the report, fixed ones pass.

Each example directory is copied as it is into a pytester directory and run
in a real subprocess, the way ``pytest examples`` runs it for a user.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# pytest-randomly autoloads once installed; the examples' reports are read in order.
PLUGIN = ("-p", "noinherit", "-p", "no:randomly")


def run_example(pytester: pytest.Pytester, name: str) -> pytest.RunResult:
    """Copy examples/<name> next to the inner session and run it with the plugin."""
    shutil.copytree(EXAMPLES / name, pytester.path / name)
    return pytester.runpytest(*PLUGIN, name)


def test_port_busy(pytester: pytest.Pytester) -> None:
    """The leaked listening socket really blocks the restart, and the plugin fails the test."""
    result = run_example(pytester, "port_busy")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "port_busy/test_port_fixed.py .*",
            "port_busy/test_port_leaky.py F*",
            "*_ test_restart_fails_while_helper_runs _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd * (socket: AF_INET/SOCK_STREAM 127.0.0.1:*) leaked into pid * ?sleep 5?"
            " via subprocess.Popen, observed in the child",
            # Printed only after the test's own EADDRINUSE assertion held.
            "*- Captured stdout call -*",
            "restart on port * refused: *Address already in use",
            "*= noinherit summary =*",
            "VIOLATION fd * (socket: AF_INET/SOCK_STREAM 127.0.0.1:*) reached a child of"
            " port_busy/test_port_leaky.py::test_restart_fails_while_helper_runs (call)",
        ]
    )
    # The failure is the plugin's verdict, not an exception from the test body.
    result.stdout.no_fnmatch_line("E  *")
    result.stdout.no_fnmatch_line("*DID NOT RAISE*")


def test_pipe_eof(pytester: pytest.Pytester) -> None:
    """sort holding its input's write end times out and is reported; the fixed sort gets EOF."""
    result = run_example(pytester, "pipe_eof")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "pipe_eof/test_pipe_fixed.py .*",
            "pipe_eof/test_pipe_leaky.py F*",
            "*_ test_sort_never_sees_eof _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd * (pipe: pipe:*) leaked into pid * ?sort? via subprocess.Popen, observed *",
            "*- Captured noinherit call -*",
            "  fix:   keep close_fds=True and hand it over with pass_fds; *",
        ]
    )
    # pytest.raises(TimeoutExpired) held: the hang was real and contained.
    result.stdout.no_fnmatch_line("E  *")


def test_c_library_fd(pytester: pytest.Pytester) -> None:
    """A descriptor from libc.open without O_CLOEXEC is caught on its way into os.system."""
    result = run_example(pytester, "c_library_fd")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "c_library_fd/test_c_open_fixed.py ..*",
            "c_library_fd/test_c_open_leaky.py F*",
            "*_ test_shell_command_can_read_the_key _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd * (file: */api.key) leaked into a child"
            " ?/bin/sh -c ls -l /proc/self/fd/ > listing? via os.system, *",
            "  fix:   start the child with subprocess and hand it over with pass_fds; *",
        ]
    )
    # The shell really held the key file: the test's own assertion about it passed.
    result.stdout.no_fnmatch_line("E  *")


JOBSERVER = "declared/test_declared.py::test_jobserver_pipe_is_inherited_by_design"


def test_declared(pytester: pytest.Pytester) -> None:
    """pass_fds and an allow_inherit marker pass, and the summary lists what the marker allowed."""
    result = run_example(pytester, "declared")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= noinherit summary =*",
            f"allowed by marker on {JOBSERVER}: kind=pipe:",
            f"    {JOBSERVER}: fd * (pipe: pipe:*) into pid * via subprocess.Popen, *",
            f"    {JOBSERVER}: fd * (pipe: pipe:*) into pid * via subprocess.Popen, *",
        ]
    )
    result.stdout.no_fnmatch_line("VIOLATION *")
    result.stdout.no_fnmatch_line("*test_pass_fds_gives_one_child_one_pipe: fd *")


def test_whole_tree_through_its_ini(pytester: pytest.Pytester) -> None:
    """``pytest examples`` alone loads the plugin from examples/pytest.ini and runs every pair."""
    shutil.copytree(EXAMPLES, pytester.path / "examples")
    result = pytester.runpytest("-p", "no:randomly", "examples")
    result.assert_outcomes(failed=3, passed=6)
    result.stdout.fnmatch_lines(
        ["noinherit: backend *", "rootdir: */examples", "configfile: pytest.ini"]
    )
    result.stdout.fnmatch_lines_random(
        [
            "FAILED examples/port_busy/test_port_leaky.py::test_restart_fails_while_helper_runs*",
            "FAILED examples/pipe_eof/test_pipe_leaky.py::test_sort_never_sees_eof*",
            "FAILED examples/c_library_fd/test_c_open_leaky.py::test_shell_command_can_read_th*",
        ]
    )


def test_show_table(pytester: pytest.Pytester) -> None:
    """show_table.py prints the backend and marks its deliberately leaked pipe end inheritable."""
    result = pytester.run(sys.executable, str(EXAMPLES / "show_table.py"))
    assert result.ret == 0
    result.stdout.fnmatch_lines(["backend: *", "fd * close-on-exec  AF_INET/SOCK_STREAM *"])
    # The pipe's two ends share one target: the read end stays close-on-exec, the write end not.
    pipes: dict[str, list[str]] = {}
    for line in result.outlines:
        fields = line.split()
        if fields[:1] == ["fd"] and fields[-1].startswith("pipe:") and int(fields[1]) > 2:
            pipes.setdefault(fields[-1], []).append(fields[2])
    assert ["close-on-exec", "INHERITABLE"] in pipes.values()
