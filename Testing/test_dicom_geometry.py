"""Issue 11, observation 5 (geometry): irregular DICOM stacks are resampled correctly in patient space or refused.

Every series is cut from the real example CT (64 x 64 x 48 voxels of 3 mm). Truth for a resampled variant:
the original regular CT resampled by SimpleITK onto the grid we produce (patient space), and for the tilted
stack also SimpleITK's resampling of the acquired slices as a sheared image built from their positions.
"""

from __future__ import annotations

import numpy as np
import pytest
from dicom_factory import (
    RAS_TO_LPS,
    axial_planes,
    load_crop,
    new_ids,
    resample_sitk,
    tilted_planes,
    truth_on_grid,
    write_series,
)
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.io.dicom import read_dicom_series
from PancreasDiNTSLib.io.images import read_image


@pytest.fixture(scope="module")
def vol(example_ct):
    return load_crop(example_ct)


@pytest.fixture(scope="session")
def example_ct():
    from support import EXAMPLE_CT, require

    return require(EXAMPLE_CT)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 600, text
    return text


def test_regular_series_is_the_ct_itself(tmp_path, vol):
    write_series(tmp_path / "s", vol, axial_planes(vol, np.arange(48) * 3.0))
    got = read_dicom_series(tmp_path / "s")
    assert not got.resampled
    np.testing.assert_allclose(got.affine_ras, vol.affine_ras, atol=1e-4)
    np.testing.assert_array_equal(got.data, vol.data)
    case = read_image(tmp_path / "s")  # the engine's reader goes through the same path
    assert case.fmt == "dicom" and case.shape == vol.data.shape
    assert case.image.meta["dicom_series_uid"] == got.series.uid
    assert any("series 3" in w and got.series.uid in w for w in case.warnings)


def test_missing_slices_are_refused(tmp_path, vol):
    """Observation: 5 missing slices were read as one uniform 1.147 mm spacing."""
    planes = axial_planes(vol, np.arange(48) * 3.0)
    write_series(tmp_path / "s", vol, planes[:20] + planes[25:])
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    text = one_line(exc)
    assert "slices missing" in text and "about 5 missing" in text and "18.00 mm" in text
    with pytest.raises(InputError):
        read_image(tmp_path / "s")


