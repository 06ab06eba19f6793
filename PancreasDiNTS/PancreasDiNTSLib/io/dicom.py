"""DICOM CT series as trusted viewers read them: discovery, slice geometry, regularisation, pixel decoding.

Discovery (:func:`list_series`) reads headers only (pydicom, ``stop_before_pixels``), accepts files without the
128-byte preamble (``force=True`` plus a check for real DICOM tags), and leaves out localizer/scout images and
non-image objects (SEG, SR, RTSTRUCT, presentation states, ...). Each image series is one
:class:`SeriesInfo`; a folder with several series is several cases (:func:`series_case_names`) or
``series_uid`` picks one.

Geometry (:func:`read_dicom_series`): slices are ordered by their position along the slice normal (cross product
of ImageOrientationPatient). The series is then

* **read as it is** when the positions lie on a regular grid along the normal (within 5 % of a step);
* **resampled** onto a regular grid in patient space (axes: the row, column and normal directions; in-plane
  spacing kept, slice spacing = the median step; extent covering every slice) when the spacing is non-uniform
  without gaps (e.g. 1 mm then 2.5 mm, or jitter) or the stack is tilted/sheared (gantry tilt: positions not
  along the normal). Each value is the linear interpolation between the two neighbouring acquired slices in the
  acquisition's own (sheared, non-uniform) index space, the same resampling ITK does for a sheared image;
  points outside every slice get the series' lowest value. A note says what was done;
* **refused** with one line when slices are missing (a step that is m >= 2 times the usual step, the median,
  within 10 % of a step, wherever it occurs: two single gaps, every other slice of a stretch, 1 mm then 3 mm
  where 1 mm is the usual step; or a step > 1.5 x the steps on both sides), positions repeat,
  ImagePositionPatient / ImageOrientationPatient / PixelSpacing is missing (SliceThickness is never used as a
  position), or rows, columns, pixel spacing or orientation differ within the series.

Pixels: pydicom's decoders (native RLE, pylibjpeg-openjpeg for JPEG 2000, pyjpegls for JPEG-LS), else, only for a
transfer syntax pydicom has no decoder for, SimpleITK's GDCM reader (JPEG lossless and anything else GDCM reads);
rescale slope/intercept applied per slice. Uncompressed pixel data shorter than Rows x Columns x samples x bits,
and data pydicom's own decoder fails on, are refused (damaged file), never padded or passed on to GDCM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.core.errors import InputError, first_line

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's patient LPS -> RAS (the one definition; io imports it)
# Tolerances, as fractions of a step: positions within 5 % of a regular grid are regular.
REGULAR_TOL = 0.05
GAP_FACTOR = 1.5  # a step larger than 1.5 x its neighbours' (median) means missing slices
MULTIPLE_TOL = 0.1  # a step within 10 % of a step of m x the usual (median) step, m >= 2: m - 1 missing slices
ORIENTATION_TOL = 1e-4
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG", "DOC",
                        "FID", "PLAN", "RWV", "AU", "ECG"}
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registration, fiducials, SEG, surface SEG, label map SEG
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.481",  # radiotherapy objects
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.9",  # waveforms
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)
# Tags a real DICOM object has at least one of (checked for files read without the preamble).
_IDENTITY_TAGS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality")


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder (localizers and non-image objects already left out)."""

    uid: str  # SeriesInstanceUID; "" when the files carry none (de-identified)
    number: int | None
    description: str
    modality: str
    files: tuple[Path, ...]
    instance_uids: tuple[str, ...] = ()

    @property
    def selector(self) -> str:
        """What ``series_uid`` takes to pick this series: the UID, else ``number=N`` (series without UID)."""
        if self.uid:
            return self.uid
        return f"number={self.number}" if self.number is not None else f"description={self.description}"

    def fingerprint(self) -> str:
        """A content identity of the series (UID, SOP instance UIDs and file sizes), for skip decisions."""
        import hashlib

        h = hashlib.sha256(self.uid.encode())
        for uid, path in sorted(zip(self.instance_uids, self.files, strict=False)):
            h.update(f"|{uid}:{path.stat().st_size if path.exists() else -1}".encode())
        return h.hexdigest()

    def label(self) -> str:
        """``series 3 "CT ABDOMEN" (UID 1.2.3...)``, for messages and reports."""
        parts = ["series"]
        if self.number is not None:
            parts.append(str(self.number))
        if self.description:
            parts.append(f'"{_printable(self.description)}"')
        parts.append(f"(UID {self.uid or 'none'})")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"series_instance_uid": self.uid, "series_number": self.number,
                "series_description": _printable(self.description), "modality": self.modality,
                "images": len(self.files)}

    def case_name(self) -> str:
        """A filesystem-safe name: SeriesNumber and description, else the UID (never empty or hidden)."""
        parts = [str(self.number)] if self.number is not None else []
        if self.description:
            parts.append(self.description)
        base = safe_name("-".join(parts)) if parts else ""
        return base or safe_name(self.uid) or "series"


