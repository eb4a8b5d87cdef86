"""Allowances: descriptors a test, a fixture or the project declares may reach a child.

An allowance is never a silent filter: each one counts what it allowed and
the terminal summary lists it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_noinherit.fdtable import KINDS

MARKER = "allow_inherit"
MARKER_HELP = (
    "allow_inherit(*fds, kind=KIND, path=GLOB): descriptors this test may pass to its"
    " children; with no arguments, any descriptor"
)


@dataclasses.dataclass(frozen=True)
class ChildDescriptor:
    """A descriptor a child received, as the verdict and the reports see it."""

    fd: int
    kind: str
    target: str
    dev: int
    ino: int
    inheritable_since: str | None = None  # how it became inheritable, when known
    created_at: str | None = None

    @property
    def identity(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the open file."""
        return (self.dev, self.ino)


@dataclasses.dataclass(frozen=True)
class Allowance:
    """One declared permission.  All the criteria it names must hold."""

    source: str
    fds: frozenset[int] = frozenset()
    kinds: frozenset[str] = frozenset()
    path: str | None = None
    identity: tuple[int, int] | None = None

    def matches(self, desc: ChildDescriptor) -> bool:
        """Whether this allowance covers desc."""
        if self.fds and desc.fd not in self.fds:
            return False
        if self.kinds and desc.kind not in self.kinds:
            return False
        if self.identity is not None and desc.identity != self.identity:
            return False
        if self.path is None:
            return True
        # A socket's target reads "AF_UNIX/SOCK_STREAM /run/x.sock": its address counts too.
        words = desc.target.split(" ")
        return any(fnmatch.fnmatchcase(t, self.path) for t in (desc.target, *words[1:2]))

    def __str__(self) -> str:
        parts = [str(fd) for fd in sorted(self.fds)]
        parts += [f"kind={k}" for k in sorted(self.kinds)]
        if self.path is not None:
            parts.append(f"path={self.path}")
        if self.identity is not None:
            parts.append("that open file")
        return f"{self.source}: {', '.join(parts) or 'any descriptor'}"


def build(
    source: str,
    args: Iterable[Any],
    kwargs: Mapping[str, Any],
    identities: Mapping[int, tuple[int, int]] | None = None,
) -> Allowance:
    """Validate marker-style arguments; ValueError says what is wrong."""
    unknown = set(kwargs) - {"kind", "path"}
    if unknown:
        raise ValueError(
            f"unknown keyword {', '.join(sorted(unknown))};"
            " allow_inherit takes fds, kind= and path="
        )
    fds = set()
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, int):
            raise ValueError(f"descriptor numbers must be integers, not {arg!r}")
        if arg < 0:
            raise ValueError(f"descriptor numbers cannot be negative: {arg}")
        fds.add(arg)
    kind = kwargs.get("kind")
    kinds = {kind} if isinstance(kind, str) else set(kind or ())
    bad = [k for k in kinds if not isinstance(k, str) or k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind {bad[0]!r}; known kinds: {', '.join(sorted(KINDS))}")
    path = kwargs.get("path")
    if path is not None and not isinstance(path, str):
        raise ValueError(f"path= takes a glob string, not {path!r}")
    identity = None
    if identities and len(fds) == 1:
        identity = identities.get(next(iter(fds)))
    return Allowance(source, frozenset(fds), frozenset(kinds), path, identity)


def parse_ini_allowance(line: str, source: str = "ini noinherit_allow") -> Allowance:
    """``3``, ``kind=socket``, ``path=*.sock``, or several of them separated by spaces."""
    args: list[int] = []
    kwargs: dict[str, Any] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if not sep:
            if not word.isdigit():
                raise ValueError(f"{line!r}: {word!r} is neither a descriptor number nor key=value")
            args.append(int(word))
        elif key in kwargs:
            raise ValueError(f"{line!r}: {key}= given twice")
        else:
            kwargs[key] = value
    return build(f"{source} {line.strip()!r}", args, kwargs)
