"""`pancreas-dints evaluate`: per-case and mean Dice, HD95 and volumes of a model on a datalist split."""

from __future__ import annotations

import argparse
import sys

from PancreasDiNTSLib.core.errors import EXIT_OK
from PancreasDiNTSLib.core.progress import PROGRESS_STYLES

HELP = "evaluate a model folder on a datalist split: Dice (bundle metric), HD95, volumes -> CSV + JSON + table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="BUNDLE_DIR", help="model folder (a MONAI bundle / a train run)")
    p.add_argument("--datalist", required=True, metavar="datalist.json", help="datalist with labelled cases")
    p.add_argument("--split", default="testing", help="datalist key to evaluate (default testing)")
    p.add_argument("-o", "--output", required=True, metavar="EVAL", help="folder for metrics.csv and summary.json")
    p.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--sw-batch-size", type=int, default=None, help="windows per network call (default: bundle's)")
    p.add_argument("--save-predictions", action="store_true", help="also write EVAL/predictions/<case>.nii.gz")
    p.add_argument("--progress", default="auto", choices=PROGRESS_STYLES, help="bar, json, none; auto = bar on a terminal")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.core.progress import Progress
    from PancreasDiNTSLib.training.evaluate import evaluate, format_table

    summary = evaluate(args.model, args.datalist, args.output, split=args.split, device=args.device,
                       dataset_dir=args.dataset_dir, progress=Progress(args.progress), sw_batch_size=args.sw_batch_size,
                       save_predictions=args.save_predictions)
    if args.progress != "json":
        print(format_table(summary))
        print(f"written: {args.output}/metrics.csv, {args.output}/summary.json", file=sys.stderr)
    return EXIT_OK
