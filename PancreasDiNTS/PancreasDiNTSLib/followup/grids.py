"""numpy (X, Y, Z) arrays with RAS affines <-> SimpleITK images (LPS physical space), and resampling."""

from __future__ import annotations

from typing import Any

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_image(array: np.ndarray, affine_ras: np.ndarray) -> Any:
    """A SimpleITK image of an (X, Y, Z) array on the grid of ``affine_ras``."""
    import SimpleITK as sitk

    a = np.asarray(affine_ras, dtype=np.float64)
    lin = RAS_TO_LPS @ a[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lin / spacing).ravel()])
    img.SetOrigin([float(v) for v in RAS_TO_LPS @ a[:3, 3]])
    return img


def from_image(img: Any) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) array and RAS affine of a SimpleITK image."""
    import SimpleITK as sitk

    spacing = np.array(img.GetSpacing())
    direction = np.array(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ (direction * spacing)
    affine[:3, 3] = RAS_TO_LPS @ np.array(img.GetOrigin())
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), affine


def resample(moving: Any, reference: Any, transform: Any, nearest: bool, default: float = 0.0) -> Any:
    """``moving`` on ``reference``'s grid; ``transform`` maps reference points to moving points."""
    import SimpleITK as sitk

    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(moving, reference, transform, interp, default, moving.GetPixelID())


def crop_box(mask: np.ndarray, affine_ras: np.ndarray, margin_mm: float) -> tuple[slice, ...]:
    """Index slices of ``mask``'s bounding box widened by ``margin_mm`` (clipped to the array)."""
    idx = np.argwhere(mask)
    spacing = np.linalg.norm(np.asarray(affine_ras, dtype=np.float64)[:3, :3], axis=0)
    pad = np.ceil(margin_mm / spacing).astype(int)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def cropped_affine(affine_ras: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of ``array[box]``."""
    out = np.array(affine_ras, dtype=np.float64)
    out[:3, 3] = out[:3, :3] @ np.array([s.start for s in box], dtype=np.float64) + out[:3, 3]
    return out
