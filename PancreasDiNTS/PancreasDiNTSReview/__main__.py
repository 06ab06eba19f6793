"""``python -m PancreasDiNTSReview OUTDIR [--host H] [--port N] [--reviewer NAME]``: serve the review page.

``pancreas-dints review`` starts this in its own process. Prints one line with the address and its random
token (or ``$PANCREAS_DINTS_REVIEW_TOKEN``, for a team set-up behind a proxy); requests without it get 403.
Renders headless: EGL (or OSMesa) on the CPU when there is no display; no X server or GPU needed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys

TOKEN_ENV = "PANCREAS_DINTS_REVIEW_TOKEN"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pancreas-dints review", description=__doc__.splitlines()[0])
    p.add_argument("outdir", help="the -o folder of a `pancreas-dints segment` run")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--reviewer", default="", help="name recorded with every decision (default: the login name)")
    return p.parse_args(argv)


def quiet_vtk() -> None:
    """VTK's warnings off the user's terminal: trame-slicer's views observe the interactor's WindowResizeEvent,
    which VTK 9.6 warns about once per view (six lines at start, the class named vtkXRenderWindowInteractor although
    no X server is used). Errors still print, one line each."""
    import vtk

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    vtk.vtkOutputWindow.GetInstance().SetDisplayModeToNever()  # the second, multi-line copy of each message


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # before vtk is imported
    from PancreasDiNTSLib.core.errors import PancreasDiNTSError, printable
    from PancreasDiNTSLib.review.batch import batch_cases

    try:
        batch_cases(args.outdir)  # a bad OUTDIR is one line and exit 2, before anything heavy is loaded
    except PancreasDiNTSError as exc:
        print(f"pancreas-dints review: error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    from trame.app import get_server

    from .page import ReviewPage
    from .session import ReviewSession

    token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    reviewer = args.reviewer or getpass.getuser()
    server = get_server("pancreas_dints_review", client_type="vue3")
    server.enable_module(__import__("trame_slicer.module", fromlist=["module"]))
    session = ReviewSession(args.outdir, reviewer)  # its SlicerApp installs a VTK output window of its own
    quiet_vtk()  # so after it, before the page makes the views
    page = ReviewPage(server, session, token)

    @server.controller.add("on_server_ready")
    def _ready(**_: object) -> None:
        print(f"review page: http://{args.host}:{server.port}/?token={token}  ({len(page.session.cases)} cases, "
              f"reviewer {reviewer}); Ctrl-C to stop", flush=True)

    server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                 disable_logging=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
