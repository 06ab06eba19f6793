"""Saving a review: accepted, rejected (with a reason) or corrected labels, for one case folder.

A corrected save writes ``labels_corrected.nii.gz`` with the header, affine and voxel order of the case's
``labels.nii.gz`` (the corrected array must already be in that file's index order), the corrected
``.seg.nrrd`` through the caller's writer (the scene layer: Slicer keeps segment names, colours, terminology),
and ``review.json`` with the read-out recomputed on the corrected labels, voxels added and removed and Dice per
segment. Every file is written atomically through the case folder's manifest (core.ownership), so a later
rerun or review may replace them and a user's file of the same name is never overwritten; the original outputs
are never touched. Saves of one case are serialised by the case folder's lock (core.atomic.folder_lock): with two browsers on one case the last save
wins and both are kept in ``review.json``'s history. ``OUTDIR/review.csv`` summarises the batch after each save.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..core.atomic import folder_lock, write_text_atomic
from ..core.errors import InputError, OutputError, UsageError, printable
from ..core.ownership import CaseFolder
from ..core.paths import OUTPUT_NAMES
from ..core.terminology import SEGMENTS
from ..core.tracking import case_tracking
from ..readout.combined import case_readout
from .batch import (
    CORRECTED_LABELS,
    CORRECTED_SEG,
    LABELS,
    REPORT,
    REVIEW_CSV,
    REVIEW_NAME,
    batch_cases,
    labels_changed,
    labels_digest,
    read_json,
    read_review,
)

SCHEMA = "pancreas-dints.review/1"
MAX_TEXT = 500  # reviewer name and reason: characters kept
MAX_HISTORY = 100
SAVED_STATUSES = ("accepted", "corrected", "rejected")
CSV_COLUMNS = ("case", "status", "reviewer", "time", "reason") + tuple(
    f"{k}_{s.key}" for s in SEGMENTS for k in ("dice", "added", "removed")) + (
    "pancreas_ml", "lesion_ml", "saves")


@dataclass
class ReviewInput:
    """What a reviewer decided; ``labels`` (corrected, on labels.nii.gz's grid and index order) and
    ``write_segmentation`` (writes the corrected .seg.nrrd to the path it is given) only for "corrected"."""

    status: str
    reviewer: str
    reason: str = ""
    labels: np.ndarray | None = None
    write_segmentation: Callable[[Path], Any] | None = None


def load_labels(path: Path) -> nib.Nifti1Image:
    """A NIfTI label file (InputError, one line, when it is not one)."""
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for a bad file
        raise InputError(f"{printable(path)}: not a readable NIfTI file ({type(exc).__name__})") from None
    if not isinstance(image, nib.Nifti1Image):
        raise InputError(f"{printable(path)}: not a NIfTI-1 file")
    return image


def compare(original: np.ndarray, corrected: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per segment: voxels before and after, voxels added and removed, Dice of original vs corrected."""
    out = {}
    for info in SEGMENTS:
        a, b = original == info.label, corrected == info.label
        na, nb, both = int(a.sum()), int(b.sum()), int(np.logical_and(a, b).sum())
        out[info.key] = {"segment": info.name, "voxels_original": na, "voxels_corrected": nb,
                         "added": nb - both, "removed": na - both,
                         "dice": 1.0 if na + nb == 0 else round(2.0 * both / (na + nb), 6)}
    return out


def _clean(text: str) -> str:
    return printable(" ".join(str(text).split()))[:MAX_TEXT]


def _check_input(review: ReviewInput, shape: tuple[int, ...]) -> None:
    if review.status not in SAVED_STATUSES:
        raise UsageError(f"review status {review.status!r}: use one of {', '.join(SAVED_STATUSES)}")
    if review.status == "rejected" and not _clean(review.reason):
        raise UsageError("a rejection needs a reason (what is wrong with the segmentation)")
    if review.status != "corrected":
        return
    if review.labels is None or review.write_segmentation is None:
        raise UsageError("a corrected review needs the corrected labels and a segmentation writer")
    if tuple(review.labels.shape) != shape:
        raise InputError(f"corrected labels of shape {tuple(review.labels.shape)} are not on the grid of "
                         f"labels.nii.gz {shape}; export them on that grid")
    extra = set(np.unique(review.labels).tolist()) - {0, *(s.label for s in SEGMENTS)}
    if extra:
        raise InputError(f"corrected labels hold values {sorted(extra)}; only 0 and "
                         f"{', '.join(str(s.label) for s in SEGMENTS)} are segments of this model")


def _write_labels(dest: Path, labels: np.ndarray, original: nib.Nifti1Image) -> None:
    """``labels`` with exactly the original's header, affine, qform/sform and dtype (``dest`` is the case
    folder's staging name: CaseFolder.write renames it into place)."""
    header = original.header.copy()
    image = nib.Nifti1Image(np.asarray(labels, dtype=header.get_data_dtype()), original.affine, header)
    image.set_qform(*original.get_qform(coded=True))
    image.set_sform(*original.get_sform(coded=True))
    nib.save(image, str(dest))


def _write_with(writer: Callable[[Path], Any]) -> Callable[[Path], None]:
    def write(dest: Path) -> None:
        writer(dest)
        if not dest.is_file() or dest.stat().st_size == 0:
            raise OutputError(f"{printable(dest)}: the segmentation writer wrote nothing")
    return write


def corrected_readout(folder: Path, labels: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """The read-out on the corrected labels (confidence from the case's confidence map when there is one; the
    model's lesion score is kept from the original report: correcting labels does not change it)."""
    owned = CaseFolder(folder)
    confidence = None
    name = OUTPUT_NAMES["confidence"]
    if name in owned.files and owned.has([name]):
        conf = np.asarray(load_labels(folder / name).dataobj)
        confidence = conf if conf.dtype == np.uint8 and conf.shape == labels.shape else None
    out = case_readout(labels, affine, confidence_map=confidence,
                       confidence_reason="no confidence map for this case")
    try:
        before = read_json(folder / REPORT).get("readout", {})
    except (InputError, AttributeError):
        before = {}
    key = (before.get("tracking") or {}).get("case_key") if isinstance(before, dict) else None
    if key:  # the same case: the same tracking UIDs (core.tracking)
        out["tracking"] = case_tracking(str(key), out)
    if out.get("confidence"):
        try:
            original = before.get("confidence", {}).get("lesion_score")
        except AttributeError:
            original = None
        if isinstance(original, dict):
            out["confidence"]["lesion_score"] = original | {"note": "the model's score, kept from report.json"}
    return out


def _record(folder: Path, review: ReviewInput, changes: dict[str, Any], readout: dict[str, Any] | None,
            now: datetime) -> dict[str, Any]:
    """review.json's content; ``readout`` (and the corrected files) when the decision is on corrected labels."""
    previous = read_review(folder) or {}
    history = [h for h in previous.get("history", []) if isinstance(h, dict)]
    if previous:
        history.append({k: previous.get(k) for k in ("status", "reviewer", "time", "reason", "labels_sha256", "changes")})
    return {
        "schema": SCHEMA, "case": folder.name, "status": review.status, "reviewer": _clean(review.reviewer),
        "time": now.isoformat(timespec="seconds"), "reason": _clean(review.reason),
        "original": LABELS, "labels_sha256": labels_digest(folder),
        "files": [CORRECTED_LABELS, CORRECTED_SEG] if readout is not None else [],
        "changes": changes, "readout": readout, "history": history[-MAX_HISTORY:],
    }


def _decided_labels(folder: Path, owned: CaseFolder, review: ReviewInput, before: np.ndarray,
                    original: nib.Nifti1Image) -> tuple[np.ndarray, dict[str, Any] | None]:
    """(the labels the decision is about, their read-out or None for the original labels): a correction's labels;
    for Accept/Reject the earlier correction when there is one (a case reopens from it, so it is on screen)."""
    if review.status == "corrected" and review.labels is not None:
        after = np.asarray(review.labels)
        return after, corrected_readout(folder, after, original.affine)
    current = not labels_changed(folder, read_review(folder))  # a correction of earlier labels is not on screen
    if current and owned.has([CORRECTED_LABELS, CORRECTED_SEG]) and owned.owns(CORRECTED_LABELS):
        after = np.asarray(load_labels(folder / CORRECTED_LABELS).dataobj)
        if after.shape == before.shape:
            earlier = (read_review(folder) or {}).get("readout")
            return after, earlier if isinstance(earlier, dict) else corrected_readout(folder, after, original.affine)
    return before, None


def save_review(folder: Path, review: ReviewInput, now: datetime | None = None) -> dict[str, Any]:
    """Record a review of the case in ``folder`` (see the module docstring); returns review.json's content.

    InputError when labels.nii.gz is not the engine's unchanged file; OutputError when a corrected file's name
    holds a user's file; nothing is written before every check has passed."""
    folder = Path(folder)
    now = now or datetime.now(timezone.utc)
    with folder_lock(folder):  # one review save of this case at a time (CaseFolder itself locks OUTDIR)
        probe = CaseFolder(folder)
        if probe.manifest is None or not probe.has([LABELS]) or not probe.owns(LABELS):
            raise InputError(f"{printable(folder / LABELS)}: not the labels pancreas-dints wrote for this case (or "
                             "changed since); nothing saved")
        owned = CaseFolder(folder, identity=probe.manifest.get("input"), case=str(probe.manifest.get("case", "")),
                           for_review=True)
        original = load_labels(folder / LABELS)
        before = np.asarray(original.dataobj)
        _check_input(review, before.shape)
        names = [REVIEW_NAME] + ([CORRECTED_LABELS, CORRECTED_SEG] if review.status == "corrected" else [])
        taken = owned.conflicts(names)
        if taken:
            raise OutputError(f"{printable(folder / taken[0])}: not written by pancreas-dints (or changed since); "
                              "move it away to save the review")
        after, readout = _decided_labels(folder, owned, review, before, original)
        record = _record(folder, review, compare(before, after), readout, now)
        owned.begin(names)
        if review.status == "corrected" and review.write_segmentation is not None:
            owned.write(CORRECTED_LABELS, lambda dest: _write_labels(dest, after, original))
            owned.write(CORRECTED_SEG, _write_with(review.write_segmentation))
        text = json.dumps(record, indent=1, default=float) + "\n"
        owned.write(REVIEW_NAME, lambda dest: dest.write_text(text, encoding="utf-8"))
        owned.finish(list(owned.files))
    write_review_csv(folder.parent)
    return record


def review_csv(outdir: Path) -> str:
    """review.csv: one row per case of the batch (not reviewed ones too)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for case in batch_cases(outdir):
        record = read_review(case.folder) or {}
        row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
        row.update(case=case.name, status=case.status, saves=len(record.get("history", [])) + bool(record),
                   pancreas_ml=case.numbers.get("pancreas_ml", ""), lesion_ml=case.numbers.get("lesion_ml", ""))
        row.update({k: record.get(k, "") for k in ("reviewer", "time", "reason")})
        for key, change in (record.get("changes") or {}).items():
            for k in ("dice", "added", "removed"):
                if f"{k}_{key}" in row and isinstance(change, dict):
                    row[f"{k}_{key}"] = change.get(k, "")
        writer.writerow(row)
    return buffer.getvalue()


def write_review_csv(outdir: Path) -> bool:
    """Write OUTDIR/review.csv atomically; an existing file is replaced only when it is the engine's (its
    first line); False (nothing written) when a user's file holds that name."""
    dest = Path(outdir) / REVIEW_CSV
    header = ",".join(CSV_COLUMNS)
    with folder_lock(Path(outdir)):
        if dest.exists() or dest.is_symlink():
            try:
                with dest.open(encoding="utf-8") as fh:
                    ours = dest.is_file() and not dest.is_symlink() and fh.readline().rstrip("\n") == header
            except (OSError, UnicodeDecodeError):
                ours = False
            if not ours:
                return False
        write_text_atomic(dest, review_csv(outdir))
    return True


def after_rerun(outdir: Path, folders: list[Path]) -> list[str]:
    """After `segment` wrote into ``folders``: one line per case whose review was made on labels the run has
    replaced (the reviewer's files are kept), and OUTDIR/review.csv rebuilt when the engine's one is there."""
    lines = []
    for folder in folders:
        review = read_review(folder)
        if review and labels_changed(folder, review):
            lines.append(f"{printable(folder.name)}: its review ({printable(str(review.get('status')))}, "
                         f"{printable(str(review.get('time')))}) was made on the earlier labels; the reviewer's "
                         "files are kept and the case shows as not reviewed on the new labels")
    if (Path(outdir) / REVIEW_CSV).is_file():
        with contextlib.suppress(UsageError, InputError, OSError):
            write_review_csv(Path(outdir))
    return lines
