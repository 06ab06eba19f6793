"""Exporting a trained DiNTS model to TorchScript, ONNX or Torch-TensorRT, with a JSON sidecar.

* ``torchscript``: ``torch.jit.trace`` of the eager network on one ``roi_size`` patch (the sliding window always
  feeds patches of that size; the batch dimension stays free).
* ``onnx``: ``torch.onnx.export`` (TorchScript-based exporter, opset 17, which has InstanceNormalization and
  trilinear ``Resize`` with ``align_corners``), dynamic batch axis.
* ``trt``: Torch-TensorRT through MONAI's :func:`monai.networks.utils.convert_to_trt`, traced, with the bundle's
  converter settings (``aten::upsample_trilinear3d`` left to PyTorch, ``truncate_long_and_double``) and a dynamic
  batch profile min/opt/max = 1/``sw_batch_size``/8. Needs the optional ``[trt]`` extra and a CUDA GPU.

``fp16`` exports cast the network to half precision and put the casts into the graph, so callers still pass and
receive float32 tensors. Every export is written atomically, re-loaded and compared with the eager network on
random patches (unless ``verify=False``); the numbers go into the sidecar ``<file>.json`` next to the export,
together with what :mod:`PancreasDiNTSLib.model.exported` needs to run the file without its bundle.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import atomic_path, write_text_atomic
from PancreasDiNTSLib.core.errors import DeviceError, ModelError, OutputError, PancreasDiNTSError
from PancreasDiNTSLib.model.bundle import Bundle, file_md5, read_large_files
from PancreasDiNTSLib.model.exported import ExportUnavailable, load_exported_bundle, trt_unavailable_reason
from PancreasDiNTSLib.model.loader import load_bundle

FORMATS = ("torchscript", "onnx", "trt")
PRECISIONS = ("fp32", "fp16")
DEFAULT_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "trt": "model_trt.ts"}
# Used when the default name is a released file of the bundle (listed in large_files.yml): never replace it.
FALLBACK_NAMES = {"torchscript": "model_traced.ts", "onnx": "model_exported.onnx", "trt": "model_trt_exported.ts"}
ONNX_OPSET = 17
BATCH_RANGE = (1, 8)
# passed through convert_to_trt to torch_tensorrt.compile (its keyword arguments are of many types)
TRT_CONVERTER_KWARGS: dict[str, Any] = {"truncate_long_and_double": True, "torch_executed_ops": ["aten::upsample_trilinear3d"]}
SIDECAR_SUFFIX = ".json"
SIDECAR_SCHEMA = 1


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    precision: str
    seconds: float
    verification: dict[str, Any] | None


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    return Path(str(path) + SIDECAR_SUFFIX)


class _CastIO(torch.nn.Module):
    """Runs ``net`` in ``dtype`` and returns float32, so exported graphs keep a float32 interface."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dtype)).float()


def default_output(bundle: Bundle, fmt: str) -> Path:
    """``<bundle>/models/<default name>``, avoiding files the bundle lists as released downloads."""
    models = bundle.root / "models"
    released = {(bundle.root / e.get("path", "")).resolve() for e in read_large_files(bundle.root)}
    target = models / DEFAULT_NAMES[fmt]
    if target.resolve() in released:
        target = models / FALLBACK_NAMES[fmt]
    return target


def _example(bundle: Bundle, batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, bundle.network.in_channels, *bundle.inference.roi_size)
    return torch.rand(shape, generator=gen).to(device)


def _prepare(net: torch.nn.Module, precision: str) -> torch.nn.Module:
    if precision == "fp16":
        return _CastIO(net.half(), torch.float16).eval()
    return net


def _export_torchscript(net: torch.nn.Module, example: torch.Tensor, dest: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
    with atomic_path(dest) as tmp:
        torch.jit.save(traced, str(tmp))


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, dest: Path) -> None:
    if importlib.util.find_spec("onnx") is None:
        raise ExportUnavailable("ONNX export needs the onnx package: pip install 'PancreasDiNTSLib[export]'")
    import warnings

    with warnings.catch_warnings(), torch.no_grad(), atomic_path(dest) as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_trt(net: torch.nn.Module, bundle: Bundle, precision: str, dest: Path) -> None:
    reason = trt_unavailable_reason()
    if reason:
        raise ExportUnavailable(reason)
    import torch_tensorrt  # noqa: F401  (registers the TensorRT TorchScript ops)
    from monai.networks.utils import convert_to_trt

    opt = min(max(bundle.inference.sw_batch_size, BATCH_RANGE[0]), BATCH_RANGE[1])
    trt_model = convert_to_trt(
        model=net,
        precision=precision,
        input_shape=[1, bundle.network.in_channels, *bundle.inference.roi_size],
        dynamic_batchsize=[BATCH_RANGE[0], opt, BATCH_RANGE[1]],
        use_trace=True,
        **TRT_CONVERTER_KWARGS,
    )
    with atomic_path(dest) as tmp:
        torch.jit.save(trt_model, str(tmp))


