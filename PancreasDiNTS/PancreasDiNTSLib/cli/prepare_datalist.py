"""`pancreas-dints prepare-datalist`: training/validation/testing lists with the bundle's split rule."""

from __future__ import annotations

import argparse
import json
import sys

from PancreasDiNTSLib.core.errors import EXIT_OK

HELP = "split an MSD Task07-layout folder into training/validation/testing as the released bundle (seed 123)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", required=True, metavar="Task07_Pancreas", help="folder with imagesTr/ and labelsTr/")
    p.add_argument("-o", "--output", required=True, metavar="datalist.json", help="datalist file to write")
    p.add_argument("--seed", type=int, default=123, help="monai set_determinism seed (bundle: 123)")
    p.add_argument("--train-size", type=float, default=196,
                   help="training cases (a count, bundle: 196) or a fraction below 1; with fewer cases than the "
                        "count, the bundle's proportion 196/281 is used")
    p.add_argument("--val-fraction", type=float, default=0.66,
                   help="fraction of the remaining cases for validation (bundle: 0.66); the rest is testing")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.training.data import prepare_datalist, write_datalist

    train_size = int(args.train_size) if args.train_size >= 1 else float(args.train_size)
    datalist = prepare_datalist(args.path, seed=args.seed, train_size=train_size, val_fraction=args.val_fraction)
    write_datalist(datalist, args.output)
    counts = datalist["split"]["counts"]
    note = datalist["split"].get("note")
    print(json.dumps({"output": args.output, "training": counts[0], "validation": counts[1], "testing": counts[2]}))
    if note:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK
