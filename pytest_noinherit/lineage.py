"""The exec probe's records, turned into receptions by lineage.

The probe writes one record per exec of every dynamically linked
descendant.  A record of a child Python started is merged with what Python
knew of it (route, argv, ``pass_fds``): the record's table decides.  A
record of a deeper descendant counts only the descriptors that came from
the test, followed down through the records of its ancestors.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from pytest_noinherit import fdtable, probe
from pytest_noinherit.allowances import ChildDescriptor
from pytest_noinherit.fdtable import FdTable
from pytest_noinherit.receptions import (
    PROBED,
    STDIO,
    Key,
    Origins,
    Spawn,
    alive,
    describe_entry,
)
from pytest_noinherit.recorddir import RecordDirectory

CHILD_OF_TEST = "started by the test process"
_TRUNCATED = "the exec probe's record of its table was cut short"
_MEMORY = 4096  # processes whose lineage is kept before the dead ones are dropped


class ProbeLineage:
    """What the probe's records said so far, for one session."""

    def __init__(
        self,
        records: str | RecordDirectory,
        owner_pid: int,
        baseline: set[Key],
        problems: list[str],
    ) -> None:
        self.records = records
        self.owner_pid = owner_pid
        self.baseline = baseline
        self.problems = problems  # the tracker's: shown once in the summary
        # Children judged from what Python knew whose record has not arrived
        # yet (pid -> declared), and what each recorded process got from the
        # test (to follow grandchildren).
        self._awaiting: dict[int, frozenset[int]] = {}
        self._lineage: dict[int, _Lineage] = {}

    def drain(self, told: list[Spawn], origins: Origins | None) -> list[Spawn]:
        """The receptions of one drain: the records merged with what Python told."""
        # A child that died before the records are listed cannot write one later.
        dead = {pid for pid in self._awaiting if not alive(pid)} if self._awaiting else set()
        result = self.merge(told, origins)
        for pid in dead:
            self._awaiting.pop(pid, None)
        return result

    def merge(self, told: list[Spawn], origins: Origins | None) -> list[Spawn]:
        """Judge the exec probe's records, each merged with what Python knew of it.

        A descriptor reaches a process from its parent program: it came from
        the test if the parent's own record shows the same open file there,
        or if the parent is the test process itself.  One the chain does not
        lead back to (a shell opened it itself) is not the test's leak.
        """
        by_pid = {s.pid: s for s in told if s.pid is not None}
        systems = [s for s in told if s.pid is None and s.route == "os.system"]
        merged: set[int] = set()  # id() of the told spawns a record replaced
        result = []
        owner: _OwnerTable | None = None
        for rec in probe.read_records(self.records):
            if isinstance(rec, probe.RecordError):
                self.problems.append(f"exec probe record ignored: {rec}")
                continue
            fds = {
                f.fd: f
                for f in rec.fds
                if f.fd >= STDIO
                and f.fd_flags >= 0  # closed while the probe looked
                and (f.fd, f.dev, f.ino) not in self.baseline
            }
            if owner is None:
                owner = _OwnerTable()
            earlier = self._lineage.get(rec.pid)  # the same process exec'd again
            parent = earlier or self._lineage.get(rec.ppid)
            told_of = None
            if earlier is None:
                told_of = by_pid.pop(rec.pid, None) or _system_call(systems, rec, self.owner_pid)
            awaited = self._awaiting.pop(rec.pid, None) if earlier is None else None
            relation = CHILD_OF_TEST if rec.ppid == self.owner_pid else f"pid {rec.ppid}"
            route, argv, hint, site = "exec probe", rec.argv, relation, ""
            if told_of is not None:  # a child Python started: the record decides
                merged.add(id(told_of))
                from_test, declared = _from_test(fds, told_of, owner), frozenset(told_of.declared)
                route, argv, hint, site = told_of.route, told_of.argv, told_of.hint, told_of.site
                owner.learn(told_of.received)
            elif awaited is not None:  # already judged from what Python knew
                from_test, declared = set(fds), awaited
            elif parent is not None:
                from_test = {n for n, f in fds.items() if parent.held.get(n) == (f.dev, f.ino)}
                declared = parent.declared
            elif rec.ppid == self.owner_pid:
                from_test, declared = set(fds), frozenset()
            else:  # an ancestor without a record: trust only what the test still holds
                from_test = {n for n, f in fds.items() if owner.holds(n, f.dev, f.ino)}
                declared = frozenset()
            held = {n: (fds[n].dev, fds[n].ino) for n in from_test}
            self._remember_lineage(rec.pid, held, declared)
            if awaited is not None:
                continue
            received = sorted(from_test - declared)
            incomplete = _TRUNCATED if rec.truncated else ""
            if received or incomplete:
                descs = tuple(owner.describe(fds[n], origins) for n in received)
                result.append(
                    Spawn(
                        route, rec.pid, argv, PROBED, descs, hint, tuple(declared), incomplete, site
                    )
                )
        for spawn in told:
            if id(spawn) in merged:
                continue
            if spawn.received or spawn.incomplete:
                result.append(spawn)
            if spawn.pid is not None:  # its record may still come: it must not count twice
                self._awaiting[spawn.pid] = frozenset(spawn.declared)
        return result

    def _remember_lineage(
        self, pid: int, held: dict[int, tuple[int, int]], declared: frozenset[int]
    ) -> None:
        if len(self._lineage) >= _MEMORY:
            # Only a live process can still start children that need its lineage.
            self._lineage = {p: v for p, v in self._lineage.items() if alive(p)}
            while len(self._lineage) >= _MEMORY:
                self._lineage.pop(next(iter(self._lineage)))
        self._lineage[pid] = _Lineage(held, declared)


