"""The exec probe (``_native/probe.c``) preloaded into real programs.

These tests drive the shared object directly through ``LD_PRELOAD`` and
``NOINHERIT_PROBE_DIR``, the way the plugin will, and read the records it
writes: the record format is the contract with the plugin's reader.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pytest_noinherit
from pytest_noinherit import fdtable

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux"
)

PROBE_NAME = "libnoinherit-probe.so"
PROBE_ROOT = Path(pytest_noinherit.__file__).resolve().parent / "_probe"
# ld.so expands $LIB per ABI; musl loads the directory literally named "$LIB".
PRELOAD = f"{PROBE_ROOT}/$LIB/{PROBE_NAME}"
BUILT_FOR = {"x86_64", "aarch64"}
RECORD_NAME = re.compile(r"\d+-\d+\.rec")

requires_probe = pytest.mark.skipif(
    not (PROBE_ROOT / "$LIB" / PROBE_NAME).is_file(), reason="exec probe not built"
)


@dataclass
class FdLine:
    """One ``fd`` line of a record."""

    fd_flags: int
    status_flags: int
    dev: int
    ino: int
    mode: int
    target: bytes
    #: A socket's ``sock`` line: SO_DOMAIN, SO_TYPE, raw local and peer address.
    sock: tuple[int, int, bytes | None, bytes | None] | None = None


@dataclass
class ProbeRecord:
    """A parsed record file."""

    pid: int
    ppid: int
    time: int
    exe: bytes
    argv: list[bytes]
    fds: dict[int, FdLine] = field(default_factory=dict)
    truncated: bool = False
    size: int = 0


def unescape(text: str) -> bytes:
    r"""Undo the probe's ``\xHH`` escaping."""
    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode("ascii"))


def parse_record(data: bytes) -> ProbeRecord:
    """The record in data; asserts the framing (header line first, ``end`` last)."""
    lines = data.decode("ascii").split("\n")
    assert lines[0] == "noinherit-probe 1"
    assert lines[-2:] == ["end", ""], "a record ends with an 'end' line"
    head = dict(line.split(" ", 1) for line in lines[1:4])
    assert lines[4].startswith("exe ")
    assert lines[5].split(" ", 1)[0] == "argv"
    record = ProbeRecord(
        pid=int(head["pid"]),
        ppid=int(head["ppid"]),
        time=int(head["time"]),
        exe=unescape(lines[4][4:]),
        # single spaces separate fields, so an empty argument is an empty field
        argv=[unescape(arg) for arg in lines[5].split(" ")[1:]],
        size=len(data),
    )
    previous = ""
    for line in lines[6:-2]:
        if line == "truncated":
            record.truncated = True
            continue
        if line.startswith("sock "):
            _, fd, family, kind, local, peer = line.split(" ")
            assert previous.split(" ")[:2] == ["fd", fd], "a sock line follows its fd line"
            assert stat.S_ISSOCK(record.fds[int(fd)].mode)
            addresses = (None if a == "-" else bytes.fromhex(a) for a in (local, peer))
            record.fds[int(fd)].sock = (int(family), int(kind), *addresses)
            previous = line
            continue
        previous = line
        tag, fd, fd_flags, status_flags, dev, ino, mode, target = line.split(" ")
        assert tag == "fd"
        record.fds[int(fd)] = FdLine(
            int(fd_flags), int(status_flags), int(dev), int(ino), int(mode), unescape(target)
        )
    return record


def read_records(directory: Path) -> list[ProbeRecord]:
    """Every record in directory, oldest first; asserts nothing else (no ``.tmp``) is there."""
    names = sorted(os.listdir(directory))
    assert all(RECORD_NAME.fullmatch(name) for name in names), names
    records = [parse_record((directory / name).read_bytes()) for name in names]
    return sorted(records, key=lambda r: r.time)


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    """An empty, private record directory."""
    path = tmp_path / "records"
    path.mkdir(mode=0o700)
    return path


PROBE_VARIABLES = ("LD_PRELOAD", "NOINHERIT_PROBE_DIR", "NOINHERIT_PROBE_ALL")


def probe_env(record_dir: Path | str | None, **extra: str) -> dict[str, str]:
    """This environment plus the probe, recording every exec (NOINHERIT_PROBE_ALL=1).

    record_dir None leaves NOINHERIT_PROBE_DIR out.  Most tests here look at
    records of programs that hold only 0-2, which the probe leaves out
    unless asked: ``NOINHERIT_PROBE_ALL=""`` in extra drops the variable.
    """
    env = {k: v for k, v in os.environ.items() if k not in PROBE_VARIABLES}
    env["LD_PRELOAD"] = PRELOAD
    env["NOINHERIT_PROBE_ALL"] = "1"
    if record_dir is not None:
        env["NOINHERIT_PROBE_DIR"] = str(record_dir)
    env.update(extra)
    if not env["NOINHERIT_PROBE_ALL"]:
        del env["NOINHERIT_PROBE_ALL"]
    return env


