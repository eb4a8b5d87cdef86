"""Descriptors that outlive their test: strict-mode errors and DescriptorLeakWarning."""

from __future__ import annotations

import pytest

LEAVES_OPEN = """
    import os

    def test_leaves_inheritable_open():
        r, w = os.pipe()
        os.close(r)
        os.dup2(w, 50)
        os.close(w)

    def test_leaves_non_inheritable_open():
        r, w = os.pipe()
        os.close(r)
        os.dup2(w, 51, inheritable=False)
        os.close(w)

    def test_closes_everything():
        r, w = os.pipe()
        os.set_inheritable(w, True)
        os.close(r)
        os.close(w)
"""


@pytest.mark.parametrize("how", ["option", "ini"])
def test_strict_mode_errors_on_inheritable_leftovers(pytester: pytest.Pytester, how: str) -> None:
    """--noinherit-strict or noinherit_strict=true: an inheritable fd left open errors teardown."""
    pytester.makepyfile(LEAVES_OPEN)
    if how == "ini":
        pytester.makeini("[pytest]\nnoinherit_strict = true\n")
        result = pytester.runpytest("-p", "noinherit")
    else:
        result = pytester.runpytest("-p", "noinherit", "--noinherit-strict")
    # A close-on-exec descriptor left open is no inheritance problem: no warning.
    result.assert_outcomes(passed=3, errors=1, warnings=0)
    result.stdout.fnmatch_lines(
        [
            "noinherit: backend *, strict on, *",
            "*_ ERROR at teardown of test_leaves_inheritable_open _*",
            "noinherit: 1 inheritable descriptor left open (--noinherit-strict)",
            "  fd 50 (pipe: *) is still open after the test",
            "*Captured noinherit teardown*",
            "  left open and inheritable by the test: *",
            "  fix:   close it, or create it non-inheritable (os.set_inheritable(fd, False))",
            "*noinherit summary*",
            "LEFTOVER *::test_leaves_inheritable_open: fd 50 (pipe: *), still open after the test",
        ]
    )
    result.stdout.no_fnmatch_line("*DescriptorLeakWarning*")
    result.stdout.no_fnmatch_line("*nobody*allowed*")
    result.stdout.no_fnmatch_line("*test_closes_everything*")


def test_default_mode_lists_latent_leftovers_without_warnings(pytester: pytest.Pytester) -> None:
    """Without strict mode an inheritable leftover is listed as latent; nothing warns."""
    pytester.makepyfile(LEAVES_OPEN)
    result = pytester.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=3, warnings=0)
    result.stdout.fnmatch_lines(
        [
            "noinherit: backend *, strict off, *",
            "*noinherit summary*",
            "LATENT *::test_leaves_inheritable_open: fd 50 (pipe: *) left open and inheritable"
            " (would fail under --noinherit-strict)",
        ]
    )
    result.stdout.no_fnmatch_line("*fd 51*")
    result.stdout.no_fnmatch_line("LEFTOVER*")


@pytest.mark.parametrize("how", ["option", "ini"])
def test_leak_check_warns_about_every_descriptor_left_open(
    pytester: pytest.Pytester, how: str
) -> None:
    """--noinherit-leaks (or noinherit_leaks): any descriptor left open is a"
    " DescriptorLeakWarning."""
    pytester.makepyfile(LEAVES_OPEN)
    if how == "ini":
        pytester.makeini("[pytest]\nnoinherit_leaks = true\n")
        result = pytester.runpytest("-p", "noinherit")
    else:
        result = pytester.runpytest("-p", "noinherit", "--noinherit-leaks")
    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "*DescriptorLeakWarning: fd 50 (pipe: *) was opened by the test and is still open*",
            "*DescriptorLeakWarning: fd 51 (pipe: *) was opened by the test and is still open*",
            "*noinherit summary*",
            "2 descriptor leak(s) reported as DescriptorLeakWarning:",
        ]
    )


def test_strict_mode_with_the_leak_check(pytester: pytest.Pytester) -> None:
    """Strict and leaks together: the inheritable one errors, the close-on-exec one warns."""
    pytester.makepyfile(LEAVES_OPEN)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict", "--noinherit-leaks")
    result.assert_outcomes(passed=3, errors=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*DescriptorLeakWarning: fd 51 (pipe: *) was opened by the test and is still open*",
            "LEFTOVER *::test_leaves_inheritable_open: fd 50 (pipe: *), still open after the test",
            "1 descriptor leak(s) reported as DescriptorLeakWarning:",
            "    *::test_leaves_non_inheritable_open: fd 51 (pipe: *) (opened by the test)",
        ]
    )


