"""Shared set-up for the plugin tests.

The outer run has the plugin off (``-p no:noinherit`` in pyproject's addopts)
and pytester runs every inner session in a real subprocess, where the tests
below pass ``-p noinherit`` themselves: the plugin is tested the way it is
installed (STYLE.md).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator

import jsonschema
import pytest

from pytest_noinherit import report

# A small module the inner test files import (``from fdkit import ...``): the
# inner session runs with its rootdir, pytester.path, on sys.path.  Every
# descriptor it opens is closed again, so leak warnings only appear where a
# test is about leaks.
FDKIT = '''
import contextlib
import os
import subprocess

# A child that lives long enough to be looked at: a child that has already
# exited can only be predicted, not observed (see test_child_exiting_at_once_*).
SLEEP = ["/bin/sleep", "0.02"]


@contextlib.contextmanager
def inheritable_pipe(at=None):
    """The write end of a fresh pipe, inheritable; at=N puts it at descriptor N."""
    r, w = os.pipe()
    try:
        if at is not None:
            os.dup2(w, at)  # dup2 makes the copy inheritable (PEP 446)
            os.close(w)
            w = at
        else:
            os.set_inheritable(w, True)
        yield w
    finally:
        os.close(r)
        os.close(w)


def spawn(argv=SLEEP, **kwargs):
    """Run a child that inherits every inheritable descriptor (close_fds=False)."""
    kwargs.setdefault("close_fds", False)
    subprocess.run(argv, check=True, **kwargs)
'''


# Plugins that happen to be installed next to ours but play no part in a
# test: loading hypothesis and xdist triples an inner session's start-up
# (about 0.9 s against 0.3 s).  The xdist test takes PYTEST_ADDOPTS away again.
OTHER_PLUGINS_OFF = "-p no:xdist -p no:hypothesispytest -p no:randomly"


@pytest.fixture(autouse=True)
def _inner_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions load the plugin by name and skip unrelated plugins.

    PYTEST_NOINHERIT_BACKEND is left alone: tox's ``pure`` environment runs
    every inner session on the pure-Python backend through it.
    """
    if "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS when it starts
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("PYTEST_ADDOPTS", OTHER_PLUGINS_OFF)


@pytest.fixture
def fdkit(pytester: pytest.Pytester) -> pytest.Pytester:
    """pytester, with the ``fdkit`` helper module written next to the inner tests."""
    pytester.makepyfile(fdkit=FDKIT)
    return pytester


@pytest.fixture(autouse=True)
def _reports_follow_the_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every JSON report an inner session writes is validated against the shipped schema."""
    yield
    if "pytester" not in request.fixturenames:
        return
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    validator = jsonschema.Draft202012Validator(report.schema())
    for path in pytester.path.rglob("*.json"):
        try:
            if not stat.S_ISREG(path.lstat().st_mode):  # a FIFO would block the read
                continue
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "schema_version" in doc and "findings" in doc:
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            assert not errors, f"{path.name}: " + "; ".join(
                f"{list(e.path)}: {e.message}" for e in errors[:5]
            )
