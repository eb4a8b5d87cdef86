"""The verdict: receptions, tables and allowances in, findings out.

No I/O and no pytest here, so every rule lives in one place and is tested
directly (tests/test_verdict.py).  monitor.py gathers what these functions
need at the end of each phase and raises what they decide.

The verdict of a test is a function of that test alone: what *its* children
received, *its* allowances, and the table it left behind.  Nothing is
"already reported": a descriptor that reaches the children of ten tests
fails ten tests, whatever ran before, and the summary groups them.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pytest_noinherit import findings
from pytest_noinherit.allowances import Allowance, ChildDescriptor
from pytest_noinherit.receptions import Spawn

Key = tuple[int, int, int]
Ask = Callable[[dict[str, Any]], "bool | None"]  # the pytest_noinherit_allow hook

#: Finding types that fail the phase they are found in.
FAILING = frozenset({findings.VIOLATION, findings.LEFTOVER, findings.INCOMPLETE})


def key_of(desc: ChildDescriptor) -> Key:
    """A descriptor's identity: its number and its open file."""
    return (desc.fd, desc.dev, desc.ino)


def judge_children(
    nodeid: str,
    phase: str,
    receptions: Iterable[Spawn],
    allowances: Sequence[Allowance],
    ask: Ask,
    came_from: Callable[[Key], str],
) -> list[dict[str, Any]]:
    """One finding per received descriptor and phase: ``allowed`` or ``violation``.

    The ``pytest_noinherit_allow`` hook (``ask``) decides first; then the
    first allowance that matches.  When several children of one phase
    receive the same descriptor, the first is reported with a count of the
    others.  A reception whose table was not seen whole is ``incomplete``:
    it never reads as clean.
    """
    result: list[dict[str, Any]] = []
    seen: dict[tuple[str, Key], dict[str, Any]] = {}
    for spawn in receptions:
        if spawn.incomplete:
            result.append(findings.incomplete_finding(nodeid, phase, spawn))
        for desc in spawn.received:
            f = findings.child_finding(findings.VIOLATION, nodeid, phase, spawn, desc)
            answer = ask(dict(f))
            by = next((a for a in allowances if a.matches(desc)), None) if answer is None else None
            if answer or by is not None:
                f["type"] = findings.ALLOWED
                f["allowed_by"] = str(by) if by is not None else "pytest_noinherit_allow hook"
            earlier = seen.get((f["type"], key_of(desc)))
            if earlier is not None:
                earlier["children"] += 1
                continue
            f["came_from"] = came_from(key_of(desc))
            seen[(f["type"], key_of(desc))] = f
            result.append(f)
    return result


def judge_table(
    nodeid: str,
    suspects: Iterable[tuple[str, bool, ChildDescriptor, bool]],
    strict: bool,
    leaks: bool,
) -> list[dict[str, Any]]:
    """What a test left open: ``leftover``, ``latent`` or ``leak`` findings.

    Each suspect is (owner, new, descriptor, inheritable): ``new`` when it was
    opened during the test (or by a broader fixture now torn down), as
    opposed to an existing descriptor the test made inheritable.

    * inheritable, strict mode: a **leftover**, which fails the teardown;
    * any new descriptor with the leak check on: a **leak** (a warning);
    * inheritable otherwise: **latent**, listed in the summary only.
    """
    result = []
    for owner, new, desc, inheritable in suspects:
        if inheritable and strict:
            type_ = findings.LEFTOVER
        elif leaks and new:
            type_ = findings.LEAK
        elif inheritable:
            type_ = findings.LATENT
        else:
            continue
        result.append(findings.table_finding(type_, nodeid, "teardown", desc, owner))
    return result


def failing(found: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The findings that fail their phase."""
    return [f for f in found if f["type"] in FAILING]
