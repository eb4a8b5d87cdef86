"""One suite, both backends: the native core must agree with the pure-Python reference."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from types import ModuleType

import pytest

from pytest_noinherit import fdtable, pure
from pytest_noinherit.fdtable import FdTable

native: ModuleType | None
try:
    from pytest_noinherit import native
except ImportError:  # the pure env, or no compiler: the native half is skipped
    native = None

BACKENDS = [
    pytest.param(pure, id="python"),
    pytest.param(
        native, id="native", marks=pytest.mark.skipif(native is None, reason="core not built")
    ),
]


@pytest.fixture(params=BACKENDS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The backend module under test."""
    return request.param  # type: ignore[no-any-return]


@contextlib.contextmanager
def zoo() -> Iterator[dict[str, int]]:
    """One descriptor of every kind the core must handle, closed afterwards."""
    stack = contextlib.ExitStack()
    fds: dict[str, int] = {}

    def keep(name: str, fd: int) -> None:
        fds[name] = fd
        stack.callback(os.close, fd)

    with stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        keep("file", os.open(os.path.join(tmp, "f"), os.O_CREAT | os.O_RDWR))
        keep("dir", os.open(tmp, os.O_RDONLY | os.O_DIRECTORY))
        keep("opath", os.open(os.path.join(tmp, "f"), os.O_PATH))
        r, w = os.pipe()
        keep("pipe_r", r)
        keep("pipe_w", w)
        os.set_inheritable(w, True)
        keep("unix", socket.socket(socket.AF_UNIX).detach())
        keep("inet", socket.socket().detach())
        keep("eventfd", os.eventfd(0)) if hasattr(os, "eventfd") else None
        keep("epoll", os.dup(stack.enter_context(select.epoll()).fileno()))
        keep("memfd", os.memfd_create("zoo"))
        keep("pidfd", os.pidfd_open(os.getpid())) if hasattr(os, "pidfd_open") else None
        deleted = os.path.join(tmp, "gone")
        keep("deleted", os.open(deleted, os.O_CREAT | os.O_RDWR))
        os.unlink(deleted)
        keep("high", os.dup2(r, 1500))
        master, slave = os.openpty()
        keep("tty", master)
        keep("tty_slave", slave)
        yield fds


def reference_rows() -> list[tuple[int, ...]]:
    """What the issue calls the pure-Python equivalent, spelled out."""
    rows = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            inheritable = os.get_inheritable(fd)
            st = os.fstat(fd)
        except OSError:
            continue  # the listing's own descriptor
        rows.append((fd, 0 if inheritable else 1, st.st_dev, st.st_ino, st.st_mode))
    return sorted(rows)


def rows(impl: ModuleType, method: str = "auto") -> list[tuple[int, ...]]:
    words = impl.snapshot(method)
    return [tuple(words[i : i + 5]) for i in range(0, len(words), 5)]


def test_snapshot_matches_the_reference(impl: ModuleType) -> None:
    """Every descriptor kind, O_PATH and a descriptor above 1024 included, is seen as it is."""
    with zoo():
        assert rows(impl) == reference_rows()


@pytest.mark.parametrize("method", ["auto", "poll", "procfs", "scan", "native"])
def test_every_method_agrees(method: str) -> None:
    """The native core's methods, the generic fallback included, give one answer."""
    if native is None:
        pytest.skip("core not built")
    with zoo():
        assert rows(native, method) == reference_rows()


def test_tables_compare_and_index(impl: ModuleType) -> None:
    """FdTable: len, iteration, indexing by number, equality, differences."""
    with zoo() as fds:
        table = FdTable(impl.snapshot())
        assert len(table) == len(reference_rows())
        assert [e.fd for e in table] == table.fds()
        assert table[fds["pipe_w"]].inheritable
        assert not table[fds["pipe_r"]].inheritable
        assert table[fds["opath"]].kind == "file"
        assert table[fds["unix"]].kind == "socket"
        assert table[fds["pidfd" if "pidfd" in fds else "epoll"]].kind == "anon"
        assert fds["high"] in table
        assert table == FdTable(impl.snapshot())
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            after = FdTable(impl.snapshot())
            assert [e.fd for e in after.added_since(table)] == [fd]
            os.set_inheritable(fd, True)
            again = FdTable(impl.snapshot())
            assert [e.fd for e in again.made_inheritable_since(after)] == [fd]
        finally:
            os.close(fd)


