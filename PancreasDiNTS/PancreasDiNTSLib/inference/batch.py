"""The ``segment`` batch driver: it loops, names, skips, shards and summarises; each case is
:func:`.pipeline.segment_case`.

- Names and folders: :class:`.io.placement.CasePlanner` (safe names from the resolved input, a folder per input
  identity, ``ct``, ``ct-2``...; overlaps with inputs refused before any work, exit 2), then
  :func:`.io.placement.claim_cases` plans again and makes the new case folders under the OUTDIR lock, so
  concurrent runs into one OUTDIR never share a folder; a claimed folder a failed case wrote nothing into goes.
- Ownership: every case folder carries a manifest (core.ownership); a rerun replaces only the engine's own
  unchanged files, each atomically; files a user added survive every rerun.
- Skip: a case is skipped (without ``--overwrite``) only when its folder's manifest names the same input and
  lists every requested output.
- A failing case does not stop the others; a full disk stops the run (DiskFullError, exit 5).
- Batch files in OUTDIR (``core.paths.BATCH_NAMES``): ``summary.json`` (every case's status) and
  ``measurements.csv`` (one row per case: the read-out's volumes, lesion diameters, size category, location and
  lesion score, read back from each case's report.json, so skipped cases have their row too), both written
  atomically at the end of the run (``-rank<r>`` under torchrun). They are OUTDIR's tables: under the OUTDIR
  lock the rows already there are read and merged (one row per case folder and input; this run's rows replace
  their own), never dropped, so concurrent and successive runs into one OUTDIR all keep their rows. Each
  replaces an existing file only when it is the engine's (its first line); a user's file of that name is left
  alone (warning).
- ``prefetch``: reading, checking and preprocessing case i+1 run in a background thread while case i is inferred
  (prefetch.prefetched); the labels are the same either way. Under torchrun rank r takes cases r, r+W, ...
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.atomic import folder_lock, write_text_atomic
from PancreasDiNTSLib.core.errors import (
    DiskFullError,
    InputError,
    PancreasDiNTSError,
    UsageError,
    disk_full_error,
    is_disk_full,
    printable,
)
from PancreasDiNTSLib.core.formats import FORMATS
from PancreasDiNTSLib.core.ownership import CaseFolder, probe_writable
from PancreasDiNTSLib.core.paths import BATCH_NAMES
from PancreasDiNTSLib.core.progress import Progress, ProgressCallback
from PancreasDiNTSLib.core.request import SegmentRequest
from PancreasDiNTSLib.inference.device import resolve_device
from PancreasDiNTSLib.inference.pipeline import (
    REPORT_NAME,
    CaseOptions,
    CaseOutcome,
    Prepared,
    prepare_case,
    refuse_non_dicom,
    segment_case,
)
from PancreasDiNTSLib.inference.prefetch import prefetched
from PancreasDiNTSLib.inference.remote import RemoteCases, RemoteOutcome
from PancreasDiNTSLib.inference.segmenter import Segmenter
from PancreasDiNTSLib.io.dicomweb import fetch_input
from PancreasDiNTSLib.io.dicomweb import parse_input as parse_dicomweb
from PancreasDiNTSLib.io.images import expand_inputs
from PancreasDiNTSLib.io.placement import CasePlanner, PlannedCase, case_base_name, claim_cases, release_claim
from PancreasDiNTSLib.model.download import resolve_model
from PancreasDiNTSLib.model.loader import load_bundle
from PancreasDiNTSLib.readout.combined import CSV_COLUMNS, csv_row


@dataclass(frozen=True)
class SegmentSettings(SegmentRequest):
    """A ``segment`` request (core.request: every option) and this process's share of it under torchrun."""

    rank: int = 0  # torchrun: this process takes cases rank, rank + world_size, ...
    world_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.rank < max(1, self.world_size)):
            raise UsageError(f"rank {self.rank} of world size {self.world_size}: check RANK / WORLD_SIZE")

    @classmethod
    def of(cls, request: SegmentRequest, rank: int = 0, world_size: int = 1) -> SegmentSettings:
        return cls(**{f.name: getattr(request, f.name) for f in fields(SegmentRequest)}, rank=rank,
                   world_size=world_size)

    def case_options(self, planned: PlannedCase) -> CaseOptions:
        extra = {"case": planned.name, "input": str(planned.path), "input_identity": planned.identity}
        region = self.region.resolved(resolve_device(self.device).type)
        return CaseOptions(self.formats, self.region.box, self.allow_non_ct, series=planned.series, report=True,
                           report_extra=extra, region="whole" if region == "box" else region, seg_type=self.seg_type)


