"""Large synthetic CTs made of phantom tiles: whole-abdomen-sized volumes for training and for the region benchmark.

A single phantom (:mod:`.phantom`) is a small body about 10 cm wide. A *mosaic* places tiles of 128 x 128 x 60
voxels at 0.8 x 0.8 x 1 mm (the demo model's grid) side by side; each tile is one of :data:`TILE_KINDS`:

- ``gland``: a phantom as drawn (pancreas, usually with a tumour; ``tumour`` forces it),
- ``lesion``: a phantom whose pancreas is painted over with tissue drawn from around it, its tumour kept,
- ``none``: a phantom whose pancreas and tumour are both painted over (anatomy without a gland),
- ``fat``: abdominal fat, -100 HU with 12 HU noise,
- ``tissue``: a smooth random field of fat (-100 HU) and soft tissue (40 HU), blurred, with 12 HU noise.

Labels are the phantoms' own (0 outside the glands and lesions kept). The mosaics used to train the demo model
(``make-phantoms --mosaic``) give it the negative context a lone phantom lacks (fat, tissue and gland-less
anatomy far from a pancreas), which the automatic region's coarse pass needs to find the gland alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from PancreasDiNTSLib.synthetic.phantom import make_phantom

TILE_SHAPE = (128, 128, 60)
TILE_SPACING = (0.8, 0.8, 1.0)
TILE_KINDS = ("gland", "lesion", "none", "fat", "tissue")
FILLERS = ("fat", "tissue", "none", "none")  # a mixed filler's draw (and a training mosaic's other tiles)
Position = tuple[int, int, int]


def fat_tile(seed: int, shape: Sequence[int] = TILE_SHAPE) -> np.ndarray:
    """Abdominal fat: -100 HU with 12 HU noise (about one voxel in seven inside the bundle's HU window)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4401]))
    return (-100.0 + rng.normal(0.0, 12.0, tuple(shape))).astype(np.float32)


def tissue_tile(seed: int, shape: Sequence[int] = TILE_SHAPE) -> np.ndarray:
    """Fat and soft tissue without organs: a smooth random field split at 0 into -100 and 40 HU, partial-volume
    blur and 12 HU noise."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4402]))
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma=(6.0, 6.0, 5.0))
    hu = ndimage.gaussian_filter(np.where(field > 0, 40.0, -100.0).astype(np.float32), 0.7)
    return (hu + rng.normal(0.0, 12.0, tuple(shape))).astype(np.float32)


def tile(kind: str, seed: int, tumour: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32, label uint8) of one tile of ``kind`` (:data:`TILE_KINDS`), RAS, :data:`TILE_SHAPE`."""
    if kind not in TILE_KINDS:
        raise ValueError(f"tile kind must be one of {', '.join(TILE_KINDS)}, not {kind!r}")
    if kind in ("fat", "tissue"):
        hu = fat_tile(seed) if kind == "fat" else tissue_tile(seed)
        return hu, np.zeros(TILE_SHAPE, dtype=np.uint8)
    hu, lab, _ = make_phantom(seed, shape=TILE_SHAPE, spacing=TILE_SPACING, orientation="RAS",
                              tumour=True if kind == "lesion" else (False if kind == "none" else tumour))
    hu, lab = hu.astype(np.float32), lab.astype(np.uint8)
    if kind == "gland":
        return hu, lab
    target = lab == 1 if kind == "lesion" else lab > 0
    ring = ndimage.binary_dilation(lab > 0, iterations=4) & (lab == 0)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4403]))
    hu[target] = rng.choice(hu[ring], size=int(target.sum()))
    lab[target] = 0
    return hu, lab


def make_mosaic(tiles: Sequence[int], kinds: Mapping[Position, str], seed: int, filler: str = "fat",
                crop_x: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU float32, label uint8, RAS affine centred on 0) of a mosaic of ``tiles`` (x, y, z counts); the tile at
    a position in ``kinds`` is of that kind, the others ``filler`` (a tile kind, or ``mixed``: fat, tissue and
    gland-less phantoms, 1 : 1 : 2, drawn from ``seed``). Tile ``n`` (the loops run x, y, z, z innermost) uses
    seed ``seed + n``. ``crop_x`` voxels are cut off the low-x side (a gland cut by the edge)."""
    if filler not in (*TILE_KINDS, "mixed"):
        raise ValueError(f"filler must be a tile kind or 'mixed', not {filler!r}")
    shape = tuple(int(t) * s for t, s in zip(tiles, TILE_SHAPE, strict=True))
    hu = np.empty(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    draw = np.random.default_rng(np.random.SeedSequence([int(seed), 4405]))
    n = 0
    for i in range(tiles[0]):
        for j in range(tiles[1]):
            for k in range(tiles[2]):
                sl = tuple(slice(p * s, (p + 1) * s) for p, s in zip((i, j, k), TILE_SHAPE, strict=True))
                other = str(draw.choice(FILLERS)) if filler == "mixed" else filler
                hu[sl], label[sl] = tile(kinds.get((i, j, k), other), seed + n)
                n += 1
    hu, label = hu[crop_x:], label[crop_x:]
    affine = np.diag([*TILE_SPACING, 1.0])
    affine[:3, 3] = -(np.asarray(hu.shape) - 1) / 2.0 * np.asarray(TILE_SPACING)
    return hu, label, affine


def training_layout(rng: np.random.Generator, tiles: Sequence[int]) -> dict[Position, str]:
    """A random training mosaic: one or two ``gland`` tiles (one in three cases two), sometimes (one in four) a
    ``lesion`` tile, every other tile drawn from fat, tissue and gland-less phantoms (1 : 1 : 2)."""
    positions = [(i, j, k) for i in range(tiles[0]) for j in range(tiles[1]) for k in range(tiles[2])]
    order = rng.permutation(len(positions))
    glands = 2 if len(positions) > 2 and rng.random() < 1 / 3 else 1
    kinds: dict[Position, str] = {}
    for n, index in enumerate(order):
        pos = positions[int(index)]
        if n < glands:
            kinds[pos] = "gland"
        elif n == glands and rng.random() < 0.25:
            kinds[pos] = "lesion"
        else:
            kinds[pos] = str(rng.choice(FILLERS))
    return kinds


def describe(kinds: Mapping[Position, str]) -> dict[str, Any]:
    """``kinds`` as JSON-friendly ``{"x,y,z": kind}``."""
    return {",".join(str(v) for v in pos): kind for pos, kind in sorted(kinds.items())}


def mosaic_case(tiles: Sequence[int]) -> Any:
    """A ``make_case`` for :func:`.phantom.write_msd_dataset`: case seed ``s`` -> a mosaic of ``tiles`` laid out by
    :func:`training_layout` (drawn from ``s``), tile seeds ``s * 1000 + n``; notes: the layout and shape."""
    tiles = tuple(int(t) for t in tiles)

    def make(case_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        kinds = training_layout(np.random.default_rng(np.random.SeedSequence([int(case_seed), 4404])), tiles)
        hu, label, affine = make_mosaic(tiles, kinds, seed=int(case_seed) * 1000)
        return hu, label, affine, {"mosaic": describe(kinds), "shape": list(hu.shape),
                                   "spacing": list(TILE_SPACING), "orientation": "RAS",
                                   "tumour": bool((label == 2).any())}

    return make
