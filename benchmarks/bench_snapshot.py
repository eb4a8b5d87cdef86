"""Snapshot cost: the native core against the pure-Python equivalent.

Run by hand (``python benchmarks/bench_snapshot.py [--quick]``); Linux only.
Three parts, each in a fresh interpreter of its own, because the native core
keeps a per-process poll hint (one past the highest descriptor the last
snapshot saw) and a fresh process also starts with a cold
``/proc/self/fd`` dentry cache, as pytest does:

1. **size**: cost of one snapshot with about 16, 1 000, 10 000 descriptors
   open and, when the hard ``RLIMIT_NOFILE`` allows more, at that limit minus
   a margin.  The extra descriptors are ``/dev/null``, half of them
   close-on-exec.  Compared: the pure-Python equivalent spelled out in the
   issue (``os.listdir('/proc/self/fd')`` plus ``fcntl(F_GETFD)`` and
   ``os.fstat`` per descriptor, the baseline), ``pure.snapshot()``,
   ``native.snapshot()`` (the raw array) and the public
   ``pytest_noinherit.snapshot()`` (the lazy ``FdTable``).
2. **rlimit**: with 10 descriptors open, the public snapshot with the soft
   ``RLIMIT_NOFILE`` at 1 024 and at the hard limit, interleaved.  The poll
   range must follow the table, not the limit.
3. **scan**: the same comparison for the generic fallback method
   (``snapshot("scan")``, a poll over every slot below the soft limit), for
   information: its cost is expected to follow the limit.
4. **check**: the per-test check, ``fdtable.snapshot_since(table, flags)``
   when nothing changed, with 16, 1 000 and 10 000 descriptors held (as a
   session fixture holds them): default mode (``flags=False``) and strict
   mode (``flags=True``), timed, and with ``--counts`` also counted in a
   child process: system calls per call (``strace -f -c``) and instructions
   per call (valgrind's cachegrind, ``--cache-sim=no``), each as the
   difference between 200 calls and none.

Part 1 runs pinned to one CPU, as the issue states its floor (two system
calls per descriptor, ``fcntl(F_GETFD)`` + ``fstat``, measured by a C loop
compiled here with cffi); part 1b repeats the largest sizes on every CPU the
process may use, where the native core lets a second thread help.

Timing is timeit-style: one warm-up call, a loop count calibrated so that one
batch lasts at least ``--min-batch`` seconds, the garbage collector off
during a batch, and the cases of one table size run interleaved, batch by
batch, so that a noisy neighbour hurts all of them alike.  Figures are
medians of the per-call time over the repetitions; ratios are taken against
the baseline measured in the same process.

Acceptance targets (from the issue) are printed as PASS/FAIL lines and
summed up at the end; the exit status is 0 either way (noisy machines).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

FD_DIR = "/proc/self/fd"
PARTS = ("size", "parallel", "rlimit", "scan", "check")
CHECK_CALLS = 200
FIXED_SIZES = (16, 1_000, 10_000)
LIMIT_MARGIN = 200  # room for the interpreter, the listing's own dirfd, pipes
LOW_SOFT_LIMIT = 1_024
RLIMIT_OPEN_FDS = 10

# Targets from the issue.
TARGET_LARGE_FDS = 10_000
TARGET_LARGE_SPEEDUP = 4.0  # native >= 4x faster than the pure-Python equivalent
TARGET_SMALL_SPEEDUP = 3.0  # ~16 fds: >= 3x
TARGET_FLOOR = 1.10  # 10 000 fds, one CPU: within 10 % of F_GETFD + fstat per fd
TARGET_RLIMIT_SPREAD = 1.20  # soft 1024 vs hard: within 20 %
TARGET_CHECK_SECONDS = 0.3e-3  # the per-test check, 10 000 fds, default mode
TARGET_CHECK_SYSCALLS = 50
TARGET_CHECK_FLAT = 2.0  # 10 000 fds vs 16, default mode

BACKEND_ENV = "PYTEST_NOINHERIT_BACKEND"


# -- timing -------------------------------------------------------------------


@dataclass
class Case:
    """One thing to time, and what timing it gave (seconds per call)."""

    name: str
    fn: Callable[[], object]
    loops: int = 1
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)


def _batch(fn: Callable[[], object], loops: int) -> float:
    """Seconds for ``loops`` calls of fn, with the collector off as in timeit."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(case: Case, min_batch: float) -> None:
    """Warm up, then pick the loop count that makes one batch last min_batch."""
    case.fn()  # warm-up: the first /proc listing after opening fds is 3-7x slower
    loops = 1
    while True:
        took = _batch(case.fn, loops)
        if took >= min_batch:
            case.loops = loops
            return
        guess = int(loops * min_batch / max(took, 1e-9) * 1.1)
        loops = max(loops + 1, min(loops * 10, guess))


