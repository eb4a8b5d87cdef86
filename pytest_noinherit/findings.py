"""Findings: what the plugin has to say about a test, and how it is worded.

A finding is a plain JSON-ready dict so that it travels on a
``TestReport`` from a pytest-xdist worker to the controller unchanged.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pytest_noinherit.allowances import ChildDescriptor
from pytest_noinherit.fdtable import UNIT

if TYPE_CHECKING:  # the plugin module imports this one before any session needs spawns
    from pytest_noinherit.receptions import Spawn

VIOLATION = "violation"  # a child received a descriptor nobody declared or allowed
LEFTOVER = "leftover"  # strict mode: an inheritable descriptor outlived its test
LATENT = "latent"  # default mode: the same, listed only ("would fail under strict")
LEAK = "leak"  # --noinherit-leaks: any descriptor outlived its test (a warning)
ALLOWED = "allowed"  # a child received it, an allowance said yes
INCOMPLETE = "incomplete"  # a child's table could not be seen whole
RECEPTION = "reception"  # not a finding: one child and what it received, for the JSON report


def descriptor_json(desc: ChildDescriptor) -> dict[str, Any]:
    """One descriptor as the JSON report and the report attribute carry it."""
    return {
        "fd": desc.fd,
        "kind": desc.kind,
        "target": desc.target,
        "dev": desc.dev,
        "ino": desc.ino,
        "origin": desc.inheritable_since or desc.created_at,
        "created_at": desc.created_at,
        "inheritable_since": desc.inheritable_since,
    }


def _child(type_: str, nodeid: str, phase: str, spawn: Spawn) -> dict[str, Any]:
    """What every finding about one child says of it."""
    return {
        "type": type_,
        "test": nodeid,
        "phase": phase,
        "pid": spawn.pid,
        "argv": list(spawn.argv),
        "route": spawn.route,
        "how": spawn.how,
        "hint": spawn.hint,
        "site": spawn.site,  # where the test started the child
    }


def child_finding(
    type_: str, nodeid: str, phase: str, spawn: Spawn, desc: ChildDescriptor, allowed_by: str = ""
) -> dict[str, Any]:
    """A violation or an allowed descriptor in one child."""
    return {
        **_child(type_, nodeid, phase, spawn),
        "allowed_by": allowed_by,
        "children": 1,  # children of this phase that received it
        "came_from": "",  # which test (or import time) first held it inheritable
        **descriptor_json(desc),
    }


def reception_record(nodeid: str, phase: str, spawn: Spawn) -> dict[str, Any]:
    """One child that received undeclared descriptors, whatever the verdict on them."""
    return {
        **_child(RECEPTION, nodeid, phase, spawn),
        "declared": list(spawn.declared),
        "incomplete": spawn.incomplete,
        "received": [descriptor_json(d) for d in spawn.received],
    }


def incomplete_finding(nodeid: str, phase: str, spawn: Spawn) -> dict[str, Any]:
    """A child whose table was not seen whole: never read as clean."""
    return {**_child(INCOMPLETE, nodeid, phase, spawn), "reason": spawn.incomplete}


def table_finding(
    type_: str, nodeid: str, phase: str, desc: ChildDescriptor, owner: str
) -> dict[str, Any]:
    """A leftover or a leak: no child involved, an owner (the test or a fixture)."""
    return {"type": type_, "test": nodeid, "phase": phase, "owner": owner, **descriptor_json(desc)}


def _argv_text(argv: Sequence[str], limit: int = 80) -> str:
    text = " ".join(argv).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(n: int) -> str:
    """A table entry's number as the user writes it: ``5``, or a handle in hex on Windows."""
    return f"{n:#x}" if UNIT == "handle" else str(n)


_INHERITING_ROUTES = (
    "close_fds=False, os.system or os.spawn*"
    if UNIT == "handle"
    else "close_fds=False, os.system or fork+exec"
)


def describe_fd(f: dict[str, Any]) -> str:
    """``fd 5 (pipe: pipe:[1234])``, or ``handle 0x1a4 (pipe: pipe handle 0x1a4)`` on Windows."""
    return f"{UNIT} {number(f['fd'])} ({f['kind']}: {f['target']})"


def describe_child(f: dict[str, Any]) -> str:
    """``pid 42 [/bin/true] via subprocess.Popen, observed in the child``."""
    pid = f"pid {f['pid']}" if f.get("pid") is not None else "a child"
    if f["route"] == "exec probe":
        parent = f.get("hint") or ""
        via = "a child of the test" if parent.startswith("started") else f"a descendant ({parent})"
        return f"{pid} [{_argv_text(f['argv'])}], {via}, {f['how']}"
    return f"{pid} [{_argv_text(f['argv'])}] via {f['route']}, {f['how']}"


