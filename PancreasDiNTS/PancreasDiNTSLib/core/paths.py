"""Where the engine's own files live (one place, torch-free: the Slicer modules use it too)."""

from __future__ import annotations

import os
from pathlib import Path

from PancreasDiNTSLib.core.formats import output_names

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The offline demo model ships inside the package (wheel, editable install and Slicer module alike).
PACKAGED_DEMO_MODEL = PACKAGE_DIR / "resources" / "models" / "demo"
DEMO_MODEL_ENV = "PANCREAS_DINTS_DEMO_MODEL"
# The demo model was trained on data-set seed 1 (case seeds 100004..100243) and evaluated on data-set seed 2
# (case seeds 200007..200022) of `make-phantoms`; the demo draws its phantom from seed DEMO_DEFAULT_SEED + n, far from
# both. Seeds in DEMO_TRAINING_SEEDS are refused (a phantom seen in training would overstate the Dice).
DEMO_DEFAULT_SEED = 900001
DEMO_TRAINING_SEEDS = range(100004, 100244)
MODEL_HOME_ENV = "PANCREAS_DINTS_HOME"
# The released bundle's name: `download` installs it as <cache>/<OFFICIAL_BUNDLE_NAME>/<version>/.
OFFICIAL_BUNDLE_NAME = "pancreas_ct_dints_segmentation"
CONFIG_NAMES = ("inference.yaml", "inference.yml", "inference.json")
# The files `segment` writes into OUTDIR/<case>/, by output format, and "report" (always written): from the one
# format registry (core.formats); the engine's writers, the batch driver and the Slicer scene layer read names here.
OUTPUT_NAMES = output_names()
# The files `segment` writes into OUTDIR itself, next to the case folders (per rank under torchrun).
BATCH_NAMES = {"summary": "summary.json", "measurements": "measurements.csv"}
# The files a reviewer's save writes into a case folder (review/record.py): a person's work, which no run of
# `segment` may ever replace or delete (core.ownership.CaseFolder refuses it).
REVIEW_NAMES = {"review": "review.json", "labels": "labels_corrected.nii.gz",
                "seg.nrrd": "segmentation_corrected.seg.nrrd"}


def model_cache_root() -> Path:
    """The model cache: ``$PANCREAS_DINTS_HOME/models``, else ``~/.cache/pancreas-dints/models``."""
    home = os.environ.get(MODEL_HOME_ENV)
    return Path(home).expanduser() / "models" if home else Path.home() / ".cache" / "pancreas-dints" / "models"


def is_model_folder(path: str | Path) -> bool:
    """A bundle folder (configs/inference.* and a models/ folder): a quick look, nothing in it is read."""
    root = Path(path)
    return any((root / "configs" / name).is_file() for name in CONFIG_NAMES) and (root / "models").is_dir()


def demo_model_location() -> tuple[Path, bool]:
    """(the demo model folder to use, whether it came from ``$PANCREAS_DINTS_DEMO_MODEL``)."""
    env = os.environ.get(DEMO_MODEL_ENV)
    if env:
        return Path(env).expanduser(), True
    return PACKAGED_DEMO_MODEL, False
