"""Differential, property-based tests: the native core against the pure-Python reference.

A Hypothesis state machine (``RuleBasedStateMachine``) opens, duplicates,
closes, re-flags and seals descriptors in random order.  After every step
both backends must give the same snapshot, the same ``snapshot_since`` and the
same :func:`fdtable.describe` details; now and then a real child is started
(``subprocess.run(close_fds=False)`` and ``os.posix_spawn`` with random file
actions) and what it lists in ``/proc/self/fd`` must be exactly what the
parent's table and spawns.py predicted.

The machine only ever touches descriptors it created itself: numbers that
were open before it started (stdio, pytest's capture files, xdist's channel)
are never closed, dup2'ed over or sealed, and every descriptor it made is
closed in teardown.  The example budget is fixed and derandomized, so CI time
is bounded and a failure replays the same way everywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from pytest_noinherit import fdtable, pure  # noqa: E402
from pytest_noinherit.fdtable import FdTable  # noqa: E402
from pytest_noinherit.spawns import SpawnTracker, _after_file_actions  # noqa: E402

native: ModuleType = pytest.importorskip("pytest_noinherit.native", reason="native core not built")

pytestmark = [
    # Handing descriptors to real children is what these tests check: with the
    # plugin on this suite itself, every descriptor they pass is allowed.
    pytest.mark.allow_inherit,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the reference listing is /proc/self/fd"
    ),
]

# Descriptors the machine may hold at once: enough for interesting tables,
# few enough that every step's describe() of all of them stays cheap.
MAX_OWN = 24
# What a child reports: every descriptor it holds as "fd dev ino", read
# before it opens anything itself (-S: no site hooks such as coverage's .pth
# may open a file first).  The listing's own descriptor is closed by the time
# fstat runs, so EBADF leaves it out.
CHILD_CODE = """
import os
for name in os.listdir("/proc/self/fd"):
    try:
        st = os.fstat(int(name))
    except OSError:
        continue
    print(name, st.st_dev, st.st_ino)
"""
CHILD = [sys.executable, "-S", "-c", CHILD_CODE]
KINDS = [
    "file",
    "devnull",
    "dir",
    "opath",
    "deleted",
    "memfd",
    "epoll",
    "pidfd",
    "pty",
    "tcp",
    "tcp6",
    "udp_bound",
    "unix_path",
    "unix_abstract",
]
if hasattr(os, "eventfd"):  # 3.10+
    KINDS.append("eventfd")


def _can_open(family: int, kind: int) -> bool:
    """Whether this kernel and these privileges allow a socket of family and kind."""
    try:
        socket.socket(family, kind, 0).close()
    except OSError:
        return False
    return True


# Families whose addresses the backends decode by hand (netlink, packet) or
# cannot read at all (AF_XDP: getsockname is EOPNOTSUPP).
AF_XDP = 44
KINDS.append("netlink")
if _can_open(socket.AF_PACKET, socket.SOCK_DGRAM):  # root or CAP_NET_RAW
    KINDS.append("packet")
if _can_open(AF_XDP, socket.SOCK_RAW):
    KINDS.append("xdp")
BACKENDS = {"native": native, "pure": pure}


def rows(words: Iterable[int]) -> list[tuple[int, ...]]:
    """The five-word entries of a raw snapshot, as tuples."""
    w = list(words)
    return [tuple(w[i : i + 5]) for i in range(0, len(w), 5)]


@contextlib.contextmanager
def backend_for_describe(impl: ModuleType) -> Iterator[None]:
    """fdtable.describe() with impl as the backend (as tests/test_backends.py swaps it)."""
    original = fdtable._choice
    fdtable._choice = lambda: (impl, impl.__name__, "test")  # type: ignore[assignment]
    try:
        yield
    finally:
        fdtable._choice = original


def _slot_is_free(fd: int, source: int) -> bool:
    """Whether descriptor number fd is neither open nor reserved by another thread.

    A thread blocked in accept(2) holds the number it will return: Linux
    reserves it (get_unused_fd_flags) before waiting and installs the file
    only when a connection arrives (__sys_accept4_file).  No listing shows a
    reserved number, F_GETFD says EBADF, yet dup2 onto it fails with EBUSY
    (fs/file.c, do_dup2).  pytest-rerunfailures keeps such a thread in every
    process where xdist is installed but not in use (its status server), so
    in a plain run the lowest free number -- often max(before) + 1, the first
    dup2 target -- was taken, depending on what pytest had open when that
    thread started.  F_DUPFD gives the lowest number >= fd that is neither
    open nor reserved, and never replaces anything (source: any open descriptor).
    """
    probe = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, fd)
    os.close(probe)
    return probe == fd


def child_listing(output: str) -> dict[int, tuple[int, int]]:
    """fd -> (dev, ino) from CHILD_CODE's output."""
    out = {}
    for line in output.split("\n"):
        if line:
            fd, dev, ino = map(int, line.split())
            out[fd] = (dev, ino)
    return out


