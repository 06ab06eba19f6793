"""The engine's labels equal `python -m monai.bundle run` on the same real CT and weights (CPU, fp32): an 80x80x30
piece of the example CT (240x240x90 mm at 3 mm: 5x5x1 windows of 96^3 at 1 mm and the released overlap, the last
of each row cut by the edge)."""

from __future__ import annotations

import json
import subprocess

import nibabel as nib
import numpy as np
import pytest
from PancreasDiNTSLib.model.bundle import monai_arch_ckpt_override
from support import PYTHON


def run_monai_bundle(bundle, image, out_dir, env):
    """The released inference.yaml, run by MONAI itself. Two overrides are unavoidable here:
    the config hard-codes `dints_space#device: cuda` (no GPU), and on torch >= 2.6 its `torch.load` of the arch
    file fails (numpy arrays): the override keeps weights_only=True and allows numpy's array types first.
    Everything else is the released config."""
    cmd = [
        PYTHON, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.yaml"),
        "--bundle_root", str(bundle),
        "--datalist", f"[{{'image': '{image}'}}]",
        "--output_dir", str(out_dir),
        "--dints_space#device", "cpu",
        "--arch_ckpt", monai_arch_ckpt_override("cpu"),
        "--dataloader#num_workers", "0",
    ]
    subprocess.run(cmd, check=True, env=env, cwd=bundle, capture_output=True, timeout=900)
    (out,) = list(out_dir.rglob("*_trans.nii.gz"))
    return nib.load(str(out))


@pytest.fixture(scope="module")
def ct(example_ct_sm, tmp_path_factory):
    from image_files import crop_nifti

    return crop_nifti(example_ct_sm, tmp_path_factory.mktemp("ct") / "ct80.nii.gz",
                      (slice(20, 100), slice(15, 95), slice(0, 30)))


@pytest.fixture(scope="module")
def reference_labels(tiny_bundle, ct, tmp_path_factory, cli_env):
    return run_monai_bundle(tiny_bundle, ct, tmp_path_factory.mktemp("ref"), cli_env)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_labels_equal_monai_bundle_run(mode, tiny_bundle, ct, tmp_path, cli_env, reference_labels):
    """Both our fast path and the MONAI reference path give the bundle's labels (in fp32: --precision fp32, which
    the exact mode is anyway; bf16 on a CPU with bf16 hardware is measured in bf16_agreement.py)."""
    ours_dir = tmp_path / "ours"
    proc = subprocess.run(
        [PYTHON, "-m", "PancreasDiNTSLib.cli", "segment", str(ct), "-o", str(ours_dir),
         "--model", str(tiny_bundle), "--device", "cpu", "--progress", "json", "--mode", mode,
         "--precision", "fp32"],
        env=cli_env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout is pure JSON lines
    assert events[-1]["stage"] == "summary" and events[-1]["succeeded"] == 1

    ours = nib.load(str(ours_dir / "ct80" / "labels.nii.gz"))
    ref = reference_labels
    a = np.asarray(ours.dataobj)
    b = np.asarray(ref.dataobj).reshape(a.shape)
    assert ours.get_data_dtype() == np.uint8
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
    # The comparison means something only if the random network predicts every class somewhere.
    counts = np.bincount(a.ravel(), minlength=3)
    assert (counts > 100).all(), counts
    agreement = float((a == b).mean())
    assert agreement >= 0.999, agreement
