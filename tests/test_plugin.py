"""The plugin in a session: loading, usage errors, test phases, capture modes, stdio."""

from __future__ import annotations

import pytest

LEAKY_AND_CLEAN = """
    from fdkit import inheritable_pipe, spawn

    def test_clean():
        with inheritable_pipe():
            spawn(close_fds=True)

    def test_leaky():
        with inheritable_pipe(at=50):
            spawn()
"""

# -- loading ------------------------------------------------------------------


def test_header_names_the_backend(fdkit: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header says which backend judges; PYTEST_NOINHERIT_BACKEND=python picks the reference."""
    fdkit.makepyfile("def test_nothing():\n    pass\n")
    monkeypatch.delenv("PYTEST_NOINHERIT_BACKEND", raising=False)
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["noinherit: backend native (*), strict off, probe off, patch off, baseline fds: *"]
    )
    monkeypatch.setenv("PYTEST_NOINHERIT_BACKEND", "python")
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["noinherit: backend python (forced by PYTEST_NOINHERIT_BACKEND=python), strict off, *"]
    )


def test_disabled_plugin_has_no_options(pytester: pytest.Pytester) -> None:
    """With -p no:noinherit the plugin is gone: --noinherit-strict is an unknown argument."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:noinherit", "--noinherit-strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --noinherit-strict*"])


def test_loads_with_autoload_disabled(
    fdkit: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 plus -p noinherit still loads and enforces it."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    fdkit.makepyfile(LEAKY_AND_CLEAN)
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["noinherit: backend *", "*_ test_leaky _*", "  fd 50 (pipe: *) leaked into *"]
    )


# -- usage errors -------------------------------------------------------------


def test_bad_probe_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """--noinherit-probe=maybe stops the session with a message naming the option."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "noinherit", "--noinherit-probe=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --noinherit-probe: 'maybe' is not a probe mode; use one of on, kernel, off, auto"]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        (
            "noinherit_probe = maybe",
            "ERROR: ini noinherit_probe: 'maybe' is not a probe mode;"
            " use one of on, kernel, off, auto",
        ),
        (
            "noinherit_allow = kind=nonsense",
            "ERROR: ini noinherit_allow: unknown kind 'nonsense'; known kinds: *",
        ),
        (
            "noinherit_allow = three",
            "ERROR: ini noinherit_allow: *'three' is neither a descriptor number nor key=value",
        ),
        ("noinherit_strict = maybe", "ERROR: *noinherit_strict*maybe*"),
    ],
    ids=["probe", "allow-kind", "allow-word", "strict"],
)
def test_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester, ini: str, message: str) -> None:
    """A bad noinherit_* ini value stops the session with a message naming the key."""
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "noinherit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_bad_backend_variable_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PYTEST_NOINHERIT_BACKEND=bogus is a usage error that lists the valid backends."""
    monkeypatch.setenv("PYTEST_NOINHERIT_BACKEND", "bogus")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "noinherit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: noinherit: PYTEST_NOINHERIT_BACKEND='bogus' is not a backend;"
            " use 'auto', 'native' or 'python'"
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stderr.no_fnmatch_line("*Traceback*")


# -- phases ---------------------------------------------------------------------


