"""The JSON report's destination: checked before the run, written atomically after it.

The report goes through a fresh file in the destination's directory, renamed
over the destination with os.replace() (rename(2) is atomic): a reader sees
the old report or the whole new one, never half of one, and a failed write
leaves the old report alone.  A symlink at the destination is followed, so
the file it points to is replaced.

Only a regular file, or nothing, may stand at the destination.  A device
node, a FIFO or a socket is refused before the run: renaming over
``/dev/null`` as root would put a regular file in its place, and opening a
FIFO for writing blocks until a reader comes (fifo(7)).  Nothing here opens
the destination itself, so nothing here can block on it.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from typing import Any

__all__ = ["ReportError", "check_destination", "write"]

TEMP_PREFIX = ".noinherit-report-"

# (test, what the destination is) for everything but a regular file.
_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


SCHEMA_VERSION = 1
SCHEMA_FILE = "report-schema.json"  # shipped in the package


def schema() -> dict[str, Any]:
    """The JSON Schema every report follows (draft 2020-12)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SCHEMA_FILE)
    with open(path, encoding="utf-8") as f:
        return dict(json.load(f))


class ReportError(OSError):
    """The report cannot be written at that path; str() is the reason, in one line."""


def check_destination(path: str) -> None:
    """Try, before the run, everything writing the report to path will need.

    The destination must be absent or a regular file, and a file must be
    creatable next to it: one is created with O_EXCL and removed again.
    ReportError says what stands in the way.
    """
    folder = os.path.dirname(_destination(path))
    fd, temp = _create_temp(path, folder)
    os.close(fd)
    with contextlib.suppress(OSError):  # it was ours; a leftover only costs a dot-file
        os.unlink(temp)


def write(path: str, doc: Mapping[str, Any]) -> None:
    """Write doc to path as JSON, atomically; ReportError says why it could not."""
    data = json.dumps(doc, indent=2).encode("utf-8")
    # Checked again: the run may have put something else at the destination.
    target = _destination(path)
    fd, temp = _create_temp(path, os.path.dirname(target))
    try:
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                # Durable before the rename, or a crash could leave an empty report.
                os.fsync(f.fileno())
        except OSError as exc:
            raise ReportError(f"cannot write {path}: writing failed: {_reason(exc)}") from exc
        try:
            os.replace(temp, target)
        except OSError as exc:
            raise ReportError(f"cannot write {path}: {_reason(exc)}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _destination(path: str) -> str:
    """The file the report replaces, symlinks followed; ReportError unless it may."""
    shown = f"cannot write {path}"
    if not os.path.basename(path):
        raise ReportError(f"{shown}: the path names a directory")
    if os.path.islink(path) and not os.path.exists(path):
        raise ReportError(f"{shown}: it is a dangling symlink to {os.readlink(path)}")
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        folder_mode = os.stat(folder).st_mode
    except FileNotFoundError:
        raise ReportError(f"{shown}: no directory {folder}") from None
    except OSError as exc:
        raise ReportError(f"{shown}: {folder}: {_reason(exc)}") from None
    if not stat.S_ISDIR(folder_mode):
        raise ReportError(f"{shown}: {folder} is not a directory")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:  # a name too long, a loop of symlinks, a search permission
        raise ReportError(f"{shown}: {_reason(exc)}") from None
    for test, what in _NOT_REGULAR:
        if test(mode):
            raise ReportError(f"{shown}: it is {what}, not a regular file")
    return target


def _create_temp(path: str, folder: str) -> tuple[int, str]:
    """A new empty file in folder, opened for writing, and its name."""
    # O_EXCL: never an existing file, nor a symlink planted under the name
    # (open(2)).  Mode 0o666 lets the umask decide, as open() would have.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(10):
        temp = os.path.join(folder, f"{TEMP_PREFIX}{os.urandom(8).hex()}.tmp")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue  # 64 random bits: practically never twice
        except OSError as exc:
            raise ReportError(
                f"cannot write {path}: cannot create files in {folder}: {_reason(exc)}"
            ) from None
    raise ReportError(f"cannot write {path}: cannot create files in {folder}: names all taken")


def _reason(exc: OSError) -> str:
    # strerror without the file name: the message already says which file.
    return exc.strerror or str(exc)
