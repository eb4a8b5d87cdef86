"""The kernel exec observer: probe mode ``kernel``, Linux only.

A seccomp filter on the test process (every thread: ``TSYNC``) stops every
``execve`` and ``execveat`` of the whole process tree at system call entry,
static and 32-bit programs and scrubbed environments included.  The
observer, a small native program of its own (``_native/observer.c``), holds
the filter's listener: it reads the stopped task's table from ``/proc``,
writes an exec probe record of the descriptors that survive the exec into
the session's record directory, and lets the exec go on.  lineage.py reads
those records exactly as it reads the probe's.  Nothing is put into any
child's environment.

The filter is process-global and irrevocable, and its listener must be held
until no filtered task is left; so, unlike everything else the plugin
installs (which lives in ``config.stash``), the observer is one per process
and lives in this module: every session of the process (pytester's inline
runs, ``pytest.main`` in a test) attaches its record directory to the one
observer and restores the previous directory when it ends.  A new process
(pytester's subprocess mode) inherits the filter of its parent but cannot
add a listener of its own (only one per process tree, seccomp(2) ``EBUSY``),
so there the session falls back to the LD_PRELOAD probe, and says why.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

from pytest_noinherit import receptions
from pytest_noinherit.recorddir import RecordDirectory

__all__ = [
    "OBSERVER_NAME",
    "KernelSession",
    "observer_path",
    "observer_pid",
    "unavailable",
]

OBSERVER_NAME = "noinherit-observer"
_SYS_ADMIN = 21  # CAP_SYS_ADMIN, linux/capability.h
_REPLY_TIMEOUT = 10.0  # seconds a command waits for the observer's answer
_SELF_TEST_TIMEOUT = 20.0
NEEDS_NO_NEW_PRIVS = (
    "without CAP_SYS_ADMIN the filter needs no_new_privs, which stops setuid programs"
    " (sudo, ping) from gaining privileges for the rest of the session;"
    " only --noinherit-probe=kernel sets it"
)
DIED = (
    "the kernel exec observer died during the session: from then on every exec was let"
    " through unobserved"
)


def observer_path() -> str | None:
    """The observer program built with the package, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_probe", OBSERVER_NAME)
    return path if os.access(path, os.X_OK) else None


def _status_fields() -> dict[str, str]:
    """/proc/self/status as name -> value (proc(5))."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def needs_no_new_privs() -> bool:
    """Whether installing the filter needs no_new_privs set first (seccomp(2)).

    Not with CAP_SYS_ADMIN in the effective set, nor when no_new_privs is
    already set (a container started with no-new-privileges).
    """
    status = _status_fields()
    if status.get("NoNewPrivs") == "1":
        return False
    try:
        return not int(status.get("CapEff", "0"), 16) >> _SYS_ADMIN & 1
    except ValueError:
        return True


@functools.lru_cache(maxsize=2)
def _self_test(observer: str, no_new_privs: bool) -> str:
    """The observer's own test of every kernel feature, in a process of its own."""
    args = [observer, "--self-test", *(["nnp"] if no_new_privs else [])]
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            timeout=_SELF_TEST_TIMEOUT,
            check=False,
            env=_observer_env(),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the observer's self-test did not run: {exc}"
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode == 0 and out == "ok":
        return ""
    if out.startswith("unavailable "):
        return out[len("unavailable ") :]
    return f"the observer's self-test failed (status {proc.returncode}): {out or proc.stderr!r}"


def unavailable(explicit: bool) -> str:
    """Why the kernel observer cannot be used here, or '' if it can.

    explicit: the user asked for ``kernel`` by name, which allows setting
    no_new_privs where the filter needs it.
    """
    if _observer is not None:
        return _observer.unusable()
    problem = next(_missing(), "")
    if problem:
        return problem
    nnp = needs_no_new_privs()
    if nnp and not explicit:
        return NEEDS_NO_NEW_PRIVS
    return _self_test(str(observer_path()), nnp)


def _missing() -> Iterator[str]:
    """What this platform, this build or this kernel lacks, the first lack first."""
    if not sys.platform.startswith("linux"):
        yield "the kernel observer exists on Linux only"
    fake = os.environ.get("NOINHERIT_KERNEL_UNAVAILABLE")
    if fake:  # for tests of the fallback on machines where the kernel could do it
        yield f"NOINHERIT_KERNEL_UNAVAILABLE={fake}"
    try:
        from pytest_noinherit import native
    except ImportError:
        yield "the native core was not built, and the filter is installed through it"
        return
    if not hasattr(native, "kernel_install"):
        yield "the native core was built without the kernel observer"
        return
    try:
        native.kernel_available()
    except OSError as exc:
        yield _why_not_available(exc)
    if observer_path() is None:
        yield (
            "the observer program was not built when this package was installed"
            " (it needs a C compiler)"
        )
    if not os.path.isdir("/proc/self/fdinfo"):
        yield "/proc is not mounted: the observer reads /proc/<pid>/fd and fdinfo"


