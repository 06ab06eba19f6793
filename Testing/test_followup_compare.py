"""Follow-up comparison end to end on synthetic pairs with known truth (make-phantoms --followup): the truth
labels are the "segmentation" (case folders written with the engine's writers), so no inference runs.

One pair is written and compared once (module fixture) through the CLI in-process; the assertions read back
compare.json, the page and the batch tables."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.followup.cases import check_pair, load_ct, open_side
from PancreasDiNTSLib.followup.compare import compare_sides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("followup")
    assert main(["make-phantoms", "--followup", "--seed", "3", "-o", str(root / "pair")]) == 0
    code = main(["compare", str(root / "pair" / "prior"), str(root / "pair" / "current"), "-o", str(root / "out"),
                 "--format", "json,png"])
    return {"root": root, "code": code, "truth": json.loads((root / "pair" / "truth.json").read_text()),
            "result": json.loads((root / "out" / "compare.json").read_text())}


def by_status(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for f in result["lesions"]:
        assert f["status"] not in out, f"two findings with status {f['status']}"
        out[f["status"]] = f
    return out


def test_matches_statuses_and_category(run: dict[str, Any]) -> None:
    assert run["code"] == 0
    result, truth = run["result"], run["truth"]
    found = by_status(result)
    assert set(found) == {t["status"] for t in truth["lesions"].values()}  # grown shrunk split gone new
    assert len(found["split"]["prior"]) == 1 and len(found["split"]["current"]) == 2
    assert found["grown"]["match"]["by"] == "overlap" and found["grown"]["match"]["confidence"] == "high"
    rec = result["response"]["recist"]
    assert rec["category"] == truth["expected_category"] == "PD" and "new lesion" in rec["reason"]
    assert result["response"]["volumetric"]["category"] == "PD"
    for block in (rec, result["response"]["volumetric"]):
        assert block["label"] == "computed from the automatic segmentation; not a clinical response assessment"
    al = result["alignment"]
    assert al["plausible"] and al["mean_surface_distance_mm"] < 0.5 and al["gland_dice"] > 0.9
    # the recovered motion: the prior's gland centre lands within 2 mm of where the truth puts it
    m_true, m = np.array(truth["motion"]["prior_to_current_ras"]), np.array(al["prior_to_current_ras"])
    c = np.array(found["grown"]["prior"][0]["centroid_ras"] + [1.0])
    assert np.linalg.norm((m_true @ c)[:3] - (m @ c)[:3]) < 2.0


def test_tracking_uids_carried_from_the_prior(run: dict[str, Any]) -> None:
    result = run["result"]
    prior_report = json.loads((run["root"] / "pair" / "prior" / "report.json").read_text())
    current_report = json.loads((run["root"] / "pair" / "current" / "report.json").read_text())
    prior_uids = {e["rank"]: e["uid"] for e in prior_report["readout"]["tracking"]["lesions"]}
    current_uids = {e["rank"]: e["uid"] for e in current_report["readout"]["tracking"]["lesions"]}
    carried = {e["rank"]: e for e in result["current_tracking"]["lesions"]}
    found = by_status(result)
    for status in ("grown", "shrunk"):
        p, c = found[status]["prior"][0], found[status]["current"][0]
        assert p["tracking_uid"] == prior_uids[p["rank"]] == found[status]["tracking_uid"]
        assert carried[c["rank"]]["uid"] == prior_uids[p["rank"]] and carried[c["rank"]]["from"] == "prior"
    new = found["new"]["current"][0]
    assert carried[new["rank"]]["uid"] == current_uids[new["rank"]] and carried[new["rank"]]["from"] == "current"
    big, small = found["split"]["current"]
    assert carried[big["rank"]]["uid"] == found["split"]["tracking_uid"]
    assert carried[small["rank"]]["split_from"] == found["split"]["tracking_uid"]
    assert len({e["uid"] for e in carried.values()}) == len(carried)  # one UID per finding in the current


def layer_ml(volume_ml: float, spacing: list[float]) -> float:
    """One voxel layer over a lesion's surface (sphere of its volume), the largest spacing as its thickness."""
    surface = (36.0 * math.pi) ** (1 / 3) * (volume_ml * 1000.0) ** (2 / 3)
    return surface * max(spacing) / 1000.0


def test_accuracy_against_truth(run: dict[str, Any]) -> None:
    result, truth = run["result"], run["truth"]
    found = by_status(result)
    voxel = max(truth["prior_spacing_mm"][:2] + truth["current_spacing_mm"][:2])
    for name in ("grown", "shrunk", "split"):
        t, f = truth["lesions"][name], found[name]
        true_change = t["current_volume_ml"] - t["prior_volume_ml"]
        measured = sum(x["volume_ml"] for x in f["current"]) - sum(x["volume_ml"] for x in f["prior"])
        tol = max(0.03 * max(t["prior_volume_ml"], t["current_volume_ml"]),
                  layer_ml(t["current_volume_ml"], truth["current_spacing_mm"]))
        assert abs(measured - true_change) <= tol, (name, measured, true_change)
        assert abs(measured - true_change) <= 0.05 * t["prior_volume_ml"], (name, measured, true_change)
        if name != "split":
            d_true = t["current_axial_diameter_mm"] - t["prior_axial_diameter_mm"]
            assert abs(f["change"]["longest_axial_diameter_mm"] - d_true) <= voxel, (name, f["change"], d_true)
            assert f["prior"][0]["location_part"] == f["current"][0]["location_part"]


