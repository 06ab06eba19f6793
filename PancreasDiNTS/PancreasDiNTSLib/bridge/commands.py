"""Command lines of the engine for the Slicer modules (``python -m PancreasDiNTSLib.cli ...``), built here so the
modules never assemble them; the engine's environment and whether it has a sub-command.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.request import SegmentRequest

ENGINE_MODULE = "PancreasDiNTSLib.cli"


# The folder that holds the PancreasDiNTSLib package (the Slicer module folder, or PancreasDiNTS/ here).
ENGINE_PARENT_DIR = Path(__file__).resolve().parents[2]


# The interpreter of the engine's own Python environment, when Slicer's module runs the engine there
# (PancreasDiNTSSlicerLib.environment); unset: Slicer's Python.
ENGINE_PYTHON_VARIABLE = "PANCREAS_DINTS_ENGINE_PYTHON"


def python_executable() -> str:
    """The engine environment's interpreter when one is chosen (``ENGINE_PYTHON_VARIABLE``), else Slicer's
    ``PythonSlicer`` when it is on PATH (inside Slicer), else the running interpreter."""
    return os.environ.get(ENGINE_PYTHON_VARIABLE) or shutil.which("PythonSlicer") or sys.executable


def engine_environment(base_pythonpath: str | None = None, engine_parent: str | Path | None = None) -> dict[str, str]:
    """Environment variables that let ``python -m PancreasDiNTSLib.cli`` import the engine shipped in a module.

    ``base_pythonpath`` is the PYTHONPATH the child would otherwise get; the engine's folder goes first.
    """
    parent = str(engine_parent or ENGINE_PARENT_DIR)
    parts = [parent] + [p for p in (base_pythonpath or "").split(os.pathsep) if p and p != parent]
    return {"PYTHONPATH": os.pathsep.join(parts), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}


def _engine(python: str, command: str, *args: Any) -> list[str]:
    return [str(python), "-m", ENGINE_MODULE, command, *[str(a) for a in args]]


def _overrides(overrides: dict[str, Any] | Sequence[str] | None) -> list[str]:
    """``--set key=value`` pairs from a dict or a list of 'key=value' strings."""
    if not overrides:
        return []
    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides)
    out: list[str] = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        out += ["--set", item]
    return out


def request_command(python_executable: str, request: SegmentRequest) -> list[str]:
    """The engine command line of a ``segment`` request (core.request: options at their defaults left out)."""
    return _engine(python_executable, "segment", *request.to_argv())


def segment_command(
    python_executable: str,
    input_path: str | Path,
    output_dir: str | Path,
    model: str | Path,
    device: str = "auto",
    formats: Sequence[str] = ("seg.nrrd",),
    allow_non_ct: bool = False,
) -> list[str]:
    """``segment`` one input into ``output_dir/<case>/`` with JSON progress (what the Segment button runs)."""
    if not formats:
        raise ValueError("at least one output format is needed")
    return request_command(python_executable, SegmentRequest(
        (str(input_path),), Path(output_dir), str(model), device=device, formats=tuple(formats), progress="json",
        overwrite=True, allow_non_ct=allow_non_ct))


def download_command(python_executable: str, dest: str | Path | None = None,
                     source: str | Path | None = None) -> list[str]:
    """``download`` the official model into the cache (or ``dest``), or install it from a local zip/folder.

    It prints log lines (no JSON progress); the last line is the installed folder.
    """
    cmd = _engine(python_executable, "download")
    if dest:
        cmd += ["--dest", str(dest)]
    if source:
        cmd += ["--from", str(source)]
    return cmd


def make_phantoms_command(python_executable: str, output_dir: str | Path, count: int = 3, seed: int = 0) -> list[str]:
    """``make-phantoms``: a synthetic CT data set in the MSD Task07 layout (for self-tests and demos)."""
    return _engine(python_executable, "make-phantoms", "-n", count, "-o", output_dir, "--seed", seed,
                   "--progress", "json")


def compare_command(python_executable: str, prior: str | Path, current: str | Path, output_dir: str | Path,
                    prior_labels: str | Path | None = None, current_labels: str | Path | None = None,
                    formats: Sequence[str] = ("json", "png", "pdf"), model: str | Path | None = None,
                    device: str = "auto") -> list[str]:
    """``compare``: a prior and a current study (case folders, or CTs with their label maps, or CTs segmented
    first with ``model``) -> compare.json and the page in ``output_dir``."""
    if not formats:
        raise ValueError("compare needs at least one output format")
    cmd = _engine(python_executable, "compare", prior, current, "-o", output_dir, "--format", ",".join(formats),
                  "--device", device)
    for flag, value in (("--prior-labels", prior_labels), ("--current-labels", current_labels), ("--model", model)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def prepare_datalist_command(python_executable: str, data_dir: str | Path, datalist: str | Path,
                             train_size: float | None = None) -> list[str]:
    """``prepare-datalist``: a training/validation/testing datalist from an MSD-layout folder."""
    cmd = _engine(python_executable, "prepare-datalist", "--path", data_dir, "-o", datalist)
    return cmd + (["--train-size", str(train_size)] if train_size is not None else [])


def _run_folder_command(python_executable: str, command: str, datalist: str | Path, output_dir: str | Path,
                        preset: str, device: str, resume: bool, overrides: dict[str, Any] | Sequence[str] | None,
                        extra: Sequence[str] = ()) -> list[str]:
    """The command line of ``train`` or ``search`` (they share their run options: cli.train.add_run_arguments)."""
    cmd = _engine(python_executable, command, "--datalist", datalist, "-o", output_dir, "--preset", preset,
                  "--device", device, *extra)
    if resume:
        cmd.append("--resume")
    return cmd + _overrides(overrides) + ["--progress", "json"]


def train_command(
    python_executable: str,
    datalist: str | Path,
    output_dir: str | Path,
    arch: str | Path | None = None,
    preset: str = "tiny",
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | Sequence[str] | None = None,
) -> list[str]:
    """``train`` a model from a datalist into a run folder (a bundle ``segment`` can load)."""
    return _run_folder_command(python_executable, "train", datalist, output_dir, preset, device, resume, overrides,
                               ["--arch", str(arch)] if arch else [])


def search_command(
    python_executable: str,
    datalist: str | Path,
    output_dir: str | Path,
    preset: str = "tiny",
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | Sequence[str] | None = None,
) -> list[str]:
    """``search`` a DiNTS architecture; the result is an arch file for ``train --arch``."""
    return _run_folder_command(python_executable, "search", datalist, output_dir, preset, device, resume, overrides)


def evaluate_command(
    python_executable: str,
    model: str | Path,
    datalist: str | Path,
    output_dir: str | Path,
    split: str = "testing",
    device: str = "auto",
) -> list[str]:
    """``evaluate`` a model on one split of a datalist (Dice, HD95, volumes)."""
    return _engine(python_executable, "evaluate", "--model", model, "--datalist", datalist, "--split", split,
                   "-o", output_dir, "--device", device, "--progress", "json")


def export_command(
    python_executable: str,
    model: str | Path,
    output: str | Path | None = None,
    export_format: str = "torchscript",
    precision: str = "fp32",
) -> list[str]:
    """``export`` a model folder to TorchScript, ONNX or TensorRT."""
    cmd = _engine(python_executable, "export", "--model", model, "--format", export_format,
                  "--precision", precision)
    if output:
        cmd += ["-o", str(output)]
    return cmd


def engine_has_command(name: str) -> bool:
    """Whether this engine has the CLI sub-command ``name`` (without importing it)."""
    import importlib.util

    module = name.replace("-", "_")
    return (ENGINE_PARENT_DIR / "PancreasDiNTSLib" / "cli" / f"{module}.py").is_file() or bool(
        importlib.util.find_spec(f"PancreasDiNTSLib.cli.{module}"))


def devices_command(python_executable: str) -> list[str]:
    """A command that prints :func:`list_devices` as JSON (run outside Slicer's process)."""
    return [str(python_executable), "-m", "PancreasDiNTSLib.bridge.device_list", "devices"]
