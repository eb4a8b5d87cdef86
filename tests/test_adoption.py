"""Adopting the plugin on a large suite: report-only, a known-findings ratchet, a short summary."""

from __future__ import annotations

import json
import re

import pytest

# 500 tests: 40 whose children get the pipe made inheritable at import, 3 that
# each leak a descriptor of their own, and the rest clean.
HEAD = """
import os, subprocess, pytest

SHARED_R, SHARED_W = os.pipe()
os.set_inheritable(SHARED_W, True)

def child():
    subprocess.run(["/bin/true"], close_fds=False, check=True)

def own(make):
    # Only this test's own descriptor: the shared pipe stays out of its child.
    fd = make()
    os.set_inheritable(fd, True)
    os.set_inheritable(SHARED_W, False)
    try:
        child()
    finally:
        os.close(fd)
        os.set_inheritable(SHARED_W, True)
"""

OWN_LEAKS = {
    "test_own_devnull": 'own(lambda: os.open("/dev/null", os.O_RDONLY))',
    "test_own_zero": 'own(lambda: os.open("/dev/zero", os.O_RDONLY))',
    "test_own_dir": 'own(lambda: os.open("/", os.O_RDONLY))',
}


def suite(shared: int = 40, own: tuple[str, ...] = tuple(OWN_LEAKS), extra: str = "") -> str:
    lines = [HEAD]
    lines += [f"def test_shared_{i}():\n    child()\n" for i in range(shared)]
    lines += [f"def {name}():\n    {OWN_LEAKS[name]}\n" for name in own]
    lines += [f"def test_clean_{i}():\n    pass\n" for i in range(500 - shared - len(own))]
    return "\n".join(lines) + extra


def failed(result: pytest.RunResult) -> set[str]:
    return set(re.findall(r"^FAILED (\S+)", result.stdout.str(), re.M))


def summary_lines(result: pytest.RunResult) -> list[str]:
    """The lines of the noinherit summary section."""
    out = result.stdout.lines
    start = next(i for i, line in enumerate(out) if "noinherit summary" in line)
    end = next((i for i in range(start + 1, len(out)) if out[i].startswith("=")), len(out))
    return out[start + 1 : end]


def test_report_only_changes_no_outcome_and_reports_everything(pytester: pytest.Pytester) -> None:
    """--noinherit-report-only: rc 0, all 500 pass, every problem in the summary and the JSON."""
    pytester.makepyfile(test_big=suite())
    result = pytester.runpytest(
        "-p", "noinherit", "--noinherit-report-only", "--noinherit-report=out.json"
    )
    result.assert_outcomes(passed=500)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["noinherit: *report-only: no outcome is changed*"])
    doc = json.loads((pytester.path / "out.json").read_text())
    violated = {f["test"] for f in doc["findings"] if f["type"] == "violation"}
    assert len(violated) == 43
    # One grouped line per distinct descriptor, each with at most three detail lines.
    heads = [line for line in summary_lines(result) if line.startswith("VIOLATION ")]
    assert len(heads) == 4
    assert len(summary_lines(result)) <= 4 * 4
    result.stdout.fnmatch_lines(
        ["VIOLATION fd * (pipe: *) reached the children of 40 tests: *(+37)"]
    )


def test_report_only_from_the_ini_file(pytester: pytest.Pytester) -> None:
    """noinherit_report_only = true in the ini file does the same."""
    pytester.makeini("[pytest]\nnoinherit_report_only = true\n")
    pytester.makepyfile(test_big=suite(shared=2, own=()))
    result = pytester.runpytest("-p", "noinherit")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["VIOLATION fd * reached the children of 2 tests: *"])


def test_known_findings_ratchet(pytester: pytest.Pytester) -> None:
    """Written once, the known file makes the run pass; a new leak fails, a fixed one is named."""
    pytester.makepyfile(test_big=suite())
    first = pytester.runpytest(
        "-p", "noinherit", "--noinherit-known=known.json", "--noinherit-known-update"
    )
    first.assert_outcomes(passed=457, failed=43)
    first.stdout.fnmatch_lines(["noinherit: 43 known findings written to *known.json"])
    text = (pytester.path / "known.json").read_text()
    doc = json.loads(text)
    assert len(doc["findings"]) == 43
    # Stable across runs and machines: no numbers that change, no temporary paths.
    assert not re.search(r"pipe:\[|\"fd\"|pid|/tmp/", text)

    again = pytester.runpytest("-p", "noinherit", "--noinherit-known=known.json")
    again.assert_outcomes(passed=500)
    assert again.ret == 0
    again.stdout.fnmatch_lines(
        ["KNOWN 43 finding(s) of 43 test(s) listed in *known.json, not failing:"]
    )

    # One leak fixed (the test stays, clean now), one new one added.
    new_leak = "\ndef test_new_leak():\n    own(lambda: os.open('/dev/urandom', os.O_RDONLY))\n"
    fixed = "\ndef test_own_dir():\n    pass\n"
    pytester.makepyfile(
        test_big=suite(own=("test_own_devnull", "test_own_zero"), extra=new_leak + fixed)
    )
    later = pytester.runpytest("-p", "noinherit", "--noinherit-known=known.json")
    assert failed(later) == {"test_big.py::test_new_leak"}
    later.stdout.fnmatch_lines(
        [
            "FIXED test_big.py::test_own_dir: violation (dir /) is listed in *known.json but no"
            " longer seen; --noinherit-known-update drops it",
        ]
    )
    # Updating shrinks the file by the fixed one and takes in the new one.
    pytester.runpytest(
        "-p", "noinherit", "--noinherit-known=known.json", "--noinherit-known-update"
    )
    tests = {e["test"] for e in json.loads((pytester.path / "known.json").read_text())["findings"]}
    assert "test_big.py::test_own_dir" not in tests
    assert "test_big.py::test_new_leak" in tests


