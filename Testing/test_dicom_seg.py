"""Issue 11, observation 6: de-identified DICOM (empty UIDs in the dataset but present in the file meta, no
PatientBirthDate, JPEG 2000 pixels) gets a DICOM SEG that reads back in highdicom and in pydicom with
validation raising; SEG preconditions are known before inference; a 237-character model name with control
characters fits its LO field; a resampled (tilted) series gets a SEG on its acquired images. End to end
through the real CLI once. Series cut from the real example CT."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import RAS_TO_LPS, Volume, axial_planes, load_crop, tilted_planes, write_series
from PancreasDiNTSLib.io.dicom_seg import DicomSegError, clean_text
from PancreasDiNTSLib.io.images import read_image
from PancreasDiNTSLib.io.writers import check_dicom_seg_preconditions, write_dicom_seg
from support import PYTHON

HOSTILE_NAME = ("Pancreas\x00model\n\r\x1b[31m" + "x" * 200 + "\\end\x7f" + "y" * 20)[:237]


@pytest.fixture(scope="module")
def vol():
    from support import EXAMPLE_CT, require

    full = load_crop(require(EXAMPLE_CT))
    affine = full.affine_ras.copy()
    affine[:, 3] = full.affine_ras @ np.array([16, 16, 10, 1.0])
    return Volume(full.data[16:48, 16:48, 10:26].copy(), affine)  # 32 x 32 x 16 voxels of 3 mm: 1-2 windows


def deidentify(ds, k):
    """As many anonymisers leave it: identifying UIDs emptied in the dataset (kept in the file meta),
    patient/study attributes removed, JPEG 2000 pixel data."""
    from pydicom.uid import JPEG2000Lossless

    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID"):
        setattr(ds, key, "")
    for key in ("PatientBirthDate", "PatientName", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                "StudyID", "ReferringPhysicianName", "SeriesDescription"):
        if key in ds:
            delattr(ds, key)
    ds.PatientID = "ANON\x01" + "9" * 80  # an LO value that is too long and holds a control character
    # decimal strings longer than DS allows (16), as float formatting leaves them: geometry must survive
    ds.ImageOrientationPatient = [float(v) if abs(float(v)) > 0.5 else 6.123233995736766e-17
                                  for v in ds.ImageOrientationPatient]
    ds.compress(JPEG2000Lossless)


@pytest.fixture(scope="module")
def deid_folder(tmp_path_factory, vol) -> Path:
    folder = tmp_path_factory.mktemp("deid") / "anon_ct"
    write_series(folder, vol, axial_planes(vol, np.arange(16) * 3.0), edit=deidentify)
    return folder


@pytest.fixture(scope="module")
def tilted_folder(tmp_path_factory, vol) -> Path:
    folder = tmp_path_factory.mktemp("tilt") / "tilted_ct"
    write_series(folder, vol, tilted_planes(vol, n=12, step_mm=3.0, tilt_deg=20.0))
    return folder


def meta_uids(folder: Path) -> dict[str, Path]:
    import pydicom

    return {str(pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID): f
            for f in folder.iterdir()}


def strict_read(path: Path):
    """pydicom with reading validation set to raise, every value converted."""
    import pydicom
    from pydicom import config

    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        ds = pydicom.dcmread(str(path))
        for elem in ds.iterall():
            _ = elem.value
        return ds
    finally:
        config.settings.reading_validation_mode = old


def labels_for(case) -> np.ndarray:
    data = case.image[0].numpy()
    return np.where(data > 250, 2, np.where((data > -150) & (data < -30), 1, 0)).astype(np.uint8)


@pytest.mark.slow
def test_deidentified_series_gets_a_valid_seg(tmp_path, deid_folder, vol):
    import highdicom as hd

    case = read_image(deid_folder)
    np.testing.assert_array_equal(case.image[0].numpy(), vol.data)
    from PancreasDiNTSLib.io.dicom import folder_cases

    (suffix, series), = folder_cases(deid_folder)  # no SeriesInstanceUID: picked by its number
    assert suffix == "" and series.uid == "" and series.selector == "number=3"
    assert read_image(deid_folder, series_uid=series.selector).shape == case.shape
    t = time.perf_counter()
    notes = check_dicom_seg_preconditions(case, HOSTILE_NAME, "0.5.0\x00\n")
    assert time.perf_counter() - t < 15
    text = " ".join(notes)
    assert "taken from the files' meta information" in text
    assert "no StudyInstanceUID" in text and "no FrameOfReferenceUID" in text and "PatientBirthDate" in text

    labels = labels_for(case)
    dest = write_dicom_seg(tmp_path / "segmentation.dcm", labels, case, HOSTILE_NAME, "0.5.0\x00\n")
    ds = strict_read(dest)
    for value in (ds.ManufacturerModelName, ds.SegmentSequence[0].SegmentAlgorithmName, ds.SeriesDescription):
        assert len(value) <= 64 and all(ch.isprintable() for ch in value)
    assert len(ds.PatientID) <= 64 and ds.PatientID.startswith("ANON9")
    assert ds.PatientBirthDate == "" and ds.StudyInstanceUID.startswith("2.25.")

    seg = hd.seg.segread(str(dest))
    uids = meta_uids(deid_folder)
    referenced = {str(item.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(uids)
    # Each SEG frame equals our labels on the source image it references (slice order along the normal).
    order = sorted(uids, key=lambda u: float(_ipp(uids[u]) @ np.array([0, 0, 1.0])))
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, segment_numbers=[1, 2])
    got = np.zeros(labels.shape, dtype=np.uint8)
    for k in range(len(order)):
        for s in (1, 2):
            got[:, :, k][mask[k, :, :, s - 1].T > 0] = s
    np.testing.assert_array_equal(got, labels)
    # Generated UIDs are the same on every run (derived from the files), so a rerun does not fork the study.
    again = write_dicom_seg(tmp_path / "again.dcm", labels, case, "m", "1")
    assert strict_read(again).StudyInstanceUID == ds.StudyInstanceUID


def _ipp(path: Path) -> np.ndarray:
    import pydicom

    return np.array([float(v) for v in pydicom.dcmread(str(path), stop_before_pixels=True).ImagePositionPatient])


def test_seg_of_a_resampled_series_lies_on_the_acquired_images(tmp_path, tilted_folder):
    """Labels defined by two planes in patient space (1 beyond a plane across the grid's x axis, 2 beyond a
    plane across its slice normal) on the resampled grid; every SEG frame pixel of the tilted source images
    must carry the label of its own position, except within half a voxel (1.5 mm) of a plane."""
    import highdicom as hd
    import pydicom

    case = read_image(tilted_folder)
    assert case.image.meta["dicom_resampled"] and case.shape[1] > 32  # the grid grew to cover the tilt
    lps = RAS_TO_LPS @ case.affine_ras
    ax = lps[:3, 0] / np.linalg.norm(lps[:3, 0])
    az = lps[:3, 2] / np.linalg.norm(lps[:3, 2])
    centre = lps[:3, :3] @ (np.array(case.shape) / 2.0) + lps[:3, 3]

    def label_at(points: np.ndarray) -> np.ndarray:
        sx, sz = (points - centre) @ ax, (points - centre) @ az
        return np.where(sz > 0, 2, np.where(sx > 0, 1, 0)), sx, sz

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in case.shape], indexing="ij"), -1) @ lps[:3, :3].T + lps[:3, 3]
    labels = label_at(grid)[0].astype(np.uint8)
    check_dicom_seg_preconditions(case, "tiny", "1")
    dest = write_dicom_seg(tmp_path / "seg.dcm", labels, case, "tiny", "1")
    seg = hd.seg.segread(str(dest))
    worst = 0.0
    for f in case.dicom_files:
        src = pydicom.dcmread(str(f), stop_before_pixels=True)
        iop = np.array([float(v) for v in src.ImageOrientationPatient])
        r, c = np.mgrid[0:int(src.Rows), 0:int(src.Columns)]
        pts = (np.array([float(v) for v in src.ImagePositionPatient]) + c[..., None] * 3.0 * iop[:3]
               + r[..., None] * 3.0 * iop[3:])
        expected, sx, sz = label_at(pts)
        mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=[str(src.SOPInstanceUID)],
                                                 segment_numbers=[1, 2], skip_overlap_checks=True,
                                                 assert_missing_frames_are_empty=True)[0]
        got = np.where(mask[..., 1] > 0, 2, np.where(mask[..., 0] > 0, 1, 0))
        wrong = got != expected
        if wrong.any():
            near = np.minimum(np.abs(np.where(expected == 2, sz, np.minimum(np.abs(sz), np.abs(sx)))),
                              np.abs(sx))
            worst = max(worst, float(np.minimum(np.abs(sz), near)[wrong].max()))
    assert worst <= 1.5 + 1e-3, worst


def test_unwritable_seg_is_refused_before_inference_in_one_line(tmp_path, vol):
    from dicom_factory import new_ids

    ids = [new_ids(), new_ids()]

    def two_studies(ds, k):
        ds.StudyInstanceUID = ids[k % 2].study

    write_series(tmp_path / "s", vol, axial_planes(vol, np.arange(6) * 3.0), ids=ids[0], edit=two_studies)
    case = read_image(tmp_path / "s")
    with pytest.raises(DicomSegError) as exc:
        check_dicom_seg_preconditions(case, "m", "1")
    assert "\n" not in str(exc.value) and "StudyInstanceUID" in str(exc.value)


def test_clean_text_limits():
    assert clean_text(HOSTILE_NAME, "LO") == clean_text(HOSTILE_NAME, "LO")[:64]
    assert len(clean_text(HOSTILE_NAME, "LO")) <= 64 and "\n" not in clean_text(HOSTILE_NAME, "LO")
    assert clean_text("a\\b", "LO") == "a/b" and len(clean_text("x" * 40, "SH")) == 16


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, deid_folder, tilted_folder, tiny_bundle, cli_env):
    """The real CLI on the de-identified J2K series and the tilted series: every output of both is written."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [PYTHON, "-m", "PancreasDiNTSLib.cli", "segment", str(deid_folder), str(tilted_folder), "-o", str(out),
         "--model", str(tiny_bundle), "--device", "cpu", "--format", "nifti,seg.nrrd,dicom-seg",
         "--progress", "none", "--no-prefetch"],
        env=cli_env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    import highdicom as hd
    import nibabel as nib

    for name, folder in (("anon_ct", deid_folder), ("tilted_ct", tilted_folder)):
        case_dir = out / name
        for f in ("labels.nii.gz", "segmentation.seg.nrrd", "segmentation.dcm", "report.json"):
            assert (case_dir / f).is_file(), (name, f, sorted(p.name for p in case_dir.iterdir()))
        strict_read(case_dir / "segmentation.dcm")
        seg = hd.seg.segread(str(case_dir / "segmentation.dcm"))
        assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(list(folder.iterdir()))
        report = json.loads((case_dir / "report.json").read_text())
        assert "DICOM series" in json.dumps(report)
        labels = nib.load(str(case_dir / "labels.nii.gz"))
        case = read_image(folder)
        assert labels.shape == case.shape
        np.testing.assert_allclose(labels.affine, case.affine_ras, atol=1e-4)
