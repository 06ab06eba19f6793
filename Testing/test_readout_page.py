"""readout.page: the one-page case report renders headless, quickly, readable, with and without a lesion."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PancreasDiNTSLib.readout import geometry as geo
from PancreasDiNTSLib.readout import page
from PancreasDiNTSLib.readout.combined import case_readout

pytest.importorskip("matplotlib")


def phantom(seed: int, shape=(128, 128, 64), **kw):
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    return make_phantom(seed, shape=shape, spacing=(0.8, 0.8, 1.0), **kw)


def read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.fixture(scope="module")
def case():
    hu, lab, aff = phantom(3, tumour=True, orientation="LPS")
    p = np.stack([(lab == c).astype(np.float32) * 0.7 + 0.1 for c in range(3)])
    return hu, lab, aff, case_readout(lab, aff, p / p.sum(0))


def test_page_renders_fast_and_readable(tmp_path, case):
    import matplotlib.figure  # noqa: F401  (import time is not the page's)

    hu, lab, aff, m = case
    assert m["lesion"]["found"]
    meta = {"input": "case_001.nii.gz", "model": {"name": "demo", "version": "0.1.0", "weights_md5": "0" * 32},
            "date": "2025-01-01 12:00"}
    t0 = time.process_time()  # CPU time of this process: other jobs on a shared machine do not count
    out = page.render_case_page(tmp_path / "report.png", hu, lab, aff, m, meta)
    elapsed = time.process_time() - t0
    assert out == tmp_path / "report.png" and elapsed < 5.0, elapsed
    img = read_png(out)
    assert img.shape[0] > 1000 and img.shape[1] > 800
    assert img[..., :3].std() > 0.1 and len(np.unique(img[..., 0])) > 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.png"]  # no temporary left behind
    # the diameter is drawn in yellow on the axial views: pure-ish yellow pixels exist
    yellow = (img[..., 0] > 0.8) & (img[..., 1] > 0.8) & (img[..., 2] < 0.3)
    assert yellow.sum() > 20


@pytest.mark.slow
def test_page_without_lesion_and_with_truth(tmp_path):
    hu, lab, aff = phantom(5, shape=(80, 80, 40), tumour=False, noise=False)
    m = case_readout(lab, aff)
    assert not m["lesion"]["found"]
    out = page.render_case_page(tmp_path / "no_lesion.png", hu, lab, aff, m, {"title": "demo", "notes": ["Dice 1"]},
                                truth=lab, fill=True)
    img = read_png(out)
    assert img[..., :3].std() > 0.1
    empty = np.zeros_like(lab)
    out = page.render_case_page(tmp_path / "empty.pdf", hu, empty, aff, case_readout(empty, aff), {})
    assert out.read_bytes()[:4] == b"%PDF"


def test_page_rejects_mismatched_arrays(tmp_path, case):
    hu, lab, aff, m = case
    with pytest.raises(ValueError):
        page.render_case_page(tmp_path / "x.png", hu[:-1], lab, aff, m, {})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR"])
def test_display_orientation_maps_ras_points_to_the_right_voxels(code):
    """A RAS point drawn on the canonical (RAS-ordered) arrays lands on the voxel it came from."""
    from PancreasDiNTSLib.readout.page import _ras_to_canonical, canonical_axes, to_canonical

    rng = np.random.default_rng(0)
    shape = (7, 9, 11)
    arr = rng.integers(0, 1000, shape)
    perm = {"RAS": (0, 1, 2), "LPS": (0, 1, 2), "PIR": (1, 2, 0)}[code]
    signs = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1), "PIR": (-1, -1, 1)}[code]
    a = np.zeros((4, 4))
    a[3, 3] = 1
    for j, (r, s) in enumerate(zip(perm, signs, strict=True)):
        a[r, j] = s * (0.5 + 0.3 * j)
    a[:3, :3] = np.array([[1, 0.05, 0], [-0.05, 1, 0.02], [0, -0.02, 1]]) @ a[:3, :3]  # slightly oblique
    a[:3, 3] = (4.0, -2.0, 9.0)
    order, flips = canonical_axes(a)
    can = to_canonical(arr, order, flips)
    for idx in [(0, 0, 0), (6, 8, 10), (3, 1, 7)]:
        ras = geo.to_ras(a, np.array([idx], float))
        c = np.rint(_ras_to_canonical(ras, a, shape, order, flips)[0]).astype(int)
        assert can[tuple(c)] == arr[idx]


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_dollar_signs_in_names_are_text_not_mathtext(tmp_path, suffix):
    """Issue 26 item 10: ``$\\frac$`` in an input or model name made report-png/pdf fail in matplotlib's
    mathtext parser; every string on the page is literal text now (and rcParams are left as they were)."""
    import matplotlib

    hu, lab, aff = phantom(5, shape=(64, 64, 32), tumour=True, noise=False)
    m = case_readout(lab, aff)
    meta = {"input": "$\\frac$ case_$x^2$.nii.gz", "title": "$\\frac{a}{", "notes": ["$\\sqrt$ note"],
            "model": {"name": "$\\frac$", "version": "$1$", "weights_md5": "$" * 32}}
    before = matplotlib.rcParams["text.parse_math"]
    out = page.render_case_page(tmp_path / f"report{suffix}", hu, lab, aff, m, meta)
    assert out.stat().st_size > 10_000
    assert matplotlib.rcParams["text.parse_math"] == before
    with pytest.raises(ValueError):  # the same names do break mathtext: the test can tell the difference
        from matplotlib.mathtext import MathTextParser

        MathTextParser("agg").parse("$\\frac$ case_$x^2$.nii.gz")
