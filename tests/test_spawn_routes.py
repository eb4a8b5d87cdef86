"""Every Python-level way to start a child: an undeclared inheritable descriptor fails the test.

Each outer test runs one inner session holding several small inner tests, so
a route's failing and passing cases are judged side by side.
"""

from __future__ import annotations

import pytest

# How the failure message names a child (findings.describe_child).
OBSERVED = "observed in the child"
PREDICTED = "predicted from the parent's table at spawn time"
REPORTED = "reported by the fork child just before exec"


@pytest.mark.parametrize("backend", ["native", "python"])
def test_subprocess_functions_with_close_fds_false_fail(
    fdkit: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Popen/run/call/check_call/check_output with close_fds=False fail, on both backends."""
    monkeypatch.setenv("PYTEST_NOINHERIT_BACKEND", backend)
    fdkit.makepyfile(
        """
        import subprocess
        from fdkit import SLEEP, inheritable_pipe

        def test_popen():
            with inheritable_pipe(at=50):
                subprocess.Popen(SLEEP, close_fds=False).wait()

        def test_run():
            with inheritable_pipe(at=51):
                subprocess.run(SLEEP, close_fds=False)

        def test_call():
            with inheritable_pipe(at=52):
                subprocess.call(SLEEP, close_fds=False)

        def test_check_call():
            with inheritable_pipe(at=53):
                subprocess.check_call(SLEEP, close_fds=False)

        def test_check_output():
            with inheritable_pipe(at=54):
                subprocess.check_output(SLEEP, close_fds=False)

        def test_run_default_close_fds():
            with inheritable_pipe(at=55):
                subprocess.run(SLEEP)
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=5, passed=1)
    result.stdout.fnmatch_lines(
        [
            f"noinherit: backend {backend} *",
            "*_ test_popen _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd 50 (pipe: pipe:*) leaked into pid * ?/bin/sleep 0.02? via subprocess.Popen, *",
            "*_ test_run _*",
            "  fd 51 (pipe: *) leaked into *",
            "*_ test_call _*",
            "  fd 52 (pipe: *) leaked into *",
            "*_ test_check_call _*",
            "  fd 53 (pipe: *) leaked into *",
            "*_ test_check_output _*",
            "  fd 54 (pipe: *) leaked into *",
        ]
    )
    result.stdout.no_fnmatch_line("*fd 55*")


def test_getoutput_os_popen_and_close_fds_true_pass(fdkit: pytest.Pytester) -> None:
    """getoutput/getstatusoutput and os.popen use close_fds=True: an inheritable fd stays home."""
    fdkit.makepyfile(
        """
        import os
        import subprocess
        from fdkit import inheritable_pipe

        def test_getoutput():
            with inheritable_pipe():
                assert subprocess.getoutput("echo hi") == "hi"

        def test_getstatusoutput():
            with inheritable_pipe():
                assert subprocess.getstatusoutput("true") == (0, "")

        def test_os_popen():
            with inheritable_pipe():
                with os.popen("echo hi") as f:
                    assert f.read() == "hi\\n"
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*noinherit summary*")


def test_os_system_fails_by_prediction(fdkit: pytest.Pytester) -> None:
    """os.system hands the shell every inheritable fd; the verdict is predicted from the table."""
    fdkit.makepyfile(
        """
        import os
        from fdkit import inheritable_pipe

        def test_system_leaks():
            with inheritable_pipe(at=50):
                assert os.system("true") == 0

        def test_system_clean():
            assert os.system("true") == 0
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_system_leaks _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            f"  fd 50 (pipe: *) leaked into a child ?/bin/sh -c true? via os.system, {PREDICTED}",
            "FAILED *::test_system_leaks - Failed: noi*",
        ]
    )


