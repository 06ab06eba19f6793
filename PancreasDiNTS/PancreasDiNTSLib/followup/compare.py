"""`compare`: a prior and a current case folder -> compare.json (and the page, the SR) in OUTDIR.

Steps: both sides opened and checked (cases: one line per refusal, nothing written), both CTs read, the current
aligned to the prior (register: refused when implausible), both label maps measured with the read-out's own
code (readout.combined), the lesions matched (match), statuses and the response categories (response), tracking
UIDs carried from the prior, the outputs written through core.ownership.CaseFolder (each file atomic; a rerun
replaces only what it wrote).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, OutputError, UsageError, printable
from ..core.ownership import CaseFolder
from ..core.tracking import case_key, lesion_tracking, lesion_uid_of
from ..readout import geometry as geo
from ..readout.combined import NOTICE, case_readout
from ..readout.measure import MAX_COMPONENTS, lesion_component_map
from . import grids, match, register, response
from .cases import Side, check_pair, load_ct, open_side
from .page import render_compare_page
from .sr import check_current, write_current_sr

SCHEMA = "pancreas-dints.compare/1"
OUTPUTS = {"json": "compare.json", "png": "compare.png", "pdf": "compare.pdf", "dicom-sr": "current-sr.dcm"}
FORMATS = tuple(OUTPUTS)


def _lesion(comp: dict[str, Any], tracking: dict[str, Any]) -> dict[str, Any]:
    """One lesion's numbers as compare.json lists them."""
    def mm(key: str) -> float | None:
        d = comp.get(key)
        return None if not d else d["mm"]
    loc = comp.get("location") or {}
    return {"rank": comp["rank"], "volume_ml": comp["volume_ml"], "longest_axial_diameter_mm": mm(
        "longest_axial_diameter"), "perpendicular_diameter_mm": mm("perpendicular_diameter"),
        "longest_3d_diameter_mm": mm("longest_3d_diameter"), "location_part": loc.get("part"),
        "location_fraction": loc.get("fraction"), "centroid_ras": comp["centroid_ras"],
        "touches_volume_border": comp.get("touches_volume_border"),
        "tracking_uid": tracking.get("uid"), "tracking_identifier": tracking.get("identifier")}


def side_tracking(side: Side) -> dict[str, Any]:
    """The side's tracking (core.tracking): recorded in its report.json, else derived the same way from its input
    (the DICOM series UID, else the input's bytes), so that a rerun of the case gives the same UIDs."""
    recorded = side.readout.get("tracking")
    if isinstance(recorded, dict) and recorded.get("case_key"):
        return recorded
    series = (side.report.get("dicom_series") or {}).get("series_instance_uid")
    files = sorted(p for p in side.ct_path.iterdir() if p.is_file()) if side.ct_path.is_dir() else [side.ct_path]
    return {"case_key": case_key(series or None, files), "lesions": [], "derived_here": True}


def _tracking_entry(tracking: dict[str, Any], rank: int) -> dict[str, Any]:
    return lesion_uid_of({"tracking": tracking}, rank) or lesion_tracking(str(tracking["case_key"]), rank)


