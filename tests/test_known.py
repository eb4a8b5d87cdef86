"""The known-findings file on its own: stable entries, loading, rewriting."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from pytest_noinherit import known


def finding(**fields: object) -> dict[str, object]:
    return {
        "type": "violation",
        "test": "t.py::test_a",
        "kind": "pipe",
        "target": "pipe:[9]",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "descriptor"),
    [
        ({}, "pipe"),
        (
            {"kind": "socket", "target": "AF_INET/SOCK_STREAM 127.0.0.1:41234"},
            "socket AF_INET/SOCK_STREAM",
        ),
        (
            {"kind": "socket", "target": "AF_UNIX/SOCK_STREAM /run/app.sock"},
            "socket AF_UNIX/SOCK_STREAM /run/app.sock",
        ),
        ({"kind": "socket", "target": "socket:[77]"}, "socket"),
        ({"kind": "file", "target": "/etc/hosts"}, "file /etc/hosts"),
        (
            {
                "kind": "file",
                "target": f"{tempfile.gettempdir()}/pytest-of-me/pytest-12/popen-gw1/t0/key",
            },
            "file <tmp>/t0/key",
        ),
        ({"type": "incomplete"}, "a child's table not seen whole"),
    ],
)
def test_descriptors_are_named_the_same_on_every_run(
    fields: dict[str, object], descriptor: str
) -> None:
    """Ports, inodes and temporary folders never reach an entry."""
    assert known.descriptor_of(finding(**fields)) == descriptor


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    """A written file loads back as the same entries, and knows the findings it came from."""
    path = str(tmp_path / "k.json")
    table = known.KnownFindings(path)
    table.write([finding(), finding(test="t.py::test_b")], ran={"t.py::test_a", "t.py::test_b"})
    again = known.KnownFindings.load(path)
    assert again.entries == table.entries
    assert again.knows(finding())
    assert not again.knows(finding(kind="chr", target="/dev/null"))
    assert json.loads(Path(path).read_text())["format"] == known.FORMAT


def test_fixed_only_counts_tests_that_ran(tmp_path: Path) -> None:
    """An entry is fixed when its test ran without it; a test that did not run fixes nothing."""
    table = known.KnownFindings(
        str(tmp_path / "k.json"),
        [("t.py::test_a", "violation", "pipe"), ("t.py::test_b", "violation", "pipe")],
    )
    assert table.fixed([], ran={"t.py::test_a"}) == [("t.py::test_a", "violation", "pipe")]
    assert table.fixed([finding()], ran={"t.py::test_a"}) == []


def test_missing_file_is_empty_and_unwritable_folder_raises(tmp_path: Path) -> None:
    """A missing file has no entries; a file that cannot be written raises OSError."""
    assert known.KnownFindings.load(str(tmp_path / "none.json")).entries == set()
    table = known.KnownFindings(str(tmp_path / "gone" / "k.json"))
    with pytest.raises(OSError):
        table.write([finding()], ran=set())
