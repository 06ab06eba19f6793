"""The ``segment`` pipeline over many cases: skip/overwrite, per-case isolation, atomic case folders, summary.

Each case's outputs are written into a temporary folder that replaces ``OUTDIR/<case>/`` only when everything
succeeded, so a failed or interrupted case leaves nothing behind. A failing case does not stop the others.
With ``prefetch`` (the default), reading and preprocessing case i+1 run in a background thread while case i is
inferred (fastpath.prefetched); the labels are the same either way.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import atomic_dir, write_text_atomic
from PancreasDiNTSLib.core.errors import InputError, OutputError, PancreasDiNTSError
from PancreasDiNTSLib.core.paths import FORMATS, OUTPUT_NAMES
from PancreasDiNTSLib.core.progress import Progress, ProgressCallback
from PancreasDiNTSLib.io.images import LoadedImage, case_name, expand_inputs, read_image
from PancreasDiNTSLib.io.writers import (
    volumes_ml,
    write_dicom_seg,
    write_label_nifti,
    write_report,
    write_seg_nrrd,
)
from PancreasDiNTSLib.model.bundle import Bundle
from PancreasDiNTSLib.model.download import resolve_model
from PancreasDiNTSLib.model.loader import load_bundle


@dataclass
class CaseResult:
    """What happened to one input."""

    case: str
    input: str
    status: str  # "ok", "skipped", "failed"
    message: str = ""
    output_dir: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class SegmentSummary:
    results: list[CaseResult]

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": "summary",
            "cases": len(self.results),
            "succeeded": sum(r.status == "ok" for r in self.results),
            "skipped": sum(r.status == "skipped" for r in self.results),
            "failed": len(self.failed),
            "results": [r.__dict__ for r in self.results],
        }


def parse_formats(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"nifti,seg.nrrd"`` -> ["nifti", "seg.nrrd"]; InputError for an unknown format."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        aliases = {"nii": "nifti", "nii.gz": "nifti", "seg": "seg.nrrd", "dicomseg": "dicom-seg", "dcm": "dicom-seg"}
        item = aliases.get(item, item)
        if item not in FORMATS:
            raise InputError(f"--format {item}: unknown output format; choose from {', '.join(FORMATS)}")
        if item not in out:
            out.append(item)
    if not out:
        raise InputError("--format: give at least one of " + ", ".join(FORMATS))
    return out


def check_writable(out_dir: Path) -> None:
    """OutputError unless ``out_dir`` can be created and written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder is not writable ({exc.strerror or exc}); choose another -o") from None


def _unique_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = case_name(p)
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def expected_outputs(case_dir: Path, formats: list[str], is_dicom: bool) -> list[Path]:
    outs = [case_dir / OUTPUT_NAMES["report"]]
    for fmt in formats:
        if fmt == "dicom-seg" and not is_dicom:
            continue
        outs.append(case_dir / OUTPUT_NAMES[fmt])
    return outs


def _write_case(tmp_dir: Path, case: LoadedImage, labels, formats: list[str], bundle: Bundle) -> list[str]:
    written, notes = [], []
    for fmt in formats:
        dest = tmp_dir / OUTPUT_NAMES[fmt]
        if fmt == "nifti":
            write_label_nifti(dest, labels, case)
        elif fmt == "seg.nrrd":
            write_seg_nrrd(dest, labels, case)
        elif fmt == "dicom-seg":
            if case.fmt != "dicom":
                notes.append("DICOM SEG not written: the input is not a DICOM series")
                continue
            write_dicom_seg(dest, labels, case, bundle.name, bundle.version)
        written.append(dest.name)
    return written + [f"note: {n}" for n in notes]


def _call(fn: Any, arg: Any) -> Any:
    """``fn(arg)``, or the exception it raised (the same contract as fastpath.prefetched)."""
    try:
        return fn(arg)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - raised again by the case loop, inside its error handling
        return exc


