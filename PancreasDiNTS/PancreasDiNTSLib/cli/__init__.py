"""`pancreas-dints` command line: argument parsing only; each sub-command lives in its own module here.

A sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` (an exit
code from :mod:`PancreasDiNTSLib.core.errors`). Also runnable as ``python -m PancreasDiNTSLib.cli``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.errors import (
    EXIT_INTERRUPTED,
    EXIT_OUTPUT,
    EXIT_USAGE,
    PancreasDiNTSError,
    disk_full_error,
    is_disk_full,
    printable,
)
from PancreasDiNTSLib.core.startup import skip_unused_imports

# sub-command name -> module under PancreasDiNTSLib.cli
COMMANDS = {
    "segment": "segment",
    "download": "download",
    "make-phantoms": "make_phantoms",
    "prepare-datalist": "prepare_datalist",
    "train": "train",
    "evaluate": "evaluate",
    "search": "search",
    "export": "export",
    "benchmark": "benchmark",
    "demo": "demo",
    "serve": "serve",
    "jobs": "jobs",
    "review": "review",
    "compare": "compare",
}


# What a stop (Ctrl-C or SIGTERM) leaves behind, said after "interrupted" / "terminated (SIGTERM)" (the others:
# nothing to add; their outputs are atomic).
ON_STOP = {
    "segment": "finished cases are kept, the case in progress left no partial files",
    "serve": "running jobs are queued again at the next start",
}


def _available() -> dict[str, str]:
    return {name: mod for name, mod in COMMANDS.items() if importlib.util.find_spec(f"{__name__}.{mod}")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pancreas-dints",
        description="Pancreas and pancreatic tumour segmentation in CT with MONAI DiNTS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        module = importlib.import_module(f"{__name__}.{mod}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def quiet_libraries() -> None:
    """Keep third-party chatter out of the user's terminal and the JSON progress stream."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("monai", "ignite", "torch", "highdicom", "pydicom", "nibabel", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR)


def entry(argv: list[str] | None = None) -> int:
    """The ``pancreas-dints`` console script and ``python -m PancreasDiNTSLib.cli``: :func:`main` in a process of
    its own (``argv``: for a program that stands in for the console script)."""
    skip_unused_imports()
    return main(argv)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: temporary files are removed on the way out, exit 130."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While running a command, SIGTERM raises :class:`Terminated` (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pancreas-dints`` console script."""
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    prog = f"pancreas-dints {args.command}"
    try:
        with sigterm_as_interrupt():
            return int(args._run(args) or 0)
    except PancreasDiNTSError as exc:
        print(f"{prog}: error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as stop:  # Ctrl-C, and SIGTERM as Terminated
        said = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        after = ON_STOP.get(args.command)
        print(f"{prog}: {said}{'; ' + after if after else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        print(f"{prog}: error: {printable(disk_full_error(exc.filename or '?', exc))}", file=sys.stderr)
        return EXIT_OUTPUT