def _why_not_available(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSYS:
        return "this kernel has no seccomp() system call"
    if exc.errno == errno.EINVAL:
        return "seccomp filters are not enabled in this kernel"
    if exc.errno == errno.EOPNOTSUPP:
        return "this kernel has no seccomp user notification (Linux 5.0)"
    return f"seccomp(SECCOMP_GET_ACTION_AVAIL): {exc.strerror}"


def _observer_env() -> dict[str, str]:
    """The observer's environment: no preloaded objects, nothing of ours."""
    return {
        k: v
        for k, v in os.environ.items()
        if k != "LD_PRELOAD" and not k.startswith(("NOINHERIT_", "PYTEST_"))
    }


@dataclasses.dataclass
class _Attachment:
    """One session's record directory, as the observer was told it."""

    records: RecordDirectory | None  # None: this session records nothing
    every_exec: bool
    problems: list[str]


class _Observer:
    """The observer process, the filter's listener and the control socket."""

    def __init__(self, observer: str, no_new_privs: bool) -> None:
        self.no_new_privs = no_new_privs
        self.listener = -1
        self.dead = False
        self.problems_dropped = 0
        self._stack: list[_Attachment] = []
        self._lock = threading.Lock()  # one command at a time
        self._dying = threading.Lock()  # _died runs once
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._stop_r, self._stop_w = os.pipe()  # ends a take-over loop (tests)
        self.shared = os.memfd_create("noinherit-observer", os.MFD_CLOEXEC)
        os.ftruncate(self.shared, 4096)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Its own session: a Ctrl-C for the test run must not reach it.
            self.process = subprocess.Popen(
                [observer, "--serve", str(theirs.fileno()), str(self.shared)],
                pass_fds=(theirs.fileno(), self.shared),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                cwd="/",
                env=_observer_env(),
            )
        finally:
            theirs.close()
        self.control.settimeout(_REPLY_TIMEOUT)
        hello = self._recv()
        self.control.settimeout(None)
        if hello != "hello":
            self._abandon()
            raise OSError(f"the observer did not start (it said {hello!r})")

    @property
    def pid(self) -> int:
        return self.process.pid

    def _recv(self) -> str | None:
        try:
            data = self.control.recv(4096)
        except OSError:
            return None
        return data.decode(errors="replace") if data else None

    def _abandon(self) -> None:
        """Before the filter exists: the observer has nothing to outlive."""
        self.control.close()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.process.wait(timeout=_REPLY_TIMEOUT)

    def install(self) -> None:
        """Install the filter here and hand its listener over; OSError if it cannot be."""
        from pytest_noinherit import native

        try:
            self.listener = native.kernel_install(self.no_new_privs)
        except OSError:
            self._abandon()
            raise
        threading.Thread(target=self._read, name="noinherit-kernel-observer", daemon=True).start()
        if self._command("listener", self.listener) != "ok":
            # The filter is there and nobody else holds its listener: we serve.
            self._died()

    # -- the control socket -------------------------------------------------

    def _read(self) -> None:
        """The one reader of the control socket: answers, problems, and its end."""
        while True:
            message = self._recv()
            if message is None:
                break
            if message.startswith("problem "):
                self._problem(f"kernel exec observer: {message[len('problem ') :]}")
            else:
                self._replies.put(message)
        self._died()

    def _command(self, text: str, fd: int | None = None) -> str | None:
        """Send one command and wait for its answer; None if the observer is gone."""
        with self._lock:
            if self.dead:
                return None
            try:
                socket.send_fds(self.control, [text.encode()], [fd] if fd is not None else [])
            except OSError:
                return None
            try:
                return self._replies.get(timeout=_REPLY_TIMEOUT)
            except queue.Empty:
                self._problem("kernel exec observer: no answer to a command within 10 s")
                return None

    def _problem(self, text: str) -> None:
        if self._stack:
            self._stack[-1].problems.append(text)
        else:
            self.problems_dropped += 1

    def _died(self) -> None:
        """The observer is gone: say so once, then answer every exec from here."""
        with self._dying:
            if self.dead:
                return
            self.dead = True
        self._replies.put(None)
        if self._stack:
            top = self._stack[-1]
            top.problems.append(DIED)
            if top.records is not None:
                # A reception that is never clean, for the test in progress.
                spawn = receptions.Spawn(
                    "kernel exec observer", None, (), receptions.PROBED, (), incomplete=DIED
                )
                receptions.write_record(top.records.path, spawn)
        if self.listener < 0:
            return
        threading.Thread(target=self._serve, name="noinherit-kernel-takeover", daemon=True).start()

    def _serve(self) -> None:
        from pytest_noinherit import native

        # cffi releases the GIL for the whole loop.
        native.kernel_serve(self.listener, self._stop_r, self.shared)

    # -- sessions -----------------------------------------------------------

    def unusable(self) -> str:
        if self.dead:
            return "the kernel exec observer of this process died earlier"
        return ""

    def attach(self, attachment: _Attachment) -> bool:
        self._stack.append(attachment)
        return self._tell(attachment)

    def detach(self, attachment: _Attachment) -> None:
        if attachment in self._stack:
            self._stack.remove(attachment)
        self._tell(self._stack[-1] if self._stack else None)

    def _tell(self, attachment: _Attachment | None) -> bool:
        records = attachment.records if attachment is not None else None
        if records is None or records.fd is None:
            return self._command("nodir") == "ok"
        flag = "1" if attachment is not None and attachment.every_exec else "0"
        return self._command(f"dir {flag}", records.fd) == "ok"


# The one observer of this process (see the module docstring for why it is a
# module global), and the lock that makes two sessions start it only once.
_observer: _Observer | None = None
_starting = threading.Lock()


def _start(explicit: bool) -> _Observer:
    """The process's observer, started and with the filter installed on first use."""
    global _observer
    with _starting:
        if _observer is not None:
            return _observer
        observer = observer_path()
        assert observer is not None  # unavailable() said so
        started = _Observer(observer, needs_no_new_privs() and explicit)
        started.install()
        _observer = started
        return started


class KernelSession:
    """One session's use of the kernel observer: attach its record directory, and detach.

    With ``every_exec=False`` a program that receives nothing beyond 0-2 gets
    no record, as with the probe (probe.ProbeEnvironment).
    """

    def __init__(
        self, records: RecordDirectory, problems: list[str], *, every_exec: bool = False
    ) -> None:
        self.records = records
        self.problems = problems
        self.every_exec = every_exec
        self.active = False
        self.no_new_privs = False
        self._attachment: _Attachment | None = None

    def start(self, explicit: bool) -> str:
        """Observe every exec of the process tree from now on; '' or why not."""
        problem = unavailable(explicit)
        if problem:
            return problem
        try:
            observer = _start(explicit)
        except OSError as exc:
            return f"the filter could not be installed: {_install_error(exc)}"
        self.no_new_privs = observer.no_new_privs
        attachment = _Attachment(self.records, self.every_exec, self.problems)
        if not observer.attach(attachment):
            observer.detach(attachment)
            return "the kernel exec observer did not take the record directory"
        self._attachment = attachment
        self.active = True
        return ""

    def hide(self) -> None:
        """Keep an outer session's observer from recording this session's children.

        An in-process inner session without the kernel observer must not
        let its children's records reach the outer session's directory.
        """
        if _observer is None or self._attachment is not None:
            return
        self._attachment = _Attachment(None, False, self.problems)
        _observer.attach(self._attachment)

    def stop(self) -> None:
        """Detach; the previous session's directory (if any) is attached again."""
        attachment, self._attachment = self._attachment, None
        self.active = False
        if attachment is not None and _observer is not None:
            _observer.detach(attachment)


def _install_error(exc: OSError) -> str:
    import errno

    if exc.errno == errno.EBUSY:
        return (
            "an ancestor process already holds a seccomp listener (one per process tree,"
            " seccomp(2) EBUSY): an outer session under --noinherit-probe=kernel?"
        )
    if exc.errno == errno.ESRCH:
        return "a thread of this process could not take the filter (TSYNC)"
    if exc.errno == errno.EINVAL:
        return "this kernel cannot give a listener to a thread-synchronised filter (Linux 5.7)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"seccomp() was refused: {exc.strerror}"
    return str(exc)


def observer_pid() -> int | None:
    """The pid of this process's observer, or None if none was started (tests kill it)."""
    return _observer.pid if _observer is not None else None