def run_segment(
    inputs: list[str],
    out_dir: str | Path,
    model: str | Path,
    device: str = "auto",
    formats: str | list[str] = ("nifti", "seg.nrrd"),
    progress: str = "auto",
    overwrite: bool = False,
    allow_non_ct: bool = False,
    sw_batch_size: int | None = None,
    callback: ProgressCallback | None = None,
    rank: int = 0,
    world_size: int = 1,
    mode: str = "fast",
    engine: str = "eager",
    roi: tuple[list[float], str, str] | None = None,
    prefetch: bool = True,
) -> SegmentSummary:
    """Segment every input into ``out_dir/<case>/``; see the module docstring for the guarantees.

    Raises ModelError/DeviceError/OutputError before any case when the model, device or output folder is unusable.
    Under torchrun (``world_size`` > 1) rank ``r`` processes cases r, r+W, r+2W, ...
    ``mode``/``engine``: see inference.Segmenter. ``roi`` = (box [x0, y0, z0, x1, y1, z1], space "ras"|"voxel",
    roi mode "grid"|"local"): only the sliding windows touching the box run; labels outside it are 0.
    ``prefetch``: read and preprocess the next case in a background thread during this one's inference.
    """
    from PancreasDiNTSLib.inference.segmenter import Segmenter, resolve_device

    fmts = parse_formats(formats)
    out = Path(out_dir).expanduser()
    dev = resolve_device(device)
    bundle = load_bundle(resolve_model(model))
    check_writable(out)

    results: list[CaseResult] = []
    paths: list[Path] = []
    for arg in inputs:
        try:
            paths.extend(p for p in expand_inputs([arg]) if p not in paths)
        except InputError as exc:
            results.append(CaseResult(case=case_name(Path(arg)), input=arg, status="failed", message=str(exc)))
    names = _unique_names(paths)
    cases = list(zip(names, paths, strict=True))[rank::world_size]

    reporter = Progress(progress, total=max(1, len(cases)), callback=callback)
    # Model problems (weights that do not fit the architecture...) concern every case: fail before the first.
    t_model = time.perf_counter()
    segmenter = Segmenter(bundle, dev, sw_batch_size=sw_batch_size, mode=mode, engine=engine) if cases else None
    load_model_s = time.perf_counter() - t_model

    def skipped(name: str, path: Path) -> bool:
        is_dicom = path.is_dir() or path.suffix.lower() == ".dcm"
        return not overwrite and all(p.exists() for p in expected_outputs(out / name, fmts, is_dicom))

    def load(path: Path) -> tuple[LoadedImage, Any, dict[str, float]]:
        """Read (and, without ROI, preprocess) one case; runs in the prefetch thread."""
        t = time.perf_counter()
        case = read_image(path, allow_non_ct=allow_non_ct)
        spent = {"read": time.perf_counter() - t}
        pre = None
        if roi is None and segmenter is not None:
            t = time.perf_counter()
            pre = segmenter.preprocess(case.image)
            spent["preprocess"] = time.perf_counter() - t
        return case, pre, spent

    skip = {name for name, path in cases if skipped(name, path)}  # decided once: the prefetch order follows it
    todo = [path for name, path in cases if name not in skip]
    if prefetch and len(todo) > 1:
        from PancreasDiNTSLib.inference.fastpath import prefetched

        loaded = prefetched(todo, load)
    else:
        loaded = ((p, _call(load, p)) for p in todo)
    try:
        for index, (name, path) in enumerate(cases):
            reporter.start_item(index)
            case_dir = out / name
            t0 = time.perf_counter()
            if name in skip:
                results.append(CaseResult(name, str(path), "skipped", "outputs exist (use --overwrite)", str(case_dir)))
                reporter.update(name, "skipped", 1.0, "outputs exist; use --overwrite to redo")
                continue
            try:
                reporter.update(name, "load", 0.0, f"reading {path.name}")
                got_path, got = next(loaded)
                assert got_path == path
                if isinstance(got, BaseException):
                    raise got
                case, pre, timings = got
                timings["wait_for_read"] = time.perf_counter() - t0
                for w in case.warnings:
                    reporter.write(f"warning: {name}: {w}")
                assert segmenter is not None
                timings["load_model"] = load_model_s
                if roi is None:
                    if pre is not None:  # preprocessed by the loader (prefetch thread or just before)
                        reporter.update(name, "preprocess", 0.05, "resampled to the model's grid")
                    labels = segmenter.predict(case.image, lambda s, p, m, n=name: reporter.update(n, s, p, m),
                                               pre=pre)
                    # the loader's read/preprocess times stand; predict adds infer and postprocess
                    timings = {**segmenter.timings, **timings}
                else:
                    from PancreasDiNTSLib.inference.fastpath import predict_roi

                    t_roi = time.perf_counter()
                    reporter.update(name, "infer", 0.1, f"ROI {roi[0]} ({roi[1]}, {roi[2]} mode)")
                    labels = predict_roi(segmenter, case.image, roi[0], space=roi[1], mode=roi[2],
                                         fast=segmenter.fast)
                    timings["roi_infer"] = time.perf_counter() - t_roi
                reporter.update(name, "write", 0.95, "writing outputs")
                t_write = time.perf_counter()
                voxels, ml = volumes_ml(labels, case)
                with atomic_dir(case_dir) as tmp_dir:
                    written = _write_case(tmp_dir, case, labels, fmts, bundle)
                    timings["write"] = time.perf_counter() - t_write
                    timings["total"] = time.perf_counter() - t0
                    report = {
                        "case": name,
                        "input": str(path),
                        "input_format": case.fmt,
                        "shape": list(case.shape),
                        "spacing_mm": [round(s, 6) for s in case.spacing],
                        "labels": {"0": "background", "1": "Pancreas", "2": "Pancreatic tumor"},
                        "voxels": voxels,
                        "volumes_ml": ml,
                        "timings_s": {k: round(v, 4) for k, v in timings.items()},
                        "device": str(dev),
                        "inference": segmenter.describe() | ({"roi": {"box": roi[0], "space": roi[1], "mode": roi[2]}}
                                                             if roi else {}),
                        "model": bundle.describe(),
                        "outputs": [w for w in written if not w.startswith("note:")] + [OUTPUT_NAMES["report"]],
                        "notes": [w[6:] for w in written if w.startswith("note:")] + case.warnings,
                        "software": {"pancreas_dints": __version__, "python": platform.python_version()},
                    }
                    write_report(tmp_dir / OUTPUT_NAMES["report"], report)
                seconds = time.perf_counter() - t0
                results.append(CaseResult(name, str(path), "ok", "", str(case_dir), ml, round(seconds, 3)))
                reporter.update(name, "done", 1.0, ", ".join(f"{k} {v:.1f} mL" for k, v in ml.items()),
                                volumes_ml=ml, output_dir=str(case_dir))
            except PancreasDiNTSError as exc:
                results.append(CaseResult(name, str(path), "failed", str(exc), seconds=time.perf_counter() - t0))
                reporter.update(name, "error", 1.0, str(exc))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # an engine bug or an unforeseen input: keep going, keep the details
                detail = traceback.format_exc(limit=6)
                msg = f"{path}: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                results.append(CaseResult(name, str(path), "failed", msg, seconds=time.perf_counter() - t0))
                reporter.update(name, "error", 1.0, msg, details=detail)
    finally:
        close = getattr(loaded, "close", None)
        if close is not None:
            close()  # stops the prefetch thread when a case raised out of the loop
        reporter.close()
    summary = SegmentSummary(results)
    if results:
        import json

        name = "summary.json" if world_size == 1 else f"summary-rank{rank}.json"
        write_text_atomic(out / name, json.dumps(summary.as_dict(), indent=2) + "\n")
    reporter.emit(summary.as_dict())
    return summary