def measure(cases: Sequence[Case], repeat: int, min_batch: float) -> None:
    """Calibrate every case, then run them interleaved, batch by batch."""
    for case in cases:
        calibrate(case, min_batch)
    for _ in range(repeat):
        for case in cases:
            case.samples.append(_batch(case.fn, case.loops) / case.loops)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


# -- descriptors ---------------------------------------------------------------


def open_count() -> int:
    """Descriptors open now, not counting the listing's own."""
    return len(os.listdir(FD_DIR)) - 1


class DevNullPool:
    """``/dev/null`` descriptors opened to grow the table; every other one inheritable."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def fill_to(self, total: int) -> int:
        """Open descriptors until ``total`` are open (or EMFILE); return the count."""
        count = open_count()
        while count < total:
            try:
                fd = os.open(os.devnull, os.O_RDONLY)  # close-on-exec (PEP 446)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    print(f"  (stopped at {count} open fds: {exc.strerror})")
                    break
                raise
            if len(self.fds) % 2:
                os.set_inheritable(fd, True)
            self.fds.append(fd)
            count += 1
        return open_count()

    def inheritable(self) -> int:
        return len(self.fds) // 2

    def close_all(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def listdir_equivalent() -> list[tuple[int, int, int, int, int]]:
    """The pure-Python snapshot spelled out in the issue: the baseline to beat."""
    out = []
    for name in os.listdir(FD_DIR):
        fd = int(name)
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            st = os.fstat(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:  # the listing's own dirfd, closed by now
                continue
            raise
        out.append((fd, flags & fcntl.FD_CLOEXEC, st.st_dev, st.st_ino, st.st_mode))
    return out


def raise_soft_limit() -> int:
    """Soft RLIMIT_NOFILE := hard; return the hard limit (RLIM_INFINITY as nr_open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard == resource.RLIM_INFINITY:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read())
    return hard


def verdict(ok: bool, text: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)


# -- part 1: cost against table size -------------------------------------------

FLOOR_SOURCE = """
#include <fcntl.h>
#include <sys/stat.h>

int floor_read(const int *fds, int n)
{
    struct stat st;
    int open = 0;
    for (int i = 0; i < n; i++)
        if (fcntl(fds[i], F_GETFD) >= 0 && fstat(fds[i], &st) == 0)
            open++;
    return open;
}
"""


