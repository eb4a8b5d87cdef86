"""Allowances: descriptors a test, a fixture or the project declares may reach a child.

An allowance is never a silent filter: each one counts what it allowed and
the terminal summary lists it.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pytest_noinherit.fdtable import KINDS

MARKER = "allow_inherit"
MARKER_HELP = (
    "allow_inherit(*fds, kind=KIND, path=GLOB): descriptors this test may pass to its"
    " children; with no arguments, any descriptor"
)
# The highest descriptor number an allowance may name.  A POSIX descriptor is a
# C int (open(2)), and Windows keeps only the low 32 bits of a handle
# significant, so nothing above INT_MAX is ever a descriptor.  The
# RLIMIT_NOFILE limit would be too strict: it can be raised after the
# allowance is declared, and a number may be named before it is opened.
FD_MAX = 2**31 - 1


class ChildDescriptor(NamedTuple):
    """A descriptor a child received, as the verdict and the reports see it.

    The records of this package are NamedTuples: a frozen dataclass costs
    some 4 M instructions to define (its methods are generated and compiled
    at import), paid by every pytest run (benchmarks/, start-up).
    """

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


class Allowance(NamedTuple):
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
    """Validate marker-style arguments; ValueError says what is wrong, for any input."""
    unknown = set(kwargs) - {"kind", "path"}
    if unknown:
        raise ValueError(
            f"unknown keyword {', '.join(sorted(map(str, unknown)))};"
            " allow_inherit takes fds, kind= and path="
        )
    fds = frozenset(_fd(arg) for arg in args)
    kinds = _kinds(kwargs.get("kind"))
    path = kwargs.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise ValueError(f"path= takes a non-empty glob string, not {path!r}")
    identity = None
    if identities and len(fds) == 1:
        identity = identities.get(next(iter(fds)))
    return Allowance(source, fds, kinds, path, identity)


def _fd(arg: object) -> int:
    """A descriptor number as a marker or allow() gives it."""
    if isinstance(arg, str):
        hint = arg if _is_number(arg) else f"kind={arg!r}" if arg in KINDS else f"path={arg!r}"
        raise ValueError(f"descriptor numbers must be integers, not {arg!r}; did you mean {hint}?")
    if isinstance(arg, bool) or not isinstance(arg, int):
        raise ValueError(f"descriptor numbers must be integers, not {arg!r}")
    if arg < 0:
        raise ValueError(f"descriptor numbers cannot be negative: {arg}")
    if arg > FD_MAX:
        raise ValueError(f"descriptor number {arg} is out of range 0..{FD_MAX}")
    return arg


def _kinds(kind: object) -> frozenset[str]:
    """kind= (None, a name or an iterable of names) as a set of known kind names."""
    if kind is None:
        return frozenset()
    if isinstance(kind, str):
        given: list[object] = [kind]
    elif isinstance(kind, Iterable) and not isinstance(kind, (bytes, bytearray)):
        given = list(kind)
    else:
        given = []
    if not given:  # an empty list would silently allow every kind
        raise ValueError(f"kind= takes a kind name or a list of kind names, not {kind!r}")
    names = []
    for name in given:
        if not isinstance(name, str):
            raise ValueError(f"kind names are strings, not {name!r}")
        if name not in KINDS:
            raise ValueError(f"unknown kind {name!r}; known kinds: {', '.join(sorted(KINDS))}")
        names.append(name)
    return frozenset(names)


def _is_number(word: str) -> bool:
    # str.isdigit() is true for "²" and "٣", which int() refuses or reads as
    # another digit: descriptor numbers are ASCII decimals only.
    return word.isascii() and word.isdigit()


def parse_ini_allowance(line: str, source: str = "ini noinherit_allow") -> Allowance:
    """``3``, ``kind=socket``, ``path=*.sock``, or several of them separated by spaces."""
    if not line.strip():
        # Unlike a bare marker, an empty line is more likely a slip than a wish
        # to allow every descriptor for every test.
        raise ValueError("an empty allowance; it would allow every descriptor")
    args: list[int] = []
    kwargs: dict[str, Any] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if not sep:
            if word[:1] == "-" and _is_number(word[1:]):
                raise ValueError(f"{line!r}: descriptor numbers cannot be negative: {word}")
            if not _is_number(word):
                raise ValueError(f"{line!r}: {word!r} is neither a descriptor number nor key=value")
            if len(word.lstrip("0")) > len(str(FD_MAX)):  # and int() refuses more than 4300 digits
                raise ValueError(f"{line!r}: {word[:12]}... is out of range 0..{FD_MAX}")
            args.append(int(word))
        elif not key:
            raise ValueError(f"{line!r}: {word!r} has no key before =")
        elif not value:
            raise ValueError(f"{line!r}: {key}= has no value")
        elif key in kwargs:
            raise ValueError(f"{line!r}: {key}= given twice")
        else:
            kwargs[key] = value
    return build(f"{source} {line.strip()!r}", args, kwargs)
