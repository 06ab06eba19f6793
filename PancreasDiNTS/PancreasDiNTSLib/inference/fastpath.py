"""The fast inference path the Segmenter can opt into, tested against MONAI's own path: :class:`FastInferer`
puts the network's fast forward (``model.fastnet``: eager, CUDA graph or ``torch.compile`` engine), the batch
size (:func:`choose_sw_batch_size`: from free GPU memory and the measured memory of one and two windows) and the
exact sliding window with work not done (:mod:`.windows`) behind one call for ``Segmenter.infer``;
:func:`tune_cpu_allocator` keeps freed tensor memory in the heap on the CPU (no page faults per window).
ROI mode is :mod:`.roi`, the automatic region :mod:`.region`, batch prefetching :mod:`.prefetch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.inference.windows import Predictor, SlidingStats, sliding_window_exact_skip
from PancreasDiNTSLib.model.fastnet import (
    CudaGraphForward,
    FastDiNTS,
    compile_fast,
    make_fast,
    make_fast_bf16,
)

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


# ---------------------------------------------------------------------------------------------- wiring


@dataclass(frozen=True)
class WindowForward:
    """How a Segmenter's network runs a batch of windows: what a pass of its own (the automatic region's)
    calls, instead of reading the fast path's internals."""

    predictor: Any  # (B, C, *roi) -> (B, classes, *roi) logits
    batch: int  # windows per call
    device: torch.device  # where the windows go
    out_device: torch.device  # where the window sums are stitched
    amp: bool
    fixed_batch: bool  # every call must have ``batch`` windows (CUDA graph, compiled)
    roi: tuple[int, ...]


class FastInferer:
    """The fast sliding window for a Segmenter: FastDiNTS + :func:`sliding_window_exact_skip`.

    ``Segmenter.infer(pre)`` can return ``FastInferer(...)(pre, on_window)`` instead of running MONAI's
    ``SlidingWindowInferer``: same logits (see the tests), less work. ``sw_batch_size="auto"`` sizes batches
    by free GPU memory; ``engine`` is "eager", "cuda-graph" (CUDA only) or "compile" (``torch.compile``).
    ``upsample="matmul"``: FastDiNTS's matrix-product upsampling (faster, rounding-level differences; the
    default "native" keeps the network's outputs bit-identical to MONAI's on the CPU). ``bf16`` (CPU, eager): the
    network in bfloat16 and channels-last (:func:`make_fast_bf16`, a bf16 copy of the weights); the windows' fp32
    logits are summed in fp32 (inference/precision.py decides when).
    """

    def __init__(self, network: torch.nn.Module, roi_size: Sequence[int], overlap: float,
                 device: torch.device | str, amp: bool, sw_batch_size: int | str = 4, in_channels: int = 1,
                 skip_constant: bool = True, engine: str = "eager", tune_allocator: bool = True,
                 upsample: str = "native", bf16: bool = False) -> None:
        self.device = torch.device(device)
        self.allocator_tuned = tune_cpu_allocator() if tune_allocator and self.device.type == "cpu" else False
        self.amp = bool(amp) and self.device.type == "cuda"
        self.roi = tuple(int(r) for r in roi_size)
        self.overlap = overlap
        self.skip_constant = skip_constant
        self.bf16 = bool(bf16)
        if self.bf16 and (self.device.type != "cpu" or engine != "eager" or isinstance(network, FastDiNTS)):
            raise ValueError("bf16 runs on the CPU, eager engine, from the MONAI network")
        if self.bf16:
            self.model = make_fast_bf16(network)
        else:
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

    def forward(self, spatial: Sequence[int]) -> WindowForward:
        """This inferer's network as :class:`WindowForward`, stitching for an image of ``spatial`` size."""
        return WindowForward(self.predictor, self.sw_batch_size, self.device, self.stitch_device(spatial), self.amp,
                             self.fixed_batch, self.roi)

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


