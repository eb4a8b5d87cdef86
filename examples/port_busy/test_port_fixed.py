"""The fixed twin of test_port_leaky: the helper does not get the socket, the restart works.

Sockets are created non-inheritable (PEP 446) and ``subprocess`` closes every
other descriptor in the child by default (``close_fds=True``): leave both
alone and the helper holds nothing of the server's.
"""

import socket
import subprocess


def start_server(port: int = 0) -> socket.socket:
    server = socket.socket()
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
    except OSError:
        server.close()
        raise
    return server


def test_restart_works_while_helper_runs():
    server = start_server()
    port = server.getsockname()[1]
    helper = subprocess.Popen(["sleep", "5"])
    try:
        server.close()
        restarted = start_server(port)
        assert restarted.getsockname()[1] == port
        restarted.close()
    finally:
        helper.kill()
        helper.wait()
