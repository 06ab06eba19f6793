"""Evaluation: Dice/HD95/volumes against hand computation, MeanDice reduction, CSV + JSON + table, bad input."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PancreasDiNTSLib.io.writers import save_nifti
from PancreasDiNTSLib.synthetic.phantom import write_msd_dataset
from PancreasDiNTSLib.training.data import prepare_datalist, write_datalist
from PancreasDiNTSLib.training.evaluate import bundle_mean_dice, dice_per_class, hd95_per_class

CLI = [sys.executable, "-m", "PancreasDiNTSLib.cli"]


def test_dice_by_hand():
    ref = np.zeros((10, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[2:4, 2:4, 2:4] = 1  # 8 voxels
    pred[2:4, 2:4, 3:6] = 1  # 12 voxels, 4 shared with ref
    pred[8, 8, 8] = 2  # tumour predicted, absent from the reference
    d = dice_per_class(pred, ref)
    assert d[0] == pytest.approx(2 * 4 / (8 + 12))
    assert math.isnan(d[1])  # MONAI ignore_empty: no reference tumour -> NaN, not 0
    ref[5:7, 5:7, 5:7] = 2  # 8 tumour voxels, none predicted
    assert dice_per_class(pred, ref)[1] == 0.0
    assert dice_per_class(ref, ref).tolist() == [1.0, 1.0]


def test_hd95_of_parallel_plates():
    """Two parallel one-voxel plates 3 voxels apart: every surface point is 3 * spacing_x from the other."""
    ref = np.zeros((12, 14, 14), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[4, 2:12, 2:12] = 1
    pred[7, 2:12, 2:12] = 1
    hd = hd95_per_class(pred, ref, spacing=(1.5, 0.8, 0.8))
    assert hd[0] == pytest.approx(3 * 1.5)
    assert math.isnan(hd[1])


def test_mean_dice_follows_monai_meandice():
    m = np.array([[0.5, np.nan], [np.nan, np.nan], [0.8, 0.2]])
    assert bundle_mean_dice(m) == pytest.approx((0.5 + 0.5) / 2)
    import torch
    from monai.metrics.utils import do_metric_reduction

    ref, _ = do_metric_reduction(torch.tensor(m), "mean")
    assert bundle_mean_dice(m) == pytest.approx(float(ref))


@pytest.fixture(scope="module")
def phantom_datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    data = write_msd_dataset(root / "Task07", 5, 0, seed=9, size="tiny")
    dl = prepare_datalist(data)  # 3 training, 1 validation, 1 testing
    dl["testing"] = dl["testing"] + dl["validation"]
    write_datalist(dl, root / "datalist.json")
    return root / "datalist.json", dl


@pytest.mark.slow
def test_evaluate_cli_matches_hand_computation(tiny_bundle, phantom_datalist, tmp_path, cli_env):
    datalist, dl = phantom_datalist
    out = tmp_path / "EVAL"
    r = subprocess.run(CLI + ["evaluate", "--model", str(tiny_bundle), "--datalist", str(datalist), "-o", str(out),
                              "--device", "cpu", "--progress", "none", "--save-predictions"],
                       capture_output=True, text=True, env=cli_env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mean foreground Dice (bundle metric)" in r.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["case"] for row in rows] == [Path(i["image"]).name[:-7] for i in dl["testing"]]
    matrix = []
    for row, item in zip(rows, dl["testing"], strict=True):
        lab = nib.load(Path(dl["dataset_dir"]) / item["label"])
        ref = np.asarray(lab.dataobj)
        pred = np.asarray(nib.load(out / "predictions" / f"{row['case']}.nii.gz").dataobj)
        assert pred.shape == ref.shape
        voxel_ml = abs(np.linalg.det(lab.affine[:3, :3])) / 1000
        dice_row = []
        for k, name in ((1, "pancreas"), (2, "tumour")):
            a, b = pred == k, ref == k
            if b.any():
                expected = 2 * (a & b).sum() / (a.sum() + b.sum())
                assert float(row[f"dice_{name}"]) == pytest.approx(expected, abs=1e-4)
                dice_row.append(expected)
            else:
                assert row[f"dice_{name}"] == ""
                dice_row.append(np.nan)
            assert float(row[f"volume_{name}_ml"]) == pytest.approx(a.sum() * voxel_ml, abs=1e-3)
            assert float(row[f"volume_{name}_ref_ml"]) == pytest.approx(b.sum() * voxel_ml, abs=1e-3)
        matrix.append(dice_row)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == len(rows) and summary["split"] == "testing"
    assert summary["mean_dice"] == pytest.approx(bundle_mean_dice(np.array(matrix)), abs=1e-6)


@pytest.mark.slow
def test_evaluate_bad_input_is_one_line(tiny_bundle, phantom_datalist, tmp_path, cli_env):
    datalist, dl = phantom_datalist
    r = subprocess.run(CLI + ["evaluate", "--model", str(tiny_bundle), "--datalist", str(datalist), "--split",
                              "nope", "-o", str(tmp_path / "E1"), "--device", "cpu"],
                       capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 1 and "no 'nope' split" in r.stderr
    # a label on another grid
    item = dl["testing"][0]
    bad_label = tmp_path / "bad_label.nii.gz"
    lab = nib.load(Path(dl["dataset_dir"]) / item["label"])
    save_nifti(bad_label, np.asarray(lab.dataobj)[:-2], lab.affine, np.uint8)
    bad = dict(dl, testing=[{"image": str(Path(dl["dataset_dir"]) / item["image"]), "label": str(bad_label)}])
    write_datalist(bad, tmp_path / "bad.json")
    r = subprocess.run(CLI + ["evaluate", "--model", str(tiny_bundle), "--datalist", str(tmp_path / "bad.json"),
                              "-o", str(tmp_path / "E2"), "--device", "cpu"],
                       capture_output=True, text=True, env=cli_env, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 1 and len(errors) == 1 and Path(item["image"]).name[:-7] in errors[0]
    assert "shape" in errors[0]
    assert not (tmp_path / "E2" / "metrics.csv").exists()


def test_relative_datalist_is_resolved_once(tiny_bundle, phantom_datalist, tmp_path, monkeypatch, capsys):
    """Issue 26 item 11: `evaluate --datalist scratch/dl.json` looked for the cases in scratch/scratch/. Now a
    relative --datalist is taken from the working folder once, its items from the datalist's folder (no
    dataset_dir entry), a dataset_dir entry from the datalist's folder, and --dataset-dir from the working folder."""
    import shutil

    from PancreasDiNTSLib.cli import main
    from PancreasDiNTSLib.training.data import load_datalist

    _, dl = phantom_datalist
    item = dl["testing"][0]
    scratch = tmp_path / "scratch"
    for key in ("image", "label"):
        (scratch / "cases" / key).mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(dl["dataset_dir"]) / item[key], scratch / "cases" / key / Path(item[key]).name)
    rel = {k: f"cases/{k}/{Path(item[k]).name}" for k in ("image", "label")}
    (scratch / "dl.json").write_text(json.dumps({"testing": [rel]}))
    (scratch / "dl_entry.json").write_text(json.dumps({"dataset_dir": "cases", "testing": [
        {k: f"{k}/{Path(item[k]).name}" for k in ("image", "label")}]}))
    monkeypatch.chdir(tmp_path)
    expected = str((scratch / rel["image"]).resolve())
    assert load_datalist("scratch/dl.json", "testing")[0]["image"] == expected
    assert load_datalist("scratch/dl_entry.json", "testing")[0]["image"] == expected
    assert load_datalist("scratch/dl_entry.json", "testing", base_dir="scratch/cases")[0]["image"] == expected
    code = main(["evaluate", "--model", str(tiny_bundle), "--datalist", "scratch/dl.json", "-o", "EVAL",
                 "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((tmp_path / "EVAL" / "summary.json").read_text())
    assert summary["cases"] == 1 and summary["datalist"] == str(scratch / "dl.json")
