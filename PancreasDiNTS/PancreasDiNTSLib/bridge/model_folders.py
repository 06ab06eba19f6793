"""Model folders the modules offer: the official model installed by ``download``, the packaged demo model, and the
architecture file a search produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.paths import (
    OFFICIAL_BUNDLE_NAME,
    demo_model_location,
    is_model_folder,
    model_cache_root,
)

model_cache_folder = model_cache_root  # the bridge's name for it


def official_model_folder(cache: str | Path | None = None) -> Path | None:
    """The newest official model installed by `download` (<cache>/pancreas_ct_dints_segmentation/<version>), or
    None. Local models installed with `download --from ... --name` (<cache>/local/<name>) are not official."""
    root = (Path(cache) if cache else model_cache_folder()) / OFFICIAL_BUNDLE_NAME
    found = [p for p in root.iterdir() if is_model_folder(p)] if root.is_dir() else []
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def demo_model_folder() -> Path | None:
    """The demo model (trained on phantoms): $PANCREAS_DINTS_DEMO_MODEL, else the one shipped inside the engine
    package (core.paths, as PancreasDiNTSLib.synthetic.demo.demo_model_dir, which imports torch), or None."""
    path, _ = demo_model_location()
    return path if is_model_folder(path) else None


def find_arch_file(folder: str | Path, summary: dict[str, Any] | None = None) -> Path | None:
    """The architecture a search produced: its summary's ``arch_file`` when given, else the newest
    ``search_code*.pt``/``arch*.pt`` directly in the folder, else the newest one below it; None if there is none."""
    if summary and summary.get("arch_file") and Path(summary["arch_file"]).is_file():
        return Path(summary["arch_file"])
    root = Path(folder)
    if not root.is_dir():
        return None
    for search in (root.glob, root.rglob):
        found = [p for pattern in ("search_code*.pt", "arch*.pt") for p in search(pattern) if p.is_file()]
        if found:
            return max(found, key=lambda p: (p.stat().st_mtime, str(p)))
    return None
