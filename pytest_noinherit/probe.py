"""The exec probe: what every dynamically linked descendant really received.

The probe (``_native/probe.c``) is preloaded into every program the tests
start; right after exec it writes one record per process into the session's
record directory.  This module finds the library, switches it on for the
session (and off again, leaving ``os.environ`` exactly as it was), checks it
with one short child, and parses the records defensively: a record is
untrusted input written by whatever program ran.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import os
import re
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import NamedTuple

from pytest_noinherit import recorddir
from pytest_noinherit.recorddir import RecordDirectory, RecordError

__all__ = [
    "ALL_ENV",
    "DIR_ENV",
    "ProbeEnvironment",
    "ProbeFd",
    "ProbeRecord",
    "ProbeSocket",
    "RecordError",
    "library",
    "parse_record",
    "read_records",
    "take_file",
]

DIR_ENV = recorddir.PROBE_DIR_ENV
#: "1": a record of every exec, also of programs that hold only 0-2.
ALL_ENV = "NOINHERIT_PROBE_ALL"
PRELOAD_ENV = "LD_PRELOAD"
RECORD_SUFFIX = recorddir.PROBE_SUFFIX
RECORD_LIMIT = recorddir.SIZE_LIMIT
_NAME = "libnoinherit-probe.so"
_MAGIC = b"noinherit-probe 1"


class ProbeSocket(NamedTuple):
    """What a socket's ``sock`` line says: the arguments of :func:`fdtable.socket_target`.

    family and type are -1 where getsockopt() would not tell; an address is
    the raw sockaddr bytes, or None where there is none (no peer, a family
    without addresses).
    """

    family: int
    type: int
    local: bytes | None
    peer: bytes | None


class ProbeFd(NamedTuple):
    """One descriptor a process held right after exec."""

    fd: int
    fd_flags: int
    status_flags: int
    dev: int
    ino: int
    mode: int
    target: str
    #: Family, type and addresses, for a socket whose record has them.
    sock: ProbeSocket | None = None


class ProbeRecord(NamedTuple):
    """What one exec'd program held before its own code ran."""

    pid: int
    ppid: int
    time: int
    exe: str
    argv: tuple[str, ...]
    fds: tuple[ProbeFd, ...]
    truncated: bool = False


def library() -> str | None:
    """The LD_PRELOAD value for this package's probe, or None when it was not built.

    ``$LIB`` is left for ld.so to expand per ABI (ld.so(8)), so 32-bit
    programs find a stub instead of printing an error on their stderr.
    """
    if not sys.platform.startswith("linux"):
        return None
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_probe")
    if not os.path.exists(os.path.join(root, "$LIB", _NAME)):
        return None
    return os.path.join(root, "$LIB", _NAME)


# What stands for itself in an escaped field (probe.c, nip_put_escaped); the
# rest is \xHH.  Checked with translate and a regex: no Python loop per byte.
_PLAIN = bytes(range(0x21, 0x7F)).replace(b"\\", b"")
# The patterns are compiled at first use (re caches them): compiling them at
# import would cost every run, most of which never read a record.
_ESCAPED = rb"(?:[\x21-\x5b\x5d-\x7e]+|\\x[0-9a-fA-F]{2})*"
_SIGNED = rb" (-?[0-9]{1,20})"
_FD_LINE = rb"fd ([0-9]{1,20})" + _SIGNED * 5 + rb" ([^ ]*)"
# A sock line: fd, SO_DOMAIN, SO_TYPE, then each address as the hex of at
# most sizeof(struct sockaddr_storage) bytes, or "-" for none.
_ADDRESS = rb" (-|(?:[0-9a-f]{2}){0,128})"
_SOCK_LINE = rb"sock ([0-9]{1,20})" + _SIGNED * 2 + _ADDRESS * 2
_FIELDS = (b"pid", b"ppid", b"time", b"exe", b"argv")


def _unescape(text: bytes) -> str:
    """Undo the probe's ``\\xHH`` escaping; the result is a filesystem string."""
    if b"\\" not in text:
        if text.translate(None, _PLAIN):
            raise RecordError("unescaped byte")
        return os.fsdecode(text)
    if re.fullmatch(_ESCAPED, text) is None:
        unescaped = text.translate(None, _PLAIN + b"\\")
        raise RecordError("unescaped byte" if unescaped else "bad escape")
    head, *rest = text.split(b"\\")
    parts = [head]
    for part in rest:  # each is xHH and then plain bytes, as the regex proved
        parts += (bytes.fromhex(part[1:3].decode("ascii")), part[3:])
    return os.fsdecode(b"".join(parts))


