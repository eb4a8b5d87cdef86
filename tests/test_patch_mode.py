"""Patch mode's wrappers, tested directly: installed in the test, undone in a finally.

These tests call :func:`pytest_noinherit.creators.install` themselves instead
of running an inner session: what is proved here is the wrappers' own
behaviour (flags, records, restoration), which needs no plugin around it.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import io
import os
import pickle
import posix
import pty
import select
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing import reduction
from pathlib import Path
from typing import Any

import pytest

from pytest_noinherit import creators

ROOT = Path(__file__).resolve().parent.parent
HERE = "tests/test_patch_mode.py"
TEST_ID = "tests/test_patch_mode.py::the_test"

# Everything the patch touches, so that "nothing changed afterwards" means
# every attribute of every one of them, not only the ones we meant to patch.
OWNERS: list[Any] = [builtins, io, os, posix, socket, socket.socket, pty, fcntl, reduction, select]
_ORIGINAL_OS_OPEN = os.open
_ORIGINAL_DUP2 = os.dup2


@contextlib.contextmanager
def patched(test_id: str | None = TEST_ID) -> Iterator[creators.CreationRecords]:
    """Patch mode for the body of a with statement; the records it fills."""
    records = creators.CreationRecords(root=ROOT)
    undo = creators.install(records, lambda: test_id)
    try:
        yield records
    finally:
        undo()


def identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def lookup(records: creators.CreationRecords, fd: int) -> tuple[str | None, str | None]:
    return records.lookup(fd, *identity(fd))


def line_of_next_statement() -> int:
    """The line number right after the caller's current line."""
    return sys._getframe(1).f_lineno + 1


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Register descriptors or objects to close when the test ends."""
    things: list[Any] = []

    def add(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield add
    for thing in reversed(things):
        for each in thing if isinstance(thing, tuple) else (thing,):
            with contextlib.suppress(OSError):
                if isinstance(each, int):
                    os.close(each)
                else:
                    each.close()


# -- every creator returns non-inheritable descriptors --------------------------------


def _pipe2() -> list[int]:
    return list(os.pipe2(0))


def _fcntl_dupfd() -> list[int]:
    return [fcntl.fcntl(0, fcntl.F_DUPFD, 10)]


def _eventfd() -> list[int]:
    return [os.eventfd(0, 0)]


def _memfd() -> list[int]:
    return [os.memfd_create("patch-mode", 0)]


def _simple() -> list[int]:
    fds = [os.open(os.devnull, os.O_RDONLY), *os.pipe(), os.dup(0), *os.openpty()]
    return [*fds, *pty.openpty()]


def _socket_creators() -> list[int]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    a, b = socket.socketpair()
    made = [server, client, accepted, a, b, a.dup(), socket.fromfd(b.fileno(), socket.AF_UNIX, 1)]
    fds = [os.dup(s.fileno()) for s in made]  # the objects close; the copies are checked
    for s in made:
        s.close()
    return fds


CREATORS = {
    "os.pipe2(0)": _pipe2,
    "fcntl(F_DUPFD)": _fcntl_dupfd,
    **({"os.eventfd(flags=0)": _eventfd} if hasattr(os, "eventfd") else {}),  # 3.10+
    "os.memfd_create(flags=0)": _memfd,
    "os.open/pipe/dup/openpty, pty.openpty": _simple,
    "socket creators": _socket_creators,
}


@pytest.mark.parametrize("make", CREATORS.values(), ids=CREATORS.keys())
def test_creators_return_non_inheritable(
    make: Callable[[], list[int]], closing: Callable[[Any], Any]
) -> None:
    """Each creator's descriptors are close-on-exec while the patch is installed."""
    with patched():
        fds = [closing(fd) for fd in make()]
    assert fds
    assert [fd for fd in fds if os.get_inheritable(fd)] == []


def test_unpatched_pipe2_and_f_dupfd_are_inheritable(closing: Callable[[Any], Any]) -> None:
    """Without the patch the same calls give inheritable descriptors (the baseline)."""
    fds = [closing(fd) for fd in (*os.pipe2(0), fcntl.fcntl(0, fcntl.F_DUPFD, 10))]
    assert all(os.get_inheritable(fd) for fd in fds)


