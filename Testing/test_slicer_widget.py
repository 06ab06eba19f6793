"""The panel's own behaviour (PancreasDiNTSWidget) with its Qt widgets replaced by plain recording objects (Qt
cannot exist here): what is enabled during a run, Detect GPUs not blocking, a saved device, the read-out
forgotten when the scene closes, an error while showing results shown. Slicer's process launching is the
module-seam fake (a real subprocess, a ticked event loop); the engine's device command runs for real.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path

import pytest
from test_slicer_devices import ComboBox
from test_slicer_module_seam import Loop, make_fake_slicer

REPO = Path(__file__).resolve().parents[1]


class Widget:
    """Any Qt widget: attributes are kept, method calls recorded."""

    def __init__(self, name):
        self.name, self.calls, self.enabled, self.text, self.checked = name, [], True, "", False

    def __getattr__(self, method):
        return lambda *args: self.calls.append((method, args))


class UI(types.SimpleNamespace):
    def __getattr__(self, name):
        widget = ComboBox() if name == "deviceComboBox" else Widget(name)
        setattr(self, name, widget)
        return widget


@pytest.fixture
def panel(monkeypatch, tmp_path):
    loop = Loop()
    fake = make_fake_slicer(loop, tmp_path, None, nonblocking_launch=True)
    errors = []

    @contextlib.contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        try:  # as Slicer's: show the message, then re-raise
            yield
        except Exception as error:
            errors.append(f"{message}\n\n{error}")
            raise

    fake["slicer.util"].tryWithErrorDisplay = try_with_error_display
    fake["slicer.util"].errorDisplay = lambda text, **kw: errors.append(text)
    fake["slicer"].mrmlScene = types.SimpleNamespace(IsNodePresent=lambda node: True)
    fake["vtk"].vtkCommand = types.SimpleNamespace(ModifiedEvent=33)
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(REPO / "PancreasDiNTS"))
    for name in [n for n in sys.modules if n == "PancreasDiNTS" or n.startswith("PancreasDiNTSSlicerLib")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("PancreasDiNTS")
    widget = module.PancreasDiNTSWidget()
    widget.ui, widget.logic = UI(), module.PancreasDiNTSLogic()
    widget.removeObserver = widget.addObserver = lambda *args: None
    widget._setupDeviceSection()  # the device picker on the stand-in widgets (setup() needs Qt's UI loader)
    widget._parameterNode = types.SimpleNamespace(
        inputVolume="ct", outputSegmentation=None, useLocalModel=True, localModelPath=tmp_path,
        device="cuda:1", region="automatic pancreas region", roiNode=None, roiMode="grid", mode="fast", show3D=True,
        computeConfidence=True, allowNonCT=False, runOn="this computer", serverURL="", disconnectGui=lambda tag: None)
    widget.parent = types.SimpleNamespace(isEntered=False)
    return widget, loop, errors


def test_idle_panel_shows_the_saved_device_and_can_install(panel):
    widget, _, _ = panel
    widget.updateGUI()
    ui = widget.ui
    assert ui.applyButton.text == "Segment" and ui.applyButton.enabled
    assert ui.installDependenciesButton.enabled and ui.refreshDevicesButton.enabled
    assert ui.deviceComboBox.current[1] == "cuda:1"  # not "Automatic"
    assert ui.localModelFileButton.enabled  # a local model: folders in the path field, files with File...


def test_during_a_run_install_and_inputs_are_locked(panel):
    widget, _, _ = panel
    widget.logic._task = types.SimpleNamespace(running=True)
    widget.updateGUI()
    ui = widget.ui
    assert ui.applyButton.text == "Cancel" and ui.applyButton.enabled
    assert not ui.installDependenciesButton.enabled  # pip must not replace what the running engine uses
    assert not ui.inputsCollapsibleButton.enabled and not ui.estimateButton.enabled
    assert not ui.downloadModelButton.enabled


@pytest.mark.subprocess
def test_detect_gpus_returns_at_once_and_fills_the_list_later(panel):
    widget, loop, errors = panel
    widget.devicePicker.refresh()
    assert widget.devicePicker.task is not None and widget.devicePicker.task.running  # returned while the child works
    assert not widget.ui.refreshDevicesButton.enabled and widget.ui.refreshDevicesButton.text == "Detecting..."
    loop.run_until(lambda: widget.devicePicker.task is None, timeout=120)
    assert widget.ui.refreshDevicesButton.enabled and widget.ui.refreshDevicesButton.text == "Detect GPUs"
    assert [d for _, d in widget.ui.deviceComboBox.items][:2] == ["auto", "cpu"] and not errors
    assert widget.ui.deviceComboBox.current[1] == "cuda:1"  # still the saved choice


def test_closing_the_scene_forgets_the_last_read_out(panel):
    widget, _, _ = panel
    widget._confidenceNode = "confidence volume"
    widget.ui.resultLabel.text = "Pancreas: 70.0 mL"
    widget.onSceneStartClose(None, None)
    assert ("setMRMLTableNode", (None,)) in widget.ui.measurementsTableView.calls
    assert widget._confidenceNode is None and widget.ui.resultLabel.text == ""


def test_an_error_while_showing_results_is_shown_and_the_panel_is_not_left_running(panel):
    widget, _, errors = panel

    def broken_report(result, volume):
        raise ValueError("no such table column")

    widget.logic.showReport = broken_report
    result = types.SimpleNamespace(cancelled=False, success=True, message="", segmentationNode="seg",
                                   volumes={"Pancreas": 70.0}, report={"x": 1}, confidenceNode=None, log="")
    with pytest.raises(ValueError):  # Slicer's tryWithErrorDisplay shows, then re-raises (EngineProcess keeps it)
        widget.onProcessingCompleted(result)
    assert errors and "showing its results failed" in errors[0] and "no such table column" in errors[0]
    assert widget.ui.applyButton.text == "Segment"


def test_a_device_picked_in_the_box_goes_to_the_parameter_node(panel):
    widget, _, _ = panel
    widget.updateGUI()
    box = widget.ui.deviceComboBox
    box.slots["currentIndexChanged(int)"](box.findData("cpu"))
    assert widget._parameterNode.device == "cpu"
    assert widget.ui.refreshDevicesButton.calls[0][0] == "connect"  # Detect GPUs is wired by the picker
