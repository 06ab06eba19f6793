"""Pancreas DiNTS: segment the pancreas and pancreatic tumours in a CT volume with one click.

Three layers: this file holds the widgets (panel, parameter node, buttons) and the process handling; everything
that touches MRML (input file, segmentation import, ROI box, confidence volume, report table) is the Qt-free
scene layer ``PancreasDiNTSSceneLib`` (tested with the real slicer-core); the engine runs in a background process
(``PythonSlicer -m PancreasDiNTSLib.cli segment``, command lines and progress parsing from
``PancreasDiNTSLib.bridge``). Torch never runs in Slicer's process.
"""

import importlib.util
import inspect
import logging
import time
from pathlib import Path
from typing import Annotated

import ctk
import PancreasDiNTSSceneLib as scenelib
import qt
import slicer
import vtk
from PancreasDiNTSLib.bridge import background, estimate
from PancreasDiNTSLib.core import terminology
from PancreasDiNTSSceneLib.runs import SegmentationJob, SegmentationResult  # noqa: F401 (SegmentationResult: API)
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
# Packages Slicer ships (or PyTorchUtils manages): never let pip replace them.
SLICER_MANAGED_PACKAGES = ["torch", "torchvision", "numpy", "scipy", "SimpleITK", "pydicom", "requests", "vtk", "packaging"]
TORCH_REQUIREMENT = ">=2.4"
ROI_MODES = ["grid", "local"]
SPEED_MODES = list(scenelib.runs.MODES)  # fast (default: same labels, quicker) or exact (MONAI's own path)


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
        )
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
    useROI - segment only inside roiNode (much faster on a CPU).
    roiNode - a markups ROI (rotated ROIs are enclosed in an axis-aligned box).
    roiMode - grid (labels in the box equal the full run's) or local (time proportional to the box).
    mode - fast (default) or exact (MONAI's SlidingWindowInferer as the bundle runs it).
    computeConfidence - ask the engine for its confidence map and load it (for "Show confidence").
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    useLocalModel: bool = False
    localModelPath: Path
    device: str = "auto"
    show3D: bool = True
    allowNonCT: bool = False
    useROI: bool = False
    roiNode: vtkMRMLMarkupsROINode
    roiMode: Annotated[str, Choice(ROI_MODES)] = "grid"
    mode: Annotated[str, Choice(SPEED_MODES)] = "fast"
    computeConfidence: bool = True


#
# Background engine process (also used by PancreasDiNTSTrain)
#


def _hasNonBlockingLaunch():
    """True on Slicer >= 5.12, whose launchConsoleProcess can stream output through callbacks."""
    return "blocking" in inspect.signature(slicer.util.launchConsoleProcess).parameters


class EngineProcess:
    """One engine command running outside Slicer's Python, its output parsed into progress events.

    eventCallback(event) receives each :class:`PancreasDiNTSLib.bridge.background.Event`; finishedCallback(process)
    is called once, in the main thread, after the process ended (read ``returncode``, ``cancelled``, ``parser``).
    """

    POLL_INTERVAL_MSEC = 200

    def __init__(self, command, eventCallback=None, finishedCallback=None):
        self.command = [str(arg) for arg in command]
        self.eventCallback = eventCallback
        self.finishedCallback = finishedCallback
        self.parser = background.ProgressParser()
        self.proc = None
        self.returncode = None
        self.cancelled = False
        self._pump = None
        self._timer = None

    @property
    def running(self):
        return self.proc is not None and self.returncode is None

    def start(self, waitForCompletion=True):
        """Start the process; with waitForCompletion, return only after it ended."""
        logging.info("PancreasDiNTS: running " + " ".join(self.command))
        environment = background.engine_environment(slicer.util.startupEnvironment().get("PYTHONPATH"))
        if waitForCompletion:
            self.proc = slicer.util.launchConsoleProcess(self.command, updateEnvironment=environment)
            self._finish(background.follow(self.proc, self._onLine))
        elif _hasNonBlockingLaunch():
            self.proc = slicer.util.launchConsoleProcess(
                self.command, updateEnvironment=environment, blocking=False,
                logCallback=self._onLine, completedCallback=self._finish)
        else:  # Slicer 5.10: read on a thread, poll from a timer so the GUI stays responsive
            self.proc = slicer.util.launchConsoleProcess(self.command, updateEnvironment=environment)
            self._pump = background.LinePump(self.proc.stdout)
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_INTERVAL_MSEC)
            self._timer.connect("timeout()", self._poll)
            self._timer.start()
        return self

    def cancel(self):
        """Kill the whole process tree (PythonSlicer is a launcher: killing it alone leaves the work running)."""
        if self.running:
            self.cancelled = True
            background.kill_process_tree(self.proc.pid)

    def _poll(self):
        for line in self._pump.drain():
            self._onLine(line)
        if self._pump.ended and self.proc.poll() is not None:
            self._timer.stop()
            self._finish(self.proc.returncode)

    def _onLine(self, line):
        event = self.parser.feed(line)
        if event.kind == "log" and event.line:
            logging.info(event.line)
        if self.eventCallback:
            self.eventCallback(event)

    def _finish(self, returncode):
        if self.returncode is not None:
            return
        self.returncode = returncode
        if self.finishedCallback:
            self.finishedCallback(self)


#
# PancreasDiNTSWidget
#


def setDeviceItems(comboBox, devices, current="auto"):
    """Fill a device combo box with (device, label) pairs and select ``current`` (else the first)."""
    wasBlocked = comboBox.blockSignals(True)
    comboBox.clear()
    for device, label in devices:
        comboBox.addItem(label, device)
    comboBox.blockSignals(wasBlocked)
    selectDevice(comboBox, current)
    if comboBox.currentIndex < 0:
        comboBox.setCurrentIndex(0)


def selectDevice(comboBox, device):
    """Select ``device`` without signalling (the list is dynamic, so it is not bound to the parameter node)."""
    index = comboBox.findData(device)
    if index >= 0 and index != comboBox.currentIndex:
        wasBlocked = comboBox.blockSignals(True)
        comboBox.setCurrentIndex(index)
        comboBox.blockSignals(wasBlocked)


class PancreasDiNTSWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._confidenceNode = None  # the last run's confidence volume (loaded hidden; "Show confidence" shows it)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PancreasDiNTS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PancreasDiNTSLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # A model is a bundle folder or an exported model file.
        self.ui.localModelPathLineEdit.filters = (
            ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.NoDotAndDotDot
            | ctk.ctkPathLineEdit.Readable)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModel)
        self.ui.openCacheFolderButton.connect("clicked(bool)", self.onOpenCacheFolder)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.onRefreshDevices)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.installModelFromFileButton.connect("clicked(bool)", self.onInstallModelFromFile)
        self.ui.estimateButton.connect("clicked(bool)", self.onEstimate)
        self.ui.showConfidenceButton.connect("toggled(bool)", self.onShowConfidenceToggled)
        self._startTime = None

        setDeviceItems(self.ui.deviceComboBox, background.DEFAULT_DEVICES)
        self.initializeParameterNode()
        self.updateGUI()

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed."""
        self.logic.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()
        self.setParameterNode(None)

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

    # --- GUI state

    def updateGUI(self, caller=None, event=None):
        """Enable what can be used now; Segment becomes Cancel while the engine runs."""
        p = self._parameterNode
        running = self.logic.isRunning()
        self.ui.applyButton.text = "Cancel" if running else "Segment"
        self.ui.applyButton.toolTip = ("Stop the computation" if running
                                       else "Segment the pancreas and pancreatic tumours in the input CT")
        self.ui.inputsCollapsibleButton.enabled = not running
        modelFolder = self.logic.officialModelFolder()
        self.ui.officialModelStatusLabel.text = (
            f"Official model: {modelFolder}" if modelFolder else "Official model: not downloaded yet")
        self.ui.downloadModelButton.enabled = not running and not (p and p.useLocalModel)
        self.ui.installModelFromFileButton.enabled = self.ui.downloadModelButton.enabled
        self.ui.localModelPathLineEdit.enabled = bool(p and p.useLocalModel)
        canApply = bool(p and p.inputVolume) and (running or bool(self.currentModel()))
        self.ui.applyButton.enabled = canApply
        selectDevice(self.ui.deviceComboBox, p.device if p else "auto")
        segmentation = p.outputSegmentation if p else None
        self.ui.editInSegmentEditorButton.enabled = bool(segmentation) and not running
        self.ui.show3DCheckBox.enabled = bool(segmentation)
        useROI = bool(p and p.useROI)
        self.ui.roiSelector.enabled = useROI
        self.ui.roiModeComboBox.enabled = useROI
        self.ui.estimateButton.enabled = bool(p and p.inputVolume and self.currentModel()) and not running
        hasConfidence = self._confidenceNode is not None and slicer.mrmlScene.IsNodePresent(self._confidenceNode)
        self.ui.showConfidenceButton.enabled = bool(hasConfidence) and not running

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

    # --- Actions

    def onApplyButton(self):
        if self.logic.isRunning():
            self.logic.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        with slicer.util.tryWithErrorDisplay("Failed to start the segmentation.", waitCursor=True):
            if not self.logic.setupPythonRequirements(askConfirmation=True):
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
                               roiNode=p.roiNode if p.useROI else None, roiMode=p.roiMode, mode=p.mode,
                               confidence=p.computeConfidence)
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
                p.inputVolume, self.currentModel(), p.roiNode if p.useROI else None, p.roiMode)

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
        self._parameterNode.outputSegmentation = result.segmentationNode
        self.ui.resultLabel.text = background.format_volumes(result.volumes) or "No volumes reported."
        if result.message:
            self.ui.statusLabel.text += f" ({result.message})"
        table = self.logic.showReport(result, self._parameterNode.inputVolume)
        if table:
            self.ui.measurementsTableView.setMRMLTableNode(table)
        self.logic.setShow3D(result.segmentationNode, self._parameterNode.show3D)
        self._confidenceNode = result.confidenceNode
        if self.ui.showConfidenceButton.checked:
            self.onShowConfidenceToggled(True)
        self.updateGUI()

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

    def onDeviceChanged(self, index):
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onRefreshDevices(self):
        with slicer.util.tryWithErrorDisplay("Failed to list the compute devices.", waitCursor=True):
            setDeviceItems(self.ui.deviceComboBox, self.logic.listDevices(), self._parameterNode.device)

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

    def onInstallDependencies(self):
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
        self.secondsPerWindow = None  # measured by the last run on this computer (for the estimate)

    def getParameterNode(self):
        return PancreasDiNTSParameterNode(super().getParameterNode())

    # --- Dependencies

    def setupPythonRequirements(self, askConfirmation=True, extraRequirementsFiles=()):
        """Make sure torch (through the PyTorch extension) and the engine's packages are installed.

        extraRequirementsFiles: more requirements.txt files (the Train module's). Returns False when the user
        declined. Packages Slicer ships are never replaced.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError as exc:
            raise RuntimeError("Pancreas DiNTS needs the PyTorch extension: install 'PyTorch' from the "
                               "Extensions Manager, restart Slicer, then try again.") from exc
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                return False

        files = [REQUIREMENTS_FILE, *[Path(f) for f in extraRequirementsFiles]]
        requirements = [r for f in files for r in background.read_requirements(f)]
        if _hasPackagingModule():  # Slicer >= 5.12: checks, asks, installs with progress, offers a restart
            import slicer.packaging

            # skip_in_testing=False: the self-test (run with --testing) needs the packages to segment at all.
            slicer.packaging.pip_ensure(
                [r for f in files for r in slicer.packaging.load_requirements(f)],
                skip_packages=SLICER_MANAGED_PACKAGES, prompt_install=askConfirmation, requester="PancreasDiNTS",
                skip_in_testing=False)
            return not background.missing_requirements(requirements)

        missing = background.missing_requirements(requirements)
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "Pancreas DiNTS needs these Python packages, which will be downloaded and installed now:\n\n"
                + "\n".join(missing), windowTitle="Install Python packages"):
            return False
        upgraded = [req for req in missing if background.requirement_installed(req)]
        slicer.util.pip_install(" ".join(missing))
        # The engine runs in a new process and sees new packages at once; Slicer itself only after a restart.
        if upgraded and slicer.util.confirmYesNoDisplay(
                "Some packages were upgraded. Restart Slicer now so that it uses the new versions too?"):
            slicer.util.restart()
        return True

    # --- Models and devices

    def modelCacheFolder(self):
        """Where ``download`` stores the official model."""
        return background.model_cache_folder()

    def officialModelFolder(self):
        """The downloaded official model folder, or None when it is not there yet."""
        return background.official_model_folder()

    def downloadOfficialModel(self, waitForCompletion=True, eventCallback=None, completedCallback=None, source=None):
        """Download the official model into the cache folder in a background process (blocking: raise on failure).

        source: a bundle zip or folder obtained elsewhere (offline install; its checksums are verified)."""
        command = background.download_command(background.python_executable(), dest=self.modelCacheFolder(),
                                              source=source)
        task = self._start(command, waitForCompletion, eventCallback, completedCallback)
        if waitForCompletion and task.returncode != 0:
            raise RuntimeError(task.parser.error_message(task.returncode))
        return task

    def listDevices(self):
        """(device, label) pairs, asked from a separate process so that torch is not imported in Slicer."""
        task = EngineProcess(background.devices_command(background.python_executable()))
        task.start(waitForCompletion=True)
        return background.parse_devices("\n".join(task.parser.log))

    # --- Running

    def isRunning(self):
        return self._task is not None and self._task.running

    def lastStatus(self):
        return self._task.parser.status if self._task else ""

    def cancel(self):
        if self._task is not None:
            self._task.cancel()

    def _start(self, command, waitForCompletion, eventCallback, finishedCallback):
        if self.isRunning():
            raise RuntimeError("The engine is already running; wait for it or cancel it first.")
        self._task = EngineProcess(command, eventCallback, finishedCallback)
        return self._task.start(waitForCompletion)

    def process(self, inputVolume, outputSegmentation, model, device="auto", waitForCompletion=True,
                eventCallback=None, completedCallback=None, allowNonCT=False, roiNode=None, roiMode="grid",
                mode="fast", confidence=True):
        """Segment ``inputVolume`` with ``model`` on ``device``. Can be used without GUI widget.

        outputSegmentation: an existing segmentation whose "Pancreas" and "Pancreatic tumor" segments are
        replaced (other segments are kept), or None to create a new one. With waitForCompletion the result is
        returned and a failure raises RuntimeError with the engine's one-line message; otherwise the call
        returns at once and completedCallback(SegmentationResult) is called from the main thread.
        The scene is left unchanged when the run fails or is cancelled. roiNode: segment only inside this markups
        ROI (roiMode grid or local); mode: fast (default) or exact; confidence: also load the engine's confidence
        map as a volume (``result.confidenceNode``, not shown until :meth:`showConfidence`; not in ROI mode).
        """
        if not inputVolume:
            raise ValueError("Select an input CT volume.")
        if not model:
            raise ValueError("Select a model: download the official model or choose a local model folder.")
        if not Path(model).exists():
            raise ValueError(f"Model not found: {model}. Choose a bundle folder or an exported model file.")

        job = SegmentationJob(inputVolume, model, outputSegmentation, device=device, scene=slicer.mrmlScene,
                              roi_box=scenelib.roi_box_ras(roiNode) if roiNode else None, roi_mode=roiMode,
                              mode=mode, allow_non_ct=allowNonCT, python=background.python_executable(),
                              work_dir=Path(slicer.util.tempDirectory("PancreasDiNTS")),
                              importer=self.importSegmentation, load_confidence=confidence,
                              confidence_loader=self.loadConfidence)
        command = job.prepare()  # writes the input in world coordinates (linear transforms hardened, see scene layer)
        results = []

        def onFinished(task):
            results.append(job.complete(task.returncode, task.cancelled, task.parser))
            if completedCallback:
                completedCallback(results[0])

        try:
            self._start(command, waitForCompletion, eventCallback, onFinished)
        except Exception:
            job.cleanup()
            raise
        if not waitForCompletion:
            return None
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
        """Show ``confidenceNode`` over ``inputVolume`` in every slice view (None hides it)."""
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

    def estimate(self, inputVolume, model, roiNode=None, roiMode="grid"):
        """'N windows, about T on this computer': from the CT's and the ROI's size and the model's window settings."""
        return scenelib.roi.estimate_line(inputVolume, model, roiNode, roiMode, self.secondsPerWindow)

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


