"""Records other processes write, and the helpers that turn raw data into reports.

Fork-child spawn records (JSON) and exec-probe records come from processes the
plugin does not control, so every malformed shape must be refused with a
ValueError (RecordError is one) rather than crash the session.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from pytest_noinherit import fdtable, probe, receptions, spawns
from pytest_noinherit.fdtable import FdEntry, FdTable

GOOD_FD = {
    "fd": 7,
    "kind": "pipe",
    "target": "pipe:[1]",
    "dev": 1,
    "ino": 2,
    "inheritable_since": None,
    "created_at": None,
}
GOOD = {
    "route": "fork+exec",
    "pid": 42,
    "argv": ["/bin/true"],
    "how": spawns.REPORTED,
    "received": [GOOD_FD],
    "hint": "",
    "declared": [5],
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def test_spawn_from_json_round_trips_a_good_record() -> None:
    """A well-formed record, written as JSON and read back, is the Spawn that wrote it."""
    spawn = spawns.Spawn.from_json(GOOD)
    assert spawn.argv == ("/bin/true",)
    assert spawn.pid == 42
    assert spawn.declared == (5,)
    assert spawns.Spawn.from_json(json.loads(json.dumps(spawn.to_json()))) == spawn


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([GOOD], "record is not an object"),
        (with_(GOOD, argv="/bin/true"), "argv must be a list of strings"),
        (with_(GOOD, argv=["/bin/true", 3]), "argv must be a list of strings"),
        (with_(GOOD, pid="42"), "pid must be an integer"),
        (with_(GOOD, pid=True), "pid must be an integer"),
        (with_(GOOD, received={"fd": 7}), "received must be a list"),
        (with_(GOOD, route=1), "route, how and hint must be strings"),
        (with_(GOOD, hint=None), "route, how and hint must be strings"),
        (with_(GOOD, declared=[True]), "declared must be a list of integers"),
        (with_(GOOD, declared=5), "declared must be a list of integers"),
        (with_(GOOD, received=[[7]]), "descriptor is not an object"),
        (with_(GOOD, received=[with_(GOOD_FD, fd=-1)]), "fd, dev and ino must be non-negative"),
        (with_(GOOD, received=[with_(GOOD_FD, ino=False)]), "fd, dev and ino must be non-neg"),
        (with_(GOOD, received=[with_(GOOD_FD, kind=None)]), "kind and target must be strings"),
        (
            with_(GOOD, received=[with_(GOOD_FD, created_at=3)]),
            "inheritable_since and created_at must be strings",
        ),
    ],
)
def test_spawn_from_json_refuses_malformed_records(record: object, message: str) -> None:
    """Each malformed field of a fork-child record is refused with a ValueError naming it."""
    with pytest.raises(ValueError, match=message):
        spawns.Spawn.from_json(record)


def test_spawn_from_json_accepts_a_missing_pid_and_defaults() -> None:
    """pid None and absent route/how/hint/declared are valid: a record may omit them."""
    spawn = spawns.Spawn.from_json({"argv": [], "pid": None, "received": []})
    assert spawn == spawns.Spawn("", None, (), "", (), "", ())


def test_load_record_turns_garbage_into_an_unreadable_spawn(tmp_path: Path) -> None:
    """A record that is not JSON, or JSON of the wrong shape, becomes a spawn that says so."""
    bad_json = tmp_path / "1-1.json"
    bad_json.write_bytes(b"{not json")
    wrong_shape = tmp_path / "1-2.json"
    wrong_shape.write_text(json.dumps(with_(GOOD, pid="x")))
    for path, why in ((bad_json, "Expecting"), (wrong_shape, "pid must be an integer")):
        spawn = receptions.load_record(str(path))
        assert spawn.route == receptions.UNREADABLE
        assert spawn.argv == (path.name,)
        assert why in spawn.how
        assert not path.exists()  # consumed either way


def test_tracker_read_records_reports_bad_files_as_problems(tmp_path: Path) -> None:
    """read_records keeps good records, names bad ones in problems, and skips other files."""
    tracker = spawns.SpawnTracker(set(), str(tmp_path))
    (tmp_path / "1-1.json").write_text(json.dumps(GOOD))
    (tmp_path / "1-2.json").write_text("[]")
    (tmp_path / "notes.txt").write_text("not a record")
    got = tracker.read_records()
    assert [s.pid for s in got] == [42]
    assert tracker.problems == ["fork child record ignored: 1-2.json: record is not an object"]
    assert (tmp_path / "notes.txt").exists()


def test_tracker_read_records_without_a_directory(tmp_path: Path) -> None:
    """A record directory that vanished yields no spawns and no error."""
    tracker = spawns.SpawnTracker(set(), str(tmp_path / "gone"))
    assert tracker.read_records() == []


def _table(*rows: tuple[int, int]) -> FdTable:
    """A table of (fd, ino) rows, all inheritable pipes."""
    words: list[int] = []
    for fd, ino in rows:
        words += [fd, 0, 1, ino, 0o010600]
    return FdTable(words)  # type: ignore[arg-type]


def test_after_file_actions_skips_malformed_actions() -> None:
    """Malformed file actions are ignored; well-formed ones still close and replace."""
    table = _table((3, 30), (4, 40), (5, 50), (6, 60))
    actions: list[Any] = [
        None,  # TypeError
        (),  # IndexError
        (os.POSIX_SPAWN_CLOSE, "x"),  # ValueError
        (os.POSIX_SPAWN_DUP2, 3),  # IndexError: no target
        (os.POSIX_SPAWN_CLOSE, 4),
        (os.POSIX_SPAWN_DUP2, 3, 5),
        ("unknown tag", 6),
    ]
    assert [e.fd for e in spawns._after_file_actions(table, actions)] == [3, 6]
    assert spawns._action_targets(actions) == {5}


@pytest.mark.skipif(not hasattr(os, "POSIX_SPAWN_CLOSEFROM"), reason="no closefrom action")
def test_after_file_actions_closefrom() -> None:
    """POSIX_SPAWN_CLOSEFROM drops every descriptor from its number upward."""
    table = _table((3, 30), (4, 40), (9, 90))
    closefrom = os.POSIX_SPAWN_CLOSEFROM  # type: ignore[attr-defined]
    assert [e.fd for e in spawns._after_file_actions(table, [(closefrom, 4)])] == [3]


def test_argv_of_a_non_iterable_and_of_mixed_items() -> None:
    """_argv decodes bytes, stringifies others, and wraps a non-iterable whole."""
    assert receptions.argv_of([b"/bin/echo", "x", 3]) == ("/bin/echo", "x", "3")
    assert receptions.argv_of(42) == ("42",)  # type: ignore[arg-type]


def test_describe_entry_of_a_closed_descriptor() -> None:
    """An entry closed before it is described keeps its kind and says it was closed."""
    r, w = os.pipe()
    st = os.fstat(w)
    os.close(r)
    os.close(w)
    entry = FdEntry(w, True, "pipe", st.st_dev, st.st_ino, st.st_mode)
    desc = spawns.describe_entry(entry, lambda fd, dev, ino: ("here", "there"))
    assert desc.kind == "pipe"
    assert desc.target == "(closed before it could be described)"
    assert (desc.created_at, desc.inheritable_since) == ("here", "there")


def test_read_child_table_of_a_missing_process() -> None:
    """A pid with no /proc entry gives None, not an error."""
    assert spawns.read_child_table(2**22 + 12345) is None


# -- exec probe records -------------------------------------------------------

HEADER = b"noinherit-probe 1\npid 10\nppid 1\ntime 5\nexe /bin/x\nargv a b\n"


def record(*lines: bytes) -> bytes:
    return HEADER + b"".join(line + b"\n" for line in lines) + b"end\n"


def test_parse_record_reads_a_good_record() -> None:
    """A record with fds (escaped target, failed fstat) and truncated parses field by field."""
    rec = probe.parse_record(
        record(b"fd 4 1 2 3 4 4480 /tmp/a\\x20b", b"fd 3 0 -9 -9 -9 -9 x", b"truncated")
    )
    assert (rec.pid, rec.ppid, rec.time, rec.exe, rec.argv) == (10, 1, 5, "/bin/x", ("a", "b"))
    assert [f.fd for f in rec.fds] == [3, 4]
    assert rec.fds[1].target == "/tmp/a b"
    assert rec.fds[0].dev == -9
    assert rec.truncated


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * (probe.RECORD_LIMIT + 1), "record too large"),
        (b"something else\nend\n", "not a probe record"),
        (HEADER, "truncated record"),
        (record(b"fd 4 1 2 3 4 4480 /a\\y20"), "bad escape"),
        (record(b"fd 4 1 2 3 4 4480 /a\\x2"), "bad escape"),
        (record(b"fd 4 1 2 3 4 4480 /a\\xzz"), "bad escape"),
        (record(b"fd 4 1 2 3 4 4480 /a\x01"), "unescaped byte"),
        (record(b"fd 4 1 2 3 4 /a"), "bad fd line"),
        (record(b"fd four 1 2 3 4 4480 /a"), "not a number"),
        (record(b"fd 4 1 2 3 4 1" + b"0" * 21 + b" /a"), "not a number"),
        (record(b"pid 11"), "unexpected line"),
        (record(b"truncated yes"), "unexpected line"),
        (record(b"colour blue"), "unexpected line"),
        (b"noinherit-probe 1\npid 10\nend\n", "missing"),
    ],
)
def test_parse_record_refuses_what_the_probe_never_writes(data: bytes, message: str) -> None:
    """Every deviation from the probe's format is a RecordError naming the problem."""
    with pytest.raises(probe.RecordError, match=message):
        probe.parse_record(data)


