"""Where a lesion sits along the pancreas: head, neck/body or tail, from a centreline of the gland.

Method (repeated in the output under ``method``):

1. The gland is every voxel labelled pancreas or lesion (a lesion replaces gland tissue), in RAS mm.
2. Its first principal axis (PCA of the voxel centres) is oriented from the patient's right (head, next to the
   duodenum: larger RAS x) to the left (tail, toward the splenic hilum).
3. The centreline is a principal curve of one step: the gland is cut into ``BINS`` slabs perpendicular to that
   axis and the mean point of each slab is a node; the polyline through the nodes, extended along the axis to
   the gland's two extreme slabs' ends, runs from head (0) to tail (1) by arc length.
4. A point (the lesion's centroid) is projected onto the nearest point of the polyline; its arc-length
   fraction gives the part: head < 1/3 <= neck/body < 2/3 <= tail.

Limits: thirds of the gland's length stand in for the anatomical boundaries (the left border of the SMV/portal
vein for head/neck, the left border of the aorta for body/tail), which this method does not see; a gland that
folds back along its main axis, or is cut by the scan's edge, is not followed faithfully; a large lesion's
centroid may sit off the centreline (its distance is reported); fragments of a segmentation all count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.terminology import LESION_LABEL, PANCREAS_LABEL
from . import geometry as geo

BINS = 16
MIN_GLAND_VOXELS = 100
MIN_LENGTH_MM = 10.0
MIN_LEFT_RIGHT_COS = 0.34  # the principal axis must be within ~70 degrees of the left-right axis
MAX_POINTS = 400_000  # voxel centres used (a regular stride above this)
PARTS = (("head", 0.0, 1.0 / 3.0), ("neck/body", 1.0 / 3.0, 2.0 / 3.0), ("tail", 2.0 / 3.0, 1.0))
METHOD = ("arc-length position of the point's projection on a centreline of the gland (pancreas + lesion "
          f"voxels): first principal axis oriented from patient right (head) to left (tail), means of {BINS} "
          "slabs across it joined as a polyline; head < 1/3 <= neck/body < 2/3 <= tail of the length")
LIMITS = ("thirds of the gland length stand in for the vascular landmarks (SMV/portal vein, aorta) that define "
          "head, neck, body and tail; a gland folding back along its main axis or cut by the scan edge is not "
          "followed faithfully; a large lesion's centroid may lie off the centreline")


class Centreline:
    """A polyline from the head (index 0) to the tail of the gland, in RAS mm."""

    def __init__(self, nodes: np.ndarray, axis: np.ndarray) -> None:
        self.nodes = np.asarray(nodes, dtype=np.float64)
        self.axis = np.asarray(axis, dtype=np.float64)
        seg = np.linalg.norm(np.diff(self.nodes, axis=0), axis=1)
        self.cumulative = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(self.cumulative[-1])

    def project(self, point: np.ndarray) -> tuple[float, float, np.ndarray]:
        """(fraction 0 head..1 tail, distance mm, nearest point) of a RAS point on the polyline."""
        q = np.asarray(point, dtype=np.float64)
        a, b = self.nodes[:-1], self.nodes[1:]
        d = b - a
        dd = np.maximum((d * d).sum(axis=1), 1e-12)
        t = np.clip(((q - a) * d).sum(axis=1) / dd, 0.0, 1.0)
        near = a + t[:, None] * d
        dist = np.linalg.norm(near - q, axis=1)
        k = int(np.argmin(dist))
        s = self.cumulative[k] + t[k] * np.sqrt(dd[k])
        return float(s / self.length), float(dist[k]), near[k]


def part_of(fraction: float) -> str:
    """'head', 'neck/body' or 'tail' for a head-to-tail fraction in [0, 1]."""
    for name, lo, hi in PARTS:
        if lo <= fraction < hi:
            return name
    return PARTS[-1][0] if fraction >= 1.0 else PARTS[0][0]


def centreline(labels: np.ndarray, affine_ras: np.ndarray) -> tuple[Centreline | None, str | None]:
    """The gland's centreline, or (None, reason) when the pancreas is empty, too small or not left-right."""
    lab = np.asarray(labels)
    affine = geo.check_affine(affine_ras)
    n_panc = int(np.count_nonzero(lab == PANCREAS_LABEL))
    if n_panc == 0:
        return None, "no pancreas segmented: the lesion cannot be placed along the gland"
    gland = (lab == PANCREAS_LABEL) | (lab == LESION_LABEL)
    index = np.argwhere(gland)
    if len(index) < MIN_GLAND_VOXELS or n_panc < MIN_GLAND_VOXELS // 2:
        return None, (f"pancreas too small for a centreline ({n_panc} pancreas voxels, {len(index)} with the "
                      f"lesion; at least {MIN_GLAND_VOXELS // 2} and {MIN_GLAND_VOXELS} needed)")
    if len(index) > MAX_POINTS:
        index = index[:: int(np.ceil(len(index) / MAX_POINTS))]
    pts = geo.to_ras(affine, index)
    centre = pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
    axis = vecs[:, -1]
    if abs(axis[0]) < MIN_LEFT_RIGHT_COS:
        return None, ("the gland's main axis is not left-right (more than 70 degrees off): head and tail "
                      "cannot be told apart")
    if axis[0] > 0:  # head (patient right, +x in RAS) first: the axis points toward the tail (left, -x)
        axis = -axis
    t = (pts - centre) @ axis
    lo, hi = float(t.min()), float(t.max())
    if hi - lo < MIN_LENGTH_MM:
        return None, f"pancreas too small for a centreline ({hi - lo:.1f} mm long; {MIN_LENGTH_MM} mm needed)"
    edges = np.linspace(lo, hi, BINS + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, BINS - 1)
    counts = np.bincount(which, minlength=BINS)
    sums = np.stack([np.bincount(which, weights=pts[:, c], minlength=BINS) for c in range(3)], axis=1)
    keep = counts > 0
    nodes = sums[keep] / counts[keep, None]
    tmean = np.bincount(which, weights=t, minlength=BINS)[keep] / counts[keep]
    nodes = np.vstack([nodes[0] + (lo - tmean[0]) * axis, nodes, nodes[-1] + (hi - tmean[-1]) * axis])
    return Centreline(nodes, axis), None


