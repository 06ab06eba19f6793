"""The exact sliding window with work not done: MONAI's ``sliding_window_inference`` (blend ``constant``)
re-implemented with the same window positions, padding, summation order and division, plus two savings:

- **constant windows** (every voxel of the window has the same preprocessed value, e.g. air and fat, which the
  bundle's intensity window clips to exactly ``b_min``): a window wholly outside the body still gives
  non-trivial logits (zero padding of the convolutions, InstanceNorm's affine bias), so it cannot simply be
  skipped. The network depends only on the window's content, so all windows with the same constant value give
  the same logits: they are computed once per distinct value (one extra window) and added in MONAI's order. The
  result is the function MONAI computes; the only differences possible are those of running a window in another
  batch (the same ones a different ``sw_batch_size`` gives) -- see test_fastpath.py;
- **the count map** is the product of per-axis window counts (the windows form a grid), computed in one step
  instead of one addition per window; the counts are small integers, so the division is bit-identical.

Non-constant windows are packed into full batches (optionally padded to a fixed batch for CUDA graphs), the whole
run makes one host sync for the window classification, and a CUDA out-of-memory halves the batch and retries the
same windows (nothing was accumulated from the failed call; :func:`.device.halve_on_oom`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from PancreasDiNTSLib.inference.device import halve_on_oom

Predictor = Callable[[torch.Tensor], torch.Tensor]


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
