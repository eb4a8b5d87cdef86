"""Patch mode's cost on the hot creators: ``open()`` and ``socket.socket()``.

Run by hand (``python benchmarks/bench_patch.py [--rounds N]``); POSIX only.
Each loop creates and closes one object per iteration: ``open(path).close()``
on a regular file in the temporary directory (text mode, as most code opens
files) and ``socket.socket().close()``.  Every loop runs with the patches of
:mod:`pytest_noinherit.creators` installed and without, alternating batch by
batch (A B A B ...), so that a noisy neighbour hurts both alike; the loop
count is calibrated so that one batch lasts ``--min-batch`` seconds.  The
figures are medians of the per-iteration time; the ratio is patched over
plain, measured in this process.

Target (from the issue): at most 1.20 for both loops.  ``os.pipe()`` is
shown for information: integer creators read the descriptor's identity at
once (one ``os.fstat`` each), which the object creators defer.

The exit status is 0 either way: numbers on a shared machine are noisy
(expect +-30 % on a busy 2-vCPU VM); rerun before believing a FAIL.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Callable

from pytest_noinherit import creators

TARGET = 1.20


def open_loop(path: str) -> Callable[[int], None]:
    def run(loops: int) -> None:
        for _ in range(loops):
            open(path).close()

    return run


def socket_loop(loops: int) -> None:
    for _ in range(loops):
        socket.socket().close()


def pipe_loop(loops: int) -> None:
    for _ in range(loops):
        r, w = os.pipe()
        os.close(r)
        os.close(w)


def batch(run: Callable[[int], None], loops: int, patched: bool) -> float:
    """Seconds per iteration of one batch, with or without the patches."""
    undo = creators.install(creators.CreationRecords(), lambda: "bench_patch.py::loop")
    if not patched:
        undo()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        run(loops)
        return (time.perf_counter() - start) / loops
    finally:
        if gc_was_enabled:
            gc.enable()
        undo()


def calibrate(run: Callable[[int], None], min_batch: float) -> int:
    """The loop count that makes one unpatched batch last min_batch seconds."""
    loops = 100
    while True:
        took = batch(run, loops, patched=False) * loops
        if took >= min_batch:
            return loops
        loops = max(loops * 2, int(loops * min_batch / max(took, 1e-9) * 1.1))


def compare(name: str, run: Callable[[int], None], args: argparse.Namespace) -> tuple[float, float]:
    """(plain, patched) medians in seconds per iteration."""
    loops = calibrate(run, args.min_batch)
    batch(run, loops, patched=True)  # warm-up of the patched path
    plain: list[float] = []
    patched: list[float] = []
    for i in range(args.rounds):
        # Alternate which goes first, so neither always runs on a warm cache.
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_patch in order:
            (patched if with_patch else plain).append(batch(run, loops, with_patch))
    a, b = statistics.median(plain), statistics.median(patched)
    print(
        f"{name:<28} plain {a * 1e9:8,.0f} ns   patched {b * 1e9:8,.0f} ns   "
        f"ratio {b / a:5.3f}   ({args.rounds} rounds x {loops} loops)",
        flush=True,
    )
    return a, b


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="batches of each (default 21)")
    parser.add_argument(
        "--min-batch", type=float, default=0.05, help="seconds per batch (default 0.05)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"Python {sys.version.split()[0]} on {sys.platform}; target ratio <= {TARGET:.2f}")
    fd, path = tempfile.mkstemp(prefix="bench-patch-")
    os.close(fd)
    try:
        results = {
            "open()+close()": compare("open()+close()", open_loop(path), args),
            "socket.socket()+close()": compare("socket.socket()+close()", socket_loop, args),
        }
        pipe_plain, pipe_patched = compare("os.pipe()+2 close (info)", pipe_loop, args)
    finally:
        os.unlink(path)
    failed = 0
    for name, (plain, patched) in results.items():
        ratio = patched / plain
        ok = ratio <= TARGET
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {ratio:.3f} <= {TARGET:.2f}")
    print(f"INFO  os.pipe()+2 close: {pipe_patched / pipe_plain:.3f} (not a target)")
    print(f"{len(results) - failed}/{len(results)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