def test_parse_record_empty_argv_and_exe() -> None:
    """Empty exe and argv fields parse as '' and ()."""
    data = b"noinherit-probe 1\npid 1\nppid 0\ntime 0\nexe \nargv \nend"
    rec = probe.parse_record(data)
    assert (rec.exe, rec.argv) == ("", ())


def test_read_records_yields_errors_in_time_order(tmp_path: Path) -> None:
    """Bad records become RecordErrors naming the file; records are consumed oldest first."""
    (tmp_path / "9-20.rec").write_bytes(record())
    (tmp_path / "9-10.rec").write_bytes(b"garbage")
    (tmp_path / "9-15.rec").write_bytes(b"x" * (probe.RECORD_LIMIT + 2))
    (tmp_path / "skip.txt").write_bytes(b"")
    got = list(probe.read_records(str(tmp_path)))
    assert [str(g) if isinstance(g, probe.RecordError) else g.pid for g in got] == [
        "9-10.rec: not a probe record",
        f"9-15.rec: larger than {probe.RECORD_LIMIT} bytes",
        10,
    ]
    assert os.listdir(tmp_path) == ["skip.txt"]
    assert list(probe.read_records(str(tmp_path / "missing"))) == []


def test_read_records_refuses_a_symlink(tmp_path: Path) -> None:
    """A record that is a symlink is refused (O_NOFOLLOW) and still removed."""
    target = tmp_path / "elsewhere"
    target.write_bytes(record())
    (tmp_path / "1-1.rec").symlink_to(target)
    (err,) = probe.read_records(str(tmp_path))
    assert isinstance(err, probe.RecordError)
    assert str(err).startswith("1-1.rec: ")
    assert not (tmp_path / "1-1.rec").is_symlink()
    assert target.exists()