@dataclass
class FolderScan:
    """The image series of a folder and what was left out (reason -> count)."""

    series: list[SeriesInfo]
    excluded: dict[str, int] = field(default_factory=dict)

    def notes(self) -> list[str]:
        if not self.excluded:
            return []
        items = ", ".join(f"{n} {reason}" for reason, n in sorted(self.excluded.items()))
        return [f"left out of the DICOM series: {items}"]


@dataclass
class DicomVolume:
    """A DICOM CT series on a regular grid: data (X, Y, Z) in HU, X along rows, Y along columns, Z along
    the slice normal; ``files`` are the acquired images in slice order (the SEG references them)."""

    data: np.ndarray
    affine_ras: np.ndarray
    files: list[Path]
    series: SeriesInfo
    notes: list[str]
    resampled: bool

    def to_metatensor(self, path: Path):
        """The volume as MONAI reads an image: MetaTensor (X, Y, Z), RAS affine, series identity in meta."""
        import torch
        from monai.data import MetaTensor

        ras = self.affine_ras.copy()
        meta = {
            "affine": ras.copy(),
            "original_affine": ras.copy(),
            "spatial_shape": np.array(self.data.shape),
            "original_channel_dim": float("nan"),
            "filename_or_obj": str(path),
            "space": "RAS",
            "dicom_series_uid": self.series.uid,
            "dicom_series_number": "" if self.series.number is None else str(self.series.number),
            "dicom_series_description": _printable(self.series.description),
            "dicom_resampled": bool(self.resampled),
        }
        return MetaTensor(np.ascontiguousarray(self.data, dtype=np.float32), affine=torch.as_tensor(ras), meta=meta)


