"""review (engine side), fast: the per-segment comparison, the batch folder rules and the review checks, on
constructed data (the real engine batch is Testing/test_review_editor.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PancreasDiNTSLib.core.errors import UsageError
from PancreasDiNTSLib.review import batch, record


def test_compare_counts_added_removed_and_dice() -> None:
    original = np.zeros((4, 4, 4), np.uint8)
    original[0, :2] = 1  # 8 pancreas voxels
    original[3, 3, 3] = 2
    corrected = original.copy()
    corrected[0, 0] = 0  # 4 pancreas voxels removed
    corrected[1, 0, :2] = 1  # 2 added
    out = record.compare(original, corrected)
    assert out["pancreas"] == {"segment": "Pancreas", "voxels_original": 8, "voxels_corrected": 6, "added": 2,
                               "removed": 4, "dice": round(2 * 4 / 14, 6)}
    assert out["tumour"]["dice"] == 1.0 and out["tumour"]["added"] == out["tumour"]["removed"] == 0
    empty = record.compare(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8))
    assert empty["tumour"]["dice"] == 1.0  # nothing before, nothing after: agreement


def test_a_folder_that_is_no_batch_is_one_usage_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        batch.batch_cases(tmp_path / "missing")
    with pytest.raises(UsageError, match="not a batch output folder"):
        batch.batch_cases(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"results": "nope"}))
    with pytest.raises(UsageError, match="no 'results' list"):
        batch.batch_cases(tmp_path)


def test_names_that_are_paths_never_leave_outdir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    results = [{"status": "ok", "output_dir": str(p)} for p in ("..", ".", "/", str(outside), "a/../../outside")]
    (outdir / "summary.json").write_text(json.dumps({"results": results}))
    with pytest.raises(UsageError, match="lists no case folder"):
        batch.batch_cases(outdir)


def test_review_checks_status_and_reason() -> None:
    with pytest.raises(UsageError, match="review status"):
        record._check_input(record.ReviewInput(status="maybe", reviewer="r"), (2, 2, 2))
    with pytest.raises(UsageError, match="needs a reason"):
        record._check_input(record.ReviewInput(status="rejected", reviewer="r", reason="  "), (2, 2, 2))
    record._check_input(record.ReviewInput(status="accepted", reviewer="r"), (2, 2, 2))
