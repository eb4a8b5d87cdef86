#!/usr/bin/env python3
"""Coverage of the whole suite: Python in every process (with branches), C through gcov.

Usage: ``python tools/coverage.py [pytest arguments]`` (what ``tox -e cov`` runs).

The suite runs from a scratch copy of the checkout, so the instrumented
builds never replace the developer's normal ones:

* the native core is built in the copy by ``setup.py build_ext --inplace``
  with ``NOINHERIT_CFLAGS="--coverage -O0"``; the exec probe is rebuilt with
  ``--coverage`` and without ``-nostdlib`` (see :func:`build_probe`);
* ``PYTHONPATH`` puts the copy's package first in every process, and
  ``COVERAGE_PROCESS_START`` makes coverage's ``.pth`` hook call
  ``coverage.process_startup()`` in each interpreter: the outer pytest, xdist
  workers, pytester's inner sessions and the children the tests start.
  ``NOINHERIT_COVERAGE_FILE`` is where the data files go;
  ``.coveragerc`` asks for parallel data files and patches fork, ``_exit`` and
  exec so fork children save theirs; ``coverage combine`` joins them.

Floors (the run fails below any of them): Python 90 % of lines and 83 % of
branches of ``pytest_noinherit/`` with no file under 70 % (coverage.py's
per-file figure, lines and branches together); C 83 % of the lines of the
``_native/`` sources Linux compiles (gcovr summarises gcov's data).
Reports go to ``build/coverage/`` of the checkout.  The exit status is
pytest's when the suite failed, else 1 when a floor is missed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY_LINE_FLOOR = 90.0
# 83 and 70, not 85 and 75: kernel.py's failure paths (an observer that
# cannot start or install, one that dies in the middle of a command) are
# mostly unreachable on a kernel that supports all of it, as this one does.
# Raise them again once those paths have tests that fake the failures.
PY_BRANCH_FLOOR = 83.0
PY_FILE_FLOOR = 70.0
# 83, not 85: the core's two-thread fill runs only on an idle machine with
# two CPUs, and core_common.c carries the incremental read's fallback for
# the other POSIX systems; neither runs in this suite on Linux.
C_LINE_FLOOR = 83.0
# What a Linux build compiles (build_core.platform_source, setup.py's probe).
C_SOURCES = ("_native/core_common.c", "_native/core_linux.c", "_native/probe.c")
PROBE_NAME = "libnoinherit-probe.so"
# setup.py's PROBE_FLAGS less what cannot go with gcov: -nostdlib (libgcov
# needs libc), -Wl,-z,defs (libc is then resolved at load time), -s, -O2.
PROBE_COV_FLAGS = [
    "-ffreestanding",
    "-fno-builtin",
    "-fno-stack-protector",
    "-fPIC",
    "-fvisibility=hidden",
    "-O0",
    "--coverage",
]


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def tree_files(root: Path) -> list[str]:
    """The checkout's files: tracked ones and new ones git does not ignore."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist
        skip = {".git", ".tox", ".venv", "build", "dist", "__pycache__", "_probe"}
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
            files += [
                os.path.relpath(os.path.join(dirpath, f), root)
                for f in filenames
                if not f.endswith((".so", ".o", ".pyc"))
            ]
        return files
    return [name for name in out.decode().split("\0") if name]


def copy_tree(root: Path, dest: Path) -> None:
    # .gitignore's ".coverage*" (meant for data files) also matches .coveragerc.
    for name in {*tree_files(root), ".coveragerc"}:
        source = root / name
        if source.is_file():  # a tracked file deleted in the work tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def build_core(copy: Path, env: dict[str, str]) -> None:
    """The extension with gcov instrumentation; objects (.gcno/.gcda) stay in copy/build."""
    env = {**env, "NOINHERIT_CFLAGS": "--coverage -O0"}  # -O0 comes last and wins
    run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=copy, env=env)


def build_probe(copy: Path) -> None:
    """Replace every 64-bit probe that build_ext made with a gcov-instrumented one.

    The real probe is -nostdlib, but gcov's runtime (libgcov, linked
    statically) writes its .gcda files with libc at exit.  So the coverage
    build links libc dynamically -- the probe is only ever preloaded into
    glibc programs here -- and hides libgcov's symbols (--exclude-libs).
    The tests that check the real build's libc-free shape
    (test_probe_imports_and_exports_nothing) are deselected in this run.
    """
    cc = os.environ.get("CC", "cc").split()
    objdir = copy / "build" / "probe-cov"
    objdir.mkdir(parents=True, exist_ok=True)
    obj = objdir / "probe.o"
    linked = objdir / PROBE_NAME
    run([*cc, *PROBE_COV_FLAGS, "-c", "-o", str(obj), "_native/probe.c"], cwd=copy)
    run([*cc, "-shared", "--coverage", "-Wl,--exclude-libs,ALL", "-o", str(linked), str(obj)])
    for target in (copy / "pytest_noinherit" / "_probe").rglob(PROBE_NAME):
        if target.read_bytes()[4] == 2:  # ELFCLASS64; the -m32 stubs stay as built
            shutil.copyfile(linked, target)


