"""Segment measurements on the input grid: volumes, boxes, components, lesion diameters, size category.

Everything is computed on the label map's own grid (no resampling) with ``affine_ras`` (voxel index -> RAS mm).

Methods (the report repeats them under ``methods``):

- volume: voxel count x |det(affine[:3, :3])|.
- bounding box: the axis-aligned RAS box enclosing the segment's voxels as cubes (voxel extents: the 8 corners
  of the index box widened by half a voxel, mapped to RAS); for an oblique grid it encloses that index box.
- components: ``scipy.ndimage.label`` with 26-connectivity; sorted by volume, largest first; the largest
  ``MAX_COMPONENTS`` (20) lesion components are measured and listed, all are counted.
- surface points: centres of the exposed voxel faces (the vertices marching cubes puts at iso-level 0.5), so a
  diameter runs edge to edge; a sphere of radius r measures 2r within about one voxel.
- longest 3D diameter: largest distance between surface points (convex hull, then all pairs of hull vertices:
  exact); only the surface points first or last on their grid line go into the hull (the others lie between
  two of them, so the hull is the same), which keeps a noisy lesion fast.
- longest axial diameter (RECIST 1.1 / WHO): on every slice of the axial array axis (the axis closest to the
  patient's S axis), the largest distance between the in-plane exposed edge midpoints of the lesion in that
  slice, measured in the slice plane with the affine (true in-plane spacing and direction, also on oblique
  grids); the slice where it is largest is reported (ties: larger area). The perpendicular diameter is the
  longest segment between two boundary points of that slice whose direction is within 5 degrees of the
  perpendicular to the long axis (widened in steps to 10, 15, 20, 30, 45 degrees only when no pair qualifies;
  the tolerance used and the actual deviation are reported). Exact without comparing all pairs: only the two
  Pareto staircases of the boundary points in the cone's coordinates can hold the longest admitted pair
  (geometry.longest_perpendicular), so adversarial label maps (checkerboards, noise) stay fast. Endpoints are
  given in RAS mm.
- size category: AJCC 8th edition pancreas T thresholds applied to the longest 3D diameter (the tumour's
  greatest dimension) of the largest lesion component, as reported (rounded to 0.01 mm): T1a <= 5 mm,
  T1b > 5 and < 10 mm, T1c 10-20 mm, T2 > 20 and <= 40 mm, T3 > 40 mm. By size only, not a stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..core.terminology import LESION_LABEL, SEGMENTS, segment_by_label
from . import geometry as geo

MM_DECIMALS = 2
MAX_COMPONENTS = 20  # lesion components measured and listed in full (largest first); all are counted
ML_DECIMALS = 4
SCHEMA = "pancreas-dints.readout/1"
LESION_TERM = ("pancreatic lesion: the Task07 'tumour' label, which covers pancreatic masses and cysts "
               "(e.g. PDAC, IPMN, PNET); the label says neither which nor whether it is malignant")
SIZE_LABEL = "by size only, not a stage"
# (category, upper bound mm, upper bound inclusive)
AJCC_SIZE_T = (("T1a", 5.0, True), ("T1b", 10.0, False), ("T1c", 20.0, True), ("T2", 40.0, True))
AJCC_RULES = "T1a <= 5 mm; T1b > 5 and < 10 mm; T1c 10-20 mm; T2 > 20 and <= 40 mm; T3 > 40 mm"
NOT_ASSESSED = (
    "T4: involvement of the celiac axis, superior mesenteric artery and/or common hepatic artery "
    "(decides T4 whatever the size)",
    "vascular contact and resectability (SMV/portal vein, SMA, celiac axis, common hepatic artery)",
    "regional lymph nodes (N)",
    "distant metastases (M)",
    "the nature of the lesion (solid or cystic, benign or malignant): the label does not say",
)
BORDER_NOTE = "touches the edge of the scanned volume: it may extend outside it and its size be underestimated"
METHODS = {
    "volume": "voxel count x voxel volume (|det| of the affine's 3x3 part), on the input grid",
    "bounding_box_ras": "axis-aligned RAS box enclosing the voxels as cubes (index box +/- half a voxel, "
                        "8 corners mapped through the affine); index box inclusive in voxel indices",
    "components": "scipy.ndimage.label, 26-connectivity, sorted by volume (largest first)",
    "surface_points": "centres of exposed voxel faces (marching-cubes vertices at iso 0.5): edge-to-edge",
    "longest_3d_diameter": "largest distance between surface points (convex hull + all hull-vertex pairs: exact)",
    "longest_axial_diameter": "RECIST/WHO: largest in-plane distance between boundary edge midpoints on the "
                              "axial slice (array axis closest to S) where it is largest, in the slice plane",
    "perpendicular_diameter": "longest boundary-to-boundary segment in that slice within 5 degrees of the "
                              "perpendicular to the long axis (tolerance widened only if no pair qualifies)",
    "size_category": f"AJCC 8th edition pancreas T size thresholds on the largest component's longest 3D "
                     f"diameter as reported: {AJCC_RULES}; {SIZE_LABEL}",
}


def _r(x: float, nd: int = MM_DECIMALS) -> float:
    return round(float(x), nd)


def _ml(voxels: int, voxel_ml: float) -> float:
    """A volume in mL at the read-out's precision (the one rounding of every volume the engine reports)."""
    return _r(voxels * voxel_ml, ML_DECIMALS)