def test_posix_spawn_and_its_file_actions(fdkit: pytest.Pytester) -> None:
    """posix_spawn[p] fail without file actions; CLOSE or a DUP2 onto the fd itself declare it."""
    fdkit.makepyfile(
        """
        import os
        from fdkit import SLEEP, inheritable_pipe

        def run(spawn, path, **kwargs):
            pid = spawn(path, SLEEP, os.environ, **kwargs)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

        def test_posix_spawn_leaks():
            with inheritable_pipe(at=50):
                run(os.posix_spawn, SLEEP[0])

        def test_posix_spawnp_leaks():
            with inheritable_pipe(at=51):
                run(os.posix_spawnp, "sleep")

        def test_close_action_passes():
            with inheritable_pipe(at=52) as w:
                run(os.posix_spawn, SLEEP[0], file_actions=[(os.POSIX_SPAWN_CLOSE, w)])

        def test_dup2_onto_itself_declares_it():
            with inheritable_pipe(at=53) as w:
                run(os.posix_spawn, SLEEP[0], file_actions=[(os.POSIX_SPAWN_DUP2, w, w)])

        def test_dup2_onto_stdout_still_leaks_the_source():
            with inheritable_pipe(at=54) as w:
                run(os.posix_spawn, SLEEP[0], file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=3, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_posix_spawn_leaks _*",
            "  fd 50 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via os.posix_spawn, *",
            "*_ test_posix_spawnp_leaks _*",
            "  fd 51 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via os.posix_spawnp, *",
            "*_ test_dup2_onto_stdout_still_leaks_the_source _*",
            "  fd 54 (pipe: *) leaked into pid * via os.posix_spawn, *",
            "*add a POSIX_SPAWN_CLOSE file action for it*",
        ]
    )


def test_fork_exec_and_spawnv(fdkit: pytest.Pytester) -> None:
    """fork+exec and os.spawnv fail; a fork child that cleans up or opts in on purpose passes."""
    fdkit.makepyfile(
        """
        import os
        from fdkit import SLEEP, inheritable_pipe

        def fork_exec(in_child=lambda: None):
            pid = os.fork()
            if pid == 0:
                try:
                    in_child()
                    os.execv(SLEEP[0], SLEEP)
                finally:
                    os._exit(127)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

        def test_fork_exec_leaks():
            with inheritable_pipe(at=50):
                fork_exec()

        def test_fork_close_exec_passes():
            with inheritable_pipe(at=51) as w:
                fork_exec(lambda: os.close(w))

        def test_fork_closes_one_keeps_another_passes():
            with inheritable_pipe(at=52) as closed, inheritable_pipe(at=53):
                fork_exec(lambda: os.close(closed))

        def test_fork_made_inheritable_after_fork_passes():
            r, w = os.pipe()
            try:
                fork_exec(lambda: os.set_inheritable(w, True))
            finally:
                os.close(r)
                os.close(w)

        def test_spawnv_leaks():
            with inheritable_pipe(at=54):
                assert os.spawnv(os.P_WAIT, SLEEP[0], SLEEP) == 0
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=2, passed=3)
    result.stdout.fnmatch_lines(
        [
            "*_ test_fork_exec_leaks _*",
            f"  fd 50 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via fork+exec, {REPORTED}",
            "*close it in the child before exec*",
            "*_ test_spawnv_leaks _*",
            f"  fd 54 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via fork+exec, {REPORTED}",
        ]
    )
    result.stdout.no_fnmatch_line("*fd 5[123] *")


def test_pty_fork_and_pty_spawn(fdkit: pytest.Pytester) -> None:
    """pty.fork+exec and pty.spawn fail with a leaked fd and pass without one."""
    fdkit.makepyfile(
        """
        import os
        import pty
        from fdkit import SLEEP, inheritable_pipe

        def pty_fork_exec():
            pid, master = pty.fork()
            if pid == 0:
                try:
                    os.execv(SLEEP[0], SLEEP)
                finally:
                    os._exit(127)
            try:
                assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            finally:
                os.close(master)

        def test_pty_fork_leaks():
            with inheritable_pipe(at=50):
                pty_fork_exec()

        def test_pty_fork_clean():
            pty_fork_exec()

        def test_pty_spawn_leaks():
            with inheritable_pipe(at=51):
                pty.spawn(SLEEP)

        def test_pty_spawn_clean():
            pty.spawn(SLEEP)
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_pty_fork_leaks _*",
            "  fd 50 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via fork+exec, *",
            "*_ test_pty_spawn_leaks _*",
            "  fd 51 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via fork+exec, *",
        ]
    )


def test_asyncio_create_subprocess_exec(fdkit: pytest.Pytester) -> None:
    """asyncio.create_subprocess_exec fails with close_fds=False and passes by default."""
    fdkit.makepyfile(
        """
        import asyncio
        from fdkit import SLEEP, inheritable_pipe

        async def run(**kwargs):
            proc = await asyncio.create_subprocess_exec(*SLEEP, **kwargs)
            assert await proc.wait() == 0

        def test_close_fds_false_leaks():
            with inheritable_pipe(at=50):
                asyncio.run(run(close_fds=False))

        def test_default_passes():
            with inheritable_pipe(at=51):
                asyncio.run(run())
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_close_fds_false_leaks _*",
            "  fd 50 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via subprocess.Popen, *",
        ]
    )