def run_suite(copy: Path, env: dict[str, str], args: list[str]) -> int:
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), env.get("PYTHONPATH")])),
        "COVERAGE_PROCESS_START": str(copy / ".coveragerc"),
        "NOINHERIT_COVERAGE_FILE": str(copy / ".coverage"),
    }
    env.setdefault("PYTEST_NOINHERIT_BACKEND", "native")
    deselect = ["--deselect", "tests/test_probe_library.py::test_probe_imports_and_exports_nothing"]
    cmd = [sys.executable, "-m", "pytest", *deselect, *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=copy, env=env, check=False).returncode


def python_report(copy: Path, out: Path, env: dict[str, str]) -> list[str]:
    """Combine, report, and the floors this run missed."""
    env = {**env, "NOINHERIT_COVERAGE_FILE": str(copy / ".coverage")}
    rc = ["--rcfile", str(copy / ".coveragerc")]
    cov = [sys.executable, "-m", "coverage"]
    run([*cov, "combine", "--quiet", *rc], cwd=copy, env=env)
    text = subprocess.run(
        [*cov, "report", *rc], cwd=copy, env=env, check=False, capture_output=True, text=True
    ).stdout
    (out / "python.txt").write_text(text)
    run([*cov, "json", "--quiet", *rc, "-o", str(out / "python.json")], cwd=copy, env=env)
    shutil.copyfile(copy / ".coverage", out / ".coverage")
    print(text)
    data = json.loads((out / "python.json").read_text())
    totals = data["totals"]
    lines = 100.0 * totals["covered_lines"] / max(totals["num_statements"], 1)
    branches = 100.0 * totals["covered_branches"] / max(totals["num_branches"], 1)
    print(f"Python: {lines:.1f} % of lines, {branches:.1f} % of branches")
    missed = []
    if lines < PY_LINE_FLOOR:
        missed.append(f"Python lines {lines:.1f} % < {PY_LINE_FLOOR} %")
    if branches < PY_BRANCH_FLOOR:
        missed.append(f"Python branches {branches:.1f} % < {PY_BRANCH_FLOOR} %")
    for name, f in sorted(data["files"].items()):
        percent = f["summary"]["percent_covered"]
        if percent < PY_FILE_FLOOR:
            missed.append(f"{name} {percent:.1f} % < {PY_FILE_FLOOR} %")
    return missed


def c_report(copy: Path, out: Path) -> list[str]:
    """Line coverage of C_SOURCES from gcovr (a PyPI package: pip install gcovr)."""
    summary = out / "c-summary.json"
    run(
        [
            sys.executable,
            "-m",
            "gcovr",
            "--root",
            str(copy),
            *(a for src in C_SOURCES for a in ("--filter", str(copy / src))),
            "--txt",
            str(out / "c.txt"),
            "--json-summary",
            str(summary),
            str(copy / "build"),
        ],
        cwd=copy,
    )
    print((out / "c.txt").read_text())
    counts = {
        f["filename"]: (f["line_covered"], f["line_total"])
        for f in json.loads(summary.read_text())["files"]
    }
    missed = []
    covered = total = 0
    for src in C_SOURCES:
        hit, lines = counts.get(src, (0, 0))
        covered, total = covered + hit, total + lines
        percent = 100.0 * hit / lines if lines else 0.0
        print(f"C: {src}: {hit}/{lines} lines, {percent:.1f} %")
        if not lines:
            missed.append(f"{src}: no coverage data (not built or never run)")
    percent = 100.0 * covered / max(total, 1)
    print(f"C: total {covered}/{total} lines, {percent:.1f} %")
    if percent < C_LINE_FLOOR:
        missed.append(f"C lines {percent:.1f} % < {C_LINE_FLOOR} %")
    return missed


def main(args: list[str]) -> int:
    # Not "import coverage": run as a script, this very file would be found.
    version = importlib.metadata.version("coverage")
    if tuple(int(p) for p in version.split(".")[:2]) < (7, 10):
        # Older versions install no .pth hook that honours COVERAGE_PROCESS_START.
        sys.exit(f"coverage {version} is too old: pip install 'coverage>=7.10'")
    if importlib.util.find_spec("gcovr") is None:
        sys.exit("gcovr is needed for the C report: pip install gcovr")
    out = ROOT / "build" / "coverage"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    with tempfile.TemporaryDirectory(prefix="noinherit-cov-") as tmp:
        copy = Path(tmp)
        copy_tree(ROOT, copy)
        build_core(copy, env)
        build_probe(copy)
        status = run_suite(copy, env, args)
        missed = python_report(copy, out, env) + c_report(copy, out)
    print(f"reports in {out}")
    for line in missed:
        print(f"coverage floor missed: {line}")
    if status:
        print(f"the suite failed (pytest exit status {status})")
        return status
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
