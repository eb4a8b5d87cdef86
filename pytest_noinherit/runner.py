"""``python -m pytest_noinherit run -- COMMAND ...``: any command under the exec probe.

Runs the command with the probe preloaded (or, with ``--kernel``, under the
kernel exec observer, which also sees static programs and scrubbed
environments: kernel.py) and reports, in the plugin's layout, every
descriptor beyond stdio that reached one of the processes it exec'd (the
command, its children, their children) and where it came from.

The descriptors ``run`` itself inherited are its baseline, as pytest's are
the plugin's: whoever started ``run`` handed them over, so they are declared
wherever they travel.  A finding is a descriptor some process of the command
opened, or made inheritable, and a later exec carried along.

``run`` exits with the command's own status (a signal death as 128+N, like a
shell), so it can wrap any step of a build.  ``--fail-on-leak[=STATUS]``
turns an unclean run (a finding, or a record that could not be read) into
STATUS, :data:`LEAK_STATUS` unless given, when the command itself succeeded;
a failing command always keeps its own status.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from pytest_noinherit import fdtable, kernel, probe, recorddir
from pytest_noinherit.fdtable import FdEntry
from pytest_noinherit.findings import describe_fd, number

__all__ = [
    "LEAK_STATUS",
    "Outcome",
    "Process",
    "Received",
    "json_doc",
    "main",
    "run",
    "trace",
    "write_summary",
]

# The status --fail-on-leak uses unless told otherwise.  It must not read as
# the command's own: pytest uses 1-5 (3 is its internal error), sysexits.h
# 64-78, xargs, timeout and env 123-127, the shell 126-127 and 128+N for a
# signal.  122 is none of them, as GNU timeout's 124 was chosen to be.
LEAK_STATUS = 122
NO_PROBE_STATUS = 2  # the probe is not built or does not work: nothing was run
_SHOWN = 3  # processes named per descriptor, unless -v
_STDIO = 3


@dataclasses.dataclass(frozen=True)
class Received:
    """One descriptor one process held right after exec, and where it came from."""

    fd: int
    kind: str
    target: str
    dev: int
    ino: int
    baseline: bool  # it came from run's own inherited table: declared
    came_from: str
    source: str  # which process put it there, for grouping (``run`` for the baseline)


@dataclasses.dataclass(frozen=True)
class Process:
    """One exec the probe recorded, with the descriptors beyond stdio it received."""

    record: probe.ProbeRecord
    received: tuple[Received, ...]

    @property
    def undeclared(self) -> list[Received]:
        """The findings: what did not come from the baseline."""
        return [r for r in self.received if not r.baseline]


@dataclasses.dataclass
class Outcome:
    """Everything one ``run`` observed, and the exit status it implies."""

    command: list[str]
    command_status: int  # as a shell reports it: 128+N for a signal death
    signal: int | None  # the signal that killed the command
    baseline: list[FdEntry]
    processes: list[Process]
    problems: list[str]  # records that could not be read or were cut short, or none at all
    fail_on_leak: int | None
    runner_pid: int  # the parent of the command's first process

    @property
    def violations(self) -> list[tuple[Process, Received]]:
        """Every undeclared reception, in the order the processes exec'd."""
        return [(p, r) for p in self.processes for r in p.undeclared]

    @property
    def clean(self) -> bool:
        """Nothing undeclared, every record read whole, and something observed."""
        return not (self.violations or self.problems)

    @property
    def exit_status(self) -> int:
        """The command's status; STATUS instead when --fail-on-leak and it alone is unclean."""
        if self.fail_on_leak is not None and self.command_status == 0 and not self.clean:
            return self.fail_on_leak
        return self.command_status


def trace(
    records: Sequence[probe.ProbeRecord], baseline: set[tuple[int, int, int]], runner_pid: int
) -> list[Process]:
    """Each record with its descriptors beyond stdio, each traced back through the lineage.

    records are oldest first, so a parent's record precedes its children's.
    A descriptor is followed up through the records of the ancestors that
    held the same open file (st_dev, st_ino) at the same number: the one
    above the highest of them put it there.  When that is ``run`` itself,
    and the descriptor is in run's own inherited table, it is baseline.
    """
    latest: dict[int, probe.ProbeRecord] = {}
    # The image each exec came from: the same pid's earlier program
    # (sh's `exec cat`), else the parent's latest, as it stood at the time.
    came_from: dict[int, probe.ProbeRecord | None] = {}
    result = []
    for rec in records:
        earlier = latest.get(rec.pid)
        if earlier is not None and earlier.ppid != rec.ppid:
            earlier = None  # a reused pid, not the same process
        came_from[id(rec)] = earlier or latest.get(rec.ppid)
        got = []
        for f in rec.fds:
            if f.fd < _STDIO or f.fd_flags < 0:  # closed while the probe looked
                continue
            got.append(_received(f, rec, came_from, baseline, runner_pid))
        latest[rec.pid] = rec
        result.append(Process(rec, tuple(got)))
    return result


