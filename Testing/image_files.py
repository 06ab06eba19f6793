"""Writing real image files for tests: NRRD/MetaImage through SimpleITK, DICOM CT series through pydicom."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine.copy()


def crop_nifti(src: Path, dest: Path, box: tuple[slice, slice, slice]) -> Path:
    """A crop of a real CT with the matching affine (origin shifted), saved as NIfTI."""
    import nibabel as nib

    img = nib.load(str(src))
    data = np.asarray(img.dataobj)[box]
    offset = np.array([s.start or 0 for s in box] + [1.0])
    affine = img.affine.copy()
    affine[:, 3] = img.affine @ offset
    out = nib.Nifti1Image(data, affine, header=img.header.copy())
    out.set_sform(affine, int(img.header["sform_code"]) or 1)
    out.set_qform(affine, int(img.header["qform_code"]) or 1)
    nib.save(out, str(dest))
    return dest


def _sitk_image(data: np.ndarray, affine_ras: np.ndarray):
    import SimpleITK as sitk

    lps = RAS_TO_LPS @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    return img


def write_itk(data: np.ndarray, affine_ras: np.ndarray, dest: Path) -> Path:
    """NRRD (.nrrd/.nhdr) or MetaImage (.mha/.mhd) with the same physical geometry as ``affine_ras``."""
    import SimpleITK as sitk

    sitk.WriteImage(_sitk_image(data, affine_ras), str(dest))
    return dest


def write_dicom_series(data: np.ndarray, affine_ras: np.ndarray, folder: Path, modality: str = "CT") -> Path:
    """A CT Image Storage series, one file per slice along the third axis (slice order shuffled on disk)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = RAS_TO_LPS @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]
    col_dir = lps[:3, 1] / spacing[1]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    today = datetime.date.today().strftime("%Y%m%d")
    values = np.asarray(data).astype(np.int16)
    order = np.random.default_rng(0).permutation(values.shape[2])
    for k in range(values.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"x{order[k]:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P001", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.AccessionNumber = "1", 3, k + 1, ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row_dir, col_dir])]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP = 120
        ds.PixelData = np.ascontiguousarray(values[:, :, k].T).tobytes()
        ds.save_as(str(folder / f"x{order[k]:04d}.dcm"), enforce_file_format=True)
    return folder
