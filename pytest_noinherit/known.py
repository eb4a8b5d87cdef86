"""Known findings: a committed file of accepted findings, as a ratchet.

A project adopting the plugin writes its current findings once
(``--noinherit-known-update``); from then on the findings listed there are
reported as *known* and do not fail, new ones fail, and listed ones that no
longer occur are reported as *fixed*, so the file only shrinks.

An entry names a finding the way it stays the same across runs and
machines: the test id, the finding type and what the descriptor is (its
kind, a socket's family and type, a file's path with temporary directories
taken out), never a descriptor number, a pid, an inode or a port.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

from pytest_noinherit import findings

FORMAT = 1
Entry = tuple[str, str, str]  # (test, type, descriptor)

# pytest's basetemp (pytest-of-USER/pytest-N) and xdist's per-worker folders.
# (Compiled at first use, by re's cache: most runs keep no known findings.)
_PYTEST_TMP = r"pytest-of-[^/]+/pytest-\d+/(popen-gw\d+/)?"
_SOCKET = r"^(AF_\w+/SOCK_\w+)\s*(\S*)"


class KnownFileError(ValueError):
    """A known-findings file that cannot be used."""


def descriptor_of(f: dict[str, Any]) -> str:
    """What a finding's descriptor is, in words that stay the same between runs."""
    if f["type"] == findings.INCOMPLETE:
        return "a child's table not seen whole"
    kind, target = str(f.get("kind", "")), str(f.get("target", ""))
    if kind == "socket":
        m = re.match(_SOCKET, target)
        if m is None:
            return "socket"
        family, address = m.groups()
        return (
            f"socket {family} {_path(address)}" if address.startswith("/") else f"socket {family}"
        )
    if target.startswith("/"):
        return f"{kind} {_path(target)}"
    return kind


def _path(path: str) -> str:
    tmp = tempfile.gettempdir().rstrip("/") + "/"
    if path.startswith(tmp):
        path = "<tmp>/" + re.sub(_PYTEST_TMP, "", path[len(tmp) :])
    return path


def entry_of(f: dict[str, Any]) -> Entry:
    """The known-file entry a failing finding would have."""
    return (str(f["test"]), str(f["type"]), descriptor_of(f))


class KnownFindings:
    """The entries of one known-findings file, and which of them this run saw."""

    def __init__(self, path: str, entries: Iterable[Entry] = ()) -> None:
        self.path = path
        self.entries = set(entries)

    @classmethod
    def load(cls, path: str) -> KnownFindings:
        """Read the file; a missing one is empty, a malformed one a KnownFileError."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise KnownFileError(f"cannot read {path}: {exc}") from None
        items = doc.get("findings") if isinstance(doc, dict) else None
        if not isinstance(items, list) or doc.get("format") != FORMAT:
            raise KnownFileError(f"{path} is not a known-findings file of format {FORMAT}")
        entries: list[Entry] = []
        for item in items:
            fields = (
                [item.get(k) for k in ("test", "type", "descriptor")]
                if isinstance(item, dict)
                else []
            )
            test, type_, descriptor = (fields + [None] * 3)[:3]
            if not (
                isinstance(test, str) and isinstance(type_, str) and isinstance(descriptor, str)
            ):
                raise KnownFileError(f"{path}: bad entry {item!r}")
            entries.append((test, type_, descriptor))
        return cls(path, entries)

    def knows(self, f: dict[str, Any]) -> bool:
        """Whether a failing finding is listed."""
        return entry_of(f) in self.entries

    def fixed(self, seen: Iterable[dict[str, Any]], ran: set[str]) -> list[Entry]:
        """Listed entries of tests that ran and did not produce them again."""
        still = {entry_of(f) for f in seen}
        return sorted(e for e in self.entries if e[0] in ran and e not in still)

    def write(self, failing: Iterable[dict[str, Any]], ran: set[str]) -> None:
        """Rewrite the file: this run's failing findings, plus entries of tests that did not run."""
        kept = {e for e in self.entries if e[0] not in ran}
        entries = sorted(kept | {entry_of(f) for f in failing})
        doc = {
            "format": FORMAT,
            "about": "pytest-noinherit known findings: listed ones are reported, not failed",
            "findings": [{"test": t, "type": ty, "descriptor": d} for t, ty, d in entries],
        }
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".noinherit-known-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self.entries = set(entries)
