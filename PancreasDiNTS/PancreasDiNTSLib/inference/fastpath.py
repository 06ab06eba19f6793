"""Inference-speed policies the Segmenter can opt into, each tested against MONAI's own path.

* :func:`sliding_window_exact_skip` -- MONAI's ``sliding_window_inference`` (blend ``constant``) re-implemented
  with the same window positions, padding, summation order and division, plus two kinds of work not done:

  - **constant windows** (every voxel of the window has the same preprocessed value, e.g. air and fat, which
    the bundle's intensity window clips to exactly ``b_min``): a window wholly outside the body still gives
    non-trivial logits (zero padding of the convolutions, InstanceNorm's affine bias), so it cannot simply be
    skipped. The network depends only on the window's content, so all windows with the same constant value
    give the same logits: they are computed once per distinct value (one extra window) and added in MONAI's
    order. The result is the function MONAI computes; the only differences possible are those of running a
    window in another batch (the same ones a different ``sw_batch_size`` gives) -- see test_fastpath.py;
  - **the count map** is the product of per-axis window counts (the windows form a grid), computed in one
    step instead of one addition per window; the counts are small integers, so the division is bit-identical.

  Non-constant windows are packed into full batches (optionally padded to a fixed batch for CUDA graphs), the
  whole run makes one host sync for the window classification, and a CUDA out-of-memory halves the batch and
  retries the same windows (nothing was accumulated from the failed call).
* :func:`choose_sw_batch_size` -- batch size from free GPU memory (``torch.cuda.mem_get_info``) and the
  measured memory of one and two windows.
* ROI mode -- :func:`predict_roi`: ``grid`` runs only the full run's windows that touch the box (labels in the
  box equal the full run's); ``local`` runs the whole pipeline on the CT cropped to the box plus context
  (:func:`crop_image`, :func:`paste_labels`), so every stage's time scales with the box, at the price of other
  window positions. Labels outside the box are 0 in both.
* :func:`tune_cpu_allocator` -- on the CPU, freed tensor memory stays in the heap (no page faults per window).
* :class:`FastInferer` -- all of the above behind one call for ``Segmenter.infer``; :func:`prefetched` overlaps
  reading and preprocessing of the next case with compute in batch mode (``segment``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from PancreasDiNTSLib.inference.device import halve_on_oom
from PancreasDiNTSLib.model.fastnet import CudaGraphForward, FastDiNTS, compile_fast, make_fast

__all__ = [
    "WindowGrid", "window_grid", "constant_window_values", "sliding_window_exact_skip", "finish_sums", "SlidingStats",
    "choose_sw_batch_size", "box_to_voxels", "crop_image", "paste_labels", "tune_cpu_allocator",
    "FastInferer", "predict_roi", "prefetched",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- window grid


@dataclass
class WindowGrid:
    """MONAI's window layout for one image: padding, per-axis starts, windows in MONAI's order."""

    image_size: tuple[int, ...]  # spatial size before padding
    padded_size: tuple[int, ...]
    pad: list[int]  # F.pad argument (last axis first), as MONAI builds it
    roi: tuple[int, ...]
    starts: list[list[int]]  # per axis
    windows: list[tuple[int, ...]]  # per window: index into starts of each axis (MONAI order, last axis fastest)

    @property
    def slices(self) -> list[tuple[slice, ...]]:
        return [tuple(slice(self.starts[a][i], self.starts[a][i] + self.roi[a]) for a, i in enumerate(w))
                for w in self.windows]

    def count_map(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Number of windows covering each voxel of the padded image, shape (1, 1, *padded_size)."""
        per_axis = []
        for a, size in enumerate(self.padded_size):
            c = torch.zeros(size, dtype=torch.float64)
            for s in self.starts[a]:
                c[s : s + self.roi[a]] += 1
            per_axis.append(c)
        counts = per_axis[0]
        for c in per_axis[1:]:
            counts = counts[..., None] * c
        return counts.to(dtype=dtype, device=device)[None, None]