def test_details_agree(impl: ModuleType) -> None:
    """describe(): kinds of anonymous inodes, targets, deleted files and sockets."""
    expected = {
        "eventfd": "eventfd",
        "epoll": "epoll",
        "pidfd": "pidfd",
        "memfd": "memfd",
        "pipe_r": "pipe",
        "unix": "socket",
        "tty": "tty",
        "deleted": "file",
        "dir": "dir",
    }
    with zoo() as fds:
        expected = {n: k for n, k in expected.items() if n in fds}  # os.eventfd: 3.10+
        found = {name: _describe(impl, fds[name]) for name in expected}
        assert {n: d.kind for n, d in found.items()} == expected
        assert found["deleted"].deleted
        assert not found["memfd"].deleted
        assert found["pipe_r"].target == f"pipe:[{os.fstat(fds['pipe_r']).st_ino}]"


def _describe(impl: ModuleType, fd: int) -> fdtable.FdDetails:
    """describe() with impl as the backend, whatever this process chose."""
    original = fdtable._choice
    fdtable._choice = lambda: (impl, impl.__name__, "test")  # type: ignore[assignment]
    try:
        return fdtable.describe(fd)
    finally:
        fdtable._choice = original  # type: ignore[assignment]


def test_socket_details(impl: ModuleType) -> None:
    """Local and peer addresses of INET, INET6 and UNIX sockets, formatted the same way."""
    with socket.socket() as server, tempfile.TemporaryDirectory() as tmp:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            d = _describe(impl, client.fileno())
            assert (d.family, d.socktype) == ("AF_INET", "SOCK_STREAM")
            assert d.peer == f"127.0.0.1:{port}"
        listening = _describe(impl, server.fileno())
        assert listening.local == f"127.0.0.1:{port}"
        assert listening.peer is None
        path = os.path.join(tmp, "s.sock")
        with socket.socket(socket.AF_UNIX) as unix:
            unix.bind(path)
            assert _describe(impl, unix.fileno()).local == path
        if socket.has_ipv6:
            with socket.socket(socket.AF_INET6) as six:
                six.bind(("::1", 0))
                assert _describe(impl, six.fileno()).local == f"[::1]:{six.getsockname()[1]}"


def test_flags_round_trip(impl: ModuleType) -> None:
    """get/set inheritable, O_PATH descriptors included (ioctl fails there, fcntl works)."""
    with zoo() as fds:
        for fd in (fds["pipe_r"], fds["opath"], fds["high"]):
            for value in (True, False, True):
                impl.set_inheritable(fd, value)
                assert impl.get_inheritable(fd) is value
                assert os.get_inheritable(fd) is value


@pytest.mark.parametrize("bad", [-1, 99999, "3", 3.0, 2**31, 2**80, None])
def test_bad_descriptors_raise_like_os(impl: ModuleType, bad: object) -> None:
    """Bad input raises exactly what os.get_inheritable / os.set_inheritable raise."""
    for ours, theirs in (
        (impl.get_inheritable, os.get_inheritable),
        (lambda fd: impl.set_inheritable(fd, True), lambda fd: os.set_inheritable(fd, True)),
    ):
        with pytest.raises(Exception) as expected:
            theirs(bad)
        with pytest.raises(type(expected.value)) as got:
            ours(bad)
        assert getattr(got.value, "errno", None) == getattr(expected.value, "errno", None)
        assert str(got.value) == str(expected.value)


def test_seal(impl: ModuleType) -> None:
    """seal(low, keep) makes every descriptor from low upward close-on-exec but the kept ones."""
    with zoo() as fds:
        for fd in fds.values():
            os.set_inheritable(fd, True)
        keep = fds["pipe_w"]
        impl.seal(fds["file"], [keep])
        for fd in fds.values():
            expected = fd == keep or fd < fds["file"]
            assert os.get_inheritable(fd) is expected, fd


