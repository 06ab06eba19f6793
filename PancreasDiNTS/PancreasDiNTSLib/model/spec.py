"""What a model folder says about its network and its inference, as plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NetworkSpec:
    """DiNTS hyper-parameters read from the bundle's ``dints_space`` and ``network_def``."""

    in_channels: int = 1
    num_classes: int = 3
    channel_mul: float = 1.0
    num_blocks: int = 12
    num_depths: int = 4
    use_downsample: bool = True


@dataclass
class InferenceSpec:
    """Preprocessing, sliding-window and post-processing settings read from the bundle's config."""

    axcodes: str = "RAS"
    pixdim: tuple[float, float, float] = (1.0, 1.0, 1.0)
    spacing_mode: str = "bilinear"
    spacing_align_corners: bool = False
    a_min: float = -87.0
    a_max: float = 199.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    roi_size: tuple[int, int, int] = (96, 96, 96)
    sw_batch_size: int = 4
    overlap: float = 0.625
    blend_mode: str = "constant"
    amp: bool = True
    softmax: bool = True
    invert_nearest: bool = False
