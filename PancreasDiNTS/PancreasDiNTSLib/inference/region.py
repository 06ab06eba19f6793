"""The automatic pancreas region: a two-pass sliding window whose dense pass runs only where the gland is.

``segment --region auto`` (the default on a CPU), on the preprocessed image (the network's grid):

1. **Coarse pass** -- the same network over windows that do not overlap (MONAI's grid with ``overlap=0``: the
   scan interval equals the window, the last window moved back to the image edge), about ``(1 - overlap)^3``
   of the full run's windows (1/8 for the demo model, 1/19 for the released one).
2. **Region** -- the coarse foreground, the voxels whose probability of pancreas or lesion
   (``1 - P(background)``) is at least :data:`FOREGROUND_THRESHOLD` (0.3, below an argmax's 0.5), each part
   (26-connected) **confirmed** by a window centred on it (the same threshold anywhere in the part; one window
   checks every part lying :data:`EDGE_BAND` voxels inside it; parts larger than half a window are kept
   unchecked), then dilated by :data:`MARGIN_MM` (a box of +-margin per axis, which holds the ball of that radius).
   Several separate regions are allowed. A non-overlapping window sees its faces' voxels without their context
   (zero padding), where a network gives small false parts that the full run's overlapping windows average away;
   a centred window sees a part as the full run's inner windows do. Measured on
   Testing/benchmarks/auto_region_check.py (docs/PERFORMANCE.md): with the demo model most coarse parts outside the
   glands are such edge artefacts, each of which would cost the dense pass tens of windows.
   ``RegionSettings(confirm=False)`` (engine API) keeps every part.
3. **Dense pass** -- the full run's own windows that touch the region (``windows.sliding_window_exact_skip``
   with ``windows=``). Every voxel all of whose covering windows ran (the *exact region*, which holds the
   region) gets the full run's window sum in MONAI's order, so its logits and labels are the whole-volume run's.
4. **Growth** -- where the dense foreground touches a face of the exact region (the image's own edges do not
   count), the region grows there by the margin and the missing windows run; after :data:`MAX_GROWTH_ROUNDS`
   rounds the rest of the volume runs (a note), so a structure is never cut off. A voxel first completed in a
   growth round sums its windows in two parts (rounding-level differences at most).
5. **Outside the exact region** the logits are the coarse pass's where its probability of background is above
   0.5 (almost everywhere: its informative foreground lies in the region), else certain background (the edge
   artefacts of a window of one value, e.g. air). So the labels there are background, and the confidence map is
   the coarse pass's probability of background (1 at those artefacts); the lesion score's maximum includes the
   coarse lesion probabilities there (each below 0.5).

Windows of one value (air or fat clipped by the intensity window) cost no network call in the fast sliding window
(computed once per value): the coarse pass ignores its output inside them (a uniform input holds no structure;
its window-edge artefacts are not a finding), and the dense pass runs all of them, so the exact region holds all
the volume that such windows alone cover.

The whole volume runs instead, with a note in report.json, when the coarse pass finds nothing, when the model
does not blend windows with constant weights (the window sums above need MONAI's ``constant`` blend), and --
decided before any network window, so that ``auto`` never costs more than the whole run it replaces -- when the
full run's network windows (constant windows once per value: air is cheap) are fewer than :data:`MIN_SAVING`
times the coarse pass's, or fewer than the coarse pass plus the dense windows around a region half a window in
size (a small volume, or one that is mostly air).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from PancreasDiNTSLib.inference.windows import (
    SlidingStats,
    WindowGrid,
    constant_window_values,
    finish_sums,
    sliding_window_exact_skip,
    window_grid,
)

__all__ = [
    "FOREGROUND_THRESHOLD", "EDGE_BAND", "MARGIN_MM", "MAX_GROWTH_ROUNDS", "MIN_SAVING", "RegionRun",
    "coarse_foreground", "dilate", "windows_touching", "constant_windows", "informative", "exact_region", "faces_touched", "region_boxes",
    "infer_auto", "RegionSettings",
]

FOREGROUND_THRESHOLD = 0.3  # coarse P(pancreas) + P(lesion) at or above this is foreground
EDGE_BAND = 4  # a part is checked by a confirmation window when it lies this many voxels inside it
MARGIN_MM = 10.0  # the coarse foreground is dilated by this much (per axis) to make the region
MAX_GROWTH_ROUNDS = 3  # growth rounds before the rest of the volume runs
MIN_SAVING = 3.0  # the full run needs this many times the coarse pass's windows, else the whole volume runs
MAX_REPORTED_REGIONS = 20
ProgressFn = Callable[[str, int, int], None]  # (pass: coarse | dense | whole, windows done, windows of the pass)


@dataclass(frozen=True)
class RegionSettings:
    """The automatic region's settings (the module's constants by default; tests use others)."""

    threshold: float = FOREGROUND_THRESHOLD
    margin_mm: float = MARGIN_MM
    max_rounds: int = MAX_GROWTH_ROUNDS
    min_saving: float = MIN_SAVING
    band: int = EDGE_BAND
    confirm: bool = True  # check each coarse part with a window centred on it (module docstring, step 2)


@dataclass
class RegionRun:
    """What an automatic-region run did: report.json ``inference.region``."""

    full_windows: int = 0  # windows of the whole-volume run
    coarse_windows: int = 0  # windows of the coarse pass (0 when it did not run)
    dense_windows: list[int] = field(default_factory=list)  # windows run per dense round (round 0 first)
    computed: int = 0  # windows through the network in all passes (constant windows once per value)
    full_computed: int = 0  # the same for the whole-volume run (its non-constant windows + distinct values)
    coarse_computed: int = 0  # the same for the coarse pass
    regions: list[dict[str, Any]] = field(default_factory=list)
    region_count: int = 0
    exact_fraction: float = 0.0  # share of the image's voxels with the full run's logits
    fallback: str | None = None  # why the whole volume ran (None: it did not)
    settings: RegionSettings = field(default_factory=RegionSettings)
    found: int = 0  # coarse foreground parts
    confirmed: int = 0  # of those, confirmed by a window centred on them (or too large to check)
    confirm_windows: int = 0  # windows the confirmation ran

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "auto", "threshold": self.settings.threshold, "margin_mm": self.settings.margin_mm,
            "windows": {"coarse": self.coarse_windows, "dense": list(self.dense_windows),
                        "growth_rounds": max(0, len(self.dense_windows) - 1), "full": self.full_windows,
                        "confirm": self.confirm_windows, "computed": self.computed,
                        "full_computed": self.full_computed,
                        "fraction_of_full": round(self.computed / max(1, self.full_computed), 4)},
            "coarse_parts": {"found": self.found, "confirmed": self.confirmed} if self.settings.confirm else None,
            "regions": self.regions, "region_count": self.region_count,
            "exact_fraction": round(self.exact_fraction, 6), "fallback": self.fallback,
        }


# ---------------------------------------------------------------------------------------------- region logic


def coarse_foreground(logits: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD, slab: int = 16) -> np.ndarray:
    """(1, C, X, Y, Z) logits -> bool mask of voxels whose softmax probability of any non-background class
    together (``1 - P(background)``) is at least ``threshold`` (computed in slabs along X)."""
    out = np.zeros(tuple(logits.shape[2:]), dtype=bool)
    for s in range(0, out.shape[0], slab):
        p = torch.softmax(logits[0, :, s : s + slab].float(), dim=0)
        out[s : s + slab] = (1.0 - p[0] >= threshold).cpu().numpy()
    return out


def spacing_of(affine: Any) -> tuple[float, ...]:
    """Voxel sizes (mm) of a 4x4 voxel-to-world affine."""
    a = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(0)))


def dilate(mask: np.ndarray, spacing: Sequence[float], margin_mm: float = MARGIN_MM) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` along each axis (a box of +-margin, at least one voxel: it holds the ball
    of radius ``margin_mm``)."""
    out = mask.astype(np.uint8)
    for a, sp in enumerate(spacing):
        r = max(1, int(math.ceil(margin_mm / float(sp) - 1e-9)))
        out = ndimage.maximum_filter1d(out, size=2 * r + 1, axis=a, mode="constant", cval=0)
    return out.astype(bool)


