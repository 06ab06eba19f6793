"""The automatic pancreas region (inference/region.py): region logic on constructed logits, and the demo model
end to end on a phantom placed off-centre in a larger volume (``segment --region auto`` against ``whole``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PancreasDiNTSLib.core.errors import UsageError
from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL
from PancreasDiNTSLib.core.request import Region, RoiRequest
from PancreasDiNTSLib.inference import region as R
from PancreasDiNTSLib.inference.batch import SegmentSettings
from PancreasDiNTSLib.inference.fastpath import WindowForward
from PancreasDiNTSLib.inference.windows import sliding_window_exact_skip, window_grid

ROI = (16, 16, 16)
SPACING = (0.8, 0.8, 1.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _logits(p_fg: np.ndarray) -> torch.Tensor:
    """(1, 3, ...) logits whose softmax gives background 1 - p_fg, pancreas p_fg, lesion ~0."""
    p = torch.as_tensor(p_fg, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    return torch.stack([torch.log1p(-p), torch.log(p), torch.full_like(p, -30.0)])[None].float()


def test_coarse_foreground_threshold():
    p = np.zeros((4, 3, 2))
    p[1, 1, 1], p[2, 2, 0] = 0.15, 0.6
    fg = R.coarse_foreground(_logits(p), 0.1, slab=1)
    assert fg.sum() == 2 and fg[1, 1, 1] and fg[2, 2, 0]
    assert R.coarse_foreground(_logits(p), 0.2).sum() == 1


def test_dilate_by_margin_in_mm():
    mask = np.zeros((21, 21, 11), dtype=bool)
    mask[10, 10, 5] = True
    grown = R.dilate(mask, (0.8, 0.8, 2.0), margin_mm=2.0)  # 2.5 voxels -> 3 in x, y; 1 in z
    idx = np.argwhere(grown)
    assert idx.min(0).tolist() == [7, 7, 4] and idx.max(0).tolist() == [13, 13, 6]
    assert R.dilate(mask, (5.0, 5.0, 5.0), 1.0).sum() == 27  # at least one voxel


@pytest.mark.parametrize("shape", [(40, 37, 23), (12, 30, 16)])  # the second is padded along x
def test_windows_touching_and_exact_region_against_brute_force(shape):
    rng = np.random.default_rng(1)
    grid = window_grid(shape, ROI, 0.5)
    mask = rng.random(shape) > 0.999
    mask[0, 0, 0] = True
    nd = 3
    before = [grid.pad[2 * (nd - 1 - a)] for a in range(nd)]
    padded = np.zeros(grid.padded_size, dtype=bool)
    padded[tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))] = mask
    brute = [i for i, sl in enumerate(grid.slices) if padded[sl].any()]
    assert R.windows_touching(mask, grid) == brute
    ran = set(brute[: len(brute) // 2])
    count_all = np.zeros(grid.padded_size, dtype=int)
    count_ran = np.zeros(grid.padded_size, dtype=int)
    for i, sl in enumerate(grid.slices):
        count_all[sl] += 1
        count_ran[sl] += i in ran
    want = (count_all == count_ran)[tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))]
    assert np.array_equal(R.exact_region(grid, ran), want)


def test_faces_touched_not_at_image_edges():
    exact = np.zeros((10, 10, 10), dtype=bool)
    exact[:6] = True  # the region's face is between x=5 and x=6; x=0 is the image's edge
    fg = np.zeros_like(exact)
    fg[0, 4, 4] = fg[5, 4, 4] = fg[3, 0, 0] = True
    touched = R.faces_touched(fg, exact)
    assert np.argwhere(touched).tolist() == [[5, 4, 4]]


def test_region_boxes_two_parts_in_ras():
    mask = np.zeros((30, 20, 10), dtype=bool)
    mask[2:5, 3:6, 1:3] = True
    mask[20:28, 10:12, 5:9] = True
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-10, 5, 0]
    boxes, count = R.region_boxes(mask, affine)
    assert count == 2 and [b["voxels"] for b in boxes] == [64, 18]
    assert boxes[0]["box_voxels"] == [[20, 28], [10, 12], [5, 9]]
    assert boxes[1]["box_ras_mm"] == [round(-10 + 0.8 * 1.5, 1), round(5 + 0.8 * 2.5, 1), 1.0,
                                      round(-10 + 0.8 * 4.5, 1), round(5 + 0.8 * 5.5, 1), 5.0]


def test_resolve_region_defaults():
    assert Region().resolved("cpu") == "auto"
    assert Region().resolved("cuda") == "whole"
    assert Region("auto").resolved("cuda") == "auto"
    box = Region.from_flags("whole", "0,0,0,1,1,1")  # a box takes --region whole's place
    assert box.resolved("cpu") == "box" and box.box == RoiRequest((0, 0, 0, 1, 1, 1))
    with pytest.raises(UsageError, match="choose one"):
        Region.from_flags("auto", "0,0,0,1,1,1")
    planned = SimpleNamespace(name="x", path=Path("x.nii.gz"), identity="i", series=None)
    settings = SegmentSettings(inputs=("x.nii.gz",), out_dir=Path("o"), model="m", device="cpu", region=box)
    assert settings.case_options(planned).roi == box.box and settings.case_options(planned).region == "whole"
    assert SegmentSettings(("x",), Path("o"), "m", device="cpu").case_options(planned).region == "auto"


# ---------------------------------------------------------------------------------------------- the passes


def _pointwise(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: per voxel, P(pancreas) = sigmoid(10 (x - 0.5)) (no context, no edge effects)."""
    return torch.cat([torch.zeros_like(x), 10.0 * (x - 0.5), torch.full_like(x, -30.0)], dim=1)


