"""Plugin overhead in instructions and system calls: figures that repeat from run to run.

Run by hand: ``python benchmarks/bench_counts.py [--quick] [--part NAME] [--jobs N]``
(Linux, with ``valgrind`` and ``strace`` on the PATH).  The timed benchmarks
(``bench_plugin.py``) swing by +-20 % on a small shared machine; here every
figure is a count:

* **instructions** executed, from valgrind's cachegrind with
  ``--cache-sim=no`` (no cache simulation: only the instruction count, the
  same to a few instructions on every run);
* **system calls**, from ``strace -f -c`` (calls per system call, every
  process of the tree summed).

Parts (``--part``, default all):

* **startup**: a one-test run, plugin on minus off: the plugin's fixed cost,
  with the bytecode cache, with ``PYTHONDONTWRITEBYTECODE=1``, and with
  ``PYTHONDONTWRITEBYTECODE=1`` and no bytecode for the plugin's own modules;
* **trivial**: ``bench_plugin``'s trivial suite at two sizes (500 and
  2 000 tests); the cost per test is the difference over the difference in
  size, so the fixed cost cancels;
* **children**: ``bench_plugin``'s children suite (300 tests each running
  ``/bin/true``), instructions of the whole process tree
  (``--trace-children=yes``, one cachegrind file per process, summed), in
  default mode and with ``--noinherit-strict`` (the exec probe); first a
  check whether the probe's records survive valgrind;
* **audit**: the cost of one audit event nobody wants (``sys.audit("x.y")``
  a million times, 100 000 with ``--quick``) with no hook, the plugin's
  Python hook and the native core's C filter in front of it;
* **fds**: trivial tests with 16, 1 000 and 10 000 descriptors held open by a
  session-scoped fixture: instructions, system calls and CPU time (timed, for
  the 0.3 ms target) per test; and whether the native snapshot takes a slower
  path under valgrind than without it.

Counted runs are independent, so they run ``--jobs`` at a time (counts do not
depend on the load); timed runs come after them, one at a time.  Suites are
``bench_plugin``'s, run the way ``bench_plugin`` runs them, with
``PYTHONHASHSEED=0`` so that dict and set layouts repeat.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench_plugin import (
    CHILD_FILES,
    CHILD_HEADER,
    CHILD_TEST,
    TRIVIAL_FILES,
    TRIVIAL_TEST,
    Runner,
    write_suite,
)

# Targets (counts unless said otherwise).
TARGET_TRIVIAL = 1.03  # 2 000 trivial tests: instructions plugin / no plugin
TARGET_CHILDREN = 1.05  # 300 x /bin/true: instructions of the whole tree
TARGET_CHILDREN_STRICT = 1.10  # the same with --noinherit-strict (the exec probe)
TARGET_STARTUP = 60e6  # instructions, one-test run, plugin on minus off
TARGET_STARTUP_UNCACHED = 1.5  # x TARGET_STARTUP without the bytecode cache
# No bytecode for the plugin at all (a read-only tree, an install that wrote
# none): information, since every install the README describes writes it.
NO_BYTECODE = "PYTHONDONTWRITEBYTECODE=1, plugin not compiled"
TARGET_FD_CPU = 0.3e-3  # seconds of CPU added per test with 10 000 fds held
TARGET_FD_SYSCALLS = 50  # system calls added per test with 10 000 fds held
TARGET_TRIVIAL_TESTS = 2_000
TARGET_CHILD_TESTS = 300
TARGET_FDS = 10_000


@dataclass(frozen=True)
class Sizes:
    """Suite sizes of one mode (full or ``--quick``)."""

    trivial: tuple[int, int]
    children: int
    fds: tuple[int, ...]
    fd_counted: tuple[int, int]  # tests, under valgrind
    fd_traced: tuple[int, int]  # tests, under strace
    fd_timed: tuple[int, int]  # tests, timed
    rounds: int


FULL = Sizes((500, 2_000), 300, (16, 1_000, 10_000), (10, 50), (20, 100), (100, 500), 3)
QUICK = Sizes((100, 400), 50, (16, 1_000, 10_000), (5, 20), (10, 40), (50, 200), 2)
PARTS = ("startup", "trivial", "children", "audit", "fds")
AUDIT_EVENTS = {"full": 1_000_000, "quick": 100_000}
AUDIT_MODES = ("none", "python", "c")
# One process per (mode, count); the per-event cost is the difference of two counts.
AUDIT_SCRIPT = """import sys

mode, n = sys.argv[1], int(sys.argv[2])
from pytest_noinherit import spawns

if mode == "python":
    sys.addaudithook(spawns._audit_hook)
elif mode == "c":
    from pytest_noinherit import native

    if not native.add_audit_hook(spawns.__name__, "_audit_hook", spawns.AUDIT_EVENTS):
        raise SystemExit("this build of the native core has no C audit filter")
audit = sys.audit
for _ in range(n):
    audit("x.y")
