"""``python -m PancreasDiNTSLib.cli``: the same as the ``pancreas-dints`` console script."""

import sys

from PancreasDiNTSLib.cli import entry

sys.exit(entry())
