"""A finished run's results on disk: the case folders of an output folder, their ``.seg.nrrd`` and ``report.json``,
and the segment volumes the report gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.paths import (
    OUTPUT_NAMES,
)
from PancreasDiNTSLib.core.terminology import SEGMENTS

SEG_NRRD_NAME = OUTPUT_NAMES["seg.nrrd"]


REPORT_NAME = OUTPUT_NAMES["report"]


def case_folders(output_dir: str | Path) -> list[Path]:
    """Case folders of a ``segment`` output folder (those holding a result file), sorted by name."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (
        (p / SEG_NRRD_NAME).is_file() or (p / REPORT_NAME).is_file()))


def case_folder(output_dir: str | Path, case: str | None = None) -> Path:
    """The folder of ``case``, or the only case folder when ``case`` is None."""
    folders = case_folders(output_dir)
    if case is not None:
        for folder in folders:
            if folder.name == case:
                return folder
        raise FileNotFoundError(f"{output_dir}: no results for case {case!r}")
    if len(folders) != 1:
        raise FileNotFoundError(f"{output_dir}: expected one case folder with results, found {len(folders)}")
    return folders[0]


def seg_nrrd_path(folder: str | Path) -> Path:
    """The Slicer segmentation file of a case folder."""
    path = Path(folder) / SEG_NRRD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the engine wrote no segmentation file")
    return path


def read_report(folder: str | Path) -> dict[str, Any]:
    """The case's ``report.json`` as a dict ({} when absent)."""
    path = Path(folder) / REPORT_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def report_volumes(report: dict[str, Any]) -> dict[str, float]:
    """Segment name -> volume in mL, from a report dict.

    Accepts ``segments`` as a list of ``{"name", "volume_ml"}`` objects or a ``{name: {"volume_ml"}}`` map,
    or a flat ``volumes_ml`` map.
    """
    out: dict[str, float] = {}
    segments = report.get("segments")
    if isinstance(segments, dict):
        segments = [{"name": name, **(info if isinstance(info, dict) else {"volume_ml": info})}
                    for name, info in segments.items()]
    for item in segments or []:
        if isinstance(item, dict) and "name" in item:
            value = item.get("volume_ml", item.get("volume_mL"))
            if isinstance(value, int | float):
                out[str(item["name"])] = float(value)
    flat = report.get("volumes_ml")
    if isinstance(flat, dict):
        out.update({str(k): float(v) for k, v in flat.items() if isinstance(v, int | float)})
    return out


def format_volumes(volumes: dict[str, float]) -> str:
    """'Pancreas: 72.4 mL, Pancreatic tumor: 3.1 mL' in the engine's segment order."""
    names = [s.name for s in SEGMENTS if s.name in volumes] + [n for n in volumes if n not in
                                                                {s.name for s in SEGMENTS}]
    return ", ".join(f"{name}: {volumes[name]:.1f} mL" for name in names)
