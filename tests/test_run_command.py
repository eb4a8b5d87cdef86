"""``python -m pytest_noinherit run``: real commands, their statuses, the baseline, the report."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping

import pytest

from pytest_noinherit import probe
from pytest_noinherit.runner import LEAK_STATUS

needs_probe = pytest.mark.skipif(probe.library() is None, reason="exec probe not built")

LEAKY = "exec 7</dev/null; /bin/true"  # the shell opens fd 7 inheritable, true receives it


def _run(
    *args: str, pass_fds: tuple[int, ...] = (), env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_noinherit", "run", *args],
        capture_output=True,
        text=True,
        pass_fds=pass_fds,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def _inheritable_pipe() -> Iterator[int]:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        yield w
    finally:
        os.close(r)
        os.close(w)


@needs_probe
def test_exit_status_is_the_commands() -> None:
    """A failing command's status passes through unchanged."""
    proc = _run("--", "sh", "-c", "exit 5")
    assert proc.returncode == 5, proc.stderr
    assert "exit status 5 (the command's)" in proc.stderr


@needs_probe
def test_descriptors_run_inherited_are_its_baseline() -> None:
    """What run's own caller passed reaches the command declared: exit 0, even with the option."""
    with _inheritable_pipe() as w:
        proc = _run("--fail-on-leak", "--json", "--", "true", pass_fds=(w,))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert re.fullmatch(
        rf"noinherit run: backend \w+ \(.*\), probe on, baseline fds: {w}", lines[0]
    )
    assert "= noinherit summary =" in proc.stderr
    assert "VIOLATION" not in proc.stderr
    assert f"run baseline (inherited by run, allowed everywhere): {w} (pipe)" in proc.stderr
    assert lines[-1] == "noinherit run: 1 process observed, clean; exit status 0 (the command's)"
    doc = json.loads(proc.stdout)
    assert doc["exit_status"] == doc["command_status"] == 0
    assert doc["clean"] is True
    assert [b["fd"] for b in doc["baseline"]] == [w]
    [only] = doc["processes"]
    assert [(r["fd"], r["baseline"]) for r in only["received"]] == [(w, True)]


@needs_probe
def test_a_baseline_file_at_another_number_is_a_finding() -> None:
    """The baseline is declared by number and open file: a dup onto fd 7 is the command's own."""
    with _inheritable_pipe() as w:
        code = f"import os; os.dup2({w}, 7); os.execv('/bin/true', ['true'])"
        proc = _run("--", sys.executable, "-c", code, pass_fds=(w,))
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"^VIOLATION fd 7 \(pipe: pipe:\[\d+\]\) reached 1 process:", proc.stderr, re.M
    )
    assert f"VIOLATION fd {w} " not in proc.stderr


@needs_probe
def test_a_descendants_leak_is_reported_in_the_plugins_layout() -> None:
    """A shell's own inheritable open reaching its child is a finding; the status stays 0."""
    proc = _run("--", "sh", "-c", LEAKY)
    assert proc.returncode == 0, proc.stderr
    text = proc.stderr
    m = re.search(
        r"^VIOLATION fd 7 \(chr: /dev/null\) reached 1 process: pid (\d+) \(true\)$", text, re.M
    )
    assert m, text
    assert f"    into pid {m[1]} [/bin/true], started by pid " in text
    assert re.search(
        rf"^    came from: pid \d+ \[sh -c {re.escape(LEAKY)}\], which opened it or made it"
        " inheritable after its own exec$",
        text,
        re.M,
    )
    assert text.splitlines()[-1] == (
        "noinherit run: 2 processes observed, 1 undeclared descriptor reached 1 of them,"
        f" not clean; exit status 0 (the command's; --fail-on-leak would make it {LEAK_STATUS})"
    )


