"""The logic's checks around a Segment run: refuse what cannot run before anything is written, turn a finished
run into a result (an unexpected import failure is a failed run with one line), and a blocking run's answer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PancreasDiNTSSceneLib.common import SceneLayerError
from PancreasDiNTSSceneLib.runs import RemoteSegmentationJob, SegmentationJob, SegmentationResult
from slicer.i18n import tr as _


def checkChoices(inputVolume: Any, model: str | None, server: str | None, roiNode: Any,
                  region: str | None) -> Any:
    """Refuse what cannot run, before anything is written; returns the ROI node to use (or None)."""
    if not inputVolume:
        raise ValueError(_("Select an input CT volume."))
    if region == "box" and roiNode is None:
        raise ValueError(_('"ROI node" is chosen but no ROI is selected: select or place a markups ROI, '
                           "or choose another region."))
    if not server and not model:
        raise ValueError(_("Select a model: download the official model or choose a local model folder."))
    if not server and not Path(str(model)).exists():
        raise ValueError(_("Model not found: {model}. Choose a bundle folder or an exported model file.")
                         .format(model=model))
    return roiNode if region in (None, "box") else None


def blockingResult(task: Any, results: list[SegmentationResult]) -> SegmentationResult:
    """The result of a blocking run, or RuntimeError with the engine's (or the import's) one-line message."""
    if not results:
        raise RuntimeError(f"The engine stopped with exit code {task.returncode} and no result was handled.")
    result = results[0]
    if not result.success:
        raise RuntimeError(result.message if not result.cancelled else "Cancelled.")
    return result


def completeJob(job: SegmentationJob, task: Any) -> SegmentationResult:
    """The scene layer's import of a finished run; an unexpected failure is a failed run with one line."""
    try:
        return job.complete(task.returncode, task.cancelled, task.parser)
    except Exception as error:  # an unexpected failure while importing: a failed run, shown as one
        logging.exception("PancreasDiNTS: importing the engine's result failed")
        return SegmentationResult(False, f"Loading the engine's result failed: {error}",
                                  log="\n".join(task.parser.log))



def startRemote(job: RemoteSegmentationJob) -> Any:
    """Write the input and start a server run's upload thread; a refused choice is a ValueError."""
    try:
        return job.start()
    except SceneLayerError as error:
        raise ValueError(str(error)) from None
