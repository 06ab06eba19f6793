"""Alignment of the current CT to the prior around the pancreas (SimpleITK), its residual and plausibility.

Method (repeated in compare.json under ``alignment.method``):

1. Both sides are cropped to their gland (pancreas + lesion labels) with a margin (``FIXED_MARGIN_MM`` on the
   prior, ``MOVING_MARGIN_MM`` on the current, which must hold the prior's crop after any plausible motion).
2. Initialisation from the two glands' masks: the translation that puts the current gland's centre of mass
   on the prior's (``CenteredTransformInitializer``, moments of the masks).
3. Rigid (Euler 3D), then affine, each by Mattes mutual information on the CT intensities restricted to the
   prior gland dilated by ``METRIC_MASK_MM`` (the metric's fixed mask), gradient descent over two
   resolutions (shrink 2, 1; smoothing 1, 0 mm), a fixed sampling seed (the same inputs give the same result).
4. Residual: the current gland is carried into the prior's grid (nearest neighbour) and compared with the
   prior gland: mean symmetric surface distance (mm) and Dice; the CTs' correlation inside the metric's mask.
5. Plausibility: the alignment is refused when the residual exceeds ``MAX_SURFACE_DISTANCE_MM``, the glands'
   Dice is below ``MIN_GLAND_DICE``, the CTs correlate below ``MIN_CT_CORRELATION``, the affine scales the anatomy outside ``SCALE_RANGE`` or rotates it
   by more than ``MAX_ROTATION_DEG``: a different patient or body part, or a registration that failed; a change
   measured across such an alignment would be the misalignment's. The limits were set on the synthetic pairs
   (same phantom: residual <= 0.22 mm, Dice >= 0.96, correlation >= 0.94, scales within 3 %; another phantom:
   residual 0.9-2.2 mm, Dice 0.68-0.85, correlation 0.70-0.74, a scale off by 12-30 %) with room for a
   model's segmentation noise and breathing; on real pairs they are a first calibration, not a validated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from . import grids

FIXED_MARGIN_MM = 20.0
MOVING_MARGIN_MM = 45.0
METRIC_MASK_MM = 10.0
MAX_SURFACE_DISTANCE_MM = 1.5
MIN_GLAND_DICE = 0.75
MIN_CT_CORRELATION = 0.80
SCALE_RANGE = (0.90, 1.10)
MAX_ROTATION_DEG = 30.0
SEED = 20240601
METHOD = ("current CT registered to the prior around the pancreas (SimpleITK): initialised by the glands' centres "
          "of mass, rigid (Euler 3D) then affine, Mattes mutual information restricted to the prior gland dilated "
          f"by {METRIC_MASK_MM:g} mm, two resolutions; residual = mean symmetric surface distance and Dice of the "
          "glands after alignment")
LIMITS = {"max_mean_surface_distance_mm": MAX_SURFACE_DISTANCE_MM, "min_gland_dice": MIN_GLAND_DICE,
          "min_ct_correlation": MIN_CT_CORRELATION,
          "scale_range": list(SCALE_RANGE), "max_rotation_deg": MAX_ROTATION_DEG}


@dataclass
class Alignment:
    """The transform (prior physical point -> current physical point, LPS) and how good it is."""

    transform: Any
    matrix_lps: np.ndarray  # 4x4, prior LPS -> current LPS
    mean_surface_distance_mm: float
    gland_dice: float
    ct_correlation: float
    scales: list[float]
    rotation_deg: float
    refusal: str | None

    def describe(self) -> dict[str, Any]:
        ras = grids.RAS_TO_LPS
        m = np.eye(4)
        m[:3, :3] = ras @ self.matrix_lps[:3, :3] @ ras
        m[:3, 3] = ras @ self.matrix_lps[:3, 3]
        return {"method": METHOD, "limits": dict(LIMITS),
                "prior_to_current_ras": [[round(float(v), 6) for v in row] for row in m],
                "mean_surface_distance_mm": round(self.mean_surface_distance_mm, 2),
                "gland_dice": round(self.gland_dice, 4),
                "ct_correlation": round(self.ct_correlation, 4), "scales": [round(s, 4) for s in self.scales],
                "rotation_deg": round(self.rotation_deg, 2), "plausible": self.refusal is None,
                "refusal": self.refusal}

    def prior_to_current_ras(self, points_ras: np.ndarray) -> np.ndarray:
        """Prior RAS points carried into the current scan's RAS space."""
        p = np.atleast_2d(np.asarray(points_ras, dtype=np.float64)) * np.diag(grids.RAS_TO_LPS)
        q = p @ self.matrix_lps[:3, :3].T + self.matrix_lps[:3, 3]
        return q * np.diag(grids.RAS_TO_LPS)

    def current_to_prior_ras(self, points_ras: np.ndarray) -> np.ndarray:
        """Current RAS points carried into the prior scan's RAS space."""
        inv = np.linalg.inv(self.matrix_lps)
        p = np.atleast_2d(np.asarray(points_ras, dtype=np.float64)) * np.diag(grids.RAS_TO_LPS)
        return (p @ inv[:3, :3].T + inv[:3, 3]) * np.diag(grids.RAS_TO_LPS)


def _gland(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels) > 0


