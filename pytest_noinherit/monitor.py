"""The per-session runtime: snapshots around each test, the verdict, the findings.

One :class:`Monitor` is registered as the plugin ``noinherit-monitor`` for
the session (pytest's logging plugin is the model); plugin.py's module-level
hooks only create it.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Generator, Iterable
from typing import Any

import pytest

from pytest_noinherit import allowances as allow_mod
from pytest_noinherit import creators, fdtable, findings
from pytest_noinherit.allowances import Allowance
from pytest_noinherit.fdtable import FdEntry, FdTable
from pytest_noinherit.probe import ProbeEnvironment
from pytest_noinherit.settings import Settings
from pytest_noinherit.spawns import Spawn, SpawnTracker
from pytest_noinherit.warning_types import DescriptorLeakWarning

Key = tuple[int, int, int]


def _key(e: FdEntry) -> Key:
    return (e.fd, e.dev, e.ino)


def _stdlib_helper_fds() -> set[int]:
    """Descriptors the stdlib keeps for the life of the process, started on first use.

    multiprocessing's resource tracker and forkserver are started by the first
    test that needs them and live until the interpreter exits: they belong to
    the session, not to that test.  Only modules already imported are looked at.
    """
    fds = set()
    for module, obj, attr in (
        ("multiprocessing.resource_tracker", "_resource_tracker", "_fd"),
        ("multiprocessing.forkserver", "_forkserver", "_forkserver_alive_fd"),
    ):
        helper = getattr(sys.modules.get(module), obj, None)
        fd = getattr(helper, attr, None)
        if isinstance(fd, int):
            fds.add(fd)
    return fds


def _tracker_class() -> type[SpawnTracker]:
    """The spawn tracker of this platform."""
    if sys.platform == "win32":
        from pytest_noinherit.winspawns import WindowsSpawnTracker

        return WindowsSpawnTracker
    return SpawnTracker


class Monitor:
    """Judges every test phase; collects findings from every report."""

    def __init__(self, config: pytest.Config, settings: Settings, baseline: FdTable) -> None:
        self.config = config
        self.settings = settings
        self.baseline = [e for e in baseline if e.inheritable and e.fd >= 3]
        self.record_dir = tempfile.mkdtemp(prefix="pytest-noinherit-")
        self.tracker = _tracker_class()({_key(e) for e in self.baseline}, self.record_dir)
        self.probe = ProbeEnvironment(self.record_dir)
        self.probe_status = self._start_probe()
        self.nodeid: str | None = None  # the test in progress, for creation records
        self.unpatch = self._start_patch(str(config.rootpath))
        self.patch_status = "on" if self.unpatch else "off"
        if settings.patch and not self.unpatch:
            self.patch_status = "unavailable: the patched creators are the POSIX ones"
        self.summary = findings.Summary()
        # Descriptors already reported: a leak is blamed on one test, never on the next.
        self.reported: set[Key] = set()
        # Broader-scoped fixtures own what their setup opened until their teardown.
        self.owned: dict[int, tuple[str, list[FdEntry]]] = {}
        self.fixture_leftovers: list[tuple[str, FdEntry]] = []
        # The table after one test's teardown is the next test's starting
        # point: one snapshot per test instead of two.
        self.last_table: FdTable | None = None
        # The test in progress; nothing is kept on items, which live all session.
        self.before: FdTable | None = None
        self.allowances: list[Allowance] = []
        # Findings waiting for their phase's report: (nodeid, when) -> findings.
        self.unsent: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.tracker.install()

    def _start_probe(self) -> str:
        """Switch the exec probe on if asked to and it works; the header's words."""
        mode = self.settings.probe
        if mode == "off" or (mode == "auto" and not self.settings.strict):
            return "off"
        problem = self.probe.self_test()
        if problem:
            return f"unavailable: {problem}"
        self.probe.start()
        self.tracker.probe_on = True
        return "on"

    def _start_patch(self, root: str) -> Callable[[], None] | None:
        """Patch mode: PEP 446 creators and a creation record for every descriptor."""
        if not self.settings.patch or sys.platform == "win32":
            return None  # the stdlib creators patched are the POSIX ones
        records = creators.CreationRecords(root=root)

        def origins(fd: int, dev: int, ino: int) -> tuple[str | None, str | None]:
            created, since = records.lookup(fd, dev, ino)
            return (created or "created outside Python (C extension or ctypes)", since)

        self.tracker.origins = origins
        return creators.install(records, lambda: self.nodeid)

    def close(self) -> None:
        """Undo everything: patches, probe environment, wrappers, record directory."""
        if self.unpatch is not None:
            self.unpatch()
        self.probe.stop()
        self.tracker.uninstall()
        shutil.rmtree(self.record_dir, ignore_errors=True)

    # -- test phases ------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        spawns = self.tracker.drain()
        if spawns:
            self._judge_outside(spawns)
        self.nodeid = item.nodeid
        self.before = self.last_table or fdtable.snapshot()
        self.last_table = None
        self.allowances, problem = self._marker_allowances(item)
        yield from self._phase(item, "setup")
        if problem:
            # Raised after setup so that pytest's own setup and teardown stay paired.
            pytest.fail(problem, pytrace=False)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._phase(item, "call"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._phase(item, "teardown"))

    def _phase(self, item: pytest.Item, when: str) -> Generator[None, None, None]:
        try:
            result = yield
        except BaseException:
            # The test's own failure wins; the violation is still recorded and shown.
            self._judge(item, when, own_failure=True)
            raise
        self._judge(item, when, own_failure=False)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Before pytest-xdist's worker sends the report: findings travel on it
        # to the controller, whose own call of this hook collects them.
        found = self.unsent.pop((report.nodeid, report.when), None) if self.unsent else None
        if found:
            report.noinherit = found  # type: ignore[attr-defined]
        else:
            found = getattr(report, "noinherit", None)
        if isinstance(found, list):
            self.summary.add(f for f in found if isinstance(f, dict) and "type" in f)

    # -- fixtures of broader scope ----------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        if fixturedef.scope == "function":
            return (yield)
        before = fdtable.snapshot()
        try:
            return (yield)
        finally:
            owned = {_key(e) for _, entries in self.owned.values() for e in entries}
            added = [e for e in fdtable.snapshot().added_since(before) if _key(e) not in owned]
            if added:
                name = f"the {fixturedef.scope}-scoped fixture {fixturedef.argname!r}"
                self.owned[id(fixturedef)] = (name, added)

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        owned = self.owned.pop(id(fixturedef), None)
        if owned is None:
            return
        name, entries = owned
        still = fdtable.snapshot().keys()
        self.fixture_leftovers += [(name, e) for e in entries if _key(e) in still]

    # -- the verdict ------------------------------------------------------------

    def _marker_allowances(self, item: pytest.Item) -> tuple[list[Allowance], str]:
        """The test's marker allowances, and what is wrong with them if anything."""
        result = []
        for mark in item.iter_markers(allow_mod.MARKER):
            try:
                result.append(allow_mod.build(f"marker on {item.nodeid}", mark.args, mark.kwargs))
            except ValueError as exc:
                return (
                    result,
                    f"noinherit: bad @pytest.mark.{allow_mod.MARKER} on {item.nodeid}: {exc}",
                )
        return result, ""

    def allow_at_runtime(self, allowance: Allowance) -> None:
        """What the ``noinherit`` fixture's allow() calls, for the test in progress."""
        self.allowances.append(allowance)

    def _child_findings(
        self, item: pytest.Item | None, phase: str, spawns: Iterable[Spawn]
    ) -> list[dict[str, Any]]:
        nodeid = item.nodeid if item is not None else "(outside any test)"
        granted = list(self.settings.allowances)
        if item is not None:
            granted = self.allowances + granted
        result = []
        allowed: set[Key] = set()  # one child per allowed descriptor and phase
        for spawn in spawns:
            for desc in spawn.received:
                key = (desc.fd, desc.dev, desc.ino)
                if key in self.reported or key in allowed:
                    continue
                f = findings.child_finding(findings.VIOLATION, nodeid, phase, spawn, desc)
                verdict = self.config.hook.pytest_noinherit_allow(item=item, descriptor=dict(f))
                by = (
                    next((a for a in granted if a.matches(desc)), None) if verdict is None else None
                )
                if verdict or by is not None:
                    allowed.add(key)
                    f["type"] = findings.ALLOWED
                    f["allowed_by"] = str(by) if by is not None else "pytest_noinherit_allow hook"
                else:
                    self.reported.add(key)
                result.append(f)
        return result

    def _judge_outside(self, spawns: list[Spawn]) -> None:
        found = self._child_findings(None, "outside", spawns)
        for f in found:
            self.config.hook.pytest_noinherit_finding(item=None, finding=f)
        self.summary.add(found)

    def _judge(self, item: pytest.Item, when: str, own_failure: bool) -> None:
        spawns = self.tracker.drain()
        found = self._child_findings(item, when, spawns) if spawns else []
        leaks: list[dict[str, Any]] = []
        if when == "teardown":
            leftovers, leaks = self._table_findings(item)
            found += leftovers
        if not (found or leaks):
            return
        for f in found + leaks:
            self.config.hook.pytest_noinherit_finding(item=item, finding=f)
        self.unsent[(item.nodeid, when)] = found + leaks
        escalated = []  # leak warnings that -W error:: turned into exceptions
        for f in leaks:
            try:
                warnings.warn_explicit(
                    DescriptorLeakWarning(findings.leak_message(f)),
                    DescriptorLeakWarning,
                    filename=str(item.path),
                    lineno=(item.location[1] or 0) + 1,
                )
            except DescriptorLeakWarning as exc:
                escalated.append(str(exc))
        failing = [f for f in found if f["type"] in (findings.VIOLATION, findings.LEFTOVER)]
        if failing:
            item.add_report_section(when, "noinherit", findings.details_section(failing))
        if own_failure or not (failing or escalated):
            return
        message = findings.failure_message(failing) if failing else ""
        lines = [message] if message else []
        lines += [f"DescriptorLeakWarning: {text}" for text in escalated]
        pytest.fail("\n".join(lines), pytrace=False)

    def _table_findings(
        self, item: pytest.Item
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Strict leftovers and leaks of a test whose teardown just ended."""
        before, self.before = self.before, None
        fixture_left, self.fixture_leftovers = self.fixture_leftovers, []
        # Between two phases of one test, an in-place swap of a descriptor
        # (same number, same flag) is the one change this cheaper read misses.
        after = self.last_table = (
            fdtable.snapshot_since(before) if before is not None else fdtable.snapshot()
        )
        if before is None or (after == before and not fixture_left):
            return [], []
        owned = {_key(e) for _, entries in self.owned.values() for e in entries}
        lifetime = _stdlib_helper_fds()
        suspects = [
            ("the test", e)
            for e in after.added_since(before)
            if _key(e) not in owned and e.fd not in lifetime
        ]
        suspects += [("the test", e) for e in after.made_inheritable_since(before)]
        suspects += fixture_left
        if not suspects:
            return [], []
        existed = before.keys()
        leftovers: list[dict[str, Any]] = []
        leaks: list[dict[str, Any]] = []
        for owner, entry in suspects:
            key = _key(entry)
            if key in self.reported:
                continue
            if entry.inheritable and self.settings.strict:
                found = leftovers
                type_ = findings.LEFTOVER
            elif key not in existed or owner != "the test":
                found, type_ = leaks, findings.LEAK
            else:
                continue  # made inheritable but not new: only strict mode minds
            self.reported.add(key)
            found.append(
                findings.table_finding(
                    type_, item.nodeid, "teardown", self.tracker.describe(entry), owner
                )
            )
        return leftovers, leaks

    # -- the end of the session -------------------------------------------------

    def finish(self) -> None:
        """Judge what arrived after the last test (late records, session teardown)."""
        with contextlib.suppress(Exception):
            self._judge_outside(self.tracker.drain() + self.tracker.read_records())
