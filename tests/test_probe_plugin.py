"""The exec probe in the plugin: children started from C, grandchildren, a hostile channel."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_noinherit import probe

pytestmark = pytest.mark.skipif(probe.library() is None, reason="exec probe not built")

PROBE_TESTS = """
import ctypes, os, subprocess

def leaky():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    return r, w

def test_c_system():
    r, w = leaky()
    try:
        ctypes.CDLL(None).system(b"true")
    finally:
        os.close(r); os.close(w)

def test_grandchild_through_shell():
    r, w = leaky()
    try:
        subprocess.run(["sh", "-c", "/bin/true; exit 0"], pass_fds=(w,))
    finally:
        os.close(r); os.close(w)

def test_grandchild_of_a_c_child():
    r, w = leaky()
    try:
        # sh is started by C; the leaked pipe reaches cat through it.
        ctypes.CDLL(None).system(b"cat /dev/null; exit 0")
    finally:
        os.close(r); os.close(w)

def test_parent_opened_it_itself():
    subprocess.run(["sh", "-c", "exec 7</dev/null; /bin/true; exit 0"], check=True)
"""


def test_strict_mode_turns_the_probe_on(pytester: pytest.Pytester) -> None:
    """In strict mode the probe (or the kernel observer) runs by default; C children are judged."""
    pytester.makepyfile(PROBE_TESTS)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict")
    result.stdout.re_match_lines([r"noinherit: .*probe (on|kernel)"])
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_c_system _*",
            "*fd * (pipe: pipe:*) leaked into pid * [[]sh -c true], a child of the test,"
            " observed by the exec probe",
            "*_ test_grandchild_of_a_c_child _*",
            "*leaked into pid * [[]sh -c cat /dev/null; exit 0], a child of the test*",
        ]
    )


def test_probe_off_sees_no_c_children(pytester: pytest.Pytester) -> None:
    """--noinherit-probe=off: a child started from C is invisible, as documented."""
    pytester.makepyfile(PROBE_TESTS)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict", "--noinherit-probe=off")
    result.stdout.fnmatch_lines(["noinherit: *probe off*"])
    result.assert_outcomes(passed=4)


def test_probe_on_without_strict(pytester: pytest.Pytester) -> None:
    """--noinherit-probe=on works in default mode; the ini twin too."""
    pytester.makepyfile(PROBE_TESTS)
    pytester.makeini("[pytest]\nnoinherit_probe = on\n")
    result = pytester.runpytest("-p", "noinherit")
    result.stdout.fnmatch_lines(["noinherit: *strict off, probe on*"])
    result.assert_outcomes(passed=2, failed=2)


def test_environment_is_restored_and_user_preload_kept(pytester: pytest.Pytester) -> None:
    """The user's LD_PRELOAD entries reach children; afterwards os.environ is as before."""
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if not os.path.exists(libc):
        pytest.skip("needs Debian's multiarch libc path")
    pytester.makepyfile(
        f"""
        import os, subprocess, sys

        def test_child_sees_both():
            out = subprocess.run(
                [sys.executable, "-c", "import os; print(os.environ['LD_PRELOAD'])"],
                capture_output=True, text=True, check=True,
            ).stdout.strip().split(":")
            assert out[0] == {libc!r}
            assert out[1].endswith("libnoinherit-probe.so")

        def test_restored_later():
            pass
        """
    )
    before = dict(os.environ)
    os.environ["LD_PRELOAD"] = libc
    try:
        result = pytester.runpytest_inprocess("-p", "noinherit", "--noinherit-probe=on")
        result.assert_outcomes(passed=2)
        assert os.environ["LD_PRELOAD"] == libc
        # Absent, or an outer session's (this suite run under the plugin itself).
        assert os.environ.get(probe.DIR_ENV) == before.get(probe.DIR_ENV)
    finally:
        os.environ.clear()
        os.environ.update(before)


