"""pytest-noinherit's hooks: each a few lines that hand over to the Monitor.

PYTEST_DONT_REWRITE: pytest rewrites the asserts of every module of a plugin
loaded by entry point; this package's modules hold no test asserts, and
rewriting them costs start-up time in every run (see benchmarks/).
"""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import TYPE_CHECKING, Any

import pytest

from pytest_noinherit import allowances, fdtable, findings, newhooks, report, settings
from pytest_noinherit.fdtable import FdTable
from pytest_noinherit.warning_types import DescriptorLeakWarning, ignored_by_filters

if TYPE_CHECKING:  # imported when configured: it needs POSIX, this module must not
    from pytest_noinherit.monitor import Monitor

MONITOR = pytest.StashKey["Monitor"]()
EARLY_TABLE = pytest.StashKey[FdTable]()


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(newhooks)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # The session baseline: what pytest inherited, taken before any conftest runs.
    with contextlib.suppress(fdtable.BackendError):  # pytest_configure reports it
        early_config.stash[EARLY_TABLE] = fdtable.snapshot()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", allowances.MARKER_HELP)
    from pytest_noinherit.monitor import Monitor

    resolved = settings.resolve(config)
    try:
        baseline = config.stash.get(EARLY_TABLE, None) or fdtable.snapshot()
    except fdtable.BackendError as exc:
        raise pytest.UsageError(f"noinherit: {exc}") from None
    monitor = Monitor(config, resolved, baseline)
    config.stash[MONITOR] = monitor
    config.add_cleanup(monitor.close)
    config.pluginmanager.register(monitor, "noinherit-monitor")