class _Stub(SimpleNamespace):
    """The Segmenter interface the region uses (spec, infer, window_forward, window_stats), with no fast path."""

    window_stats = property(lambda self: None, lambda self, stats: None)


def _segmenter(blend: str = "constant", network=_pointwise) -> SimpleNamespace:
    spec = SimpleNamespace(roi_size=ROI, overlap=0.5, blend_mode=blend)
    cpu = torch.device("cpu")

    def infer(pre, on_window=None):
        return sliding_window_exact_skip(pre.unsqueeze(0), network, ROI, 4, 0.5, progress=on_window)

    return _Stub(spec=spec, device=cpu, infer=infer,
                 window_forward=lambda spatial: WindowForward(network, 4, cpu, cpu, False, False, ROI))


def _pre(image: np.ndarray) -> MetaTensor:
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(image, dtype=torch.float32)[None], affine=affine)


def _bar_image(shape=(96, 64, 48)) -> np.ndarray:
    """A long bar whose first part is certain (x = 1) and the rest faint (x = 0.6: P = 0.73, foreground in the
    full run, below a coarse threshold of 0.9)."""
    img = np.random.default_rng(0).uniform(0.0, 0.1, shape).astype(np.float32)  # no window is constant
    img[10:20, 30:34, 20:24] = 1.0
    img[20:86, 30:34, 20:24] = 0.6
    return img


def _full_labels(seg, pre) -> np.ndarray:
    return np.asarray(seg.infer(pre)[0].argmax(0))


def test_growth_rounds_reach_the_full_run():
    seg, pre = _segmenter(), _pre(_bar_image())
    settings = R.RegionSettings(threshold=0.9, margin_mm=0.5, max_rounds=10)
    logits, run = R.infer_auto(seg, pre, settings=settings)
    d = run.describe()
    assert run.fallback is None and d["windows"]["growth_rounds"] >= 2
    assert d["windows"]["coarse"] == len(window_grid(pre.shape[1:], ROI, 0.0).windows)
    assert sum(d["windows"]["dense"]) < d["windows"]["full"] / 3
    assert d["windows"]["full"] == len(window_grid(pre.shape[1:], ROI, 0.5).windows)
    labels = np.asarray(logits[0].argmax(0))
    assert np.array_equal(labels, _full_labels(seg, pre))
    assert d["region_count"] == 1 and d["regions"][0]["box_voxels"][0][1] >= 86  # grown along the whole bar
    assert isinstance(logits, MetaTensor) and torch.equal(logits.affine, pre.affine)


def test_growth_bounded_then_the_rest_runs():
    seg, pre = _segmenter(), _pre(_bar_image())
    logits, run = R.infer_auto(seg, pre, settings=R.RegionSettings(threshold=0.9, margin_mm=0.5, max_rounds=1))
    assert "growth rounds" in (run.fallback or "")
    assert sum(run.dense_windows) == run.full_windows and run.exact_fraction == 1.0
    assert np.array_equal(np.asarray(logits[0].argmax(0)), _full_labels(seg, pre))


def test_outside_the_region_background_and_coarse_confidence():
    img = np.zeros((96, 64, 48), dtype=np.float32)
    img[40:50, 30:36, 20:26] = 1.0
    img[5:15, 5:15, 5:15] = 0.45  # P(pancreas) 0.38: below the threshold, background, far from the bar
    seg, pre = _segmenter(), _pre(img)
    logits, run = R.infer_auto(seg, pre, settings=R.RegionSettings(threshold=0.5, margin_mm=2.0))
    labels = np.asarray(logits[0].argmax(0))
    assert np.array_equal(labels, _full_labels(seg, pre))
    assert 0 < run.exact_fraction < 1 and run.region_count == 1
    p_bg = torch.softmax(logits[0], 0)[0].numpy()
    assert abs(float(p_bg[10, 10, 10]) - (1 - 1 / (1 + np.exp(-10 * (0.45 - 0.5))))) < 1e-4  # the coarse pass's


