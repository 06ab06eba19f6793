"""Before a run: how many sliding windows the engine will compute, and about how long that takes here.

Torch-free (the Slicer panel shows the estimate before anything is started). The window count mirrors MONAI's
``SlidingWindowInferer`` (scan interval and window starts of ``monai.data.utils.dense_patch_slices``; checked
against MONAI in Testing/test_scene_estimate.py) on the model's grid (``Spacingd`` pixdim, ``roi_size``,
``overlap`` read from the model's ``configs/inference.yaml``/``.json`` as data). ROI modes follow
``inference.roi.predict_roi``: ``grid`` runs the full run's windows that touch the box (grown by 2 voxels),
``local`` runs every window of the box grown by 24 mm of context, at least one window wide. The automatic pancreas
region (``inference.region``, ``segment --region auto``) runs a coarse pass of non-overlapping windows, then the full
run's windows around the gland: the estimate counts the coarse pass exactly and the dense pass for a typical gland
(:data:`TYPICAL_GLAND_MM`, grown by the region's margin; the true count depends on what the coarse pass finds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import PancreasDiNTSError
from PancreasDiNTSLib.core.request import ROI_MODES
from PancreasDiNTSLib.core.safeparse import load_data_file, read_text_bounded

DEFAULT_ROI_SIZE = (96, 96, 96)
DEFAULT_OVERLAP = 0.625
DEFAULT_PIXDIM = (1.0, 1.0, 1.0)
LOCAL_MARGIN_MM = 24.0
GRID_GROW_VOXELS = 2
# One window of the released model on 2 CPU cores (docs: 7.1 s); used until this machine has measured one.
DEFAULT_SECONDS_PER_WINDOW = 7.0
# The automatic region's margin and small-volume rule (inference.region.MARGIN_MM and MIN_SAVING; the bridge does
# not import the engine's torch layer, Testing/test_region.py checks that they agree) and the extent (mm, x y z)
# of a typical pancreas with its lesions, for the dense pass's estimate.
AUTO_MARGIN_MM = 10.0
AUTO_MIN_SAVING = 3.0
TYPICAL_GLAND_MM = (150.0, 70.0, 70.0)


@dataclass(frozen=True)
class WindowSpec:
    """The sliding-window settings of a model."""

    roi_size: tuple[int, int, int] = DEFAULT_ROI_SIZE
    overlap: float = DEFAULT_OVERLAP
    pixdim: tuple[float, float, float] = DEFAULT_PIXDIM


def _have_yaml() -> bool:
    """PyYAML importable here (Slicer's Python may lack it until the engine's packages are installed)."""
    try:
        import yaml  # noqa: F401
    except ImportError:
        return False
    return True


def _config(model: str | Path) -> dict[str, Any] | None:
    """The model's inference config as data, read within core.safeparse's limits (this runs in Slicer's own
    process: an alias bomb or a huge file must not hang it); None when absent or unreadable."""
    root = Path(model)
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = root / "configs" / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".json") or _have_yaml():
                data = load_data_file(path)
                return data if isinstance(data, dict) else None
            return {"_text": read_text_bounded(path)}  # no PyYAML yet: the numbers are found in the text
        except PancreasDiNTSError:
            return None
    return None


def _numbers_after(text: str, key: str) -> list[float]:
    """The numbers of a YAML ``key:`` (inline or as a dash list) in text, without a YAML parser."""
    m = re.search(rf"^(\s*){key}:\s*(.*)$", text, re.M)
    if not m:
        return []
    inline = re.findall(r"-?\d+(?:\.\d+)?", m.group(2))
    if inline:
        return [float(v) for v in inline]
    rest = text[m.end():].splitlines()[1:]
    values = []
    for line in rest:
        item = re.match(r"^\s*-\s*(-?\d+(?:\.\d+)?)\s*$", line)
        if not item:
            break
        values.append(float(item.group(1)))
    return values


def window_spec(model: str | Path | None) -> WindowSpec:
    """The model's roi_size, overlap and target spacing (defaults: the released bundle's) read as data."""
    config = _config(model) if model else None
    if not config:
        return WindowSpec()
    if "_text" in config:
        text = config["_text"]
        roi, overlap, pixdim = _numbers_after(text, "roi_size"), _numbers_after(text, "overlap"), \
            _numbers_after(text, "pixdim")
    else:
        found = config.get("inferer")
        inferer: dict[str, Any] = found if isinstance(found, dict) else {}
        roi, overlap = inferer.get("roi_size") or [], [inferer["overlap"]] if "overlap" in inferer else []
        pixdim = []
        for transform in (config.get("preprocessing") or {}).get("transforms", []) or []:
            if isinstance(transform, dict) and str(transform.get("_target_", "")).endswith("Spacingd"):
                pixdim = transform.get("pixdim") or []
    ok = lambda values, n: len(values) == n and all(isinstance(v, int | float) for v in values)  # noqa: E731
    return WindowSpec(
        (int(roi[0]), int(roi[1]), int(roi[2])) if ok(roi, 3) else DEFAULT_ROI_SIZE,
        float(overlap[0]) if ok(overlap, 1) else DEFAULT_OVERLAP,
        (float(pixdim[0]), float(pixdim[1]), float(pixdim[2])) if ok(pixdim, 3) else DEFAULT_PIXDIM,
    )


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of MONAI's windows along one axis of ``size`` voxels (after padding to ``roi``)."""
    size = max(size, roi)
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
    count = next((d for d in range(math.ceil(size / interval)) if d * interval + roi >= size), 0) + 1
    return [i * interval - max(i * interval + roi - size, 0) for i in range(count)]


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding window runs on an image of ``shape`` voxels."""
    return math.prod(len(window_starts(s, r, overlap)) for s, r in zip(shape, roi, strict=True))


def _grid_shape(extent_mm: Sequence[float], pixdim: Sequence[float]) -> list[int]:
    return [max(1, round(e / p)) for e, p in zip(extent_mm, pixdim, strict=True)]


def estimate_windows(volume_bounds: Sequence[float], spec: WindowSpec, box: Sequence[float] | None = None,
                     roi_mode: str = "grid") -> int:
    """Windows of a run on a CT whose world bounds are (x0, x1, y0, y1, z0, z1) (VTK order), optionally
    restricted to a box (x0, y0, z0, x1, y1, z1) (the ``--roi`` order). The model's grid is taken as aligned
    with the world axes (exact for axial CTs, an estimate for oblique ones)."""
    low = [min(volume_bounds[2 * a], volume_bounds[2 * a + 1]) for a in range(3)]
    high = [max(volume_bounds[2 * a], volume_bounds[2 * a + 1]) for a in range(3)]
    shape = _grid_shape([h - lo for lo, h in zip(low, high, strict=True)], spec.pixdim)
    if box is None:
        return count_windows(shape, spec.roi_size, spec.overlap)
    b_low = [max(min(box[a], box[a + 3]), low[a]) for a in range(3)]
    b_high = [min(max(box[a], box[a + 3]), high[a]) for a in range(3)]
    if any(h <= lo for lo, h in zip(b_low, b_high, strict=True)):
        raise ValueError("the box does not overlap the CT")
    if roi_mode == "local":
        extent = []
        for a in range(3):
            want = max(b_high[a] - b_low[a] + 2 * LOCAL_MARGIN_MM, spec.roi_size[a] * spec.pixdim[a])
            extent.append(min(want, high[a] - low[a]))
        return count_windows(_grid_shape(extent, spec.pixdim), spec.roi_size, spec.overlap)
    if roi_mode not in ROI_MODES:
        raise ValueError(f"ROI mode must be one of {', '.join(ROI_MODES)}, not {roi_mode!r}")
    total = 1
    for a in range(3):
        start = math.floor((b_low[a] - low[a]) / spec.pixdim[a]) - GRID_GROW_VOXELS
        stop = math.ceil((b_high[a] - low[a]) / spec.pixdim[a]) + GRID_GROW_VOXELS + 1
        starts = window_starts(shape[a], spec.roi_size[a], spec.overlap)
        total *= sum(1 for s in starts if s < stop and s + spec.roi_size[a] > start) or 1
    return total


@dataclass(frozen=True)
class AutoEstimate:
    """Windows of an automatic-region run: the coarse pass (0: the whole volume runs, too small to save), the
    dense pass for a typical gland, and the whole run's."""

    coarse: int
    dense: int
    full: int

    @property
    def total(self) -> int:
        return self.coarse + self.dense