def pytest_report_header(config: pytest.Config) -> str | None:
    monitor = config.stash.get(MONITOR, None)
    if monitor is None:
        return None
    s = monitor.settings
    base = ", ".join(findings.number(e.fd) for e in monitor.baseline) or "none"
    return (
        f"noinherit: backend {fdtable.backend()} ({fdtable.backend_reason()}),"
        f" strict {'on' if s.strict else 'off'}, probe {monitor.probe_status},"
        f" patch {monitor.patch_status},"
        f" baseline {fdtable.UNIT}s: {base}"
        + (", report-only: no outcome is changed" if s.report_only else "")
        + (f", known findings: {s.known_path}" if s.known_path else "")
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    monitor = session.config.stash.get(MONITOR, None)
    if monitor is None:
        return
    monitor.finish()
    if hasattr(session.config, "workerinput"):  # under xdist, the controller writes
        return
    if monitor.settings.known_update:
        _update_known(session, monitor)
    path = monitor.settings.report_path
    if not path:
        return
    try:
        write_json_report(path, monitor)
    except OSError as exc:
        # The run's verdicts and summary stay; but a CI that asked for a report
        # and got none must notice, so a green run exits 1, as pytest-cov's
        # --cov-fail-under does.  pytest returns session.exitstatus after this hook.
        line = f"noinherit: the report was not written: {exc}"
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line, red=True, bold=True)
        else:
            print(line, file=sys.stderr)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _update_known(session: pytest.Session, monitor: Monitor) -> None:
    """--noinherit-known-update: rewrite the known-findings file, and say so."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    try:
        count = monitor.update_known()
        line, red = (
            f"noinherit: {count} known findings written to {monitor.settings.known_path}",
            False,
        )
    except OSError as exc:
        line = f"noinherit: the known-findings file was not written: {exc}"
        red = True
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if reporter is not None:
        reporter.write_line(line, red=red, bold=red)
    else:
        print(line, file=sys.stderr)


def write_json_report(path: str, monitor: Monitor) -> None:
    """The JSON report (``report-schema.json`` in the package), written atomically."""
    import platform

    s = monitor.settings
    everything = monitor.summary.findings
    doc = {
        "schema_version": report.SCHEMA_VERSION,
        "plugin_version": _plugin_version(),
        "python_version": platform.python_version(),
        "platform": sys.platform,
        "backend": fdtable.backend(),
        "unit": fdtable.UNIT,
        "settings": {
            "strict": s.strict,
            "probe": s.probe,
            "probe_status": monitor.probe_status,
            "patch": s.patch,
            "patch_status": monitor.patch_status,
            "leaks": s.leaks,
            "report_only": s.report_only,
            "known": s.known_path,
            "allowances": [str(a) for a in s.allowances],
        },
        "strict": s.strict,  # kept from the first version of the report
        "baseline": [
            {"fd": e.fd, "kind": e.kind, "dev": e.dev, "ino": e.ino} for e in monitor.baseline
        ],
        "findings": [f for f in everything if f["type"] != findings.RECEPTION],
        "receptions": [f for f in everything if f["type"] == findings.RECEPTION],
        "fixed": [{"test": t, "type": ty, "descriptor": d} for t, ty, d in monitor.fixed()],
        "problems": list(dict.fromkeys(monitor.tracker.problems)),
    }
    report.write(path, doc)


def _plugin_version() -> str:
    import importlib.metadata  # slow to import: only for the report

    try:
        return importlib.metadata.version("pytest-noinherit")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    monitor = terminalreporter.config.stash.get(MONITOR, None)
    if monitor is not None and not _only_listing(terminalreporter.config):
        findings.write_summary(
            terminalreporter,
            monitor.summary,
            monitor.baseline,
            monitor.tracker.problems,
            fixed=monitor.fixed(),
            known_path=monitor.settings.known_path,
            notes_ignored=ignored_by_filters(terminalreporter.config, DescriptorLeakWarning),
        )


def _only_listing(config: pytest.Config) -> bool:
    """--collect-only, --fixtures, --markers and the like run no test: nothing to say."""
    option = config.option
    return any(
        getattr(option, name, False)
        for name in ("collectonly", "showfixtures", "show_fixtures_per_test", "markers", "help")
    )


class NoinheritControls:
    """What the ``noinherit`` fixture gives tests and fixtures of every scope."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def allow(self, *targets: int | Any, kind: str | None = None, path: str | None = None) -> None:
        """Allow children to receive these descriptors.

        Called from a test, it holds for the rest of that test.  Called while
        a fixture of any scope is being set up, it holds for every child
        started until that fixture's teardown (a server fixture declaring
        what it hands to its workers).  Each target is a descriptor number
        or anything with ``fileno()`` (a file, a socket); such an object
        allows that very open file only.  On Windows numbers are handle
        values, as the reports show them, and an object stands for the
        handle behind it.
        """
        fds, identities = [], {}
        for target in targets:
            if isinstance(target, int):  # a bool too: build() refuses it by name
                fds.append(target)
                continue
            try:
                fd = _table_number(target)
            except TypeError:
                raise  # already says what allow() takes
            except Exception as exc:  # a closed file's fileno() raises ValueError
                raise TypeError(
                    f"noinherit.allow(): {target!r}.fileno() failed: {type(exc).__name__}: {exc}"
                ) from None
            if isinstance(fd, bool):
                raise TypeError(f"noinherit.allow(): {target!r}.fileno() returned {fd!r}")
            if fd < 0:  # a closed socket's fileno() is -1
                raise TypeError(f"noinherit.allow(): {target!r} has no descriptor (closed?)")
            fds.append(fd)
            entry = fdtable.snapshot().get(fd)
            if entry is not None:
                identities[fd] = entry.identity
        kwargs = {k: v for k, v in (("kind", kind), ("path", path)) if v is not None}
        # One allowance per target: each object allows its own open file.
        groups = [[fd] for fd in fds] if len(fds) > 1 else [fds]
        try:
            for group in groups:  # validated before anything is granted
                allowances.build("", group, kwargs, identities)
        except ValueError as exc:
            raise TypeError(f"noinherit.allow(): {exc}") from None
        self._monitor.allow_at_runtime(
            lambda source: [allowances.build(source, g, kwargs, identities) for g in groups]
        )


def _fileno(obj: Any) -> int:
    try:
        fd = obj.fileno()
    except AttributeError:
        raise TypeError(
            f"noinherit.allow() takes descriptor numbers or objects with fileno(), not {obj!r}"
        ) from None
    if not isinstance(fd, int):
        raise TypeError(f"{obj!r}.fileno() returned {fd!r}")
    return fd


def _table_number(obj: Any) -> int:
    """The number a snapshot lists obj under: its descriptor, or on Windows its handle."""
    fd = _fileno(obj)
    if fdtable.UNIT == "fd" or isinstance(obj, socket.socket):
        return fd  # a Windows socket's fileno() already is its handle
    import msvcrt

    return int(getattr(msvcrt, "get_osfhandle")(fd))  # noqa: B009  # typeshed: win32 only


@pytest.fixture(scope="session")
def noinherit(request: pytest.FixtureRequest) -> NoinheritControls:
    """Allow descriptors to reach children at run time: ``noinherit.allow(fd)``.

    Session-scoped, so fixtures of every scope can use it; what an allowance
    covers depends on where allow() is called (see NoinheritControls.allow).
    """
    return NoinheritControls(request.config.stash[MONITOR])
