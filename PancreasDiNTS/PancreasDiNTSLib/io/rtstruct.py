"""RT Structure Set (RTSTRUCT) of the segmentation for radiotherapy planning systems, built with pydicom.

Why not rt-utils: it reads every file of the folder itself (SOP Instance UIDs from the datasets, so de-identified
series lose their references), places every slice with one affine from the first image (wrong for gantry-tilted
or non-uniformly spaced series) and traces contours through boundary pixel centres (each structure shrinks by half
a pixel). highdicom has no RTSTRUCT. So the dataset is written with pydicom from the same cleaned source headers
as the DICOM SEG (io.dicom_seg.prepare_sources: UIDs from the file meta, absent attributes empty, strings fit
their VR) and the same label sampling (io.dicom_seg.frames_on_sources: each acquired image's own pixel grid).

Contours (io.contours): one ROI per segment; on every acquired CT image, one CLOSED_PLANAR contour per connected
component, holes joined by the keyhole technique (PS3.3 C.8.8.6.3), points on the pixels' edges in that image's
plane (its ImagePositionPatient, ImageOrientationPatient and PixelSpacing), each contour referencing its image's
SOP Instance. Implicit VR Little Endian, so a long Contour Data is never cut at 64 KiB. The structure set is
UNAPPROVED (Approval module): a planner reviews it before use. The lesion ROI has no interpreted type (not a GTV:
the label covers masses and cysts), the pancreas is an ORGAN.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import atomic_path
from PancreasDiNTSLib.core.errors import InputError, first_line
from PancreasDiNTSLib.core.terminology import SEGMENTS
from PancreasDiNTSLib.io.contours import slice_contours
from PancreasDiNTSLib.io.dicom_seg import (
    SegSources,
    clean_text,
    encode,
    frames_on_sources,
    prepare_sources,
    trial_frames,
)

RT_STRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_MANAGEMENT = "1.2.840.10008.3.1.2.3.2"  # the SOP class an RT Referenced Study item names
INTERPRETED_TYPE = {1: "ORGAN", 2: ""}  # lesion: not interpreted (a GTV is the physician's call)
# Patient and study attributes copied from the (cleaned) CT images.
COPIED = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
          "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
          "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence")  # as SEG, SR keep


class DicomRtError(InputError):
    """An RT structure set cannot be made for this series (one line; the other outputs are unaffected)."""


def _ds(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def contour_points(ring: Sequence[tuple[int, int]], image: Any) -> list[str]:
    """Corner coordinates (x = column, y = row, pixel-corner units) -> flat LPS Contour Data on ``image``'s plane."""
    iop = np.array([float(v) for v in image.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
    ipp = np.array([float(v) for v in image.ImagePositionPatient])
    xy = np.asarray(ring, dtype=np.float64) - 0.5  # corner units -> pixel index units (centre of pixel 0 = 0)
    pts = ipp + xy[:, :1] * col_spacing * iop[:3] + xy[:, 1:] * row_spacing * iop[3:]
    return [_ds(v) for v in pts.ravel()]


def _image_ref(image: Any):
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return ref


def _roi_contours(label: int, frames: np.ndarray, images: Sequence[Any]) -> list[Any]:
    from pydicom.dataset import Dataset

    items: list[Any] = []
    for k, image in enumerate(images):
        for ring in slice_contours(frames[k] == label):
            item = Dataset()
            item.ContourImageSequence = [_image_ref(image)]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(ring)
            item.ContourNumber = len(items) + 1
            item.ContourData = contour_points(ring, image)
            items.append(item)
    return items


def _header(sources: SegSources, model_name: str, model_version: str) -> Any:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ImplicitVRLittleEndian, generate_uid

    first = sources.datasets[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RT_STRUCT_STORAGE)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    for key in COPIED:
        if key in first:
            setattr(ds, key, first[key].value)
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCT_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    try:
        number = int(first.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    ds.SeriesNumber = (number % 100000) + 2000
    ds.SeriesDescription = "Pancreas DiNTS structures (research, unapproved)"
    ds.OperatorsName = ""
    ds.Manufacturer = "PancreasDiNTS"
    ds.ManufacturerModelName = clean_text(model_name, "LO") or "unknown"
    ds.SoftwareVersions = clean_text(f"{__version__} / model {model_version}", "LO")
    ds.StructureSetLabel = "PancreasDiNTS"
    ds.StructureSetName = clean_text(f"PancreasDiNTS {model_name}", "LO")
    ds.StructureSetDescription = "Automatic contours of a research model; not for clinical use without review"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.InstanceNumber = 1
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _referenced_frame(sources: SegSources) -> Any:
    from pydicom.dataset import Dataset

    first = sources.datasets[0]
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(ds) for ds in sources.datasets]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_MANAGEMENT
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def build_structure_set(sources: SegSources, frames: np.ndarray, model_name: str, model_version: str) -> Any:
    """The RTSTRUCT dataset: one ROI per segment with its contours on the source images (frames: N, rows, cols)."""
    from pydicom.dataset import Dataset

    ds = _header(sources, model_name, model_version)
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(sources)]
    rois, contours, observations = [], [], []
    description = clean_text(f"PancreasDiNTS {__version__}, model {model_name} {model_version}", "LO")
    for seg in SEGMENTS:
        roi = Dataset()
        roi.ROINumber = seg.label
        roi.ReferencedFrameOfReferenceUID = sources.datasets[0].FrameOfReferenceUID
        roi.ROIName = clean_text(seg.name, "LO")
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = description
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = seg.label
        item.ROIDisplayColor = list(seg.color)
        found = _roi_contours(seg.label, frames, sources.datasets)
        if found:
            item.ContourSequence = found
        contours.append(item)
        obs = Dataset()
        obs.ObservationNumber = seg.label
        obs.ReferencedROINumber = seg.label
        obs.RTROIInterpretedType = INTERPRETED_TYPE.get(seg.label, "")
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    return ds




def check_preconditions(files: Sequence[Path], model_name: str, model_version: str) -> list[str]:
    """Build and encode an RTSTRUCT of this series with a dummy label map: notes, or DicomRtError (one line)."""
    try:
        sources = prepare_sources(files)
        frames = trial_frames(sources)
        encode(build_structure_set(sources, frames, model_name, model_version))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; the user gets one line
        where = Path(files[0]).parent if files else "the input"
        raise DicomRtError(f"{where}: an RT structure set cannot be made for this series "
                           f"({first_line(exc)}); leave rtstruct out of --format") from None
    return [n.replace("DICOM SEG", "RTSTRUCT") for n in sources.notes]


def write(dest: Path, labels: np.ndarray, affine_ras: np.ndarray, files: Sequence[Path], model_name: str,
          model_version: str) -> list[str]:
    """Write the RTSTRUCT of ``labels`` (on the grid ``affine_ras``) with contours on ``files``' planes."""
    sources = prepare_sources(files)
    frames = frames_on_sources(labels, affine_ras, sources.datasets)
    data = encode(build_structure_set(sources, frames, model_name, model_version))
    with atomic_path(Path(dest)) as tmp:
        Path(tmp).write_bytes(data)
    return sources.notes
