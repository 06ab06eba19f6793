"""One entry point for every kind of model the engine runs: a bundle folder or an exported file."""

from __future__ import annotations

from pathlib import Path

from PancreasDiNTSLib.core.errors import ModelError
from PancreasDiNTSLib.model.bundle import Bundle, read_bundle_folder
from PancreasDiNTSLib.model.exported import load_exported_bundle


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a model as data (no code from it runs): a bundle folder, its configs/models folder, or an exported file."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ModelError(f"{root}: model folder not found; give a MONAI bundle folder (see `pancreas-dints download`)")
    if root.is_file():
        return load_exported_bundle(root)
    return read_bundle_folder(root, verify=verify)
