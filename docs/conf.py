"""Sphinx configuration for pytest-noinherit's documentation.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (docs/requirements.txt).
"""

from __future__ import annotations

import logging
import os
import sys

# autodoc imports the package from the checkout; without the compiled core
# it falls back to the pure-Python backend, which is enough for docstrings.
sys.path.insert(0, os.path.abspath(".."))

project = "pytest-noinherit"
author = "pytest-noinherit contributors"
copyright = "pytest-noinherit contributors"  # noqa: A001 (Sphinx's name)
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "requirements.txt"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "pytest-noinherit"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

# -- intersphinx ----------------------------------------------------------------
#
# Links to the Python and pytest documentation resolve when the inventories
# can be fetched.  Offline (a sandbox, a plane) the fetch fails after
# intersphinx_timeout seconds and Sphinx logs "failed to reach any of the
# inventories" as an untyped warning, which suppress_warnings cannot name
# and which -W would turn into an error.  The filter below turns exactly that
# message into an info line: references then render as plain text, and every
# other warning still fails the build.

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "pytest": ("https://docs.pytest.org/en/stable", None),
}
intersphinx_timeout = 1
intersphinx_disabled_reftypes = ["std:doc"]


class _InventoryUnreachable(logging.Filter):
    """Demote intersphinx's fetch failure from a warning to an info message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(
            "failed to reach any of the inventories"
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.nonl = False  # end the line, as a warning would
        return True


def setup(app: object) -> None:
    # Sphinx's loggers live under the "sphinx." namespace.
    for name in ("sphinx.sphinx.ext.intersphinx", "sphinx.sphinx.ext.intersphinx._load"):
        logging.getLogger(name).addFilter(_InventoryUnreachable())