def _padded(mask: np.ndarray, grid: WindowGrid, value: bool = False) -> np.ndarray:
    """An image-sized mask on the padded grid the windows live on."""
    nd = mask.ndim
    if not any(grid.pad):
        return mask
    widths = [(grid.pad[2 * (nd - 1 - a)], grid.pad[2 * (nd - 1 - a) + 1]) for a in range(nd)]
    return np.pad(mask, widths, constant_values=value)


def _cropped(mask: np.ndarray, grid: WindowGrid) -> np.ndarray:
    nd = mask.ndim
    before = [grid.pad[2 * (nd - 1 - a)] for a in range(nd)]
    return mask[tuple(slice(b, b + s) for b, s in zip(before, grid.image_size, strict=True))]


def windows_touching(mask: np.ndarray, grid: WindowGrid) -> list[int]:
    """Indices (MONAI's order) of the windows of ``grid`` that hold at least one voxel of ``mask`` (image
    grid): a separable "any" over each axis's window intervals."""
    hit = _padded(mask, grid)
    for a in range(hit.ndim):
        parts = []
        for s in grid.starts[a]:
            idx: list[slice] = [slice(None)] * hit.ndim
            idx[a] = slice(s, s + grid.roi[a])
            parts.append(hit[tuple(idx)].any(axis=a, keepdims=True))
        hit = np.concatenate(parts, axis=a)
    return [i for i, w in enumerate(grid.windows) if hit[w]]