def fix_for(f: dict[str, Any]) -> str:
    """The advice for one violation.

    Descriptor numbers differ between runs (the plugin, coverage or xdist
    may hold a few more), so an allowance is offered by what the descriptor
    is, never by its number.
    """
    if UNIT == "handle":
        return _windows_fix_for(f)
    hint = f.get("hint") or ""
    how = {
        "close_fds=False": "keep close_fds=True and hand it over with pass_fds",
        "no file actions close it": "add a POSIX_SPAWN_CLOSE file action for it, or use"
        " subprocess with pass_fds",
        "fork+exec without closing it": "close it in the child before exec, or use subprocess"
        " with pass_fds",
    }.get(hint, "start the child with subprocess and hand it over with pass_fds")
    return (
        f"{how}; if the child really needs it, allow it by what it is:"
        f" {allow_example(f)} or noinherit.allow(<the file or socket>);"
        " otherwise keep it close-on-exec (os.set_inheritable(fd, False), or"
        " os.dup2(..., inheritable=False))"
    )


def allow_example(f: dict[str, Any]) -> str:
    """A marker that allows this descriptor by kind, and by path where it has one."""
    target = str(f.get("target") or "")
    words = target.split(" ")
    path = next((w for w in (target, *words[1:2]) if w.startswith("/")), None)
    if path is not None and " " not in path:
        return f'@pytest.mark.allow_inherit(kind="{f["kind"]}", path="{path}")'
    return f'@pytest.mark.allow_inherit(kind="{f["kind"]}")'


def _windows_fix_for(f: dict[str, Any]) -> str:
    """The advice for one violation on Windows, where the caller names handles."""
    h = number(f["fd"])
    listed = f"startupinfo=subprocess.STARTUPINFO(lpAttributeList={{'handle_list': [{h}]}})"
    how = {
        "close_fds=False": f"keep close_fds=True and hand it over with {listed}",
        "bInheritHandles=True": "pass a PROC_THREAD_ATTRIBUTE_HANDLE_LIST naming only the"
        " handles the child needs",
    }.get(f.get("hint") or "", f"start the child with subprocess.Popen and {listed}")
    return (
        f"{how}; if the child really needs it, allow it: {allow_example(f)}"
        " or noinherit.allow(<the file or socket>);"
        f" otherwise keep it non-inheritable (os.set_handle_inheritable({h}, False))"
    )


def _unset(f: dict[str, Any]) -> str:
    """How to make one leftover non-inheritable."""
    if UNIT == "handle":
        return f"os.set_handle_inheritable({number(f['fd'])}, False)"
    return "os.set_inheritable(fd, False)"


def leak_message(f: dict[str, Any]) -> str:
    """The DescriptorLeakWarning text for one leak."""
    return f"{describe_fd(f)} was opened by {f['owner']} and is still open after its teardown"


def failure_message(findings: Iterable[dict[str, Any]]) -> str:
    """The short text a failing phase shows; the long one goes to a report section."""
    found = list(findings)
    lines = []
    violations = [f for f in found if f["type"] == VIOLATION]
    leftovers = [f for f in found if f["type"] == LEFTOVER]
    incomplete = [f for f in found if f["type"] == INCOMPLETE]
    if violations:
        n = len(violations)
        lines.append(
            f"noinherit: {n} descriptor{'s' if n != 1 else ''} nobody declared or allowed"
            f" reached a child"
        )
        for f in violations:
            lines.append(f"  {_in_phase(f)}{describe_fd(f)} leaked into {describe_child(f)}")
            if f.get("site"):
                lines.append(f"    started at {f['site']}")
    if leftovers:
        n = len(leftovers)
        lines.append(
            f"noinherit: {n} inheritable descriptor{'s' if n != 1 else ''} left open"
            " (--noinherit-strict)"
        )
        lines += [f"  {describe_fd(f)} is still open after {_after(f)}" for f in leftovers]
    if incomplete:
        lines.append("noinherit: a child's table could not be seen whole, so it is not clean")
        lines += [f"  {describe_child(f)}: {f['reason']}" for f in incomplete]
    return "\n".join(lines)


