"""Descriptors handed to children on purpose, and declared: these tests pass.

``pass_fds`` gives one descriptor to one child and nothing else.  A jobserver
is the other honest case: GNU make hands its token pipe to every sub-make by
inheritance and names the descriptors in MAKEFLAGS, so the test says so with
``@pytest.mark.allow_inherit``.  Every allowance used is listed in the
noinherit summary at the end of the run.
"""

import os
import subprocess
import sys

import pytest

# A sub-make: takes a job token from the jobserver and gives it back.
SUBMAKE = """
import os
r, w = map(int, os.environ["MAKEFLAGS"].split("--jobserver-auth=")[1].split(","))
os.write(w, os.read(r, 1))
"""


def test_pass_fds_gives_one_child_one_pipe():
    r, w = os.pipe()
    try:
        code = f"import os; os.write({w}, b'ready')"
        subprocess.run([sys.executable, "-c", code], pass_fds=(w,), check=True)
        assert os.read(r, 5) == b"ready"
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.allow_inherit(kind="pipe")  # the token pipe; its numbers are known only at run time
def test_jobserver_pipe_is_inherited_by_design():
    r, w = os.pipe()
    try:
        os.write(w, b"++")  # two job slots
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        env = dict(os.environ, MAKEFLAGS=f"-j3 --jobserver-auth={r},{w}")
        subprocess.run([sys.executable, "-c", SUBMAKE], env=env, close_fds=False, check=True)
        assert os.read(r, 2) == b"++"  # the sub-make gave its token back
    finally:
        os.close(r)
        os.close(w)
