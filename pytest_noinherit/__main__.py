"""``python -m pytest_noinherit``: see runner.py."""

import sys

from pytest_noinherit.runner import main

sys.exit(main())
