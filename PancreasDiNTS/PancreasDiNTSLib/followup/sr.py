"""The current time point's DICOM SR with the Tracking UIDs carried from the prior (compare's ``dicom-sr``).

Form: one TID 1500 SR per time point sharing Tracking UIDs (docs/FOLLOWUP.md says why), not one SR holding both:
the prior's SR is the one `segment --format dicom-sr` wrote for it; this one is the current study's read-out
(io.dicom_sr, the same content as segment's SR) in which every matched lesion's group carries its prior lesion's
Tracking UID and Tracking Identifier (``compare.json``'s ``current_tracking``), so a viewer links the two.

It needs what segment's SR needs: the current side read from a DICOM series, and its case folder's DICOM SEG
(`segment --format dicom-seg` or `dicom-sr`); otherwise compare refuses ``dicom-sr`` before any work.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..core.errors import UsageError, printable
from ..core.paths import OUTPUT_NAMES
from ..io import dicom_sr
from ..io.dicom import select_series
from .cases import Side

SEG_NAME = OUTPUT_NAMES["dicom-seg"]


def check_current(current: Side) -> None:
    """UsageError (one line, before any work) when the current side cannot have an SR."""
    if not current.ct_path.is_dir():
        raise UsageError(f"--format dicom-sr: the current study {printable(current.ct_path)} is not a DICOM series; "
                         "leave dicom-sr out of --format")
    if not (current.folder / SEG_NAME).is_file():
        raise UsageError(f"--format dicom-sr: {printable(current.folder)} has no {SEG_NAME}; segment the current "
                         "study with --format dicom-seg (or dicom-sr) first")


def tracked_readout(current: Side, result: dict[str, Any]) -> dict[str, Any]:
    """The current report's read-out with the tracking the comparison gives its lesions."""
    readout = copy.deepcopy(current.readout)
    series = (current.report.get("dicom_series") or {}).get("series_instance_uid") or ""
    tracking = copy.deepcopy(dicom_sr.tracking_of(readout, series))
    carried = {int(e["rank"]): e for e in result["current_tracking"]["lesions"]}
    tracking["lesions"] = [{"rank": r, "identifier": e["identifier"], "uid": e["uid"]}
                           for r, e in sorted(carried.items())]
    readout["tracking"] = tracking
    return readout


def write_current_sr(dest: Path, current: Side, result: dict[str, Any]) -> Path:
    """Write the current time point's SR with the carried UIDs to ``dest``."""
    series = (current.report.get("dicom_series") or {}).get("series_instance_uid") or None
    info, _ = select_series(current.ct_path, series)
    model = dict(current.report.get("model") or {})
    dicom_sr.write(dest, current.folder / SEG_NAME, tracked_readout(current, result), model, list(info.files),
                   str(model.get("name") or "PancreasDiNTS"), str(model.get("version") or "unknown"))
    return dest
