"""Findings: what the plugin has to say about a test, and how it is worded.

A finding is a plain JSON-ready dict so that it travels on a
``TestReport`` from a pytest-xdist worker to the controller unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from pytest_noinherit.allowances import ChildDescriptor
from pytest_noinherit.fdtable import UNIT
from pytest_noinherit.spawns import Spawn

VIOLATION = "violation"  # a child received a descriptor nobody allowed
LEFTOVER = "leftover"  # strict mode: an inheritable descriptor outlived its test
LEAK = "leak"  # any descriptor outlived its test (a warning)
ALLOWED = "allowed"  # a child received it, an allowance said yes


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


def child_finding(
    type_: str, nodeid: str, phase: str, spawn: Spawn, desc: ChildDescriptor, allowed_by: str = ""
) -> dict[str, Any]:
    """A violation or an allowed descriptor in one child."""
    return {
        "type": type_,
        "test": nodeid,
        "phase": phase,
        "pid": spawn.pid,
        "argv": list(spawn.argv),
        "route": spawn.route,
        "how": spawn.how,
        "hint": spawn.hint,
        "allowed_by": allowed_by,
        **descriptor_json(desc),
    }


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
    """The advice for one violation."""
    if UNIT == "handle":
        return _windows_fix_for(f)
    fd = f["fd"]
    hint = f.get("hint") or ""
    how = {
        "close_fds=False": f"keep close_fds=True and pass it explicitly with pass_fds=({fd},)",
        "no file actions close it": f"add (os.POSIX_SPAWN_CLOSE, {fd}) to file_actions, or use"
        " subprocess with pass_fds",
        "fork+exec without closing it": f"close it in the child before exec, or use subprocess"
        f" with pass_fds=({fd},)",
    }.get(hint, f"start the child with subprocess and pass_fds=({fd},)")
    return (
        f"{how}; if the child really needs it, mark the test @pytest.mark.allow_inherit({fd});"
        f" otherwise keep it close-on-exec (os.set_inheritable({fd}, False))"
    )


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
        f"{how}; if the child really needs it, mark the test @pytest.mark.allow_inherit({h});"
        f" otherwise keep it non-inheritable (os.set_handle_inheritable({h}, False))"
    )


def _unset(f: dict[str, Any]) -> str:
    """How to make one leftover non-inheritable."""
    if UNIT == "handle":
        return f"os.set_handle_inheritable({number(f['fd'])}, False)"
    return f"os.set_inheritable({f['fd']}, False)"


def leak_message(f: dict[str, Any]) -> str:
    """The DescriptorLeakWarning text for one leak."""
    return f"{describe_fd(f)} was opened by {f['owner']} and is still open after its teardown"


def failure_message(findings: Iterable[dict[str, Any]]) -> str:
    """The short text a failing phase shows; the long one goes to a report section."""
    lines = []
    for f in findings:
        if f["type"] == VIOLATION:
            lines.append(f"{describe_fd(f)} leaked into {describe_child(f)}")
        elif f["type"] == LEFTOVER:
            lines.append(f"{describe_fd(f)} is inheritable and still open after {_after(f)}")
    head = f"noinherit: {len(lines)} descriptor{'s' if len(lines) != 1 else ''} nobody allowed"
    return "\n".join([head, *("  " + line for line in lines)])


def details_section(findings: Iterable[dict[str, Any]]) -> str:
    """Everything known about each finding, with the fix."""
    out = []
    for f in findings:
        if f["type"] == VIOLATION:
            out += [
                f"{describe_fd(f)}",
                f"  child: {describe_child(f)}",
                f"  argv:  {' '.join(f['argv'])}",
                *_origin_lines(f),
                f"  fix:   {fix_for(f)}",
            ]
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
    lines = []
    if f.get("created_at"):
        lines.append(f"  origin: {f['created_at']}")
    if f.get("inheritable_since"):
        lines.append(f"          {f['inheritable_since']}")
    return lines


@dataclasses.dataclass
class Summary:
    """Everything the terminal summary and the JSON report need, controller side."""

    findings: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, items: Iterable[dict[str, Any]]) -> None:
        """Collect findings from one report."""
        self.findings.extend(items)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        """The findings of one type, in arrival order."""
        return [f for f in self.findings if f["type"] == type_]


def write_summary(
    tr: Any, summary: Summary, baseline: Sequence[Any], problems: Sequence[str]
) -> None:
    """The terminal summary section (nothing at all when there is nothing to say)."""
    violations = summary.of_type(VIOLATION)
    leftovers = summary.of_type(LEFTOVER)
    leaks = summary.of_type(LEAK)
    allowed = summary.of_type(ALLOWED)
    if not (violations or leftovers or leaks or allowed or problems or baseline):
        return
    tr.write_sep("=", "noinherit summary")
    for f in violations:
        tr.write_line(f"VIOLATION {f['test']} ({f['phase']}): {describe_fd(f)}")
        tr.write_line(f"    into {describe_child(f)}")
        if f.get("origin"):
            tr.write_line(f"    {f['origin']}")
    for f in leftovers:
        tr.write_line(f"LEFTOVER {f['test']}: {describe_fd(f)}, still open after {_after(f)}")
    if leaks:
        tr.write_line(f"{len(leaks)} descriptor leak(s) reported as DescriptorLeakWarning:")
        for f in leaks:
            tr.write_line(f"    {f['test']}: {describe_fd(f)} (opened by {f['owner']})")
    by_allowance: dict[str, list[dict[str, Any]]] = {}
    for f in allowed:
        by_allowance.setdefault(f["allowed_by"], []).append(f)
    for allowance, items in by_allowance.items():
        tr.write_line(f"allowed by {allowance}:")
        for f in items:
            tr.write_line(f"    {f['test']}: {describe_fd(f)} into {describe_child(f)}")
    if baseline:
        fds = ", ".join(f"{number(e.fd)} ({e.kind})" for e in baseline)
        tr.write_line(f"session baseline (inherited by pytest, allowed everywhere): {fds}")
    for problem in problems:
        tr.write_line(f"noinherit could not inspect a spawn: {problem}")
