"""Which handles a Windows child receives: CreateProcess's rules as pure functions.

On Windows a child inherits *handles*, not descriptors.  ``CreateProcess``
passes on every handle whose ``HANDLE_FLAG_INHERIT`` is set when
``bInheritHandles`` is true, only the handles named in
``PROC_THREAD_ATTRIBUTE_HANDLE_LIST`` when the ``STARTUPINFOEX`` carries one,
and nothing when ``bInheritHandles`` is false.  Inherited handles keep their
value, so a child's inherited set is a subset of the parent's handle values.

This module says which of those three cases each Python-level route takes
(``subprocess.Popen`` per ``Lib/subprocess.py``'s Windows ``_execute_child``,
``os.system``/``os.spawn*`` through the CRT, ``multiprocessing``), and what
the child then holds.  It imports nothing platform-specific, so it is tested
on Linux; the native side (``_native/core_windows.c``) supplies the handle
tables these functions are fed with.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

__all__ = [
    "CREATE_SUSPENDED",
    "FILE_TYPE_CHAR",
    "FILE_TYPE_DISK",
    "FILE_TYPE_PIPE",
    "FILE_TYPE_UNKNOWN",
    "OBJ_INHERIT",
    "STARTF_USESTDHANDLES",
    "Inheritance",
    "create_process_inherits",
    "crt_spawn_inherits",
    "filter_handle_list",
    "inheritable_handles",
    "is_console_pseudo_handle",
    "kind_of",
    "multiprocessing_inherits",
    "popen_inherits",
    "predict_child_handles",
]

#: ``HandleAttributes`` bit of a handle-table entry: the handle is inheritable.
OBJ_INHERIT = 0x2

#: ``CreateProcess`` creation flag: the child's first thread waits for ResumeThread.
CREATE_SUSPENDED = 0x4
#: ``STARTUPINFO.dwFlags`` bit: the hStd* fields are the child's standard handles.
STARTF_USESTDHANDLES = 0x100

#: ``GetFileType`` answers (winbase.h).
FILE_TYPE_UNKNOWN = 0x0000
FILE_TYPE_DISK = 0x0001
FILE_TYPE_CHAR = 0x0002
FILE_TYPE_PIPE = 0x0003

_KIND_BY_FILE_TYPE = {FILE_TYPE_DISK: "file", FILE_TYPE_CHAR: "chr", FILE_TYPE_PIPE: "pipe"}


@dataclasses.dataclass(frozen=True)
class Inheritance:
    """What one spawn asks ``CreateProcess`` to pass on.

    ``handle_list`` is ``None`` when no ``PROC_THREAD_ATTRIBUTE_HANDLE_LIST``
    is given (every inheritable handle goes when ``inherit_handles``);
    ``declared`` are the handles the caller named on purpose (its
    ``handle_list`` and the child's standard handles, the Windows
    counterparts of ``pass_fds`` and 0, 1, 2); ``hint`` is what the caller
    can change when something undeclared leaks, as in the POSIX reports;
    ``warning`` is the ``RuntimeWarning`` subprocess emits for the call, if any.
    """

    inherit_handles: bool
    handle_list: tuple[int, ...] | None = None
    declared: tuple[int, ...] = ()
    hint: str = ""
    warning: str = ""

    def child_handles(self, inheritable: AbstractSet[int]) -> set[int]:
        """The handles the child receives, given the parent's inheritable ones at spawn time."""
        return predict_child_handles(
            inheritable, bInheritHandles=self.inherit_handles, handle_list=self.handle_list
        )

    def undeclared(self, inheritable: AbstractSet[int]) -> set[int]:
        """The received handles nobody named: the candidates for a violation."""
        return self.child_handles(inheritable) - set(self.declared)


def predict_child_handles(
    inheritable_handles: AbstractSet[int],
    *,
    bInheritHandles: bool,  # named as CreateProcess names it
    handle_list: Sequence[int] | None,
) -> set[int]:
    """The handle values a child of ``CreateProcess`` holds by inheritance.

    ``inheritable_handles`` are the parent's handles with ``HANDLE_FLAG_INHERIT``
    at the moment of the call.  With ``bInheritHandles`` false the child gets
    none; with a ``handle_list`` only the listed ones (a listed handle must
    itself be inheritable, or ``CreateProcess`` fails: :class:`ValueError`);
    otherwise every inheritable handle.
    """
    if not bInheritHandles:
        return set()
    if handle_list is None:
        return set(inheritable_handles)
    listed = set(handle_list)
    refused = listed - set(inheritable_handles)
    if refused:
        # CreateProcess fails with ERROR_INVALID_PARAMETER: nothing is spawned.
        raise ValueError(
            "PROC_THREAD_ATTRIBUTE_HANDLE_LIST names non-inheritable handles: "
            + ", ".join(hex(h) for h in sorted(refused))
        )
    return listed


def is_console_pseudo_handle(handle: int, file_type: int) -> bool:
    """Whether ``handle`` is a Windows 7 console pseudo-handle.

    CPython's test (``Python/fileutils.c`` ``set_inheritable`` and
    ``subprocess._filter_handle_list``): the two low bits set and
    ``GetFileType`` answering ``FILE_TYPE_CHAR``.  Such a handle cannot be
    listed in a handle list nor have its inherit flag changed.
    """
    return handle & 0x3 == 0x3 and file_type == FILE_TYPE_CHAR