"""

# -q keeps valgrind's banner and totals off the program's stderr (the totals
# are read from the cachegrind files); its warning about the host's cache
# geometry still goes there, once per traced process.
VALGRIND_OPTIONS = ("-q", "--tool=cachegrind", "--cache-sim=no")

# strace -c names: what a snapshot, a descriptor description or a spawn costs.
WATCHED = (
    "fcntl",
    "fstat",
    "newfstatat",
    "statx",
    "poll",
    "ppoll",
    "getdents64",
    "openat",
    "readlinkat",
    "readlink",
    "close",
)
SNAPSHOT_CALLS = ("poll", "fcntl", "getdents64")

FD_CONFTEST = """import os

import pytest

HELD = {fds}


@pytest.fixture(scope="session", autouse=True)
def held_fds():
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(HELD)]
    for fd in fds[::2]:
        os.set_inheritable(fd, True)
    yield
    for fd in fds:
        os.close(fd)
"""
# One descriptor no-one declared, passed by the child's shell to a
# grandchild: only the exec probe sees the grandchild.
LEAK_TEST = """import os
import subprocess


def test_leak():
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        subprocess.run(["/bin/sh", "-c", "/bin/true"], check=True, close_fds=False)
    finally:
        os.close(r)
        os.close(w)
"""
PROBE_SEEN = "observed by the exec probe"


# -- one counted run -------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One process tree to count: a command, its environment and which tools wrap it."""

    label: str
    argv: tuple[str, ...]
    cwd: Path
    valgrind: bool = False
    tree: bool = False  # valgrind --trace-children=yes
    strace: bool = False
    env: tuple[tuple[str, str], ...] = ()
    ok: tuple[int, ...] = (0,)


@dataclass
class Counts:
    """What one job counted."""

    instructions: int = 0  # summed over the cachegrind files
    processes: int = 0  # cachegrind files
    commands: dict[str, int] = field(default_factory=dict)  # cmd: line -> files
    syscalls: dict[str, int] = field(default_factory=dict)  # name -> calls; "total"
    output: str = ""
    seconds: float = 0.0

    def calls(self, *names: str) -> int:
        return sum(self.syscalls.get(name, 0) for name in names)


_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)
_CMD = re.compile(r"^cmd:\s+(.*)$", re.MULTILINE)


def read_cachegrind(directory: Path, counts: Counts) -> None:
    for path in sorted(directory.glob("cg.*")):
        text = path.read_text(encoding="utf-8", errors="replace")
        found = _SUMMARY.search(text)
        if found is None:  # a process killed before valgrind wrote its totals
            raise SystemExit(f"no summary line in {path}")
        counts.instructions += int(found.group(1))
        counts.processes += 1
        cmd = _CMD.search(text)
        name = cmd.group(1).split()[0] if cmd else "?"
        counts.commands[name] = counts.commands.get(name, 0) + 1


def read_strace(path: Path) -> dict[str, int]:
    """``strace -c``'s table: % time, seconds, usecs/call, calls, [errors,] syscall."""
    calls: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit() and not line.startswith("%"):
            calls[parts[-1]] = calls.get(parts[-1], 0) + int(parts[3])
    return calls


def execute(job: Job, scratch: Path, base_env: dict[str, str]) -> Counts:
    out = Path(tempfile.mkdtemp(prefix="job-", dir=scratch))
    cmd: list[str] = []
    if job.strace:
        cmd += ["strace", "-f", "-c", "-o", str(out / "strace.txt")]
    if job.valgrind:
        cmd += ["valgrind", *VALGRIND_OPTIONS, f"--cachegrind-out-file={out}/cg.%p"]
        if job.tree:
            cmd.append("--trace-children=yes")
    cmd += job.argv
    env = {**base_env, **dict(job.env)}
    start = time.perf_counter()
    with open(out / "output.txt", "w+b") as log:
        status = subprocess.run(cmd, cwd=job.cwd, env=env, stdout=log, stderr=log, check=False)
        log.seek(0)
        output = log.read().decode(errors="replace")
    counts = Counts(output=output, seconds=time.perf_counter() - start)
    if status.returncode not in job.ok:
        raise SystemExit(
            f"{job.label}: exit status {status.returncode}: {' '.join(cmd)}\n{output[-3000:]}"
        )
    if job.valgrind:
        read_cachegrind(out, counts)
    if job.strace:
        counts.syscalls = read_strace(out / "strace.txt")
    shutil.rmtree(out)
    return counts