@dataclass
class CaseResult:
    """What happened to one input (a line of summary.json)."""

    case: str
    input: str
    status: str  # "ok", "skipped", "failed"
    message: str = ""
    output_dir: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    failed_outputs: dict[str, str] = field(default_factory=dict)  # format -> why (the other outputs were kept)


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


def check_writable(out_dir: Path) -> None:
    """OutputError (exit 5) unless ``out_dir`` can be created and written."""
    probe_writable(out_dir, create=True)


def expected_names(formats: tuple[str, ...], path: Path) -> list[str]:
    """The files a finished case of ``path`` holds (DICOM-only outputs only for DICOM inputs)."""
    is_dicom = path.is_dir() or path.suffix.lower() == ".dcm"
    return [FORMATS[f].filename for f in formats if is_dicom or not FORMATS[f].dicom_only] + [REPORT_NAME]


def fetch_dicomweb(inputs: tuple[str, ...], auth_file: str | None) -> tuple[tuple[str, ...], list[Path]]:
    """DICOMweb inputs (io.dicomweb) fetched into their folders: the inputs with those folders, and the folders
    (removed when the run ends: patient images are not kept once their cases are written)."""
    out, fetched = [], []
    for arg in inputs:
        if parse_dicomweb(arg) is None:
            out.append(arg)
            continue
        fetched.append(fetch_input(arg, Path(auth_file).expanduser() if auth_file else None))
        out.append(str(fetched[-1]))
    return tuple(out), fetched


def expand_all(inputs: tuple[str, ...]) -> tuple[list[Path], list[CaseResult]]:
    """Every input argument expanded; an argument that matches nothing becomes a failed result."""
    paths: list[Path] = []
    failures: list[CaseResult] = []
    for arg in inputs:
        try:
            paths.extend(p for p in expand_inputs([arg]) if p not in paths)
        except InputError as exc:
            failures.append(CaseResult(case_base_name(Path(arg)), arg, "failed", printable(exc)))
    return paths, failures


