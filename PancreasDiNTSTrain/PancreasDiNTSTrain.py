"""Pancreas DiNTS Train: architecture search, training, evaluation and export, run headless by the engine.

Every method of the logic runs one ``PancreasDiNTSLib.cli`` command in a background process (never torch in
Slicer's own process), either blocking (scripts, ``Slicer --no-main-window --python-script``: events are still
processed) or in the background with progress callbacks (the panel). The process runner, the package checks and
the device list are the shared ``PancreasDiNTSSlicerLib`` (installed by the PancreasDiNTS module). Example::

    import slicer
    logic = slicer.util.getModuleLogic("PancreasDiNTSTrain")
    run = logic.train("/data/datalist.json", "/runs/run1", preset="tiny", device="cpu")
    print(run.parser.metrics)
    slicer.util.exit(0)
"""

import atexit
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import ctk
import slicer
import vtk
from PancreasDiNTSLib.bridge import commands, model_folders, progress_lines
from PancreasDiNTSSlicerLib import devices, packages, reloading, resources
from PancreasDiNTSSlicerLib.process import EngineProcess
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_NAME = "PancreasDiNTSTrain"
TASKS = ["train", "search", "evaluate", "export"]
# Module-specific name: every module's Resources/ lands in one qt-scripted-modules/Resources/ when installed.
TRAIN_REQUIREMENTS_FILE = resources.requirementsFile(__file__, MODULE_NAME)
PRESETS = ["tiny", "demo", "bundle"]
EXPORT_FORMATS = ["torchscript", "onnx", "trt"]  # onnx and trt install their packages when first used
EXPORT_PACKAGES = {"onnx": "export", "trt": "trt"}  # format -> PancreasDiNTSSlicerLib.packages.OPTIONAL_FEATURES


#
# PancreasDiNTSTrain
#


