"""The exec probe: what every dynamically linked descendant really received.

The probe (``_native/probe.c``) is preloaded into every program the tests
start; right after exec it writes one record per process into the session's
record directory.  This module finds the library, switches it on for the
session (and off again, leaving ``os.environ`` exactly as it was), checks it
with one short child, and parses the records defensively: a record is
untrusted input written by whatever program ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

__all__ = [
    "DIR_ENV",
    "ProbeEnvironment",
    "ProbeRecord",
    "RecordError",
    "library",
    "parse_record",
    "read_records",
]

DIR_ENV = "NOINHERIT_PROBE_DIR"
PRELOAD_ENV = "LD_PRELOAD"
RECORD_SUFFIX = ".rec"
RECORD_LIMIT = 1 << 20  # bytes; the probe writes at most 256 KiB
_NAME = "libnoinherit-probe.so"
_MAGIC = b"noinherit-probe 1"


class RecordError(ValueError):
    """A record that is not what the probe writes."""


@dataclasses.dataclass(frozen=True)
class ProbeFd:
    """One descriptor a process held right after exec."""

    fd: int
    fd_flags: int
    status_flags: int
    dev: int
    ino: int
    mode: int
    target: str


@dataclasses.dataclass(frozen=True)
class ProbeRecord:
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


def _unescape(text: bytes) -> str:
    """Undo the probe's ``\\xHH`` escaping; the result is a filesystem string."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == 0x5C:  # backslash
            if text[i + 1 : i + 2] != b"x" or len(text) < i + 4:
                raise RecordError("bad escape")
            try:
                out.append(int(text[i + 2 : i + 4], 16))
            except ValueError:
                raise RecordError("bad escape") from None
            i += 4
        elif 0x21 <= c <= 0x7E:
            out.append(c)
            i += 1
        else:
            raise RecordError("unescaped byte")
    return os.fsdecode(bytes(out))


def _number(word: bytes, signed: bool = False) -> int:
    """A decimal field; the probe writes -errno (or -1) where a call failed."""
    digits = word[1:] if signed and word[:1] == b"-" else word
    if not digits.isdigit() or len(digits) > 20:
        raise RecordError(f"not a number: {word[:20]!r}")
    return int(word)


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
    for line in lines[1:-1]:
        key, _, rest = line.partition(b" ")
        if key == b"fd":
            words = rest.split(b" ")
            if len(words) != 7:
                raise RecordError("bad fd line")
            fd = _number(words[0])
            fdfl, flfl, dev, ino, mode = (_number(w, signed=True) for w in words[1:6])
            fds.append(ProbeFd(fd, fdfl, flfl, dev, ino, mode, _unescape(words[6])))
        elif key == b"truncated" and not rest:
            truncated = True
        elif key in (b"pid", b"ppid", b"time", b"exe", b"argv") and key not in fields:
            fields[key] = rest
        else:
            raise RecordError(f"unexpected line {line[:40]!r}")
    missing = {b"pid", b"ppid", b"time", b"exe", b"argv"} - set(fields)
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


def read_records(directory: str) -> Iterator[ProbeRecord | RecordError]:
    """Consume the directory's records, oldest first; a bad one yields its error."""
    try:
        names = [n for n in os.listdir(directory) if n.endswith(RECORD_SUFFIX)]
    except OSError:
        return
    for name in sorted(names, key=_record_order):
        try:
            yield parse_record(take_file(os.path.join(directory, name)))
        except RecordError as exc:
            yield RecordError(f"{name}: {exc}")
        except OSError as exc:
            yield RecordError(f"{name}: {exc.strerror}")


def take_file(path: str) -> bytes:
    """Read and remove a file another process wrote into our private directory.

    A symlink is refused (O_NOFOLLOW), a FIFO cannot block us (O_NONBLOCK),
    and more than RECORD_LIMIT bytes is refused: the writer is untrusted.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            data = os.read(fd, RECORD_LIMIT + 1)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if len(data) > RECORD_LIMIT:
        raise RecordError(f"larger than {RECORD_LIMIT} bytes")
    return data


def _record_order(name: str) -> tuple[int, str]:
    """Records are named <pid>-<monotonic ns>.rec: order by time."""
    stem = name[: -len(RECORD_SUFFIX)]
    _, _, ns = stem.partition("-")
    return (int(ns) if ns.isdigit() else 0, name)


class ProbeEnvironment:
    """Switches the probe on in os.environ for a session, and back off exactly."""

    def __init__(self, record_dir: str) -> None:
        self.record_dir = record_dir
        self._saved: dict[str, str | None] = {}
        self.active = False

    def self_test(self) -> str:
        """Run one short child under the probe; '' if it works, else why not."""
        lib = library()
        if lib is None:
            return "not built for this platform"
        with tempfile.TemporaryDirectory(prefix="noinherit-selftest-") as tmp:
            env = {**os.environ, DIR_ENV: tmp, PRELOAD_ENV: _preload_value(lib)}
            try:
                proc = subprocess.run(
                    ["/bin/true"], env=env, capture_output=True, timeout=30, check=False
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return f"self-test could not run /bin/true: {exc}"
            if proc.stderr:
                return f"the loader complained: {proc.stderr.decode(errors='replace').strip()}"
            records = list(read_records(tmp))
            if len(records) != 1 or isinstance(records[0], RecordError):
                return "self-test child wrote no record (statically linked /bin/true?)"
        return ""

    def start(self) -> None:
        """Preload the probe into every child from now on."""
        lib = library()
        if lib is None or self.active:
            return
        for name in (PRELOAD_ENV, DIR_ENV):
            self._saved[name] = os.environ.get(name)
        os.environ[PRELOAD_ENV] = _preload_value(lib)
        os.environ[DIR_ENV] = self.record_dir
        self.active = True

    def stop(self) -> None:
        """Put both variables back as they were (absent stays absent)."""
        if not self.active:
            return
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.active = False


def _preload_value(lib: str) -> str:
    # The user's own entries stay, and first: sanitizer runtimes must come
    # before any other preloaded object.
    # Another copy of the probe (an outer session's, perhaps from another
    # install) would write a second record for every process: it goes.
    entries = os.environ.get(PRELOAD_ENV, "").replace(":", " ").split()
    user = [e for e in entries if os.path.basename(e) != _NAME]
    return " ".join([*user, lib])
