"""The plugin's warning categories, so users can filter or escalate them.

PYTEST_DONT_REWRITE (see plugin.py)
"""

from __future__ import annotations

import importlib
import re
import warnings
from typing import Any

import pytest

__all__ = ["DescriptorLeakWarning", "NoinheritWarning", "ignored_by_filters"]


class NoinheritWarning(pytest.PytestWarning):
    """Base class of every warning pytest-noinherit emits."""


class DescriptorLeakWarning(NoinheritWarning):
    """A descriptor opened during a test was still open after its teardown.

    Escalate with ``-W error::pytest_noinherit.DescriptorLeakWarning``.
    """


def ignored_by_filters(config: pytest.Config, category: type[Warning]) -> bool:
    """Whether the run's warning filters (``-W`` and ini ``filterwarnings``) ignore category.

    The summary's notes that are warnings by nature (latent descriptors,
    leaks) honour ``-W ignore`` as pytest's own warnings summary does.  The
    filters are applied as pytest applies them around each test: the ini
    lines first, the command line last (so it wins), the command line's
    message and module taken literally.
    """
    filters = [(line, False) for line in config.getini("filterwarnings")]
    filters += [(line, True) for line in config.getoption("pythonwarnings", None) or ()]
    if not filters:
        return False
    with warnings.catch_warnings(record=True) as caught:
        for line, literal in filters:
            parsed = _parse_filter(line, literal)
            if parsed is not None:
                warnings.filterwarnings(*parsed)
        try:
            warnings.warn_explicit("probe", category, "", 0, module=__name__, registry={})
        except Warning:
            return False  # escalated to an error: certainly not ignored
    return not caught


def _parse_filter(line: str, literal: bool) -> tuple[Any, str, type[Warning], str, int] | None:
    """``action:message:category:module:lineno`` (python -W syntax); None if it names nothing."""
    action, message, category_name, module, lineno = (line.split(":", 4) + [""] * 5)[:5]
    try:
        category = _category(category_name.strip()) if category_name.strip() else Warning
        number = int(lineno) if lineno.strip() else 0
    except (ImportError, AttributeError, ValueError):
        return None  # pytest itself reports a bad filter
    message, module = message.strip(), module.strip()
    if literal:
        message, module = re.escape(message), re.escape(module) + r"\Z" if module else ""
    if action.strip() not in ("default", "error", "ignore", "always", "module", "once"):
        return None
    return action.strip(), message, category, module, number


def _category(name: str) -> type[Warning]:
    module, _, attr = name.rpartition(".")
    found = getattr(importlib.import_module(module or "builtins"), attr)
    if not (isinstance(found, type) and issubclass(found, Warning)):
        raise ValueError(name)
    return found
