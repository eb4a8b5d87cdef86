"""Allowances: markers, the ``noinherit`` fixture, the ini list and the hooks.

An allowance is never a silent filter: each test here also checks that the
summary says what each allowance allowed.
"""

from __future__ import annotations

import pytest


def test_marker_by_number_kind_path_and_bare(fdkit: pytest.Pytester) -> None:
    """allow_inherit(50), kind=, path= and the bare marker allow exactly what they name."""
    fdkit.makepyfile(
        """
        import os
        import socket
        import pytest
        from fdkit import inheritable_pipe, spawn

        @pytest.mark.allow_inherit(50)
        def test_number():
            with inheritable_pipe(at=50):
                spawn()

        @pytest.mark.allow_inherit(50)
        def test_number_does_not_cover_another_fd():
            with inheritable_pipe(at=51):
                spawn()

        @pytest.mark.allow_inherit(kind="pipe")
        def test_kind_pipe():
            with inheritable_pipe(at=52):
                spawn()

        @pytest.mark.allow_inherit(kind="socket")
        def test_kind_socket():
            a, b = socket.socketpair()
            try:
                os.dup2(a.fileno(), 53)
                spawn()
            finally:
                os.close(53)
                a.close()
                b.close()

        @pytest.mark.allow_inherit(kind="socket")
        def test_kind_socket_does_not_cover_a_pipe():
            with inheritable_pipe(at=54):
                spawn()

        @pytest.mark.allow_inherit(path="*.sock")
        def test_path_glob(tmp_path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.bind(str(tmp_path / "server.sock"))
                os.dup2(s.fileno(), 55)
                spawn()
            finally:
                os.close(55)
                s.close()

        @pytest.mark.allow_inherit
        def test_bare():
            with inheritable_pipe(at=56):
                spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_number_does_not_cover_another_fd _*",
            "  fd 51 (pipe: *) leaked into *",
            "*_ test_kind_socket_does_not_cover_a_pipe _*",
            "  fd 54 (pipe: *) leaked into *",
        ]
    )
    result.stdout.fnmatch_lines_random(
        [
            "allowed by marker on *::test_number: 50:",
            "    *::test_number: fd 50 (pipe: *) into pid * ?/bin/sleep 0.02? via *",
            "allowed by marker on *::test_kind_pipe: kind=pipe:",
            "allowed by marker on *::test_kind_socket: kind=socket:",
            "    *::test_kind_socket: fd 53 (socket: AF_UNIX/SOCK_STREAM*) into *",
            "allowed by marker on *::test_path_glob: path=*.sock:",
            "    *::test_path_glob: fd 55 (socket: AF_UNIX/SOCK_STREAM */server.sock) into *",
            "allowed by marker on *::test_bare: any descriptor:",
        ]
    )


def test_marker_on_a_class_and_a_module(fdkit: pytest.Pytester) -> None:
    """A marker on a class or through pytestmark covers every test inside it."""
    fdkit.makepyfile(
        """
        import pytest
        from fdkit import inheritable_pipe, spawn

        pytestmark = pytest.mark.allow_inherit(50)

        def test_module_level():
            with inheritable_pipe(at=50):
                spawn()

        @pytest.mark.allow_inherit(kind="pipe")
        class TestPipes:
            def test_in_class(self):
                with inheritable_pipe(at=51):
                    spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "allowed by pytestmark of test_marker_on_a_class_and_a_module.py: 50:",
            "allowed by class marker on *::TestPipes: kind=pipe:",
        ]
    )


def test_noinherit_fixture_allows_numbers_files_and_sockets(fdkit: pytest.Pytester) -> None:
    """noinherit.allow() takes a number, a file or a socket; an object allows that open file."""
    fdkit.makepyfile(
        """
        import os
        import socket
        from fdkit import inheritable_pipe, spawn

        def test_number(noinherit):
            with inheritable_pipe(at=50) as w:
                noinherit.allow(w)
                spawn()

        def test_file(noinherit, tmp_path):
            with open(tmp_path / "data.txt", "w") as f:
                os.set_inheritable(f.fileno(), True)
                noinherit.allow(f)
                spawn()

        def test_socket(noinherit):
            a, b = socket.socketpair()
            try:
                a.set_inheritable(True)
                noinherit.allow(a)
                spawn()
            finally:
                a.close()
                b.close()

        def test_file_allowance_does_not_cover_the_next_file_at_that_number(noinherit, tmp_path):
            r, w = os.pipe()
            try:
                with open(tmp_path / "first", "w") as f:
                    noinherit.allow(f)
                    os.dup2(w, f.fileno())  # a pipe now sits at the allowed number
                    spawn()
            finally:
                os.close(r)
                os.close(w)
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_file_allowance_does_not_cover_the_next_file_at_that_number _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd * (pipe: *) leaked into *",
        ]
    )
    result.stdout.fnmatch_lines_random(
        [
            "allowed by noinherit.allow() in *::test_number: 50:",
            "allowed by noinherit.allow() in *::test_file: *, that open file:",
            "    *::test_file: fd * (file: */data.txt) into *",
            "allowed by noinherit.allow() in *::test_socket: *, that open file:",
            "    *::test_socket: fd * (socket: AF_UNIX/SOCK_STREAM*) into *",
        ]
    )


def test_noinherit_fixture_rejects_what_is_not_a_descriptor(fdkit: pytest.Pytester) -> None:
    """noinherit.allow("3") raises a TypeError that says what it takes."""
    fdkit.makepyfile(
        """
        def test_string(noinherit):
            noinherit.allow("3")
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * TypeError: noinherit.allow() takes descriptor numbers"
            " or objects with fileno(), not '3'"
        ]
    )