def test_self_test_without_a_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a built probe, self_test says so and start() changes nothing."""
    monkeypatch.setattr(probe, "library", lambda: None)
    env = probe.ProbeEnvironment(str(tmp_path))
    assert env.self_test() == "not built for this platform"
    before = dict(os.environ)
    env.start()
    assert not env.active
    assert dict(os.environ) == before


@pytest.mark.skipif(probe.library() is None, reason="the exec probe is not built")
def test_self_test_reports_a_loader_complaint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A preload the loader cannot open is reported with the loader's own message."""
    monkeypatch.setattr(probe, "library", lambda: str(tmp_path / "missing-probe.so"))
    why = probe.ProbeEnvironment(str(tmp_path)).self_test()
    assert why.startswith("the loader complained:")
    assert "missing-probe.so" in why


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no shared libc")
def test_self_test_reports_a_child_without_record(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A preload that loads but writes no record is reported as a silent child."""
    monkeypatch.setattr(probe, "library", lambda: ctypes.util.find_library("c"))
    why = probe.ProbeEnvironment(str(tmp_path)).self_test()
    assert why.startswith("self-test child wrote no record")


@pytest.mark.skipif(probe.library() is None, reason="the exec probe is not built")
def test_probe_environment_start_twice_and_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A second start() is a no-op, and stop() restores the variables exactly."""
    monkeypatch.delenv(probe.DIR_ENV, raising=False)
    monkeypatch.setenv(probe.PRELOAD_ENV, "")
    before = dict(os.environ)
    env = probe.ProbeEnvironment(str(tmp_path))
    env.start()
    preload = os.environ[probe.PRELOAD_ENV]
    env.start()
    assert os.environ[probe.PRELOAD_ENV] == preload
    assert env.active
    env.stop()
    env.stop()
    assert dict(os.environ) == before


# -- socket addresses and table helpers ------------------------------------------


def test_decode_sockaddr_ipv6() -> None:
    """Raw sockaddr_in6 bytes decode to what getsockname() gives for AF_INET6."""
    raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 8080, 7)
    raw += socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("=I", 3)
    addr = fdtable._decode_sockaddr(socket.AF_INET6, raw)
    assert addr == ("::1", 8080, 7, 3)
    assert fdtable._format_address(addr) == "[::1]:8080"


