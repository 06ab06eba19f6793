"""Evaluating a model folder on a datalist split: Dice as the bundle reports it, HD95 and volumes.

Predictions come from the engine's exact inference path (:class:`.inference.Segmenter`: the model's
``inference.yaml`` preprocessing, sliding window, inversion to the original grid). Dice is MONAI's
``compute_dice`` with ``include_background=False`` on one-hot labels in the original image space (the bundle's
``evaluate.yaml`` computes it after ``Invertd`` too); a class absent from the reference gives NaN for that case
and the mean follows MONAI ``MeanDice``: per case the mean of its valid classes, then the mean over cases.
HD95 (mm) is MONAI's ``compute_hausdorff_distance(percentile=95)`` with the voxel spacing; volumes are in mL.
Outputs: ``EVAL/metrics.csv`` (one row per case), ``EVAL/summary.json``, a printed table, optionally the
predicted label maps.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.core.atomic import write_text_atomic
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.core.progress import Progress
from PancreasDiNTSLib.core.terminology import METRIC_KEYS
from PancreasDiNTSLib.inference.pipeline import CaseOptions, segment_case
from PancreasDiNTSLib.inference.segmenter import Segmenter
from PancreasDiNTSLib.io.images import LoadedImage, load_nifti
from PancreasDiNTSLib.io.writers import save_nifti
from PancreasDiNTSLib.model.loader import load_bundle
from PancreasDiNTSLib.training.data import case_id, check_cases, load_datalist

CLASSES = METRIC_KEYS  # label -> key in metric names (dice_<key>): the terminology's one spelling
CSV_FIELDS = (["case"] + [f"dice_{k}" for k in CLASSES.values()] + [f"hd95_{k}_mm" for k in CLASSES.values()]
              + [f"volume_{k}{ref}_ml" for k in CLASSES.values() for ref in ("", "_ref")] + ["seconds"])


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """Dice of classes 1..C-1 (NaN where the reference lacks the class), as MONAI compute_dice."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    p = one_hot(torch.as_tensor(pred.astype(np.int64))[None, None], num_classes)
    r = one_hot(torch.as_tensor(ref.astype(np.int64))[None, None], num_classes)
    return compute_dice(p, r, include_background=False).double().numpy()[0]


def hd95_per_class(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], num_classes: int = 3) -> np.ndarray:
    """95th-percentile Hausdorff distance in mm per foreground class (NaN when either mask is empty)."""
    from monai.metrics import compute_hausdorff_distance
    from monai.networks.utils import one_hot

    out = np.full(num_classes - 1, np.nan)
    for k in range(1, num_classes):
        if not (pred == k).any() or not (ref == k).any():
            continue
        p = one_hot(torch.as_tensor((pred == k).astype(np.int64))[None, None], 2)
        r = one_hot(torch.as_tensor((ref == k).astype(np.int64))[None, None], 2)
        value = compute_hausdorff_distance(p, r, include_background=False, percentile=95,
                                           spacing=[float(s) for s in spacing])
        out[k - 1] = float(value.reshape(-1)[0])
    return out


def bundle_mean_dice(per_case: np.ndarray) -> float:
    """MONAI MeanDice reduction of a (cases x classes) matrix with NaNs: mean of per-case class means."""
    per_case = np.asarray(per_case, dtype=float)
    if per_case.size == 0:
        return float("nan")
    valid = ~np.isnan(per_case)
    counts = valid.sum(1)
    case_means = np.where(counts > 0, np.where(valid, per_case, 0).sum(1) / np.maximum(counts, 1), np.nan)
    return float(np.nanmean(case_means)) if (counts > 0).any() else float("nan")


def predict_case(segmenter: Segmenter, image_path: str) -> tuple[np.ndarray, LoadedImage]:
    """Labels on the grid of the image file, and the loaded image: pipeline.segment_case, nothing written."""
    outcome = segment_case(Path(image_path), segmenter, CaseOptions(formats=(), report=False, readout=False))
    return outcome.labels, outcome.case