def series_from_meta(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The series identity :meth:`DicomVolume.to_metatensor` put in a MetaTensor's meta (None if not DICOM)."""
    if "dicom_series_uid" not in meta:
        return None
    number = str(meta.get("dicom_series_number", ""))
    return {"series_instance_uid": str(meta["dicom_series_uid"]),
            "series_number": int(number) if number.lstrip("-").isdigit() else None,
            "series_description": str(meta.get("dicom_series_description", "")),
            "resampled": bool(meta.get("dicom_resampled", False))}


# ---------------------------------------------------------------------------------------------------- discovery

def safe_name(text: str, limit: int = 64) -> str:
    """Letters, digits, ``.``, ``_`` and ``-`` only; no leading dot or dash; at most ``limit`` characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._- ")
    name = re.sub(r"_+", "_", name)[:limit].rstrip("._-")
    return "" if name in {"", ".", ".."} else name


def _printable(text: Any) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in str(text)).strip()


def is_dicom_file(path: Path) -> bool:
    """A DICOM file, with or without the 128-byte preamble (cheap: reads at most 132 bytes)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if head[:4] == b"DICM":
        return True
    if len(head) < 8:
        return False
    # No preamble: the first element is a group 0002 (file meta) or 0008 (identifying) tag, followed by an
    # explicit VR (two capital letters) or an implicit-VR length.
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group not in (0x0002, 0x0008) or element > 0x0100:
            continue
        if head[4:6].isalpha() and head[4:6].isupper():
            return True
        if int.from_bytes(head[4:8], order) < 1 << 16:
            return True
    return False


def read_header(path: Path):
    """The header of a DICOM file (no pixel data), or None when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file() or not is_dicom_file(path):
        return None
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None
    except Exception:  # noqa: BLE001 - pydicom raises many types for files that are not DICOM
        return None
    if not any(str(ds.get(tag, "") or "").strip() for tag in _IDENTITY_TAGS) and not _meta(ds, "MediaStorageSOPClassUID"):
        return None
    return ds


def _meta(ds: Any, name: str) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, name, "") or "").strip() if meta is not None else ""


def sop_class_uid(ds: Any) -> str:
    """SOPClassUID, from the file meta when the dataset's is empty (de-identified files)."""
    return str(ds.get("SOPClassUID", "") or "").strip() or _meta(ds, "MediaStorageSOPClassUID")


def sop_instance_uid(ds: Any) -> str:
    """SOPInstanceUID, from the file meta when the dataset's is empty (de-identified files)."""
    return str(ds.get("SOPInstanceUID", "") or "").strip() or _meta(ds, "MediaStorageSOPInstanceUID")


def _exclusion(ds: Any) -> str | None:
    """Why a file is not part of an image series (None when it is a candidate image)."""
    from pydicom.uid import UID

    sop = sop_class_uid(ds)
    modality = str(ds.get("Modality", "") or "").upper()
    if sop.startswith(NON_IMAGE_SOP_PREFIXES) or modality in NON_IMAGE_MODALITIES:
        name = UID(sop).name if sop else modality
        return f"non-image object ({modality or name})" if modality else f"non-image object ({name})"
    if "Rows" not in ds or "Columns" not in ds:
        return "object without pixel data"
    image_type = [str(v).upper() for v in (ds.get("ImageType", []) or [])] if ds.get("ImageType") else []
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer image"
    return None


def _series_number(ds: Any) -> int | None:
    try:
        value = ds.get("SeriesNumber", None)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def scan_folder(folder: Path | Sequence[Path]) -> FolderScan:
    """Group the DICOM files of a folder (not its sub-folders) or of a file list into image series."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file()) if isinstance(folder, (str, Path)) \
        else [Path(p) for p in folder]
    groups: dict[str, list[tuple[Path, Any]]] = {}
    excluded: dict[str, int] = {}
    for path in files:
        if path.name.startswith("."):
            continue
        ds = read_header(path)
        if ds is None:
            continue
        reason = _exclusion(ds)
        if reason is not None:
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        # Without a UID (de-identified), files of one series still share number and description.
        key = uid or f"\0{_series_number(ds)}\0{ds.get('SeriesDescription', '')}"
        groups.setdefault(key, []).append((path, ds))
    series = []
    for key, members in groups.items():
        first = members[0][1]
        series.append(SeriesInfo(
            uid="" if key.startswith("\0") else key,
            number=_series_number(first),
            description=str(first.get("SeriesDescription", "") or "").strip(),
            modality=str(first.get("Modality", "") or "").strip(),
            files=tuple(p for p, _ in members),
            instance_uids=tuple(sop_instance_uid(ds) for _, ds in members),
        ))
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
    return FolderScan(series, excluded)


def list_series(folder: Path | str) -> list[SeriesInfo]:
    """The image series in a folder, by SeriesNumber (localizers and non-image objects left out)."""
    return scan_folder(Path(folder)).series


def series_case_names(series: Sequence[SeriesInfo]) -> list[str]:
    """Distinct, filesystem-safe case names for series of one folder (number-description, else UID)."""
    names: list[str] = []
    for s in series:
        name = s.case_name()
        if name in names:
            name = safe_name(f"{name}-{s.uid[-12:] or len(names)}")
        k = 2
        base = name
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def series_selector_of(path: Path | str) -> str | None:
    """The selector (:attr:`SeriesInfo.selector`) of the series one DICOM file belongs to, in its folder."""
    path = Path(path)
    for series in list_series(path.parent):
        if any(f.name == path.name for f in series.files):
            return series.selector
    return None


def folder_cases(folder: Path | str) -> list[tuple[str, SeriesInfo]]:
    """How a DICOM folder becomes cases: [(case-name suffix, series)]; the suffix is "" when the folder holds one
    series, else a distinct safe name per series. Read each with ``read_image(folder, series_uid=s.selector)``."""
    series = list_series(folder)
    if len(series) <= 1:
        return [("", s) for s in series]
    return list(zip(series_case_names(series), series, strict=True))


def _describe(series: Iterable[SeriesInfo]) -> str:
    return "; ".join(f"{s.label()}, {len(s.files)} images" for s in series)


def select_series(source: Path | Sequence[Path], series_uid: str | None = None) -> tuple[SeriesInfo, list[str]]:
    """The series to read from a folder or file list: the only one, or the one with ``series_uid``."""
    where = source if isinstance(source, (str, Path)) else Path(source[0]).parent if source else Path(".")
    scan = scan_folder(source)
    if not scan.series:
        extra = f" ({scan.notes()[0]})" if scan.excluded else ""
        raise InputError(f"{where}: holds no DICOM image series{extra}")
    if series_uid:
        chosen = [s for s in scan.series if series_uid in (s.uid, s.selector)]
        if not chosen:
            raise InputError(f"{where}: no DICOM series with UID {series_uid}; found {_describe(scan.series)}")
        return chosen[0], scan.notes()
    if len(scan.series) > 1:
        raise InputError(f"{where}: holds {len(scan.series)} DICOM series ({_describe(scan.series)}); "
                         "choose one with --series UID or let segment make one case per series")
    return scan.series[0], scan.notes()


# ----------------------------------------------------------------------------------------------------- geometry

@dataclass
class SliceGeometry:
    """Geometry shared by the slices of a series and each slice's position, in slice order."""

    row: np.ndarray  # unit LPS direction of increasing column index
    col: np.ndarray  # unit LPS direction of increasing row index
    normal: np.ndarray
    spacing: tuple[float, float]  # (along row = between columns, along column = between rows), mm
    size: tuple[int, int]  # (columns, rows)
    positions: np.ndarray  # (N, 3) ImagePositionPatient, sorted along the normal

    @property
    def distances(self) -> np.ndarray:
        return self.positions @ self.normal


def _floats(ds: Any, name: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(name, None)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64) if value not in (None, "") else None
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (count,) or not np.isfinite(arr).all():
        raise InputError(f"{path}: DICOM image has no valid {name}; the slice geometry is unknown "
                         f"(SliceThickness is not a position), so the series cannot be placed in space")
    return arr


def slice_geometry(headers: Sequence[Any], files: Sequence[Path], where: Path) -> tuple[SliceGeometry, list[int]]:
    """Common geometry of the slices and their order along the normal; InputError when it is not one stack."""
    ref_iop = ref_ps = None
    ref_size: tuple[int, int] | None = None
    positions = []
    for ds, path in zip(headers, files, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{path}: multi-frame DICOM image ({ds.NumberOfFrames} frames); export the series as "
                             "single-frame images (one file per slice)")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{path}: colour DICOM image (SamplesPerPixel {ds.SamplesPerPixel}); a CT has one value "
                             "per pixel")
        iop = _floats(ds, "ImageOrientationPatient", 6, path)
        ps = _floats(ds, "PixelSpacing", 2, path)
        ipp = _floats(ds, "ImagePositionPatient", 3, path)
        size = (int(ds.Columns), int(ds.Rows))
        if ref_iop is None or ref_ps is None or ref_size is None:
            ref_iop, ref_ps, ref_size = iop, ps, size
        elif size != ref_size:
            raise InputError(f"{where}: images of different sizes in one series ({ref_size[1]}x{ref_size[0]} and "
                             f"{size[1]}x{size[0]} rows x columns, e.g. {path.name}); export one stack per series")
        elif np.abs(iop - ref_iop).max() > ORIENTATION_TOL:
            raise InputError(f"{where}: images of different orientations in one series (e.g. {path.name}); "
                             "export one stack per series")
        elif np.abs(ps - ref_ps).max() > 1e-4 * max(1.0, float(ref_ps.max())):
            raise InputError(f"{where}: images with different pixel spacings in one series (e.g. {path.name})")
        if (ps <= 0).any():
            raise InputError(f"{path}: PixelSpacing {ps.tolist()} is not positive")
        positions.append(ipp)
    assert ref_iop is not None and ref_ps is not None and ref_size is not None
    row, col = ref_iop[:3], ref_iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"{where}: ImageOrientationPatient {ref_iop.tolist()} is not two orthogonal unit vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    pos = np.array(positions)
    order = [int(i) for i in np.argsort(pos @ normal, kind="stable")]
    geom = SliceGeometry(row, col, normal, (float(ref_ps[1]), float(ref_ps[0])), ref_size, pos[order])
    return geom, order


