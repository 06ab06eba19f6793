"""DICOM SEG for any CT series we read, de-identified ones included (io.writers.write_dicom_seg calls this).

The source headers are cleaned before highdicom sees them: SOPClassUID / SOPInstanceUID come from the file meta
when the dataset's are empty; Study/Series/FrameOfReference UIDs missing from every image are replaced by new
UIDs derived from the files' content (the same on every run; noted); absent patient/study attributes become
empty (type 2); every string is cleaned of control characters and cut to its VR's maximum length. The label
map is sampled on each source image's own pixel grid (nearest voxel), so a SEG of a resampled series (gantry
tilt, non-uniform spacing) still overlays the acquired images. :func:`check_preconditions` builds a SEG of
the series with a dummy label map before inference, so an unwritable SEG is known in seconds.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import atomic_path
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.core.request import SEG_TYPES
from PancreasDiNTSLib.core.terminology import SEGMENTS
from PancreasDiNTSLib.io.dicom import LPS_TO_RAS

# Maximum value lengths (characters) of the string VRs (PS3.5 6.2); PN: per component group.
VR_MAX = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
          "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64}
TEXT_VRS = {"LT", "ST", "UT"}  # may hold CR, LF, FF and TAB
# Type 2 attributes highdicom reads from the first source image (empty when absent).
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "AccessionNumber", "StudyID", "ReferringPhysicianName")


class DicomSegError(InputError):
    """A DICOM SEG cannot be made for this series (one line; the other outputs are unaffected)."""


@dataclass
class SegSources:
    """Cleaned source headers (no pixel data) in slice order, and notes on what was filled in."""

    datasets: list[Any]
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def clean_text(value: Any, vr: str = "LO", keep_escape: bool = False) -> str:
    """A string fit for ``vr``: control characters removed (CR/LF/FF/TAB kept in texts; ESC only with
    ``keep_escape``, for ISO 2022 character sets), backslash (the value separator) replaced, cut to the VR's
    maximum length."""
    text = str(value)
    allowed = ("\r\n\x0c\t" if vr in TEXT_VRS else "") + ("\x1b" if keep_escape else "")
    text = "".join(ch for ch in text if ch.isprintable() or ch in allowed)
    if vr not in TEXT_VRS and vr != "PN":
        text = text.replace("\\", "/")
    limit = VR_MAX.get(vr)
    return text[:limit].rstrip() if limit else text


def _clean_dataset_strings(ds: Any) -> int:
    """Clean the top-level text elements of ``ds`` in place (names, codes, dates, descriptions; never the
    geometry): control characters, over-long values; over-long decimal strings are re-formatted to 16
    characters. Returns how many elements were changed."""
    from pydicom.valuerep import DS

    changed = 0
    charset = ds.get("SpecificCharacterSet", "") or ""
    iso2022 = any("2022" in str(c) for c in (charset if isinstance(charset, (list, tuple)) else [charset]))
    for elem in list(ds):
        vr = str(elem.VR)
        if elem.value is None or elem.VM == 0 or vr in ("UI", "IS"):
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        if vr == "DS":
            if any(len(str(v)) > 16 for v in values):
                try:
                    fixed_ds = [DS(float(v), auto_format=True) for v in values]
                except (TypeError, ValueError, OverflowError):
                    continue
                elem.value = fixed_ds if elem.VM > 1 else fixed_ds[0]
                changed += 1
            continue
        if vr not in VR_MAX and vr not in TEXT_VRS:
            continue
        if vr == "PN":
            fixed = [_clean_pn(v, iso2022) for v in values]
        elif vr in ("DA", "TM", "DT", "AS"):
            fixed = [_clean_structured(v, vr) for v in values]
        else:
            fixed = [clean_text(v, vr, iso2022) for v in values]
        if [str(v) for v in values] != fixed:
            elem.value = fixed if elem.VM > 1 else fixed[0]
            changed += 1
    return changed


def _clean_pn(value: Any, keep_escape: bool = False) -> str:
    groups = str(value).split("=")
    return "=".join(clean_text(g, "PN", keep_escape) for g in groups[:3])


_PATTERNS = {
    "DA": re.compile(r"^\d{8}$"),
    "TM": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$"),
    "DT": re.compile(r"^\d{4,14}(\.\d{1,6})?([+-]\d{4})?$"),
    "DS": re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"),
    "IS": re.compile(r"^[+-]?\d+$"),
    "UI": re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$"),
    "AS": re.compile(r"^\d{3}[DWMY]$"),
}


def _clean_structured(value: Any, vr: str) -> str:
    """Dates, times, numbers, UIDs, ages: kept when valid, else emptied (never invented)."""
    text = str(value).strip()
    ok = bool(_PATTERNS[vr].match(text)) and len(text) <= VR_MAX[vr]
    return text if ok else ""


def _file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read(1 << 16)).hexdigest()


def _derived_uid(kind: str, digests: Sequence[str]) -> str:
    """A 2.25 UID (UUID form, PS3.5 B.2) derived from the files' content: the same on every run."""
    import uuid

    digest = hashlib.sha256("|".join([f"pancreas-dints {kind}", *digests]).encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest, version=5).int}"


