"""`pancreas-dints train`: train a DiNTS model from a datalist into a run folder that is a MONAI bundle."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from PancreasDiNTSLib.core.errors import EXIT_OK, UsageError
from PancreasDiNTSLib.core.progress import PROGRESS_STYLES

HELP = "train a DiNTS pancreas/tumour model (presets tiny|demo|bundle); crash-safe, --resume continues a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datalist", metavar="datalist.json",
                   help="datalist from prepare-datalist (training + validation splits); on --resume the run's copy "
                        "is used when omitted")
    p.add_argument("--arch", metavar="ARCH.pt",
                   help="architecture file (released format, e.g. search_code_18590.pt) or `random` "
                        "(a random topology with the preset's num_blocks/num_depths)")
    p.add_argument("-o", "--output", metavar="RUN",
                   help="run folder (checkpoints, logs, bundle); required unless --show-settings")
    p.add_argument("--preset", default="bundle", help="tiny (seconds, CI), demo (phantom demo model), "
                                                      "bundle (released hyper-parameters; default)")
    add_run_arguments(p, "the run in RUN", "--set epochs=50 --set patch_size=64,64,64")


def add_run_arguments(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """The options train and search share: overrides, resume, data folder, device, progress."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help=f"override a setting, e.g. {example} (repeatable)")
    p.add_argument("--resume", action="store_true", help=f"continue {what} from its newest checkpoint")
    p.add_argument("--dataset-dir", default=None, help="base folder of the datalist's relative paths "
                                                       "(default: the datalist's dataset_dir, else its folder)")
    p.add_argument("--device", default="auto",
                   help="auto (default), cpu, cuda or cuda:N; under torchrun each process uses cuda:LOCAL_RANK")
    p.add_argument("--progress", default="auto", choices=PROGRESS_STYLES, help="bar, json, none; auto = bar on a terminal")
    p.add_argument("--show-settings", action="store_true", help="print the resolved settings and exit")


def run_job(args: argparse.Namespace, settings: Any, job: Callable[..., dict[str, Any]]) -> dict[str, Any] | None:
    """``job(device=..., progress=...)`` in a torchrun session (or alone); its summary where this process prints
    the closing line (rank 0, not JSON), else None. ``--show-settings`` prints the settings instead."""
    from PancreasDiNTSLib.core.progress import Progress
    from PancreasDiNTSLib.inference.device import launched_by_torchrun
    from PancreasDiNTSLib.training.distributed import distributed_session, is_main

    if args.show_settings:
        print(json.dumps(asdict(settings), indent=2))
        return None
    if args.output is None:
        raise UsageError("-o/--output is required: the folder for the run (or --show-settings to list the settings)")
    # Under torchrun (`torchrun --nproc_per_node=N -m PancreasDiNTSLib.cli train ...`) each process joins the group
    # and works on its share of the cases; only rank 0 reports and writes.
    with distributed_session(args.device) as ctx:
        device = ctx.device if launched_by_torchrun() else args.device
        progress = Progress(args.progress if is_main() else "none", total=settings.epochs, unit="epoch")
        summary = job(device=device, progress=progress, resume=args.resume, dataset_dir=args.dataset_dir,
                      overrides=args.overrides if args.resume else None)
        main = is_main()
    return summary if main and args.progress != "json" else None


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from PancreasDiNTSLib.training.settings import make_settings
    from PancreasDiNTSLib.training.train import train

    settings = make_settings(args.preset, args.overrides)
    summary = run_job(args, settings, partial(train, args.datalist, args.output, arch=args.arch, settings=settings))
    if summary is not None:
        ram = summary["peak_ram_gib"]
        dice = summary["best_val_mean_dice"]
        print(f"done: {summary['epochs']} epochs in {summary['seconds']:.0f} s; loss {summary['first_loss']:.4f} -> "
              f"{summary['last_loss']:.4f}; best validation Dice "
              f"{'n/a' if dice is None else f'{dice:.4f}'} (epoch {summary['best_epoch']}); "
              f"peak RAM {ram['main']:.2f} GiB (largest worker {ram['largest_child']:.2f} GiB); "
              f"model: {summary['run']}", file=sys.stderr)
    return EXIT_OK
