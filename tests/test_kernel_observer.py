"""The kernel exec observer (``--noinherit-probe=kernel``): every exec seen, nothing injected.

Each test compares what the observer sees with what the LD_PRELOAD probe
sees, on real children: static and 32-bit programs, scrubbed environments,
C-level spawns.  Where this kernel (or this sandbox) cannot run the
observer, the tests skip with the observer's own reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_noinherit import kernel, probe

# The sessions these tests start are new processes: below a run that holds
# the observer itself (tox -e self) they cannot add a listener of their own.
REASON = kernel.unavailable(explicit=True) or (
    "this run's own kernel observer holds the one listener of the process tree"
    if kernel.observer_pid() is not None
    else ""
)
needs_kernel = pytest.mark.skipif(bool(REASON), reason=f"kernel observer: {REASON}")
needs_probe = pytest.mark.skipif(probe.library() is None, reason="exec probe not built")
pytestmark = [
    needs_kernel,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]

# A C program that starts argv[1] with posix_spawn: with the caller's
# environment, or (argv[1] == "-e") with an empty one; it waits for it.
SPAWNER_C = r"""
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
extern char **environ;
int main(int argc, char **argv) {
    int empty = argc > 2 && strcmp(argv[1], "-e") == 0;
    char **args = argv + 1 + empty;
    char *none[] = {NULL};
    pid_t pid;
    int status;
    if (posix_spawn(&pid, args[0], NULL, NULL, args, empty ? none : environ) != 0)
        return 126;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 125;
}
"""

# A static 32-bit program (no 32-bit libc needed) that execs /bin/true with
# int 0x80: its exec is an i386 system call, AUDIT_ARCH_I386 in the filter.
EXEC32_S = """
.globl _start
.section .rodata
path: .asciz "/bin/true"
.data
argv: .long path, 0
.text
_start:
    movl $11, %eax
    movl $path, %ebx
    movl $argv, %ecx
    xorl %edx, %edx
    int $0x80
    movl $1, %eax
    movl $127, %ebx
    int $0x80
"""


def _build(tmp: Path, name: str, cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
    except OSError as exc:
        pytest.skip(f"cannot build {name}: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot build {name}: {proc.stderr.strip()[:200]}")
    return str(tmp / name)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A static program, a dynamic posix_spawn launcher, built once for the module."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    cc = shutil.which("cc") or "gcc"
    tmp = tmp_path_factory.mktemp("programs")
    (tmp / "spawner.c").write_text(SPAWNER_C)
    (tmp / "static.c").write_text("int main(void) { return 0; }\n")
    return {
        "spawner": _build(tmp, "spawner", [cc, "-O", "-o", "spawner", "spawner.c"]),
        "static": _build(tmp, "static", [cc, "-static", "-O", "-o", "static", "static.c"]),
    }


@pytest.fixture(scope="module")
def exec32(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The 32-bit program, if binutils can assemble it."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("no binutils for a 32-bit program")
    tmp = tmp_path_factory.mktemp("exec32")
    (tmp / "exec32.s").write_text(EXEC32_S)
    _build(tmp, "exec32.o", ["as", "--32", "-o", "exec32.o", "exec32.s"])
    path = _build(tmp, "exec32", ["ld", "-m", "elf_i386", "-o", "exec32", "exec32.o"])
    if subprocess.run([path], check=False).returncode != 0:
        pytest.skip("this kernel does not run 32-bit programs")
    return path


def _run(pytester: pytest.Pytester, mode: str, *args: str) -> tuple[Any, dict[str, Any]]:
    """An inner session under the given probe mode, and its JSON report."""
    report = pytester.path / f"report-{mode}.json"
    result = pytester.runpytest(
        "-p", "noinherit", f"--noinherit-probe={mode}", f"--noinherit-report={report}", *args
    )
    return result, json.loads(report.read_text())


def _programs_seen(doc: dict[str, Any]) -> list[str]:
    """The basenames of every program a reception names, in order."""
    return [os.path.basename(r["argv"][0]) for r in doc["receptions"] if r["argv"]]


LEAK = """
import ctypes, os, subprocess, sys

