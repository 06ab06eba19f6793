"""A worker process of ``pancreas-dints serve``: loads the model once, then runs jobs read from stdin.

``python -m PancreasDiNTSLib.server.worker --model M --device D``. Each job is one ``segment`` run of the batch
driver (:func:`..inference.batch.run_segment`, with this process's Segmenter), so a server job is checked,
segmented, written and reported exactly as a local case. Protocol: one JSON object per line; on stdout (the
original descriptor; everything printed by libraries goes to stderr, the server's log) ``hello`` once, then
``progress`` lines and one ``result`` per job. The process dies with the server (PR_SET_PDEATHSIG on Linux,
and a watch on the parent's id), and is killed with its children on cancel.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any

from PancreasDiNTSLib.bridge.remote import INPUT_PLACEHOLDER
from PancreasDiNTSLib.core.errors import EXIT_MODEL, PancreasDiNTSError, printable
from PancreasDiNTSLib.core.ownership import file_digest
from PancreasDiNTSLib.core.paths import OUTPUT_NAMES
from PancreasDiNTSLib.core.request import SegmentRequest
from PancreasDiNTSLib.core.startup import skip_unused_imports
from PancreasDiNTSLib.inference.batch import SegmentSettings, run_segment
from PancreasDiNTSLib.inference.device import resolve_device
from PancreasDiNTSLib.inference.segmenter import Segmenter
from PancreasDiNTSLib.io.placement import CasePlanner
from PancreasDiNTSLib.model.download import resolve_model
from PancreasDiNTSLib.model.loader import load_bundle

PROGRESS_EVERY_S = 0.25


def _protocol_stream() -> IO[str]:
    """The real stdout for protocol lines; file descriptor 1 then points at stderr (library chatter)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def _die_with_parent() -> None:
    """End this process when the server ends, even by ``kill -9``."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class Worker:
    def __init__(self, model: str, device: str, proto: IO[str]) -> None:
        self.bundle = load_bundle(resolve_model(model))
        self.device = resolve_device(device)
        self.model = model
        self.proto = proto
        self.segmenters: dict[tuple[str, str], Segmenter] = {}
        self.segmenter("fast", "auto")  # built before the hello: the first job does not pay for it

    def send(self, message: dict[str, Any]) -> None:
        self.proto.write(json.dumps(message) + "\n")
        self.proto.flush()

    def hello(self) -> None:
        self.send({"type": "hello", "model": self.bundle.describe(), "device": str(self.device), "pid": os.getpid()})

    def segmenter(self, mode: str, precision: str) -> Segmenter:
        if (mode, precision) not in self.segmenters:
            self.segmenters[mode, precision] = Segmenter(self.bundle, self.device, mode=mode, precision=precision)
        return self.segmenters[mode, precision]

    def settings(self, job: dict[str, Any]) -> SegmentSettings:
        """The job's stored options (core.request's job query) as the batch driver's settings."""
        request = SegmentRequest.from_query(job["options"], inputs=(job["input"],), out_dir=Path(job["out"]),
                                            model=self.model, device=str(self.device), progress="none",
                                            overwrite=True, prefetch=False)
        return SegmentSettings.of(request)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """One job -> its result message (done with the files, or failed with the one-line reason)."""
        last: dict[str, Any] = {"at": 0.0, "stage": ""}

        def on_event(event: dict[str, Any]) -> None:
            now, stage = time.monotonic(), str(event.get("stage", ""))
            if stage in ("summary", "done", "error") or (stage == last["stage"] and now - last["at"] < PROGRESS_EVERY_S):
                return
            last.update(at=now, stage=stage)
            self.send({"type": "progress", "id": job["id"], "stage": stage, "fraction": event.get("fraction", 0.0),
                       "message": _scrub(str(event.get("message", "")), job)})

        try:
            settings = self.settings(job)
            count = len(CasePlanner([Path(job["input"])], Path(job["out"]), settings.series).inputs)
            if count != 1:  # before any inference: a zip of two series is never segmented twice, then failed
                return _failed(job, f"{INPUT_PLACEHOLDER}: the upload holds {count} series; send one series, or "
                                    "choose one with series=")
            summary = run_segment(settings, on_event, self.segmenter(settings.mode, settings.precision))
        except PancreasDiNTSError as exc:
            return _failed(job, str(exc))
        if len(summary.results) != 1:
            return _failed(job, f"{INPUT_PLACEHOLDER}: the upload holds {len(summary.results)} series; send one "
                                "series, or choose one with series=")
        result = summary.results[0]
        if not result.output_dir:
            return _failed(job, result.message)
        folder = Path(result.output_dir)
        names = [n for n in json.loads((folder / OUTPUT_NAMES["report"]).read_text(encoding="utf-8"))["outputs"]]
        files = [{"name": n, **file_digest(folder / n)} for n in names if n in OUTPUT_NAMES.values()]
        return {"type": "result", "id": job["id"], "state": "done", "case_dir": folder.name, "files": files,
                "message": _scrub(result.message, job)}


def _scrub(message: str, job: dict[str, Any]) -> str:
    """A message without the server's paths: the job's input becomes INPUT_PLACEHOLDER, the rest '<server>'."""
    for path in sorted({job["input"], os.path.realpath(job["input"])}, key=len, reverse=True):
        message = message.replace(path, INPUT_PLACEHOLDER)
    for path in sorted({job["data"], os.path.realpath(job["data"])}, key=len, reverse=True):
        message = message.replace(path, "<server>")
    return printable(message)


def _failed(job: dict[str, Any], message: str) -> dict[str, Any]:
    return {"type": "result", "id": job["id"], "state": "failed", "error": _scrub(message, job)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="PancreasDiNTSLib.server.worker")
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    proto = _protocol_stream()
    _die_with_parent()
    warnings.filterwarnings("ignore")
    try:
        worker = Worker(args.model, args.device, proto)
    except PancreasDiNTSError as exc:
        proto.write(json.dumps({"type": "fatal", "error": printable(exc), "exit_code": exc.exit_code}) + "\n")
        proto.flush()
        return exc.exit_code or EXIT_MODEL
    worker.hello()
    for line in sys.stdin:
        job = json.loads(line)
        try:
            result = worker.run(job)
        except Exception as exc:  # noqa: BLE001 - an engine bug fails this job; the worker goes on
            first = str(exc).splitlines()[0] if str(exc) else ""
            result = _failed(job, f"unexpected {type(exc).__name__}: {first}")
        worker.send(result)
    return 0


if __name__ == "__main__":
    skip_unused_imports()
    sys.exit(main())
