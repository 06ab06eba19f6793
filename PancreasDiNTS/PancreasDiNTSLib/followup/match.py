"""One-to-one matching of prior and current lesions after alignment; splits and merges reported as such.

Rules (repeated in compare.json under ``matching.method``):

1. Overlap: every current lesion is carried into the prior's grid by the alignment. Pairs that overlap are
   matched by an assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``) maximising the sum of the
   pairs' Dice coefficients: no lesion is matched twice and no greedy order decides.
2. Split / merge: a lesion left out of the assignment whose own volume lies at least ``PART_FRACTION`` inside
   a lesion of the other time point joins that lesion's group: one prior and several current lesions is a
   *split*, several prior and one current a *merge*, several of each *split/merged*. Such a group is reported as
   a group, never forced into one pair.
3. Nearest centroid: lesions still unmatched are paired by a second assignment minimising the distance between
   their centroids after alignment, accepting only pairs closer than ``MAX_CENTROID_DISTANCE_MM``.
4. The rest: prior lesions are *no longer seen*, current lesions are *new*.

How sure: a match by overlap with Dice >= ``HIGH_DICE`` is "high", any other overlap "moderate"; a centroid
match within half the distance limit "moderate", beyond it "low".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

PART_FRACTION = 0.3
MAX_CENTROID_DISTANCE_MM = 10.0
HIGH_DICE = 0.3
METHOD = ("1. overlap after alignment: an assignment (Hungarian) maximising the summed Dice of overlapping pairs; "
          f"2. a lesion left out with >= {PART_FRACTION:.0%} of its volume inside a lesion of the other time point "
          "joins its group (one prior, several current: split; several prior, one current: merged); "
          "3. the rest by an assignment minimising centroid distance after alignment, only pairs within "
          f"{MAX_CENTROID_DISTANCE_MM:g} mm; 4. unmatched: new / no longer seen")


@dataclass
class Group:
    """Lesions of the two time points that are one finding (indices into the prior and current lists)."""

    kind: str  # matched, split, merged, split/merged, new, no longer seen
    prior: list[int] = field(default_factory=list)
    current: list[int] = field(default_factory=list)
    by: str | None = None  # overlap, centroid
    dice: float | None = None
    distance_mm: float | None = None
    confidence: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "by": self.by, "confidence": self.confidence,
                "dice": None if self.dice is None else round(self.dice, 4),
                "centroid_distance_mm": None if self.distance_mm is None else round(self.distance_mm, 2)}


def _dice(overlap: np.ndarray, prior_ml: np.ndarray, current_ml: np.ndarray) -> np.ndarray:
    denom = prior_ml[:, None] + current_ml[None, :]
    return np.where(denom > 0, 2.0 * overlap / np.maximum(denom, 1e-12), 0.0)


def _overlap_pairs(overlap: np.ndarray, dice: np.ndarray) -> list[tuple[int, int]]:
    if overlap.size == 0 or not (overlap > 0).any():
        return []
    rows, cols = linear_sum_assignment(-dice)
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if overlap[i, j] > 0]


def _kind(n_prior: int, n_current: int) -> str:
    if n_prior == 1 and n_current == 1:
        return "matched"
    if n_prior == 1:
        return "split"
    return "merged" if n_current == 1 else "split/merged"


def _attach(groups: list[Group], overlap: np.ndarray, prior_ml: np.ndarray, current_ml: np.ndarray) -> None:
    """Step 2: lesions outside the assignment that lie mostly inside a matched lesion join its group."""
    by_prior = {g.prior[0]: g for g in groups}
    by_current = {g.current[0]: g for g in groups}
    taken_c = set(by_current)
    taken_p = set(by_prior)
    for j in range(overlap.shape[1]):
        if j in taken_c or current_ml[j] <= 0:
            continue
        i = int(np.argmax(overlap[:, j]))
        if overlap[i, j] >= PART_FRACTION * current_ml[j] and i in by_prior:
            by_prior[i].current.append(j)
            taken_c.add(j)
    for i in range(overlap.shape[0]):
        if i in taken_p or prior_ml[i] <= 0:
            continue
        j = int(np.argmax(overlap[i, :]))
        if overlap[i, j] >= PART_FRACTION * prior_ml[i] and j in by_current:
            by_current[j].prior.append(i)


def match_lesions(overlap_ml: np.ndarray, prior_ml: np.ndarray, current_ml: np.ndarray,
                  distance_mm: np.ndarray) -> list[Group]:
    """Groups of ``len(prior_ml)`` prior and ``len(current_ml)`` current lesions.

    ``overlap_ml[i, j]``: volume of prior lesion i covered by current lesion j after alignment (mL, on the prior's
    grid); ``prior_ml``/``current_ml``: the lesions' volumes on that grid; ``distance_mm[i, j]``: centroid
    distance after alignment."""
    overlap = np.asarray(overlap_ml, dtype=np.float64).reshape(len(prior_ml), len(current_ml))
    pv, cv = np.asarray(prior_ml, dtype=np.float64), np.asarray(current_ml, dtype=np.float64)
    dist = np.asarray(distance_mm, dtype=np.float64).reshape(overlap.shape)
    dice = _dice(overlap, pv, cv)
    groups = [Group("matched", [i], [j], "overlap", float(dice[i, j])) for i, j in _overlap_pairs(overlap, dice)]
    _attach(groups, overlap, pv, cv)
    for g in groups:
        g.kind = _kind(len(g.prior), len(g.current))
        g.confidence = "high" if (g.dice or 0.0) >= HIGH_DICE else "moderate"
    used_p = {i for g in groups for i in g.prior}
    used_c = {j for g in groups for j in g.current}
    rest_p = [i for i in range(len(pv)) if i not in used_p]
    rest_c = [j for j in range(len(cv)) if j not in used_c]
    if rest_p and rest_c:
        sub = dist[np.ix_(rest_p, rest_c)]
        rows, cols = linear_sum_assignment(np.where(sub <= MAX_CENTROID_DISTANCE_MM, sub, 1e6))
        for r, c in zip(rows, cols, strict=True):
            d = float(sub[r, c])
            if d <= MAX_CENTROID_DISTANCE_MM:
                conf = "moderate" if d <= MAX_CENTROID_DISTANCE_MM / 2 else "low"
                groups.append(Group("matched", [rest_p[r]], [rest_c[c]], "centroid", None, d, conf))
                used_p.add(rest_p[r])
                used_c.add(rest_c[c])
    groups += [Group("no longer seen", [i]) for i in range(len(pv)) if i not in used_p]
    groups += [Group("new", [], [j]) for j in range(len(cv)) if j not in used_c]
    for g in groups:
        g.prior.sort()
        g.current.sort()
        if g.distance_mm is None and g.prior and g.current:
            g.distance_mm = float(min(dist[i, j] for i in g.prior for j in g.current))
    groups.sort(key=lambda g: (min(g.prior) if g.prior else 10**6, min(g.current) if g.current else 10**6))
    return groups
