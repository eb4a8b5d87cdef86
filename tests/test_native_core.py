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

def fill_table():
    # /dev/null until EMFILE: the descriptors opened
    opened = []
    try:
        while True:
            opened.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == 24, exc
    return opened
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
opened = fill_table()
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


TRACED = "poll,getdents64,pselect6,select,fcntl,openat,close,newfstatat,stat,statx"


def traced(tmp_path: Path, code: str) -> tuple[object, list[tuple[str, int]]]:
    """Run code in a child under strace: its JSON output, and the calls it made
    that a snapshot makes, in order: ("poll", nfds), ("select", nfds),
    ("getdents64", 0), ("fcntl", fd), and (name, 0) for the others."""
    trace = tmp_path / "trace"
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    proc = subprocess.run(
        [
            _strace(),
            *("-qq", "-e", f"trace={TRACED}", "-e", "signal=none", "-o", str(trace)),
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
        if found := re.match(r"poll\(.*\], (\d+), 0\)", line):
            calls.append(("poll", int(found[1])))
        elif found := re.match(r"p?select6?\((\d+),", line):
            calls.append(("select", int(found[1])))
        elif found := re.match(r"fcntl\((\d+), F_GETFD\)", line):
            calls.append(("fcntl", int(found[1])))
        elif found := re.match(r"(\w+)\(", line):
            calls.append((found[1], 0))
    return json.loads(proc.stdout), calls


def after_marker(calls: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The calls after the child's marker, a poll() of no descriptor at all."""
    return calls[calls.index(("poll", 0)) + 1 :]


def between_markers(calls: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The calls between the child's first two markers."""
    later = after_marker(calls)
    return later[: later.index(("poll", 0))]


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
numbers = native.snapshot_since(table, False)
os.close(os.open(os.devnull, os.O_RDONLY))
new = native.snapshot_since(table, False)
"""
        + MARKER
        + """
print(json.dumps([high, entries(table) == fresh(), entries(since) == entries(table),
                  numbers is table, entries(new) == entries(table)]))
""",
    )
    assert isinstance(result, list)
    high, *exact = result
    assert exact == [True, True, True, True]
    assert max(n for name, n in calls if name == "poll") > high  # it was polled for
    later = between_markers(calls)
    assert "getdents64" not in [name for name, _ in later], later  # no listing
    assert later[:2] == [("newfstatat", 0), ("poll", later[1][1])], later  # count, poll
    assert max(n for name, n in later if name in ("poll", "select")) <= 256, later


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
numbers = native.snapshot_since(table, False)
"""
        + MARKER
        + """
truth = brute(hard)
os.set_inheritable(high, False)
flipped = native.snapshot_since(since)
print(json.dumps([
    entries(first) == truth,
    entries(table) == truth,
    entries(since) == truth,
    numbers is table,
    entries(flipped) == brute(hard),
    entries(flipped)[-1][:2] == [high, 1],
]))
""",
    )
    assert result == [True, True, True, True, True, True]
    later = between_markers(calls)
    names = [name for name, _ in later]
    assert "getdents64" not in names, later
    assert names[:2] == ["newfstatat", "poll"], later
    assert later[1][1] <= 1024, later
    # The unchanged check: the count, one select() that reaches past the
    # soft limit (select has no soft-limit check), one F_GETFD.
    assert later[-3:] == [("newfstatat", 0), ("select", 3001), ("fcntl", 3000)], later


def test_descriptor_above_soft_limit_is_seen_without_the_listing() -> None:
    """With the table full (EMFILE, no listing possible) the high descriptor is still reported."""
    result = run_child(
        SINCE_HELPERS
        + VALGRIND_LIKE
        + """
opened = fill_table()
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


# -- the per-test check: nic_snapshot_delta ----------------------------------------

DELTA_HELPERS = (
    SINCE_HELPERS
    + """
from pytest_noinherit import pure

def truth():
    out = []
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        try:
            out.append(describe(fd))
        except OSError:  # the listing's own descriptor
            pass
    return out

def expected(prev, flags):
    '''The contract: prev's entry for a number still open (with flags: and
    with the same flag), the descriptor as it is otherwise.'''
    old = {e[0]: e for e in entries(prev)}
    want = []
    for e in truth():
        o = old.get(e[0])
        want.append(o if o is not None and (not flags or o[1] == e[1]) else e)
    return want

failures = []

def compare(label, prev):
    for flags in (False, True):
        got = entries(native.snapshot_since(prev, flags))
        ref = entries(pure.snapshot_since(prev, flags))
        want = expected(prev, flags)
        if not got == ref == want:
            failures.append([label, flags, [e for e in got if e not in want][:3],
                             [e for e in want if e not in got][:3]])

def step(label, change):
    prev = native.snapshot()
    change()
    compare(label, prev)
"""
)

DELTA_SCENARIO = """
raise_soft(16384)
base = os.open(os.devnull, os.O_RDONLY)
other = os.open("/proc/self/exe", os.O_RDONLY)
held = [os.dup(base) for _ in range(COUNT)]
if SPARSE:  # holes everywhere: the unchanged check is a select()
    for fd in held[::3]:
        os.close(fd)
    held = [fd for i, fd in enumerate(held) if i % 3]
kept = []

def nothing():
    prev = native.snapshot()
    for flags in (False, True):
        for impl in (native, pure):
            if impl.snapshot_since(prev, flags) is not prev:
                failures.append(["not the same table", impl.__name__, flags])
    compare("nothing", prev)

def reopen(fd, **inheritable):
    os.close(fd)
    os.dup2(other, fd, **inheritable)

nothing()
step("new", lambda: kept.append(os.open(os.devnull, os.O_RDONLY)))
step("closed", lambda: os.close(held.pop(len(held) // 2)))
step("reopened, another file, same flag", lambda: reopen(held[-2], inheritable=False))
step("reopened, another file, other flag", lambda: reopen(held[-3]))
step("flag flipped", lambda: os.set_inheritable(held[1], True))
step("dup2 over an open descriptor", lambda: os.dup2(other, held[2]))
step("one closed, one far above",
     lambda: (os.close(held.pop(3)), kept.append(os.dup2(base, 12000))))
step("the one far above closed", lambda: os.close(kept.pop()))
step("a hole taken, one closed", lambda: (kept.append(os.open(os.devnull, os.O_RDONLY)),
                                          os.close(held.pop(4))))
step("O_PATH", lambda: kept.append(os.open("/proc/self/exe", os.O_PATH)))
step("O_PATH closed", lambda: os.close(kept.pop()))
nothing()
print(json.dumps(failures))
"""


@pytest.mark.parametrize(
    ("count", "sparse"),
    [
        pytest.param(8, False, id="small"),
        pytest.param(5000, False, id="5000-in-a-row"),
        pytest.param(5000, True, id="5000-with-holes"),
    ],
)
def test_delta_agrees_with_the_pure_backend(count: int, sparse: bool) -> None:
    """snapshot_since with and without flags: native = pure = the contract, after every change."""
    code = DELTA_SCENARIO.replace("COUNT", str(count)).replace("SPARSE", str(sparse))
    assert run_child(DELTA_HELPERS + code) == []


def test_delta_after_fork() -> None:
    """In a fork child, a table taken before the fork is compared with the child's own."""
    result = run_child(
        DELTA_HELPERS
        + """
base = os.open(os.devnull, os.O_RDONLY)
high = os.dup2(base, 1000)
prev = native.snapshot()
os.close(high)                       # the highest one: past the child's table size
kept = os.open(os.devnull, os.O_RDONLY)  # and the count is the same again
dense = native.snapshot()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    compare("closed before the fork", prev)
    compare("unchanged since the parent's", dense)
    os.close(kept)
    compare("closed in the child", dense)
    os.write(w, json.dumps(failures).encode())
    os._exit(0)
os.close(w)
child = json.loads(os.read(r, 100000) or b"null")
os.waitpid(pid, 0)
print(json.dumps(child))
"""
    )
    assert result == []


UNCHANGED_CHECK = """
import select
raise_soft(16384)
base = os.open(os.devnull, os.O_RDONLY)
held = [os.dup(base) for _ in range(COUNT)]
if SPARSE:
    for fd in held[::2]:
        os.close(fd)
table = native.snapshot()
native.snapshot_since(table, False)
"""


@pytest.mark.parametrize(
    ("count", "sparse", "calls"),
    [
        pytest.param(8, False, ["newfstatat", "select", "fcntl"], id="small"),
        pytest.param(5000, False, ["newfstatat", "openat", "close"], id="5000-in-a-row"),
        pytest.param(5000, True, ["newfstatat", "select", "fcntl"], id="5000-with-holes"),
    ],
)
def test_unchanged_table_costs_three_system_calls(
    tmp_path: Path, count: int, sparse: bool, calls: list[str]
) -> None:
    """Nothing changed, no flags: the count and one check, whatever the table's size."""
    code = UNCHANGED_CHECK.replace("COUNT", str(count)).replace("SPARSE", str(sparse))
    result, traced_calls = traced(
        tmp_path,
        SINCE_HELPERS
        + code
        + MARKER
        + """
same = [native.snapshot_since(table, False) is table for _ in range(3)]
"""
        + MARKER
        + "print(json.dumps(same))\n",
    )
    assert result == [True, True, True]
    assert [name for name, _ in between_markers(traced_calls)] == calls * 3


def test_unchanged_table_with_flags_reads_each_flag_once(tmp_path: Path) -> None:
    """Nothing changed, flags wanted (strict mode): the count and one F_GETFD per descriptor."""
    code = UNCHANGED_CHECK.replace("COUNT", "5000").replace("SPARSE", "False")
    result, traced_calls = traced(
        tmp_path,
        SINCE_HELPERS
        + code
        + MARKER
        + "same = native.snapshot_since(table) is table\n"
        + MARKER
        + "print(json.dumps([same, len(table) // 5]))\n",
    )
    assert isinstance(result, list)
    same, n = result
    assert same is True
    later = between_markers(traced_calls)
    assert later[0] == ("newfstatat", 0)
    assert [name for name, _ in later[1:]] == ["fcntl"] * n


def test_number_reserved_by_a_blocked_accept(tmp_path: Path) -> None:
    """A thread blocked in accept() holds a number the count includes: no listing, still exact."""
    result, calls = traced(
        tmp_path,
        DELTA_HELPERS
        + """
import select, socket, threading, time
server = socket.create_server(("127.0.0.1", 0))
accepted = []
thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
thread.start()
while os.stat("/proc/self/fd").st_size == len(truth()):  # until it waits in accept()
    time.sleep(0.01)
first = native.snapshot()                 # learns the reserved number
"""
        + MARKER
        + """
table = native.snapshot()
same = native.snapshot_since(table, False) is table
same_flags = native.snapshot_since(table) is table
"""
        + MARKER
        + """
exact = entries(first) == entries(table) == truth()
client = socket.create_connection(server.getsockname())
thread.join()
compare("the connection accepted", table)
print(json.dumps([exact, same, same_flags,
                  accepted[0].fileno() in [e[0] for e in entries(native.snapshot())], failures]))
""",
    )
    assert result == [True, True, True, True, []]
    later = between_markers(calls)
    assert "getdents64" not in [name for name, _ in later], later
    assert len(later) <= 2 * len([name for name, _ in later if name == "newfstatat"]) + 30, later
