"""`pancreas-dints serve`: segment on this machine for other machines (HTTP API; docs/SERVER.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from PancreasDiNTSLib.core.errors import require_modules
from PancreasDiNTSLib.core.request import positive_int

HELP = "serve segmentation over HTTP to Slicer and `segment --server` clients (token, job queue, GPU workers)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; another address needs TLS)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--model", default="official", metavar="BUNDLE_DIR",
                   help="the model to serve, as for `segment` (default: official)")
    p.add_argument("--device", default="auto",
                   help="auto (default: one worker per GPU, or one on the CPU), or devices such as cuda:0,cuda:1")
    p.add_argument("--data", default="~/.local/share/pancreas-dints/server", metavar="DIR",
                   help="job store, uploads, results, token and logs (made with mode 0700)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="the token clients must send (default: DATA/token, made on the first start, mode 0600)")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate (and --tls-key)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key")
    p.add_argument("--max-upload-mb", type=positive_int, default=2048, help="largest upload (default 2048 MiB)")
    p.add_argument("--max-queue", type=positive_int, default=64, help="most jobs waiting (default 64; then 503)")
    p.add_argument("--min-free-mb", type=positive_int, default=1024,
                   help="free disk space kept in DATA; uploads that would eat into it are refused (507)")
    p.add_argument("--retention-hours", type=float, default=72.0,
                   help="finished jobs' results are deleted after this time unless the client deleted them (default 72)")
    p.add_argument("--unclaimed-hours", type=float, default=1.0,
                   help="a job that ended this long ago and no client has asked about for this long is deleted "
                        "with its results (its client is gone; default 1)")
    p.add_argument("--api-page", action="store_true",
                   help="serve the interactive API page at /docs (off by default: it loads Swagger UI from a public "
                        "CDN in the browser; /openapi.json is always there)")
    node = p.add_argument_group("DICOM node (docs/PACS.md)")
    node.add_argument("--node-config", default=None, metavar="FILE",
                      help="the DICOM node's file (JSON or YAML: AE title, port, allowed AEs, rules, outputs, "
                           "destinations, pull sources); turns the node on")
    node.add_argument("--dicom-port", type=int, default=None,
                      help="listen as a DICOM Storage SCP on this port (turns the node on; 0: any free port)")
    node.add_argument("--dicom-host", default=None, help="address of the DICOM port (default 127.0.0.1)")
    node.add_argument("--dicom-ae", default=None, help="the node's AE title (default PANCREAS_DINTS)")
    node.add_argument("--dicom-allow", default=None, metavar="AE[,AE...]",
                      help="calling AE titles allowed to send (others are refused at association time)")
    node.add_argument("--quiet-s", type=float, default=None,
                      help="a study is complete after this many seconds without a new instance (default 30)")


def node_settings(args: argparse.Namespace):
    """The node's settings from --node-config and the --dicom-* options, or None when the node is off."""
    from PancreasDiNTSLib.server.dicom_node.config import load_node_config

    if args.node_config is None and args.dicom_port is None:
        return None
    allow = [a.strip() for a in args.dicom_allow.split(",") if a.strip()] if args.dicom_allow else None
    overrides = {"port": args.dicom_port, "host": args.dicom_host, "ae_title": args.dicom_ae, "allowed_aes": allow,
                 "quiet_s": args.quiet_s}
    return load_node_config(Path(args.node_config) if args.node_config else None, overrides)


def run(args: argparse.Namespace) -> int:
    # the wheel alone has no server packages: one line naming the install, before anything is imported or made
    require_modules("serve", ("fastapi", "uvicorn"), "pip install 'PancreasDiNTSLib[server]'")
    from PancreasDiNTSLib.server.app import Limits
    from PancreasDiNTSLib.server.serve import ServeSettings, serve

    limits = Limits(max_upload_bytes=args.max_upload_mb << 20, max_unpacked_bytes=4 * (args.max_upload_mb << 20),
                    max_queue=args.max_queue, min_free_bytes=args.min_free_mb << 20,
                    retention_s=args.retention_hours * 3600.0, unclaimed_s=args.unclaimed_hours * 3600.0)
    settings = ServeSettings(
        data=Path(args.data), model=args.model, host=args.host, port=args.port, devices=args.device,
        token_file=Path(args.token_file) if args.token_file else None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None,
        limits=limits, node=node_settings(args), api_page=args.api_page)
    return serve(settings)
