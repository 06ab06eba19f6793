"""One case end to end: read -> check -> preprocess -> infer -> invert -> measure -> write -> report.

:func:`segment_case` is the only place the pipeline is assembled; ``segment`` (batch.py), ``demo``, ``evaluate``
and ``benchmark`` call it. Stages and their ``report.json`` timing keys:

=========== ================================================================ ==============
stage       what                                                             timing key
=========== ================================================================ ==============
read/check  io.images.read_image (format, 3D, CT intensities) and            read
            :func:`check_outputs`: every requested output's preconditions
            (not applicable -> note; its own check; the destination:
            ownership, writability, free space) before any inference
preprocess  Segmenter.preprocess (the bundle's transforms)                   preprocess
infer       Segmenter.infer (sliding window; ROI: roi.predict_roi;      infer / roi_infer
            automatic region: region.infer_auto)
invert      Segmenter.invert (softmax, inversion, argmax; the uint8          postprocess
            confidence map and lesion maximum from the same probabilities)
measure     voxel counts and mL; ``CaseOptions.measure`` adds more           measure
readout     readout.combined.case_readout: measurements, location,             readout
            confidence summary (report.json "readout")
write       every output through the sink (atomic, ownership-checked);        write (and
            each output's own time                                           write_<format>)
report      report.json (``CaseOptions.report``)                             total
=========== ================================================================ ==============

Outputs are a registry (:data:`OUTPUTS`): a format name, a file name (``core.paths.OUTPUT_NAMES``), a writer, a
size estimate and an optional precondition; :func:`register_output` adds more. Writers get :class:`CaseData`
(labels, case, confidence map, read-out, measurements).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.errors import (
    DiskFullError,
    InputError,
    OutputError,
    PancreasDiNTSError,
    UsageError,
    disk_full_error,
    first_line,
    is_disk_full,
    printable,
    require_modules,
)
from PancreasDiNTSLib.core.formats import FORMATS, OutputFormat
from PancreasDiNTSLib.core.ownership import free_bytes, probe_writable
from PancreasDiNTSLib.core.paths import OUTPUT_NAMES
from PancreasDiNTSLib.core.request import REGION_MODES, Region, RoiRequest
from PancreasDiNTSLib.core.terminology import LABEL_TABLE
from PancreasDiNTSLib.core.tracking import case_key, case_tracking
from PancreasDiNTSLib.inference.region import infer_auto
from PancreasDiNTSLib.inference.roi import box_to_voxels, predict_roi
from PancreasDiNTSLib.inference.segmenter import Inverted, Segmenter
from PancreasDiNTSLib.io import writers
from PancreasDiNTSLib.io.dicom import series_from_meta
from PancreasDiNTSLib.io.images import LoadedImage, is_dicom_file, read_image
from PancreasDiNTSLib.readout.combined import case_readout
from PancreasDiNTSLib.readout.measure import segment_volumes
from PancreasDiNTSLib.readout.page import PAGE_TITLE, render_case_page

StageCallback = Callable[[str, float, str], None]  # (stage, fraction of this case, message)
Measure = Callable[[np.ndarray, LoadedImage], dict[str, Any]]  # extra measurements -> report["measurements"]
REPORT_NAME = OUTPUT_NAMES["report"]
REPORT_RESERVE_BYTES = 1 << 20  # report.json, manifest and slack in the free-space estimate
PAGE_BYTES = 4 << 20  # an upper bound of one case page (PNG or PDF)
ROI_CONFIDENCE_REASON = ("ROI mode: the model ran only around the box, so there are no whole-image "
                         "probabilities to read confidence from")


@dataclass(frozen=True)
class CaseData:
    """What an output writer gets."""

    case: LoadedImage
    labels: np.ndarray
    model_name: str
    model_version: str
    measurements: dict[str, Any] = field(default_factory=dict)
    confidence: np.ndarray | None = None  # uint8 255 x max softmax probability on the input grid (None: ROI mode)
    readout: dict[str, Any] = field(default_factory=dict)  # readout.combined.case_readout of the labels
    model: dict[str, Any] = field(default_factory=dict)  # Bundle.describe() (name, version, md5s)
    written: dict[str, Path] = field(default_factory=dict)  # format -> its file, written earlier in this case
    seg_type: str = "binary"  # the DICOM SEG's form (CaseOptions.seg_type)


@dataclass(frozen=True)
class OutputSpec:
    """One output format's writer; what the format is (file name, DICOM needs, ...) is its core.formats entry."""

    format: OutputFormat
    write: Callable[[Path, CaseData], Any]
    estimate_bytes: Callable[[LoadedImage], int]  # an upper bound, for the free-space check
    # (case, model name, model version) -> notes; raises when the output cannot be made for this case
    precheck: Callable[[LoadedImage, str, str], list[str]] | None = None

    @property
    def filename(self) -> str:
        return self.format.filename


