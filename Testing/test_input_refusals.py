"""Issue 26 items 5 and 7: damaged or odd inputs are refused with one documented line before inference, or work.

Item 5: a DICOM slice with truncated pixel data (the element cut short, or the file cut off) is refused naming the
file, the same way every time and in a batch (it was padded by GDCM and accepted, or refused as "not CT").
Item 7: a 4D NIfTI of shape (X, Y, Z, 1) works (labels equal to the 3D file's); a NaN or singular affine,
spacings outside 0.05-50 mm, an image longer than 3 m, complex-valued voxels, a zero-size --roi and a --roi
outside the image are refused before inference (``prepare_case`` without a model raises them: reading is all
that ran).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import axial_planes, load_crop, write_series
from image_files import crop_nifti, write_itk
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.core import errors
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.inference.pipeline import CaseOptions, RoiRequest, prepare_case
from PancreasDiNTSLib.io.dicom import read_dicom_series
from support import EXAMPLE_CT, require


def failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip().startswith("failed")]


def segment(inputs, out, model, capsys, *extra) -> tuple[int, str]:
    code = main(["segment", *map(str, inputs), "-o", str(out), "--model", str(model), "--device", "cpu",
                 "--progress", "none", *extra])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ item 5

@pytest.fixture(scope="module")
def truncated_series(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two 32x32x12 series cut from the real CT: one slice's PixelData element cut to half, one file cut off."""
    vol = load_crop(require(EXAMPLE_CT), (slice(29, 61), slice(18, 50), slice(40, 52)))
    root = tmp_path_factory.mktemp("truncated")
    out = {}
    for kind in ("element", "file"):
        files = write_series(root / kind, vol, axial_planes(vol, np.arange(12) * 3.0))
        bad = files[5]
        if kind == "element":
            ds = pydicom.dcmread(bad)
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
            ds.save_as(bad)
        else:
            data = bad.read_bytes()
            bad.write_bytes(data[:-1000])
        out[kind] = (root / kind, bad)
    return out


@pytest.mark.parametrize("kind", ["element", "file"])
def test_truncated_dicom_pixel_data_is_refused_naming_the_file(kind, truncated_series):
    folder, bad = truncated_series[kind]
    before = bad.read_bytes()
    messages = set()
    for _ in range(3):
        with pytest.raises(InputError) as exc:
            read_dicom_series(folder)
        messages.add(str(exc.value))
    assert len(messages) == 1, messages  # deterministic
    text = messages.pop()
    assert "\n" not in text and str(bad) in text and "pixel data truncated" in text
    assert "need 2048" in text and "re-export" in text
    assert bad.read_bytes() == before


def test_truncated_dicom_in_a_batch_gives_the_same_line(truncated_series, tiny_bundle, tmp_path, capsys):
    folders = [truncated_series[k][0] for k in ("element", "file")]
    code, err = segment(folders, tmp_path / "out", tiny_bundle, capsys, "--format", "nifti")
    assert code == errors.EXIT_CASE_FAILED and "Traceback" not in err
    lines = failed_lines(err)
    assert len(lines) == 2 and all("pixel data truncated" in line for line in lines), err
    for kind, line in zip(("element", "file"), lines, strict=True):
        assert truncated_series[kind][1].name in line
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())  # no partial case folder


# ------------------------------------------------------------------------------------------------------ item 7

@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory, example_ct_sm) -> Path:
    """20x20x20 voxels of real CT."""
    return crop_nifti(example_ct_sm, tmp_path_factory.mktemp("ct") / "tiny.nii.gz",
                      (slice(50, 70), slice(40, 60), slice(5, 25)))


def test_4d_nifti_with_one_volume_works(tiny_ct, tiny_bundle, tmp_path, capsys):
    """(X, Y, Z, 1) was read as 20 channels of 2D images and failed in count_windows; now it is the volume."""
    img = nib.load(str(tiny_ct))
    four = tmp_path / "four" / "ct4d.nii.gz"
    four.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine, img.header), str(four))
    assert nib.load(str(four)).shape == (20, 20, 20, 1)
    code, err = segment([tiny_ct, four], tmp_path / "out", tiny_bundle, capsys, "--format", "nifti")
    assert code == 0, err
    three = nib.load(str(tmp_path / "out" / "tiny" / "labels.nii.gz"))
    got = nib.load(str(tmp_path / "out" / "ct4d" / "labels.nii.gz"))
    assert got.shape == (20, 20, 20)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(three.dataobj))
    np.testing.assert_allclose(got.affine, three.affine)


