"""Pancreas DiNTS: segment the pancreas and pancreatic tumours in a CT volume with one click.

Three layers: this file holds the widgets (panel, parameter node, buttons) and the logic's entry points;
everything that touches MRML (input file, segmentation import, ROI box, confidence volume, report table) is the
Qt-free scene layer ``PancreasDiNTSSceneLib`` (tested with the real slicer-core); the engine runs in a background
process (``PythonSlicer -m PancreasDiNTSLib.cli segment``) started by ``PancreasDiNTSSlicerLib.process`` (shared
with PancreasDiNTSTrain, as are the package checks and the device list), with command lines and progress parsing
from ``PancreasDiNTSLib.bridge``. Torch never runs in Slicer's process.
"""

import logging
import time
import unittest
from pathlib import Path
from typing import Annotated

import ctk
import PancreasDiNTSSceneLib as scenelib
import qt
import slicer
import vtk
from PancreasDiNTSLib.bridge import case_results, commands, estimate, model_folders
from PancreasDiNTSLib.core import terminology
from PancreasDiNTSSceneLib.runs import RemoteSegmentationJob, SegmentationJob, SegmentationResult
from PancreasDiNTSSlicerLib import devices, packages, reloading, resources
from PancreasDiNTSSlicerLib.process import EngineProcess
from PancreasDiNTSSlicerLib.remote import RemoteTask
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Resources/PancreasDiNTS-requirements.txt: a module-specific name, because every module's Resources/ lands in
# one qt-scripted-modules/Resources/ when the extension is installed (PancreasDiNTSSlicerLib.resources).
REQUIREMENTS_FILE = resources.engineRequirementsFile()
ROI_MODES = ["grid", "local"]
# what is segmented: the engine's automatic pancreas region (segment --region auto: a coarse pass, then the full
# run's windows around what it finds), every window (--region whole), or inside a markups ROI (--roi)
REGION_CHOICES = ["automatic pancreas region", "whole CT", "ROI node"]
REGION_ARGUMENTS = {"automatic pancreas region": "auto", "whole CT": "whole"}
RUN_PLACES = ["this computer", "server"]  # where Segment runs (server: docs/SERVER.md)
SPEED_MODES = list(scenelib.runs.SPEED_CHOICES)  # fast (default: same labels, quicker) or exact (MONAI's own path)
EXPORTED_MODEL_FILTER = "Exported model (*.ts *.pt *.pth *.pts *.jit *.onnx);;All files (*)"

#
# PancreasDiNTS
#


