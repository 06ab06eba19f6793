"""fastpath against MONAI's sliding_window_inference and the Segmenter's exact path (tiny nets, real CT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from PancreasDiNTSLib.inference.fastpath import FastInferer, choose_sw_batch_size
from PancreasDiNTSLib.inference.roi import box_to_voxels, predict_roi
from PancreasDiNTSLib.inference.windows import SlidingStats, sliding_window_exact_skip, window_grid
from PancreasDiNTSLib.model.fastnet import make_fast
from PancreasDiNTSLib.model.network import build_dints, random_arch
from PancreasDiNTSLib.model.spec import NetworkSpec

ROI = (16, 16, 16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a shared 2-core CI machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    net = build_dints(NetworkSpec(channel_mul=0.0625, num_blocks=3, num_depths=3), random_arch(3, 3, seed=1)).eval()
    with torch.no_grad():  # trained-like norms: a non-zero InstanceNorm bias is what makes air windows non-trivial
        for name, p in net.named_parameters():
            if p.dim() == 1 and "stem_finals.1" not in name:
                p.add_(torch.randn_like(p) * 0.3)
    return net, make_fast(net)


def _body_volume(shape=(40, 32, 16), seed=0) -> torch.Tensor:
    """Air (0 after the intensity window) around a body of random values, plus a block of clipped bone (1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 1, *shape)
    x[:, :, 4:18, 4:18, 2:12] = torch.rand(1, 1, 14, 14, 10, generator=g)
    x[:, :, 24:40, 16:32, :] = 1.0  # a constant region with another value
    return x


def _monai(net, x, bs=4):
    with torch.no_grad():
        return sliding_window_inference(x, ROI, bs, net, overlap=0.625, mode="constant")


def test_constant_windows_reused_and_equal_to_monai(nets):
    net, fast = nets
    x = _body_volume()
    ref = _monai(net, x)
    stats = SlidingStats()
    with torch.no_grad():
        out = sliding_window_exact_skip(x, fast, ROI, 4, 0.625, stats=stats)
    assert stats.constant > 0 and stats.distinct_constants == 2 and stats.computed < stats.windows
    assert out.shape == ref.shape
    # Without skipping, the batches are MONAI's and the result is bit-identical.
    with torch.no_grad():
        same_batches = sliding_window_exact_skip(x, fast, ROI, 4, 0.625, skip_constant=False)
    assert torch.equal(same_batches, ref)
    # With skipping, windows share batches differently: the only difference is the one MONAI itself shows
    # between two batch sizes (float rounding of batched kernels), about 1e-5 relative.
    monai_bs1 = _monai(net, x, bs=1)
    batch_effect = float((monai_bs1 - ref).abs().max())
    assert float((out - ref).abs().max()) <= max(batch_effect, 1e-5 * float(ref.abs().max()))
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) > 0.9999


def test_constant_window_logits_are_not_trivial(nets):
    """Why the cache is needed: a window of air still gives non-zero, non-uniform logits, so skipping the
    window without substituting them (here: zeros) changes the stitched output."""
    net, _ = nets
    with torch.no_grad():
        air = net(torch.zeros(1, 1, *ROI))
    assert float(air.abs().max()) > 1e-3 and float(air.std(dim=(2, 3, 4)).max()) > 1e-4

    def naive(batch):
        out = net(batch)
        flat = batch.flatten(1)
        const = (flat.amax(1) == flat.amin(1)).view(-1, 1, 1, 1, 1)
        return torch.where(const, torch.zeros_like(out), out)

    x = _body_volume()
    assert float((_monai(naive, x) - _monai(net, x)).abs().max()) > 1e-3


def test_matches_without_skip_and_on_padded_small_image(nets):
    net, fast = nets
    x = torch.rand(1, 1, 10, 40, 12)  # smaller than the window on two axes: MONAI pads
    ref = _monai(net, x, bs=3)
    with torch.no_grad():
        out = sliding_window_exact_skip(x, fast, ROI, 3, 0.625, skip_constant=False)
    assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-5


def test_oom_fallback_and_fixed_batch(nets):
    """A predictor that cannot take more than 2 windows (a CUDA OOM cannot happen on a CPU-only machine)."""
    net, fast = nets
    calls = []

    def small_memory(batch):
        calls.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fast(batch)

    x = _body_volume(seed=1)
    ref = _monai(net, x)
    stats = SlidingStats()
    with torch.no_grad():
        out = sliding_window_exact_skip(x, small_memory, ROI, 8, 0.625, stats=stats, fixed_batch=True)
    assert stats.oom_retries >= 2 and max(calls[stats.oom_retries:]) <= 2
    assert float((out - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))


