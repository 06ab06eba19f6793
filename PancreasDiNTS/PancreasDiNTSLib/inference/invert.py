"""Inverting the bundle's preprocessing for labels of large CTs, one slab at a time.

The bundle's post-processing is softmax -> ``Invertd`` (bilinear resampling of the class probabilities back to
the input grid, then the orientation flip) -> argmax. ``Invertd`` resamples all classes of the whole input grid at
once, and torch's ``affine_grid`` behind it builds a float64 coordinate grid of 4 values per output voxel: for a
512 x 512 x 1000 CT that is about 13 GB on top of everything else. :func:`invert_labels` computes the same thing
in slabs along the first axis: the same MONAI ``AffineTransform`` (``affine_grid`` + ``grid_sample``, same mode,
padding, ``align_corners`` and dtype as the traced ``Spacingd``), with the transform moved by the slab's offset,
then the argmax per slab and the orientation flip on the uint8 labels (flips and axis swaps commute with the
argmax). Only the coordinates' rounding can differ from the one-piece resampling (tested in
``Testing/test_invert.py``). Memory: the probabilities in the resampling dtype plus one slab.

The read-out's confidence comes from the same resampled probabilities: :func:`invert_probabilities` also hands
out the uint8 confidence map (``readout.confidence.confidence_map`` of each slab, flipped like the labels) and
the largest lesion probability with its voxel (``readout.confidence.lesion_max`` per slab), so the whole-grid
probabilities never exist. :func:`confidence_and_lesion` does the same for probabilities already on the input
grid (the one-piece ``Invertd`` path), slab by slab along the last axis (one slab at a time leaves a GPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.readout.confidence import confidence_map, lesion_max

__all__ = ["SLAB_THRESHOLD", "can_invert_in_slabs", "invert_labels", "invert_probabilities", "confidence_and_lesion"]

Lesion = tuple[float, tuple[int, int, int]]

# Invert in slabs when the inverted probabilities (classes x input voxels) would exceed this many values
# (2**26: 256 MB in float32, 512 MB in float64); below it the one-piece MONAI Invertd runs.
SLAB_THRESHOLD = 2**26
READOUT_SLAB_VALUES = 2**24  # probability values moved to numpy at a time by confidence_and_lesion


def _ops(pre: Any) -> list[dict[str, Any]]:
    return list(getattr(pre, "applied_operations", []) or [])


def can_invert_in_slabs(pre: Any) -> bool:
    """True when ``pre`` was made by exactly Orientation then SpatialResample (the bundle's spatial transforms)."""
    ops = _ops(pre)
    if [op.get("class") for op in ops] != ["Orientation", "SpatialResample"]:
        return False
    info = ops[1].get("extra_info", {})
    return isinstance(info.get("mode"), str) and "src_affine" in info and "original_affine" in ops[0].get(
        "extra_info", {})


def _better(best: Lesion | None, found: Lesion | None) -> Lesion | None:
    return found if found is not None and (best is None or found[0] > best[0]) else best


def confidence_and_lesion(probs: torch.Tensor) -> tuple[np.ndarray, Lesion | None]:
    """(uint8 confidence map, largest lesion probability and its voxel) of class probabilities ``(C, X, Y, Z)``
    on the input grid, slab by slab along the last axis (no float copy of the whole volume leaves the device)."""
    shape = tuple(int(s) for s in probs.shape)
    conf = np.empty(shape[1:], dtype=np.uint8)
    step = max(1, READOUT_SLAB_VALUES // max(1, shape[0] * shape[1] * shape[2]))
    best: Lesion | None = None
    for z0 in range(0, shape[3], step):
        part = probs[..., z0:z0 + step].detach()
        chunk = np.asarray(torch.Tensor.as_subclass(part, torch.Tensor).cpu().numpy())  # a plain tensor
        conf[..., z0:z0 + step] = confidence_map(chunk)
        best = _better(best, lesion_max(chunk, z0))
    return conf, best


def invert_labels(probs: torch.Tensor, pre: Any, slab_voxels: int = 2**23) -> np.ndarray:
    """Class probabilities ``(C, *pre_grid)`` -> uint8 labels on the input grid, as Invertd + argmax would give.

    ``pre`` is the preprocessed image (its ``applied_operations`` say what to invert); see
    :func:`can_invert_in_slabs`. ``slab_voxels``: output voxels resampled at a time.
    """
    return invert_probabilities(probs, pre, slab_voxels, readout=False)[0]


def invert_probabilities(probs: torch.Tensor, pre: Any, slab_voxels: int = 2**23, readout: bool = True,
                         ) -> tuple[np.ndarray, np.ndarray | None, Lesion | None]:
    """(labels, confidence map, lesion maximum) on the input grid from probabilities on the model's grid.

    The labels are :func:`invert_labels`'; with ``readout`` each resampled slab also gives its part of the uint8
    confidence map and its lesion maximum (else both are None)."""
    import nibabel as nib
    from monai.data.utils import AFFINE_TOL
    from monai.networks.layers import AffineTransform
    from monai.transforms.utils import resolves_modes
    from monai.utils import get_torch_dtype_from_string

    if not can_invert_in_slabs(pre):
        raise ValueError("invert_labels: the preprocessing is not Orientation + Spacing")
    orient_op, spacing_op = _ops(pre)
    info = spacing_op["extra_info"]
    dtype = get_torch_dtype_from_string(info["dtype"]) if isinstance(info["dtype"], str) else info["dtype"]
    align = info.get("align_corners")
    align = False if not isinstance(align, bool) else align
    _, mode, padding, _ = resolves_modes(info["mode"], info["padding_mode"])
    src_affine = torch.as_tensor(np.asarray(pre.affine, dtype=np.float64))
    dst_affine = torch.as_tensor(np.asarray(info["src_affine"], dtype=np.float64))
    out_size = tuple(int(s) for s in spacing_op["orig_size"])
    xform = torch.as_tensor(np.linalg.solve(src_affine.numpy(), dst_affine.numpy()), dtype=torch.float64)
    in_size = tuple(probs.shape[1:])

    labels = np.empty(out_size, dtype=np.uint8)
    conf = np.empty(out_size, dtype=np.uint8) if readout else None
    best: Lesion | None = None
    unchanged = (torch.allclose(src_affine, dst_affine, atol=AFFINE_TOL)
                 or torch.allclose(xform, torch.eye(4, dtype=torch.float64), atol=AFFINE_TOL)) and in_size == out_size
    if unchanged:  # MONAI returns the image as it is
        labels[...] = probs.to(torch.float32).argmax(0).cpu().numpy()
        if conf is not None:
            conf[...], best = confidence_and_lesion(probs)
    else:
        img = probs.to(dtype)[None]
        resample = AffineTransform(normalized=False, mode=mode, padding_mode=padding, align_corners=align,
                                   reverse_indexing=True)
        rows = max(1, slab_voxels // max(1, out_size[1] * out_size[2]))
        for x0 in range(0, out_size[0], rows):
            n = min(rows, out_size[0] - x0)
            shift = torch.eye(4, dtype=torch.float64)
            shift[0, 3] = float(x0)
            theta = (xform @ shift).to(img)
            slab = resample(img, theta=theta, spatial_size=(n, out_size[1], out_size[2]))[0]
            labels[x0:x0 + n] = slab.to(torch.float32).argmax(0).cpu().numpy()
            if conf is not None:
                part, found = confidence_and_lesion(slab)
                conf[x0:x0 + n] = part
                if found is not None:
                    best = _better(best, (found[0], (found[1][0] + x0, found[1][1], found[1][2])))
            del slab
    orig_affine = np.asarray(orient_op["extra_info"]["original_affine"], dtype=np.float64)
    axcodes = "".join(nib.orientations.aff2axcodes(orig_affine, labels=_RAS))
    labels = _orient_back(labels, dst_affine, axcodes)
    if conf is None:
        return labels, None, None
    if best is not None:  # the voxel on the input grid: both affines map their indices to the same world point
        ijk = np.linalg.solve(orig_affine, dst_affine.numpy() @ np.array([*best[1], 1.0]))[:3]
        best = (best[0], (int(round(ijk[0])), int(round(ijk[1])), int(round(ijk[2]))))
    return labels, _orient_back(conf, dst_affine, axcodes), best


_RAS = (("L", "R"), ("P", "A"), ("I", "S"))


def _orient_back(volume: np.ndarray, affine: torch.Tensor, axcodes: str) -> np.ndarray:
    """The orientation flip back to the input's axes (exact on uint8 maps)."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    oriented = MetaTensor(torch.from_numpy(volume)[None], affine=affine)
    back = Orientation(axcodes=axcodes, as_closest_canonical=False, labels=_RAS)(oriented)
    plain = torch.Tensor.as_subclass(back, torch.Tensor)  # the MetaTensor's data as a plain tensor
    return np.ascontiguousarray(np.asarray(plain[0].numpy(), dtype=np.uint8))