def prepare_sources(files: Sequence[Path]) -> SegSources:
    """Read and clean the source headers of a series (files in slice order); DicomSegError if unusable."""
    import pydicom

    if not files:
        raise DicomSegError("DICOM SEG needs the DICOM input series; the case has no DICOM files")
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(str(f), stop_before_pixels=True, force=True))
        except Exception as exc:  # noqa: BLE001 - any reading problem is one line
            raise DicomSegError(f"{f}: cannot be read again for the DICOM SEG ({exc})") from None
    notes: list[str] = []
    digests = [_file_digest(Path(f)) for f in files]
    from_meta = generated = 0
    for ds, digest in zip(datasets, digests, strict=True):
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            value = _clean_structured(ds.get(key, "") or "", "UI")
            if not value:
                value = _clean_structured(getattr(meta, meta_key, "") or "", "UI") if meta is not None else ""
                if value:
                    from_meta += 1
                elif key == "SOPClassUID":
                    value = pydicom.uid.CTImageStorage
                    generated += 1
                else:
                    value = _derived_uid("SOPInstanceUID", [digest])
                    generated += 1
            setattr(ds, key, value)
    if from_meta:
        notes.append(f"DICOM SEG: {from_meta} empty SOP class/instance UIDs taken from the files' meta information")
    if generated:
        notes.append(f"DICOM SEG: {generated} SOP class/instance UIDs missing from dataset and file meta were "
                     "generated; the SEG references images by these new UIDs")
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {_clean_structured(ds.get(key, "") or "", "UI") for ds in datasets} - {""}
        if len(values) > 1:
            raise DicomSegError(f"{files[0].parent}: the images of the series have {len(values)} different {key}s; "
                                "a DICOM SEG references one series (re-export it)")
        value = values.pop() if values else _derived_uid(key, digests)
        if not values and not any(ds.get(key) for ds in datasets):
            notes.append(f"DICOM SEG: the input has no {key}; a new one was generated ({value})")
        for ds in datasets:
            setattr(ds, key, value)
    filled = 0
    for ds in datasets:
        for key in TYPE2:
            if key not in ds or ds[key].value is None:
                setattr(ds, key, "")
                filled += 1
        sex = str(ds.get("PatientSex", "") or "").upper()
        ds.PatientSex = sex if sex in ("M", "F", "O") else ""
        if not str(ds.get("Modality", "") or ""):
            ds.Modality = "CT"
        _clean_dataset_strings(ds)
    if filled:
        keys = sorted({k for k in TYPE2 if not any(str(ds.get(k, "") or "") for ds in datasets)})
        notes.append("DICOM SEG: patient/study attributes absent from the input left empty: " + ", ".join(keys))
    return SegSources(datasets, [Path(f) for f in files], notes)


def frames_on_sources(labels: np.ndarray, affine_ras: np.ndarray, sources: Sequence[Any]) -> np.ndarray:
    """The label map (X, Y, Z) sampled (nearest voxel) at every pixel of each source image: (N, rows, cols)."""
    labels = np.asarray(labels, dtype=np.uint8)
    inv = np.linalg.inv(LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64))
    out = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=np.uint8)
    shape = np.array(labels.shape)
    for k, ds in enumerate(sources):
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ps = [float(v) for v in ds.PixelSpacing]
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        rows, cols = int(ds.Rows), int(ds.Columns)
        origin = inv[:3, :3] @ ipp + inv[:3, 3]
        step_c = inv[:3, :3] @ (iop[:3] * ps[1])  # one column to the right
        step_r = inv[:3, :3] @ (iop[3:] * ps[0])  # one row down
        whole = np.round(origin)
        if (np.abs(step_c - [1, 0, 0]).max() < 1e-3 and np.abs(step_r - [0, 1, 0]).max() < 1e-3
                and np.abs(origin - whole).max() < 1e-3 and whole[0] == 0 and whole[1] == 0
                and 0 <= whole[2] < shape[2] and (cols, rows) == (shape[0], shape[1])):
            out[k] = labels[:, :, int(whole[2])].T  # the source image is a slice of the label grid
            continue
        r, c = np.mgrid[0:rows, 0:cols]
        ijk = origin[None, None, :] + c[..., None] * step_c + r[..., None] * step_r
        idx = np.rint(ijk).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < shape), axis=-1)
        frame = np.zeros((rows, cols), dtype=np.uint8)
        frame[inside] = labels[idx[inside][:, 0], idx[inside][:, 1], idx[inside][:, 2]]
        out[k] = frame
    return out




