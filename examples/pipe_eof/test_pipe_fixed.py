"""The fixed twin of test_pipe_leaky: sort gets only its stdin, and sees end-of-file.

``os.pipe()`` returns non-inheritable descriptors (PEP 446) and ``subprocess``
passes a child only its standard streams and ``pass_fds`` by default: once the
test closes its write end, the pipe has no writer left and sort finishes.
"""

import os
import subprocess


def test_sort_sees_eof():
    r, w = os.pipe()
    sort = subprocess.Popen(["sort"], stdin=r, stdout=subprocess.PIPE)
    os.close(r)
    os.write(w, b"pear\napple\n")
    os.close(w)
    out, _ = sort.communicate(timeout=2)
    assert out == b"apple\npear\n"