def floor_function() -> Callable[[], Callable[[], object]] | None:
    """The floor: F_GETFD + fstat of each open descriptor, a C loop (None without a compiler)."""
    import importlib.machinery
    import importlib.util
    import tempfile

    try:
        from cffi import FFI

        ffi = FFI()
        ffi.cdef("int floor_read(const int *fds, int n);")
        ffi.set_source("_bench_snapshot_floor", FLOOR_SOURCE)
        path = ffi.compile(tmpdir=tempfile.mkdtemp(prefix="bench-floor-"))
        loader = importlib.machinery.ExtensionFileLoader("_bench_snapshot_floor", path)
        spec = importlib.util.spec_from_file_location("_bench_snapshot_floor", path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except Exception as exc:  # no compiler, no cffi: no floor line
        print(f"  (no floor: {exc})")
        return None
    lib, cffi_ffi = module.lib, module.ffi

    def factory() -> Callable[[], object]:
        # Listed once per table size: the listing is the baseline's cost, not the floor's.
        fds = [int(name) for name in os.listdir(FD_DIR)]
        buf = cffi_ffi.new("int[]", fds)
        return lambda: lib.floor_read(buf, len(fds))

    return factory


def pin_to_one_cpu() -> str:
    """Run on one CPU from now on (the floor is stated for one core); which one."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return f"CPU {cpus[-1]} of {len(cpus)}"


def part_size(args: argparse.Namespace) -> None:
    size_part(args, parallel=False)


def part_parallel(args: argparse.Namespace) -> None:
    size_part(args, parallel=True)


def size_part(args: argparse.Namespace, parallel: bool) -> None:  # noqa: PLR0915 - one report
    import pytest_noinherit
    from pytest_noinherit import native, pure

    hard = raise_soft_limit()
    top = min(hard, args.max_fds) - LIMIT_MARGIN
    sizes = [*FIXED_SIZES, top] if top > FIXED_SIZES[-1] else list(FIXED_SIZES)
    if parallel:
        sizes = sizes[2:]
        where = f"every CPU this process may use ({len(os.sched_getaffinity(0))})"
    else:
        where = "pinned to " + pin_to_one_cpu()
    public = f"p.snapshot() [{pytest_noinherit.backend()}]"
    print(
        f"Part 1{'b' if parallel else ''}: snapshot cost against table size, {where}"
        f" (public backend: {pytest_noinherit.backend()}, {pytest_noinherit.backend_reason()};"
        f" RLIMIT_NOFILE hard {hard}; median of {args.repeat} interleaved repetitions)"
    )
    print("  speedup = baseline median / case median (> 1: faster than the baseline)")
    floor = floor_function()
    pool = DevNullPool()
    speedups: dict[int, float] = {}
    floors: dict[int, float] = {}
    try:
        for size in sizes:
            got = pool.fill_to(size)
            cases = [
                Case("listdir + F_GETFD + fstat (baseline)", listdir_equivalent),
                Case("pure.snapshot()", pure.snapshot),
                Case("native.snapshot() raw array", native.snapshot),
            ]
            if floor is not None:
                cases.append(Case("floor: F_GETFD + fstat per fd, C", floor()))
            cases.append(Case(public + " public API", pytest_noinherit.snapshot))
            counts = {len(listdir_equivalent()), len(pure.snapshot()) // 5}
            counts |= {len(native.snapshot()) // 5, len(pytest_noinherit.snapshot())}
            measure(cases, args.repeat, args.min_batch)
            base = cases[0].median
            print(
                f"\n  {got} open fds ({len(pool.fds)} /dev/null opened here,"
                f" {pool.inheritable()} of them inheritable)"
            )
            if len(counts) != 1:
                print(f"  WARNING: the methods disagree on the table size: {sorted(counts)}")
            print(f"  {'case':<44} {'median µs':>12} {'best µs':>12} {'loops':>6} {'speedup':>8}")
            for case in cases:
                print(
                    f"  {case.name:<44} {us(case.median):>12} {us(case.best):>12}"
                    f" {case.loops:>6} {base / case.median:>7.2f}x"
                )
            speedups[size] = base / cases[-1].median
            if floor is not None:
                floors[size] = cases[-1].median / cases[-2].median
                print(f"  public snapshot() / floor: {floors[size]:.3f}")
    finally:
        pool.close_all()

    print()
    if pytest_noinherit.backend() != "native":
        print(f"SKIP  targets: the public backend is {pytest_noinherit.backend()}, not native")
        return
    if parallel:
        for size, ratio in floors.items():
            print(f"INFO  {size} fds, every CPU: public snapshot() / one-core floor {ratio:.3f}")
        return
    if TARGET_LARGE_FDS in floors:
        ratio = floors[TARGET_LARGE_FDS]
        verdict(
            ratio <= TARGET_FLOOR,
            f"{TARGET_LARGE_FDS} fds, one CPU: public snapshot() {ratio:.3f}x the floor"
            f" (F_GETFD + fstat per fd; target <= {TARGET_FLOOR:.2f}x)",
        )
    small = speedups[FIXED_SIZES[0]]
    verdict(
        small >= TARGET_SMALL_SPEEDUP,
        f"~{FIXED_SIZES[0]} fds: public snapshot() {small:.2f}x the speed of the"
        f" pure-Python equivalent (target >= {TARGET_SMALL_SPEEDUP:.0f}x)",
    )
    large = speedups[TARGET_LARGE_FDS]
    verdict(
        large >= TARGET_LARGE_SPEEDUP,
        f"{TARGET_LARGE_FDS} fds: public snapshot() {large:.2f}x faster than the"
        f" pure-Python equivalent (target >= {TARGET_LARGE_SPEEDUP:.0f}x)",
    )


# -- parts 2 and 3: the soft limit ---------------------------------------------


def compare_limits(args: argparse.Namespace, method: str) -> float | None:
    """Median cost of snapshot(method) at soft 1024 and soft = hard; the ratio."""
    import pytest_noinherit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= LOW_SOFT_LIMIT:
        print(f"  SKIP: the hard limit ({hard}) is not above {LOW_SOFT_LIMIT}")
        return None
    pool = DevNullPool()
    got = pool.fill_to(RLIMIT_OPEN_FDS)
    hard_name = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    limits = {f"soft {LOW_SOFT_LIMIT}": LOW_SOFT_LIMIT, f"soft {hard_name} (= hard)": hard}
    rounds: dict[str, list[float]] = {name: [] for name in limits}
    loops: dict[str, int] = {}
    try:
        for _ in range(args.rounds):
            for name, limit in limits.items():  # interleaved: 1024, hard, 1024, hard...
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                case = Case(name, lambda: pytest_noinherit.snapshot(method))
                measure([case], args.repeat, args.min_batch)
                rounds[name].append(case.median)
                loops[name] = case.loops
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        pool.close_all()

    print(
        f"  {got} open fds; {args.rounds} interleaved rounds, each the median of"
        f" {args.repeat} repetitions"
    )
    print(f"  {'configuration':<28} {'median µs':>12} {'range of rounds µs':>24} {'loops':>6}")
    medians = {}
    for name, values in rounds.items():
        medians[name] = statistics.median(values)
        spread = f"{us(min(values))} .. {us(max(values))}"
        print(f"  {name:<28} {us(medians[name]):>12} {spread:>24} {loops[name]:>6}")
    low, high = medians.values()
    ratio = high / low
    print(f"  ratio soft=hard / soft={LOW_SOFT_LIMIT}: {ratio:.2f}x")
    return ratio


def part_rlimit(args: argparse.Namespace) -> None:
    import pytest_noinherit

    print(
        f"Part 2: public snapshot() with {RLIMIT_OPEN_FDS} fds open, soft RLIMIT_NOFILE"
        f" {LOW_SOFT_LIMIT} vs hard (backend {pytest_noinherit.backend()})"
    )
    ratio = compare_limits(args, "auto")
    if ratio is None:
        return
    spread = max(ratio, 1 / ratio)
    verdict(
        spread <= TARGET_RLIMIT_SPREAD,
        f"RLIMIT soft {LOW_SOFT_LIMIT} vs hard: {ratio:.2f}x"
        f" (target within {TARGET_RLIMIT_SPREAD - 1:.0%})",
    )


def part_scan(args: argparse.Namespace) -> None:
    import pytest_noinherit

    print(
        f"Part 3 (information): snapshot('scan'), the generic poll over every slot"
        f" below the soft limit, {RLIMIT_OPEN_FDS} fds open (backend"
        f" {pytest_noinherit.backend()})"
    )
    ratio = compare_limits(args, "scan")
    if ratio is not None:
        print(f"INFO  scan method, soft hard vs {LOW_SOFT_LIMIT}: {ratio:.2f}x (no target)")


# -- part 4: the per-test check ----------------------------------------------------

CHECK_CHILD = """
import os, resource, sys
from pytest_noinherit import fdtable
size, calls, flags = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
missing = size - len(os.listdir("/proc/self/fd")) + 1
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(missing)]
for fd in held[::2]:
    os.set_inheritable(fd, True)