def _overlaps(prior: Side, current: Side, alignment: register.Alignment, n_p: int, n_c: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Overlap (mL) of prior lesion i and carried current lesion j on the prior grid, both volumes there, and the
    current component map on the prior grid."""
    pmap = lesion_component_map(prior.labels)
    cmap = lesion_component_map(current.labels)
    pmap[pmap > MAX_COMPONENTS] = 0
    cmap[cmap > MAX_COMPONENTS] = 0
    ref = grids.to_image(np.zeros(prior.labels.shape, np.uint8), prior.affine)
    warped = grids.from_image(grids.resample(grids.to_image(cmap, current.affine), ref, alignment.transform,
                                             nearest=True))[0]
    vml = geo.voxel_volume_ml(prior.affine)
    pair = np.bincount(pmap.ravel().astype(np.int64) * (n_c + 1) + warped.ravel().astype(np.int64),
                       minlength=(n_p + 1) * (n_c + 1)).reshape(n_p + 1, n_c + 1) * vml
    return pair[1:, 1:], pair[1:, :].sum(axis=1), pair[:, 1:].sum(axis=0), warped


def _distances(prior_comps: list[dict[str, Any]], current_comps: list[dict[str, Any]],
               alignment: register.Alignment) -> np.ndarray:
    if not prior_comps or not current_comps:
        return np.zeros((len(prior_comps), len(current_comps)))
    p = np.array([c["centroid_ras"] for c in prior_comps], dtype=np.float64)
    q = alignment.current_to_prior_ras(np.array([c["centroid_ras"] for c in current_comps], dtype=np.float64))
    return np.linalg.norm(p[:, None, :] - q[None, :, :], axis=2)


def _sum(values: Sequence[float | None]) -> float:
    return float(sum(v for v in values if v is not None))


def _group_record(g: match.Group, pl: list[dict[str, Any]], cl: list[dict[str, Any]], prior: Side,
                  current: Side) -> dict[str, Any]:
    """A finding: its lesions on both sides, changes and status."""
    before, after = [pl[i] for i in g.prior], [cl[j] for j in g.current]
    rec: dict[str, Any] = {"status": g.kind, "match": g.describe(), "prior": before, "current": after}
    if before and after:
        pv, cv = _sum([x["volume_ml"] for x in before]), _sum([x["volume_ml"] for x in after])
        noise = max(response.noise_ml(pv, prior.spacing), response.noise_ml(cv, current.spacing))
        change: dict[str, Any] = {"volume_ml": round(cv - pv, 4),
                                  "volume_pct": round(100.0 * (cv - pv) / pv, 2) if pv > 0 else None,
                                  "noise_ml": round(noise, 4)}
        for key in ("longest_axial_diameter_mm", "perpendicular_diameter_mm", "longest_3d_diameter_mm"):
            a, b = before[0][key], after[0][key]
            change[key] = round(b - a, 2) if (a is not None and b is not None and g.kind == "matched") else None
        rec["change"] = change
        if g.kind == "matched":
            rec["status"] = response.lesion_status(pv, cv, noise)
    if g.kind == "new":
        rec["counts_for_progression"] = response.counts_as_new(after[0])
    tracked = before[0] if before else after[0]  # the largest prior lesion of the group
    rec["tracking_uid"] = tracked.get("tracking_uid")
    rec["tracking_from"] = "prior" if before else "current"
    return rec


def carried_tracking(groups: list[match.Group], pl: list[dict[str, Any]], cl: list[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
    """The current lesions' tracking after the comparison: a matched lesion (or a split's largest part, or a
    merged lesion) takes the UID of its (largest) prior lesion; other parts and new lesions keep their own."""
    out = []
    for g in groups:
        for n, j in enumerate(g.current):
            own = {"rank": cl[j]["rank"], "identifier": cl[j]["tracking_identifier"], "uid": cl[j]["tracking_uid"],
                   "from": "current"}
            if g.prior and n == 0:
                p = pl[g.prior[0]]
                own.update(identifier=p["tracking_identifier"], uid=p["tracking_uid"], **{"from": "prior"})
                if len(g.prior) > 1:
                    own["merged_from"] = [pl[i]["tracking_uid"] for i in g.prior]
            elif g.prior:
                own["split_from"] = pl[g.prior[0]]["tracking_uid"]
            out.append(own)
    return sorted(out, key=lambda e: e["rank"])


def _progressing_new(groups: list[match.Group], cl: list[dict[str, Any]]) -> int:
    """New lesions large enough to count as progression (response.counts_as_new)."""
    return sum(1 for g in groups if g.kind == "new" and response.counts_as_new(cl[g.current[0]]))


def _recist(groups: list[match.Group], pl: list[dict[str, Any]], cl: list[dict[str, Any]], prior: Side
            ) -> dict[str, Any]:
    slice_mm = float(prior.spacing[geo.axial_axis(prior.affine)])
    targets, limit = response.target_lesions([x["longest_axial_diameter_mm"] for x in pl], slice_mm)
    base = _sum([pl[i]["longest_axial_diameter_mm"] for i in targets]) if targets else None
    cur = 0.0
    counted: set[int] = set()
    for i in targets:
        g = next(g for g in groups if i in g.prior)
        parts = [j for j in g.current if j not in counted]  # a merged lesion counts once
        counted.update(parts)
        cur += _sum([cl[j]["longest_axial_diameter_mm"] for j in parts])
    new = _progressing_new(groups, cl)
    out = response.recist_category(base, round(cur, 2) if targets else None, new, len(cl), len(pl))
    out["targets_prior_ranks"] = [pl[i]["rank"] for i in targets]
    out["measurable_mm"] = limit
    return out


def compare_sides(prior: Side, current: Side) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparison of two loaded sides: (compare.json's content, what the page needs)."""
    assert prior.ct is not None and current.ct is not None
    alignment = register.align(prior.ct, prior.labels, prior.affine, current.ct, current.labels, current.affine)
    if alignment.refusal:
        raise InputError(f"prior {printable(prior.folder)} and current {printable(current.folder)}: "
                         f"{alignment.refusal}; not compared (a different patient or body part?)")
    rp, rc = case_readout(prior.labels, prior.affine), case_readout(current.labels, current.affine)
    pcomps, ccomps = rp["lesion"]["components"], rc["lesion"]["components"]
    tp, tc = side_tracking(prior), side_tracking(current)
    pl = [_lesion(c, _tracking_entry(tp, c["rank"])) for c in pcomps]
    cl = [_lesion(c, _tracking_entry(tc, c["rank"])) for c in ccomps]
    overlap, pv, cv, warped = _overlaps(prior, current, alignment, len(pl), len(cl))
    groups = match.match_lesions(overlap, pv, cv, _distances(pcomps, ccomps, alignment))
    findings = [_group_record(g, pl, cl, prior, current) for g in groups]
    volumetric = response.volumetric_response(
        float(rp["segments"]["pancreatic_tumor"]["volume_ml"]), float(rc["segments"]["pancreatic_tumor"]["volume_ml"]),
        _progressing_new(groups, cl), len(cl))
    result = {
        "schema": SCHEMA,
        "prior": _side_facts(prior, rp), "current": _side_facts(current, rc),
        "alignment": alignment.describe(),
        "matching": {"method": match.METHOD, "max_centroid_distance_mm": match.MAX_CENTROID_DISTANCE_MM,
                     "part_fraction": match.PART_FRACTION},
        "lesions": findings,
        "current_tracking": {"lesions": carried_tracking(groups, pl, cl), "prior_case_key": tp["case_key"],
                             "current_case_key": tc["case_key"]},
        "response": {"label": response.LABEL, "recist": _recist(groups, pl, cl, prior), "volumetric": volumetric,
                     "rules": dict(response.RULES)},
        "notice": NOTICE,
    }
    return result, {"alignment": alignment, "warped_lesions": warped}


