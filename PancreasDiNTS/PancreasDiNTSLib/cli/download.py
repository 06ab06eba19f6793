"""`pancreas-dints download`: install the official bundle into the versioned cache (online or offline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PancreasDiNTSLib.core.errors import EXIT_OK

HELP = "download the official pancreas_ct_dints_segmentation bundle (or install it from a zip/folder)"


def _version(text: str) -> str:
    """argparse type: a version string only (``0.5.0``), never a path."""
    from PancreasDiNTSLib.model.download import VERSION_RE

    if not VERSION_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a version (digits and dots, e.g. 0.5.0)")
    return text


def _name(text: str) -> str:
    """argparse type: a local model name (letters, digits, '.', '_', '-'; at most 64)."""
    from PancreasDiNTSLib.model.download import NAME_RE

    if not NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: use 1-64 letters, digits, '.', '_' or '-' (not first)")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    from PancreasDiNTSLib.model.release import DEFAULT_VERSION

    p.add_argument("--dest", type=Path, default=None,
                   help="cache root (default: $PANCREAS_DINTS_HOME/models or ~/.cache/pancreas-dints/models)")
    p.add_argument("--from", dest="source_path", type=Path, default=None, metavar="ZIP_OR_DIR",
                   help="install from a bundle zip or folder downloaded elsewhere (no network needed); only a copy "
                        "with the released md5s becomes the official model, anything else a local model")
    p.add_argument("--version", dest="bundle_version", type=_version, default=DEFAULT_VERSION,
                   help="bundle version (digits and dots)")
    p.add_argument("--name", dest="local_name", type=_name, default=None,
                   help="with --from: the name under CACHE/local/ if the copy is not the official release "
                        "(default: the zip's or folder's name)")
    p.add_argument("--source", default="monaihosting", help="MONAI download source (monaihosting, github, ngc)")
    p.add_argument("--print-path", action="store_true", help="only print where the bundle is/would be installed")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.model.download import download, install_from, installed_path

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    if args.print_path:
        print(installed_path(args.bundle_version, args.dest))
        return EXIT_OK
    if args.source_path is not None:
        path = install_from(args.source_path, args.bundle_version, args.dest, log=log, name=args.local_name)
    else:
        path = download(args.bundle_version, args.dest, args.source, log=log)
    print(path)
    return EXIT_OK
