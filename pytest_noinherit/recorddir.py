"""The private record directory: where children leave what they received.

Two kinds of writer share one directory: the exec probe (``<pid>-<ns>.rec``,
written as ``.tmp`` and renamed) and fork children of the test process
(``<pid>-<ns>.json``).  Both are untrusted: any program a test runs, with
the test's own uid, can put anything there, of any kind and under any name.
This module owns the directory's life (:func:`create`, :func:`remove`, the
clean-up of directories left by killed sessions) and the one way to read
it (:func:`consume`): every entry is taken exactly once, whatever it is,
and what cannot be read becomes a :class:`RecordError`, never silence.

Everything is done relative to one descriptor of the directory, opened
with ``O_DIRECTORY | O_NOFOLLOW`` and checked (owner, mode), so a swapped
path cannot redirect the reader.  The children still write by path, so
:func:`check` also makes sure no other user can swap any directory on that
path (every ancestor owned by root or us, and not writable by others
unless sticky, like ``/tmp``).

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = [
    "FORK_SUFFIX",
    "PARTIAL_SUFFIX",
    "PREFIX",
    "PROBE_SUFFIX",
    "SIZE_LIMIT",
    "RecordDirectory",
    "RecordError",
    "UntrustedDirectory",
    "bounded",
    "check",
    "consume",
    "create",
    "remove",
    "remove_stale",
    "sweep",
    "take_file",
    "write",
]

PREFIX = "pytest-noinherit-"
PROBE_SUFFIX = ".rec"
FORK_SUFFIX = ".json"
PARTIAL_SUFFIX = ".tmp"  # a probe record being written
#: The variable that tells the exec probe (and its children) where to write.
PROBE_DIR_ENV = "NOINHERIT_PROBE_DIR"
SUFFIXES = (PROBE_SUFFIX, FORK_SUFFIX, PARTIAL_SUFFIX)
# A probe record holds one line per descriptor, about 50 bytes for a pipe or
# a socket and 100 for a file in a pytest tmp_path.  64 MiB is a full table
# at a million descriptors (the default /proc/sys/fs/nr_open), or 20 000
# descriptors with 3 KiB paths, and still small enough to read.
SIZE_LIMIT = 64 << 20
_SHOWN_NAMES = 3  # names quoted in the one line that sums up many bad entries

_WINDOWS = sys.platform == "win32"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
# The clock the kernel stamps a changed directory with (see changed());
# Python names it from 3.13 only; elsewhere nothing is skipped.
_COARSE_CLOCK: int | None = getattr(
    time, "CLOCK_REALTIME_COARSE", 5 if sys.platform.startswith("linux") else None
)
# <prefix><pid>-<process start time>-<random>: enough to tell, later, that
# the session which made it is gone even if its pid was reused.
# (Compiled at first use, by re's cache, as most runs read no record.)
_OWNED_NAME = "(?a)" + re.escape(PREFIX) + r"([0-9]{1,10})-([0-9]{1,20})-[0-9a-f]{8}"
_RECORD_NAME = r"(?a)([0-9]{1,10})-([0-9]{1,20})\.[a-z]+"

T = TypeVar("T")


class RecordError(ValueError):
    """A directory entry that is not a record the probe or a fork child writes.

    ``reason`` says what was wrong without the details that differ from one
    entry to the next, so that many bad entries can be summed up in one line;
    ``names`` are the entries concerned and ``count`` how many there were.
    """

    def __init__(self, message: str, reason: str = "", names: Iterable[str] = (), count: int = 0):
        super().__init__(message)
        self.reason = reason or message.partition(":")[0]
        self.names = tuple(names)
        self.count = count or max(len(self.names), 1)


# Every probed child creates, renames and the reader unlinks a record: on a
# disk file system each is a journal update (~117 us per child on ext4 vs
# ~17 us on tmpfs, measured).  /dev/shm is a tmpfs wherever it exists.
_MEMORY_PARENT = "/dev/shm"


def default_parent() -> str:
    """Where record directories go: TMPDIR if the user set it, else memory, else the temp dir."""
    if (
        "TMPDIR" not in os.environ
        and sys.platform.startswith("linux")
        and os.path.isdir(_MEMORY_PARENT)
        and os.access(_MEMORY_PARENT, os.W_OK | os.X_OK)
        and not _unsafe_ancestor(os.path.join(_MEMORY_PARENT, PREFIX))
    ):
        return _MEMORY_PARENT
    return tempfile.gettempdir()


class UntrustedDirectory(OSError):
    """A record directory that another user could read, forge or swap."""


# -- the checks ------------------------------------------------------------------


def _unsafe_ancestor(path: str) -> str:
    """Why some directory on the way to path could be swapped by another user, or ''."""
    if _WINDOWS:
        return ""
    uid = os.geteuid()
    seen = set()
    # The path as children use it, and where it really leads: a symlinked
    # component is safe only if the link and its target both are.
    for start in (os.path.abspath(os.path.dirname(path)), os.path.realpath(os.path.dirname(path))):
        current = start
        while current not in seen:
            seen.add(current)
            try:
                st = os.lstat(current)
            except OSError as exc:
                return f"{current}: {exc.strerror}"
            if st.st_uid not in (0, uid):
                return f"{current} is owned by uid {st.st_uid}"
            if (
                not stat.S_ISLNK(st.st_mode)
                and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                and not st.st_mode & stat.S_ISVTX
            ):
                return f"{current} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return ""


def _unsafe_directory(st: os.stat_result) -> str:
    """Why the record directory itself is not private to us, or ''."""
    if _WINDOWS:
        return ""
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})"
    if st.st_mode & 0o077:
        return f"open to other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def check(path: str) -> str:
    """'' if path is a record directory no other user can read, forge or swap; else why."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"record directory {path}: {exc.strerror}"
    problem = _unsafe_directory(st)
    if problem:
        return f"record directory {path} is {problem}"
    problem = _unsafe_ancestor(path)
    if problem:
        return f"record directory {path} could be swapped by another user: {problem}"
    return ""


