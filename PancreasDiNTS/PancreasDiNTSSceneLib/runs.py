"""One Segment run, scene side: write the input, build the engine command, then import the result or clean up.

The process itself is started by the caller (the module through ``slicer.util.launchConsoleProcess``, tests with
``subprocess``), so this file needs neither Qt nor the application. The scene is changed only by
:meth:`SegmentationJob.complete` after the engine succeeded and every output was read; a failed or cancelled
run changes nothing and leaves no temporary files.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.bridge import case_results, commands, progress_lines, remote
from PancreasDiNTSLib.core.errors import UsageError
from PancreasDiNTSLib.core.paths import OUTPUT_NAMES
from PancreasDiNTSLib.core.request import PANEL_MODES, Region, RoiRequest, SegmentRequest

from PancreasDiNTSSceneLib.common import SceneLayerError, resolve_scene
from PancreasDiNTSSceneLib.roi import roi_argument
from PancreasDiNTSSceneLib.segmentations import import_segmentation
from PancreasDiNTSSceneLib.volumes import load_confidence_volume, write_engine_input

INPUT_FILE_NAME = "input.nrrd"  # the case folder the engine writes is named after it: OUTPUT/input/
SPEED_CHOICES = PANEL_MODES  # the panel's speed choice: fast (default, same labels) or MONAI's own path


@dataclass
class SegmentationResult:
    """Outcome of one Segment run."""

    success: bool
    message: str = ""
    segmentationNode: Any = None
    volumes: dict[str, float] = field(default_factory=dict)
    log: str = ""
    cancelled: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    confidenceNode: Any = None


@dataclass
class SegmentationJob:
    """Everything one run needs; :meth:`prepare` returns the command line, :meth:`complete` imports.

    roi_box: world RAS box (x0, y0, z0, x1, y1, z1) from :func:`roi.roi_box_ras`, or None for the whole CT.
    keep_outputs: leave the engine's output folder in place (tests compare it with the scene).
    """

    input_volume: Any
    model: str | Path
    output_segmentation: Any = None
    device: str = "auto"
    scene: Any = None
    roi_box: tuple[float, ...] | None = None
    roi_mode: str = "grid"
    mode: str = "fast"
    region: str | None = None  # "auto" | "whole" (segment --region; None: the engine's default, auto on a CPU)
    allow_non_ct: bool = False
    precision: str = "auto"  # core.request.PRECISIONS: segment --precision (auto: the engine decides)
    formats: tuple[str, ...] = ("seg.nrrd", "confidence")  # the confidence map only while load_confidence
    python: str | None = None
    work_dir: Path | None = None
    keep_outputs: bool = False
    load_confidence: bool = True  # ask the engine for its confidence map and load it (hidden until shown)
    importer: Any = None  # (path, input volume, output segmentation) -> node; default import_segmentation
    confidence_loader: Any = None  # (path, input volume) -> node; default volumes.load_confidence_volume

    @property
    def output_dir(self) -> Path:
        assert self.work_dir is not None, "prepare() first"
        return self.work_dir / "output"

    def requested_formats(self) -> tuple[str, ...]:
        """``formats`` with the confidence map added or left out as ``load_confidence`` says (not in ROI mode,
        where the engine has no whole-image probabilities)."""
        name = "confidence"
        want = self.load_confidence and self.roi_box is None and name in OUTPUT_NAMES
        return tuple(f for f in self.formats if f != name) + ((name,) if want else ())

    def request(self, input_path: str | Path = INPUT_FILE_NAME) -> SegmentRequest:
        """This run as a ``segment`` request (core.request); SceneLayerError with the one line for a bad choice."""
        if self.mode not in SPEED_CHOICES:
            raise SceneLayerError(f"mode must be one of {', '.join(SPEED_CHOICES)}, not {self.mode!r}")
        try:
            # the box rounded to 1/1000 mm (roi_argument), on this computer and on a server alike
            box = tuple(float(v) for v in roi_argument(self.roi_box).split(",")) if self.roi_box is not None else None
            region = Region("box", RoiRequest(box, "ras", self.roi_mode)) if box else Region(self.region)
            return SegmentRequest((str(input_path),), self.output_dir if self.work_dir else Path("output"),
                                  str(self.model), device=self.device, formats=self.requested_formats(),
                                  progress="json", overwrite=True, allow_non_ct=self.allow_non_ct, mode=self.mode,
                                  region=region, precision=self.precision)
        except UsageError as exc:
            raise SceneLayerError(str(exc)) from None

    def prepare(self) -> list[str]:
        """Check the choices, write the input volume (world coordinates) and return the engine command."""
        self.scene = resolve_scene(self.scene)
        if self.input_volume is None:
            raise SceneLayerError("select an input CT volume")
        if not self.model:
            raise SceneLayerError("select a model: download the official model or choose a local model folder")
        if not Path(self.model).exists():
            raise SceneLayerError(f"model not found: {self.model}; choose a bundle folder or an exported model file")
        self.request()  # the choices, checked before anything is written
        created = self.work_dir is None
        if created:
            self.work_dir = Path(tempfile.mkdtemp(prefix="PancreasDiNTS-"))
        try:
            input_path = write_engine_input(self.input_volume, Path(self.work_dir) / INPUT_FILE_NAME)
            python = commands.python_executable() if self.python is None else self.python
            return commands.request_command(python, self.request(input_path))
        except Exception:
            self.cleanup()
            raise

    def complete(self, returncode: int | None, cancelled: bool = False,
                 parser: progress_lines.ProgressParser | None = None) -> SegmentationResult:
        """After the process ended: import the result on success; always clean up (unless keep_outputs)."""
        log = "\n".join(parser.log) if parser else ""
        try:
            if cancelled:
                return SegmentationResult(False, "Cancelled.", log=log, cancelled=True)
            if returncode != 0:
                message = parser.error_message(returncode) if parser else f"the engine stopped with exit code {returncode}"
                return SegmentationResult(False, message, log=log)
            try:
                folder = case_results.case_folder(self.output_dir)
                report = case_results.read_report(folder)
                seg_file = case_results.seg_nrrd_path(folder)
                if self.importer is not None:
                    node = self.importer(seg_file, self.input_volume, self.output_segmentation)
                else:
                    node = import_segmentation(seg_file, self.input_volume, self.output_segmentation, self.scene)
            except (SceneLayerError, FileNotFoundError, ValueError) as exc:
                return SegmentationResult(False, str(exc), log=log)
            result = SegmentationResult(True, "", node, case_results.report_volumes(report), log, report=report)
            # The engine's confidence map (its name comes from the engine's table), loaded but not shown.
            name = OUTPUT_NAMES.get("confidence")
            if self.load_confidence and name and (folder / name).is_file():
                try:
                    if self.confidence_loader is not None:
                        result.confidenceNode = self.confidence_loader(folder / name, self.input_volume)
                    else:
                        result.confidenceNode = load_confidence_volume(folder / name, self.input_volume, self.scene)
                except SceneLayerError as exc:
                    result.message = f"segments imported; the confidence map was not: {exc}"
            return result
        finally:
            if not self.keep_outputs:
                self.cleanup()

    def cleanup(self) -> None:
        """Remove the temporary folder (input copy and outputs)."""
        if self.work_dir is not None and not self.keep_outputs:
            shutil.rmtree(self.work_dir, ignore_errors=True)


@dataclass
class RemoteSegmentationJob(SegmentationJob):
    """A Segment run on a ``pancreas-dints serve`` server: the same input file and the same import as a local
    run; :meth:`start` returns a :class:`bridge.remote.RemoteRun` (standard-library HTTP on a thread) that is
    read like the engine's process: drain its lines into a ProgressParser, then ``complete(run.returncode,
    cancelled, parser)``. ``model`` is the server's (the argument is ignored)."""

    server_url: str = ""
    token: str = ""
    cafile: str | None = None

    def start(self) -> remote.RemoteRun:
        """Check the choices, write the input volume (world coordinates) and start the upload on a thread."""
        self.scene = resolve_scene(self.scene)
        if self.input_volume is None:
            raise SceneLayerError("select an input CT volume")
        if not self.server_url or not self.token:
            raise SceneLayerError("give the server's address and its token")
        query = self.request().to_query()  # the choices, checked before anything is written
        try:
            client = remote.ServerClient(self.server_url, self.token, cafile=self.cafile)
        except remote.RemoteError as exc:
            raise SceneLayerError(str(exc)) from None
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="PancreasDiNTS-"))
        try:
            input_path = write_engine_input(self.input_volume, Path(self.work_dir) / INPUT_FILE_NAME)
        except Exception:
            self.cleanup()
            raise
        return remote.RemoteRun(client, input_path, self.output_dir, query,
                                case=INPUT_FILE_NAME.split(".")[0]).start()
