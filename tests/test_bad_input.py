"""Bad input of every kind is a clear one-line error, never a traceback or a hang.

The report path, allowance values from markers, the fixture and the ini file,
and the ini switches: each test feeds the plugin what a user could get wrong.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from pytest_noinherit import report

ONE_TEST = "def test_one():\n    pass\n"

# What a run of ONE_TEST prints when the report path is refused up front.
REFUSED = {
    "device": ("/dev/full", "it is a character device, not a regular file"),
    "proc": ("/proc/x.json", "cannot create files in /proc: *"),
    "directory": ("sub", "it is a directory, not a regular file"),
    "trailing_separator": ("sub/", "the path names a directory"),
    "file_as_folder": ("plain/x.json", "*plain is not a directory"),
    "missing_folder": ("missing/x.json", "no directory *missing"),
    "dangling_symlink": ("dangling", "it is a dangling symlink to *nowhere*"),
    "name_too_long": ("a" * 300 + ".json", "File name too long"),
    "fifo": ("fifo", "it is a FIFO, not a regular file"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_report_path_is_tried_before_the_run(pytester: pytest.Pytester, case: str) -> None:
    """A report path no file can be written to is a usage error naming it and why, up front."""
    path, reason = REFUSED[case]
    if case == "device" and not os.path.exists(path):
        pytest.skip(f"no {path} here")
    if case == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no procfs here")
    (pytester.path / "sub").mkdir()
    (pytester.path / "plain").write_text("", encoding="utf-8")
    (pytester.path / "dangling").symlink_to(pytester.path / "nowhere" / "r.json")
    os.mkfifo(pytester.path / "fifo")
    pytester.makepyfile(ONE_TEST)
    # Opening a FIFO to write it would block until a reader comes: the timeout catches a hang.
    result = pytester.runpytest("-p", "noinherit", f"--noinherit-report={path}", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --noinherit-report: cannot write {path}: {reason}"])
    result.stdout.no_fnmatch_line("*test_one*")
    result.stderr.no_fnmatch_line("*Traceback*")


def test_ini_report_path_is_refused_under_its_own_name(pytester: pytest.Pytester) -> None:
    """A bad noinherit_report in the ini file is a usage error that names the ini key."""
    pytester.makeini("[pytest]\nnoinherit_report = sub\n")
    (pytester.path / "sub").mkdir()
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest("-p", "noinherit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini noinherit_report: cannot write sub: it is a directory*"]
    )


def test_report_folder_removed_during_the_run(pytester: pytest.Pytester) -> None:
    """A report lost at the end is one red line; the verdicts stay and a green run exits 1."""
    (pytester.path / "out").mkdir()
    pytester.makepyfile(
        """
        import os

        def test_removes_the_report_folder():
            os.rmdir("out")
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report=out/r.json")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "noinherit: the report was not written: cannot write out/r.json: no directory *out",
            "*= 1 passed in *",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stderr.no_fnmatch_line("*Traceback*")


