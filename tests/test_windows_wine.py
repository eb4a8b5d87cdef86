"""The Windows backend: its spawn rules on any platform, its C core under wine.

The first part tests :mod:`pytest_noinherit.windows`, which is pure Python
and runs everywhere.  The last test builds ``_native/core_windows.c`` with
mingw-w64 and runs its C test driver under wine (``_native/windows/build.sh``);
it is skipped where those tools are missing.  Nothing here has run on a real
Windows machine (docs/windows.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_noinherit import windows
from pytest_noinherit.windows import (
    FILE_TYPE_CHAR,
    FILE_TYPE_DISK,
    FILE_TYPE_PIPE,
    FILE_TYPE_UNKNOWN,
    Inheritance,
)

BUILD_SH = Path(__file__).resolve().parent.parent / "_native" / "windows" / "build.sh"

# Handle values as Windows hands them out: multiples of 4.  0x13 has both low
# bits set, like a Windows 7 console pseudo-handle.
A, B, C = 0x84, 0x88, 0x8C
CONSOLE = 0x13
STD = (0x90, 0x94, 0x98)


# -- predict_child_handles: CreateProcess --------------------------------------


def test_inherit_true_without_list_passes_every_inheritable_handle() -> None:
    """bInheritHandles=TRUE and no handle list: the child gets all inheritable handles."""
    assert windows.predict_child_handles({A, B}, bInheritHandles=True, handle_list=None) == {A, B}


def test_handle_list_restricts_to_the_listed_handles() -> None:
    """A PROC_THREAD_ATTRIBUTE_HANDLE_LIST of one: only that handle goes."""
    assert windows.predict_child_handles({A, B}, bInheritHandles=True, handle_list=[A]) == {A}


def test_inherit_false_passes_nothing() -> None:
    """bInheritHandles=FALSE: nothing, whatever is inheritable or listed."""
    assert windows.predict_child_handles({A, B}, bInheritHandles=False, handle_list=None) == set()
    assert windows.predict_child_handles({A, B}, bInheritHandles=False, handle_list=[A]) == set()


def test_listing_a_non_inheritable_handle_is_refused() -> None:
    """A listed handle must be inheritable, or CreateProcess fails: ValueError names it."""
    with pytest.raises(ValueError, match="0x8c"):
        windows.predict_child_handles({A, B}, bInheritHandles=True, handle_list=[A, C])


def test_empty_handle_list_passes_nothing() -> None:
    """An empty list with bInheritHandles=TRUE restricts the child to nothing."""
    assert windows.predict_child_handles({A}, bInheritHandles=True, handle_list=[]) == set()


# -- console pseudo-handles and the handle list filter --------------------------


def test_console_pseudo_handle_needs_low_bits_and_char_type() -> None:
    """CPython's test: both low bits set and FILE_TYPE_CHAR, not either alone."""
    assert windows.is_console_pseudo_handle(CONSOLE, FILE_TYPE_CHAR)
    assert not windows.is_console_pseudo_handle(CONSOLE, FILE_TYPE_PIPE)
    assert not windows.is_console_pseudo_handle(A, FILE_TYPE_CHAR)


def test_filter_handle_list_drops_console_handles_and_duplicates() -> None:
    """subprocess._filter_handle_list: console pseudo-handles and repeats go."""
    assert windows.filter_handle_list([B, A, CONSOLE, A], {CONSOLE}) == (A, B)


# -- popen_inherits: Lib/subprocess.py on Windows --------------------------------


def test_popen_close_fds_with_std_handles_lists_them() -> None:
    """close_fds=True with std handles: a handle list of exactly the std handles."""
    how = windows.popen_inherits(True, None, True, std_handles=STD)
    assert how == Inheritance(True, STD, STD)
    assert how.child_handles({A, B, *STD}) == set(STD)
    assert how.undeclared({A, B, *STD}) == set()


def test_popen_close_fds_adds_the_user_handle_list() -> None:
    """A user handle_list joins the std handles in the list and counts as declared."""
    how = windows.popen_inherits(
        True, [A, CONSOLE], True, std_handles=STD, console_handles={CONSOLE}
    )
    assert how.inherit_handles
    assert how.handle_list == (A, *STD)
    assert how.child_handles({A, B, *STD}) == {A, *STD}
    assert how.undeclared({A, B, *STD}) == set()


