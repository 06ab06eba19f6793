"""`pancreas-dints review OUTDIR`: the browser review page of a batch (accept, reject, correct each case).

The page is a front end (``PancreasDiNTSReview``: trame-slicer, Slicer's MRML views and segment editor), so the
engine never imports it: OUTDIR is checked here (a bad folder is one line and exit 2 before anything heavy
starts), then ``python -m PancreasDiNTSReview`` runs in its own process and its exit code is returned.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from PancreasDiNTSLib.bridge.remote import clear_text_warning
from PancreasDiNTSLib.core.errors import EXIT_INTERRUPTED, UsageError

HELP = ("review a batch in the browser: each case's CT and segments in slice and 3D views, the read-out, the "
        "segment editor; accept, reject or save a correction (review.json, review.csv)")
FRONT_END = "PancreasDiNTSReview"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", metavar="OUTDIR", help="the -o folder of a `pancreas-dints segment` run")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; see docs/REVIEW.md for a team)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--reviewer", default="", help="name recorded with every decision (default: the login name)")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.review.batch import batch_cases

    batch_cases(args.outdir)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: give a port between 1 and 65535")
    if importlib.util.find_spec(FRONT_END) is None or importlib.util.find_spec("trame_slicer") is None:
        raise UsageError("the review page needs the `review` extra: pip install 'PancreasDiNTSLib[review]' "
                         "(make test installs it)")
    warning = clear_text_warning(args.host, "the patients' images")
    if warning:
        print(f"pancreas-dints review: {warning}", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", FRONT_END, str(args.outdir), "--host", args.host, "--port", str(args.port)]
    if args.reviewer:
        command += ["--reviewer", args.reviewer]
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        return EXIT_INTERRUPTED