def _in_phase(f: dict[str, Any]) -> str:
    """``(in call) `` for a violation raised at teardown after the test's own outcome."""
    return f"(in {f['phase']}) " if f.get("carried") else ""


def details_section(findings: Iterable[dict[str, Any]]) -> str:
    """Everything known about each finding, with the fix."""
    out = []
    for f in findings:
        if f["type"] == VIOLATION:
            out += [
                f"{describe_fd(f)}",
                f"  child: {describe_child(f)}",
                f"  argv:  {' '.join(f['argv'])}",
                *([f"  started at: {f['site']}"] if f.get("site") else []),
                *_origin_lines(f),
                f"  fix:   {fix_for(f)}",
            ]
        elif f["type"] == INCOMPLETE:
            out += [f"child: {describe_child(f)}", f"  {f['reason']}"]
        elif f["type"] == LEFTOVER:
            out += [
                f"{describe_fd(f)}",
                f"  left open and inheritable by {f['owner']}: every later child started"
                f" with {_INHERITING_ROUTES} receives it",
                *_origin_lines(f),
                f"  fix:   close it, or create it non-inheritable ({_unset(f)})",
            ]
    return "\n".join(out)


def _after(f: dict[str, Any]) -> str:
    owner = str(f["owner"])
    return owner if owner == "the test" else f"the teardown of {owner}"


def _origin_lines(f: dict[str, Any]) -> list[str]:
    lines = [f"  came from: {f['came_from']}"] if f.get("came_from") else []
    if f.get("created_at"):
        lines.append(f"  origin: {f['created_at']}")
    if f.get("inheritable_since"):
        lines.append(f"          {f['inheritable_since']}")
    return lines


class Summary:
    """Everything the terminal summary and the JSON report need, controller side."""

    def __init__(self) -> None:
        self.findings: list[dict[str, Any]] = []

    def add(self, items: Iterable[dict[str, Any]]) -> None:
        """Collect findings from one report."""
        self.findings.extend(items)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        """The findings of one type, in arrival order."""
        return [f for f in self.findings if f["type"] == type_]