table = fdtable.snapshot_since(fdtable.snapshot(), flags)
for _ in range(calls):
    assert fdtable.snapshot_since(table, flags) is table
"""


def counted(tool: str, size: int, flags: bool, calls: int) -> int:
    """System calls (strace) or instructions (cachegrind) of a CHECK_CHILD run."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        out = os.path.join(tmp, "out")
        if tool == "strace":
            cmd = ["strace", "-f", "-c", "-o", out]
        else:
            cmd = ["valgrind", "-q", "--tool=cachegrind", "--cache-sim=no"]
            cmd.append(f"--cachegrind-out-file={out}")
        cmd += [sys.executable, "-c", CHECK_CHILD, str(size), str(calls), "1" if flags else "0"]
        subprocess.run(cmd, check=True, capture_output=True)
        with open(out, encoding="utf-8") as f:
            text = f.read()
    if tool == "strace":
        # % time, seconds, usecs/call, calls, [errors,] syscall
        last = [line.split() for line in text.splitlines() if line.strip().endswith("total")]
        return int(last[-1][3]) if last else 0
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("summary:")))


def part_check(args: argparse.Namespace) -> None:
    import shutil

    from pytest_noinherit import fdtable

    raise_soft_limit()
    print(
        "Part 4: the per-test check when nothing changed,"
        " fdtable.snapshot_since(table, flags) with descriptors held"
        f" (median of {args.repeat} interleaved repetitions)"
    )
    pool = DevNullPool()
    timed: dict[tuple[int, bool], float] = {}
    try:
        for size in FIXED_SIZES:
            got = pool.fill_to(size)
            tables = {flags: fdtable.snapshot_since(fdtable.snapshot(), flags) for flags in (0, 1)}
            cases = [
                Case(
                    f"{'strict (flags)' if flags else 'default (numbers)'}",
                    lambda flags=flags, tables=tables: fdtable.snapshot_since(
                        tables[flags], bool(flags)
                    ),
                )
                for flags in (0, 1)
            ]
            measure(cases, args.repeat, args.min_batch)
            for flags, case in zip((False, True), cases):
                timed[(size, flags)] = case.median
            print(
                f"  {got:>6} fds: default {us(cases[0].median)} µs,"
                f" strict {us(cases[1].median)} µs per check"
            )
    finally:
        pool.close_all()
    syscalls: dict[tuple[int, bool], float] = {}
    if args.counts:
        tools = [t for t in ("strace", "valgrind") if shutil.which(t)]
        print(f"  counted ({', '.join(tools) or 'no strace, no valgrind'}), per check:")
        for size in FIXED_SIZES:
            for flags in (False, True):
                per = {
                    tool: (counted(tool, size, flags, CHECK_CALLS) - counted(tool, size, flags, 0))
                    / CHECK_CALLS
                    for tool in tools
                }
                syscalls[(size, flags)] = per.get("strace", -1)
                text = ", ".join(
                    f"{per[t]:,.1f} {'syscalls' if t == 'strace' else 'instructions'}"
                    for t in tools
                )
                print(f"  {size:>6} fds, {'strict ' if flags else 'default'}: {text}")
    print()
    big, small = timed[(TARGET_LARGE_FDS, False)], timed[(FIXED_SIZES[0], False)]
    verdict(
        big <= TARGET_CHECK_SECONDS,
        f"{TARGET_LARGE_FDS} fds, default mode: the check takes {us(big)} µs"
        f" (target <= {us(TARGET_CHECK_SECONDS)} µs)",
    )
    verdict(
        big / small <= TARGET_CHECK_FLAT,
        f"default mode, {TARGET_LARGE_FDS} vs {FIXED_SIZES[0]} fds: {big / small:.2f}x"
        f" (target: flat within {TARGET_CHECK_FLAT:.0f}x)",
    )
    if (TARGET_LARGE_FDS, False) in syscalls and syscalls[(TARGET_LARGE_FDS, False)] >= 0:
        calls = syscalls[(TARGET_LARGE_FDS, False)]
        verdict(
            calls <= TARGET_CHECK_SYSCALLS,
            f"{TARGET_LARGE_FDS} fds, default mode: {calls:.1f} system calls per check"
            f" (target <= {TARGET_CHECK_SYSCALLS})",
        )


