"""The per-session runtime: snapshots around each test, the verdict, the findings.

One :class:`Monitor` is registered as the plugin ``noinherit-monitor`` for
the session (pytest's logging plugin is the model); plugin.py's module-level
hooks only create it.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_noinherit import allowances as allow_mod
from pytest_noinherit import fdtable, findings, recorddir, verdict
from pytest_noinherit.allowances import MARKER, Allowance
from pytest_noinherit.fdtable import FdEntry, FdTable
from pytest_noinherit.receptions import traceback_at
from pytest_noinherit.settings import Settings
from pytest_noinherit.spawns import Spawn, SpawnTracker
from pytest_noinherit.warning_types import DescriptorLeakWarning

if TYPE_CHECKING:  # imported where used: most runs need neither the probe nor these
    from pytest_noinherit import known as known_mod
    from pytest_noinherit.kernel import KernelSession
    from pytest_noinherit.probe import ProbeEnvironment

Key = tuple[int, int, int]
_IMPORT_TIME = "import or collection time, before any test"


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


def _marker_source(item: pytest.Item, node: Any) -> str:
    """Where a marker was put: on the test, its class, or its module's pytestmark."""
    if node is item:
        return f"marker on {item.nodeid}"
    if isinstance(node, pytest.Class):
        return f"class marker on {node.nodeid}"
    if isinstance(node, pytest.Module):
        return f"pytestmark of {node.nodeid}"
    return f"marker on {node.nodeid}"


def _fixture_name(fixturedef: pytest.FixtureDef[Any]) -> str:
    return f"the {fixturedef.scope}-scoped fixture {fixturedef.argname!r}"


