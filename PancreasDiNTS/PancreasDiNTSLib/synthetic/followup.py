"""Synthetic follow-up pairs with known truth: one phantom seen twice (moved, re-gridded, lesions changed).

The prior is a phantom without its own tumour on ``PRIOR_GRID``; the current is the same body moved by a
rigid motion (a shift of up to ``MAX_SHIFT_MM`` and a rotation of up to ``MAX_ROTATION_DEG`` about the
gland's centre), resampled (linear) on another grid (spacing, field of view and voxel order differ). Lesions are drawn
analytically on each grid (a voxel is lesion when its centre lies inside the shape), at fixed places along the
gland's centreline (``readout.location``):

=========  ======================  ======================  =======================================
lesion     prior                   current                 expected status
=========  ======================  ======================  =======================================
grown      sphere r 6 mm           sphere r 8 mm           grown
split      ellipsoid 12 x 5 x 5    the same minus a 6 mm   split (one prior, two current parts)
           (semi-axes, mm)         slab across its middle
shrunk     sphere r 8 mm           sphere r 5.5 mm         shrunk
gone       sphere r 4.5 mm         (none)                  no longer seen
new        (none)                  sphere r 4.5 mm         new
=========  ======================  ======================  =======================================

The truth (``truth.json``) gives each lesion's analytic volume and axial diameter on both sides and the
expected RECIST-style category (PD: a new lesion).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.core.atomic import atomic_dir
from PancreasDiNTSLib.core.errors import OutputError
from PancreasDiNTSLib.core.paths import OUTPUT_NAMES
from PancreasDiNTSLib.core.terminology import LESION_LABEL
from PancreasDiNTSLib.core.tracking import case_key, case_tracking
from PancreasDiNTSLib.followup import grids
from PancreasDiNTSLib.io.writers import save_nifti, write_report
from PancreasDiNTSLib.readout.combined import case_readout
from PancreasDiNTSLib.readout.location import centreline

from .phantom import _reorient, make_phantom

PRIOR_GRID = ((144, 144, 72), (1.6, 1.6, 2.5))
CURRENT_GRID = ((168, 160, 96), (1.3, 1.4, 2.0))
CURRENT_ORIENTATION = "LPS"  # the current's voxel axes run left, posterior, superior (the prior's: RAS)
MAX_SHIFT_MM = 20.0
MAX_ROTATION_DEG = 10.0
LESION_HU = -55.0  # below the gland's attenuation
# name -> (fraction along the gland, offset across it in mm, prior radii, current radii, expected status)
LESIONS: dict[str, tuple[float, float, tuple[float, ...] | None, tuple[float, ...] | None, str]] = {
    "grown": (0.085, 0.0, (6.0,) * 3, (8.0,) * 3, "grown"),
    "split": (0.35, 0.0, (12.0, 5.0, 5.0), (12.0, 5.0, 5.0), "split"),
    "shrunk": (0.61, 0.0, (8.0,) * 3, (5.5,) * 3, "shrunk"),
    "gone": (0.785, 5.0, (4.5,) * 3, None, "no longer seen"),
    "new": (0.92, -5.0, None, (4.5,) * 3, "new"),
}
SPLIT_GAP_MM = 3.0  # half the slab removed across the split lesion


@dataclass
class Side:
    """One time point: CT (HU), truth labels, RAS affine."""

    ct: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


@dataclass
class FollowupPair:
    prior: Side
    current: Side
    truth: dict[str, Any] = field(default_factory=dict)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _point_at(nodes: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The point at an arc-length fraction of a polyline and the unit tangent there."""
    seg = np.diff(nodes, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
    s = fraction * cum[-1]
    k = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(seg) - 1))
    t = (s - cum[k]) / max(np.linalg.norm(seg[k]), 1e-9)
    return nodes[k] + t * seg[k], seg[k] / max(np.linalg.norm(seg[k]), 1e-9)


def _paint(side_world: np.ndarray, labels: np.ndarray, ct: np.ndarray, shapes: list[tuple[np.ndarray, np.ndarray,
           np.ndarray, float]]) -> None:
    """Paint ellipsoids (centre, axes as rows, radii, slab half-gap cut across axis 0) given in side's world."""
    flat_l, flat_c = labels.reshape(-1), ct.reshape(-1)
    for centre, axes, radii, gap in shapes:
        local = (side_world - centre) @ axes.T
        inside = ((local / radii) ** 2).sum(axis=1) <= 1.0
        if gap > 0:
            inside &= np.abs(local[:, 0]) > gap
        flat_l[inside] = LESION_LABEL
        flat_c[inside] = LESION_HU


