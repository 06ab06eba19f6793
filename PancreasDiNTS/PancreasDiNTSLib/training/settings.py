"""Training settings: presets (tiny, demo, bundle), ``--set key=value`` overrides and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PancreasDiNTSLib.core.errors import EXIT_USAGE, PancreasDiNTSError


class SettingsError(PancreasDiNTSError):
    """A bad preset name or --set override."""

    exit_code = EXIT_USAGE


@dataclass
class TrainSettings:
    """All training settings; the defaults are the released bundle's (``train.yaml``)."""

    preset: str = "bundle"
    seed: int = 123
    epochs: int = 400
    val_interval: int = 10
    batch_size: int = 2
    num_samples: int = 1  # patches per image per step (RandCropByLabelClassesd num_samples)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # target spacing in mm
    a_min: float = -87.0
    a_max: float = 199.0
    num_classes: int = 3
    crop_dilation: int | None = None  # dilation steps of the crop maps; None: half the patch (48 for 96)
    augment: bool = True
    optimizer: str = "sgd"  # sgd (the bundle's) or adamw
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 4e-5
    lr_step_size: int = 80
    lr_gamma: float = 0.5
    channel_mul: float = 1.0
    num_blocks: int = 12  # used for --arch random; an arch file sets it
    num_depths: int = 4
    amp: bool = True  # fp16 autocast, CUDA only
    sw_batch_size: int = 6  # validation sliding window
    infer_sw_batch_size: int = 4  # written to the run's inference.yaml
    overlap: float = 0.625
    cache_gb: float = 6.0  # RAM budget for cached preprocessed cases (train + validation)
    cache_dir: str = ""  # optional disk cache of preprocessed cases beyond the RAM budget
    num_workers: int = 4
    deterministic: bool = True
    max_train_cases: int = 0  # 0: all
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, dict[str, Any]] = {
    # seconds on 2 CPU cores: tests and CI
    "tiny": dict(epochs=4, val_interval=2, batch_size=1, patch_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0),
                 channel_mul=0.0625, num_blocks=3, num_depths=3, sw_batch_size=2, infer_sw_batch_size=2,
                 overlap=0.25, cache_gb=0.25, num_workers=0, lr_step_size=80),
    # the phantom demo model (Testing/benchmarks/make_demo_model.sh pins the same values): phantoms come from one
    # generator, so no augmentation; 0.8 x 0.8 x 1 mm: the grid of the thin-slice demo phantoms (make-phantoms
    # --slice-mm 0.6,1.2); a patch covering most of a phantom
    "demo": dict(epochs=30, val_interval=5, batch_size=1, num_samples=2, patch_size=(64, 64, 48),
                 spacing=(0.8, 0.8, 1.0), augment=False, channel_mul=0.25, num_blocks=4, num_depths=3,
                 sw_batch_size=4, infer_sw_batch_size=4, overlap=0.5, cache_gb=3.0, num_workers=2,
                 optimizer="adamw", lr=0.002, lr_step_size=10),
    # the released hyper-parameters
    "bundle": {},
}


def make_settings(preset: str = "bundle", overrides: list[str] | None = None,
                  base: dict[str, Any] | None = None) -> TrainSettings:
    """Settings of ``preset`` (or of a stored dict ``base``), then ``key=value`` overrides."""
    if base is not None:
        known = {f.name for f in dataclasses.fields(TrainSettings)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in base.items() if k in known}
        settings = TrainSettings(**values)
    else:
        if preset not in PRESETS:
            raise SettingsError(f"--preset {preset}: unknown preset; use one of {', '.join(PRESETS)}")
        settings = TrainSettings(preset=preset, **PRESETS[preset])
    for item in overrides or []:
        apply_override(settings, item)
    check_settings(settings)
    return settings


def apply_override(settings: TrainSettings, item: str) -> None:
    """Apply one ``key=value`` (value in YAML syntax; ``96,96,96`` or a single number for triples)."""
    import yaml

    if "=" not in item:
        raise SettingsError(f"--set {item}: expected key=value")
    key, text = (s.strip() for s in item.split("=", 1))
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    if key not in fields or key in ("extra", "preset"):
        names = ", ".join(n for n in fields if n not in ("extra", "preset"))
        raise SettingsError(f"--set {key}: unknown setting; known: {names}")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    current = getattr(settings, key)
    try:
        if isinstance(current, tuple):
            parts = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
            parts = [type(current[0])(p) for p in parts]
            if len(parts) == 1:
                parts = parts * len(current)
            if len(parts) != len(current):
                raise ValueError(f"needs {len(current)} values")
            value = tuple(parts)
        elif key == "crop_dilation":
            value = None if value in (None, "none", "auto") else int(value)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ValueError("needs true or false")
        elif isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("needs an integer")
            value = int(value)
        elif isinstance(current, float):
            value = float(value)
        elif isinstance(current, str):
            value = "" if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"--set {item}: bad value for {key} ({exc})") from None
    setattr(settings, key, value)


def check_settings(s: TrainSettings) -> None:
    factor = 2 ** (s.num_depths + 1)  # stem downsampling, then one halving per depth
    if any(p % factor for p in s.patch_size):
        raise SettingsError(f"patch_size {s.patch_size} must be a multiple of {factor} for num_depths={s.num_depths}")
    for name in ("epochs", "val_interval", "batch_size", "num_samples", "lr_step_size"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{name} must be at least 1")
    if s.optimizer not in ("sgd", "adamw"):
        raise SettingsError(f"optimizer {s.optimizer!r}: use sgd or adamw")
    if any(x <= 0 for x in s.spacing):
        raise SettingsError("spacing must be positive")


# ---------------------------------------------------------------------------------------------- building blocks