def run_probed(
    argv: Sequence[str], env: Mapping[str, str], close_fds: bool = True
) -> tuple[int, bytes]:
    """Run argv to success with stderr captured; asserts the stderr is empty.

    Returns the child's pid and its stdout.
    """
    with subprocess.Popen(
        argv,
        env=env,
        close_fds=close_fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, b"")
    return proc.pid, out


def compiles(cc: str, *args: str, tmp_path: Path) -> Path | None:
    """A hello-world program built by ``cc *args``, or None when that toolchain is missing."""
    if shutil.which(cc) is None:
        return None
    source = tmp_path / "hello.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    program = tmp_path / f"hello-{cc}{''.join(args)}"
    done = subprocess.run(
        [cc, *args, "-o", str(program), str(source)], capture_output=True, check=False
    )
    return program if done.returncode == 0 else None


@pytest.mark.skipif(platform.machine() not in BUILT_FOR, reason="no probe for this arch")
def test_probe_is_built_for_every_libdir() -> None:
    """The install put the probe in every $LIB directory of the 64-bit ABI."""
    libdir = f"lib/{platform.machine()}-linux-gnu"
    for name in (libdir, "lib64", "lib", "$LIB"):
        assert (PROBE_ROOT / name / PROBE_NAME).is_file(), name


@requires_probe
@pytest.mark.skipif(not shutil.which("readelf"), reason="needs binutils")
def test_probe_imports_and_exports_nothing() -> None:
    """The probe has no NEEDED entry and no dynamic symbol: it loads into any libc."""
    path = str(PROBE_ROOT / "$LIB" / PROBE_NAME)
    dynamic = subprocess.run(["readelf", "-dW", path], capture_output=True, text=True, check=True)
    assert "NEEDED" not in dynamic.stdout
    assert "INIT_ARRAY" in dynamic.stdout
    symbols = subprocess.run(
        ["readelf", "--dyn-syms", "-W", path], capture_output=True, text=True, check=True
    )
    # Num: Value Size Type Bind Vis Ndx [Name].  Some linkers (arm64) add
    # LOCAL section symbols; nothing may be GLOBAL or WEAK, defined or not.
    rows = [line.split() for line in symbols.stdout.splitlines() if re.match(r"\s*\d+:", line)]
    assert rows
    assert all(row[4] == "LOCAL" for row in rows), rows


@requires_probe
def test_true_writes_one_record(record_dir: Path) -> None:
    """/bin/true leaves exactly one record: its pid, our pid as ppid, fds 0-2."""
    pid, _ = run_probed(["/bin/true"], probe_env(record_dir))
    [record] = read_records(record_dir)
    assert (record.pid, record.ppid) == (pid, os.getpid())
    assert record.exe == os.fsencode(os.path.realpath("/bin/true"))
    assert record.argv == [b"/bin/true"]
    assert sorted(record.fds) == [0, 1, 2]
    devnull = os.stat(os.devnull)
    assert (record.fds[0].dev, record.fds[0].ino) == (devnull.st_dev, devnull.st_ino)
    assert record.fds[0].target == b"/dev/null"
    assert stat.S_ISFIFO(record.fds[1].mode)
    [name] = os.listdir(record_dir)
    assert name.startswith(f"{pid}-")
    assert stat.S_IMODE(os.stat(record_dir / name).st_mode) == 0o600


@requires_probe
@pytest.mark.allow_inherit(kind="pipe")  # the leak is this test's subject
def test_inherited_pipe_end_is_recorded_with_its_identity(record_dir: Path) -> None:
    """An inheritable pipe end passed with close_fds=False shows up as itself."""
    r, w = os.pipe()
    try:
        os.set_inheritable(w, True)
        run_probed(["/bin/true"], probe_env(record_dir), close_fds=False)
        [record] = read_records(record_dir)
        assert r not in record.fds  # O_CLOEXEC, as PEP 446 made it
        line = record.fds[w]
        st = os.fstat(w)
        assert (line.dev, line.ino, line.mode) == (st.st_dev, st.st_ino, st.st_mode)
        assert line.fd_flags == 0  # no FD_CLOEXEC
        assert line.status_flags == _status_flags(w)
        assert line.target == f"pipe:[{st.st_ino}]".encode()
    finally:
        os.close(r)
        os.close(w)


@requires_probe
@pytest.mark.allow_inherit(kind="socket")  # the leaks are this test's subject
@pytest.mark.allow_inherit(kind="pipe")
def test_sockets_are_recorded_with_their_addresses(record_dir: Path, tmp_path: Path) -> None:
    """A socket's sock line carries family, type and the raw addresses the kernel returned."""
    path = tmp_path / "app.sock"
    with (
        socket.socket() as listening,
        socket.socket(socket.AF_UNIX) as server,
        socket.socket(socket.AF_UNIX) as client,
    ):
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        server.bind(str(path))
        server.listen()
        client.connect(str(path))
        pipe_r, pipe_w = os.pipe()
        socks = (listening, server, client)
        for sock in socks:
            sock.set_inheritable(True)
        try:
            os.set_inheritable(pipe_w, True)
            run_probed(["/bin/true"], probe_env(record_dir), close_fds=False)
        finally:
            os.close(pipe_r)
            os.close(pipe_w)
        [record] = read_records(record_dir)
        port = listening.getsockname()[1]
        inet = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + bytes([127, 0, 0, 1])
        unix = struct.pack("=H", socket.AF_UNIX) + os.fsencode(path) + b"\0"
        assert record.fds[listening.fileno()].sock == (
            socket.AF_INET,
            socket.SOCK_STREAM,
            inet + bytes(8),  # sin_zero
            None,  # listening: getpeername() is ENOTCONN
        )
        assert record.fds[server.fileno()].sock == (socket.AF_UNIX, socket.SOCK_STREAM, unix, None)
        unnamed = struct.pack("=H", socket.AF_UNIX)
        assert record.fds[client.fileno()].sock == (
            socket.AF_UNIX,
            socket.SOCK_STREAM,
            unnamed,
            unix,
        )
        assert record.fds[pipe_w].sock is None  # only sockets have a sock line
        for sock in socks:  # what the plugin shows for a socket the test has closed since
            probed = record.fds[sock.fileno()].sock
            assert probed is not None
            d = fdtable.describe(sock.fileno())
            assert fdtable.socket_target(*probed) == (d.kind, str(d))


def _status_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


@requires_probe
def test_shell_and_its_children_are_recorded(record_dir: Path) -> None:
    """sh, and the true and cat it starts, each leave a record; their ppid is sh."""
    # The trailing "exit" keeps the shell from exec'ing cat in its own process.
    sh_pid, _ = run_probed(
        ["/bin/sh", "-c", "/bin/true; cat /dev/null; exit 0"], probe_env(record_dir)
    )
    sh, true, cat = read_records(record_dir)
    assert (sh.pid, sh.ppid) == (sh_pid, os.getpid())
    assert sh.argv == [b"/bin/sh", b"-c", b"/bin/true; cat /dev/null; exit 0"]
    assert (true.argv, true.ppid) == ([b"/bin/true"], sh_pid)
    assert (cat.argv, cat.ppid) == ([b"cat", b"/dev/null"], sh_pid)
    assert len({sh.pid, true.pid, cat.pid}) == 3


@requires_probe
def test_argv_round_trips_through_escaping(record_dir: Path) -> None:
    """Newlines, spaces, backslashes, non-ASCII and empty arguments survive the record."""
    program = textwrap.dedent(
        """\
        import sys
        # a comment with a backslash \\ and a tab\t
        print(repr(sys.argv[1:]))
        """
    )
    argv = [sys.executable, "-c", program, "", "two words", "é\\x41", "\x01\x7f"]
    _, out = run_probed(argv, probe_env(record_dir))
    assert out.decode().strip() == repr(argv[3:])
    [record] = read_records(record_dir)
    assert record.argv == [os.fsencode(arg) for arg in argv]
    assert record.exe == os.fsencode(os.path.realpath(sys.executable))


@requires_probe
def test_probe_leaves_no_descriptor_behind(record_dir: Path) -> None:
    """The program sees the same descriptor table with the probe as without it."""
    argv = [sys.executable, "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"]
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    _, without = run_probed(argv, plain_env)
    _, with_probe = run_probed(argv, probe_env(record_dir))
    assert with_probe == without
    assert len(read_records(record_dir)) == 1


@requires_probe
def test_many_children_leave_only_records(record_dir: Path) -> None:
    """Every exec leaves one complete .rec and no .tmp file."""
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; exit 0"
    run_probed(["/bin/sh", "-c", script], probe_env(record_dir))
    records = read_records(record_dir)
    assert len(records) == 11
    assert len({r.pid for r in records}) == 11


