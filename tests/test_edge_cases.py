"""Error and fallback paths of the backends, the fixture and the runner.

Anything that changes process-wide state (the fd limit, /proc, sealing, a
blocked import) runs in a child interpreter; the reference is what the kernel
says through os and fcntl.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

from pytest_noinherit import fdtable, pure, runner

try:
    from pytest_noinherit import native
except ImportError:  # pragma: no cover - the native core was not built
    native = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(native is None, reason="native core not built")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux behaviour")

# The reference listing inside a child: every slot F_GETFD accepts.
OPEN_FDS = """
import fcntl, os, resource
def open_fds(limit):
    out = []
    for fd in range(limit):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        out.append(fd)
    return out
"""


def child(
    code: str, *, prefix: list[str] | None = None, env: dict[str, str] | None = None
) -> object:
    """Run code in a fresh interpreter and return the JSON it prints last."""
    argv = [*(prefix or []), sys.executable, "-c", OPEN_FDS + textwrap.dedent(code)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error_of(call: object, *args: object) -> object:
    """The value of call(*args), or the errno it raised."""
    try:
        return call(*args)  # type: ignore[operator]
    except OSError as exc:
        return f"errno {errno.errorcode.get(exc.errno or 0, exc.errno)}"


# -- the pure backend ----------------------------------------------------------


def test_pure_snapshot_methods_agree() -> None:
    """pure.snapshot() by listing and by scan give the same table; unknown methods are refused."""
    r, w = os.pipe()
    try:
        assert list(pure.snapshot("scan")) == list(pure.snapshot("auto"))
        with pytest.raises(ValueError, match="unknown snapshot method 'bogus'"):
            pure.snapshot("bogus")
    finally:
        os.close(r)
        os.close(w)
    assert pure.platform() == sys.platform


def test_pure_snapshot_since_sees_a_flag_change() -> None:
    """snapshot_since re-reads a descriptor whose inheritable flag changed."""
    r, w = os.pipe()
    try:
        before = pure.snapshot()
        os.set_inheritable(w, True)
        after = fdtable.FdTable(pure.snapshot_since(before))
        assert after.get(w) is not None
        assert after[w].inheritable
        assert after == fdtable.FdTable(pure.snapshot())
    finally:
        os.close(r)
        os.close(w)


def test_pure_seal_skips_a_descriptor_closed_meanwhile() -> None:
    """pure.seal() ignores a descriptor that closed between its snapshot and its fcntl."""
    out = child(
        """
        import json
        from pytest_noinherit import pure
        r, w = os.pipe()
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        stale = pure.snapshot()
        os.close(r)
        pure.snapshot = lambda method="auto": stale  # the table seal reads is now stale
        pure.seal(3)
        print(json.dumps([os.get_inheritable(w), w]))
        """
    )
    assert out[0] is False


@pytest.mark.parametrize("backend", ["pure", "native"])
def test_target_and_socket_info_errors(backend: str) -> None:
    """target/socket_info: EBADF for closed or negative fds, None for a non-socket."""
    impl = pure if backend == "pure" else native
    if impl is None:
        pytest.skip("native core not built")
    r, w = os.pipe()
    os.close(w)
    try:
        assert impl.socket_info(r) is None
        assert impl.target(r).startswith("pipe:[")
    finally:
        os.close(r)
    assert error_of(impl.target, r) == "errno EBADF"
    assert error_of(impl.target, -1) == "errno EBADF"
    assert error_of(impl.socket_info, r) == "errno EBADF"


@needs_native
def test_describe_ipv6_socket_with_peer() -> None:
    """describe() of a connected IPv6 TCP socket names family, both ends and the peer."""
    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with server:
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as client:
            conn, _ = server.accept()
            with conn:
                d = fdtable.describe(client.fileno())
                assert (d.kind, d.family, d.socktype) == ("socket", "AF_INET6", "SOCK_STREAM")
                assert d.peer == f"[::1]:{server.getsockname()[1]}"
                assert str(d).startswith("AF_INET6/SOCK_STREAM [::1]:")
                assert str(d).endswith(f" -> {d.peer}")


def test_describe_abstract_unix_socket() -> None:
    """describe() shows an abstract unix socket name with '@'."""
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(b"\0noinherit-test-%d" % os.getpid())
        d = fdtable.describe(s.fileno())
        assert d.local == f"@noinherit-test-{os.getpid()}"


def test_fdtable_flag_functions_in_a_child() -> None:
    """fdtable.get/set_inheritable and seal(keep=...) act on the real flags."""
    out = child(
        """
        import json
        from pytest_noinherit import fdtable
        a, b = os.pipe()
        fdtable.set_inheritable(a, True)
        fdtable.set_inheritable(b, True)
        first = [fdtable.get_inheritable(a), os.get_inheritable(a)]
        fdtable.seal(3, keep=[b])
        print(json.dumps(first + [os.get_inheritable(a), os.get_inheritable(b)]))
        """
    )
    assert out == [True, True, False, True]


# -- backend selection ---------------------------------------------------------

BLOCK_CORE = "import sys; sys.modules['pytest_noinherit._core'] = None\n"


@pytest.mark.parametrize(
    ("wanted", "block", "expected"),
    [
        ("native", BLOCK_CORE, "BackendError: PYTEST_NOINHERIT_BACKEND=native but the native"),
        ("auto", BLOCK_CORE, "python: the native core was not compiled at install"),
        (
            "python",
            "import sys; sys.modules['pytest_noinherit.pure'] = None\n",
            "BackendError: no backend for this platform",
        ),
    ],
)
def test_backend_choice_when_an_import_fails(wanted: str, block: str, expected: str) -> None:
    """A forced backend that cannot load is a BackendError; auto falls back to python."""
    out = child(
        block
        + """
