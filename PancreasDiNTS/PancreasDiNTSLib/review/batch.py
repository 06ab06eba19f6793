"""The cases of a `segment` output folder, their review status and key numbers, and the CT each came from.

A batch folder is what ``pancreas-dints segment -o OUTDIR`` wrote: ``summary.json`` and/or ``measurements.csv``
naming the cases, each case a folder ``OUTDIR/<case>/`` whose ownership manifest lists ``labels.nii.gz`` and
``segmentation.seg.nrrd``. Case names from those files are used only as names of direct sub-folders of OUTDIR
(never as paths). The CT is the input recorded in the manifest (resolved path and identity: size and mtime of a
file, the listing hash of a DICOM folder); when it is gone or changed the case says so and stays read-only.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError, UsageError, printable
from ..core.ownership import CaseFolder, input_identity, read_manifest
from ..core.paths import BATCH_NAMES, OUTPUT_NAMES, REVIEW_NAMES
from ..core.safeparse import parse_json, read_text_bounded
from ..io.dicom import read_dicom_series
from ..readout.combined import csv_row

REVIEW_NAME = REVIEW_NAMES["review"]
REVIEW_CSV = "review.csv"
CORRECTED_LABELS = REVIEW_NAMES["labels"]
CORRECTED_SEG = REVIEW_NAMES["seg.nrrd"]
STATUSES = ("not reviewed", "accepted", "corrected", "rejected")
STALE_SUFFIX = " (earlier labels)"  # a review of labels a rerun has replaced since: "corrected (earlier labels)"
LABELS = OUTPUT_NAMES["nifti"]
SEGMENTATION = OUTPUT_NAMES["seg.nrrd"]
REPORT = OUTPUT_NAMES["report"]
MAX_JSON_BYTES = 64 << 20
MAX_CASES = 10000
# the key numbers shown for each case in the list (measurements.csv columns)
KEY_COLUMNS = ("pancreas_ml", "lesion_ml", "longest_axial_diameter_mm", "size_category_by_size_only",
               "lesion_score_uncalibrated")


def read_json(path: Path, error: type[InputError] | type[UsageError] = InputError) -> Any:
    """A bounded JSON file (the engine's own limits); ``error`` with one line when it cannot be read."""
    return parse_json(read_text_bounded(path, MAX_JSON_BYTES, error), path, error=error)


@dataclass
class CtSource:
    """Where a case's CT is: a file or a DICOM folder (+ series), or why it cannot be used (``problem``)."""

    path: Path | None
    kind: str = "file"
    series_uid: str | None = None
    problem: str = ""


@dataclass
class Case:
    """One case of a batch: its folder, review status and the key numbers shown in the list."""

    name: str
    folder: Path
    status: str = "not reviewed"
    numbers: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "problem": self.problem} | {
            k: self.numbers.get(k, "") for k in KEY_COLUMNS}


def _summaries(outdir: Path) -> list[Path]:
    """summary.json, and the per-rank summary-rank<r>.json of a torchrun batch."""
    stem, suffix = Path(BATCH_NAMES["summary"]).stem, Path(BATCH_NAMES["summary"]).suffix
    ranked = sorted(outdir.glob(f"{stem}-rank*{suffix}"))
    return [p for p in [outdir / BATCH_NAMES["summary"], *ranked] if p.is_file()]


def _names_from_summary(path: Path) -> list[str]:
    data = read_json(path, UsageError)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise UsageError(f"{printable(path)}: no 'results' list; not a summary written by pancreas-dints segment")
    names = []
    for r in results:
        if isinstance(r, dict) and r.get("status") in ("ok", "skipped") and isinstance(r.get("output_dir"), str):
            names.append(Path(r["output_dir"]).name)
    return names


def _names_from_measurements(outdir: Path) -> list[str]:
    text = read_text_bounded(outdir / BATCH_NAMES["measurements"], MAX_JSON_BYTES, UsageError)
    return [row.get("case", "") for row in csv.DictReader(io.StringIO(text)) if row.get("status") == "ok"]