def labelmap_supported() -> bool:
    """Whether the installed highdicom writes the LABELMAP form of DICOM SEG (DICOM 2024, highdicom >= 0.24)."""
    import highdicom as hd

    return hasattr(hd.seg.SegmentationTypeValues, "LABELMAP")


def build_segmentation(sources: SegSources, frames: np.ndarray, model_name: str, model_version: str,
                       seg_type: str = "binary"):
    """The highdicom Segmentation, one segment per label: BINARY (one frame per segment and image, empty frames
    omitted) or LABELMAP (one frame per image holding the label values; read by OHIF 3.11)."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    name = clean_text(f"PancreasDiNTS {model_name}", "LO") or "PancreasDiNTS"
    algorithm = hd.AlgorithmIdentificationSequence(
        name=name,
        family=Code("123109", "DCM", "Artificial Intelligence"),
        version=clean_text(f"{__version__} / model {model_version}", "LO"),
    )
    descriptions = []
    for seg in SEGMENTS:
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=seg.label,
            segment_label=clean_text(seg.name, "LO"),
            segmented_property_category=Code(seg.category.value, seg.category.scheme, seg.category.meaning),
            segmented_property_type=Code(seg.type.value, seg.type.scheme, seg.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[Code(seg.region.value, seg.region.scheme, seg.region.meaning)] if seg.region.value
            else None,
            display_color=hd.color.CIELabColor.from_rgb(*seg.color) if hasattr(hd.color.CIELabColor, "from_rgb")
            else None,
        ))
    first = sources.datasets[0]
    try:
        number = int(first.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    return hd.seg.Segmentation(
        source_images=sources.datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues[seg_type.upper()],
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=(number % 100000) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="PancreasDiNTS",
        manufacturer_model_name=clean_text(model_name, "LO") or "unknown",
        software_versions=clean_text(__version__, "LO"),
        device_serial_number="0",
        series_description="Pancreas DiNTS segmentation" + (" (labelmap)" if seg_type == "labelmap" else ""),
        omit_empty_frames=bool(frames.any()),  # an empty result keeps its (empty) frames: still valid
    )


def encode(seg: Any) -> bytes:
    """A DICOM object (SEG, SR, RTSTRUCT) as file bytes (raises what pydicom raises for a value it cannot write)."""
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def trial_frames(sources: SegSources) -> np.ndarray:
    """A dummy label map on the series' images (one voxel of each label) for the trial objects built before
    inference."""
    first = sources.datasets[0]
    frames = np.zeros((len(sources.datasets), int(first.Rows), int(first.Columns)), dtype=np.uint8)
    frames[0, 0, 0], frames[-1, -1, -1] = 1, 2
    return frames


def check_preconditions(files: Sequence[Path], model_name: str, model_version: str) -> list[str]:
    """Build and encode a SEG of this series with a dummy label map: notes, or DicomSegError (one line)."""
    sources = prepare_sources(files)
    frames = trial_frames(sources)
    try:
        encode(build_segmentation(sources, frames, model_name, model_version))
    except DicomSegError:
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom raise many types; the user gets one line
        text = str(exc).strip().splitlines()
        raise DicomSegError(f"{sources.files[0].parent}: a DICOM SEG cannot be made for this series "
                            f"({type(exc).__name__}: {(text[0] if text else '')[:200]}); "
                            "leave dicom-seg out of --format") from None
    return sources.notes


def write(dest: Path, labels: np.ndarray, affine_ras: np.ndarray, files: Sequence[Path], model_name: str,
          model_version: str, seg_type: str = "binary") -> list[str]:
    """Write the SEG of ``labels`` (on the grid ``affine_ras``) referencing ``files``; returns the notes."""
    if seg_type not in SEG_TYPES:
        raise DicomSegError(f"--seg-type {seg_type}: choose {' or '.join(SEG_TYPES)}")
    if seg_type == "labelmap" and not labelmap_supported():
        raise DicomSegError("the installed highdicom cannot write a LABELMAP SEG (highdicom >= 0.24 can); "
                            "use --seg-type binary")
    sources = prepare_sources(files)
    frames = frames_on_sources(labels, affine_ras, sources.datasets)
    data = encode(build_segmentation(sources, frames, model_name, model_version, seg_type))
    with atomic_path(Path(dest)) as tmp:
        Path(tmp).write_bytes(data)
    return sources.notes