def _hasPackagingModule():
    """True on Slicer >= 5.12 (slicer.packaging: pip_ensure, load_requirements)."""
    return importlib.util.find_spec("slicer.packaging") is not None


#
# PancreasDiNTSTest
#


class PancreasDiNTSTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Reload and Test, or ctest py_PancreasDiNTS).

    Makes a phantom CT with the engine, trains a tiny model on the spot (or uses the demo model when it is
    installed), segments the phantom through the logic exactly as the Segment button does, and checks the two
    segments, their terminology and the reported volumes; then checks that a bad model leaves the scene unchanged.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PancreasDiNTS_segmentPhantom()
        self.setUp()
        self.test_PancreasDiNTS_badModelLeavesSceneUnchanged()
        self.setUp()
        self.test_PancreasDiNTS_roiExactModeAndEstimate()

    def _workFolder(self):
        return Path(slicer.util.tempDirectory("PancreasDiNTSTest"))

    def _engine(self, command):
        task = EngineProcess(command)
        task.start(waitForCompletion=True)
        self.assertEqual(task.returncode, 0, task.parser.error_message(task.returncode))
        return task

    def _phantomAndModel(self, work):
        """A phantom CT the model never saw and a model: the demo model when installed, else a tiny one trained
        here (random weights would give arbitrary segments, still exercising every step)."""
        python = background.python_executable()
        self._engine(background.make_phantoms_command(python, work / "data", count=4, seed=11))
        images = sorted((work / "data" / "imagesTs").glob("*.nii.gz")) or sorted(
            (work / "data" / "imagesTr").glob("*.nii.gz"))
        self.assertTrue(images, "the engine made no phantom")
        demo = background.demo_model_folder()
        if demo:
            return images[0], demo
        self.delayDisplay("Training a tiny model on phantoms (about a minute)")
        self._engine(background.prepare_datalist_command(python, work / "data", work / "datalist.json"))
        self._engine(background.train_command(python, work / "datalist.json", work / "model", arch="random",
                                              preset="tiny", device="cpu"))
        return images[0], work / "model"

    def test_PancreasDiNTS_segmentPhantom(self):
        self.delayDisplay("Preparing the engine (may install packages)")
        logic = PancreasDiNTSLogic()
        self.assertTrue(logic.setupPythonRequirements(askConfirmation=False))
        work = self._workFolder()
        imagePath, model = self._phantomAndModel(work)
        volumeNode = slicer.util.loadVolume(str(imagePath))

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

        # The read-out: a table next to the input, diameter lines, and the confidence map over the CT.
        self.assertIn("readout", newResult.report)
        self.assertIsNotNone(logic.showReport(newResult, volumeNode))
        self.assertTrue(scenelib.readout_rows(newResult.report))
        self.assertIsNotNone(newResult.confidenceNode)
        self.assertGreaterEqual(logic.showConfidence(newResult.confidenceNode, volumeNode), 1)
        logic.showConfidence(None, volumeNode)
        self.delayDisplay("Segmentation test passed")

    def test_PancreasDiNTS_badModelLeavesSceneUnchanged(self):
        work = self._workFolder()
        python = background.python_executable()
        self._engine(background.make_phantoms_command(python, work / "data", count=1, seed=3))
        volumeNode = slicer.util.loadVolume(str(sorted((work / "data" / "imagesTr").glob("*.nii.gz"))[0]))
        badModel = work / "not_a_model"
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
        work = self._workFolder()
        imagePath, model = self._phantomAndModel(work)
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

