"""Review of a batch, in-process (no browser): the real engine's batch, Slicer's MRML (slicer-core) and
trame-slicer's segment editor; paint and erase through the editor's effects, save, and read back with nibabel,
pynrrd and the engine.

Each case's corrected labels must lie on exactly the grid of its labels.nii.gz (same shape, affine, header,
dtype) for a RAS, an oblique, a flipped (LPS) and a DICOM-derived CT; the painted and erased voxels must lie
where the brush was (an axis reversed by Slicer's reader would put them at a mirrored place); review.json's
numbers are recounted here; the original outputs stay byte-identical.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import review_support as rs
import test_scene_support as scene_support

scene_support.import_slicer_core()
pytest.importorskip("trame_slicer", reason="the review extra is not installed: pip install -e '.[review]'")

from PancreasDiNTSLib.core.errors import InputError, OutputError, UsageError  # noqa: E402
from PancreasDiNTSLib.review import batch, record  # noqa: E402
from PancreasDiNTSReview.session import ReviewSession  # noqa: E402
from PancreasDiNTSSceneLib import SceneLayerError  # noqa: E402
from PancreasDiNTSSceneLib import review as scene_review  # noqa: E402

pytestmark = [pytest.mark.slow]  # the module's batch: one real segment run (about 40 s on 2 cores)
VARIANTS = ("ras", "oblique", "lps", "dicom")
PAINT_MM, ERASE_MM = 9.0, 7.0


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory, tiny_bundle) -> Path:
    return rs.make_batch(tmp_path_factory.mktemp("review_batch"), tiny_bundle, VARIANTS)


@pytest.fixture(scope="module")
def session(batch_out) -> ReviewSession:
    return ReviewSession(batch_out, "Dr Test")


def _far_pancreas_point(labels: np.ndarray, affine: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """RAS of a pancreas voxel at least 25 mm from ``centre`` (where the test erases)."""
    positions = rs.voxel_ras(labels.shape, affine)
    far = (labels == 1) & (np.linalg.norm(positions - centre, axis=-1) > 25)
    assert far.any(), "no pancreas far from the lesion in this case"
    return positions[far][far.sum() // 2]


@pytest.mark.parametrize("variant", VARIANTS)
def test_paint_erase_save_on_the_labels_grid(session, batch_out, variant):
    folder = rs.case_folder(batch_out, variant)
    session.open([c.folder for c in session.cases].index(folder))
    assert session.error == "" and session.editable, session.error or session.case.read_only
    before = rs.digests(folder)
    original_image = nib.load(str(folder / "labels.nii.gz"))
    original, affine = np.asarray(original_image.dataobj), original_image.affine
    paint_at = np.array(session.case.centre_ras)
    erase_at = _far_pancreas_point(original, affine, paint_at)

    session.select_segment("Pancreatic tumor")
    session.paint_at(list(paint_at), PAINT_MM)
    session.select_segment("Pancreas")
    session.paint_at(list(erase_at), ERASE_MM, erase=True)
    session.undo()
    session.redo()  # the erase is back: undo/redo go through the editor's own stack
    done = session.save_corrected()

    saved = nib.load(str(folder / "labels_corrected.nii.gz"))
    corrected = np.asarray(saved.dataobj)
    # exactly the grid, voxel order and header of labels.nii.gz
    assert corrected.shape == original.shape and corrected.dtype == original.dtype
    assert np.array_equal(saved.affine, affine)
    assert saved.header.get_qform(coded=True)[1] == original_image.header.get_qform(coded=True)[1]
    assert saved.header.get_sform(coded=True)[1] == original_image.header.get_sform(coded=True)[1]
    # the edits are where the brush was (a reversed axis would put them elsewhere)
    positions = rs.voxel_ras(original.shape, affine)
    half_diagonal = float(np.linalg.norm(affine[:3, :3], axis=0).max()) * np.sqrt(3) / 2
    to_paint = np.linalg.norm(positions - paint_at, axis=-1)
    to_erase = np.linalg.norm(positions - erase_at, axis=-1)
    changed = corrected != original
    assert changed.any()
    assert np.all((to_paint[changed] <= PAINT_MM + half_diagonal) | (to_erase[changed] <= ERASE_MM + half_diagonal))
    assert np.all(corrected[to_paint < PAINT_MM - half_diagonal] == 2)
    erased = (to_erase < ERASE_MM - half_diagonal) & (to_paint > PAINT_MM + half_diagonal)
    assert erased.any() and not np.any(corrected[erased] == 1)
    # review.json: recounted independently
    for label, key in ((1, "pancreas"), (2, "tumour")):
        a, b = original == label, corrected == label
        change = done["changes"][key]
        assert change["added"] == int((b & ~a).sum()) and change["removed"] == int((a & ~b).sum())
        assert change["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    on_disk = json.loads((folder / "review.json").read_text())
    assert on_disk["status"] == "corrected" and on_disk["reviewer"] == "Dr Test"
    assert on_disk["readout"]["segments"]["pancreatic_tumor"]["volume_ml"] == pytest.approx(
        (corrected == 2).sum() * voxel_ml, abs=1e-3)
    # segment names, colours, label values, terminology and auto-generated flags as the engine wrote them
    assert rs.seg_header_metadata(folder / "segmentation_corrected.seg.nrrd") == \
        rs.seg_header_metadata(folder / "segmentation.seg.nrrd")
    assert rs.digests(folder) == before, "an original output changed"
    print(f"{variant}: {int(changed.sum())} voxels changed, Dice tumour {done['changes']['tumour']['dice']}")


def _corrected(session: ReviewSession, folder: Path) -> None:
    """Make sure the case in ``folder`` has a saved correction (tests may run alone or spread over workers)."""
    if not (folder / "labels_corrected.nii.gz").exists():
        session.open([c.folder for c in session.cases].index(folder))
        session.select_segment("Pancreatic tumor")
        session.paint_at(session.case.centre_ras, PAINT_MM)
        session.save_corrected()


def test_a_case_reopens_from_its_corrected_file(session, batch_out):
    folder = rs.case_folder(batch_out, "ras")
    _corrected(session, folder)
    fresh = ReviewSession(batch_out, "second reader")
    fresh.open([c.folder for c in fresh.cases].index(folder))
    assert fresh.case.corrected
    assert fresh.cases[fresh.index].status == "corrected"
    again = scene_review.corrected_labels(fresh.case.segmentation, folder / "labels.nii.gz", fresh.scene)
    assert np.array_equal(again, np.asarray(nib.load(str(folder / "labels_corrected.nii.gz")).dataobj))


def test_accept_reject_history_and_review_csv(session, batch_out):
    oblique = [c.folder for c in session.cases].index(rs.case_folder(batch_out, "oblique"))
    dicom = [c.folder for c in session.cases].index(rs.case_folder(batch_out, "dicom"))
    _corrected(session, rs.case_folder(batch_out, "oblique"))
    session.open(dicom)
    with pytest.raises(UsageError, match="reason"):
        session.decide("rejected", "  ")
    session.decide("rejected", "tumour missed in the tail")
    session.open(oblique)
    session.decide("accepted")  # after the earlier correction: the decision is recorded, history kept
    data = json.loads((session.cases[oblique].folder / "review.json").read_text())
    assert data["status"] == "accepted" and [h["status"] for h in data["history"]][-1:] == ["corrected"]
    rows = {r.split(",")[0]: r for r in (batch_out / "review.csv").read_text().splitlines()[1:]}
    assert set(rows) == {c.name for c in session.cases}
    assert ",rejected,Dr Test," in rows["dicom"] and "tumour missed in the tail" in rows["dicom"]
    assert ",accepted," in rows["oblique"]


@pytest.mark.subprocess
def test_two_reviewers_saving_one_case(batch_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(batch_out, out)
    folder = rs.case_folder(out, "lps")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=rs.save_many, args=(str(folder), name, value, 3))
               for name, value in (("reader A", 1), ("reader B", 4))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    data = json.loads((folder / "review.json").read_text())
    readers = sorted(h["reviewer"] for h in data["history"] + [data] if h["reviewer"].startswith("reader"))
    assert readers == ["reader A"] * 3 + ["reader B"] * 3, "every save is recorded"
    last = np.asarray(nib.load(str(folder / "labels_corrected.nii.gz")).dataobj)
    assert int((last == 2).sum()) == data["changes"]["tumour"]["voxels_corrected"], "files and record disagree"
    assert batch.read_review(folder) is not None, "the manifest lists review.json unchanged"


def test_bad_cases_are_refused_in_one_line(batch_out, tmp_path, capsys):
    from PancreasDiNTSLib.cli import main

    out = tmp_path / "out"
    shutil.copytree(batch_out, out)
    ras, lps, dicom = (rs.case_folder(out, v) for v in ("ras", "lps", "dicom"))
    # a foreign .seg.nrrd in place of the engine's (and no correction to open instead)
    for name in ("segmentation_corrected.seg.nrrd", "labels_corrected.nii.gz"):
        (dicom / name).unlink(missing_ok=True)
    shutil.copyfile(rs.case_folder(out, "oblique") / "segmentation.seg.nrrd", dicom / "segmentation.seg.nrrd")
    # a user's file where the corrected labels go: kept, nothing written
    (lps / "labels_corrected.nii.gz").write_bytes(b"mine")
    session = ReviewSession(out, "tester")
    session.open([c.folder for c in session.cases].index(dicom))
    assert "not the segmentation pancreas-dints wrote" in session.error and not session.editable
    session.open([c.folder for c in session.cases].index(lps))
    session.paint_at(session.case.centre_ras, 5.0)
    with pytest.raises(OutputError, match="labels_corrected.nii.gz: not written by pancreas-dints"):
        session.save_corrected()
    assert (lps / "labels_corrected.nii.gz").read_bytes() == b"mine"
    # the CT changed since it was segmented, then gone: read-only, nothing saved
    ct = Path(batch.ct_source(ras).path)
    stat = ct.stat()
    review_before = rs.digests(ras) | {n: (ras / n).read_bytes() for n in ("review.json",) if (ras / n).exists()}
    try:
        os.utime(ct, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        session.open([c.folder for c in session.cases].index(ras))
        assert "changed since it was segmented" in session.case.read_only
        ct.rename(ct.with_suffix(".away"))
        session.open([c.folder for c in session.cases].index(ras))
        assert "is gone" in session.case.read_only and not session.editable
        with pytest.raises(SceneLayerError, match="read-only"):
            session.save_corrected()
        assert rs.digests(ras) | {n: (ras / n).read_bytes() for n in ("review.json",) if (ras / n).exists()} \
            == review_before, "a read-only case was written"
    finally:
        if ct.with_suffix(".away").exists():
            ct.with_suffix(".away").rename(ct)
        os.utime(ct, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # an OUTDIR that is not a batch folder: exit 2, one line, before anything starts
    (tmp_path / "plain").mkdir()
    assert main(["review", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a batch output folder" in err[0]
    with pytest.raises(InputError):
        record.save_review(tmp_path / "plain", record.ReviewInput("accepted", "x"))