def _number(word: bytes, signed: bool = False) -> int:
    """A decimal field; the probe writes -errno (or -1) where a call failed."""
    digits = word[1:] if signed and word[:1] == b"-" else word
    if not digits.isdigit() or len(digits) > 20:
        raise RecordError(f"not a number: {word[:20]!r}")
    return int(word)


def _fd_line(line: bytes) -> ProbeFd:
    """One ``fd`` line: one regex in the common case, word by word to say what is wrong."""
    m = re.fullmatch(_FD_LINE, line)
    if m is not None:
        fd, fdfl, flfl, dev, ino, mode = map(int, m.groups()[:6])
        return ProbeFd(fd, fdfl, flfl, dev, ino, mode, _unescape(m[7]))
    words = line[3:].split(b" ")
    if len(words) != 7:
        raise RecordError("bad fd line")
    fdfl, flfl, dev, ino, mode = (_number(w, signed=True) for w in words[1:6])
    return ProbeFd(_number(words[0]), fdfl, flfl, dev, ino, mode, _unescape(words[6]))


def _sock_line(line: bytes, owner: ProbeFd | None) -> ProbeFd:
    """owner with the socket details of the ``sock`` line that follows its fd line."""
    m = re.fullmatch(_SOCK_LINE, line)
    if m is None:
        raise RecordError("bad sock line")
    fd, family, type_ = map(int, m.groups()[:3])
    if owner is None or owner.fd != fd:
        raise RecordError(f"sock line without its fd line: {line[:40]!r}")
    if owner.sock is not None:
        raise RecordError(f"second sock line for fd {fd}")
    if stat.S_IFMT(owner.mode) != stat.S_IFSOCK:
        raise RecordError(f"sock line for fd {fd}, which is no socket")
    local, peer = (None if a == b"-" else bytes.fromhex(a.decode("ascii")) for a in m.groups()[3:])
    return owner._replace(sock=ProbeSocket(family, type_, local, peer))


def parse_record(data: bytes) -> ProbeRecord:
    """Parse one record; RecordError for anything the probe would not write."""
    if len(data) > RECORD_LIMIT:
        raise RecordError("record too large")
    lines = data.split(b"\n")
    if not lines or lines[0] != _MAGIC:
        raise RecordError("not a probe record")
    if lines[-1] == b"":
        lines.pop()
    if not lines or lines[-1] != b"end":
        raise RecordError("truncated record")
    fields: dict[bytes, bytes] = {}
    fds: list[ProbeFd] = []
    truncated = False
    last: ProbeFd | None = None  # the fd line just before, which a sock line extends
    for line in lines[1:-1]:
        if line[:3] == b"fd ":
            last = _fd_line(line)
            fds.append(last)
            continue
        if line[:5] == b"sock ":
            last = fds[-1] = _sock_line(line, last)
            continue
        last = None
        key, _, rest = line.partition(b" ")
        if key == b"truncated" and not rest:
            truncated = True
        elif key in _FIELDS and key not in fields:
            fields[key] = rest
        else:
            raise RecordError(f"unexpected line {line[:40]!r}")
    missing = set(_FIELDS) - set(fields)
    if missing:
        raise RecordError(f"missing {sorted(m.decode() for m in missing)}")
    # An empty argument is an empty field, so split on single spaces.
    raw_argv = fields[b"argv"]
    argv = tuple(_unescape(a) for a in raw_argv.split(b" ")) if raw_argv else ()
    return ProbeRecord(
        pid=_number(fields[b"pid"]),
        ppid=_number(fields[b"ppid"]),
        time=_number(fields[b"time"]),
        exe=_unescape(fields[b"exe"]) if fields[b"exe"] else "",
        argv=argv,
        fds=tuple(sorted(fds, key=lambda f: f.fd)),
        truncated=truncated,
    )


def read_records(directory: str | RecordDirectory) -> Iterator[ProbeRecord | RecordError]:
    """Consume the directory's probe records, oldest first; a bad one yields its error.

    Every ``.rec`` entry is taken exactly once, whatever it is (see
    :func:`recorddir.consume`); many bad ones of one kind are summed up.
    """
    return recorddir.consume(directory, RECORD_SUFFIX, parse_record)


