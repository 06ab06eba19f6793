"""The exact inference path: the bundle's preprocessing, sliding window, softmax, inversion and argmax.

It uses the same MONAI transforms and inferer the released ``configs/inference.yaml`` builds, with settings read
from the bundle as data, so on the same input and weights the labels equal ``python -m monai.bundle run``.
Device policy: ``auto`` picks CUDA when present; fp16 autocast on CUDA as the bundle (``evaluator#amp``); on GPU
out-of-memory the sliding-window batch is halved, then stitching moves to the CPU, then a clear error says to use
``--device cpu``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.core.errors import DeviceError
from PancreasDiNTSLib.core.request import INFERENCE_MODES
from PancreasDiNTSLib.inference.device import MPS_CPU_FALLBACKS, halve_on_oom, is_oom, resolve_device
from PancreasDiNTSLib.inference.fastpath import FastInferer, WindowForward
from PancreasDiNTSLib.inference.invert import (
    SLAB_THRESHOLD,
    can_invert_in_slabs,
    confidence_and_lesion,
    invert_probabilities,
)
from PancreasDiNTSLib.inference.precision import resolve_precision
from PancreasDiNTSLib.inference.windows import SlidingStats
from PancreasDiNTSLib.model.bundle import Bundle
from PancreasDiNTSLib.model.spec import InferenceSpec

WindowCallback = Callable[[int, int], None]  # (windows done, windows total)


@dataclass
class Inverted:
    """What the inversion hands out on the input grid: the labels and, for the read-out, the uint8 confidence
    map (255 x max softmax probability) and (max lesion probability, its voxel index)."""

    labels: np.ndarray
    confidence: np.ndarray | None = None
    lesion: tuple[float, tuple[int, int, int]] | None = None


def build_preprocessing(spec: InferenceSpec, key: str = "image"):
    """The bundle's invertible preprocessing after loading: orientation, spacing, intensity window."""
    from monai.transforms import Compose, EnsureTyped, Orientationd, ScaleIntensityRanged, Spacingd

    return Compose([
        Orientationd(keys=key, axcodes=spec.axcodes),
        Spacingd(keys=key, pixdim=spec.pixdim, mode=spec.spacing_mode, align_corners=spec.spacing_align_corners),
        ScaleIntensityRanged(keys=key, a_min=spec.a_min, a_max=spec.a_max, b_min=spec.b_min, b_max=spec.b_max,
                             clip=spec.clip),
        EnsureTyped(keys=key),
    ])