def _from_test(fds: dict[int, probe.ProbeFd], told_of: Spawn, owner: _OwnerTable) -> set[int]:
    """What a record of a child Python started holds that could have come from the test.

    What Python saw go to the child, its declared descriptors, or what the
    test holds there inheritable.  Anything else the program opened itself
    and exec'd again, after a first exec that wrote no record (it held only
    0-2): ``sh -c 'exec 3<file; exec prog'`` is one record, prog's, by this pid.
    """
    told = {(d.fd, *d.identity) for d in told_of.received}
    return {
        n
        for n, f in fds.items()
        if (n, f.dev, f.ino) in told or n in told_of.declared or owner.holds(n, f.dev, f.ino)
    }


def _system_call(systems: list[Spawn], rec: probe.ProbeRecord, owner_pid: int) -> Spawn | None:
    """The os.system call whose shell this record is: sh -c CMD, a child of the test."""
    if rec.ppid != owner_pid or rec.argv[1:2] != ("-c",):
        return None
    for spawn in systems:
        if rec.argv[1:] == spawn.argv[1:]:
            systems.remove(spawn)
            return spawn
    return None


class _OwnerTable:
    """The test process's table, read once per drain when a probe record needs it.

    It tells whether the test still holds a descriptor a recorded process
    has, and describes it the way the Python side would (socket family,
    type and addresses), so allowances match whichever side saw the child.
    A socket the test no longer holds is described from what the probe
    read of it, in the same words.
    """

    def __init__(self) -> None:
        self._table: FdTable | None = None
        self._by_identity: dict[tuple[int, int], ChildDescriptor] = {}

    def learn(self, descs: Iterable[ChildDescriptor]) -> None:
        for d in descs:
            self._by_identity.setdefault(d.identity, d)

    def _entries(self) -> FdTable:
        if self._table is None:
            self._table = fdtable.snapshot()
        return self._table

    def holds(self, fd: int, dev: int, ino: int) -> bool:
        """Whether the test holds this open file there, inheritable (else no exec passed it on).

        The flag matters: pytest itself holds /dev/null close-on-exec at low
        numbers, where a shell's own ``exec 3</dev/null`` lands too.
        """
        entry = self._entries().get(fd)
        return entry is not None and entry.inheritable and entry.identity == (dev, ino)

    def describe(self, f: probe.ProbeFd, origins: Origins | None) -> ChildDescriptor:
        known = self._by_identity.get((f.dev, f.ino))
        if known is None:
            entry = next((e for e in self._entries() if e.identity == (f.dev, f.ino)), None)
            if entry is not None and f.dev | f.ino:
                known = self._by_identity[entry.identity] = describe_entry(entry, origins)
        if known is not None and not known.target.startswith("(closed"):
            return known._replace(fd=f.fd)
        if f.sock is not None:  # closed here since: the probe's own reading of it
            kind, target = fdtable.socket_target(*f.sock)
        else:
            kind, target = fdtable.refined_kind(fdtable.kind_of(f.mode), f.target), f.target
        created = since = None
        if origins is not None:
            created, since = origins(f.fd, f.dev, f.ino)
        return ChildDescriptor(f.fd, kind, target, f.dev, f.ino, since, created)


class _Lineage(NamedTuple):
    """What one recorded process got from the test (fd -> identity), and its declarations."""

    held: dict[int, tuple[int, int]]
    declared: frozenset[int]