@needs_probe
def test_fail_on_leak_fails_a_passing_command() -> None:
    """--fail-on-leak exits with its documented status, or the one given, if the command passed."""
    proc = _run("--fail-on-leak", "--", "sh", "-c", LEAKY)
    assert proc.returncode == LEAK_STATUS == 122, proc.stderr
    assert "exit status 122 (--fail-on-leak; the command exited 0)" in proc.stderr
    proc = _run("--fail-on-leak=9", "--", "sh", "-c", LEAKY)
    assert proc.returncode == 9, proc.stderr


@needs_probe
def test_a_failing_command_keeps_its_status_under_fail_on_leak() -> None:
    """The command's own failure wins over the leak status; the leak is still reported."""
    proc = _run("--fail-on-leak", "--", "sh", "-c", f"{LEAKY}; exit 4")
    assert proc.returncode == 4, proc.stderr
    assert "VIOLATION fd 7 (chr: /dev/null)" in proc.stderr


@needs_probe
def test_a_signal_death_is_128_plus_n() -> None:
    """A command killed by SIGTERM gives 143, as a shell reports it."""
    proc = _run("--json", "--fail-on-leak", "--", "sh", "-c", "kill -TERM $$")
    assert proc.returncode == 143, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["exit_status"], doc["command_status"], doc["signal"]) == (143, 143, 15)


@needs_probe
def test_many_receivers_are_summed_up_unless_verbose() -> None:
    """One line per descriptor names the first three processes and counts the rest; -v names all."""
    script = "exec 7</dev/null; /bin/true; /bin/true; /bin/true; /bin/true; /bin/true"
    short = _run("--", "sh", "-c", script).stderr
    assert re.search(
        r"reached 5 processes: (pid \d+ \(true\), ){2}pid \d+ \(true\) \(\+2\)$", short, re.M
    )
    full = _run("-v", "--", "sh", "-c", script).stderr
    assert re.search(r"reached 5 processes: (pid \d+ \(true\), ){4}pid \d+ \(true\)$", full, re.M)


@needs_probe
def test_records_the_command_plants_are_reported_and_never_clean() -> None:
    """An entry with a strange name, garbage and a cut-short record: each reported, none clean."""
    cut_short = "noinherit-probe 1\npid 1\nppid 1\ntime 1\nexe /x\nargv x\ntruncated\nend\n"
    script = (
        'printf x > "$NOINHERIT_PROBE_DIR/$WEIRD";'
        ' printf garbage > "$NOINHERIT_PROBE_DIR/1-1.rec";'
        ' printf %s "$CUT_SHORT" > "$NOINHERIT_PROBE_DIR/1-2.rec"'
    )
    env = {"WEIRD": "we ird\nname", "CUT_SHORT": cut_short}
    proc = _run("--json", "--", "sh", "-c", script, env=env)
    assert proc.returncode == 0, proc.stderr
    text = proc.stderr
    assert "UNREADABLE record: 1-1.rec: not a probe record\n" in text
    assert "UNREADABLE record: we ird\\nname: not a record name\n" in text
    assert "INCOMPLETE pid 1 [x]: its record was cut short" in text
    assert "3 record problems, not clean;" in text.splitlines()[-1]
    doc = json.loads(proc.stdout)
    assert doc["clean"] is False
    assert len(doc["problems"]) == 3
    proc = _run("--fail-on-leak", "--", "sh", "-c", script, env=env)
    assert proc.returncode == LEAK_STATUS, proc.stderr


@needs_probe
def test_a_command_that_cannot_start() -> None:
    """Not found is 127 and not executable is 126, as in a shell."""
    assert _run("--", "/nonexistent/command").returncode == 127
    assert _run("--", os.devnull).returncode == 126


@pytest.mark.parametrize("status", ["0", "126", "x"])
def test_fail_on_leak_status_is_checked(status: str) -> None:
    """STATUS is 1-125: a usage error, not a traceback, before anything runs."""
    proc = _run(f"--fail-on-leak={status}", "--", "true")
    assert proc.returncode == 2
    assert "STATUS must be a number from 1 to 125" in proc.stderr
    assert "Traceback" not in proc.stderr