class PancreasDiNTSTrain(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Pancreas DiNTS Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["PancreasDiNTS"]
        self.parent.contributors = list(resources.CONTRIBUTORS)
        self.parent.helpText = _(
            "Search a DiNTS architecture, train, evaluate and export pancreas segmentation models from a datalist. "
            "Runs the PancreasDiNTS engine in a background process; the same logic works headless from "
            "<tt>Slicer --no-main-window --python-script</tt>. A trained run folder can be used as a local model "
            "in the Pancreas DiNTS module."
        ) + resources.helpLink()
        self.parent.acknowledgementText = _(
            "Built on MONAI DiNTS (He et al., CVPR 2021) and the MONAI Model Zoo bundle "
            "pancreas_ct_dints_segmentation (Apache-2.0)."
        )


#
# Parameter node
#


@parameterNodeWrapper
class PancreasDiNTSTrainParameterNode:
    """Panel settings stored in the scene.

    task - what Start runs: train, search, evaluate or export.
    datalist - datalist JSON (training/validation/testing keys).
    outputFolder - run folder (train/search/evaluate) or exported file's folder.
    archFile - architecture file for train (empty: the preset's default).
    modelFolder - model to evaluate or export.
    preset - tiny (seconds), demo, bundle (the released hyper-parameters).
    exportFormat - torchscript, onnx or trt.
    resume - continue an interrupted train/search run.
    device - auto, cpu or cuda:N.
    """

    task: Annotated[str, Choice(TASKS)] = "train"
    datalist: Path
    outputFolder: Path
    archFile: Path
    modelFolder: Path
    preset: Annotated[str, Choice(PRESETS)] = "tiny"
    exportFormat: Annotated[str, Choice(EXPORT_FORMATS)] = "torchscript"
    resume: bool = False
    device: str = "auto"


def _pathOrNone(path: Any) -> str | None:
    """None for an empty path parameter (an empty ctkPathLineEdit gives Path('.'))."""
    text = str(path or "")
    return text if text not in ("", ".") else None


#
# PancreasDiNTSTrainWidget
#


class PancreasDiNTSTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: pick a datalist and output folder, start/stop, follow epoch, loss and Dice."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.devicePicker = None  # the device combo box and Detect GPUs (PancreasDiNTSSlicerLib.devices)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PancreasDiNTSTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PancreasDiNTSTrainLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.outputFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        # evaluate and export take a model folder (bundle or train run): with Files set, ctkPathLineEdit would
        # open a file dialog, where no folder can be chosen.
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Readable
        self.ui.datalistPathLineEdit.nameFilters = ["Datalist (*.json)"]
        self.ui.archPathLineEdit.nameFilters = ["Architecture file (*.pt *.pth)"]
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.useAsModelButton.connect("clicked(bool)", self.onUseAsModel)
        self.devicePicker = devices.DevicePicker(self.ui.deviceComboBox, self.ui.refreshDevicesButton,
                                                 self.ui.statusLabel, lambda: self._parameterNode, self.updateGUI,
                                                 slicer.util.tryWithErrorDisplay)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """The application closes: stop the run and the GPU detection without touching widgets; the observers
        are removed even when stopping fails."""
        try:
            if self.logic is not None:
                self.logic.shutdown()
            if self.devicePicker is not None:
                self.devicePicker.stop()
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
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Any) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def updateGUI(self, caller: Any = None, event: Any = None) -> None:
        p = self._parameterNode
        running = self.logic.isRunning() or packages.isInstalling()
        self.ui.startButton.text = _("Stop") if running else _("Start")
        self.ui.settingsCollapsibleButton.enabled = not running
        if not p:
            self.ui.refreshDevicesButton.enabled = self.devicePicker.task is None
            return
        self.devicePicker.update(p.device)
        task = p.task
        self.ui.datalistPathLineEdit.enabled = task in ("train", "search", "evaluate")
        self.ui.archPathLineEdit.enabled = task == "train"
        self.ui.modelPathLineEdit.enabled = task in ("evaluate", "export")
        self.ui.presetComboBox.enabled = task in ("train", "search")
        self.ui.resumeCheckBox.enabled = task in ("train", "search")
        self.ui.exportFormatComboBox.enabled = task == "export"
        ready = {
            "train": _pathOrNone(p.datalist) and _pathOrNone(p.outputFolder),
            "search": _pathOrNone(p.datalist) and _pathOrNone(p.outputFolder),
            "evaluate": _pathOrNone(p.datalist) and _pathOrNone(p.outputFolder) and _pathOrNone(p.modelFolder),
            "export": _pathOrNone(p.modelFolder),
        }[task]
        self.ui.startButton.enabled = running or bool(ready)
        self.ui.useAsModelButton.enabled = not running and task == "train" and bool(
            _pathOrNone(p.outputFolder) and model_folders.is_model_folder(p.outputFolder))

    def onStartButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            self.ui.statusLabel.text = _("Stopping...")
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start {task}.").format(task=p.task), waitCursor=True):
            if not self.logic.setupPythonRequirements(askConfirmation=True, onChange=self.updateGUI):
                return
            feature = EXPORT_PACKAGES.get(p.exportFormat) if p.task == "export" else None
            if feature and not packages.ensureOptional(feature, True, MODULE_NAME, self.updateGUI):
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            for label in (self.ui.epochValueLabel, self.ui.lossValueLabel, self.ui.diceValueLabel):
                label.text = "-"
            callbacks = {"waitForCompletion": False, "eventCallback": self.onEngineEvent,
                         "completedCallback": self.onCompleted}
            if p.task == "train":
                # Without a searched architecture the engine draws a random topology (fine for tiny runs).
                self.logic.train(str(p.datalist), str(p.outputFolder), arch=_pathOrNone(p.archFile) or "random",
                                 preset=p.preset, device=p.device, resume=p.resume, **callbacks)
            elif p.task == "search":
                self.logic.search(str(p.datalist), str(p.outputFolder), preset=p.preset, device=p.device,
                                  resume=p.resume, **callbacks)
            elif p.task == "evaluate":
                self.logic.evaluate(str(p.modelFolder), str(p.datalist), str(p.outputFolder), device=p.device,
                                    **callbacks)
            else:
                output = None
                if _pathOrNone(p.outputFolder):
                    suffix = {"torchscript": ".ts", "onnx": ".onnx", "trt": "_trt.ts"}[p.exportFormat]
                    output = str(Path(str(p.outputFolder)) / ("model" + suffix))
                self.logic.export(str(p.modelFolder), output=output, exportFormat=p.exportFormat, **callbacks)
            self.ui.statusLabel.text = _("Running {task}...").format(task=p.task)
        self.updateGUI()

    def onEngineEvent(self, event: Any) -> None:
        if event.kind == "log":
            self.ui.logTextEdit.appendPlainText(event.line)
            return
        if event.fraction is not None:
            self.ui.progressBar.value = int(round(100 * event.fraction))
        shown = progress_lines.training_display(self.logic.lastMetrics())
        self.ui.epochValueLabel.text = shown["epoch"]
        self.ui.lossValueLabel.text = shown["loss"]
        self.ui.diceValueLabel.text = shown["dice"]
        if event.kind == "progress":
            self.ui.statusLabel.text = self.logic.lastStatus()

    def onCompleted(self, process: EngineProcess) -> None:
        self.updateGUI()
        with slicer.util.tryWithErrorDisplay(_("The run ended, but showing its outcome failed.")):
            self._showOutcome(process)

    def _showOutcome(self, process: EngineProcess) -> None:
        if process.cancelled:
            self.ui.statusLabel.text = _("Stopped. Start again with 'Resume' checked to continue.")
        elif process.returncode != 0:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("The run failed: {error}").format(error=process.parser.error_message(process.returncode)),
                                     detailedText="\n".join(process.parser.log))
        else:
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = _("Finished.")
            p = self._parameterNode
            if p and p.task == "search":
                arch = model_folders.find_arch_file(str(p.outputFolder), process.parser.summary)
                if arch:
                    p.archFile = arch
                    self.ui.statusLabel.text = _("Finished: architecture {name} selected for training.").format(name=arch.name)

    def onUseAsModel(self) -> None:
        """Select the trained run folder as the local model of the Pancreas DiNTS module."""
        segmentParameters = slicer.util.getModuleLogic("PancreasDiNTS").getParameterNode()
        segmentParameters.useLocalModel = True
        segmentParameters.localModelPath = Path(str(self._parameterNode.outputFolder))
        slicer.util.selectModule("PancreasDiNTS")