def test_multiprocessing_start_methods_pass(fdkit: pytest.Pytester) -> None:
    """multiprocessing spawn/forkserver/fork and a spawn ProcessPoolExecutor leak no test fd."""
    fdkit.makepyfile(
        """
        import concurrent.futures
        import multiprocessing
        import pytest
        from fdkit import inheritable_pipe

        @pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
        def test_process(method):
            with inheritable_pipe():
                p = multiprocessing.get_context(method).Process(target=abs, args=(-1,))
                p.start()
                p.join()
                assert p.exitcode == 0

        def test_process_pool_executor():
            ctx = multiprocessing.get_context("spawn")
            with inheritable_pipe():
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    assert pool.submit(abs, -2).result() == 2
        """
    )
    # The resource tracker and the fork server outlive the test that started
    # them on purpose; their pipes are leak warnings, not what this test is about.
    result = fdkit.runpytest(
        "-p", "noinherit", "-W", "ignore::pytest_noinherit.DescriptorLeakWarning"
    )
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("*VIOLATION*")


def test_child_exiting_at_once_still_fails(fdkit: pytest.Pytester) -> None:
    """/bin/true is gone before anyone looks at it; close_fds=False still fails the test."""
    fdkit.makepyfile(
        """
        from fdkit import inheritable_pipe, spawn

        def test_true():
            with inheritable_pipe(at=50):
                spawn(["/bin/true"])
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1)
    # Observed if /bin/true is still running when the wrapper looks, else predicted.
    result.stdout.re_match_lines(
        [
            r"  fd 50 \(pipe: .*\) leaked into pid \d+ \[/bin/true\] via subprocess\.Popen,"
            rf" ({OBSERVED}|{PREDICTED})$"
        ]
    )


# BUG (reported to the package owner): read_child_table() returns {} for a child between
# exit_files() and zombie, and _record_child() takes that as proof the child holds nothing.
def test_child_caught_while_exiting_still_fails(fdkit: pytest.Pytester) -> None:
    """A child whose descriptor table is already torn down, but is not yet a zombie, still fails."""
    # The window between the kernel's exit_files() (the /proc fd table goes
    # empty) and exit_notify() (the state becomes Z) is microseconds wide, so
    # plain /bin/true falls into it about once in 2000 spawns under load.  A
    # 512 MiB memfd whose last reference is the child's makes that window
    # milliseconds wide (its pages are freed in between), and a busy thread
    # with a 5 ms switch interval delays the parent's look into it.
    fdkit.makepyfile(
        """
        import os
        import sys
        import threading
        from fdkit import inheritable_pipe, spawn

        def ballast():
            fd = os.memfd_create("ballast", 0)  # inheritable: only the child holds it
            os.posix_fallocate(fd, 0, 512 << 20)

        def spin(stop):
            while not stop.is_set():
                pass

        def test_true():
            stop = threading.Event()
            spinner = threading.Thread(target=spin, args=(stop,))
            sys.setswitchinterval(0.005)
            spinner.start()
            try:
                with inheritable_pipe(at=50):
                    spawn(["/bin/true"], preexec_fn=ballast)
            finally:
                stop.set()
                spinner.join()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["  fd 50 (pipe: *) leaked into pid * ?/bin/true? via *"])


# BUG (reported to the package owner): SpawnTracker.on_audit() ignores os.system outside the
# pytest process, so a fork child (a multiprocessing 'fork' worker) running it is never judged.
def test_os_system_in_a_fork_child_fails(fdkit: pytest.Pytester) -> None:
    """A multiprocessing 'fork' worker that runs os.system hands the shell the test's fd."""
    fdkit.makepyfile(
        """
        import multiprocessing
        import os
        from fdkit import inheritable_pipe

        def work():
            assert os.system("true") == 0

        def test_fork_worker_runs_system():
            with inheritable_pipe(at=50):
                p = multiprocessing.get_context("fork").Process(target=work)
                p.start()
                p.join()
                assert p.exitcode == 0
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["  fd 50 (pipe: *) leaked into * via os.system, *"])
