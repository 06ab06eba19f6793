"""bf16 against the fp32 exact run, with the demo model: the demo phantom and the automatic-region mosaic.

    OMP_NUM_THREADS=1 python Testing/benchmarks/bf16_agreement.py [--cases phantom,mosaic] [--overlap 0.625]
        [--workdir DIR]

Per case, in one process (one thread): the fp32 exact run (``--mode exact``, whole volume: the bundle's labels,
tested against ``monai.bundle run``) is the reference, kept in ``--workdir`` and reused when there; against it
run the bf16 fast path on the whole volume (``whole-bf16``: what bf16 alone changes) and the CPU default run
(``default``: ``--precision auto`` with the automatic region; bf16 on this machine when it has bf16 hardware).
Reported per run: labels voxel-equal, Dice of the pancreas and of every lesion component of the reference
(in its box grown by 2 voxels), the read-out's numbers (measurements.csv's columns: lengths against the largest
voxel size, volumes in voxels, confidence scores against 0.02) and the confidence map (|difference| / 255: max,
99.9th percentile, mean). Targets (issue 36): labels >= 99.9 % equal, Dice >= 0.99, lengths within one voxel,
confidence within 0.02; if one is missed, ``auto`` must not pick bf16 (inference/precision.py). Last line: JSON.

The phantom is the demo's (``synthetic.demo``: seed 900001, "small", the demo's slice thickness); the mosaic is
``auto_region_check.py``'s main volume (4 x 4 x 5 tiles, its seeds) at ``--overlap`` (the released 0.625 by
default: a copy of the demo bundle with only the overlap changed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "PancreasDiNTS"
for p in (str(ENGINE), str(Path(__file__).resolve().parent)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
from auto_region_check import DEMO, FIRST_SEED, bundle_with_overlap, compare, make_volume  # noqa: E402

RUNS = {"ref": ("exact", "fp32", "whole"), "whole-bf16": ("fast", "bf16", "whole"), "default": ("fast", "auto", "auto")}
TARGETS = {"agreement": 0.999, "dice": 0.99, "length_voxels": 1.0, "confidence": 0.02}
LENGTHS = ("longest_axial_diameter_mm", "perpendicular_diameter_mm", "longest_3d_diameter_mm")
VOLUMES = ("pancreas_ml", "lesion_ml", "largest_lesion_ml")
SCORES = ("lesion_score_uncalibrated", "mean_confidence_pancreas", "mean_confidence_lesion")


def phantom_ct(work: Path) -> Path:
    """The demo's phantom CT (seed 900001), written as NIfTI."""
    import nibabel as nib
    from PancreasDiNTSLib.core.paths import DEMO_DEFAULT_SEED
    from PancreasDiNTSLib.synthetic.demo import PHANTOM_SIZE, PHANTOM_SLICE_MM
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    path = work / "phantom" / "ct.nii.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        hu, _, affine = make_phantom(DEMO_DEFAULT_SEED, size=PHANTOM_SIZE, tumour=True, slice_mm=PHANTOM_SLICE_MM)
        nib.save(nib.Nifti1Image(np.rint(hu).astype(np.int16), affine), path)
    return path


