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

AdvancedSection = DeviceSection = ResultsSection = RunSection = None  # the panel's sections, set by the fixture

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
    fake["ctk"].ctkPathLineEdit = types.SimpleNamespace(Dirs=1, NoDotAndDotDot=2, Readable=4, Files=8, Executable=16)
    settings: dict = {}  # Slicer's application settings (qt.QSettings), kept for the test

    class QSettings:
        def value(self, key, default=None):
            return settings.get(key, default)

        def setValue(self, key, value):
            settings[key] = value

    fake["qt"].QSettings = QSettings
    monkeypatch.setenv("PANCREAS_DINTS_ENGINE_PYTHON", "")  # recorded, so that what a test sets goes afterwards
    monkeypatch.delenv("PANCREAS_DINTS_ENGINE_PYTHON")
    monkeypatch.setenv("PANCREAS_DINTS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("platform.system", lambda: "Linux")  # the default on macOS is tested on its own
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(REPO / "PancreasDiNTS"))
    for name in [n for n in sys.modules if n == "PancreasDiNTS" or n.startswith("PancreasDiNTSSlicerLib")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("PancreasDiNTS")
    choices = importlib.import_module("PancreasDiNTSSlicerLib.choices")
    widget = module.PancreasDiNTSWidget()
    widget.ui, widget.logic = UI(), module.PancreasDiNTSLogic()
    widget.removeObserver = widget.addObserver = lambda *args: None
    widget.createSections()  # every section on the stand-in widgets (setup() needs Qt's UI loader)
    widget._parameterNode = types.SimpleNamespace(
        inputVolume="ct", outputSegmentation=None, useLocalModel=True, localModelPath=tmp_path,
        device="cuda:1", region=choices.Region.auto, roiNode=None, roiMode=choices.RoiMode.grid,
        mode=choices.Speed.fast, precision=choices.Precision.auto, show3D=True, computeConfidence=True,
        allowNonCT=False, runOn=choices.RunPlace.local, serverURL="", disconnectGui=lambda tag: None)
    widget.parent = types.SimpleNamespace(isEntered=False)
    widget.module = module
    global AdvancedSection, DeviceSection, ResultsSection, RunSection
    DeviceSection = importlib.import_module("PancreasDiNTSSlicerLib.panel").DeviceSection
    AdvancedSection = importlib.import_module("PancreasDiNTSSlicerLib.panel").AdvancedSection
    ResultsSection = importlib.import_module("PancreasDiNTSSlicerLib.panel_results").ResultsSection
    RunSection = importlib.import_module("PancreasDiNTSSlicerLib.panel_run").RunSection
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
    widget.section(DeviceSection).picker.refresh()
    assert widget.section(DeviceSection).picker.task is not None and widget.section(DeviceSection).picker.task.running  # returned while the child works
    assert not widget.ui.refreshDevicesButton.enabled and widget.ui.refreshDevicesButton.text == "Detecting..."
    loop.run_until(lambda: widget.section(DeviceSection).picker.task is None, timeout=120)
    assert widget.ui.refreshDevicesButton.enabled and widget.ui.refreshDevicesButton.text == "Detect GPUs"
    assert [d for _, d in widget.ui.deviceComboBox.items][:2] == ["auto", "cpu"] and not errors
    assert widget.ui.deviceComboBox.current[1] == "cuda:1"  # still the saved choice


def test_closing_the_scene_forgets_the_last_read_out(panel):
    widget, _, _ = panel
    widget.section(ResultsSection).confidenceNode = "confidence volume"
    widget.ui.resultLabel.text = "Pancreas: 70.0 mL"
    widget.onSceneStartClose(None, None)
    assert ("setMRMLTableNode", (None,)) in widget.ui.measurementsTableView.calls
    assert widget.section(ResultsSection).confidenceNode is None and widget.ui.resultLabel.text == ""


def test_an_error_while_showing_results_is_shown_and_the_panel_is_not_left_running(panel):
    widget, _, errors = panel

    def broken_report(result, volume):
        raise ValueError("no such table column")

    widget.logic.showReport = broken_report
    result = types.SimpleNamespace(cancelled=False, success=True, message="", segmentationNode="seg",
                                   volumes={"Pancreas": 70.0}, report={"x": 1}, confidenceNode=None, log="")
    with pytest.raises(ValueError):  # Slicer's tryWithErrorDisplay shows, then re-raises (EngineProcess keeps it)
        widget.section(RunSection).onProcessingCompleted(result)
    assert errors and "showing its results failed" in errors[0] and "no such table column" in errors[0]
    assert widget.ui.applyButton.text == "Segment"


def test_a_device_picked_in_the_box_goes_to_the_parameter_node(panel):
    widget, _, _ = panel
    widget.updateGUI()
    box = widget.ui.deviceComboBox
    box.slots["currentIndexChanged(int)"](box.findData("cpu"))
    assert widget._parameterNode.device == "cpu"
    assert widget.ui.refreshDevicesButton.calls[0][0] == "connect"  # Detect GPUs is wired by the picker


def test_roi_region_without_an_roi_cannot_start_and_is_refused(panel):
    """Audit N2: "ROI node" with no ROI selected silently ran the engine's default region. Now Segment and
    Estimate are disabled, and the logic refuses such a run (with one line) before anything is written."""
    widget, _, _ = panel
    choices = sys.modules["PancreasDiNTSSlicerLib.choices"]
    widget._parameterNode.region = choices.Region.box
    widget.updateGUI()
    assert not widget.ui.applyButton.enabled and not widget.ui.estimateButton.enabled
    assert widget.ui.roiSelector.enabled
    with pytest.raises(ValueError, match="no ROI is selected"):
        widget.logic.process("ct", None, str(widget._parameterNode.localModelPath), "cpu", region="box")
    assert not widget.logic.isRunning()
    widget._parameterNode.roiNode = "an ROI"
    widget.updateGUI()
    assert widget.ui.applyButton.enabled and widget.ui.estimateButton.enabled


def test_plain_http_to_another_host_asks_before_sending_the_ct(panel):
    """Audit N3: a server run over plain http to a host that is not this computer sends the CT and the token in
    clear; the CLI warns, the panel now asks (declined: nothing is sent, nothing runs)."""
    widget, _, errors = panel
    choices = sys.modules["PancreasDiNTSSlicerLib.choices"]
    asked = []
    sys.modules["slicer.util"].confirmOkCancelDisplay = lambda text, **kw: asked.append(text) and False
    p = widget._parameterNode
    p.runOn, p.serverURL = choices.RunPlace.server, "http://10.1.2.3:8765"
    widget.ui.serverTokenLineEdit.text = "secret"
    widget.updateGUI()
    assert widget.ui.applyButton.enabled
    widget.section(RunSection).onApplyButton()
    assert len(asked) == 1 and "10.1.2.3:8765" in asked[0] and "unencrypted" in asked[0]
    assert not widget.logic.isRunning() and not errors
    assert widget.ui.statusLabel.text != "Starting..."


def test_choices_are_stored_as_keys_and_old_scenes_still_read(monkeypatch):
    """Audit N10: the stored values were display text ("automatic pancreas region"), which a translation would
    break. The parameter node now stores enum keys (Slicer's EnumSerializer writes member names) and an old
    scene's values are rewritten to keys when the node is read; unknown values fall back to the default."""
    import slicer_stubs
    import test_scene_support

    slicer = test_scene_support.import_slicer_core()  # the real vtkMRMLScriptedModuleNode
    monkeypatch.setitem(sys.modules, "slicer.i18n", slicer_stubs.i18n_module())
    monkeypatch.syspath_prepend(str(REPO / "PancreasDiNTS"))
    monkeypatch.delitem(sys.modules, "PancreasDiNTSSlicerLib.choices", raising=False)
    choices = importlib.import_module("PancreasDiNTSSlicerLib.choices")
    node = slicer.vtkMRMLScriptedModuleNode()
    for name, value in {"region": "automatic pancreas region", "runOn": "this computer", "roiMode": "grid",
                        "mode": "sideways"}.items():
        node.SetParameter(name, value)
    assert sorted(choices.upgradeStoredValues(node)) == ["mode", "region", "runOn"]
    assert node.GetParameter("region") == "auto" and node.GetParameter("runOn") == "local"
    assert node.GetParameter("roiMode") == "grid" and not node.HasParameter("mode")
    assert choices.upgradeStoredValues(node) == []  # keys stay as they are
    for enum_class in choices.ENUM_FIELDS.values():
        assert all(member.name == member.value and member.label() for member in enum_class)
    for name, legacy in choices.LEGACY_VALUES.items():
        assert set(legacy.values()) <= set(choices.ENUM_FIELDS[name].__members__)
    request = importlib.import_module("PancreasDiNTSLib.core.request")  # the engine's one description of a run
    assert {m.name: m.label() for m in choices.Region} == request.PANEL_REGIONS
    assert all(request.panel_region(text) == key for text, key in choices.LEGACY_VALUES["region"].items()
               if text != "roi")
    assert set(choices.Speed.__members__) == set(request.PANEL_MODES)
    assert list(choices.Precision.__members__) == list(request.PRECISIONS)  # the engine's one list of precisions


def test_precision_is_stored_as_its_key_and_a_scene_saved_without_it_reads_auto(monkeypatch, tmp_path):
    """Issue 36, the panel's precision: a scene saved by a release without the choice (real slicer-core MRML,
    written and read back) has no ``precision`` parameter after the upgrade, so the wrapper's default (auto, see
    test_segment_passes_the_precision_choice_to_the_run) applies and the engine's reading of the node's values is
    auto; a saved bf16 is the key "bf16" in the file and reads back as it; an unknown value is dropped."""
    import slicer_stubs
    import test_scene_support

    slicer = test_scene_support.import_slicer_core()
    monkeypatch.setitem(sys.modules, "slicer.i18n", slicer_stubs.i18n_module())
    monkeypatch.syspath_prepend(str(REPO / "PancreasDiNTS"))
    monkeypatch.delitem(sys.modules, "PancreasDiNTSSlicerLib.choices", raising=False)
    choices = importlib.import_module("PancreasDiNTSSlicerLib.choices")
    request = importlib.import_module("PancreasDiNTSLib.core.request")

    def save_and_read(parameters: dict[str, str], name: str):
        scene = slicer.vtkMRMLScene()
        node = scene.AddNode(slicer.vtkMRMLScriptedModuleNode())
        node.SetAttribute("ModuleName", "PancreasDiNTS")
        for key, value in parameters.items():
            node.SetParameter(key, value)
        scene.SetURL(str(tmp_path / name))
        assert scene.Commit()
        loaded = slicer.vtkMRMLScene()
        loaded.SetURL(str(tmp_path / name))
        assert loaded.Connect()
        return loaded.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")

    old = save_and_read({"region": "automatic pancreas region", "mode": "fast"}, "old.mrml")
    assert choices.upgradeStoredValues(old) == ["region"] and not old.HasParameter("precision")
    values = {name: old.GetParameter(name) for name in old.GetParameterNames()}
    assert request.from_parameters(values, ("in.nrrd",), tmp_path, "m").precision == "auto"
    saved = save_and_read({"precision": choices.Precision.bf16.name}, "bf16.mrml")
    assert 'parameter0= "precision bf16"' in (tmp_path / "bf16.mrml").read_text()
    assert choices.upgradeStoredValues(saved) == [] and choices.Precision[saved.GetParameter("precision")] \
        is choices.Precision.bf16
    unknown = save_and_read({"precision": "fp16"}, "unknown.mrml")
    assert choices.upgradeStoredValues(unknown) == ["precision"] and not unknown.HasParameter("precision")
    assert [member.label() for member in choices.Precision] == ["automatic", "fp32 (exact arithmetic)",
                                                                 "bf16 (CPU, faster)"]


@pytest.mark.subprocess
def test_the_engine_environment_choice(panel, tmp_path, monkeypatch):
    """Advanced: "Run the engine in its own Python environment" makes every engine command run with that
    environment's interpreter (bridge.commands.python_executable reads PANCREAS_DINTS_ENGINE_PYTHON): the module's
    folder next to the models, or an existing environment named in the Python field; off: Slicer's Python. The
    choice is an application setting, restored at the next start; on macOS it is on by default."""
    import subprocess

    widget, _, _ = panel
    environment = sys.modules["PancreasDiNTSSlicerLib.environment"]
    commands = importlib.import_module("PancreasDiNTSLib.bridge.commands")
    advanced = widget.section(AdvancedSection)
    assert not widget.ui.engineEnvironmentCheckBox.checked and commands.python_executable() == sys.executable
    advanced.onEngineEnvironmentToggled(True)
    module_env = environment.environmentPython(tmp_path / "home" / "engine-environment")
    assert commands.python_executable() == str(module_env)
    existing = tmp_path / "existing-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(existing)], check=True, timeout=120)
    widget.ui.engineEnvironmentCheckBox.checked = True
    advanced.onEnginePythonChanged(str(environment.environmentPython(existing)))
    assert commands.python_executable() == str(environment.environmentPython(existing))
    assert environment.basePython() != str(environment.environmentPython(existing))  # never a venv's as base
    monkeypatch.delenv("PANCREAS_DINTS_ENGINE_PYTHON")
    assert environment.restoreChoice() == str(environment.environmentPython(existing))  # the next start
    advanced.onEngineEnvironmentToggled(False)
    assert commands.python_executable() == sys.executable and environment.restoreChoice() is None
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    environment._settings().setValue(environment.SETTINGS_KEY, None)
    assert environment.restoreChoice() == str(module_env)  # a Mac: the own environment unless turned off


@pytest.mark.subprocess
def test_compare_with_a_prior_study_runs_the_engine_and_shows_its_answer(panel, tmp_path, monkeypatch):
    """The section's wiring: enabled once both time points are chosen; the engine's command runs in the background
    (a real child: here it refuses, and its one line is shown); a finished run fills the table and the categories.
    What the scene layer does is tested with the real slicer-core in test_scene_followup.py."""
    import PancreasDiNTSSceneLib.followup as scene_followup
    from PancreasDiNTSLib.bridge import commands

    widget, loop, errors = panel
    FollowupSection = importlib.import_module("PancreasDiNTSSlicerLib.panel_followup").FollowupSection
    section = widget.section(FollowupSection)
    widget.updateGUI()
    assert not widget.ui.compareButton.enabled  # no prior chosen, no current segmentation
    widget.ui.comparePriorVolumeSelector.currentNode = lambda: "prior ct"
    widget.ui.comparePriorSegmentationSelector.currentNode = lambda: "prior segmentation"
    widget.ui.compareOutputPathLineEdit.currentPath = str(tmp_path / "out")
    widget._parameterNode.outputSegmentation = "current segmentation"
    widget.updateGUI()
    assert widget.ui.compareButton.enabled
    made = []

    class Job:  # the scene layer's CompareJob, recorded (it needs MRML nodes)
        def __init__(self, *args):
            self.args, self.cleaned, self.output_dir = args, False, Path(args[4])
            made.append(self)

        def prepare(self):
            return commands.compare_command(sys.executable, tmp_path / "no prior", tmp_path / "no current",
                                            self.output_dir, formats=("json",))

        def cleanup(self):
            self.cleaned = True

        def complete(self):
            return ({"response": {"recist": {"category": "PD", "reason": "1 new lesion"},
                                 "volumetric": {"category": "PD"}, "label": "computed from the automatic "
                                 "segmentation; not a clinical response assessment"},
                     "alignment": {"mean_surface_distance_mm": 0.2}}, "table node")

    monkeypatch.setattr(scene_followup, "CompareJob", Job)
    section.onCompare()
    assert made[0].args[:4] == ("prior ct", "prior segmentation", "ct", "current segmentation")
    assert not widget.ui.compareButton.enabled  # one comparison at a time
    loop.run_until(lambda: section.task is None, timeout=300)
    assert made[0].cleaned and "not found" in widget.ui.compareStatusLabel.text and not errors
    assert widget.ui.compareButton.enabled
    section.job = Job("p", "ps", "c", "cs", tmp_path / "ok")
    section.onFinished(types.SimpleNamespace(returncode=0, cancelled=False))
    assert ("setMRMLTableNode", ("table node",)) in widget.ui.compareTableView.calls
    text = widget.ui.compareStatusLabel.text
    assert "RECIST 1.1-style PD" in text and "not a clinical response assessment" in text


def test_segment_passes_the_precision_choice_to_the_run(panel):
    """The parameter node's precision (a Precision field, default auto: what a scene without it reads as) goes
    from Segment to ``PancreasDiNTSLogic.process(precision=...)`` as its key, on this computer and to a server."""
    widget, _, errors = panel
    choices = sys.modules["PancreasDiNTSSlicerLib.choices"]
    wrapped = widget.module.PancreasDiNTSParameterNode
    assert wrapped.__annotations__["precision"] is choices.Precision and wrapped.precision is choices.Precision.auto
    calls = []
    widget.logic.setupPythonRequirements = lambda **kw: True
    widget.logic.process = lambda *args, **kw: calls.append(kw)
    p = widget._parameterNode
    for place, precision in ((choices.RunPlace.local, choices.Precision.auto),
                             (choices.RunPlace.local, choices.Precision.bf16),
                             (choices.RunPlace.server, choices.Precision.fp32)):
        p.runOn, p.serverURL, p.precision = place, "https://127.0.0.1:8765", precision
        widget.section(RunSection).onApplyButton()
        assert calls[-1]["precision"] == precision.name, calls[-1]
    assert [c["server"] for c in calls] == [None, None, "https://127.0.0.1:8765"] and not errors
