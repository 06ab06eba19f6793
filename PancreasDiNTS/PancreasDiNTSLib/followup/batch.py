"""The `compare` driver: one pair or a CSV of pairs; a side that is a CT (not a case folder) is segmented first.

A batch writes each pair into OUTDIR/<name>/ and, next to them, ``compare-summary.json`` and ``compare.csv`` (one
row per pair: status, categories, residual); a pair that is refused or fails is recorded with its one-line reason
and the others go on (exit 1 at the end).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import write_text_atomic
from ..core.errors import InputError, OutputError, PancreasDiNTSError, UsageError, printable
from ..core.ownership import CaseFolder, input_identity
from ..core.terminology import LESION_LABEL, PANCREAS_LABEL
from ..core.tracking import case_key, case_tracking
from ..inference.batch import SegmentSettings, run_segment
from ..io.writers import save_nifti, write_report
from ..readout.combined import case_readout
from . import grids
from .cases import LABELS_NAME, REPORT_NAME
from .compare import compare

SUMMARY_NAME = "compare-summary.json"
CSV_NAME = "compare.csv"
CSV_COLUMNS = ("name", "prior", "current", "status", "recist", "volumetric", "new", "no_longer_seen",
               "residual_mm", "message")
MAX_PAIRS = 10000
RESERVED = {SUMMARY_NAME, CSV_NAME, "segmented", "sides"}  # names in OUTDIR that a pair's folder may not take


@dataclass
class Segmenting:
    """How a side given as a CT is segmented first (the `segment` options that matter here)."""

    model: str = "official"
    device: str = "auto"
    done: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def is_case_folder(path: Path) -> bool:
    return path.is_dir() and (path / REPORT_NAME).is_file()


def resolve_side(path: Path, role: str, out_dir: Path, seg: Segmenting) -> Path:
    """The case folder of a side: ``path`` itself, or the folder `segment` writes for a CT under
    OUTDIR/segmented/."""
    if is_case_folder(path):
        return path
    if not path.exists():
        raise InputError(f"{role} {printable(path)}: not found")
    key = str(path.resolve())
    if key not in seg.done and key not in seg.failed:
        segment_first([path], out_dir, seg)
    if key in seg.done:
        return seg.done[key]
    raise InputError(f"{role} {printable(path)}: segmentation failed ({seg.failed.get(key) or 'no case'})")


def segment_first(paths: list[Path], out_dir: Path, seg: Segmenting) -> None:
    """Segment every CT among ``paths`` (not case folders, not done yet) in one `segment` run into
    OUTDIR/segmented/ (the model loads once for a whole batch); record each one's case folder or failure."""
    todo = sorted({str(p.resolve()) for p in paths if p.exists() and not is_case_folder(p)} - set(seg.done)
                  - set(seg.failed))
    if not todo:
        return
    summary = run_segment(SegmentSettings(inputs=tuple(todo), out_dir=out_dir / "segmented", model=seg.model,
                                          device=seg.device, formats=("nifti",), progress="none"))
    for result in summary.results:
        key = str(Path(result.input).resolve())
        if result.status != "failed" and result.output_dir:
            seg.done[key] = Path(result.output_dir)
        else:
            seg.failed[key] = result.message or result.status


def side_from_files(ct: Path, labels: Path, role: str, out_dir: Path) -> Path:
    """A case folder OUTDIR/sides/<role>/ for a CT whose label map is given (pancreas 1, lesion 2; e.g. exported
    from Slicer): the labels on the CT's grid (nearest neighbour), report.json with the read-out and its tracking,
    written through the folder's manifest. Refused (one line) when a file cannot be read or holds other values."""
    import SimpleITK as sitk

    images = []
    for what, path in (("CT", ct), ("labels", labels)):
        try:
            images.append(sitk.ReadImage(str(path)))
        except RuntimeError:
            raise InputError(f"{role} {what} {printable(path)}: cannot be read (NIfTI, NRRD or MetaImage)") from None
    ref = sitk.Cast(images[0], sitk.sitkFloat32)
    lab = grids.from_image(sitk.Resample(images[1], ref, sitk.Transform(3, sitk.sitkIdentity),
                                         sitk.sitkNearestNeighbor, 0))[0]
    values = set(np.unique(lab).tolist())
    if not values <= {0, PANCREAS_LABEL, LESION_LABEL}:
        raise InputError(f"{role} labels {printable(labels)}: values {sorted(values)}; a label map holds 0, "
                         f"{PANCREAS_LABEL} (pancreas) and {LESION_LABEL} (lesion)")
    _, affine = grids.from_image(ref)
    labels_u8 = np.ascontiguousarray(lab.astype(np.uint8))
    readout = case_readout(labels_u8, affine, confidence_reason="labels given with the CT (no probabilities)")
    readout["tracking"] = case_tracking(case_key(None, [ct]), readout)
    report = {"case": role, "input": str(ct.resolve()), "input_format": "file", "labels_given": str(labels),
              "shape": list(labels_u8.shape), "readout": readout}
    folder = CaseFolder(out_dir / "sides" / role, input_identity(ct), role)
    names = [LABELS_NAME, REPORT_NAME]
    if folder.conflicts(names):
        raise OutputError(f"{printable(folder.path)}: holds files pancreas-dints did not write; choose another OUTDIR")
    folder.begin(names)
    folder.write(LABELS_NAME, lambda tmp: save_nifti(Path(tmp), labels_u8, affine, np.uint8))
    folder.write(REPORT_NAME, lambda tmp: write_report(Path(tmp), report))
    folder.finish(keep=names)
    return folder.path