def test_popen_close_fds_without_std_handles_inherits_nothing() -> None:
    """close_fds=True and no std handles: bInheritHandles=FALSE."""
    how = windows.popen_inherits(True, None, False)
    assert how == Inheritance(False)
    assert how.child_handles({A, B}) == set()


def test_popen_user_handle_list_alone_forces_inheritance_of_the_list() -> None:
    """A user handle_list without std handles still turns bInheritHandles on for the list."""
    how = windows.popen_inherits(True, [A], False)
    assert how == Inheritance(True, (A,), (A,))
    assert how.child_handles({A, B}) == {A}


def test_popen_console_only_user_list_falls_back_to_close_fds() -> None:
    """A user list that filters down to nothing leaves close_fds in charge."""
    assert windows.popen_inherits(True, [CONSOLE], False, console_handles={CONSOLE}) == Inheritance(
        False
    )


def test_popen_no_close_fds_leaks_everything_inheritable() -> None:
    """close_fds=False without a list: every inheritable handle, hint close_fds=False."""
    how = windows.popen_inherits(False, None, True, std_handles=STD)
    assert (how.inherit_handles, how.handle_list, how.hint) == (True, None, "close_fds=False")
    assert how.child_handles({A, B, *STD}) == {A, B, *STD}
    assert how.undeclared({A, B, *STD}) == {A, B}


def test_popen_user_list_overrides_close_fds_false_with_a_warning() -> None:
    """close_fds=False plus a handle_list: the list wins, as the RuntimeWarning says."""
    how = windows.popen_inherits(False, [A], False)
    assert how.handle_list == (A,)
    assert "overriding close_fds" in how.warning
    assert how.child_handles({A, B}) == {A}


# -- the other routes --------------------------------------------------------------


def test_crt_spawns_inherit_everything() -> None:
    """os.system and os.spawn*: bInheritHandles=TRUE, no list, nothing declared."""
    how = windows.crt_spawn_inherits()
    assert how.child_handles({A, B}) == {A, B}
    assert how.undeclared({A, B}) == {A, B}
    assert how.hint


def test_multiprocessing_inherits_nothing() -> None:
    """multiprocessing spawn passes handles by DuplicateHandle, none by inheritance."""
    assert windows.multiprocessing_inherits().child_handles({A, B}) == set()


def test_inheritable_handles_reads_obj_inherit() -> None:
    """A (handle, attributes) table yields the handles with OBJ_INHERIT (0x2)."""
    table = [(A, windows.OBJ_INHERIT), (B, 0), (C, windows.OBJ_INHERIT | 0x1)]
    assert windows.inheritable_handles(table) == {A, C}


@pytest.mark.parametrize(
    ("file_type", "is_socket", "kind"),
    [
        (FILE_TYPE_DISK, False, "file"),
        (FILE_TYPE_PIPE, False, "pipe"),
        (FILE_TYPE_CHAR, False, "chr"),
        (FILE_TYPE_PIPE, True, "socket"),
        (FILE_TYPE_UNKNOWN, False, "anon"),
    ],
)
def test_kind_of_uses_the_posix_words(file_type: int, is_socket: bool, kind: str) -> None:
    """GetFileType answers map onto the kinds the POSIX reports use."""
    assert windows.kind_of(file_type, is_socket=is_socket) == kind


# -- the C core under wine ------------------------------------------------------------


def _wine() -> str | None:
    return shutil.which("wine64") or shutil.which("wine")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("x86_64-w64-mingw32-gcc") is None or _wine() is None,
    reason="needs mingw-w64 and wine: apt-get install -y gcc-mingw-w64-x86-64 wine64",
)
def test_c_driver_passes_under_wine() -> None:
    """core_windows.c's C driver passes every check under wine, with msvcrt and with the UCRT."""
    result = subprocess.run(
        ["bash", str(BUILD_SH)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line.rstrip("\r") for line in result.stdout.splitlines()]
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = [m for line in lines if (m := re.fullmatch(r"(\d+) passed, (\d+) failed", line))]
    # One summary per C runtime, then the total.
    assert len(summaries) == 3, result.stdout
    assert all(m.group(2) == "0" for m in summaries), result.stdout
    assert int(summaries[-1].group(1)) == sum(int(m.group(1)) for m in summaries[:-1]) > 0
    assert lines[-1] == summaries[-1].group(0)
    assert not [line for line in lines if line.startswith("FAIL")]