def test_violation_is_reported_in_the_phase_it_happened(fdkit: pytest.Pytester) -> None:
    """A child started in a fixture's setup errors at setup; in its teardown, at teardown."""
    fdkit.makepyfile(
        """
        import pytest
        from fdkit import inheritable_pipe, spawn

        @pytest.fixture
        def spawns_in_setup():
            with inheritable_pipe(at=50):
                spawn()
            yield

        @pytest.fixture
        def spawns_in_teardown():
            yield
            with inheritable_pipe(at=51):
                spawn()

        def test_setup(spawns_in_setup):
            pass

        def test_teardown(spawns_in_teardown):
            pass
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_setup _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd 50 (pipe: *) leaked into *",
            "*Captured noinherit setup*",
            "*_ ERROR at teardown of test_teardown _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd 51 (pipe: *) leaked into *",
            "*Captured noinherit teardown*",
            "*noinherit summary*",
            "VIOLATION fd 50 (pipe: *) reached a child of *::test_setup (setup)",
            "VIOLATION fd 51 (pipe: *) reached a child of *::test_teardown (teardown)",
        ]
    )


def test_own_failure_wins_and_the_violation_is_still_shown(fdkit: pytest.Pytester) -> None:
    """A test's own AssertionError is its failure; the violation errors its teardown beside it."""
    fdkit.makepyfile(
        """
        from fdkit import inheritable_pipe, spawn

        def test_fails_on_its_own():
            with inheritable_pipe(at=50):
                spawn()
                assert 1 + 1 == 3, "the test's own failure"
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_fails_on_its_own _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  (in call) fd 50 (pipe: *) leaked into pid * ?/bin/sleep 0.02? via"
            " subprocess.Popen, *",
            "*_ test_fails_on_its_own _*",
            "E * AssertionError: the test's own failure",
            "*Captured noinherit call*",
            "fd 50 (pipe: *)",
            "  child: pid * ?/bin/sleep 0.02? via subprocess.Popen, *",
            "  fix:   keep close_fds=True and hand it over with pass_fds; *",
            "*noinherit summary*",
            "VIOLATION fd 50 (pipe: *) reached a child of *::test_fails_on_its_own (call)",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED *::test_fails_on_its_own*"])


def test_violation_in_a_later_test_is_not_used_up(fdkit: pytest.Pytester) -> None:
    """test_a leaves an fd inheritable and spawns nothing; test_b's child receives it and fails."""
    fdkit.makepyfile(
        """
        import os, subprocess

        KEEP = []

        def test_a_opens_and_forgets():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            KEEP.append((r, w))

        def test_b_spawns():
            out = subprocess.run(
                ["ls", "/proc/self/fd"], close_fds=False, capture_output=True, text=True
            ).stdout.split()
            assert str(KEEP[0][1]) in out
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1, passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*_ test_b_spawns _*",
            "  fd * (pipe: *) leaked into pid * [[]ls /proc/self/fd[]] via subprocess.Popen, *",
            "*noinherit summary*",
            "VIOLATION fd * (pipe: *) reached a child of *::test_b_spawns (call)",
            "    came from: *::test_a_opens_and_forgets",
        ]
    )
    result.stdout.no_fnmatch_line("*DescriptorLeakWarning*")


def test_every_test_whose_child_receives_it_fails(fdkit: pytest.Pytester) -> None:
    """A descriptor that reaches the children of two tests fails both; the summary is one line."""
    fdkit.makepyfile(
        """
        import os
        from fdkit import spawn

        def test_a():
            r, w = os.pipe()
            os.dup2(w, 50)
            os.close(w)
            spawn()

        def test_b():
            spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_a _*",
            "  fd 50 (pipe: *) leaked into *",
            "*_ test_b _*",
            "  fd 50 (pipe: *) leaked into *",
            "VIOLATION fd 50 (pipe: *) reached the children of 2 tests:"
            " *::test_a (call), *::test_b (call)",
            "    came from: *::test_a",
        ]
    )
    assert result.stdout.str().count("VIOLATION ") == 1


def test_stdio_of_a_child_is_always_expected(fdkit: pytest.Pytester) -> None:
    """Descriptors on 0/1/2 are the child's own: a file as stdout, a CGI-style socket on fd 1."""
    fdkit.makepyfile(
        """
        import os
        import socket
        from fdkit import SLEEP, spawn

        def test_stdout_to_a_file(tmp_path):
            with open(tmp_path / "out", "w") as f:
                spawn(stdout=f)

        def test_cgi_socket_on_stdout():
            a, b = socket.socketpair()
            try:
                pid = os.fork()
                if pid == 0:
                    try:
                        os.dup2(a.fileno(), 1)
                        os.execv(SLEEP[0], SLEEP)
                    finally:
                        os._exit(127)
                assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            finally:
                a.close()
                b.close()

        def test_pass_fds(tmp_path):
            r, w = os.pipe()
            try:
                os.set_inheritable(w, True)
                spawn(close_fds=True, pass_fds=(w,))
            finally:
                os.close(r)
                os.close(w)
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*noinherit summary*")


# -- capture --------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["--capture=fd", "-s", "--capture=sys", "--capture=no"])
def test_capture_modes_change_nothing(fdkit: pytest.Pytester, capture: str) -> None:
    """Under every capture mode a clean test stays clean and a leaky one fails."""
    fdkit.makepyfile(LEAKY_AND_CLEAN)
    result = fdkit.runpytest("-p", "noinherit", capture)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*_ test_leaky _*", "  fd 50 (pipe: *) leaked into *"])
    result.stdout.no_fnmatch_line("*test_clean*leaked*")


def test_capfd_fixture_stays_clean(fdkit: pytest.Pytester) -> None:
    """capfd's own descriptors are never a violation, a leftover or a leak."""
    fdkit.makepyfile(
        """
        import subprocess
        from fdkit import SLEEP, spawn

        def test_capfd_child_output(capfd):
            subprocess.run(["echo", "from the child"], close_fds=False, check=True)
            spawn()
            assert capfd.readouterr().out == "from the child\\n"
        """
    )
    result = fdkit.runpytest("-p", "noinherit", "--noinherit-strict", "-W", "error")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*noinherit summary*")


def test_child_started_outside_any_test_is_listed(fdkit: pytest.Pytester) -> None:
    """A child started while a test module is imported is listed as outside any test."""
    fdkit.makepyfile(
        """
        from fdkit import inheritable_pipe, spawn

        with inheritable_pipe(at=50):
            spawn()

        def test_nothing():
            pass
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= noinherit summary =*",
            "VIOLATION fd 50 (pipe: *) reached a child of (outside any test) (outside)",
            "    into pid * ?/bin/sleep 0.02? via subprocess.Popen, *",
        ]
    )
