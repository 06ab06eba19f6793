"""`pancreas-dints segment`: segment CT images or DICOM series into OUTDIR/<case>/."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from PancreasDiNTSLib.core.errors import EXIT_CASE_FAILED, EXIT_OK, printable
from PancreasDiNTSLib.core.paths import FORMATS
from PancreasDiNTSLib.core.progress import PROGRESS_STYLES

if TYPE_CHECKING:
    from PancreasDiNTSLib.inference.batch import CaseResult, SegmentSettings

HELP = "segment pancreas and pancreatic tumour in CT images (NIfTI, NRRD, MetaImage, DICOM folders)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, DICOM series folders, folders of images, or globs (quote them)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="results go to OUTDIR/<case>/")
    p.add_argument("--model", default="official", metavar="BUNDLE_DIR",
                   help="MONAI bundle folder (configs/inference.yaml, models/model.pt, models/search_code_*.pt), an "
                        "exported model file, or `official` (the default): the released model installed by "
                        "`pancreas-dints download`")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--format", default="nifti,seg.nrrd", dest="formats",
                   help=f"comma-separated outputs from {', '.join(FORMATS)} (dicom-seg only for DICOM inputs; "
                        "dicom-sr, which writes the SEG too, rtstruct, dicom-pdf and key-images refuse other inputs; "
                        "fhir takes every input); default nifti,seg.nrrd")
    p.add_argument("--seg-type", default="binary", choices=("binary", "labelmap"),
                   help="the DICOM SEG's form: binary (default; one frame per segment and image) or labelmap (DICOM "
                        "2024: one frame per image holding the label values, read by OHIF 3.11)")
    p.add_argument("--progress", default="auto", choices=PROGRESS_STYLES,
                   help="bar (terminal), json (one JSON object per line on stdout), none; auto = bar on a terminal")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs already exist")
    p.add_argument("--allow-non-ct", action="store_true",
                   help="segment images whose intensities do not look like CT Hounsfield units (with a warning)")
    p.add_argument("--sw-batch-size", type=positive_int, default=None,
                   help="windows per network call (default: the bundle's; on a GPU the fast modes size it by free memory)")
    p.add_argument("--mode", default="fast", choices=("fast", "exact", "fastmm"),
                   help="fast (default): static DiNTS forward, constant windows computed once, same labels as the "
                        "bundle; exact: MONAI's SlidingWindowInferer as the bundle runs it (the reference); fastmm: "
                        "fast with matrix-product upsampling (rounding-level differences)")
    p.add_argument("--engine", default="eager", choices=("eager", "cuda-graph", "compile"),
                   help="how the fast modes run the network (cuda-graph needs a GPU)")
    p.add_argument("--roi", default=None, metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="segment only inside this box (corners; labels outside are 0): for CPU-only machines")
    p.add_argument("--roi-space", default="ras", choices=("ras", "voxel"),
                   help="coordinates of --roi: RAS millimetres (a Slicer ROI's bounds) or voxel indices")
    p.add_argument("--roi-mode", default="grid", choices=("grid", "local"),
                   help="grid: the full run's windows touching the box (labels in the box equal the full run's); "
                        "local: crop the CT to the box plus context (time proportional to the box)")
    p.add_argument("--region", default=None, choices=("auto", "whole"),
                   help="auto: a coarse pass over non-overlapping windows finds the pancreas and lesions, the full "
                        "run's windows then run only there (labels equal a whole run's wherever they ran; outside "
                        "it labels are background); whole: every window. Default: auto on a CPU, whole on a GPU; "
                        "a --roi box takes its place")
    p.add_argument("--series", default=None, metavar="UID",
                   help="read only this series (SeriesInstanceUID) of each DICOM folder; without it a folder of "
                        "several series gives one case per series")
    p.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                   help="do not read/preprocess the next case in a background thread during inference (saves the "
                        "memory of one case in batch mode)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="segment on a `pancreas-dints serve` server (e.g. https://gpu-server:8765): the same case "
                        "folders, files and tables as a local run (docs/SERVER.md)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="the server's token (default: $PANCREAS_DINTS_TOKEN_FILE, else ~/.config/pancreas-dints/token)")
    p.add_argument("--server-job-timeout", type=positive_float, default=7200.0, metavar="SECONDS",
                   help="with --server: the longest one case may take from its upload to its result, queue wait "
                        "included (default 7200); then the job is cancelled and the case fails")
    p.add_argument("--server-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="with --server: the longest the whole run may take; cases not yet sent then fail "
                        "(default 0: no limit, each case is bounded by --server-job-timeout)")


def positive_float(text: str) -> float:
    """argparse type: a number > 0 (a usage error, exit 2, otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{printable(text)}: give a whole number, 1 or more")
    return value


def settings_from_args(args: argparse.Namespace) -> SegmentSettings:
    """The command line as SegmentSettings (UsageError, exit 2, for values argparse cannot check)."""
    # the engine (torch) is imported when the command runs, not when `pancreas-dints --help` builds the parser
    from PancreasDiNTSLib.inference.batch import SegmentSettings
    from PancreasDiNTSLib.inference.device import device_for_rank
    from PancreasDiNTSLib.inference.pipeline import RoiRequest

    # Under torchrun each process takes every WORLD_SIZE-th case; no process group is needed for that.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if world > 1 and device in ("auto", "cuda"):
        device = str(device_for_rank(device))  # cuda:LOCAL_RANK on a multi-GPU node
    roi = RoiRequest.parse(args.roi, args.roi_space, args.roi_mode) if args.roi else None
    return SegmentSettings(
        inputs=tuple(args.inputs), out_dir=args.output, model=args.model, device=device, formats=args.formats,
        progress=args.progress, overwrite=args.overwrite, allow_non_ct=args.allow_non_ct,
        sw_batch_size=args.sw_batch_size, mode=args.mode, engine=args.engine, roi=roi, region=args.region,
        series=args.series,
        prefetch=args.prefetch, server=args.server, token_file=args.token_file,
        server_timeouts=(args.server_job_timeout, args.server_timeout), seg_type=args.seg_type,
        rank=rank, world_size=world,
    )


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.inference.batch import run_segment

    summary = run_segment(settings_from_args(args))
    _reviews_after_rerun(args.output, summary.results)
    if args.progress != "json":
        for r in summary.results:
            extra = ", ".join(f"{k} {v:.1f} mL" for k, v in r.volumes_ml.items()) if r.status == "ok" else r.message
            print(f"{r.status:>7}  {printable(r.case)}: {printable(extra)}", file=sys.stderr)
        d = summary.as_dict()
        print(f"{d['succeeded']} succeeded, {d['skipped']} skipped, {d['failed']} failed; results in "
              f"{printable(args.output)}", file=sys.stderr)
    return EXIT_OK if summary.ok else EXIT_CASE_FAILED


def _reviews_after_rerun(outdir: str, results: list[CaseResult]) -> None:
    """A rerun never touches a reviewer's files; it says which reviews now refer to earlier labels (one line
    each) and rebuilds OUTDIR/review.csv so that it says so too."""
    from pathlib import Path

    from PancreasDiNTSLib.review.record import after_rerun

    folders = [Path(r.output_dir) for r in results if r.output_dir and r.status == "ok"]
    for line in after_rerun(Path(outdir), folders):
        print(f"warning: {line}", file=sys.stderr)