def test_garbage_in_the_record_directory(pytester: pytest.Pytester) -> None:
    """Garbage, truncated and huge records neither crash the plugin nor hide a real one."""
    pytester.makepyfile(
        """
        import ctypes, os

        def test_vandal_then_leak():
            d = os.environ["NOINHERIT_PROBE_DIR"]
            for i, data in enumerate([b"garbage", b"noinherit-probe 1\\npid 1\\n", b"x" * (2 << 20),
                                      b"noinherit-probe 1\\nfd 1 2 3\\nend\\n"]):
                with open(os.path.join(d, f"1-{i}.rec"), "wb") as f:
                    f.write(data)
            os.symlink("/etc/passwd", os.path.join(d, "2-0.rec"))
            r, w = os.pipe()
            os.set_inheritable(w, True)
            try:
                ctypes.CDLL(None).system(b"true")
            finally:
                os.close(r); os.close(w)
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=on")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*leaked into pid * [[]sh -c true]*", "*exec probe record ignored: *"]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


@given(st.binary(max_size=2048))
def test_parser_never_raises_anything_else(data: bytes) -> None:
    """Any bytes: a record or a RecordError, nothing else."""
    with contextlib.suppress(probe.RecordError):
        probe.parse_record(data)


LINE = st.sampled_from(
    [
        b"pid 12",
        b"ppid 1",
        b"time 99",
        b"exe /bin/x",
        b"argv a b\\x20c",
        b"truncated",
        b"fd 3 1 2 4 5 6 pipe:[1]",
        b"fd 4 -9 -9 -1 -1 -1 ",
        b"fd 5 1 2 4 5 49152 socket:[5]",
        b"sock 5 1 1 0100 -",
        b"sock 5 -1 -1 - -",
        b"sock 3 2 1 - 02",
        b"sock 5 1 1 010 -",
        b"fd x",
        b"end",
        b"pid -1",
    ]
)


@given(st.lists(LINE, max_size=12))
def test_parser_on_near_records(lines: list[bytes]) -> None:
    """Records assembled from plausible lines parse or are refused cleanly."""
    data = b"\n".join([b"noinherit-probe 1", *lines, b"end"])
    try:
        rec = probe.parse_record(data)
    except probe.RecordError:
        return
    assert rec.pid >= 0
    assert all(f.fd >= 0 for f in rec.fds)
    assert all(f.sock is None or stat.S_ISSOCK(f.mode) for f in rec.fds)


HEADER = b"noinherit-probe 1\npid 7\nppid 1\ntime 5\nexe /bin/x\nargv x\n"
SOCKET_FD = b"fd 3 1 2 9 77 49663 socket:[77]"  # 49663: S_IFSOCK | 0777
#: AF_INET 127.0.0.1:8080 and AF_UNIX "/a.sock" as getsockname() returns them.
INET = bytes.fromhex("02001f907f0000010000000000000000")
UNIX = b"\x01\x00/a.sock\x00"


def _record(*lines: bytes) -> bytes:
    return HEADER + b"".join(line + b"\n" for line in lines) + b"end\n"


def test_sock_line_gives_the_socket_its_addresses() -> None:
    """A sock line after its fd line attaches family, type and raw addresses to that fd."""
    rec = probe.parse_record(
        _record(
            SOCKET_FD,
            b"sock 3 2 1 " + INET.hex().encode() + b" -",
            b"fd 4 1 2 9 78 49663 socket:[78]",
            b"sock 4 1 -1 " + UNIX.hex().encode() + b" ",
            b"fd 5 1 2 9 79 49663 socket:[79]",
            b"fd 6 1 2 9 80 4480 pipe:[80]",
        )
    )
    socks = {f.fd: f.sock for f in rec.fds}
    assert socks == {
        3: probe.ProbeSocket(2, 1, INET, None),
        4: probe.ProbeSocket(1, -1, UNIX, b""),  # an empty field: zero bytes, not "none"
        5: None,  # a record without sock lines (an older probe) still parses
        6: None,
    }
    assert rec.fds[0].target == "socket:[77]"


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([SOCKET_FD, b"sock 3 2 1 0A00 -"], id="uppercase hex"),
        pytest.param([SOCKET_FD, b"sock 3 2 1 020 -"], id="odd hex"),
        pytest.param([SOCKET_FD, b"sock 3 2 1 " + b"00" * 129 + b" -"], id="too long"),
        pytest.param([SOCKET_FD, b"sock 3 2 1 -"], id="missing field"),
        pytest.param([SOCKET_FD, b"sock 3 2 1 - - -"], id="extra field"),
        pytest.param([SOCKET_FD, b"sock 3 x 1 - -"], id="not a number"),
        pytest.param([SOCKET_FD, b"sock 3 2 1 -  -"], id="double space"),
        pytest.param([SOCKET_FD, b"sock -3 2 1 - -"], id="negative fd"),
    ],
)
def test_malformed_sock_line_is_refused(lines: list[bytes]) -> None:
    """A sock line the probe would not write is a RecordError."""
    with pytest.raises(probe.RecordError, match="bad sock line"):
        probe.parse_record(_record(*lines))


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        pytest.param([SOCKET_FD, b"sock 3 2 1 - -", b"sock 3 2 1 - -"], "second sock", id="dup"),
        pytest.param([b"sock 3 2 1 - -", SOCKET_FD], "without its fd line", id="before"),
        pytest.param([SOCKET_FD, b"sock 4 2 1 - -"], "without its fd line", id="other fd"),
        pytest.param(
            [SOCKET_FD, b"truncated", b"sock 3 2 1 - -"], "without its fd line", id="not next"
        ),
        pytest.param([b"fd 3 1 2 9 77 4480 pipe:[77]", b"sock 3 2 1 - -"], "no socket", id="pipe"),
    ],
)
def test_misplaced_sock_line_is_refused(lines: list[bytes], error: str) -> None:
    """A sock line belongs right after the fd line of the same socket, once."""
    with pytest.raises(probe.RecordError, match=error):
        probe.parse_record(_record(*lines))


def _run_cli(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_noinherit", "run", *args],
        capture_output=True,
        text=True,
        pass_fds=pass_fds,
        check=False,
    )


def test_run_command_reports_every_process() -> None:
    """`run -- CMD` keeps its status, allows its own inherited fds, reports one opened inside."""
    r, w = os.pipe()
    try:
        proc = _run_cli("--", "sh", "-c", "exec 7</dev/null; /bin/true; exit 0", pass_fds=(w,))
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 0, proc.stderr
    text = proc.stderr
    assert f"run baseline (inherited by run, allowed everywhere): {w} (pipe)" in text
    assert f"VIOLATION fd {w} " not in text
    assert "VIOLATION fd 7 (chr: /dev/null) reached 1 process: pid " in text
    assert "which opened it or made it inheritable after its own exec" in text
    assert "2 processes observed, 1 undeclared descriptor reached 1 of them" in text


def test_run_command_clean_and_json() -> None:
    """A command that receives nothing exits with its own status; --json is machine-readable."""
    proc = _run_cli("--json", "--", "sh", "-c", "/bin/true; exit 3")
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    procs = doc["processes"]
    assert [p["argv"][0] for p in procs] == ["sh", "/bin/true"]
    assert all(p["received"] == [] for p in procs)
    assert procs[1]["ppid"] == procs[0]["pid"]
    assert doc["exit_status"] == doc["command_status"] == 3


def test_run_needs_a_command() -> None:
    """A usage error, not a traceback."""
    proc = _run_cli()
    assert proc.returncode == 2
    assert "run needs a command" in proc.stderr
    assert "Traceback" not in proc.stderr


def _valgrind_strips_its_own(value: str) -> str:
    """What valgrind leaves of a child's LD_PRELOAD: it splits on colons only."""
    return ":".join(e for e in value.split(":") if "vgpreload" not in e)


def test_preload_entries_are_joined_with_colons(monkeypatch: pytest.MonkeyPatch) -> None:
    """User entries first, the probe last, colon-joined; a valgrind-style strip keeps the probe."""
    lib = probe.library()
    assert lib is not None
    monkeypatch.setenv(
        "LD_PRELOAD",
        "/opt/vg/vgpreload_core-amd64-linux.so /opt/a.so:/old/libnoinherit-probe.so",
    )
    value = probe._preload_value(lib)
    assert value == f"/opt/vg/vgpreload_core-amd64-linux.so:/opt/a.so:{lib}"
    assert _valgrind_strips_its_own(value) == f"/opt/a.so:{lib}"
    assert probe._valgrind_parent()
    monkeypatch.setenv("LD_PRELOAD", "/opt/a.so")
    assert not probe._valgrind_parent()


def test_hide_keeps_the_user_entries_colon_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """An inner session without the probe drops only the probe from LD_PRELOAD."""
    monkeypatch.setenv("LD_PRELOAD", "/opt/a.so /x/libnoinherit-probe.so:/opt/b.so")
    monkeypatch.setenv(probe.DIR_ENV, "/nowhere")
    monkeypatch.setenv(probe.ALL_ENV, "1")
    env = probe.ProbeEnvironment("/elsewhere")
    env.hide()
    assert os.environ["LD_PRELOAD"] == "/opt/a.so:/opt/b.so"
    assert probe.DIR_ENV not in os.environ
    assert probe.ALL_ENV not in os.environ
    env.stop()
    assert os.environ["LD_PRELOAD"] == "/opt/a.so /x/libnoinherit-probe.so:/opt/b.so"
    assert os.environ[probe.ALL_ENV] == "1"


@pytest.mark.parametrize("every_exec", [True, False])
def test_start_sets_the_record_mode_and_stop_restores(
    monkeypatch: pytest.MonkeyPatch, every_exec: bool
) -> None:
    """NOINHERIT_PROBE_ALL=1 only for every_exec; stop() puts all three variables back."""
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(probe.DIR_ENV, raising=False)
    monkeypatch.setenv(probe.ALL_ENV, "outer")
    env = probe.ProbeEnvironment("/records", every_exec=every_exec)
    env.start()
    assert os.environ.get(probe.ALL_ENV) == ("1" if every_exec else None)
    assert os.environ[probe.DIR_ENV] == "/records"
    env.stop()
    assert os.environ[probe.ALL_ENV] == "outer"
    assert "LD_PRELOAD" not in os.environ
    assert probe.DIR_ENV not in os.environ


@pytest.mark.parametrize("every_exec", [True, False])
def test_self_test_passes_in_both_modes(every_exec: bool) -> None:
    """The self-test child is given a pipe, so it writes a record whichever mode is asked for."""
    from pytest_noinherit import recorddir

    d = recorddir.create()
    try:
        assert probe.ProbeEnvironment(d, every_exec=every_exec).self_test() == ""
    finally:
        recorddir.remove(d)


def _fake_preload_object(tmp_path: os.PathLike[str], name: str) -> str:
    """A loadable, empty shared object called name (valgrind's are vgpreload_*.so)."""
    source = os.path.join(tmp_path, "empty.c")
    with open(source, "w") as f:
        f.write("int nip_fake_preload_object;\n")
    path = os.path.join(tmp_path, name)
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-o", path, source], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a C compiler")
    return path