def test_leak_warning_can_be_made_an_error(pytester: pytest.Pytester) -> None:
    """-W error::pytest_noinherit.DescriptorLeakWarning turns a leak into an error at teardown."""
    pytester.makepyfile(LEAVES_OPEN)
    result = pytester.runpytest(
        "-p",
        "noinherit",
        "--noinherit-leaks",
        "-W",
        "error::pytest_noinherit.DescriptorLeakWarning",
    )
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_leaves_inheritable_open _*",
            "*DescriptorLeakWarning: fd 50 (pipe: *) was opened by the test and is still open*",
        ]
    )


@pytest.mark.parametrize("strict", [False, True])
def test_filterwarnings_error_keeps_a_clean_suite_green(
    pytester: pytest.Pytester, strict: bool
) -> None:
    """filterwarnings = error: close-on-exec descriptors left open fail nothing, strict or not."""
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    pytester.makepyfile(
        """
        import os, select, socket

        KEEP = []

        def test_epoll_and_socketpair_kept():
            KEEP.append(select.epoll())
            KEEP.extend(socket.socketpair())

        def test_pipe_kept():
            KEEP.extend(os.pipe())

        def test_file_deleted_but_open(tmp_path):
            f = open(tmp_path / "pid", "w")
            os.unlink(tmp_path / "pid")
            KEEP.append(f)
        """
    )
    args = ["-p", "noinherit", *(["--noinherit-strict"] if strict else [])]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=3)
    assert result.ret == 0


def test_module_fixture_is_judged_at_its_own_teardown(pytester: pytest.Pytester) -> None:
    """A module fixture's inheritable fd is no test's leftover; the fixture's teardown is judged."""
    pytester.makepyfile(
        test_fixture_module="""
        import os
        import pytest

        @pytest.fixture(scope="module")
        def tidy():
            r, w = os.pipe()
            os.dup2(w, 50)
            yield 50
            os.close(r)
            os.close(w)
            os.close(50)

        @pytest.fixture(scope="module")
        def forgetful():
            r, w = os.pipe()
            os.dup2(w, 51)
            yield 51
            os.close(r)
            os.close(w)  # but not 51

        def test_first(tidy, forgetful):
            pass

        def test_second(tidy, forgetful):
            pass
        """,
        test_later_module="""
        def test_after():
            pass
        """,
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_second _*",
            "noinherit: 1 inheritable descriptor left open (--noinherit-strict)",
            "  fd 51 (pipe: *) is still open after the teardown of the"
            " module-scoped fixture 'forgetful'",
            "*noinherit summary*",
            "LEFTOVER test_fixture_module.py::test_second: fd 51 (pipe: *), still open after *",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_first*")
    result.stdout.no_fnmatch_line("*fd 50 *")
    result.stdout.no_fnmatch_line("*test_after*fd 51*")


def test_descriptor_opened_by_c_code_is_a_strict_leftover(pytester: pytest.Pytester) -> None:
    """libc open() via ctypes makes an inheritable fd Python never saw; strict mode catches it."""
    pytester.makepyfile(
        """
        import ctypes
        import os

        def test_c_open():
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.open(b"/dev/null", os.O_RDONLY)  # no O_CLOEXEC: inheritable
            assert fd >= 0, os.strerror(ctypes.get_errno())
            assert os.get_inheritable(fd)
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_c_open _*",
            "  fd * (chr: /dev/null) is still open after the test",
        ]
    )


def test_leftover_is_blamed_once(pytester: pytest.Pytester) -> None:
    """A strict leftover errors the test that left it, not every test after it."""
    pytester.makepyfile(
        """
        import os

        def test_leaves_it():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            os.close(r)

        def test_later():
            pass
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*_ ERROR at teardown of test_leaves_it _*"])
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_later*")


def test_fixture_set_up_and_torn_down_in_one_test_is_reported_once(
    pytester: pytest.Pytester,
) -> None:
    """A module fixture used by one test only: its leftover is the fixture's, reported once."""
    pytester.makepyfile(
        """
        import os, pytest

        @pytest.fixture(scope="module")
        def forgetful():
            r, w = os.pipe()
            os.dup2(w, 51)
            yield 51
            os.close(r)
            os.close(w)  # but not 51

        def test_only(forgetful):
            pass
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict")
    result.assert_outcomes(passed=1, errors=1)
    assert result.stdout.str().count("LEFTOVER ") == 1
    result.stdout.fnmatch_lines(
        [
            "LEFTOVER *::test_only: fd 51 (pipe: *), still open after the"
            " teardown of the module-scoped fixture 'forgetful'"
        ]
    )


def test_a_fixture_descriptor_comes_from_the_fixture(fdkit: pytest.Pytester) -> None:
    """A session fixture's inheritable pipe reaching tests' children names the fixture."""
    fdkit.makepyfile(
        """
        import os, pytest
        from fdkit import spawn

        @pytest.fixture(scope="session")
        def pool():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            yield w
            os.close(r); os.close(w)

        def test_one(pool):
            spawn()

        def test_two(pool):
            spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "VIOLATION fd * (pipe: *) reached the children of 2 tests: *",
            "    came from: the session-scoped fixture 'pool'",
        ]
    )
