"""Hooks other plugins and conftest files can implement to customise the verdict.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_noinherit_allow(item: pytest.Item | None, descriptor: dict[str, Any]) -> bool | None:
    """Decide whether a child may hold ``descriptor``.

    ``descriptor`` is the finding as the JSON report would show it (fd, kind,
    target, pid, argv, route, how).  Return True to allow it, False to insist
    it is a violation even if an allowance covers it, None to let the marker,
    fixture and ini allowances decide.  ``item`` is None outside any test.
    """


def pytest_noinherit_finding(item: pytest.Item | None, finding: dict[str, Any]) -> None:
    """Observe each finding (violation, allowed, leftover, leak) as it is made."""