def leaky():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    return r, w
"""


def _both_modes(pytester: pytest.Pytester, body: str) -> tuple[Any, Any, list[str], list[str]]:
    pytester.makepyfile(LEAK + textwrap.dedent(body))
    kres, kdoc = _run(pytester, "kernel")
    pres, pdoc = _run(pytester, "on")
    return kres, pres, _programs_seen(kdoc), _programs_seen(pdoc)


def test_static_binary_started_from_c_by_a_shell_grandchild(
    pytester: pytest.Pytester, programs: dict[str, str]
) -> None:
    """sh -c starts a C launcher that starts a static binary: only the kernel observer sees it."""
    kres, _, kseen, pseen = _both_modes(
        pytester,
        f"""
        def test_static():
            r, w = leaky()
            cmd = "{programs["spawner"]} {programs["static"]}"
            subprocess.run(["sh", "-c", cmd + "; exit 0"], close_fds=False, check=True)
        """,
    )
    kres.assert_outcomes(failed=1)
    assert kseen == ["sh", "spawner", "static"]
    assert "static" not in pseen


def test_env_i_hides_nothing(pytester: pytest.Pytester, programs: dict[str, str]) -> None:
    """Through env -i the observer still sees the static binary and the shell below it."""
    kres, _, kseen, pseen = _both_modes(
        pytester,
        f"""
        def test_scrubbed():
            r, w = leaky()
            cmd = "env -i /bin/sh -c '{programs["static"]}; /bin/true'"
            subprocess.run(["sh", "-c", cmd], close_fds=False, check=True)
        """,
    )
    kres.assert_outcomes(failed=1)
    assert kseen == ["sh", "env", "sh", "static", "true"]
    assert pseen == ["sh", "env"]  # the probe goes no further than env -i


def test_c_posix_spawn_with_an_empty_environment(
    pytester: pytest.Pytester, programs: dict[str, str]
) -> None:
    """A C posix_spawn with an empty envp, from a ctypes-free C child: seen by the observer only."""
    kres, _, kseen, pseen = _both_modes(
        pytester,
        f"""
        def test_empty_envp():
            r, w = leaky()
            spawner = "{programs["spawner"]}"
            subprocess.run([spawner, "-e", "/bin/true"], close_fds=False, check=True)
        """,
    )
    kres.assert_outcomes(failed=1)
    assert kseen == ["spawner", "true"]
    assert pseen == ["spawner"]


def test_c_level_spawn_of_a_static_binary_fails_only_under_the_observer(
    pytester: pytest.Pytester, programs: dict[str, str]
) -> None:
    """ctypes posix_spawn of a static binary: nothing else sees it, the observer fails it."""
    kres, pres, kseen, pseen = _both_modes(
        pytester,
        f"""
        def test_ctypes_static():
            r, w = leaky()
            libc = ctypes.CDLL(None, use_errno=True)
            pid = ctypes.c_int()
            path = b"{programs["static"]}"
            argv = (ctypes.c_char_p * 2)(path, None)
            envp = (ctypes.c_char_p * 1)(None)
            assert libc.posix_spawn(ctypes.byref(pid), path, None, None, argv, envp) == 0
            assert os.waitpid(pid.value, 0)[1] == 0
            os.close(r); os.close(w)
        """,
    )
    kres.assert_outcomes(failed=1)
    kres.stdout.fnmatch_lines(
        ["*fd * (pipe: *) leaked into pid * [[]*static[]], a child of the test*"]
    )
    pres.assert_outcomes(passed=1)
    assert kseen == ["static"]
    assert pseen == []


def test_32_bit_child(pytester: pytest.Pytester, exec32: str) -> None:
    """A 32-bit program and what it execs with int 0x80 (AUDIT_ARCH_I386) are both observed."""
    pytester.makepyfile(
        LEAK
        + textwrap.dedent(
            f"""
            def test_32():
                r, w = leaky()
                subprocess.run(["{exec32}"], close_fds=False, check=True)
            """
        )
    )
    kres, kdoc = _run(pytester, "kernel")
    kres.assert_outcomes(failed=1)
    assert [r["argv"] for r in kdoc["receptions"]] == [[exec32], ["/bin/true"]]
    pres, pdoc = _run(pytester, "on")
    assert [r["argv"] for r in pdoc["receptions"]] == [[exec32]]  # Python's own view, no record
    assert pres.stderr.str().count("wrong ELF class") == 0


@needs_probe
def test_nothing_is_injected_into_children(pytester: pytest.Pytester) -> None:
    """A child asserting on its environment passes under the observer and fails under the probe."""
    # What the run itself was given (a sanitizer's LD_PRELOAD, a build's
    # NOINHERIT_CFLAGS) is not the plugin's doing: the child expects exactly that.
    given = {k: v for k, v in os.environ.items() if k == "LD_PRELOAD" or k.startswith("NOINHERIT_")}
    pytester.makepyfile(
        f"""
        import subprocess, sys
        CHECK = (
            "import os, sys; sys.exit({given!r} != {{k: v for k, v in os.environ.items()"
            " if k == 'LD_PRELOAD' or k.startswith('NOINHERIT_')}})"
        )
        def test_env():
            subprocess.run([sys.executable, "-c", CHECK], check=True)
        """
    )
    kres, _ = _run(pytester, "kernel")
    kres.assert_outcomes(passed=1)
    pres, _ = _run(pytester, "on")
    pres.assert_outcomes(failed=1)


def test_clean_suites_stay_green(pytester: pytest.Pytester) -> None:
    """close_fds=True, pass_fds and the allow_inherit marker pass under the observer, strict too."""
    pytester.makepyfile(
        LEAK
        + """