def by_descriptor(items: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Findings grouped by descriptor (number and open file), in order of first arrival."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for f in items:
        groups.setdefault((f["fd"], f["dev"], f["ino"], f["kind"]), []).append(f)
    return list(groups.values())


def _tests_text(
    items: Sequence[dict[str, Any]], shown: int, phases: bool = True
) -> tuple[int, str]:
    """How many tests, and the first few of them (``a (call), b (setup) (+3)``)."""
    names = (f"{f['test']} ({f['phase']})" if phases else f["test"] for f in items)
    tests = list(dict.fromkeys(names))
    text = ", ".join(tests[:shown])
    if len(tests) > shown:
        text += f" (+{len(tests) - shown})"
    return len(tests), text


_SHOWN = 3  # tests named per grouped line, unless -v


def write_summary(
    tr: Any,
    summary: Summary,
    baseline: Sequence[Any],
    problems: Sequence[str],
    fixed: Sequence[tuple[str, str, str]] = (),
    known_path: str | None = None,
    notes_ignored: bool = False,
) -> None:
    """The terminal summary section (nothing at all when there is nothing to say).

    ``notes_ignored``: the run's warning filters ignore DescriptorLeakWarning,
    so the notes that are warnings by nature (latent descriptors, leaks) are
    left out; failures are never.
    """
    known = [f for f in summary.findings if f.get("known")]
    violations = [f for f in summary.of_type(VIOLATION) if not f.get("known")]
    leftovers = [f for f in summary.of_type(LEFTOVER) if not f.get("known")]
    latent = [] if notes_ignored else summary.of_type(LATENT)
    incomplete = [f for f in summary.of_type(INCOMPLETE) if not f.get("known")]
    leaks = [] if notes_ignored else summary.of_type(LEAK)
    allowed = summary.of_type(ALLOWED)
    found = violations or leftovers or latent or incomplete or leaks or allowed or known or fixed
    verbosity = int(getattr(tr, "verbosity", 0))
    if not (found or problems or (baseline and verbosity >= 0)):
        return
    if verbosity <= -2:  # -qq: one line, as pytest's own summaries shrink
        tr.write_line(_counts_line(violations, leftovers, incomplete, latent, known, fixed))
        return
    shown = 10**9 if verbosity > 0 else _SHOWN
    details = verbosity >= 0
    tr.write_sep("=", "noinherit summary")
    _write_violations(tr, violations, shown, details)
    _write_known(tr, known, fixed, known_path, shown)
    for f in incomplete:
        tr.write_line(f"INCOMPLETE {f['test']} ({f['phase']}): {describe_child(f)}: {f['reason']}")
    for f in leftovers:
        tr.write_line(f"LEFTOVER {f['test']}: {describe_fd(f)}, still open after {_after(f)}")
    for f in latent[:shown] if shown == _SHOWN else latent:
        tr.write_line(
            f"LATENT {f['test']}: {describe_fd(f)} left open and inheritable"
            " (would fail under --noinherit-strict)"
        )
    if shown == _SHOWN and len(latent) > _SHOWN:
        tr.write_line(f"    ... and {len(latent) - _SHOWN} more latent (-v lists them)")
    if leaks:
        tr.write_line(f"{len(leaks)} descriptor leak(s) reported as DescriptorLeakWarning:")
        for f in leaks:
            tr.write_line(f"    {f['test']}: {describe_fd(f)} (opened by {f['owner']})")
    by_allowance: dict[str, list[dict[str, Any]]] = {}
    for f in allowed:
        by_allowance.setdefault(f["allowed_by"], []).append(f)
    for allowance, items in by_allowance.items():
        tr.write_line(f"allowed by {allowance}:" if details else f"allowed by {allowance}")
        for group in by_descriptor(items) if details else ():
            _, tests = _tests_text(group, shown, phases=False)
            tr.write_line(f"    {tests}: {describe_fd(group[0])} into {describe_child(group[0])}")
    if baseline and details:
        fds = ", ".join(f"{number(e.fd)} ({e.kind})" for e in baseline)
        tr.write_line(f"session baseline (inherited by pytest, allowed everywhere): {fds}")
    for problem, count in dict(collections.Counter(problems)).items():
        times = f" ({count} times)" if count > 1 else ""
        tr.write_line(f"noinherit could not inspect a spawn: {problem}{times}")


def _counts_line(
    violations: Sequence[dict[str, Any]],
    leftovers: Sequence[dict[str, Any]],
    incomplete: Sequence[dict[str, Any]],
    latent: Sequence[dict[str, Any]],
    known: Sequence[dict[str, Any]],
    fixed: Sequence[tuple[str, str, str]],
) -> str:
    """``noinherit: 2 violations (5 tests), 1 leftover`` for -qq."""
    parts = []
    if violations:
        tests = len({f["test"] for f in violations})
        n = len(by_descriptor(violations))
        parts.append(
            f"{n} violation{'s' if n != 1 else ''} ({tests} test{'s' if tests != 1 else ''})"
        )
    for items, word in (
        (leftovers, "leftover"),
        (incomplete, "incomplete"),
        (latent, "latent"),
        (known, "known"),
        (fixed, "fixed"),
    ):
        if items:
            parts.append(f"{len(items)} {word}")
    return "noinherit: " + (", ".join(parts) or "nothing found")


def _write_violations(
    tr: Any, violations: Sequence[dict[str, Any]], shown: int, details: bool
) -> None:
    """One line per distinct descriptor and the tests whose children it reached."""
    for group in by_descriptor(violations):
        f = group[0]
        n, tests = _tests_text(group, shown)
        where = f"the children of {n} tests:" if n > 1 else "a child of"
        tr.write_line(f"VIOLATION {describe_fd(f)} reached {where} {tests}")
        if not details:
            continue
        tr.write_line(f"    into {describe_child(f)}")
        if f.get("site"):
            tr.write_line(f"    started at {f['site']}")
        if f.get("came_from"):
            tr.write_line(f"    came from: {f['came_from']}")
        if f.get("origin"):
            tr.write_line(f"    {f['origin']}")


def _write_known(
    tr: Any,
    known: Sequence[dict[str, Any]],
    fixed: Sequence[tuple[str, str, str]],
    known_path: str | None,
    shown: int,
) -> None:
    """Findings the known-findings file lists, and listed ones no longer seen."""
    if known:
        count = len({f["test"] for f in known})
        tr.write_line(
            f"KNOWN {len(known)} finding(s) of {count} test(s) listed in {known_path}, not failing:"
        )
        for group in by_descriptor(f for f in known if "fd" in f):
            _, tests_text = _tests_text(group, shown)
            tr.write_line(f"    {group[0]['type']} {describe_fd(group[0])}: {tests_text}")
    for test, type_, descriptor in fixed:
        tr.write_line(
            f"FIXED {test}: {type_} ({descriptor}) is listed in {known_path} but no longer"
            " seen; --noinherit-known-update drops it"
        )
