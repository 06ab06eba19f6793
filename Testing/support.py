"""Constants and small helpers the test files share (paths to ../shared material, the tiny bundle's widths).

Kept out of ``conftest.py`` so that test files import plain names from a plain module; fixtures stay in
``conftest.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANCREAS_DINTS_SHARED", REPO.parent / "shared"))
REFERENCE_BUNDLE = SHARED / "reference" / "pancreas_ct_dints_segmentation"
EXAMPLE_CT_SM = SHARED / "data" / "example_ct_sm.nii.gz"
EXAMPLE_CT = SHARED / "data" / "example_ct.nii.gz"
PYTHON = sys.executable

# Small enough to run on 2 CPU cores in seconds, built from the released configs (same keys, `$` expressions).
TINY_CHANNEL_MUL = 0.0625
TINY_NUM_BLOCKS = 4


def require(path: Path) -> Path:
    """Skip (with the reason) when a shared file is absent."""
    if not path.exists():
        pytest.skip(f"{path} is not present (tests read real data from ../shared; see Testing/README.md)")
    return path