def test_ini_allowances(fdkit: pytest.Pytester) -> None:
    """noinherit_allow lines (a number, kind=pipe) allow for every test and are listed."""
    fdkit.makeini(
        """
        [pytest]
        noinherit_allow =
            50
            kind=socket
        """
    )
    fdkit.makepyfile(
        """
        import socket
        from fdkit import inheritable_pipe, spawn

        def test_number():
            with inheritable_pipe(at=50):
                spawn()

        def test_socket():
            a, b = socket.socketpair()
            try:
                a.set_inheritable(True)
                spawn()
            finally:
                a.close()
                b.close()

        def test_other_pipe():
            with inheritable_pipe(at=51):
                spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*_ test_other_pipe _*", "  fd 51 (pipe: *) leaked into *"])
    result.stdout.fnmatch_lines_random(
        [
            "allowed by ini noinherit_allow '50': 50:",
            "    *::test_number: fd 50 (pipe: *) into *",
            "allowed by ini noinherit_allow 'kind=socket': kind=socket:",
            "    *::test_socket: fd * (socket: *) into *",
        ]
    )


def test_ini_kind_pipe(fdkit: pytest.Pytester) -> None:
    """An ini ``kind=pipe`` line allows every pipe."""
    fdkit.makeini(
        """
        [pytest]
        noinherit_allow = kind=pipe
        """
    )
    fdkit.makepyfile(
        """
        from fdkit import inheritable_pipe, spawn

        def test_pipe():
            with inheritable_pipe(at=50):
                spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["allowed by ini noinherit_allow 'kind=pipe': kind=pipe:"])


def test_allow_hook_says_yes_and_no(fdkit: pytest.Pytester) -> None:
    """pytest_noinherit_allow returning True allows; False insists even over a marker."""
    fdkit.makeconftest(
        """
        def pytest_noinherit_allow(item, descriptor):
            if descriptor["fd"] == 50:
                return True
            if descriptor["fd"] == 51:
                return False
            return None
        """
    )
    fdkit.makepyfile(
        """
        import pytest
        from fdkit import inheritable_pipe, spawn

        def test_hook_allows():
            with inheritable_pipe(at=50):
                spawn()

        @pytest.mark.allow_inherit
        def test_hook_insists_over_marker():
            with inheritable_pipe(at=51):
                spawn()

        @pytest.mark.allow_inherit(52)
        def test_hook_abstains():
            with inheritable_pipe(at=52):
                spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*_ test_hook_insists_over_marker _*", "  fd 51 (pipe: *) leaked into *"]
    )
    result.stdout.fnmatch_lines_random(
        [
            "allowed by pytest_noinherit_allow hook:",
            "    *::test_hook_allows: fd 50 (pipe: *) into *",
            "allowed by marker on *::test_hook_abstains: 52:",
        ]
    )


def test_finding_hook_sees_every_finding(fdkit: pytest.Pytester) -> None:
    """pytest_noinherit_finding receives violations and allowed descriptors with their item."""
    fdkit.makeconftest(
        """
        SEEN = []

        def pytest_noinherit_finding(item, finding):
            SEEN.append(f"{item.name} {finding['type']} fd={finding['fd']} {finding['route']}")

        def pytest_terminal_summary(terminalreporter):
            for line in SEEN:
                terminalreporter.write_line("seen: " + line)
        """
    )
    fdkit.makepyfile(
        """
        import pytest
        from fdkit import inheritable_pipe, spawn

        def test_violation():
            with inheritable_pipe(at=50):
                spawn()

        @pytest.mark.allow_inherit(51)
        def test_allowed():
            with inheritable_pipe(at=51):
                spawn()

        def test_nothing():
            spawn()
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "seen: test_violation violation fd=50 subprocess.Popen",
            "seen: test_allowed allowed fd=51 subprocess.Popen",
        ]
    )
    result.stdout.no_fnmatch_line("seen: test_nothing*")