@pytest.mark.parametrize(
    ("stderr", "verdict"),
    [
        ("==42== Memcheck, a memory error detector\\n--42-- warning: L3 cache found\\n", ""),
        ("ERROR: ld.so: object cannot be preloaded\\n", "the loader complained: ERROR: ld.so*"),
    ],
)
def test_self_test_under_valgrind_ignores_only_valgrind_chatter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str], stderr: str, verdict: str
) -> None:
    """Under a vgpreload entry, ==PID== and --PID-- lines are valgrind's, not the loader's."""
    import fnmatch

    from pytest_noinherit import recorddir

    fake = _fake_preload_object(tmp_path, "vgpreload_core-fake.so")
    program = os.path.join(tmp_path, "chatty")
    with open(program, "w") as f:
        f.write(f"#!/bin/sh\nprintf '{stderr}' >&2\n")
    os.chmod(program, 0o755)
    monkeypatch.setattr(probe, "_SELF_TEST", program)
    monkeypatch.setenv("LD_PRELOAD", fake)
    d = recorddir.create()
    try:
        found = probe.ProbeEnvironment(d).self_test()
    finally:
        recorddir.remove(d)
    assert fnmatch.fnmatch(found, verdict), found


def test_self_test_ignores_the_record_of_valgrinds_launcher() -> None:
    """Under valgrind --trace-children the launcher is probed too: its record is not the child's."""
    fd = probe.ProbeFd(5, 0, 0, 1, 2, stat.S_IFIFO, "pipe:[2]")
    launcher = probe.ProbeRecord(7, 1, 0, "/usr/bin/valgrind", ("valgrind", "-q"), (fd,))
    tool = probe.ProbeRecord(7, 1, 0, "/usr/libexec/valgrind/memcheck", ("x",), (fd,))
    child = probe.ProbeRecord(7, 1, 1, "/usr/bin/true", ("/bin/true",), (fd,))
    assert [probe._valgrind_record(r) for r in (launcher, tool, child)] == [True, True, False]
    assert probe._self_test_verdict([child], 0, (5, 1, 2)) == ""
    assert "does not show the pipe" in probe._self_test_verdict([child], 0, (5, 1, 3))


