"""The offline demo end to end: `python -m PancreasDiNTSLib.cli demo` as a real subprocess with the shipped demo
model; the Dice it prints is checked against a Dice recomputed here from the files it wrote (its label map and
the phantom's truth), and every output is read back (NIfTI grid, slicerio segments, the case page, report.json
with the read-out)."""

from __future__ import annotations

import json
import re
import subprocess

import nibabel as nib
import numpy as np
import pytest
from PancreasDiNTSLib.core import paths
from PancreasDiNTSLib.core.atomic import FOLDER_MANIFEST
from PancreasDiNTSLib.core.errors import EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, OutputError
from PancreasDiNTSLib.synthetic import demo
from support import PYTHON


def _demo_model():
    try:
        return demo.demo_model_dir()
    except Exception as exc:
        pytest.skip(f"no demo model: {exc}")


def _run(cli_env, *args, env_extra=None):
    env = dict(cli_env, **(env_extra or {}))
    return subprocess.run([PYTHON, "-m", "PancreasDiNTSLib.cli", "demo", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    return 2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, cli_env):
    _demo_model()
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = _run(cli_env, "-o", str(out), "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_demo_prints_the_dice_of_the_files_it_wrote(demo_run):
    out, proc = demo_run
    text = proc.stdout
    m = re.search(r"Dice vs phantom truth: pancreas ([0-9.]+)\s+tumour ([0-9.]+)", text)
    assert m, text
    printed = float(m.group(1)), float(m.group(2))

    ct = nib.load(out / "phantom_ct.nii.gz")
    pred_img, truth_img = nib.load(out / "labels.nii.gz"), nib.load(out / "truth.nii.gz")
    pred, truth = np.asarray(pred_img.dataobj), np.asarray(truth_img.dataobj)
    # the label map lies on the CT's grid, the truth too
    assert pred.shape == truth.shape == ct.shape
    np.testing.assert_allclose(pred_img.affine, ct.affine, atol=1e-4)
    np.testing.assert_allclose(truth_img.affine, ct.affine, atol=1e-4)
    assert set(np.unique(pred)) <= {0, 1, 2} and (truth == 2).any()

    mine = _dice(pred, truth, 1), _dice(pred, truth, 2)
    assert printed == pytest.approx(mine, abs=6e-4)  # printed with 3 decimals
    report = json.loads((out / "report.json").read_text())
    assert (report["dice_pancreas"], report["dice_tumour"]) == pytest.approx(mine, abs=1e-4)
    assert report["dice_tumor"] == report["dice_tumour"]  # the README's earlier spelling, kept as an alias
    # the shipped demo model on a phantom it never saw: 0.915 pancreas, 0.897 tumour here (held-out means 0.904 /
    # 0.837, see its model card); a random-weight model scores about 0.005
    assert mine[0] > 0.85 and mine[1] > 0.7, mine

    vox_ml = abs(np.linalg.det(ct.affine[:3, :3])) / 1000.0
    assert report["volumes_ml"]["Pancreas"] == pytest.approx((pred == 1).sum() * vox_ml, abs=2e-3)
    assert report["truth_volumes_ml"]["Pancreatic tumor"] == pytest.approx((truth == 2).sum() * vox_ml, abs=2e-3)
    assert f"{report['volumes_ml']['Pancreas']:.2f} mL" in text
    for path in report["outputs"].values():
        assert path in text
    assert "NOT for clinical use" in text and "pancreas-dints download" in text


@pytest.mark.subprocess
def test_demo_report_and_outputs_read_back(demo_run):
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    for key in ("demo", "notice", "dice_pancreas", "dice_tumour", "dice_tumor", "phantom", "volumes_ml", "truth_volumes_ml",
                "timings_s", "model", "outputs", "device"):
        assert key in report, key
    assert report["demo"] is True and "not for clinical use" in report["notice"].lower()
    assert report["phantom"]["seed"] == paths.DEMO_DEFAULT_SEED
    assert report["phantom"]["seed"] not in paths.DEMO_TRAINING_SEEDS
    assert report["model"]["path"] == str(demo.demo_model_dir())
    # nothing half-written; the folder manifest lets a later demo run replace exactly these files
    assert sorted(p.name for p in out.iterdir()) == sorted([*demo.OUTPUT_FILES.values(), FOLDER_MANIFEST])

    import slicerio

    seg = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["Pancreas", "Pancreatic tumor"]
    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj)
    assert int((seg["voxels"] == 1).sum()) == int((labels == 1).sum())

    from PIL import Image

    with Image.open(out / "demo.png") as png:
        png.verify()
    with Image.open(out / "demo.png") as png:
        assert png.format == "PNG" and png.width >= 800 and png.height >= 600
        rgb = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    # the pancreas overlay (terminology colour blended over grey CT) is drawn: strongly orange pixels exist
    orange = (rgb[:, 0] - rgb[:, 2] > 60) & (rgb[:, 0] > 150)
    assert orange.sum() > 200
    yellow = (rgb[:, 0] > 200) & (rgb[:, 1] > 200) & (rgb[:, 2] < 80)  # the longest axial diameter
    assert yellow.sum() > 10


@pytest.mark.subprocess
def test_demo_report_has_the_readout_of_its_labels(demo_run):
    """report.json's read-out is readout.combined.case_readout of the written label map (the demo runs it through
    segment_case, as segment does), with confidence from the model and the phantom's truth location."""
    from PancreasDiNTSLib.readout.combined import case_readout

    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    ro = report["readout"]
    img = nib.load(out / "labels.nii.gz")
    labels = np.asarray(img.dataobj)
    ras = json.loads(json.dumps(case_readout(labels, img.affine)))
    assert ro["segments"] == ras["segments"] and ro["lesion"] == ras["lesion"] and ro["location"] == ras["location"]
    assert ro["lesion"]["found"] and ro["lesion"]["size_category"]["label"] == "by size only, not a stage"
    conf = ro["confidence"]
    assert conf["lesion_score"]["uncalibrated"] is True and 0.5 < conf["lesion_score"]["value"] <= 1.0
    assert 0.5 < conf["segments"]["pancreas"]["mean_confidence"] <= 1.0
    assert report["phantom"]["tumour_part"] in ("head", "neck/body", "tail")
    assert ro["lesion"]["largest"]["location"]["part"] == report["phantom"]["tumour_part"]


@pytest.mark.slow
def test_demo_refuses_training_seeds_and_foreign_folders(tmp_path, cli_env):
    _demo_model()
    out = tmp_path / "out"
    proc = _run(cli_env, "-o", str(out), "--seed", str(paths.DEMO_TRAINING_SEEDS.start), "--progress", "none")
    assert proc.returncode == EXIT_USAGE and "used to train the demo model" in proc.stderr
    assert not out.exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = _run(cli_env, "-o", str(foreign), "--progress", "none")
    assert proc.returncode == EXIT_OUTPUT and "not an earlier demo output" in proc.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    proc = _run(cli_env, "-o", str(out), "--progress", "none",
                env_extra={demo.DEMO_MODEL_ENV: str(tmp_path / "missing")})
    assert proc.returncode == EXIT_MODEL and demo.DEMO_MODEL_ENV in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_earlier_demo_output_may_be_replaced(tmp_path):
    from PancreasDiNTSLib.core.atomic import atomic_dir

    earlier = tmp_path / "earlier"
    with atomic_dir(earlier) as tmp:  # as run_demo writes it
        (tmp / "report.json").write_text(json.dumps({"demo": True}))
    demo.check_output(earlier)  # accepted: the demo replaces its own earlier output
    (earlier / "report.json").write_text(json.dumps({"case": "ct1"}))  # a `segment` report is not a demo output
    with pytest.raises(OutputError):
        demo.check_output(earlier)
    plain = tmp_path / "plain"  # a demo report the demo did not write there (no folder manifest): left alone
    plain.mkdir()
    (plain / "report.json").write_text(json.dumps({"demo": True}))
    with pytest.raises(OutputError, match="did not write"):
        demo.check_output(plain)
    demo.check_output(tmp_path / "new")


def test_demo_model_dir_env_and_repository_layout(tmp_path, monkeypatch):
    monkeypatch.delenv(demo.DEMO_MODEL_ENV, raising=False)
    found = _demo_model()
    assert found.name == "demo" and (found / "configs" / "inference.yaml").is_file()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.yaml").write_text("{}")
    (tmp_path / "models").mkdir()
    monkeypatch.setenv(demo.DEMO_MODEL_ENV, str(tmp_path))
    assert demo.demo_model_dir() == tmp_path