def test_swapped_pair_reports_a_merge(run: dict[str, Any]) -> None:
    pair = run["root"] / "pair"
    current, prior = open_side("prior", pair / "current"), open_side("current", pair / "prior")
    check_pair(current, prior)
    load_ct(current)
    load_ct(prior)
    result, _ = compare_sides(current, prior)
    kinds = sorted(f["status"] for f in result["lesions"])
    assert kinds == ["grown", "merged", "new", "no longer seen", "shrunk"]
    assert result["response"]["recist"]["category"] == "PD"


def test_page_and_batch(run: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    png = run["root"] / "out" / "compare.png"
    with Image.open(png) as im:
        assert im.size[0] > 700 and im.size[1] > 1000
        assert np.asarray(im.convert("L")).std() > 20  # images, not a blank page
    assert not (run["root"] / "out" / "compare.pdf").exists()  # not asked for
    # a batch: the good pair, a pair whose current has no labels, and the good pair again under another name
    pair = run["root"] / "pair"
    broken = tmp_path / "broken"
    shutil.copytree(pair / "current", broken)
    (broken / "labels.nii.gz").unlink()
    table = tmp_path / "pairs.csv"
    table.write_text(f"name,prior,current\nok,{pair / 'prior'},{pair / 'current'}\nbad,{pair / 'prior'},{broken}\n")
    out = tmp_path / "batch"
    assert main(["compare", "--pairs", str(table), "-o", str(out), "--format", "json"]) == 1
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[0]["recist"] == "PD" and "no labels.nii.gz" in rows[1]["message"]
    assert (out / "ok" / "compare.json").is_file() and not (out / "bad").exists()


def test_sides_given_as_ct_and_labels(run: dict[str, Any], tmp_path: Path) -> None:
    """What the Slicer panel sends: each side a CT file and its label map (here in NRRD and NIfTI)."""
    import SimpleITK as sitk

    pair = run["root"] / "pair"
    labels_nrrd = tmp_path / "prior labels.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(pair / "prior" / "labels.nii.gz")), str(labels_nrrd))
    out = tmp_path / "out"
    code = main(["compare", str(pair / "prior-ct.nii.gz"), str(pair / "current-ct.nii.gz"), "-o", str(out),
                 "--prior-labels", str(labels_nrrd), "--current-labels", str(pair / "current" / "labels.nii.gz"),
                 "--format", "json"])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert sorted(f["status"] for f in result["lesions"]) == sorted(f["status"] for f in run["result"]["lesions"])
    assert {f["tracking_uid"] for f in result["lesions"]} == {f["tracking_uid"] for f in run["result"]["lesions"]}
    assert (out / "sides" / "prior" / "report.json").is_file()
    bad = tmp_path / "bad.nii.gz"
    img = sitk.ReadImage(str(pair / "current" / "labels.nii.gz"))
    sitk.WriteImage(img * 3, str(bad))
    assert main(["compare", str(pair / "prior-ct.nii.gz"), str(pair / "current-ct.nii.gz"), "-o",
                 str(tmp_path / "o3"), "--current-labels", str(bad), "--prior-labels", str(labels_nrrd)]) == 1
    assert not (tmp_path / "o3" / "compare.json").exists()


def test_refused_pairs_write_nothing(run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    other = tmp_path / "other"
    assert main(["make-phantoms", "--followup", "--other-patient", "--seed", "3", "-o", str(other)]) == 0
    capsys.readouterr()
    assert main(["compare", str(other / "prior"), str(other / "current"), "-o", str(tmp_path / "o1")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not compared" in err[0] and "different patient" in err[0]
    assert not (tmp_path / "o1").exists()
    # OUTDIR is a case folder of segment (here the prior's own): refused, its manifest untouched
    pair = run["root"] / "pair"
    (pair / "prior" / ".pancreas-dints.json").write_text(json.dumps(
        {"schema": "pancreas-dints.case/1", "input": {"path": "elsewhere.nii.gz"}, "files": {}}))
    before = (pair / "prior" / ".pancreas-dints.json").read_bytes()
    assert main(["compare", str(pair / "prior"), str(pair / "current"), "-o", str(pair / "prior")]) == 5
    assert "another input or comparison" in capsys.readouterr().err
    assert (pair / "prior" / ".pancreas-dints.json").read_bytes() == before
    assert not (pair / "prior" / "compare.json").exists()
    (pair / "prior" / ".pancreas-dints.json").unlink()
    # mismatched read-out versions
    cur = tmp_path / "current"
    shutil.copytree(pair / "current", cur)
    report = json.loads((cur / "report.json").read_text())
    report["readout"]["schema"] = "pancreas-dints.readout/0"
    (cur / "report.json").write_text(json.dumps(report))
    assert main(["compare", str(pair / "prior"), str(cur), "-o", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read-out versions differ" in err[0]
    assert not (tmp_path / "o2").exists()


def dicom_current(pair: Path, root: Path) -> Path:
    """The pair's current study as a DICOM series and a case folder as `segment --format dicom-sr` leaves it
    (labels on the series' grid, DICOM SEG, report.json with the read-out and its tracking)."""
    import nibabel as nib
    from dicom_factory import Volume, axial_planes, new_ids, write_series
    from PancreasDiNTSLib.core.tracking import case_key, case_tracking
    from PancreasDiNTSLib.followup import grids
    from PancreasDiNTSLib.io.dicom import series_from_meta
    from PancreasDiNTSLib.io.images import read_image
    from PancreasDiNTSLib.io.writers import write_dicom_seg, write_label_nifti, write_report
    from PancreasDiNTSLib.readout.combined import case_readout

    ct = nib.load(str(pair / "current-ct.nii.gz"))
    vol = Volume(np.asarray(ct.dataobj, dtype=np.float32), ct.affine)
    write_series(root / "series", vol, axial_planes(vol, [k * vol.spacing(2) for k in range(vol.data.shape[2])]),
                 new_ids())
    case = read_image(root / "series")
    truth = nib.load(str(pair / "current" / "labels.nii.gz"))
    ref = grids.to_image(np.zeros(case.shape, np.uint8), case.affine_ras)
    import SimpleITK as sitk

    labels = grids.from_image(grids.resample(grids.to_image(np.asarray(truth.dataobj), truth.affine), ref,
                                             sitk.Transform(3, sitk.sitkIdentity), nearest=True))[0]
    labels = np.ascontiguousarray(labels.astype(np.uint8))
    folder = root / "current"
    folder.mkdir()
    write_dicom_seg(folder / "segmentation.dcm", labels, case, "phantom truth", "0")
    write_label_nifti(folder / "labels.nii.gz", labels, case)
    series = series_from_meta(dict(case.image.meta))
    readout = case_readout(labels, case.affine_ras)
    readout["tracking"] = case_tracking(case_key(series["series_instance_uid"]), readout)
    write_report(folder / "report.json", {"case": "current", "input": str(root / "series"), "input_format": "dicom",
                                          "dicom_series": series, "model": {"name": "phantom truth", "version": "0"},
                                          "readout": readout})
    return folder


def tracking_uids(ds) -> list[str]:
    """Every Tracking Unique Identifier (DCM 112040) in an SR's content tree."""
    found = []
    stack = list(ds.ContentSequence)
    while stack:
        item = stack.pop()
        code = getattr(item, "ConceptNameCodeSequence", [None])[0]
        if code is not None and code.CodeValue == "112040":
            found.append(str(item.UID))
        stack.extend(getattr(item, "ContentSequence", []))
    return found


def test_current_sr_carries_the_prior_tracking_uids(run: dict[str, Any], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import pydicom

    pair = run["root"] / "pair"
    # refused before any work where the current is not a DICOM series
    assert main(["compare", str(pair / "prior"), str(pair / "current"), "-o", str(tmp_path / "no"),
                 "--format", "json,dicom-sr"]) == 2
    assert "not a DICOM series" in capsys.readouterr().err and not (tmp_path / "no").exists()
    current = dicom_current(pair, tmp_path)
    out = tmp_path / "out"
    assert main(["compare", str(pair / "prior"), str(current), "-o", str(out), "--format", "json,dicom-sr"]) == 0
    result = json.loads((out / "compare.json").read_text())
    ds = pydicom.dcmread(str(out / "current-sr.dcm"))
    assert ds.Modality == "SR" and ds.StudyInstanceUID == pydicom.dcmread(
        str(next((tmp_path / "series").iterdir()))).StudyInstanceUID  # filed with the current study
    uids = tracking_uids(ds)
    found = by_status(result)
    for status in ("grown", "shrunk", "split"):
        assert found[status]["tracking_uid"] in uids, status  # the prior's UID, in the current's SR
    own = {e["uid"] for e in result["current_tracking"]["lesions"] if e["from"] == "current"}
    assert own and own <= set(uids)  # the new lesion and the split's second part keep their own
    prior_uids = {e["uid"] for e in json.loads((pair / "prior" / "report.json").read_text())["readout"]["tracking"]
                  ["lesions"]}
    assert found["no longer seen"]["tracking_uid"] in prior_uids - set(uids)  # gone: not in the current SR
