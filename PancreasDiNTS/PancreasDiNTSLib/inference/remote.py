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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.bridge.remote import (
    RemoteError,
    ServerClient,
    checked_files,
    checked_report,
    local_message,
    progress_event,
    read_token,
    upload_kind,
    zip_series,
)
from PancreasDiNTSLib.core.errors import InputError, printable
from PancreasDiNTSLib.core.ownership import CaseFolder
from PancreasDiNTSLib.core.request import SegmentRequest
from PancreasDiNTSLib.inference.pipeline import OUTPUTS, REPORT_NAME, CaseOptions, Prepared
from PancreasDiNTSLib.io.images import LPS_TO_RAS, LoadedImage
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

    def __init__(self, request: SegmentRequest, poll: float = 0.5) -> None:
        url = str(request.server)
        self.client = ServerClient(url, read_token(token_path(request.token_file)))
        self.job_timeout_s = request.server_job_timeout
        self.run_timeout_s = request.server_timeout
        self.run_deadline = time.monotonic() + self.run_timeout_s if self.run_timeout_s > 0 else None
        if self.client.insecure:
            print(f"warning: {printable(url)} is not https: the images and the token cross the network in clear",
                  file=sys.stderr)
        self.served = self.client.model()  # reachable, token accepted: checked before the first case
        # the job's options: the request's (--region as given: None lets the server decide by its device, as a local
        # run does); each upload is one series, so no series selector
        self.query = replace(request, series=None).to_query()
        self.poll = poll

    def run(self, prepared: Prepared, planned: PlannedCase, options: CaseOptions, folder: CaseFolder,
            on_stage: Callable[[str, float, str], Any]) -> RemoteOutcome:
        """Upload, follow, download into ``folder``; raises InputError with the server's reason on failure."""
        timeout = self._job_timeout(planned)
        query = self.query | {"formats": ",".join(options.formats)}
        with tempfile.TemporaryDirectory(prefix="pancreas-dints-upload-") as tmp:
            case = prepared.case
            if case.fmt == "dicom":
                source, kind = zip_series(case.dicom_files, Path(tmp) / "series.zip"), "zip"
            else:
                source, kind = planned.path, upload_kind(planned.path)
            limits = self.served.get("limits")
            limit = limits.get("max_upload_bytes") if isinstance(limits, dict) else None
            if isinstance(limit, int) and limit > 0 and source.stat().st_size > limit:
                raise InputError(f"{printable(planned.path)}: {source.stat().st_size >> 20} MiB to send, more than the "
                                 f"server's limit of {limit >> 20} MiB (serve --max-upload-mb)")
            on_stage("upload", 0.0, "sending to the server")
            job = str(self.client.submit(source, kind, query)["id"])
        try:
            final = self.client.wait(job, lambda s: self._progress(s, planned.name, on_stage), poll=self.poll,
                                     timeout_s=timeout)
            if final.get("state") != "done":
                raise InputError(local_message(str(final.get("error") or final.get("state")), str(planned.path)))
            on_stage("write", 0.95, "receiving the results")
            return self._receive(job, final, prepared, options, folder)
        except BaseException:
            with contextlib.suppress(RemoteError):
                self.client.cancel(job)  # Ctrl-C, or a failed download: the server stops working for us
            raise
        finally:
            with contextlib.suppress(RemoteError):
                self.client.delete(job)

    def _job_timeout(self, planned: PlannedCase) -> float:
        """This case's time limit: --server-job-timeout, or what is left of --server-timeout (InputError when
        nothing is: the case is not sent)."""
        if self.run_deadline is None:
            return self.job_timeout_s
        left = self.run_deadline - time.monotonic()
        if left <= 0:
            raise InputError(f"{printable(planned.path)}: not sent: the run's --server-timeout of "
                             f"{self.run_timeout_s:g} s has passed")
        return min(self.job_timeout_s, left)

    @staticmethod
    def _progress(status: dict[str, Any], case: str, on_stage: Callable[[str, float, str], Any]) -> None:
        event = progress_event(status, case)
        if event["stage"] not in ("done", "failed", "cancelled"):
            on_stage(event["stage"], min(0.94, float(event["fraction"])), event["message"])

    def _receive(self, job: str, status: dict[str, Any], prepared: Prepared, options: CaseOptions,
                 folder: CaseFolder) -> RemoteOutcome:
        """The result files into the case folder (as segment_case writes them), report.json naming our input.

        Everything is downloaded into a temporary folder and checked first (the names this case asked for, the
        report's types, each image on this input's grid and affine); only then does anything enter the case
        folder, so a wrong result (another patient's grid) never lands next to this patient's files."""
        allowed = prepared.plan.names(True)
        with tempfile.TemporaryDirectory(prefix="pancreas-dints-result-") as tmp:
            files = checked_files(status, [REPORT_NAME], allowed)
            got = {str(e["name"]): self.client.download(job, e, Path(tmp) / str(e["name"])) for e in files}
            try:
                report = checked_report(json.loads(got[REPORT_NAME].read_text(encoding="utf-8")))
            except (ValueError, UnicodeDecodeError):
                raise RemoteError("the server's report.json is not JSON; not using it") from None
            failed = {OUTPUTS[f].filename for f in report.get("outputs_failed", {}) if f in OUTPUTS}
            checked_files(status, [n for n in allowed if n not in failed], allowed)  # every output not failed
            for name, path in got.items():
                _check_grid(name, path, prepared.case)
            names = list(got)
            folder.begin(names)
            for name, path in got.items():
                if name != REPORT_NAME:
                    folder.write(name, _copier(path))
        report.update(options.report_extra)
        report["server"] = {"url": self.client.url, "job": job}
        folder.write(REPORT_NAME, lambda dest: write_report(dest, report))
        folder.finish(names)
        return RemoteOutcome(dict(report.get("volumes_ml", {})), dict(report.get("outputs_failed", {})))


def _copier(src: Path) -> Callable[[Path], Any]:
    return lambda dest: shutil.copyfile(src, dest)


def _check_grid(name: str, path: Path, case: LoadedImage) -> None:
    """A NIfTI or .seg.nrrd result must lie on exactly the input's grid (shape, and affine within 1 µm)."""
    if name.endswith(".nii.gz"):
        import nibabel as nib

        try:
            image: Any = nib.load(str(path))
            shape, affine = tuple(int(v) for v in image.shape[:3]), np.asarray(image.affine)
        except Exception:  # nibabel raises several types for a bad file
            raise RemoteError(f"the server's {name} is not a readable NIfTI file; not using it") from None
    elif name.endswith(".seg.nrrd"):
        import slicerio

        try:
            seg = slicerio.read_segmentation(str(path))
            shape, affine = tuple(int(v) for v in seg["voxels"].shape[:3]), LPS_TO_RAS @ np.asarray(seg["ijkToLPS"])
        except Exception:  # slicerio/pynrrd raise several types for a bad file
            raise RemoteError(f"the server's {name} is not a readable segmentation file; not using it") from None
    else:
        return
    if shape != case.shape or not np.allclose(affine, case.affine_ras, atol=1e-3):
        raise RemoteError(f"the server's {name} is on another grid ({'x'.join(map(str, shape))}, not this input's "
                          f"{'x'.join(map(str, case.shape))}, or another position); not using it (another image's "
                          "result?)")
