"""Writing a training run folder as a MONAI bundle.

The folder gets ``configs/inference.yaml``, ``configs/metadata.json``, ``configs/logging.conf``,
``configs/dataset_0.json`` (the datalist trained on), ``models/model.pt`` (a bare state dict) and
``models/search_code_<n>.pt`` (the architecture, released numpy format). The inference config keeps the released
config's keys and structure, so

* ``python -m monai.bundle run --config_file RUN/configs/inference.yaml`` runs it (CPU or GPU: nothing is pinned
  to CUDA; the architecture file is read with ``weights_only=True`` after allow-listing the numpy types), with the
  same command-line overrides as the released bundle (``--dataset_dir``, ``--datalist``, ``--output_dir``, ...);
* ``bundle.load_bundle`` reads it as data: hyper-parameters are literals, paths use the
  ``"$@bundle_root + '/models/x.pt'"`` pattern and the preprocessing uses only transforms the engine knows.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import monai
import numpy as np
import torch
import yaml

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import write_text_atomic
from PancreasDiNTSLib.core.terminology import SEGMENTS
from PancreasDiNTSLib.model.bundle import save_arch_file
from PancreasDiNTSLib.model.spec import NetworkSpec

_ARCH_NAME = re.compile(r"^search_code_\d+\.pt$")

LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

_HEADER = """\
# Inference config of a PancreasDiNTS training run, in the layout of the released bundle
# pancreas_ct_dints_segmentation (same keys). Run it with
#   python -m monai.bundle run --config_file RUN/configs/inference.yaml [--dataset_dir D] [--output_dir O]
# bundle_root: this folder where it was written, else the working directory (or pass --bundle_root RUN).
"""


_RECONSTRUCT = "(numpy._core if hasattr(numpy, '_core') else numpy.core).multiarray._reconstruct"


class RunSettings(Protocol):
    """What the bundle files take from a run's settings (``training.settings.TrainSettings``)."""

    spacing: tuple[float, float, float]
    a_min: float
    a_max: float
    patch_size: tuple[int, int, int]
    infer_sw_batch_size: int
    overlap: float


def arch_file_name(source: str | Path | None) -> str:
    """Keep a released-style name (``search_code_18590.pt``), else ``search_code_0.pt``."""
    if source is not None and _ARCH_NAME.match(Path(str(source)).name):
        return Path(str(source)).name
    return "search_code_0.pt"


def inference_config(
    spec: NetworkSpec,
    arch_name: str,
    bundle_root: str,
    pixdim: tuple[float, float, float],
    a_min: float,
    a_max: float,
    roi_size: tuple[int, int, int],
    sw_batch_size: int = 4,
    overlap: float = 0.625,
    dataset_dir: str = "/workspace/data/msd/Task07_Pancreas",
) -> dict[str, Any]:
    """The inference.yaml content (a dict in the released key order)."""
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "input_channels": int(spec.in_channels),
        "output_classes": int(spec.num_classes),
        "arch_ckpt_path": f"$@bundle_root + '/models/{arch_name}'",
        # numpy types a released-format arch file needs; registered just before a weights_only load
        "arch_safe_globals": [f"${_RECONSTRUCT}", "$numpy.ndarray", "$numpy.dtype", "$type(numpy.dtype('int64'))",
                              "$type(numpy.dtype('float64'))", "$type(numpy.dtype('int32'))",
                              "$type(numpy.dtype('float32'))"],
        "arch_ckpt": ("$torch.load(@arch_ckpt_path, map_location='cpu', weights_only=True) "
                      "if torch.serialization.add_safe_globals(@arch_safe_globals) is None else None"),
        # this folder where it was written, else the working directory
        "bundle_root": f"$next((p for p in [{bundle_root!r}] if os.path.isfile(p + '/models/model.pt')), '.')",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32",
        "output_postfix": "trans",
        "separate_folder": True,
        "load_pretrain": True,
        "dataset_dir": dataset_dir,
        "data_list_file_path": "$@bundle_root + '/configs/dataset_0.json'",
        "datalist": ("$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='testing', "
                     "base_dir=@dataset_dir)"),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dints_space": {
            "_target_": "monai.networks.nets.TopologyInstance",
            "channel_mul": float(spec.channel_mul),
            "num_blocks": int(spec.num_blocks),
            "num_depths": int(spec.num_depths),
            "use_downsample": bool(spec.use_downsample),
            "arch_code": ["$@arch_ckpt['arch_code_a']", "$@arch_ckpt['arch_code_c']"],
            "device": "cpu",  # arch codes stay on the CPU; the module is moved by `network`
        },
        "network_def": {
            "_target_": "monai.networks.nets.DiNTS",
            "dints_space": "@dints_space",
            "in_channels": "@input_channels",
            "num_classes": "@output_classes",
            "use_downsample": bool(spec.use_downsample),
            "node_a": "$torch.from_numpy(@arch_ckpt['node_a'])",
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [float(p) for p in pixdim],
                 "mode": "bilinear"},
                {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": float(a_min),
                 "a_max": float(a_max), "b_min": 0.0, "b_max": 1.0, "clip": True},
                {"_target_": "EnsureTyped", "keys": "@image_key"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 2},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(r) for r in roi_size],
                    "sw_batch_size": int(sw_batch_size), "overlap": float(overlap)},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
                 "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "SaveImaged", "keys": "pred", "meta_keys": "pred_meta_dict",
                 "output_dir": "@output_dir", "output_ext": "@output_ext", "output_dtype": "@output_dtype",
                 "output_postfix": "@output_postfix", "separate_folder": "@separate_folder"},
            ],
        },
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": True,  # fp16 autocast on CUDA as released; MONAI ignores it on the CPU
        },
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
            "map_location": "cpu",
        },
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)",
                       "$@checkpointloader(@evaluator) if @load_pretrain else None"],
        "run": ["$@evaluator.run()"],
    }


