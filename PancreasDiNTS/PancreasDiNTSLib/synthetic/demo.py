"""The offline demo: segment a synthetic CT phantom with the shipped demo model and score it against its truth.

``run_demo`` draws a phantom with :func:`.phantom.make_phantom` from a seed outside the training seeds, writes it
as a NIfTI CT, reads it back through the engine (:func:`PancreasDiNTSLib.io.images.read_image`), segments it with
:class:`.inference.Segmenter` and writes the engine's outputs (:mod:`.writers`: ``labels.nii.gz``,
``segmentation.seg.nrrd``, ``report.json`` with the read-out) plus the phantom's truth, Dice against the truth
and ``demo.png``: the case page every ``segment --format report-png`` draws (``readout.page.render_case_page``:
three planes through the lesion, measurement table, longest axial diameter), here with the segments filled and
the truth outlined. Everything is assembled in a temporary folder that replaces ``OUT`` at the end.

The demo model (``PancreasDiNTSLib/resources/models/demo``) was trained on synthetic phantoms only: it shows that the pipeline
works and is NOT a clinical model. The released MSD Task07 model is installed by ``pancreas-dints download``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.core.atomic import atomic_dir, check_location, check_replaceable
from PancreasDiNTSLib.core.errors import EXIT_USAGE, ModelError, OutputError, PancreasDiNTSError
from PancreasDiNTSLib.core.paths import (
    DEMO_DEFAULT_SEED,
    DEMO_MODEL_ENV,
    DEMO_TRAINING_SEEDS,
    demo_model_location,
    is_model_folder,
)
from PancreasDiNTSLib.core.progress import Progress
from PancreasDiNTSLib.core.terminology import METRIC_KEYS
from PancreasDiNTSLib.inference.device import resolve_device
from PancreasDiNTSLib.inference.pipeline import CaseOptions, PlainFolder, case_report, segment_case
from PancreasDiNTSLib.inference.segmenter import Segmenter
from PancreasDiNTSLib.io.writers import save_nifti, write_report
from PancreasDiNTSLib.model.download import resolve_model
from PancreasDiNTSLib.model.loader import load_bundle
from PancreasDiNTSLib.readout.measure import segment_volumes
from PancreasDiNTSLib.readout.page import render_case_page
from PancreasDiNTSLib.synthetic.phantom import make_phantom
from PancreasDiNTSLib.training.evaluate import dice_per_class

PHANTOM_SIZE = "small"
PHANTOM_SLICE_MM = (0.6, 1.2)  # the demo model's training and held-out phantoms: make-phantoms --slice-mm 0.6,1.2
NOT_CLINICAL = ("The demo model was trained on synthetic phantoms only; it is NOT for clinical use. "
                "For real CT install the released MSD Task07 model with `pancreas-dints download`.")
OUTPUT_FILES = {
    "ct": "phantom_ct.nii.gz",
    "truth": "truth.nii.gz",
    "labels": "labels.nii.gz",
    "seg": "segmentation.seg.nrrd",
    "report": "report.json",
    "png": "demo.png",
}


def demo_model_dir() -> Path:
    """The demo model folder: ``$PANCREAS_DINTS_DEMO_MODEL``, else the one shipped inside the package."""
    path, from_env = demo_model_location()
    if is_model_folder(path):
        return path
    if from_env:
        raise ModelError(f"{path}: ${DEMO_MODEL_ENV} does not point to a model folder (configs/, models/); "
                         "unset it to use the demo model shipped with the package")
    raise ModelError(f"demo model not found in {path}; reinstall the package, set ${DEMO_MODEL_ENV} to a model "
                     "folder, or rebuild it with `bash Testing/benchmarks/make_demo_model.sh`")


class SeedError(PancreasDiNTSError):
    """A phantom seed the demo model was trained on."""

    exit_code = EXIT_USAGE


def check_seed(seed: int) -> None:
    if seed in DEMO_TRAINING_SEEDS:
        raise SeedError(f"--seed {seed}: this phantom was used to train the demo model "
                          f"(seeds {DEMO_TRAINING_SEEDS.start}..{DEMO_TRAINING_SEEDS.stop - 1}); choose another seed")


def check_output(out: Path) -> None:
    """OUT must be new, empty or an earlier demo output holding only what the demo wrote (it is replaced as a
    whole); anything else is left alone. One line before any work: ``-o .`` (the current folder),
    ``-o afile/sub`` (a path through a file) and a folder a user added inside an earlier output are refused."""
    check_location(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; choose a new output folder")
    if out.is_dir() and any(out.iterdir()):
        report = out / OUTPUT_FILES["report"]
        try:
            earlier = json.loads(report.read_text()).get("demo") is True
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise OutputError(f"{out}: folder exists, is not empty and is not an earlier demo output; "
                              "choose a new or empty folder")
    check_replaceable(out)


def dice_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Dice per class with MONAI (as ``evaluate``), keyed by the terminology's metric keys; None where the
    truth lacks the class."""
    d = dice_per_class(pred, truth)
    return {METRIC_KEYS[k]: (None if np.isnan(d[k - 1]) else round(float(d[k - 1]), 4)) for k in METRIC_KEYS}


