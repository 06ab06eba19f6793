"""The Segment panel's sections: each wires its part of ``PancreasDiNTS.ui`` and enables it.

A section gets the module widget (``ui``, ``logic``, ``parameterNode``, ``updateGUI``, ``section(kind)``) and
has ``update(parameterNode, busy)`` (enable what can be used now), ``clear()`` (the scene closes) and ``stop()``
(the application closes: touch no widget). A new piece of the panel is a new section in the .ui file and a new
class here, listed in :func:`createSections`; the module file does not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ctk
import qt
import slicer
from slicer.i18n import tr as _

from PancreasDiNTSSlicerLib import devices, environment, packages

EXPORTED_MODEL_FILTER = "Exported model (*.ts *.pt *.pth *.pts *.jit *.onnx);;All files (*)"


class Section:
    """One part of the panel (see the module docstring)."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget
        self.ui = widget.ui
        self.logic = widget.logic

    def update(self, p: Any, busy: bool) -> None:
        """Enable what can be used now (``busy``: the engine runs or packages are being installed)."""

    def clear(self) -> None:
        """The scene closes: forget what belonged to it."""

    def stop(self) -> None:
        """The application closes: end background work without touching widgets."""

    def status(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def setupPackages(self) -> bool:
        """Install what the engine needs (asking first); the panel is locked meanwhile. False: declined."""
        return self.logic.setupPythonRequirements(askConfirmation=True, onChange=self.widget.updateGUI)

    def currentModel(self) -> str | None:
        """The model path the user chose, or None."""
        p = self.widget.parameterNode
        if not p:
            return None
        if p.useLocalModel:
            path = str(p.localModelPath or "")
            return path if path not in ("", ".") else None
        folder = self.logic.officialModelFolder()
        return str(folder) if folder else None


class ModelSection(Section):
    """The official model (download, install from a zip, cache folder) or a local model folder or file."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        # Folders (bundle, train run) are browsed with the path field; an exported file with "File...":
        # a ctkPathLineEdit whose filters include Files opens a file dialog, where no folder can be chosen.
        self.ui.localModelPathLineEdit.filters = (ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.NoDotAndDotDot
                                                  | ctk.ctkPathLineEdit.Readable)
        self.ui.localModelFileButton.connect("clicked(bool)", self.onChooseModelFile)
        self.ui.downloadModelButton.connect("clicked(bool)", lambda: self.getOfficialModel(None))
        self.ui.installModelFromFileButton.connect("clicked(bool)", self.onInstallModelFromFile)
        self.ui.openCacheFolderButton.connect("clicked(bool)", self.onOpenCacheFolder)

    def update(self, p: Any, busy: bool) -> None:
        folder = self.logic.officialModelFolder()
        self.ui.officialModelStatusLabel.text = (_("Official model: {folder}").format(folder=folder) if folder
                                                 else _("Official model: not downloaded yet"))
        local = bool(p and p.useLocalModel)
        self.ui.downloadModelButton.enabled = not busy and not local
        self.ui.installModelFromFileButton.enabled = not busy and not local
        self.ui.localModelPathLineEdit.enabled = self.ui.localModelFileButton.enabled = local

    def onChooseModelFile(self) -> None:
        """An exported TorchScript/ONNX file as the local model (folders are chosen in the path field)."""
        path = qt.QFileDialog.getOpenFileName(self.widget.parent, _("Exported model file"), "",
                                              EXPORTED_MODEL_FILTER)
        p = self.widget.parameterNode
        if path and p:
            if path.lower().endswith(".onnx"):  # runs with onnxruntime: installed now, when it is chosen
                packages.ensureOptional("onnx-runtime", askConfirmation=True)
            p.localModelPath = Path(path)

    def onInstallModelFromFile(self) -> None:
        """Offline sites: install the official bundle from a zip downloaded on another computer."""
        path = qt.QFileDialog.getOpenFileName(self.widget.parent, _("Official model bundle (zip)"), "",
                                              "Bundle archive (*.zip);;All files (*)")
        if path:
            self.getOfficialModel(path)

    def getOfficialModel(self, source: str | None) -> None:
        """Download the official model, or install it from a zip/folder fetched elsewhere (``source``)."""
        if self.logic.isRunning() or packages.isInstalling():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to get the model."), waitCursor=False):
            if not self.setupPackages():
                return
            self.ui.logTextEdit.clear()
            self.status(_("Installing the official model from {source}...").format(source=source) if source
                        else _("Downloading the official model..."))
            self.logic.downloadOfficialModel(waitForCompletion=False,
                                             eventCallback=self._runSection().onEngineEvent,
                                             completedCallback=self.onDownloadCompleted, source=source)
            self.ui.progressBar.setRange(0, 0)  # busy: the download reports log lines, not fractions
        self.widget.updateGUI()

    def _runSection(self) -> Any:
        from PancreasDiNTSSlicerLib.panel_run import RunSection

        return self.widget.section(RunSection)

    def onDownloadCompleted(self, process: Any) -> None:
        self.ui.progressBar.setRange(0, 100)
        self.widget.updateGUI()
        if process.cancelled:
            self.status(_("Download cancelled."))
        elif process.returncode != 0:
            self.status(_("Download failed."))
            slicer.util.errorDisplay(_("Model download failed: {error}").format(
                error=process.parser.error_message(process.returncode)), detailedText="\n".join(process.parser.log))
        else:
            self.status(_("Official model ready."))

    def onOpenCacheFolder(self) -> None:
        folder = self.logic.modelCacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))


class DeviceSection(Section):
    """The device combo box and Detect GPUs (:class:`devices.DevicePicker`)."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.picker = devices.DevicePicker(self.ui.deviceComboBox, self.ui.refreshDevicesButton,
                                           self.ui.statusLabel, lambda: self.widget.parameterNode,
                                           self.widget.updateGUI, slicer.util.tryWithErrorDisplay)

    def update(self, p: Any, busy: bool) -> None:
        self.picker.update(p.device if p else "auto")
        if packages.isInstalling():
            self.ui.refreshDevicesButton.enabled = False

    def stop(self) -> None:
        self.picker.stop()