@dataclass
class GridPlan:
    """How a stack becomes a regular grid: as it is, or resampled (with the notes saying why)."""

    regular: bool
    step: float
    notes: list[str]


def plan_grid(geom: SliceGeometry, where: Path) -> GridPlan:
    """Regular, resample or refuse (InputError) from the slice positions; see the module docstring."""
    d = geom.distances
    n = len(d)
    steps = np.diff(d)
    if n < 2:
        raise InputError(f"{where}: the DICOM series has {n} image(s); a 3D CT series is needed")
    median = float(np.median(steps))
    if median <= 1e-6 or (steps <= max(1e-3, 0.01 * median)).any():
        repeats = int((steps <= max(1e-3, 0.01 * median)).sum())
        raise InputError(f"{where}: {repeats + 1 if repeats == 1 else repeats} images share a slice position "
                         "(several acquisitions, phases or echoes in one series?); export each as its own series")
    _refuse_gaps(steps, d, median, where)
    # In-plane offset of each slice from the first (zero for a stack along the normal).
    offsets = (geom.positions - geom.positions[0]) - np.outer(d - d[0], geom.normal)
    shear = float(np.linalg.norm(offsets, axis=1).max())
    mean_step = (d[-1] - d[0]) / (n - 1)
    deviation = float(np.abs(d - (d[0] + mean_step * np.arange(n))).max())
    notes: list[str] = []
    regular = True
    if deviation > REGULAR_TOL * mean_step:
        regular = False
        notes.append(f"non-uniform slice spacing (steps {steps.min():.3g} to {steps.max():.3g} mm): resampled "
                     f"to a regular {median:.3g} mm grid along the slice normal")
    if shear > REGULAR_TOL * min(geom.spacing):
        regular = False
        tilt = float(np.degrees(np.arctan2(shear, d[-1] - d[0])))
        notes.append(f"tilted or sheared stack (gantry tilt about {tilt:.1f} degrees; the last slice is {shear:.1f} mm "
                     "off the normal through the first): resampled onto a regular grid orthogonal to the slices")
    return GridPlan(regular, float(mean_step) if regular else median, notes)