@pytest.mark.parametrize("module", [os, pty], ids=["os.forkpty", "pty.fork"])
def test_forkpty_master_is_not_inheritable(module: Any) -> None:
    """The master of os.forkpty()/pty.fork() is close-on-exec in the parent (gh-139184)."""
    name = "forkpty" if module is os else "fork"
    with patched() as records:
        pid, master = getattr(module, name)()
        if pid == 0:  # the child: leave at once, without pytest's clean-up
            os._exit(0)
        try:
            assert not os.get_inheritable(master)
            created, _ = lookup(records, master)
            assert created is not None
            assert created.startswith(f"created by {module.__name__}.{name}() at {HERE}:")
        finally:
            os.close(master)
            os.waitpid(pid, 0)


def test_forkpty_master_is_inheritable_without_the_patch() -> None:
    """The baseline: unpatched, the os.forkpty() master is inheritable (gh-139184)."""
    pid, master = os.forkpty()
    if pid == 0:
        os._exit(0)
    try:
        if sys.version_info < (3, 15):
            assert os.get_inheritable(master)
    finally:
        os.close(master)
        os.waitpid(pid, 0)


def _send_inheritable_fd(sender: socket.socket, closing: Callable[[Any], Any]) -> None:
    r, w = os.pipe()
    closing(r)
    closing(w)
    os.set_inheritable(r, True)
    socket.send_fds(sender, [b"x"], [r])


def test_recv_fds_are_not_inheritable(closing: Callable[[Any], Any]) -> None:
    """socket.recv_fds() gives close-on-exec descriptors, with a record."""
    a, b = closing(socket.socketpair())
    with patched() as records:
        _send_inheritable_fd(a, closing)
        line = line_of_next_statement()
        _, fds, msg_flags, _ = socket.recv_fds(b, 1, 1)
        closing(fds[0])
        assert not os.get_inheritable(fds[0])
        assert msg_flags == 0  # Linux echoes MSG_CMSG_CLOEXEC there; the caller never asked
        assert lookup(records, fds[0])[0] == (
            f"created by socket.recv_fds() at {HERE}:{line}"
            f" in test_recv_fds_are_not_inheritable [{TEST_ID}]"
        )


def test_recvmsg_scm_rights_are_not_inheritable(closing: Callable[[Any], Any]) -> None:
    """socket.socket.recvmsg() carrying SCM_RIGHTS passes MSG_CMSG_CLOEXEC."""
    a, b = closing(socket.socketpair())
    with patched() as records:
        _send_inheritable_fd(a, closing)
        _, ancdata, msg_flags, _ = b.recvmsg(1, socket.CMSG_SPACE(4))
        fd = closing(int.from_bytes(ancdata[0][2][:4], sys.byteorder, signed=True))
        assert not os.get_inheritable(fd)
        assert msg_flags == 0
        created, _ = lookup(records, fd)
        assert created is not None
        assert created.startswith("created by socket.socket.recvmsg()")


def test_multiprocessing_recvfds_are_not_inheritable(closing: Callable[[Any], Any]) -> None:
    """multiprocessing.reduction.recvfds() gives close-on-exec descriptors."""
    a, b = closing(socket.socketpair())
    r, w = os.pipe()
    closing(r)
    closing(w)
    with patched() as records:
        reduction.sendfds(a, [r, w])
        fds = [closing(fd) for fd in reduction.recvfds(b, 2)]
        assert [os.get_inheritable(fd) for fd in fds] == [False, False]
        created, _ = lookup(records, fds[1])
        assert created is not None
        assert created.startswith("created by multiprocessing.reduction.recvfds()")


def test_recv_fds_inheritable_without_the_patch(closing: Callable[[Any], Any]) -> None:
    """The baseline: unpatched, received descriptors are inheritable (no MSG_CMSG_CLOEXEC)."""
    a, b = closing(socket.socketpair())
    _send_inheritable_fd(a, closing)
    _, fds, _, _ = socket.recv_fds(b, 1, 1)
    assert os.get_inheritable(closing(fds[0]))


# -- os.dup2 follows PEP 446's text ------------------------------------------------------


