"""What a user reads after the run: the JSON report, the summary, the baseline, xdist."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

MIXED = """
    import os
    import pytest
    from fdkit import inheritable_pipe, spawn

    def test_violation():
        with inheritable_pipe(at=50):
            spawn()

    @pytest.mark.allow_inherit(kind="pipe")
    def test_allowed():
        with inheritable_pipe(at=51):
            spawn()

    def test_clean():
        spawn()
"""

CHILD_FIELDS = {"test", "phase", "pid", "argv", "fd", "kind", "target", "how", "route"}


def findings_by_type(path: os.PathLike[str]) -> dict[str, list[dict[str, object]]]:
    """The report's findings grouped by type."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    grouped: dict[str, list[dict[str, object]]] = {}
    for finding in doc["findings"]:
        grouped.setdefault(finding["type"], []).append(finding)
    return grouped


def test_json_report_lists_every_finding(fdkit: pytest.Pytester) -> None:
    """--noinherit-report writes violations, allowed fds, leftovers and leaks with their details."""
    fdkit.makepyfile(
        MIXED
        + """
    def test_leftover():
        r, w = os.pipe()
        os.close(r)
        os.dup2(w, 52)
        os.close(w)

    def test_leak():
        r, w = os.pipe()
        os.close(r)
        os.dup2(w, 53, inheritable=False)
        os.close(w)
    """
    )
    result = fdkit.runpytest(
        "-p", "noinherit", "--noinherit-strict", "--noinherit-leaks", "--noinherit-report=out.json"
    )
    result.assert_outcomes(passed=4, failed=1, errors=1, warnings=1)
    report = fdkit.path / "out.json"
    with open(report, encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["backend"] == (os.environ.get("PYTEST_NOINHERIT_BACKEND") or "native")
    assert doc["strict"] is True
    assert doc["baseline"] == []
    grouped = findings_by_type(report)
    assert sorted(grouped) == ["allowed", "leak", "leftover", "violation"]

    (violation,) = grouped["violation"]
    assert violation.keys() >= CHILD_FIELDS
    assert violation["test"] == "test_json_report_lists_every_finding.py::test_violation"
    assert violation["phase"] == "call"
    assert violation["fd"] == 50
    assert violation["kind"] == "pipe"
    assert str(violation["target"]).startswith("pipe:[")
    assert violation["argv"] == ["/bin/sleep", "0.02"]
    assert violation["route"] == "subprocess.Popen"
    # Strict mode turns the exec probe on: its record replaces Python's copy.
    assert violation["how"] in (
        "observed by the exec probe",
        "observed in the child",
        "predicted from the parent's table at spawn time",
    )
    assert isinstance(violation["pid"], int)

    (allowed,) = grouped["allowed"]
    assert allowed.keys() >= CHILD_FIELDS
    assert allowed["fd"] == 51
    assert allowed["allowed_by"] == (
        "marker on test_json_report_lists_every_finding.py::test_allowed: kind=pipe"
    )

    (leftover,) = grouped["leftover"]
    assert (leftover["test"], leftover["phase"], leftover["fd"], leftover["owner"]) == (
        "test_json_report_lists_every_finding.py::test_leftover",
        "teardown",
        52,
        "the test",
    )
    (leak,) = grouped["leak"]
    assert (leak["fd"], leak["kind"]) == (53, "pipe")


def test_json_report_with_the_python_backend(
    fdkit: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference backend finds the same violation and says so in the report and the header."""
    monkeypatch.setenv("PYTEST_NOINHERIT_BACKEND", "python")
    fdkit.makepyfile(MIXED)
    result = fdkit.runpytest("-p", "noinherit", "--noinherit-report=out.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["noinherit: backend python *"])
    doc = json.loads((fdkit.path / "out.json").read_text(encoding="utf-8"))
    assert doc["backend"] == "python"
    assert [(f["type"], f["fd"]) for f in doc["findings"]] == [("violation", 50), ("allowed", 51)]


def test_terminal_summary_says_what_was_allowed_and_what_was_not(fdkit: pytest.Pytester) -> None:
    """The summary lists each violation with its child and each allowance with what it allowed."""
    fdkit.makepyfile(MIXED)
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= noinherit summary =*",
            "VIOLATION fd 50 (pipe: pipe:*) reached a child of test_*.py::test_violation (call)",
            "    into pid * ?/bin/sleep 0.02? via subprocess.Popen, *",
            "allowed by marker on test_*.py::test_allowed: kind=pipe:",
            "    test_*.py::test_allowed: fd 51 (pipe: pipe:*) into pid * ?/bin/sleep 0.02? via *",
            "*= short test summary info =*",
        ]
    )
    result.stdout.no_fnmatch_line("*session baseline*")


def test_unwritable_report_path_is_a_usage_error_before_the_run(fdkit: pytest.Pytester) -> None:
    """A report path that cannot be written stops the session before tests run, not after."""
    fdkit.makepyfile(MIXED)
    result = fdkit.runpytest("-p", "noinherit", "--noinherit-report=missing/out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --noinherit-report: cannot write missing/out.json: *"])
    # Otherwise the run's verdicts (the failure, the summary) are lost behind the error.
    result.stdout.no_fnmatch_line("*test_*.py *")


def test_session_baseline_is_allowed_and_named(fdkit: pytest.Pytester) -> None:
    """An fd pytest itself inherited reaches the tests' children freely; the summary names it."""
    fdkit.makepyfile(
        """
        import os
        import subprocess
        import sys

        def test_child_receives_the_baseline_fd():
            fd = int(os.environ["BASELINE_FD"])
            assert os.get_inheritable(fd)
            # The child proves it holds the descriptor.
            subprocess.run(
                [sys.executable, "-c", f"import os; os.fstat({fd})"], close_fds=False, check=True
            )
        """
    )
    r, w = os.pipe()
    try:
        os.set_inheritable(w, True)
        # pytester.run() starts pytest with close_fds=True, so start it ourselves.
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "noinherit", f"--basetemp={fdkit.path / 'bt'}"],
            cwd=fdkit.path,
            env={**os.environ, "BASELINE_FD": str(w)},
            pass_fds=(w,),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pytest.LineMatcher(proc.stdout.splitlines()).fnmatch_lines(
        [
            f"noinherit: backend *, baseline fds: {w}",
            "*= noinherit summary =*",
            f"session baseline (inherited by pytest, allowed everywhere): {w} (pipe)",
            "*1 passed*",
        ]
    )


def test_garbage_records_cannot_crash_the_run(
    fdkit: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Truncated, huge, non-JSON or odd files in the record directory are consumed harmlessly."""
    # The record directory is a mkdtemp(); TMPDIR tells the inner session where.
    (fdkit.path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(fdkit.path / "tmp"))
    fdkit.makepyfile(
        """
        import glob
        import os
        import pytest
        from fdkit import inheritable_pipe, spawn

        @pytest.fixture(scope="module")
        def record_dir():
            (path,) = glob.glob(os.path.join(os.environ["TMPDIR"], "pytest-noinherit-*"))
            return path

        def test_write_garbage(record_dir):
            def put(name, data):
                with open(os.path.join(record_dir, name), "wb") as f:
                    f.write(data)
            put("1-truncated.json", b'{"route": "fork+exec", "pid": 1, "argv": ["x"')
            put("2-not-json.json", bytes(range(256)))
            put("3-list.json", b"[1, 2, 3]")
            put("4-deep.json", b"[" * 100000 + b"]" * 100000)
            put("5-huge.json", b" " * (2 << 20))
            put("6-bad-fd.json", b'{"argv": [], "pid": 1, "received": [{"fd": -1}]}')
            os.mkdir(os.path.join(record_dir, "7-dir.json"))
            os.mkfifo(os.path.join(record_dir, "8-fifo.json"))
            os.symlink("/etc/passwd", os.path.join(record_dir, "9-link.json"))
            # Records are read once some process forked.
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

        def test_still_judged(record_dir):
            with inheritable_pipe(at=50):
                spawn()

        def test_garbage_was_consumed(record_dir):
            assert sorted(os.listdir(record_dir)) in ([], ["7-dir.json"])
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*_ test_still_judged _*", "  fd 50 (pipe: *) leaked into *"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")


def test_xdist_violation_reaches_the_controller(
    fdkit: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under -n 2 a violation fails its test, and the controller's summary and report carry it."""
    monkeypatch.delenv("PYTEST_ADDOPTS")  # let xdist load
    fdkit.makepyfile(MIXED)
    result = fdkit.runpytest("-p", "noinherit", "-n", "2", "--noinherit-report=out.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "created: 2/2 workers",
            "*_ test_violation _*",
            "noinherit: 1 descriptor nobody declared or allowed reached a child",
            "  fd 50 (pipe: *) leaked into *",
            "*= noinherit summary =*",
            "VIOLATION fd 50 (pipe: pipe:*) reached a child of test_*.py::test_violation (call)",
            "allowed by marker on test_*.py::test_allowed: kind=pipe:",
        ]
    )
    grouped = findings_by_type(fdkit.path / "out.json")
    assert [f["fd"] for f in grouped["violation"]] == [50]
    assert [f["fd"] for f in grouped["allowed"]] == [51]


def test_report_is_written_when_the_run_is_interrupted(fdkit: pytest.Pytester) -> None:
    """A KeyboardInterrupt ends the session early; the report is still written, findings and all."""
    fdkit.makepyfile(
        """
        from fdkit import inheritable_pipe, spawn

        def test_leaks():
            with inheritable_pipe(at=50):
                spawn()

        def test_interrupted():
            raise KeyboardInterrupt
        """
    )
    result = fdkit.runpytest("-p", "noinherit", "--noinherit-report=out.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    doc = json.loads((fdkit.path / "out.json").read_text(encoding="utf-8"))
    assert doc["schema_version"] == 1
    assert [f["fd"] for f in doc["findings"] if f["type"] == "violation"] == [50]
    [reception] = doc["receptions"]
    # The first frame outside the stdlib: the helper module the test called.
    assert reception["site"].startswith("fdkit.py:")
    assert reception["site"].endswith(" in spawn (subprocess.run)")


def test_report_records_the_settings_and_versions(fdkit: pytest.Pytester) -> None:
    """The report says what ran and how: versions, platform, backend and every setting."""
    fdkit.makepyfile("def test_clean():\n    pass\n")
    fdkit.runpytest("-p", "noinherit", "--noinherit-report-only", "--noinherit-report=out.json")
    doc = json.loads((fdkit.path / "out.json").read_text(encoding="utf-8"))
    assert doc["python_version"] == platform.python_version()
    assert doc["platform"] == sys.platform
    assert doc["settings"]["report_only"] is True
    assert doc["settings"]["probe"] == "auto"
    assert doc["settings"]["probe_status"] == "off"
    assert doc["receptions"] == doc["findings"] == doc["fixed"] == []
