"""Which series of a study is segmented: the node's documented rules (config.Rules), every decision recorded.

A series must pass every rule, in this order: modality (CT), image type (not a localizer, derived or secondary
image), axial (the slice normal within ``max_axial_tilt_deg`` of the patient's feet-head axis), enough slices,
slice thickness within limits, and one regular stack (the engine's own geometry checks: a missing slice is
refused with the same line as ``segment`` gives). Of the series that pass, the first by the preference
``order`` wins: ``keywords`` (a description holding one of ``prefer_keywords``, e.g. portal-venous),
``thinnest``, ``most_slices``. The decision of each series is ``chosen`` or ``skipped`` with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.core.errors import InputError, printable
from PancreasDiNTSLib.io.dicom import plan_grid, slice_geometry
from PancreasDiNTSLib.server.dicom_node.config import Rules


@dataclass
class SeriesFacts:
    uid: str
    number: int | None
    description: str
    modality: str
    image_type: tuple[str, ...]
    files: list[Path]
    headers: list[Any]
    thickness: float | None = None
    tilt_deg: float | None = None

    @property
    def label(self) -> str:
        return f"series {self.number if self.number is not None else '?'} ({self.description or 'no description'})"


def _number(ds: Any) -> int | None:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return None


def _tilt(ds: Any) -> float | None:
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        normal /= np.linalg.norm(normal)
    except (AttributeError, TypeError, ValueError):
        return None
    if not np.isfinite(normal).all():
        return None
    return float(math.degrees(math.acos(min(1.0, abs(float(normal[2]))))))


def series_facts(files: Sequence[Path], headers: Sequence[Any]) -> list[SeriesFacts]:
    """The series of a study (grouped by Series Instance UID, in series-number order) with what the rules need."""
    groups: dict[str, SeriesFacts] = {}
    for path, ds in zip(files, headers, strict=True):
        uid = str(ds.get("SeriesInstanceUID", ""))
        facts = groups.get(uid)
        if facts is None:
            image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or []))
            facts = groups[uid] = SeriesFacts(uid, _number(ds), printable(ds.get("SeriesDescription", "") or ""),
                                              str(ds.get("Modality", "") or "").upper(), image_type, [], [],
                                              tilt_deg=_tilt(ds))
            try:
                facts.thickness = float(ds.get("SliceThickness"))
            except (TypeError, ValueError):
                facts.thickness = None
        facts.files.append(path)
        facts.headers.append(ds)
    return sorted(groups.values(), key=lambda f: (f.number is None, f.number or 0, f.uid))


def rule_failure(facts: SeriesFacts, rules: Rules) -> str | None:
    """The first rule this series fails (the reason recorded), or None."""
    if facts.modality not in rules.modalities:
        return f"modality {facts.modality or 'unknown'}, not {' or '.join(rules.modalities)}"
    bad = [t for t in rules.exclude_image_types if t in facts.image_type]
    if bad:
        return f"image type {'/'.join(facts.image_type)}: {bad[0].lower()} image"
    if facts.tilt_deg is None or facts.tilt_deg > rules.max_axial_tilt_deg:
        how = "unknown orientation" if facts.tilt_deg is None else f"slices {facts.tilt_deg:.0f} degrees from axial"
        return f"not axial ({how}; at most {rules.max_axial_tilt_deg:g} degrees)"
    if len(facts.files) < rules.min_slices:
        return f"{len(facts.files)} slices, fewer than {rules.min_slices} (rules.min_slices)"
    if facts.thickness is not None and not rules.min_thickness_mm <= facts.thickness <= rules.max_thickness_mm:
        return (f"slice thickness {facts.thickness:g} mm outside {rules.min_thickness_mm:g} to "
                f"{rules.max_thickness_mm:g} mm")
    return None


def geometry_failure(facts: SeriesFacts) -> str | None:
    """The engine's refusal of this stack (gaps, mixed sizes, repeated positions...), or None."""
    where = Path(facts.label)
    try:
        geom, _ = slice_geometry(facts.headers, [Path(p.name) for p in facts.files], where)
        plan_grid(geom, where)
    except InputError as exc:
        return str(exc)
    if facts.thickness is None and len(geom.distances) > 1:
        facts.thickness = float(np.median(np.diff(geom.distances)))
    return None


def _preference(facts: SeriesFacts, rules: Rules) -> tuple[float, ...]:
    keys = {"keywords": 0.0 if any(k.lower() in facts.description.lower() for k in rules.prefer_keywords) else 1.0,
            "thinnest": facts.thickness if facts.thickness is not None else math.inf,
            "most_slices": -float(len(facts.files))}
    return tuple(keys[k] for k in rules.order if k in keys)


def choose_series(series: list[SeriesFacts], rules: Rules) -> tuple[SeriesFacts | None, list[dict[str, Any]]]:
    """The chosen series (or None) and one decision per series: chosen, or skipped with the reason."""
    reasons: dict[str, str] = {}
    for facts in series:
        why = rule_failure(facts, rules) or geometry_failure(facts)
        if why:
            reasons[facts.uid] = why
    usable = sorted((f for f in series if f.uid not in reasons), key=lambda f: _preference(f, rules))
    chosen = usable[0] if usable else None
    decisions = []
    for facts in series:
        entry = {"series_uid": facts.uid, "series_number": facts.number, "description": facts.description,
                 "modality": facts.modality, "slices": len(facts.files), "thickness_mm": facts.thickness}
        if facts is chosen:
            entry |= {"decision": "chosen", "reason": "passes every rule; first by " + ", ".join(rules.order)}
        elif facts.uid in reasons:
            entry |= {"decision": "skipped", "reason": reasons[facts.uid]}
        else:
            entry |= {"decision": "skipped", "reason": f"usable, but {chosen.label if chosen else '?'} is preferred "
                                                       f"(order: {', '.join(rules.order)})"}
        decisions.append(entry)
    return chosen, decisions


def skip_reason(decisions: list[dict[str, Any]]) -> str:
    """The one line of a study with nothing usable."""
    if not decisions:
        return "no image series received"
    parts = [f"series {d['series_number']}: {d['reason']}" for d in decisions[:4]]
    more = f"; and {len(decisions) - 4} more" if len(decisions) > 4 else ""
    return "no usable series (" + "; ".join(parts) + more + ")"
