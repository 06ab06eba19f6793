"""Model confidence from softmax probabilities on the input grid: a uint8 map, per-segment summaries and an
uncalibrated case-level lesion score.

- confidence map: ``round(255 * max_c p_c)`` per voxel, uint8 (255 = one class certain; with 3 classes the
  floor is 255/3 = 85). It is computed slab by slab, so it also works on the slabs of the slab inversion.
- mean confidence of a segment: the mean probability of that segment's class over the voxels labelled with it
  (equal to the mean max-probability there when the labels are the argmax of the same probabilities).
- low confidence near the boundary: voxels whose max probability is below ``LOW_CONFIDENCE`` (0.5: no class
  holds a majority) inside a band of ``BAND_VOXELS`` (2) voxels on either side of the segment's boundary
  (every voxel with a voxel of the other side within Chebyshev distance 2 on the grid: 26-connected dilation
  minus erosion; the volume's edge is not a boundary); reported in mL.
- lesion score: the maximum lesion probability over the volume (as detection studies score a case) and where
  it is; it is NOT calibrated: not a probability that the patient has a lesion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..core.terminology import LESION_LABEL, SEGMENTS
from . import geometry as geo

LOW_CONFIDENCE = 0.5
BAND_VOXELS = 2
SLAB_VOXELS = 1 << 24  # voxels per slab when reducing over classes
METHODS = {
    "confidence_map": "uint8 = round(255 x max softmax probability) per voxel on the input grid",
    "mean_confidence": "mean probability of the segment's class over its voxels",
    "low_confidence_band_ml": f"volume of voxels with max probability < {LOW_CONFIDENCE} within {BAND_VOXELS} "
                              "voxels (26-connected dilation minus erosion) of the segment's boundary",
    "lesion_score": "maximum lesion-class probability over the volume; uncalibrated",
}


def _check(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities)
    if p.ndim != 4 or p.shape[0] < 2:
        raise ValueError(f"probabilities must be (C, X, Y, Z) with C >= 2, got shape {p.shape}")
    return p


def _slabs(shape: tuple[int, ...]) -> list[slice]:
    per = max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:-1])) * shape[0]))
    return [slice(z, min(shape[-1], z + per)) for z in range(0, shape[-1], per)]


def max_probability(probabilities: np.ndarray) -> np.ndarray:
    """Max over classes (X, Y, Z), float32, slab by slab."""
    p = _check(probabilities)
    out = np.empty(p.shape[1:], dtype=np.float32)
    for sl in _slabs(p.shape):
        out[..., sl] = p[..., sl].max(axis=0)
    return out


def confidence_map(probabilities: np.ndarray) -> np.ndarray:
    """uint8 confidence (X, Y, Z) = round(255 x max softmax probability), clipped to 0..255."""
    p = _check(probabilities)
    out = np.empty(p.shape[1:], dtype=np.uint8)
    for sl in _slabs(p.shape):
        out[..., sl] = np.clip(np.rint(255.0 * p[..., sl].max(axis=0).astype(np.float32)), 0, 255)
    return out


def boundary_band(mask: np.ndarray, width: int = BAND_VOXELS) -> np.ndarray:
    """Voxels within ``width`` voxels (Chebyshev) of a voxel on the other side of the mask's boundary."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros_like(m)
    cube = np.ones((3, 3, 3), dtype=bool)
    lo = [max(0, int(np.flatnonzero(m.any(axis=tuple(b for b in range(3) if b != a)))[0]) - width - 1)
          for a in range(3)]
    hi = [min(m.shape[a], int(np.flatnonzero(m.any(axis=tuple(b for b in range(3) if b != a)))[-1]) + width + 2)
          for a in range(3)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = m[crop]
    grown = ndimage.binary_dilation(sub, structure=cube, iterations=width)
    shrunk = ndimage.binary_erosion(sub, structure=cube, iterations=width, border_value=1)
    band = np.zeros_like(m)
    band[crop] = grown & ~shrunk
    return band


def _segments(lab: np.ndarray, low: np.ndarray, mean_of: Any, vml: float, band_voxels: int,
              channels: int) -> dict[str, Any]:
    segments: dict[str, Any] = {}
    for seg in SEGMENTS:
        mask = lab == seg.label
        n = int(mask.sum())
        rec: dict[str, Any] = {"label": seg.label, "name": seg.name}
        if n == 0 or seg.label >= channels:
            rec.update({"mean_confidence": None, "band_voxels": 0, "low_confidence_band_voxels": 0,
                        "low_confidence_band_ml": 0.0, "low_confidence_band_fraction": None,
                        "reason": f"no voxel labelled {seg.label} ({seg.name})" if n == 0
                        else f"no probability channel for label {seg.label}"})
        else:
            band = boundary_band(mask, band_voxels)
            nb, nl = int(band.sum()), int((band & low).sum())
            rec.update({"mean_confidence": round(float(mean_of(seg.label, mask)), 4),
                        "band_voxels": nb, "low_confidence_band_voxels": nl,
                        "low_confidence_band_ml": round(nl * vml, 4),
                        "low_confidence_band_fraction": round(nl / nb, 4) if nb else None, "reason": None})
        segments[seg.slicer_id] = rec
    return segments


def _score(value: float | None, where: tuple[int, int, int] | None, affine: np.ndarray) -> dict[str, Any]:
    score: dict[str, Any] = {"value": None if value is None else round(float(value), 4), "argmax_ras": None,
                             "uncalibrated": True,
                             "meaning": "maximum lesion-class probability over the volume; uncalibrated: "
                                        "a ranking score, not the probability that a lesion is present"}
    if where is not None:
        score["argmax_ras"] = [round(float(v), 2) for v in geo.to_ras(affine, np.array([where], float))[0]]
    if value is None:
        score["reason"] = "no lesion probability given"
    return score


def lesion_max(probabilities: np.ndarray, z_offset: int = 0) -> tuple[float, tuple[int, int, int]] | None:
    """(max lesion probability, its voxel index) of a (C, X, Y, Z) array or slab (``z_offset`` = the slab's first
    index on the last axis); None without a lesion channel. Keep the largest over slabs for ``summary_from_map``."""
    p = _check(probabilities)
    if p.shape[0] <= LESION_LABEL:
        return None
    best: tuple[float, tuple[int, int, int]] | None = None
    for sl in _slabs(p.shape):
        chunk = p[LESION_LABEL][..., sl]
        k = int(np.argmax(chunk))
        if best is None or float(chunk.flat[k]) > best[0]:
            i, j, z = np.unravel_index(k, chunk.shape)
            best = (float(chunk.flat[k]), (int(i), int(j), int(z) + (sl.start or 0) + z_offset))
    return best


def confidence_summary(probabilities: np.ndarray, labels: np.ndarray, affine_ras: np.ndarray,
                       low_threshold: float = LOW_CONFIDENCE, band_voxels: int = BAND_VOXELS) -> dict[str, Any]:
    """Per-segment mean confidence and low-confidence volume near the boundary, and the case lesion score."""
    p = _check(probabilities)
    lab = np.asarray(labels)
    if lab.shape != p.shape[1:]:
        raise ValueError(f"labels {lab.shape} and probabilities {p.shape[1:]} are not on the same grid")
    affine = geo.check_affine(affine_ras)
    vml = geo.voxel_volume_ml(affine)
    low = np.empty(p.shape[1:], dtype=bool)  # max probability < threshold, slab by slab (no float copy)
    for sl in _slabs(p.shape):
        low[..., sl] = p[..., sl].max(axis=0) < low_threshold
    segments = _segments(lab, low, lambda c, m: p[c][m].astype(np.float64).mean(), vml, band_voxels, p.shape[0])
    best = lesion_max(p)
    score = _score(best[0] if best else None, best[1] if best else None, affine)
    if best is None:
        score["reason"] = "no lesion channel in the probabilities"
    return {
        "low_threshold": low_threshold, "band_voxels": band_voxels, "source": "probabilities",
        "low_confidence_total_ml": round(int(low.sum()) * vml, 4),
        "segments": segments, "lesion_score": score, "methods": dict(METHODS),
    }


def summary_from_map(confidence: np.ndarray, labels: np.ndarray, affine_ras: np.ndarray,
                     lesion: tuple[float, tuple[int, int, int]] | None = None,
                     low_threshold: float = LOW_CONFIDENCE, band_voxels: int = BAND_VOXELS) -> dict[str, Any]:
    """The same summary from the uint8 confidence map (for the slab inversion, which never holds the whole
    probability volume) and the labels (their argmax); ``lesion`` = the largest ``lesion_max`` over the slabs.

    Mean confidence is the mean of map/255 (within 1/510 of the float value); "low" is map < 255 x threshold,
    which for the default 0.5 (map <= 127) is exactly max probability < 0.5.
    """
    conf = np.asarray(confidence)
    lab = np.asarray(labels)
    if conf.dtype != np.uint8 or conf.shape != lab.shape or conf.ndim != 3:
        raise ValueError(f"confidence must be a uint8 map on the labels' grid, got {conf.dtype} {conf.shape}")
    affine = geo.check_affine(affine_ras)
    vml = geo.voxel_volume_ml(affine)
    low = conf < 255.0 * low_threshold
    segments = _segments(lab, low, lambda c, m: conf[m].astype(np.float64).mean() / 255.0, vml, band_voxels,
                         len(SEGMENTS) + 1)
    score = _score(lesion[0] if lesion else None, lesion[1] if lesion else None, affine)
    return {
        "low_threshold": low_threshold, "band_voxels": band_voxels, "source": "confidence map (uint8)",
        "low_confidence_total_ml": round(int(low.sum()) * vml, 4),
        "segments": segments, "lesion_score": score, "methods": dict(METHODS),
    }
