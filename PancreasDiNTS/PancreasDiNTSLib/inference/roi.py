"""ROI mode: labels inside a box only. ``grid`` runs only the full run's windows that touch the box (labels in
the box equal the full run's); ``local`` runs the whole pipeline on the CT cropped to the box plus context
(:func:`crop_image`, :func:`paste_labels`), so every stage's time scales with the box, at the price of other
window positions. Labels outside the box are 0 in both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.inference.fastpath import FastInferer


def box_to_voxels(box: Sequence[float], affine: np.ndarray, shape: Sequence[int], space: str = "voxel"
                  ) -> tuple[tuple[int, int], ...]:
    """A box -> half-open voxel ranges ((i0, i1), (j0, j1), (k0, k1)) of an image, clipped to it.

    ``box`` is (x0, y0, z0, x1, y1, z1): voxel indices (``space="voxel"``, x1 exclusive) or RAS millimetres
    (``space="ras"``; voxels whose centres lie inside the box). ``affine`` maps voxel indices to RAS.
    """
    b = np.asarray(box, dtype=float).reshape(2, 3)
    lo, hi = np.minimum(b[0], b[1]), np.maximum(b[0], b[1])
    if space == "voxel":
        start, stop = np.floor(lo), np.ceil(hi)
    elif space == "ras":
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))  # 8 x 3
        inv = np.linalg.inv(np.asarray(affine, dtype=float))
        ijk = (inv[:3, :3] @ corners.T).T + inv[:3, 3]
        start, stop = np.ceil(ijk.min(0) - 1e-6), np.floor(ijk.max(0) + 1e-6) + 1
    else:
        raise ValueError(f"box space must be 'voxel' or 'ras', not {space!r}")
    ranges = []
    for a in range(3):
        s = int(min(max(start[a], 0), shape[a]))
        e = int(min(max(stop[a], s), shape[a]))
        ranges.append((s, e))
    if any(e <= s for s, e in ranges):
        raise ValueError(f"the box {tuple(box)} ({space}) does not overlap the image (shape {tuple(shape)})")
    return tuple(ranges)


def crop_image(image: Any, ranges: Sequence[tuple[int, int]], margin_mm: float = 24.0,
               min_size_mm: Sequence[float] | None = (96.0, 96.0, 96.0)) -> tuple[Any, tuple[slice, ...]]:
    """Crop a channel-first MetaTensor to ``ranges`` grown by ``margin_mm`` of context (and to at least
    ``min_size_mm``, the network's window, where the image allows), with the affine moved accordingly.

    Returns (cropped MetaTensor without applied operations, the spatial slices into the original).
    """
    from monai.data import MetaTensor

    affine = np.asarray(image.affine, dtype=float)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    shape = image.shape[1:]
    slices = []
    for a, (s, e) in enumerate(ranges):
        m = int(math.ceil(margin_mm / spacing[a]))
        s, e = s - m, e + m
        if min_size_mm is not None:
            need = int(math.ceil(min_size_mm[a] / spacing[a])) - (e - s)
            if need > 0:
                s, e = s - need // 2, e + need - need // 2
        s, e = max(s, 0), min(e, shape[a])
        slices.append(slice(s, e))
    arr = image.as_tensor()[(slice(None),) + tuple(slices)].clone()
    shift = np.eye(4)
    shift[:3, 3] = [sl.start for sl in slices]
    meta = {k: v for k, v in image.meta.items() if k not in ("affine", "spatial_shape")}
    new_affine = affine @ shift
    meta["spatial_shape"] = np.asarray(arr.shape[1:])
    out = MetaTensor(arr, affine=torch.as_tensor(new_affine, dtype=torch.float64), meta=meta)
    return out, tuple(slices)


def paste_labels(labels_crop: np.ndarray, crop: Sequence[slice], ranges: Sequence[tuple[int, int]],
                 full_shape: Sequence[int]) -> np.ndarray:
    """Labels of the cropped run -> a full-size label map, zero outside the box ``ranges``."""
    out = np.zeros(tuple(full_shape), dtype=labels_crop.dtype)
    box = tuple(slice(s, e) for s, e in ranges)
    inner = tuple(slice(s - c.start, e - c.start) for (s, e), c in zip(ranges, crop, strict=True))
    out[box] = labels_crop[inner]
    return out


def predict_roi(segmenter: Any, image: Any, box: Sequence[float], space: str = "voxel", mode: str = "grid",
                margin_mm: float = 24.0, fast: FastInferer | None = None) -> np.ndarray:
    """ROI mode: labels for ``image`` inside ``box`` (zero elsewhere), via the Segmenter's own stages.

    ``mode="grid"`` (exact inside the box): the whole image is preprocessed as usual, then only the windows of
    the full run's grid that touch the box (grown by 2 voxels for the inversion's interpolation) run; the
    logits there are the full run's, so the labels inside the box equal the full run's. Time: the windows
    touching the box, plus full-size preprocessing and inversion.
    ``mode="local"`` (time proportional to the box): the CT is cropped to the box plus ``margin_mm`` of
    context (at least one window wide) and the whole pipeline runs on the crop. The windows sit elsewhere than
    in the full run, so labels near uncertain boundaries can differ (how much depends on the model).
    The grid windows run through ``Segmenter.infer_box`` (``fast``: another inferer instead, e.g. a test's).
    """
    ranges = box_to_voxels(box, np.asarray(image.affine), image.shape[1:], space)
    full_shape = image.shape[1:]
    if mode == "local":
        cropped, crop = crop_image(image, ranges, margin_mm=margin_mm, min_size_mm=segmenter.spec.roi_size)
        labels = segmenter.predict(cropped)
        return paste_labels(labels, crop, ranges, full_shape)
    if mode != "grid":
        raise ValueError(f"ROI mode must be 'grid' or 'local', not {mode!r}")
    pre = segmenter.preprocess(image)
    # the box's corners in the preprocessed grid (both affines map voxels to the same world space)
    src = np.asarray(image.affine, dtype=float)
    dst_inv = np.linalg.inv(np.asarray(pre.affine, dtype=float))
    corners = np.array(list(itertools.product(*[(s - 0.5, e - 0.5) for s, e in ranges])))
    ijk = (dst_inv @ (src @ np.c_[corners, np.ones(len(corners))].T))[:3].T
    pre_shape = pre.shape[1:]
    region = tuple((int(max(0, math.floor(ijk[:, a].min()) - 2)), int(min(pre_shape[a], math.ceil(ijk[:, a].max()) + 3)))
                   for a in range(3))
    logits = fast(pre, region=region) if fast is not None else segmenter.infer_box(pre, region)
    labels = segmenter.postprocess(logits, pre)
    return paste_labels(labels, tuple(slice(0, s) for s in full_shape), ranges, full_shape)
