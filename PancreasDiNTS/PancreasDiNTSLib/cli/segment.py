"""`pancreas-dints segment`: segment CT images or DICOM series into OUTDIR/<case>/."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from PancreasDiNTSLib.core import request
from PancreasDiNTSLib.core.errors import EXIT_CASE_FAILED, EXIT_OK, printable

if TYPE_CHECKING:
    from PancreasDiNTSLib.inference.batch import CaseResult, SegmentSettings

HELP = "segment pancreas and pancreatic tumour in CT images (NIfTI, NRRD, MetaImage, DICOM folders)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``segment``: one table, core.request.OPTIONS (shared with Slicer, the server, the docs)."""
    request.add_arguments(p)


def settings_from_args(args: argparse.Namespace) -> SegmentSettings:
    """The command line as SegmentSettings (UsageError, exit 2, for values argparse cannot check)."""
    # the engine (torch) is imported when the command runs, not when `pancreas-dints --help` builds the parser
    from PancreasDiNTSLib.inference.batch import SegmentSettings
    from PancreasDiNTSLib.inference.device import device_for_rank

    # Under torchrun each process takes every WORLD_SIZE-th case; no process group is needed for that.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    asked = request.SegmentRequest.from_namespace(args)
    if world > 1 and asked.device in ("auto", "cuda"):
        asked = replace(asked, device=str(device_for_rank(asked.device)))  # cuda:LOCAL_RANK on a multi-GPU node
    return SegmentSettings.of(asked, rank=rank, world_size=world)


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
