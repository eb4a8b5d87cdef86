"""A descriptor opened by C code reaches a shell command.

PEP 446 only covers descriptors Python itself creates.  C code -- an extension
module, a vendored library, here libc called through ctypes -- opens files
with plain ``open(2)``, and without ``O_CLOEXEC`` the descriptor is
inheritable.  ``os.system`` passes every inheritable descriptor to the shell
and to whatever the shell runs: the command below can see (and read) the key.

pytest-noinherit fails the test when the shell receives the descriptor.
"""

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


def c_open(path: bytes, flags: int) -> int:
    """open(2), the way C code calls it: no PEP 446 behind it."""
    fd = libc.open(path, flags)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), path)
    return fd


def test_shell_command_can_read_the_key(tmp_path, monkeypatch):
    key = tmp_path / "api.key"
    key.write_text("s3cret\n")
    fd = c_open(bytes(key), os.O_RDONLY)  # the bug: no O_CLOEXEC
    try:
        monkeypatch.chdir(tmp_path)
        assert os.system("ls -l /proc/self/fd/ > listing") == 0
        assert str(key) in (tmp_path / "listing").read_text()  # the command holds the key file
    finally:
        os.close(fd)
