"""The fixed twin of leaky_helper: descriptors reach exactly the child that needs them."""

import os
import socket
import subprocess
import sys


def test_helper_does_not_get_the_socket():
    server = socket.socket()  # non-inheritable by default (PEP 446)
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    finally:
        server.close()


def test_pipe_passed_explicitly():
    r, w = os.pipe()
    try:
        # pass_fds makes w inheritable in this child only.
        code = f"import os; os.write({w}, b'ok')"
        subprocess.run([sys.executable, "-c", code], pass_fds=(w,), check=True)
        assert os.read(r, 2) == b"ok"
    finally:
        os.close(r)
        os.close(w)
