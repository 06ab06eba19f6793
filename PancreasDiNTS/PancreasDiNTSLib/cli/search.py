"""`pancreas-dints search`: DiNTS architecture search (the bundle's search.py) into a search folder."""

from __future__ import annotations

import argparse
import sys

from PancreasDiNTSLib.cli.train import add_run_arguments, run_job
from PancreasDiNTSLib.core.errors import EXIT_OK

HELP = ("search a DiNTS architecture on a datalist (presets tiny|demo|bundle); writes search_code_<iter>.pt for "
        "`train --arch`; crash-safe, --resume continues; runs under torchrun")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datalist", metavar="datalist.json",
                   help="datalist from prepare-datalist (its training cases are split in two halves: weights / "
                        "architecture; validation cases score each decoded architecture); not needed with --resume")
    p.add_argument("-o", "--output", metavar="SEARCH",
                   help="search folder (search_code_<iter>.pt + .png, best/, checkpoints/, logs/, metrics.csv); "
                        "required unless --show-settings")
    p.add_argument("--preset", default="bundle",
                   help="tiny (seconds on a CPU; tests), demo (minutes on a CPU; the demo model's search) or bundle "
                        "(the released search: TopologySearch channel_mul 0.5, 12 blocks, 4 depths, 1430 epochs, "
                        "715 warm-up; default)")
    add_run_arguments(p, "the search in SEARCH",
                      "--set epochs=200 --set warmup_epochs=100 --set ram_cost_factor=0.6")


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from PancreasDiNTSLib.training.search import make_search_settings, search

    settings = make_search_settings(args.preset, args.overrides)
    summary = run_job(args, settings, partial(search, args.datalist, args.output, settings=settings))
    if summary is not None:
        dice = summary["best_val_mean_dice"]
        print(f"done: {summary['epochs']} epochs ({summary['iterations']} iterations, {summary['world_size']} "
              f"process(es)) in {summary['seconds']:.0f} s; best validation Dice "
              f"{'n/a' if dice is None else f'{dice:.4f}'} (epoch {summary['best_epoch']}); "
              f"architecture: {summary['arch_file']} (picture {summary['picture']})", file=sys.stderr)
    return EXIT_OK