def _side_facts(side: Side, readout: dict[str, Any]) -> dict[str, Any]:
    return {"case_folder": str(side.folder), "input": str(side.ct_path), "case": side.report.get("case"),
            "readout_schema": side.readout.get("schema"), "spacing_mm": [round(float(s), 4) for s in side.spacing],
            "pancreas_ml": readout["segments"]["pancreas"]["volume_ml"],
            "lesion_ml": readout["segments"]["pancreatic_tumor"]["volume_ml"],
            "lesion_count": readout["lesion"]["count"]}


def check_formats(formats: Sequence[str]) -> list[str]:
    bad = [f for f in formats if f not in OUTPUTS]
    if bad or not formats:
        raise UsageError(f"--format {','.join(formats)}: choose from {', '.join(FORMATS)}")
    return [OUTPUTS[f] for f in formats]


def _writer(name: str, text: str, prior: Side, current: Side, result: dict[str, Any], extra: dict[str, Any]
            ) -> Callable[[Path], Any]:
    """The function that writes output ``name`` to its staging path."""
    if name.endswith(".json"):
        return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")
    if name.endswith(".dcm"):
        return lambda tmp: write_current_sr(Path(tmp), current, result)
    fmt = "pdf" if name.endswith(".pdf") else "png"
    return lambda tmp: render_compare_page(Path(tmp), prior, current, result, extra, fmt)


def compare(prior_dir: Path, current_dir: Path, out_dir: Path, formats: Sequence[str] = ("json", "png")
            ) -> dict[str, Any]:
    """Compare two case folders into ``out_dir``; return compare.json's content. Every refusal comes before
    anything is written."""
    names = check_formats(formats)
    prior, current = open_side("prior", Path(prior_dir)), open_side("current", Path(current_dir))
    check_pair(prior, current)
    if OUTPUTS["dicom-sr"] in names:
        check_current(current)
    identity = {"kind": "compare", "prior": str(prior.folder.resolve()), "current": str(current.folder.resolve())}
    folder = CaseFolder(Path(out_dir), identity)
    if folder.manifest is not None and folder.manifest.get("input") != identity:
        raise OutputError(f"{printable(out_dir)}: the engine's folder of another input or comparison (a case folder "
                          "of segment, or another pair's); choose another output folder")
    taken = folder.conflicts(names)
    if taken:
        raise OutputError(f"{printable(out_dir)}: {', '.join(taken)} exist and were not written by pancreas-dints; "
                          "choose another output folder")
    load_ct(prior)
    load_ct(current)
    result, extra = compare_sides(prior, current)
    folder.begin(names)
    text = json.dumps(result, indent=2)
    for name in names:
        folder.write(name, _writer(name, text, prior, current, result, extra))
    folder.finish(keep=[n for n in folder.files if n in names or n not in OUTPUTS.values()])
    return result