def _with_sform(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """A NIfTI whose sform is ``affine`` as given (nibabel would refuse to build a qform from a singular one)."""
    img = nib.Nifti1Image(data, None)
    header = img.header
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[0], affine[1], affine[2]
    header["sform_code"], header["qform_code"] = 2, 0
    nib.save(img, str(path))
    return path


def make_odd(kind: str, tiny_ct: Path, folder: Path) -> Path:
    img = nib.load(str(tiny_ct))
    data = np.asarray(img.dataobj).astype(np.int16)
    path = folder / f"{kind}.nii.gz"
    if kind == "nan_affine":
        a = img.affine.copy()
        a[0, 0] = np.nan
        return _with_sform(data, a, path)
    if kind == "singular_affine":
        a = img.affine.copy()
        a[:3, 2] = a[:3, 1]  # two voxel axes along one direction
        return _with_sform(data, a, path)
    if kind in ("tiny_spacing", "huge_spacing", "too_long"):
        spacing = {"tiny_spacing": [1e-5, 1e-5, 1.0], "huge_spacing": [1e5, 1e5, 1.0], "too_long": [1.0, 1.0, 49.0]}
        a = np.diag([*spacing[kind], 1.0])
        if kind == "too_long":
            data = np.concatenate([data] * 4, axis=2)  # 80 slices of 49 mm: 3.9 m
        nib.save(nib.Nifti1Image(data, a), str(path))
        return path
    if kind == "complex":
        nib.save(nib.Nifti1Image(data.astype(np.complex64), img.affine), str(path))
        return path
    if kind == "complex_nrrd":
        return write_itk(data.astype(np.complex64), img.affine, folder / "complex.nrrd")
    raise ValueError(kind)


ODD = {
    "nan_affine": "NaN or infinite values",
    "singular_affine": "is singular",
    "tiny_spacing": "is outside 0.05-50 mm",
    "huge_spacing": "is outside 0.05-50 mm",
    "too_long": "more than 3000 mm",
    "complex": "complex-valued voxels",
    "complex_nrrd": "complex-valued voxels",
}


@pytest.mark.parametrize("kind", sorted(ODD))
def test_odd_geometry_and_values_are_refused_before_inference(kind, tiny_ct, tiny_bundle, tmp_path, capsys):
    bad = make_odd(kind, tiny_ct, tmp_path)
    before = bad.read_bytes()
    with pytest.raises(InputError) as exc:  # read and checked only: no model, no preprocessing, no inference
        prepare_case(bad, None, CaseOptions())
    assert ODD[kind] in str(exc.value) and "\n" not in str(exc.value)
    code, err = segment([bad], tmp_path / "out", tiny_bundle, capsys, "--format", "nifti")
    assert code == errors.EXIT_CASE_FAILED and "Traceback" not in err and "unexpected" not in err
    lines = failed_lines(err)
    assert len(lines) == 1 and ODD[kind] in lines[0] and bad.name in lines[0], err
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())
    assert bad.read_bytes() == before


@pytest.mark.slow
def test_spacing_at_the_edges_of_the_range_works(tiny_ct, tiny_bundle, tmp_path, capsys):
    data = np.asarray(nib.load(str(tiny_ct)).dataobj).astype(np.int16)
    data[0] = -1000  # air in every slice
    paths = []
    for name, spacing, slices in (("fine", [0.06, 0.06, 1.0], 20), ("thick", [0.8, 0.8, 45.0], 6)):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data[:, :, :slices], np.diag([*spacing, 1.0])), str(path))
        case = prepare_case(path, None, CaseOptions()).case
        np.testing.assert_allclose(case.spacing, spacing, rtol=1e-6)
        paths.append(path)
    code, err = segment(paths, tmp_path / "out", tiny_bundle, capsys, "--format", "nifti,report-png")
    assert code == 0, err
    for path in paths:
        name = path.name.split(".")[0]
        assert nib.load(str(tmp_path / "out" / name / "labels.nii.gz")).shape == nib.load(str(path)).shape
        assert (tmp_path / "out" / name / "report.png").is_file()


def test_zero_size_roi_is_a_usage_error(tiny_ct, tiny_bundle, tmp_path, capsys):
    with pytest.raises(errors.UsageError, match="zero size along X, Z"):
        RoiRequest.parse("5,0,3,5,10,3")
    code, err = segment([tiny_ct], tmp_path / "out", tiny_bundle, capsys, "--roi", "5,0,0,5,10,10")
    assert code == errors.EXIT_USAGE and "zero size along X" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_roi_outside_the_image_is_refused_before_inference(tiny_ct, tiny_bundle, tmp_path, capsys):
    roi = RoiRequest.parse("100,100,100,110,110,110", space="voxel")
    with pytest.raises(InputError, match="holds no voxel of this image"):
        prepare_case(tiny_ct, None, CaseOptions(roi=roi))
    code, err = segment([tiny_ct], tmp_path / "out", tiny_bundle, capsys, "--roi", "5000,5000,5000,5010,5010,5010")
    lines = failed_lines(err)
    assert code == errors.EXIT_CASE_FAILED and len(lines) == 1 and "holds no voxel" in lines[0], err
    assert "RAS" in lines[0] and "unexpected" not in err
