"""Mosaic CTs (``synthetic.mosaic``): the tile kinds hold what they say, the layout is reproducible, and
``make-phantoms --mosaic`` writes a training set that nibabel reads back."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PancreasDiNTSLib.synthetic.mosaic import (
    TILE_KINDS,
    TILE_SHAPE,
    TILE_SPACING,
    make_mosaic,
    mosaic_case,
    tile,
    training_layout,
)
from PancreasDiNTSLib.synthetic.phantom import make_phantom, write_msd_dataset


def test_tile_kinds_hold_their_labels():
    gland_hu, gland = tile("gland", 11, tumour=True)
    assert gland.shape == TILE_SHAPE and gland_hu.dtype == np.float32
    assert (gland == 1).any() and (gland == 2).any()
    lesion_hu, lesion = tile("lesion", 11)
    assert not (lesion == 1).any() and np.array_equal(lesion == 2, gland == 2)
    none_hu, none = tile("none", 11)
    assert not none.any()
    # the painted-over gland takes the HU of the tissue around it: the same phantom (without a tumour) elsewhere
    plain_hu, plain = tile("gland", 11, tumour=False)
    outside = plain == 0
    assert np.array_equal(none_hu[outside], plain_hu[outside]) and not np.array_equal(none_hu, plain_hu)
    assert abs(float(np.median(none_hu[plain > 0])) - float(np.median(plain_hu[plain > 0]))) > 20
    for kind in ("fat", "tissue"):
        hu, lab = tile(kind, 11)
        assert not lab.any() and -160 < float(hu.mean()) < 60
        window = (hu > -87) & (hu < 199)  # the bundle's HU window: not a constant input
        assert 0.05 < float(window.mean()) < 0.95
    with pytest.raises(ValueError, match="tile kind"):
        tile("liver", 1)
    assert set(TILE_KINDS) == {"gland", "lesion", "none", "fat", "tissue"}


def test_mosaic_places_tiles_and_crops():
    kinds = {(0, 0, 0): "gland", (1, 0, 0): "fat"}
    hu, lab, affine = make_mosaic((2, 1, 1), kinds, seed=40, filler="tissue")
    assert hu.shape == (2 * TILE_SHAPE[0], TILE_SHAPE[1], TILE_SHAPE[2])
    expected, _, _ = make_phantom(40, shape=TILE_SHAPE, spacing=TILE_SPACING, orientation="RAS", tumour=None)
    assert np.allclose(hu[: TILE_SHAPE[0]], expected)  # tile 0 uses seed + 0
    assert lab[: TILE_SHAPE[0]].any() and not lab[TILE_SHAPE[0]:].any()
    assert np.allclose(np.diag(affine)[:3], TILE_SPACING)
    centre = affine[:3, :3] @ ((np.asarray(hu.shape) - 1) / 2.0) + affine[:3, 3]
    assert np.allclose(centre, 0.0)
    cut, cut_lab, _ = make_mosaic((2, 1, 1), kinds, seed=40, filler="tissue", crop_x=30)
    assert np.array_equal(cut, hu[30:]) and np.array_equal(cut_lab, lab[30:])
    mixed_a, _, _ = make_mosaic((2, 2, 2), {}, seed=7, filler="mixed")
    mixed_b, _, _ = make_mosaic((2, 2, 2), {}, seed=7, filler="mixed")
    assert np.array_equal(mixed_a, mixed_b)
    with pytest.raises(ValueError, match="filler"):
        make_mosaic((1, 1, 2), {}, seed=1, filler="water")


def test_training_layout_has_a_gland_and_only_known_kinds():
    for s in range(40):
        kinds = training_layout(np.random.default_rng(s), (2, 2, 2))
        assert len(kinds) == 8 and set(kinds.values()) <= set(TILE_KINDS)
        assert 1 <= list(kinds.values()).count("gland") <= 2 and list(kinds.values()).count("lesion") <= 1


def test_mosaic_training_set_is_reproducible(tmp_path):
    out = write_msd_dataset(tmp_path / "M", 2, 0, seed=6, make_case=mosaic_case((2, 1, 1)))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2
    note = meta["phantom"]["cases"]["pancreas_001"]
    assert note["seed"] == 6 * 100003 + 1 and set(note["mosaic"]) == {"0,0,0", "1,0,0"}
    img = nib.load(out / "imagesTr" / "pancreas_001.nii.gz")
    lab = np.asarray(nib.load(out / "labelsTr" / "pancreas_001.nii.gz").dataobj)
    assert img.shape == (256, 128, 60) and (lab == 1).any()
    hu, label, _, _ = mosaic_case((2, 1, 1))(6 * 100003 + 1)
    assert np.array_equal(np.asarray(img.dataobj), np.round(hu).astype(np.int16)) and np.array_equal(lab, label)


@pytest.mark.subprocess
def test_cli_make_phantoms_mosaic(tmp_path, cli_env):
    out = tmp_path / "MOSAIC"
    cli = [sys.executable, "-m", "PancreasDiNTSLib.cli", "make-phantoms"]
    r = subprocess.run(cli + ["-n", "1", "--num-test", "0", "--mosaic", "1,2,1", "-o", str(out), "--seed", "9",
                              "--progress", "none"], capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert nib.load(out / "imagesTr" / "pancreas_001.nii.gz").shape == (128, 256, 60)
    for bad in ("2,2", "0,1,1", "1,1,1", "9,1,1", "a,b,c"):
        r = subprocess.run(cli + ["-n", "1", "--mosaic", bad, "-o", str(tmp_path / "bad")], capture_output=True,
                           text=True, env=cli_env, timeout=300)
        assert r.returncode == 2 and f"--mosaic {bad}" in r.stderr and not (tmp_path / "bad").exists()
