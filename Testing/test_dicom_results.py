"""Issue 34: results every viewer shows — the report page as a DICOM Encapsulated PDF, key images, the FHIR
Bundle — written through the pipeline's output registry from one constructed case (a two-component lesion cut
into the real example CT, dicom_factory), then read back by independent readers: pydicom, highdicom, dcmtk
(dcm2pdf, dcmj2pnm, dsrdump), dicom3tools' dciodvfy, fhir.resources. One CLI run with the tiny model checks the
wiring and the FHIR Bundle of a NIfTI input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import Volume, axial_planes, load_crop, write_series
from test_dicom_sr_rtstruct import constructed_labels, probabilities, strict_read

FORMATS = ("dicom-seg", "dicom-sr", "report-pdf", "dicom-pdf", "key-images", "fhir")
MODEL = {"name": "tiny", "version": "1", "weights_md5": "0123456789abcdef0123456789abcdef",
         "arch_md5": "fedcba9876543210fedcba9876543210"}


def values(value) -> list:
    """A DICOM multi-valued attribute as a list (pydicom gives one value as itself)."""
    return [str(v) for v in value] if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(
        value, str) else [str(value)]


def needs(tool: str):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed (apt: dcmtk, dicom3tools)")


@pytest.fixture(scope="module")
def vol():
    from support import EXAMPLE_CT, require

    full = load_crop(require(EXAMPLE_CT))
    affine = full.affine_ras.copy()
    affine[:, 3] = full.affine_ras @ np.array([16, 16, 10, 1.0])
    return Volume(full.data[16:48, 16:48, 10:26].copy(), affine)


def write_case(folder: Path, out: Path, labels_of=constructed_labels, formats=FORMATS):
    """The formats through the output registry (as the pipeline writes them) and report.json."""
    from PancreasDiNTSLib.core.tracking import case_tracking
    from PancreasDiNTSLib.inference.pipeline import OUTPUTS, CaseData, input_case_key
    from PancreasDiNTSLib.io.images import read_image
    from PancreasDiNTSLib.io.writers import write_report
    from PancreasDiNTSLib.readout.combined import case_readout

    case = read_image(folder)
    labels = labels_of(case.shape)
    readout = case_readout(labels, case.affine_ras, probabilities=probabilities(labels))
    readout["tracking"] = case_tracking(input_case_key(case), readout)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out / "report.json", {"case": case.name, "readout": readout, "model": MODEL})
    data = CaseData(case, labels, "tiny", "1", readout=readout, model=MODEL)
    for fmt in formats:
        spec = OUTPUTS[fmt]
        if spec.precheck is not None:
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


# --------------------------------------------------------------------------------------------- encapsulated PDF

@pytest.mark.slow
def test_pdf_is_in_the_study_references_the_ct_and_keeps_the_title(axial):
    from PancreasDiNTSLib.readout.page import PAGE_TITLE

    root, case, _ = axial
    ds = strict_read(root / "out" / "report-pdf.dcm")
    ct = [strict_read(f) for f in case.dicom_files]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and ds.Modality == "DOC"
    assert ds.StudyInstanceUID == ct[0].StudyInstanceUID and ds.PatientID == ct[0].PatientID
    assert ds.SeriesInstanceUID not in {c.SeriesInstanceUID for c in ct}
    assert {str(i.ReferencedSOPInstanceUID) for i in ds.SourceInstanceSequence} == {str(c.SOPInstanceUID) for c in ct}
    assert ds.DocumentTitle == PAGE_TITLE and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert "not for clinical use" in ds.SeriesDescription
    equipment = ds.ContributingEquipmentSequence[0]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102" and "tiny" in equipment.ManufacturerModelName
    pdf = (root / "out" / "report.pdf").read_bytes()
    assert ds.EncapsulatedDocumentLength == len(pdf) and bytes(ds.EncapsulatedDocument)[:len(pdf)] == pdf


@pytest.mark.slow
@needs("dcm2pdf")
def test_dcm2pdf_gives_back_report_pdf_byte_for_byte(axial, tmp_path):
    root = axial[0]
    subprocess.run(["dcm2pdf", str(root / "out" / "report-pdf.dcm"), str(tmp_path / "back.pdf")], check=True,
                   capture_output=True, timeout=60)
    assert (tmp_path / "back.pdf").read_bytes() == (root / "out" / "report.pdf").read_bytes()



@pytest.mark.slow
@needs("dcm2pdf")
def test_an_odd_length_pdf_is_padded_and_dcm2pdf_still_gives_it_back(axial, tmp_path):
    from PancreasDiNTSLib.io.dicom_pdf import build
    from PancreasDiNTSLib.io.dicom_seg import prepare_sources

    pdf = b"%PDF-1.4\n% odd length\n%%EOF\n\n\n\n\n\n\n\n\n\n\n\n\n"[:29]
    assert len(pdf) % 2 == 1
    build(prepare_sources(axial[1].dicom_files).datasets, pdf, "t", "tiny", "1").save_as(
        str(tmp_path / "odd.dcm"), enforce_file_format=True)
    subprocess.run(["dcm2pdf", str(tmp_path / "odd.dcm"), str(tmp_path / "odd.pdf")], check=True, timeout=60)
    assert (tmp_path / "odd.pdf").read_bytes() == pdf


@pytest.mark.slow
@needs("pdftotext")
def test_the_encapsulated_page_says_not_for_clinical_use(axial, tmp_path):
    import pydicom

    ds = pydicom.dcmread(str(axial[0] / "out" / "report-pdf.dcm"))
    (tmp_path / "page.pdf").write_bytes(bytes(ds.EncapsulatedDocument)[:int(ds.EncapsulatedDocumentLength)])
    text = subprocess.run(["pdftotext", str(tmp_path / "page.pdf"), "-"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert "Not for clinical use" in text and "PancreasDiNTS case report" in text


# ------------------------------------------------------------------------------------------------- key images

def window(hu: np.ndarray) -> np.ndarray:
    """The documented pancreas window (level 50, width 350 HU) -> 0..255."""
    return np.clip((hu + 125.0) / 350.0 * 255.0, 0, 255).astype(np.uint8)


def body_offset(frame: np.ndarray, gray: np.ndarray, zoom: int) -> int:
    """The row where the enlarged CT image starts in a key-image frame (below the text band): the offset at
    which the frame's pixel centres agree best with the windowed CT."""
    rows, cols = gray.shape
    best = (-1.0, -1)
    for o in range(0, frame.shape[0] - rows * zoom + 1):
        sample = frame[o + zoom // 2: o + rows * zoom: zoom, zoom // 2: cols * zoom: zoom, 0]
        agree = float((np.abs(sample.astype(int) - gray) <= 1).mean())
        best = max(best, (agree, o))
    assert best[0] > 0.8, best
    return best[1]


@pytest.mark.slow
def test_key_images_show_each_lesion_with_its_line_on_the_lesion(axial):
    """One frame per lesion, on the CT image the long axis lies on; the burned-in yellow line lies on the lesion
    (labels sampled on that image) and is as long as the reported diameter; AI marking in the attributes."""
    import pydicom

    root, case, labels = axial
    readout = json.loads((root / "out" / "report.json").read_text())["readout"]
    ds = strict_read(root / "out" / "key-images.dcm")
    ct = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID): f for f in case.dicom_files}
    first = pydicom.dcmread(str(case.dicom_files[0]), stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.4" and ds.StudyInstanceUID == first.StudyInstanceUID
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "YES"
    assert "AI" in ds.SeriesDescription and "not for clinical use" in ds.SeriesDescription
    assert ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    comps = readout["lesion"]["components"]
    assert int(ds.NumberOfFrames) == len(comps) == 2
    assert values(ds.FrameLabelVector) == [f"Lesion {c['rank']}" for c in comps]
    assert {str(r.ReferencedSOPInstanceUID) for r in ds.SourceImageSequence} <= set(ct)  # images of the series
    check_lines_on_lesions(ds, readout, case, labels)


def check_lines_on_lesions(ds, readout, case, labels) -> None:
    """Each frame shows the CT image whose plane holds its lesion's long axis (0.05 mm); the burned-in yellow line
    lies on the lesion (labels sampled on that image by the test's own sampler, dilated by one pixel: >= 95 % of
    its pixels) and is as long as the reported diameter (within two pixels)."""
    import pydicom
    from PancreasDiNTSLib.io.dicom import slice_hu
    from scipy.ndimage import binary_dilation
    from test_dicom_sr_rtstruct import labels_on_image

    ct = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID): f for f in case.dicom_files}
    first = pydicom.dcmread(str(case.dicom_files[0]), stop_before_pixels=True)
    zoom = round(float(first.PixelSpacing[0]) / float(ds.PixelSpacing[0]))
    comps = readout["lesion"]["components"]
    for comp, ref, frame in zip(comps, ds.SourceImageSequence, ds.pixel_array.reshape(len(comps), *ds.pixel_array.shape[-3:]),
                                strict=True):
        path = ct[str(ref.ReferencedSOPInstanceUID)]
        image = pydicom.dcmread(str(path), stop_before_pixels=True)
        iop = np.array(image.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        ends = np.array(comp["longest_axial_diameter"]["endpoints_ras"]) * [-1, -1, 1]
        assert np.abs((ends - np.array(image.ImagePositionPatient, float)) @ normal).max() < 0.05
        offset = body_offset(frame, window(slice_hu(path)), zoom)
        yellow = (frame[..., 0] > 200) & (frame[..., 1] > 200) & (frame[..., 2] < 80)
        rr, cc = np.nonzero(yellow)
        assert len(rr) > 20 and rr.min() >= offset
        lesion = binary_dilation(labels_on_image(labels, case.affine_ras, image) == 2)
        on = lesion[(rr - offset) // zoom, cc // zoom]
        assert on.mean() >= 0.95, on.mean()
        extent = np.hypot(np.ptp(rr), np.ptp(cc)) * float(ds.PixelSpacing[0])
        assert abs(extent - comp["longest_axial_diameter"]["mm"]) < 2 * float(first.PixelSpacing[0])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tilted", "oblique"])
def test_key_images_of_tilted_and_oblique_series_show_the_acquired_image(tmp_path, vol, kind):
    """A gantry-tilted (resampled for the model) and an oblique series: each key image is the acquired image
    holding the long axis, with the line on the lesion."""
    from dicom_factory import tilted_planes
    from test_dicom_sr_rtstruct import oblique_planes

    planes = tilted_planes(vol, n=12, step_mm=3.0, tilt_deg=20.0) if kind == "tilted" else oblique_planes(vol, 12, 3.0)
    write_series(tmp_path / "ct", vol, planes)
    case, labels = write_case(tmp_path / "ct", tmp_path / "out", lambda shape: np.pad(
        constructed_labels((32, 32, 16))[:, :, 1:13], [(0, s - n) for s, n in zip(shape, (32, 32, 12), strict=True)]),
        formats=("key-images",))
    readout = json.loads((tmp_path / "out" / "report.json").read_text())["readout"]
    ds = strict_read(tmp_path / "out" / "key-images.dcm")
    assert int(ds.NumberOfFrames) == len(readout["lesion"]["components"]) == 2
    check_lines_on_lesions(ds, readout, case, labels)


@pytest.mark.slow
@needs("dcmj2pnm")
def test_dcmj2pnm_renders_every_key_image_frame(axial, tmp_path):
    from PIL import Image

    ds = strict_read(axial[0] / "out" / "key-images.dcm")
    subprocess.run(["dcmj2pnm", "--all-frames", "+on", str(axial[0] / "out" / "key-images.dcm"),
                    str(tmp_path / "key")], check=True, capture_output=True, timeout=120)
    for k, frame in enumerate(ds.pixel_array):
        png = np.asarray(Image.open(tmp_path / f"key.{k}.png").convert("RGB"))
        assert png.shape == frame.shape and np.array_equal(png, frame)


@pytest.mark.slow
@needs("dciodvfy")
def test_dciodvfy_finds_no_errors_in_the_pdf_and_key_images(axial):
    for name in ("report-pdf.dcm", "key-images.dcm"):
        proc = subprocess.run(["dciodvfy", str(axial[0] / "out" / name)], capture_output=True, text=True, timeout=120)
        lines = (proc.stdout + proc.stderr).splitlines()
        assert not [ln for ln in lines if ln.startswith("Error")], (name, lines[:8])
        assert not [ln for ln in lines if ln.startswith("Warning")], (name, lines[:8])


@pytest.mark.slow
def test_a_case_without_lesion_gets_one_key_image_of_the_gland(axial, tmp_path):
    root = axial[0]
    write_case(root / "ct", tmp_path / "out", lambda shape: np.where(constructed_labels(shape) == 1, 1, 0).astype(np.uint8),
               formats=("key-images",))
    ds = strict_read(tmp_path / "out" / "key-images.dcm")
    assert int(ds.NumberOfFrames) == 1 and values(ds.FrameLabelVector) == ["Pancreas"]
    frame = ds.pixel_array
    assert not ((frame[..., 0] > 200) & (frame[..., 1] > 200) & (frame[..., 2] < 80)).any()  # no line
    assert (np.abs(frame.astype(int) - [249, 180, 111]).max(axis=-1) == 0).sum() > 50  # the pancreas outline


# ------------------------------------------------------------------------------------------------------- FHIR

def fhir_values(bundle: dict) -> dict[tuple[str, str], list]:
    """(tracking UID or "", code) -> [value] of every Observation of a Bundle validated by fhir.resources (R4B
    models: FHIR R4 with changes that do not touch Bundle, DiagnosticReport or Observation)."""
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    out: dict[tuple[str, str], list] = {}
    for entry in bundle["entry"]:
        res = entry["resource"]
        assert entry["fullUrl"] == f"urn:uuid:{res['id']}"
        if res["resourceType"] != "Observation":
            continue
        uid = next((i["value"].removeprefix("urn:oid:") for i in res.get("identifier", [])
                    if i["type"]["coding"][0]["code"] == "112040"), "")
        code = res["code"]["coding"][0]["code"]
        if "valueQuantity" in res:
            q = res["valueQuantity"]
            assert q["system"] == "http://unitsofmeasure.org" and q["code"] == q["unit"] and q["code"] in ("mL", "mm", "1")
            value = q["value"]
        else:
            value = res.get("valueInteger", res.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code"))
        out.setdefault((uid, code), []).append(value)
    return out


def expected_fhir(readout: dict) -> dict[tuple[str, str], list]:
    """What report.json says each Observation holds (codes as in the SR)."""
    track = readout["tracking"]
    segs, conf = readout["segments"], readout["confidence"]["segments"]
    want: dict[tuple[str, str], list] = {}
    for sid, entry in track["segments"].items():
        want[(entry["uid"], "118565006")] = [segs[sid]["volume_ml"]]
        want[(entry["uid"], "CONF-MEAN")] = [conf[sid]["mean_confidence"]]
        want[(entry["uid"], "CONF-LOWBAND")] = [conf[sid]["low_confidence_band_ml"]]
        want[(entry["uid"], "125007")] = ["108369006" if sid == "pancreatic_tumor" else "15776009"]  # the finding type
    want[(track["segments"]["pancreatic_tumor"]["uid"], "LESION-COUNT")] = [readout["lesion"]["count"]]
    for comp, entry in zip(readout["lesion"]["components"], track["lesions"], strict=True):
        u = entry["uid"]
        want[(u, "118565006")] = [comp["volume_ml"]]
        want[(u, "103339001")] = [comp["longest_axial_diameter"]["mm"]]
        want[(u, "131189007")] = [comp["perpendicular_diameter"]["mm"]]
        want[(u, "L0JK")] = [comp["longest_3d_diameter"]["mm"]]
        want[(u, "GLAND-POS")] = [comp["location"]["fraction"]]
        want[(u, "GLAND-PART")] = [comp["location"]["part"].upper().replace("/", "-")]
        want[(u, "125007")] = ["108369006"]
        if comp["rank"] == 1:
            want[(u, "AJCC-SIZE")] = [f"SIZE-{readout['lesion']['size_category']['category']}"]
    want[("", "LESION-SCORE")] = [readout["confidence"]["lesion_score"]["value"]]
    return want


@pytest.mark.slow
def test_fhir_bundle_is_valid_r4_and_every_number_equals_report_json(axial, tmp_path):
    root, case, _ = axial
    readout = json.loads((root / "out" / "report.json").read_text())["readout"]
    bundle = json.loads((root / "out" / "fhir-bundle.json").read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    report = bundle["entry"][0]["resource"]
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["code"]["coding"][0]["code"] == "126000" and "not for clinical use" in report["conclusion"]
    study = strict_read(case.dicom_files[0]).StudyInstanceUID
    assert report["imagingStudy"] == [{"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid",
                                                                              "value": f"urn:oid:{study}"}}]
    refs = {e["fullUrl"] for e in bundle["entry"]}
    assert all(r["reference"] in refs for r in report["result"]) and len(report["result"]) == 2 + 2 + 1
    assert fhir_values(bundle) == expected_fhir(readout)
    # a rerun of the same case: the same resource ids
    write_case(root / "ct", tmp_path / "again", formats=("fhir",))
    again = json.loads((tmp_path / "again" / "fhir-bundle.json").read_text())
    assert [e["fullUrl"] for e in again["entry"]] == [e["fullUrl"] for e in bundle["entry"]]


@pytest.mark.slow
@needs("dsrdump")
def test_dsrdump_reads_the_sr_with_its_2d_lines_and_tracking_uids(axial):
    root = axial[0]
    readout = json.loads((root / "out" / "report.json").read_text())["readout"]
    text = subprocess.run(["dsrdump", "-Ec", str(root / "out" / "measurements-sr.dcm")], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert "SCOORD3D" in text and "SCOORD" in text.replace("SCOORD3D", "")
    for entry in readout["tracking"]["lesions"]:
        assert entry["uid"] in text
    assert f"{readout['lesion']['largest']['longest_axial_diameter']['mm']}" in text


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_writes_the_viewer_outputs_and_fhir_for_dicom_and_nifti(tmp_path, vol, tiny_bundle, capsys):
    """The real CLI with the tiny model: dicom-pdf brings report-pdf, key-images and fhir are written for a DICOM
    series, report.json records them and its tracking; a NIfTI input gets the FHIR Bundle (no study reference)
    and is refused key images (exit 2) before any inference."""
    import nibabel as nib
    from PancreasDiNTSLib.cli import main

    folder = tmp_path / "ct"
    write_series(folder, vol, axial_planes(vol, np.arange(16) * 3.0))
    out = tmp_path / "out"
    args = ["--model", str(tiny_bundle), "--device", "cpu", "--progress", "none"]
    code = main(["segment", str(folder), "-o", str(out), *args, "--format", "dicom-pdf,key-images,fhir"])
    assert code == 0, capsys.readouterr().err[-2000:]
    case_dir = out / "ct"
    report = json.loads((case_dir / "report.json").read_text())
    assert set(report["outputs"]) >= {"report.pdf", "report-pdf.dcm", "key-images.dcm", "fhir-bundle.json"}
    assert not report["outputs_failed"]
    readout = report["readout"]
    assert readout["tracking"]["case_key"] == f"dicom-series:{strict_read(next(folder.iterdir())).SeriesInstanceUID}"
    assert strict_read(case_dir / "report-pdf.dcm").EncapsulatedDocumentLength == (case_dir / "report.pdf").stat().st_size
    key = strict_read(case_dir / "key-images.dcm")
    assert int(key.NumberOfFrames) == max(1, len(readout["lesion"]["components"]))
    values = fhir_values(json.loads((case_dir / "fhir-bundle.json").read_text()))
    for sid, entry in readout["tracking"]["segments"].items():
        assert values[(entry["uid"], "118565006")] == [readout["segments"][sid]["volume_ml"]]

    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol.data, vol.affine_ras), str(nifti))
    code = main(["segment", str(nifti), "-o", str(tmp_path / "nii"), *args, "--format", "nifti,fhir"])
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((tmp_path / "nii" / "ct" / "report.json").read_text())
    bundle = json.loads((tmp_path / "nii" / "ct" / "fhir-bundle.json").read_text())
    assert "imagingStudy" not in bundle["entry"][0]["resource"]
    assert report["readout"]["tracking"]["case_key"].startswith("sha256:")
    values = fhir_values(bundle)
    for sid, entry in report["readout"]["tracking"]["segments"].items():
        assert values[(entry["uid"], "118565006")] == [report["readout"]["segments"][sid]["volume_ml"]]
    capsys.readouterr()
    code = main(["segment", str(nifti), "-o", str(tmp_path / "refused"), *args, "--format", "key-images"])
    err = capsys.readouterr().err
    assert code == 2 and "not a DICOM series" in err, err[-1500:]
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


@pytest.mark.slow
def test_orthanc_indexes_every_object_in_the_study_and_previews_the_key_images(axial, tmp_path):
    """Debian's Orthanc (Testing/orthanc_support): the CT, SEG, SR, PDF and key images land in one study; its
    preview renders each key-image frame as the file holds it; its /pdf gives report.pdf back."""
    import io

    import requests
    from orthanc_support import start_orthanc
    from PIL import Image

    root, case, _ = axial
    out = root / "out"
    orthanc = start_orthanc(tmp_path / "orthanc")
    try:
        objects = [out / n for n in ("segmentation.dcm", "measurements-sr.dcm", "report-pdf.dcm", "key-images.dcm")]
        studies = orthanc.upload([*case.dicom_files, *objects])
        study_uid = str(strict_read(case.dicom_files[0]).StudyInstanceUID)
        assert studies == {orthanc.study_id(study_uid)}
        modalities = sorted(s["00080060"]["Value"][0] for s in orthanc.series_of(study_uid))
        assert modalities == sorted(["CT", "SEG", "SR", "DOC", "OT"])
        ids = {p.name: orthanc.rest("POST", "/instances", p.read_bytes())["ID"] for p in objects}  # already there
        key = strict_read(out / "key-images.dcm").pixel_array
        for k, frame in enumerate(key):
            response = requests.get(f"{orthanc.url}/instances/{ids['key-images.dcm']}/frames/{k}/preview", timeout=60)
            response.raise_for_status()
            shown = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
            assert shown.shape == frame.shape and np.abs(shown.astype(int) - frame).max() <= 1
        response = requests.get(f"{orthanc.url}/instances/{ids['report-pdf.dcm']}/pdf", timeout=60)
        if response.status_code != 404:  # /pdf: Orthanc 1.10 and later
            response.raise_for_status()
            assert response.content == (out / "report.pdf").read_bytes()
    finally:
        orthanc.stop()


# ---------------------------------------------------------------------------------------------- LABELMAP SEG

@pytest.mark.slow
def test_labelmap_seg_holds_the_label_values_on_every_ct_image(axial, tmp_path):
    """--seg-type labelmap (highdicom's LABELMAP SEG, DICOM 2024): one frame per CT image whose pixels are the
    label values sampled on that image, read back by highdicom and pydicom."""
    import highdicom as hd
    import pydicom
    from PancreasDiNTSLib.inference.pipeline import OUTPUTS, CaseData
    from test_dicom_sr_rtstruct import labels_on_image

    _, case, labels = axial
    spec = OUTPUTS["dicom-seg"]
    spec.write(tmp_path / "seg.dcm", CaseData(case, labels, "tiny", "1", seg_type="labelmap"))
    ds = strict_read(tmp_path / "seg.dcm")
    assert ds.SegmentationType == "LABELMAP" and "labelmap" in ds.SeriesDescription
    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["Pancreas", "Pancreatic tumor"]
    images = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID): f for f in case.dicom_files}
    frames = ds.pixel_array
    shown = set()
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        image = pydicom.dcmread(str(images[uid]), stop_before_pixels=True)
        assert np.array_equal(frames[k], labels_on_image(labels, case.affine_ras, image))
        shown.add(uid)
    for uid in set(images) - shown:  # empty frames are omitted
        image = pydicom.dcmread(str(images[uid]), stop_before_pixels=True)
        assert not labels_on_image(labels, case.affine_ras, image).any()
    assert len(shown) == 12 and set(np.unique(frames)) == {0, 1, 2}