def _xdist_controller(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist controller, whose workers run the tests."""
    if hasattr(config, "workerinput"):
        return False
    try:
        dist = config.getoption("dist")
    except ValueError:  # xdist is not installed or not loaded
        return False
    return bool(dist and dist != "no")


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
        try:
            self.records = recorddir.RecordDirectory.create()
        except OSError as exc:
            raise pytest.UsageError(f"noinherit: cannot make its record directory: {exc}") from None
        self.tracker = _tracker_class()({_key(e) for e in self.baseline}, self.records)
        self.tracker.site_root = str(config.rootpath)
        self.probe: ProbeEnvironment | None = None  # see _probe()
        self.kernel: KernelSession | None = None  # see _kernel()
        self.probe_status = self._start_probe()
        self.nodeid: str | None = None  # the test in progress, for creation records
        self.unpatch = self._start_patch(str(config.rootpath))
        self.patch_status = "on" if self.unpatch else "off"
        if settings.patch and not self.unpatch:
            self.patch_status = "unavailable: the patched creators are the POSIX ones"
        self.summary = findings.Summary()
        self.known = self._load_known()
        self.ran: set[str] = set()  # node ids of the tests whose reports arrived
        # Which test (or import time) first held each descriptor inheritable:
        # the summary says where a leak came from, the verdict never uses it.
        self.first_held: dict[Key, str] = {}
        self.tests_started = False
        # Broader-scoped fixtures own what their setup opened until their teardown.
        self.owned: dict[int, tuple[str, list[FdEntry]]] = {}
        self.fixture_leftovers: list[tuple[str, FdEntry]] = []
        # The table after one test's teardown is the next test's starting
        # point: one snapshot per test instead of two.
        self.last_table: FdTable | None = None
        # The test in progress; nothing is kept on items, which live all session.
        self.before: FdTable | None = None
        self.allowances: list[Allowance] = []
        # Fixtures being set up (innermost last) and what each allowed.
        self.fixture_stack: list[pytest.FixtureDef[Any]] = []
        self.fixture_allowances: dict[int, list[Allowance]] = {}
        # Failing findings of a phase whose own outcome was an exception
        # (a failure, a skip, an xfail): raised again at the test's teardown.
        self.carried: list[dict[str, Any]] = []
        # Findings waiting for their phase's report: (nodeid, when) -> findings.
        self.unsent: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.tracker.install()

    def _load_known(self) -> known_mod.KnownFindings | None:
        path = self.settings.known_path
        if not path:
            return None
        from pytest_noinherit import known as known_mod

        try:
            return known_mod.KnownFindings.load(path)
        except known_mod.KnownFileError as exc:
            raise pytest.UsageError(f"--noinherit-known: {exc}") from None

    def _start_probe(self) -> str:
        """Switch the exec probe or the kernel observer on as asked; the header's words.

        ``auto`` (in strict mode) takes the kernel observer where it works
        without side effects, else the probe; ``kernel`` may set
        no_new_privs for it.  Where the observer cannot be used, the probe
        is, and the header says why.
        """
        mode = self.settings.probe
        if mode == "off" or (mode == "auto" and not self.settings.strict):
            # An outer session's probe (read here: a run without it does not import probe.py).
            if os.environ.get(recorddir.PROBE_DIR_ENV) is not None:
                self._probe().hide()
            self._hide_kernel()
            return "off"
        why_not_kernel = ""
        if mode == "kernel" or (mode == "auto" and sys.platform.startswith("linux")):
            if _xdist_controller(self.config):
                # The workers run the tests and their children: each installs
                # its own filter (one installed here would be theirs too, and
                # only one listener may exist per process tree).
                self._probe().hide()
                return f"{mode} (in each xdist worker)"
            kernel = self._kernel()
            why_not_kernel = kernel.start(explicit=mode == "kernel")
            if not why_not_kernel:
                self._probe().hide()  # an outer session's probe must not record our children
                self.tracker.probe_on = True
                nnp = ", no_new_privs set: setuid programs gain no privileges"
                return f"kernel (seccomp exec observer{nnp if kernel.no_new_privs else ''})"
        self._hide_kernel()
        fallback = f" (kernel observer unavailable: {why_not_kernel})" if why_not_kernel else ""
        probe = self._probe()
        problem = probe.self_test()
        if problem:
            probe.hide()
            return f"unavailable: {problem}{fallback}"
        probe.start()
        self.tracker.probe_on = True
        return f"on{fallback}"

    def _probe(self) -> ProbeEnvironment:
        """This session's switch of the exec probe in os.environ."""
        if self.probe is None:
            from pytest_noinherit.probe import ProbeEnvironment

            # A child that holds only 0-2 received nothing: it writes no record.
            self.probe = ProbeEnvironment(self.records.path, every_exec=False)
        return self.probe

    def _kernel(self) -> KernelSession:
        """This session's part in the process's kernel exec observer."""
        if self.kernel is None:
            from pytest_noinherit.kernel import KernelSession  # only where it may be used

            self.kernel = KernelSession(self.records, self.tracker.problems)
        return self.kernel

    def _hide_kernel(self) -> None:
        """Keep an outer session's kernel observer from recording this session's children."""
        # Only an observer of this process can record them, and one exists
        # only once the module was imported.
        if self.kernel is not None or "pytest_noinherit.kernel" in sys.modules:
            self._kernel().hide()

    def _start_patch(self, root: str) -> Callable[[], None] | None:
        """Patch mode: PEP 446 creators and a creation record for every descriptor."""
        if not self.settings.patch or sys.platform == "win32":
            return None  # the stdlib creators patched are the POSIX ones
        from pytest_noinherit import creators  # large, and only for patch mode

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
        if self.probe is not None:
            self.probe.stop()
        if self.kernel is not None:
            self.kernel.stop()
        self.tracker.uninstall()
        self.records.remove()

    # -- test phases ------------------------------------------------------------

    # One wrapper per phase, each judging after everything else in its phase
    # ran, with the phase's own exception in hand.  Plain hooks cost half a
    # wrapper each (pluggy), but "after the phase, whatever its outcome" takes
    # two of them: a trylast impl runs only when nothing before it raised, and
    # pytest_runtest_makereport is no substitute, since subtests (pytest 9)
    # call it in the middle of a call phase.  So wrappers stay, with the phase
    # inline (no nested generator) and nothing per test that xdist alone needs
    # (see pytest_report_to_serializable).

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True  # a failure raised here is about the test, not the plugin
        spawns = self.tracker.drain()
        if spawns:
            self._judge_outside(spawns)
        self.nodeid = item.nodeid
        if self.known is not None:  # what ran matters only to the known findings
            self.ran.add(item.nodeid)
        if self.unsent:  # the previous test's reports were sent (or never will be)
            self.unsent.clear()
        if self.last_table is None:
            self.before = fdtable.snapshot()
            if not self.tests_started:
                self._held_since_import(self.before)
                self.tests_started = True
        else:
            self.before, self.last_table = self.last_table, None
        self.carried = []
        self.allowances, problem = self._marker_allowances(item)
        try:
            yield
        except BaseException:
            # The test's own outcome stands; its violations fail its teardown.
            self._judge(item, "setup", own_outcome=True)
            raise
        if not self.tracker.quiet():
            self._judge(item, "setup", own_outcome=False)
        if problem:
            # Raised after setup so that pytest's own setup and teardown stay paired.
            pytest.fail(problem, pytrace=False)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        try:
            result = yield
        except BaseException:
            self._judge(item, "call", own_outcome=True)
            raise
        if not self.tracker.quiet():
            self._judge(item, "call", own_outcome=False)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        try:
            result = yield
        except BaseException:
            self._judge(item, "teardown", own_outcome=True)
            raise
        self._judge(item, "teardown", own_outcome=False)
        return result

    # -- findings across processes (pytest-xdist) -------------------------------
    #
    # Findings go into the summary when they are judged.  A worker's travel on
    # the phase's TestReport to the controller: attached when the report is
    # serialised (the worker sends every report that way), read when the
    # controller deserialises it.  A run without xdist calls neither hook, so
    # it pays nothing per report.

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_to_serializable(
        self, report: pytest.TestReport | pytest.CollectReport
    ) -> None:
        if not self.unsent or not isinstance(report, pytest.TestReport):
            return
        found = self.unsent.pop((report.nodeid, report.when), None)
        if found:
            report.noinherit = found  # type: ignore[attr-defined]

    @pytest.hookimpl(wrapper=True)
    def pytest_report_from_serializable(self) -> Generator[None, object, object]:
        report = yield
        if isinstance(report, pytest.TestReport):
            found = getattr(report, "noinherit", None)
            if isinstance(found, list):
                self.summary.add(f for f in found if isinstance(f, dict) and "type" in f)
            self.ran.add(report.nodeid)
        return report

    # -- fixtures of broader scope ----------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        # noinherit.allow() during this setup belongs to this fixture.
        self.fixture_stack.append(fixturedef)
        if fixturedef.scope == "function":
            try:
                return (yield)
            finally:
                self.fixture_stack.pop()
        name = _fixture_name(fixturedef)
        before = fdtable.snapshot()
        try:
            return (yield)
        finally:
            self.fixture_stack.pop()
            owned = {_key(e) for _, entries in self.owned.values() for e in entries}
            added = [e for e in fdtable.snapshot().added_since(before) if _key(e) not in owned]
            if added:
                self.owned[id(fixturedef)] = (name, added)
                for e in added:
                    if e.inheritable:
                        self.first_held.setdefault(_key(e), name)

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        self.fixture_allowances.pop(id(fixturedef), None)
        owned = self.owned.pop(id(fixturedef), None)
        if owned is None:
            return
        name, entries = owned
        still = fdtable.snapshot().keys()
        self.fixture_leftovers += [(name, e) for e in entries if _key(e) in still]

    # -- the verdict ------------------------------------------------------------

    def _marker_allowances(self, item: pytest.Item) -> tuple[list[Allowance], str]:
        """The test's marker allowances, and what is wrong with them if anything."""
        # Item.iter_markers_with_node's walk (closest node first), without its
        # generators: every test pays for it, and almost none has the marker.
        marked: list[tuple[Any, Any]] = []
        node: Any = item
        while node is not None:
            for m in node.own_markers:  # mostly empty: no comprehension frame per node
                if m.name == MARKER:
                    marked.append((node, m))
            node = node.parent
        if not marked:
            return [], ""
        result = []
        for node, mark in marked:
            try:
                result.append(allow_mod.build(_marker_source(item, node), mark.args, mark.kwargs))
            except ValueError as exc:
                return (
                    result,
                    f"noinherit: bad @pytest.mark.{allow_mod.MARKER} on {item.nodeid}: {exc}",
                )
        return result, ""

    def allow_at_runtime(self, build: Callable[[str], list[Allowance]]) -> None:
        """What ``noinherit.allow()`` calls: ``build(source)`` gives the allowances.

        Called while a fixture is being set up, they belong to that fixture
        and hold for every child started until its teardown, whatever its
        scope; otherwise they hold for the rest of the test in progress.
        """
        if self.fixture_stack:
            fixturedef = self.fixture_stack[-1]
            key, name = id(fixturedef), _fixture_name(fixturedef)
            where = f"{name}" + (f" (set up in {self.nodeid})" if self.nodeid else "")
            self.fixture_allowances.setdefault(key, []).extend(
                build(f"noinherit.allow() in {where}")
            )
        else:
            self.allowances += build(f"noinherit.allow() in {self.nodeid or 'the session'}")

    def _granted(self) -> list[Allowance]:
        """Every allowance in force: the test's, live fixtures', the project's."""
        live = [a for allowed in self.fixture_allowances.values() for a in allowed]
        return [*self.allowances, *live, *self.settings.allowances]

    def _ask(self, item: pytest.Item | None) -> Callable[[dict[str, Any]], bool | None]:
        def ask(descriptor: dict[str, Any]) -> bool | None:
            answer = self.config.hook.pytest_noinherit_allow(item=item, descriptor=descriptor)
            return None if answer is None else bool(answer)

        return ask

    def _came_from(self, key: Key) -> str:
        return self.first_held.get(key) or str(self.nodeid)

    def _outside_origin(self) -> str:
        return "outside any test" if self.tests_started else _IMPORT_TIME

    def _held_since_import(self, table: FdTable) -> None:
        """What is inheritable before the first test came from import or collection."""
        baseline = {_key(e) for e in self.baseline}
        for e in table.inheritable():
            if e.fd >= 3 and _key(e) not in baseline:
                self.first_held.setdefault(_key(e), _IMPORT_TIME)

    def _judge_outside(self, spawns: list[Spawn]) -> None:
        found = verdict.judge_children(
            "(outside any test)",
            "outside",
            spawns,
            self.settings.allowances,
            self._ask(None),
            lambda key: self.first_held.get(key) or self._outside_origin(),
        )
        for f in found:
            self.config.hook.pytest_noinherit_finding(item=None, finding=f)
        self.summary.add(found)
        self.summary.add(
            findings.reception_record("(outside any test)", "outside", s) for s in spawns
        )

    def _judge(self, item: pytest.Item, when: str, own_outcome: bool) -> None:
        __tracebackhide__ = True
        spawns = self.tracker.drain()
        frames = self.tracker.site_frames
        if frames:  # kept until this phase is judged, no longer
            self.tracker.site_frames = {}
        found = []
        if spawns:
            found = verdict.judge_children(
                item.nodeid, when, spawns, self._granted(), self._ask(item), self._came_from
            )
        if when == "teardown":
            found += self._table_findings(item)
        if not (found or spawns) and (when != "teardown" or not self.carried):
            return  # nothing happened in this phase: every test's common case
        if found:
            for f in found:
                self.config.hook.pytest_noinherit_finding(item=item, finding=f)
        if found or spawns:
            # The receptions travel with the findings (xdist), for the JSON report.
            records = [findings.reception_record(item.nodeid, when, s) for s in spawns]
            self.summary.add(found + records)
            self.unsent[(item.nodeid, when)] = found + records
        failing = verdict.failing(found)
        if self.known is not None:
            for f in failing:
                if self.known.knows(f):
                    f["known"] = True
            failing = [f for f in failing if not f.get("known")]
        if failing:
            item.add_report_section(when, "noinherit", findings.details_section(failing))
        escalated = self._warn_leaks(item, found) if self.settings.leaks else []
        if when != "teardown":
            if own_outcome:
                self.carried += [{**f, "carried": True} for f in failing]
                return
        elif self.carried:
            failing = self.carried + failing
            self.carried = []
        if own_outcome or not (failing or escalated) or self.settings.report_only:
            return
        lines = [findings.failure_message(failing)] if failing else []
        lines += [f"DescriptorLeakWarning: {text}" for text in escalated]
        failure = pytest.fail.Exception("\n".join(lines), pytrace=False)
        at = next((frames[f["site"]] for f in failing if f.get("site") in frames), None)
        if at is None:
            raise failure
        # Raised in the test's own frame, at the line that started the child.
        raise failure.with_traceback(traceback_at(at))

    def _warn_leaks(self, item: pytest.Item, found: list[dict[str, Any]]) -> list[str]:
        """Warn about each leak; the texts of those that -W error turned into exceptions."""
        escalated = []
        for f in found:
            if f["type"] != findings.LEAK:
                continue
            try:
                warnings.warn_explicit(
                    DescriptorLeakWarning(findings.leak_message(f)),
                    DescriptorLeakWarning,
                    filename=str(item.path),
                    lineno=(item.location[1] or 0) + 1,
                )
            except DescriptorLeakWarning as exc:
                escalated.append(str(exc))
        return escalated

    def _table_findings(self, item: pytest.Item) -> list[dict[str, Any]]:
        """Leftovers, latent leftovers and leaks of a test whose teardown just ended."""
        before, self.before = self.before, None
        fixture_left, self.fixture_leftovers = self.fixture_leftovers, []
        # The cheaper read misses a descriptor swapped in place (same number)
        # during the test; flags are read only where a flip can fail or warn
        # (strict: leftovers; leaks: a swap to another flag), see docs/limits.md.
        flags = self.settings.strict or self.settings.leaks
        after = self.last_table = (
            fdtable.snapshot_since(before, flags) if before is not None else fdtable.snapshot()
        )
        if before is None or (after == before and not fixture_left):
            return []
        owned = {_key(e) for _, entries in self.owned.values() for e in entries}
        lifetime = _stdlib_helper_fds()
        # A fixture torn down in this very teardown reports its own, once.
        owned |= {_key(e) for _, e in fixture_left}
        suspects = [
            ("the test", True, e)
            for e in after.added_since(before)
            if _key(e) not in owned and e.fd not in lifetime
        ]
        suspects += [("the test", False, e) for e in after.made_inheritable_since(before)]
        suspects += [(owner, True, e) for owner, e in fixture_left]
        for owner, _, e in suspects:
            if e.inheritable:
                self.first_held.setdefault(_key(e), item.nodeid if owner == "the test" else owner)
        wanted = [
            (owner, new, self.tracker.describe(e), e.inheritable)
            for owner, new, e in suspects
            if e.inheritable or self.settings.leaks
        ]
        return verdict.judge_table(item.nodeid, wanted, self.settings.strict, self.settings.leaks)

    # -- the end of the session -------------------------------------------------

    def fixed(self) -> list[known_mod.Entry]:
        """Known findings of tests that ran and no longer produced them."""
        if self.known is None:
            return []
        return self.known.fixed(verdict.failing(self.summary.findings), self.ran)

    def update_known(self) -> int:
        """Rewrite the known-findings file from this run; how many entries it has."""
        assert self.known is not None
        self.known.write(verdict.failing(self.summary.findings), self.ran)
        return len(self.known.entries)

    def finish(self) -> None:
        """Judge what arrived after the last test (late records, session teardown)."""
        with contextlib.suppress(Exception):
            self._judge_outside(self.tracker.drain() + self.tracker.read_records())
        with contextlib.suppress(Exception):
            self.tracker.sweep()