def take_file(path: str) -> bytes:
    """Read and remove one entry another process put into our private directory.

    A symlink is refused and never followed, a FIFO is never read, a
    directory is removed with all it holds, and more than RECORD_LIMIT bytes
    is refused unread: the writer is untrusted.  RecordError (a ValueError)
    or OSError says why.
    """
    return recorddir.take_file(path)


class ProbeEnvironment:
    """Switches the probe on in os.environ for a session, and back off exactly.

    With ``every_exec=False`` a program that holds nothing beyond
    descriptors 0-2 writes no record: it received nothing, and the probe
    costs it three system calls instead of a record's thirty or so.  A
    reader that needs every process (the ``run`` command's list) keeps the
    default.
    """

    def __init__(self, record_dir: str, *, every_exec: bool = True) -> None:
        self.record_dir = record_dir
        self.every_exec = every_exec
        self._saved: dict[str, str | None] = {}
        self.active = False

    def self_test(self) -> str:
        """Run one short child under the probe; '' if it works, else what was found."""
        lib = library()
        if lib is None:
            return _missing_library()
        if not os.path.exists(_PROC_FD):
            return "/proc is not mounted: the probe reads /proc/self/fd and /proc/self/environ"
        return recorddir.check(self.record_dir) or _run_self_test(lib, self.every_exec)

    def start(self) -> None:
        """Preload the probe into every child from now on."""
        lib = library()
        if lib is None or self.active:
            return
        self._save()
        os.environ[PRELOAD_ENV] = _preload_value(lib)
        os.environ[DIR_ENV] = self.record_dir
        if self.every_exec:
            os.environ[ALL_ENV] = "1"
        else:
            os.environ.pop(ALL_ENV, None)
        self.active = True

    def hide(self) -> None:
        """Keep an outer session's probe out of this session's children.

        An in-process inner session (pytester, ``pytest.main`` in a test)
        that runs without the probe must not let its children write into
        the outer session's record directory: they are this session's.
        """
        if self.active or os.environ.get(DIR_ENV) is None:
            return
        self._save()
        del os.environ[DIR_ENV]
        os.environ.pop(ALL_ENV, None)
        user = _user_preload()
        if user:
            os.environ[PRELOAD_ENV] = ":".join(user)
        else:
            os.environ.pop(PRELOAD_ENV, None)
        self.active = True

    def stop(self) -> None:
        """Put the variables back as they were (absent stays absent)."""
        if not self.active:
            return
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.active = False

    def _save(self) -> None:
        for name in (PRELOAD_ENV, DIR_ENV, ALL_ENV):
            self._saved[name] = os.environ.get(name)


# Any dynamically linked program will do; this one exists everywhere and
# does nothing.
_SELF_TEST = "/bin/true"
_PROC_FD = "/proc/self/fd"


def _missing_library() -> str:
    """Why library() found nothing, as the installed package shows it."""
    expected = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_probe", "$LIB", _NAME)
    if sys.platform.startswith("linux") and not os.path.exists(expected):
        return (
            f"the probe library was not built when this package was installed"
            f" (it needs a C compiler), or not installed with it: no {expected}"
        )
    return "not built for this platform"


def _run_self_test(lib: str, every_exec: bool = True) -> str:
    """One /bin/true under the probe, given a pipe, in a private directory of its own.

    The pipe is passed (``pass_fds``) so that the child holds a descriptor
    beyond 0-2 and writes a record whichever way the probe is asked to
    run; the record must show it.
    """
    try:
        directory = RecordDirectory.create()
    except OSError as exc:
        return f"no private directory for the self-test: {exc}"
    under_valgrind = _valgrind_parent()
    try:
        env = {**os.environ, DIR_ENV: directory.path, PRELOAD_ENV: _preload_value(lib)}
        env.pop(ALL_ENV, None)
        if every_exec:
            env[ALL_ENV] = "1"
        r, w = os.pipe()
        try:
            proc = subprocess.run(
                [_SELF_TEST],
                env=env,
                capture_output=True,
                timeout=30,
                check=False,
                pass_fds=(w,),
            )
            dev, ino = _identity(w)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"self-test could not run {_SELF_TEST}: {exc}"
        finally:
            os.close(r)
            os.close(w)
        stderr = proc.stderr
        if under_valgrind:
            stderr = re.sub(_VALGRIND_CHATTER, b"", stderr)
        if stderr.strip():
            return f"the loader complained: {stderr.decode(errors='replace').strip()}"
        found = [*read_records(directory), *recorddir.sweep(directory, keep=())]
    finally:
        directory.remove()
    if under_valgrind:
        found = [r for r in found if not _valgrind_record(r)]
    return _self_test_verdict(found, proc.returncode, (w, dev, ino))


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