def constant_windows(x: torch.Tensor, grid: WindowGrid) -> dict[int, tuple[float, ...]]:
    """The windows of ``grid`` on (1, C, ...) ``x`` whose content is one value, with that value
    (windows.constant_window_values: the sliding window computes each value's logits once)."""
    padded = F.pad(x, pad=grid.pad, mode="constant", value=0.0) if any(grid.pad) else x
    return {i: v for i, v in enumerate(constant_window_values(padded, grid)) if v is not None}


def informative(grid: WindowGrid, constant: set[int] | dict[int, Any], band: int = 0) -> np.ndarray:
    """Bool mask (image grid) of the voxels inside at least one window that is not constant, ``band`` voxels or
    more from that window's faces (faces on the image's edges excepted). A constant window holds no structure:
    the coarse pass's output there is the network's answer to a uniform input, and the dense pass runs every
    constant window of the full grid anyway (they cost no network call). Next to a window's faces the network
    sees zero padding: the coarse pass's findings there alone are edge artefacts (what the coarse pass finds
    inside a window reaches its band through the dilation)."""
    out = np.zeros(grid.padded_size, dtype=bool)
    slices = grid.slices
    for i in range(len(slices)):
        if i not in constant:
            inner = tuple(slice(sl.start + (band if sl.start > 0 else 0),
                                sl.stop - (band if sl.stop < size else 0))
                          for sl, size in zip(slices[i], grid.padded_size, strict=True))
            out[inner] = True
    return _cropped(out, grid)


def exact_region(grid: WindowGrid, ran: set[int]) -> np.ndarray:
    """Bool mask (image grid) of the voxels all of whose covering windows are in ``ran``."""
    complete = np.ones(grid.padded_size, dtype=bool)
    slices = grid.slices
    for i in range(len(slices)):
        if i not in ran:
            complete[slices[i]] = False
    return _cropped(complete, grid)