def test_nothing_found_falls_back_to_the_whole_volume():
    # texture without any constant window (a constant volume is so cheap for the whole run that auto does not
    # even start: test_issue31_finding10_...); P(pancreas) at most 0.12 everywhere
    seg, pre = _segmenter(), _pre(np.random.default_rng(1).uniform(0.15, 0.3, (96, 64, 48)).astype(np.float32))
    logits, run = R.infer_auto(seg, pre, settings=R.RegionSettings(threshold=0.5))
    assert "found no pancreas" in (run.fallback or "") and run.dense_windows == [run.full_windows]
    assert torch.equal(torch.as_tensor(logits), torch.as_tensor(seg.infer(pre)))


@pytest.mark.parametrize("case", ["small", "gaussian"])
def test_small_volumes_and_other_blending_run_whole(case):
    seg = _segmenter("gaussian" if case == "gaussian" else "constant")
    pre = _pre(_bar_image((24, 20, 18) if case == "small" else (96, 64, 48)))
    _, run = R.infer_auto(seg, pre)
    assert ("small volume" if case == "small" else "gaussian") in (run.fallback or "")
    assert run.coarse_windows == 0 and run.dense_windows == [run.full_windows]


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def off_centre_ct(tmp_path_factory) -> Path:
    """A phantom (demo-model-sized, 128 x 128 x 56, with a lesion) near a corner of a larger volume of air."""
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    hu, _, _ = make_phantom(900003, shape=(128, 128, 56), spacing=SPACING, orientation="RAS", tumour=True)
    image = np.full((224, 192, 80), -1000.0, dtype=np.float32)
    image[90:218, 0:128, 24:80] = hu
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-80.0, -70.0, -40.0]
    path = tmp_path_factory.mktemp("offcentre") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(image).astype(np.int16), affine), path)
    return path


@pytest.mark.slow
def test_segment_auto_region_equals_whole_run_with_the_demo_model(off_centre_ct, tmp_path):
    from PancreasDiNTSLib.cli import main

    common = ["segment", str(off_centre_ct), "--model", str(PACKAGED_DEMO_MODEL), "--device", "cpu",
              "--format", "nifti,confidence", "--progress", "none"]
    assert main([*common, "-o", str(tmp_path / "whole"), "--region", "whole"]) == 0
    assert main([*common, "-o", str(tmp_path / "auto")]) == 0  # auto: the default on a CPU
    out = {k: tmp_path / k / "ct" for k in ("whole", "auto")}
    labels = {k: np.asarray(nib.load(out[k] / "labels.nii.gz").dataobj) for k in out}
    assert (labels["whole"] == 1).sum() > 500 and (labels["whole"] == 2).sum() > 50
    assert np.array_equal(labels["auto"], labels["whole"])
    report = json.loads((out["auto"] / "report.json").read_text())
    region = report["inference"]["region"]
    assert region["mode"] == "auto" and region["fallback"] is None and region["threshold"] == R.FOREGROUND_THRESHOLD
    w = region["windows"]
    assert w["coarse"] > 0 and w["dense"] and w["full"] == 6 * 5 * 3
    assert w["computed"] < w["full"] and region["regions"] and region["regions"][0]["box_ras_mm"]
    assert 0 < region["exact_fraction"] <= 1
    assert json.loads((out["whole"] / "report.json").read_text())["inference"]["region"] == {"mode": "whole"}
    conf = {k: np.asarray(nib.load(out[k] / "confidence.nii.gz").dataobj) for k in out}
    fg = labels["whole"] > 0
    assert np.array_equal(conf["auto"][fg], conf["whole"][fg])
    # a flipped (LPS) copy: the region lives on the model's grid, so the labels are the same voxels, flipped back
    ras, lps = (nib.orientations.axcodes2ornt(c) for c in ("RAS", "LPS"))
    flipped = tmp_path / "lps.nii.gz"
    nib.save(nib.load(off_centre_ct).as_reoriented(nib.orientations.ornt_transform(ras, lps)), flipped)
    assert main([*common[:1], str(flipped), *common[2:], "-o", str(tmp_path / "lps"), "--format", "nifti"]) == 0
    back = nib.load(tmp_path / "lps" / "lps" / "labels.nii.gz").as_reoriented(nib.orientations.ornt_transform(lps, ras))
    assert np.array_equal(np.asarray(back.dataobj), labels["whole"])