def count_windows(spatial_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of sliding windows MONAI runs for an image of ``spatial_shape`` (after its padding to roi)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    padded = tuple(max(s, r) for s, r in zip(spatial_shape, roi, strict=True))
    interval = _get_scan_interval(padded, roi, len(roi), (overlap,) * len(roi))
    return len(dense_patch_slices(padded, roi, interval))


class _CountingPredictor(torch.nn.Module):
    """Wraps the network to report windows done to a callback."""

    def __init__(self, net: torch.nn.Module, total: int, callback: WindowCallback | None) -> None:
        super().__init__()
        self.net = net
        self.total = total
        self.done = 0
        self.callback = callback

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.done += int(x.shape[0])
        if self.callback is not None:
            self.callback(min(self.done, self.total), self.total)
        return out


def with_oom_fallback(attempt: Callable[[int, torch.device | None], Any], sw_batch: int,
                      device_name: str = "cuda") -> tuple[Any, int]:
    """Run ``attempt(sw_batch, stitch_device)``; on out-of-memory halve the batch, then stitch on the CPU.

    Returns (result, the batch size that worked). Raises DeviceError telling the user to use the CPU when even one
    window at a time with CPU stitching does not fit.
    """
    stitch: list[torch.device | None] = [None]

    def stitch_on_cpu() -> bool:
        if stitch[0] is not None:
            return False
        stitch[0] = torch.device("cpu")
        return True

    try:
        return halve_on_oom(lambda size: attempt(size, stitch[0]), sw_batch, last_resort=stitch_on_cpu)
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        raise DeviceError(
            f"GPU {device_name} ran out of memory even with one window at a time and stitching on the "
            "CPU; use --device cpu (slower) or free GPU memory"
        ) from None


class Segmenter:
    """Runs one bundle on one device; ``predict`` maps a loaded CT to labels on the CT's own grid."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", sw_batch_size: int | None = None,
                 amp: bool | None = None, mode: str = "exact", engine: str = "eager",
                 precision: str = "fp32") -> None:
        """``mode``: "exact" (MONAI's SlidingWindowInferer, the reference), "fast" (static DiNTS forward and a
        sliding window that computes constant windows once: the same logits, see inference/windows.py) or "fastmm" (fast
        with matrix-product upsampling: rounding-level differences). ``engine`` (fast modes): eager, cuda-graph
        or compile. ``precision``: auto|fp32|bf16 (inference/precision.py; the CLI's default is auto, a library
        caller's fp32); ``amp`` (None: the bundle's) is what ``auto`` keeps on CUDA."""
        if mode not in INFERENCE_MODES:
            raise ValueError(f"mode must be one of {', '.join(INFERENCE_MODES)}, not {mode!r}")
        self.bundle = bundle
        self.spec = bundle.inference
        self.device = resolve_device(device)
        self.sw_batch_size = int(sw_batch_size or self.spec.sw_batch_size)
        # Exported models (TorchScript/ONNX/TensorRT) are opaque graphs, and the fast sliding window implements
        # constant blending only: anything else takes MONAI's path.
        takes_fast = mode != "exact" and bundle.kind == "bundle" and self.spec.blend_mode == "constant"
        self.precision = resolve_precision(precision, self.device.type, takes_fast,
                                           bool(self.spec.amp if amp is None else amp), engine)
        self.amp = self.precision.name == "fp16-amp"
        self.preprocessing = build_preprocessing(self.spec)
        self.network = bundle.build_network(self.device)
        self.mode = mode
        self.fast = None
        if takes_fast:
            batch: int | str = "auto" if sw_batch_size is None and self.device.type == "cuda" else self.sw_batch_size
            self.fast = FastInferer(self.network, self.spec.roi_size, self.spec.overlap, self.device, self.amp,
                                    batch, in_channels=bundle.network.in_channels, engine=engine,
                                    upsample="matmul" if mode == "fastmm" else "native", bf16=self.precision.bf16)
            self.sw_batch_size = self.fast.sw_batch_size
        self.timings: dict[str, float] = {}
        self._box_inferer: FastInferer | None = None  # exact mode's windows for a --roi box (infer_box)

    # -- the fast path's small interface (region.py and roi.py use only these)
    def window_forward(self, spatial: Sequence[int]) -> WindowForward:
        """The network as a pass of windows calls it: the fast forward when there is one, else the network."""
        if self.fast is not None:
            return self.fast.forward(spatial)
        roi = tuple(int(r) for r in self.spec.roi_size)
        return WindowForward(self.network, self.sw_batch_size, self.device, self.device, self.amp, False, roi)

    @property
    def window_stats(self) -> SlidingStats | None:
        """What the fast sliding window counted in the last run (None without a fast path); ``describe`` reports it."""
        return self.fast.stats if self.fast is not None else None

    @window_stats.setter
    def window_stats(self, stats: SlidingStats) -> None:
        if self.fast is not None:
            self.fast.stats = stats

    def infer_box(self, pre: Any, region: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Logits of only the windows of the full run's grid that touch ``region`` (voxel ranges of ``pre``)."""
        inferer = self.fast
        if inferer is None:
            if self._box_inferer is None:
                self._box_inferer = FastInferer(self.network, self.spec.roi_size, self.spec.overlap, self.device,
                                                self.amp, self.sw_batch_size)
            inferer = self._box_inferer
        return inferer(pre, region=region)

    def describe(self) -> dict[str, Any]:
        """How inference ran, for report.json."""
        out: dict[str, Any] = {"mode": self.mode if self.fast is not None else "exact", "amp": self.amp,
                               "sw_batch_size": self.sw_batch_size, "precision": self.precision.describe()}
        if self.fast is not None:
            out.update(engine=self.fast.engine, windows=dict(vars(self.fast.stats)))
        if self.device.type == "mps":  # what ran where: every operator not named here ran on MPS
            out["mps_cpu_fallback_ops"] = sorted(MPS_CPU_FALLBACKS)
        return out

    def preprocess(self, image: Any) -> Any:
        """Loaded MetaTensor (1, X, Y, Z) -> the network's input grid (orientation, spacing, window)."""
        return self.preprocessing({"image": image})["image"]

    def _inferer(self, sw_batch: int, stitch_device: torch.device | None):
        from monai.inferers import SlidingWindowInferer

        return SlidingWindowInferer(
            roi_size=self.spec.roi_size,
            sw_batch_size=sw_batch,
            overlap=self.spec.overlap,
            mode=self.spec.blend_mode,
            device=stitch_device,
        )

    def infer(self, pre: Any, on_window: WindowCallback | None = None) -> Any:
        """Sliding-window logits (1, C, ...) for a preprocessed image; OOM policy on CUDA."""
        total = count_windows(tuple(pre.shape[1:]), self.spec.roi_size, self.spec.overlap)
        inputs = pre.unsqueeze(0).to(self.device)

        def attempt(sw_batch: int, stitch_device: torch.device | None) -> Any:
            predictor = _CountingPredictor(self.network, total, on_window)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                return self._inferer(sw_batch, stitch_device)(inputs, predictor)

        if self.fast is not None:
            try:
                return self.fast(pre, on_window)
            except RuntimeError as exc:  # the fast path already halved its batch down to one window
                if self.device.type == "cuda" and is_oom(exc):
                    raise DeviceError(f"GPU {self.device} ran out of memory even with one window at a time; "
                                      "use --device cpu (slower) or free GPU memory") from None
                raise
        if self.device.type != "cuda":
            return attempt(self.sw_batch_size, None)
        result, self.sw_batch_size = with_oom_fallback(attempt, self.sw_batch_size, str(self.device))
        return result

    def postprocess(self, logits: Any, pre: Any, slabs: bool | None = None) -> np.ndarray:
        """Softmax, invert to the input grid (bilinear on probabilities, as the bundle), argmax -> uint8 labels.

        ``slabs``: invert slab by slab (invert.py: the same resampling without the whole-volume coordinate grid);
        None (default) does so when the inverted probabilities would exceed ``invert.SLAB_THRESHOLD`` values."""
        return self.invert(logits, pre, slabs, readout=False).labels

    def invert(self, logits: Any, pre: Any, slabs: bool | None = None, readout: bool = True) -> Inverted:
        """:meth:`postprocess` that also hands out, with ``readout``, the uint8 confidence map (255 x max softmax
        probability) and the largest lesion probability with its voxel, computed from the same inverted
        probabilities as the labels (one slab at a time; the labels are unchanged)."""
        from monai.transforms import Activations, Activationsd, AsDiscrete, Compose, Invertd

        if slabs is None:
            ops = getattr(pre, "applied_operations", None) or [{}]
            size = ops[0].get("orig_size") or pre.shape[1:]
            slabs = int(np.prod(size)) * int(logits.shape[1]) > SLAB_THRESHOLD
        if slabs and can_invert_in_slabs(pre):
            probs = Activations(softmax=self.spec.softmax)(logits[0])
            return Inverted(*invert_probabilities(torch.as_tensor(probs), pre, readout=readout))

        post = Compose([
            Activationsd(keys="pred", softmax=self.spec.softmax),
            Invertd(keys="pred", transform=self.preprocessing, orig_keys="image", meta_key_postfix="meta_dict",
                    nearest_interp=self.spec.invert_nearest, to_tensor=True),
        ])
        probs = post({"image": pre, "pred": logits[0]})["pred"]
        confidence, lesion = confidence_and_lesion(probs) if readout else (None, None)
        out = AsDiscrete(argmax=True)(probs)
        del probs
        labels = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        return Inverted(np.asarray(labels[0]).astype(np.uint8), confidence, lesion)

    def predict(self, image: Any, on_stage: Callable[[str, float, str], None] | None = None,
                pre: Any = None) -> np.ndarray:
        """Labels (uint8, 0/1/2) on the grid of ``image`` (a channel-first MetaTensor from io.images.read_image).

        ``pre``: ``self.preprocess(image)`` when it was already computed (batch mode prefetches it)."""
        def stage(name: str, part: float, message: str = "") -> None:
            if on_stage is not None:
                on_stage(name, part, message)

        self.timings = {}
        t0 = time.perf_counter()
        if pre is None:
            stage("preprocess", 0.05, "resampling to the model's grid")
            pre = self.preprocess(image)
        t1 = time.perf_counter()
        self.timings["preprocess"] = t1 - t0

        def on_window(done: int, total: int) -> None:
            stage("infer", 0.1 + 0.8 * done / max(1, total), f"window {done}/{total}")

        logits = self.infer(pre, on_window)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        self.timings["infer"] = t2 - t1
        stage("postprocess", 0.92, "inverting to the input grid")
        labels = self.postprocess(logits, pre)
        self.timings["postprocess"] = time.perf_counter() - t2
        return labels