def run_isolated(code: str, **env: str) -> str:
    """Run code in a fresh interpreter (limits and exhaustion must not touch this process)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("backend", ["python", "native"])
def test_exhausted_table_and_lowered_limit(backend: str) -> None:
    """With no descriptor left (EMFILE) and with one above the soft limit, the snapshot is whole."""
    if backend == "native" and native is None:
        pytest.skip("core not built")
    out = run_isolated(
        """
        import os, resource
        import pytest_noinherit as p
        p.snapshot()  # the backend is chosen (and imported) while descriptors remain
        high = os.dup2(0, 3000)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        opened = []
        try:
            while True:
                opened.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == 24, exc
        table = p.snapshot()
        assert all(fd in table for fd in opened), "missing opened descriptors"
        print(p.backend(), len(table), high in table)
        """,
        PYTEST_NOINHERIT_BACKEND=backend,
    )
    name, count, high_seen = out.split()
    assert name == backend
    assert int(count) >= 64
    # Above the soft limit with no descriptor free to list /proc: the native
    # core's fallback cannot see it, and says so in the docs.
    assert high_seen in ("True", "False")


def test_backend_choice_is_explained() -> None:
    """PYTEST_NOINHERIT_BACKEND picks the backend once; a bad value is a clear error."""
    assert run_isolated(
        "import pytest_noinherit as p; print(p.backend(), p.backend_reason())",
        PYTEST_NOINHERIT_BACKEND="python",
    ).startswith("python forced by PYTEST_NOINHERIT_BACKEND=python")
    proc = subprocess.run(
        [sys.executable, "-c", "import pytest_noinherit as p; p.backend()"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTEST_NOINHERIT_BACKEND": "bogus"},
        check=False,
    )
    assert "PYTEST_NOINHERIT_BACKEND='bogus' is not a backend" in proc.stderr


def test_c_created_descriptor_is_seen(impl: ModuleType) -> None:
    """A descriptor opened by C code without O_CLOEXEC shows as inheritable."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.open(os.devnull.encode(), os.O_RDONLY)
    assert fd >= 0, errno.errorcode[ctypes.get_errno()]
    try:
        table = FdTable(impl.snapshot())
        assert table[fd].inheritable
    finally:
        os.close(fd)


def test_large_table_agrees(impl: ModuleType) -> None:
    """Thousands of descriptors (the native core reads them with two threads) are all seen."""
    soft = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]
    if soft < 6000:
        pytest.skip(f"RLIMIT_NOFILE {soft} is too low")
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(5000)]
    try:
        for fd in opened[::2]:
            os.set_inheritable(fd, True)
        assert rows(impl) == reference_rows()
    finally:
        for fd in opened:
            os.close(fd)