def test_known_entries_of_tests_that_did_not_run_stay(pytester: pytest.Pytester) -> None:
    """Updating from a subset of the suite keeps the other tests' entries, and none is 'fixed'."""
    pytester.makepyfile(test_big=suite(shared=3, own=()))
    pytester.runpytest("-p", "noinherit", "--noinherit-known=k.json", "--noinherit-known-update")
    subset = pytester.runpytest(
        "-p",
        "noinherit",
        "--noinherit-known=k.json",
        "--noinherit-known-update",
        "test_big.py::test_shared_0",
    )
    subset.assert_outcomes(passed=1)
    subset.stdout.no_fnmatch_line("FIXED *")
    assert len(json.loads((pytester.path / "k.json").read_text())["findings"]) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "cannot read *k.json*"),
        ('{"format": 9, "findings": []}', "*k.json is not a known-findings file of format 1"),
        ('{"format": 1, "findings": [{"test": 1}]}', "*k.json: bad entry*"),
    ],
)
def test_bad_known_file_is_a_usage_error(
    pytester: pytest.Pytester, content: str, message: str
) -> None:
    """A malformed known-findings file stops the run with one clear line."""
    (pytester.path / "k.json").write_text(content)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "noinherit", "--noinherit-known=k.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --noinherit-known: {message}"])


def test_update_needs_a_file(pytester: pytest.Pytester) -> None:
    """--noinherit-known-update without a file is a usage error."""
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "noinherit", "--noinherit-known-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --noinherit-known-update: name the file with *"])


@pytest.mark.parametrize("listing", ["--collect-only", "--fixtures", "--markers"])
def test_nothing_is_summarised_when_no_test_runs(pytester: pytest.Pytester, listing: str) -> None:
    """--collect-only, --fixtures and --markers print no noinherit summary, whatever was seen."""
    # A child started at import time would be listed after a real run.
    pytester.makepyfile(test_big=suite(shared=2, own=()) + "\nchild()\n")
    assert "VIOLATION" in pytester.runpytest("-p", "noinherit").stdout.str()
    result = pytester.runpytest("-p", "noinherit", listing)
    result.stdout.no_fnmatch_line("*noinherit summary*")


def test_quiet_summaries_shrink(pytester: pytest.Pytester) -> None:
    """-q keeps one line per distinct problem; -qq one line in all."""
    pytester.makepyfile(test_big=suite(shared=5, own=("test_own_zero",)))
    quiet = pytester.runpytest("-p", "noinherit", "-q")
    lines = summary_lines(quiet)
    assert [line.split(" ")[0] for line in lines] == ["VIOLATION", "VIOLATION"], lines
    very = pytester.runpytest("-p", "noinherit", "-qq")
    very.stdout.fnmatch_lines(["noinherit: 2 violations (6 tests)"])
    very.stdout.no_fnmatch_line("*noinherit summary*")


LATENT_AND_LEAKING = """
import os, subprocess

def test_latent():
    r, w = os.pipe()
    os.set_inheritable(w, True)

def test_leaking():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    subprocess.run(["/bin/true"], close_fds=False)
    os.close(r); os.close(w)
"""


@pytest.mark.parametrize(
    ("args", "ini", "quiet"),
    [
        pytest.param([], "", False, id="no-filter"),
        pytest.param(["-W", "ignore"], "", True, id="ignore-all"),
        pytest.param(
            ["-W", "ignore::pytest_noinherit.DescriptorLeakWarning"], "", True, id="ignore-category"
        ),
        pytest.param(["-W", "ignore::DeprecationWarning"], "", False, id="other-category"),
        pytest.param([], "ignore::pytest_noinherit.DescriptorLeakWarning", True, id="ini"),
        pytest.param(
            ["-W", "default::pytest_noinherit.DescriptorLeakWarning"],
            "ignore::pytest_noinherit.DescriptorLeakWarning",
            False,
            id="command-line-wins",
        ),
        pytest.param([], "error", False, id="error"),
    ],
)
def test_warning_filters_quiet_the_notes_never_the_failures(
    pytester: pytest.Pytester, args: list[str], ini: str, quiet: bool
) -> None:
    """-W / filterwarnings that ignore DescriptorLeakWarning drop LATENT lines, not violations."""
    if ini:
        pytester.makeini(f"[pytest]\nfilterwarnings =\n    {ini}\n")
    pytester.makepyfile(test_notes=LATENT_AND_LEAKING)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report", "report.json", *args)
    result.assert_outcomes(passed=1, failed=1)
    lines = summary_lines(result)
    assert any(line.startswith("VIOLATION") for line in lines), lines
    assert any(line.startswith("LATENT") for line in lines) is not quiet, lines
    doc = json.loads((pytester.path / "report.json").read_text())
    assert [f["test"] for f in doc["findings"] if f["type"] == "latent"] == [
        "test_notes.py::test_latent"
    ]
