"""Pancreas DiNTS: segment the pancreas and pancreatic tumours in a CT volume with one click.

As Slicer's scripted-module template: the module, its parameter node, the panel, the logic and the self-test.
The panel's sections (model, device, run, results, review, advanced) live in ``PancreasDiNTSSlicerLib.panel*``;
everything that touches MRML is the Qt-free scene layer ``PancreasDiNTSSceneLib`` (tested with the real
slicer-core); the engine runs in a background process (``PancreasDiNTSSlicerLib.process``), in Slicer's Python or
in its own environment (``PancreasDiNTSSlicerLib.environment``). Torch never runs in Slicer's process.
"""

import unittest
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PancreasDiNTSSceneLib as scenelib
import slicer
import vtk
from PancreasDiNTSLib.bridge import commands, estimate, model_folders
from PancreasDiNTSLib.core import terminology
from PancreasDiNTSSceneLib.runs import RemoteSegmentationJob, SegmentationJob, SegmentationResult
from PancreasDiNTSSlicerLib import (
    devices,
    packages,
    panel,
    reloading,
    resources,
    sampledata,
    segmenting,
    selftest,
)
from PancreasDiNTSSlicerLib.choices import Precision, Region, RoiMode, RunPlace, Speed, upgradeStoredValues
from PancreasDiNTSSlicerLib.process import EngineProcess
from PancreasDiNTSSlicerLib.remote import RemoteTask
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

REQUIREMENTS_FILE = resources.engineRequirementsFile()  # Resources/PancreasDiNTS-requirements.txt

#
# PancreasDiNTS
#


class PancreasDiNTS(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Pancreas DiNTS")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = list(resources.CONTRIBUTORS)
        self.parent.helpText = _(
            "Automatic segmentation of the pancreas and pancreatic tumours in abdominal CT with the MONAI DiNTS "
            "network (trained on the Medical Segmentation Decathlon Task07). Select a CT volume and a model, "
            "then click <b>Segment</b>. Computation runs in a separate process and can be cancelled. "
            "This is a research tool, not a medical device.") + resources.helpLink()
        self.parent.acknowledgementText = _(
            "Built on MONAI (DiNTS: Differentiable Neural Network Topology Search, He et al., CVPR 2021) and the "
            "MONAI Model Zoo bundle pancreas_ct_dints_segmentation (Apache-2.0).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """A small phantom CT in the Sample Data module, so that Segment can be tried in one click."""
    sampledata.registerPhantom()


#
# Parameter node
#


@parameterNodeWrapper
class PancreasDiNTSParameterNode:
    """Everything the panel shows, stored in the scene; choices are enums stored as keys
    (``PancreasDiNTSSlicerLib.choices``, which says what each means). outputSegmentation None: a new one;
    localModelPath: a bundle folder or an exported model file (with useLocalModel); device: auto, cpu, cuda:N;
    roiNode: a markups ROI (used when region is box); serverURL: e.g. https://gpu-server:8765 (its token is
    typed in each session, never stored)."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    useLocalModel: bool = False
    localModelPath: Path
    device: str = "auto"
    show3D: bool = True
    allowNonCT: bool = False
    region: Region = Region.auto
    roiNode: vtkMRMLMarkupsROINode
    roiMode: RoiMode = RoiMode.grid
    mode: Speed = Speed.fast
    precision: Precision = Precision.auto  # scenes saved without it read as auto
    computeConfidence: bool = True
    runOn: RunPlace = RunPlace.local
    serverURL: str = ""


#
# PancreasDiNTSWidget
#


class PancreasDiNTSWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: the .ui file's sections, each wired by its ``PancreasDiNTSSlicerLib.panel`` class (a new
    panel piece is a new section class, added to :meth:`createSections`)."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: PancreasDiNTSLogic | None = None
        self.ui: Any = None
        self.sections: list[panel.Section] = []
        self._parameterNode: PancreasDiNTSParameterNode | None = None
        self._parameterNodeGuiTag: Any = None

    # --- Lifecycle (the template's)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PancreasDiNTS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PancreasDiNTSLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.createSections()
        self.initializeParameterNode()
        self.updateGUI()

    def createSections(self) -> None:
        """Wire every section of the .ui to its code (needs ``self.ui`` and ``self.logic``)."""
        self.sections = panel.createSections(self)

    def section(self, kind: type) -> Any:  # the section of class ``kind``
        return next(s for s in self.sections if isinstance(s, kind))

    def cleanup(self) -> None:
        """The application closes: stop background work without touching widgets; observers go in any case."""
        try:
            if self.logic is not None:
                self.logic.shutdown()
            for section in self.sections:
                section.stop()
        finally:
            self.removeObservers()

    def onReload(self) -> None:
        """Reload the Slicer-side libraries and the bridge too, then the module file."""
        reloading.reloadLibraries()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        """Stop a segmentation of this scene (a model download goes on) and forget its results."""
        if self.logic is not None:
            self.logic.cancelSegmentation()
        self.setParameterNode(None)
        for section in self.sections:
            section.clear()

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        assert self.logic is not None
        self.setParameterNode(self.logic.getParameterNode())
        if self._parameterNode and not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Any) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    @property
    def parameterNode(self) -> Any:
        return self._parameterNode

    def updateGUI(self, caller: Any = None, event: Any = None) -> None:
        """Enable what can be used now, section by section (busy: the engine runs or pip installs)."""
        assert self.logic is not None
        busy = self.logic.isRunning() or packages.isInstalling()
        for section in self.sections:
            section.update(self._parameterNode, busy)


