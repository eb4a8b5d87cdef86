"""pytest-noinherit: prove that tests never leak a file descriptor into a child.

The public API reads and changes this process's descriptor table through the
native core (or the pure-Python reference backend when the core is absent).

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

from pytest_noinherit.fdtable import (
    BackendError,
    FdDetails,
    FdEntry,
    FdTable,
    backend,
    backend_reason,
    describe,
    get_inheritable,
    seal,
    set_inheritable,
    snapshot,
)
from pytest_noinherit.warning_types import DescriptorLeakWarning, NoinheritWarning

__all__ = [
    "BackendError",
    "DescriptorLeakWarning",
    "FdDetails",
    "FdEntry",
    "FdTable",
    "NoinheritWarning",
    "backend",
    "backend_reason",
    "describe",
    "get_inheritable",
    "seal",
    "set_inheritable",
    "snapshot",
]
