"""DICOM CT series for the test_dicom_* tests, cut from a real CT with pydicom (and SimpleITK for the pixels).

A slice is a plane in patient space (LPS): origin (ImagePositionPatient), row and column directions
(ImageOrientationPatient), pixel spacing and size. Its pixels are the real CT resampled on that plane by
SimpleITK (linear), so a slice that lies on the CT's own voxel grid holds the CT's voxels exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# 64 x 64 x 48 voxels of 3 mm from the real example CT (abdomen with spine).
CROP = (slice(29, 93), slice(18, 82), slice(40, 88))


@dataclass
class Volume:
    """A regular CT volume: data (X, Y, Z) in HU and its RAS affine."""

    data: np.ndarray
    affine_ras: np.ndarray

    @property
    def lps(self) -> np.ndarray:
        return RAS_TO_LPS @ self.affine_ras

    def axis(self, i: int) -> np.ndarray:
        """Unit LPS direction of voxel axis ``i``."""
        col = self.lps[:3, i]
        return col / np.linalg.norm(col)

    def spacing(self, i: int) -> float:
        return float(np.linalg.norm(self.lps[:3, i]))

    def point(self, ijk: Sequence[float]) -> np.ndarray:
        """LPS position of a (continuous) voxel index."""
        return (self.lps @ np.array([*ijk, 1.0]))[:3]

    def sitk(self):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.data.transpose(2, 1, 0)).astype(np.float32))
        sp = [self.spacing(i) for i in range(3)]
        img.SetSpacing(sp)
        img.SetDirection([float(v) for v in (self.lps[:3, :3] / np.array(sp)).ravel()])
        img.SetOrigin([float(v) for v in self.lps[:3, 3]])
        return img


def load_crop(path: Path, box: tuple[slice, slice, slice] = CROP) -> Volume:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)[box].astype(np.float32)
    affine = img.affine.copy()
    affine[:, 3] = img.affine @ np.array([s.start or 0 for s in box] + [1.0])
    return Volume(data, affine)


@dataclass
class Plane:
    """One slice: LPS origin of its first pixel, row/column unit directions, spacing (along row, along column)."""

    origin: np.ndarray
    row: np.ndarray
    col: np.ndarray
    spacing: tuple[float, float]
    size: tuple[int, int]  # (columns, rows)

    def sample(self, volume_sitk, default: float = -1024.0) -> np.ndarray:
        """The volume resampled on this plane (linear), as a (rows, columns) array."""
        import SimpleITK as sitk

        ref = sitk.Image(int(self.size[0]), int(self.size[1]), 1, sitk.sitkFloat32)
        normal = np.cross(self.row, self.col)
        ref.SetDirection([float(v) for v in np.column_stack([self.row, self.col, normal]).ravel()])
        ref.SetSpacing([float(self.spacing[0]), float(self.spacing[1]), 1.0])
        ref.SetOrigin([float(v) for v in self.origin])
        out = sitk.Resample(volume_sitk, ref, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)[0]


def axial_planes(vol: Volume, positions_mm: Sequence[float]) -> list[Plane]:
    """Planes parallel to the volume's (i, j) planes at these distances (mm) along its k axis from voxel 0."""
    size = (vol.data.shape[0], vol.data.shape[1])
    sp = (vol.spacing(0), vol.spacing(1))
    o = vol.point((0, 0, 0))
    return [Plane(o + p * vol.axis(2), vol.axis(0), vol.axis(1), sp, size) for p in positions_mm]


def tilted_planes(vol: Volume, n: int, step_mm: float, tilt_deg: float) -> list[Plane]:
    """Gantry tilt: the column direction tilted by ``tilt_deg`` towards the k axis, positions moving along k."""
    t = np.deg2rad(tilt_deg)
    col = np.cos(t) * vol.axis(1) + np.sin(t) * vol.axis(2)
    size = (vol.data.shape[0], vol.data.shape[1])
    sp = (vol.spacing(0), vol.spacing(1))
    o = vol.point((0, 0, 0))
    return [Plane(o + k * step_mm * vol.axis(2), vol.axis(0), col, sp, size) for k in range(n)]


@dataclass
class SeriesIds:
    study: str
    series: str
    frame: str
    number: int = 3
    description: str = "CT ABDOMEN"


def new_ids(number: int = 3, description: str = "CT ABDOMEN") -> SeriesIds:
    from pydicom.uid import generate_uid

    return SeriesIds(generate_uid(), generate_uid(), generate_uid(), number, description)


def slice_dataset(pixels: np.ndarray, plane: Plane, ids: SeriesIds, instance: int,
                  intercept: float = -1024.0):
    """A CT Image Storage dataset (explicit VR little endian) holding ``pixels`` (rows, cols) in HU."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.Modality, ds.Manufacturer = "A1", "CT", "test"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = ids.description
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P001", "19700101", "O"
    ds.KVP = 120
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = ids.study, ids.series, ids.frame
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", ids.number, instance
    ds.ImagePositionPatient = [round(float(v), 6) for v in plane.origin]
    ds.ImageOrientationPatient = [round(float(v), 8) for v in np.concatenate([plane.row, plane.col])]
    ds.PositionReferenceIndicator = ""
    ds.SliceThickness = 3.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = [float(plane.spacing[1]), float(plane.spacing[0])]  # (between rows, between columns)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
    stored = np.rint(np.asarray(pixels, dtype=np.float64) - intercept).astype(np.int16)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def write_series(folder: Path, vol: Volume, planes: Sequence[Plane], ids: SeriesIds | None = None,
                 edit: Callable[[object, int], object] | None = None, prefix: str = "im") -> list[Path]:
    """One file per plane (file names shuffled against slice order); ``edit(ds, k)`` may change a dataset and
    return it (or a replacement); returns the files in plane order."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = ids or new_ids()
    source = vol.sitk()
    order = np.random.default_rng(len(planes)).permutation(len(planes))
    files = []
    for k, plane in enumerate(planes):
        ds = slice_dataset(plane.sample(source), plane, ids, instance=k + 1)
        if edit is not None:
            ds = edit(ds, k) or ds
        path = folder / f"{prefix}{order[k]:04d}.dcm"
        save(ds, path)
        files.append(path)
    return files


def save(ds, path: Path, preamble: bool = True) -> Path:
    """Write ``ds``; without ``preamble`` the file starts with the dataset itself (no preamble, no file meta)."""
    if preamble:
        ds.save_as(str(path), enforce_file_format=True)
    else:
        from pydicom.filewriter import dcmwrite

        plain = copy.deepcopy(ds)
        plain.preamble = None
        plain.file_meta = type(ds.file_meta)()
        dcmwrite(str(path), plain, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def truth_on_grid(vol: Volume, shape: Sequence[int], affine_ras: np.ndarray, default: float = -1024.0) -> np.ndarray:
    """The regular CT resampled (SimpleITK, linear) onto another grid given by shape (X, Y, Z) and RAS affine."""
    return resample_sitk(vol.sitk(), shape, affine_ras, default)


def resample_sitk(image, shape: Sequence[int], affine_ras: np.ndarray, default: float = -1024.0) -> np.ndarray:
    """A SimpleITK image resampled (linear) onto the grid (X, Y, Z) with this RAS affine; returns (X, Y, Z)."""
    import SimpleITK as sitk

    lps = RAS_TO_LPS @ affine_ras
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    ref = sitk.Image([int(s) for s in shape], sitk.sitkFloat32)
    ref.SetSpacing([float(v) for v in sp])
    ref.SetDirection([float(v) for v in (lps[:3, :3] / sp).ravel()])
    ref.SetOrigin([float(v) for v in lps[:3, 3]])
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def grid_points_lps(shape: Sequence[int], affine_ras: np.ndarray) -> np.ndarray:
    """LPS positions of every voxel centre, shape (X, Y, Z, 3)."""
    lps = RAS_TO_LPS @ affine_ras
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float64)
    return idx @ lps[:3, :3].T + lps[:3, 3]
