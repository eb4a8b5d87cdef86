"""The plugin's warning categories, so users can filter or escalate them.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import pytest

__all__ = ["DescriptorLeakWarning", "NoinheritWarning"]


class NoinheritWarning(pytest.PytestWarning):
    """Base class of every warning pytest-noinherit emits."""


class DescriptorLeakWarning(NoinheritWarning):
    """A descriptor opened during a test was still open after its teardown.

    Escalate with ``-W error::pytest_noinherit.DescriptorLeakWarning``.
    """