def _received(
    f: probe.ProbeFd,
    rec: probe.ProbeRecord,
    came_from: dict[int, probe.ProbeRecord | None],
    baseline: set[tuple[int, int, int]],
    runner_pid: int,
) -> Received:
    holder, above = rec, came_from[id(rec)]
    seen = {id(rec)}
    while above is not None and id(above) not in seen and _holds(above, f):
        seen.add(id(above))
        holder, above = above, came_from[id(above)]
    if f.sock is not None:  # described as describe() would: family, type, addresses
        kind, target = fdtable.socket_target(*f.sock)
    else:
        kind, target = fdtable.refined_kind(fdtable.kind_of(f.mode), f.target), f.target
    key = (f.fd, f.dev, f.ino)
    if above is not None:
        # Its record, written at its own exec, does not show it: it opened the
        # descriptor (or made it inheritable) afterwards, and an exec carried it.
        how = "which opened it or made it inheritable after its own exec"
        if above.pid == holder.pid:
            how += ", then exec'd again"
        where = f"{_process(above)}, {how}"
        return Received(f.fd, kind, target, f.dev, f.ino, False, where, f"pid {above.pid}")
    if holder.ppid == runner_pid:
        if key in baseline:
            where = "the baseline: run inherited it from whoever started it"
            return Received(f.fd, kind, target, f.dev, f.ino, True, where, "run")
        where = "run itself, which did not hold it inheritable when it started"
        return Received(f.fd, kind, target, f.dev, f.ino, False, where, "run")
    # The lineage breaks at a process the probe did not see (a fork that
    # never exec'd, or a static or setuid program, docs/limits.md): the
    # baseline's own file at its own number is taken for the baseline, as
    # the plugin does.
    if key in baseline:
        where = f"the baseline, through pid {holder.ppid}, which has no record"
        return Received(f.fd, kind, target, f.dev, f.ino, True, where, "run")
    where = (
        f"pid {holder.ppid}, which has no record (a fork that never exec'd,"
        " or a statically linked or setuid program)"
    )
    return Received(f.fd, kind, target, f.dev, f.ino, False, where, f"pid {holder.ppid}")


def _holds(rec: probe.ProbeRecord, f: probe.ProbeFd) -> bool:
    return any(g.fd == f.fd and (g.dev, g.ino) == (f.dev, f.ino) for g in rec.fds)


def _argv_text(argv: Sequence[str], limit: int = 80) -> str:
    text = _printable(" ".join(argv))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str) -> str:
    """One line whatever a record or an entry name held (they are untrusted)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _process(rec: probe.ProbeRecord) -> str:
    return f"pid {rec.pid} [{_argv_text(rec.argv)}]"


def _program(rec: probe.ProbeRecord) -> str:
    """The program's short name, which tells apart two images of one pid."""
    name = rec.argv[0] if rec.argv else rec.exe
    return _printable(os.path.basename(name) or name or "?")