@pytest.mark.slow
def test_a_deidentified_series_gets_pdf_key_images_and_fhir_in_the_seg_study(tmp_path, vol):
    """UIDs emptied and patient/study attributes removed: the new objects share the study UID the SEG derives
    (the same on every run), reference the images by their file-meta UIDs, and the FHIR Bundle names that study."""
    import pydicom
    from test_dicom_sr_rtstruct import deidentify

    write_series(tmp_path / "anon", vol, axial_planes(vol, np.arange(16) * 3.0), edit=deidentify)
    case, _ = write_case(tmp_path / "anon", tmp_path / "out")
    seg = strict_read(tmp_path / "out" / "segmentation.dcm")
    pdf, key = strict_read(tmp_path / "out" / "report-pdf.dcm"), strict_read(tmp_path / "out" / "key-images.dcm")
    assert seg.StudyInstanceUID.startswith("2.25.") and pdf.StudyInstanceUID == key.StudyInstanceUID == seg.StudyInstanceUID
    meta = {str(pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
            for f in case.dicom_files}
    assert {str(i.ReferencedSOPInstanceUID) for i in pdf.SourceInstanceSequence} == meta
    assert {str(i.ReferencedSOPInstanceUID) for i in key.SourceImageSequence} <= meta
    bundle = json.loads((tmp_path / "out" / "fhir-bundle.json").read_text())
    assert bundle["entry"][0]["resource"]["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{seg.StudyInstanceUID}"
    patient_id = str(pydicom.dcmread(str(case.dicom_files[0]), stop_before_pixels=True).get("PatientID", ""))
    assert pdf.PatientName == "" and pdf.PatientID == patient_id
    assert bundle["entry"][0]["resource"].get("subject") == ({"identifier": {"value": patient_id}} if patient_id else None)
