"""The verdict module on its own: receptions, tables and allowances in, findings out."""

from __future__ import annotations

from typing import Any

from pytest_noinherit import findings, verdict
from pytest_noinherit.allowances import Allowance, ChildDescriptor
from pytest_noinherit.spawns import PREDICTED, PROBED, Spawn

PIPE = ChildDescriptor(5, "pipe", "pipe:[77]", 12, 77)
SOCK = ChildDescriptor(6, "socket", "AF_UNIX/SOCK_STREAM /run/app.sock", 8, 99)


def child(*received: ChildDescriptor, pid: int = 42, incomplete: str = "") -> Spawn:
    return Spawn("subprocess.Popen", pid, ("/bin/true",), PREDICTED, received, "", (), incomplete)


def never(_: dict[str, Any]) -> bool | None:
    return None


def judge(
    *spawns: Spawn, allowances: tuple[Allowance, ...] = (), ask: Any = never
) -> list[dict[str, Any]]:
    return verdict.judge_children(
        "t.py::test", "call", spawns, allowances, ask, lambda k: "t.py::a"
    )


def test_an_undeclared_descriptor_is_a_violation_that_fails() -> None:
    """A received descriptor no allowance covers is a failing violation, with its origin."""
    [f] = judge(child(PIPE))
    assert f["type"] == findings.VIOLATION
    assert (f["fd"], f["test"], f["phase"], f["came_from"]) == (5, "t.py::test", "call", "t.py::a")
    assert verdict.failing([f]) == [f]


def test_the_same_reception_judged_twice_gives_the_same_verdict() -> None:
    """No memory between calls: the second test with the same child fails too."""
    assert judge(child(PIPE)) == judge(child(PIPE))


def test_allowances_match_by_kind_path_and_number() -> None:
    """The first matching allowance wins and is named; the rest stays a violation."""
    by_path = Allowance("marker", path="*/app.sock")
    found = judge(child(PIPE, SOCK), allowances=(by_path,))
    assert [(f["fd"], f["type"]) for f in found] == [(5, "violation"), (6, "allowed")]
    assert found[1]["allowed_by"] == "marker: path=*/app.sock"
    assert judge(child(PIPE), allowances=(Allowance("ini", fds=frozenset({7})),))[0]["type"] == (
        findings.VIOLATION
    )


def test_the_hook_decides_before_the_allowances() -> None:
    """pytest_noinherit_allow: True allows, False insists on a violation over an allowance."""
    allow_all = (Allowance("ini"),)
    assert judge(child(PIPE), ask=lambda d: True)[0]["allowed_by"] == "pytest_noinherit_allow hook"
    assert judge(child(PIPE), allowances=allow_all, ask=lambda d: False)[0]["type"] == "violation"
    assert judge(child(PIPE), allowances=allow_all)[0]["type"] == "allowed"


def test_many_children_with_one_descriptor_are_one_finding_with_a_count() -> None:
    """Three children of one phase receive the same pipe: one violation, children=3."""
    [f] = judge(child(PIPE, pid=1), child(PIPE, pid=2), child(PIPE, pid=3))
    assert (f["pid"], f["children"]) == (1, 3)


def test_an_incomplete_reception_never_reads_as_clean() -> None:
    """A child whose table was cut short is an incomplete finding, which fails."""
    found = judge(child(incomplete="record cut short"))
    assert [f["type"] for f in found] == [findings.INCOMPLETE]
    assert verdict.failing(found) == found


def test_probe_and_python_copies_of_a_child_are_described_alike() -> None:
    """The verdict only sees descriptors: a probed reception is judged like any other."""
    probed = Spawn("os.system", 9, ("sh", "-c", "true"), PROBED, (SOCK,), "", ())
    assert judge(probed, allowances=(Allowance("m", path="*/app.sock"),))[0]["type"] == "allowed"


def test_table_rules_by_mode() -> None:
    """Inheritable leftovers fail in strict mode, are latent otherwise; leaks need the check."""
    suspects = [("the test", True, PIPE, True), ("the test", True, SOCK, False)]
    types = {
        (strict, leaks): [
            f["type"] for f in verdict.judge_table("t.py::test", suspects, strict, leaks)
        ]
        for strict in (False, True)
        for leaks in (False, True)
    }
    assert types == {
        (False, False): ["latent"],
        (False, True): ["leak", "leak"],
        (True, False): ["leftover"],
        (True, True): ["leftover", "leak"],
    }
    assert verdict.failing(verdict.judge_table("t", suspects, True, False))
    assert not verdict.failing(verdict.judge_table("t", suspects, False, True))


def test_made_inheritable_but_not_new_is_no_leak() -> None:
    """An existing descriptor the test made inheritable: latent or leftover, never a leak."""
    suspects = [("the test", False, PIPE, True)]
    assert [f["type"] for f in verdict.judge_table("t", suspects, False, True)] == ["latent"]
