"""Issue 23: DICOM SR of the read-out and RTSTRUCT of the contours, read back by highdicom, strict pydicom,
an independent rasteriser (matplotlib's Path, not the writer's code) and dciodvfy when installed.

Series are cut from the real example CT (dicom_factory); labels are constructed so that one slice holds a lesion
with a hole and a second lesion component. The read-out is the engine's (readout.combined.case_readout) and goes
through report.json on disk; the outputs are written through the pipeline's output registry. One end-to-end CLI
run with the tiny model checks the wiring (SEG written with the SR, refusals for non-DICOM input)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import RAS_TO_LPS, Plane, Volume, axial_planes, load_crop, tilted_planes, write_series

HOLE_SLICE = 6


@pytest.fixture(scope="module")
def vol():
    from support import EXAMPLE_CT, require

    full = load_crop(require(EXAMPLE_CT))
    affine = full.affine_ras.copy()
    affine[:, 3] = full.affine_ras @ np.array([16, 16, 10, 1.0])
    return Volume(full.data[16:48, 16:48, 10:26].copy(), affine)  # 32 x 32 x 16 voxels of 3 mm


def constructed_labels(shape) -> np.ndarray:
    """Pancreas slab; lesion A (slices 5-8) with a hole on HOLE_SLICE (pancreas inside it); lesion B, a second
    component, on HOLE_SLICE only."""
    lab = np.zeros(shape, dtype=np.uint8)
    lab[4:28, 8:24, 2:14] = 1
    lab[8:16, 10:18, 5:9] = 2
    lab[11:13, 13:15, HOLE_SLICE] = 1
    lab[20:24, 12:16, HOLE_SLICE] = 2
    return lab


def probabilities(lab: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(7)
    p = rng.random((3, *lab.shape)).astype(np.float32)
    p += 2.5 * (np.arange(3)[:, None, None, None] == lab[None])
    return p / p.sum(axis=0)


def deidentify(ds, k):
    """UIDs emptied in the dataset (kept in the file meta), patient/study attributes removed."""
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID"):
        setattr(ds, key, "")
    for key in ("PatientBirthDate", "PatientName", "StudyDate", "AccessionNumber", "SeriesDescription"):
        if key in ds:
            delattr(ds, key)


def oblique_planes(vol: Volume, n: int, step_mm: float) -> list[Plane]:
    """Slices rotated 20 degrees about the volume's row axis and 10 about its slice axis, stacked on their normal."""
    def rot(axis, deg):
        a = np.deg2rad(deg)
        axis = axis / np.linalg.norm(axis)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k

    r = rot(vol.axis(2), 10) @ rot(vol.axis(0), 20)
    row, col = r @ vol.axis(0), r @ vol.axis(1)
    normal = np.cross(row, col)
    size = (vol.data.shape[0], vol.data.shape[1])
    o = vol.point((0, 0, 0))
    return [Plane(o + k * step_mm * normal, row, col, (vol.spacing(0), vol.spacing(1)), size) for k in range(n)]


def write_case(folder: Path, out: Path, labels_of=constructed_labels):
    """SEG, SR and RTSTRUCT through the output registry (as the pipeline writes them) and report.json."""
    from PancreasDiNTSLib.inference.pipeline import OUTPUTS, CaseData
    from PancreasDiNTSLib.io.images import read_image
    from PancreasDiNTSLib.io.writers import write_label_nifti, write_report
    from PancreasDiNTSLib.readout.combined import case_readout

    case = read_image(folder)
    labels = labels_of(case.shape)
    readout = case_readout(labels, case.affine_ras, probabilities=probabilities(labels))
    out.mkdir(parents=True, exist_ok=True)
    write_report(out / "report.json", {"readout": readout})
    write_label_nifti(out / "labels.nii.gz", labels, case)
    model = {"weights_md5": "0123456789abcdef0123456789abcdef", "arch_md5": "fedcba9876543210fedcba9876543210"}
    data = CaseData(case, labels, "tiny", "1", readout=readout, model=model)
    for fmt in ("dicom-seg", "dicom-sr", "rtstruct"):
        spec = OUTPUTS[fmt]
        spec.precheck(case, "tiny", "1")
        spec.write(out / spec.filename, data)
        data.written[fmt] = out / spec.filename
    return case, labels


