"""Exported model files (TorchScript, ONNX, Torch-TensorRT) as models for ``segment``.

``bundle.load_bundle(path_to_file)`` lands here. The result is an :class:`ExportedBundle`: a
:class:`~PancreasDiNTSLib.model.bundle.Bundle` whose ``build_network(device)`` returns a callable ``torch.nn.Module``
(logits in, logits out, float32), so the same sliding-window pipeline runs it unchanged.

Where the settings come from:

* inference settings (orientation, spacing, intensity window, sliding window) and the network's channel counts
  come from the sibling bundle config (``<bundle>/configs/inference.yaml`` when the file lies in
  ``<bundle>/models/``); without one, from the JSON sidecar ``<file>.json`` written by ``export``;
* the patch size always comes from the sidecar when there is one: exported graphs are fixed to it;
* exported models run at the precision they were exported with (AMP is off for them).

Safety: ONNX files are data (a protobuf graph run by onnxruntime). ``torch.jit.load`` runs a serialized
TorchScript graph (TorchScript's own format, not Python pickle); it can only call operators registered in
PyTorch (and, for TensorRT files, torch_tensorrt), never arbitrary Python. Still, only run exported files you
trust, as with any model.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.core.errors import DeviceError, ModelError
from PancreasDiNTSLib.core.safeparse import MAX_CONFIG_BYTES, load_data_file
from PancreasDiNTSLib.model.bundle import (
    Bundle,
    Resolver,
    file_md5,
    find_config,
    inside,
    parse_specs,
    read_config,
    read_metadata,
    verify_checksums,
)
from PancreasDiNTSLib.model.spec import InferenceSpec, NetworkSpec


class ExportUnavailable(DeviceError):
    """The requested export format cannot be produced on this machine (missing package or GPU)."""


def trt_unavailable_reason() -> str | None:
    """Why a TensorRT export cannot run here (one line), or None if torch_tensorrt and CUDA are both present."""
    missing = []
    if importlib.util.find_spec("torch_tensorrt") is None:
        missing.append("the torch_tensorrt package (install the optional extra: pip install 'PancreasDiNTSLib[trt]')")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible to PyTorch)")
    if not missing:
        return None
    return "TensorRT export needs " + " and ".join(missing) + "; use --format torchscript or onnx instead"


SIDECAR_SUFFIX = ".json"
TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".pts", ".jit")
KINDS = ("torchscript", "onnx", "trt")


class OnnxNetwork(torch.nn.Module):
    """An onnxruntime session behind the ``torch.nn.Module`` call interface (float32 in, float32 out)."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(
                f"{path}: running an ONNX model needs onnxruntime: pip install 'PancreasDiNTSLib[export]'"
            ) from None
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError(
                    "the ONNX model was asked to run on CUDA but this onnxruntime has no CUDA provider; "
                    "install onnxruntime-gpu or use --device cpu"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.path = path
        # An (empty) buffer so callers that look at the module's device find one.
        self.register_buffer("device_anchor", torch.zeros(0, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(out).to(device=x.device, dtype=torch.float32)


@dataclass
class ExportedBundle(Bundle):
    """A single exported model file plus the settings needed to run it."""

    precision: str = "fp32"
    sidecar: dict[str, Any] = field(default_factory=dict)
    settings_from: str = "sidecar"  # "config" or "sidecar"

    def load_arch(self) -> dict[str, np.ndarray]:
        raise ModelError(f"{self.weights_path}: an exported {self.kind} model has no architecture file")

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        raise ModelError(f"{self.weights_path}: an exported {self.kind} model has no state dict")

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "version": self.version,
            "path": str(self.weights_path),
            "kind": self.kind,
            "precision": self.precision,
            "weights": self.weights_path.name,
            "weights_md5": file_md5(self.weights_path),
            "arch": None,
            "arch_md5": None,
            "settings_from": self.settings_from,
            "network": {"in_channels": self.network.in_channels, "num_classes": self.network.num_classes},
        }
        if self.sidecar.get("source"):
            out["source"] = self.sidecar["source"]
        return out

    def build_network(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The exported model, callable like the eager network, on ``device``."""
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but PyTorch sees no CUDA GPU; use --device cpu")
        if self.kind == "onnx":
            return OnnxNetwork(self.weights_path, dev).eval()
        if self.kind == "trt":
            reason = trt_unavailable_reason()
            if reason:
                raise ExportUnavailable(reason.replace("TensorRT export", "A TensorRT model").split("; use")[0])
            if dev.type != "cuda":
                raise DeviceError(f"{self.weights_path}: a TensorRT model runs only on a CUDA GPU; use --device cuda")
            import torch_tensorrt  # noqa: F401  (registers the TensorRT ops before loading)
        try:
            module = torch.jit.load(str(self.weights_path), map_location=dev)
        except Exception as exc:  # RuntimeError with a long C++ trace
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.weights_path}: not a loadable TorchScript model ({first})") from None
        return module.eval()


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The export sidecar ``<file>.json`` as a dict, or None if there is none."""
    side = Path(str(path) + SIDECAR_SUFFIX)
    if not side.is_file() and not side.is_symlink():
        return None
    side = inside(Path(path).parent, side.name, "export sidecar")  # a symlink out of the folder is refused
    data = load_data_file(side, MAX_CONFIG_BYTES)  # bounded: size, depth; problems are one-line ModelErrors
    if not isinstance(data, dict) or data.get("format") not in KINDS:
        raise ModelError(f"{side}: not an export sidecar (needs \"format\": one of {', '.join(KINDS)})")
    return data


def _kind_from_name(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "trt" if "trt" in path.stem.lower() else "torchscript"
    return None


def _is_torchscript_archive(path: Path) -> bool | None:
    """True for a TorchScript zip (has ``code/``), False for a plain ``torch.save`` zip, None if not a zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in name or name.startswith("code/") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return None


def _bundle_root_of(path: Path) -> Path | None:
    """The bundle folder holding ``path`` (``<root>/models/<file>`` or ``<root>/<file>``), if it has a config."""
    for root in (path.parent.parent, path.parent) if path.parent.name == "models" else (path.parent,):
        try:
            find_config(root)
            return root
        except ModelError:
            continue
    return None


def _spec_from_sidecar(data: dict[str, Any], path: Path) -> tuple[NetworkSpec, InferenceSpec]:
    try:
        net = NetworkSpec(**data["network"])
        inf_raw = dict(data["inference"])
        for key in ("pixdim", "roi_size"):
            inf_raw[key] = tuple(inf_raw[key])
        inf = InferenceSpec(**inf_raw)
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path}{SIDECAR_SUFFIX}: incomplete export sidecar ({exc}); export the model again") from None
    return net, inf


def load_exported_bundle(path: Path, verify: bool = True) -> ExportedBundle:
    """Describe the exported file ``path`` so the segmentation pipeline can run it (nothing is executed here)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file; export or download it again")
    side = read_sidecar(path)
    kind = side["format"] if side else _kind_from_name(path)
    if kind is None:
        raise ModelError(
            f"{path}: not a model folder nor an exported model (.ts/.pt TorchScript, .onnx); "
            "give a bundle folder (configs/, models/) or a file written by `pancreas-dints export`"
        )
    if kind in ("torchscript", "trt") and _is_torchscript_archive(path) is False:
        raise ModelError(
            f"{path}: holds weights or a checkpoint saved with torch.save, not an exported TorchScript model; "
            "give the model folder (configs/, models/) instead, or export it with `pancreas-dints export`"
        )
    if side and verify and side.get("file_md5") and file_md5(path) != side["file_md5"]:
        raise ModelError(
            f"{path}: differs from the file described by {path.name}{SIDECAR_SUFFIX} (md5 mismatch); "
            "export it again, or delete the sidecar if you replaced the file on purpose"
        )

    root = _bundle_root_of(path)
    meta: dict[str, Any] = {}
    if root is not None:
        config_path = find_config(root)
        res = Resolver(read_config(config_path), config_path)
        network, inference = parse_specs(res, res.config)
        meta = read_metadata(root)
        if verify:
            verify_checksums(root)
        settings_from = "config"
        if side:
            side_net, side_inf = _spec_from_sidecar(side, path)
            if (side_net.in_channels, side_net.num_classes) != (network.in_channels, network.num_classes):
                raise ModelError(
                    f"{path}: exported for {side_net.in_channels} input / {side_net.num_classes} output channels "
                    f"but {config_path} says {network.in_channels} / {network.num_classes}"
                )
            inference.roi_size = side_inf.roi_size
    elif side:
        network, inference = _spec_from_sidecar(side, path)
        settings_from = "sidecar"
    else:
        raise ModelError(
            f"{path}: no inference settings found: keep the file in its bundle's models/ folder "
            f"or next to its {path.name}{SIDECAR_SUFFIX} sidecar written by `pancreas-dints export`"
        )
    inference.amp = False
    if kind == "trt" and side and side.get("batch_range"):
        # A TensorRT engine only accepts batches inside its optimisation profile.
        inference.sw_batch_size = max(1, min(inference.sw_batch_size, int(side["batch_range"][1])))
    source = (side or {}).get("source") or {}
    return ExportedBundle(
        root=root or path.parent,
        name=str(meta.get("name") or source.get("name") or path.stem),
        version=str(meta.get("version") or source.get("version") or "unknown"),
        network=network,
        inference=inference,
        weights_path=path,
        arch_path=None,
        metadata=meta,
        kind=kind,
        precision=str((side or {}).get("precision", "fp32")),
        sidecar=side or {},
        settings_from=settings_from,
    )
