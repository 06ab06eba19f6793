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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["SLAB_THRESHOLD", "can_invert_in_slabs", "invert_labels"]

# Invert in slabs when the inverted probabilities (classes x input voxels) would exceed this many values
# (2**26: 256 MB in float32, 512 MB in float64); below it the one-piece MONAI Invertd runs.
SLAB_THRESHOLD = 2**26


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


def invert_labels(probs: torch.Tensor, pre: Any, slab_voxels: int = 2**23) -> np.ndarray:
    """Class probabilities ``(C, *pre_grid)`` -> uint8 labels on the input grid, as Invertd + argmax would give.

    ``pre`` is the preprocessed image (its ``applied_operations`` say what to invert); see
    :func:`can_invert_in_slabs`. ``slab_voxels``: output voxels resampled at a time.
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.data.utils import AFFINE_TOL
    from monai.networks.layers import AffineTransform
    from monai.transforms import Orientation
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
    unchanged = (torch.allclose(src_affine, dst_affine, atol=AFFINE_TOL)
                 or torch.allclose(xform, torch.eye(4, dtype=torch.float64), atol=AFFINE_TOL)) and in_size == out_size
    if unchanged:  # MONAI returns the image as it is
        labels[...] = probs.to(torch.float32).argmax(0).cpu().numpy()
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
            del slab
    # the orientation flip back to the input's axes (exact on labels)
    orig_affine = np.asarray(orient_op["extra_info"]["original_affine"], dtype=np.float64)
    ras = (("L", "R"), ("P", "A"), ("I", "S"))
    axcodes = nib.orientations.aff2axcodes(orig_affine, labels=ras)
    oriented = MetaTensor(torch.from_numpy(labels)[None], affine=dst_affine)
    back = Orientation(axcodes="".join(axcodes), as_closest_canonical=False, labels=ras)(oriented)
    return np.ascontiguousarray(np.asarray(back.as_tensor()[0].numpy(), dtype=np.uint8))
