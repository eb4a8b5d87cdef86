"""Per-exec cost of the kernel exec observer against the LD_PRELOAD probe and no plugin.

Run by hand on Linux: ``python benchmarks/bench_kernel.py [--rounds N]``.  It
generates, in a temporary directory:

* **spawn**: 300 tests that each run ``subprocess.run(["/bin/true"])``;
* **shell**: 100 tests that each run a ``sh -c`` chain of five execs
  (``sh``, ``/bin/true``, ``cat`` in a pipeline, a nested ``sh -c`` and its
  ``/bin/true``);

and runs pytest on each in four modes: without the plugin (``-p
no:noinherit``), with the plugin and ``--noinherit-probe=off``, with the
LD_PRELOAD probe (``=on``) and with the kernel observer (``=kernel``),
interleaved (every round runs all four, in an order rotated per round)
after one untimed warm-up of each.

The CPU time is that of the whole tree: this script makes itself a child
subreaper (prctl(2) ``PR_SET_CHILD_SUBREAPER``), so the observer, which
outlives pytest by design, is reparented to it and reaped here with its
rusage (:func:`os.wait4`) like pytest and its children.  It prints medians,
the CPU per exec above the plugin-off run, and the ratio kernel / no plugin
on the spawn suite against the issue's target (<= 1.25).  With ``--strace``
it also prints ``strace -c -f`` system call counts of one spawn-suite run
per mode, where strace exists.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SPAWN_TESTS = 300
SHELL_TESTS = 100
SHELL_EXECS = 5  # sh, true, cat, sh, true
TARGET = 1.25
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h

MODES = {
    "none": ["-p", "no:noinherit"],
    "plugin": ["-p", "noinherit", "--noinherit-probe=off"],
    "probe": ["-p", "noinherit", "--noinherit-probe=on"],
    "kernel": ["-p", "noinherit", "--noinherit-probe=kernel"],
}
OTHER_PLUGINS = ["-p", "no:randomly", "-p", "no:xdist", "-p", "no:cov", "-p", "no:cacheprovider"]
DROPPED_ENV = ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")

SPAWN_TEST = 'def test_{n}():\n    subprocess.run(["/bin/true"], check=True)\n\n\n'
SHELL_TEST = (
    "def test_{n}():\n"
    '    subprocess.run(["sh", "-c", "/bin/true; echo x | cat >/dev/null; sh -c /bin/true"],'
    " check=True)\n\n\n"
)


def write_suite(root: Path, name: str, tests: int, body: str) -> Path:
    suite = root / name
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    per_file = 50
    for start in range(0, tests, per_file):
        text = "import subprocess\n\n\n" + "".join(
            body.format(n=n) for n in range(start, min(start + per_file, tests))
        )
        (suite / f"test_{start:04d}.py").write_text(text, encoding="utf-8")
    return suite


def become_subreaper() -> bool:
    """Orphans of our children (the observer) are reparented to us, to be reaped here."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def run_once(suite: Path, mode: str) -> tuple[float, float]:
    """(CPU seconds of the whole tree, wall seconds) of one pytest run."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    cmd = [sys.executable, "-m", "pytest", "-q", *OTHER_PLUGINS, *MODES[mode], str(suite)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed with status {proc.returncode}: {' '.join(cmd)}")
    cpu = usage.ru_utime + usage.ru_stime
    # Whatever outlived pytest (the kernel observer) and was reparented to us.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pid, _, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.005)
            continue
        cpu += usage.ru_utime + usage.ru_stime
    return cpu, wall


def measure(suite: Path, rounds: int) -> dict[str, list[tuple[float, float]]]:
    modes = list(MODES)
    for mode in modes:  # warm-up: .pyc files, page cache
        run_once(suite, mode)
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for r in range(rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            results[mode].append(run_once(suite, mode))
    return results


def report(label: str, execs: int, results: dict[str, list[tuple[float, float]]]) -> str:
    cpu = {m: statistics.median(c for c, _ in runs) for m, runs in results.items()}
    wall = {m: statistics.median(w for _, w in runs) for m, runs in results.items()}
    lines = [f"{label} ({execs} execs), median of {len(results['none'])} rounds:"]
    for mode in MODES:
        extra = (cpu[mode] - cpu["plugin"]) / execs * 1e3
        lines.append(
            f"  {mode:7s} CPU {cpu[mode]:6.2f} s  wall {wall[mode]:6.2f} s"
            f"  CPU x{cpu[mode] / cpu['none']:.3f} vs none"
            + (f"  {extra:+.3f} ms/exec vs plugin" if mode in ("probe", "kernel") else "")
        )
    return "\n".join(lines)


def strace_counts(suite: Path) -> str:
    """System calls of one run per mode, the whole tree (strace -c -f), where strace exists."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace not found: no system call counts"
    lines = ["system calls, whole tree (strace -c -f), one spawn-suite run:"]
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    for mode, options in MODES.items():
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
            cmd = [strace, "-f", "-c", "-o", out.name, sys.executable, "-m", "pytest", "-q"]
            subprocess.run(
                [*cmd, *OTHER_PLUGINS, *options, str(suite)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            total = [line for line in out.read().splitlines() if line.rstrip().endswith("total")]
        # "% time  seconds  usecs/call  calls  [errors]  total": calls is the fourth.
        fields = total[-1].split() if total else []
        lines.append(f"  {mode:7s} {fields[3] if len(fields) > 4 else '?'} calls")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strace", action="store_true", help="also count system calls")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("the kernel observer is Linux only")
        return 0
    from pytest_noinherit import kernel

    why = kernel.unavailable(explicit=True)
    if why:
        print(f"kernel observer unavailable here: {why}")
        return 0
    if not become_subreaper():
        print("warning: not a subreaper: the observer's own CPU is not counted")
    with tempfile.TemporaryDirectory(prefix="bench-kernel-") as tmp:
        root = Path(tmp)
        spawn = write_suite(root, "spawn", SPAWN_TESTS, SPAWN_TEST)
        shell = write_suite(root, "shell", SHELL_TESTS, SHELL_TEST)
        spawn_results = measure(spawn, args.rounds)
        print(report("spawn suite", SPAWN_TESTS, spawn_results), flush=True)
        print(report("shell suite", SHELL_TESTS * SHELL_EXECS, measure(shell, args.rounds)))
        cpu = {m: statistics.median(c for c, _ in r) for m, r in spawn_results.items()}
        ratio = cpu["kernel"] / cpu["none"]
        verdict = "meets" if ratio <= TARGET else "MISSES"
        print(f"spawn suite CPU kernel / none = {ratio:.3f} ({verdict} the target <= {TARGET})")
        if args.strace:
            print(strace_counts(spawn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
