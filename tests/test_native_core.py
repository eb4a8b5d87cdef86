"""Direct tests of the native core through pytest_noinherit.native (Linux).

The reference is what the kernel and CPython say: os.listdir("/proc/self/fd"),
os.get_inheritable and os.fstat.  Tests that change process-wide state (the
fd limit, sealing) run in a child interpreter so this process is untouched.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

native = pytest.importorskip("pytest_noinherit.native", reason="native core not built")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the reference listing is /proc/self/fd"
)

METHODS = sorted(native.METHODS)
PACKAGE_ROOT = str(Path(native.__file__).resolve().parent.parent)

Entry = tuple[int, int, int, int, int]


def strerror(code: int) -> str:
    """The message OSError carries for code, as a pattern for pytest.raises."""
    return re.escape(os.strerror(code))


def entries(table: array.array[int]) -> list[Entry]:
    """A snapshot array as (fd, flags, dev, ino, mode) tuples."""
    words = list(table)
    step = native.ENTRY_WORDS
    return [tuple(words[i : i + step]) for i in range(0, len(words), step)]  # type: ignore[misc]


def describe(fd: int) -> Entry:
    """The entry the core should report for fd, from os alone."""
    st = os.fstat(fd)
    return (fd, 0 if os.get_inheritable(fd) else 1, st.st_dev, st.st_ino, st.st_mode)


def is_open(fd: int) -> bool:
    """Whether fd is open now."""
    try:
        os.get_inheritable(fd)
    except OSError:
        return False
    return True


def reference() -> list[Entry]:
    """The table from /proc/self/fd, without the listing's own (now closed) fd."""
    fds = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    return [describe(fd) for fd in fds if is_open(fd)]


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[dict[str, int]]:
    """One descriptor of every kind the core must describe, closed afterwards."""
    fds: dict[str, int] = {}
    with contextlib.ExitStack() as stack:

        def keep(name: str, fd: int) -> None:
            fds[name] = fd
            stack.callback(os.close, fd)

        regular = tmp_path / "regular"
        regular.write_bytes(b"x")
        keep("file", os.open(regular, os.O_RDWR))
        keep("dir", os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
        keep("o_path", os.open(regular, os.O_PATH))
        r, w = os.pipe()
        keep("pipe_r", r)
        keep("pipe_w", w)
        a, b = socket.socketpair()
        keep("unix_a", a.detach())
        keep("unix_b", b.detach())
        inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        inet.bind(("127.0.0.1", 0))
        inet.listen()
        keep("inet", inet.detach())
        if hasattr(os, "eventfd"):
            keep("eventfd", os.eventfd(0))
        epoll = stack.enter_context(select.epoll())  # no detach(): keep the object
        fds["epoll"] = epoll.fileno()
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):  # ENOSYS before Linux 5.3
                keep("pidfd", os.pidfd_open(os.getpid()))
        keep("memfd", os.memfd_create("noinherit-test"))
        deleted = tmp_path / "deleted"
        deleted.write_bytes(b"")
        keep("deleted", os.open(deleted, os.O_RDONLY))
        deleted.unlink()
        keep("high", os.dup2(fds["file"], 1500))  # inheritable, as dup2 makes it
        inheritable = os.open(regular, os.O_RDONLY)
        os.set_inheritable(inheritable, True)
        keep("inheritable", inheritable)
        yield fds


def run_child(code: str) -> object:
    """Run code in a fresh interpreter that can import the package; return its JSON output."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


CHILD_HELPERS = """
import json, os, resource
from pytest_noinherit import native

def entries(table):
    words = list(table)
    return [words[i:i + 5] for i in range(0, len(words), 5)]

def describe(fd):
    st = os.fstat(fd)
    return [fd, 0 if os.get_inheritable(fd) else 1, st.st_dev, st.st_ino, st.st_mode]

def brute(upto):
    out = []
    for fd in range(upto):
        try:
            out.append(describe(fd))
        except OSError:
            pass
    return out
