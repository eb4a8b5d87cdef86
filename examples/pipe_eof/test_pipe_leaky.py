"""A reader that holds the write end of its own input never sees end-of-file.

The test feeds ``sort`` through a pipe.  ``sort`` prints nothing until its
input ends, and input from a pipe ends when every write end is closed.  The
write end was made inheritable (the usual reason: an earlier child was meant
to write into it) and ``sort`` is started with ``close_fds=False``, so sort
itself holds a write end: the test closes its own and sort waits forever.

The timeout keeps the example from hanging for real.  pytest-noinherit fails
the test when sort receives the write end.
"""

import os
import subprocess

import pytest


def test_sort_never_sees_eof():
    r, w = os.pipe()
    os.set_inheritable(w, True)  # the bug, and close_fds=False passes it to sort
    sort = subprocess.Popen(["sort"], stdin=r, stdout=subprocess.PIPE, close_fds=False)
    os.close(r)
    os.write(w, b"pear\napple\n")
    os.close(w)  # the test's write end is closed, sort's own copy is not
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            sort.communicate(timeout=2)
    finally:
        sort.kill()
        sort.communicate()