import pytest

def test_close_fds():
    r, w = leaky()
    subprocess.run(["sh", "-c", "/bin/true; exit 0"], check=True)
    os.close(r); os.close(w)

def test_pass_fds():
    r, w = leaky()
    subprocess.run(["sh", "-c", "/bin/true; cat /dev/null"], pass_fds=(w,), check=True)
    os.close(r); os.close(w)

@pytest.mark.allow_inherit(kind="pipe")
def test_allowed():
    r, w = leaky()
    subprocess.run(["sh", "-c", "/bin/true"], close_fds=False, check=True)
    os.close(r); os.close(w)

def test_shell_opens_its_own():
    subprocess.run(["sh", "-c", "exec 7</dev/null; /bin/true"], check=True)
"""
    )
    result, doc = _run(pytester, "kernel", "--noinherit-strict")
    result.stdout.fnmatch_lines(["noinherit: *probe kernel (seccomp exec observer)*"])
    result.assert_outcomes(passed=4)
    assert doc["problems"] == []


def test_failed_path_candidates_are_no_receptions(pytester: pytest.Pytester) -> None:
    """execvp's attempts on PATH entries that fail are not receptions: one child, one record."""
    pytester.makepyfile(
        LEAK
        + """
def test_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "noexec").mkdir()
    (tmp_path / "noexec" / "prog").write_text("#!/bin/sh\\n")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "prog").write_bytes(b"\\0\\0\\0\\0 not a program")
    (tmp_path / "garbage" / "prog").chmod(0o755)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "prog").mkdir()
    (tmp_path / "real").mkdir()
    os.symlink("/bin/true", tmp_path / "real" / "prog")
    dirs = ("missing", "empty", "noexec", "garbage", "dir", "real")
    path = ":".join(str(tmp_path / d) for d in dirs)
    r, w = leaky()
    subprocess.run(["prog"], close_fds=False, check=True, env={"PATH": path})
"""
    )
    result, doc = _run(pytester, "kernel")
    result.assert_outcomes(failed=1)
    assert [r["argv"] for r in doc["receptions"]] == [["prog"]]


def test_a_script_is_recorded_as_the_kernel_runs_it(pytester: pytest.Pytester) -> None:
    """A #! script's record names its interpreter, as /proc/<pid>/cmdline would."""
    pytester.makepyfile(
        LEAK
        + """
def test_script(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh -e\\nexit 0\\n")
    script.chmod(0o755)
    r, w = leaky()
    subprocess.run(["sh", "-c", f"{script} arg"], close_fds=False, check=True)
"""
    )
    result, doc = _run(pytester, "kernel")
    result.assert_outcomes(failed=1)
    _, argv = [r["argv"] for r in doc["receptions"]]
    assert argv[:2] == ["/bin/sh", "-e"]
    assert argv[2].endswith("/script")
    assert argv[3:] == ["arg"]


def _wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except OSError:
        return True