# valgrind(1) prefixes every line it writes with ==PID== (messages) or
# --PID-- (warnings, debug output); with --trace-children=yes every traced
# child writes its own, the self-test's /bin/true too.
_VALGRIND_CHATTER = rb"(?m)^(?:==[0-9]+==|--[0-9]+--)(?: .*)?\n?"


def _valgrind_parent() -> bool:
    """Whether this process runs under valgrind (which may run its children too).

    valgrind puts its own vgpreload_*.so objects first into the LD_PRELOAD
    of every program it runs.
    """
    return "vgpreload" in os.environ.get(PRELOAD_ENV, "")


def _valgrind_record(found: ProbeRecord | RecordError) -> bool:
    """A record of valgrind's own launcher, which the probe is preloaded into as well."""
    if not isinstance(found, ProbeRecord):
        return False
    names = (found.exe, found.argv[0] if found.argv else "")
    return any(os.path.basename(n).startswith("valgrind") or "/valgrind/" in n for n in names)


def _self_test_verdict(
    found: list[ProbeRecord | RecordError],
    status: int,
    passed: tuple[int, int, int] | None = None,
) -> str:
    """'' for exactly one complete record showing the passed descriptor; else what went wrong."""
    records = [r for r in found if isinstance(r, ProbeRecord)]
    errors = [str(r) for r in found if isinstance(r, RecordError)]
    if errors:
        return f"the self-test child's record is unreadable: {'; '.join(errors)}"
    if len(records) > 1:
        return (
            f"the self-test child wrote {len(records)} records, not one"
            f" (another copy of the probe preloaded?)"
        )
    if records and records[0].truncated:
        return "the self-test child's record says it is incomplete (truncated)"
    if (
        records
        and passed is not None
        and passed not in {(f.fd, f.dev, f.ino) for f in records[0].fds}
    ):
        return f"the self-test child's record does not show the pipe it was given as fd {passed[0]}"
    if records:
        return ""
    linked = _dynamically_linked(_SELF_TEST)
    if linked is False:
        why = f"{_SELF_TEST} is statically linked, so nothing is preloaded into it"
    else:
        why = f"{_SELF_TEST} exited with status {status}, the loader printed nothing"
    return f"self-test child wrote no record: {why}"


def _dynamically_linked(path: str) -> bool | None:
    """Whether an ELF file names a program interpreter (PT_INTERP); None if unreadable."""
    try:
        with open(os.path.realpath(path), "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] not in (1, 2):
                return None
            wide = head[4] == 2
            order = "<" if head[5] == 1 else ">"
            if wide:
                phoff, phentsize, phnum = struct.unpack_from(order + "Q14xHH", head, 32)
            else:
                phoff, phentsize, phnum = struct.unpack_from(order + "I10xHH", head, 28)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            types = [struct.unpack_from(order + "I", table, i * phentsize)[0] for i in range(phnum)]
    except (OSError, struct.error):
        return None
    pt_interp = 3  # elf(5)
    return pt_interp in types


def _user_preload() -> list[str]:
    """The LD_PRELOAD entries that are not a copy of the probe, in order.

    ld.so(8) separates entries by colons or spaces.  Another copy of the
    probe (an outer session's, perhaps from another install) would write a
    second record for every process: it goes.
    """
    entries = os.environ.get(PRELOAD_ENV, "").replace(":", " ").split()
    return [e for e in entries if os.path.basename(e) != _NAME]


def _preload_value(lib: str) -> str:
    """LD_PRELOAD for the children: the user's entries first, then lib.

    Sanitizer runtimes must come before any other preloaded object.  The
    entries are joined with colons, not spaces: valgrind removes its own
    vgpreload entry from a child's LD_PRELOAD by splitting the value on
    colons only (coregrind/m_libcproc.c, VG_(env_remove_valgrind_env_stuff)),
    so a space-joined value would lose the probe with it.
    """
    return ":".join([*_user_preload(), lib] if lib else _user_preload())