# -- the directory ----------------------------------------------------------------


class RecordDirectory:
    """One open record directory; every read and removal is relative to ``fd``.

    ``fd`` is None on Windows, which has no directory descriptors; there the
    directory is only ever used by this process (there is no fork).
    """

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        self.fd = fd
        # The last listing, and what tells whether it still holds (see
        # changed()); a take changes the directory, so after one it is
        # listed again.
        self._listing: list[str] | None = None
        self._listed_at = 0  # CLOCK_REALTIME_COARSE just before it began
        self._listed_mtime = 0  # the directory's st_mtime_ns just after it
        self._mtime_step = 0  # 0: mtimes cannot tell; else the unit compared

    @classmethod
    def open(cls, path: str) -> RecordDirectory:
        """Open an existing record directory; UntrustedDirectory if it is not private."""
        if _WINDOWS:
            if not os.path.isdir(path):
                raise FileNotFoundError(2, "No such directory", path)
            return cls(path, None)
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and st.st_mode & 0o077:
                # A child of ours opened it up (chmod): close it again, so
                # that from now on no other user can add or take records.
                os.fchmod(fd, 0o700)
                st = os.fstat(fd)
            problem = _unsafe_directory(st)
            if problem:
                raise UntrustedDirectory(f"record directory {path} is {problem}")
        except BaseException:
            os.close(fd)
            raise
        directory = cls(path, fd)
        if _COARSE_CLOCK is not None and _stamped_by_this_kernel(path):
            # A whole-second mtime is the mark of a filesystem that keeps
            # seconds only (ext4 with 128-byte inodes): changed() then
            # compares whole seconds, which truncation cannot put on the
            # wrong side.
            directory._mtime_step = 1 if st.st_mtime_ns % 10**9 else 10**9
        return directory

    @classmethod
    def create(cls, parent: str | None = None) -> RecordDirectory:
        """A new private directory named after this process; stale ones are removed first."""
        parent = parent or default_parent()
        remove_stale(parent)
        name = f"{PREFIX}{os.getpid()}-{_start_time(os.getpid())}-{os.urandom(4).hex()}"
        path = os.path.join(parent, name)
        os.mkdir(path, 0o700)
        try:
            directory = cls.open(path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise
        return directory

    def close(self) -> None:
        """Close the descriptor; the directory stays."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        """Remove the directory and whatever is left in it, then close it."""
        try:
            if self.fd is not None:
                for entry in _scan(self.fd):
                    _discard(self.fd, entry, _kind_of(self.fd, entry))
            with contextlib.suppress(OSError):
                if self.fd is None:
                    import shutil

                    shutil.rmtree(self.path, ignore_errors=True)
                else:
                    os.rmdir(self.path)
        finally:
            self.close()

    def __enter__(self) -> RecordDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        """The entries now in the directory, unsorted: always a new listing."""
        if self.fd is None:
            return os.listdir(self.path)
        if _COARSE_CLOCK is None or not self._mtime_step:
            return _scan(self.fd)
        started = time.clock_gettime_ns(_COARSE_CLOCK)
        names = _scan(self.fd)
        self._listed_mtime = os.fstat(self.fd).st_mtime_ns
        self._listed_at = started // self._mtime_step * self._mtime_step
        self._listing = list(names)
        return names

    def changed(self) -> bool:
        """Whether anything may have been added, renamed or removed since the last listing.

        False is exact: the directory holds what that listing saw (a take
        is a removal, so after one this is True until the next listing).
        It is never False on a filesystem whose timestamps this kernel does
        not set itself (NFS: the server's clock).  The kernel stamps a directory it
        changes with current_time() (fs/inode.c), the coarse realtime
        clock of the moment (ktime_get_coarse_real_ts64, one tick is 1-4 ms)
        truncated to the filesystem's granularity; so a change made after
        the clock read just before the listing leaves an mtime no smaller
        than that reading, even one made within the same tick.  An mtime
        that moved at all counts too, for a clock set back since.
        """
        if self.fd is None or self._listing is None:
            return True
        mtime = os.fstat(self.fd).st_mtime_ns
        return mtime >= self._listed_at or mtime != self._listed_mtime

    def empty(self) -> bool:
        """True when the last listing found nothing and nothing changed since: one fstat().

        False whenever that cannot be told (never listed, a filesystem
        without trustworthy timestamps): then list it.
        """
        return self._listing == [] and not self.changed()

    def _current(self) -> list[str]:
        """The entries: the last listing while nothing changed since, else a new one."""
        if self._listing is not None and not self.changed():
            return list(self._listing)
        return self.names()

    def consume(self, suffix: str, parse: Callable[[bytes], T]) -> Iterator[T | RecordError]:
        """Take every entry ending in suffix, oldest first; see :func:`consume`.

        The directory is listed only when it changed since the last
        listing, so the probe's and the fork children's records, consumed
        by two calls one after the other, cost one listing between them,
        and a drain that finds nothing new costs one fstat().
        """
        names = sorted((n for n in self._current() if n.endswith(suffix)), key=_order)
        return bounded(self._take_each(names, parse))

    def _take_each(
        self, names: list[str], parse: Callable[[bytes], T]
    ) -> Iterator[T | RecordError]:
        for name in names:
            try:
                yield parse(self.take(name))
            except RecordError as exc:
                yield RecordError(f"{name}: {exc}", exc.reason, (name,))
            except (ValueError, RecursionError) as exc:  # what parse refused
                yield RecordError(f"{name}: {exc}", str(exc).partition(":")[0], (name,))
            except OSError as exc:
                yield RecordError(f"{name}: {exc.strerror}", exc.strerror or "", (name,))

    def take(self, name: str) -> bytes:
        """Read and remove one entry; RecordError for anything but a small regular file.

        Whatever it is, it is gone afterwards: a directory (with all it
        holds), a FIFO, a socket, a symlink (never followed).
        """
        if self.fd is None:
            return _take_path(os.path.join(self.path, name))
        kind = _kind_of(self.fd, name)
        try:
            if kind != "file":
                raise RecordError(f"a {kind}, not a file", f"a {kind}, not a file")
            return _read_regular(self.fd, name)
        finally:
            _discard(self.fd, name, kind)

    def sweep(self, keep: Iterable[str] = SUFFIXES) -> Iterator[RecordError]:
        """Take every entry not ending in one of keep, and stale partial records.

        A ``.tmp`` file whose writer has exited will never be renamed: it is
        a record cut short (the process was killed while the probe wrote).
        ``keep=()`` takes everything: what is left when the session ends.
        """
        keep = tuple(keep)
        names = []
        for name in sorted(self._current(), key=_order):
            if name.endswith(PARTIAL_SUFFIX) and PARTIAL_SUFFIX in keep and _writer_alive(name):
                continue
            if not name.endswith(keep) or name.endswith(PARTIAL_SUFFIX):
                names.append(name)
        return bounded(self._sweep_each(names))

    def _sweep_each(self, names: list[str]) -> Iterator[RecordError]:
        for name in names:
            if name.endswith(PARTIAL_SUFFIX):
                reason = "a record its writer never finished"
            else:
                reason = "not a record name"
            if self.fd is None:
                kind = "file"
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, name))
            else:
                kind = _kind_of(self.fd, name)
                _discard(self.fd, name, kind)
            what = reason if kind == "file" else f"{reason} (a {kind})"
            yield RecordError(f"{name}: {what}", what, (name,))


# Local filesystems whose directory mtimes the kernel sets with
# current_time(), at a granularity of 1 ns (ext4 with 128-byte inodes: 1 s).
_KERNEL_STAMPED = frozenset({"tmpfs", "ramfs", "ext4", "xfs", "btrfs"})


@functools.lru_cache(maxsize=16)  # once per directory, however often it is opened
def _stamped_by_this_kernel(path: str) -> bool:
    """Whether path is on a filesystem of _KERNEL_STAMPED, by /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            table = f.read().decode("utf-8", "surrogateescape")
    except OSError:
        return False
    real = os.path.realpath(path)
    best, fstype = -1, ""
    for line in table.splitlines():
        # proc(5): ... <mount point> <options> [optional fields] - <fstype> ...
        fields, _, tail = line.partition(" - ")
        words = fields.split(" ")
        if len(words) < 5 or not tail:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), words[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the last of stacked mounts wins
            best, fstype = len(point), tail.split(" ")[0]
    return fstype in _KERNEL_STAMPED


def _scan(fd: int) -> list[str]:
    # os.scandir(fd) works on a duplicate of its own (posixmodule.c,
    # os_scandir_impl): fd stays open, and at the start of the directory.
    with os.scandir(fd) as it:
        return [e.name for e in it]


_KINDS = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _kind_of(dir_fd: int, name: str) -> str:
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return "vanished entry"
    return next((kind for test, kind in _KINDS if test(mode)), "special file")


def _read_regular(dir_fd: int, name: str) -> bytes:
    flags = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK | _NOCTTY
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since it was looked at
            raise RecordError("not a regular file")
        if not _WINDOWS and st.st_uid != os.geteuid():
            # Only possible while the directory was open to others.
            raise RecordError(
                f"written by another user (uid {st.st_uid})", "written by another user"
            )
        return _read_bounded(fd, st.st_size)
    finally:
        os.close(fd)


def _read_bounded(fd: int, size: int) -> bytes:
    """The file's bytes, refused unread when it is larger than SIZE_LIMIT."""
    if size > SIZE_LIMIT:
        raise RecordError(f"larger than {SIZE_LIMIT} bytes")
    chunks = []
    total = 0
    while chunk := os.read(fd, min(max(size, 1 << 16), SIZE_LIMIT + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > SIZE_LIMIT:  # it grew while we read
            raise RecordError(f"larger than {SIZE_LIMIT} bytes")
    return b"".join(chunks)


def _discard(dir_fd: int, name: str, kind: str) -> None:
    """Remove one entry of any kind, a directory with all it holds; never follow a link."""
    with contextlib.suppress(OSError):
        if kind == "directory":
            _remove_tree(dir_fd, name)
        else:
            os.unlink(name, dir_fd=dir_fd)


def _remove_tree(dir_fd: int, name: str) -> None:
    """rm -r relative to dir_fd, without recursion and without following symlinks.

    shutil.rmtree takes dir_fd only from Python 3.11; this walk keeps one
    descriptor per level and works at any depth.
    """
    flags = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC

    def enter(parent: int, sub: str) -> int:
        try:
            return os.open(sub, flags, dir_fd=parent)
        except PermissionError:  # a child made it unreadable: it is ours to open up
            os.chmod(sub, 0o700, dir_fd=parent)
            return os.open(sub, flags, dir_fd=parent)

    stack = [(dir_fd, name, enter(dir_fd, name))]
    try:
        while stack:
            parent, sub, fd = stack[-1]
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
                os.fchmod(fd, 0o700)
            deeper = None
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        deeper = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if deeper is not None:
                stack.append((fd, deeper, enter(fd, deeper)))
                continue
            stack.pop()
            os.close(fd)
            os.rmdir(sub, dir_fd=parent)
    finally:
        for _, _, fd in stack:
            os.close(fd)


def _take_path(path: str) -> bytes:
    """take() by path, for Windows and for callers that hold no directory descriptor."""
    parent, name = os.path.split(path)
    if _WINDOWS:
        try:
            with open(path, "rb") as f:
                return _read_bounded(f.fileno(), os.fstat(f.fileno()).st_size)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    fd = os.open(parent or ".", os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        return RecordDirectory(parent, fd).take(name)
    finally:
        os.close(fd)


def take_file(path: str) -> bytes:
    """Read and remove one entry by path; RecordError (or OSError) if it is no small file.

    The entry is removed whatever it is (a directory with all it holds);
    a symlink is never followed and a FIFO never read.
    """
    return _take_path(path)


def _order(name: str) -> tuple[int, int, str]:
    """Records are named <pid>-<monotonic ns>.<suffix>: oldest first, other names last."""
    m = re.fullmatch(_RECORD_NAME, name)
    return (0, int(m.group(2)), name) if m else (1, 0, name)


def bounded(items: Iterable[T | RecordError]) -> Iterator[T | RecordError]:
    """Pass items through, but at most one error of each reason as it comes.

    The others of the same reason are summed up at the end, one error each
    with their count and a few names: a child that fills the directory with
    garbage costs a line or two, not one per entry.
    """
    seen: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, RecordError):
            more = seen.get(item.reason)
            if more is None:
                seen[item.reason] = []
                yield item
            else:
                more += item.names
                continue
        else:
            yield item
    for reason, names in seen.items():
        if names:
            shown = ", ".join(names[:_SHOWN_NAMES]) + (", ..." if len(names) > _SHOWN_NAMES else "")
            yield RecordError(
                f"{len(names)} more entries: {reason} ({shown})", reason, names, len(names)
            )


def _as_directory(directory: str | RecordDirectory) -> tuple[RecordDirectory, bool]:
    """The open directory, and whether this call opened it (and must close it)."""
    if isinstance(directory, RecordDirectory):
        return directory, False
    return RecordDirectory.open(directory), True


def _through(
    directory: str | RecordDirectory, act: Callable[[RecordDirectory], Iterator[T]]
) -> Iterator[T | RecordError]:
    """act on the directory, opened (and closed again) here when given as a path.

    A directory that does not exist yields nothing; one that is not private
    yields one RecordError saying why, and act never runs.
    """
    try:
        opened, close = _as_directory(directory)
    except UntrustedDirectory as exc:
        yield RecordError(str(exc), "untrusted record directory")
        return
    except OSError:
        return
    try:
        yield from act(opened)
    finally:
        if close:
            opened.close()


def consume(
    directory: str | RecordDirectory,
    suffix: str,
    parse: Callable[[bytes], T],
) -> Iterator[T | RecordError]:
    """Take every entry ending in suffix, oldest first: parse(data), or a RecordError.

    ``parse=bytes`` gives the raw contents.

    Each entry is read once and removed, whatever its kind.  What is not a
    small regular file, or what parse refuses with ValueError, becomes a
    RecordError naming the entry (many of one reason: see :func:`bounded`).
    A directory that does not exist yields nothing; one that is not private
    yields one RecordError saying why, and nothing is read from it.
    """
    return _through(directory, lambda opened: opened.consume(suffix, parse))


def sweep(
    directory: str | RecordDirectory, keep: Iterable[str] = SUFFIXES
) -> Iterator[RecordError]:
    """Take and report every entry that is no record; see :meth:`RecordDirectory.sweep`."""
    return _through(directory, lambda opened: opened.sweep(keep))


def write(directory: str, data: bytes, suffix: str = FORK_SUFFIX) -> None:
    """Write one record atomically (``.tmp``, then renamed); a writer must never fail.

    A reader never sees half a record: the name with the suffix appears
    only once the bytes are all there.
    """
    base = os.path.join(directory, f"{os.getpid()}-{time.monotonic_ns()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    with contextlib.suppress(OSError):
        fd = os.open(base + PARTIAL_SUFFIX, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(base + PARTIAL_SUFFIX, base + suffix)


# -- life and death ---------------------------------------------------------------


def _start_time(pid: int) -> int:
    """When pid started, in clock ticks since boot; 0 if unknown.

    proc(5): field 22 of /proc/<pid>/stat, which a reused pid cannot repeat.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces and parentheses.
            fields = f.read().rpartition(b")")[2].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return 0


def _alive(pid: int, started: int) -> bool:
    """Whether the process that made a directory may still be running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process now: ours is gone
    except OSError:
        return True
    return started == 0 or _start_time(pid) in (0, started)


def _writer_alive(name: str) -> bool:
    m = re.fullmatch(_RECORD_NAME, name)
    if m is None or _WINDOWS:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale(parent: str | None = None) -> int:
    """Remove the record directories of dead sessions of this user in parent; how many.

    Only directories named by :func:`create` whose session has exited (its
    pid is gone, or now belongs to a process that started at another time)
    and that this user owns; a symlink is never followed.  A killed session
    (SIGKILL, pytest-timeout's thread method, an OOM kill) cannot clean up
    after itself, so the next session does.
    """
    if _WINDOWS:
        return 0  # os.kill would terminate the process, and nothing forks there
    parent = parent or default_parent()
    removed = 0
    try:
        parent_fd = os.open(parent, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError:
        return 0
    try:
        for name in _scan(parent_fd):
            m = re.fullmatch(_OWNED_NAME, name)
            if m is None or int(m.group(1)) == os.getpid():
                continue
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if _alive(int(m.group(1)), int(m.group(2))):
                continue
            with contextlib.suppress(OSError):
                _remove_tree(parent_fd, name)
                removed += 1
    finally:
        os.close(parent_fd)
    return removed


def create() -> str:
    """A new private record directory in the temporary directory; its path.

    Directories of sessions that died without cleaning up are removed
    first.  The caller removes this one with :func:`remove`.
    """
    directory = RecordDirectory.create()
    directory.close()
    return directory.path


def remove(path: str) -> None:
    """Remove a record directory and whatever is left in it; a symlink is not followed."""
    try:
        directory = RecordDirectory.open(path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a symlink or a file in its place
        return
    directory.remove()