def locate_point(line: Centreline | None, reason: str | None, point_ras: Any) -> dict[str, Any]:
    """Part, fraction and distance for one RAS point on a centreline (null with the reason if none)."""
    if line is None or point_ras is None:
        return {"part": None, "fraction": None, "distance_to_centreline_mm": None,
                "reason": reason or "no point to place"}
    f, dist, _ = line.project(np.asarray(point_ras, dtype=np.float64))
    return {"part": part_of(f), "fraction": round(f, 3), "distance_to_centreline_mm": round(dist, 2),
            "reason": None}


def locate(labels: np.ndarray, affine_ras: np.ndarray, points_ras: list[Any]) -> dict[str, Any]:
    """Location of each RAS point (e.g. lesion component centroids) along the gland, with method and limits."""
    line, reason = centreline(labels, affine_ras)
    out: dict[str, Any] = {
        "method": METHOD, "limits": LIMITS,
        "parts": {name: [round(lo, 4), round(hi, 4)] for name, lo, hi in PARTS},
        "centreline_length_mm": None if line is None else round(line.length, 1),
        "head_end_ras": None if line is None else [round(float(v), 2) for v in line.nodes[0]],
        "tail_end_ras": None if line is None else [round(float(v), 2) for v in line.nodes[-1]],
        "reason": reason,
        "points": [locate_point(line, reason, p) for p in points_ras],
    }
    return out


def locate_lesions(labels: np.ndarray, affine_ras: np.ndarray, measurements: dict[str, Any]) -> dict[str, Any]:
    """Place every lesion component of ``measure``'s output; adds ``location`` to each component (in place) and
    returns the summary block (method, limits, centreline ends, and the largest lesion's location)."""
    comps = measurements.get("lesion", {}).get("components", [])
    out = locate(labels, affine_ras, [c["centroid_ras"] for c in comps])
    for comp, loc in zip(comps, out.pop("points"), strict=True):
        comp["location"] = loc
    if comps:
        out["largest"] = comps[0]["location"]
    else:
        out["largest"] = {"part": None, "fraction": None, "distance_to_centreline_mm": None,
                          "reason": "no lesion segmented"}
    return out
