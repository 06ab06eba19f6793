"""`segment` under torchrun: each rank takes its share of the cases (gloo/CPU here, cuda:LOCAL_RANK on GPUs)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from image_files import crop_nifti
from support import PYTHON


@pytest.mark.slow
def test_torchrun_shards_cases(tmp_path, example_ct_sm, tiny_bundle, cli_env):
    inputs = tmp_path / "in"
    inputs.mkdir()
    first = crop_nifti(example_ct_sm, inputs / "a.nii.gz", (slice(50, 70), slice(40, 60), slice(5, 25)))
    shutil.copy(first, inputs / "b.nii.gz")
    shutil.copy(first, inputs / "c.nii.gz")
    out = tmp_path / "out"
    env = dict(cli_env, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "PancreasDiNTSLib.cli", "segment", str(inputs), "-o", str(out), "--model", str(tiny_bundle),
         "--device", "cpu", "--format", "nifti", "--progress", "none"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a", "b", "c"]
    per_rank = [json.loads((out / f"summary-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["cases"] for s in per_rank] == [2, 1]
    done = sorted(r["case"] for s in per_rank for r in s["results"])
    assert done == ["a", "b", "c"]