"""


@pytest.mark.parametrize("method", METHODS)
def test_quiet_process_matches_proc(method: str) -> None:
    """In a quiet process every method lists exactly what /proc/self/fd lists."""
    before = reference()
    got = entries(native.snapshot(method))
    assert got == before == reference()
    assert len(got) == len(os.listdir("/proc/self/fd")) - 1


@pytest.mark.parametrize("method", METHODS)
def test_every_kind_of_descriptor(method: str, zoo: dict[str, int]) -> None:
    """Every method sees files, dirs, O_PATH, pipes, sockets, anon inodes, memfd, fd 1500."""
    got = entries(native.snapshot(method))
    assert got == reference()
    by_fd = {e[0]: e for e in got}
    for name, fd in zoo.items():
        assert by_fd[fd] == describe(fd), name
    assert by_fd[zoo["inheritable"]][1] == 0
    assert by_fd[zoo["file"]][1] == native_flag_cloexec()


def native_flag_cloexec() -> int:
    """The flag bit for close-on-exec, read from the compiled module."""
    from pytest_noinherit._core import lib

    return int(lib.NIC_FLAG_CLOEXEC)


def test_snapshot_is_sorted_and_grows_its_buffer(tmp_path: Path) -> None:
    """A table much bigger than the last one comes back whole and in ascending order."""
    native.snapshot()
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(300)]
    try:
        got = entries(native.snapshot())
        fds = [e[0] for e in got]
        assert fds == sorted(fds)
        assert set(opened) <= set(fds)
        assert got == reference()
    finally:
        for fd in opened:
            os.close(fd)


def test_unknown_method_is_a_value_error() -> None:
    """A method name the core does not know raises ValueError."""
    with pytest.raises(ValueError, match="bogus"):
        native.snapshot("bogus")


def test_descriptor_above_soft_limit() -> None:
    """After the soft limit drops below an open fd, the /proc methods still list it."""
    result = run_child(
        CHILD_HELPERS
        + """
fd = os.dup2(os.open(os.devnull, os.O_RDONLY), 3000)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
truth = brute(hard)
out = {m: entries(native.snapshot(m)) for m in native.METHODS}
print(json.dumps({"truth": truth, "out": out}))
"""
    )
    assert isinstance(result, dict)
    truth = result["truth"]
    assert truth[-1][:2] == [3000, 0]
    for method, got in result["out"].items():
        if method == "scan":
            # poll() refuses nfds above the soft limit: the scan cannot see it.
            assert got == [e for e in truth if e[0] < 1024], method
        else:
            assert got == truth, method


def test_full_table_emfile() -> None:
    """With no descriptor left (EMFILE) every method still lists every fd."""
    result = run_child(
        CHILD_HELPERS
        + """
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
opened = []
try:
    while True:
        opened.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    assert exc.errno == 24, exc
os.set_inheritable(opened[-1], True)
out = {m: entries(native.snapshot(m)) for m in native.METHODS}
print(json.dumps({"truth": brute(hard), "out": out}))
"""
    )
    assert isinstance(result, dict)
    truth = result["truth"]
    assert [e[0] for e in truth] == list(range(64))
    for method, got in result["out"].items():
        assert got == truth, method


@pytest.mark.parametrize("kind", ["file", "o_path", "pipe_w", "inet"])
def test_get_set_inheritable_round_trip(kind: str, zoo: dict[str, int]) -> None:
    """set_inheritable flips the flag both ways, O_PATH included, as os sees it."""
    fd = zoo[kind]
    for wanted in (True, False, False, True, False):
        native.set_inheritable(fd, wanted)
        assert native.get_inheritable(fd) is wanted
        assert os.get_inheritable(fd) is wanted


def outcome(func: object, *args: object) -> tuple[type[BaseException] | None, int | None]:
    """What calling func(*args) raised: exception type and errno."""
    try:
        func(*args)  # type: ignore[operator]
    except BaseException as exc:  # the type is what we compare
        return type(exc), getattr(exc, "errno", None)
    return None, None


BAD_FDS = [-1, 99999, 2**31 - 1, 2**31, -(2**31) - 1, 2**70, 1.5, "3", None, b"3"]


@pytest.mark.parametrize("fd", BAD_FDS, ids=repr)
def test_bad_fd_raises_like_os(fd: object) -> None:
    """get/set_inheritable refuse a bad fd exactly as os.get/set_inheritable do."""
    assert outcome(native.get_inheritable, fd) == outcome(os.get_inheritable, fd)
    for flag in (True, False):
        assert outcome(native.set_inheritable, fd, flag) == outcome(os.set_inheritable, fd, flag)


@pytest.mark.parametrize("flag", ["x", None, 1.0, 2**40, -(2**40)], ids=repr)
def test_bad_flag_raises_like_os(flag: object, zoo: dict[str, int]) -> None:
    """set_inheritable refuses a non-integer or oversized flag as os.set_inheritable does."""
    fd = zoo["file"]
    assert outcome(native.set_inheritable, fd, flag) == outcome(os.set_inheritable, fd, flag)
    assert not os.get_inheritable(fd)


def test_bool_fd_is_accepted() -> None:
    """True is fd 1 for os.get_inheritable, and for the core too."""
    assert native.get_inheritable(True) == os.get_inheritable(True)


SEAL_CHILD = """
fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(6)]
fds.append(os.dup2(fds[0], 1500))
for fd in fds:
    os.set_inheritable(fd, True)