def faces_touched(foreground: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Foreground voxels of the exact region next to (6-neighbourhood) a voxel outside it; the image's own
    edges are not faces (the full run has nothing beyond them either)."""
    outside_next = np.zeros_like(exact)
    for a in range(exact.ndim):
        lo = [slice(None)] * exact.ndim
        hi = [slice(None)] * exact.ndim
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        outside_next[tuple(lo)] |= ~exact[tuple(hi)]
        outside_next[tuple(hi)] |= ~exact[tuple(lo)]
    return foreground & exact & outside_next


def region_boxes(mask: np.ndarray, affine: Any, limit: int = MAX_REPORTED_REGIONS) -> tuple[list[dict[str, Any]], int]:
    """The connected parts (26-connectivity) of ``mask``, largest first (at most ``limit``): voxel box on the
    network's grid, RAS box in mm (X0, Y0, Z0, X1, Y1, Z1) and voxel count; and how many parts there are."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return [], 0
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    aff = np.asarray(affine, dtype=float)
    out: list[dict[str, Any]] = []
    for k, sl in enumerate(ndimage.find_objects(labelled)):
        if sl is None:
            continue
        corners = np.array([[a, b, c] for a in (sl[0].start - 0.5, sl[0].stop - 0.5)
                            for b in (sl[1].start - 0.5, sl[1].stop - 0.5)
                            for c in (sl[2].start - 0.5, sl[2].stop - 0.5)])
        ras = (aff[:3, :3] @ corners.T).T + aff[:3, 3]
        out.append({"voxels": int(sizes[k]), "box_voxels": [[s.start, s.stop] for s in sl],
                    "box_ras_mm": [round(float(v), 1) for v in (*ras.min(0), *ras.max(0))]})
    out.sort(key=lambda r: -int(r["voxels"]))
    return out[:limit], int(count)


# ---------------------------------------------------------------------------------------------- the passes


@dataclass
class _Passes:
    """How this Segmenter's network runs one sliding-window pass (its fast forward when it has one)."""

    predictor: Any
    batch: int
    device: torch.device
    out_device: torch.device
    amp: bool
    fixed_batch: bool
    roi: tuple[int, ...]
    stats: SlidingStats = field(default_factory=SlidingStats)  # all passes together

    def run(self, x: torch.Tensor, overlap: float, windows: Sequence[int] | None, into: torch.Tensor | None,
            progress: Callable[[int, int], None] | None) -> torch.Tensor:
        """Padded window sums of ``windows`` of the grid with ``overlap`` (all without), added to ``into``."""
        stats = SlidingStats()
        # no_grad, not inference_mode: the sums are updated in place after the pass (growth, division, fill)
        with torch.no_grad(), torch.autocast("cuda", enabled=self.amp):
            out = sliding_window_exact_skip(x, self.predictor, self.roi, self.batch, overlap, device=self.out_device,
                                            fixed_batch=self.fixed_batch, progress=progress, stats=stats,
                                            windows=windows, into=into, raw=True)
        for key in ("windows", "computed", "constant", "distinct_constants", "network_calls", "oom_retries"):
            setattr(self.stats, key, getattr(self.stats, key) + getattr(stats, key))
        self.stats.batch_size = stats.batch_size
        return out


def _passes(segmenter: Any, spatial: Sequence[int]) -> _Passes:
    """The Segmenter's network as its passes call it (Segmenter.window_forward: the fast forward, or the network)."""
    forward = segmenter.window_forward(spatial)
    return _Passes(forward.predictor, forward.batch, forward.device, forward.out_device, forward.amp,
                   forward.fixed_batch, forward.roi)


def _whole_reason(segmenter: Any, run: RegionRun) -> str | None:
    if segmenter.spec.blend_mode != "constant":
        return (f"the model blends windows with {segmenter.spec.blend_mode!r} weights (the automatic region needs "
                "'constant'); the whole volume was segmented")
    return None


def _computed(grid: WindowGrid, constant: dict[int, tuple[float, ...]]) -> int:
    """Network windows a pass over every window of ``grid`` costs: constant windows once per value."""
    return len(grid.windows) - len(constant) + len(set(constant.values()))


def _least_dense(grid: WindowGrid, constant: dict[int, Any], spacing: Sequence[float], margin_mm: float) -> int:
    """About the fewest network windows a dense pass costs: those around a region half a window in size (dilated
    by the margin) at the image's centre, constant windows aside."""
    size, half = grid.image_size, [max(1, r // 2) for r in grid.roi]
    mask = np.zeros(size, dtype=bool)
    mask[tuple(slice(max(0, (n - h) // 2), max(0, (n - h) // 2) + h) for n, h in zip(size, half, strict=True))] = True
    return len(set(windows_touching(dilate(mask, spacing, margin_mm), grid)) - set(constant))


def _cost_reason(run: RegionRun, least: int) -> str | None:
    """Why the automatic region cannot save windows here (decided before any network window), or None."""
    if run.full_computed < run.settings.min_saving * run.coarse_computed or least >= run.full_computed:
        return (f"small volume (or mostly air): the automatic region would cost at least {least} network windows "
                f"(coarse pass {run.coarse_computed}), the whole run {run.full_computed}; the whole volume was "
                "segmented")
    return None


def _foreground_of_sums(sums: torch.Tensor, grid: WindowGrid, slab: int = 16) -> np.ndarray:
    """Argmax != background of padded window sums (the division by the count does not change an argmax),
    on the image grid; voxels no window reached are background."""
    fg = np.zeros(grid.padded_size, dtype=bool)
    for s in range(0, fg.shape[0], slab):
        part = sums[0, :, s : s + slab]
        fg[s : s + slab] = (part[1:].amax(0) > part[0]).cpu().numpy()
    return _cropped(fg, grid)


def infer_auto(segmenter: Any, pre: Any, progress: ProgressFn | None = None,
               settings: RegionSettings | None = None) -> tuple[Any, RegionRun]:
    """Logits (1, C, ...) of a preprocessed image with the automatic region (module docstring) and what ran."""
    settings = settings or RegionSettings()
    spatial = tuple(int(s) for s in pre.shape[1:])
    overlap = float(segmenter.spec.overlap)
    roi = segmenter.spec.roi_size
    full, coarse_grid = window_grid(spatial, roi, overlap), window_grid(spatial, roi, 0.0)
    run = RegionRun(full_windows=len(full.windows), coarse_windows=len(coarse_grid.windows), settings=settings)

    def report(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    why = _whole_reason(segmenter, run)
    if why is not None:
        run.coarse_windows = 0
        return _whole(segmenter, pre, run, why, report("whole"))
    passes = _passes(segmenter, spatial)
    x = pre.unsqueeze(0).to(passes.device)
    constant, coarse_constant = constant_windows(x, full), constant_windows(x, coarse_grid)
    run.full_computed, run.coarse_computed = _computed(full, constant), _computed(coarse_grid, coarse_constant)
    why = _cost_reason(run, run.coarse_computed + _least_dense(full, constant, spacing_of(pre.affine),
                                                                settings.margin_mm))
    if why is not None:  # before any network window: auto never costs more than the whole run it replaces
        run.coarse_windows = 0
        return _whole(segmenter, pre, run, why, report("whole"))
    coarse = finish_sums(passes.run(x, 0.0, None, None, report("coarse")), coarse_grid)
    mask = coarse_foreground(coarse, settings.threshold) & informative(coarse_grid, coarse_constant)
    if settings.confirm:
        mask = _confirmed(passes, x, mask, run)
    if not mask.any():
        del coarse
        checked = ", confirmed by a window centred on it" if settings.confirm else ""
        return _whole(segmenter, pre, run, f"the coarse pass found no pancreas or lesion (probability >= "
                      f"{settings.threshold}{checked}); the whole volume was segmented", report("whole"), passes.stats)
    spacing = spacing_of(pre.affine)
    mask = dilate(mask, spacing, settings.margin_mm)
    sums, exact, mask = _dense(passes, x, (full, overlap), (mask, set(constant)), spacing, run, report("dense"))
    logits = finish_sums(sums, full)
    _fill_outside(logits, coarse, exact)
    del coarse
    run.exact_fraction = float(exact.mean())
    run.regions, run.region_count = region_boxes(mask, pre.affine)
    _set_stats(segmenter, passes.stats)
    run.computed = passes.stats.computed + passes.stats.distinct_constants + run.confirm_windows
    return _as_meta(logits, pre), run


def _confirmed(passes: _Passes, x: torch.Tensor, mask: np.ndarray, run: RegionRun) -> np.ndarray:
    """The coarse foreground's parts (26-connectivity) that a window centred on them also finds (probability of
    pancreas or lesion >= the threshold somewhere in the part). A coarse window's edges give artefacts (zero
    padding) that the full run, whose windows overlap, does not have; a window centred on a part sees it as the
    full run's inner windows do. Parts larger than a window's middle half, and all parts when they would need
    more than half as many windows as the full run, are kept unchecked."""
    labelled, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    run.found = run.confirmed = int(count)
    roi, size = passes.roi, mask.shape
    if count == 0 or any(s < r for s, r in zip(size, roi, strict=True)):
        return mask
    keep = np.zeros(count + 1, dtype=bool)
    checks = _confirmation_windows(ndimage.find_objects(labelled), roi, size, run.settings.band, keep)
    if len(checks) > run.full_windows / 2:  # dearer than the dense pass it could save
        return mask
    for i in range(0, len(checks), passes.batch):
        part = checks[i : i + passes.batch]
        batch = torch.cat([x[(slice(None), slice(None)) + win] for win, _ in part])
        with torch.no_grad(), torch.autocast("cuda", enabled=passes.amp):
            p_fg = (1.0 - torch.softmax(passes.predictor(batch).float(), dim=1)[:, 0]).cpu().numpy()
        for j, (win, parts) in enumerate(part):
            found = labelled[win][p_fg[j] >= run.settings.threshold]
            keep[[k for k in parts if k in set(found.tolist())]] = True
    run.confirm_windows = len(checks)
    run.confirmed = int(keep[1:].sum())
    return keep[labelled]


def _confirmation_windows(boxes: Sequence[Any], roi: Sequence[int], size: Sequence[int], band: int,
                          keep: np.ndarray) -> list[tuple[tuple[slice, ...], list[int]]]:
    """Windows that check the coarse parts (``boxes``: their slices, part k at index k - 1): one centred on the
    first unchecked part checks every part that lies ``band`` voxels or more inside it. Parts larger than half a
    window are kept unchecked (``keep``)."""
    todo = []
    for k, sl in enumerate(boxes, start=1):
        if sl is None or any(s.stop - s.start > r // 2 for s, r in zip(sl, roi, strict=True)):
            keep[k] = True
        else:
            todo.append(k)
    checks = []
    while todo:
        sl = boxes[todo[0] - 1]
        start = [min(max((s.start + s.stop - r) // 2, 0), n - r) for s, r, n in zip(sl, roi, size, strict=True)]
        lo = [a + band if a > 0 else 0 for a in start]
        hi = [a + r - band if a + r < n else n for a, r, n in zip(start, roi, size, strict=True)]
        inside = [k for k in todo if all(lo[a] <= s.start and s.stop <= hi[a] for a, s in enumerate(boxes[k - 1]))]
        inside = inside or todo[:1]
        checks.append((tuple(slice(a, a + r) for a, r in zip(start, roi, strict=True)), inside))
        todo = [k for k in todo if k not in set(inside)]
    return checks


def _dense(passes: _Passes, x: torch.Tensor, full: tuple[WindowGrid, float], region: tuple[np.ndarray, set[int]],
           spacing: Sequence[float], run: RegionRun, progress: Callable[[int, int], None] | None
           ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The dense pass and its growth rounds: (padded window sums, exact region, the region: its mask and the
    dense foreground in the exact region, which joins the pieces growth added). The first
    round also runs every constant window (no network call: their logits are computed once per value)."""
    grid, overlap = full
    mask, constant = region
    ran: set[int] = set()
    sums: torch.Tensor | None = None
    rounds = run.settings.max_rounds
    for rnd in range(rounds + 2):
        if rnd <= rounds:
            touching = set(windows_touching(mask, grid)) | (constant if rnd == 0 else set())
            new = sorted(touching - ran)
        else:  # still touching after the last round: the rest of the volume, so nothing is cut off
            new = [i for i in range(len(grid.windows)) if i not in ran]
            run.fallback = (f"the pancreas still reached the region's faces after {rounds} growth rounds; "
                            "the rest of the volume was segmented")
        sums = passes.run(x, overlap, new, sums, progress)
        ran.update(new)
        run.dense_windows.append(len(new))
        exact = exact_region(grid, ran)
        foreground = _foreground_of_sums(sums, grid) & exact
        touched = faces_touched(foreground, exact)
        if not touched.any() or len(ran) == len(grid.windows):
            return sums, exact, mask | foreground  # the region: where it was put, joined by what it found
        mask = mask | dilate(touched, spacing, run.settings.margin_mm)
    raise AssertionError("unreachable: the last round runs every window")


def _fill_outside(logits: torch.Tensor, coarse: torch.Tensor, exact: np.ndarray, slab: int = 16) -> None:
    """Outside the exact region (in place, slab by slab): the coarse pass's logits where its probability of
    background is above 0.5, else (a constant window's edge artefact) certain background (0 for channel 0,
    -1e4 for the others, as ROI mode), so every label there is background, also after interpolation."""
    background = torch.full((logits.shape[1],), -1e4, dtype=logits.dtype, device=logits.device)
    background[0] = 0
    background = background.view(-1, 1, 1, 1)
    for s in range(0, exact.shape[0], slab):
        inside = torch.from_numpy(np.ascontiguousarray(exact[s : s + slab])).to(logits.device)
        part = logits[0, :, s : s + slab]
        outer = coarse[0, :, s : s + slab].to(logits.device, logits.dtype)
        outer = torch.where(torch.softmax(outer.float(), dim=0)[0] > 0.5, outer, background)
        part.copy_(torch.where(inside, part, outer))


def _whole(segmenter: Any, pre: Any, run: RegionRun, why: str, progress: Callable[[int, int], None] | None,
           before: SlidingStats | None = None) -> tuple[Any, RegionRun]:
    """The whole volume through the Segmenter's own path (what ``--region whole`` runs), with the reason."""
    run.fallback = why
    logits = segmenter.infer(pre, progress)
    run.dense_windows = [run.full_windows]
    stats = segmenter.window_stats
    computed = stats.computed + stats.distinct_constants if stats is not None else (run.full_computed or
                                                                                     run.full_windows)
    run.computed = computed + (before.computed + before.distinct_constants if before is not None else 0) \
        + run.confirm_windows
    run.full_computed = run.full_computed or computed
    run.exact_fraction = 1.0
    if before is not None and stats is not None:
        for key in ("windows", "computed", "constant", "network_calls"):
            setattr(stats, key, getattr(stats, key) + getattr(before, key))
    return logits, run


def _set_stats(segmenter: Any, stats: SlidingStats) -> None:
    """The Segmenter's report (``describe``) counts the windows of both passes."""
    segmenter.window_stats = stats


def _as_meta(logits: torch.Tensor, pre: Any) -> Any:
    """The logits as a MetaTensor with the preprocessed image's meta (what the sliding window returns)."""
    from monai.data import MetaTensor
    from monai.utils import convert_to_dst_type

    if not isinstance(pre, MetaTensor):
        return logits
    meta = MetaTensor([]).copy_meta_from(pre.unsqueeze(0), copy_attr=False)
    return convert_to_dst_type(logits, meta, device=logits.device)[0]