OUTPUTS: dict[str, OutputSpec] = {}


def register_output(name: str, write: Callable[[Path, CaseData], Any], estimate_bytes: Callable[[LoadedImage], int],
                    precheck: Callable[[LoadedImage, str, str], list[str]] | None = None) -> None:
    """The writer of the format ``name`` of core.formats.FORMATS (each format has one; a test checks)."""
    OUTPUTS[name] = OutputSpec(FORMATS[name], write, estimate_bytes, precheck)


def _voxels(case: LoadedImage) -> int:
    return int(np.prod(case.shape))


def _dicom_seg_precheck(case: LoadedImage, model_name: str, model_version: str) -> list[str]:
    """The DICOM SEG checks before inference (a trial SEG of the series, io.writers); returns notes, raises when
    no SEG can be made."""
    return list(writers.check_dicom_seg_preconditions(case, model_name, model_version) or [])


register_output("nifti", lambda d, c: writers.write_label_nifti(d, c.labels, c.case), lambda case: _voxels(case) + 4096)
register_output("seg.nrrd", lambda d, c: writers.write_seg_nrrd(d, c.labels, c.case), lambda case: _voxels(case) + 8192)
register_output("dicom-seg", lambda d, c: writers.write_dicom_seg(d, c.labels, c.case, c.model_name, c.model_version,
                                                                 c.seg_type),
                lambda case: _voxels(case) // 4 + (1 << 16), _dicom_seg_precheck)
register_output("dicom-sr", lambda d, c: writers.write_dicom_sr(d, c.written.get("dicom-seg"), c.readout, c.model, c.case,
                                                                c.model_name, c.model_version),
                lambda case: (1 << 20) + 2048 * len(case.dicom_files),
                lambda case, name, version: writers.check_dicom_sr_preconditions(case, name, version))
register_output("rtstruct", lambda d, c: writers.write_rtstruct(d, c.labels, c.case, c.model_name, c.model_version),
                lambda case: _voxels(case) // 4 + (1 << 16),
                lambda case, name, version: writers.check_rtstruct_preconditions(case, name, version))


def _write_confidence(dest: Path, data: CaseData) -> Path:
    if data.confidence is None:
        raise ValueError("no confidence map for this case (ROI mode, or the read-out was turned off)")
    return writers.write_label_nifti(dest, data.confidence, data.case)


def _write_page(dest: Path, data: CaseData) -> Path:
    """The one-page case report (readout.page) of the labels over the CT, with the read-out's table."""
    case = data.case
    ct = np.asarray(case.image[0].detach().cpu().numpy() if hasattr(case.image, "detach") else case.image[0])
    meta = {"input": case.path.name, "model": data.model, "notes": list(case.warnings)[:3]}
    return render_case_page(dest, ct, data.labels, case.affine_ras, data.readout, meta)


def _page_precheck(case: LoadedImage, model_name: str, model_version: str) -> list[str]:
    """The page draws with matplotlib (a dependency): a missing one fails this output before inference."""
    require_modules("the report page", ("matplotlib",), "pip install matplotlib")
    return []


register_output("confidence", _write_confidence, lambda case: _voxels(case) + 4096)
register_output("report-png", _write_page, lambda case: PAGE_BYTES, _page_precheck)
register_output("report-pdf", _write_page, lambda case: PAGE_BYTES, _page_precheck)


def _write_dicom_pdf(dest: Path, data: CaseData) -> Path:
    return writers.write_dicom_pdf(dest, data.written.get("report-pdf"), data.case, PAGE_TITLE, data.model_name,
                                   data.model_version)


register_output("dicom-pdf", _write_dicom_pdf, lambda case: PAGE_BYTES + 4096 + 256 * len(case.dicom_files),
                lambda case, name, version: writers.check_dicom_pdf_preconditions(case, name, version))
register_output("key-images",
                lambda d, c: writers.write_key_images(d, c.labels, c.case, c.readout, c.model_name, c.model_version),
                lambda case: (64 << 20),
                lambda case, name, version: writers.check_key_images_preconditions(case, name, version))
register_output("fhir", lambda d, c: writers.write_fhir(d, c.case, c.readout, c.model, c.model_name, c.model_version),
                lambda case: 1 << 20)


@dataclass(frozen=True)
class CaseOptions:
    """How one case is segmented and what is written."""

    formats: tuple[str, ...] = ("nifti", "seg.nrrd")
    roi: RoiRequest | None = None
    allow_non_ct: bool = False
    series: str | None = None  # which DICOM series of a folder of several (io.dicom selector)
    report: bool = True  # write report.json (the batch does; demo and benchmark write their own or none)
    measure: Measure | None = None  # hook: the read-out's measurements, merged into report["measurements"]
    readout: bool = True  # the read-out (report["readout"], confidence map); off: labels only (evaluate, benchmark)
    region: str = "whole"  # "whole" | "auto" (inference/region.py: a coarse pass, the dense pass where the gland is)
    report_extra: dict[str, Any] = field(default_factory=dict)  # keys added to (or replacing) report.json's
    seg_type: str = "binary"  # the DICOM SEG's form: binary or labelmap (io.dicom_seg.SEG_TYPES)

    def where(self) -> Region:
        """Which part of the CT this case infers (core.request.Region: the box, else ``region``); UsageError for a
        region no run has."""
        if self.region not in REGION_MODES:
            raise UsageError(f"--region {printable(self.region)}: choose {' or '.join(REGION_MODES)}")
        return Region("box", self.roi) if self.roi is not None else Region(self.region)


class OutputSink(Protocol):
    """Where a case's files go: core.ownership.CaseFolder (segment) or :class:`PlainFolder`."""

    path: Path

    def conflicts(self, names: list[str]) -> list[str]: ...
    def begin(self, names: list[str]) -> None: ...
    def write(self, name: str, writer: Callable[[Path], Any]) -> None: ...
    def finish(self, keep: list[str]) -> None: ...


class PlainFolder:
    """A folder the caller owns (the demo's staging folder, the benchmark's): atomic writes, no manifest."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def conflicts(self, names: list[str]) -> list[str]:
        return []

    def begin(self, names: list[str]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, writer: Callable[[Path], Any]) -> None:
        try:
            writer(self.path / name)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.path / name, exc) from None
            raise

    def finish(self, keep: list[str]) -> None:
        pass


@dataclass
class OutputPlan:
    """The outputs a case will write, the notes (not applicable) and the outputs that failed their checks."""

    formats: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def names(self, report: bool) -> list[str]:
        return [OUTPUTS[f].filename for f in self.formats] + ([REPORT_NAME] if report else [])


def check_destination(sink: OutputSink, names: list[str], need_bytes: int) -> None:
    """Ownership, writability and free space of ``sink`` for ``names``: OutputError / DiskFullError."""
    taken = sink.conflicts(names)
    if taken:
        raise OutputError(f"{printable(sink.path / taken[0])}: exists and was not written by pancreas-dints (or "
                          "was changed since); move or rename it, then rerun")
    probe_dir = sink.path if sink.path.is_dir() else sink.path.parent
    probe_writable(probe_dir)
    free = free_bytes(probe_dir)
    if free is not None and free < need_bytes:
        raise DiskFullError(f"{printable(probe_dir)}: {free / 2**20:.0f} MiB free, the outputs of this case need up "
                            f"to {need_bytes / 2**20:.0f} MiB; free space or choose another -o")


def refuse_non_dicom(formats: tuple[str, ...], inputs: list[Path]) -> None:
    """UsageError (exit 2, before any inference) when a format that needs DICOM is asked for a non-DICOM input."""
    needs = [f for f in formats if FORMATS[f].refuse_non_dicom]
    for path in inputs if needs else []:
        if not (Path(path).is_dir() or is_dicom_file(Path(path))):
            raise UsageError(f"--format {','.join(needs)}: {printable(path)} is not a DICOM series; these outputs "
                             "reference the input's DICOM images (give a DICOM folder, or leave them out of --format)")


def check_outputs(case: LoadedImage, options: CaseOptions, sink: OutputSink | None,
                  model: tuple[str, str] = ("", "")) -> OutputPlan:
    """Preconditions of every requested output, right after reading and before inference.

    An output that does not apply is a note; one whose own check fails is recorded as failed (the others are
    still made); when none is left, OutputError fails the case before inference."""
    plan = OutputPlan()
    for fmt in options.formats:
        spec, kind = OUTPUTS[fmt], FORMATS[fmt]
        if kind.refuse_non_dicom and case.fmt != "dicom":
            refuse_non_dicom((fmt,), [case.path])
        if kind.dicom_only and case.fmt != "dicom":
            plan.notes.append(f"{kind.label} not written: the input is not a DICOM series")
            continue
        if kind.whole_image and options.roi is not None:
            plan.notes.append(f"{kind.label} not written: {ROI_CONFIDENCE_REASON}")
            continue
        missing = [r for r in kind.requires if r in plan.failed]
        if missing:
            plan.failed[fmt] = f"it needs {missing[0]}, which cannot be written"
            continue
        try:
            if spec.precheck is not None:
                plan.notes.extend(spec.precheck(case, *model))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a failed precondition fails this output only
            plan.failed[fmt] = _reason(exc)
            continue
        plan.formats.append(fmt)
    if sink is not None:
        need = sum(OUTPUTS[f].estimate_bytes(case) for f in plan.formats) + REPORT_RESERVE_BYTES
        check_destination(sink, plan.names(options.report), need)
    if plan.failed and not plan.formats:
        raise OutputError("; ".join(f"{fmt} cannot be written: {why}" for fmt, why in plan.failed.items()))
    return plan


def check_roi(case: LoadedImage, roi: RoiRequest) -> None:
    """InputError (before inference) when the --roi box holds no voxel of this image."""
    try:
        box_to_voxels(roi.box, case.affine_ras, case.shape, roi.space)
    except ValueError:
        lo = case.affine_ras @ np.array([0, 0, 0, 1.0])
        hi = case.affine_ras @ np.array([*(s - 1 for s in case.shape), 1.0])
        extent = (f"voxels 0..{', 0..'.join(str(s - 1) for s in case.shape)}" if roi.space == "voxel" else
                  "RAS " + ", ".join(f"{min(a, b):.1f}..{max(a, b):.1f}" for a, b in zip(lo[:3], hi[:3], strict=True))
                  + " mm")
        raise InputError(f"{printable(case.path)}: --roi {','.join(f'{v:g}' for v in roi.box)} ({roi.space}) holds no "
                         f"voxel of this image ({extent}); draw the box over the image") from None


def _reason(exc: BaseException) -> str:
    return printable(first_line(exc, 300))[:300]


class _Stages:
    """Times stages (CUDA synchronised) and reports them to the progress callback."""

    def __init__(self, device: torch.device, on_stage: StageCallback | None, timings: dict[str, float] | None = None):
        self.device = device
        self.on_stage = on_stage
        self.timings: dict[str, float] = dict(timings or {})

    def say(self, stage: str, part: float, message: str = "") -> None:
        if self.on_stage is not None:
            self.on_stage(stage, part, printable(message))

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """``with stages.timed("infer"): ...`` adds the block's seconds (CUDA work included) to ``timings[key]``."""
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class Prepared:
    """A case read, checked and (without ROI) preprocessed: what the prefetch thread hands over."""

    case: LoadedImage
    plan: OutputPlan
    pre: Any = None
    timings: dict[str, float] = field(default_factory=dict)


def prepare_case(path: Path, segmenter: Segmenter | None, options: CaseOptions, sink: OutputSink | None = None,
                 on_stage: StageCallback | None = None) -> Prepared:
    """read -> check -> preprocess (not in ROI mode, which preprocesses its own crop)."""
    stages = _Stages(segmenter.device if segmenter is not None else torch.device("cpu"), on_stage)
    stages.say("load", 0.0, f"reading {Path(path).name}")
    with stages.timed("read"):
        case = read_image(path, allow_non_ct=options.allow_non_ct, series_uid=options.series)
    if options.roi is not None:
        check_roi(case, options.roi)
    bundle = segmenter.bundle if segmenter is not None else None
    plan = check_outputs(case, options, sink, (bundle.name, bundle.version) if bundle is not None else ("", ""))
    pre = None
    if options.roi is None and segmenter is not None:
        stages.say("preprocess", 0.05, "resampling to the model's grid")
        with stages.timed("preprocess"):
            pre = segmenter.preprocess(case.image)
    return Prepared(case, plan, pre, stages.timings)


@dataclass
class CaseOutcome:
    """The result of :func:`segment_case`."""

    case: LoadedImage
    labels: np.ndarray
    voxels: dict[str, int]
    volumes_ml: dict[str, float]
    timings: dict[str, float]
    measurements: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # file names written
    failed_outputs: dict[str, str] = field(default_factory=dict)  # format -> why
    notes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    readout: dict[str, Any] = field(default_factory=dict)  # readout.combined.case_readout -> report["readout"]
    confidence: np.ndarray | None = None  # the uint8 confidence map (None in ROI mode)
    region: dict[str, Any] = field(default_factory=dict)  # the automatic region's run (report inference.region)


def _predict(prepared: Prepared, segmenter: Segmenter, roi: RoiRequest | None, stages: _Stages,
             readout: bool = True, region: dict[str, Any] | None = None) -> Inverted:
    """preprocess -> infer -> invert (or the ROI path, which runs the same stages on its windows). ``region``:
    a dict to run the automatic region (region.infer_auto) and receive what it did."""
    image = prepared.case.image
    if roi is not None:
        stages.say("infer", 0.1, f"ROI {list(roi.box)} ({roi.space}, {roi.mode} mode)")
        with stages.timed("roi_infer"):
            return Inverted(predict_roi(segmenter, image, roi.box, space=roi.space, mode=roi.mode))
    pre = prepared.pre
    if pre is None:
        stages.say("preprocess", 0.05, "resampling to the model's grid")
        with stages.timed("preprocess"):
            pre = segmenter.preprocess(image)
    else:
        stages.say("preprocess", 0.05, "resampled to the model's grid")

    def on_window(done: int, total: int) -> None:
        stages.say("infer", 0.1 + 0.8 * done / max(1, total), f"window {done}/{total}")

    with stages.timed("infer"):
        logits = segmenter.infer(pre, on_window) if region is None else _infer_auto(segmenter, pre, stages, region)
    stages.say("postprocess", 0.92, "inverting to the input grid")
    with stages.timed("postprocess"):
        return segmenter.invert(logits, pre, readout=readout)


def _infer_auto(segmenter: Segmenter, pre: Any, stages: _Stages, into: dict[str, Any]) -> Any:
    """region.infer_auto with its passes as progress (coarse 10-25 %, dense 25-90 %); what ran goes to ``into``."""
    spans = {"coarse": (0.1, 0.15), "dense": (0.25, 0.65), "whole": (0.1, 0.8)}

    def progress(name: str, done: int, total: int) -> None:
        start, width = spans[name]
        stages.say("infer", start + width * done / max(1, total), f"{name} window {done}/{total}")

    logits, run = infer_auto(segmenter, pre, progress)
    into.update(run.describe())
    return logits


def input_case_key(case: LoadedImage) -> str:
    """The case key of the tracking UIDs (core.tracking): the DICOM series UID, else a digest of the input."""
    series = series_from_meta(dict(getattr(case.image, "meta", {}) or {})) or {}
    if case.fmt == "dicom":
        return case_key(series.get("series_instance_uid") or None, case.dicom_files)
    return case_key(None, [case.path])


def _readout(inverted: Inverted, case: LoadedImage, roi: RoiRequest | None, stages: _Stages) -> dict[str, Any]:
    """The read-out of the labels (measurements, location, confidence from the inversion's map)."""
    stages.say("readout", 0.93, "measuring the segments")
    with stages.timed("readout"):
        out = case_readout(inverted.labels, case.affine_ras, confidence_map=inverted.confidence,
                           lesion=inverted.lesion,
                           confidence_reason=ROI_CONFIDENCE_REASON if roi is not None else "no probabilities given")
        out["tracking"] = case_tracking(input_case_key(case), out)
        return out


def segment_case(source: Path | Prepared, segmenter: Segmenter, options: CaseOptions | None = None,
                 sink: OutputSink | None = None, on_stage: StageCallback | None = None,
                 started: float | None = None) -> CaseOutcome:
    """Segment one case: read -> check -> preprocess -> infer -> invert -> measure -> write -> report.

    ``source``: an input path, or a :class:`Prepared` case (batch prefetch). ``sink``: where outputs go (None:
    nothing is written, e.g. ``evaluate``). Input problems raise InputError before any inference; an output
    failing after inference is recorded in ``failed_outputs`` (and report.json) while the others are kept;
    a full disk raises DiskFullError. ``started``: perf_counter time the case's ``total`` counts from."""
    options = options or CaseOptions()
    t0 = started if started is not None else time.perf_counter()
    prepared = source if isinstance(source, Prepared) else prepare_case(source, segmenter, options, sink, on_stage)
    stages = _Stages(segmenter.device, on_stage, prepared.timings)
    region: dict[str, Any] | None = {} if options.where().kind == "auto" else None  # what the automatic region ran
    inverted = _predict(prepared, segmenter, options.roi, stages, options.readout, region)
    labels = inverted.labels
    case = prepared.case
    with stages.timed("measure"):
        voxels, ml = segment_volumes(labels, case.affine_ras)
        measurements = options.measure(labels, case) if options.measure is not None else {}
    readout = _readout(inverted, case, options.roi, stages) if options.readout else {}
    outcome = CaseOutcome(case, labels, voxels, ml, stages.timings, measurements, notes=list(prepared.plan.notes),
                          failed_outputs=dict(prepared.plan.failed), readout=readout,
                          confidence=inverted.confidence, region=region or {})
    if region and region.get("fallback"):
        outcome.notes.append(f"automatic region: {region['fallback']}")
    if sink is not None:
        _write_outputs(outcome, prepared.plan, segmenter, options, sink, stages)
    outcome.timings["total"] = time.perf_counter() - t0
    outcome.report = case_report(outcome, segmenter, options)
    if sink is not None and options.report:
        _write_report(outcome, sink)
    return outcome


def _bound_writer(write: Callable[[Path, CaseData], Any], data: CaseData) -> Callable[[Path], Any]:
    """``write`` with this case's data bound: what an OutputSink calls with the destination path."""
    return lambda dest: write(dest, data)


def _write_outputs(outcome: CaseOutcome, plan: OutputPlan, segmenter: Segmenter, options: CaseOptions,
                   sink: OutputSink, stages: _Stages) -> None:
    """Every planned output, each atomically; a failing one is recorded and the others are still written."""
    stages.say("write", 0.95, "writing outputs")
    t0 = time.perf_counter()
    sink.begin(plan.names(options.report))
    bundle = segmenter.bundle
    data = CaseData(outcome.case, outcome.labels, bundle.name, bundle.version, outcome.measurements,
                    outcome.confidence, outcome.readout, bundle.describe(), seg_type=options.seg_type)
    for fmt in plan.formats:
        spec = OUTPUTS[fmt]
        try:
            t1 = time.perf_counter()
            sink.write(spec.filename, _bound_writer(spec.write, data))
            outcome.timings[f"write_{fmt}"] = time.perf_counter() - t1
            outcome.outputs.append(spec.filename)
            data.written[fmt] = sink.path / spec.filename
        except (DiskFullError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - one output failing keeps the others (reported per output)
            if is_disk_full(exc):
                raise disk_full_error(sink.path / spec.filename, exc) from None  # type: ignore[arg-type]
            outcome.failed_outputs[fmt] = _reason(exc)
    outcome.timings["write"] = time.perf_counter() - t0
    if not options.report:
        sink.finish(outcome.outputs)


def _write_report(outcome: CaseOutcome, sink: OutputSink) -> None:
    try:
        sink.write(REPORT_NAME, lambda dest: writers.write_report(dest, outcome.report))
    except PancreasDiNTSError:
        raise
    except OSError as exc:
        raise OutputError(f"{printable(sink.path / REPORT_NAME)}: cannot be written ({exc.strerror or exc})") from None
    sink.finish(outcome.outputs + [REPORT_NAME])


def case_report(outcome: CaseOutcome, segmenter: Segmenter, options: CaseOptions) -> dict[str, Any]:
    """report.json of a case (segment's; the demo adds its own keys)."""
    case = outcome.case
    inference = segmenter.describe() | ({"roi": options.roi.describe()} if options.roi else {})
    inference["region"] = outcome.region or options.where().report()
    report: dict[str, Any] = {
        "case": case.name,
        "input": str(case.path),
        "input_format": case.fmt,
        "dicom_series": series_from_meta(dict(getattr(case.image, "meta", {}) or {})),
        "shape": list(case.shape),
        "spacing_mm": [round(s, 6) for s in case.spacing],
        "labels": dict(LABEL_TABLE),
        "voxels": outcome.voxels,
        "volumes_ml": outcome.volumes_ml,
        "timings_s": {k: round(v, 4) for k, v in outcome.timings.items()},
        "device": str(segmenter.device),
        "inference": inference,
        "model": segmenter.bundle.describe(),
        "status": "failed" if outcome.failed_outputs else "ok",
        "outputs": outcome.outputs + ([REPORT_NAME] if options.report else []),
        "outputs_failed": outcome.failed_outputs,
        "notes": outcome.notes + list(case.warnings),
        "software": {"pancreas_dints": __version__, "python": platform.python_version()},
    }
    if outcome.measurements:
        report["measurements"] = outcome.measurements
    if outcome.readout:
        report["readout"] = outcome.readout
    report.update(options.report_extra)
    return report
