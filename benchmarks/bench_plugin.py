"""Plugin overhead: pytest with ``-p noinherit`` against ``-p no:noinherit``.

Run by hand: ``python benchmarks/bench_plugin.py [--rounds N] [--strict]
[--suite trivial|children|both]``.  It generates, in a temporary directory:

* **trivial**: 2 000 tests ``def test_N(): pass`` spread over 20 files;
* **children**: 300 tests that each run a short child,
  ``subprocess.run(["/bin/true"])`` with the default ``close_fds``;

and runs ``sys.executable -m pytest -p no:cacheprovider -q`` on each, once
with the plugin and once without, interleaved (A B A B ...) for ``--rounds``
rounds after one untimed warm-up of each (it writes the rewritten ``.pyc``
files).  For every run it records the CPU time (user + sys) of the pytest
process and the children it waited for, from :func:`os.wait4`, and the wall
time; it prints medians and the ratio plugin / no plugin against the targets
of the issue (trivial <= 1.05x, children <= 1.10x, CPU time).

A growth check then runs the trivial suite at 1, 500 and 2 000 tests, plugin
and no plugin interleaved, and prints the CPU per test above the one-test
run (pytest's and the plugin's fixed cost): it should not grow with the
length of the suite.

Runs are kept comparable: ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``,
``PYTEST_ADDOPTS`` and ``PYTEST_PLUGINS`` are removed from the children's
environment (the plugin is found through its entry point), the suite
directory has its own empty ``pytest.ini`` so no outer configuration
applies, and plugins that reorder, parallelise or trace tests are disabled
with ``-p no:NAME`` when they are installed.  ``PYTEST_NOINHERIT_BACKEND`` is
passed through, so ``PYTEST_NOINHERIT_BACKEND=python`` measures the
pure-Python backend.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TRIVIAL_TESTS = 2_000
TRIVIAL_FILES = 20
CHILD_TESTS = 300
CHILD_FILES = 10
GROWTH_SIZES = (1, 500, 2_000)  # the one-test run measures the fixed cost

TARGET_TRIVIAL = 1.05
TARGET_CHILDREN = 1.10

# Installed plugins that would make the two runs differ in more than the
# plugin (ordering, parallelism, tracing): module to import -> plugin name.
OPTIONAL_PLUGINS = {
    "xdist": "xdist",
    "pytest_randomly": "randomly",
    "pytest_cov": "cov",
    "pytest_sugar": "sugar",
    "pytest_rerunfailures": "rerunfailures",
}
DROPPED_ENV = ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")

TRIVIAL_TEST = "def test_{n}():\n    pass\n\n\n"
CHILD_HEADER = "import subprocess\n\n\n"
CHILD_TEST = 'def test_child_{n}():\n    subprocess.run(["/bin/true"], check=True)\n\n\n'


# -- suites --------------------------------------------------------------------


def write_suite(root: Path, name: str, tests: int, *, files: int, header: str, body: str) -> Path:
    """A directory of ``files`` test modules holding ``tests`` tests in all."""
    suite = root / name
    suite.mkdir()
    # Its own rootdir and inifile: no outer pyproject/addopts can leak in.
    (suite / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    per_file, extra = divmod(tests, files)
    n = 0
    for f in range(files):
        count = per_file + (1 if f < extra else 0)
        text = header + "".join(body.format(n=n + i) for i in range(count))
        (suite / f"test_{name}_{f:02d}.py").write_text(text, encoding="utf-8")
        n += count
    return suite


# -- running pytest ------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one pytest process cost."""

    cpu: float  # user + sys of pytest and its waited-for children, seconds
    wall: float  # seconds


