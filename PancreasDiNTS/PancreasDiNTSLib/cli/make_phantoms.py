"""`pancreas-dints make-phantoms`: a synthetic CT data set in the MSD Task07 layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PancreasDiNTSLib.core.errors import EXIT_OK, OutputError, UsageError, printable
from PancreasDiNTSLib.core.progress import PROGRESS_STYLES

HELP = "write synthetic abdominal CT phantoms with pancreas/tumour labels in the MSD Task07 layout"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--num", type=int, default=24, help="number of labelled cases (imagesTr/labelsTr); default 24")
    p.add_argument("--num-test", type=int, default=None,
                   help="number of unlabelled cases in imagesTs (default: a quarter of --num)")
    p.add_argument("-o", "--output", required=True, metavar="DATA",
                   help="output folder (new or empty; not the current folder: it is made whole at the end)")
    p.add_argument("--seed", type=int, default=0, help="data set seed; the same seed gives the same files")
    p.add_argument("--size", default="small",
                   help="in-plane matrix size: tiny (48-64), small (112-144, default), medium (224-288), "
                        "full (512) or a number")
    p.add_argument("--slice-mm", default="1,5", metavar="MIN,MAX",
                   help="range the slice spacing is drawn from, in mm (default 1,5; the anatomy scales with the field "
                        "of view, so small phantoms need thin slices, e.g. 0.6,1.2, for a realistic slice count)")
    p.add_argument("--mosaic", default=None, metavar="X,Y,Z",
                   help="each case a large CT of X x Y x Z tiles of 128 x 128 x 60 voxels at 0.8 x 0.8 x 1 mm: one or "
                        "two phantoms with their glands, the other tiles fat, fat/soft tissue or phantoms without a "
                        "gland (negative context for training; --size and --slice-mm do not apply)")
    p.add_argument("--followup", action="store_true",
                   help="instead, one follow-up pair with known truth (docs/FOLLOWUP.md): prior-ct.nii.gz, "
                        "current-ct.nii.gz (moved, re-gridded; lesions grown, shrunk, gone, split, new), the case "
                        "folders prior/ and current/ (truth labels as the segmentation) and truth.json")
    p.add_argument("--other-patient", action="store_true",
                   help="with --followup: the current is another phantom (a pair compare must refuse)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--progress", default="auto", choices=PROGRESS_STYLES, help="bar, json, none; auto = bar on a terminal")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.core.atomic import check_location
    from PancreasDiNTSLib.core.progress import Progress
    from PancreasDiNTSLib.synthetic.phantom import write_msd_dataset

    out = check_location(Path(args.output).expanduser())  # -o ., -o afile/sub: one line before any work
    if out.exists() and not out.is_dir():
        raise OutputError(f"{printable(out)}: exists and is not a folder; choose a new output folder")

    if args.followup:
        from PancreasDiNTSLib.synthetic.followup import write_followup_pair

        write_followup_pair(out, args.seed, overwrite=args.overwrite, other_patient=args.other_patient)
        print(f"follow-up pair written to {printable(out)} (prior/, current/, truth.json)", file=sys.stderr)
        return EXIT_OK
    if args.other_patient:
        raise UsageError("--other-patient goes with --followup")
    size = int(args.size) if str(args.size).isdigit() else args.size
    try:
        lo, hi = (float(v) for v in str(args.slice_mm).split(","))
    except ValueError:
        lo = hi = -1.0
    if not 0 < lo <= hi:
        raise UsageError(f"--slice-mm {args.slice_mm}: give MIN,MAX in mm with 0 < MIN <= MAX, e.g. 0.6,1.2")
    make_case = None
    if args.mosaic is not None:
        from PancreasDiNTSLib.synthetic.mosaic import mosaic_case

        parts = str(args.mosaic).split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() and 1 <= int(p) <= 8 for p in parts) or \
                all(int(p) == 1 for p in parts):
            raise UsageError(f"--mosaic {args.mosaic}: give X,Y,Z tile counts from 1 to 8 (at least two tiles), "
                             "e.g. 2,2,2")
        make_case = mosaic_case(tuple(int(p) for p in parts))
    num_test = args.num_test if args.num_test is not None else args.num // 4
    progress = Progress(args.progress, total=args.num + num_test)
    out = write_msd_dataset(out, args.num, num_test, seed=args.seed, size=size, progress=progress,
                            overwrite=args.overwrite, slice_mm=(lo, hi), make_case=make_case)
    progress.emit({"stage": "summary", "output": str(out), "training": args.num, "test": num_test})
    progress.close()
    if args.progress != "json":
        print(f"{args.num} labelled + {num_test} test phantoms written to {out} (dataset.json, imagesTr, labelsTr, "
              "imagesTs)", file=sys.stderr)
    return EXIT_OK