def test_three_mm_then_one_mm_is_resampled_exactly(tmp_path, vol):
    """Observation: slices at 1 mm then 3 mm became one uniform 1.974 mm. Now: a regular grid with the usual
    (median) step, here 3 mm, equal to the original CT resampled onto that grid by SimpleITK. (Where 1 mm is the
    usual step, the 3 mm steps are 3 x the usual step: missing slices, refused; see the test below.)"""
    positions = list(np.arange(16) * 1.0) + list(18.0 + 3.0 * np.arange(42))  # 0..15 by 1, then 18..141 by 3
    write_series(tmp_path / "s", vol, axial_planes(vol, positions))
    got = read_dicom_series(tmp_path / "s")
    assert got.resampled and got.data.shape == (64, 64, 48)
    spacing = np.linalg.norm(got.affine_ras[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [3.0, 3.0, 3.0], atol=1e-6)
    assert any("non-uniform slice spacing" in n for n in got.notes)
    truth = truth_on_grid(vol, got.data.shape, got.affine_ras)
    err = np.abs(got.data - truth)
    # generated slices are rounded to integer HU: 0.5 HU at most
    assert err.max() <= 0.51, err.max()
    case = read_image(tmp_path / "s")
    assert any("resampled" in w for w in case.warnings)
    np.testing.assert_allclose(case.affine_ras, got.affine_ras)


def test_change_of_pitch_is_resampled_a_multiple_of_the_usual_step_is_refused(tmp_path, vol):
    """Issue 26 item 6, the rule: a step that is a whole multiple (m >= 2, within 10 % of a step) of the usual
    (median) step is m - 1 missing slices wherever it occurs; other non-uniform steps are resampled. 1 mm then
    2.5 mm is resampled; 1 mm then 6 mm (1 mm usual), 6 mm between 1 mm steps on both sides, two single missing
    slices two apart and every other slice missing along a stretch are refused."""
    pitch = list(np.arange(10) * 1.0) + list(11.5 + 2.5 * np.arange(8))
    write_series(tmp_path / "pitch", vol, axial_planes(vol, pitch))
    got = read_dicom_series(tmp_path / "pitch")
    assert got.resampled
    truth = truth_on_grid(vol, got.data.shape, got.affine_ras)
    inside = np.arange(got.data.shape[2]) * 1.0 <= 9.0  # the 1 mm part: both interpolate V the same way
    assert np.abs(got.data - truth)[:, :, inside].max() <= 0.51
    every = np.arange(48) * 3.0
    cases = {
        "six_after_one": (list(np.arange(10) * 1.0) + list(15.0 + 6.0 * np.arange(8)), "about 5 missing"),
        "gap_between": (list(np.arange(10) * 1.0) + list(15.0 + np.arange(8)), "about 5 missing"),
        "two_single": (list(np.delete(every, [20, 22])), "about 1 missing"),
        "every_other": (list(np.delete(every, range(11, 31, 2))), "2 x the usual 3.00 mm step"),
    }
    for name, (positions, words) in cases.items():
        write_series(tmp_path / name, vol, axial_planes(vol, positions))
        with pytest.raises(InputError) as exc:
            read_dicom_series(tmp_path / name)
        text = one_line(exc)
        assert "slices missing" in text and words in text, (name, text)


def bone_centroid_mm(data: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    idx = np.argwhere(data > 300).astype(np.float64)
    return (affine_ras @ np.append(idx.mean(axis=0), 1.0))[:3]


def test_gantry_tilt_is_resampled_in_patient_space(tmp_path, vol):
    """Observation: a 20 degree gantry tilt was ignored (last slice 13 mm off). Now resampled onto a grid
    orthogonal to the slices; checked against SimpleITK's resampling of the sheared stack (built from the
    slice positions) and against the original CT in patient space."""
    import SimpleITK as sitk

    planes = tilted_planes(vol, n=26, step_mm=3.0, tilt_deg=20.0)
    write_series(tmp_path / "s", vol, planes)
    got = read_dicom_series(tmp_path / "s")
    assert got.resampled and any("tilted or sheared" in n for n in got.notes)

    # Independent path 1: the acquired slices as one sheared SimpleITK image, resampled linearly onto our grid.
    stack = np.stack([np.rint(p.sample(vol.sitk())) for p in planes])  # (Z, rows, cols), as stored
    sheared = sitk.GetImageFromArray(stack.astype(np.float32))
    step = planes[1].origin - planes[0].origin
    direction = np.column_stack([planes[0].row, planes[0].col, step / np.linalg.norm(step)])
    sheared.SetDirection([float(v) for v in direction.ravel()])
    sheared.SetSpacing([3.0, 3.0, float(np.linalg.norm(step))])
    sheared.SetOrigin([float(v) for v in planes[0].origin])
    fill = float(got.data.min())
    itk = resample_sitk(sheared, got.data.shape, got.affine_ras, default=fill)
    diff = np.abs(got.data - itk)
    assert diff.max() < 0.05, diff.max()

    # Independent path 2: the original regular CT in patient space (two interpolations: compare robustly).
    truth = truth_on_grid(vol, got.data.shape, got.affine_ras, default=fill)
    inside = (itk > fill) & (truth > -1000)
    assert inside.sum() > 50_000
    mae = float(np.abs(got.data - truth)[inside].mean())
    centroid_err = np.linalg.norm(bone_centroid_mm(np.where(inside, got.data, fill), got.affine_ras)
                                  - bone_centroid_mm(np.where(inside, truth, fill), got.affine_ras))
    assert mae < 25.0 and centroid_err < 0.5, (mae, centroid_err)
    # The old reading (slices stacked along the normal, tilt ignored) is off by far more: the test can tell.
    naive = np.stack([np.rint(p.sample(vol.sitk())) for p in planes]).transpose(2, 1, 0)
    lps = np.eye(4)
    normal = np.cross(planes[0].row, planes[0].col)
    lps[:3, 0], lps[:3, 1] = planes[0].row * 3.0, planes[0].col * 3.0
    lps[:3, 2] = normal * float(step @ normal)
    lps[:3, 3] = planes[0].origin
    naive_affine = RAS_TO_LPS @ lps
    naive_truth = truth_on_grid(vol, naive.shape, naive_affine)
    keep = naive_truth > -1000
    naive_err = np.linalg.norm(bone_centroid_mm(np.where(keep, naive, -1024), naive_affine)
                               - bone_centroid_mm(np.where(keep, naive_truth, -1024), naive_affine))
    assert naive_err > 5.0, naive_err
    print(f"tilt 20 deg: max |ours - ITK sheared| {diff.max():.4f} HU; vs original CT MAE {mae:.1f} HU, "
          f"bone centroid {centroid_err:.3f} mm (tilt ignored: {naive_err:.1f} mm)")


def test_missing_image_position_is_refused(tmp_path, vol):
    """Observation: no ImagePositionPatient and SliceThickness 2.5 gave spacing 1.0 (volumes x0.4)."""

    def strip(ds, k):
        del ds.ImagePositionPatient
        ds.SliceThickness = 2.5

    write_series(tmp_path / "s", vol, axial_planes(vol, np.arange(12) * 2.5), edit=strip)
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    assert "ImagePositionPatient" in one_line(exc)


@pytest.mark.parametrize("variant", ["size", "orientation", "duplicate"])
def test_mixed_stack_is_refused(tmp_path, vol, variant):
    planes = axial_planes(vol, np.arange(10) * 3.0)
    ids = new_ids()
    write_series(tmp_path / "s", vol, planes, ids=ids)
    if variant == "size":
        small = load_crop_like(vol, 32)
        write_series(tmp_path / "s", small, axial_planes(small, [31.5]), ids=ids, prefix="odd")
        expected = "different sizes"
    elif variant == "orientation":
        odd = axial_planes(vol, [31.5])[0]
        odd.col = -odd.col
        write_series(tmp_path / "s", vol, [odd], ids=ids, prefix="odd")
        expected = "different orientations"
    else:
        write_series(tmp_path / "s", vol, [planes[4]], ids=ids, prefix="odd")  # a second image at one position
        expected = "share a slice position"
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    assert expected in one_line(exc)


def load_crop_like(vol, n: int):
    from dicom_factory import Volume

    return Volume(vol.data[:n, :n].copy(), vol.affine_ras.copy())


def test_slice_order_is_along_the_normal_not_instance_number(tmp_path, vol):
    """InstanceNumber reversed and file names shuffled: the order comes from the positions alone."""

    def reverse(ds, k):
        ds.InstanceNumber = 100 - k

    write_series(tmp_path / "s", vol, axial_planes(vol, np.arange(20) * 3.0), edit=reverse)
    got = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(got.data, vol.data[:, :, :20])