def _refuse_gaps(steps: np.ndarray, d: np.ndarray, usual: float, where: Path) -> None:
    """InputError at the first gap: a step of m >= 2 times the usual (median) step, within ``MULTIPLE_TOL`` of a
    step, wherever it occurs (m - 1 missing slices), or a step over ``GAP_FACTOR`` x the steps on both sides."""
    for k, step in enumerate(steps):
        ratio = float(step) / usual
        sides = [float(np.median(side)) for side in (steps[max(0, k - 2):k], steps[k + 1:k + 3]) if len(side)]
        local = max(sides) if sides else usual
        if round(ratio) >= 2 and abs(ratio - round(ratio)) <= MULTIPLE_TOL:
            why, missing = f"{round(ratio)} x the usual {usual:.2f} mm step", round(ratio) - 1
        elif step > GAP_FACTOR * local:
            why, missing = f"where neighbouring slices are {local:.2f} mm apart", max(1, int(round(step / local)) - 1)
        else:
            continue
        raise InputError(f"{where}: slices missing: a gap of {step:.2f} mm between slices {k + 1} and {k + 2} "
                         f"(at {d[k]:.2f} and {d[k + 1]:.2f} mm along the normal), {why} (about {missing} "
                         "missing); re-export the complete series")


# ------------------------------------------------------------------------------------------------------- pixels

def _decode(path: Path) -> tuple[np.ndarray, str | None]:
    """One slice in HU (rows, cols) float32, and a note when GDCM (SimpleITK) decoded it."""
    import pydicom

    ds = pydicom.dcmread(str(path), force=True)
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM image has no pixel data (the file may be truncated); re-export the series")
    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) is None:
        # No file meta (preamble-less files): the transfer syntax was deduced while reading.
        ds.file_meta = ds.file_meta if hasattr(ds, "file_meta") else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR
                                          else pydicom.uid.ExplicitVRLittleEndian)
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        native = not syntax.is_encapsulated
    except ValueError:  # a private or unknown transfer syntax: GDCM may know it
        native = False
    if native:
        _check_native_length(ds, path)
    try:
        raw = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for data it cannot decode
        if _pydicom_decodes(syntax):  # a decoder that fails on these bytes: damaged data, never a second opinion
            raise InputError(f"{path}: pixel data cannot be decoded ({first_line(exc, 160)}); the file is damaged or "
                             "truncated: re-export the series") from None
        return _decode_gdcm(path, ds, exc), "decoded with GDCM (SimpleITK)"
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)), None


