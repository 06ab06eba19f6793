"""The automatic pancreas region (``segment --region auto``) against the whole-volume run, end to end.

    OMP_NUM_THREADS=1 python Testing/benchmarks/auto_region_check.py [--overlaps 0.5,0.625] [--filler mixed|fat|...]
        [--skip-adversarial | --skip-main]

The trained model available offline is the demo model (trained on small phantoms, fine-tuned on mosaics of
them), so the CT is a mosaic (``synthetic.mosaic``) of tiles of 128 x 128 x 60 voxels at 0.8 x 0.8 x 1 mm
(``--tiles`` x, y, z; 4 x 4 x 5 tiles = 41 x 41 x 30 cm, the size of a whole-abdomen CT): five phantoms, three with
a gland and a lesion (one near a corner, one inside, one at the volume's border) and two whose gland is painted
over with tissue drawn from around it; every other tile is abdominal fat, a fat/soft-tissue texture or a gland-less
phantom (``--filler mixed``, drawn 1 : 1 : 2; body everywhere, so no window of the volume is constant and the whole
run computes every window). The tile seeds (720001 on) are none of the demo model's training, fine-tuning or
held-out seeds. Each run is ``pancreas-dints benchmark --skip-bundle --modes fast,fast+auto`` (separate processes,
1 CPU thread, the same input): the whole-volume fast run (whose labels equal the exact MONAI run's: test_fastpath,
test_engine_equality; ``--exact`` adds the exact run itself) against the automatic region. Reported per case:
labels equal over the whole volume, Dice against the whole run for the pancreas and for every lesion component of
the whole run, the end-to-end speed-up (read .. write; wall clock, and CPU seconds, which a busy shared machine
does not inflate), the windows each pass ran (coarse + confirmation + dense / whole run), the coarse parts found
and confirmed, and every part of the whole run (pancreas and lesion together) that the region run does not label
alike (``parts_differing``: size, lesion voxels, box).

``--overlaps``: the demo model's own sliding-window overlap (0.5: every voxel is seen by about 8 windows) and the
released bundle's (0.625, about 19 windows: a copy of the demo bundle with only ``inferer.overlap`` changed).

The adversarial set (smaller volumes, 2 x 2 x 2 or 3 x 3 x 1 tiles): a lesion without its gland, two glands far
apart, and a gland cut by the volume's edge; each must match the whole run (or report a fallback).

Targets (issue 22): labels >= 99.99 % equal, Dice >= 0.99 for the pancreas and every lesion, speed-up >= 4x. The
table is printed, and the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "PancreasDiNTS"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

import numpy as np  # noqa: E402
from PancreasDiNTSLib.synthetic.mosaic import TILE_SHAPE, TILE_SPACING, make_mosaic  # noqa: E402

DEMO = ENGINE / "PancreasDiNTSLib" / "resources" / "models" / "demo"
FIRST_SEED = 720001  # not a seed of the demo model's training, fine-tuning or held-out phantoms
TARGETS = {"agreement": 0.9999, "dice": 0.99, "speedup": 4.0}


def make_volume(dest: Path, tiles: tuple[int, int, int], glands: dict[tuple[int, int, int], str], seed: int,
                crop_x: int = 0, filler: str = "mixed") -> Path:
    """A mosaic CT (``synthetic.mosaic.make_mosaic``: NIfTI, RAS, 0.8 x 0.8 x 1 mm) with the tile kinds of
    ``glands``, the other tiles ``filler``; ``crop_x`` voxels cut off the low-x side (a gland cut by the edge)."""
    import nibabel as nib

    image, _, affine = make_mosaic(tiles, glands, seed, filler=filler, crop_x=crop_x)
    path = dest / "ct.nii.gz"
    dest.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.rint(image).astype(np.int16), affine), path)
    return path


def bundle_with_overlap(model: Path, overlap: float, work: Path) -> Path:
    """``model`` as is, or a copy whose ``inferer.overlap`` is ``overlap`` (nothing else changed)."""
    import shutil

    text = (model / "configs" / "inference.yaml").read_text()
    current = next(line for line in text.splitlines() if line.strip().startswith("overlap:"))
    if float(current.split(":", 1)[1]) == overlap:
        return model
    copy = work / f"model_overlap_{overlap}"
    if not copy.exists():
        shutil.copytree(model, copy)
        (copy / "configs" / "inference.yaml").write_text(text.replace(current, current.split(":")[0] + f": {overlap}"))
    return copy


def _labels(path: str) -> np.ndarray:
    import nibabel as nib

    return np.rint(np.asarray(nib.load(path).dataobj)).astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def compare(whole: np.ndarray, auto: np.ndarray) -> dict[str, Any]:
    """Agreement, pancreas Dice and per-lesion Dice (each lesion component of the whole run, in its box grown by
    2 voxels) of the automatic region's labels against the whole run's."""
    from scipy import ndimage

    out: dict[str, Any] = {"agreement": float((whole == auto).mean()), "differing_voxels": int((whole != auto).sum()),
                           "dice_pancreas": _dice(whole == 1, auto == 1), "dice_lesion": _dice(whole == 2, auto == 2),
                           "voxels_whole": [int((whole == k).sum()) for k in (1, 2)],
                           "voxels_auto": [int((auto == k).sum()) for k in (1, 2)]}
    comps, n = ndimage.label(whole == 2, structure=np.ones((3, 3, 3), dtype=bool))
    per = []
    for c, sl in enumerate(ndimage.find_objects(comps), start=1):
        box = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in sl)
        per.append(_dice(comps[box] == c, auto[box] == 2))
    out["lesions"] = n
    out["dice_per_lesion_min"] = min(per) if per else None
    # every part (pancreas and lesion together) of the whole run that the automatic region does not label alike
    parts, count = ndimage.label(whole > 0, structure=np.ones((3, 3, 3), dtype=bool))
    differing = []
    for c, sl in enumerate(ndimage.find_objects(parts), start=1):
        inside = parts[sl] == c
        if not np.array_equal(whole[sl][inside], auto[sl][inside]):
            differing.append({"voxels": int(inside.sum()), "lesion_voxels": int((whole[sl][inside] == 2).sum()),
                              "equal_voxels": int((whole[sl][inside] == auto[sl][inside]).sum()),
                              "box_voxels": [[s.start, s.stop] for s in sl]})
    out["parts_whole"] = int(count)
    out["parts_differing"] = differing
    return out


def run_case(name: str, ct: Path, model: Path, work: Path, exact: bool, threads: int,
             precision: str = "fp32") -> dict[str, Any]:
    """The benchmark's whole and auto runs of one CT, and their comparison."""
    modes = "fast,fast+auto" + (",exact" if exact else "")
    cmd = [sys.executable, str(ROOT / "Testing" / "benchmarks" / "benchmark.py"), "--device", "cpu", "--skip-bundle",
           "--model", str(model), "--input", str(ct), "--modes", modes, "--threads", str(threads),
           "--precision", precision,
           "--workdir", str(work), "--timeout", "14400"]
    print(f"[{name}] " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"auto_region_check: the benchmark of {name} failed (exit {proc.returncode})")
    runs = json.loads(proc.stdout.strip().splitlines()[-1])["runs"]
    whole, auto = runs["ours-fast"], runs["ours-fast+auto"]
    result = {"case": name, "whole_s": round(whole["pipeline_s"], 2), "auto_s": round(auto["pipeline_s"], 2),
              "speedup": round(whole["pipeline_s"] / auto["pipeline_s"], 3),
              "speedup_infer": round(whole["stages"]["infer"] / max(auto["stages"]["infer"], 1e-9), 3),
              "whole_cpu_s": round(whole["pipeline_cpu_s"], 1), "auto_cpu_s": round(auto["pipeline_cpu_s"], 1),
              "speedup_cpu": round(whole["pipeline_cpu_s"] / max(auto["pipeline_cpu_s"], 1e-9), 3),
              "whole_windows": whole.get("windows"), "whole_computed": whole.get("windows_computed"),
              "region": auto.get("region"), "stages_whole": whole["stages"], "stages_auto": auto["stages"]}
    labels_whole = _labels(whole["output"])
    result.update(compare(labels_whole, _labels(auto["output"])))
    if exact:
        result["whole_fast_equals_exact"] = bool((labels_whole == _labels(runs["ours-exact"]["output"])).all())
    return result