def run_all(
    jobs: Sequence[Job], workers: int, scratch: Path, base_env: dict[str, str]
) -> dict[Job, Counts]:
    """Every job, ``workers`` at a time, in the order given; progress on stdout."""
    results: dict[Job, Counts] = {}
    lock = threading.Lock()
    start = time.perf_counter()

    def one(job: Job) -> None:
        counts = execute(job, scratch, base_env)
        with lock:
            results[job] = counts
            what = [f"{counts.instructions / 1e6:,.0f} M Ir"] if job.valgrind else []
            what += [f"{counts.syscalls.get('total', 0):,} syscalls"] if job.strace else []
            print(
                f"  [{len(results):>2}/{len(jobs)}] {time.perf_counter() - start:6.0f} s"
                f"  {job.label}: {', '.join(what) or 'done'} ({counts.seconds:.0f} s)",
                flush=True,
            )

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(one, job) for job in jobs]:
            future.result()
    return results


# -- the benchmark ---------------------------------------------------------------


def fmt_ir(n: float) -> str:
    """Instructions, in the unit that reads best."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:,.3f} G"
    if abs(n) >= 1e6:
        return f"{n / 1e6:,.1f} M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:,.1f} k"
    return f"{n:,.0f}"


def verdict(ok: bool | None, text: str) -> str:
    line = f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {text}"
    print(line, flush=True)
    return line


def per_unit(large: float, small: float, units: int) -> float:
    return (large - small) / units


class Bench:
    """The suites, the jobs that count them, and the reports drawn from the counts."""

    def __init__(self, root: Path, sizes: Sizes, parts: Iterable[str]) -> None:
        self.root = root
        self.sizes = sizes
        self.parts = set(parts)
        self.default = Runner(strict=False)
        self.strict = Runner(strict=True)
        # Bytecode lives under PYTHONPYCACHEPREFIX, in two trees: one for
        # everything, one without the plugin's modules.  Nothing is written
        # into the checkout, and an inherited PYTHONDONTWRITEBYTECODE=1 (CI
        # images set it) cannot leave the plugin uncompiled in the cached runs.
        self.cache = root / "pycache"
        self.prefix = root / "pycache-no-plugin"
        self.base_env = {**self.default.env, "PYTHONHASHSEED": "0"}
        self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.base_env["PYTHONPYCACHEPREFIX"] = str(self.cache)
        for runner in (self.default, self.strict):  # the timed runs
            runner.env = dict(self.base_env)
        self.scratch = root / "jobs"
        self.scratch.mkdir()
        self.suites: dict[str, Path] = {}
        self.verdicts: list[str] = []
        self.results: dict[Job, Counts] = {}
        self.probe_lib = self._probe_library()
        self.audit_events = AUDIT_EVENTS["quick" if sizes is QUICK else "full"]

    @staticmethod
    def _probe_library() -> str | None:
        try:
            from pytest_noinherit import probe
        except ImportError:
            return None
        return probe.library()

    # .. suites and jobs ..........................................................

    def suite(self, name: str, tests: int, *, children: bool = False, fds: int = 0) -> Path:
        if name not in self.suites:
            header, body, files = (
                (CHILD_HEADER, CHILD_TEST, CHILD_FILES)
                if children
                else ("", TRIVIAL_TEST, TRIVIAL_FILES)
            )
            path = write_suite(
                self.root, name, tests, files=min(files, tests), header=header, body=body
            )
            if fds:
                (path / "conftest.py").write_text(FD_CONFTEST.format(fds=fds), encoding="utf-8")
            self.suites[name] = path
        return self.suites[name]

    def pytest_job(
        self,
        label: str,
        suite: Path,
        plugin: bool,
        *,
        strict: bool = False,
        extra: tuple[str, ...] = (),
        valgrind: bool = False,
        tree: bool = False,
        strace: bool = False,
        env: tuple[tuple[str, str], ...] = (),
        ok: tuple[int, ...] = (0,),
    ) -> Job:
        """pytest on ``suite`` as bench_plugin runs it; labelled '<label> plugin [strict]'."""
        runner = self.strict if strict else self.default
        mode = ("plugin strict" if strict else "plugin") if plugin else "no plugin"
        return Job(
            f"{label} {mode}",
            (*runner.command(suite, plugin), *extra),
            suite,
            valgrind=valgrind,
            tree=tree,
            strace=strace,
            env=env,
            ok=ok,
        )

    def variants(self) -> dict[str, tuple[tuple[str, str], ...]]:
        nowrite = (("PYTHONDONTWRITEBYTECODE", "1"),)
        return {
            "bytecode cache": (),
            "PYTHONDONTWRITEBYTECODE=1": nowrite,
            NO_BYTECODE: (
                *nowrite,
                ("PYTHONPYCACHEPREFIX", str(self.prefix)),
            ),
        }

    def startup_jobs(self, variants: Iterable[str]) -> list[Job]:
        one = self.suite("trivial1", 1)
        envs = self.variants()
        jobs = []
        for variant in variants:
            for plugin in (True, False):
                for tool in ("valgrind", "strace"):
                    jobs.append(
                        self.pytest_job(
                            f"start-up [{variant}] {tool}",
                            one,
                            plugin,
                            env=envs[variant],
                            valgrind=tool == "valgrind",
                            strace=tool == "strace",
                        )
                    )
        return jobs

    def jobs_startup(self) -> list[Job]:
        variants = list(self.variants()) if "startup" in self.parts else ["bytecode cache"]
        return self.startup_jobs(variants)

    def jobs_trivial(self) -> list[Job]:
        jobs = []
        for n in sorted(self.sizes.trivial, reverse=True):
            suite = self.suite(f"trivial{n}", n)
            for plugin in (True, False):
                jobs.append(self.pytest_job(f"trivial {n} valgrind", suite, plugin, valgrind=True))
                jobs.append(self.pytest_job(f"trivial {n} strace", suite, plugin, strace=True))
        return jobs

    def jobs_children(self, probe_works: bool) -> list[Job]:
        n = self.sizes.children
        suite = self.suite(f"children{n}", n, children=True)
        jobs = []
        for plugin, strict in ((True, False), (False, False), (True, True)):
            if not strict or probe_works:
                jobs.append(
                    self.pytest_job(
                        f"children {n} valgrind tree",
                        suite,
                        plugin,
                        strict=strict,
                        valgrind=True,
                        tree=True,
                    )
                )
            jobs.append(
                self.pytest_job(f"children {n} strace", suite, plugin, strict=strict, strace=True)
            )
        if self.probe_lib and not probe_works:  # the probe's cost inside one child
            records = self.root / "probe-records"
            records.mkdir(exist_ok=True)
            for preload in (True, False):
                env = (("LD_PRELOAD", self.probe_lib), ("NOINHERIT_PROBE_DIR", str(records)))
                jobs.append(
                    Job(
                        f"/bin/true {'with' if preload else 'without'} the probe valgrind",
                        ("/bin/true",),
                        self.root,
                        valgrind=True,
                        env=env if preload else (),
                    )
                )
        return jobs

    def probe_check_jobs(self) -> list[Job]:
        suite = self.root / "leak"
        suite.mkdir(exist_ok=True)
        (suite / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        (suite / "test_leak.py").write_text(LEAK_TEST, encoding="utf-8")
        # -v undoes bench_plugin's -q: the header says what became of the probe.
        return [
            self.pytest_job(
                label, suite, True, strict=True, extra=("-v",), ok=(1,), valgrind=vg, tree=vg
            )
            for label, vg in (("probe check", False), ("probe check valgrind tree", True))
        ]

    def jobs_audit(self) -> list[Job]:
        return [
            Job(
                f"audit {mode} {n} valgrind",
                (sys.executable, "-c", AUDIT_SCRIPT, mode, str(n)),
                self.root,
                valgrind=True,
            )
            for mode in AUDIT_MODES
            for n in (0, self.audit_events)
        ]

    def warm_up_audit(self) -> None:
        """Write the bytecode the audit runs read (each mode imports other modules)."""
        for mode in AUDIT_MODES:
            subprocess.run(
                (sys.executable, "-c", AUDIT_SCRIPT, mode, "0"),
                cwd=self.root,
                env=self.base_env,
                capture_output=True,
                check=False,
            )

    def jobs_fds(self) -> list[Job]:
        jobs = []
        for fds in sorted(self.sizes.fds, reverse=True):
            for n in self.sizes.fd_counted:
                suite = self.suite(f"fds{fds}x{n}", n, fds=fds)
                for plugin in (True, False):
                    jobs.append(
                        self.pytest_job(
                            f"{fds} fds {n} tests valgrind+strace",
                            suite,
                            plugin,
                            valgrind=True,
                            strace=plugin,
                        )
                    )
            for n in self.sizes.fd_traced:
                suite = self.suite(f"fds{fds}x{n}", n, fds=fds)
                for plugin in (True, False):
                    jobs.append(
                        self.pytest_job(f"{fds} fds {n} tests strace", suite, plugin, strace=True)
                    )
        return jobs

    def warm_up(self) -> None:
        """Write the bytecode the counted runs read: every suite once, plugin on and off.

        The second tree is a copy without the plugin's modules, so a run with
        it and ``PYTHONDONTWRITEBYTECODE=1`` compiles exactly the plugin, as
        a fresh editable install or a read-only checkout does.
        """
        for suite in self.suites.values():
            for plugin in (True, False):
                subprocess.run(
                    self.default.command(suite, plugin),
                    cwd=suite,
                    env=self.base_env,
                    capture_output=True,
                    check=False,
                )
        shutil.copytree(self.cache, self.prefix)
        spec = importlib.util.find_spec("pytest_noinherit")
        for location in (spec.submodule_search_locations or []) if spec else []:
            shutil.rmtree(self.prefix / os.path.abspath(location).lstrip(os.sep))

    # .. reports ..................................................................

    def get(self, label: str) -> Counts:
        for job, counts in self.results.items():
            if job.label == label:
                return counts
        raise KeyError(label)

    def pair(self, label: str) -> tuple[Counts, Counts]:
        return self.get(f"{label} plugin"), self.get(f"{label} no plugin")

    def report_startup(self) -> None:
        print("\nstart-up: a one-test run, plugin on minus off")
        print(
            f"  {'':<48} {'plugin Ir':>12} {'no plugin Ir':>13} {'added Ir':>11}"
            f" {'added syscalls':>15}"
        )
        for variant in self.variants() if "startup" in self.parts else ["bytecode cache"]:
            (on, off), (son, soff) = (
                self.pair(f"start-up [{variant}] valgrind"),
                self.pair(f"start-up [{variant}] strace"),
            )
            added = on.instructions - off.instructions
            calls = son.calls("total") - soff.calls("total")
            print(
                f"  {variant:<48} {fmt_ir(on.instructions):>12} {fmt_ir(off.instructions):>13}"
                f" {fmt_ir(added):>11} {calls:>15,}"
            )
            if "startup" not in self.parts:
                continue
            if variant == NO_BYTECODE:
                print(f"INFO  start-up [{variant}]: the plugin adds {fmt_ir(added)} instructions")
                continue
            target = TARGET_STARTUP * (
                1 if variant == "bytecode cache" else TARGET_STARTUP_UNCACHED
            )
            self.verdicts.append(
                verdict(
                    added <= target,
                    f"start-up [{variant}]: the plugin adds {fmt_ir(added)} instructions,"
                    f" {calls:,} syscalls (target <= {fmt_ir(target)} instructions)",
                )
            )
        if "startup" in self.parts:
            print(
                "  (PYTHONDONTWRITEBYTECODE=1 alone still reads the .pyc files that exist, and"
                " an editable install writes them (setup.py); the last line compiles the"
                " plugin's modules on every run)"
            )

    def per_test(self, label: str, sizes: tuple[int, int]) -> dict[str, float]:
        """Instructions and calls per test, plugin and no plugin, from two suite sizes."""
        small, large = sizes
        out: dict[str, float] = {}
        for mode in ("plugin", "no plugin"):
            a, b = (
                self.get(f"{label.format(n=large)} {mode}"),
                self.get(f"{label.format(n=small)} {mode}"),
            )
            out[mode] = per_unit(a.instructions, b.instructions, large - small)
            for name in (*WATCHED, "total"):
                out[f"{mode} {name}"] = per_unit(a.calls(name), b.calls(name), large - small)
        return out

    def report_trivial(self) -> dict[str, float]:
        small, large = self.sizes.trivial
        print(f"\ntrivial: `def test_N(): pass` in {TRIVIAL_FILES} files")
        print(
            f"  {'tests':>6} {'plugin Ir':>12} {'no plugin Ir':>13} {'ratio':>7}"
            f" {'plugin sys':>11} {'no plugin sys':>14}"
        )
        for n in (1, small, large):
            label = "start-up [bytecode cache]" if n == 1 else f"trivial {n}"
            (on, off), (son, soff) = self.pair(f"{label} valgrind"), self.pair(f"{label} strace")
            print(
                f"  {n:>6} {fmt_ir(on.instructions):>12} {fmt_ir(off.instructions):>13}"
                f" {on.instructions / off.instructions:>6.3f}x"
                f" {son.calls('total'):>11,} {soff.calls('total'):>14,}"
            )
        ir = self.per_test("trivial {n} valgrind", (small, large))
        sc = self.per_test("trivial {n} strace", (small, large))
        added = ir["plugin"] - ir["no plugin"]
        print(
            f"  per test ((n={large}) - (n={small})) / {large - small}:"
            f" plugin {fmt_ir(ir['plugin'])},"
            f" no plugin {fmt_ir(ir['no plugin'])}, added {fmt_ir(added)} instructions;"
            f" added {sc['plugin total'] - sc['no plugin total']:.1f} syscalls"
        )
        print("  added syscalls per test: " + self.watched(sc))
        on, off = self.pair(f"trivial {large} valgrind")
        ratio = on.instructions / off.instructions
        note = "" if large == TARGET_TRIVIAL_TESTS else f" (target is for {TARGET_TRIVIAL_TESTS})"
        self.verdicts.append(
            verdict(
                ratio <= TARGET_TRIVIAL,
                f"trivial {large}: plugin/no-plugin instructions {ratio:.4f}x"
                f" (target <= {TARGET_TRIVIAL:.2f}x){note}",
            )
        )
        return {"instructions": added, "syscalls": sc["plugin total"] - sc["no plugin total"]}

    @staticmethod
    def watched(per: dict[str, float]) -> str:
        parts = []
        for name in WATCHED:
            delta = per[f"plugin {name}"] - per[f"no plugin {name}"]
            if abs(delta) >= 0.05:
                parts.append(f"{name} {delta:+.1f}")
        return ", ".join(parts) or "none"

    def report_probe_check(self) -> bool:
        print(
            "\nexec probe under valgrind (a test leaks a pipe into `sh -c /bin/true`, strict mode)"
        )
        works = True
        for label in ("probe check", "probe check valgrind tree"):
            out = self.get(f"{label} plugin strict").output
            found = re.search(r"probe (.*?), patch ", out, re.DOTALL)  # the report header
            status = found.group(1).splitlines()[0][:110] if found else "(no header)"
            seen = PROBE_SEEN in out
            works = seen  # the valgrind run comes last and decides
            print(
                f"  {'valgrind' if 'valgrind' in label else 'native':<9} probe {status}"
                f"; leak {'observed by the probe' if seen else 'NOT observed by the probe'}"
            )
        if not works:
            print(
                "  -> no probe records under valgrind (benchmarks/README.md says why):"
                " strict-mode instructions of the tree are not counted; the probe's own cost"
                " in a child is counted on /bin/true instead"
            )
        return works

    def report_children(
        self, probe_works: bool, start: dict[str, Counts], trivial: dict[str, float] | None
    ) -> None:
        n = self.sizes.children
        print(
            f"\nchildren: {n} tests each running /bin/true, in {CHILD_FILES} files;"
            " whole process tree"
        )
        off = self.get(f"children {n} valgrind tree no plugin")
        soff = self.get(f"children {n} strace no plugin")
        print(
            f"  no plugin: {fmt_ir(off.instructions)} Ir in {off.processes} processes"
            f" ({off.commands.get('/bin/true', 0)} /bin/true), {soff.calls('total'):,} syscalls"
        )
        # added(n) = F + n (t + s): F and one t are the one-test start-up run's,
        # t a trivial test's (from the trivial part, else left in), s the spawn's.
        ir_start = start["plugin"].instructions - start["no plugin"].instructions
        sc_start = start["plugin strace"].calls("total") - start["no plugin strace"].calls("total")
        t_ir = trivial["instructions"] if trivial else 0.0
        t_sc = trivial["syscalls"] if trivial else 0.0
        for strict in (False, True):
            mode = "plugin strict" if strict else "plugin"
            son = self.get(f"children {n} strace {mode}")
            sys_added = son.calls("total") - soff.calls("total")
            sys_spawn = (sys_added - sc_start - (n - 1) * t_sc) / n
            target = TARGET_CHILDREN_STRICT if strict else TARGET_CHILDREN
            name = f"children {n} {'--noinherit-strict' if strict else 'default'}"
            note = "" if n == TARGET_CHILD_TESTS else f" (target is for {TARGET_CHILD_TESTS})"
            if strict and not probe_works:
                probe = self.probe_child_cost()
                base = self.get(f"children {n} valgrind tree plugin")
                lower = (base.instructions + n * probe) / off.instructions if probe else None
                print(
                    f"  {mode}: not counted under valgrind (no probe records);"
                    f" {son.calls('total'):,} syscalls (+{sys_added:,}), {sys_spawn:+.1f} per spawn"
                )
                if probe:
                    print(
                        f"    the probe runs {fmt_ir(probe)} instructions in each child"
                        f" (/bin/true under cachegrind with and without it); default tree plus"
                        f" that: {lower:.4f}x, a lower bound (the plugin's reading of the records"
                        " is not in it)"
                    )
                bound = f"; lower bound {lower:.4f}x" if lower else ""
                self.verdicts.append(
                    verdict(
                        None,
                        f"{name}: tree instructions not countable under valgrind (no probe"
                        f" records){bound} (target <= {target:.2f}x){note}",
                    )
                )
                continue
            on = self.get(f"children {n} valgrind tree {mode}")
            added = on.instructions - off.instructions
            spawn = (added - ir_start - (n - 1) * t_ir) / n
            ratio = on.instructions / off.instructions
            print(
                f"  {mode}: {fmt_ir(on.instructions)} Ir in {on.processes} processes,"
                f" ratio {ratio:.4f}x;"
                f" {son.calls('total'):,} syscalls (+{sys_added:,})"
            )
            what = "per spawn" if trivial else "per child test (a test's own cost left in)"
            print(f"    added {what}: {fmt_ir(spawn)} Ir, {sys_spawn:+.1f} syscalls")
            self.verdicts.append(
                verdict(
                    ratio <= target,
                    f"{name}: plugin/no-plugin instructions of the tree {ratio:.4f}x"
                    f" (target <= {target:.2f}x){note}",
                )
            )

    def probe_child_cost(self) -> float | None:
        try:
            with_probe = self.get("/bin/true with the probe valgrind")
            without = self.get("/bin/true without the probe valgrind")
        except KeyError:
            return None
        records = list((self.root / "probe-records").glob("*.rec"))
        if not any(b"\nargv /bin/true" in r.read_bytes() for r in records):
            print("    (the probe wrote no record for /bin/true under valgrind either)")
            return None
        return float(with_probe.instructions - without.instructions)

    def report_audit(self) -> None:
        n = self.audit_events
        print(f'\naudit: instructions per sys.audit("x.y"), an event no hook wants ({n:,} calls)')
        per = {
            mode: per_unit(
                self.get(f"audit {mode} {n} valgrind").instructions,
                self.get(f"audit {mode} 0 valgrind").instructions,
                n,
            )
            for mode in AUDIT_MODES
        }
        for mode, label in zip(AUDIT_MODES, ("no hook", "Python hook", "C filter")):
            added = "" if mode == "none" else f", the hook adds {fmt_ir(per[mode] - per['none'])}"
            print(f"  {label:<12} {fmt_ir(per[mode]):>8} per event{added}")

    def report_fds(self, timed: dict[int, dict[str, float]]) -> None:
        print(
            "\nfds: trivial tests with descriptors held open by a session-scoped fixture"
            " (half of them inheritable)"
        )
        print(
            f"  {'held':>6} {'plugin Ir/test':>15} {'no plugin':>10} {'added':>9}"
            f" {'added sys/test':>15} {'added CPU ms/test':>18}   added per test, by call"
        )
        for fds in self.sizes.fds:
            ir = self.per_test(f"{fds} fds {{n}} tests valgrind+strace", self.sizes.fd_counted)
            sc = self.per_test(f"{fds} fds {{n}} tests strace", self.sizes.fd_traced)
            added_sys = sc["plugin total"] - sc["no plugin total"]
            cpu = timed.get(fds)
            cpu_text = f"{cpu['added'] * 1e3:.3f}" if cpu else "-"
            print(
                f"  {fds:>6} {fmt_ir(ir['plugin']):>15} {fmt_ir(ir['no plugin']):>10}"
                f" {fmt_ir(ir['plugin'] - ir['no plugin']):>9} {added_sys:>15.1f} {cpu_text:>18}"
                f"   {self.watched(sc)}"
            )
        print(
            "  snapshot calls per test with the plugin, natively (strace)"
            " vs under valgrind (strace of valgrind):"
        )
        slower = []
        for fds in self.sizes.fds:
            native = self.per_test(f"{fds} fds {{n}} tests strace", self.sizes.fd_traced)
            small, large = self.sizes.fd_counted
            a = self.get(f"{fds} fds {large} tests valgrind+strace plugin")
            b = self.get(f"{fds} fds {small} tests valgrind+strace plugin")
            under = {
                name: per_unit(a.calls(name), b.calls(name), large - small)
                for name in SNAPSHOT_CALLS
            }
            text = ", ".join(
                f"{name} {native[f'plugin {name}']:.1f} vs {under[name]:.1f}"
                for name in SNAPSHOT_CALLS
            )
            if any(under[k] > native[f"plugin {k}"] * 1.5 + 1 for k in SNAPSHOT_CALLS):
                slower.append(fds)
            print(f"  {fds:>6} {text}")
        if slower:
            print(
                "  -> under valgrind the native snapshot takes a slower path at"
                f" {', '.join(map(str, slower))} fds: valgrind keeps descriptors of its own above"
                " the soft RLIMIT_NOFILE it shows the program; /proc/self/fd counts them and"
                " poll() cannot see them, so the poll never adds up and the core lists"
                " /proc/self/fd, whose highest entry (valgrind's) lifts the poll hint to the soft"
                " limit: every later snapshot polls that many slots and tries fcntl on each empty"
                " one first.  The plugin-on instruction figures of every part include that path"
                " (syscall and CPU figures come from runs without valgrind)."
            )
        else:
            print("  -> the native snapshot takes the same path under valgrind")
        if TARGET_FDS in self.sizes.fds:
            sc = self.per_test(f"{TARGET_FDS} fds {{n}} tests strace", self.sizes.fd_traced)
            added_sys = sc["plugin total"] - sc["no plugin total"]
            self.verdicts.append(
                verdict(
                    added_sys <= TARGET_FD_SYSCALLS,
                    f"{TARGET_FDS} fds: the plugin adds {added_sys:.1f} syscalls per test"
                    f" (target <= {TARGET_FD_SYSCALLS})",
                )
            )
            cpu = timed.get(TARGET_FDS)
            if cpu:
                self.verdicts.append(
                    verdict(
                        cpu["added"] <= TARGET_FD_CPU,
                        f"{TARGET_FDS} fds: the plugin adds {cpu['added'] * 1e3:.3f} ms CPU"
                        f" per test (timed, {cpu['rounds']:.0f} rounds, medians;"
                        f" target <= {TARGET_FD_CPU * 1e3:.1f} ms)",
                    )
                )

    def timed_fds(self, fds: int) -> dict[str, float]:
        """CPU per test with ``fds`` held, plugin minus no plugin, from two sizes (noisy)."""
        small, large = self.sizes.fd_timed
        suites = {n: self.suite(f"fds{fds}x{n}", n, fds=fds) for n in (small, large)}
        runs: dict[tuple[int, bool], list[float]] = {
            (n, p): [] for n in suites for p in (True, False)
        }
        for suite in suites.values():  # warm-up
            for plugin in (True, False):
                self.default.run(suite, plugin)
        for _ in range(self.sizes.rounds):
            for n, suite in suites.items():
                for plugin in (True, False):
                    runs[(n, plugin)].append(self.default.run(suite, plugin).cpu)
        med = {key: statistics.median(value) for key, value in runs.items()}
        per = {p: per_unit(med[(large, p)], med[(small, p)], large - small) for p in (True, False)}
        print(
            f"  timed, {fds} fds: CPU per test ({large} - {small} tests)"
            f" plugin {per[True] * 1e3:.3f} ms,"
            f" no plugin {per[False] * 1e3:.3f} ms; runs (s): "
            + "; ".join(
                f"{n}{'+' if p else '-'} " + " ".join(f"{c:.2f}" for c in runs[(n, p)])
                for (n, p) in runs
            ),
            flush=True,
        )
        return {"added": per[True] - per[False], "rounds": float(self.sizes.rounds)}


# -- driver ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller suites (a few minutes)")
    parser.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable; default all)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=(os.cpu_count() or 1) + 1,
        help="counted runs at a time (default CPUs + 1: traced children mostly wait)",
    )
    parser.add_argument("--no-timed", action="store_true", help="skip the timed CPU runs of 'fds'")
    parser.add_argument("--children", type=int, help="children suite size (default 300, quick 50)")
    return parser.parse_args(argv)


def raise_nofile(needed: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and (hard == resource.RLIM_INFINITY or hard >= needed):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return f"RLIMIT_NOFILE soft {soft}, hard {hard}"


def counted_jobs(bench: Bench, parts: Sequence[str], probe_works: bool) -> list[Job]:
    """The counted runs of these parts, after the warm-up runs they need."""
    jobs: list[Job] = []
    if "children" in parts:
        jobs += bench.jobs_children(probe_works)
    if "fds" in parts:
        jobs += bench.jobs_fds()
    if "audit" in parts:
        jobs += bench.jobs_audit()
    if "trivial" in parts:
        jobs += bench.jobs_trivial()
    if set(parts) - {"fds", "audit"}:
        jobs += bench.jobs_startup()
    if bench.suites:
        print(f"\nwarm-up: {len(bench.suites)} suites, plugin on and off", flush=True)
        bench.warm_up()
    if "audit" in parts:
        bench.warm_up_audit()
    return jobs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("valgrind", "strace") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"needs {' and '.join(missing)} on the PATH")
    sizes = QUICK if args.quick else FULL
    if args.children:
        sizes = replace(sizes, children=args.children)
    parts = args.part or list(PARTS)
    limits = raise_nofile(max(sizes.fds) + 1_000)
    print(f"python {sys.version.split()[0]} ({sys.executable}); {limits}")
    print(f"valgrind {' '.join(VALGRIND_OPTIONS)}; strace -f -c")
    print("PYTHONHASHSEED=0, PYTHONPYCACHEPREFIX=<private>, PYTHONDONTWRITEBYTECODE unset")
    print(f"parts: {', '.join(parts)}; {'quick' if args.quick else 'full'} sizes; {args.jobs} jobs")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="noinherit-counts-") as tmp:
        bench = Bench(Path(tmp), sizes, parts)
        probe_works = True
        if "children" in parts:
            print("\nchecking the exec probe under valgrind", flush=True)
            bench.results.update(
                run_all(bench.probe_check_jobs(), args.jobs, bench.scratch, bench.base_env)
            )
            probe_works = bench.report_probe_check()
        jobs = counted_jobs(bench, parts, probe_works)
        print(f"\n{len(jobs)} counted runs", flush=True)
        bench.results.update(run_all(jobs, args.jobs, bench.scratch, bench.base_env))
        timed: dict[int, dict[str, float]] = {}
        if "fds" in parts and not args.no_timed:
            print("\ntimed runs (one at a time)", flush=True)
            timed = {fds: bench.timed_fds(fds) for fds in sizes.fds if fds == TARGET_FDS}
        if set(parts) - {"fds", "audit"}:
            bench.report_startup()
        trivial = bench.report_trivial() if "trivial" in parts else None
        if "children" in parts:
            start_counts = {
                "plugin": bench.get("start-up [bytecode cache] valgrind plugin"),
                "no plugin": bench.get("start-up [bytecode cache] valgrind no plugin"),
                "plugin strace": bench.get("start-up [bytecode cache] strace plugin"),
                "no plugin strace": bench.get("start-up [bytecode cache] strace no plugin"),
            }
            bench.report_children(probe_works, start_counts, trivial)
        if "audit" in parts:
            bench.report_audit()
        if "fds" in parts:
            bench.report_fds(timed)
    print(f"\nSummary ({time.perf_counter() - start:.0f} s)")
    for line in bench.verdicts:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
