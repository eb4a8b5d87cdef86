"""Command-line options and ini keys, resolved once into a frozen Settings.

Precedence: ini < command line; markers refine per test (see allowances).

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import os
from typing import NamedTuple

import pytest

from pytest_noinherit import report
from pytest_noinherit.allowances import Allowance, parse_ini_allowance

STRICT_HELP = "also fail tests that leave inheritable descriptors open after they end (the CI flag)"
REPORT_HELP = "write every finding as JSON to this path"
ALLOW_HELP = "project-wide allowances, one per line: a descriptor number, kind=KIND or path=GLOB"
PROBE_HELP = (
    "exec probe: on (LD_PRELOAD), kernel (seccomp exec observer, Linux), off, or auto"
    " (auto = in strict mode only: kernel where it needs no no_new_privs, else on)"
)
PATCH_HELP = "patch the stdlib descriptor creators to PEP 446 semantics for the session"
LEAKS_HELP = (
    "also warn (DescriptorLeakWarning) about every descriptor a test or a fixture leaves open,"
    " inheritable or not"
)
REPORT_ONLY_HELP = (
    "judge and report every finding as usual, but change no test outcome and no exit status"
    " (for adopting the plugin)"
)
KNOWN_HELP = (
    "a known-findings file: findings listed there are reported as known and do not fail,"
    " listed ones no longer seen are reported as fixed"
)
KNOWN_UPDATE_HELP = "rewrite the known-findings file with this run's findings"
PROBE_MODES = ("on", "kernel", "off", "auto")


class Settings(NamedTuple):
    """Everything the plugin was told, checked once at configure time.

    Frozen; a NamedTuple rather than a frozen dataclass, which costs five
    times as much to define, in every run's start-up.
    """

    strict: bool
    report_path: str | None
    allowances: tuple[Allowance, ...]
    probe: str
    patch: bool
    leaks: bool = False
    report_only: bool = False
    known_path: str | None = None
    known_update: bool = False


def add_options(parser: pytest.Parser) -> None:
    """Register the options group and its ini twins."""
    group = parser.getgroup("noinherit", "descriptor inheritance (pytest-noinherit)")
    group.addoption("--noinherit-strict", action="store_true", default=None, help=STRICT_HELP)
    group.addoption("--noinherit-report", metavar="PATH", default=None, help=REPORT_HELP)
    group.addoption(
        "--noinherit-allow",
        metavar="SELECTOR",
        action="append",
        default=[],
        help="add a project-wide allowance (like a noinherit_allow line); repeatable",
    )
    group.addoption("--noinherit-probe", metavar="MODE", default=None, help=PROBE_HELP)
    group.addoption("--noinherit-patch", action="store_true", default=None, help=PATCH_HELP)
    group.addoption("--noinherit-leaks", action="store_true", default=None, help=LEAKS_HELP)
    group.addoption(
        "--noinherit-report-only", action="store_true", default=None, help=REPORT_ONLY_HELP
    )
    group.addoption("--noinherit-known", metavar="PATH", default=None, help=KNOWN_HELP)
    group.addoption(
        "--noinherit-known-update", action="store_true", default=False, help=KNOWN_UPDATE_HELP
    )
    parser.addini("noinherit_strict", STRICT_HELP, type="bool", default=False)
    parser.addini("noinherit_allow", ALLOW_HELP, type="linelist", default=[])
    parser.addini("noinherit_report", REPORT_HELP, default="")
    parser.addini("noinherit_probe", PROBE_HELP, default="auto")
    parser.addini("noinherit_patch", PATCH_HELP, type="bool", default=False)
    parser.addini("noinherit_leaks", LEAKS_HELP, type="bool", default=False)
    parser.addini("noinherit_report_only", REPORT_ONLY_HELP, type="bool", default=False)
    parser.addini("noinherit_known", KNOWN_HELP, default="")


def resolve(config: pytest.Config) -> Settings:
    """Read options and ini keys; a bad value is a UsageError naming it."""
    strict = config.getoption("noinherit_strict")
    if strict is None:
        strict = _ini_bool(config, "noinherit_strict")
    patch = config.getoption("noinherit_patch")
    if patch is None:
        patch = _ini_bool(config, "noinherit_patch")
    leaks = config.getoption("noinherit_leaks")
    if leaks is None:
        leaks = _ini_bool(config, "noinherit_leaks")
    report_only = config.getoption("noinherit_report_only")
    if report_only is None:
        report_only = _ini_bool(config, "noinherit_report_only")
    known_path = config.getoption("noinherit_known") or str(config.getini("noinherit_known"))
    known_update = bool(config.getoption("noinherit_known_update"))
    if known_update and not known_path:
        raise pytest.UsageError(
            "--noinherit-known-update: name the file with --noinherit-known=PATH"
            " (or ini noinherit_known)"
        )
    if known_path:
        known_path = os.path.join(str(config.invocation_params.dir), known_path)
    probe = config.getoption("noinherit_probe")
    source = "--noinherit-probe"
    if probe is None:
        probe, source = str(config.getini("noinherit_probe")), "ini noinherit_probe"
    probe = probe.strip().lower()
    if probe not in PROBE_MODES:
        raise pytest.UsageError(
            f"{source}: {probe!r} is not a probe mode; use one of {', '.join(PROBE_MODES)}"
        )
    allowances = []
    for source, lines in (
        ("ini noinherit_allow", config.getini("noinherit_allow")),
        ("--noinherit-allow", config.getoption("noinherit_allow")),
    ):
        for line in lines:
            try:
                allowances.append(parse_ini_allowance(line, source))
            except ValueError as exc:
                raise pytest.UsageError(f"{source}: {exc}") from None
    report_path = config.getoption("noinherit_report")
    report_source = "--noinherit-report"
    if not report_path:
        report_path, report_source = str(config.getini("noinherit_report")), "ini noinherit_report"
    if report_path:
        _check_writable(report_path, report_source)
    return Settings(
        strict=bool(strict),
        report_path=report_path,
        allowances=tuple(allowances),
        probe=probe,
        patch=bool(patch),
        leaks=bool(leaks),
        report_only=bool(report_only),
        known_path=known_path or None,
        known_update=known_update,
    )


def _ini_bool(config: pytest.Config, name: str) -> bool:
    try:
        return bool(config.getini(name))
    except (ValueError, pytest.UsageError) as exc:  # pytest 9 raises UsageError itself
        raise pytest.UsageError(f"ini {name}: {exc}") from None


def _check_writable(path: str, source: str) -> None:
    """Refuse a report path before the run rather than after it."""
    try:
        report.check_destination(path)
    except report.ReportError as exc:
        raise pytest.UsageError(f"{source}: {exc}") from None