def _make_phantom_files(tmp: Path, seed: int) -> tuple[np.ndarray, Any]:
    """The phantom CT and its truth as NIfTI in ``tmp``; returns the truth and the phantom's info."""
    hu, truth, affine, info = make_phantom(seed, size=PHANTOM_SIZE, tumour=True, return_info=True,
                                           slice_mm=PHANTOM_SLICE_MM)
    save_nifti(tmp / OUTPUT_FILES["ct"], np.round(hu).astype(np.int16), affine, np.int16)
    save_nifti(tmp / OUTPUT_FILES["truth"], truth, affine, np.uint8)
    return truth, info


def _demo_report(outcome: Any, segmenter: Any, truth: np.ndarray, info: Any, seed: int, out: Path) -> dict[str, Any]:
    """report.json of the demo: the case report of segment_case plus Dice, truth volumes and the phantom."""
    dice = dice_scores(outcome.labels, truth)
    report = case_report(outcome, segmenter, CaseOptions(report=False))
    for key in ("status", "outputs_failed", "notes", "inference"):
        report.pop(key, None)
    report.update({
        "demo": True,
        "notice": NOT_CLINICAL,
        **{f"dice_{k}": v for k, v in dice.items()},
        "dice_tumor": dice["tumour"],  # the spelling before 0.2 (README), kept as an alias of dice_tumour
        "dice_metric": "MONAI compute_dice, include_background=False, on the phantom's own grid",
        "phantom": {"seed": seed, "size": PHANTOM_SIZE, "shape": list(info.shape),
                    "spacing_mm": [round(s, 4) for s in info.spacing], "orientation": info.orientation,
                    "slice_mm": list(PHANTOM_SLICE_MM), "tumour_fraction": info.tumour_fraction,
                    "tumour_part": info.tumour_part,
                    "generator": "PancreasDiNTSLib.synthetic.phantom.make_phantom(seed, size, tumour=True, slice_mm)"},
        "case": "phantom_ct",
        "input": str(out / OUTPUT_FILES["ct"]),
        "truth": str(out / OUTPUT_FILES["truth"]),
        "truth_volumes_ml": segment_volumes(truth, outcome.case.affine_ras)[1],
        "sw_batch_size": segmenter.sw_batch_size,
        "outputs": {k: str(out / v) for k, v in OUTPUT_FILES.items()},
    })
    return report


