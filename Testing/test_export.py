"""Export to TorchScript / ONNX (TensorRT: clear message without torch_tensorrt or a GPU) and running exports.

The label comparison runs the real CT through the real segmentation pipeline (inference.Segmenter) with the
eager network and with each exported file. To keep CI fast (PyTorch's CPU conv3d needs ~1.5 s per 96^3 window
even for the tiny net) both sides of each comparison use a 2 mm grid and overlap 0.25: 6 windows instead of
~100; the pipeline is otherwise the bundle's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PancreasDiNTSLib.core.errors import EXIT_DEVICE, ModelError
from PancreasDiNTSLib.model.export import default_output, export_model, sidecar_path
from PancreasDiNTSLib.model.exported import trt_unavailable_reason
from PancreasDiNTSLib.model.loader import load_bundle
from support import PYTHON

TEST_OVERLAP = 0.25
TEST_PIXDIM = (2.0, 2.0, 2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread in this process: PyTorch's CPU conv3d on tiny nets is many times slower with 2 threads
    when the 2 CI cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_bundle) -> Path:
    """A private copy of the tiny bundle (exports are written into its models/ folder)."""
    dest = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_bundle, dest)
    return dest


@pytest.fixture(scope="module")
def ct(example_ct_sm):
    from PancreasDiNTSLib.io.images import read_image

    return read_image(example_ct_sm).image


def _labels(bundle, image) -> np.ndarray:
    from PancreasDiNTSLib.inference.segmenter import Segmenter

    bundle.inference.overlap = TEST_OVERLAP
    bundle.inference.pixdim = TEST_PIXDIM
    return Segmenter(bundle, device="cpu").predict(image)


@pytest.fixture(scope="module")
def eager_labels(run_dir, ct) -> np.ndarray:
    labels = _labels(load_bundle(run_dir), ct)
    assert labels.shape == tuple(ct.shape[1:])
    assert len(np.unique(labels)) > 1, "the random network should not give a constant label map"
    return labels


@pytest.mark.slow
def test_torchscript_cli_matches_eager_labels(run_dir, ct, eager_labels, cli_env):
    proc = subprocess.run(
        [PYTHON, "-m", "PancreasDiNTSLib.cli", "export", "--model", str(run_dir), "--format", "torchscript"],
        env={**cli_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    path = run_dir / "models" / "model.ts"
    assert path.is_file() and "model.ts" in proc.stdout
    info = json.loads(sidecar_path(path).read_text())
    assert info["format"] == "torchscript" and info["roi_size"] == [96, 96, 96]
    assert info["in_channels"] == 1 and info["out_channels"] == 3
    assert info["verification"]["label_agreement"] >= 0.999
    assert info["source"]["weights_md5"] and info["source"]["arch"] == "search_code_18590.pt"
    assert not list((run_dir / "models").glob(".*part*")), "no temporary files left behind"

    bundle = load_bundle(path)
    assert bundle.kind == "torchscript" and bundle.settings_from == "config"
    labels = _labels(bundle, ct)
    agreement = float((labels == eager_labels).mean())
    print(f"torchscript label agreement with eager: {agreement:.6f}")
    assert agreement >= 0.999


@pytest.mark.slow
def test_onnx_matches_eager_labels(run_dir, ct, eager_labels):
    result = export_model(run_dir, "onnx", log=lambda _m: None)
    assert result.path == run_dir / "models" / "model.onnx"
    assert result.verification["max_abs_diff"] < 1e-2
    bundle = load_bundle(result.path)
    assert bundle.kind == "onnx"
    net = bundle.build_network("cpu")
    out = net(torch.rand(3, 1, 96, 96, 96))  # any batch size in 1..8
    assert out.shape == (3, 3, 96, 96, 96) and out.dtype == torch.float32
    labels = _labels(bundle, ct)
    agreement = float((labels == eager_labels).mean())
    print(f"onnx label agreement with eager: {agreement:.6f}")
    assert agreement >= 0.999


@pytest.mark.slow
def test_onnx_runs_from_sidecar_alone(run_dir, tmp_path):
    src = run_dir / "models" / "model.onnx"
    if not src.exists():
        export_model(run_dir, "onnx", verify=False, log=lambda _m: None)
    shutil.copy(src, tmp_path / "m.onnx")
    shutil.copy(sidecar_path(src), tmp_path / "m.onnx.json")
    bundle = load_bundle(tmp_path / "m.onnx")
    reference = load_bundle(run_dir)
    assert bundle.settings_from == "sidecar"
    assert bundle.inference.roi_size == reference.inference.roi_size
    assert bundle.inference.pixdim == reference.inference.pixdim
    assert (bundle.inference.a_min, bundle.inference.a_max) == (reference.inference.a_min, reference.inference.a_max)
    assert bundle.describe()["source"]["weights_md5"] == reference.describe()["weights_md5"]

    # A file changed after export no longer matches its sidecar.
    with open(tmp_path / "m.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="md5"):
        load_bundle(tmp_path / "m.onnx")


@pytest.mark.slow
def test_fp16_onnx_keeps_float32_interface(run_dir, tmp_path):
    result = export_model(run_dir, "onnx", precision="fp16", output=tmp_path / "half.onnx", log=lambda _m: None)
    assert json.loads(result.sidecar.read_text())["precision"] == "fp16"
    assert result.verification["label_agreement"] > 0.99
    out = load_bundle(result.path).build_network("cpu")(torch.rand(1, 1, 96, 96, 96))
    assert out.dtype == torch.float32


def test_released_files_are_never_replaced(run_dir, tmp_path):
    bundle_dir = tmp_path / "b"
    shutil.copytree(run_dir, bundle_dir)
    (bundle_dir / "large_files.yml").write_text(
        "large_files:\n- path: models/model.ts\n  url: https://example.invalid/model.ts\n  hash_val: x\n  hash_type: md5\n"
    )
    bundle = load_bundle(bundle_dir, verify=False)
    assert default_output(bundle, "torchscript").name == "model_traced.ts"
    assert default_output(bundle, "onnx").name == "model.onnx"


def test_unknown_file_is_refused(tmp_path, run_dir):
    tiny_weights = run_dir / "models" / "model.pt"
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(ModelError, match="exported model"):
        load_bundle(bad)
    with pytest.raises(ModelError, match="not an exported TorchScript model"):
        load_bundle(tiny_weights)
    orphan = tmp_path / "model.ts"
    orphan.write_bytes(b"PK")
    with pytest.raises(ModelError, match="no inference settings"):
        load_bundle(orphan)


@pytest.mark.slow
@pytest.mark.skipif(trt_unavailable_reason() is None, reason="torch_tensorrt and CUDA present: message not shown")
def test_trt_gives_one_clear_line(run_dir, cli_env):
    proc = subprocess.run(
        [PYTHON, "-m", "PancreasDiNTSLib.cli", "export", "--model", str(run_dir), "--format", "trt"],
        env=cli_env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == EXIT_DEVICE
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "TensorRT export needs" in lines[0]
    assert "[trt]" in lines[0] or "CUDA" in lines[0]
    assert not (run_dir / "models" / "model_trt.ts").exists()


@pytest.mark.slow
def test_segment_cli_accepts_exported_onnx(run_dir, example_ct_sm, tmp_path, cli_env):
    import nibabel as nib

    model = run_dir / "models" / "model.onnx"
    if not model.exists():
        export_model(run_dir, "onnx", verify=False, log=lambda _m: None)
    img = nib.load(example_ct_sm)
    crop = img.slicer[30:90, 20:80, 5:25]  # a piece of the real CT keeps the run short
    nib.save(crop, tmp_path / "ct_crop.nii.gz")
    out = tmp_path / "seg"
    proc = subprocess.run(
        [PYTHON, "-m", "PancreasDiNTSLib.cli", "segment", str(tmp_path / "ct_crop.nii.gz"), "-o", str(out),
         "--model", str(model), "--device", "cpu", "--progress", "none", "--format", "nifti"],
        env={**cli_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = nib.load(out / "ct_crop" / "labels.nii.gz")
    assert labels.shape[:3] == crop.shape[:3]
    report = json.loads((out / "ct_crop" / "report.json").read_text())
    assert report["model"]["kind"] == "onnx" and report["model"]["source"]["arch"] == "search_code_18590.pt"