def test_report_lost_at_the_end_keeps_an_unsuccessful_status(pytester: pytest.Pytester) -> None:
    """A run that did not succeed anyway keeps its own exit status when the report is lost."""
    (pytester.path / "out").mkdir()
    pytester.makepyfile(
        """
        import os

        def test_interrupts_without_a_folder():
            os.rmdir("out")
            raise KeyboardInterrupt
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report=out/r.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["noinherit: the report was not written: *"])


def test_fifo_put_at_the_report_path_during_the_run(pytester: pytest.Pytester) -> None:
    """A FIFO that appears at the report path mid-run is refused at the end, without a hang."""
    pytester.makepyfile(
        """
        import os

        def test_plants_a_fifo():
            os.mkfifo("r.json")
        """
    )
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report=r.json", timeout=60)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["noinherit: the report was not written: cannot write r.json: it is a FIFO*"]
    )


def test_report_replaces_the_old_one_whole(pytester: pytest.Pytester) -> None:
    """The report is renamed over the old one: a hard link keeps the old file, no temp is left."""
    old = pytester.path / "r.json"
    old.write_text('{"old": true}', encoding="utf-8")
    os.link(old, pytester.path / "previous.json")
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report=r.json")
    assert result.ret == pytest.ExitCode.OK
    # Truncating and rewriting r.json in place would have changed previous.json too.
    assert json.loads((pytester.path / "previous.json").read_text(encoding="utf-8")) == {
        "old": True
    }
    assert json.loads(old.read_text(encoding="utf-8"))["findings"] == []
    assert not [p for p in os.listdir(pytester.path) if p.startswith(report.TEMP_PREFIX)]


def test_report_through_a_symlink_lands_in_its_target(pytester: pytest.Pytester) -> None:
    """A symlink at the report path is followed: the link stays and its target gets the report."""
    (pytester.path / "reports").mkdir()
    (pytester.path / "latest.json").symlink_to(pytester.path / "reports" / "r.json")
    pytester.makepyfile(ONE_TEST)
    (pytester.path / "reports" / "r.json").write_text("{}", encoding="utf-8")
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report=latest.json")
    assert result.ret == pytest.ExitCode.OK
    assert (pytester.path / "latest.json").is_symlink()
    doc = json.loads((pytester.path / "reports" / "r.json").read_text(encoding="utf-8"))
    assert doc["findings"] == []


def test_failed_write_leaves_the_old_report_and_no_temp(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way (a full disk) keeps the old report and removes its temp file."""
    path = os.path.join(tmp_path, "r.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"old": true}')

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(report.ReportError, match=r"^cannot write .*r\.json: writing failed: "):
        report.write(path, {"findings": []})
    assert os.listdir(tmp_path) == ["r.json"]
    with open(path, encoding="utf-8") as f:
        assert f.read() == '{"old": true}'


# Marker arguments build() used to let through or crash on with a raw TypeError.
BAD_MARKERS = {
    "test_kind_int": ("kind=5", "kind= takes a kind name or a list of kind names, not 5"),
    "test_kind_float": ("kind=5.0", "kind= takes a kind name or a list of kind names, not 5.0"),
    "test_kind_nested": ("kind=[[1]]", "kind names are strings, not [[]1]"),
    "test_kind_object": ("kind=object()", "kind= takes a kind name or a list *, not <object *>"),
    "test_kind_empty": ("kind=[]", "kind= takes a kind name or a list of kind names, not [[]]"),
    "test_huge_number": ("2**70", "descriptor number * is out of range 0..2147483647"),
    "test_bool": ("True", "descriptor numbers must be integers, not True"),
    "test_empty_path": ('path=""', "path= takes a non-empty glob string, not ''"),
    "test_bytes_path": ('path=b"*.sock"', "path= takes a non-empty glob string, not b'*.sock'"),
    "test_kind_as_descriptor": ('"pipe"', "* not 'pipe'; did you mean kind='pipe'?"),
}


def test_bad_marker_values_fail_the_test_once(fdkit: pytest.Pytester) -> None:
    """Each bad allow_inherit value is one named setup error: no TypeError, no teardown error."""
    fdkit.makepyfile(
        "import pytest\n"
        + "".join(
            f"\n@pytest.mark.allow_inherit({args})\ndef {name}():\n    pass\n"
            for name, (args, _) in BAD_MARKERS.items()
        )
        + "\ndef test_unmarked_still_runs():\n    pass\n"
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(errors=len(BAD_MARKERS), passed=1)
    result.stdout.fnmatch_lines_random(
        [
            f"noinherit: bad @pytest.mark.allow_inherit on *::{name}: {message}"
            for name, (_, message) in BAD_MARKERS.items()
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")
    result.stdout.no_fnmatch_line("*KeyError*")
    result.stdout.no_fnmatch_line("*TypeError*")
    result.stdout.no_fnmatch_line("*pytest_noinherit/*.py*")


ALLOW = "noinherit.allow():"
BAD_ALLOW_CALLS = {
    "test_kind_int": (
        "noinherit.allow(5, kind=5)",
        f"{ALLOW} kind= takes a kind name or a list of kind names, not 5",
    ),
    "test_huge_number": ("noinherit.allow(2**70)", f"{ALLOW} descriptor number * out of range *"),
    "test_empty_path": (
        'noinherit.allow(path="")',
        f"{ALLOW} path= takes a non-empty glob string, not ''",
    ),
    "test_bool": (
        "noinherit.allow(False)",
        f"{ALLOW} descriptor numbers must be integers, not False",
    ),
    "test_closed_file": (
        "f = open(__file__); f.close(); noinherit.allow(f)",
        f"{ALLOW} <*>.fileno() failed: ValueError: I/O operation on closed file*",
    ),
    "test_closed_socket": (
        "s = socket.socket(); s.close(); noinherit.allow(s)",
        f"{ALLOW} <socket.socket [[]closed[]] *> has no descriptor (closed?)",
    ),
    # fileno()'s own complaint names the object instead of allow().
    "test_fileno_not_int": ("noinherit.allow(Odd())", "<*Odd*>.fileno() returned 'x'"),
}


def test_bad_allow_calls_raise_one_line_type_errors(fdkit: pytest.Pytester) -> None:
    """noinherit.allow() with a bad value or a broken fileno() raises a TypeError that says so."""
    fdkit.makepyfile(
        "import socket\n\nclass Odd:\n    def fileno(self):\n        return 'x'\n"
        + "".join(
            f"\ndef {name}(noinherit):\n    {call}\n" for name, (call, _) in BAD_ALLOW_CALLS.items()
        )
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=len(BAD_ALLOW_CALLS))
    result.stdout.fnmatch_lines_random(
        [f"E *TypeError: {message}" for _, message in BAD_ALLOW_CALLS.values()]
    )


BAD_INI_LINES = {
    "kind=": "'kind=': kind= has no value",
    "path=": "'path=': path= has no value",
    "3x": "'3x': '3x' is neither a descriptor number nor key=value",
    "-1": "'-1': descriptor numbers cannot be negative: -1",
    "\N{SUPERSCRIPT TWO}": "'\N{SUPERSCRIPT TWO}': '\N{SUPERSCRIPT TWO}' is neither *",
    "\N{ARABIC-INDIC DIGIT THREE}": "'\N{ARABIC-INDIC DIGIT THREE}': * is neither *",
    "99999999999": "'99999999999': 99999999999... is out of range 0..2147483647",
    "=pipe": "'=pipe': '=pipe' has no key before =",
}


@pytest.mark.parametrize("line", list(BAD_INI_LINES))
def test_bad_ini_allowance_lines_are_usage_errors(pytester: pytest.Pytester, line: str) -> None:
    """A malformed noinherit_allow line stops the run with an error that quotes it and says why."""
    pytester.makeini(f"[pytest]\nnoinherit_allow =\n    {line}\n")
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest("-p", "noinherit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: ini noinherit_allow: {BAD_INI_LINES[line]}"])
    result.stderr.no_fnmatch_line("*invalid literal*")


def test_empty_command_line_allowance_is_refused(pytester: pytest.Pytester) -> None:
    """--noinherit-allow with nothing in it would allow everything; it is a usage error instead."""
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-allow", " ")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --noinherit-allow: an empty allowance; it would allow every descriptor"]
    )


@pytest.mark.parametrize("key", ["noinherit_strict", "noinherit_patch"])
def test_garbage_ini_switch_is_a_usage_error_naming_it(pytester: pytest.Pytester, key: str) -> None:
    """A boolean ini key set to something that is no truth value is a usage error naming the key."""
    pytester.makeini(f"[pytest]\n{key} = maybe\n")
    pytester.makepyfile(ONE_TEST)
    result = pytester.runpytest("-p", "noinherit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: ini {key}: *'maybe'*"])
    result.stderr.no_fnmatch_line("*Traceback*")


def test_report_check_leaves_nothing_behind(tmp_path: os.PathLike[str]) -> None:
    """check_destination creates and removes its probe file, and creates no report."""
    report.check_destination(os.path.join(tmp_path, "r.json"))
    assert os.listdir(tmp_path) == []