def _load_reference(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Label voxels in file order (as MONAI's NibabelReader gives the image) and the affine."""
    img = load_nifti(path)
    return np.asarray(np.asanyarray(img.dataobj)).astype(np.int64).reshape(img.shape[:3]), img.affine


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "std": float(arr.std()), "n": int(arr.size)}


def evaluate(
    model: str | Path,
    datalist: str | Path,
    out_dir: str | Path,
    split: str = "testing",
    device: str = "auto",
    dataset_dir: str | Path | None = None,
    progress: Progress | None = None,
    sw_batch_size: int | None = None,
    save_predictions: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``split`` of ``datalist``; writes metrics.csv and summary.json in ``out_dir``."""
    t0 = time.perf_counter()
    progress = progress or Progress("none")
    datalist = Path(datalist).resolve()  # once: a relative --datalist is taken from the working folder
    bundle = load_bundle(model)
    items = load_datalist(datalist, split, base_dir=dataset_dir, need_labels=True)
    num_classes = bundle.network.num_classes
    check_cases(items, num_classes=num_classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(bundle, device=device, sw_batch_size=sw_batch_size)
    progress.total = len(items)
    rows: list[dict[str, Any]] = []
    dice_matrix = []
    for i, item in enumerate(items):
        name = case_id(item)
        progress.start_item(i)
        progress.update(name, "infer", 0.0)
        tc = time.perf_counter()
        pred, loaded = predict_case(segmenter, item["image"])
        ref, ref_affine = _load_reference(item["label"])
        if pred.shape != ref.shape:
            raise InputError(f"{name}: prediction grid {pred.shape} differs from label {item['label']} {ref.shape}")
        spacing = tuple(float(s) for s in np.sqrt((ref_affine[:3, :3] ** 2).sum(0)))
        voxel_ml = float(abs(np.linalg.det(ref_affine[:3, :3]))) / 1000.0
        dice = dice_per_class(pred, ref, num_classes)
        hd = hd95_per_class(pred, ref, spacing, num_classes)
        dice_matrix.append(dice)
        row: dict[str, Any] = {"case": name}
        for k, cname in CLASSES.items():
            if k >= num_classes:
                continue
            row[f"dice_{cname}"] = float(dice[k - 1])
            row[f"hd95_{cname}_mm"] = float(hd[k - 1])
            row[f"volume_{cname}_ml"] = float((pred == k).sum() * voxel_ml)
            row[f"volume_{cname}_ref_ml"] = float((ref == k).sum() * voxel_ml)
        row["seconds"] = round(time.perf_counter() - tc, 2)
        rows.append(row)
        if save_predictions:
            save_nifti(out / "predictions" / f"{name}.nii.gz", pred.astype(np.uint8), ref_affine, np.uint8)
        progress.update(name, "done", 1.0, f"Dice {_fmt(row.get('dice_pancreas'), 3)} / {_fmt(row.get('dice_tumour'), 3)}")
        progress.emit({"stage": "case", "case": name, **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                          for k, v in row.items() if k != "case"}})

    _write_csv(out / "metrics.csv", rows)

    summary: dict[str, Any] = {
        "model": str(Path(model)),
        "model_name": bundle.name,
        "datalist": str(datalist),
        "split": split,
        "cases": len(rows),
        "mean_dice": _none_if_nan(bundle_mean_dice(np.asarray(dice_matrix).reshape(len(rows), -1))),
        "metric": "MONAI compute_dice, include_background=False, original image space; MeanDice reduction",
        "device": str(segmenter.device),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    for cname in CLASSES.values():
        if f"dice_{cname}" in (rows[0] if rows else {}):
            summary[f"dice_{cname}"] = _stats([r[f"dice_{cname}"] for r in rows])
            summary[f"hd95_{cname}_mm"] = _stats([r[f"hd95_{cname}_mm"] for r in rows])
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    progress.emit({"stage": "summary", **{k: v for k, v in summary.items() if not isinstance(v, dict)}})
    progress.close()
    summary["rows"] = rows
    return summary


def _write_csv(dest: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) if k != "case" else row[k] for k in CSV_FIELDS})
    write_text_atomic(dest, buf.getvalue())


def _none_if_nan(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of the per-case rows and the means."""
    head = f"{'case':<22}{'Dice panc':>10}{'Dice tum':>10}{'HD95 panc':>11}{'HD95 tum':>10}{'vol panc':>10}{'ref':>8}"
    lines = [head, "-" * len(head)]
    for r in summary["rows"]:
        lines.append(f"{r['case'][:21]:<22}{_fmt(r.get('dice_pancreas'), 3):>10}{_fmt(r.get('dice_tumour'), 3):>10}"
                     f"{_fmt(r.get('hd95_pancreas_mm'), 1):>11}{_fmt(r.get('hd95_tumour_mm'), 1):>10}"
                     f"{_fmt(r.get('volume_pancreas_ml'), 1):>10}{_fmt(r.get('volume_pancreas_ref_ml'), 1):>8}")
    lines.append("-" * len(head))

    def mean(key: str) -> str:
        s = summary.get(key) or {}
        return _fmt(s.get("mean"), 3)

    lines.append(f"{'mean':<22}{mean('dice_pancreas'):>10}{mean('dice_tumour'):>10}{mean('hd95_pancreas_mm'):>11}"
                 f"{mean('hd95_tumour_mm'):>10}")
    md = summary.get("mean_dice")
    lines.append(f"mean foreground Dice (bundle metric): {_fmt(md, 4) or 'n/a'} over {summary['cases']} case(s)")
    return "\n".join(lines)