@pytest.fixture(scope="module")
def axial(tmp_path_factory, vol):
    root = tmp_path_factory.mktemp("axial")
    write_series(root / "ct", vol, axial_planes(vol, np.arange(16) * 3.0))
    case, labels = write_case(root / "ct", root / "out")
    return root, case, labels


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


# ------------------------------------------------------------------------------------------------------ SR

def sr_groups(ds) -> dict[str, dict[str, list]]:
    """tracking identifier -> {concept meaning: [NUM content items]} of every measurement group."""
    groups: dict[str, dict[str, list]] = {}
    root = ds.ContentSequence
    container = next(i for i in root if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements")
    for group in container.ContentSequence:
        ident = next(i.TextValue for i in group.ContentSequence if i.ValueType == "TEXT"
                     and i.ConceptNameCodeSequence[0].CodeValue == "112039")
        nums: dict[str, list] = {}
        for item in group.ContentSequence:
            if item.ValueType == "NUM":
                nums.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item)
        groups[ident] = nums
    return groups


def num(item) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


@pytest.mark.slow
def test_sr_numbers_equal_report_json_and_scoord3d_endpoints(axial):
    import highdicom as hd

    root, case, labels = axial
    out = root / "out"
    report = json.loads((out / "report.json").read_text())["readout"]
    ds = strict_read(out / "measurements-sr.dcm")
    sr = hd.sr.srread(str(out / "measurements-sr.dcm"))
    assert isinstance(sr, hd.sr.Comprehensive3DSR) and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    groups = sr_groups(ds)
    segs, conf = report["segments"], report["confidence"]["segments"]
    lesion = report["lesion"]
    expected: dict[str, dict[str, float]] = {}
    for key, name in (("pancreas", "Pancreas"), ("pancreatic_tumor", "Pancreatic tumor")):
        expected[name] = {"Volume": segs[key]["volume_ml"],
                          "Mean model confidence in segment": conf[key]["mean_confidence"],
                          "Low-confidence volume near segment boundary": conf[key]["low_confidence_band_ml"]}
    expected["Pancreatic tumor"]["Number of connected lesion components"] = lesion["count"]
    assert lesion["count"] == 2 and len(lesion["components"]) == 2
    for comp in lesion["components"]:
        name = f"Pancreatic lesion component {comp['rank']}" + (" (largest)" if comp["rank"] == 1 else "")
        expected[name] = {"Volume": comp["volume_ml"], "Long axis": comp["longest_axial_diameter"]["mm"],
                          "Perpendicular Axis": comp["perpendicular_diameter"]["mm"],
                          "Maximum 3D Diameter of a Mesh": comp["longest_3d_diameter"]["mm"],
                          "Position along gland centreline (0 head, 1 tail)": comp["location"]["fraction"]}
    expected["Case lesion score"] = {"Lesion score (max lesion probability, uncalibrated)":
                                     report["confidence"]["lesion_score"]["value"]}
    got = {g: {k: [num(i) for i in v] for k, v in items.items()} for g, items in groups.items()}
    assert set(got) == set(expected)
    for g, values in expected.items():
        assert set(got[g]) == set(values), g
        for k, v in values.items():
            assert got[g][k] == [pytest.approx(v, abs=0)], (g, k)

    # SCOORD3D endpoints = the report's RAS endpoints in LPS, in the CT's frame of reference
    keys = {"Long axis": "longest_axial_diameter", "Perpendicular Axis": "perpendicular_diameter",
            "Maximum 3D Diameter of a Mesh": "longest_3d_diameter"}
    frame = strict_read(case.dicom_files[0]).FrameOfReferenceUID
    checked = 0
    for comp in lesion["components"]:
        name = f"Pancreatic lesion component {comp['rank']}" + (" (largest)" if comp["rank"] == 1 else "")
        for meaning, key in keys.items():
            item = groups[name][meaning][0]
            scoord = next(i for i in item.ContentSequence if i.ValueType == "SCOORD3D")
            assert scoord.GraphicType == "POLYLINE" and scoord.ReferencedFrameOfReferenceUID == frame
            pts = np.array(scoord.GraphicData, dtype=float).reshape(-1, 3)
            want = np.array(comp[key]["endpoints_ras"]) * [-1, -1, 1]
            np.testing.assert_allclose(pts, want, atol=0.01)
            seg_ref = next(i for i in item.ContentSequence if i.ValueType == "IMAGE")
            assert seg_ref.ReferencedSOPSequence[0].ReferencedSegmentNumber == 2
            checked += 1
    assert checked == 6
    score = groups["Case lesion score"]["Lesion score (max lesion probability, uncalibrated)"][0]
    point = next(i for i in score.ContentSequence if i.ValueType == "SCOORD3D")
    np.testing.assert_allclose(np.array(point.GraphicData, float),
                               np.array(report["confidence"]["lesion_score"]["argmax_ras"]) * [-1, -1, 1], atol=0.01)

    # size category coded as "by size only, not a stage"; the algorithm with its md5s
    text = " | ".join(str(e.value) for e in ds.iterall() if e.VR in ("LO", "UT", "ST", "LT", "SH"))
    cat = lesion["size_category"]["category"]
    assert f"{cat} by size only, not a stage" in text and "not a stage" in text
    assert "0123456789abcdef0123456789abcdef" in text and "PancreasDiNTS tiny" in text


