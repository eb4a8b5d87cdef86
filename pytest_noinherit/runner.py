"""``python -m pytest_noinherit run -- COMMAND ...``: any command under the exec probe.

Runs the command with the probe preloaded and prints, for every process it
exec'd (the command, its children, their children), the descriptors it
received beyond stdio and where each came from.  Exit status: 1 when any
process received one, else the command's own status, but never 0 when a
record could not be read or was incomplete (a process nobody saw whole).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from pytest_noinherit import fdtable, probe, recorddir

__all__ = ["main"]


@dataclasses.dataclass
class Received:
    """One descriptor one process held right after exec, and its origin."""

    fd: int
    kind: str
    target: str
    origin: str


def _origins(
    records: list[probe.ProbeRecord], runner_pid: int
) -> list[tuple[probe.ProbeRecord, list[Received]]]:
    """Each record with its descriptors >= 3, traced back through the parent records."""
    by_pid: dict[int, probe.ProbeRecord] = {}
    result = []
    for rec in records:  # oldest first, so a parent's record precedes its children's
        parent = by_pid.get(rec.pid) or by_pid.get(rec.ppid)
        received = []
        for f in rec.fds:
            if f.fd < 3:
                continue
            kind = fdtable.refined_kind(fdtable.kind_of(f.mode), f.target)
            origin = _origin(f, rec, parent, by_pid, runner_pid)
            received.append(Received(f.fd, kind, f.target, origin))
        by_pid[rec.pid] = rec
        result.append((rec, received))
    return result


def _origin(
    f: probe.ProbeFd,
    rec: probe.ProbeRecord,
    parent: probe.ProbeRecord | None,
    by_pid: dict[int, probe.ProbeRecord],
    runner_pid: int,
) -> str:
    """Walk up while the ancestors held the same open file at the same number."""
    holder = None
    seen = set()
    while parent is not None and parent.pid not in seen and _holds(parent, f):
        seen.add(parent.pid)
        holder = parent
        parent = by_pid.get(parent.ppid)
    if holder is None:
        if rec.ppid == runner_pid:
            return "inherited from whoever started this command"
        where = f"pid {rec.ppid}" + (f" [{' '.join(parent.argv)}]" if parent else "")
        return f"opened by its parent {where} before exec"
    if holder.ppid == runner_pid:
        return "inherited from whoever started this command"
    return (
        f"inherited through pid {holder.pid} [{' '.join(holder.argv)}], which opened or received it"
    )


def _holds(rec: probe.ProbeRecord, f: probe.ProbeFd) -> bool:
    return any(g.fd == f.fd and (g.dev, g.ino) == (f.dev, f.ino) for g in rec.fds)


def run(command: Sequence[str], as_json: bool) -> int:
    """Run command under the probe and report; the exit status to use."""
    lib = probe.library()
    if lib is None:
        print("pytest_noinherit run: the exec probe is not built for this system", file=sys.stderr)
        return 2
    try:
        record_dir = recorddir.create()
    except OSError as exc:
        print(f"pytest_noinherit run: no private record directory: {exc}", file=sys.stderr)
        return 2
    env = probe.ProbeEnvironment(record_dir)
    try:
        problem = recorddir.check(record_dir)
        if problem:
            print(f"pytest_noinherit run: {problem}", file=sys.stderr)
            return 2
        env.start()
        try:
            # close_fds=False: the command gets exactly what it would get if
            # the shell had started it (this process's own are close-on-exec).
            status = subprocess.call(list(command), close_fds=False)
        except OSError as exc:
            print(f"pytest_noinherit run: cannot run {command[0]}: {exc}", file=sys.stderr)
            return 127
        finally:
            env.stop()
        found = [*probe.read_records(record_dir), *recorddir.sweep(record_dir, keep=())]
    finally:
        recorddir.remove(record_dir)
    records = [r for r in found if isinstance(r, probe.ProbeRecord)]
    # A record that cannot be read, or that says it is incomplete, is a
    # process whose descriptors nobody saw: the run cannot be called clean.
    problems = [f"record ignored: {r}" for r in found if isinstance(r, probe.RecordError)]
    problems += [
        f"pid {r.pid} [{' '.join(r.argv)}]: record incomplete (truncated), more descriptors"
        " than shown"
        for r in records
        if r.truncated
    ]
    traced = _origins(records, os.getpid())
    leaks = [(rec, got) for rec, got in traced if got]
    try:
        if as_json:
            json.dump([_json(rec, got) for rec, got in traced], sys.stdout, indent=2)
            print()
        else:
            _print(traced, leaks)
        for line in problems:
            print(f"noinherit: {line}", file=sys.stderr)
    except BrokenPipeError:  # | head
        sys.stderr.close()
    if leaks:
        return 1
    # A failing command keeps its own status; a passing one is not clean.
    return status or (1 if problems else 0)


def _json(rec: probe.ProbeRecord, got: list[Received]) -> dict[str, Any]:
    return {
        "pid": rec.pid,
        "ppid": rec.ppid,
        "exe": rec.exe,
        "argv": list(rec.argv),
        "received": [dataclasses.asdict(r) for r in got],
    }


def _print(traced: list[tuple[probe.ProbeRecord, list[Received]]], leaks: list[Any]) -> None:
    out = sys.stderr
    if not traced:
        print("noinherit: no process was observed (statically linked, or setuid?)", file=out)
        return
    for rec, got in leaks:
        print(f"noinherit: pid {rec.pid} [{' '.join(rec.argv)}] received:", file=out)
        for r in got:
            print(f"    fd {r.fd} ({r.kind}: {r.target}) - {r.origin}", file=out)
    print(
        f"noinherit: {len(traced)} process(es) observed, {len(leaks)} received descriptors"
        " beyond stdio",
        file=out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``run [--json] -- COMMAND ARGS...``."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_noinherit",
        description="Show which descriptors every process of a command received.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    runp = sub.add_parser("run", help="run a command under the exec probe")
    runp.add_argument("--json", action="store_true", help="print the records as JSON")
    runp.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command: run -- COMMAND ARGS...")
    return run(command, args.json)
