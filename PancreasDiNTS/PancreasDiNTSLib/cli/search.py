"""`pancreas-dints search`: DiNTS architecture search (the bundle's search.py) into a search folder."""

from __future__ import annotations

import argparse
import json
import sys

from PancreasDiNTSLib.core.errors import EXIT_OK
from PancreasDiNTSLib.core.progress import MODES

HELP = ("search a DiNTS architecture on a datalist (presets tiny|demo|bundle); writes search_code_<iter>.pt for "
        "`train --arch`; crash-safe, --resume continues; runs under torchrun")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datalist", metavar="datalist.json",
                   help="datalist from prepare-datalist (its training cases are split in two halves: weights / "
                        "architecture; validation cases score each decoded architecture); not needed with --resume")
    p.add_argument("-o", "--output", required=True, metavar="SEARCH",
                   help="search folder (search_code_<iter>.pt + .png, best/, checkpoints/, logs/, metrics.csv)")
    p.add_argument("--preset", default="bundle",
                   help="tiny (seconds on a CPU; tests), demo (minutes on a CPU; the demo model's search) or bundle "
                        "(the released search: TopologySearch channel_mul 0.5, 12 blocks, 4 depths, 1430 epochs, "
                        "715 warm-up; default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a setting, e.g. --set epochs=200 --set warmup_epochs=100 "
                        "--set ram_cost_factor=0.6 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the search in SEARCH from its newest checkpoint")
    p.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths")
    p.add_argument("--device", default="auto",
                   help="auto (default), cpu, cuda or cuda:N; under torchrun each process uses cuda:LOCAL_RANK")
    p.add_argument("--progress", default="auto", choices=MODES, help="bar, json, none; auto = bar on a terminal")
    p.add_argument("--show-settings", action="store_true", help="print the resolved settings and exit")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from PancreasDiNTSLib.core.progress import Progress
    from PancreasDiNTSLib.training.distributed import distributed_session, is_main
    from PancreasDiNTSLib.training.search import make_search_settings, search

    settings = make_search_settings(args.preset, args.overrides)
    if args.show_settings:
        print(json.dumps(asdict(settings), indent=2))
        return EXIT_OK
    with distributed_session(args.device):
        # Under torchrun only rank 0 reports; the others stay quiet.
        progress = Progress(args.progress if is_main() else "none", total=settings.epochs, unit="epoch")
        summary = search(args.datalist, args.output, settings=settings, device=args.device, resume=args.resume,
                         dataset_dir=args.dataset_dir, progress=progress,
                         overrides=args.overrides if args.resume else None)
    if args.progress != "json" and is_main():
        dice = summary["best_val_mean_dice"]
        print(f"done: {summary['epochs']} epochs ({summary['iterations']} iterations, {summary['world_size']} "
              f"process(es)) in {summary['seconds']:.0f} s; best validation Dice "
              f"{'n/a' if dice is None else f'{dice:.4f}'} (epoch {summary['best_epoch']}); "
              f"architecture: {summary['arch_file']} (picture {summary['picture']})", file=sys.stderr)
    return EXIT_OK