def test_decode_sockaddr_unix_abstract_and_unknown() -> None:
    """Unix paths stop at NUL, abstract names stay bytes, unknown families stay raw."""
    fam = struct.pack("=H", socket.AF_UNIX)
    assert fdtable._decode_sockaddr(socket.AF_UNIX, fam + b"/tmp/s\0junk") == "/tmp/s"
    abstract = fdtable._decode_sockaddr(socket.AF_UNIX, fam + b"\0name")
    assert abstract == b"\0name"
    assert fdtable._format_address(abstract) == "@name"
    assert fdtable._decode_sockaddr(9999, b"\x0f\x27payload") == b"payload"
    assert fdtable._format_address(b"payload") == "b'payload'"
    assert fdtable._format_address("/tmp/s") == "/tmp/s"
    assert fdtable._format_address(("10.0.0.1", 80)) == "10.0.0.1:80"


def test_enum_name_of_an_unknown_value() -> None:
    """A family or type the socket module has no name for is shown with its number."""
    assert fdtable._enum_name(socket.AddressFamily, 9999, "AF_") == "AF_9999"
    assert fdtable._enum_name(socket.SocketKind, socket.SOCK_DGRAM, "SOCK_") == "SOCK_DGRAM"


def test_fd_details_str_with_peer_and_unbound() -> None:
    """FdDetails prints family/type, the local address or (unbound), and the peer."""
    d = fdtable.FdDetails(3, "socket", None, False, "AF_INET", "SOCK_STREAM", None, "1.2.3.4:5")
    assert str(d) == "AF_INET/SOCK_STREAM (unbound) -> 1.2.3.4:5"
    assert str(fdtable.FdDetails(3, "pipe", None)) == "pipe"


def test_fd_table_comparisons_and_repr() -> None:
    """FdTable equality ignores non-tables, and repr lists each fd with its flag and kind."""
    table = _table((3, 30))
    assert (table == 3) is False
    assert table.made_inheritable_since(table) == []
    closed = FdTable([4, 1, 1, 40, 0o100644])  # type: ignore[arg-type]
    assert repr(table) == "<FdTable 1 open: 3:pipe>"
    assert repr(closed) == "<FdTable 1 open: 4c:file>"


def test_refined_kind_of_link_targets() -> None:
    """refined_kind recognises pidfs, memfd, tty and anonymous inodes by their link text."""
    assert fdtable.refined_kind("anon", "pidfd:[12]") == "pidfd"
    assert fdtable.refined_kind("anon", "anon_inode:[pidfd]") == "pidfd"
    assert fdtable.refined_kind("anon", "anon_inode:[something new]") == "anon"
    assert fdtable.refined_kind("file", "/memfd:x (deleted)") == "memfd"
    assert fdtable.refined_kind("chr", "/dev/pts/3") == "tty"
    assert fdtable.refined_kind("chr", "/dev/null") == "chr"
