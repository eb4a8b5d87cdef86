"""The fixed twin of test_c_open_leaky: descriptors from C code made close-on-exec.

Either C code asks for ``O_CLOEXEC`` itself, or Python marks the descriptor
non-inheritable right after the call, before any child can start.
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


def test_c_code_asks_for_cloexec(tmp_path, monkeypatch):
    key = tmp_path / "api.key"
    key.write_text("s3cret\n")
    fd = c_open(bytes(key), os.O_RDONLY | os.O_CLOEXEC)
    try:
        monkeypatch.chdir(tmp_path)
        assert os.system("ls -l /proc/self/fd/ > listing") == 0
        assert str(key) not in (tmp_path / "listing").read_text()
    finally:
        os.close(fd)


def test_python_clears_the_flag(tmp_path, monkeypatch):
    key = tmp_path / "api.key"
    key.write_text("s3cret\n")
    fd = c_open(bytes(key), os.O_RDONLY)
    os.set_inheritable(fd, False)  # the C library cannot be changed, its result can
    try:
        monkeypatch.chdir(tmp_path)
        assert os.system("ls -l /proc/self/fd/ > listing") == 0
        assert str(key) not in (tmp_path / "listing").read_text()
    finally:
        os.close(fd)
