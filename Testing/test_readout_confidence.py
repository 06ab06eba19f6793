"""readout.confidence: confidence map, per-segment confidence, low-confidence band volume, lesion score."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PancreasDiNTSLib.readout import confidence as conf


def random_case(seed: int, shape=(12, 10, 8)):
    """Softmax probabilities (3, X, Y, Z) and their argmax labels, with a blob-shaped pancreas and lesion."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(float)
    d1 = np.sqrt(((idx - np.array([5, 5, 4])[:, None, None, None]) ** 2).sum(0))
    d2 = np.sqrt(((idx - np.array([7, 4, 3])[:, None, None, None]) ** 2).sum(0))
    logits = np.stack([np.zeros(shape), 3.5 - d1, 2.0 - d2]) + rng.normal(0, 0.8, (3, *shape))
    e = np.exp(logits - logits.max(0))
    p = (e / e.sum(0)).astype(np.float32)
    return p, p.argmax(0).astype(np.uint8)


def brute_band(mask: np.ndarray, k: int) -> np.ndarray:
    """Voxels having, within Chebyshev distance k inside the volume, a voxel on the other side of the mask."""
    out = np.zeros_like(mask)
    for v in itertools.product(*(range(n) for n in mask.shape)):
        lo = [max(0, c - k) for c in v]
        hi = [min(n, c + k + 1) for c, n in zip(v, mask.shape, strict=True)]
        win = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        out[v] = bool((win != mask[v]).any())
    return out


def test_confidence_map_is_255_times_max_probability(monkeypatch):
    p, _ = random_case(0)
    ref = np.rint(255.0 * p.max(0)).astype(np.uint8)
    got = conf.confidence_map(p)
    assert got.dtype == np.uint8 and got.shape == p.shape[1:]
    assert np.array_equal(got, ref)
    assert got.min() >= 85  # 3 classes: max probability >= 1/3
    monkeypatch.setattr(conf, "SLAB_VOXELS", 200)  # several slabs
    assert np.array_equal(conf.confidence_map(p), ref)
    assert np.array_equal(conf.confidence_map(p.astype(np.float16)), np.rint(255.0 * p.astype(np.float16).max(0)
                                                                             .astype(np.float32)))
    certain = np.zeros((3, 2, 2, 2), np.float32)
    certain[0] = 1.0
    assert (conf.confidence_map(certain) == 255).all()


@pytest.mark.parametrize("k", [1, 2])
def test_boundary_band_against_brute_force(k):
    _, lab = random_case(1)
    for label in (1, 2):
        mask = lab == label
        assert np.array_equal(conf.boundary_band(mask, k), brute_band(mask, k))
    edge = np.zeros((6, 6, 6), bool)
    edge[:3] = True  # touches the volume's edge: that edge is not a boundary
    assert np.array_equal(conf.boundary_band(edge, 1), brute_band(edge, 1))
    assert not conf.boundary_band(edge, 1)[0].any()


@pytest.mark.parametrize("seed", [2, 3])
def test_summary_numbers(seed, monkeypatch):
    p, lab = random_case(seed)
    aff = np.diag([0.7, 0.8, 2.5, 1.0])
    vml = 0.7 * 0.8 * 2.5 / 1000
    monkeypatch.setattr(conf, "SLAB_VOXELS", 300)
    s = conf.confidence_summary(p, lab, aff)
    low = p.max(0) < 0.5
    for sid, label in (("pancreas", 1), ("pancreatic_tumor", 2)):
        rec = s["segments"][sid]
        mask = lab == label
        assert rec["mean_confidence"] == pytest.approx(float(p[label][mask].mean()), abs=1e-4)
        assert rec["mean_confidence"] == pytest.approx(float(p.max(0)[mask].mean()), abs=1e-4)
        band = brute_band(mask, 2)
        assert rec["band_voxels"] == int(band.sum())
        assert rec["low_confidence_band_voxels"] == int((band & low).sum())
        assert rec["low_confidence_band_ml"] == pytest.approx(int((band & low).sum()) * vml, abs=1e-4)
    assert s["low_confidence_total_ml"] == pytest.approx(int(low.sum()) * vml, abs=1e-4)
    score = s["lesion_score"]
    assert score["value"] == pytest.approx(float(p[2].max()), abs=1e-4) and score["uncalibrated"] is True
    where = np.unravel_index(int(np.argmax(p[2])), lab.shape)
    assert score["argmax_ras"] == pytest.approx([where[0] * 0.7, where[1] * 0.8, where[2] * 2.5], abs=0.01)


def test_empty_segments_give_null_with_reason():
    p = np.zeros((3, 4, 4, 4), np.float32)
    p[0] = 1.0
    lab = np.zeros((4, 4, 4), np.uint8)
    s = conf.confidence_summary(p, lab, np.eye(4))
    for rec in s["segments"].values():
        assert rec["mean_confidence"] is None and rec["reason"] and rec["low_confidence_band_ml"] == 0.0
    assert s["lesion_score"]["value"] == 0.0


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        conf.confidence_map(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError):
        conf.confidence_summary(np.zeros((3, 4, 4, 4), np.float32), np.zeros((4, 4, 5), np.uint8), np.eye(4))


def test_summary_from_the_uint8_map_and_slabs_matches():
    """The slab inversion keeps only the uint8 map and a running lesion maximum: same summary, to 1/255."""
    p, lab = random_case(4)
    aff = np.diag([0.7, 0.8, 2.5, 1.0])
    full = conf.confidence_summary(p, lab, aff)
    slabs = [(0, 3), (3, 5), (5, 8)]
    cmap = np.concatenate([conf.confidence_map(p[..., a:b]) for a, b in slabs], axis=-1)
    best = max((conf.lesion_max(p[..., a:b], z_offset=a) for a, b in slabs), key=lambda t: t[0])
    part = conf.summary_from_map(cmap, lab, aff, lesion=best)
    assert part["lesion_score"] == full["lesion_score"]
    assert part["low_confidence_total_ml"] == full["low_confidence_total_ml"]  # exact at the 0.5 threshold
    for sid in ("pancreas", "pancreatic_tumor"):
        a, b = full["segments"][sid], part["segments"][sid]
        assert abs(a["mean_confidence"] - b["mean_confidence"]) <= 1 / 510 + 1e-4
        assert a["low_confidence_band_voxels"] == b["low_confidence_band_voxels"]
    none = conf.summary_from_map(cmap, lab, aff)
    assert none["lesion_score"]["value"] is None and none["lesion_score"]["reason"]
    with pytest.raises(ValueError):
        conf.summary_from_map(cmap.astype(np.float32), lab, aff)
