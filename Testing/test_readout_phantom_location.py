"""readout.location against phantom truth: tumours placed in the head, body and tail of phantom glands (truth
labels, no model) are located in that part; ``tumour_at`` moves only the tumour."""

from __future__ import annotations

import numpy as np
import pytest
from PancreasDiNTSLib.readout.combined import case_readout
from PancreasDiNTSLib.synthetic.phantom import make_phantom, tumour_position

GRID = {"shape": (96, 96, 64), "spacing": (0.9, 0.9, 1.2)}
EXPECTED = {"head": "head", "body": "neck/body", "tail": "tail"}


@pytest.mark.parametrize("seed", [1, 2, 5, 8])
def test_location_finds_the_part_the_phantom_placed_its_tumour_in(seed):
    for at, part in EXPECTED.items():
        hu, lab, aff, info = make_phantom(seed, tumour=True, tumour_at=at, return_info=True, noise=False, **GRID)
        assert info.has_tumour and info.tumour_part == part, (seed, at, info)
        r = case_readout(lab, aff)
        loc = r["lesion"]["largest"]["location"]
        assert loc["part"] == part, (seed, at, info.tumour_fraction, loc, info.orientation)
        # thirds of the measured centreline vs the drawn curve: the gland's rounded ends and the uncinate
        # process shift the measured fraction a little
        assert abs(loc["fraction"] - info.tumour_fraction) < 0.15, (seed, at, loc, info.tumour_fraction)
        assert r["location"]["largest"] == loc


def test_tumour_at_moves_only_the_tumour():
    base = make_phantom(4, tumour=True, return_info=True, noise=True, **GRID)
    same = make_phantom(4, tumour=True, return_info=True, noise=True, tumour_at=None, **GRID)
    assert all(np.array_equal(a, b) for a, b in zip(base[:3], same[:3], strict=True))
    moved = make_phantom(4, tumour=True, return_info=True, noise=True, tumour_at="tail", **GRID)
    assert np.array_equal(base[2], moved[2]) and base[3].orientation == moved[3].orientation
    from scipy import ndimage

    near = ndimage.distance_transform_edt((base[1] != 2) & (moved[1] != 2)) <= 4  # the blur's reach
    assert np.array_equal(base[0][~near], moved[0][~near])  # same body, organs and noise away from the tumours
    assert np.array_equal(base[1][~near], moved[1][~near])
    assert moved[3].tumour_part == "tail" and moved[3].tumour_fraction > 2 / 3


def test_tumour_at_values():
    assert tumour_position(None) is None
    assert tumour_position("Head") == pytest.approx(1 / 6) and tumour_position(0.9) == 0.9
    for bad in ("liver", 1.5, -0.1):
        with pytest.raises(ValueError):
            tumour_position(bad)
    _, lab, _, info = make_phantom(6, tumour=False, return_info=True, **GRID)
    assert not info.has_tumour and info.tumour_fraction is None and info.tumour_part is None