class AdvancedSection(Section):
    """Install or check the packages; the engine's own Python environment (an application setting, not stored
    in the scene: :mod:`.environment`)."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.enginePythonPathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Executable
        self.ui.engineEnvironmentCheckBox.checked = environment.restoreChoice() is not None
        self.ui.enginePythonPathLineEdit.currentPath = environment.chosenBasePython()
        self.ui.engineEnvironmentCheckBox.connect("toggled(bool)", self.onEngineEnvironmentToggled)
        self.ui.enginePythonPathLineEdit.connect("currentPathChanged(QString)", self.onEnginePythonChanged)

    def update(self, p: Any, busy: bool) -> None:
        self.ui.installDependenciesButton.enabled = not busy  # pip must not replace what a run is using
        self.ui.engineEnvironmentCheckBox.enabled = not busy
        self.ui.enginePythonPathLineEdit.enabled = not busy and self.ui.engineEnvironmentCheckBox.checked

    def onEngineEnvironmentToggled(self, own: bool) -> None:
        """On: the engine runs with its own environment (made or completed at the next Segment or Install,
        after asking); off: with Slicer's Python again."""
        environment.chooseEnvironment(own, self.ui.enginePythonPathLineEdit.currentPath)
        self.widget.updateGUI()

    def onEnginePythonChanged(self, path: str) -> None:
        environment.chooseEnvironment(self.ui.engineEnvironmentCheckBox.checked, path)

    def onInstallDependencies(self) -> None:
        if self.logic.isRunning() or packages.isInstalling():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to install the Python packages."), waitCursor=True):
            if self.setupPackages():
                slicer.util.infoDisplay(_("The Python packages Pancreas DiNTS needs are installed."))


def createSections(widget: Any) -> list[Section]:
    """Every section of the Segment panel, in the order of the .ui file."""
    from PancreasDiNTSSlicerLib.panel_followup import FollowupSection
    from PancreasDiNTSSlicerLib.panel_results import ResultsSection, ReviewSection
    from PancreasDiNTSSlicerLib.panel_run import RunSection

    return [ModelSection(widget), DeviceSection(widget), RunSection(widget),
            ResultsSection(widget), ReviewSection(widget), FollowupSection(widget), AdvancedSection(widget)]
