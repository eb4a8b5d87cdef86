"""A server's listening socket leaks into a helper, so the server cannot restart.

The server makes its listening socket inheritable (the usual reason: a
"graceful restart" that hands the socket to the next server process) and then
starts an unrelated helper with ``close_fds=False``.  The helper now holds the
listening socket too.  When the server restarts -- closes its socket and binds
the same port again -- the bind fails with EADDRINUSE: the port is still
listening, in the helper.

The test shows that harm and passes its own assertions; pytest-noinherit fails
it anyway, at the moment the helper received the socket.
"""

import errno
import socket
import subprocess

import pytest


def start_server(port: int = 0) -> socket.socket:
    server = socket.socket()
    try:
        # Every server sets SO_REUSEADDR; it forgives connections in TIME_WAIT,
        # not another socket that is still listening on the port.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
    except OSError:
        server.close()
        raise
    return server


def test_restart_fails_while_helper_runs():
    server = start_server()
    server.set_inheritable(True)  # the bug: kept for a restart hand-over
    port = server.getsockname()[1]
    helper = subprocess.Popen(["sleep", "5"], close_fds=False)  # ...and handed to everyone
    try:
        server.close()  # restart: stop...
        with pytest.raises(OSError, match="in use") as excinfo:
            start_server(port)  # ...and start again on the same port
        assert excinfo.value.errno == errno.EADDRINUSE
        print(f"restart on port {port} refused: {excinfo.value}")
    finally:
        helper.kill()
        helper.wait()