def slice_hu(path: Path) -> np.ndarray:
    """One acquired image's pixels in HU (rows, cols), decoded as the series reader decodes them."""
    return _decode(Path(path))[0]


def _check_native_length(ds: Any, path: Path) -> None:
    """Uncompressed pixel data must hold Rows x Columns x SamplesPerPixel x frames x BitsAllocated bits: a short
    (truncated) one is refused, never padded or handed to another decoder."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        raise InputError(f"{path}: DICOM image without valid Rows, Columns or BitsAllocated; re-export the "
                         "series") from None
    if bits not in (1, 8, 16, 32, 64):
        raise InputError(f"{path}: BitsAllocated {bits} is not a DICOM pixel size (8, 16 or 32 for CT)")
    need = (rows * cols * samples * frames * bits + 7) // 8
    have = len(ds.PixelData)
    if have < need:
        raise InputError(f"{path}: pixel data truncated: {have} bytes where {rows} rows x {cols} columns x "
                         f"{samples} sample(s) x {bits} bits need {need}; the file is damaged: re-export the series")


def _pydicom_decodes(syntax: Any) -> bool:
    """Whether pydicom has a working decoder (a plugin installed) for this transfer syntax."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except (ImportError, NotImplementedError, ValueError, KeyError):
        return False


def _decode_gdcm(path: Path, ds: Any, first: BaseException) -> np.ndarray:
    """SimpleITK's GDCM reader for transfer syntaxes pydicom cannot decode here (it applies the rescale)."""
    import locale

    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    saved = locale.setlocale(locale.LC_ALL, None)  # GDCM may switch to the C locale (ASCII text encoding)
    try:
        img = reader.Execute()
    except RuntimeError:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise InputError(f"{path}: pixel data in transfer syntax {name} cannot be decoded "
                         f"({str(first).splitlines()[0][:120] if str(first) else type(first).__name__}); "
                         "install pylibjpeg-libjpeg or python-gdcm, or export uncompressed") from None
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    arr = sitk.GetArrayFromImage(img)
    return np.asarray(arr[0] if arr.ndim == 3 else arr, dtype=np.float32)


# ------------------------------------------------------------------------------------------------------ reading

def read_dicom_series(source: Path | str | Sequence[Path], series_uid: str | None = None) -> DicomVolume:
    """Read one CT series from a folder (or file list) onto a regular grid; InputError (one line) when refused.

    ``series_uid`` picks a series when the folder holds several (without it, several series is an error).
    The notes name the series and say what was left out or resampled.
    """
    src: Path | Sequence[Path] = Path(source) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    where = src if isinstance(src, Path) else (Path(src[0]).parent if src else Path("."))
    series, notes = select_series(src, series_uid)
    modality = series.modality.upper()
    if modality and modality != "CT":
        raise InputError(f"{where}: DICOM modality of {series.label()} is {modality}, not CT; the model segments "
                         "CT only")
    headers = []
    seen: set[str] = set()
    files: list[Path] = []
    duplicates = 0
    for path in series.files:
        ds = read_header(path)
        uid = sop_instance_uid(ds)
        if uid and uid in seen:
            duplicates += 1  # the same image twice (copied file): read once
            continue
        seen.add(uid)
        headers.append(ds)
        files.append(path)
    if duplicates:
        notes.append(f"{duplicates} duplicate image file(s) (same SOPInstanceUID) read once")
    if len(files) < 2:
        raise InputError(f"{where}: {series.label()} has {len(files)} image(s); a 3D CT series is needed")
    geom, order = slice_geometry(headers, files, where)
    plan = plan_grid(geom, where)
    files = [files[i] for i in order]
    slices = []
    gdcm = False
    for path in files:
        pixels, how = _decode(path)
        gdcm = gdcm or how is not None
        if pixels.shape != (geom.size[1], geom.size[0]):
            raise InputError(f"{path}: pixel data of shape {pixels.shape} does not match Rows x Columns "
                             f"{geom.size[1]}x{geom.size[0]}")
        slices.append(pixels)
    stack = np.stack(slices)  # (Z, rows, cols)
    if gdcm:
        notes.append("some images decoded with GDCM (SimpleITK): pydicom has no decoder for their transfer syntax")
    if plan.regular:
        data = np.ascontiguousarray(stack.transpose(2, 1, 0))
        lps = np.eye(4)
        lps[:3, 0] = geom.row * geom.spacing[0]
        lps[:3, 1] = geom.col * geom.spacing[1]
        lps[:3, 2] = geom.normal * plan.step
        lps[:3, 3] = geom.positions[0]
    else:
        data, lps, extra = regularise(stack, geom, plan.step)
        notes += plan.notes + extra
    notes.insert(0, f"DICOM {series.label()}: {len(files)} images"
                 + (", resampled" if not plan.regular else ""))
    return DicomVolume(data.astype(np.float32, copy=False), LPS_TO_RAS @ lps, files, series, notes,
                       not plan.regular)