def _command_status(returncode: int) -> int:
    """subprocess's returncode as a shell reports it: -N (killed by signal N) is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def _call(command: Sequence[str]) -> int:
    """Run the command and wait for it, as system(3) does.

    close_fds=False: the command gets exactly what it would get if the
    shell had started it (this process's own descriptors are close-on-exec,
    PEP 446).  While it runs, SIGINT and SIGQUIT are ignored here, so a
    Ctrl-C reaches the command (the whole foreground process group gets it)
    and the command decides; they are ignored only after the start, so the
    command does not inherit SIG_IGN across exec.
    """
    proc = subprocess.Popen(list(command), close_fds=False)
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    try:
        return proc.wait()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def run(
    command: Sequence[str],
    *,
    as_json: bool = False,
    fail_on_leak: int | None = None,
    verbose: bool = False,
    use_kernel: bool = False,
) -> int:
    """Run command under the probe (or the kernel observer), report on standard error.

    Returns the exit status to use.  ``use_kernel`` was asked for by name:
    where the observer cannot run, nothing is run (no silent fallback to a
    probe that cannot see static programs).
    """
    try:
        # First: what run inherited, before anything here opens a descriptor.
        table = fdtable.snapshot()
    except fdtable.BackendError as exc:
        print(f"noinherit run: {exc}", file=sys.stderr)
        return NO_PROBE_STATUS
    baseline = [e for e in table if e.inheritable and e.fd >= _STDIO]
    if not use_kernel and probe.library() is None:
        print("noinherit run: the exec probe is not built for this system", file=sys.stderr)
        return NO_PROBE_STATUS
    try:
        records = recorddir.RecordDirectory.create()
    except OSError as exc:
        print(f"noinherit run: no private record directory: {exc}", file=sys.stderr)
        return NO_PROBE_STATUS
    record_dir = records.path
    problems: list[str] = []  # the kernel observer's
    env = probe.ProbeEnvironment(record_dir)
    observer = kernel.KernelSession(records, problems, every_exec=True)
    try:
        if use_kernel:
            problem = observer.start(explicit=True)
            what = "the kernel exec observer cannot run"
        else:
            problem = env.self_test()
            what = "the exec probe does not work"
        if problem:
            print(f"noinherit run: {what}: {problem}", file=sys.stderr)
            return NO_PROBE_STATUS
        _write_header(sys.stderr, baseline, "kernel" if use_kernel else "on")
        if not use_kernel:
            env.start()
        try:
            returncode = _call(command)
        except OSError as exc:
            print(f"noinherit run: cannot run {command[0]}: {exc}", file=sys.stderr)
            # The shell's statuses: 126 found but not executable, 127 not found.
            return 126 if isinstance(exc, PermissionError) else 127
        finally:
            env.stop()
            observer.stop()
        found = [*probe.read_records(records), *recorddir.sweep(records, keep=())]
    finally:
        records.remove()
    outcome = _outcome(command, returncode, baseline, found, fail_on_leak)
    outcome.problems += problems
    try:
        write_summary(sys.stderr, outcome, verbose)
        if as_json:
            json.dump(json_doc(outcome), sys.stdout, indent=2)
            print()
            sys.stdout.flush()
    except BrokenPipeError:  # | head
        sys.stderr.close()
    return outcome.exit_status


def _outcome(
    command: Sequence[str],
    returncode: int,
    baseline: list[FdEntry],
    found: Sequence[probe.ProbeRecord | probe.RecordError],
    fail_on_leak: int | None,
) -> Outcome:
    records = [r for r in found if isinstance(r, probe.ProbeRecord)]
    # A record that cannot be read, or that says it is incomplete, is a
    # process whose descriptors nobody saw: the run cannot be called clean.
    problems = [f"UNREADABLE record: {r}" for r in found if isinstance(r, probe.RecordError)]
    problems += [
        f"INCOMPLETE {_process(r)}: its record was cut short, it held more than shown"
        for r in records
        if r.truncated
    ]
    if not records:
        problems.append("UNOBSERVED: no process wrote a record (statically linked, or setuid?)")
    keys = {(e.fd, e.dev, e.ino) for e in baseline}
    runner_pid = os.getpid()
    return Outcome(
        command=list(command),
        command_status=_command_status(returncode),
        signal=-returncode if returncode < 0 else None,
        baseline=baseline,
        processes=trace(records, keys, runner_pid),
        problems=[_printable(p) for p in problems],
        fail_on_leak=fail_on_leak,
        runner_pid=runner_pid,
    )


def _baseline_text(baseline: Sequence[FdEntry]) -> str:
    return ", ".join(f"{number(e.fd)} ({e.kind})" for e in baseline)


def _write_header(out: TextIO, baseline: Sequence[FdEntry], probe_status: str = "on") -> None:
    """The plugin's report header, before the command's own output."""
    base = ", ".join(number(e.fd) for e in baseline) or "none"
    print(
        f"noinherit run: backend {fdtable.backend()} ({fdtable.backend_reason()}),"
        f" probe {probe_status}, baseline {fdtable.UNIT}s: {base}",
        file=out,
        flush=True,
    )


def _sep(title: str) -> str:
    """``===== title =====`` across the terminal, as pytest's write_sep draws it."""
    width = shutil.get_terminal_size().columns
    n = max((width - len(title) - 2) // 2, 1)
    line = f"{'=' * n} {title} {'=' * n}"
    return line + "=" * (width - len(line)) if len(line) < width else line


def write_summary(out: TextIO, outcome: Outcome, verbose: bool = False) -> None:
    """The ``noinherit summary`` section: findings grouped by descriptor, then the verdict."""
    shown = 10**9 if verbose else _SHOWN
    print(_sep("noinherit summary"), file=out)
    groups: dict[tuple[Any, ...], list[tuple[Process, Received]]] = {}
    for p, r in outcome.violations:
        groups.setdefault((r.fd, r.dev, r.ino, r.kind, r.source), []).append((p, r))
    for group in groups.values():
        first, r = group[0]
        pids = [f"pid {p.record.pid} ({_program(p.record)})" for p, _ in group]
        named = ", ".join(pids[:shown]) + (f" (+{len(pids) - shown})" if len(pids) > shown else "")
        n = len(group)
        fd = describe_fd(dataclasses.asdict(r))
        print(f"VIOLATION {fd} reached {n} process{'es' if n != 1 else ''}: {named}", file=out)
        ppid = first.record.ppid
        parent = "run" if ppid == outcome.runner_pid else f"pid {ppid}"
        print(f"    into {_process(first.record)}, started by {parent}", file=out)
        print(f"    came from: {r.came_from}", file=out)
    for line in outcome.problems:
        print(line, file=out)
    if outcome.baseline:
        print(
            "run baseline (inherited by run, allowed everywhere):"
            f" {_baseline_text(outcome.baseline)}",
            file=out,
        )
    print(_verdict(outcome), file=out)


def _verdict(outcome: Outcome) -> str:
    """The last line: what was seen, and which status run exits with, and why."""
    n = len(outcome.processes)
    parts = [f"{n} process{'es' if n != 1 else ''} observed"]
    reached = {id(p) for p, _ in outcome.violations}
    if reached:
        k = len({(r.fd, r.dev, r.ino, r.source) for _, r in outcome.violations})
        parts.append(
            f"{k} undeclared descriptor{'s' if k != 1 else ''} reached {len(reached)} of them"
        )
    if outcome.problems:
        k = len(outcome.problems)
        parts.append(f"{k} record problem{'s' if k != 1 else ''}")
    parts.append("clean" if outcome.clean else "not clean")
    status = outcome.exit_status
    if status != outcome.command_status:
        why = f"exit status {status} (--fail-on-leak; the command exited 0)"
    elif outcome.clean or outcome.fail_on_leak is not None or status != 0:
        why = f"exit status {status} (the command's)"
    else:
        why = f"exit status {status} (the command's; --fail-on-leak would make it {LEAK_STATUS})"
    return f"noinherit run: {', '.join(parts)}; {why}"


def json_doc(outcome: Outcome) -> dict[str, Any]:
    """What --json prints: the statuses, the baseline and every process."""
    return {
        "command": outcome.command,
        "exit_status": outcome.exit_status,
        "command_status": outcome.command_status,
        "signal": outcome.signal,
        "fail_on_leak": outcome.fail_on_leak,
        "clean": outcome.clean,
        "backend": fdtable.backend(),
        "baseline": [
            {"fd": e.fd, "kind": e.kind, "dev": e.dev, "ino": e.ino} for e in outcome.baseline
        ],
        "processes": [
            {
                "pid": p.record.pid,
                "ppid": p.record.ppid,
                "exe": p.record.exe,
                "argv": list(p.record.argv),
                "truncated": p.record.truncated,
                "received": [
                    {k: v for k, v in dataclasses.asdict(r).items() if k != "source"}
                    for r in p.received
                ],
            }
            for p in outcome.processes
        ],
        "problems": outcome.problems,
    }


def _status(text: str) -> int:
    """--fail-on-leak's STATUS: 1-125, the statuses a shell leaves to programs."""
    if not text.isdigit() or not 1 <= int(text) <= 125:
        raise argparse.ArgumentTypeError(
            f"STATUS must be a number from 1 to 125, not {text!r}"
            " (write --fail-on-leak=STATUS, and -- before the command)"
        )
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``run [--fail-on-leak[=STATUS]] [-v] [--json] [--kernel] -- CMD...``."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_noinherit",
        description="Show which descriptors every process of a command received.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    runp = sub.add_parser(
        "run",
        help="run a command under the exec probe",
        description="Run a command under the exec probe; exit with its own status.",
    )
    runp.add_argument(
        "--fail-on-leak",
        nargs="?",
        const=LEAK_STATUS,
        type=_status,
        metavar="STATUS",
        help="exit with STATUS (default %(const)s) when the command succeeded but a"
        " descriptor nobody declared reached one of its processes, or a record could"
        " not be read; a failing command keeps its own status",
    )
    runp.add_argument(
        "-v", "--verbose", action="store_true", help="name every process a descriptor reached"
    )
    runp.add_argument(
        "--json", action="store_true", help="also print the statuses and records as JSON on stdout"
    )
    runp.add_argument(
        "--kernel",
        action="store_true",
        help="observe every exec with the kernel exec observer (seccomp, Linux) instead of"
        " the LD_PRELOAD probe: static programs and scrubbed environments included",
    )
    runp.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command: run -- COMMAND ARGS...")
    return run(
        command,
        as_json=args.json,
        fail_on_leak=args.fail_on_leak,
        verbose=args.verbose,
        use_kernel=args.kernel,
    )