class PancreasDiNTS(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Pancreas DiNTS"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["PancreasDiNTS developers"]
        self.parent.helpText = (
            "Automatic segmentation of the pancreas and pancreatic tumours in abdominal CT with the MONAI DiNTS "
            "network (trained on the Medical Segmentation Decathlon Task07). Select a CT volume and a model, "
            "then click <b>Segment</b>. Computation runs in a separate process and can be cancelled. "
            "This is a research tool, not a medical device."
        ) + resources.helpLink()
        self.parent.acknowledgementText = (
            "Built on MONAI (DiNTS: Differentiable Neural Network Topology Search, He et al., CVPR 2021) and the "
            "MONAI Model Zoo bundle pancreas_ct_dints_segmentation (Apache-2.0)."
        )


#
# Parameter node
#


@parameterNodeWrapper
class PancreasDiNTSParameterNode:
    """Everything the widget shows, stored in the scene.

    inputVolume - the CT to segment.
    outputSegmentation - the segmentation to update (None: a new one is created).
    useLocalModel - use localModelPath instead of the official model.
    localModelPath - a bundle folder or an exported model file.
    device - "auto", "cpu" or "cuda:N".
    show3D - show the result as surfaces in the 3D view.
    allowNonCT - segment volumes whose intensities do not look like CT Hounsfield units (with a warning).
    region - what is segmented: "automatic pancreas region" (default; labels equal a whole run's where it ran,
        much faster on a CPU), "whole CT" (every window) or "ROI node" (inside roiNode).
    roiNode - a markups ROI (rotated ROIs are enclosed in an axis-aligned box).
    roiMode - grid (labels in the box equal the full run's) or local (time proportional to the box).
    mode - fast (default) or exact (MONAI's SlidingWindowInferer as the bundle runs it).
    computeConfidence - ask the engine for its confidence map and load it (for "Show confidence").
    runOn - "this computer" or "server" (a `pancreas-dints serve`, docs/SERVER.md).
    serverURL - the server's address, e.g. https://gpu-server:8765 (its token is typed in each session, never stored).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    useLocalModel: bool = False
    localModelPath: Path
    device: str = "auto"
    show3D: bool = True
    allowNonCT: bool = False
    region: Annotated[str, Choice(REGION_CHOICES)] = REGION_CHOICES[0]
    roiNode: vtkMRMLMarkupsROINode
    roiMode: Annotated[str, Choice(ROI_MODES)] = "grid"
    mode: Annotated[str, Choice(SPEED_MODES)] = "fast"
    computeConfidence: bool = True
    runOn: Annotated[str, Choice(RUN_PLACES)] = "this computer"
    serverURL: str = ""


#
# PancreasDiNTSWidget
#


class PancreasDiNTSWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel, in sections: model, device, run, results, advanced (each has its setup, update and
    action methods, so a new panel piece stays in its own section)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._confidenceNode = None  # the last run's confidence volume (loaded hidden; "Show confidence" shows it)
        self.devicePicker = None  # the device combo box and Detect GPUs (PancreasDiNTSSlicerLib.devices)
        self._startTime = None

    # --- Lifecycle

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PancreasDiNTS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PancreasDiNTSLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._setupModelSection()
        self._setupDeviceSection()
        self._setupRunSection()
        self._setupResultsSection()
        self._setupReviewSection()
        self._setupAdvancedSection()
        self.initializeParameterNode()
        self.updateGUI()

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed: stop the engine, remove the
        run's temporary folder (the CT copy), without touching widgets."""
        self.logic.shutdown()
        if self.devicePicker is not None:
            self.devicePicker.stop()
        self.removeObservers()

    def onReload(self):
        """Reload the Slicer-side libraries and the bridge too, then the module file."""
        reloading.reloadLibraries()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()
        self._clearReviewCase()
        self.setParameterNode(None)
        self._clearResults()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def updateGUI(self, caller=None, event=None):
        """Enable what can be used now, section by section; Segment becomes Cancel while the engine runs."""
        p = self._parameterNode
        running = self.logic.isRunning()
        self._updateModelSection(p, running)
        self._updateDeviceSection(p, running)
        self._updateRunSection(p, running)
        self._updateResultsSection(p, running)
        self._updateAdvancedSection(p, running)

    # --- Model section

    def _setupModelSection(self):
        # Folders (bundle, train run) are browsed with the path field; an exported file with "File...":
        # a ctkPathLineEdit whose filters include Files opens a file dialog, where no folder can be chosen.
        self.ui.localModelPathLineEdit.filters = (ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.NoDotAndDotDot
                                                  | ctk.ctkPathLineEdit.Readable)
        self.ui.localModelFileButton.connect("clicked(bool)", self.onChooseModelFile)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModel)
        self.ui.installModelFromFileButton.connect("clicked(bool)", self.onInstallModelFromFile)
        self.ui.openCacheFolderButton.connect("clicked(bool)", self.onOpenCacheFolder)

    def _updateModelSection(self, p, running):
        modelFolder = self.logic.officialModelFolder()
        self.ui.officialModelStatusLabel.text = (
            f"Official model: {modelFolder}" if modelFolder else "Official model: not downloaded yet")
        self.ui.downloadModelButton.enabled = not running and not (p and p.useLocalModel)
        self.ui.installModelFromFileButton.enabled = self.ui.downloadModelButton.enabled
        self.ui.localModelPathLineEdit.enabled = bool(p and p.useLocalModel)
        self.ui.localModelFileButton.enabled = bool(p and p.useLocalModel)

    def currentModel(self):
        """The model path the user chose, or None."""
        p = self._parameterNode
        if not p:
            return None
        if p.useLocalModel:
            path = str(p.localModelPath or "")
            return path if path not in ("", ".") else None
        folder = self.logic.officialModelFolder()
        return str(folder) if folder else None

    def onChooseModelFile(self):
        """An exported TorchScript/ONNX file as the local model (folders are chosen in the path field)."""
        path = qt.QFileDialog.getOpenFileName(self.parent, "Exported model file", "", EXPORTED_MODEL_FILTER)
        if path and self._parameterNode:
            self._parameterNode.localModelPath = Path(path)

    def onDownloadModel(self):
        self._getOfficialModel(source=None)

    def onInstallModelFromFile(self):
        """Offline sites: install the official bundle from a zip downloaded on another computer."""
        path = qt.QFileDialog.getOpenFileName(
            self.parent, "Official model bundle (zip)", "", "Bundle archive (*.zip);;All files (*)")
        if path:
            self._getOfficialModel(source=path)

    def _getOfficialModel(self, source):
        """Download the official model, or install it from a zip/folder fetched elsewhere (``source``)."""
        if self.logic.isRunning():
            return
        with slicer.util.tryWithErrorDisplay("Failed to get the model.", waitCursor=False):
            if not self.logic.setupPythonRequirements(askConfirmation=True):
                return
            self.ui.logTextEdit.clear()
            self.ui.statusLabel.text = (f"Installing the official model from {source}..." if source
                                        else "Downloading the official model...")
            self.logic.downloadOfficialModel(waitForCompletion=False, eventCallback=self.onEngineEvent,
                                             completedCallback=self.onDownloadCompleted, source=source)
            self.ui.progressBar.setRange(0, 0)  # busy: the download reports log lines, not fractions
        self.updateGUI()

    def onDownloadCompleted(self, process):
        self.ui.progressBar.setRange(0, 100)
        self.updateGUI()
        if process.cancelled:
            self.ui.statusLabel.text = "Download cancelled."
        elif process.returncode != 0:
            self.ui.statusLabel.text = "Download failed."
            slicer.util.errorDisplay(f"Model download failed: {process.parser.error_message(process.returncode)}",
                                     detailedText="\n".join(process.parser.log))
        else:
            self.ui.statusLabel.text = "Official model ready."

    def onOpenCacheFolder(self):
        folder = self.logic.modelCacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # --- Device section

    def _setupDeviceSection(self):
        self.devicePicker = devices.DevicePicker(self.ui.deviceComboBox, self.ui.refreshDevicesButton,
                                                 self.ui.statusLabel, lambda: self._parameterNode, self.updateGUI,
                                                 slicer.util.tryWithErrorDisplay)

    def _updateDeviceSection(self, p, running):
        self.devicePicker.update(p.device if p else "auto")

    # --- Run section (Segment / Cancel, estimate, progress)

    def _setupRunSection(self):
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.estimateButton.connect("clicked(bool)", self.onEstimate)

    def _updateRunSection(self, p, running):
        self.ui.applyButton.text = "Cancel" if running else "Segment"
        self.ui.applyButton.toolTip = ("Stop the computation" if running
                                       else "Segment the pancreas and pancreatic tumours in the input CT")
        self.ui.inputsCollapsibleButton.enabled = not running
        remote = self._onServer()
        self.ui.applyButton.enabled = bool(p and p.inputVolume) and (running or remote or bool(self.currentModel()))
        self.ui.serverURLLineEdit.enabled = self.ui.serverTokenLineEdit.enabled = remote
        self.ui.deviceComboBox.enabled = not remote  # the server's workers choose their devices
        useROI = bool(p and p.region == "ROI node")
        self.ui.roiSelector.enabled = useROI
        self.ui.roiModeComboBox.enabled = useROI
        self.ui.estimateButton.enabled = bool(p and p.inputVolume and self.currentModel()) and not running and not remote

    def _onServer(self):
        """True when the panel's "Run on" is a server."""
        return bool(self._parameterNode and self._parameterNode.runOn == "server")

    def onApplyButton(self):
        if self.logic.isRunning():
            self.logic.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
            # a server run needs none of the engine's packages here (only the standard library's HTTP)
            if not self._onServer() and not self.logic.setupPythonRequirements(askConfirmation=True):
                return
            p = self._parameterNode
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.ui.resultLabel.text = ""
            self.ui.statusLabel.text = "Starting..."
            self._startTime = time.monotonic()
            self.logic.process(p.inputVolume, p.outputSegmentation, self.currentModel(), p.device,
                               waitForCompletion=False, eventCallback=self.onEngineEvent,
                               completedCallback=self.onProcessingCompleted, allowNonCT=p.allowNonCT,
                               roiNode=p.roiNode if p.region == "ROI node" else None, roiMode=p.roiMode, mode=p.mode,
                               confidence=p.computeConfidence, region=REGION_ARGUMENTS.get(p.region),
                               server=p.serverURL if self._onServer() else None,
                               token=self.ui.serverTokenLineEdit.text)
        self.updateGUI()

    def onEngineEvent(self, event):
        if event.kind == "log":
            self.ui.logTextEdit.appendPlainText(event.line)
            return
        if event.fraction is not None:
            self.ui.progressBar.value = int(round(100 * event.fraction))
        if event.kind == "progress":
            elapsed = time.monotonic() - self._startTime if self._startTime else None
            self.ui.statusLabel.text = estimate.status_line(self.logic.lastStatus(), elapsed, event.fraction)

    def onEstimate(self):
        """One line before starting: windows and time on this computer for the current choices."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Failed to estimate the run.", waitCursor=True):
            self.ui.estimateLabel.text = self.logic.estimate(
                p.inputVolume, self.currentModel(), p.roiNode if p.region == "ROI node" else None, p.roiMode,
                region=REGION_ARGUMENTS.get(p.region, "whole"))

    def onProcessingCompleted(self, result):
        self.updateGUI()
        if result.cancelled:
            self.ui.statusLabel.text = "Cancelled."
            self.ui.progressBar.value = 0
            return
        if not result.success:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"Segmentation failed: {result.message}", detailedText=result.log)
            return
        self.ui.progressBar.value = 100
        elapsed = time.monotonic() - self._startTime if self._startTime else None
        self.ui.statusLabel.text = estimate.status_line("Done", elapsed, 1.0)
        with slicer.util.tryWithErrorDisplay("The segmentation finished, but showing its results failed."):
            self._showResults(result)
        self.updateGUI()

    # --- Results section

    def _setupResultsSection(self):
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.showConfidenceButton.connect("toggled(bool)", self.onShowConfidenceToggled)

    def _updateResultsSection(self, p, running):
        segmentation = p.outputSegmentation if p else None
        self.ui.editInSegmentEditorButton.enabled = bool(segmentation) and not running
        self.ui.show3DCheckBox.enabled = bool(segmentation)
        hasConfidence = self._confidenceNode is not None and slicer.mrmlScene.IsNodePresent(self._confidenceNode)
        self.ui.showConfidenceButton.enabled = bool(hasConfidence) and not running

    def _showResults(self, result):
        """A finished run in the panel: volumes, read-out table and lines, 3D, the confidence map."""
        p = self._parameterNode
        p.outputSegmentation = result.segmentationNode
        self.ui.resultLabel.text = case_results.format_volumes(result.volumes) or "No volumes reported."
        if result.message:
            self.ui.statusLabel.text += f" ({result.message})"
        self.ui.measurementsTableView.setMRMLTableNode(self.logic.showReport(result, p.inputVolume))
        self.logic.setShow3D(result.segmentationNode, p.show3D)
        self._confidenceNode = result.confidenceNode
        if self.ui.showConfidenceButton.checked:
            self.onShowConfidenceToggled(True)

    def _clearResults(self):
        """The scene is closing: forget the last run's nodes (their table view would be stale)."""
        self.ui.measurementsTableView.setMRMLTableNode(None)
        self.ui.resultLabel.text = ""
        self.ui.estimateLabel.text = ""
        self._confidenceNode = None

    def onShowConfidenceToggled(self, show):
        """One click: the last run's confidence map over the CT in the slice views (colour map 0..255)."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Failed to show the confidence map."):
            self.logic.showConfidence(self._confidenceNode if show else None, p.inputVolume if p else None)

    def onShow3DToggled(self, show):
        if self._parameterNode and self._parameterNode.outputSegmentation:
            self.logic.setShow3D(self._parameterNode.outputSegmentation, show)

    def onEditInSegmentEditor(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Failed to open the Segment Editor."):
            self.logic.editInSegmentEditor(p.outputSegmentation, p.inputVolume)

    # --- Review section (a case folder of a batch: the same files as `pancreas-dints review` in the browser)

    def _setupReviewSection(self):
        """Built here (no .ui change): open a batch case folder, its review status, Save corrected."""
        self._reviewCase = None
        box = ctk.ctkCollapsibleButton()
        box.text = "Review a batch case"
        box.collapsed = True
        form = qt.QFormLayout(box)
        self.reviewOpenButton = qt.QPushButton("Open case folder...")
        self.reviewOpenButton.toolTip = ("A case folder OUTDIR/<case> written by `pancreas-dints segment`: its CT and "
                                         "its segments (the corrected ones when a correction was saved)")
        self.reviewStatusLabel = qt.QLabel("")
        self.reviewStatusLabel.wordWrap = True
        self.reviewerLineEdit = qt.QLineEdit()
        self.reviewerLineEdit.placeholderText = "your name (recorded with the review)"
        self.reviewSaveButton = qt.QPushButton("Save corrected")
        self.reviewSaveButton.toolTip = ("Edit the segments in the Segment Editor, then save: labels_corrected.nii.gz, "
                                         "segmentation_corrected.seg.nrrd, review.json and OUTDIR/review.csv")
        form.addRow(self.reviewOpenButton)
        form.addRow("Review status:", self.reviewStatusLabel)
        form.addRow("Reviewer:", self.reviewerLineEdit)
        form.addRow(self.reviewSaveButton)
        self.layout.addWidget(box)
        self.reviewOpenButton.connect("clicked(bool)", self.onOpenReviewCase)
        self.reviewSaveButton.connect("clicked(bool)", self.onSaveCorrected)
        self._clearReviewCase()

    def _clearReviewCase(self):
        self._reviewCase = None
        if getattr(self, "reviewStatusLabel", None) is not None:  # the section exists once setup() has run
            self.reviewStatusLabel.text = "no case folder open"
            self.reviewSaveButton.enabled = False

    def onOpenReviewCase(self):
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Open a case folder of a batch")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Failed to open the case folder.", waitCursor=True):
            self._reviewCase = self.logic.openReviewCase(folder)
            self._showReviewStatus()

    def _showReviewStatus(self):
        case = self._reviewCase
        status = self.logic.reviewStatus(case.folder)
        text = status["status"]
        if status["reviewer"]:
            text += f" by {status['reviewer']}, {status['time']}"
        if status["reason"]:
            text += f": {status['reason']}"
        if case.read_only:
            text += f" (read-only: {case.read_only})"
        self.reviewStatusLabel.text = text
        self.reviewSaveButton.enabled = not case.read_only

    def onSaveCorrected(self):
        if self._reviewCase is None:
            return
        with slicer.util.tryWithErrorDisplay("Failed to save the corrected segmentation.", waitCursor=True):
            self.logic.saveCorrected(self._reviewCase, self.reviewerLineEdit.text)
            self._showReviewStatus()

    # --- Advanced section

    def _setupAdvancedSection(self):
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)

    def _updateAdvancedSection(self, p, running):
        self.ui.installDependenciesButton.enabled = not running  # pip must not replace what a run is using

    def onInstallDependencies(self):
        if self.logic.isRunning():
            return
        with slicer.util.tryWithErrorDisplay("Failed to install the Python packages.", waitCursor=True):
            if self.logic.setupPythonRequirements(askConfirmation=True):
                slicer.util.infoDisplay("The Python packages Pancreas DiNTS needs are installed.")


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

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._task = None
        self._job = None  # the running segmentation's job (its temporary folder holds a copy of the CT)
        self.secondsPerWindow = None  # measured by the last run on this computer (for the estimate)

    def getParameterNode(self):
        return PancreasDiNTSParameterNode(super().getParameterNode())

    # --- Dependencies

    def setupPythonRequirements(self, askConfirmation=True, extraRequirementsFiles=()):
        """Make sure torch (through the PyTorch extension) and the engine's packages are installed.

        extraRequirementsFiles: more requirements files (the Train module's). Returns False when the user
        declined. Nothing is imported to check; packages Slicer ships are never replaced (see
        ``PancreasDiNTSSlicerLib.packages``)."""
        files = [REQUIREMENTS_FILE, *[Path(f) for f in extraRequirementsFiles]]
        return packages.setupPythonRequirements(files, askConfirmation, requester="PancreasDiNTS")

    # --- Models and devices

    def modelCacheFolder(self):
        """Where ``download`` stores the official model."""
        return model_folders.model_cache_folder()

    def officialModelFolder(self):
        """The downloaded official model folder, or None when it is not there yet."""
        return model_folders.official_model_folder()

    def downloadOfficialModel(self, waitForCompletion=True, eventCallback=None, completedCallback=None, source=None):
        """Download the official model into the cache folder in a background process (blocking: raise on failure).

        source: a bundle zip or folder obtained elsewhere (offline install; its checksums are verified)."""
        command = commands.download_command(commands.python_executable(), dest=self.modelCacheFolder(),
                                              source=source)
        task = self._start(command, waitForCompletion, eventCallback, completedCallback)
        if waitForCompletion and task.returncode != 0:
            raise RuntimeError(task.parser.error_message(task.returncode))
        return task

    def listDevices(self):
        """(device, label) pairs, asked from a separate process so that torch is not imported in Slicer (the
        panel uses ``PancreasDiNTSSlicerLib.devices.detectDevices``, which returns at once)."""
        found = []
        devices.detectDevices(lambda devs, error: found.append(devs)).wait()
        return found[0] if found else list(devices.DEFAULT_DEVICES)

    # --- Running

    def isRunning(self):
        return self._task is not None and self._task.running

    def lastStatus(self):
        return self._task.parser.status if self._task else ""

    def cancel(self):
        if self._task is not None:
            self._task.cancel()

    def shutdown(self):
        """Slicer is closing: stop the engine without calling back and remove the run's temporary folder."""
        if self._task is not None:
            self._task.stop()
        if self._job is not None:
            self._job.cleanup()
            self._job = None

    def _start(self, command, waitForCompletion, eventCallback, finishedCallback):
        if self.isRunning():
            raise RuntimeError("The engine is already running; wait for it or cancel it first.")
        self._task = EngineProcess(command, eventCallback, finishedCallback)
        return self._task.start(waitForCompletion)

    def process(self, inputVolume, outputSegmentation, model, device="auto", waitForCompletion=True,
                eventCallback=None, completedCallback=None, allowNonCT=False, roiNode=None, roiMode="grid",
                mode="fast", confidence=True, region=None, server=None, token=None):
        """Segment ``inputVolume`` with ``model`` on ``device``. Can be used without GUI widget.

        outputSegmentation: an existing segmentation whose "Pancreas" and "Pancreatic tumor" segments are
        replaced (other segments are kept), or None to create a new one. With waitForCompletion the result is
        returned and a failure raises RuntimeError with the engine's one-line message; otherwise the call
        returns at once and completedCallback(SegmentationResult) is called from the main thread.
        The scene is left unchanged when the run fails or is cancelled. roiNode: segment only inside this markups
        ROI (roiMode grid or local); region (without an ROI): "auto" (the automatic pancreas region), "whole" or None
        (the engine's default: auto on a CPU); mode: fast (default) or exact; confidence: also load the engine's confidence
        map as a volume (``result.confidenceNode``, not shown until :meth:`showConfidence`; not in ROI mode).
        server, token: run on a ``pancreas-dints serve`` at this address (model and device are the server's; the
        same input file, progress, cancel and import; docs/SERVER.md).
        """
        self._checkChoices(inputVolume, model, server)
        jobClass = RemoteSegmentationJob if server else SegmentationJob  # server: the same input file and import
        job = jobClass(inputVolume, model or "", outputSegmentation, device=device, scene=slicer.mrmlScene,
                              roi_box=scenelib.roi_box_ras(roiNode) if roiNode else None, roi_mode=roiMode,
                              mode=mode, region=region, allow_non_ct=allowNonCT, python=commands.python_executable(),
                              work_dir=Path(slicer.util.tempDirectory("PancreasDiNTS")),
                              importer=self.importSegmentation, load_confidence=confidence,
                              confidence_loader=self.loadConfidence)
        if server:
            job.server_url, job.token = server, token or ""
        # writes the input in world coordinates (linear transforms hardened, see scene layer); a server run writes it
        # when it starts (RemoteSegmentationJob.start)
        command = None if server else job.prepare()
        results = []

        def onFinished(task):
            self._job = None
            try:
                result = job.complete(task.returncode, task.cancelled, task.parser)
            except Exception as error:  # an unexpected failure while importing: a failed run, shown as one
                logging.exception("PancreasDiNTS: importing the engine's result failed")
                result = SegmentationResult(False, f"Loading the engine's result failed: {error}",
                                            log="\n".join(task.parser.log))
            results.append(result)
            if completedCallback:
                completedCallback(result)

        self._job = job
        try:
            if server:
                task = self._startRemote(job, waitForCompletion, eventCallback, onFinished)
            else:
                task = self._start(command, waitForCompletion, eventCallback, onFinished)
        except Exception:
            self._job = None
            job.cleanup()
            raise
        if not waitForCompletion:
            return None
        return self._blockingResult(task, results)

    def _startRemote(self, job, waitForCompletion, eventCallback, finishedCallback):
        """A server run: the upload starts on a thread; RemoteTask polls it like an engine process."""
        if self.isRunning():
            raise RuntimeError("The engine is already running; wait for it or cancel it first.")
        try:
            run = job.start()
        except scenelib.SceneLayerError as error:
            raise ValueError(str(error)) from None
        self._task = RemoteTask(run, eventCallback, finishedCallback)
        return self._task.start(waitForCompletion)

    @staticmethod
    def _checkChoices(inputVolume, model, server=None):
        if not inputVolume:
            raise ValueError("Select an input CT volume.")
        if server:
            return  # the server's model
        if not model:
            raise ValueError("Select a model: download the official model or choose a local model folder.")
        if not Path(model).exists():
            raise ValueError(f"Model not found: {model}. Choose a bundle folder or an exported model file.")

    @staticmethod
    def _blockingResult(task, results):
        """The result of a blocking run, or RuntimeError with the engine's (or the import's) one-line message."""
        if not results:
            raise RuntimeError(f"The engine stopped with exit code {task.returncode} and no result was handled.")
        result = results[0]
        if not result.success:
            raise RuntimeError(result.message if not result.cancelled else "Cancelled.")
        return result

    # --- Results (MRML work is the scene layer's)

    def importSegmentation(self, segmentationFile, inputVolume, outputSegmentation=None):
        """Load the engine's .seg.nrrd into outputSegmentation (or a new node), replacing only our segments."""
        return scenelib.import_segmentation(segmentationFile, inputVolume, outputSegmentation, slicer.mrmlScene)

    def loadConfidence(self, confidenceFile, inputVolume):
        """Load the engine's confidence.nii.gz as a volume in the input's frame, with the confidence colour map."""
        return scenelib.load_confidence_volume(confidenceFile, inputVolume, slicer.mrmlScene)

    @staticmethod
    def showConfidence(confidenceNode, inputVolume, opacity=0.5):
        """Show ``confidenceNode`` over ``inputVolume`` in every slice view (None hides it); returns the number of
        slice views changed (0 without views, e.g. ``--no-main-window``)."""
        return scenelib.show_confidence(confidenceNode, inputVolume, slicer.mrmlScene, opacity)

    def showReport(self, result, inputVolume):
        """The report's read-out as a table node (measurement, value, unit) and the largest lesion's longest axial
        diameter and its perpendicular as markups lines, next to the input; the measured seconds per window feed
        the next estimate. Returns the table node."""
        if not result.report:
            return None
        perWindow = estimate.seconds_per_window(result.report)
        if perWindow:
            self.secondsPerWindow = perWindow
        name = f"{inputVolume.GetName()} measurements" if inputVolume else "measurements"
        table = scenelib.readout_table(result.report, slicer.mrmlScene, name=name, reference=inputVolume)
        lines = scenelib.readout_lines(result.report) or [
            (f"{segment} {key}", points) for segment, key, points in scenelib.report.report_lines(result.report)]
        for lineName, points in lines:
            scenelib.add_line(points, lineName, slicer.mrmlScene, reference=inputVolume)
        return table

    def estimate(self, inputVolume, model, roiNode=None, roiMode="grid", region="whole"):
        """'N windows, about T on this computer': from the CT's and the ROI's size and the model's window settings
        (region "auto": the automatic pancreas region's coarse windows and those of a typical gland)."""
        return scenelib.roi.estimate_line(inputVolume, model, roiNode, roiMode, self.secondsPerWindow, region)

    @staticmethod
    def setShow3D(segmentationNode, show):
        """Show or hide the segments as surfaces in 3D views."""
        scenelib.set_show_3d(segmentationNode, show)

    @staticmethod
    def editInSegmentEditor(segmentationNode, volumeNode):
        """Open the Segment Editor with this segmentation and source volume selected."""
        if not segmentationNode:
            raise ValueError("There is no segmentation to edit yet.")
        slicer.util.selectModule("SegmentEditor")
        editorWidget = slicer.util.getModuleWidget("SegmentEditor")
        editorWidget.editor.setSegmentationNode(segmentationNode)
        if volumeNode:
            editorWidget.editor.setSourceVolumeNode(volumeNode)

    # --- Review of a batch case (scene layer PancreasDiNTSSceneLib.review, imported when used: it needs nibabel)

    @staticmethod
    def openReviewCase(folder):
        """Load a batch case folder into the scene (its CT, its corrected or original segments) and show the CT
        in the slice views; returns the scene layer's LoadedCase (edit its segmentation, then saveCorrected)."""
        from PancreasDiNTSSceneLib import review

        case = review.load_case(folder, slicer.mrmlScene)
        slicer.util.setSliceViewerLayers(background=case.volume, fit=True)
        return case

    @staticmethod
    def reviewStatus(folder):
        """{"status", "reviewer", "time", "reason"} of a case folder ("not reviewed" when none is recorded)."""
        from PancreasDiNTSSceneLib import review

        return review.review_status(folder)

    @staticmethod
    def saveCorrected(case, reviewer):
        """Save the case's segments as its correction: the same files the browser review writes."""
        from PancreasDiNTSSceneLib import review

        return review.save_corrected(case, reviewer or "unknown", slicer.mrmlScene)


#
# PancreasDiNTSTest
#


class PancreasDiNTSTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Reload and Test, ctest py_PancreasDiNTS, or the README's headless command).

    Makes a phantom CT with the engine, trains a tiny model on the spot (or uses the demo model when it is
    installed), segments the phantom through the logic exactly as the Segment button does, and checks the two
    segments, their terminology and the reported volumes; then checks that a bad model leaves the scene unchanged.
    Every test prepares what it needs (``slicer.testing.runUnitTest`` runs the test_* methods alphabetically and
    never calls runTest); what is expensive (packages, phantoms, the model) is prepared once per process.
    """

    _shared = {}  # packages ready, phantom CT and model: prepared once, whichever test comes first

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_PancreasDiNTS_segmentPhantom, self.test_PancreasDiNTS_showConfidenceInViews,
                     self.test_PancreasDiNTS_badModelLeavesSceneUnchanged,
                     self.test_PancreasDiNTS_roiExactModeAndEstimate):
            self.setUp()
            try:
                test()
            except unittest.SkipTest as reason:
                self.delayDisplay(f"{test.__name__} skipped: {reason}")

    # --- What the tests share

    def _prepareEngine(self):
        """The engine's packages (installed when missing, without questions: a self-test runs unattended)."""
        if "engine" not in self._shared:
            self.delayDisplay("Preparing the engine (may install packages)")
            self.assertTrue(PancreasDiNTSLogic().setupPythonRequirements(askConfirmation=False))
            self._shared["engine"] = True

    def _engine(self, command):
        self._prepareEngine()
        task = EngineProcess(command).start(waitForCompletion=True)  # events are processed while it runs
        self.assertEqual(task.returncode, 0, task.parser.error_message(task.returncode))
        return task

    def _phantomAndModel(self):
        """A phantom CT the model never saw and a model: the demo model when installed, else a tiny one trained
        here (random weights would give arbitrary segments, still exercising every step)."""
        if "phantom" not in self._shared:
            work = Path(slicer.util.tempDirectory("PancreasDiNTSTest"))
            python = commands.python_executable()
            self._engine(commands.make_phantoms_command(python, work / "data", count=4, seed=11))
            images = sorted((work / "data" / "imagesTs").glob("*.nii.gz")) or sorted(
                (work / "data" / "imagesTr").glob("*.nii.gz"))
            self.assertTrue(images, "the engine made no phantom")
            model = model_folders.demo_model_folder()
            if not model:
                self.delayDisplay("Training a tiny model on phantoms (about a minute)")
                self._engine(commands.prepare_datalist_command(python, work / "data", work / "datalist.json"))
                self._engine(commands.train_command(python, work / "datalist.json", work / "model",
                                                       arch="random", preset="tiny", device="cpu"))
                model = work / "model"
            self._shared["phantom"] = (images[0], model)
        return self._shared["phantom"]

    def _segmentedPhantom(self):
        """A fresh scene's phantom volume and the result of segmenting it with the confidence map."""
        imagePath, model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        return volumeNode, PancreasDiNTSLogic().process(volumeNode, None, str(model), "cpu")

    # --- Tests

    def test_PancreasDiNTS_segmentPhantom(self):
        imagePath, model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        logic = PancreasDiNTSLogic()
        # An existing segmentation with an unrelated segment: it must survive, ours must be added once.
        existing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
        existing.GetSegmentation().AddEmptySegment("liver", "Liver")
        for _run in range(2):
            self.delayDisplay("Segmenting the phantom")
            result = logic.process(volumeNode, existing, str(model), "cpu", waitForCompletion=True)
        self.assertTrue(result.success)
        segmentation = result.segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1 + len(terminology.SEGMENTS))
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("Liver"))
        for info in terminology.SEGMENTS:
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
            self.assertIsNotNone(segment, info.name)
            tag = vtk.mutable("")
            segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
            self.assertEqual(str(tag), info.terminology_entry())
            self.assertIn(info.name, result.volumes)
            self.assertGreaterEqual(result.volumes[info.name], 0.0)

        # A new segmentation is created and placed next to the input in the subject hierarchy.
        newResult = logic.process(volumeNode, None, str(model), "cpu")
        self.assertNotEqual(newResult.segmentationNode.GetID(), existing.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(newResult.segmentationNode)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode)))

        # The read-out: a table next to the input, diameter lines, and the confidence map loaded.
        self.assertIn("readout", newResult.report)
        self.assertIsNotNone(logic.showReport(newResult, volumeNode))
        self.assertTrue(scenelib.readout_rows(newResult.report))
        self.assertIsNotNone(newResult.confidenceNode)
        self.delayDisplay("Segmentation test passed")

    def test_PancreasDiNTS_showConfidenceInViews(self):
        """Show confidence puts the map over the CT in every slice view (views exist only with a main window)."""
        if not slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"):
            self.skipTest("no slice views: Slicer runs without a main window (--no-main-window)")
        volumeNode, result = self._segmentedPhantom()
        self.assertIsNotNone(result.confidenceNode)
        self.assertGreaterEqual(PancreasDiNTSLogic.showConfidence(result.confidenceNode, volumeNode), 1)
        PancreasDiNTSLogic.showConfidence(None, volumeNode)
        self.delayDisplay("Show confidence test passed")

    def test_PancreasDiNTS_badModelLeavesSceneUnchanged(self):
        imagePath, _model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        badModel = Path(slicer.util.tempDirectory("PancreasDiNTSTest")) / "not_a_model"
        badModel.mkdir()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(RuntimeError) as context:
            PancreasDiNTSLogic().process(volumeNode, None, str(badModel), "cpu")
        self.assertIn("not_a_model", str(context.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Bad-model test passed")

    def test_PancreasDiNTS_roiExactModeAndEstimate(self):
        """The panel's CPU choices through the logic: an estimate line, then exact mode inside an ROI; the
        exported labels lie only inside the ROI's box; the report becomes a table next to the input."""
        imagePath, model = self._phantomAndModel()
        volumeNode = slicer.util.loadVolume(str(imagePath))
        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        center = [(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)]
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "pancreas box")
        roi.SetCenter(center)
        roi.SetRadiusXYZ(40.0, 30.0, 20.0)
        logic = PancreasDiNTSLogic()
        line = logic.estimate(volumeNode, str(model), roi, "grid")
        self.assertIn("windows", line)
        result = logic.process(volumeNode, None, str(model), "cpu", roiNode=roi, roiMode="grid", mode="exact")
        inside, outside = scenelib.roi.labels_inside_and_outside(result.segmentationNode, roi, volumeNode,
                                                                 slicer.mrmlScene)
        self.assertEqual(outside, 0, "labels outside the ROI")
        table = logic.showReport(result, volumeNode)
        self.assertIsNotNone(table)
        self.delayDisplay("ROI, exact mode and estimate test passed")
