"""Build steps pyproject.toml cannot declare.

* cffi has no declarative configuration: ``cffi_modules`` names the extension.
* The exec probe (``_native/probe.c``) is not a Python extension but a
  libc-free shared object for ``LD_PRELOAD``, so it gets its own compile
  step after ``build_ext``.  It is optional: if it cannot be built the
  install goes on and the plugin reports the probe as unavailable.
* The kernel exec observer (``_native/observer.c``, probe mode ``kernel``)
  is a small executable, built on Linux next to the probe and just as
  optional: without it the mode reports itself unavailable and the session
  falls back to the probe.
* An editable install gets the bytecode pip writes for a wheel's modules.
"""

from __future__ import annotations

import compileall
import os
import platform
import shlex
import subprocess
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

PROBE_SOURCE = os.path.join("_native", "probe.c")
PROBE_NAME = "libnoinherit-probe.so"
# See the comment at the top of _native/probe.c for why each flag is there.
# -Wl,-z,defs makes an unresolved symbol a build error, never a runtime import.
PROBE_FLAGS = shlex.split(
    "-nostdlib -ffreestanding -fno-builtin -fno-stack-protector -fPIC -shared -O2"
    " -fvisibility=hidden -s -Wl,-z,defs"
)

# The plugin preloads <package>/_probe/$LIB/libnoinherit-probe.so and ld.so
# expands $LIB per ABI (ld.so(8), "Dynamic string tokens"), so one LD_PRELOAD
# value serves 64- and 32-bit programs.  A missing file makes ld.so print an
# error into the program's stderr, so every directory an ABI may look in
# gets an object: the real probe for the 64-bit ABI, a do-nothing stub
# (probe.c compiled with -m32) for i386.  "$LIB" itself is for musl, which
# does not expand the token.
PROBE_ABIS: dict[str, list[tuple[list[str], list[str]]]] = {
    "x86_64": [
        ([], ["lib/x86_64-linux-gnu", "lib64", "lib", "$LIB"]),
        (["-m32"], ["lib32", "lib/i386-linux-gnu"]),
    ],
    "aarch64": [
        ([], ["lib/aarch64-linux-gnu", "lib64", "lib", "$LIB"]),
    ],
}


OBSERVER_SOURCE = os.path.join("_native", "observer.c")
OBSERVER_NAME = "noinherit-observer"
# An ordinary C program linked against the system libc: it is started by the
# plugin itself, never preloaded into anything.
OBSERVER_FLAGS = shlex.split("-O2 -std=gnu11 -Wall -Wextra -s")


class build_ext_with_probe(build_ext):
    """``build_ext`` with an optional native core, then the optional exec-probe build.

    Without a C compiler the install still succeeds: the plugin runs on its
    pure-Python backend and its report header says so.
    """

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError) as exc:
            self.warn(f"native core not built ({exc}); the pure-Python backend will be used")

    def run(self) -> None:
        super().run()
        if self.inplace:
            self._byte_compile_in_place()
        self._probe_outputs: list[str] = []
        abis = PROBE_ABIS.get(platform.machine()) if sys.platform.startswith("linux") else None
        if abis is None:
            return
        if self.inplace:  # --inplace and editable installs use the source tree
            package_dir = self.get_finalized_command("build_py").get_package_dir("pytest_noinherit")
        else:
            package_dir = os.path.join(self.build_lib, "pytest_noinherit")
        compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        for extra, libdirs in abis:
            targets = [os.path.join(package_dir, "_probe", d, PROBE_NAME) for d in libdirs]
            for target in targets:  # never leave a probe from an earlier build
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.exists(target):
                    os.unlink(target)
            cmd = [*compiler, *PROBE_FLAGS, *extra, "-o", targets[0], PROBE_SOURCE]
            if not self._compile("exec probe", cmd):
                continue
            for target in targets[1:]:
                self.copy_file(targets[0], target)
            self._probe_outputs += targets
        self._build_observer(compiler, package_dir)

    def _byte_compile_in_place(self) -> None:
        """The package's bytecode in the source tree, as pip writes it for a wheel install.

        Python reads an up-to-date ``.pyc`` under ``PYTHONDONTWRITEBYTECODE=1``
        (common in containers) but never writes one, so an editable install
        would compile the plugin's modules again in every pytest run, some
        200 M instructions (benchmarks/README.md).  A module edited later is
        compiled from its source, as always.  Optional, like the probe.
        """
        package_dir = self.get_finalized_command("build_py").get_package_dir("pytest_noinherit")
        try:
            done = compileall.compile_dir(package_dir, maxlevels=0, quiet=1)
        except OSError as exc:
            done, why = False, str(exc)
        else:
            why = "see above"
        if not done:
            self.warn(f"bytecode not written into {package_dir} ({why})")

    def _build_observer(self, compiler: list[str], package_dir: str) -> None:
        """The kernel exec observer, optional like the probe."""
        target = os.path.join(package_dir, "_probe", OBSERVER_NAME)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.exists(target):  # never leave an observer from an earlier build
            os.unlink(target)
        cmd = [*compiler, *OBSERVER_FLAGS, "-o", target, OBSERVER_SOURCE]
        if self._compile("kernel exec observer", cmd):
            self._probe_outputs.append(target)

    def _compile(self, what: str, cmd: list[str]) -> bool:
        """Run one optional compile; a failure is a warning, never a failed install."""
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            self.warn(f"{what} not built ({shlex.join(cmd)}): {detail}")
            return False
        return True

    def get_outputs(self) -> list[str]:
        built = [path for path in super().get_outputs() if os.path.exists(path)]
        return [*built, *getattr(self, "_probe_outputs", [])]


setup(
    cffi_modules=["_native/build_core.py:ffibuilder"],
    cmdclass={"build_ext": build_ext_with_probe},
)