def _pt(p: np.ndarray) -> list[float]:
    return [_r(v) for v in np.asarray(p, dtype=np.float64)]


def ajcc_size_category(diameter_mm: float | None) -> dict[str, Any]:
    """AJCC 8th edition pancreatic T category from size alone (None with a reason when no diameter)."""
    out: dict[str, Any] = {"category": None, "diameter_mm": None, "label": SIZE_LABEL, "rules": AJCC_RULES,
                           "edition": "AJCC staging manual, 8th edition (exocrine pancreas, T by size)",
                           "reason": None}
    if diameter_mm is None or not np.isfinite(diameter_mm) or diameter_mm <= 0:
        out["reason"] = "no lesion diameter to categorise"
        return out
    d = float(diameter_mm)
    out["diameter_mm"] = d
    for name, bound, inclusive in AJCC_SIZE_T:
        if d < bound or (inclusive and d == bound):
            out["category"] = name
            return out
    out["category"] = "T3"
    return out


def _bbox(index: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    lo, hi = index.min(axis=0), index.max(axis=0)
    corners = np.array([[lo[0] - 0.5 if a == 0 else hi[0] + 0.5, lo[1] - 0.5 if b == 0 else hi[1] + 0.5,
                         lo[2] - 0.5 if c == 0 else hi[2] + 0.5] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    ras = geo.to_ras(affine, corners)
    return {"min_ras": _pt(ras.min(axis=0)), "max_ras": _pt(ras.max(axis=0)),
            "min_index": [int(v) for v in lo], "max_index": [int(v) for v in hi]}


def _touches_border(index: np.ndarray, shape: tuple[int, ...]) -> bool:
    return bool((index.min(axis=0) == 0).any() or (index.max(axis=0) >= np.array(shape) - 1).any())


def _components(mask: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...], list[int], np.ndarray]:
    """Component map of ``mask`` cropped to its bounding box, the crop, labels sorted by size (desc) and the voxel
    count of each label (index 0: background)."""
    columns = np.asarray(mask.any(axis=2))  # two passes over the volume for the three extents
    nz = [np.flatnonzero(columns.any(axis=1)), np.flatnonzero(columns.any(axis=0)),
          np.flatnonzero(mask.any(axis=(0, 1)))]
    crop = tuple(slice(int(z[0]), int(z[-1]) + 1) for z in nz)
    comp, n = ndimage.label(mask[crop], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = ndimage.histogram(comp, -0.5, n + 0.5, n + 1)  # per label 0..n; np.bincount would copy to int64
    order = [int(k) + 1 for k in np.argsort(-sizes[1:], kind="stable")]
    return comp, crop, order, sizes


def _slice_ras(e2: np.ndarray, s: int, ax: int, inplane: tuple[int, ...], offset: np.ndarray, affine: np.ndarray
               ) -> np.ndarray:
    """RAS mm of in-plane index points ``e2`` (N, 2) of slice ``s`` along ``ax`` of a component's crop."""
    idx = np.zeros((len(e2), 3))
    idx[:, inplane[0]], idx[:, inplane[1]] = e2[:, 0], e2[:, 1]
    idx[:, ax] = s
    return geo.to_ras(affine, idx + offset)


def _diameters(local: np.ndarray, offset: np.ndarray, affine: np.ndarray, ax: int) -> dict[str, Any]:
    """Longest 3D, longest axial and perpendicular diameters of one component (``local`` = its cropped mask)."""
    out: dict[str, Any] = {}
    pts = geo.to_ras(affine, geo.hull_candidates(local) + offset)
    d3, i, j = geo.farthest_pair(pts)
    out["longest_3d_diameter"] = {"mm": _r(d3), "endpoints_ras": [_pt(pts[i]), _pt(pts[j])]}
    inplane = tuple(a for a in range(3) if a != ax)
    basis = geo.plane_basis(affine, inplane)  # type: ignore[arg-type]
    best: tuple[float, int, int] | None = None
    ends = None
    for s in range(local.shape[ax]):
        m2 = np.take(local, s, axis=ax)
        if not m2.any():
            continue
        ras = _slice_ras(geo.hull_candidates(m2), s, ax, inplane, offset, affine)
        d, a, b = geo.farthest_pair(ras @ basis.T)
        area = int(m2.sum())
        if best is None or d > best[0] + 1e-6 or (abs(d - best[0]) <= 1e-6 and area > best[2]):
            best = (d, s, area)
            ends = (ras[a], ras[b])
    assert best is not None and ends is not None
    out["longest_axial_diameter"] = {
        "mm": _r(best[0]), "endpoints_ras": [_pt(ends[0]), _pt(ends[1])],
        "slice_axis": int(ax), "slice_index": int(best[1] + offset[ax]),
    }
    # the perpendicular needs every boundary point of that slice (the staircases are not only hull vertices)
    ras = _slice_ras(geo.exposed_faces(np.take(local, best[1], axis=ax)), best[1], ax, inplane, offset, affine)
    p2 = ras @ basis.T
    perp = geo.longest_perpendicular(p2, (ends[1] - ends[0]) @ basis.T)
    if perp is None:
        out["perpendicular_diameter"] = None
        out["perpendicular_reason"] = "no pair of boundary points across the long axis in that slice"
    else:
        length, pi, pj, dev, tol = perp
        out["perpendicular_diameter"] = {"mm": _r(length), "endpoints_ras": [_pt(ras[pi]), _pt(ras[pj])],
                                         "deviation_deg": _r(dev), "tolerance_deg": tol}
    return out


def _component(comp: np.ndarray, crop: tuple[slice, ...], lab: int, box: tuple[slice, ...], affine: np.ndarray,
               shape: tuple[int, ...], vml: float, ax: int, rank: int) -> dict[str, Any]:
    local = comp[box] == lab
    offset = np.array([c.start + b.start for c, b in zip(crop, box, strict=True)], dtype=np.float64)
    n = int(local.sum())
    # the component's box is tight (ndimage.find_objects): its corners are the index extremes
    index = np.stack([offset, offset + np.array(local.shape) - 1]).astype(np.int64)
    centre = [float((local.sum(axis=tuple(b for b in range(3) if b != a)) * np.arange(local.shape[a])).sum()) / n
              for a in range(3)]
    rec: dict[str, Any] = {
        "rank": rank, "voxels": n, "volume_ml": _ml(n, vml),
        "centroid_ras": _pt(geo.to_ras(affine, (np.array(centre) + offset)[None])[0]),
        "bounding_box": _bbox(index, affine),
        "touches_volume_border": _touches_border(index, shape),
    }
    if rec["touches_volume_border"]:
        rec["border_note"] = BORDER_NOTE
    if n < 2:
        rec.update({"longest_3d_diameter": None, "longest_axial_diameter": None, "perpendicular_diameter": None,
                    "reason": "a single voxel: below the resolution of a diameter measurement"})
    else:
        rec.update(_diameters(local, offset, affine, ax))
        rec["reason"] = None
    return rec


def lesion_component_map(labels: np.ndarray) -> np.ndarray:
    """An int32 map of the lesion components, numbered by rank as ``measure`` lists them (1 = largest)."""
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, dtype=np.int32)
    mask = lab == LESION_LABEL
    if not mask.any():
        return out
    comp, crop, order, _ = _components(mask)
    rank = np.zeros(len(order) + 1, dtype=np.int32)
    rank[np.array(order)] = np.arange(1, len(order) + 1, dtype=np.int32)
    out[crop] = rank[comp]
    return out


def segment_volumes(labels: np.ndarray, affine_ras: np.ndarray) -> tuple[dict[str, int], dict[str, float]]:
    """Voxel counts and volumes (mL) per segment name: report.json's ``voxels`` and ``volumes_ml``."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=len(SEGMENTS) + 1)
    vml = geo.voxel_volume_ml(geo.check_affine(affine_ras))
    return ({seg.name: int(counts[seg.label]) for seg in SEGMENTS},
            {seg.name: _ml(int(counts[seg.label]), vml) for seg in SEGMENTS})


def _segment_summary(labels: np.ndarray, label: int, affine: np.ndarray, vml: float
                     ) -> tuple[dict[str, Any], tuple[np.ndarray, tuple[slice, ...], list[int]] | None]:
    seg = segment_by_label(label)
    mask = labels == label
    n = int(mask.sum())
    rec: dict[str, Any] = {"label": label, "name": seg.name, "voxels": n, "volume_ml": _ml(n, vml)}
    if n == 0:
        rec.update({"bounding_box": None, "components": 0, "component_volumes_ml": [],
                    "touches_volume_border": False, "reason": f"no voxel labelled {label} ({seg.name})"})
        return rec, None
    comp, crop, order, sizes = _components(mask)
    index = np.array([[c.start for c in crop], [c.stop - 1 for c in crop]])  # the crop is the mask's index box
    rec.update({"bounding_box": _bbox(index, affine), "components": len(order),
                "component_volumes_ml": [_ml(sizes[k], vml) for k in order],
                "touches_volume_border": _touches_border(index, labels.shape), "reason": None})
    return rec, (comp, crop, order)


def measure(labels: np.ndarray, affine_ras: np.ndarray) -> dict[str, Any]:
    """Measurements of a label map (X, Y, Z; 1 pancreas, 2 lesion) on its own grid, as a JSON-ready dict."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be a 3D array (X, Y, Z), got shape {lab.shape}")
    affine = geo.check_affine(affine_ras)
    vml = geo.voxel_volume_ml(affine)
    ax = geo.axial_axis(affine)
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "grid": {"shape": [int(s) for s in lab.shape], "spacing_mm": [_r(s, 4) for s in geo.spacing(affine)],
                 "voxel_volume_ml": round(vml, 9), "axial_axis": ax,
                 "axial_obliquity_deg": _r(geo.axial_obliquity_deg(affine))},
        "segments": {},
    }
    comps = None
    for seg in SEGMENTS:
        rec, c = _segment_summary(lab, seg.label, affine, vml)
        out["segments"][seg.slicer_id] = rec
        if seg.label == LESION_LABEL:
            comps = c
    lesion: dict[str, Any] = {"term": LESION_TERM, "found": comps is not None, "count": 0, "components": [],
                              "largest": None, "reason": None}
    if comps is None:
        lesion["reason"] = "no lesion segmented (no voxel labelled 2)"
    else:
        comp, crop, order = comps
        boxes = ndimage.find_objects(comp)
        lesion["components"] = [_component(comp, crop, k, boxes[k - 1], affine, lab.shape, vml, ax, r + 1)
                                for r, k in enumerate(order[:MAX_COMPONENTS])]
        lesion["count"] = len(order)
        if len(order) > MAX_COMPONENTS:
            lesion["components_not_listed"] = len(order) - MAX_COMPONENTS
            lesion["components_note"] = (f"the {MAX_COMPONENTS} largest of {len(order)} components are measured "
                                         "and listed; every component's volume is in segments.pancreatic_tumor."
                                         "component_volumes_ml")
        lesion["largest"] = lesion["components"][0]
    largest = lesion["largest"]
    d3 = largest["longest_3d_diameter"]["mm"] if largest and largest["longest_3d_diameter"] else None
    size = ajcc_size_category(d3)
    size["basis"] = "longest 3D diameter (greatest dimension) of the largest lesion component"
    if d3 is None and largest is not None:
        size["reason"] = largest["reason"]
    elif largest is None:
        size["reason"] = lesion["reason"]
    if largest is not None and largest["touches_volume_border"]:
        size["note"] = "the lesion " + BORDER_NOTE
    lesion["size_category"] = size
    lesion["not_assessed"] = list(NOT_ASSESSED)
    out["lesion"] = lesion
    out["methods"] = dict(METHODS)
    return out