def test_dup2_target_above_stdio_is_not_inheritable(closing: Callable[[Any], Any]) -> None:
    """dup2(fd, fd2 >= 3) gives a close-on-exec fd2 unless inheritable=True is passed."""
    r, w = os.pipe()
    closing(r)
    closing(w)
    spare, other = closing(os.dup(r)), closing(os.dup(r))
    with patched() as records:
        assert os.dup2(w, spare) == spare
        assert not os.get_inheritable(spare)
        os.dup2(w, other, inheritable=True)
        assert os.get_inheritable(other)
        os.dup2(w, other, False)
        assert not os.get_inheritable(other)
        created, since = lookup(records, spare)
        assert created is not None
        assert created.startswith("created by os.dup2()")
        assert since is None


@contextlib.contextmanager
def stdout_saved() -> Iterator[int]:
    """A copy of stdout at a spare number; fd 1 and its flag are put back afterwards."""
    sys.stdout.flush()
    saved = os.dup(1)
    was_inheritable = os.get_inheritable(1)
    try:
        yield saved
    finally:
        _ORIGINAL_DUP2(saved, 1, was_inheritable)
        os.close(saved)


def test_dup2_onto_stdio_is_inheritable() -> None:
    """dup2(fd, 1) with fd != 1 makes fd 1 inheritable, unless inheritable=False is passed."""
    with stdout_saved() as copy, patched() as records:
        os.set_inheritable(1, False)
        line = line_of_next_statement()
        os.dup2(copy, 1)
        assert os.get_inheritable(1)
        _, since = lookup(records, 1)
        assert since == (
            f"made inheritable by os.dup2() at {HERE}:{line} in test_dup2_onto_stdio_is_inheritable"
        )
        os.dup2(copy, 1, inheritable=False)
        assert not os.get_inheritable(1)


def test_dup2_onto_itself_changes_nothing() -> None:
    """dup2(1, 1) leaves fd 1's flag as it was, whichever it was."""
    with stdout_saved(), patched():
        for flag in (False, True):
            os.set_inheritable(1, flag)
            assert os.dup2(1, 1) == 1
            assert os.get_inheritable(1) is flag


# -- records ---------------------------------------------------------------------------------


def test_created_at_names_this_file_and_line(closing: Callable[[Any], Any]) -> None:
    """created_at gives the creator, this file, the line, the function and the test id."""
    with patched() as records:
        line = line_of_next_statement()
        r, w = os.pipe()
        f = closing(open(os.devnull))  # noqa: SIM115
        s = closing(socket.socket())
    closing(r)
    closing(w)
    func = "test_created_at_names_this_file_and_line"
    assert lookup(records, r) == (
        f"created by os.pipe() at {HERE}:{line} in {func} [{TEST_ID}]",
        None,
    )
    assert lookup(records, f.fileno())[0] == (
        f"created by open() at {HERE}:{line + 1} in {func} [{TEST_ID}]"
    )
    assert lookup(records, s.fileno())[0] == (
        f"created by socket.socket() at {HERE}:{line + 2} in {func} [{TEST_ID}]"
    )


def test_created_at_skips_stdlib_frames(closing: Callable[[Any], Any]) -> None:
    """A descriptor the stdlib creates on the test's behalf is blamed on the test's line."""
    with patched(test_id=None) as records:
        line = line_of_next_statement()
        fd, path = tempfile.mkstemp()
        server = closing(socket.create_server(("127.0.0.1", 0)))
    closing(fd)
    os.unlink(path)
    func = "test_created_at_skips_stdlib_frames"
    assert lookup(records, fd)[0] == f"created by os.open() at {HERE}:{line} in {func}"
    assert lookup(records, server.fileno())[0] == (
        f"created by socket.socket() at {HERE}:{line + 1} in {func}"
    )