def run_one(prior: Path, current: Path, out_dir: Path, formats: list[str], seg: Segmenting,
            prior_labels: Path | None = None, current_labels: Path | None = None) -> dict[str, Any]:
    """One pair into OUTDIR: each side a case folder, a CT with its label map, or a CT segmented first (both
    in one `segment` run)."""
    segment_first([p for p, labels in ((prior, prior_labels), (current, current_labels)) if labels is None],
                  out_dir, seg)
    sides = [side_from_files(path, labels, role, out_dir) if labels is not None
             else resolve_side(path, role, out_dir, seg)
             for role, path, labels in (("prior", prior, prior_labels), ("current", current, current_labels))]
    return compare(sides[0], sides[1], out_dir, formats)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:64]


def read_pairs(csv_path: Path) -> list[tuple[str, Path, Path]]:
    """(name, prior, current) of each row of a pairs CSV (columns prior, current and optionally name; relative
    paths are relative to the CSV's folder)."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"--pairs {printable(csv_path)}: cannot be read ({exc.strerror or exc})") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"prior", "current"} <= set(rows[0]):
        raise UsageError(f"--pairs {printable(csv_path)}: needs a header with the columns prior,current (and "
                         "optionally name) and at least one row")
    if len(rows) > MAX_PAIRS:
        raise UsageError(f"--pairs {printable(csv_path)}: {len(rows)} rows, at most {MAX_PAIRS}")
    out, seen = [], set()
    for n, row in enumerate(rows, start=2):
        prior, current = (row.get("prior") or "").strip(), (row.get("current") or "").strip()
        if not prior or not current:
            raise UsageError(f"--pairs {printable(csv_path)} line {n}: prior and current are both needed")
        name = _safe((row.get("name") or "").strip()) or f"pair_{n - 1:04d}"
        if name in RESERVED:
            raise UsageError(f"--pairs {printable(csv_path)} line {n}: the name {name!r} is taken by compare's own "
                             "files; choose another")
        if name in seen:
            raise UsageError(f"--pairs {printable(csv_path)} line {n}: the name {name!r} is used twice")
        seen.add(name)
        base = csv_path.parent
        out.append((name, base / Path(prior).expanduser(), base / Path(current).expanduser()))
    return out


def _row(name: str, prior: Path, current: Path, result: dict[str, Any] | None, message: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
    row.update(name=name, prior=str(prior), current=str(current), status="ok" if result else "failed",
               message=message)
    if result:
        kinds = [f["status"] for f in result["lesions"]]
        row.update(recist=result["response"]["recist"]["category"],
                   volumetric=result["response"]["volumetric"]["category"], new=kinds.count("new"),
                   no_longer_seen=kinds.count("no longer seen"),
                   residual_mm=result["alignment"]["mean_surface_distance_mm"])
    return row


def check_tables(out_dir: Path) -> None:
    """Refuse (before any work) to replace a compare-summary.json / compare.csv that pancreas-dints did not write."""
    header = ",".join(CSV_COLUMNS)
    for name, ours in ((SUMMARY_NAME, lambda t: t.lstrip().startswith('{\n  "pairs"')),
                       (CSV_NAME, lambda t: t.startswith(header))):
        path = out_dir / name
        if path.exists():
            try:
                text = path.read_text(encoding="utf-8")[:4096]
            except (OSError, UnicodeDecodeError):
                text = ""
            if not ours(text):
                raise OutputError(f"{printable(path)}: exists and was not written by pancreas-dints compare; "
                                  "choose another output folder")


def run_pairs(pairs: list[tuple[str, Path, Path]], out_dir: Path, formats: list[str], seg: Segmenting
              ) -> list[dict[str, Any]]:
    """Compare every pair into OUTDIR/<name>/; write the summary and the CSV; return the rows."""
    check_tables(out_dir)
    segment_first([p for _, prior, current in pairs for p in (prior, current)], out_dir, seg)
    rows = []
    for name, prior, current in pairs:
        try:
            p = resolve_side(prior, "prior", out_dir, seg)
            c = resolve_side(current, "current", out_dir, seg)
            result = compare(p, c, out_dir / name, formats)
            rows.append(_row(name, prior, current, result, ""))
        except PancreasDiNTSError as exc:
            rows.append(_row(name, prior, current, None, str(exc)))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / SUMMARY_NAME, json.dumps({"pairs": rows}, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / CSV_NAME, buf.getvalue())
    return rows