def adversarial_cases(work: Path) -> list[tuple[str, Path]]:
    """(name, CT) of the adversarial set."""
    seed = FIRST_SEED + 500
    lesion_only = make_volume(work / "adv_lesion_only", (2, 2, 2), {(1, 0, 1): "lesion"}, seed)
    far_apart = make_volume(work / "adv_two_glands", (3, 3, 1), {(0, 0, 0): "gland", (2, 2, 0): "gland"}, seed + 10)
    cut = make_volume(work / "adv_cut_by_edge", (2, 2, 2), {(0, 1, 0): "gland"}, seed + 30, crop_x=TILE_SHAPE[0] // 2)
    return [("lesion only", lesion_only), ("two glands far apart", far_apart), ("gland cut by the edge", cut)]


def passed(r: dict[str, Any]) -> bool:
    """Labels and Dice targets (the speed-up is judged on the main volume only)."""
    dice_ok = all(v is None or v >= TARGETS["dice"] for v in (r["dice_per_lesion_min"],)) and \
        (r["voxels_whole"][0] == 0 or r["dice_pancreas"] >= TARGETS["dice"])
    return (r["agreement"] >= TARGETS["agreement"] and dice_ok) or bool((r.get("region") or {}).get("fallback"))


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'case':<34}{'whole s':>9}{'auto s':>9}{'speedup':>9}{'cpu x':>7}{'windows c+k+d/full':>21}"
          f"{'parts f/c':>11}{'equal %':>11}{'Dice p':>8}{'Dice les':>9}{'fallback':>10}")
    for r in rows:
        reg = r.get("region") or {}
        w = reg.get("windows") or {}
        windows = f"{w.get('coarse', 0)}+{w.get('confirm', 0)}+{sum(w.get('dense', []))}/{w.get('full', '?')}"
        les = r["dice_per_lesion_min"]
        found = reg.get("coarse_parts") or {}
        parts = f"{found.get('found', '-')}/{found.get('confirmed', '-')}"
        print(f"{r['case']:<34}{r['whole_s']:>9.1f}{r['auto_s']:>9.1f}{r['speedup']:>9.2f}{r['speedup_cpu']:>7.2f}"
              f"{windows:>21}{parts:>11}{100 * r['agreement']:>11.4f}{r['dice_pancreas']:>8.4f}"
              f"{'-' if les is None else f'{les:.4f}':>9}{'yes' if reg.get('fallback') else 'no':>10}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEMO)
    p.add_argument("--tiles", default="4,4,5", help="phantoms along x,y,z of the main volume (default 4,4,5)")
    p.add_argument("--overlaps", default="0.5", help="sliding-window overlaps to run the main volume with, e.g. "
                   "0.5,0.625 (the demo model's own, default, and the released bundle's)")
    p.add_argument("--filler", default="mixed", choices=("mixed", "fat", "tissue", "none"),
                   help="what fills the other tiles: fat, fat/soft-tissue texture and phantoms whose gland is painted "
                        "over, drawn per tile 1 : 1 : 2 (mixed, default), or one of them everywhere")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=("fp32", "auto", "bf16"),
                   help="both runs' --precision (default fp32: the whole run's labels are the exact run's; "
                        "bf16_agreement.py measures bf16)")
    p.add_argument("--exact", action="store_true", help="also run the whole volume with --mode exact (slow)")
    p.add_argument("--skip-adversarial", action="store_true")
    p.add_argument("--skip-main", action="store_true", help="only the adversarial set")
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    tiles = tuple(int(t) for t in args.tiles.split(","))
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="pdints-auto-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    n = tiles
    # glands near a corner, inside, and at the border (each with a lesion); two phantoms without a gland
    glands = {(0, n[1] - 1, min(1, n[2] - 1)): "gland", (n[0] // 2, n[1] // 2 - 1 if n[1] > 2 else 0, n[2] // 2): "gland",
              (n[0] - 1, 0, n[2] - 1): "gland", (1, 1, 0): "none", (n[0] - 1, n[1] - 1, n[2] // 2): "none"}
    main_ct = make_volume(work / "main", tiles, glands, FIRST_SEED, filler=args.filler)  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    overlaps = [] if args.skip_main else [float(o) for o in args.overlaps.split(",")]
    if not overlaps and not args.skip_adversarial:
        for name, ct in adversarial_cases(work):
            rows.append(run_case(name, ct, args.model.resolve(), work / name.replace(" ", "_"), False, args.threads,
                                 args.precision))
            print_table(rows)
    for n_run, overlap in enumerate(overlaps):  # the adversarial set after the first overlap (the model's own)
        model = bundle_with_overlap(args.model.resolve(), overlap, work)
        r = run_case(f"abdomen {tiles}, overlap {overlap}", main_ct, model, work / f"main_{overlap}", args.exact,
                     args.threads, args.precision)
        r["overlap"] = overlap
        rows.append(r)
        print_table(rows)
        if n_run == 0 and not args.skip_adversarial:
            for name, ct in adversarial_cases(work):
                rows.append(run_case(name, ct, args.model.resolve(), work / name.replace(" ", "_"), False,
                                     args.threads, args.precision))
                print_table(rows)
    main_rows = [r for r in rows if "overlap" in r]
    summary = {"model": str(args.model), "tiles": tiles, "shape": [t * s for t, s in zip(tiles, TILE_SHAPE, strict=True)],
               "spacing_mm": TILE_SPACING, "threads": args.threads, "targets": TARGETS,
               "all_labels_ok": all(passed(r) for r in rows),
               "speedup_ok": {str(r["overlap"]): min(r["speedup"], r["speedup_cpu"]) >= TARGETS["speedup"]
                              for r in main_rows},
               "cases": [{k: v for k, v in r.items() if not k.startswith("stages")} for r in rows]}
    print_table(rows)
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
