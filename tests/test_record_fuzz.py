"""The record channel end to end under random input: every outcome kept, nothing dropped."""

from __future__ import annotations

import json
import random
import re

import pytest

from pytest_noinherit import probe

pytestmark = pytest.mark.skipif(probe.library() is None, reason="exec probe not built")

SEED = 446
TESTS = 12

# Runs as a real child of each inner test: makes the entries one spec lists
# in the record directory, the way a misbehaving program would.
MAKER = r"""
import json, os, socket, sys
spec = json.load(open(sys.argv[1], encoding="utf-8"))
d = os.environ["NOINHERIT_PROBE_DIR"]
os.chdir(d)  # relative names: a socket's path must stay short
ppid = os.getppid()
for e in spec:
    name, kind = e["name"], e["kind"]
    if kind == "bytes":
        with open(name, "wb") as f:
            f.write(bytes.fromhex(e["data"]).replace(b"@PPID@", str(ppid).encode()))
    elif kind == "huge":
        with open(name, "wb") as f:
            f.truncate(e["size"])
    elif kind == "dir":
        os.makedirs(os.path.join(name, *e["nest"]))
        with open(os.path.join(name, *e["nest"], "1-1.rec"), "wb") as f:
            f.write(b"inside")
    elif kind == "fifo":
        os.mkfifo(name)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(name)
        s.close()
    elif kind == "symlink":
        os.symlink(e["target"], name)
"""

HEADER = "noinherit-probe 1\npid {pid}\nppid {ppid}\ntime {time}\nexe /bin/fuzz\nargv {argv}\n"


def random_name(rng: random.Random, taken: set[str]) -> str:
    """A name of digits of other scripts, letters, dots, or a plain record name; unique."""
    while True:
        choice = rng.randrange(5)
        if choice == 0:
            stem = f"{rng.randrange(1, 99999)}-{rng.randrange(10**12)}"
        elif choice == 1:  # digits str.isdigit() takes and int() refuses, and some it takes
            stem = "1-" + "".join(
                rng.choice("\u00b2\u00b3\U00010a40\u0663\u096a7") for _ in range(3)
            )
        elif choice == 2:
            stem = "".join(rng.choice("ab.\u00e9\u4e2d ") for _ in range(rng.randrange(1, 12)))
        elif choice == 3:
            stem = "x" * rng.randrange(100, 200)
        else:
            stem = "." + rng.choice(["", ".", "rec", "json"])
        name = stem + rng.choice([".rec", ".json"])
        if name not in taken and len(name.encode()) < 250:
            taken.add(name)
            return name


def random_entry(rng: random.Random, name: str, elsewhere: str, k: int) -> tuple[dict, str]:
    """One entry's spec, and what it is: 'clean', 'problem', or the argv of an incomplete one."""
    roll = rng.randrange(10)
    if not name.endswith(".rec") and roll < 2:
        roll = 9  # only the probe writes .rec records
    what = "problem"
    if roll == 0:  # a good record of an unrelated process: nothing to say
        text = HEADER.format(pid=10**6 + k, ppid=1, time=k, argv="fuzz-clean") + "end\n"
        entry: dict = {"kind": "bytes", "data": text.encode().hex()}
        what = "clean"
    elif roll == 1:  # a record of a child of the test that says it is incomplete
        what = f"fuzz-truncated-{k}"
        text = HEADER.format(pid=2 * 10**6 + k, ppid="@PPID@", time=k, argv=what)
        entry = {"kind": "bytes", "data": (text + "truncated\nend\n").encode().hex()}
    elif roll == 2:  # cut short
        text = HEADER.format(pid=3 * 10**6 + k, ppid=1, time=k, argv="x")
        entry = {"kind": "bytes", "data": text.encode()[: rng.randrange(len(text))].hex()}
    elif roll == 3:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        entry = {"kind": "bytes", "data": data.hex()}
    elif roll == 4:
        entry = {"kind": "huge", "size": (64 << 20) + rng.randrange(1, 10**9)}
    elif roll == 5:
        nest = [rng.choice(["a", "b.rec", "\u00b2"]) for _ in range(rng.randrange(4))]
        entry = {"kind": "dir", "nest": nest}
    elif roll == 6:
        entry = {"kind": "fifo"}
    elif roll == 7 and len(name.encode()) < 90:
        entry = {"kind": "socket"}
    elif roll == 8:
        entry = {"kind": "symlink", "target": elsewhere}
    else:
        entry = {"kind": "bytes", "data": ""}  # empty
    return entry, what


def test_random_entries_are_each_reported_and_outcomes_kept(pytester: pytest.Pytester) -> None:
    """Random names, kinds and contents from real children: every bad entry listed, none hidden."""
    rng = random.Random(SEED)
    elsewhere = pytester.path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not to be followed")
    (pytester.path / "maker.py").write_text(MAKER)
    taken: set[str] = set()
    problems: list[str] = []
    incomplete: list[str] = []
    tests = []
    failing = 0
    for t in range(TESTS):
        spec = []
        truncated_child = False
        for _ in range(rng.randrange(1, 9)):
            k = len(taken)
            name = random_name(rng, taken)
            entry, what = random_entry(rng, name, str(elsewhere), k)
            spec.append({"name": name, **entry})
            if what == "problem":
                problems.append(name)
            elif what != "clean":
                incomplete.append(what)
                truncated_child = True
        (pytester.path / f"spec{t}.json").write_text(json.dumps(spec), encoding="utf-8")
        fails = rng.random() < 0.3
        # Strict mode: a child whose table was not seen whole is never clean.
        failing += fails or truncated_child
        tests.append(
            f"def test_{t}():\n"
            f"    subprocess.run([sys.executable, 'maker.py', 'spec{t}.json'], check=True)\n"
            + (f"    assert False, 'own failure {t}'\n" if fails else "")
        )
    pytester.makepyfile("import subprocess, sys\n\n" + "\n".join(tests))
    result = pytester.runpytest("-p", "noinherit", "--noinherit-strict", "--noinherit-probe=on")

    result.assert_outcomes(passed=TESTS - failing, failed=failing)
    out = "\n".join(result.outlines)
    assert "INTERNALERROR" not in out
    for t in range(TESTS):
        if f"own failure {t}'" in "".join(tests):
            assert f"AssertionError: own failure {t}" in out
    # Every bad entry is named, or counted in a line that sums up many.
    summed = sum(int(n) for n in re.findall(r"(\d+) more entries", out))
    unnamed = [name for name in problems if name not in out]
    assert len(unnamed) <= summed, unnamed
    # ...and bounded: never more lines than entries.
    lines = [line for line in result.outlines if "could not inspect" in line]
    assert len(lines) <= len(problems)
    # A record that says it is incomplete is never passed over in silence.
    for argv in incomplete:
        assert argv in out
    assert (elsewhere / "keep").read_text() == "not to be followed"