@dataclass
class Own:
    """One descriptor the machine made: what it refers to and the flag it should have."""

    identity: tuple[int, int]
    inheritable: bool


class DescriptorMachine(RuleBasedStateMachine):
    """Random descriptor-table histories; after each step the backends must agree."""

    def __init__(self) -> None:
        super().__init__()
        # (the reference's snapshot, not os.listdir: a listing shows its own descriptor)
        self.before = set(FdTable(pure.snapshot()).fds())
        self.own: dict[int, Own] = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="noinherit-diff-")
        self.counter = 0
        # dup2 targets and seal bounds: above everything that was open, and
        # across the 1024 boundary where select()-style bitmaps end.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        high = max(self.before) + 1
        candidates = [high + i for i in range(6)] + [1023, 1024, 1025, 4095]
        source = min(self.before)
        self.targets = sorted(t for t in set(candidates) if t < soft and _slot_is_free(t, source))
        start = FdTable(pure.snapshot())
        self.baseline_inheritable = {e.fd for e in start.inheritable() if e.fd >= 3}
        self.baseline_keys = start.keys()
        self.previous = native.snapshot()
        self._model: dict[int, tuple[tuple[int, int], bool]] = {}

    # -- helpers ----------------------------------------------------------------

    def _adopt(self, fd: int, inheritable: bool) -> int:
        assert fd not in self.before, f"the kernel handed out {fd}, which was open before"
        os.set_inheritable(fd, inheritable)
        st = os.fstat(fd)
        self.own[fd] = Own((st.st_dev, st.st_ino), inheritable)
        return fd

    def _pick(self, index: int) -> int:
        fds = sorted(self.own)
        return fds[index % len(fds)]

    def _path(self, name: str) -> str:
        self.counter += 1
        return os.path.join(self.tmp.name, f"{name}-{self.counter}")

    def _forget(self, fd: int) -> None:
        del self.own[fd]

    def _has_room(self) -> bool:
        return len(self.own) <= MAX_OWN - 2

    # -- rules ------------------------------------------------------------------

    @precondition(_has_room)
    @rule(kind=st.sampled_from(KINDS), inheritable=st.booleans())
    def open(self, kind: str, inheritable: bool) -> None:
        """Open one descriptor of some kind (two for a pty)."""
        fds = self._open_kind(kind)
        for fd in fds:
            self._adopt(fd, inheritable)

    def _open_kind(self, kind: str) -> list[int]:  # noqa: PLR0911 - one branch per kind
        if kind == "file":
            return [os.open(self._path("f"), os.O_CREAT | os.O_RDWR)]
        if kind == "devnull":
            return [os.open(os.devnull, os.O_RDONLY)]
        if kind == "dir":
            return [os.open(self.tmp.name, os.O_RDONLY | os.O_DIRECTORY)]
        if kind == "opath":
            return [os.open(self.tmp.name, os.O_PATH)]
        if kind == "deleted":
            path = self._path("gone")
            fd = os.open(path, os.O_CREAT | os.O_RDWR)
            os.unlink(path)
            return [fd]
        if kind == "memfd":
            return [os.memfd_create("diff")]
        if kind == "eventfd":
            return [os.eventfd(0)]
        if kind == "epoll":
            ep = select.epoll()
            fd = os.dup(ep.fileno())
            ep.close()
            return [fd]
        if kind == "pidfd":
            return [os.pidfd_open(os.getpid())]
        if kind == "pty":
            return list(os.openpty())
        return [self._socket(kind)]

    def _socket(self, kind: str) -> int:  # noqa: PLR0911 - one branch per kind
        if kind == "tcp":
            return socket.socket().detach()
        if kind == "tcp6":
            family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
            return socket.socket(family).detach()
        if kind == "udp_bound":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            return s.detach()
        if kind == "netlink":
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            s.bind((0, 0))
            return s.detach()
        if kind == "packet":  # protocol 0: receives nothing
            return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0).detach()
        if kind == "xdp":
            return socket.socket(AF_XDP, socket.SOCK_RAW, 0).detach()
        s = socket.socket(socket.AF_UNIX)
        if kind == "unix_path":
            s.bind(self._path("s.sock"))
        else:  # abstract namespace: the name starts with a NUL byte
            # with bytes a report must escape: NUL, newline, not UTF-8
            s.bind(b"\0noinherit-diff\0\n\xff-%d-%d" % (os.getpid(), self.counter))
            self.counter += 1
        return s.detach()

    @precondition(_has_room)
    @rule(inheritable_r=st.booleans(), inheritable_w=st.booleans())
    def pipe(self, inheritable_r: bool, inheritable_w: bool) -> None:
        """A pipe, each end flagged independently."""
        r, w = os.pipe()
        self._adopt(r, inheritable_r)
        self._adopt(w, inheritable_w)

    @precondition(_has_room)
    @rule(
        kind=st.sampled_from([socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET]),
        inheritable=st.booleans(),
    )
    def socketpair(self, kind: int, inheritable: bool) -> None:
        """A connected pair of unnamed AF_UNIX sockets."""
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        self._adopt(a.detach(), inheritable)
        self._adopt(b.detach(), not inheritable)

    @precondition(lambda self: self.own and self._has_room())
    @rule(index=st.integers(0, 63))
    def dup(self, index: int) -> None:
        """os.dup: the same open file, never inheritable (PEP 446)."""
        fd = self._pick(index)
        new = os.dup(fd)
        assert new not in self.before
        self.own[new] = Own(self.own[fd].identity, False)

    @precondition(lambda self: self.own)
    @rule(index=st.integers(0, 63), slot=st.integers(0, 63), inheritable=st.booleans())
    def dup2(self, index: int, slot: int, inheritable: bool) -> None:
        """os.dup2 onto a high number, replacing whatever the machine had there."""
        fd = self._pick(index)
        target = self.targets[slot % len(self.targets)]
        if fd == target:
            return  # dup2(fd, fd) changes nothing and dup3 refuses it (EINVAL)
        os.dup2(fd, target, inheritable=inheritable)
        self.own[target] = Own(self.own[fd].identity, inheritable)

    @precondition(lambda self: self.own)
    @rule(index=st.integers(0, 63))
    def close(self, index: int) -> None:
        """os.close one of ours."""
        fd = self._pick(index)
        os.close(fd)
        self._forget(fd)

    @precondition(lambda self: self.own)
    @rule(
        index=st.integers(0, 63),
        value=st.booleans(),
        via=st.sampled_from(["os", "native", "pure"]),
    )
    def set_inheritable(self, index: int, value: bool, via: str) -> None:
        """Flip the flag through os or either backend; all three must read it back."""
        fd = self._pick(index)
        setter = os.set_inheritable if via == "os" else BACKENDS[via].set_inheritable
        setter(fd, value)
        self.own[fd].inheritable = value
        assert os.get_inheritable(fd) is value
        assert native.get_inheritable(fd) is value
        assert pure.get_inheritable(fd) is value

    @precondition(lambda self: self.own)
    @rule(
        low_index=st.integers(0, 63),
        keep=st.lists(st.integers(0, 63), max_size=3),
        via=st.sampled_from(["native", "pure"]),
    )
    def seal(self, low_index: int, keep: list[int], via: str) -> None:
        """seal(low, keep) with low above every descriptor the machine did not make."""
        floor = max(self.before) + 1
        lows = sorted({floor, *(fd for fd in self.own if fd >= floor), *self.targets})
        low = lows[low_index % len(lows)]
        kept = {self._pick(i) for i in keep}
        BACKENDS[via].seal(low, sorted(kept))
        for fd, own in self.own.items():
            if fd >= low and fd not in kept:
                own.inheritable = False

    @rule()
    def spawn_subprocess(self) -> None:
        """A real child started with close_fds=False holds exactly the predicted descriptors."""
        table = FdTable(native.snapshot())
        proc = subprocess.run(CHILD, close_fds=False, capture_output=True, text=True, check=True)
        received = child_listing(proc.stdout)
        predicted = {e.fd: e.identity for e in table.inheritable() if e.fd >= 3}
        assert {fd: v for fd, v in received.items() if fd >= 3} == predicted
        mine = {fd for fd, own in self.own.items() if own.inheritable}
        assert set(predicted) - self.baseline_inheritable == mine
        # spawns.py's verdict for this route: the undeclared descriptors.
        tracker = SpawnTracker(self.baseline_keys, self.tmp.name)
        for impl in (native, pure):
            undeclared = tracker._undeclared(FdTable(impl.snapshot()))
            assert {e.fd for e in undeclared} == mine

    @rule(
        actions=st.lists(
            st.tuples(
                st.sampled_from(["close", "dup2", "open"]),
                st.integers(0, 63),
                st.integers(0, 63),
            ),
            max_size=4,
        )
    )
    def spawn_posix(self, actions: list[tuple[str, int, int]]) -> None:
        """os.posix_spawn with file actions: the child holds what _after_file_actions predicts."""
        # The child's stdout pipe exists before the table is read, so its
        # numbers are in the model (close-on-exec) and no action targets them.
        rfd, wfd = os.pipe()
        try:
            table = FdTable(native.snapshot())
            file_actions = self._file_actions(table, actions, exclude={rfd, wfd})
            pid = os.posix_spawn(
                sys.executable,
                CHILD,
                os.environ,
                file_actions=[*file_actions, (os.POSIX_SPAWN_DUP2, wfd, 1)],
            )
            os.close(wfd)
            wfd = -1
            with os.fdopen(rfd, closefd=False) as out:
                text = out.read()
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        model = self._model
        received = {fd: v for fd, v in child_listing(text).items() if fd >= 3}
        expected = {fd: ident for fd, (ident, inh) in model.items() if inh and fd >= 3}
        assert received == expected
        # spawns.py: what survives the actions, minus what the actions declare.
        targets = {a[2] if a[0] == os.POSIX_SPAWN_DUP2 else a[1] for a in file_actions}
        survivors = _after_file_actions(table, file_actions)
        tracker = SpawnTracker(self.baseline_keys, self.tmp.name)
        predicted = {e.fd: e.identity for e in tracker._undeclared(survivors)}
        undeclared_received = {
            fd: ident
            for fd, ident in received.items()
            if fd not in targets and (fd, *ident) not in self.baseline_keys
        }
        assert predicted == undeclared_received

    def _file_actions(
        self, table: FdTable, actions: list[tuple[str, int, int]], exclude: set[int]
    ) -> list[tuple[object, ...]]:
        """posix_spawn file actions on the machine's numbers, and (in self._model) our
        own prediction of the child's table, action by action (posix_spawn(3))."""
        numbers = [fd for fd in sorted(self.own) + self.targets if fd not in exclude]
        model = {e.fd: (e.identity, e.inheritable) for e in table}
        null = os.stat(os.devnull)
        file_actions: list[tuple[object, ...]] = []
        for name, a, b in actions:
            fd = numbers[a % len(numbers)]
            if name == "close":
                if fd not in model:
                    continue  # closing a closed descriptor is an error for some libcs
                file_actions.append((os.POSIX_SPAWN_CLOSE, fd))
                del model[fd]
            elif name == "dup2":
                sources = [
                    n
                    for n in sorted(model)
                    if n not in exclude and (n in self.own or n in self.targets)
                ]
                if not sources:
                    continue
                source = sources[b % len(sources)]
                file_actions.append((os.POSIX_SPAWN_DUP2, source, fd))
                # dup2 onto itself clears FD_CLOEXEC too (POSIX 2017; glibc >= 2.29)
                model[fd] = (model[source][0], True)
            else:
                file_actions.append((os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDONLY, 0))
                model[fd] = ((null.st_dev, null.st_ino), True)
        self._model = model
        return file_actions

    # -- after every step ------------------------------------------------------

    @invariant()
    def backends_agree(self) -> None:
        """Snapshots, snapshot_since and the flags the machine expects."""
        now_native = native.snapshot()
        now_pure = pure.snapshot()
        assert rows(now_native) == rows(now_pure)
        for method in ("poll", "procfs", "scan"):
            assert rows(native.snapshot(method)) == rows(now_pure), method
        # snapshot_since must equal the truth, except in its documented blind
        # spot (a descriptor replaced in place with the same flag), where the
        # previous entry may be carried over.  The backends do not agree on
        # the blind spot: see test_snapshot_since_blind_spot_backends_agree.
        fresh = rows(now_pure)
        prev = {r[0]: r for r in rows(self.previous)}
        for impl in (native, pure):
            got = rows(impl.snapshot_since(self.previous))
            assert [r[:2] for r in got] == [r[:2] for r in fresh], impl.__name__
            for row, truth in zip(got, fresh):
                old = prev.get(row[0])
                if row != truth:
                    # only an entry carried over from previous, at the same flag
                    assert row == old, (impl.__name__, row, truth, old)
                    assert old[1] == truth[1], (impl.__name__, row, truth, old)
        table = FdTable(now_pure)
        for fd, own in self.own.items():
            entry = table[fd]
            assert (entry.identity, entry.inheritable) == (own.identity, own.inheritable), fd
        self.previous = now_native

    @invariant()
    def details_agree(self) -> None:
        """fdtable.describe() gives the same printable kind, target and addresses either way."""
        found = {}
        for impl in (native, pure):
            with backend_for_describe(impl):
                found[impl.__name__] = {fd: fdtable.describe(fd) for fd in self.own}
        assert found[native.__name__] == found[pure.__name__]
        for details in found[pure.__name__].values():
            assert str(details).isprintable(), details
            assert all(v is None or v.isprintable() for v in (details.target, details.local))

    def teardown(self) -> None:
        for fd in self.own:
            os.close(fd)
        self.own.clear()
        self.tmp.cleanup()
        leftover = set(FdTable(pure.snapshot()).fds()) - self.before
        assert not leftover, f"descriptors left open: {sorted(leftover)}"


DescriptorMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("NOINHERIT_DIFF_EXAMPLES", "40")),
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDescriptorMachine = DescriptorMachine.TestCase
TestDescriptorMachine.__doc__ = (
    "Random histories of open/dup/close/flag/seal: backends and children agree."
)


# Found by the machine above (kept as it was shrunk): pipe, dup2 onto a high
# number, another pipe, dup2 of it onto the same number with the same flag,
# while another thread of the process is blocked in accept(2) -- as
# pytest-rerunfailures' status server thread is whenever xdist is installed.
# accept() reserves a descriptor number before it blocks; the reservation is
# counted in /proc/self/fd's st_size but has no file, so the native poll
# path's completeness check (visible == st_size - 1) never holds and every
# native snapshot falls back to the procfs listing, which ignores
# ``previous``: native snapshot_since then reads the new identity while the
# pure reference carries the old one over.  Both are within the documented
# blind spot, but the backends disagree (and the native fast path is lost
# in any process with a thread in accept()).
BLIND_SPOT = """
import os, socket, threading, time
from pytest_noinherit import native, pure
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
threading.Thread(target=server.accept, daemon=True).start()
time.sleep(0.2)  # let the thread reach accept()
r1, w1 = os.pipe()
os.dup2(r1, 100, inheritable=False)
r2, w2 = os.pipe()
previous = native.snapshot()
os.dup2(r2, 100, inheritable=False)
def at_100(words):
    words = list(words)
    return [tuple(words[i : i + 5]) for i in range(0, len(words), 5) if words[i] == 100]
print(at_100(native.snapshot_since(previous)) == at_100(pure.snapshot_since(previous)))
"""


def test_snapshot_since_blind_spot_backends_agree() -> None:
    """The differential machine's failing example: both backends treat the blind spot alike."""
    proc = subprocess.run(
        [sys.executable, "-c", BLIND_SPOT], capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == ["True"]