def test_region_gives_full_run_logits_inside(nets):
    net, fast = nets
    x = _body_volume(seed=2)
    ref = _monai(net, x)
    region = ((6, 14), (4, 12), (2, 10))
    stats = SlidingStats()
    with torch.no_grad():
        out = sliding_window_exact_skip(x, fast, ROI, 4, 0.625, stats=stats, region=region)
    inside = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in region)
    assert float((out[inside] - ref[inside]).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))
    assert stats.windows < len(window_grid(x.shape[2:], ROI, 0.625).windows)
    outside = torch.ones(x.shape[2:], dtype=torch.bool)
    outside[inside[2:]] = False
    assert bool((out.argmax(1)[0][outside] == 0).all())


def test_box_to_voxels_ras_and_voxel():
    affine = np.array([[-2.0, 0, 0, 100], [0, 3.0, 0, -50], [0, 0, 1.5, 10], [0, 0, 0, 1]])
    shape = (60, 40, 30)
    ranges = box_to_voxels((5, 6, 7, 25, 26, 20), affine, shape, "voxel")
    assert ranges == ((5, 25), (6, 26), (7, 20))
    lo = affine[:3, :3] @ np.array([5, 6, 7]) + affine[:3, 3]
    hi = affine[:3, :3] @ np.array([24, 25, 19]) + affine[:3, 3]
    assert box_to_voxels(tuple(lo) + tuple(hi), affine, shape, "ras") == ranges
    assert box_to_voxels((-10, -10, -10, 5, 5, 5), affine, shape, "voxel") == ((0, 5), (0, 5), (0, 5))
    with pytest.raises(ValueError, match="does not overlap"):
        box_to_voxels((100, 100, 100, 120, 120, 120), affine, shape, "voxel")


def test_batch_size_policy_on_cpu(nets):
    assert choose_sw_batch_size(nets[1], ROI, device="cpu", default=4) == 4


@pytest.mark.slow
def test_real_ct_fast_inferer_and_roi_equal_segmenter(tiny_bundle, example_ct_sm):
    """On real CT: FastInferer's logits equal the Segmenter's MONAI inferer; ROI grid mode's labels inside a
    box equal the full run's, zero outside, with fewer windows."""
    from PancreasDiNTSLib.inference.roi import crop_image
    from PancreasDiNTSLib.inference.segmenter import Segmenter
    from PancreasDiNTSLib.io.images import read_image
    from PancreasDiNTSLib.model.loader import load_bundle

    case = read_image(example_ct_sm)
    # a 240 x 102 x 90 mm part of the CT keeps the test short (5 x 2 x 1 windows)
    image, _ = crop_image(case.image, ((20, 100), (34, 68), (0, 30)), margin_mm=0, min_size_mm=None)
    seg = Segmenter(load_bundle(tiny_bundle), "cpu")
    pre = seg.preprocess(image)
    ref_logits = seg.infer(pre)
    fast = FastInferer(seg.network, seg.spec.roi_size, seg.spec.overlap, "cpu", False, seg.sw_batch_size,
                       tune_allocator=False)  # the allocator setting is tested in its own process below
    logits = fast(pre)
    assert float((logits - ref_logits).abs().max()) < 1e-5
    full = seg.postprocess(ref_logits, pre)
    assert np.array_equal(seg.postprocess(logits, pre), full)

    aff = np.asarray(image.affine, dtype=float)
    lo = aff[:3, :3] @ np.array([2.0, 2.0, 2.0]) + aff[:3, 3]
    hi = aff[:3, :3] @ np.array([22.0, 30.0, 27.0]) + aff[:3, 3]
    box = tuple(lo) + tuple(hi)  # RAS mm, 6 cm along x at one end of the crop
    labels = predict_roi(seg, image, box, "ras", mode="grid", fast=fast)
    ranges = box_to_voxels(box, aff, image.shape[1:], "ras")
    inside = tuple(slice(a, b) for a, b in ranges)
    assert labels.shape == full.shape
    assert float((labels[inside] == full[inside]).mean()) >= 0.99
    assert int(labels.sum()) == int(labels[inside].sum())  # nothing outside the box
    assert fast.stats.windows < len(window_grid(pre.shape[1:], seg.spec.roi_size, seg.spec.overlap).windows)
    local = predict_roi(seg, image, box, "ras", mode="local")
    assert local.shape == full.shape and int(local.sum()) == int(local[inside].sum())