def regularise(stack: np.ndarray, geom: SliceGeometry, step: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Resample slices (Z, rows, cols) at irregular / sheared positions onto a regular grid.

    Grid axes: row, column, normal; in-plane spacing kept, ``step`` along the normal, covering every slice.
    A grid point at distance w along the normal lies between slices k and k+1 (fraction f); its value is
    (1-f) S_k + f S_k+1 sampled at the same in-plane index of both, relative to the origin interpolated between
    the two slices' positions (trilinear interpolation in the acquisition's index space).
    """
    from scipy.ndimage import affine_transform

    dx, dy = geom.spacing
    cols, rows = geom.size
    u = geom.positions @ geom.row
    v = geom.positions @ geom.col
    w = geom.distances
    u0, u1 = float(u.min()), float(u.max() + (cols - 1) * dx)
    v0, v1 = float(v.min()), float(v.max() + (rows - 1) * dy)
    # in-plane: every acquired pixel inside the grid; along the normal: at most half a step past the last slice
    nx = int(np.ceil((u1 - u0) / dx - 1e-3)) + 1
    ny = int(np.ceil((v1 - v0) / dy - 1e-3)) + 1
    nz = int(np.floor((w[-1] - w[0]) / step + 0.5)) + 1
    fill = float(stack.min())
    out = np.empty((nx, ny, nz), dtype=np.float32)
    for m in range(nz):
        target = w[0] + m * step
        k = int(np.clip(np.searchsorted(w, target, side="right") - 1, 0, len(w) - 2))
        f = float(np.clip((target - w[k]) / (w[k + 1] - w[k]), 0.0, 1.0))
        blend = stack[k] if f == 0.0 else stack[k + 1] if f == 1.0 else (1 - f) * stack[k] + f * stack[k + 1]
        uo = (1 - f) * u[k] + f * u[k + 1]
        vo = (1 - f) * v[k] + f * v[k + 1]
        # output (b, a) <- blend at row b + (v0 - vo)/dy, column a + (u0 - uo)/dx. As ITK does, points within
        # half a pixel of the slice's edge take the edge value (one edge-padded pixel), farther ones the fill.
        off_r, off_c = (v0 - vo) / dy, (u0 - uo) / dx
        padded = np.pad(blend.astype(np.float32, copy=False), 1, mode="edge")
        plane = affine_transform(padded, np.ones(2), offset=(off_r + 1, off_c + 1), output_shape=(ny, nx),
                                 order=1, mode="nearest")
        r = np.arange(ny) + off_r
        c = np.arange(nx) + off_c
        plane[(r < -0.5) | (r >= rows - 0.5), :] = fill
        plane[:, (c < -0.5) | (c >= cols - 0.5)] = fill
        out[:, :, m] = plane.T
    lps = np.eye(4)
    lps[:3, 0] = geom.row * dx
    lps[:3, 1] = geom.col * dy
    lps[:3, 2] = geom.normal * step
    lps[:3, 3] = u0 * geom.row + v0 * geom.col + w[0] * geom.normal
    notes = []
    if (nx, ny) != (cols, rows):
        notes.append(f"the regular grid is {nx}x{ny} pixels in-plane (acquired {cols}x{rows}) to cover every "
                     f"slice; points outside the acquired slices hold {fill:.0f}")
    return out, lps, notes