@pytest.mark.slow
def test_sr_references_resolve_to_the_seg_segments_and_the_ct_series(axial):
    import highdicom as hd

    root, case, _ = axial
    out = root / "out"
    seg = hd.seg.segread(str(out / "segmentation.dcm"))
    sr = hd.sr.srread(str(out / "measurements-sr.dcm"))
    ct_uids = {str(strict_read(f).SOPInstanceUID) for f in case.dicom_files}
    ct_series = str(strict_read(case.dicom_files[0]).SeriesInstanceUID)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Pancreas", "Pancreatic tumor"]
    for number, group in enumerate(groups, start=1):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [number]
        assert seg.get_segment_description(number).segment_label == group.tracking_identifier
        sources = {str(s.referenced_sop_instance_uid) for s in ref.source_images_for_segmentation}
        assert sources and sources <= ct_uids
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    by_series = {str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
                 for s in evidence}
    assert by_series[str(seg.SeriesInstanceUID)] == {str(seg.SOPInstanceUID)}
    assert by_series[ct_series] == ct_uids  # the CT images are evidence (image library)
    assert str(sr.StudyInstanceUID) == str(seg.StudyInstanceUID) == str(strict_read(case.dicom_files[0]).StudyInstanceUID)


def tracking_pairs(ds) -> set[tuple[str, str]]:
    """(Tracking Identifier, Tracking UID) of every measurement group of an SR."""
    out = set()
    for group in next(i for i in ds.ContentSequence
                      if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements").ContentSequence:
        ident = next(i.TextValue for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112039")
        uid = next(i.UID for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112040")
        out.add((str(ident), str(uid)))
    return out


def assert_lines_on_acquired_images(ds, readout, files) -> int:
    """Issue 34 (IHE AIR): each RECIST long and short axis also has a 2D SCOORD POLYLINE on an acquired CT image
    of the series (by SOP Instance UID) whose image coordinates, mapped to the patient by highdicom's
    ImageToReferenceTransformer from that image's header, land on report.json's 3D endpoints (well within half a
    pixel). Returns the number of lines checked."""
    import highdicom as hd
    import pydicom

    images = {}
    for f in files:
        im = pydicom.dcmread(str(f), stop_before_pixels=True)
        images[str(im.SOPInstanceUID) or str(im.file_meta.MediaStorageSOPInstanceUID)] = im
    groups = sr_groups(ds)
    checked = 0
    for comp in readout["lesion"]["components"]:
        name = f"Pancreatic lesion component {comp['rank']}" + (" (largest)" if comp["rank"] == 1 else "")
        for meaning, key in (("Long axis", "longest_axial_diameter"), ("Perpendicular Axis", "perpendicular_diameter")):
            item = groups[name][meaning][0]
            flat = [i for i in item.ContentSequence if i.ValueType == "SCOORD"]
            assert len(flat) == 1 and flat[0].GraphicType == "POLYLINE", (name, meaning)
            ref = flat[0].ContentSequence[0]
            assert ref.ValueType == "IMAGE" and ref.RelationshipType == "SELECTED FROM"
            im = images[str(ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)]
            assert ref.ReferencedSOPSequence[0].ReferencedSOPClassUID == im.SOPClassUID
            xy = np.array(flat[0].GraphicData, float).reshape(-1, 2)
            to_patient = hd.spatial.ImageToReferenceTransformer(
                image_position=im.ImagePositionPatient, image_orientation=im.ImageOrientationPatient,
                pixel_spacing=im.PixelSpacing)
            got = to_patient(xy)
            want = np.array(comp[key]["endpoints_ras"]) * [-1, -1, 1]
            assert np.abs(got - want).max() < 0.05 < 0.5 * min(float(v) for v in im.PixelSpacing), (name, meaning)
            checked += 1
    return checked


@pytest.mark.slow
def test_sr_lines_are_also_2d_scoords_on_the_ct_image_they_were_measured_on(axial):
    root, case, _ = axial
    readout = json.loads((root / "out" / "report.json").read_text())["readout"]
    assert assert_lines_on_acquired_images(strict_read(root / "out" / "measurements-sr.dcm"), readout,
                                           case.dicom_files) == 4


@pytest.mark.slow
def test_sr_tracking_uids_are_derived_from_the_case_and_stable_across_reruns(tmp_path, axial):
    """Issue 34: a rerun of the same case gives a new SR (new SOP instance) with the same Tracking UIDs, those
    core.tracking derives from the CT series' UID and the finding."""
    from PancreasDiNTSLib.core.tracking import lesion_tracking

    root, case, _ = axial
    write_case(root / "ct", tmp_path / "again")
    first, again = strict_read(root / "out" / "measurements-sr.dcm"), strict_read(tmp_path / "again" / "measurements-sr.dcm")
    assert first.SOPInstanceUID != again.SOPInstanceUID
    pairs = tracking_pairs(first)
    assert pairs == tracking_pairs(again) and len({uid for _, uid in pairs}) == len(pairs) == 5
    key = f"dicom-series:{strict_read(case.dicom_files[0]).SeriesInstanceUID}"
    for rank in (1, 2):
        entry = lesion_tracking(key, rank)
        assert (entry["identifier"], entry["uid"]) in pairs


@pytest.mark.slow
def test_sr_of_a_case_without_lesion_reports_zero_ml_and_no_diameters(tmp_path, axial):
    root = axial[0]
    write_case(root / "ct", tmp_path / "out", lambda shape: np.where(constructed_labels(shape) == 1, 1, 0).astype(np.uint8))
    groups = sr_groups(strict_read(tmp_path / "out" / "measurements-sr.dcm"))
    assert set(groups) == {"Pancreas", "Pancreatic tumor", "Case lesion score"}
    assert num(groups["Pancreatic tumor"]["Volume"][0]) == 0.0
    assert num(groups["Pancreatic tumor"]["Number of connected lesion components"][0]) == 0
    rt = strict_read(tmp_path / "out" / "rtstruct.dcm")
    lesion = next(r for r in rt.ROIContourSequence if r.ReferencedROINumber == 2)
    assert "ContourSequence" not in lesion  # an empty ROI: listed, no contour


# ------------------------------------------------------------------------------------------------- RTSTRUCT

def raster_contours(rt, files: list[Path]) -> dict[int, dict[str, np.ndarray]]:
    """ROI number -> {image SOP instance UID: mask} by matplotlib's Path (pixel centres inside any contour),
    with every contour point checked to lie on its image's plane (0.01 mm)."""
    import pydicom
    from matplotlib.path import Path as MplPath

    images = {}
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID) or str(ds.file_meta.MediaStorageSOPInstanceUID)
        images[uid] = ds
    out: dict[int, dict[str, np.ndarray]] = {}
    for roi in rt.ROIContourSequence:
        masks: dict[str, np.ndarray] = {}
        for c in getattr(roi, "ContourSequence", []):
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            uid = str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
            im = images[uid]
            iop = np.array(im.ImageOrientationPatient, float)
            ipp = np.array(im.ImagePositionPatient, float)
            dr, dc = (float(v) for v in im.PixelSpacing)
            pts = np.array(c.ContourData, float).reshape(-1, 3)
            assert len(pts) == int(c.NumberOfContourPoints)
            normal = np.cross(iop[:3], iop[3:])
            assert np.abs((pts - ipp) @ normal).max() <= 0.01  # on the image's plane
            col = (pts - ipp) @ iop[:3] / dc
            row = (pts - ipp) @ iop[3:] / dr
            rr, cc = np.mgrid[0:int(im.Rows), 0:int(im.Columns)]
            inside = MplPath(np.stack([col, row], 1)).contains_points(np.stack([cc.ravel(), rr.ravel()], 1))
            mask = masks.setdefault(uid, np.zeros((int(im.Rows), int(im.Columns)), bool))
            mask |= inside.reshape(mask.shape)
        out[int(roi.ReferencedROINumber)] = masks
    return out


def labels_on_image(labels: np.ndarray, affine_ras: np.ndarray, image) -> np.ndarray:
    """labels.nii.gz sampled (nearest voxel) at an image's pixel centres: (rows, cols)."""
    iop = np.array(image.ImageOrientationPatient, float)
    ipp = np.array(image.ImagePositionPatient, float)
    dr, dc = (float(v) for v in image.PixelSpacing)
    rr, cc = np.mgrid[0:int(image.Rows), 0:int(image.Columns)]
    lps = ipp + cc[..., None] * dc * iop[:3] + rr[..., None] * dr * iop[3:]
    inv = np.linalg.inv(RAS_TO_LPS @ affine_ras)
    ijk = np.rint(lps @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((ijk >= 0) & (ijk < labels.shape), axis=-1)
    out = np.zeros(rr.shape, np.uint8)
    out[ok] = labels[ijk[ok][:, 0], ijk[ok][:, 1], ijk[ok][:, 2]]
    return out


def agreement(rt, files, labels, affine) -> dict[int, tuple[int, int]]:
    """ROI -> (voxels that differ, voxels labelled), over every image of the series."""
    import pydicom

    masks = raster_contours(rt, files)
    out = {}
    for label in (1, 2):
        wrong = total = 0
        for f in files:
            im = pydicom.dcmread(str(f), stop_before_pixels=True)
            uid = str(im.SOPInstanceUID) or str(im.file_meta.MediaStorageSOPInstanceUID)
            truth = labels_on_image(labels, affine, im) == label
            got = masks[label].get(uid, np.zeros_like(truth))
            wrong += int((got ^ truth).sum())
            total += int(truth.sum())
        out[label] = (wrong, total)
    return out


@pytest.mark.slow
def test_rtstruct_contours_lie_on_the_ct_slices_and_rasterise_to_the_labels(axial):
    import pydicom

    root, case, labels = axial
    rt = strict_read(root / "out" / "rtstruct.dcm")
    assert rt.Modality == "RTSTRUCT" and rt.ApprovalStatus == "UNAPPROVED"
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["Pancreas", "Pancreatic tumor"]
    assert [o.RTROIInterpretedType for o in rt.RTROIObservationsSequence] == ["ORGAN", ""]
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    ct = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in case.dicom_files]
    assert frame.FrameOfReferenceUID == ct[0].FrameOfReferenceUID and series.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == {d.SOPInstanceUID for d in ct}
    for label, (wrong, total) in agreement(rt, case.dicom_files, labels, case.affine_ras).items():
        assert total > 0 and 1 - wrong / total >= 0.98, (label, wrong, total)
        assert wrong == 0  # staircase contours through pixel corners: exact on the acquired grid

    # the hole slice: lesion A (one keyholed contour, its hole empty) and lesion B, two contours on one image
    k = HOLE_SLICE
    origin = (RAS_TO_LPS @ case.affine_ras @ np.array([0, 0, k, 1.0]))[:3]  # grid slice k's first voxel, LPS
    uid = next(d.SOPInstanceUID for d in ct if np.abs(np.array(d.ImagePositionPatient, float) - origin).max() < 0.01)
    lesion = next(r for r in rt.ROIContourSequence if r.ReferencedROINumber == 2)
    on_slice = [c for c in lesion.ContourSequence if c.ContourImageSequence[0].ReferencedSOPInstanceUID == uid]
    assert len(on_slice) == 2
    mask = raster_contours(rt, case.dicom_files)[2][uid]
    assert mask.T[11:13, 13:15].sum() == 0 and mask.T[8:16, 10:18].sum() == 64 - 4 and mask.T[20:24, 12:16].all()
    pancreas = raster_contours(rt, case.dicom_files)[1][uid]
    assert pancreas.T[11:13, 13:15].all()  # the pancreas island inside the lesion's hole


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tilted", "oblique"])
def test_tilted_and_oblique_series_reference_the_acquired_images(tmp_path, vol, kind):
    """A gantry-tilted series is resampled for the model; the RTSTRUCT's contours lie on the acquired (tilted)
    images and reference them, the SR's coordinates are patient coordinates of the series' frame of reference."""
    import highdicom as hd

    planes = tilted_planes(vol, n=12, step_mm=3.0, tilt_deg=20.0) if kind == "tilted" else oblique_planes(vol, 12, 3.0)
    write_series(tmp_path / "ct", vol, planes)
    case, labels = write_case(tmp_path / "ct", tmp_path / "out", lambda shape: np.pad(
        constructed_labels((32, 32, 16))[:, :, 1:13], [(0, s - n) for s, n in zip(shape, (32, 32, 12), strict=True)]))
    assert bool(case.image.meta["dicom_resampled"]) == (kind == "tilted")
    rt = strict_read(tmp_path / "out" / "rtstruct.dcm")
    for label, (wrong, total) in agreement(rt, case.dicom_files, labels, case.affine_ras).items():
        assert total > 0 and 1 - wrong / total >= 0.98, (kind, label, wrong, total)
    referenced = {str(c.ContourImageSequence[0].ReferencedSOPInstanceUID) for r in rt.ROIContourSequence
                  for c in r.ContourSequence}
    assert referenced <= {str(strict_read(f).SOPInstanceUID) for f in case.dicom_files}
    report = json.loads((tmp_path / "out" / "report.json").read_text())["readout"]
    ds = strict_read(tmp_path / "out" / "measurements-sr.dcm")
    largest = sr_groups(ds)["Pancreatic lesion component 1 (largest)"]["Long axis"][0]
    scoord = next(i for i in largest.ContentSequence if i.ValueType == "SCOORD3D")
    assert scoord.ReferencedFrameOfReferenceUID == strict_read(case.dicom_files[0]).FrameOfReferenceUID
    np.testing.assert_allclose(np.array(scoord.GraphicData, float).reshape(2, 3),
                               np.array(report["lesion"]["largest"]["longest_axial_diameter"]["endpoints_ras"])
                               * [-1, -1, 1], atol=0.01)
    assert hd.sr.srread(str(tmp_path / "out" / "measurements-sr.dcm")).content.get_volumetric_roi_measurement_groups()
    assert assert_lines_on_acquired_images(ds, report, case.dicom_files) == 4  # on the acquired (tilted) image


@pytest.mark.slow
def test_deidentified_series_get_sr_and_rtstruct_referencing_meta_uids(tmp_path, vol):
    import pydicom

    write_series(tmp_path / "anon", vol, axial_planes(vol, np.arange(8) * 3.0), edit=deidentify)
    case, _ = write_case(tmp_path / "anon", tmp_path / "out", lambda s: constructed_labels((32, 32, 16))[:, :, 2:10])
    meta = {str(pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
            for f in case.dicom_files}
    rt = strict_read(tmp_path / "out" / "rtstruct.dcm")
    series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert {str(i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence} == meta
    assert rt.StudyInstanceUID.startswith("2.25.") and rt.PatientName == ""
    sr = strict_read(tmp_path / "out" / "measurements-sr.dcm")
    seg = strict_read(tmp_path / "out" / "segmentation.dcm")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == rt.StudyInstanceUID
    library = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert meta <= library


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dciodvfy_finds_no_errors(axial):
    root = axial[0] / "out"
    for name in ("measurements-sr.dcm", "rtstruct.dcm", "segmentation.dcm"):
        proc = subprocess.run(["dciodvfy", str(root / name)], capture_output=True, text=True, timeout=120)
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [ln for ln in lines if ln.startswith("Error")]
        assert not errors, (name, errors[:5])
        # the only warnings allowed: the local coding scheme of the concepts DICOM has no code for
        assert all("99PDINTS" in ln for ln in lines if ln.startswith("Warning")), (name, lines[:5])


@pytest.mark.slow
def test_partial_success_a_series_without_seg_fails_sr_and_rtstruct_before_inference_and_keeps_the_rest(tmp_path,
                                                                                                       vol):
    """Images of two studies in one series: no SEG, SR or RTSTRUCT can reference them. Known right after reading
    (each fails with one line; the NIfTI is still planned); an SR whose SEG was not written fails by itself."""
    from dicom_factory import new_ids
    from PancreasDiNTSLib.core.formats import parse_formats
    from PancreasDiNTSLib.inference.pipeline import CaseOptions, check_outputs
    from PancreasDiNTSLib.io.dicom_sr import DicomSrError
    from PancreasDiNTSLib.io.images import read_image
    from PancreasDiNTSLib.io.writers import write_dicom_sr

    ids = [new_ids(), new_ids()]

    def two_studies(ds, k):
        ds.StudyInstanceUID = ids[k % 2].study

    write_series(tmp_path / "s", vol, axial_planes(vol, np.arange(6) * 3.0), ids=ids[0], edit=two_studies)
    case = read_image(tmp_path / "s")
    formats = parse_formats("nifti,dicom-sr,rtstruct")
    assert formats == ("nifti", "dicom-seg", "dicom-sr", "rtstruct")
    plan = check_outputs(case, CaseOptions(formats=formats), None, ("tiny", "1"))
    assert plan.formats == ["nifti"] and set(plan.failed) == {"dicom-seg", "dicom-sr", "rtstruct"}
    assert plan.failed["dicom-sr"] == "it needs dicom-seg, which cannot be written"
    assert "StudyInstanceUID" in plan.failed["rtstruct"] and all("\n" not in v for v in plan.failed.values())
    with pytest.raises(DicomSrError, match="DICOM SEG its measurements reference was not written"):
        write_dicom_sr(tmp_path / "sr.dcm", None, {"segments": {}}, {}, case, "tiny", "1")
    assert not (tmp_path / "sr.dcm").exists()


# ------------------------------------------------------------------------------------------------- contours

def test_contours_rasterise_exactly_and_enclose_the_pixel_area():
    """Random masks (holes, islands in holes, diagonal touches): the keyholed pixel-edge contours, filled by
    matplotlib, give back every pixel; their areas sum to the pixel count."""
    from matplotlib.path import Path as MplPath
    from PancreasDiNTSLib.io.contours import signed_area, slice_contours

    rng = np.random.default_rng(11)
    masks = [rng.random((rng.integers(2, 20), rng.integers(2, 20))) < rng.uniform(0.2, 0.8) for _ in range(150)]
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8], ring[3:6, 3:6], ring[4, 4] = True, False, True  # an island inside a hole
    diagonal = np.eye(4, dtype=bool)
    masks += [ring, diagonal]
    for m in masks:
        contours = slice_contours(m)
        rr, cc = np.mgrid[0:m.shape[0], 0:m.shape[1]]
        centres = np.stack([cc.ravel() + 0.5, rr.ravel() + 0.5], 1)
        got = np.zeros(m.shape, bool)
        for c in contours:
            got |= MplPath(np.asarray(c, float)).contains_points(centres).reshape(m.shape)
        np.testing.assert_array_equal(got, m)
        assert sum(-signed_area(c) for c in contours) == pytest.approx(float(m.sum()))
    assert len(slice_contours(diagonal)) == 1 and len(slice_contours(ring)) == 2


# ------------------------------------------------------------------------------------------------------ CLI

@pytest.mark.subprocess
def test_cli_writes_seg_sr_and_rtstruct_and_refuses_non_dicom(tmp_path, vol, tiny_bundle, capsys):
    """--format dicom-sr,rtstruct through the real CLI: the SEG the SR references is written too, every SR
    volume equals report.json, the RTSTRUCT agrees with labels.nii.gz; a NIfTI input is refused (exit 2)
    before any inference, alone or next to a DICOM series."""
    import nibabel as nib
    from PancreasDiNTSLib.cli import main

    folder = tmp_path / "ct"
    write_series(folder, vol, axial_planes(vol, np.arange(16) * 3.0))
    out = tmp_path / "out"
    code = main(["segment", str(folder), "-o", str(out), "--model", str(tiny_bundle), "--device", "cpu",
                 "--progress", "none", "--format", "nifti,dicom-sr,rtstruct"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    case_dir = out / "ct"
    report = json.loads((case_dir / "report.json").read_text())
    assert set(report["outputs"]) >= {"labels.nii.gz", "segmentation.dcm", "measurements-sr.dcm", "rtstruct.dcm"}
    ds = strict_read(case_dir / "measurements-sr.dcm")
    groups = sr_groups(ds)
    for key, name in (("pancreas", "Pancreas"), ("pancreatic_tumor", "Pancreatic tumor")):
        assert num(groups[name]["Volume"][0]) == report["readout"]["segments"][key]["volume_ml"]  # 0 mL too
    tracking = report["readout"]["tracking"]  # issue 34: recorded per finding, derived from the series UID
    assert tracking["case_key"] == f"dicom-series:{strict_read(next(folder.iterdir())).SeriesInstanceUID}"
    assert tracking_pairs(ds) >= {(e["identifier"], e["uid"]) for e in tracking["segments"].values()}
    img = nib.load(str(case_dir / "labels.nii.gz"))
    labels = np.asarray(img.dataobj)
    rt = strict_read(case_dir / "rtstruct.dcm")
    files = sorted(p for p in folder.iterdir())
    for label, (wrong, total) in agreement(rt, files, labels, img.affine).items():
        assert wrong <= 0.02 * max(total, 1), (label, wrong, total)

    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol.data, vol.affine_ras), str(nifti))
    for inputs in ([nifti], [folder, nifti]):
        out2 = tmp_path / f"refused{len(inputs)}"
        code = main(["segment", *map(str, inputs), "-o", str(out2), "--model", str(tiny_bundle), "--device", "cpu",
                     "--progress", "none", "--format", "rtstruct,dicom-sr"])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "ct.nii.gz" in ln]
        assert code == 2 and len(lines) == 1 and "not a DICOM series" in lines[0], err[-1500:]
        assert not out2.exists() or not any(out2.iterdir())
