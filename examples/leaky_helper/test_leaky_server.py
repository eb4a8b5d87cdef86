"""A server whose listening socket leaks into a helper process.

The helper outlives the test holding the listening socket, so the port stays
busy: the next server start fails with EADDRINUSE.  pytest-noinherit fails the
test at the moment the helper is started, naming the socket and the helper.
"""

import os
import socket
import subprocess
import sys


def start_server() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    # The bug: some code made the socket inheritable (for a "graceful restart")...
    server.set_inheritable(True)
    return server


def test_helper_keeps_the_port_busy():
    server = start_server()
    # ...and the helper is started with close_fds=False, so it gets every
    # inheritable descriptor, the listening socket included.
    helper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(0.3)"], close_fds=False
    )
    try:
        assert helper.pid > 0
    finally:
        helper.wait()
        server.close()


def test_shell_command_gets_the_pipe():
    r, w = os.pipe()
    os.set_inheritable(w, True)  # meant for one child, but os.system passes it to all
    try:
        assert os.system("true") == 0
    finally:
        os.close(r)
        os.close(w)
