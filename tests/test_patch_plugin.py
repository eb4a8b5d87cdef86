"""Patch mode in the plugin: PEP 446 creators for the session, and where descriptors come from."""

from __future__ import annotations

import os
import subprocess

import pytest

PATCHED = """
import ctypes, os, subprocess

def test_dup2_to_a_high_number():
    r, w = os.pipe()
    os.dup2(w, 50)  # inheritable by default in CPython; not under the PEP's text
    try:
        subprocess.run(["/bin/true"], close_fds=False)
    finally:
        os.close(50); os.close(r); os.close(w)

def test_made_inheritable_on_purpose():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        os.system("true")
    finally:
        os.close(r); os.close(w)

def test_opened_by_c():
    fd = ctypes.CDLL(None).open(b"/dev/null", 0)
    try:
        os.system("true")
    finally:
        os.close(fd)
"""


def test_patch_mode_semantics_and_origins(pytester: pytest.Pytester) -> None:
    """dup2 onto a high number no longer leaks; reports say where a descriptor was made."""
    pytester.makepyfile(test_patched=PATCHED)
    result = pytester.runpytest("-p", "noinherit", "--noinherit-patch")
    result.stdout.fnmatch_lines(["noinherit: *patch on*"])
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_made_inheritable_on_purpose _*",
            "  origin: created by os.pipe() at test_patched.py:12 in test_made_inheritable_on_*",
            "          made inheritable by os.set_inheritable() at test_patched.py:13 in *",
            "*_ test_opened_by_c _*",
            "  origin: created outside Python (C extension or ctypes)",
        ]
    )


def test_without_patch_mode_dup2_leaks(pytester: pytest.Pytester) -> None:
    """The same dup2 fails without patch mode: CPython makes the target inheritable."""
    pytester.makepyfile(test_patched=PATCHED)
    pytester.makeini("[pytest]\nnoinherit_patch = false\n")
    result = pytester.runpytest("-p", "noinherit", "-k", "dup2")
    result.assert_outcomes(failed=1, deselected=2)


def test_patch_ini_and_report_fields(pytester: pytest.Pytester) -> None:
    """ini noinherit_patch switches it on; the JSON report has created_at and inheritable_since."""
    import json

    pytester.makepyfile(test_patched=PATCHED)
    pytester.makeini("[pytest]\nnoinherit_patch = true\n")
    result = pytester.runpytest("-p", "noinherit", "--noinherit-report=r.json", "-k", "purpose")
    result.assert_outcomes(failed=1, deselected=2)
    with open(pytester.path / "r.json", encoding="utf-8") as f:
        (finding,) = json.load(f)["findings"]
    assert finding["created_at"].startswith("created by os.pipe() at test_patched.py:12")
    assert finding["inheritable_since"].startswith("made inheritable by os.set_inheritable()")


def test_patches_removed_after_the_session(pytester: pytest.Pytester) -> None:
    """After an in-process session in patch mode, every patched name is the original."""
    import builtins
    import socket

    before = (builtins.open, os.open, os.dup2, os.pipe, socket.socket.__init__, subprocess.Popen)
    pytester.makepyfile(test_patched=PATCHED)
    result = pytester.runpytest_inprocess("-p", "noinherit", "--noinherit-patch", "-k", "dup2")
    result.assert_outcomes(passed=1, deselected=2)
    after = (builtins.open, os.open, os.dup2, os.pipe, socket.socket.__init__, subprocess.Popen)
    assert all(a is b for a, b in zip(before, after))
    r, w = os.pipe()
    try:
        os.dup2(w, 60)
        assert os.get_inheritable(60)  # CPython's own default again
    finally:
        os.close(60)
        os.close(r)
        os.close(w)