import json
from pytest_noinherit import fdtable
try:
    print(json.dumps(f"{fdtable.backend()}: {fdtable.backend_reason()}"))
except fdtable.BackendError as exc:
    print(json.dumps(f"BackendError: {exc}"))
""",
        env={fdtable.BACKEND_ENV: wanted},
    )
    assert str(out).startswith(expected)


# -- the native core's fallbacks -------------------------------------------------


@needs_native
@pytest.mark.parametrize("module", ["native", "pure"])
def test_snapshot_when_no_descriptor_is_left(module: str) -> None:
    """With every slot open (EMFILE), the fd directory is unreadable and the scan is complete."""
    out = child(
        f"""
        import errno, json
        from pytest_noinherit import {module} as impl
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        since = impl.snapshot_since(impl.snapshot())
        print(json.dumps([list(impl.snapshot()[::5]), list(since[::5])]))
        """
    )
    assert out == [list(range(64)), list(range(64))]


@needs_native
def test_poll_when_the_soft_limit_drops_below_the_hint() -> None:
    """After the fd limit is lowered below the remembered poll size, snapshots stay exact."""
    out = child(
        """
        import json
        from pytest_noinherit import native
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
        results = []
        for high, lowered in ((900, 256), (3000, 2048)):
            fd = os.open("/dev/null", os.O_RDONLY)
            os.dup2(fd, high)
            native.snapshot("poll")  # remembers a poll size above high
            os.close(high)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
            got = list(native.snapshot("poll")[::5])
            since = list(native.snapshot_since(native.snapshot())[::5])
            results.append([got == open_fds(lowered), since == got, fd in got])
            os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
        print(json.dumps(results))
        """
    )
    assert out == [[True, True, True], [True, True, True]]


@needs_native
def test_large_table_snapshot_is_exact() -> None:
    """A table of more than 4096 descriptors (two filling threads) matches the kernel's."""
    out = child(
        """
        import json
        from pytest_noinherit import native
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        base = os.open("/dev/null", os.O_RDONLY)
        held = [os.dup(base) for _ in range(4200)]
        os.set_inheritable(held[-1], True)
        first = native.snapshot()  # listing: the poll size is still small
        second = native.snapshot()  # poll, filled by two threads
        ref = open_fds(8192)
        rows = [list(second[i:i + 5]) for i in range(0, len(second), 5)]
        inheritable = [r[0] for r in rows if not r[1]]
        print(json.dumps([list(first) == list(second), list(second[::5]) == ref,
                          held[-1] in inheritable]))
        """
    )
    assert out == [True, True, True]


@needs_native
def test_core_refuses_bad_arguments() -> None:
    """The C entry points answer EINVAL for null buffers and unknown methods."""
    from pytest_noinherit._core import ffi, lib

    buf = ffi.new("nic_entry[]", 4)
    calls = [
        lambda: lib.nic_snapshot(ffi.NULL, 4, lib.NIC_METHOD_AUTO),
        lambda: lib.nic_snapshot(buf, -1, lib.NIC_METHOD_AUTO),
        lambda: lib.nic_snapshot(buf, 4, 99),
        lambda: lib.nic_snapshot(ffi.NULL, 4, lib.NIC_METHOD_SCAN),
        lambda: lib.nic_snapshot_since(ffi.NULL, 4, ffi.NULL, 0),
        lambda: lib.nic_snapshot_since(buf, 4, ffi.NULL, 2),
        lambda: lib.nic_target(0, ffi.NULL, 16),
        lambda: lib.nic_seal(-1, ffi.NULL, 0),
    ]
    for call in calls:
        assert call() == -1
        assert ffi.errno == errno.EINVAL
    assert lib.nic_snapshot(ffi.NULL, 0, lib.NIC_METHOD_SCAN) >= 3  # counts only


