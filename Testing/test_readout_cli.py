"""The read-out through the real ``segment`` command (cli.main in-process: batch driver, segment_case, writers,
report, measurements.csv, case page). Only the network's label map is replaced, by the bad cases the read-out
must survive: no lesion found, a lesion of one voxel, an empty pancreas; the confidence map still comes from the
real network's inverted probabilities."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from image_files import crop_nifti
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.core import errors
from PancreasDiNTSLib.inference.segmenter import Inverted, Segmenter
from PancreasDiNTSLib.readout.combined import CSV_COLUMNS

FORMATS = "nifti,seg.nrrd,confidence,report-png,report-pdf"
SHAPES = {"no_lesion": (20, 20, 20), "one_voxel": (21, 20, 20), "empty": (20, 21, 20)}


def crafted(shape: tuple[int, ...]) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    if shape == SHAPES["empty"]:
        return lab
    lab[4:16, 6:14, 5:15] = 1  # a pancreas of 960 voxels
    if shape == SHAPES["one_voxel"]:
        lab[10, 10, 10] = 2
    return lab


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, example_ct_sm) -> list[Path]:
    folder = tmp_path_factory.mktemp("bad_cases")
    return [crop_nifti(example_ct_sm, folder / f"{name}.nii.gz",
                       tuple(slice(s0, s0 + n) for s0, n in zip((50, 40, 5), shape, strict=True)))
            for name, shape in SHAPES.items()]


@pytest.fixture
def crafted_labels(monkeypatch):
    real = Segmenter.invert

    def invert(self, logits, pre, slabs=None, readout=True):
        inv = real(self, logits, pre, slabs, readout)
        return Inverted(crafted(inv.labels.shape), inv.confidence, inv.lesion)

    monkeypatch.setattr(Segmenter, "invert", invert)


def segment(capsys, inputs, out, model, *extra) -> tuple[int, str]:
    code = main(["segment", *map(str, inputs), "-o", str(out), "--model", str(model), "--device", "cpu",
                 "--progress", "none", *extra])
    return code, capsys.readouterr().err


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == list(CSV_COLUMNS)
    return {r["case"]: r for r in rows}


@pytest.mark.slow
def test_bad_cases_give_nulls_with_reasons_never_a_crash(tmp_path, inputs, tiny_bundle, crafted_labels, capsys):
    out = tmp_path / "out"
    code, err = segment(capsys, inputs, out, tiny_bundle, "--format", FORMATS)
    assert code == 0, err
    names = [p.name.split(".")[0] for p in inputs]
    reports = {n: json.loads((out / n / "report.json").read_text()) for n in names}
    for name, report in reports.items():
        folder = out / name
        assert sorted(report["outputs"]) == sorted(["labels.nii.gz", "segmentation.seg.nrrd", "confidence.nii.gz",
                                                    "report.png", "report.pdf", "report.json"]), name
        assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG" and (folder / "report.pdf").stat().st_size
        labels, conf = nib.load(folder / "labels.nii.gz"), nib.load(folder / "confidence.nii.gz")
        assert conf.get_data_dtype() == np.uint8 and conf.shape == labels.shape == SHAPES[name]
        assert np.array_equal(conf.affine, labels.affine)
        assert conf.header["sform_code"] == labels.header["sform_code"]
        assert conf.header["qform_code"] == labels.header["qform_code"]
        c = np.asarray(conf.dataobj)
        assert 85 <= c.min() and c.max() <= 255  # 255 x max of 3 softmax probabilities: at least 255/3
        ro = report["readout"]
        assert ro["confidence"]["lesion_score"]["uncalibrated"] is True
        assert 0 < ro["confidence"]["lesion_score"]["value"] <= 1
        assert report["volumes_ml"]["Pancreas"] == pytest.approx(ro["segments"]["pancreas"]["volume_ml"], abs=1e-3)
        assert "cancer" not in json.dumps(ro).lower()

    les = reports["no_lesion"]["readout"]["lesion"]
    assert not les["found"] and les["largest"] is None and "no lesion" in les["reason"]
    assert les["size_category"]["category"] is None and les["size_category"]["reason"]
    loc = reports["no_lesion"]["readout"]["location"]["largest"]
    assert loc["part"] is None and loc["reason"] == "no lesion segmented"
    conf = reports["no_lesion"]["readout"]["confidence"]["segments"]
    assert conf["pancreatic_tumor"]["mean_confidence"] is None and conf["pancreatic_tumor"]["reason"]
    assert conf["pancreas"]["mean_confidence"] is not None

    one = reports["one_voxel"]["readout"]["lesion"]
    assert one["found"] and one["count"] == 1
    big = one["largest"]
    assert big["voxels"] == 1 and big["longest_axial_diameter"] is None and "single voxel" in big["reason"]
    assert one["size_category"]["category"] is None and "single voxel" in one["size_category"]["reason"]

    empty = reports["empty"]["readout"]
    assert empty["segments"]["pancreas"]["volume_ml"] == 0 and empty["segments"]["pancreas"]["reason"]
    assert not empty["lesion"]["found"] and empty["location"]["reason"].startswith("no pancreas")
    assert empty["confidence"]["segments"]["pancreas"]["mean_confidence"] is None

    rows = read_csv(out / "measurements.csv")
    assert set(rows) == set(SHAPES)
    assert rows["no_lesion"]["lesion_count"] == "0" and rows["no_lesion"]["longest_axial_diameter_mm"] == ""
    assert "no lesion" in rows["no_lesion"]["note"]
    assert rows["one_voxel"]["lesion_count"] == "1" and "single voxel" in rows["one_voxel"]["note"]
    assert float(rows["one_voxel"]["largest_lesion_ml"]) > 0 and rows["one_voxel"]["size_category_by_size_only"] == ""
    assert rows["empty"]["pancreas_ml"] == "0.0" and rows["empty"]["lesion_score_uncalibrated"] != ""
    assert json.loads((out / "summary.json").read_text())["succeeded"] == 3


@pytest.mark.slow
def test_measurements_csv_keeps_a_users_file_and_lists_skipped_cases(tmp_path, inputs, tiny_bundle,
                                                                      crafted_labels, capsys):
    out = tmp_path / "out"
    code, _ = segment(capsys, inputs[:1], out, tiny_bundle, "--format", "nifti")
    assert code == 0
    first = read_csv(out / "measurements.csv")
    code, err = segment(capsys, inputs[:1], out, tiny_bundle, "--format", "nifti")  # skipped: outputs exist
    assert code == 0 and "skipped" in json.loads((out / "summary.json").read_text())["results"][0]["status"]
    again = read_csv(out / "measurements.csv")
    assert again["no_lesion"]["status"] == "skipped"
    assert again["no_lesion"]["pancreas_ml"] == first["no_lesion"]["pancreas_ml"] != ""
    (out / "measurements.csv").write_text("my own table\n1,2,3\n")
    code, err = segment(capsys, inputs[:1], out, tiny_bundle, "--format", "nifti", "--overwrite")
    assert code == 0 and "measurements.csv was not written by pancreas-dints" in err
    assert (out / "measurements.csv").read_text() == "my own table\n1,2,3\n"
    (out / "summary.json").write_text('{"my": "notes"}\n')  # OUTDIR is the user's folder: same rule
    code, err = segment(capsys, inputs[:1], out, tiny_bundle, "--format", "nifti")
    assert code == 0 and "summary.json was not written by pancreas-dints" in err
    assert (out / "summary.json").read_text() == '{"my": "notes"}\n'


@pytest.mark.slow
def test_roi_mode_notes_that_confidence_needs_the_whole_image(tmp_path, inputs, tiny_bundle, capsys):
    out = tmp_path / "out"
    code, err = segment(capsys, inputs[:1], out, tiny_bundle, "--format", "nifti,confidence",
                        "--roi", "2,2,2,12,12,12", "--roi-space", "voxel")
    assert code == errors.EXIT_OK, err
    report = json.loads((out / "no_lesion" / "report.json").read_text())
    assert "confidence.nii.gz" not in report["outputs"] and not (out / "no_lesion" / "confidence.nii.gz").exists()
    assert any("confidence not written: ROI mode" in n for n in report["notes"])
    assert report["readout"]["confidence"] is None and "ROI mode" in report["readout"]["confidence_reason"]


@pytest.mark.slow
def test_readout_can_be_turned_off_for_labels_only_callers(inputs, tiny_bundle):
    """evaluate/benchmark-style calls: CaseOptions(readout=False) gives the same labels, no read-out, no map."""
    from PancreasDiNTSLib.inference.pipeline import CaseOptions, segment_case
    from PancreasDiNTSLib.model.loader import load_bundle

    seg = Segmenter(load_bundle(tiny_bundle), "cpu")
    off = segment_case(inputs[0], seg, CaseOptions(formats=(), report=False, readout=False))
    on = segment_case(inputs[0], seg, CaseOptions(formats=(), report=False))
    assert np.array_equal(off.labels, on.labels)
    assert off.readout == {} and off.confidence is None and "readout" not in off.report
    assert on.confidence is not None and on.readout["confidence"]["source"] == "confidence map (uint8)"
    assert "readout" in on.timings and "readout" not in off.timings