def test_a_daemon_outliving_the_session_can_still_exec(pytester: pytest.Pytester) -> None:
    """After the session a daemon's exec still succeeds; then the observer exits."""
    out = pytester.path / "daemon.out"
    pid_file = pytester.path / "observer.pid"
    pytester.makepyfile(
        f"""
        import subprocess
        from pytest_noinherit import kernel

        def test_start_daemon():
            with open({str(pid_file)!r}, "w") as f:
                f.write(str(kernel.observer_pid()))
            script = "sleep 1; /bin/true; echo $? > {out}"
            subprocess.Popen(["sh", "-c", script], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=kernel")
    result.assert_outcomes(passed=1)
    observer = int(pid_file.read_text())
    assert not out.exists()  # the session ended before the daemon's exec
    assert not _gone(observer)
    assert _wait_for(lambda: out.exists() and out.read_text().strip() != "")
    assert out.read_text().strip() == "0"
    assert _wait_for(lambda: _gone(observer))


def test_killing_the_observer_is_reported_once_and_hangs_nothing(
    pytester: pytest.Pytester,
) -> None:
    """A killed observer: every exec still runs, one incomplete finding, one problem line."""
    pytester.makepyfile(
        """
        import os, signal, subprocess, threading, time
        from pytest_noinherit import kernel

        def test_kill():
            pid = kernel.observer_pid()
            os.kill(pid, signal.SIGSTOP)
            # Stopped: this exec waits in the kernel for an answer nobody gives yet.
            late = threading.Thread(target=subprocess.run, args=(["/bin/true"],),
                                    kwargs={"check": True, "timeout": 30})
            late.start()
            time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            late.join(30)
            assert not late.is_alive()
            threads = [threading.Thread(target=subprocess.run, args=(["/bin/true"],),
                                        kwargs={"check": True, "timeout": 30}) for _ in range(8)]
            for t in threads: t.start()
            for t in threads: t.join(30)
            for _ in range(20):
                subprocess.run(["sh", "-c", "/bin/true"], check=True, timeout=30)

        def test_after():
            subprocess.run(["/bin/true"], check=True, timeout=30)
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=kernel", timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_kill*",
            "*the kernel exec observer died during the session*",
        ]
    )
    text = result.stdout.str()
    assert text.count("INCOMPLETE") + text.count("incomplete") >= 1
    # The section alone: under CI=true pytest's short summary repeats whole messages.
    summary = text.split("noinherit summary")[-1].split("short test summary info")[0]
    assert summary.count("the kernel exec observer died") == 2  # the finding, the problem


def test_in_process_sessions_share_the_observer(pytester: pytest.Pytester) -> None:
    """A nested pytest.main attaches its own directory and gives the outer one back."""
    pytester.makepyfile(
        inner_suite=LEAK
        + """
def test_inner_leak():
    r, w = leaky()
    subprocess.run(["sh", "-c", "/bin/true"], close_fds=False)
    os.close(r); os.close(w)
""",
        test_outer=LEAK
        + """
import pytest

def test_nested(tmp_path):
    here = os.path.dirname(__file__)
    rc = pytest.main(["-q", "-p", "noinherit", "--noinherit-probe=kernel",
                      "-p", "no:cacheprovider", os.path.join(here, "inner_suite.py")])
    assert rc == 1

def test_outer_leak_still_seen():
    r, w = leaky()
    subprocess.run(["/bin/true"], close_fds=False)
""",
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=kernel", "test_outer.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_outer_leak_still_seen _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "*leaked into pid * [[]/bin/true[]] via subprocess.Popen, observed by the exec probe",
        ]
    )


def test_an_inner_session_without_it_feeds_no_outer_records(pytester: pytest.Pytester) -> None:
    """An in-process inner session with the probe off: the observer records nothing for it."""
    pytester.makepyfile(
        inner_suite=LEAK
        + """
def test_inner_leak():
    r, w = leaky()
    subprocess.run(["sh", "-c", "/bin/true"], close_fds=False)
    os.close(r); os.close(w)
""",
        test_outer="""
import os, pytest

def test_nested():
    here = os.path.dirname(__file__)
    rc = pytest.main(["-q", "-p", "noinherit", "--noinherit-probe=off",
                      "-p", "no:cacheprovider", os.path.join(here, "inner_suite.py")])
    assert rc == 1  # the inner session's own Python-side view still fails it
""",
    )
    result, doc = _run(pytester, "kernel", "test_outer.py")
    result.assert_outcomes(passed=1)
    assert doc["receptions"] == []