def _stage(fixed: Any, moving: Any, mask: Any, initial: Any, iterations: int) -> Any:
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.5, SEED)
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed, moving)


def _matrix(transform: Any) -> np.ndarray:
    """4x4 LPS matrix of a (composite of) linear SimpleITK transform(s), fixed point -> moving point."""
    import SimpleITK as sitk

    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    cols = [np.array(transform.TransformPoint(tuple(float(v) for v in e))) - origin for e in np.eye(3)]
    m = np.eye(4)
    m[:3, :3] = np.stack(cols, axis=1)
    m[:3, 3] = origin
    del sitk
    return m


def _surface_distance(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> float:
    """Mean symmetric surface distance (mm) between two masks on one grid."""
    if not a.any() or not b.any():
        return float("inf")
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    da = ndimage.distance_transform_edt(~sa, sampling=spacing)
    db = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return float((db[sa].sum() + da[sb].sum()) / (sa.sum() + sb.sum()))


def _refusal(msd: float, dice: float, corr: float, scales: list[float], rotation: float) -> str | None:
    if not np.isfinite(msd) or msd > MAX_SURFACE_DISTANCE_MM or dice < MIN_GLAND_DICE:
        return (f"the glands do not align (mean surface distance {msd:.1f} mm, limit {MAX_SURFACE_DISTANCE_MM:g}; "
                f"Dice {dice:.2f}, at least {MIN_GLAND_DICE:g} needed)")
    if corr < MIN_CT_CORRELATION:
        return (f"the CTs around the gland differ after alignment (correlation {corr:.2f}, at least "
                f"{MIN_CT_CORRELATION:g} needed)")
    if min(scales) < SCALE_RANGE[0] or max(scales) > SCALE_RANGE[1]:
        return (f"the alignment scales the anatomy by {min(scales):.2f}-{max(scales):.2f} "
                f"(plausible {SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g})")
    if rotation > MAX_ROTATION_DEG:
        return f"the alignment rotates the anatomy by {rotation:.0f} degrees (plausible up to {MAX_ROTATION_DEG:g})"
    return None


def align(prior_ct: np.ndarray, prior_labels: np.ndarray, prior_affine: np.ndarray,
          current_ct: np.ndarray, current_labels: np.ndarray, current_affine: np.ndarray) -> Alignment:
    """Register the current CT to the prior around the gland; see the module docstring."""
    import SimpleITK as sitk

    fbox = grids.crop_box(_gland(prior_labels), prior_affine, FIXED_MARGIN_MM)
    mbox = grids.crop_box(_gland(current_labels), current_affine, MOVING_MARGIN_MM)
    faff, maff = grids.cropped_affine(prior_affine, fbox), grids.cropped_affine(current_affine, mbox)
    fgland, mgland = _gland(prior_labels[fbox]), _gland(current_labels[mbox])
    fixed = grids.to_image(np.asarray(prior_ct[fbox], dtype=np.float32), faff)
    moving = grids.to_image(np.asarray(current_ct[mbox], dtype=np.float32), maff)
    spacing = np.array(fixed.GetSpacing())
    radius = np.maximum(np.round(METRIC_MASK_MM / spacing).astype(int), 1)
    fmask_arr = ndimage.binary_dilation(fgland, structure=_ellipsoid(radius))
    fmask = grids.to_image(fmask_arr.astype(np.uint8), faff)
    fg = grids.to_image(fgland.astype(np.float32), faff)
    mg = grids.to_image(mgland.astype(np.float32), maff)
    init = sitk.CenteredTransformInitializer(fg, mg, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = _stage(fixed, moving, fmask, init, 200)
    affine = sitk.AffineTransform(3)
    m = _matrix(rigid)
    affine.SetMatrix([float(v) for v in m[:3, :3].ravel()])
    affine.SetTranslation([float(v) for v in m[:3, 3]])
    final = _stage(fixed, moving, fmask, affine, 200)
    matrix = _matrix(final)
    warped = grids.resample(grids.to_image(mgland.astype(np.uint8), maff), fixed, final, nearest=True)
    wg = grids.from_image(warped)[0] > 0
    inter = float(np.logical_and(wg, fgland).sum())
    dice = 2.0 * inter / max(1.0, float(wg.sum() + fgland.sum()))
    msd = _surface_distance(fgland, wg, np.linalg.norm(faff[:3, :3], axis=0))
    ct = grids.from_image(grids.resample(moving, fixed, final, nearest=False, default=-1000.0))[0]
    corr = float(np.corrcoef(grids.from_image(fixed)[0][fmask_arr], ct[fmask_arr])[0, 1])
    u, s, vt = np.linalg.svd(matrix[:3, :3])
    rot = u @ vt
    rotation = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))
    scales = [float(v) for v in s]
    return Alignment(final, matrix, msd, dice, corr, scales, rotation, _refusal(msd, dice, corr, scales, rotation))


def _ellipsoid(radius: np.ndarray) -> np.ndarray:
    r = [int(v) for v in radius]
    g = np.ogrid[tuple(slice(-v, v + 1) for v in r)]
    dist = np.zeros([2 * v + 1 for v in r])
    for x, v in zip(g, r, strict=True):
        dist = dist + (x / max(v, 1)) ** 2
    return np.asarray(dist <= 1.0)