def test_set_inheritable_records_inheritable_since(closing: Callable[[Any], Any]) -> None:
    """os.set_inheritable, socket.set_inheritable and fcntl F_SETFD record where."""
    a, b = closing(socket.socketpair())
    r, w = os.pipe()
    closing(r)
    closing(w)
    func = "test_set_inheritable_records_inheritable_since"
    with patched() as records:
        line = line_of_next_statement()
        os.set_inheritable(r, True)
        a.set_inheritable(True)
        fcntl.fcntl(w, fcntl.F_SETFD, 0)
        b.set_inheritable(True)
        b.set_inheritable(False)
        assert lookup(records, r) == (
            None,  # created before the patch
            f"made inheritable by os.set_inheritable() at {HERE}:{line} in {func}",
        )
        assert lookup(records, a.fileno())[1] == (
            f"made inheritable by socket.socket.set_inheritable() at {HERE}:{line + 1} in {func}"
        )
        assert lookup(records, w)[1] == (
            f"made inheritable by fcntl.fcntl(F_SETFD) at {HERE}:{line + 2} in {func}"
        )
        assert lookup(records, b.fileno())[1] is None


def test_identity_mismatch_after_close_and_reopen_drops_the_record() -> None:
    """A record whose descriptor was closed and the number reused elsewhere is gone."""
    with patched() as records:
        r, w = os.pipe()
        f = open(os.devnull, "rb")  # noqa: SIM115
        number = f.fileno()
        os.close(r)
        f.close()
        # Both numbers reused, for another file, by functions the patch does
        # not see (the originals).
        devnull = _ORIGINAL_OS_OPEN(os.devnull, os.O_RDONLY)
        for fd in (r, number):
            if fd != devnull:
                _ORIGINAL_DUP2(devnull, fd, False)
        try:
            assert lookup(records, r) == (None, None)
            assert lookup(records, number) == (None, None)
            assert lookup(records, w)[0] is not None  # still the pipe it was
        finally:
            for fd in {r, w, devnull, number}:
                os.close(fd)


def test_inheritable_since_survives_a_stale_creation_record() -> None:
    """set_inheritable on a number an unpatched creator reused is recorded all the same."""
    with patched() as records:
        r, w = os.pipe()
        os.close(r)
        devnull = _ORIGINAL_OS_OPEN(os.devnull, os.O_RDONLY)
        try:
            if devnull != r:
                _ORIGINAL_DUP2(devnull, r, False)
            os.set_inheritable(r, True)
            created, since = lookup(records, r)
            assert created is None
            assert since is not None
            assert since.startswith("made inheritable by os.set_inheritable()")
        finally:
            for fd in {r, w, devnull}:
                os.close(fd)


def test_reuse_by_a_patched_creator_overwrites_the_record() -> None:
    """The newest creation of a descriptor number is the one recorded."""
    with patched() as records:
        r, w = os.pipe()
        os.close(r)
        s = socket.socket()  # lowest free number: r's
        try:
            assert s.fileno() == r
            created, _ = lookup(records, r)
            assert created is not None
            assert created.startswith("created by socket.socket()")
        finally:
            s.close()
            os.close(w)


def test_records_stay_bounded() -> None:
    """Thousands of open()/close() and os.pipe()/close() leave about as many records as fds."""
    with patched() as records:
        for _ in range(3000):
            open(os.devnull).close()
            r, w = os.pipe()
            os.close(r)
            os.close(w)
        records.settle()
        assert len(records) < 600


# -- the patch leaves no trace -----------------------------------------------------------------


def _attributes() -> dict[tuple[int, str], Any]:
    # __builtins__ is left out: the interpreter adds it to an extension
    # module's namespace once code runs with that namespace as its globals
    # (it happens under the plugin running on this suite); nobody patches it.
    return {
        (i, name): value
        for i, owner in enumerate(OWNERS)
        for name, value in vars(owner).items()
        if name != "__builtins__"
    }


def _capabilities() -> list[set[Any]]:
    return [set(os.supports_dir_fd), set(os.supports_fd), set(os.supports_follow_symlinks)]


def test_undo_restores_the_identical_objects() -> None:
    """After undo every attribute of every patched module and class is the original object."""
    before = _attributes()
    capabilities = _capabilities()
    undo = creators.install(creators.CreationRecords(), lambda: None)
    try:
        assert os.open in os.supports_dir_fd  # the wrapper, as callers ask
        during = _attributes()
        changed = {
            key for key in before.keys() | during.keys() if during.get(key) is not before.get(key)
        }
        assert {(0, "open"), (2, "pipe2"), (2, "dup2"), (5, "__init__"), (5, "recvmsg")} <= changed
    finally:
        undo()
    undo()  # idempotent
    after = _attributes()
    assert after.keys() == before.keys()
    assert [key for key, value in after.items() if value is not before[key]] == []
    assert builtins.open is io.open
    assert _capabilities() == capabilities