REEXEC = """
import os, subprocess

def test_shell_opens_its_own_then_execs():
    subprocess.run(["/bin/sh", "-c", "exec 3</dev/null 7</dev/null; exec /bin/true"], check=True)

def test_shell_runs_its_last_command_in_place():
    subprocess.run(["/bin/sh", "-c", "exec 5</dev/null; /bin/true"], check=True)

def test_a_real_leak_through_the_same_exec():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        subprocess.run(["/bin/sh", "-c", "exec 3</dev/null; exec /bin/true"], close_fds=False)
    finally:
        os.close(r); os.close(w)
"""


def _observer_modes() -> list[str]:
    from pytest_noinherit import kernel

    usable = not kernel.unavailable(explicit=True) and kernel.observer_pid() is None
    return ["on", "kernel"] if usable else ["on"]


@pytest.mark.parametrize("mode", _observer_modes())
def test_what_a_child_opened_before_exec_again_is_not_the_tests(
    pytester: pytest.Pytester, mode: str
) -> None:
    """A first exec without a record, then one by the same pid: only the test's pipe counts."""
    pytester.makepyfile(test_reexec=REEXEC)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict", "--noinherit-probe", mode)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_reexec.py::test_a_real_leak_through_the_same_exec*"])
    failure = result.stdout.str().split("test_a_real_leak_through_the_same_exec")[1]
    assert "pipe" in failure
    assert "chr: /dev/null" not in result.stdout.str()


