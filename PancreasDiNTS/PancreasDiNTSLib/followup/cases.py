"""The two sides of a comparison: case folders written by ``segment``, read and checked before any work.

Refused with one line each (InputError): a folder without labels.nii.gz or report.json, a report without a
read-out, read-outs of different versions (``readout.schema``), a CT that cannot be found or does not match the
labels' grid, no pancreas on one side (a different body part, or a failed segmentation), and two DICOM
inputs of different patients (Patient ID).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, printable
from ..core.paths import OUTPUT_NAMES
from ..core.terminology import PANCREAS_LABEL
from . import grids

MIN_GLAND_VOXELS = 200
LABELS_NAME = OUTPUT_NAMES["nifti"]
REPORT_NAME = OUTPUT_NAMES["report"]


@dataclass
class Side:
    """One time point: its case folder, report, labels (X, Y, Z), CT on the labels' grid and RAS affine."""

    role: str
    folder: Path
    report: dict[str, Any]
    labels: np.ndarray
    affine: np.ndarray
    ct_path: Path
    ct: np.ndarray | None = None

    @property
    def readout(self) -> dict[str, Any]:
        return dict(self.report.get("readout") or {})

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def _fail(role: str, path: Path, what: str) -> InputError:
    return InputError(f"{role} {printable(path)}: {what}")


def _read_report(role: str, folder: Path) -> dict[str, Any]:
    path = folder / REPORT_NAME
    if not path.is_file():
        raise _fail(role, folder, f"no {REPORT_NAME}; pass a case folder written by `pancreas-dints segment`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _fail(role, path, f"cannot be read ({exc}); segment the CT again") from None
    if not isinstance(report, dict) or not isinstance(report.get("readout"), dict):
        raise _fail(role, path, "has no read-out; segment the CT again with the read-out on")
    return report


def open_side(role: str, folder: Path) -> Side:
    """Read a case folder's report and labels (cheap checks first; the CT is read by :func:`load_ct`)."""
    import nibabel as nib

    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(role, folder, "not a case folder (a folder written by `pancreas-dints segment`)")
    labels_path = folder / LABELS_NAME
    if not labels_path.is_file():
        raise _fail(role, folder, f"no {LABELS_NAME} (the segmentation); segment the CT with --format nifti")
    report = _read_report(role, folder)
    try:
        img: Any = nib.load(str(labels_path))
        labels = np.asarray(img.dataobj).astype(np.uint8)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any reading problem is one line
        raise _fail(role, labels_path, f"cannot be read ({exc})") from None
    if labels.ndim != 3:
        raise _fail(role, labels_path, f"labels must be 3D, not of shape {labels.shape}")
    gland = int(np.count_nonzero(labels == PANCREAS_LABEL))
    if gland < MIN_GLAND_VOXELS:
        raise _fail(role, folder, f"no pancreas segmented ({gland} voxels, {MIN_GLAND_VOXELS} needed): a different "
                                  "body part, or a failed segmentation; both scans must show the pancreas")
    ct_path = Path(str(report.get("input", "")))
    if not ct_path.exists():
        raise _fail(role, folder, f"its CT {printable(ct_path)} (report.json's input) is not there; put it back")
    return Side(role, folder, report, labels, affine, ct_path)


def check_pair(prior: Side, current: Side) -> None:
    """Refusals that need both sides: read-out versions, patient identity, the same folder twice."""
    a = prior.readout.get("schema")
    b = current.readout.get("schema")
    if not a or a != b:
        raise InputError(f"read-out versions differ: prior {printable(prior.folder)} has {a!r}, current "
                         f"{printable(current.folder)} has {b!r}; segment both CTs with the same version")
    if prior.folder.resolve() == current.folder.resolve():
        raise InputError(f"{printable(prior.folder)}: prior and current are the same case folder")
    ids = [_patient_id(s) for s in (prior, current)]
    if ids[0] and ids[1] and ids[0] != ids[1]:
        raise InputError(f"different patients: prior {printable(prior.folder)} and current "
                         f"{printable(current.folder)} have different Patient IDs; compare scans of one patient")


def _patient_id(side: Side) -> str | None:
    """The Patient ID of a DICOM input (None for other inputs)."""
    if not side.ct_path.is_dir():
        return None
    import pydicom

    for f in sorted(side.ct_path.iterdir()):
        if f.is_file():
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["PatientID"])
            except Exception:  # noqa: BLE001 - not DICOM: try the next file
                continue
            return str(ds.get("PatientID", "")) or None
    return None


def load_ct(side: Side) -> None:
    """Read the side's CT (a file SimpleITK reads, or a DICOM series folder) onto the labels' grid."""
    import SimpleITK as sitk

    try:
        if side.ct_path.is_dir():
            reader = sitk.ImageSeriesReader()
            uid = (side.report.get("dicom_series") or {}).get("series_instance_uid") or ""
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(side.ct_path), uid))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(side.ct_path))
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()
        raise _fail(side.role, side.ct_path, f"the CT cannot be read ({text[-1] if text else exc})") from None
    ref = grids.to_image(np.zeros(side.labels.shape, np.uint8), side.affine)
    image = sitk.Cast(image, sitk.sitkFloat32)
    side.ct = grids.from_image(grids.resample(image, ref, sitk.Transform(3, sitk.sitkIdentity), False,
                                              -1000.0))[0].copy()
