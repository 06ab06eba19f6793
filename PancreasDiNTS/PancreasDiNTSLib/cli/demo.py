"""`pancreas-dints demo`: the offline demo (synthetic phantom -> demo model -> outputs, PNG, Dice vs truth)."""

from __future__ import annotations

import argparse
import json
import sys

from PancreasDiNTSLib.core.errors import EXIT_OK, require_modules
from PancreasDiNTSLib.core.progress import PROGRESS_STYLES

HELP = ("offline demo: segment a synthetic CT phantom with the demo model (trained on phantoms, not for "
        "clinical use) and print Dice against the phantom's truth")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from PancreasDiNTSLib.core.paths import DEMO_DEFAULT_SEED, DEMO_MODEL_ENV, DEMO_TRAINING_SEEDS

    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (new, empty, or an earlier demo output, which is replaced as a whole; not the "
                        "current folder)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=DEMO_DEFAULT_SEED,
                   help=f"phantom seed (default {DEMO_DEFAULT_SEED}); seeds {DEMO_TRAINING_SEEDS.start}..{DEMO_TRAINING_SEEDS.stop - 1} "
                        "trained the demo model and are refused")
    p.add_argument("--model", default=None, metavar="BUNDLE_DIR",
                   help=f"model folder or `official` (default: ${DEMO_MODEL_ENV}, else the packaged demo model)")
    p.add_argument("--progress", default="auto", choices=PROGRESS_STYLES,
                   help="bar, json (JSON lines on stdout, the summary last), none; auto = bar on a terminal")


def run(args: argparse.Namespace) -> int:
    # demo.png is drawn with matplotlib: a missing one is one line before the phantom is made or inferred
    require_modules("demo", ("matplotlib",), "pip install matplotlib")
    from PancreasDiNTSLib.synthetic.demo import run_demo, summary_text

    report = run_demo(args.output, device=args.device, seed=args.seed, progress=args.progress, model=args.model)
    if args.progress == "json":
        print(json.dumps({"stage": "summary", "dice_pancreas": report["dice_pancreas"],
                          "dice_tumor": report["dice_tumor"], "volumes_ml": report["volumes_ml"],
                          "outputs": report["outputs"], "notice": report["notice"]}), flush=True)
    else:
        print(summary_text(report), file=sys.stdout, flush=True)
    return EXIT_OK