def test_static_output_buffer_predictor(nets):
    """A CUDA-graph predictor returns the same output buffer on every call (CudaGraphForward's contract);
    the driver must consume or copy it before the next call. Emulated on the CPU with a reused buffer."""
    net, fast = nets

    class StaticBuffer:
        def __init__(self, batch: int) -> None:
            self.buf = None
            self.batch = batch

        def __call__(self, x):
            assert x.shape[0] == self.batch  # fixed_batch pads every call to the captured size
            out = fast(x)
            if self.buf is None:
                self.buf = torch.empty_like(out)
            self.buf.copy_(out)
            return self.buf

    x = _body_volume(seed=3)
    ref = _monai(net, x)
    with torch.no_grad():
        out = sliding_window_exact_skip(x, StaticBuffer(4), ROI, 4, 0.625, fixed_batch=True)
    assert float((out - ref).abs().max()) < 1e-5 * max(1.0, float(ref.abs().max()))


@pytest.mark.slow
def test_cpu_allocator_tuning_in_a_subprocess():
    """mallopt takes effect in a real process: repeated big tensors stop costing page faults (without it, each
    96 MiB of tensors costs ~24k faults and the kernel zeroes the pages again; with it, a small fraction)."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from PancreasDiNTSLib.inference.fastpath import tune_cpu_allocator\n"
        "def steady_faults():\n"
        "    faults = []\n"
        "    for _ in range(10):\n"
        "        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "        x = torch.ones(64 << 18); y = torch.ones(32 << 18); del x, y\n"
        "        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
        "    return sum(faults[-3:])\n"
        "before = steady_faults()\n"
        "ok = tune_cpu_allocator()\n"
        "print(ok, before, steady_faults())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=True)
    ok, before, after = out.stdout.split()
    if ok != "True":
        pytest.skip("not Linux/glibc: mallopt unavailable")
    # at least 5x fewer: not zero, as the kernel's own page scans (NUMA balancing, THP) still cost some (a run
    # on this machine: 73734 faults before, 8192 after)
    assert int(before) > 10000 and int(after) * 5 < int(before)


def test_metatensor_meta_and_two_channels():
    """MetaTensor in -> MetaTensor out with the input's affine (as MONAI's inferer); a window is constant only
    if every channel is."""
    from monai.data import MetaTensor

    def predictor(b):  # per-window, content-dependent, not translation-invariant
        return torch.cat([b.sum(1, keepdim=True), b[:, :1] * 2 - b[:, 1:], b.mean(1, keepdim=True).cumsum(2)], 1)

    x = torch.zeros(1, 2, 48, 20, 16)
    x[:, 0, 2:10, 2:10, 2:10] = torch.rand(8, 8, 8)
    x[:, 1, 20:28] = 0.5  # channel 1 non-constant where channel 0 is constant
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    meta_in = MetaTensor(x, affine=affine)
    ref = sliding_window_inference(x, ROI, 4, predictor, overlap=0.625, mode="constant")
    stats = SlidingStats()
    out = sliding_window_exact_skip(meta_in, predictor, ROI, 4, 0.625, stats=stats)
    assert isinstance(out, MetaTensor) and torch.allclose(out.affine, affine.double())
    assert 0 < stats.constant < stats.windows
    assert float((out.as_tensor() - ref).abs().max()) < 1e-5


def test_prefetch_overlaps_loading_with_processing():
    """Loading item i+1 happens while item i is processed (the consumer waits for it: no overlap would
    time out), results come in order, and a failing load is handed over instead of stopping the batch."""
    import threading

    from PancreasDiNTSLib.inference.prefetch import prefetched

    loaded = {i: threading.Event() for i in range(4)}

    def load(i):
        if i == 2:
            raise ValueError("bad case 2")
        loaded[i].set()
        return i * 10

    seen = []
    for item, result in prefetched(range(4), load):
        if item + 1 < 4 and item + 1 != 2:
            assert loaded[item + 1].wait(timeout=20), "the next item was not loading in the background"
        seen.append((item, result if not isinstance(result, BaseException) else str(result)))
    assert seen == [(0, 0), (1, 10), (2, "bad case 2"), (3, 30)]