def test_an_inner_session_without_the_probe_hides_the_outer_one(pytester: pytest.Pytester) -> None:
    """An in-process inner session with the probe off: its children run without the
    outer session's probe, and the outer session gets its variables back after it."""
    pytester.makepyfile(
        inner_suite="""
import os, subprocess

def test_inner_children_run_without_the_probe():
    seen = [os.environ.get("NOINHERIT_PROBE_DIR"), os.environ.get("LD_PRELOAD")]
    with open(os.path.join(os.path.dirname(__file__), "inner-env.txt"), "w") as f:
        f.write(repr(seen))
    r, w = os.pipe()
    os.set_inheritable(w, True)
    subprocess.run(["sh", "-c", "/bin/true"], close_fds=False)
    os.close(r); os.close(w)
""",
        test_outer="""
import os, pytest

def test_nested():
    outer = os.environ["NOINHERIT_PROBE_DIR"]
    here = os.path.dirname(__file__)
    rc = pytest.main(["-q", "-p", "noinherit", "--noinherit-probe=off",
                      "-p", "no:cacheprovider", os.path.join(here, "inner_suite.py")])
    assert rc == 1  # the inner session's own Python-side view still fails it
    assert os.environ["NOINHERIT_PROBE_DIR"] == outer
""",
    )
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        "-p", "noinherit", "--noinherit-probe=on", f"--noinherit-report={report}", "test_outer.py"
    )
    result.assert_outcomes(passed=1)
    assert json.loads(report.read_text())["receptions"] == []
    assert (pytester.path / "inner-env.txt").read_text() == "[None, None]"