def test_edge_band_ignores_inner_faces_not_image_edges():
    grid = window_grid((40, 16, 16), ROI, 0.0)  # windows at x 0, 16, 24 (the last moved back to the edge)
    inner = R.informative(grid, set(), band=2)
    assert inner[0, 5, 5] and inner[39, 5, 5] and inner[8, 5, 5]  # image edges and a window's middle
    assert not inner[15, 5, 5] and not inner[16, 5, 5] and inner[18, 5, 5]  # the face between x 15 and 16
    assert not R.informative(grid, {0: (0.0,)}, band=0)[:16].any()  # a constant window is never informative


def _edgy(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network with an edge artefact: a 1 x 2 x 2 patch at every window's first corner reads as
    pancreas (as zero padding can make a trained network do), otherwise :func:`_pointwise`."""
    out = _pointwise(x)
    out[:, 1, :1, :2, :2] = 3.0
    return out


def test_confirmation_drops_edge_artefacts_and_keeps_the_full_runs_labels():
    img = np.random.default_rng(2).uniform(0.0, 0.1, (96, 64, 48)).astype(np.float32)
    img[40:48, 30:36, 20:26] = 1.0
    seg, pre = _segmenter(network=_edgy), _pre(img)
    logits, run = R.infer_auto(seg, pre)  # confirmation is on by default
    assert run.found > run.confirmed >= 1 and 0 < run.confirm_windows <= run.found
    parts = run.describe()["coarse_parts"]
    assert parts == {"found": run.found, "confirmed": run.confirmed}
    assert np.array_equal(np.asarray(logits[0].argmax(0)), _full_labels(seg, pre))
    assert sum(run.dense_windows) < run.full_windows
    # without the confirmation every artefact is kept: more dense windows, the same labels
    logits_all, run_all = R.infer_auto(seg, pre, settings=R.RegionSettings(confirm=False))
    assert sum(run_all.dense_windows) > sum(run.dense_windows) and run_all.describe()["coarse_parts"] is None
    assert np.array_equal(np.asarray(logits_all[0].argmax(0)), _full_labels(seg, pre))


def test_one_confirmation_window_checks_the_parts_inside_it():
    boxes = [(slice(30, 32), slice(30, 32), slice(20, 22)), (slice(40, 42), slice(36, 38), slice(22, 24)),
             (slice(90, 92), slice(5, 7), slice(5, 7)), (slice(0, 60), slice(0, 9), slice(0, 9))]
    keep = np.zeros(5, dtype=bool)
    checks = R._confirmation_windows(boxes, (64, 64, 48), (128, 96, 60), 4, keep)
    assert keep.tolist() == [False, False, False, False, True]  # the 60-voxel part is larger than half a window
    assert [parts for _, parts in checks] == [[1, 2], [3]]
    assert checks[1][0] == (slice(59, 123), slice(0, 64), slice(0, 48))  # centred, moved inside the image


def _air_with_body(body: int, shape=(96, 64, 48)) -> np.ndarray:
    """Air (one constant value) with a body of ``body``^3 voxels of texture at the centre, a small certain part in
    its middle: most windows of the full run are constant (cheap), those of the coarse pass straddle the body."""
    img = np.zeros(shape, np.float32)
    img[tuple(slice(s // 2 - body // 2, s // 2 + body // 2) for s in shape)] = \
        np.random.default_rng(0).uniform(0.0, 0.1, (body,) * 3)
    img[tuple(slice(s // 2 - 2, s // 2 + 2) for s in shape)] = 1.0
    return img


def test_issue31_finding10_auto_never_costs_more_network_windows_than_whole():
    """A CT that is mostly air: before any network window, auto sees that it cannot save (the whole run computes
    each constant window once) and runs the whole volume; with more body it runs and costs less."""
    seg = _segmenter()
    settings = R.RegionSettings(threshold=0.5, margin_mm=2.0)
    pre = _pre(_air_with_body(8))
    logits, run = R.infer_auto(seg, pre, settings=settings)
    assert "mostly air" in (run.fallback or "") and run.coarse_windows == 0  # no coarse window was spent
    assert run.computed == run.full_computed == 28  # exactly the whole run's cost (was 34: 1.21x)
    assert np.array_equal(np.asarray(logits[0].argmax(0)), _full_labels(seg, pre))
    pre = _pre(_air_with_body(20))
    logits, run = R.infer_auto(seg, pre, settings=settings)
    assert run.fallback is None and run.computed < run.full_computed / 2  # 42 of 126
    assert np.array_equal(np.asarray(logits[0].argmax(0)), _full_labels(seg, pre))