def batch_cases(outdir: Path) -> list[Case]:
    """The reviewable cases of ``outdir`` in the batch's order; UsageError (exit 2) when it is no batch folder."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise UsageError(f"{printable(outdir)}: no such folder; give the -o folder of a `pancreas-dints segment` run")
    names: list[str] = []
    summaries = _summaries(outdir)
    for summary in summaries:
        names += _names_from_summary(summary)
    if (outdir / BATCH_NAMES["measurements"]).is_file():
        names += _names_from_measurements(outdir)
    if not summaries and not (outdir / BATCH_NAMES["measurements"]).is_file():
        raise UsageError(f"{printable(outdir)}: not a batch output folder (no summary.json or measurements.csv "
                         "written by `pancreas-dints segment`); give the folder passed to segment -o")
    cases = []
    for name in dict.fromkeys(names):
        folder = outdir / name
        if not name or "/" in name or "\\" in name or name in (".", "..") or not folder.is_dir():
            continue
        cases.append(load_case(folder))
    if not cases:
        raise UsageError(f"{printable(outdir)}: the batch lists no case folder with results (every case failed, "
                         "or the case folders were moved); nothing to review")
    return cases[:MAX_CASES]


def load_case(folder: Path) -> Case:
    """The case in ``folder`` with its review status and key numbers (corrected ones once corrected)."""
    case = Case(folder.name, folder)
    owned = CaseFolder(folder)
    if owned.manifest is None or not owned.has([LABELS, REPORT]):
        case.problem = (f"{printable(folder.name)}: no labels.nii.gz/report.json written by pancreas-dints here; "
                        "rerun segment for it")
        return case
    review = read_review(folder)
    if review:
        case.status = str(review.get("status", "not reviewed"))
        if labels_changed(folder, review):
            case.status += STALE_SUFFIX
            case.problem = (f"the review of {printable(str(review.get('time', '')))} was made on earlier labels: "
                            f"{LABELS} changed since (a rerun); the reviewer's files are kept; review the new labels")
    try:
        readout, _ = case_readout_of(folder, review)
    except InputError as exc:
        readout, case.problem = None, str(exc)
    row = csv_row(readout, case.name)
    case.numbers = {k: row.get(k, "") for k in KEY_COLUMNS}
    return case


def case_readout_of(folder: Path, review: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, str]:
    """(the read-out to show, where it comes from): the corrected labels' once a correction was saved, else
    report.json's."""
    review = review if review is not None else read_review(folder)
    if review and isinstance(review.get("readout"), dict) and not labels_changed(folder, review):
        return review["readout"], "corrected labels (review.json)"
    report = read_json(folder / REPORT)
    readout = report.get("readout") if isinstance(report, dict) else None
    return (readout if isinstance(readout, dict) else None), "report.json"


def lesion_centre(readout: dict[str, Any] | None) -> list[float] | None:
    """RAS centroid of the largest lesion component (where the views are centred), None without a lesion."""
    largest = ((readout or {}).get("lesion") or {}).get("largest") or {}
    centre = largest.get("centroid_ras")
    return [float(v) for v in centre] if isinstance(centre, list) and len(centre) == 3 else None


def labels_digest(folder: Path) -> str | None:
    """The sha256 the manifest records for the case's labels.nii.gz (None when not listed)."""
    entry = CaseFolder(folder).files.get(LABELS)
    return entry.get("sha256") if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None


def labels_changed(folder: Path, review: dict[str, Any] | None) -> bool:
    """The review was made on other labels than the case's labels.nii.gz now (a rerun replaced them): its
    recorded ``labels_sha256`` differs from the manifest's. Reviews saved before it was recorded: False."""
    made_on = (review or {}).get("labels_sha256")
    return isinstance(made_on, str) and made_on != labels_digest(folder)


def read_review(folder: Path) -> dict[str, Any] | None:
    """The case's review.json when the engine wrote it (listed unchanged in the manifest), else None."""
    owned = CaseFolder(folder)
    if REVIEW_NAME not in owned.files or not owned.has([REVIEW_NAME]) or not owned.owns(REVIEW_NAME):
        return None
    try:
        data = read_json(folder / REVIEW_NAME)
    except InputError:
        return None
    return data if isinstance(data, dict) else None


def segmentation_to_open(folder: Path) -> tuple[Path, bool]:
    """(the .seg.nrrd to show, whether it is the corrected one): a case reopens from its corrected file, unless
    that correction was made on earlier labels (then the current segmentation).

    InputError when the file is not the engine's (absent from the manifest, or changed since it was written)."""
    owned = CaseFolder(folder)
    stale = labels_changed(folder, read_review(folder))  # the correction is of earlier labels: show the new ones
    for name, corrected in ((CORRECTED_SEG, True), (SEGMENTATION, False))[1 if stale else 0:]:
        if name in owned.files and owned.has([name]) and owned.owns(name):
            return folder / name, corrected
    raise InputError(f"{printable(folder / SEGMENTATION)}: not the segmentation pancreas-dints wrote for this case "
                     "(missing, or changed since); rerun segment for this case")


def ct_source(folder: Path) -> CtSource:
    """The case's CT from its manifest; ``problem`` says why it cannot be shown (gone, changed, unknown)."""
    manifest = read_manifest(folder) or {}
    recorded = manifest.get("input")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("path"), str):
        return CtSource(None, problem="no input recorded for this case (older engine); read-only")
    path = Path(recorded["path"])
    kind = str(recorded.get("kind", "file"))
    series = None
    if kind == "folder":
        try:
            report = read_json(folder / REPORT)
            series = ((report.get("dicom_series") or {}).get("uid") if isinstance(report, dict) else None)
        except InputError:
            series = None
    if not path.exists():
        return CtSource(path, kind, series, f"the CT {printable(path)} is gone; read-only (restore it to edit)")
    try:
        same = input_identity(path) == recorded
    except OSError:
        same = False
    if not same:
        return CtSource(path, kind, series, f"the CT {printable(path)} changed since it was segmented; read-only "
                                            "(segment it again to review it)")
    return CtSource(path, kind, series if isinstance(series, str) else None)


def dicom_ct(source: CtSource) -> tuple[np.ndarray, np.ndarray]:
    """(HU data (X, Y, Z), RAS affine) of a DICOM CT through the engine's own reader (labels.nii.gz's grid)."""
    if source.path is None:
        raise InputError("no CT recorded for this case")
    volume = read_dicom_series(source.path, source.series_uid)
    return volume.data, volume.affine_ras