BAD_MARKERS = {
    "test_string": '"3"',
    "test_negative": "-1",
    "test_float": "3.0",
    "test_unknown_keyword": "fd=3",
    "test_unknown_kind": 'kind="banana"',
}


def test_bad_marker_arguments_are_named_errors(fdkit: pytest.Pytester) -> None:
    """A bad allow_inherit marker errors once, naming the test, without a plugin traceback."""
    fdkit.makepyfile(
        "import pytest\n"
        + "".join(
            f"\n@pytest.mark.allow_inherit({args})\ndef {name}():\n    pass\n"
            for name, args in BAD_MARKERS.items()
        )
        + "\ndef test_unmarked_still_runs():\n    pass\n"
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(errors=len(BAD_MARKERS), passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "noinherit: bad @pytest.mark.allow_inherit on *::test_string:"
            " descriptor numbers must be integers, not '3'; did you mean 3?",
            "noinherit: bad @pytest.mark.allow_inherit on *::test_negative:"
            " descriptor numbers cannot be negative: -1",
            "noinherit: bad @pytest.mark.allow_inherit on *::test_float:"
            " descriptor numbers must be integers, not 3.0",
            "noinherit: bad @pytest.mark.allow_inherit on *::test_unknown_keyword:"
            " unknown keyword fd*",
            "noinherit: bad @pytest.mark.allow_inherit on *::test_unknown_kind:"
            " unknown kind 'banana'*",
        ]
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*pytest_noinherit/*.py*")
    result.stdout.no_fnmatch_line("*ERROR at teardown*")
    result.stdout.no_fnmatch_line("*KeyError*")


def test_command_line_allowance_and_ini_report(fdkit: pytest.Pytester) -> None:
    """--noinherit-allow is the ini list's twin; noinherit_report is --noinherit-report's."""
    fdkit.makepyfile(
        """
        from fdkit import inheritable_pipe, spawn

        def test_passes_50():
            with inheritable_pipe(at=50):
                spawn()
        """
    )
    fdkit.makeini("[pytest]\nnoinherit_report = found.json\n")
    result = fdkit.runpytest("-p", "noinherit", "--noinherit-allow", "50")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["allowed by --noinherit-allow '50': 50:"])
    assert (fdkit.path / "found.json").exists()
    result = fdkit.runpytest("-p", "noinherit", "--noinherit-allow", "kind=nonsense")
    result.stderr.fnmatch_lines(["ERROR: --noinherit-allow: unknown kind 'nonsense'*"])


SERVER = """
import os, socket, subprocess, sys, pytest

@pytest.fixture(scope="session")
def server(noinherit):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.set_inheritable(True)
    {declare}
    # A worker the fixture starts, and one per test below: all get the socket.
    worker = subprocess.Popen(["sleep", "0.5"], close_fds=False)
    yield listener
    worker.wait()
    listener.close()

def test_one(server):
    subprocess.run(["/bin/true"], close_fds=False)

def test_two(server):
    subprocess.run(["/bin/true"], close_fds=False)

def test_after_without_the_fixture():
    pass
"""


@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_a_session_fixture_declares_what_it_hands_to_children(
    pytester: pytest.Pytester, order: str
) -> None:
    """noinherit.allow() in a session fixture's setup holds until its teardown, in any order."""
    pytester.makepyfile(test_server=SERVER.format(declare="noinherit.allow(listener)"))
    ids = ["test_server.py::test_one", "test_server.py::test_two"]
    args = ids if order == "in-order" else ids[::-1]
    result = pytester.runpytest("-p", "noinherit", *args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "allowed by noinherit.allow() in the session-scoped fixture 'server'"
            " (set up in test_server.py::test_*): *that open file:",
        ]
    )


@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_an_undeclared_session_fixture_fails_the_tests_whose_children_get_it(
    pytester: pytest.Pytester, order: str
) -> None:
    """Without the declaration, each test whose child receives the socket fails, in any order."""
    pytester.makepyfile(test_server=SERVER.format(declare="pass"))
    ids = ["test_server.py::test_one", "test_server.py::test_two"]
    args = ids if order == "in-order" else ids[::-1]
    result = pytester.runpytest("-p", "noinherit", "-rfE", *args)
    # The first test's setup started the fixture's worker: an error there;
    # the second test's own child fails its call.
    result.assert_outcomes(failed=1, errors=1)
    first, second = (a.partition("::")[2] for a in args)
    result.stdout.fnmatch_lines([f"FAILED test_server.py::{second} - Failed: noinherit: *"])
    result.stdout.fnmatch_lines([f"ERROR test_server.py::{first} - Failed: noinherit: *"])
    result.stdout.fnmatch_lines(["    came from: the session-scoped fixture 'server'"])
