"""``segment --server URL``: each case segmented by a ``pancreas-dints serve`` server, written like a local case.

The batch driver plans, skips, reads and checks every case here as for a local run (the same refusals, before
any upload); only the segmentation moves: the input (the image file, or a zip of the series' DICOM files) goes to
the server, the result files come back into the case folder through its :class:`..core.ownership.CaseFolder`
(each atomic, checked by size and sha256, recorded in the manifest), and report.json names this machine's input
(``case``, ``input``, ``input_identity``) as a local run's does. A job failing on the server fails the case with
the server's one-line reason, the server's copy of the input replaced by the local path. The HTTP client is
:mod:`..bridge.remote` (standard library only).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.bridge.remote import (
    RemoteError,
    ServerClient,
    job_options,
    local_message,
    progress_event,
    read_token,
    upload_kind,
    zip_series,
)
from PancreasDiNTSLib.core.errors import InputError, printable
from PancreasDiNTSLib.core.ownership import CaseFolder
from PancreasDiNTSLib.inference.pipeline import REPORT_NAME, CaseOptions, Prepared
from PancreasDiNTSLib.io.placement import PlannedCase
from PancreasDiNTSLib.io.writers import write_report

TOKEN_FILE_ENV = "PANCREAS_DINTS_TOKEN_FILE"
DEFAULT_TOKEN_FILE = Path("~/.config/pancreas-dints/token")


@dataclass
class RemoteOutcome:
    """What the batch driver needs of a case done on the server (the same fields as a local CaseOutcome's)."""

    volumes_ml: dict[str, float]
    failed_outputs: dict[str, str] = field(default_factory=dict)


def token_path(token_file: str | Path | None) -> Path:
    """--token-file, else $PANCREAS_DINTS_TOKEN_FILE, else ~/.config/pancreas-dints/token."""
    return Path(token_file or os.environ.get(TOKEN_FILE_ENV) or DEFAULT_TOKEN_FILE).expanduser()


class RemoteCases:
    """The server of one ``segment --server`` run; :meth:`run` does one case."""

    def __init__(self, url: str, token_file: str | Path | None, mode: str = "fast", region: str | None = None,
                 poll: float = 0.5) -> None:
        self.client = ServerClient(url, read_token(token_path(token_file)))
        if self.client.insecure:
            print(f"warning: {printable(url)} is not https: the images and the token cross the network in clear",
                  file=sys.stderr)
        self.served = self.client.model()  # reachable, token accepted: checked before the first case
        self.mode = mode
        self.region = region  # --region as given (None: the server decides by its device, as a local run does)
        self.poll = poll

    def run(self, prepared: Prepared, planned: PlannedCase, options: CaseOptions, folder: CaseFolder,
            on_stage: Callable[[str, float, str], Any]) -> RemoteOutcome:
        """Upload, follow, download into ``folder``; raises InputError with the server's reason on failure."""
        roi = options.roi
        query = job_options(options.formats, self.mode, roi.box if roi else None, roi.space if roi else "ras",
                            roi.mode if roi else "grid", options.allow_non_ct, region=self.region)
        with tempfile.TemporaryDirectory(prefix="pancreas-dints-upload-") as tmp:
            case = prepared.case
            if case.fmt == "dicom":
                source, kind = zip_series(case.dicom_files, Path(tmp) / "series.zip"), "zip"
            else:
                source, kind = planned.path, upload_kind(planned.path)
            limit = int(self.served.get("limits", {}).get("max_upload_bytes", 0))
            if limit and source.stat().st_size > limit:
                raise InputError(f"{printable(planned.path)}: {source.stat().st_size >> 20} MiB to send, more than the "
                                 f"server's limit of {limit >> 20} MiB (serve --max-upload-mb)")
            on_stage("upload", 0.0, "sending to the server")
            job = str(self.client.submit(source, kind, query)["id"])
        try:
            final = self.client.wait(job, lambda s: self._progress(s, planned.name, on_stage), poll=self.poll)
            if final.get("state") != "done":
                raise InputError(local_message(str(final.get("error") or final.get("state")), str(planned.path)))
            on_stage("write", 0.95, "receiving the results")
            return self._receive(job, final.get("files", []), options, folder)
        except BaseException:
            with contextlib.suppress(RemoteError):
                self.client.cancel(job)  # Ctrl-C, or a failed download: the server stops working for us
            raise
        finally:
            with contextlib.suppress(RemoteError):
                self.client.delete(job)

    @staticmethod
    def _progress(status: dict[str, Any], case: str, on_stage: Callable[[str, float, str], Any]) -> None:
        event = progress_event(status, case)
        if event["stage"] not in ("done", "failed", "cancelled"):
            on_stage(event["stage"], min(0.94, float(event["fraction"])), event["message"])

    def _downloader(self, job: str, entry: dict[str, Any]) -> Callable[[Path], Path]:
        return lambda dest: self.client.download(job, entry, dest)

    def _receive(self, job: str, files: list[dict[str, Any]], options: CaseOptions, folder: CaseFolder) -> RemoteOutcome:
        """The result files into the case folder (as segment_case writes them), report.json naming our input."""
        names = [str(e.get("name")) for e in files]
        if REPORT_NAME not in names:
            raise InputError("the server's result has no report.json; run again")
        folder.begin(names)
        for entry in files:
            if entry["name"] != REPORT_NAME:
                folder.write(str(entry["name"]), self._downloader(job, entry))
        with tempfile.TemporaryDirectory(prefix="pancreas-dints-report-") as tmp:
            entry = next(e for e in files if e["name"] == REPORT_NAME)
            report = json.loads(self.client.download(job, entry, Path(tmp) / REPORT_NAME).read_text(encoding="utf-8"))
        report.update(options.report_extra)
        report["server"] = {"url": self.client.url, "job": job}
        folder.write(REPORT_NAME, lambda dest: write_report(dest, report))
        folder.finish(names)
        return RemoteOutcome(dict(report.get("volumes_ml", {})), dict(report.get("outputs_failed", {})))