def _can_hide_proc() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "none", "/proc"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


HIDE_PROC = [
    "unshare",
    "-m",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount -t tmpfs none /proc && exec "$@"',
    "sh",
]


@needs_native
@pytest.mark.skipif(not _can_hide_proc(), reason="needs root and unshare -m")
def test_snapshot_without_proc() -> None:
    """With /proc hidden, both backends scan every slot and match the kernel's table."""
    out = child(
        """
        import json
        from pytest_noinherit import native, pure
        r, w = os.pipe()
        os.set_inheritable(w, True)
        ref = open_fds(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        print(json.dumps({
            "proc": os.path.exists("/proc/self/fd"),
            "native": [list(native.snapshot(m)[::5]) == ref for m in ("auto", "procfs")],
            "pure": list(pure.snapshot()[::5]) == ref,
            "since": list(native.snapshot_since(native.snapshot())[::5]) == ref,
        }))
        """,
        prefix=HIDE_PROC,
    )
    assert out == {"proc": False, "native": [True, True], "pure": True, "since": True}


@needs_native
@pytest.mark.skipif(not _can_hide_proc(), reason="needs root and unshare -m")
def test_target_of_an_open_descriptor_without_proc() -> None:
    """Without /proc both backends agree on an open descriptor's target: unknowable (None)."""
    out = child(
        """
        import json
        from pytest_noinherit import native, pure
        def outcome(call, fd):
            try:
                return repr(call(fd))
            except OSError as exc:
                return f"OSError {errno.errorcode[exc.errno]}"
        import errno
        r, w = os.pipe()
        print(json.dumps([outcome(native.target, r), outcome(pure.target, r)]))
        """,
        prefix=HIDE_PROC,
    )
    assert out == ["None", "None"]


# -- the noinherit fixture -------------------------------------------------------


def test_noinherit_allow_edge_cases(fdkit: pytest.Pytester) -> None:
    """allow() takes several targets at once and rejects bad fileno() results and kinds."""
    fdkit.makepyfile(
        """
        from fdkit import inheritable_pipe, spawn

        class Closed:
            def __init__(self, fd):
                self.fd = fd
            def fileno(self):
                return self.fd

        class Weird:
            def fileno(self):
                return "7"

        def test_several(noinherit):
            with inheritable_pipe(at=50) as a, inheritable_pipe(at=51) as b:
                noinherit.allow(a, b)
                spawn()

        def test_several_does_not_cover_a_third(noinherit):
            with inheritable_pipe(at=50) as a, inheritable_pipe(at=52) as c:
                noinherit.allow(a, 51)
                spawn()

        def test_object_whose_descriptor_is_closed(noinherit):
            noinherit.allow(Closed(60))  # nothing open there yet: allows the number
            with inheritable_pipe(at=60):
                spawn()

        def test_fileno_not_an_int(noinherit):
            noinherit.allow(Weird())

        def test_unknown_kind(noinherit):
            noinherit.allow(kind="nonsense")

        def test_negative_number(noinherit):
            noinherit.allow(-1)
        """
    )
    result = fdkit.runpytest("-p", "noinherit")
    result.assert_outcomes(passed=2, failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *::test_several_does_not_cover_a_third*",
            "E * TypeError: <*Weird object at *>.fileno() returned '7'",
            "E * TypeError: noinherit.allow(): unknown kind 'nonsense'*",
            "E * TypeError: noinherit.allow(): descriptor numbers cannot be negative: -1",
            "allowed by noinherit.allow() in *::test_several: 50:",
            "allowed by noinherit.allow() in *::test_several: 51:",
        ]
    )


# -- the runner --------------------------------------------------------------------


def test_runner_reports_a_command_that_cannot_start(capsys: pytest.CaptureFixture[str]) -> None:
    """`run` on a missing program exits 127 and says why."""
    if runner.probe.library() is None:
        pytest.skip("the exec probe is not built")
    assert runner.run(["/nonexistent/program"], as_json=False) == 127
    assert "cannot run /nonexistent/program" in capsys.readouterr().err