def _touching(size: int, roi: int, overlap: float, start: float, stop: float) -> int:
    """Windows along one axis of ``size`` voxels that touch the voxel interval [start, stop)."""
    return sum(1 for s in window_starts(size, roi, overlap) if s < stop and s + roi > start) or 1


def estimate_auto(volume_bounds: Sequence[float], spec: WindowSpec) -> AutoEstimate:
    """The automatic pancreas region's windows on a CT with world bounds (x0, x1, y0, y1, z0, z1), with a typical
    gland at the centre of the volume (an estimate: the coarse pass decides where and how much)."""
    extent = [abs(volume_bounds[2 * a + 1] - volume_bounds[2 * a]) for a in range(3)]
    shape = _grid_shape(extent, spec.pixdim)
    full = count_windows(shape, spec.roi_size, spec.overlap)
    coarse = count_windows(shape, spec.roi_size, 0.0)
    if full < AUTO_MIN_SAVING * coarse:
        return AutoEstimate(0, full, full)
    dense = 1
    for a in range(3):
        length = (TYPICAL_GLAND_MM[a] + 2 * AUTO_MARGIN_MM) / spec.pixdim[a]
        start = (shape[a] - length) / 2
        dense *= _touching(shape[a], spec.roi_size[a], spec.overlap, start, start + length)
    return AutoEstimate(coarse, min(dense, full), full)