def test_header_when_the_observer_is_unavailable(pytester: pytest.Pytester) -> None:
    """Where the observer cannot run, the header says why and the probe takes over."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    os.environ["NOINHERIT_KERNEL_UNAVAILABLE"] = "faked for the test"
    try:
        result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=kernel")
    finally:
        del os.environ["NOINHERIT_KERNEL_UNAVAILABLE"]
    result.stdout.fnmatch_lines(
        ["noinherit: *probe on (kernel observer unavailable: *faked for the test)*"]
    )


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_without_cap_sys_admin_auto_falls_back_and_kernel_sets_no_new_privs(
    pytester: pytest.Pytester,
) -> None:
    """Without CAP_SYS_ADMIN, auto keeps the probe; kernel asked by name sets no_new_privs."""
    pytester.makepyfile(
        """
        def test_no_new_privs():
            with open("/proc/self/status") as f:
                print("NNP", [l.split()[1] for l in f if l.startswith("NoNewPrivs")])
        """
    )
    drop = [str(SETPRIV), "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"]
    base = [sys.executable, "-m", "pytest", "-p", "noinherit", "-s", "-p", "no:cacheprovider"]
    auto = subprocess.run(
        [*drop, *base, "--noinherit-strict"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "probe on (kernel observer unavailable: without CAP_SYS_ADMIN" in auto.stdout
    assert "NNP ['0']" in auto.stdout
    explicit = subprocess.run(
        [*drop, *base, "--noinherit-probe=kernel"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "probe kernel (seccomp exec observer, no_new_privs set" in explicit.stdout
    assert "NNP ['1']" in explicit.stdout


def test_a_process_already_observed_falls_back(pytester: pytest.Pytester) -> None:
    """A session in a process whose parent holds the listener (one per tree) uses the probe."""
    pytester.makepyfile(
        """
        import subprocess, sys

        def test_inner_session(tmp_path):
            (tmp_path / "test_x.py").write_text("def test_x():\\n    pass\\n")
            out = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", "noinherit", "--noinherit-probe=kernel",
                 "-p", "no:cacheprovider", str(tmp_path)],
                capture_output=True, text=True,
            ).stdout
            assert "kernel observer unavailable: an ancestor process already" in out, out
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=kernel")
    result.assert_outcomes(passed=1)


# -- the run command ----------------------------------------------------------------


def _noinherit_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_noinherit", "run", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_run_kernel_sees_what_a_shell_opened() -> None:
    """run --kernel: the descriptor a shell opened reaches the program it runs."""
    proc = _noinherit_run("--kernel", "--", "sh", "-c", "exec 9</dev/null; /bin/true")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "probe kernel" in lines[0]
    assert any(line.startswith("VIOLATION fd 9 (") and "(true)" in line for line in lines)
    assert "2 processes observed" in lines[-1]


def test_run_kernel_sees_static_and_scrubbed(programs: dict[str, str]) -> None:
    """run --kernel lists a static program behind env -i, which the probe cannot."""
    command = ["--", "sh", "-c", f"env -i {programs['static']}"]
    kernel_run = _noinherit_run("--kernel", "--json", *command)
    doc = json.loads(kernel_run.stdout)
    assert [os.path.basename(p["argv"][0]) for p in doc["processes"]] == ["sh", "env", "static"]
    if probe.library() is not None:
        probe_run = _noinherit_run("--json", *command)
        doc = json.loads(probe_run.stdout)
        assert [os.path.basename(p["argv"][0]) for p in doc["processes"]] == ["sh", "env"]


def test_run_kernel_fails_on_leak(tmp_path: Path) -> None:
    """run --kernel --fail-on-leak: a leak into a static program changes the status."""
    proc = _noinherit_run(
        "--kernel", "--fail-on-leak", "--", "sh", "-c", "exec 7</dev/null; env -i /bin/true"
    )
    assert proc.returncode == 122, proc.stderr
    assert "VIOLATION fd 7" in proc.stderr


def test_the_observer_self_test_passes() -> None:
    """The observer program runs its self-test, exits 0 and says ok."""
    observer = kernel.observer_path()
    assert observer is not None
    proc = subprocess.run(
        [observer, "--self-test"], capture_output=True, text=True, timeout=30, check=False
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok")


def test_sigint_to_the_run_does_not_reach_the_observer(pytester: pytest.Pytester) -> None:
    """The observer is in a session of its own: a Ctrl-C for the test run leaves it alive."""
    pytester.makepyfile(
        """
        import os, signal
        from pytest_noinherit import kernel

        def test_pgrp():
            pid = kernel.observer_pid()
            assert os.getsid(pid) == pid != os.getsid(0)
            assert os.getpgid(pid) != os.getpgid(0)
        """
    )
    pytester.runpytest("-p", "noinherit", "--noinherit-probe=kernel").assert_outcomes(passed=1)


def test_xdist_workers_each_observe(
    pytester: pytest.Pytester, programs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under pytest-xdist every worker installs its own observer; the controller none."""
    pytest.importorskip("xdist")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makepyfile(
        LEAK
        + textwrap.dedent(
            f"""
            import pytest

            @pytest.mark.parametrize("n", range(4))
            def test_static(n):
                r, w = leaky()
                subprocess.run(["sh", "-c", "env -i {programs["static"]}"], close_fds=False)
                os.close(r); os.close(w)
            """
        )
    )
    result, doc = _run(pytester, "kernel", "-n", "2", "-p", "no:randomly")
    result.stdout.fnmatch_lines(["noinherit: *probe kernel (in each xdist worker)*"])
    result.assert_outcomes(failed=4)
    assert _programs_seen(doc).count("static") == 4