#
# PancreasDiNTSLogic
#


class PancreasDiNTSLogic(ScriptedLoadableModuleLogic):
    """Runs the engine on a volume node and imports the result. Can be used without the GUI widget::

        logic = PancreasDiNTSLogic()
        logic.setupPythonRequirements()
        result = logic.process(volumeNode, None, "/path/to/model", "auto")
        print(result.segmentationNode.GetName(), result.volumes)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._task: Any = None
        self._segmenting = False  # whether _task is a segmentation (a download survives a scene close)
        self._job: SegmentationJob | None = None  # the running segmentation's job (its folder holds a CT copy)
        self.secondsPerWindow: float | None = None  # measured by the last run on this computer (for the estimate)

    def getParameterNode(self) -> PancreasDiNTSParameterNode:
        node = super().getParameterNode()
        upgradeStoredValues(node)  # scenes saved with display text as values
        return PancreasDiNTSParameterNode(node)

    # --- Dependencies and models

    def setupPythonRequirements(self, askConfirmation: bool = True, extraRequirementsFiles: tuple = (),
                                onChange: Callable[[], Any] | None = None) -> bool:
        """Torch and the engine's packages in Slicer's Python, or the engine's own environment when one is
        chosen (``PancreasDiNTSSlicerLib.environment``); False when declined. One installation at a time
        (``onChange`` is called when it starts and ends, so a panel can lock itself)."""
        files = [REQUIREMENTS_FILE, *[Path(f) for f in extraRequirementsFiles]]
        return packages.setupPythonRequirements(files, askConfirmation, requester="PancreasDiNTS",
                                                onChange=onChange)

    def modelCacheFolder(self) -> Path:
        """Where ``download`` stores the official model."""
        return model_folders.model_cache_folder()

    def officialModelFolder(self) -> Path | None:
        """The downloaded official model folder, or None when it is not there yet."""
        return model_folders.official_model_folder()

    def downloadOfficialModel(self, waitForCompletion: bool = True, eventCallback: Callable | None = None,
                              completedCallback: Callable | None = None, source: str | None = None) -> Any:
        """Download the official model (or install it from ``source``, a bundle zip or folder fetched elsewhere:
        its checksums are verified) into the cache folder in a background process (blocking: raise on failure)."""
        command = commands.download_command(commands.python_executable(), self.modelCacheFolder(), source)
        task = self._start(command, waitForCompletion, eventCallback, completedCallback)
        if waitForCompletion and task.returncode != 0:
            raise RuntimeError(task.parser.error_message(task.returncode))
        return task

    def listDevices(self) -> list[tuple[str, str]]:
        """(device, label) pairs, asked from a separate process so that torch is not imported in Slicer."""
        found: list = []
        devices.detectDevices(lambda devs, error: found.append(devs)).wait()
        return found[0] if found else list(devices.DEFAULT_DEVICES)

    # --- Running

    def isRunning(self) -> bool:
        return self._task is not None and self._task.running

    def lastStatus(self) -> str:
        return self._task.parser.status if self._task else ""

    def cancel(self) -> None:
        """Cancel what runs; returns at once (the end is reported through the run's completion callback)."""
        if self._task is not None:
            self._task.cancel()

    def cancelSegmentation(self) -> None:
        """Cancel a running segmentation only (the scene closes; a model download has nothing to do with it)."""
        if self._segmenting:
            self.cancel()

    def shutdown(self) -> None:
        """Slicer is closing: stop the engine without calling back and remove the run's temporary folder."""
        if self._task is not None:
            self._task.stop()
        if self._job is not None:
            self._job.cleanup()
            self._job = None

    def _start(self, command: list, waitForCompletion: bool, eventCallback: Callable | None,
               finishedCallback: Callable | None) -> Any:
        if self.isRunning():
            raise RuntimeError(_("The engine is already running; wait for it or cancel it first."))
        self._segmenting = False
        self._task = EngineProcess(command, eventCallback, finishedCallback)
        return self._task.start(waitForCompletion)

    def process(self, inputVolume: Any, outputSegmentation: Any, model: str | None, device: str = "auto",
                waitForCompletion: bool = True, eventCallback: Callable | None = None,
                completedCallback: Callable | None = None, allowNonCT: bool = False, roiNode: Any = None,
                roiMode: str = "grid", mode: str = "fast", confidence: bool = True, region: str | None = None,
                server: str | None = None, token: str | None = None,
                precision: str = "auto") -> SegmentationResult | None:
        """Segment ``inputVolume`` (into ``outputSegmentation``'s Pancreas and tumour segments, other segments
        kept; None: a new node). Blocking: the result, or RuntimeError with the engine's one-line message; else
        completedCallback(SegmentationResult) from the main thread. A failed or cancelled run changes nothing.
        region: "auto", "whole", "box" (inside roiNode: refused without one; roiMode grid or local) or None (the
        engine's default); mode fast or exact; precision auto, fp32 or bf16 (``segment --precision``); confidence:
        load the confidence map (hidden; one per input). server, token: on a ``pancreas-dints serve``."""
        if self.isRunning():
            raise RuntimeError(_("The engine is already running; wait for it or cancel it first."))
        roiNode = segmenting.checkChoices(inputVolume, model, server, roiNode, region)
        jobClass = RemoteSegmentationJob if server else SegmentationJob
        job = jobClass(inputVolume, model or "", outputSegmentation, device=device, scene=slicer.mrmlScene,
                       roi_box=scenelib.roi_box_ras(roiNode) if roiNode else None, roi_mode=roiMode, mode=mode,
                       region=None if region == "box" else region, allow_non_ct=allowNonCT, precision=precision,
                       python=commands.python_executable(), work_dir=Path(slicer.util.tempDirectory("PancreasDiNTS")),
                       importer=self.importSegmentation, load_confidence=confidence,
                       confidence_loader=self.loadConfidence)
        if server:
            job.server_url, job.token = server, token or ""
        command = None if server else job.prepare()  # writes the input (world coordinates; server: at start)
        results: list[SegmentationResult] = []

        def onFinished(task: Any) -> None:
            self._job = None
            result = segmenting.completeJob(job, task)
            results.append(result)
            if completedCallback:
                completedCallback(result)

        self._job = job
        try:
            if server:  # the upload runs on a thread; RemoteTask polls it like an engine process
                self._task = RemoteTask(segmenting.startRemote(job), eventCallback, onFinished)
                task = self._task.start(waitForCompletion)
            else:
                task = self._start(command, waitForCompletion, eventCallback, onFinished)
            self._segmenting = True
        except Exception:
            self._job = None
            job.cleanup()
            raise
        return segmenting.blockingResult(task, results) if waitForCompletion else None

    # --- Results (MRML work is the scene layer's)

    def importSegmentation(self, segmentationFile: Path, inputVolume: Any, outputSegmentation: Any = None) -> Any:
        """Load the engine's .seg.nrrd into outputSegmentation (or a new node), replacing only our segments."""
        return scenelib.import_segmentation(segmentationFile, inputVolume, outputSegmentation, slicer.mrmlScene)

    def loadConfidence(self, confidenceFile: Path, inputVolume: Any) -> Any:
        """Load the engine's confidence map as a hidden volume in the input's frame; the previous run's map of
        this input is removed (one per input, never piled up)."""
        return scenelib.load_confidence_volume(confidenceFile, inputVolume, slicer.mrmlScene)

    @staticmethod
    def showConfidence(confidenceNode: Any, inputVolume: Any, opacity: float = 0.5) -> int:
        """Show ``confidenceNode`` over ``inputVolume`` in every slice view (None hides it); returns the number of
        slice views changed (0 without views, e.g. ``--no-main-window``)."""
        return scenelib.show_confidence(confidenceNode, inputVolume, slicer.mrmlScene, opacity)

    def showReport(self, result: SegmentationResult, inputVolume: Any) -> Any:
        """The read-out table and lesion diameter lines next to the input, one set per input (the scene layer's
        show_readout); the measured seconds per window feed the next estimate. Returns the table node."""
        if not result.report:
            return None
        perWindow = estimate.seconds_per_window(result.report)
        if perWindow:
            self.secondsPerWindow = perWindow
        return scenelib.show_readout(result.report, inputVolume, slicer.mrmlScene)

    def estimate(self, inputVolume: Any, model: str | None, roiNode: Any = None, roiMode: str = "grid",
                 region: str = "whole") -> str:
        """'N windows, about T on this computer' for these choices (the scene layer's estimate_line)."""
        roiNode = segmenting.checkChoices(inputVolume, model, None, roiNode, region)
        return scenelib.roi.estimate_line(inputVolume, model, roiNode, roiMode, self.secondsPerWindow,
                                          "whole" if region == "box" else region)

    @staticmethod
    def setShow3D(segmentationNode: Any, show: bool) -> None:
        """Show or hide the segments as surfaces in 3D views."""
        scenelib.set_show_3d(segmentationNode, show)

#
# PancreasDiNTSTest
#


class PancreasDiNTSTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Reload and Test, ctest py_PancreasDiNTS, or the README's headless command).

    Segments a phantom CT (made by the engine) with the demo model through the logic exactly as the Segment
    button does, and checks the segments, their terminology, the reported volumes and that three runs on one
    scene leave one table, one set of lines and one confidence map; then that a bad model leaves the scene
    unchanged. Every test prepares what it needs (``slicer.testing.runUnitTest`` runs the test_* methods
    alphabetically and never calls runTest); the phantom and model are prepared once per process
    (``PancreasDiNTSSlicerLib.selftest``) and removed when the process ends.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for test in (self.test_PancreasDiNTS_segmentPhantom, self.test_PancreasDiNTS_showConfidenceInViews,
                     self.test_PancreasDiNTS_badModelLeavesSceneUnchanged,
                     self.test_PancreasDiNTS_roiExactModeAndEstimate):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as reason:
                self.delayDisplay(f"{test.__name__} skipped: {reason}")

    def _phantomAndModel(self) -> tuple[Path, Path]:
        """The packages (installed unattended when missing), a phantom CT and the demo model."""
        return selftest.phantomAndModel(self, PancreasDiNTSLogic().setupPythonRequirements)

    def test_PancreasDiNTS_segmentPhantom(self) -> None:
        imagePath, model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        logic = PancreasDiNTSLogic()
        # An existing segmentation with an unrelated segment: it must survive, ours must be added once.
        existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
        existing.GetSegmentation().AddEmptySegment("liver", "Liver")
        counts = []
        for _run in range(3):
            self.delayDisplay("Segmenting the phantom")
            result = logic.process(volumeNode, existing, str(model), "cpu", waitForCompletion=True)
            logic.showReport(result, volumeNode)
            counts.append(selftest.resultNodeCounts(slicer.mrmlScene))
        self.assertEqual(counts[0], counts[2], "a rerun added tables, lines or confidence maps")
        segmentation = result.segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1 + len(terminology.SEGMENTS))
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("Liver"))
        selftest.assertOurSegments(self, result)
        # A new segmentation is created and placed next to the input in the subject hierarchy.
        newResult = logic.process(volumeNode, None, str(model), "cpu")
        self.assertNotEqual(newResult.segmentationNode.GetID(), existing.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(newResult.segmentationNode)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode)))
        self.assertIsNotNone(logic.showReport(newResult, volumeNode))
        self.assertTrue(scenelib.readout_rows(newResult.report))
        self.assertIsNotNone(newResult.confidenceNode)
        self.delayDisplay("Segmentation test passed")

    def test_PancreasDiNTS_showConfidenceInViews(self) -> None:
        """Show confidence puts the map over the CT in every slice view (views exist only with a main window)."""
        if not slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"):
            self.skipTest("no slice views: Slicer runs without a main window (--no-main-window)")
        imagePath, model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        result = PancreasDiNTSLogic().process(volumeNode, None, str(model), "cpu")
        self.assertIsNotNone(result.confidenceNode)
        self.assertGreaterEqual(PancreasDiNTSLogic.showConfidence(result.confidenceNode, volumeNode), 1)
        PancreasDiNTSLogic.showConfidence(None, volumeNode)
        self.delayDisplay("Show confidence test passed")

    def test_PancreasDiNTS_badModelLeavesSceneUnchanged(self) -> None:
        imagePath, _model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        badModel = selftest.workFolder() / "not_a_model"
        badModel.mkdir(exist_ok=True)
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(RuntimeError) as context:
            PancreasDiNTSLogic().process(volumeNode, None, str(badModel), "cpu")
        self.assertIn("not_a_model", str(context.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        with self.assertRaises(ValueError):  # "ROI node" without an ROI is refused before anything runs
            PancreasDiNTSLogic().process(volumeNode, None, str(badModel), "cpu", region="box")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Bad-model test passed")

    def test_PancreasDiNTS_roiExactModeAndEstimate(self) -> None:
        """The panel's CPU choices through the logic: an estimate line, then exact mode inside an ROI; the
        exported labels lie only inside the ROI's box; the report becomes a table next to the input."""
        imagePath, model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        roi = selftest.roiAroundCenter(volumeNode)
        logic = PancreasDiNTSLogic()
        self.assertIn("windows", logic.estimate(volumeNode, str(model), roi, "grid", region="box"))
        result = logic.process(volumeNode, None, str(model), "cpu", roiNode=roi, roiMode="grid", mode="exact",
                               region="box")
        _inside, outside = scenelib.roi.labels_inside_and_outside(result.segmentationNode, roi, volumeNode,
                                                                  slicer.mrmlScene)
        self.assertEqual(outside, 0, "labels outside the ROI")
        self.assertIsNotNone(logic.showReport(result, volumeNode))
        self.delayDisplay("ROI, exact mode and estimate test passed")