def run_demo(out_dir: str | Path, device: str = "auto", seed: int = DEMO_DEFAULT_SEED, progress: str = "auto",
             model: str | Path | None = None) -> dict[str, Any]:
    """Make a phantom, segment it with the demo model (pipeline.segment_case), write the outputs into
    ``out_dir``; return the report."""
    out = Path(out_dir).expanduser()
    check_seed(seed)
    check_output(out)
    model_dir = resolve_model(model) if model else demo_model_dir()  # `official` = the downloaded model
    dev = resolve_device(device)
    bundle = load_bundle(model_dir)
    reporter = Progress(progress, total=1)
    t0 = time.perf_counter()
    try:
        with atomic_dir(out) as tmp:
            reporter.update("phantom", "phantom", 0.0, f"making phantom seed {seed}")
            truth, info = _make_phantom_files(tmp, seed)
            t_phantom = time.perf_counter() - t0
            reporter.update("phantom", "load", 0.02, "loading the demo model")
            t1 = time.perf_counter()
            segmenter = Segmenter(bundle, dev)
            t_load = time.perf_counter() - t1
            outcome = segment_case(tmp / OUTPUT_FILES["ct"], segmenter,
                                   CaseOptions(formats=("nifti", "seg.nrrd"), report=False), PlainFolder(tmp),
                                   on_stage=lambda s, p, m: reporter.update("phantom", s, p, m))
            outcome.timings.update(phantom=t_phantom, load=t_load)
            report = _demo_report(outcome, segmenter, truth, info, seed, out)
            t3 = time.perf_counter()
            _draw_page(tmp / OUTPUT_FILES["png"], outcome, truth, report, seed)
            timings = {**outcome.timings, "png": time.perf_counter() - t3, "total": time.perf_counter() - t0}
            report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
            write_report(tmp / OUTPUT_FILES["report"], report)
            reporter.update("phantom", "done", 1.0, f"Dice pancreas {_fmt(report['dice_pancreas'])}",
                            output_dir=str(out), dice_pancreas=report["dice_pancreas"],
                            dice_tumour=report["dice_tumour"], dice_tumor=report["dice_tumour"])
    finally:
        reporter.close()
    return report


def _draw_page(dest: Path, outcome: Any, truth: np.ndarray, report: dict[str, Any], seed: int) -> Path:
    """demo.png: the case page (readout.page) with the segments filled and the phantom's truth outlined."""
    case = outcome.case
    title = (f"PancreasDiNTS demo: synthetic phantom (seed {seed}), demo model trained on phantoms\n"
             f"Dice pancreas {_fmt(report['dice_pancreas'])}, lesion {_fmt(report['dice_tumour'])}")
    part = report["phantom"].get("tumour_part")
    notes = [f"phantom truth: lesion placed in the {part} ({report['phantom']['tumour_fraction']:.3f} of the "
             "gland from the head)"] if part else []
    meta = {"title": title, "input": OUTPUT_FILES["ct"], "model": report.get("model") or {}, "notes": notes,
            "notice": NOT_CLINICAL}
    ct = np.asarray(case.image[0].detach().cpu().numpy())
    return render_case_page(dest, ct, outcome.labels, case.affine_ras, outcome.readout, meta, truth=truth,
                            fill=True)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_text(report: dict[str, Any]) -> str:
    """What the demo prints: Dice, volumes, files, and the notice."""
    vol, ref = report["volumes_ml"], report["truth_volumes_ml"]
    outs = report["outputs"]
    lines = [
        f"PancreasDiNTS demo: synthetic CT phantom (seed {report['phantom']['seed']}, "
        f"{'x'.join(map(str, report['shape']))} voxels) segmented on {report['device']} in "
        f"{report['timings_s']['total']:.1f} s",
        f"  Dice vs phantom truth: pancreas {_fmt(report['dice_pancreas'])}   tumour {_fmt(report['dice_tumour'])}",
    ]
    for name in vol:
        lines.append(f"  {name + ' volume:':<26}{vol[name]:8.2f} mL (truth {ref[name]:.2f} mL)")
    lines += [
        f"  label map:          {outs['labels']}",
        f"  Slicer segmentation: {outs['seg']}",
        f"  report:             {outs['report']}",
        f"  picture:            {outs['png']}",
        f"  phantom CT / truth: {outs['ct']} / {outs['truth']}",
        f"NOTE: {NOT_CLINICAL}",
    ]
    return "\n".join(lines)