before = {fd: os.get_inheritable(fd) for fd in range(3)}
native.seal(**ARGS)
print(json.dumps({
    "fds": fds,
    "std_unchanged": before == {fd: os.get_inheritable(fd) for fd in range(3)},
    "inheritable": [fd for fd in fds if os.get_inheritable(fd)],
}))
"""


def test_seal_everything() -> None:
    """seal() makes every fd >= 3 close-on-exec and leaves 0-2 alone."""
    result = run_child(CHILD_HELPERS + "ARGS = {}\n" + SEAL_CHILD)
    assert isinstance(result, dict)
    assert result["std_unchanged"]
    assert result["inheritable"] == []


def test_seal_with_keep() -> None:
    """seal(low, keep) spares kept fds (any order, duplicates, out of range) and those below low."""
    code = "ARGS = {'low': 4, 'keep': [1500, 5, 5, -7, 1, 2**31 - 1]}\n" + SEAL_CHILD
    result = run_child(CHILD_HELPERS + code)
    assert isinstance(result, dict)
    fds = result["fds"]
    assert fds[0] == 3
    assert result["inheritable"] == [3, 5, 1500]


def test_seal_rejects_negative_low() -> None:
    """A negative low is EINVAL, not a seal of everything."""
    with pytest.raises(OSError, match=strerror(errno.EINVAL)) as info:
        native.seal(-1)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("kind", ["file", "dir", "pipe_r", "unix_a", "inet", "deleted", "memfd"])
def test_target_matches_readlink(kind: str, zoo: dict[str, int]) -> None:
    """target() is readlink of /proc/self/fd/N for files, pipes, sockets and deleted files."""
    fd = zoo[kind]
    got = native.target(fd)
    assert got == os.readlink(f"/proc/self/fd/{fd}")
    if kind == "deleted":
        assert got is not None
        assert got.endswith(" (deleted)")


def test_target_of_closed_fd_is_ebadf() -> None:
    """target() of a closed fd raises EBADF."""
    with pytest.raises(OSError, match=strerror(errno.EBADF)) as info:
        native.target(99999)
    assert info.value.errno == errno.EBADF


def test_socket_info_inet_listener() -> None:
    """A listening AF_INET socket: family, type, TCP, its sockaddr_in and no peer."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        info = native.socket_info(sock.fileno())
        assert info is not None
        family, sock_type, protocol, local, peer = info
        assert (family, sock_type, protocol) == (
            socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
        assert len(local) == 16
        port, addr = struct.unpack_from("!H4s", local, 2)
        assert (socket.inet_ntoa(addr), port) == sock.getsockname()
        assert peer == b""


def test_socket_info_socketpair() -> None:
    """A connected AF_UNIX pair: both ends report an (unnamed) peer."""
    a, b = socket.socketpair()
    with a, b:
        info = native.socket_info(a.fileno())
        assert info is not None
        family, sock_type, protocol, local, peer = info
        assert (family, sock_type, protocol) == (socket.AF_UNIX, socket.SOCK_STREAM, 0)
        assert struct.unpack_from("H", local)[0] == socket.AF_UNIX
        assert struct.unpack_from("H", peer)[0] == socket.AF_UNIX


def test_socket_info_bound_unix_path(tmp_path: Path) -> None:
    """A bound AF_UNIX datagram socket reports its path and no peer."""
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        info = native.socket_info(sock.fileno())
        assert info is not None
        assert info[:2] == (socket.AF_UNIX, socket.SOCK_DGRAM)
        assert info[3][2:].rstrip(b"\0") == os.fsencode(path)
        assert info[4] == b""


def test_socket_info_not_a_socket(zoo: dict[str, int]) -> None:
    """A non-socket gives None; a closed fd raises EBADF."""
    assert native.socket_info(zoo["file"]) is None
    assert native.socket_info(zoo["pipe_r"]) is None
    with pytest.raises(OSError, match=strerror(errno.EBADF)) as info:
        native.socket_info(99999)
    assert info.value.errno == errno.EBADF


def test_platform_is_linux() -> None:
    """The Linux build reports the linux backend."""
    assert native.platform() == "linux"


def test_socket_info_without_peer_support() -> None:
    """AF_PACKET's getpeername fails with EOPNOTSUPP: no peer, not an error."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    except PermissionError:
        pytest.skip("AF_PACKET needs root or CAP_NET_RAW")
    with sock:
        info = native.socket_info(sock.fileno())
        assert info is not None
        assert info[:2] == (socket.AF_PACKET, socket.SOCK_DGRAM)
        assert struct.unpack_from("H", info[3])[0] == socket.AF_PACKET
        assert info[4] == b""


def test_socket_info_without_any_address() -> None:
    """AF_XDP's getsockname fails with EOPNOTSUPP: family and type, no addresses."""
    try:
        sock = socket.socket(44, socket.SOCK_RAW)  # AF_XDP
    except OSError:
        pytest.skip("no AF_XDP here")
    with sock:
        assert native.socket_info(sock.fileno()) == (44, socket.SOCK_RAW, 0, b"", b"")


def test_target_of_a_path_filling_the_first_buffer(tmp_path: Path) -> None:
    """A target as long as PATH_MAX allows (4095 bytes) comes back whole, not cut short."""
    root = str(tmp_path.resolve())
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(root) < 4095:
            name = "d" * min(200, 4095 - len(root) - 1)
            if 4095 - len(root) - 1 - len(name) == 1:
                name = name[:-1]
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
            root += "/" + name
        assert len(root) == 4095
        assert native.target(fd) == root
    finally:
        os.close(fd)


# -- snapshot_since and the poll range -------------------------------------------

SINCE_HELPERS = (
    CHILD_HELPERS
    + """
def fresh():
    return entries(native.snapshot("procfs"))

def raise_soft(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
"""
)


def test_snapshot_keeps_no_descriptor_of_its_own() -> None:
    """Snapshots leave no descriptor of their own open, and stay exact in a forked child."""
    result = run_child(
        SINCE_HELPERS
        + """
before = sorted(int(n) for n in os.listdir("/proc/self/fd"))
table = native.snapshot()
native.snapshot_since(table)
native.snapshot("procfs")
after = sorted(int(n) for n in os.listdir("/proc/self/fd"))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    fd = os.open(os.devnull, os.O_RDONLY)
    ok = [entries(native.snapshot()) == fresh(),
          entries(native.snapshot_since(table)) == fresh()]
    os.write(w, json.dumps(ok).encode())
    os._exit(0)
os.close(w)
child = json.loads(os.read(r, 1000))
os.waitpid(pid, 0)
print(json.dumps([before == after, child]))
"""
    )
    assert result == [True, [True, True]]


def test_since_at_a_large_table_reads_flips_and_replacements() -> None:
    """Above 4 096 descriptors snapshot_since still starts from the previous table, exactly."""
    result = run_child(
        SINCE_HELPERS
        + """
raise_soft(8192)
base = os.open(os.devnull, os.O_RDONLY)
held = [os.dup(base) for _ in range(5000)]
other = os.open("/proc/self/exe", os.O_RDONLY)
previous = native.snapshot()
os.set_inheritable(held[100], True)                 # a flip, nothing else
os.dup2(other, held[200])                           # replaced, now inheritable
os.dup2(other, held[300], inheritable=False)        # replaced, same flag: the blind spot
os.close(held[400])
new = os.open(os.devnull, os.O_RDONLY)
since = entries(native.snapshot_since(previous))
truth = fresh()
old = {e[0]: e for e in entries(previous)}
blind = [e[0] for e, t in zip(since, truth) if e != t]
print(json.dumps([
    [e[0] for e in since] == [t[0] for t in truth],
    [e[:2] for e in since] == [t[:2] for t in truth],
    blind == [held[300]] and since[[e[0] for e in since].index(held[300])] == old[held[300]],
    new in [e[0] for e in since],
]))
"""
    )
    assert result == [True, True, True, True]


def _strace() -> str:
    path = shutil.which("strace")
    if path is None:
        pytest.skip("needs strace to see the poll range")
    probe = subprocess.run([path, "-o", os.devnull, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("strace cannot trace here (ptrace refused)")
    return path


def traced(tmp_path: Path, code: str) -> tuple[object, list[tuple[str, int]]]:
    """Run code in a child under strace: its JSON output, and each poll (with its
    nfds) and getdents64 (0) it made, in order."""
    trace = tmp_path / "trace"
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    proc = subprocess.run(
        [
            _strace(),
            *("-qq", "-e", "trace=poll,getdents64", "-e", "signal=none", "-o", str(trace)),
            *(sys.executable, "-c", textwrap.dedent(code)),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    calls = []
    for line in trace.read_text().splitlines():
        if line.startswith("getdents64("):
            calls.append(("getdents64", 0))
        elif found := re.match(r"poll\(.*\], (\d+), 0\)", line):
            calls.append(("poll", int(found[1])))
    return json.loads(proc.stdout), calls


def after_marker(calls: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The calls after the child's marker, a poll() of no descriptor at all."""
    return calls[calls.index(("poll", 0)) + 1 :]


MARKER = "select.poll().poll(0)  # a marker in the trace: poll() of 0 slots\n"


def test_poll_range_shrinks_when_high_descriptors_close(tmp_path: Path) -> None:
    """One descriptor at 15 000, once closed, no longer widens every later snapshot."""
    result, calls = traced(
        tmp_path,
        SINCE_HELPERS
        + """
import select
soft = raise_soft(16000)
high = os.dup2(os.open(os.devnull, os.O_RDONLY), min(15000, soft - 10))
native.snapshot()
native.snapshot()
os.close(high)
native.snapshot()
"""
        + MARKER
        + """
table = native.snapshot()
since = native.snapshot_since(table)
print(json.dumps([high, entries(table) == fresh(), entries(since) == entries(table)]))
""",
    )
    assert isinstance(result, list)
    high, *exact = result
    assert exact == [True, True]
    assert max(n for name, n in calls if name == "poll") > high  # it was polled for
    later = after_marker(calls)
    assert later[:2] == [("poll", later[0][1])] * 2, later  # no listing
    assert later[0][1] <= 256, later


VALGRIND_LIKE = """
# A descriptor above the soft limit, as valgrind keeps its own: poll()
# cannot see it, /proc/self/fd counts it.
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
high = os.dup2(os.open(os.devnull, os.O_RDONLY), 3000)
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
first = native.snapshot()        # the listing, which learns about it
"""


def test_descriptor_above_soft_limit_keeps_the_fast_path(tmp_path: Path) -> None:
    """With a descriptor above the soft limit, later snapshots poll (no listing) and stay exact."""
    result, calls = traced(
        tmp_path,
        SINCE_HELPERS
        + "import select\n"
        + VALGRIND_LIKE
        + MARKER
        + """
table = native.snapshot()
since = native.snapshot_since(table)
truth = brute(hard)
os.set_inheritable(high, False)
flipped = native.snapshot_since(since)
print(json.dumps([
    entries(first) == truth,
    entries(table) == truth,
    entries(since) == truth,
    entries(flipped) == brute(hard),
    entries(flipped)[-1][:2] == [high, 1],
]))
""",
    )
    assert result == [True, True, True, True, True]
    later = after_marker(calls)
    assert [name for name, _ in later[:3]] == ["poll"] * 3, later
    assert max(n for _, n in later[:3]) <= 1024, later


def test_descriptor_above_soft_limit_is_seen_without_the_listing() -> None:
    """With the table full (EMFILE, no listing possible) the high descriptor is still reported."""
    result = run_child(
        SINCE_HELPERS
        + VALGRIND_LIKE
        + """
opened = []
try:
    while True:
        opened.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    assert exc.errno == 24, exc
table = entries(native.snapshot())
since = entries(native.snapshot_since(native.snapshot()))
truth = brute(hard)
os.close(opened.pop())
os.close(high)
gone = entries(native.snapshot())
print(json.dumps([table[-1][0] == high, since == table, table == truth,
                  gone == brute(hard)]))
"""
    )
    assert result == [True, True, True, True]