class _Batch:
    """One ``segment`` run over its share of the planned cases."""

    def __init__(self, settings: SegmentSettings, segmenter: Segmenter | None, reporter: Progress,
                 load_model_s: float) -> None:
        self.settings = settings
        self.segmenter = segmenter
        self.reporter = reporter
        self.load_model_s = load_model_s
        self.results: list[CaseResult] = []
        self.remote: RemoteCases | None = None  # --server: cases go to the server instead of segment_case

    def skipped(self, planned: PlannedCase) -> bool:
        if self.settings.overwrite or not planned.existing:
            return False
        folder = CaseFolder(planned.folder, planned.identity, planned.name)
        return folder.same_input() and folder.has(expected_names(self.settings.formats, planned.path))

    def load(self, planned: PlannedCase) -> Prepared:
        """Read, check and preprocess one case (runs in the prefetch thread)."""
        return prepare_case(planned.path, self.segmenter, self.settings.case_options(planned),
                            CaseFolder(planned.folder, planned.identity, planned.name))

    def fail(self, planned: PlannedCase, message: str, t0: float, details: str = "") -> None:
        message = printable(message)
        self.results.append(CaseResult(planned.name, str(planned.path), "failed", message,
                                       seconds=round(time.perf_counter() - t0, 3)))
        extra = {"details": details} if details else {}
        self.reporter.update(planned.name, "error", 1.0, message, **extra)

    def run_case(self, planned: PlannedCase, got: Prepared | BaseException) -> None:
        """One case through segment_case; its failure is recorded (a full disk is raised)."""
        t0 = time.perf_counter()
        name, settings = planned.name, self.settings
        try:
            self.reporter.update(name, "load", 0.0, printable(f"reading {planned.path.name}"))
            if isinstance(got, BaseException):
                raise got
            got.timings["wait_for_read"] = time.perf_counter() - t0
            got.timings["load_model"] = self.load_model_s
            for w in got.case.warnings:
                self.reporter.write(f"warning: {name}: {printable(w)}")
            folder = CaseFolder(planned.folder, planned.identity, planned.name)
            outcome: CaseOutcome | RemoteOutcome
            if self.remote is not None:
                outcome = self.remote.run(got, planned, settings.case_options(planned), folder,
                                          lambda s, p, m: self.reporter.update(name, s, p, m))
            else:
                assert self.segmenter is not None
                outcome = segment_case(got, self.segmenter, settings.case_options(planned), folder,
                                       on_stage=lambda s, p, m: self.reporter.update(name, s, p, m), started=t0)
        except DiskFullError as exc:
            self.fail(planned, str(exc), t0)
            raise
        except PancreasDiNTSError as exc:
            return self.fail(planned, str(exc), t0)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # an engine bug or an unforeseen input: keep going, keep the details
            if is_disk_full(exc):
                err = disk_full_error(planned.folder, exc)  # type: ignore[arg-type]
                self.fail(planned, str(err), t0)
                raise err from None
            first = str(exc).splitlines()[0] if str(exc) else ""
            return self.fail(planned, f"{planned.path}: unexpected {type(exc).__name__}: {first}", t0,
                             traceback.format_exc(limit=6))
        seconds = round(time.perf_counter() - t0, 3)
        ml = outcome.volumes_ml
        if outcome.failed_outputs:
            why = "; ".join(f"{fmt} not written: {r}" for fmt, r in outcome.failed_outputs.items())
            message = f"{why} (the other outputs were kept in {planned.folder})"
            self.results.append(CaseResult(name, str(planned.path), "failed", printable(message), str(planned.folder),
                                           ml, seconds, outcome.failed_outputs))
            self.reporter.update(name, "error", 1.0, printable(message), output_dir=str(planned.folder))
            return None
        self.results.append(CaseResult(name, str(planned.path), "ok", "", str(planned.folder), ml, seconds))
        self.reporter.update(name, "done", 1.0, ", ".join(f"{k} {v:.1f} mL" for k, v in ml.items()),
                             volumes_ml=ml, output_dir=str(planned.folder))
        return None

    def loop(self, cases: list[PlannedCase]) -> None:
        skip = {p.name for p in cases if self.skipped(p)}  # decided once: the prefetch order follows it
        todo = [p for p in cases if p.name not in skip]
        loaded: Iterator[tuple[PlannedCase, Any]]
        if self.settings.prefetch and len(todo) > 1:
            loaded = prefetched(todo, self.load)
        else:
            loaded = ((p, _call(self.load, p)) for p in todo)
        try:
            for index, planned in enumerate(cases):
                self.reporter.start_item(index)
                if planned.name in skip:
                    self.results.append(CaseResult(planned.name, str(planned.path), "skipped",
                                                   "outputs exist (use --overwrite)", str(planned.folder)))
                    self.reporter.update(planned.name, "skipped", 1.0, "outputs exist; use --overwrite to redo")
                    continue
                got_case, got = next(loaded)
                assert got_case is planned
                self.run_case(planned, got)
        finally:
            close = getattr(loaded, "close", None)
            if close is not None:
                close()  # stops the prefetch thread when a case raised out of the loop


