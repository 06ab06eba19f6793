"""Lesion status and the per-patient response categories, from the two time points' measurements.

Thresholds (repeated in compare.json under ``response.rules``):

- lesion status: *grown* when the volume rose by at least ``VOLUME_CHANGE_PCT`` % of the prior volume and by
  more than the measurement noise; *shrunk* when it fell by as much; else *stable*. The noise of a volume
  measured on a voxel grid is taken as a shell ``NOISE_LAYER`` of a voxel thick (geometric mean spacing) over the
  lesion's surface (that of a sphere of its volume), the larger of the two time points'.
- RECIST 1.1-style category from the longest axial diameters: target lesions are the prior's measurable
  lesions (longest axial diameter >= 10 mm and >= twice the prior's slice spacing), at most ``MAX_TARGETS``
  (RECIST 1.1 allows two per organ; every lesion here is in the pancreas), the longest first; the others are
  non-target. A split target counts the sum of its parts' diameters, lesions that merged count the merged
  lesion's once. CR: no lesion left and none new; PD: the sum grew by >= 20 % and >= 5 mm, or a new lesion;
  PR: the sum fell by >= 30 %; SD otherwise. Without a target: CR, PD (new lesion) or non-CR/non-PD; without any
  lesion at either time point: not evaluable. A new lesion counts when its longest axial diameter is at least
  ``NEW_LESION_MIN_MM`` (smaller ones are listed, not counted: a segmentation's speck is equivocal); non-target
  progression is not judged.
- volumetric response beside it: the total lesion volume, with the RECIST thresholds carried to volumes of
  spheres (a diameter +20 % is a volume +72.8 %, -30 % is -65.7 %): PD at >= +72.8 % or a new lesion, PR at
  <= -65.7 %, CR when no lesion is left, SD otherwise.

Both categories are labelled with ``LABEL``: they come from the automatic segmentation, not a reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

LABEL = "computed from the automatic segmentation; not a clinical response assessment"
VOLUME_CHANGE_PCT = 20.0
NOISE_LAYER = 0.25
MEASURABLE_MM = 10.0
NEW_LESION_MIN_MM = 5.0  # a smaller new finding is listed as new but does not make PD (equivocal: a speck)
MAX_TARGETS = 2
PD_PCT, PD_MM, PR_PCT = 20, 5.0, 30
VOLUME_PD_PCT, VOLUME_PR_PCT = 72.8, 65.7
RULES = {
    "lesion_status": f"grown / shrunk: volume change >= {VOLUME_CHANGE_PCT:g} % of the prior volume and beyond the "
                     f"noise (a {NOISE_LAYER:g}-voxel shell over the lesion's sphere-equivalent surface); else stable",
    "recist": f"targets: prior lesions with longest axial diameter >= {MEASURABLE_MM:g} mm (and >= 2 slice "
              f"spacings), at most {MAX_TARGETS} (two per organ); CR no lesion left; PD sum +{PD_PCT} % and "
              f"+{PD_MM:g} mm or a new lesion (>= {NEW_LESION_MIN_MM:g} mm); PR sum -{PR_PCT} %; SD otherwise",
    "volumetric": f"total lesion volume: PD >= +{VOLUME_PD_PCT:g} % or a new lesion (as for RECIST); PR <= -{VOLUME_PR_PCT:g} %; "
                  "CR no lesion left; SD otherwise (RECIST's diameter thresholds as sphere volumes)",
}


def noise_ml(volume_ml: float, spacing_mm: Sequence[float] | np.ndarray) -> float:
    """Measurement noise of a lesion volume on a grid: a NOISE_LAYER-voxel shell over its sphere-equivalent
    surface (mL)."""
    v = max(float(volume_ml), 0.0) * 1000.0
    surface = (36.0 * math.pi) ** (1.0 / 3.0) * v ** (2.0 / 3.0)
    h = float(spacing_mm[0] * spacing_mm[1] * spacing_mm[2]) ** (1.0 / 3.0)
    return surface * h * NOISE_LAYER / 1000.0


def lesion_status(prior_ml: float, current_ml: float, noise: float) -> str:
    """'grown', 'shrunk' or 'stable' (see the module docstring); exact at the boundary (volumes in 0.1 uL, the
    read-out's precision)."""
    base, cur = _units(prior_ml), _units(current_ml)
    change = cur - base
    if abs(change) <= _units(noise) or abs(change) * 100 < int(VOLUME_CHANGE_PCT) * base:
        return "stable"
    return "grown" if change > 0 else "shrunk"


def _units(ml: float) -> int:
    """A volume in 0.1 uL (the read-out rounds mL to 4 decimals)."""
    return int(round(float(ml) * 10000))


def counts_as_new(lesion: dict[str, Any]) -> bool:
    """Whether a new lesion counts for progression: its longest axial diameter is at least NEW_LESION_MIN_MM."""
    d = lesion.get("longest_axial_diameter_mm")
    return d is not None and _hundredths(d) >= _hundredths(NEW_LESION_MIN_MM)


def _hundredths(mm: float) -> int:
    return int(round(float(mm) * 100.0))


def recist_category(baseline_sum_mm: float | None, current_sum_mm: float | None, new_lesions: int,
                    lesions_left: int, lesions_before: int) -> dict[str, Any]:
    """The RECIST 1.1-style category from the target sums (None: no target), exact at the boundaries (sums in
    hundredths of a mm, integer arithmetic)."""
    out: dict[str, Any] = {"label": LABEL, "baseline_sum_mm": baseline_sum_mm, "current_sum_mm": current_sum_mm,
                           "change_mm": None, "change_pct": None}
    if new_lesions:
        cat, why = "PD", f"{new_lesions} new lesion{'s' if new_lesions > 1 else ''}"
    elif lesions_before == 0 and lesions_left == 0:
        cat, why = "NE", "no lesion at either time point"
    elif lesions_left == 0:
        cat, why = "CR", "no lesion left"
    elif baseline_sum_mm is None or current_sum_mm is None:
        cat, why = "non-CR/non-PD", "no measurable (target) lesion on the prior"
    else:
        cat, why = _by_sum(_hundredths(baseline_sum_mm), _hundredths(current_sum_mm))
    if baseline_sum_mm and current_sum_mm is not None:
        out["change_mm"] = round(current_sum_mm - baseline_sum_mm, 2)
        out["change_pct"] = round(100.0 * (current_sum_mm - baseline_sum_mm) / baseline_sum_mm, 2)
    out.update(category=cat, reason=why)
    return out


def _by_sum(base: int, cur: int) -> tuple[str, str]:
    grow = cur - base
    if base > 0 and 100 * grow >= PD_PCT * base and grow >= _hundredths(PD_MM):
        return "PD", f"sum of diameters +{PD_PCT} % or more and +{PD_MM:g} mm or more"
    if base > 0 and 100 * -grow >= PR_PCT * base:
        return "PR", f"sum of diameters -{PR_PCT} % or more"
    return "SD", "neither PR nor PD by the sum of diameters"


def volumetric_response(prior_total_ml: float, current_total_ml: float, new_lesions: int,
                        lesions_left: int) -> dict[str, Any]:
    """The volumetric category beside RECIST's (exact at the boundaries: volumes in 0.1 uL)."""
    out: dict[str, Any] = {"label": LABEL, "prior_total_ml": round(prior_total_ml, 4),
                           "current_total_ml": round(current_total_ml, 4), "change_pct": None}
    base, cur = _units(prior_total_ml), _units(current_total_ml)
    if base > 0:
        out["change_pct"] = round(100.0 * (cur - base) / base, 2)
    if new_lesions:
        cat = "PD"
    elif base == 0 and cur == 0:
        cat = "NE"
    elif lesions_left == 0:
        cat = "CR"
    elif base > 0 and 1000 * (cur - base) >= int(VOLUME_PD_PCT * 10) * base:
        cat = "PD"
    elif base > 0 and 1000 * (base - cur) >= int(VOLUME_PR_PCT * 10) * base:
        cat = "PR"
    else:
        cat = "SD"
    out["category"] = cat
    return out


def target_lesions(prior_diameters_mm: Sequence[float | None], slice_mm: float) -> tuple[list[int], float]:
    """Indices of the target lesions (longest first) and the measurable threshold used."""
    limit = max(MEASURABLE_MM, 2.0 * float(slice_mm))
    ok = [(float(d), i) for i, d in enumerate(prior_diameters_mm) if d is not None and float(d) >= limit]
    ok.sort(key=lambda t: (-t[0], t[1]))
    return [i for _, i in ok[:MAX_TARGETS]], limit