def test_snapshot_since_reuses_only_unchanged_entries(impl: ModuleType) -> None:
    """snapshot_since: new and re-flagged descriptors are read afresh, others carried over."""
    with zoo():
        before = impl.snapshot()
        assert rows_of(impl.snapshot_since(before)) == reference_rows()
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            after = impl.snapshot_since(before)
            assert rows_of(after) == reference_rows()
            os.set_inheritable(fd, True)
            flipped = impl.snapshot_since(after)
            assert rows_of(flipped) == reference_rows()
            # Replaced in place with the same flag: only a full snapshot is sure
            # to see it (snapshot_since may keep the old identity, by design).
            other = os.open(os.path.dirname(__file__), os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(other, fd, inheritable=True)
            os.close(other)
            assert rows_of(impl.snapshot()) == reference_rows()
        finally:
            os.close(fd)


@pytest.mark.parametrize("flags", [False, True], ids=["numbers", "flags"])
def test_snapshot_since_follows_numbers_and_flags_if_asked(impl: ModuleType, flags: bool) -> None:
    """New and closed numbers always show; a flip alone only with flags; unchanged is previous."""
    with zoo() as fds:
        before = impl.snapshot()
        assert impl.snapshot_since(before, flags) is before
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            after = impl.snapshot_since(before, flags)
            assert rows_of(after) == reference_rows()
            os.set_inheritable(fd, True)
            os.set_inheritable(fds["opath"], True)  # poll() cannot see this one
            flipped = impl.snapshot_since(after, flags)
            if flags:
                assert rows_of(flipped) == reference_rows()
            else:
                assert flipped is after  # carried over, flag and all
        finally:
            os.close(fd)
        closed = impl.snapshot_since(after, flags)
        assert [row[0] for row in rows_of(closed)] == [row[0] for row in reference_rows()]
        assert fd not in fdtable.FdTable(closed)


def test_public_snapshot_since_keeps_the_table_object() -> None:
    """fdtable.snapshot_since returns the previous FdTable itself when nothing changed."""
    table = fdtable.snapshot()
    assert fdtable.snapshot_since(table, flags=False) is table
    assert fdtable.snapshot_since(table) is table
    assert table == fdtable.FdTable(table._words)


def rows_of(words: object) -> list[tuple[int, ...]]:
    """Rows of a raw five-word table."""
    w = list(words)  # type: ignore[call-overload]
    return [tuple(w[i : i + 5]) for i in range(0, len(w), 5)]


@pytest.mark.skipif(native is None, reason="core not built")
def test_seal_fallback_loop_matches_close_range() -> None:
    """The portable seal loop (no close_range) leaves the same flags as the fast path."""
    assert native is not None
    with zoo() as fds:
        results = []
        for method in ("auto", "loop"):
            for fd in fds.values():
                os.set_inheritable(fd, True)
            native.seal(fds["file"], [fds["pipe_w"], fds["high"]], method=method)
            results.append({name: os.get_inheritable(fd) for name, fd in fds.items()})
        assert results[0] == results[1]
        assert results[1]["pipe_w"]
        assert results[1]["high"]
        assert not results[1]["unix"]
    with pytest.raises(ValueError, match="unknown seal method"):
        native.seal(3, (), method="bogus")


# -- describe() of whatever is open --------------------------------------------


def _packet_socket(kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """An AF_PACKET socket (protocol 0: it receives nothing), or a skip without CAP_NET_RAW."""
    if not hasattr(socket, "AF_PACKET"):
        pytest.skip("no AF_PACKET on this platform")
    try:
        return socket.socket(socket.AF_PACKET, kind, 0)
    except PermissionError:
        pytest.skip("AF_PACKET needs root or CAP_NET_RAW")


def test_describe_packet_socket(impl: ModuleType) -> None:
    """An AF_PACKET socket (getpeername: EOPNOTSUPP) describes with its interface and protocol."""
    with _packet_socket() as unbound:
        d = _describe(impl, unbound.fileno())
        assert (d.kind, d.family, d.socktype) == ("socket", "AF_PACKET", "SOCK_DGRAM")
        assert (d.local, d.peer) == ("*,proto=0x0000", None)
    with _packet_socket(socket.SOCK_RAW) as bound:
        bound.bind(("lo", 0x88CC))  # an ethertype above 0x7fff: CPython reads it signed
        d = _describe(impl, bound.fileno())
        assert d.local == "lo,proto=0x88cc,hw=00:00:00:00:00:00"
        assert str(d) == "AF_PACKET/SOCK_RAW lo,proto=0x88cc,hw=00:00:00:00:00:00"


def test_describe_netlink_socket(impl: ModuleType) -> None:
    """An AF_NETLINK socket shows its port id and groups as text, never raw NUL bytes."""
    if not hasattr(socket, "AF_NETLINK"):
        pytest.skip("no AF_NETLINK on this platform")
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:
        sock.bind((0, 1))  # the kernel assigns the port id
        pid = sock.getsockname()[0]
        d = _describe(impl, sock.fileno())
        assert (d.family, d.socktype) == ("AF_NETLINK", "SOCK_RAW")
        assert d.local == f"pid={pid},groups=0x1"
        assert d.peer == "pid=0,groups=0x0"  # the kernel
        assert str(d).isprintable()


def test_describe_abstract_unix_socket_with_odd_bytes(impl: ModuleType) -> None:
    """An abstract unix name reads '@name', its NUL, control and undecodable bytes escaped."""
    name = b"\0noinherit\0odd\n\xff-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(name)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(name)
            expected = f"@noinherit\\x00odd\\x0a\\xff-{os.getpid()}"
            assert _describe(impl, server.fileno()).local == expected
            d = _describe(impl, client.fileno())
            assert (d.local, d.peer) == (None, expected)
            assert str(d) == f"AF_UNIX/SOCK_STREAM (unbound) -> {expected}"


def test_describe_unnamed_socketpair(impl: ModuleType) -> None:
    """Both ends of a socketpair describe as unnamed, with no address on either side."""
    a, b = socket.socketpair()
    with a, b:
        d = _describe(impl, a.fileno())
        assert (d.family, d.socktype, d.local, d.peer) == ("AF_UNIX", "SOCK_STREAM", None, None)
        assert str(d) == "AF_UNIX/SOCK_STREAM (unbound)"


def test_describe_socket_without_addresses(impl: ModuleType) -> None:
    """A family whose getsockname fails (AF_XDP: EOPNOTSUPP) still gives family and type."""
    try:
        sock = socket.socket(44, socket.SOCK_RAW)  # AF_XDP, Linux >= 4.18
    except OSError:
        pytest.skip("no AF_XDP here")
    with sock:
        d = _describe(impl, sock.fileno())
        assert (d.kind, d.family, d.socktype, d.local, d.peer) == (
            "socket",
            "AF_XDP" if hasattr(socket, "AF_XDP") else "AF_44",
            "SOCK_RAW",
            None,
            None,
        )


def test_describe_keeps_a_socket_blocking(impl: ModuleType) -> None:
    """describe() leaves a socket's O_NONBLOCK alone, even with a default socket timeout set."""
    import fcntl

    a, b = socket.socketpair()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)
    try:
        with a, b:
            a.setblocking(True)
            _describe(impl, a.fileno())
            assert not fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        socket.setdefaulttimeout(previous)


def test_describe_target_is_printable(impl: ModuleType) -> None:
    """A path with a newline, a tab and an undecodable byte is escaped, \\xHH like the probe."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(os.fsencode(tmp), b"a\nb\tc\xff")
        fd = os.open(path, os.O_CREAT | os.O_RDWR)
        try:
            d = _describe(impl, fd)
            assert d.target == os.path.join(tmp, "a\\x0ab\\x09c\\xff")
            assert (d.kind, d.deleted) == ("file", False)
        finally:
            os.close(fd)


def _deep_directory(root: str, length: int) -> int:
    """A directory descriptor whose absolute path is exactly length bytes long.

    Made one component at a time relative to the previous directory's
    descriptor, since no path of that length may be passed to the kernel.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    remaining = length - len(os.fsencode(root))
    while remaining > 0:
        step = min(201, remaining)  # "/" and up to 200 name bytes
        if remaining - step == 1:
            step -= 1  # never leave a lone "/" for the last component
        name = "d" * (step - 1)
        os.mkdir(name, dir_fd=fd)
        deeper = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
        remaining -= step
    return fd


def test_describe_deep_path(impl: ModuleType) -> None:
    """A 4095-byte path is read whole; a 4096-byte one (past PATH_MAX) says so, never raises."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.realpath(tmp)
        whole = _deep_directory(root, 4095)
        try:
            d = _describe(impl, whole)
            assert d.kind == "dir"
            assert d.target is not None
            assert len(d.target) == 4095
            assert d.target.startswith(root + "/ddd")
        finally:
            os.close(whole)
        shutil.rmtree(os.path.join(root, os.listdir(root)[0]))
        too_long = _deep_directory(root, 4096)
        try:
            with pytest.raises(OSError) as info:
                impl.target(too_long)  # the backend reports what readlink says
            assert info.value.errno == errno.ENAMETOOLONG
            d = _describe(impl, too_long)
            assert (d.kind, d.target, d.deleted) == ("dir", fdtable.LONG_PATH, False)
            assert str(d) == fdtable.LONG_PATH
        finally:
            os.close(too_long)


def test_describe_leaves_the_table_as_it_was(impl: ModuleType) -> None:
    """snapshot() and describe() of every kind leave no descriptor of their own behind."""
    with zoo() as fds:
        before = reference_rows()
        impl.snapshot()
        for fd in fds.values():
            _describe(impl, fd)
        assert reference_rows() == before


def test_describe_closed_descriptor_raises_ebadf(impl: ModuleType) -> None:
    """describe() of a closed descriptor raises EBADF: the one error it has."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        _describe(impl, r)
    assert info.value.errno == errno.EBADF


# -- socket_target(): the exec probe's socket details, in describe()'s words ---


def _raw_address(call: str, fd: int) -> bytes | None:
    """getsockname() or getpeername() bytes as the probe records them; None when it fails."""
    buf = ctypes.create_string_buffer(128)  # sizeof(struct sockaddr_storage)
    size = ctypes.c_uint(len(buf))
    if getattr(ctypes.CDLL(None), call)(fd, buf, ctypes.byref(size)) != 0:
        return None
    return buf.raw[: min(size.value, len(buf))]


def _probed(sock: socket.socket) -> tuple[str, str]:
    """socket_target() of what the probe reads of sock: SO_DOMAIN, SO_TYPE, both addresses."""
    return fdtable.socket_target(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
        _raw_address("getsockname", sock.fileno()),
        _raw_address("getpeername", sock.fileno()),
    )


@contextlib.contextmanager
def _socket_zoo() -> Iterator[dict[str, socket.socket]]:
    """Bound, connected, abstract and unnamed sockets of the families the probe decodes."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        socks: dict[str, socket.socket] = {}

        def keep(name: str, sock: socket.socket) -> socket.socket:
            socks[name] = stack.enter_context(sock)
            return sock

        server = keep("unix path", socket.socket(socket.AF_UNIX))
        server.bind(os.path.join(tmp, "app\nodd.sock"))
        server.listen()
        keep("unix client", socket.socket(socket.AF_UNIX)).connect(server.getsockname())
        abstract = keep("unix abstract", socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        abstract.bind(b"\0noinherit-target-%d" % os.getpid())
        a, b = socket.socketpair()
        keep("unix unnamed", a)
        keep("unix unnamed peer", b)
        listener = keep("inet listening", socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        keep("inet client", socket.create_connection(listener.getsockname()))
        keep("inet unbound", socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        if socket.has_ipv6:
            with contextlib.suppress(OSError):  # no ::1 in this network namespace
                six = socket.socket(socket.AF_INET6)
                six.bind(("::1", 0))
                six.listen()
                keep("inet6 listening", six)
                keep("inet6 client", socket.create_connection(six.getsockname()[:2]))
                keep("inet6 accepted", six.accept()[0])
        if hasattr(socket, "AF_NETLINK"):
            netlink = keep("netlink", socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
            netlink.bind((0, 1))
        yield socks


def test_socket_target_matches_describe(impl: ModuleType) -> None:
    """socket_target() of a socket's raw addresses is what describe() says of that socket."""
    with _socket_zoo() as socks:
        found = {name: _probed(sock) for name, sock in socks.items()}
        described = {}
        for name, sock in socks.items():
            d = _describe(impl, sock.fileno())
            described[name] = (d.kind, str(d))
    assert found == described
    assert found["unix path"][1].endswith("/app\\x0aodd.sock")
    assert found["unix unnamed"][1] == "AF_UNIX/SOCK_STREAM (unbound)"
    assert found["unix abstract"][1] == f"AF_UNIX/SOCK_DGRAM @noinherit-target-{os.getpid()}"


def test_socket_target_of_what_the_system_would_not_tell() -> None:
    """An unknown family or type and missing addresses read as describe() would show them."""
    unknown = ("socket", "AF_UNKNOWN/SOCK_UNKNOWN (unbound)")
    assert fdtable.socket_target(-1, -1, None, None) == unknown
    assert fdtable.socket_target(socket.AF_UNIX, socket.SOCK_STREAM, b"", None) == (
        "socket",
        "AF_UNIX/SOCK_STREAM (unbound)",
    )
    # A family neither backend decodes (AF_XDP) is shown without its addresses.
    xdp = "AF_XDP" if hasattr(socket, "AF_XDP") else "AF_44"
    assert fdtable.socket_target(44, socket.SOCK_RAW, b"\x2c\x00\x01", None) == (
        "socket",
        f"{xdp}/SOCK_RAW (unbound)",
    )
