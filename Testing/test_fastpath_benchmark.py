"""The benchmark command end to end on a small real-CT crop: the bundle's own monai.bundle run vs ours."""

from __future__ import annotations

import json
import subprocess

import nibabel as nib
import numpy as np
import pytest
from support import PYTHON


@pytest.mark.slow
def test_benchmark_bundle_vs_ours_same_labels(tmp_path, tiny_bundle, example_ct_sm, cli_env):
    img = nib.load(str(example_ct_sm))
    crop = np.asarray(img.dataobj)[30:70, 30:70, :].astype(np.int16)  # 120 x 120 x 90 mm: 4 windows at 1 mm
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([30, 30, 0]) + img.affine[:3, 3]
    ct = tmp_path / "crop.nii.gz"
    nib.save(nib.Nifti1Image(crop, affine), str(ct))
    cmd = [PYTHON, "-m", "PancreasDiNTSLib.cli", "benchmark", "--device", "cpu", "--model", str(tiny_bundle),
           "--input", str(ct), "--threads", "1", "--workdir", str(tmp_path / "work")]
    out = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["agreement"] >= 0.999  # same labels as `monai.bundle run` of the released config
    assert last["speedup"] > 0 and last["speedup_cpu_time"] > 0
    runs = last["runs"]
    assert set(runs) == {"bundle", "ours-fast"}
    assert runs["bundle"]["stages"]["infer"] > 0 and runs["ours-fast"]["windows"] == 4
    assert "pipeline" in out.stdout and "ours-fast" in out.stdout
