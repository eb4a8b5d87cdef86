"""``python -m pytest_noinherit``: see runner.py.

PYTEST_DONT_REWRITE (see plugin.py)
"""

import sys

from pytest_noinherit.runner import main

sys.exit(main())