#
# PancreasDiNTSTrainLogic
#


class PancreasDiNTSTrainLogic(ScriptedLoadableModuleLogic):
    """search/train/evaluate/export through the engine CLI. Can be used without GUI widget.

    Each method returns the EngineProcess: with waitForCompletion=True (default) after it finished (a failure
    raises RuntimeError with the engine's one-line message; ``process.parser.metrics`` holds the last
    epoch/loss/Dice); otherwise at once, and completedCallback(process) is called when it ends.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._task: EngineProcess | None = None

    def getParameterNode(self) -> Any:
        return PancreasDiNTSTrainParameterNode(super().getParameterNode())

    def setupPythonRequirements(self, askConfirmation: bool = True, onChange: Callable | None = None) -> bool:
        """torch (through the PyTorch extension), the engine's packages and the training extras; False when the
        user declined. Nothing is imported to check; packages Slicer ships are never replaced; one installation
        at a time (``onChange`` is called when it starts and ends)."""
        files = [resources.engineRequirementsFile(), TRAIN_REQUIREMENTS_FILE]
        return packages.setupPythonRequirements(files, askConfirmation, requester=MODULE_NAME, onChange=onChange)

    def isRunning(self) -> bool:
        return self._task is not None and self._task.running

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def shutdown(self) -> None:
        """Slicer is closing: stop the run without calling back (a resumable run folder stays as it is)."""
        if self._task is not None:
            self._task.stop()

    def lastStatus(self) -> str:
        return self._task.parser.status if self._task else ""

    def lastMetrics(self) -> dict:
        return dict(self._task.parser.metrics) if self._task else {}

    def _run(self, command: list, waitForCompletion: bool, eventCallback: Callable | None,
             completedCallback: Callable | None) -> EngineProcess:
        if self.isRunning():
            raise RuntimeError("A run is already in progress; stop it first.")
        self._task = EngineProcess(command, eventCallback, completedCallback)
        self._task.start(waitForCompletion)
        if waitForCompletion and self._task.returncode != 0:
            raise RuntimeError(self._task.parser.error_message(self._task.returncode))
        return self._task

    def search(self, datalist: Any, outputFolder: Any, preset: str = "tiny", device: str = "auto",
               resume: bool = False, overrides: Any = None, waitForCompletion: bool = True,
               eventCallback: Callable | None = None, completedCallback: Callable | None = None) -> EngineProcess:
        """DiNTS architecture search; writes an architecture file for train(arch=...)."""
        command = commands.search_command(commands.python_executable(), datalist, outputFolder, preset=preset,
                                            device=device, resume=resume, overrides=overrides)
        return self._run(command, waitForCompletion, eventCallback, completedCallback)

    def train(self, datalist: Any, outputFolder: Any, arch: Any = None, preset: str = "tiny", device: str = "auto",
              resume: bool = False, overrides: Any = None, waitForCompletion: bool = True,
              eventCallback: Callable | None = None, completedCallback: Callable | None = None) -> EngineProcess:
        """Train a model; the output folder becomes a model folder the Pancreas DiNTS module can use."""
        command = commands.train_command(commands.python_executable(), datalist, outputFolder, arch=arch,
                                           preset=preset, device=device, resume=resume, overrides=overrides)
        return self._run(command, waitForCompletion, eventCallback, completedCallback)

    def evaluate(self, model: Any, datalist: Any, outputFolder: Any, split: str = "testing", device: str = "auto",
                 waitForCompletion: bool = True, eventCallback: Callable | None = None,
                 completedCallback: Callable | None = None) -> EngineProcess:
        """Dice, HD95 and volumes of a model on one split of a datalist."""
        command = commands.evaluate_command(commands.python_executable(), model, datalist, outputFolder,
                                              split=split, device=device)
        return self._run(command, waitForCompletion, eventCallback, completedCallback)

    def export(self, model: Any, output: Any = None, exportFormat: str = "torchscript", precision: str = "fp32",
               waitForCompletion: bool = True, eventCallback: Callable | None = None,
               completedCallback: Callable | None = None) -> EngineProcess:
        """Export a model folder to TorchScript, ONNX or TensorRT."""
        command = commands.export_command(commands.python_executable(), model, output=output,
                                            export_format=exportFormat, precision=precision)
        return self._run(command, waitForCompletion, eventCallback, completedCallback)


#
# PancreasDiNTSTrainTest
#


class PancreasDiNTSTrainTest(ScriptedLoadableModuleTest):
    """Self-test: a tiny search and a tiny training run on engine-made phantoms, headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PancreasDiNTSTrain_tinySearchAndTrain()

    def test_PancreasDiNTSTrain_tinySearchAndTrain(self) -> None:
        self.delayDisplay("Preparing the engine (may install packages)")
        self.assertTrue(PancreasDiNTSTrainLogic().setupPythonRequirements(askConfirmation=False))
        work = Path(slicer.util.tempDirectory("PancreasDiNTSTrainTest"))
        atexit.register(shutil.rmtree, work, True)  # phantoms and models go when Slicer exits
        python = commands.python_executable()
        for command in (commands.make_phantoms_command(python, work / "data", count=4, seed=5),
                        commands.prepare_datalist_command(python, work / "data", work / "datalist.json")):
            process = EngineProcess(command).start(waitForCompletion=True)
            self.assertEqual(process.returncode, 0, process.parser.error_message(process.returncode))

        logic = PancreasDiNTSTrainLogic()
        arch = "random"
        if commands.engine_has_command("search"):
            self.delayDisplay("Tiny architecture search")
            search = logic.search(work / "datalist.json", work / "search", preset="tiny", device="cpu")
            arch = model_folders.find_arch_file(work / "search", search.parser.summary)
            self.assertIsNotNone(arch, "search wrote no architecture file")

        self.delayDisplay("Tiny training")
        run = logic.train(work / "datalist.json", work / "run", arch=arch, preset="tiny", device="cpu")
        self.assertTrue(model_folders.is_model_folder(work / "run"), "training did not produce a model folder")
        shown = progress_lines.training_display(run.parser.metrics)
        self.assertNotEqual(shown["loss"], "-")
        self.assertNotEqual(shown["epoch"], "-")
        logging.info(f"PancreasDiNTSTrain self-test: {shown}")

        self.delayDisplay("Evaluation of the trained model")
        evaluation = logic.evaluate(work / "run", work / "datalist.json", work / "eval", device="cpu")
        self.assertIsNotNone(evaluation.parser.summary)

        self.delayDisplay("Stop: a second run is cancelled while it starts")
        stopped = []
        logic.train(work / "datalist.json", work / "run2", arch=arch, preset="tiny", device="cpu",
                    waitForCompletion=False, completedCallback=stopped.append)
        logic.cancel()
        while not stopped:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertTrue(stopped[0].cancelled)
        self.delayDisplay("Train module test passed")
