"""What the modules' self-tests share: a phantom CT made by the engine, the demo model, a work folder removed
when the process ends, and the node counts that must stay constant across reruns."""

from __future__ import annotations

import atexit
import importlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import slicer
from PancreasDiNTSLib.bridge import commands, model_folders
from PancreasDiNTSLib.core import terminology

from PancreasDiNTSSlicerLib.process import EngineProcess

_shared: dict[str, Any] = {}  # prepared once per process, whichever test comes first


def workFolder() -> Path:
    """A temporary folder for this process's self-tests, removed when Slicer exits."""
    if "work" not in _shared:
        work = Path(slicer.util.tempDirectory("PancreasDiNTSTest"))
        atexit.register(shutil.rmtree, work, True)
        _shared["work"] = work
    return _shared["work"]


def runEngine(test: Any, command: list) -> EngineProcess:
    """One engine command, blocking (events are processed meanwhile); a failure fails ``test``."""
    task = EngineProcess(command).start(waitForCompletion=True)
    test.assertEqual(task.returncode, 0, task.parser.error_message(task.returncode))
    return task


def phantomAndModel(test: Any, setupPythonRequirements: Callable[..., bool]) -> tuple[Path, Path]:
    """The engine's packages (installed unattended when missing), a phantom CT the model never saw, and the demo
    model that ships with the extension (a self-test fails when it is missing: it never trains one)."""
    if "phantom" not in _shared:
        test.delayDisplay("Preparing the engine (may install packages)")
        test.assertTrue(setupPythonRequirements(askConfirmation=False))
        data = workFolder() / "data"
        runEngine(test, commands.make_phantoms_command(commands.python_executable(), data, count=4, seed=11))
        images = sorted((data / "imagesTs").glob("*.nii.gz")) or sorted((data / "imagesTr").glob("*.nii.gz"))
        test.assertTrue(images, "the engine made no phantom")
        model = model_folders.demo_model_folder()
        if model is None:
            test.fail("the demo model that ships with the extension is missing")
        _shared["phantom"] = (images[0], Path(str(model)))
    return _shared["phantom"]


RESULT_NODE_CLASSES = ("vtkMRMLTableNode", "vtkMRMLMarkupsLineNode", "vtkMRMLScalarVolumeNode",
                       "vtkMRMLSegmentationNode")


def resultNodeCounts(scene: Any) -> dict[str, int]:
    """How many nodes of each class a run can add: equal after every rerun on one input."""
    return {name: scene.GetNumberOfNodesByClass(name) for name in RESULT_NODE_CLASSES}


def roiAroundCenter(volumeNode: Any) -> Any:
    """A markups ROI of 80 x 60 x 40 mm at the centre of the volume."""
    bounds = [0.0] * 6
    volumeNode.GetRASBounds(bounds)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "pancreas box")
    roi.SetCenter([(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)])
    roi.SetRadiusXYZ(40.0, 30.0, 20.0)
    return roi


def assertOurSegments(test: Any, result: Any) -> None:
    """Each of the engine's segments is in the result's segmentation with its terminology and a volume."""
    segmentation = result.segmentationNode.GetSegmentation()
    for info in terminology.SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
        test.assertIsNotNone(segment, info.name)
        tag = importlib.import_module("vtk").mutable("")  # vtk has no type information
        segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
        test.assertEqual(str(tag), info.terminology_entry())
        test.assertGreaterEqual(result.volumes[info.name], 0.0)
