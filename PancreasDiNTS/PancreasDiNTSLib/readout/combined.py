"""One call for the whole read-out of a case (measurements, lesion location, confidence) and its CSV row."""

from __future__ import annotations

from typing import Any

import numpy as np

from .confidence import confidence_summary, summary_from_map
from .location import locate_lesions
from .measure import measure

NOTICE = "Not for clinical use: research software; every number needs a qualified reader's review."
# measurements.csv: one row per case of a segment batch (values from report.json's "readout")
CSV_COLUMNS = (
    "case", "input", "status", "pancreas_ml", "lesion_ml", "lesion_count", "largest_lesion_ml",
    "longest_axial_diameter_mm", "perpendicular_diameter_mm", "longest_3d_diameter_mm", "size_category_by_size_only",
    "location_part", "location_fraction", "lesion_score_uncalibrated", "mean_confidence_pancreas",
    "mean_confidence_lesion", "note",
)
Lesion = tuple[float, tuple[int, int, int]]


def case_readout(labels: np.ndarray, affine_ras: np.ndarray, probabilities: np.ndarray | None = None,
                 confidence_map: np.ndarray | None = None, lesion: Lesion | None = None,
                 confidence_reason: str = "no probabilities given") -> dict[str, Any]:
    """``measure`` + ``location`` (each lesion component also gets its own ``location``) + ``confidence``.

    Confidence comes from softmax ``probabilities`` (C, X, Y, Z) on the same grid, or from the uint8
    ``confidence_map`` and the largest ``lesion_max`` (what the engine's inversion hands out, slab by slab);
    with neither it is null and ``confidence_reason`` says why."""
    out = measure(labels, affine_ras)
    out["location"] = locate_lesions(labels, affine_ras, out)
    if probabilities is not None:
        out["confidence"] = confidence_summary(probabilities, labels, affine_ras)
    elif confidence_map is not None:
        out["confidence"] = summary_from_map(confidence_map, labels, affine_ras, lesion)
    else:
        out["confidence"] = None
        out["confidence_reason"] = confidence_reason
    out["notice"] = NOTICE
    return out


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def csv_row(readout: dict[str, Any] | None, case: str = "", input_path: str = "", status: str = "ok",
            note: str = "") -> dict[str, Any]:
    """The measurements.csv row of one case (empty cells where a value is null; ``note`` says why)."""
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
    row.update(case=case, input=input_path, status=status, note=note)
    if not readout:
        return row
    segs = readout.get("segments") or {}
    les = readout.get("lesion") or {}
    big = les.get("largest") or {}
    conf = readout.get("confidence") or {}
    values = {
        "pancreas_ml": _get(segs, "pancreas", "volume_ml"),
        "lesion_ml": _get(segs, "pancreatic_tumor", "volume_ml"),
        "lesion_count": les.get("count"),
        "largest_lesion_ml": big.get("volume_ml"),
        "longest_axial_diameter_mm": _get(big, "longest_axial_diameter", "mm"),
        "perpendicular_diameter_mm": _get(big, "perpendicular_diameter", "mm"),
        "longest_3d_diameter_mm": _get(big, "longest_3d_diameter", "mm"),
        "size_category_by_size_only": _get(les, "size_category", "category"),
        "location_part": _get(big, "location", "part"),
        "location_fraction": _get(big, "location", "fraction"),
        "lesion_score_uncalibrated": _get(conf, "lesion_score", "value"),
        "mean_confidence_pancreas": _get(conf, "segments", "pancreas", "mean_confidence"),
        "mean_confidence_lesion": _get(conf, "segments", "pancreatic_tumor", "mean_confidence"),
    }
    row.update({k: "" if v is None else v for k, v in values.items()})
    reasons = [r for r in (les.get("reason"), big.get("reason"), _get(big, "location", "reason"),
                           _get(les, "size_category", "reason"), readout.get("confidence_reason")) if r]
    if reasons and not note:
        row["note"] = "; ".join(dict.fromkeys(str(r) for r in reasons))
    return row
