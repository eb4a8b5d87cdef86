"""cffi (API mode) builder for ``pytest_noinherit._core``.

setuptools runs this through ``setup(cffi_modules=["_native/build_core.py:ffibuilder"])``
from the project root.  For development, ``python _native/build_core.py``
compiles the extension in place into ``pytest_noinherit/``.

Sources are ``core_common.c`` plus exactly one platform file chosen by
``sys.platform``; ``noinherit.h`` is both the C contract and the cdef.
Extra compiler and linker flags (e.g. ``-fsanitize=address,undefined``) can
be passed in the ``NOINHERIT_CFLAGS`` environment variable.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tempfile

from cffi import FFI

MODULE = "pytest_noinherit._core"


def platform_source(platform: str = sys.platform) -> str:
    """The one platform file that implements the seam for ``platform``."""
    if platform == "win32":
        return "core_windows.c"
    if platform.startswith("linux"):
        return "core_linux.c"
    if platform == "darwin":
        return "core_darwin.c"
    if "bsd" in platform or platform.startswith("dragonfly"):
        return "core_bsd.c"
    return "core_posix.c"


def read_cdef(header: str) -> str:
    """The header as cffi's cdef: comments and preprocessor includes removed.

    cffi understands ``#define NAME <integer>`` but no other directive.
    """
    with open(header, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    text = re.sub(r"//[^\n]*", "", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#include"))


def make_builder(native_dir: str, platform: str = sys.platform) -> FFI:
    """An FFI for the module, with sources and includes under ``native_dir``."""
    builder = FFI()
    headers = ["noinherit.h"]
    extra = shlex.split(os.environ.get("NOINHERIT_CFLAGS", ""))
    if platform == "win32":
        # The handle table API; core_common.c is POSIX only; MSVC flags.
        headers.append("noinherit_windows.h")
        sources = [platform_source(platform)]
        options = {"libraries": ["ws2_32"], "extra_compile_args": extra, "extra_link_args": extra}
    else:
        sources = ["core_common.c", platform_source(platform)]
        headers.append("noinherit_audit.h")  # the C audit-event filter (POSIX)
        sources.append("core_audit.c")
        headers.append("noinherit_delta.h")  # the per-test check (POSIX)
        if platform.startswith("linux"):  # the kernel exec observer's in-process half
            headers.append("noinherit_kernel.h")
            sources.append("core_kernel.c")
        options = {
            "extra_compile_args": ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-pthread", *extra],
            "extra_link_args": ["-pthread", *extra],
        }
    builder.cdef("\n".join(read_cdef(os.path.join(native_dir, h)) for h in headers))
    builder.set_source(
        MODULE,
        "\n".join(f'#include "{h}"' for h in headers),
        sources=[os.path.join(native_dir, s) for s in sources],
        include_dirs=[native_dir],
        depends=[
            os.path.join(native_dir, h) for h in (*headers, "core_internal.h", "kernel_filter.h")
        ],
        **options,
    )
    return builder


# setuptools executes this file from the project root with __file__ set to
# the relative "_native/build_core.py", and wants relative source paths (an
# sdist unpacks anywhere); keep whatever form __file__ has.
ffibuilder = make_builder(os.path.dirname(__file__) or ".")


def compile_in_place() -> str:
    """Compile into a scratch directory and copy the extension next to the package."""
    native_dir = os.path.dirname(os.path.abspath(__file__))
    package_dir = os.path.join(os.path.dirname(native_dir), "pytest_noinherit")
    # cffi chdirs into tmpdir to compile, so every path must be absolute;
    # the scratch directory keeps the generated .c and .o files out of the
    # repository.
    builder = make_builder(native_dir)
    with tempfile.TemporaryDirectory(prefix="noinherit-build-") as tmp:
        built = builder.compile(tmpdir=tmp, verbose=True)
        target = os.path.join(package_dir, os.path.basename(built))
        # A new file renamed over the old one: a running process keeps the
        # mapping of the library it loaded (overwriting it in place crashes it).
        shutil.copyfile(built, target + ".new")
        os.replace(target + ".new", target)
    return target


if __name__ == "__main__":
    print(compile_in_place())