def mosaic_ct(work: Path) -> Path:
    """auto_region_check.py's main volume (the same tiles and seeds)."""
    n = (4, 4, 5)
    glands = {(0, n[1] - 1, 1): "gland", (n[0] // 2, n[1] // 2 - 1, n[2] // 2): "gland", (n[0] - 1, 0, n[2] - 1): "gland",
              (1, 1, 0): "none", (n[0] - 1, n[1] - 1, n[2] // 2): "none"}
    path = work / "main" / "ct.nii.gz"
    return path if path.exists() else make_volume(work / "main", n, glands, FIRST_SEED)  # type: ignore[arg-type]


def run(ct: Path, model: Path, mode: str, precision: str, region: str) -> dict[str, Any]:
    """One segment_case in this process: labels, confidence map, read-out row, seconds, what ran."""
    from PancreasDiNTSLib.inference.pipeline import CaseOptions, segment_case
    from PancreasDiNTSLib.inference.segmenter import Segmenter
    from PancreasDiNTSLib.model.loader import load_bundle
    from PancreasDiNTSLib.readout.combined import csv_row

    seg = Segmenter(load_bundle(model), "cpu", mode=mode, precision=precision)
    t0, c0 = time.perf_counter(), time.process_time()
    out = segment_case(ct, seg, CaseOptions(formats=("nifti",), report=False, readout=True, region=region))
    spacing = np.abs(np.linalg.svd(np.asarray(out.case.affine_ras)[:3, :3], compute_uv=False))
    return {"labels": out.labels, "confidence": out.confidence, "row": csv_row(out.readout),
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "precision": seg.precision.describe(),
            "voxel_mm": float(spacing.max()), "voxel_ml": float(np.prod(spacing)) / 1000.0}


def stored(ct: Path, model: Path, store: Path, how: tuple[str, str, str]) -> dict[str, Any]:
    """The run ``how`` = (mode, precision, region), from ``store`` when an earlier run left it there."""
    if not (store / "labels.npy").exists():
        ref = run(ct, model, *how)
        store.mkdir(parents=True, exist_ok=True)
        np.save(store / "labels.npy", ref["labels"])
        np.save(store / "confidence.npy", ref["confidence"])
        (store / "meta.json").write_text(json.dumps({k: v for k, v in ref.items()
                                                     if k not in ("labels", "confidence")}, default=str))
    meta = json.loads((store / "meta.json").read_text())
    return meta | {"labels": np.load(store / "labels.npy"), "confidence": np.load(store / "confidence.npy")}


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def readout_diff(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Per read-out number: the difference (lengths in voxels of the largest spacing, volumes in voxels)."""
    out: dict[str, Any] = {}
    for keys, scale in ((LENGTHS, ref["voxel_mm"]), (VOLUMES, ref["voxel_ml"]), (SCORES, 1.0)):
        for k in keys:
            a, b = _num(ref["row"].get(k)), _num(got["row"].get(k))
            out[k] = None if a is None or b is None else round(abs(a - b) / scale, 4)
            if (a is None) != (b is None):
                out[k] = "present in one run only"
    for k in ("lesion_count", "location_part", "size_category_by_size_only"):
        out[k + "_equal"] = ref["row"].get(k) == got["row"].get(k)
    out["unit"] = "lengths and volumes in voxels, scores as values"
    return out


def judge(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Labels, Dice, read-out and confidence map of ``got`` against the reference, and whether targets hold."""
    res = compare(ref["labels"], got["labels"])
    res.pop("parts_differing", None)
    diff = np.abs(ref["confidence"].astype(np.int16) - got["confidence"].astype(np.int16)) / 255.0
    res["confidence_map"] = {"max": float(diff.max()), "p99.9": float(np.quantile(diff, 0.999)),
                             "mean": float(diff.mean())}
    res["readout"] = readout_diff(ref, got)
    ro = res["readout"]
    lengths_ok = all(not isinstance(ro[k], str) and (ro[k] is None or ro[k] <= TARGETS["length_voxels"])
                     for k in LENGTHS)
    scores_ok = all(not isinstance(ro[k], str) and (ro[k] is None or ro[k] <= TARGETS["confidence"]) for k in SCORES)
    dice_ok = (res["voxels_whole"][0] == 0 or res["dice_pancreas"] >= TARGETS["dice"]) and \
        (res["dice_per_lesion_min"] is None or res["dice_per_lesion_min"] >= TARGETS["dice"])
    res["ok"] = {"labels": res["agreement"] >= TARGETS["agreement"], "dice": dice_ok, "lengths": lengths_ok,
                 "scores": scores_ok, "counts": bool(ro["lesion_count_equal"]),
                 "confidence_map_p99.9": res["confidence_map"]["p99.9"] <= TARGETS["confidence"]}
    res["seconds"], res["cpu_seconds"], res["precision"] = round(got["seconds"], 1), got.get("cpu_seconds"), \
        got["precision"]
    return res


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="phantom,mosaic")
    p.add_argument("--overlap", type=float, default=0.625, help="the mosaic's sliding-window overlap")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--runs", default="whole-bf16,default", help="the runs judged against the reference")
    p.add_argument("--only", choices=tuple(RUNS), help="compute (and keep in --workdir) this run only; a later "
                   "call judges the kept runs (each run can go in its own process, side by side)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="pdints-bf16-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"targets": TARGETS, "cases": {}}
    for case in args.cases.split(","):
        ct = phantom_ct(work) if case == "phantom" else mosaic_ct(work)
        model = DEMO if case == "phantom" else bundle_with_overlap(DEMO, args.overlap, work)
        tag = f"{case}_{'demo' if case == 'phantom' else args.overlap}"
        if args.only:
            stored(ct, model, work / f"{args.only}_{tag}", RUNS[args.only])
            continue
        ref = stored(ct, model, work / f"ref_{tag}", RUNS["ref"])
        row: dict[str, Any] = {"ct": str(ct), "shape": list(ref["labels"].shape), "reference_s": ref["seconds"],
                               "reference_cpu_s": ref.get("cpu_seconds")}
        for name in args.runs.split(","):
            row[name] = judge(ref, stored(ct, model, work / f"{name}_{tag}", RUNS[name]))
            print(f"[{case}] {name}: " + json.dumps(row[name], default=str), file=sys.stderr, flush=True)
        summary["cases"][case] = row
    summary["all_ok"] = all(all(r[n]["ok"].values()) for r in summary["cases"].values()
                            for n in ("whole-bf16", "default") if n in r)
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
