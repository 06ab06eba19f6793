"""`pancreas-dints compare`: a prior and a current study of one patient -> lesion changes and response."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PancreasDiNTSLib.core.errors import EXIT_CASE_FAILED, EXIT_OK, UsageError, printable

HELP = ("compare a prior and a current case folder (or CT) of one patient: alignment, lesion matching, changes, "
        "RECIST-style and volumetric response")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prior", nargs="?", metavar="PRIOR",
                   help="the prior study: a case folder written by `segment`, or a CT (segmented first)")
    p.add_argument("current", nargs="?", metavar="CURRENT", help="the current study: the same kinds as PRIOR")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="compare.json, compare.png, compare.pdf go here (with --pairs: OUTDIR/<name>/ per pair)")
    p.add_argument("--pairs", default=None, metavar="CSV",
                   help="a CSV of pairs (columns prior,current and optionally name) instead of PRIOR CURRENT")
    p.add_argument("--format", default="json,png,pdf", dest="formats",
                   help="comma-separated outputs from json, png, pdf, dicom-sr (the current study's SR with the prior's "
                        "Tracking UIDs; needs a DICOM current with its SEG); default json,png,pdf")
    p.add_argument("--prior-labels", default=None, metavar="FILE",
                   help="a label map of PRIOR (a CT file): pancreas 1, lesion 2 (e.g. exported from Slicer); no "
                        "segmentation is run for that side")
    p.add_argument("--current-labels", default=None, metavar="FILE", help="the same for CURRENT")
    p.add_argument("--model", default="official", metavar="BUNDLE_DIR",
                   help="the model that segments a side given as a CT (as `segment --model`)")
    p.add_argument("--device", default="auto", help="the device for that segmentation: auto, cpu, cuda, cuda:N")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.followup.batch import Segmenting, read_pairs, run_one, run_pairs
    from PancreasDiNTSLib.followup.compare import check_formats

    formats = [f.strip() for f in str(args.formats).split(",") if f.strip()]
    check_formats(formats)
    out = Path(args.output).expanduser()
    seg = Segmenting(model=args.model, device=args.device)
    if args.pairs:
        if args.prior or args.current or args.prior_labels or args.current_labels:
            raise UsageError("give either PRIOR CURRENT (with --prior-labels/--current-labels) or --pairs CSV")
        rows = run_pairs(read_pairs(Path(args.pairs).expanduser()), out, formats, seg)
        for r in rows:
            what = f"RECIST-style {r['recist']}, volumetric {r['volumetric']}" if r["status"] == "ok" else r["message"]
            print(f"{r['status']:>7}  {printable(r['name'])}: {printable(what)}", file=sys.stderr)
        return EXIT_OK if all(r["status"] == "ok" for r in rows) else EXIT_CASE_FAILED
    if not args.prior or not args.current:
        raise UsageError("give PRIOR and CURRENT (case folders or CTs), or --pairs CSV")
    labels = [Path(p).expanduser() if p else None for p in (args.prior_labels, args.current_labels)]
    result = run_one(Path(args.prior).expanduser(), Path(args.current).expanduser(), out, formats, seg, *labels)
    rec = result["response"]["recist"]
    print(f"RECIST 1.1-style {rec['category']} ({rec['reason']}), volumetric "
          f"{result['response']['volumetric']['category']}: {result['response']['label']}; "
          f"{len(result['lesions'])} findings in {printable(out)}", file=sys.stderr)
    return EXIT_OK
