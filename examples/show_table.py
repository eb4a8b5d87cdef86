"""Print this process's descriptor table, with one descriptor leaked on purpose."""

import os
import socket

import pytest_noinherit

r, w = os.pipe()
os.set_inheritable(w, True)  # this one would reach every child started with close_fds=False
sock = socket.socket()
print(f"backend: {pytest_noinherit.backend()} ({pytest_noinherit.backend_reason()})")
for entry in pytest_noinherit.snapshot():
    flag = "INHERITABLE" if entry.inheritable else "close-on-exec"
    print(f"fd {entry.fd:>4}  {flag:<13}  {pytest_noinherit.describe(entry.fd)}")