class Runner:
    """Runs pytest on a suite with or without the plugin, the same way every time."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.env = dict(os.environ)
        self.dropped = [name for name in DROPPED_ENV if self.env.pop(name, None) is not None]
        self.disabled = [
            plugin
            for module, plugin in OPTIONAL_PLUGINS.items()
            if importlib.util.find_spec(module) is not None
        ]

    def command(self, suite: Path, plugin: bool) -> list[str]:
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
        for name in self.disabled:
            cmd += ["-p", f"no:{name}"]
        cmd += ["-p", "noinherit" if plugin else "no:noinherit"]
        if plugin and self.strict:
            cmd.append("--noinherit-strict")
        cmd.append(str(suite))
        return cmd

    def run(self, suite: Path, plugin: bool) -> Run:
        """One pytest process; its own rusage from wait4, so nothing else counts."""
        cmd = self.command(suite, plugin)
        with tempfile.TemporaryFile() as out:
            start = time.perf_counter()
            proc = subprocess.Popen(
                cmd, cwd=suite, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            if proc.returncode != 0:
                out.seek(0)
                tail = out.read().decode(errors="replace")[-3000:] or "(no output)"
                raise SystemExit(f"pytest exited with {proc.returncode}: {' '.join(cmd)}\n{tail}")
        return Run(usage.ru_utime + usage.ru_stime, wall)


@dataclass
class Comparison:
    """Interleaved runs of one suite, with and without the plugin."""

    with_plugin: list[Run]
    without: list[Run]

    @staticmethod
    def median(runs: list[Run], attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs))

    def ratio(self, attr: str) -> float:
        return self.median(self.with_plugin, attr) / self.median(self.without, attr)


def compare(runner: Runner, suite: Path, rounds: int) -> Comparison:
    """One warm-up each, then A B A B ... for ``rounds`` rounds."""
    runner.run(suite, True)
    runner.run(suite, False)
    result = Comparison([], [])
    for _ in range(rounds):
        result.with_plugin.append(runner.run(suite, True))
        result.without.append(runner.run(suite, False))
    return result


def report(label: str, tests: int, result: Comparison, target: float) -> str:
    """Print the medians and the ratios; return the verdict line."""
    print(f"  {'':<12} {'CPU s':>8} {'wall s':>8} {'CPU µs/test':>12}   CPU per round s")
    for name, runs in (("plugin", result.with_plugin), ("no plugin", result.without)):
        cpu = Comparison.median(runs, "cpu")
        wall = Comparison.median(runs, "wall")
        each = " ".join(f"{r.cpu:.2f}" for r in runs)
        print(f"  {name:<12} {cpu:>8.3f} {wall:>8.3f} {cpu / tests * 1e6:>12.0f}   {each}")
    cpu_ratio, wall_ratio = result.ratio("cpu"), result.ratio("wall")
    added = (
        Comparison.median(result.with_plugin, "cpu") - Comparison.median(result.without, "cpu")
    ) / tests
    print(f"  {'ratio':<12} {cpu_ratio:>7.3f}x {wall_ratio:>7.3f}x")
    print(f"  the plugin adds {added * 1e6:.0f} µs CPU per test")
    ok = cpu_ratio <= target
    line = (
        f"{'PASS' if ok else 'FAIL'}  {label}: plugin/no-plugin CPU {cpu_ratio:.3f}x,"
        f" wall {wall_ratio:.3f}x (target CPU <= {target:.2f}x)"
    )
    print(line, flush=True)
    return line


def growth_check(runner: Runner, suites: dict[int, Path], rounds: int) -> str:
    """Per-test CPU above a one-test run's, at each suite size, with and without the plugin.

    The one-test run is pytest's (and the plugin's) fixed cost; what remains,
    divided by the number of tests, is the cost per test, which should not
    depend on how long the suite is.  Every size and mode is interleaved.
    """
    runs: dict[tuple[int, bool], list[Run]] = {(n, p): [] for n in suites for p in (True, False)}
    for suite in suites.values():  # warm-up
        runner.run(suite, True)
        runner.run(suite, False)
    for _ in range(rounds):
        for n, suite in suites.items():
            for plugin in (True, False):
                runs[(n, plugin)].append(runner.run(suite, plugin))
    cpu = {key: Comparison.median(value, "cpu") for key, value in runs.items()}
    base, *sizes = sorted(suites)
    print(
        f"  {'tests':>6} {'plugin CPU s':>13} {'no plugin CPU s':>16}"
        f" {'plugin µs/test':>15} {'no plugin µs/test':>18} {'added µs/test':>14}"
    )
    print(f"  {base:>6} {cpu[(base, True)]:>13.3f} {cpu[(base, False)]:>16.3f}   (fixed cost)")
    added: dict[int, float] = {}
    for n in sizes:
        per_test = {p: (cpu[(n, p)] - cpu[(base, p)]) / (n - base) for p in (True, False)}
        added[n] = per_test[True] - per_test[False]
        print(
            f"  {n:>6} {cpu[(n, True)]:>13.3f} {cpu[(n, False)]:>16.3f}"
            f" {per_test[True] * 1e6:>15.0f} {per_test[False] * 1e6:>18.0f} {added[n] * 1e6:>14.0f}"
        )
    fixed = cpu[(base, True)] - cpu[(base, False)]
    print(
        f"  µs/test = (CPU at n tests - CPU at {base}) / (n - {base});"
        f" the plugin's fixed cost is {fixed * 1e3:.0f} ms"
    )
    small, large = sizes[0], sizes[-1]
    line = (
        f"INFO  growth: the plugin adds {added[small] * 1e6:.0f} µs/test at {small} tests,"
        f" {added[large] * 1e6:.0f} µs/test at {large}; with it a test costs"
        f" {(cpu[(small, True)] - cpu[(base, True)]) / (small - base) * 1e6:.0f} vs"
        f" {(cpu[(large, True)] - cpu[(base, True)]) / (large - base) * 1e6:.0f} µs"
        " (should be about equal)"
    )
    print(line, flush=True)
    return line


# -- driver --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved A/B rounds (default 5)")
    parser.add_argument(
        "--suite",
        choices=("trivial", "children", "both"),
        default="both",
        help="which suite (default both)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="pass --noinherit-strict to the plugin runs"
    )
    parser.add_argument(
        "--no-growth", action="store_true", help="skip the growth check (1, 500, 2000 tests)"
    )
    parser.add_argument("--trivial-tests", type=int, default=TRIVIAL_TESTS, help=argparse.SUPPRESS)
    parser.add_argument("--child-tests", type=int, default=CHILD_TESTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runner = Runner(args.strict)
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    print(f"plugin runs:    {' '.join(runner.command(Path('SUITE'), True))}")
    print(f"no-plugin runs: {' '.join(runner.command(Path('SUITE'), False))}")
    if runner.dropped:
        print(f"removed from the environment: {', '.join(runner.dropped)}")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("PYTHONDONTWRITEBYTECODE is set: modules without a .pyc compile on every run")
    backend = os.environ.get("PYTEST_NOINHERIT_BACKEND")
    print(f"PYTEST_NOINHERIT_BACKEND={backend}" if backend else "backend: auto")
    print(f"{args.rounds} interleaved rounds after one warm-up each; medians")
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="noinherit-bench-") as tmp:
        root = Path(tmp)
        if args.suite in ("trivial", "both"):
            n = args.trivial_tests
            suite = write_suite(
                root, "trivial", n, files=TRIVIAL_FILES, header="", body=TRIVIAL_TEST
            )
            print(f"\ntrivial: {n} tests `pass` in {TRIVIAL_FILES} files")
            verdicts.append(
                report(f"trivial {n}", n, compare(runner, suite, args.rounds), TARGET_TRIVIAL)
            )
        if args.suite in ("children", "both"):
            n = args.child_tests
            suite = write_suite(
                root, "children", n, files=CHILD_FILES, header=CHILD_HEADER, body=CHILD_TEST
            )
            print(f"\nchildren: {n} tests each running /bin/true, in {CHILD_FILES} files")
            verdicts.append(
                report(f"children {n}", n, compare(runner, suite, args.rounds), TARGET_CHILDREN)
            )
        if args.suite in ("trivial", "both") and not args.no_growth:
            suites = {
                n: write_suite(
                    root, f"growth{n}", n, files=TRIVIAL_FILES, header="", body=TRIVIAL_TEST
                )
                for n in GROWTH_SIZES
            }
            print(f"\ngrowth: trivial suite at {', '.join(map(str, GROWTH_SIZES))} tests")
            verdicts.append(growth_check(runner, suites, args.rounds))
    print("\nSummary")
    for line in verdicts:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
