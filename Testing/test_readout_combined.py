"""readout.combined: the combined read-out is JSON-ready, has the documented keys, and the layer stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PancreasDiNTSLib.readout.combined import case_readout


def test_structure_and_json():
    lab = np.zeros((40, 40, 20), np.uint8)
    lab[5:35, 15:25, 8:12] = 1
    lab[8:14, 16:22, 9:11] = 2
    lab[30:32, 18:20, 9:10] = 2
    aff = np.diag([-0.8, -0.8, 2.0, 1.0])  # LPS storage
    p = np.stack([(lab == c).astype(np.float32) * 0.6 + 0.2 for c in range(3)])
    m = case_readout(lab, aff, p / p.sum(0))
    text = json.dumps(m, allow_nan=False)
    back = json.loads(text)
    assert set(back) == {"schema", "grid", "segments", "lesion", "methods", "location", "confidence", "notice"}
    assert set(back["segments"]) == {"pancreas", "pancreatic_tumor"}
    les = back["lesion"]
    assert les["count"] == 2 and les["largest"]["rank"] == 1
    assert {"longest_axial_diameter", "perpendicular_diameter", "longest_3d_diameter", "location", "centroid_ras",
            "bounding_box", "touches_volume_border", "volume_ml", "voxels"} <= set(les["largest"])
    assert les["largest"]["location"]["part"] == "head"  # larger RAS x = lower array index here (x flipped)
    assert les["components"][1]["location"]["part"] == "tail"
    assert les["size_category"]["label"] == "by size only, not a stage"
    assert any("T4" in s for s in les["not_assessed"]) and "lesion" in les["term"]
    assert "cancer" not in text.lower()  # the Task07 label covers masses and cysts: never called cancer
    assert back["confidence"]["lesion_score"]["uncalibrated"] is True
    assert "clinical" in back["notice"]
    m2 = case_readout(lab, aff)
    assert m2["confidence"] is None and m2["confidence_reason"]


def test_readout_layer_imports_no_torch():
    code = ("import sys; import PancreasDiNTSLib.readout.combined, PancreasDiNTSLib.readout.page, "
            "PancreasDiNTSLib.readout.confidence; "
            "bad = [m for m in ('torch', 'monai', 'nibabel', 'SimpleITK', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