def _lesion_frames(prior_labels: np.ndarray, prior_affine: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Centre (prior RAS) and axes (rows: along the gland, across, the third) of each lesion."""
    line, reason = centreline(prior_labels, prior_affine)
    if line is None:
        raise ValueError(f"follow-up phantom: {reason}")
    out = {}
    for name, (fraction, offset, *_rest) in LESIONS.items():
        point, tangent = _point_at(line.nodes, fraction)
        across = np.cross(tangent, [0.0, 0.0, 1.0])
        across /= np.linalg.norm(across)
        axes = np.stack([tangent, across, np.cross(tangent, across)])
        out[name] = (point + offset * across, axes)
    return out


def _truth(pair_motion: dict[str, Any], prior_affine: np.ndarray, current_affine: np.ndarray) -> dict[str, Any]:
    lesions = {}
    for name, (_f, _o, before, after, status) in LESIONS.items():
        def vol(r: tuple[float, ...] | None, cut: bool = False) -> float | None:
            if r is None:
                return None
            v = 4.0 / 3.0 * math.pi * r[0] * r[1] * r[2] / 1000.0
            if cut:  # the slab |x| <= g removed from an ellipsoid: integral of the cross-sections
                g = SPLIT_GAP_MM / r[0]
                v -= math.pi * r[1] * r[2] * r[0] * (2 * g - 2 * g ** 3 / 3.0) / 1000.0
            return v
        lesions[name] = {"status": status, "prior_volume_ml": vol(before),
                         "current_volume_ml": vol(after, cut=name == "split"),
                         "prior_axial_diameter_mm": None if before is None else 2 * max(before[:2]),
                         "current_axial_diameter_mm": None if after is None or name == "split" else 2 * after[0]}
    return {"lesions": lesions, "motion": pair_motion, "expected_category": "PD",
            "expected_category_reason": "a new lesion",
            "prior_spacing_mm": [float(v) for v in np.linalg.norm(prior_affine[:3, :3], axis=0)],
            "current_spacing_mm": [float(v) for v in np.linalg.norm(current_affine[:3, :3], axis=0)]}


def make_followup_pair(seed: int, shift_mm: tuple[float, ...] | None = None,
                       rotation_deg: tuple[float, ...] | None = None,
                       body_seed: int | None = None) -> FollowupPair:
    """A prior/current pair of one phantom (``body_seed`` for the current: another phantom, a different patient).

    Shift and rotation are drawn from ``seed`` (|shift| <= 20 mm, each angle <= 10 / sqrt(3) degrees so the total
    rotation is <= 10 degrees) unless given."""
    import SimpleITK as sitk

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4242]))
    shape, spacing = PRIOR_GRID
    hu, lab, aff = make_phantom(seed, shape=shape, spacing=spacing, orientation="RAS", tumour=False)
    if shift_mm is None:
        d = rng.normal(size=3)
        shift_mm = tuple(float(v) for v in d / np.linalg.norm(d) * rng.uniform(10.0, MAX_SHIFT_MM))
    if rotation_deg is None:
        rotation_deg = tuple(float(v) for v in rng.uniform(-1, 1, 3) * MAX_ROTATION_DEG / math.sqrt(3.0))
    rot = _rotation(np.array(rotation_deg))
    centre = _world(lab.shape, aff)[(lab == 1).reshape(-1)].mean(axis=0)
    frames = _lesion_frames(lab, aff)
    # the current grid: another spacing and field of view, centred near the body with an offset
    cshape, cspacing = CURRENT_GRID
    caff = np.diag([*cspacing, 1.0])
    caff[:3, 3] = centre - (np.array(cshape) - 1) / 2.0 * np.array(cspacing) + rng.uniform(-15, 15, 3)
    src_hu, src_lab = (hu, lab) if body_seed is None else make_phantom(
        body_seed, shape=shape, spacing=spacing, orientation="RAS", tumour=False)[:2]
    # current world y = R (x - c) + c + t for a prior world point x; the resampling maps y back to x
    motion = np.eye(4)
    motion[:3, :3] = rot
    motion[:3, 3] = centre + np.array(shift_mm) - rot @ centre
    back = np.linalg.inv(motion)
    lps = np.diag([-1.0, -1.0, 1.0])
    t = sitk.AffineTransform(3)
    t.SetMatrix([float(v) for v in (lps @ back[:3, :3] @ lps).ravel()])
    t.SetTranslation([float(v) for v in lps @ back[:3, 3]])
    ref = grids.to_image(np.zeros(cshape, np.uint8), caff)
    cur_hu = grids.from_image(grids.resample(grids.to_image(src_hu.astype(np.float32), aff), ref, t, False,
                                             -1000.0))[0].copy()
    cur_lab = grids.from_image(grids.resample(grids.to_image(src_lab, aff), ref, t, True))[0].copy()
    prior_shapes, current_shapes = [], []
    for name, (_f, _o, before, after, _s) in LESIONS.items():
        c, axes = frames[name]
        if before is not None:
            prior_shapes.append((c, axes, np.array(before), 0.0))
        if after is not None:
            current_shapes.append((motion[:3, :3] @ c + motion[:3, 3], axes @ rot.T, np.array(after),
                                   SPLIT_GAP_MM if name == "split" else 0.0))
    _paint(_world(lab.shape, aff), lab, hu, prior_shapes)
    _paint(_world(cur_lab.shape, caff), cur_lab, cur_hu, current_shapes)
    truth = _truth({"shift_mm": list(shift_mm), "rotation_deg": list(rotation_deg),
                    "prior_to_current_ras": motion.tolist()}, aff, caff)
    cur_hu, cur_lab, caff = _reorient(cur_hu.astype(np.float32), cur_lab.astype(np.uint8), caff, CURRENT_ORIENTATION)
    truth["current_orientation"] = CURRENT_ORIENTATION
    return FollowupPair(Side(hu, lab, aff), Side(cur_hu, cur_lab, caff), truth)


def _write_side(tmp: Path, final: Path, role: str, side: Side) -> None:
    """``<role>-ct.nii.gz`` (the input) and the case folder ``<role>/`` as ``segment`` leaves it, with the truth
    labels as the segmentation."""
    ct_name = f"{role}-ct.nii.gz"
    save_nifti(tmp / ct_name, np.round(side.ct).astype(np.int16), side.affine, np.int16)
    case = tmp / role
    case.mkdir()
    save_nifti(case / OUTPUT_NAMES["nifti"], side.labels, side.affine, np.uint8)
    readout = case_readout(side.labels, side.affine, confidence_reason="truth labels of a synthetic phantom")
    readout["tracking"] = case_tracking(case_key(None, [tmp / ct_name]), readout)
    spacing = [round(float(s), 6) for s in np.linalg.norm(side.affine[:3, :3], axis=0)]
    write_report(case / OUTPUT_NAMES["report"], {
        "case": role, "input": str(final / ct_name), "input_format": "nifti", "shape": list(side.labels.shape),
        "spacing_mm": spacing, "outputs": [OUTPUT_NAMES["nifti"], OUTPUT_NAMES["report"]], "status": "ok",
        "notes": ["synthetic follow-up phantom: the labels are the truth, not a model's segmentation"],
        "readout": readout})


def write_followup_pair(out_dir: Path, seed: int = 0, overwrite: bool = False, other_patient: bool = False) -> Path:
    """Write a follow-up pair: prior-ct.nii.gz, current-ct.nii.gz, the case folders prior/ and current/ (truth
    labels as the segmentation, report.json with the read-out) and truth.json; ``other_patient``: the current is
    another phantom (a comparison that must be refused)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"{out_dir}: folder exists and is not empty; choose a new folder or pass --overwrite")
    pair = make_followup_pair(seed, body_seed=seed + 1 if other_patient else None)
    with atomic_dir(out_dir) as tmp:
        _write_side(tmp, out_dir, "prior", pair.prior)
        _write_side(tmp, out_dir, "current", pair.current)
        truth = dict(pair.truth, seed=int(seed), other_patient=bool(other_patient))
        (tmp / "truth.json").write_text(json.dumps(truth, indent=2), encoding="utf-8")
    return out_dir
