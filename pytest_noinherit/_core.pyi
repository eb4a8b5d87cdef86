"""Typed stub for the cffi extension ``pytest_noinherit._core`` (built from _native/).

Only :mod:`pytest_noinherit.native` imports it.  cffi's ``ffi`` object and the
C pointers it hands out (``CData``) have no useful static types, so they are
``Any``; the C functions and constants of ``_native/noinherit.h`` are typed.
"""

from typing import Any

CData = Any

class _Lib:
    NIC_FLAG_CLOEXEC: int
    NIC_METHOD_AUTO: int
    NIC_METHOD_POLL: int
    NIC_METHOD_PROCFS: int
    NIC_METHOD_SCAN: int
    NIC_METHOD_NATIVE: int
    def nic_snapshot(self, out: CData, cap: int, method: int, /) -> int: ...
    def nic_snapshot_since(self, out: CData, cap: int, prev: CData, nprev: int, /) -> int: ...
    def nic_get_inheritable(self, fd: int, /) -> int: ...
    def nic_set_inheritable(self, fd: int, inheritable: int, /) -> int: ...
    def nic_seal_loop(self, low: int, keep: CData, nkeep: int, /) -> int: ...
    def nic_seal(self, low: int, keep: CData, nkeep: int, /) -> int: ...
    def nic_target(self, fd: int, buf: CData, size: int, /) -> int: ...
    def nic_socket_info(
        self,
        fd: int,
        family: CData,
        type: CData,
        protocol: CData,
        local: CData,
        local_len: CData,
        peer: CData,
        peer_len: CData,
        /,
    ) -> int: ...
    def nic_platform(self, /) -> CData: ...
    # POSIX builds only (noinherit_delta.h)
    NIC_DELTA_FLAGS: int
    def nic_snapshot_delta(
        self, out: CData, cap: int, prev: CData, nprev: int, options: int, same: CData, /
    ) -> int: ...
    # Linux builds only (noinherit_kernel.h)
    def nik_kernel_available(self, /) -> int: ...
    def nik_kernel_install(self, no_new_privs: int, /) -> int: ...
    def nik_kernel_serve(self, listener: int, stop_fd: int, shared_fd: int, /) -> int: ...
    # POSIX builds only (noinherit_audit.h)
    def nic_audit_add_hook(
        self, module: bytes, attribute: bytes, events: CData, nevents: int, /
    ) -> int: ...
    def nic_audit_release(self, /) -> int: ...
    # Windows builds only (noinherit_windows.h)
    NIC_OBJ_INHERIT: int
    def nic_win_snapshot(self, out: CData, cap: int, /) -> int: ...
    def nic_win_handles(self, pid: int, out: CData, cap: int, /) -> int: ...
    def nic_win_get_handle_inheritable(self, handle: int, /) -> int: ...
    def nic_win_set_handle_inheritable(self, handle: int, inheritable: int, /) -> int: ...
    def nic_win_handle_target(self, handle: int, buf: CData, size: int, /) -> int: ...
    def nic_win_handle_socket_info(
        self,
        handle: int,
        family: CData,
        type: CData,
        protocol: CData,
        local: CData,
        local_len: CData,
        peer: CData,
        peer_len: CData,
        /,
    ) -> int: ...
    def nic_win_resume_thread(self, thread: int, /) -> int: ...

ffi: Any
lib: _Lib
