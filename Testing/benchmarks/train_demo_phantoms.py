"""Benchmark (not a test): train the `demo` preset on synthetic phantoms on the CPU and report held-out Dice.

    python Testing/benchmarks/train_demo_phantoms.py [--num 24] [--workdir DIR] [--set epochs=60 ...]

Steps, each timed: make-phantoms (MSD layout) -> prepare-datalist (bundle split rule) -> train --preset demo
--arch random -> evaluate on the testing split (cases never seen in training or model selection).
Prints one JSON object with the settings, loss drop, best validation Dice, held-out Dice per class and times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=24, help="labelled phantoms (split 70/20/10 by the bundle rule)")
    ap.add_argument("--size", default="small", help="phantom size class (default small)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workdir", default=None, help="keep data, run and evaluation here (default: a temp folder)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--progress", default="auto")
    args = ap.parse_args()

    from PancreasDiNTSLib.core.progress import Progress
    from PancreasDiNTSLib.synthetic.phantom import write_msd_dataset
    from PancreasDiNTSLib.training.data import prepare_datalist, write_datalist
    from PancreasDiNTSLib.training.evaluate import evaluate, format_table
    from PancreasDiNTSLib.training.settings import make_settings
    from PancreasDiNTSLib.training.train import train

    work = Path(args.workdir or tempfile.mkdtemp(prefix="demo_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    data = work / "phantoms"
    if not (data / "dataset.json").is_file():
        write_msd_dataset(data, args.num, 0, seed=args.seed, size=args.size)
    times["make_phantoms_s"] = round(time.perf_counter() - t, 1)
    datalist = prepare_datalist(data)
    write_datalist(datalist, work / "datalist.json")
    settings = make_settings("demo", args.overrides)
    t = time.perf_counter()
    summary = train(work / "datalist.json", work / "run", arch="random", settings=settings, device=args.device,
                    resume=(work / "run" / "checkpoints").is_dir(), progress=Progress(args.progress, unit="epoch"))
    times["train_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    ev = evaluate(work / "run", work / "datalist.json", work / "eval", split="testing", device=args.device)
    times["evaluate_s"] = round(time.perf_counter() - t, 1)
    print(format_table(ev), file=sys.stderr)
    report = {
        "workdir": str(work),
        "cpu_threads": os.cpu_count(),
        "settings": asdict(settings),
        "cases": datalist["split"]["counts"],
        "first_epoch_loss": summary["first_loss"],
        "last_epoch_loss": summary["last_loss"],
        "best_val_mean_dice": summary["best_val_mean_dice"],
        "best_epoch": summary["best_epoch"],
        "heldout_mean_dice": ev["mean_dice"],
        "heldout_dice_pancreas": ev.get("dice_pancreas", {}).get("mean"),
        "heldout_dice_tumour": ev.get("dice_tumour", {}).get("mean"),
        "heldout_hd95_pancreas_mm": ev.get("hd95_pancreas_mm", {}).get("mean"),
        "mean_epoch_s": summary["mean_epoch_s"],
        "peak_ram_gib": summary["peak_ram_gib"],
        **times,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