def filter_handle_list(
    handles: Iterable[int], console_handles: AbstractSet[int] = frozenset()
) -> tuple[int, ...]:
    """``subprocess.Popen._filter_handle_list``: drop console pseudo-handles and duplicates.

    ``console_handles`` are the handles for which :func:`is_console_pseudo_handle`
    holds (finding them takes a ``GetFileType`` call, so the caller does it).
    The result is sorted: CPython builds a set, so the order carries no meaning.
    """
    return tuple(sorted({h for h in handles if h not in console_handles}))


def popen_inherits(
    close_fds: bool,
    startupinfo_handle_list: Sequence[int] | None,
    has_std_handles: bool,
    *,
    std_handles: Sequence[int] = (),
    console_handles: AbstractSet[int] = frozenset(),
) -> Inheritance:
    """How ``subprocess.Popen`` on Windows calls ``CreateProcess`` (Python 3.7+).

    ``has_std_handles`` is true when any of ``stdin``/``stdout``/``stderr`` was
    given (Popen then hands the child all three, made inheritable, through
    ``STARTF_USESTDHANDLES``); ``std_handles`` are their values when known.
    Following ``Lib/subprocess.py`` ``_execute_child``:

    * a non-empty ``lpAttributeList["handle_list"]``, or std handles with
      ``close_fds``, makes a handle list of the user's handles plus the std
      handles, console pseudo-handles and duplicates removed; if it is not
      empty, ``close_fds`` is forced false (with a ``RuntimeWarning`` when
      the caller had passed ``close_fds=False``) and the child gets exactly
      the list;
    * otherwise ``bInheritHandles = not close_fds``: nothing with
      ``close_fds=True``, every inheritable handle with ``close_fds=False``.
    """
    user = list(startupinfo_handle_list or ())
    declared_std = list(std_handles) if has_std_handles else []
    if user or (has_std_handles and close_fds):
        listed = filter_handle_list(user + declared_std, console_handles)
        # Popen's std handles are fresh inheritable duplicates, never console
        # pseudo-handles, so with has_std_handles the list is never empty even
        # when their values are not known here.
        if listed or has_std_handles:
            warning = (
                "startupinfo.lpAttributeList['handle_list'] overriding close_fds"
                if not close_fds
                else ""
            )
            return Inheritance(True, listed, listed, "", warning)
    if close_fds:
        return Inheritance(False, None, tuple(declared_std))
    return Inheritance(True, None, tuple(declared_std), "close_fds=False")


def create_process_inherits(
    inherit_handles: object, startup_info: object, hint: str = "bInheritHandles=True"
) -> Inheritance:
    """What one ``_winapi.CreateProcess`` call passes on, read from its own arguments.

    Every Python route to ``CreateProcess`` (``subprocess.Popen`` after the
    rules of :func:`popen_inherits`, ``multiprocessing``, ``asyncio``, direct
    calls) meets here, so this is the rule the plugin applies.  Declared are
    the handles the caller named: ``startup_info.lpAttributeList["handle_list"]``
    and, with ``STARTF_USESTDHANDLES``, the three standard handles.
    """
    attributes = getattr(startup_info, "lpAttributeList", None)
    listed = attributes.get("handle_list") if isinstance(attributes, dict) else None
    handle_list = tuple(int(h) for h in listed) if listed else None
    std: tuple[int, ...] = ()
    if int(getattr(startup_info, "dwFlags", 0) or 0) & STARTF_USESTDHANDLES:
        std = tuple(
            int(h)
            for h in (getattr(startup_info, f"hStd{n}", None) for n in ("Input", "Output", "Error"))
            if h
        )
    declared = tuple(sorted(set(handle_list or ()) | set(std)))
    return Inheritance(bool(inherit_handles), handle_list, declared, hint)


def crt_spawn_inherits() -> Inheritance:
    """``os.system``, ``os.spawn*`` and ``os.exec*``: every inheritable handle.

    They go through the CRT, which calls ``CreateProcess`` with
    ``bInheritHandles=TRUE`` and no handle list (and passes its descriptor
    table through ``lpReserved2``).  ``os.popen`` is not one of them: it is
    ``subprocess.Popen`` with a pipe, see :func:`popen_inherits`.
    """
    return Inheritance(True, None, (), "os.set_handle_inheritable(handle, False)")


def multiprocessing_inherits() -> Inheritance:
    """``multiprocessing`` spawn on Windows: ``bInheritHandles=False``.

    The handles the child needs are handed over with ``DuplicateHandle``
    instead, so nothing is inherited.
    """
    return Inheritance(False)


def inheritable_handles(table: Iterable[tuple[int, int]]) -> set[int]:
    """The handle values with ``OBJ_INHERIT`` in a ``(handle, attributes)`` table.

    The table is what ``nic_win_handles`` reads (``NtQueryInformationProcess``
    class 51, or ``NtQuerySystemInformation`` class 64 filtered by pid).
    """
    return {handle for handle, attributes in table if attributes & OBJ_INHERIT}


def kind_of(file_type: int, *, is_socket: bool = False) -> str:
    """The report's kind for a handle: the same words the POSIX table uses.

    Sockets answer ``FILE_TYPE_PIPE`` (or ``FILE_TYPE_UNKNOWN``) to
    ``GetFileType``, so the caller's ``getsockopt(SO_TYPE)`` probe decides.
    """
    if is_socket:
        return "socket"
    return _KIND_BY_FILE_TYPE.get(file_type, "anon")
