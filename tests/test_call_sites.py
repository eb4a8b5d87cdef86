"""Every violation says where the test started the child: file, line, function and API."""

from __future__ import annotations

import re
import sys

import pytest

ROUTES = """import asyncio, os, pty, subprocess, _posixsubprocess
import pytest

@pytest.fixture
def leak():
    r, w = os.pipe()
    os.set_inheritable(w, True)
    yield w
    os.close(r); os.close(w)

def test_run(leak):
    subprocess.run(["/bin/true"], close_fds=False)  # site

def test_popen(leak):
    subprocess.Popen(["/bin/true"], close_fds=False).wait()  # site

def test_system(leak):
    os.system("true")  # site

def test_spawnv(leak):
    os.spawnv(os.P_WAIT, "/bin/true", ["true"])  # site

def test_posix_spawn(leak):
    os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)  # site

def test_fork_exec(leak):
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/true", ["true"])  # site
    os.waitpid(pid, 0)

def test_pty_spawn(leak):
    pty.spawn(["/bin/true"])  # site

def test_asyncio(leak):
    async def main():
        p = await asyncio.create_subprocess_exec("/bin/true", close_fds=False)  # site
        await p.wait()
    asyncio.run(main())
"""

API = {
    "test_run": "test_run (subprocess.run)",
    "test_popen": "test_popen (subprocess.Popen)",
    "test_system": "test_system (os.system)",
    "test_spawnv": "test_spawnv (os.spawnv)",
    "test_posix_spawn": "test_posix_spawn (os.posix_spawn)",
    "test_fork_exec": "test_fork_exec (os.exec*)",
    "test_pty_spawn": "test_pty_spawn (pty.spawn)",
    "test_asyncio": "main (asyncio.subprocess.create_subprocess_exec)",
}
# The lines marked "# site", in the order of the tests above.
LINES = [n for n, line in enumerate(ROUTES.splitlines(), 1) if line.endswith("# site")]
EXPECTED = {test: f"{n} in {api}" for (test, api), n in zip(API.items(), LINES)}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="plain"),
        pytest.param(["--noinherit-strict"], id="probe"),
        pytest.param(["-n", "2"], id="xdist"),
    ],
)
def test_each_route_names_the_line_of_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """Under each mode, every route's violation says test_routes.py:LINE in FUNC (API)."""
    if "-n" in args:
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")
    pytester.makepyfile(test_routes=ROUTES)
    result = pytester.runpytest("-p", "noinherit", *args)
    result.assert_outcomes(failed=len(EXPECTED))
    text = result.stdout.str()
    for test, where in EXPECTED.items():
        assert re.search(rf"started at test_routes\.py:{re.escape(where)}", text), (test, text)


def test_an_installed_wrapper_is_not_the_call_site(pytester: pytest.Pytester) -> None:
    """A spawn through an installed package (coverage patches os.execv so) names the test's line."""
    lib = pytester.mkdir("site-packages")
    (lib / "spawnlib.py").write_text(
        "import subprocess\n\ndef run_it():\n    subprocess.run(['/bin/true'], close_fds=False)\n"
    )
    pytester.makepyfile(
        test_wrapped="""
        import os, sys
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "site-packages"))
        import spawnlib

        def test_through_a_library():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            spawnlib.run_it()
        """
    )
    result = pytester.runpytest("-p", "noinherit")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["    started at test_wrapped.py:8 in test_through_a_library (subprocess.run)"]
    )


PDB_ROUTES = {
    "run": 'subprocess.run(["/bin/true"], close_fds=False)',
    "system": 'os.system("true")',
    "posix_spawn": 'os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)',
}


@pytest.mark.parametrize("route", sorted(PDB_ROUTES))
def test_pdb_stops_in_the_test_at_the_line_that_started_the_child(
    pytester: pytest.Pytester, route: str
) -> None:
    """--pdb opens the test's own frame, at the spawn's line, with the test's locals."""
    pytester.makepyfile(
        test_pdb=f"""
        import os, subprocess

        def test_leak():
            r, w = os.pipe()
            os.set_inheritable(w, True)
            marker = "the test's own local"
            {PDB_ROUTES[route]}
            os.close(r); os.close(w)
        """
    )
    # runpytest_subprocess takes no input: the same command through run().
    command = [sys.executable, "-m", "pytest", "-p", "noinherit", "-p", "no:randomly", "--pdb"]
    result = pytester.run(*command, stdin=b"p marker\nq\n", timeout=120)
    result.stdout.fnmatch_lines(
        [
            "> *test_pdb.py(7)test_leak()",
            f"-> {PDB_ROUTES[route]}",
            '(Pdb) "the test\'s own local"',
        ]
    )
    assert "pytest_noinherit" not in result.stdout.str().split("entering PDB")[1].split("(Pdb)")[0]