def metadata(spec: NetworkSpec, roi_size: tuple[int, int, int], name: str, training: dict[str, Any],
             mean_dice: float | None) -> dict[str, Any]:
    """metadata.json in the released bundle's schema; class names from the terminology table."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "1.0.0",
        "changelog": {"1.0.0": f"trained with PancreasDiNTS {__version__} (pancreas-dints train)"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"nibabel": _version("nibabel")},
        "name": name,
        "task": "Pancreas and pancreatic tumour segmentation in CT (DiNTS, retrained)",
        "description": "A DiNTS TopologyInstance trained with `pancreas-dints train` from an architecture file",
        "authors": "PancreasDiNTS user",
        "copyright": "Copyright (c) the user who trained this model",
        "data_source": str(training.get("datalist", "")),
        "data_type": "nibabel",
        "image_classes": "single channel data, intensity scaled to [0, 1]",
        "label_classes": f"single channel data, {_classes('')}, 0 is everything else",
        "pred_classes": f"{len(SEGMENTS) + 1} channels OneHot data, {_classes('channel ')}, channel 0 is background",
        "eval_metrics": {"mean_dice": round(float(mean_dice), 4) if mean_dice is not None else None},
        "intended_use": "This is an example, not to be used for diagnostic purposes",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": int(spec.in_channels),
                "spatial_shape": [int(r) for r in roi_size], "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": int(spec.num_classes),
                "spatial_shape": [int(r) for r in roi_size], "dtype": "float32", "value_range": [0, 1, 2],
                "is_patch_data": True,
                "channel_def": {"0": "background", **{str(seg.label): seg.name.lower() for seg in SEGMENTS}}}},
        },
        "training": training,
    }


def _classes(prefix: str) -> str:
    """'1 is pancreas, 2 is pancreatic tumor' (with ``prefix`` before each label)."""
    return ", ".join(f"{prefix}{seg.label} is {seg.name.lower()}" for seg in SEGMENTS)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def write_bundle_configs(
    run_dir: str | Path,
    spec: NetworkSpec,
    arch: dict[str, Any],
    arch_name: str,
    settings: RunSettings,
    datalist: dict[str, Any] | None,
    dataset_dir: str | None,
    training: dict[str, Any],
    mean_dice: float | None = None,
    name: str | None = None,
) -> None:
    """Write everything but the weights: configs/*, the architecture file (if absent) and the datalist copy."""
    run_dir = Path(run_dir).resolve()
    configs, models = run_dir / "configs", run_dir / "models"
    configs.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    if not (models / arch_name).is_file():
        save_arch_file(models / arch_name, arch)
    cfg = inference_config(
        spec, arch_name, str(run_dir), settings.spacing, settings.a_min, settings.a_max,
        settings.patch_size, sw_batch_size=settings.infer_sw_batch_size, overlap=settings.overlap,
        dataset_dir=dataset_dir or "/workspace/data/msd/Task07_Pancreas",
    )
    write_text_atomic(configs / "inference.yaml",
                      _HEADER + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, width=118))
    meta = metadata(spec, settings.patch_size, name or f"PancreasDiNTS run {run_dir.name}", training,
                    mean_dice)
    write_text_atomic(configs / "metadata.json", json.dumps(meta, indent=4) + "\n")
    write_text_atomic(configs / "logging.conf", LOGGING_CONF)
    if datalist is not None:
        write_text_atomic(configs / "dataset_0.json", json.dumps(datalist, indent=4) + "\n")

