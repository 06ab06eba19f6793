"""The number format the network computes in (``segment --precision auto|fp32|bf16``), decided once per run.

- ``auto`` (default): fp32 on a CPU, also where the hardware has bfloat16 instructions, because the bf16 fast
  path missed one agreement target on the demo mosaic (:data:`AUTO_PICKS_BF16`, docs/PERFORMANCE.md); on CUDA the
  bundle's own AMP (fp16 autocast when the bundle says ``amp: true``); on Apple's MPS fp32. ``--mode exact`` is
  always the bundle's arithmetic (fp32 on a CPU), so that it stays bundle-identical.
- ``fp32``: float32 everywhere (on CUDA: AMP off).
- ``bf16``: the bf16 fast path on a CPU (channels-last, :func:`model.fastnet.make_fast_bf16`: 2.8-4.5x per window
  with bf16 hardware; emulated by oneDNN without it: slower); refused with ``--mode exact`` and on GPUs.

bf16 hardware is detected, not assumed: the CPU flags the kernel reports (``/proc/cpuinfo``: ``avx512_bf16``, as
AMD Zen 4/5 and Intel Cooper Lake and later have, or ``amx_bf16``, Intel Sapphire Rapids and later) and PyTorch
built with oneDNN (``torch.backends.mkldnn``). Other systems (macOS, Windows, ARM) count as without: fp32, never
slower. ``PANCREAS_DINTS_CPU_BF16=0|1`` overrides the detection (to measure or test the other path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import UsageError
from PancreasDiNTSLib.core.request import PRECISIONS

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
OVERRIDE_ENV = "PANCREAS_DINTS_CPU_BF16"
# auto picks bf16 on bf16 hardware only once bf16 met every agreement target (issue 36). Measured: on the
# auto-region mosaic the whole bf16 run added one voxel to a 4-voxel lesion speck (its Dice 0.89 < 0.99) and moved
# one confidence voxel by 0.024 (> 0.02), so auto keeps fp32; --precision bf16 is the explicit choice.
AUTO_PICKS_BF16 = False
AUTO_KEEPS_FP32 = ("bf16 missed an agreement target on the demo mosaic (a 4-voxel lesion's Dice 0.89, "
                   "docs/PERFORMANCE.md); --precision bf16 to use it")


@dataclass(frozen=True)
class Precision:
    """What a run computes in: ``name`` "fp32" | "bf16" | "fp16-amp", what was asked, and why (report.json)."""

    name: str
    requested: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def describe(self) -> dict[str, Any]:
        return {"used": self.name, "requested": self.requested, "reason": self.reason}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the Linux kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_support(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[bool, str]:
    """(True if this CPU computes bf16 in hardware and PyTorch can use it, how that was found)."""
    forced = os.environ.get(OVERRIDE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{OVERRIDE_ENV}={forced}"
    import torch

    if not torch.backends.mkldnn.is_available():
        return False, "PyTorch is built without oneDNN (mkldnn)"
    found = sorted(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))
    if found:
        return True, "CPU flags " + ", ".join(found)
    return False, f"no {' or '.join(BF16_CPU_FLAGS)} among the CPU flags"


def resolve_precision(requested: str | None, device_type: str, fast: bool, amp: bool,
                      engine: str = "eager") -> Precision:
    """The one decision: ``requested`` (auto|fp32|bf16) on ``device_type`` (cpu|cuda|mps) for a run whose network
    takes the fast path (``fast``, with ``engine``) or MONAI's exact one, with the bundle's ``amp`` setting.
    UsageError (exit 2) for bf16 where it cannot run."""
    req = str(requested or "auto").strip().lower()
    if req not in PRECISIONS:
        raise UsageError(f"--precision {requested}: choose {', '.join(PRECISIONS)}")
    if device_type == "cuda":
        if req == "bf16":
            raise UsageError("--precision bf16 is for CPUs; on a CUDA GPU use auto (the bundle's fp16 AMP) or fp32")
        if req == "fp32" or not amp:
            return Precision("fp32", req, "asked for fp32" if req == "fp32" else "the bundle has amp off")
        return Precision("fp16-amp", req, "the bundle's AMP (fp16 autocast) on CUDA")
    if device_type != "cpu":
        if req == "bf16":
            raise UsageError(f"--precision bf16 is for CPUs; on {device_type} use auto or fp32")
        return Precision("fp32", req, f"fp32 on {device_type}")
    if not fast:
        if req == "bf16":
            raise UsageError("--precision bf16 needs the fast path: --mode exact (and exported models) compute "
                             "in fp32, as the bundle; use --mode fast or --precision auto")
        return Precision("fp32", req, "the exact path computes as the bundle (fp32)")
    if req == "fp32":
        return Precision("fp32", req, "asked for fp32")
    if engine != "eager":
        if req == "bf16":
            raise UsageError(f"--precision bf16 runs with --engine eager, not {engine}")
        return Precision("fp32", req, f"fp32: --engine {engine} runs fp32 on a CPU")
    has, how = cpu_bf16_support()
    if req == "bf16":
        return Precision("bf16", req, f"asked for bf16 ({how})" if has else
                         f"asked for bf16, emulated: {how} (slower than fp32)")
    if has and AUTO_PICKS_BF16:
        return Precision("bf16", req, f"bf16 hardware: {how}")
    return Precision("fp32", req, f"fp32: {how}; {AUTO_KEEPS_FP32}" if has else f"fp32: {how}")
