"""Reading CT images (NIfTI, NRRD, MetaImage, DICOM series) into MONAI MetaTensors, with validation.

NIfTI is read with MONAI's ``NibabelReader`` exactly as the bundle's ``LoadImaged`` does, so preprocessing starts
from the same array and affine. NRRD, MetaImage and DICOM are read with SimpleITK; their LPS geometry becomes the
RAS affine MONAI uses. Every problem with an input becomes an :class:`InputError` with one line naming the file.
"""

from __future__ import annotations

import glob
import gzip
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from PancreasDiNTSLib.core.errors import InputError, first_line
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME
from PancreasDiNTSLib.io import dicom
from PancreasDiNTSLib.io.dicom import LPS_TO_RAS

if TYPE_CHECKING:
    import nibabel as nib
    from monai.data import MetaTensor

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# A CT in Hounsfield units has air near -1000; the bulk of a body CT lies between -1024 and +3000.
CT_MIN_LOW = -500.0
CT_RANGE = (-4000.0, 40000.0)
# A human CT: voxel spacing 0.05-50 mm along each axis (beyond: wrong units or a broken header), and an
# image at most 3000 mm long along each axis.
SPACING_RANGE_MM = (0.05, 50.0)
MAX_EXTENT_MM = 3000.0


@dataclass
class LoadedImage:
    """One input case: the channel-first MetaTensor plus what the writers need to reproduce its geometry."""

    name: str
    path: Path
    fmt: str  # "nifti", "nrrd", "mha", "dicom"
    image: Any  # monai.data.MetaTensor, shape (1, X, Y, Z), affine in RAS
    affine_ras: np.ndarray
    spacing: tuple[float, float, float]
    dicom_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine_ras[:3, :3]))) / 1000.0