def describe_auto_estimate(est: AutoEstimate, per_window: float | None) -> str:
    """One line: '64 coarse + up to 175 dense windows (a typical gland) instead of 504; up to 28 min (7.0 s per
    window, ...)' (the dense pass of a typical gland's bounding box; the windows touching the gland itself are
    fewer)."""
    if est.coarse == 0:
        return "small volume, the whole volume runs: " + describe_estimate(est.full, per_window)
    line = describe_estimate(est.total, per_window)
    return (f"{est.coarse} coarse + up to {est.dense} dense windows (a typical gland) instead of {est.full}; "
            + line.split(", ", 1)[1].replace("about", "up to", 1))


def seconds_per_window(report: dict[str, Any]) -> float | None:
    """Measured seconds per computed window of a finished run (its report.json), or None."""
    timings = report.get("timings_s") or {}
    windows = ((report.get("inference") or {}).get("windows") or {})
    computed = windows.get("computed") or windows.get("windows")
    seconds = timings.get("roi_infer", timings.get("infer"))
    if isinstance(seconds, int | float) and isinstance(computed, int) and computed > 0:
        return float(seconds) / computed
    return None


def describe_estimate(windows: int, per_window: float | None) -> str:
    """One line for the panel: '63 windows, about 7 min on this computer (7.0 s per window, measured)'."""
    measured = per_window is not None
    per_window = DEFAULT_SECONDS_PER_WINDOW if per_window is None else per_window
    seconds = windows * per_window
    when = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    source = "measured here" if measured else "typical CPU figure until a run has measured this computer"
    return f"{windows} windows, about {when} ({per_window:.1f} s per window, {source})"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def status_line(status: str, elapsed_s: float | None, fraction: float | None) -> str:
    """The panel's status line: 'case: infer 12/63 - 0:42 elapsed, about 2:10 left' (ETA from the engine's
    progress fraction once it is past 5 %, assuming the rest runs at the same pace)."""
    parts = [status] if status else []
    if elapsed_s is not None:
        timing = f"{_duration(elapsed_s)} elapsed"
        if fraction is not None and 0.05 <= fraction < 1.0:
            timing += f", about {_duration(elapsed_s * (1 - fraction) / fraction)} left"
        parts.append(timing)
    return " - ".join(parts)