# -- driver --------------------------------------------------------------------


def run_parts(args: argparse.Namespace) -> int:
    """Run each part in a fresh interpreter, echo it, then repeat the verdicts."""
    env = dict(os.environ)
    # Benchmark the compiled core: fail loudly rather than quietly fall back.
    env.setdefault(BACKEND_ENV, "native")
    verdicts: list[str] = []
    status = 0
    for part in PARTS:
        cmd = [sys.executable, "-u", os.path.abspath(__file__), "--part", part]
        cmd += ["--repeat", str(args.repeat), "--rounds", str(args.rounds)]
        cmd += ["--min-batch", str(args.min_batch), "--max-fds", str(args.max_fds)]
        cmd += ["--counts"] if args.counts else []
        print(flush=True)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.startswith(("PASS", "FAIL", "SKIP", "INFO")):
                    verdicts.append(line.rstrip("\n"))
        if proc.returncode != 0:
            print(f"part {part!r} exited with status {proc.returncode}")
            status = 1
    print("\nSummary")
    for line in verdicts:
        print(f"  {line}")
    return status


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--repeat", type=int, help="timed batches per case (default 11; quick 5)")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds in parts 2-3 (default 7; quick 3)"
    )
    parser.add_argument(
        "--min-batch",
        type=float,
        help="seconds one batch lasts at least (default 0.02; quick 0.005)",
    )
    parser.add_argument(
        "--max-fds",
        type=int,
        default=100_000,
        help="cap for the hard-limit table size (default 100000)",
    )
    parser.add_argument(
        "--counts",
        action="store_true",
        help="part 4: also count system calls (strace) and instructions (valgrind) per check",
    )
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in-process
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 5 if args.quick else 11
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.min_batch is None:
        args.min_batch = 0.005 if args.quick else 0.02
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.isdir(FD_DIR):
        print(f"{FD_DIR} is missing: this benchmark is for Linux", file=sys.stderr)
        return 2
    if args.part is None:
        return run_parts(args)
    try:
        import pytest_noinherit.native  # noqa: F401
    except ImportError as exc:
        print(f"the native core is not built ({exc}); nothing to compare", file=sys.stderr)
        return 2
    parts = {"size": part_size, "parallel": part_parallel, "rlimit": part_rlimit}
    parts |= {"scan": part_scan, "check": part_check}
    parts[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