def case_name(path: Path) -> str:
    """Case name from a file or folder name, without image suffixes (``ct1.nii.gz`` -> ``ct1``)."""
    name = path.name
    for suffix in (".nii.gz",) + tuple(s for s in IMAGE_SUFFIXES if s != ".nii.gz") + (".seg.nrrd",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_dicom_file(path: Path) -> bool:
    """A DICOM file, with or without the 128-byte preamble (io.dicom.is_dicom_file)."""
    return dicom.is_dicom_file(path)


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(is_dicom_file(p) for p in list(path.iterdir())[:50] if p.is_file())


def is_case_folder(path: Path) -> bool:
    """A folder the engine wrote (it holds the engine's manifest): never taken as an input."""
    return (path / MANIFEST_NAME).is_file()


def _expand_folder(p: Path) -> list[Path]:
    if _is_dicom_folder(p):
        return [p]
    entries = sorted(p.iterdir())
    inner = [q for q in entries if q.is_file() and q.name.lower().endswith(IMAGE_SUFFIXES)]
    subdirs = [q for q in entries if q.is_dir() and not is_case_folder(q) and _is_dicom_folder(q)]
    if not inner and not subdirs:
        raise InputError(f"{p}: folder holds no NIfTI/NRRD/MetaImage files and no DICOM series")
    return inner + subdirs


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, DICOM folders, folders of images and globs -> a sorted list of cases (files or DICOM folders).

    The same file named twice (also through another path or a symlink) is one case; folders written by the engine
    (they hold its manifest) are not inputs. Raises InputError for an argument that matches nothing.
    """
    found: list[Path] = []
    for arg in inputs:
        matches = [Path(m) for m in sorted(glob.glob(arg))] if any(c in arg for c in "*?[") else [Path(arg)]
        if not matches or not (matches[0].exists() or matches[0].is_symlink()):
            raise InputError(f"{arg}: no such file or folder")
        globbed = len(matches) > 1 or str(matches[0]) != arg
        for p in matches:
            if globbed and p.is_file() and not p.name.lower().endswith(IMAGE_SUFFIXES) and not is_dicom_file(p):
                continue  # e.g. the .raw.gz of a detached .nhdr header matched by the same glob
            if p.is_dir():
                if globbed and is_case_folder(p):
                    continue
                found.extend(_expand_folder(p))
            else:
                found.append(p)
    unique: list[Path] = []
    seen: set[str] = set()
    for p in found:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            unique.append(p)
    return unique


def special_file_kind(path: Path) -> str | None:
    """"a FIFO (named pipe)", "a device", "a socket" for such a path (never opened: a FIFO would block), else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    kind = special_file_kind(path)
    if kind:
        raise InputError(f"{path}: is {kind}, not a regular file; give an image file or a DICOM folder")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")


def _read_nifti(path: Path):
    from monai.transforms import LoadImage

    with open(path, "rb") as fh:
        head = fh.read(4)
    if path.name.lower().endswith(".gz") and head[:2] != b"\x1f\x8b":
        raise InputError(f"{path}: named .nii.gz but not gzip-compressed; is it really a NIfTI image?")
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                fh.read(348)
        header = load_nifti(path)  # the header as written: MONAI's reader would "correct" a NaN affine silently
        if header.get_data_dtype().kind == "c":
            raise InputError(f"{path}: complex-valued voxels ({header.get_data_dtype()}); a CT has real values in HU: "
                             "save the real part or the magnitude")
        check_affine(header.affine, path)
        if not int(header.header["qform_code"]) and not int(header.header["sform_code"]):
            raise InputError(f"{path}: the NIfTI header gives no orientation (qform_code and sform_code are both 0), "
                             "so where the patient's left, front and head are is unknown; write the file with its "
                             "orientation (e.g. dcm2niix from the DICOM series) or give the DICOM series")
        img = LoadImage(reader="NibabelReader", image_only=True)(str(path))
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path}: cannot be read as NIfTI ({first_line(exc)}); the file may be truncated") from None
    return img


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """A NIfTI file's header and (lazy) voxels; InputError for anything else nibabel reads."""
    import nibabel as nib

    img = nib.load(path)
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is one too
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def _sitk_to_metatensor(sitk_image, path: Path):
    """A SimpleITK image -> MetaTensor (X, Y, Z) with a RAS affine, as MONAI's ITK reader lays it out."""
    import SimpleITK as sitk
    from monai.data import MetaTensor

    dim = sitk_image.GetDimension()
    if "complex" in sitk_image.GetPixelIDTypeAsString():
        raise InputError(f"{path}: complex-valued voxels ({sitk_image.GetPixelIDTypeAsString()}); a CT has real "
                         "values in HU: save the real part or the magnitude")
    arr = sitk.GetArrayFromImage(sitk_image)  # (Z, Y, X)
    if sitk_image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {sitk_image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a CT has one")
    if dim != 3:
        raise InputError(f"{path}: is a {dim}D image; a 3D CT volume is needed")
    data = np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.float32)
    direction = np.array(sitk_image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(sitk_image.GetSpacing(), dtype=np.float64)
    origin = np.array(sitk_image.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    ras = LPS_TO_RAS @ lps
    meta = {
        "affine": ras.copy(),
        "original_affine": ras.copy(),
        "spatial_shape": np.array(data.shape),
        "original_channel_dim": float("nan"),
        "filename_or_obj": str(path),
        "space": "RAS",
    }
    import torch

    return MetaTensor(data, affine=torch.as_tensor(ras, dtype=torch.float64), meta=meta)


def _read_itk(path: Path):
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be read as an image ({first_line(exc)})") from None
    return _sitk_to_metatensor(img, path)


def _read_dicom(source: Path, series_uid: str | None = None):
    """A DICOM series through io.dicom (geometry checked, irregular stacks resampled or refused)."""
    volume = dicom.read_dicom_series(source, series_uid)
    return volume.to_metatensor(source), volume.files, volume.notes


def check_affine(affine: Any, path: Path) -> None:
    """Refuse a voxel-to-world matrix with NaN/infinite entries or (nearly) parallel or zero voxel axes."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise InputError(f"{path}: the voxel-to-world matrix (affine) holds NaN or infinite values; fix the header "
                         "(NIfTI qform/sform, NRRD space directions and origin)")
    norms = np.linalg.norm(a[:3, :3], axis=0)
    if (norms <= 0).any() or abs(np.linalg.det(a[:3, :3] / norms)) < 1e-3:
        raise InputError(f"{path}: the voxel-to-world matrix (affine) is singular (voxel axes "
                         f"{np.round(a[:3, :3].T, 4).tolist()}); fix the header (NIfTI qform/sform, NRRD space "
                         "directions)")


def check_geometry(affine: np.ndarray, shape: tuple[int, ...], path: Path) -> None:
    """The affine (:func:`check_affine`), a voxel spacing in ``SPACING_RANGE_MM`` and an extent of at most
    ``MAX_EXTENT_MM`` along each axis; InputError otherwise (before any resampling)."""
    check_affine(affine, path)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    lo, hi = SPACING_RANGE_MM
    if (spacing < lo).any() or (spacing > hi).any():
        raise InputError(f"{path}: voxel spacing {[float(f'{s:.4g}') for s in spacing]} mm is outside {lo}-{hi:g} mm; "
                         "check the header's spacing and units (a CT has 0.2-10 mm voxels)")
    extent = spacing * np.asarray(shape, dtype=np.float64)
    if (extent > MAX_EXTENT_MM).any():
        raise InputError(f"{path}: the image spans {[round(float(e)) for e in extent]} mm, more than "
                         f"{MAX_EXTENT_MM:.0f} mm along an axis; check the header's spacing and units")


def check_ct(data: np.ndarray, path: Path, allow_non_ct: bool = False) -> list[str]:
    """Refuse NaNs, empty or flat images and, unless ``allow_non_ct``, intensities that are not CT HU."""
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite voxels; fix or re-export the image")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(f"{path}: every voxel has the value {lo}; the image is empty")
    sample = data.ravel()[:: max(1, data.size // 2_000_000)]
    p1 = float(np.percentile(sample, 1))
    problems = []
    if lo < CT_RANGE[0] or hi > CT_RANGE[1]:
        problems.append(f"values {lo:.0f}..{hi:.0f} exceed the CT range")
    if p1 > CT_MIN_LOW and lo > -200:
        problems.append(f"no air-like values (minimum {lo:.0f}, 1st percentile {p1:.0f}; CT air is about -1000 HU)")
    if not problems:
        return []
    message = (f"{path}: does not look like a CT in Hounsfield units: {'; '.join(problems)}. "
               "Convert it to HU (apply rescale slope/intercept) or pass --allow-non-ct to segment anyway")
    if allow_non_ct:
        return [message.split(": ", 1)[1]]
    raise InputError(message)


def read_image(path: str | Path, allow_non_ct: bool = False, series_uid: str | None = None) -> LoadedImage:
    """Read one case (image file or DICOM series folder) and validate it as a 3D CT.

    ``series_uid`` picks one DICOM series of a folder that holds several (io.dicom.list_series lists them).
    """
    path = Path(path)
    _check_file(path)
    warnings: list[str] = []
    dicom_files: list[Path] = []
    lower = path.name.lower()
    if path.is_dir():
        image, dicom_files, notes = _read_dicom(path, series_uid)
        fmt = "dicom"
        warnings += notes
    elif lower.endswith(NIFTI_SUFFIXES):
        image = _read_nifti(path)
        fmt = "nifti"
    elif lower.endswith(ITK_SUFFIXES):
        image = _read_itk(path)
        fmt = "mha" if lower.endswith((".mha", ".mhd")) else "nrrd"
    elif is_dicom_file(path):
        # a file of a series: that file's series in its folder
        image, dicom_files, notes = _read_dicom(path.parent, series_uid or dicom.series_selector_of(path))
        fmt = "dicom"
        warnings += notes
        path = path.parent
    else:
        raise InputError(f"{path}: unsupported file type; give .nii/.nii.gz, .nrrd/.nhdr, .mha/.mhd or a DICOM folder")

    # Channel-first with the bundle's EnsureChannelFirst; reject 2D and true 4D images.
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[-1] == 1:  # (X, Y, Z, 1): one volume; without a channel, as a 3D file reads
        image = image[..., 0]
        image.meta["original_channel_dim"] = float("nan")
        image.meta["spatial_shape"] = np.array(image.shape)
        shape = tuple(image.shape)
    if len(shape) != 3:
        raise InputError(f"{path}: image has shape {shape}; a single 3D CT volume is needed (not 2D or 4D)")
    if min(shape) < 2:
        raise InputError(f"{path}: image has shape {shape}, a single slice; a 3D CT volume is needed")
    from monai.transforms import EnsureChannelFirst

    image = EnsureChannelFirst()(image)
    affine = np.asarray(cast("MetaTensor", image).affine, dtype=np.float64)
    check_geometry(affine, shape, path)
    data = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    warnings += check_ct(data, path, allow_non_ct)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return LoadedImage(
        name=case_name(path),
        path=path,
        fmt=fmt,
        image=image,
        affine_ras=affine,
        spacing=spacing,  # type: ignore[arg-type]
        dicom_files=dicom_files,
        warnings=warnings,
    )
