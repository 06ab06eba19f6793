"""A small phantom CT in Slicer's Sample Data module (the scripted template's ``registerSampleData``).

The phantom ships with the module (``Resources/PancreasDiNTSPhantom.nii.gz``, 1.4 MB: the synthetic abdomen with a
pancreas and a tumour that ``pancreas-dints demo`` draws, seed 900001, never seen by the demo model, which
segments it with Dice 0.91 / 0.90), so Sample Data
"downloads" it from a ``file://`` address: ``SampleDataLogic.downloadFile`` reads it with
``urllib.request.urlretrieve``, checks its SHA256 and loads it as a volume. One click, then Segment.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from slicer.i18n import tr as _

from PancreasDiNTSSlicerLib import resources

CATEGORY = "Pancreas DiNTS"
PHANTOM_FILE_NAME = "PancreasDiNTSPhantom.nii.gz"
THUMBNAIL_FILE_NAME = "PancreasDiNTSPhantom.png"
PHANTOM_NODE_NAME = "PancreasDiNTSPhantom"


def phantomFile() -> Path:
    return resources.resourcesFolder(resources.engineModuleFile()) / PHANTOM_FILE_NAME


def thumbnailFile() -> Path:
    return resources.resourcesFolder(resources.engineModuleFile()) / "Icons" / THUMBNAIL_FILE_NAME


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def phantomSource() -> dict[str, str]:
    """The keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource`` for the phantom."""
    path = phantomFile()
    return {"category": CATEGORY, "sampleName": _("Pancreas phantom CT"), "uris": path.as_uri(),
            "fileNames": PHANTOM_FILE_NAME, "nodeNames": PHANTOM_NODE_NAME,
            "checksums": f"SHA256:{sha256(path)}", "thumbnailFileName": str(thumbnailFile()),
            "loadFileTypes": "VolumeFile"}


def registerPhantom() -> None:
    """Register the phantom with Sample Data (called once Slicer's startup completed)."""
    import SampleData

    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):  # Slicer >= 5.12
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(CATEGORY, title=_("Pancreas DiNTS"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**phantomSource())