def _call(fn: Any, arg: Any) -> Any:
    """``fn(arg)``, or the exception it raised (the same contract as prefetch.prefetched)."""
    try:
        return fn(arg)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - raised again by the case loop, inside its error handling
        return exc


def _batch_file(settings: SegmentSettings, key: str) -> Path:
    """OUTDIR/summary.json, OUTDIR/measurements.csv (``<stem>-rank<r><suffix>`` under torchrun)."""
    name = Path(BATCH_NAMES[key])
    if settings.world_size > 1:
        name = Path(f"{name.stem}-rank{settings.rank}{name.suffix}")
    return settings.out_dir / name


def _read_ours(dest: Path, signature: str) -> str | None:
    """The text of ``dest`` when it is the engine's own earlier file (it begins with ``signature``), "" when
    there is none, None when a file of that name is not the engine's."""
    if not (dest.exists() or dest.is_symlink()):
        return ""
    try:
        if dest.is_file() and not dest.is_symlink() and dest.stat().st_size <= MAX_TABLE_BYTES:
            text = dest.read_text(encoding="utf-8", errors="surrogateescape")
            return text if text.startswith(signature) else None
    except (OSError, UnicodeDecodeError):
        pass
    return None


def _row_key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row.get("case", "")), str(row.get("input", ""))


