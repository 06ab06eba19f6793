"""Exported model files (TorchScript / ONNX) as models for ``segment``. Implemented with the export command."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError


def load_exported_bundle(path: Path):
    raise ModelError(f"{path}: a single file is not a model folder; give the bundle folder (configs/, models/)")