def window_grid(image_size: Sequence[int], roi: Sequence[int], overlap: float | Sequence[float]) -> WindowGrid:
    """The windows ``monai.inferers.sliding_window_inference`` visits, in its order (uses MONAI's helpers)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    nd = len(image_size)
    roi = tuple(int(r) for r in roi)
    ov = tuple(overlap) if isinstance(overlap, Sequence) else (float(overlap),) * nd
    padded = tuple(max(int(s), r) for s, r in zip(image_size, roi, strict=True))
    pad: list[int] = []
    for k in range(nd - 1, -1, -1):  # MONAI pads the last axis first
        diff = max(roi[k] - int(image_size[k]), 0)
        pad.extend([diff // 2, diff - diff // 2])
    interval = _get_scan_interval(padded, roi, nd, ov)
    slices = dense_patch_slices(padded, roi, interval)
    starts = [sorted({sl[a].start for sl in slices}) for a in range(nd)]
    index = [{s: i for i, s in enumerate(st)} for st in starts]
    windows = [tuple(index[a][sl[a].start] for a in range(nd)) for sl in slices]
    return WindowGrid(tuple(int(s) for s in image_size), padded, pad, roi, starts, windows)


def _box_reduce(x: torch.Tensor, axis: int, starts: list[int], width: int, op: str) -> torch.Tensor:
    """Reduce ``x`` over the intervals [s, s+width) of one axis -> that axis becomes len(starts)."""
    parts = [x.narrow(axis, s, width) for s in starts]
    red = [p.amin(dim=axis, keepdim=True) if op == "min" else p.amax(dim=axis, keepdim=True) for p in parts]
    return torch.cat(red, dim=axis)


def constant_window_values(padded: torch.Tensor, grid: WindowGrid) -> list[tuple[float, ...] | None]:
    """Per window: the per-channel values if the window is constant in every channel, else None.

    ``padded`` is (1, C, *padded_size). Separable min/max over the window grid: about 6 passes over the image,
    then one small host transfer.
    """
    nd = len(grid.roi)
    lo = hi = padded[0]
    for a in range(nd):
        lo = _box_reduce(lo, a + 1, grid.starts[a], grid.roi[a], "min")
        hi = _box_reduce(hi, a + 1, grid.starts[a], grid.roi[a], "max")
    lo_np = lo.float().cpu().numpy()
    hi_np = hi.float().cpu().numpy()
    out: list[tuple[float, ...] | None] = []
    for w in grid.windows:
        low, high = lo_np[(slice(None),) + w], hi_np[(slice(None),) + w]
        out.append(tuple(float(v) for v in low) if bool(np.all(low == high)) else None)
    return out


# ---------------------------------------------------------------------------------------------- sliding window


@dataclass
class SlidingStats:
    """What the last run did (for logs, tests and the benchmark)."""

    windows: int = 0
    computed: int = 0  # windows run through the network (excluding the constant-value windows)
    constant: int = 0  # windows whose logits came from the constant-value cache
    distinct_constants: int = 0
    network_calls: int = 0
    batch_size: int = 0
    oom_retries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _call_with_oom_fallback(predictor: Predictor, batch: torch.Tensor, state: dict[str, int],
                            stats: SlidingStats, fixed_batch: bool) -> torch.Tensor:
    """predictor(batch); on CUDA OOM halve the batch size (kept in ``state``) and run the pieces."""

    def run(size: int) -> torch.Tensor:
        outs = []
        for i in range(0, batch.shape[0], size):
            part = batch[i : i + size]
            n = part.shape[0]
            if fixed_batch and n < size:
                part = torch.cat([part, part.new_zeros((size - n, *part.shape[1:]))])
            stats.network_calls += 1
            out = predictor(part)[:n]
            # a CUDA-graph predictor returns its static buffer: copy it before the next call
            outs.append(out if batch.shape[0] <= size else out.clone())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def retried(size: int) -> None:
        state["batch"] = size
        stats.oom_retries += 1

    return halve_on_oom(run, state["batch"], on_retry=retried)[0]


def sliding_window_exact_skip(
    inputs: torch.Tensor,
    predictor: Predictor,
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float = 0.625,
    *,
    skip_constant: bool = True,
    device: torch.device | str | None = None,
    sw_device: torch.device | str | None = None,
    fixed_batch: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stats: SlidingStats | None = None,
    region: Sequence[tuple[int, int]] | None = None,
    windows: Sequence[int] | None = None,
    into: torch.Tensor | None = None,
    raw: bool = False,
) -> torch.Tensor:
    """Logits equal to ``monai.inferers.sliding_window_inference(inputs, roi_size, sw_batch_size, predictor,
    overlap, mode="constant")`` with constant windows computed once per value (see module docstring).

    ``inputs``: (1, C, *spatial) tensor or MetaTensor (the result is a MetaTensor with the input's meta, as
    MONAI returns). ``device``: where the stitched output lives (default: the input's device; use "cpu" when the
    output does not fit on the GPU). ``fixed_batch``: pad the last batch to ``sw_batch_size`` windows (CUDA
    graphs, cuDNN autotuning). Autocast, if wanted, is the caller's context, as with MONAI's inferer.
    ``region``: half-open voxel ranges of the (unpadded) image; only windows that touch it run, the logits
    inside it are the full run's, and outside it they are set to "background" (0 for channel 0, -1e4 for the
    others, so softmax/argmax give label 0 there).
    ``windows``: run only these windows (indices into :func:`window_grid`'s list, MONAI's order), e.g. those a
    region of any shape touches (inference/region.py). ``raw``: return the padded sums before the division by the
    window count (a plain tensor, to be finished with :func:`finish_sums`); ``into``: such sums of earlier windows
    to add to (updated in place).
    """
    from monai.data import MetaTensor
    from monai.utils import convert_to_dst_type

    if inputs.shape[0] != 1:
        raise ValueError("sliding_window_exact_skip handles one image at a time (batch dimension 1)")
    stats = stats if stats is not None else SlidingStats()
    temp_meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
    x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
    compute_dtype = x.dtype
    out_device = torch.device(device) if device is not None else x.device
    win_device = torch.device(sw_device) if sw_device is not None else x.device
    grid = window_grid(tuple(x.shape[2:]), roi_size, overlap)
    if any(grid.pad):
        x = F.pad(x, pad=grid.pad, mode="constant", value=0.0)
    slices = grid.slices
    n_win = len(slices)
    consts = constant_window_values(x, grid) if skip_constant else [None] * n_win
    order, box = _windows_in_region(grid, region)
    if windows is not None:
        chosen = set(windows)
        order = [i for i in order if i in chosen]
    todo = [i for i in order if consts[i] is None]
    stats.windows, stats.computed, stats.constant = len(order), len(todo), len(order) - len(todo)
    state = {"batch": max(1, int(sw_batch_size))}
    stats.batch_size = state["batch"]

    output: torch.Tensor | None = into

    def add(i: int, logits: torch.Tensor) -> None:
        nonlocal output
        if output is None:
            output = torch.zeros((1, logits.shape[1], *grid.padded_size), dtype=compute_dtype, device=out_device)
        output[(slice(None), slice(None)) + slices[i]] += logits.to(out_device)

    _run_windows(lambda i: x[(slice(None), slice(None)) + slices[i]], order, todo, consts, add,
                 _WindowRun(predictor, state, stats, fixed_batch, win_device, progress))
    if output is None:
        raise ValueError(f"the region {region} touches no window of the image")
    if raw:
        return output
    output = _finish(output, grid, box)
    if temp_meta is not None:
        return convert_to_dst_type(output, temp_meta, device=out_device)[0]
    return output


@dataclass
class _WindowRun:
    """How the windows of one sliding-window pass are run."""

    predictor: Any
    state: dict[str, int]  # {"batch": current batch size}; shrinks after an out-of-memory
    stats: Any
    fixed_batch: bool
    device: torch.device
    progress: Callable[[int, int], None] | None


def _run_windows(window: Callable[[int], torch.Tensor], order: list[int], todo: list[int], consts: list[Any],
                 add: Callable[[int, torch.Tensor], None], run: _WindowRun) -> None:
    """Run the windows and ``add`` each one's logits in MONAI's summation order (window by window); constant
    windows reuse the logits of the first window with the same value."""
    cache: dict[tuple[float, ...], torch.Tensor] = {}
    # Logits of each distinct constant window, computed first (one window each) and kept.
    for i in order:
        if consts[i] is not None and consts[i] not in cache:
            # the window itself (not a freshly built constant), so dtype and device match exactly
            cache[consts[i]] = _call_with_oom_fallback(run.predictor, window(i).to(run.device), run.state,
                                                       run.stats, run.fixed_batch).clone()
    run.stats.distinct_constants = len(cache)
    next_add = 0
    done = 0
    start = 0
    while True:
        chunk = todo[start : start + run.state["batch"]]  # the batch size may have shrunk after an OOM
        start += len(chunk)
        if chunk:
            batch = torch.cat([window(i) for i in chunk]).to(run.device)
            logits = _call_with_oom_fallback(run.predictor, batch, run.state, run.stats, run.fixed_batch)
            last = order.index(chunk[-1])
        else:
            logits, last = None, len(order) - 1
        pos = {i: k for k, i in enumerate(chunk)}
        for i in order[next_add : last + 1]:  # MONAI's summation order: window by window
            if i in pos:
                assert logits is not None  # pos is empty without a network call
                add(i, logits[pos[i] : pos[i] + 1])
            else:
                add(i, cache[consts[i]])
        next_add = last + 1
        done += len(chunk)
        if run.progress is not None:
            run.progress(done, len(todo))
        if start >= len(todo):
            break
    for i in order[next_add:]:
        add(i, cache[consts[i]])


def _windows_in_region(grid: Any, region: Sequence[tuple[int, int]] | None
                       ) -> tuple[list[int], tuple[list[int], list[int]] | None]:
    """The windows (in MONAI's order) that touch ``region`` (all without one) and the region in the padded
    image (lower, upper bounds; None without a region)."""
    order = list(range(len(grid.slices)))
    if region is None:
        return order, None
    nd = len(region)
    lo = [s + grid.pad[2 * (nd - 1 - a)] for a, (s, _) in enumerate(region)]
    hi = [e + grid.pad[2 * (nd - 1 - a)] for a, (_, e) in enumerate(region)]
    order = [i for i in order if all(sl.start < hi[a] and sl.stop > lo[a] for a, sl in enumerate(grid.slices[i]))]
    return order, (lo, hi)


def finish_sums(output: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """Padded window sums (``raw=True``) -> logits on the image: divided by the full run's window count (so a
    voxel all of whose windows ran gets the full run's logits) and the padding cropped."""
    return _finish(output, grid, None)


def _finish(output: torch.Tensor, grid: Any, box: tuple[list[int], list[int]] | None) -> torch.Tensor:
    """Stitched sums -> logits: divided by the window count, "background" outside the region, padding cropped."""
    nd = output.dim() - 2
    output /= grid.count_map(output.dtype, output.device)
    if box is not None:
        lo, hi = box
        inside = torch.zeros(grid.padded_size, dtype=torch.bool, device=output.device)
        inside[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
        background = torch.full((output.shape[1],), -1e4, dtype=output.dtype, device=output.device)
        background[0] = 0
        output = torch.where(inside, output, background.view(1, -1, *([1] * nd)))
    if any(grid.pad):
        crop = [slice(None), slice(None)]
        for a in range(nd):
            before = grid.pad[2 * (nd - 1 - a)]
            crop.append(slice(before, before + grid.image_size[a]))
        output = output[tuple(crop)]
    return output


# ---------------------------------------------------------------------------------------------- CPU memory


_ALLOCATOR_TUNED = False


def tune_cpu_allocator(top_pad_mb: int = 256) -> bool:
    """Keep freed tensor memory in the process heap (glibc ``mallopt``), so the next window's tensors reuse it.

    By default glibc serves every allocation above 32 MiB (most 96^3 feature maps) with a fresh ``mmap`` and
    returns it on free, so each window pays hundreds of thousands of page faults and the kernel zeroes the
    pages again (measured here: ~0.05 s of system time per window, 300k-400k faults, gone with this setting).
    Values are unchanged; the cost is that the process keeps its peak RSS until it exits. Linux/glibc only;
    returns False elsewhere, or when ``PANCREAS_DINTS_NO_MALLOPT`` is set.
    """
    global _ALLOCATOR_TUNED
    import ctypes
    import os
    import sys

    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("PANCREAS_DINTS_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    ok = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    ok = ok and bool(libc.mallopt(m_top_pad, int(top_pad_mb) << 20))
    _ALLOCATOR_TUNED = ok
    return ok


# ---------------------------------------------------------------------------------------------- batch size


def choose_sw_batch_size(
    model: torch.nn.Module,
    roi_size: Sequence[int],
    in_channels: int = 1,
    device: torch.device | str = "cuda",
    amp: bool = True,
    reserve_bytes: int = 0,
    max_batch: int = 32,
    safety: float = 0.8,
    default: int = 4,
) -> int:
    """Windows per batch that fit in free GPU memory; ``default`` on CPU.

    Runs the model on one and on two zero windows to measure the peak memory per window, then takes
    ``safety`` of the free memory (``torch.cuda.mem_get_info``) minus ``reserve_bytes`` (e.g. the stitching
    buffers, when they live on the GPU). The sliding window still halves the batch on an OOM.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return default
    peaks = []
    for n in (1, 2):
        x = torch.zeros((n, in_channels, *roi_size), device=dev)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        with torch.no_grad(), torch.autocast("cuda", enabled=amp):
            model(x)
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        del x
    per_window = max(peaks[1] - peaks[0], 1)
    fixed = max(peaks[0] - per_window, 0)
    free, _total = torch.cuda.mem_get_info(dev)
    budget = safety * (free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)) - reserve_bytes
    n = int((budget - fixed) // per_window)
    return int(max(1, min(max_batch, n)))


# ---------------------------------------------------------------------------------------------- ROI mode


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


# ---------------------------------------------------------------------------------------------- batch mode


def prefetched(items: Sequence[Any], load: Callable[[Any], Any], depth: int = 1):
    """Yield ``(item, load(item))`` in order while the next ``depth`` items load in a background thread.

    For batch mode: reading and preprocessing case i+1 (nibabel/zlib and torch release the GIL) overlaps the
    inference of case i. An exception raised by ``load`` is yielded in place of the result (not raised), so
    one bad case does not stop the others.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def worker() -> None:
        for item in items:
            if stop.is_set():
                return
            try:
                result: Any = load(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                result = exc
            q.put((item, result))
        q.put(_DONE)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                return
            yield got
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


_DONE = object()





# ---------------------------------------------------------------------------------------------- wiring


class FastInferer:
    """The fast sliding window for a Segmenter: FastDiNTS + :func:`sliding_window_exact_skip`.

    ``Segmenter.infer(pre)`` can return ``FastInferer(...)(pre, on_window)`` instead of running MONAI's
    ``SlidingWindowInferer``: same logits (see the tests), less work. ``sw_batch_size="auto"`` sizes batches
    by free GPU memory; ``engine`` is "eager", "cuda-graph" (CUDA only) or "compile" (``torch.compile``).
    ``upsample="matmul"``: FastDiNTS's matrix-product upsampling (faster, rounding-level differences; the
    default "native" keeps the network's outputs bit-identical to MONAI's on the CPU).
    """

    def __init__(self, network: torch.nn.Module, roi_size: Sequence[int], overlap: float,
                 device: torch.device | str, amp: bool, sw_batch_size: int | str = 4, in_channels: int = 1,
                 skip_constant: bool = True, engine: str = "eager", tune_allocator: bool = True,
                 upsample: str = "native") -> None:
        self.device = torch.device(device)
        self.allocator_tuned = tune_cpu_allocator() if tune_allocator and self.device.type == "cpu" else False
        self.amp = bool(amp) and self.device.type == "cuda"
        self.roi = tuple(int(r) for r in roi_size)
        self.overlap = overlap
        self.skip_constant = skip_constant
        self.model = network if isinstance(network, FastDiNTS) else make_fast(network, upsample, self.roi)
        self.model.eval()
        if sw_batch_size == "auto":
            sw_batch_size = choose_sw_batch_size(self.model, self.roi, in_channels, self.device, self.amp)
        self.sw_batch_size = int(sw_batch_size)
        self.engine = engine
        self.fixed_batch = False
        self.stats = SlidingStats()
        if engine == "cuda-graph":
            self.predictor: Predictor = CudaGraphForward(
                self.model, (self.sw_batch_size, in_channels, *self.roi), self.device, amp=self.amp)
            self.fixed_batch = True
        elif engine == "compile":
            self.predictor = compile_fast(self.model)
            self.fixed_batch = True  # one window shape, one compiled graph
            # compile now (minutes), so that the first case's inference time is the steady-state one
            warm = torch.zeros((self.sw_batch_size, in_channels, *self.roi), device=self.device)
            with torch.inference_mode(), torch.autocast("cuda", enabled=self.amp):
                self.predictor(warm)
        elif engine == "eager":
            self.predictor = self.model
        else:
            raise ValueError(f"engine must be eager, cuda-graph or compile, not {engine!r}")

    def stitch_device(self, spatial: Sequence[int], channels: int = 3) -> torch.device:
        """Stitch on the GPU when output + count map take under a third of the free memory, else on the CPU."""
        if self.device.type != "cuda":
            return self.device
        need = (channels + 1) * int(np.prod([max(s, r) for s, r in zip(spatial, self.roi, strict=True)])) * 4
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if need < free / 3 else torch.device("cpu")

    def __call__(self, pre: Any, on_window: Callable[[int, int], None] | None = None,
                 region: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """(C, X, Y, Z) preprocessed image -> (1, n_classes, X, Y, Z) logits, like the MONAI inferer.

        ``region`` (voxel ranges of ``pre``): run only the windows touching it (see sliding_window_exact_skip).
        """
        inputs = pre.unsqueeze(0).to(self.device)
        self.stats = SlidingStats()
        out_device = self.stitch_device(inputs.shape[2:])
        with torch.inference_mode(), torch.autocast("cuda", enabled=self.amp):
            return sliding_window_exact_skip(
                inputs, self.predictor, self.roi, self.sw_batch_size, self.overlap,
                skip_constant=self.skip_constant, device=out_device, fixed_batch=self.fixed_batch,
                progress=on_window, stats=self.stats, region=region)


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
    """
    ranges = box_to_voxels(box, np.asarray(image.affine), image.shape[1:], space)
    full_shape = image.shape[1:]
    if mode == "local":
        cropped, crop = crop_image(image, ranges, margin_mm=margin_mm, min_size_mm=segmenter.spec.roi_size)
        labels = segmenter.predict(cropped)
        return paste_labels(labels, crop, ranges, full_shape)
    if mode != "grid":
        raise ValueError(f"ROI mode must be 'grid' or 'local', not {mode!r}")
    if fast is None:
        fast = FastInferer(segmenter.network, segmenter.spec.roi_size, segmenter.spec.overlap, segmenter.device,
                           segmenter.amp, segmenter.sw_batch_size)
    pre = segmenter.preprocess(image)
    # the box's corners in the preprocessed grid (both affines map voxels to the same world space)
    src = np.asarray(image.affine, dtype=float)
    dst_inv = np.linalg.inv(np.asarray(pre.affine, dtype=float))
    corners = np.array(list(itertools.product(*[(s - 0.5, e - 0.5) for s, e in ranges])))
    ijk = (dst_inv @ (src @ np.c_[corners, np.ones(len(corners))].T))[:3].T
    pre_shape = pre.shape[1:]
    region = tuple((int(max(0, math.floor(ijk[:, a].min()) - 2)), int(min(pre_shape[a], math.ceil(ijk[:, a].max()) + 3)))
                   for a in range(3))
    logits = fast(pre, region=region)
    labels = segmenter.postprocess(logits, pre)
    return paste_labels(labels, tuple(slice(0, s) for s in full_shape), ranges, full_shape)