def test_nested_installs_do_not_stack() -> None:
    """A second install reuses the wrappers; the innermost records; the last undo restores."""
    original_pipe = os.pipe
    outer, inner = creators.CreationRecords(), creators.CreationRecords()
    undo_outer = creators.install(outer, lambda: "outer")
    try:
        wrapper = os.pipe
        undo_inner = creators.install(inner, lambda: "inner")
        try:
            assert os.pipe is wrapper
            assert os.pipe.__wrapped__ is original_pipe  # type: ignore[attr-defined]
            r, w = os.pipe()
            assert (lookup(inner, r)[0] or "").endswith("[inner]")
            assert lookup(outer, r) == (None, None)
        finally:
            undo_inner()
            undo_inner()
        assert os.pipe is wrapper
        os.close(r)
        os.close(w)
        r, w = os.pipe()
        assert (lookup(outer, r)[0] or "").endswith("[outer]")
        os.close(r)
        os.close(w)
    finally:
        undo_outer()
    assert os.pipe is original_pipe


def test_references_taken_during_the_session_keep_working(closing: Callable[[Any], Any]) -> None:
    """A wrapper kept past the undo only forwards, with the original semantics."""
    with patched():
        kept_pipe2, kept_dup2 = os.pipe2, os.dup2
    r, w = kept_pipe2(0)
    closing(r)
    closing(w)
    assert os.get_inheritable(r)  # pipe2(0) unpatched: inheritable
    spare = closing(os.dup(r))
    kept_dup2(w, spare)
    assert os.get_inheritable(spare)  # dup2's own default again


class SocketBefore(socket.socket):
    """A socket subclass defined before any install."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tag = "before"


def _check_socket_family(made: list[socket.socket]) -> None:
    for sock in made:
        assert isinstance(sock, socket.socket)
        assert issubclass(type(sock), socket.socket)
        adopted = socket.socket(fileno=os.dup(sock.fileno()))  # fileno=...: adopts
        assert adopted.family == sock.family
        assert isinstance(adopted, socket.socket)
        adopted.close()
        sock.close()


def test_isinstance_subclass_pickle_and_fileno_keep_working(tmp_path: Path) -> None:
    """Objects and subclasses made before, during and after the session behave as always."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    made: list[socket.socket] = [socket.socket(), SocketBefore()]
    files: list[Any] = [open(path, "rb")]  # noqa: SIM115
    epolls = [select.epoll()]
    with patched():

        class SocketDuring(socket.socket):
            pass

        made += [socket.socket(), SocketBefore(), SocketDuring(), *socket.socketpair()]
        files += [open(path, "rb"), io.FileIO(path)]  # noqa: SIM115
        epolls.append(select.epoll())
        assert pickle.loads(pickle.dumps(os.pipe)) is os.pipe
        assert pickle.loads(pickle.dumps(open)) is open
        assert pickle.loads(pickle.dumps(socket.socket)) is socket.socket
        assert pickle.loads(pickle.dumps(SocketBefore)) is SocketBefore

        class Holder:
            opener: Any = open  # a builtin stored on a class does not bind

        files.append(Holder().opener(path, "rb"))
        assert [s.tag for s in made if isinstance(s, SocketBefore)] == ["before", "before"]
    made += [socket.socket(), SocketDuring(), SocketBefore()]
    files += [open(path, "rb"), io.FileIO(path)]  # noqa: SIM115
    epolls.append(select.epoll())
    assert pickle.loads(pickle.dumps(open)) is open
    _check_socket_family(made)
    for f in files:
        assert isinstance(f, (io.BufferedReader, io.FileIO))
        raw = f.raw if isinstance(f, io.BufferedReader) else f
        assert type(raw) is io.FileIO
        assert f.read() == b"x"
        f.close()
    for ep in epolls:
        assert type(ep) is select.epoll
        ep.close()
