"""What ``pancreas-dints benchmark`` is asked: presets and the settings (cheap to import: the CLI builds its options
from them); the modes and engines are ``segment``'s own (core.request)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    """The random-weight bundle and the input CT of a benchmark run."""

    channel_mul: float
    num_blocks: int
    input: str


QUICK = Preset(channel_mul=0.0625, num_blocks=12, input="example_ct_sm.nii.gz")
FULL = Preset(channel_mul=1.0, num_blocks=12, input="example_ct.nii.gz")


@dataclass
class BenchmarkSettings:
    """What ``pancreas-dints benchmark`` was asked (the CLI's options, one field each)."""

    device: str = "auto"
    quick: bool = False
    model: Path | None = None
    input: Path | None = None
    reference: Path | None = None
    channel_mul: float | None = None
    num_blocks: int | None = None
    arch: str = "dense"
    threads: int | None = None
    modes: str = "fast"
    precision: str = "auto"
    engine: str = "eager"
    sw_batch_size: str | None = None
    roi_cube_mm: float = 0.0
    skip_bundle: bool = False
    workdir: Path | None = None
    timeout: float = 3600.0
