"""The device combo box of both panels and the GPU list, asked from a background process without blocking.

The list of GPUs comes from torch, which never runs in Slicer's process: ``Detect GPUs`` starts the bridge's
device command as an :class:`~PancreasDiNTSSlicerLib.process.EngineProcess` and fills the combo box when it ends.
A device saved in the scene (``cuda:1``) that the list does not hold yet is shown as itself, never as
"Automatic".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from PancreasDiNTSLib.bridge import commands, device_list
from slicer.i18n import tr as _

from PancreasDiNTSSlicerLib.process import EngineProcess

Devices = list[tuple[str, str]]
DEFAULT_DEVICES: Devices = list(device_list.DEFAULT_DEVICES)


def savedDeviceLabel(device: str, detected: bool = False) -> str:
    """The combo box text of a device that is selected but not in the list: not detected yet, or (after a
    detection) not found."""
    return (_("{device} (not found by Detect GPUs)") if detected else
            _("{device} (not detected yet: Detect GPUs)")).format(device=device)


def setDeviceItems(comboBox: Any, devices: Sequence[tuple[str, str]], current: str = "auto",
                   detected: bool = False) -> None:
    """Fill a device combo box with (device, label) pairs and select ``current``."""
    wasBlocked = comboBox.blockSignals(True)
    comboBox.clear()
    for device, label in devices:
        comboBox.addItem(label, device)
    comboBox.blockSignals(wasBlocked)
    selectDevice(comboBox, current, detected)


def selectDevice(comboBox: Any, device: str | None, detected: bool = False) -> None:
    """Select ``device`` without signalling (the list is dynamic, so it is not bound to the parameter node).

    A device the list does not hold is added under :func:`savedDeviceLabel`; an empty one selects "auto"."""
    device = device or "auto"
    index = comboBox.findData(device)
    wasBlocked = comboBox.blockSignals(True)
    if index < 0:
        comboBox.addItem(savedDeviceLabel(device, detected), device)
        index = comboBox.findData(device)
    if index != comboBox.currentIndex:
        comboBox.setCurrentIndex(index)
    comboBox.blockSignals(wasBlocked)


def detectDevices(completed: Callable[[Devices, str], Any]) -> EngineProcess:
    """Ask torch for the GPUs in a background process; ``completed(devices, error)`` is called when it ends
    (error is "" on success; the devices are then auto, cpu and one entry per GPU)."""

    def finished(process: EngineProcess) -> None:
        if process.returncode != 0:
            completed(list(DEFAULT_DEVICES), process.parser.error_message(process.returncode))
            return
        completed(device_list.parse_devices("\n".join(process.parser.log)), "")

    task = EngineProcess(commands.devices_command(commands.python_executable()), finishedCallback=finished)
    return task.start(waitForCompletion=False)


class DevicePicker:
    """The device combo box and its "Detect GPUs" button of both panels: the choice goes to the parameter node's
    ``device``; detection runs in a background process (:func:`detectDevices`) and never blocks the GUI.

    ``parameterNode()`` gives the panel's current node (or None), ``updateGUI()`` refreshes the panel, and
    ``errorDisplay(message)`` is ``slicer.util.tryWithErrorDisplay`` (given, so this file needs no Slicer import)."""

    def __init__(self, comboBox: Any, button: Any, statusLabel: Any, parameterNode: Callable[[], Any],
                 updateGUI: Callable[[], Any], errorDisplay: Callable[[str], AbstractContextManager[Any]]) -> None:
        self.comboBox, self.button, self.statusLabel = comboBox, button, statusLabel
        self._parameterNode, self._updateGUI, self._errorDisplay = parameterNode, updateGUI, errorDisplay
        self.task: EngineProcess | None = None  # the running GPU detection, if any
        button.connect("clicked(bool)", self.refresh)
        comboBox.connect("currentIndexChanged(int)", self.onChanged)
        setDeviceItems(comboBox, DEFAULT_DEVICES)

    def update(self, device: str | None) -> None:
        """Show ``device`` (the parameter node's) and allow Detect GPUs unless a detection runs."""
        selectDevice(self.comboBox, device or "auto")
        self.button.enabled = self.task is None

    def onChanged(self, index: int) -> None:
        node = self._parameterNode()
        if node:
            node.device = self.comboBox.itemData(index) or "auto"

    def refresh(self, *args: Any) -> None:
        """Ask torch for the GPUs in a background process; the panel stays usable meanwhile."""
        with self._errorDisplay(_("Failed to list the compute devices.")):
            self.button.text = _("Detecting...")
            self.task = detectDevices(self.detected)
        self._updateGUI()

    def detected(self, found: Devices, error: str) -> None:
        self.task = None
        self.button.text = _("Detect GPUs")
        node = self._parameterNode()
        setDeviceItems(self.comboBox, found, node.device if node else "auto", detected=not error)
        if error:
            self.statusLabel.text = _("GPU detection failed: {error}").format(error=error)
        self._updateGUI()

    def stop(self) -> None:
        """The application closes: end a running detection."""
        if self.task is not None:
            self.task.stop()