def test_runner_without_a_probe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` without a built probe exits 2 with a message instead of running blind."""
    monkeypatch.setattr(runner.probe, "library", lambda: None)
    assert runner.run(["/bin/true"], as_json=False) == 2
    assert "not built for this system" in capsys.readouterr().err


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    """printable(): control characters, undecodable bytes and invisible ones become escapes."""
    assert fdtable.printable("/tmp/plain path é") == "/tmp/plain path é"
    assert fdtable.printable("a\0b\nc\x7f") == "a\\x00b\\x0ac\\x7f"
    assert fdtable.printable(os.fsdecode(b"x\xff")) == "x\\xff"
    assert fdtable.printable("zero\u200bwidth\U000e0001") == "zero\\u200bwidth\\U000e0001"


def test_format_address_of_odd_families() -> None:
    """Netlink and packet addresses read as text; an abstract name's bytes are escaped."""
    assert fdtable._format_address((42, 5), socket.AF_NETLINK) == "pid=42,groups=0x5"
    packet = ("eth\n0", -30516, 0, 1, b"\x02\x00\x00\x00\x00\x01")
    assert fdtable._format_address(packet, socket.AF_PACKET) == (
        "eth\\x0a0,proto=0x88cc,hw=02:00:00:00:00:01"
    )
    assert fdtable._format_address(b"\0a\0b") == "@a\\x00b"
    netlink = struct.pack("=HHII", socket.AF_NETLINK, 0, 42, 5)
    assert fdtable._decode_sockaddr(socket.AF_NETLINK, netlink) == (42, 5)


def test_pure_socket_info_when_getsockopt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket whose getsockopt and getsockname are refused (EACCES) still describes."""

    def refused(*args: object) -> object:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    a, b = socket.socketpair()
    with a, b:
        monkeypatch.setattr(socket.socket, "getsockopt", refused)
        monkeypatch.setattr(socket.socket, "getsockname", refused)
        monkeypatch.setattr(socket.socket, "getpeername", refused)
        family, socktype, proto, local, peer = pure.socket_info(a.fileno())
        # the family as CPython detects it; nothing else can be read
        assert (family, socktype, proto, local, peer) == (socket.AF_UNIX, -1, 0, None, None)
        monkeypatch.setattr(fdtable, "_choice", lambda: (pure, "python", "test"))
        d = fdtable.describe(a.fileno())
        assert (d.family, d.socktype, d.local, d.peer) == ("AF_UNIX", "SOCK_UNKNOWN", None, None)


EXHAUST = """
import errno, json, os, resource, socket
import pytest_noinherit as p
{before}
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
opened = []
try:
    while True:
        opened.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    assert exc.errno == errno.EMFILE, exc
try:
    result = [str(p.describe(fd)) for fd in mine] + [len(p.snapshot())]
except p.BackendError as exc:
    result = str(exc)
for fd in opened:
    os.close(fd)
print(json.dumps(result))
"""


@pytest.mark.parametrize("backend", ["python", "native"])
def test_describe_with_the_table_full(backend: str) -> None:
    """With no descriptor left (EMFILE), describe() and snapshot() still answer."""
    if backend == "native" and native is None:
        pytest.skip("native core not built")
    setup = """
p.snapshot()  # the backend is loaded while descriptors remain
pair = socket.socketpair()
server = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
r, w = os.pipe()
mine = [pair[0].fileno(), server.fileno(), r]
"""
    out = child(EXHAUST.format(before=setup), env={"PYTEST_NOINHERIT_BACKEND": backend})
    assert isinstance(out, list)
    assert out[0] == "AF_UNIX/SOCK_STREAM (unbound)"
    assert out[1].startswith("AF_NETLINK/SOCK_RAW pid=")
    assert out[2].startswith("pipe:[")
    assert out[3] >= 128


@pytest.mark.parametrize("backend", ["auto", "python", "native"])
def test_backend_cannot_load_with_the_table_full(backend: str) -> None:
    """A backend first needed when no descriptor is left fails with a BackendError that says why."""
    if backend == "native" and native is None:
        pytest.skip("native core not built")
    out = child(EXHAUST.format(before="mine = []"), env={"PYTEST_NOINHERIT_BACKEND": backend})
    assert isinstance(out, str)
    assert out.startswith("cannot load the ")
    assert os.strerror(errno.EMFILE) in out
    assert out.endswith(
        "(the descriptor table is full: take the first snapshot before it"
        " fills up, or raise RLIMIT_NOFILE)"
    )