def verify_export(
    eager: torch.nn.Module, exported: torch.nn.Module, bundle: Bundle, device: torch.device, batch: int = 2
) -> dict[str, Any]:
    """Compare logits of the exported and the eager network on ``batch`` random patches."""
    x = _example(bundle, batch, device, seed=1)
    with torch.no_grad():
        ref = eager(x).float()
        out = exported(x).float()
    if out.shape != ref.shape:
        raise ModelError(f"the exported model returns shape {tuple(out.shape)}, the network {tuple(ref.shape)}")
    return {
        "batch": batch,
        "max_abs_diff": float((out - ref).abs().max()),
        "label_agreement": float((out.argmax(1) == ref.argmax(1)).float().mean()),
    }


def export_model(
    model: str | Path,
    fmt: str,
    precision: str = "fp32",
    output: str | Path | None = None,
    device: str | torch.device | None = None,
    verify: bool = True,
    log=print,
) -> ExportResult:
    """Export the model folder ``model`` to ``fmt``; return where it went and how it compared with eager."""
    if fmt not in FORMATS:
        raise PancreasDiNTSError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise PancreasDiNTSError(f"unknown precision {precision!r}; choose fp32 or fp16")
    if fmt == "trt" and (reason := trt_unavailable_reason()):
        raise ExportUnavailable(reason)  # before any slow work
    bundle = load_bundle(model)
    if bundle.kind != "bundle":
        raise ModelError(f"{model}: is already an exported {bundle.kind} model; export from the model folder")
    dest = Path(output).expanduser() if output else default_output(bundle, fmt)
    if dest.resolve() in {bundle.weights_path.resolve(), (bundle.arch_path or dest).resolve()} and output:
        raise OutputError(f"{dest}: would overwrite the model's own weights; choose another -o file")
    if not dest.parent.exists():
        try:
            dest.parent.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"{dest.parent}: cannot create the output folder ({exc.strerror})") from None
    if device is None:
        device = "cuda" if fmt == "trt" or torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was requested but PyTorch sees no CUDA GPU; use --device cpu")

    t0 = time.perf_counter()
    eager = bundle.build_network(dev)
    net = bundle.build_network(dev)
    if fmt != "trt":  # TensorRT takes fp32 weights and builds fp16 kernels itself
        net = _prepare(net, precision)
    example = _example(bundle, 1, dev)
    log(f"exporting {bundle.root.name} to {fmt} ({precision}) -> {dest}")
    try:
        if fmt == "torchscript":
            _export_torchscript(net, example, dest)
        elif fmt == "onnx":
            _export_onnx(net, example, dest)
        else:
            _export_trt(net, bundle, precision, dest)
    except PancreasDiNTSError:
        raise
    except OSError as exc:
        raise OutputError(f"{dest}: cannot be written ({exc.strerror or exc})") from None
    seconds = time.perf_counter() - t0

    sidecar = sidecar_path(dest)
    info = describe_export(bundle, fmt, precision, dest)
    write_text_atomic(sidecar, json.dumps(info, indent=2) + "\n")
    verification = None
    if verify:
        exported_net = load_exported_bundle(dest).build_network(dev)
        verification = verify_export(eager, exported_net, bundle, dev)
        info["verification"] = verification
        write_text_atomic(sidecar, json.dumps(info, indent=2) + "\n")
        log(
            f"verified on {verification['batch']} random patches: max |logit diff| "
            f"{verification['max_abs_diff']:.3g}, argmax agreement {verification['label_agreement']:.4%}"
        )
    return ExportResult(dest, sidecar, fmt, precision, seconds, verification)


def describe_export(bundle: Bundle, fmt: str, precision: str, dest: Path) -> dict[str, Any]:
    """The sidecar's content: what the file is, how to run it, and where it came from."""
    import monai

    return {
        "schema": SIDECAR_SCHEMA,
        "format": fmt,
        "precision": precision,
        "file": dest.name,
        "file_md5": file_md5(dest),
        "roi_size": list(bundle.inference.roi_size),
        "in_channels": bundle.network.in_channels,
        "out_channels": bundle.network.num_classes,
        "batch_range": list(BATCH_RANGE),
        "input_name": "image" if fmt == "onnx" else None,
        "output_name": "logits" if fmt == "onnx" else None,
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "trt_converter_kwargs": TRT_CONVERTER_KWARGS if fmt == "trt" else None,
        "network": asdict(bundle.network),
        "inference": asdict(bundle.inference),
        "source": {
            "bundle": str(bundle.root),
            "name": bundle.name,
            "version": bundle.version,
            "weights": bundle.weights_path.name,
            "weights_md5": file_md5(bundle.weights_path),
            "arch": bundle.arch_path.name if bundle.arch_path else None,
            "arch_md5": file_md5(bundle.arch_path) if bundle.arch_path else None,
        },
        "exporter": {
            "PancreasDiNTSLib": __version__,
            "torch": torch.__version__,
            "monai": monai.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