@requires_probe
def test_probe_dir_is_found_in_a_large_environment(record_dir: Path, tmp_path: Path) -> None:
    """The variable is found after 200 KiB of environment, and look-alike names are ignored."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in PROBE_VARIABLES}
    for i in range(4):  # /proc/self/environ is read in 64 KiB chunks
        env[f"BIG{i}"] = "NOINHERIT_PROBE_DIR=" * 2_500  # one string stays below 128 KiB
    env["XNOINHERIT_PROBE_DIR"] = str(decoy)
    env["NOINHERIT_PROBE_DIRX"] = str(decoy)
    env["LD_PRELOAD"] = PRELOAD
    env["NOINHERIT_PROBE_DIR"] = str(record_dir)
    env["NOINHERIT_PROBE_ALL"] = "1"  # found after the directory, in the last chunk
    pid, _ = run_probed(["/bin/true"], env)
    [record] = read_records(record_dir)
    assert record.pid == pid
    assert os.listdir(decoy) == []


def _run_clean_or_not(record_dir: Path, shell: str, **extra: str) -> list[ProbeRecord]:
    """Records of /bin/true started by sh -c 'shell; exec /bin/true' (sh itself is not probed)."""
    env = probe_env(record_dir, NOINHERIT_PROBE_ALL="", **extra)
    env["LD_PRELOAD"] = ""
    env["PROBE"] = PRELOAD
    # The shell arranges the table, then execs true with the probe preloaded.
    run_probed(["/bin/sh", "-c", f'{shell}; LD_PRELOAD="$PROBE" exec /bin/true'], env)
    return read_records(record_dir)


@requires_probe
def test_a_program_holding_only_stdio_writes_no_record(record_dir: Path) -> None:
    """Without NOINHERIT_PROBE_ALL a program with only 0-2 open received nothing: no record."""
    assert _run_clean_or_not(record_dir, ":") == []


@requires_probe
@pytest.mark.parametrize("closed", ["0<&-", "1>&-", "2>&-", "0<&- 1>&- 2>&-"])
def test_a_program_missing_some_stdio_writes_no_record(record_dir: Path, closed: str) -> None:
    """With stdio descriptors closed (the probe's own then takes a number below 3): no record."""
    assert _run_clean_or_not(record_dir, f"exec {closed}") == []


@requires_probe
@pytest.mark.parametrize("shell", ["exec 3</dev/null", "exec 7</dev/null", "exec 1>&- 5</dev/null"])
def test_a_program_holding_more_than_stdio_writes_its_record(record_dir: Path, shell: str) -> None:
    """One descriptor beyond 0-2, wherever it is and whatever stdio is missing: a record."""
    [record] = _run_clean_or_not(record_dir, shell)
    fd = int(shell.rpartition(" ")[2].partition("<")[0])
    assert fd in record.fds
    assert record.fds[fd].target == b"/dev/null"


@requires_probe
@pytest.mark.parametrize("value", ["0", "11", "", "yes"])
def test_only_all_1_records_every_exec(record_dir: Path, value: str) -> None:
    """NOINHERIT_PROBE_ALL means every exec only when it is exactly 1; look-alikes are ignored."""
    env = probe_env(record_dir, NOINHERIT_PROBE_ALLX="1", XNOINHERIT_PROBE_ALL="1")
    env["NOINHERIT_PROBE_ALL"] = value
    run_probed(["/bin/true"], env)
    assert read_records(record_dir) == []


@requires_probe
@pytest.mark.parametrize("value", [None, "", "relative/dir"], ids=["absent", "empty", "relative"])
def test_probe_is_off_without_an_absolute_dir(
    value: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without NOINHERIT_PROBE_DIR (or with an empty or relative one) nothing is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative" / "dir").mkdir(parents=True)
    _, out = run_probed([sys.executable, "-c", "print('ran')"], probe_env(value))
    assert out == b"ran\n"
    assert not list(tmp_path.rglob("*.rec"))
    assert not list(tmp_path.rglob("*.tmp"))


@requires_probe
@pytest.mark.parametrize("kind", ["missing", "a-file", "procfs"])
def test_unusable_record_dir_is_silent(kind: str, tmp_path: Path) -> None:
    """A record directory that cannot take files leaves the program running normally."""
    directory = {
        "missing": tmp_path / "does-not-exist",
        "a-file": tmp_path / "file",
        "procfs": Path("/proc"),  # refuses new files, even to root
    }[kind]
    (tmp_path / "file").write_text("")
    _, out = run_probed(["/bin/sh", "-c", "echo ran; /bin/true"], probe_env(directory))
    assert out == b"ran\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@requires_probe
def test_large_table_is_recorded_whole(record_dir: Path, tmp_path: Path) -> None:
    """A descriptor table far beyond 256 KiB of record is written whole, never cut short."""
    # ~300-byte fd lines: 1500 of them are about 450 KiB.  The fds are opened in a
    # child interpreter so this process's table stays as it is.
    long_dir = tmp_path / ("d" * 200)
    long_dir.mkdir()
    target = long_dir / ("f" * 60)
    target.write_text("")
    program = textwrap.dedent(
        f"""\
        import os, resource, subprocess, sys
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 2000:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(2000, hard), hard))
        fd = os.open({str(target)!r}, os.O_RDONLY)
        os.set_inheritable(fd, True)
        for _ in range(1500):
            os.dup2(fd, os.dup(fd))  # dup2 makes the copy inheritable (PEP 446)
        subprocess.run(["/bin/true"], close_fds=False, env=os.environ, check=True)
        """
    )
    env = probe_env(None)
    env["CHILD_PROBE_DIR"] = str(record_dir)
    # Only the /bin/true is probed: the interpreter gets the variable itself.
    program = (
        "import os; os.environ['NOINHERIT_PROBE_DIR'] = os.environ['CHILD_PROBE_DIR']\n" + program
    )
    run_probed([sys.executable, "-c", program], env)
    [record] = read_records(record_dir)
    assert not record.truncated
    assert len(record.fds) > 1500
    assert record.size > 256 * 1024
    assert {0, 1, 2} <= set(record.fds)


@requires_probe
def test_32bit_program_is_silent(record_dir: Path, tmp_path: Path) -> None:
    """A 32-bit program finds a do-nothing stub under $LIB: no record, no ld.so error."""
    program = compiles("cc", "-m32", tmp_path=tmp_path)
    if program is None:
        pytest.skip("no 32-bit toolchain (cc -m32)")
    _, out = run_probed([str(program)], probe_env(record_dir))
    assert out == b"hello\n"
    assert read_records(record_dir) == []


@requires_probe
def test_musl_program_is_recorded(record_dir: Path, tmp_path: Path) -> None:
    """A musl program loads the probe from the literal $LIB directory and is recorded."""
    program = compiles("musl-gcc", tmp_path=tmp_path)
    if program is None:
        pytest.skip("no musl-gcc")
    pid, out = run_probed([str(program)], probe_env(record_dir))
    assert out == b"hello\n"
    [record] = read_records(record_dir)
    assert record.pid == pid


@contextlib.contextmanager
def noexec_mount(where: Path) -> Iterator[None]:
    """A tmpfs mounted noexec at where, or a skip when this process may not mount."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting needs root")
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=1m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(where)], check=True)


@requires_probe
def test_probe_on_a_noexec_mount_is_not_loaded(record_dir: Path, tmp_path: Path) -> None:
    """From a noexec mount ld.so cannot map the probe: no record, the program still runs."""
    mount_point = tmp_path / "noexec"
    with noexec_mount(mount_point):
        shutil.copy(PROBE_ROOT / "$LIB" / PROBE_NAME, mount_point / PROBE_NAME)
        env = probe_env(record_dir, LD_PRELOAD=str(mount_point / PROBE_NAME))
        done = subprocess.run(["/bin/true"], env=env, capture_output=True, check=False)
    assert done.returncode == 0
    assert read_records(record_dir) == []
    # ld.so reports it on the program's stderr: what the plugin's self-test sees.
    print(done.stderr.decode(errors="replace"))
    assert b"cannot be preloaded" in done.stderr


@requires_probe
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
@pytest.mark.skipif("ASAN_OPTIONS" in os.environ, reason="sanitizers do not run under valgrind")
def test_under_valgrind_its_own_descriptors_are_left_out(record_dir: Path) -> None:
    """valgrind's descriptors above the limit it shows the program are not the program's."""
    r, w = os.pipe()
    try:
        env = probe_env(record_dir, NOINHERIT_PROBE_ALL="")
        argv = ["valgrind", "-q", "--trace-children=yes", "/bin/true"]
        done = subprocess.run(argv, env=env, pass_fds=(w,), capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
    finally:
        os.close(r)
        os.close(w)
    [record] = [r for r in read_records(record_dir) if r.exe.endswith(b"/true")]
    assert sorted(record.fds) == [0, 1, 2, w]