def _merged(earlier: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earlier rows with this run's rows replacing their own (same case and input), new rows appended."""
    mine = {_row_key(r): r for r in rows}
    out = [mine.pop(_row_key(r), r) for r in earlier if isinstance(r, dict)]
    return out + [r for r in rows if _row_key(r) in mine]


def _summary_text(earlier: str, summary: SegmentSummary) -> str:
    try:
        old = json.loads(earlier).get("results", []) if earlier else []
    except (ValueError, AttributeError):
        old = []
    rows = _merged(old if isinstance(old, list) else [], [r.__dict__ for r in summary.results])
    status = [r.get("status") for r in rows]
    table = {"stage": "summary", "cases": len(rows), "succeeded": status.count("ok"),
             "skipped": status.count("skipped"), "failed": status.count("failed"), "results": rows}
    return json.dumps(table, indent=2) + "\n"


def _measurements_text(earlier: str, results: list[CaseResult]) -> str:
    old = list(csv.DictReader(io.StringIO(earlier))) if earlier else []
    return measurements_csv(results, old)


SUMMARY_SIGNATURE = '{\n  "stage": "summary"'
MEASUREMENTS_SIGNATURE = ",".join(CSV_COLUMNS[:3])
MAX_TABLE_BYTES = 256 << 20  # an engine table larger than this is not merged (left alone, with a warning)


def _write_tables(settings: SegmentSettings, results: list[CaseResult], reporter: Progress,
                  measurements: bool = True) -> None:
    """summary.json (and measurements.csv) in OUTDIR, merged with the rows already there, under the OUTDIR lock;
    a user's file of either name is left alone, with a warning."""
    jobs = [("summary", SUMMARY_SIGNATURE, lambda old: _summary_text(old, SegmentSummary(results)))]
    if measurements:
        jobs.insert(0, ("measurements", MEASUREMENTS_SIGNATURE, lambda old: _measurements_text(old, results)))
    with folder_lock(settings.out_dir):
        for key, signature, make in jobs:
            dest = _batch_file(settings, key)
            earlier = _read_ours(dest, signature)
            if earlier is None:
                reporter.write(f"warning: {printable(dest)} was not written by pancreas-dints; left as it is "
                               f"({dest.name} not written)")
                continue
            write_text_atomic(dest, make(earlier))


def _case_readout(result: CaseResult) -> tuple[dict[str, Any] | None, str]:
    """The read-out in a case's report.json (None and why when there is none)."""
    if result.status == "failed" and not result.output_dir:
        return None, result.message
    try:
        report = json.loads((Path(result.output_dir) / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{REPORT_NAME} unreadable: {printable(str(exc))[:200]}"
    readout = report.get("readout") if isinstance(report, dict) else None
    return (readout, "") if isinstance(readout, dict) else (None, f"{REPORT_NAME} has no read-out (older engine)")


def measurements_csv(results: list[CaseResult], earlier: list[dict[str, Any]] | None = None) -> str:
    """measurements.csv: a header row and one row per case (readout.combined.CSV_COLUMNS); ``earlier`` rows (an
    earlier table of OUTDIR) are kept unless a result replaces them."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n", extrasaction="ignore",
                            restval="")
    writer.writeheader()
    rows = []
    for r in results:
        readout, why = _case_readout(r)
        note = why or (r.message if r.status != "ok" else "")
        rows.append(csv_row(readout, r.case, r.input, r.status, printable(note)))
    writer.writerows(_merged(earlier or [], rows))
    return buffer.getvalue()


def run_segment(settings: SegmentSettings, callback: ProgressCallback | None = None,
                segmenter: Segmenter | None = None) -> SegmentSummary:
    """Segment every input into ``OUTDIR/<case>/``; see the module docstring for the guarantees.

    Raises ModelError/DeviceError/OutputError/PlacementError before any case when the model, device, output
    folder or placement is unusable, and DiskFullError (after writing what it can) when the disk fills up.
    ``segmenter``: an already built Segmenter (tests, embedding); otherwise one is built from the settings.
    DICOMweb inputs are fetched first (InputError, one line, when they cannot be) and their images removed at
    the end."""
    inputs, fetched = fetch_dicomweb(settings.inputs, settings.dicomweb_auth)
    try:
        return _run_segment(replace(settings, inputs=inputs) if fetched else settings, callback, segmenter)
    finally:
        for folder in fetched:
            shutil.rmtree(folder, ignore_errors=True)


def _run_segment(settings: SegmentSettings, callback: ProgressCallback | None,
                 segmenter: Segmenter | None) -> SegmentSummary:
    out = settings.out_dir
    remote = RemoteCases(settings) if settings.server else None
    if segmenter is None and remote is None:
        dev = resolve_device(settings.device)
        bundle = load_bundle(resolve_model(settings.model))
    paths, failures = expand_all(settings.inputs)
    refuse_non_dicom(settings.formats, paths)  # dicom-sr/rtstruct of a non-DICOM input: exit 2, before any work
    planner = CasePlanner(paths, out, settings.series)
    planner.plan()  # PlacementError (exit 2) before anything is written
    check_writable(out)
    plan = claim_cases(planner, settings.rank, settings.world_size)  # planned again, claimed under the lock
    cases = plan[settings.rank::settings.world_size]
    reporter = Progress(settings.progress, total=max(1, len(cases)), callback=callback)
    # Model problems (weights that do not fit the architecture...) concern every case: fail before the first.
    t_model = time.perf_counter()
    if segmenter is None and cases and remote is None:
        segmenter = Segmenter(bundle, dev, sw_batch_size=settings.sw_batch_size, mode=settings.mode,
                              engine=settings.engine, precision=settings.precision)
    batch = _Batch(settings, segmenter, reporter, time.perf_counter() - t_model)
    batch.remote = remote
    batch.results.extend(failures)
    try:
        batch.loop(cases)
    except DiskFullError:
        try:
            _write_tables(settings, batch.results, reporter, measurements=False)
        except PancreasDiNTSError:
            pass  # the disk is still full; the one-line error says so
        raise
    finally:
        reporter.close()
        for planned in cases:  # no partial output: a folder claimed for a case that wrote nothing goes
            if not planned.existing:
                release_claim(planned)
    summary = SegmentSummary(batch.results)
    if batch.results:
        _write_tables(settings, batch.results, reporter)
    reporter.emit(summary.as_dict())
    return summary
