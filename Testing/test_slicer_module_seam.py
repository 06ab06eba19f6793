"""The module's own control flow (PancreasDiNTSSlicerLib's EngineProcess, Logic.process, cancel) against the real
engine, with Slicer replaced only at the thinnest seam: ``slicer.util.launchConsoleProcess`` (a real subprocess, as
Slicer's), a timer the test ticks in place of Qt's event loop (``slicer.app.processEvents`` ticks it too), the scene layer's ``write_engine_input`` writing a real NRRD,
and ``importSegmentation`` (the scene layer itself is tested with the real MRML classes in test_scene_*.py). Everything else - command lines, the engine run, progress parsing, result lookup,
report reading, clean-up - is the real code. The API checks in test_slicer_api.py are not replaced by this.
"""

from __future__ import annotations

import importlib
import os
import queue
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import psutil
import pytest
from PancreasDiNTSLib.bridge import device_list
from PancreasDiNTSLib.core import terminology

REPO = Path(__file__).resolve().parents[1]


class Loop:
    """Stands in for Qt's event loop: runs started timers and single-shot callbacks when ticked."""

    def __init__(self):
        self.timers = []
        self.single_shots = []

    def tick(self):
        """One round of the event loop: every started timer and every pending single shot."""
        for timer in [t for t in self.timers if t.active]:
            timer.slot()
        pending, self.single_shots = self.single_shots, []
        for fn in pending:
            fn()

    def run_until(self, condition, timeout=300.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for the background process"
            self.tick()
            time.sleep(0.02)


def make_fake_slicer(loop: Loop, tmp_path: Path, source_image: Path | None, nonblocking_launch: bool):
    """Modules named slicer, slicer.util, ... with only what PancreasDiNTS.py touches outside MRML."""

    class QTimer:
        def __init__(self):
            self.active, self.slot = False, None

        def setInterval(self, msec):
            self.interval = msec

        def connect(self, signal, slot):
            assert signal == "timeout()"
            self.slot = slot

        def start(self):
            self.active = True
            loop.timers.append(self)

        def stop(self):
            self.active = False

        @staticmethod
        def singleShot(msec, fn):
            loop.single_shots.append(fn)

    def popen(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
        env = dict(os.environ)
        env.update(updateEnvironment or {})
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, cwd=cwd)

    def launch_510(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
        return popen(args, useStartupEnvironment, updateEnvironment, cwd)

    def launch_512(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None, blocking=True,
                   logCallback=None, completedCallback=None):
        proc = popen(args, useStartupEnvironment, updateEnvironment, cwd)
        if blocking:
            return proc
        lines: queue.Queue = queue.Queue()

        def read():
            for line in iter(proc.stdout.readline, ""):
                lines.put(("line", line.rstrip()))
            proc.wait()
            lines.put(("done", proc.returncode))

        def check():
            while True:
                try:
                    kind, data = lines.get_nowait()
                except queue.Empty:
                    break
                if kind == "line":
                    logCallback(data)
                else:
                    completedCallback(data)
                    return
            QTimer.singleShot(100, check)

        threading.Thread(target=read, daemon=True).start()
        QTimer.singleShot(0, check)
        return proc

    def export_node(node, filename, properties=None, world=False):
        """A small block of the real CT, written as NRRD with an oblique (20 degrees) orientation."""
        import math

        import SimpleITK as sitk

        image = sitk.ReadImage(str(source_image))[30:70, 30:70, 10:20]
        c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
        image.SetDirection((-c, -s, 0.0, s, -c, 0.0, 0.0, 0.0, 1.0))  # LPS, rotated about the axial axis
        sitk.WriteImage(image, filename, False)
        return True

    def temp_directory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):
        folder = tmp_path / f"{key}-{len(list(tmp_path.glob(key + '*')))}"
        folder.mkdir()
        return str(folder)

    util = types.ModuleType("slicer.util")
    util.launchConsoleProcess = launch_512 if nonblocking_launch else launch_510
    util.startupEnvironment = lambda: dict(os.environ)
    util.exportNode = export_node
    util.tempDirectory = temp_directory
    util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    slicer = types.ModuleType("slicer")
    slicer.util = util
    slicer.app = types.SimpleNamespace(processEvents=loop.tick, testingEnabled=lambda: True)
    slicer.mrmlScene = "the scene"
    slicer.vtkMRMLMarkupsROINode = type("vtkMRMLMarkupsROINode", (), {})
    slicer.vtkMRMLScalarVolumeNode = type("vtkMRMLScalarVolumeNode", (), {})
    slicer.vtkMRMLSegmentationNode = type("vtkMRMLSegmentationNode", (), {})
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: None
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    from slicer_stubs import i18n_module

    slicer.i18n = i18n_module()
    vtk = types.ModuleType("vtk")  # a package with the sub-modules the scene layer imports at file scope
    vtk.__path__ = []
    vtk_util = types.ModuleType("vtk.util")
    vtk_util.numpy_support = types.ModuleType("vtk.util.numpy_support")
    vtk.util = vtk_util
    return {"slicer": slicer, "slicer.util": util, "slicer.parameterNodeWrapper": wrapper, "slicer.i18n": slicer.i18n,
            "slicer.ScriptedLoadableModule": scripted, "qt": qt, "ctk": types.ModuleType("ctk"),
            "vtk": vtk, "vtk.util": vtk_util,
            "vtk.util.numpy_support": vtk_util.numpy_support}


@pytest.fixture
def module_factory(monkeypatch, tmp_path, ct_piece):
    """Import PancreasDiNTS.py against the fake Slicer (5.10-style or 5.12-style process launching)."""
    loop = Loop()
    monkeypatch.syspath_prepend(str(REPO / "PancreasDiNTS"))

    def load(nonblocking_launch: bool):
        for name, mod in make_fake_slicer(loop, tmp_path, ct_piece, nonblocking_launch).items():
            monkeypatch.setitem(sys.modules, name, mod)
        for name in [n for n in sys.modules if n == "PancreasDiNTS" or n.startswith("PancreasDiNTSSlicerLib")]:
            monkeypatch.delitem(sys.modules, name)
        module = importlib.import_module("PancreasDiNTS")
        process = importlib.import_module("PancreasDiNTSSlicerLib.process")
        export_node = sys.modules["slicer.util"].exportNode

        def write_engine_input(volume, path):
            export_node(volume, str(path))
            return Path(path)

        monkeypatch.setattr(module.scenelib.runs, "write_engine_input", write_engine_input)
        assert process._hasNonBlockingLaunch() is nonblocking_launch
        return module, loop

    return load


class Recorder:
    """Stands in for importSegmentation (MRML): checks the engine's file while it still exists, including that
    it lies exactly on the grid of the volume file the module wrote (so Slicer overlays it on the input)."""

    def __init__(self):
        self.calls = []

    def __call__(self, segmentationFile, inputVolume, outputSegmentation=None):
        import nrrd
        import numpy as np
        import slicerio

        seg = slicerio.read_segmentation(str(segmentationFile))
        input_files = list(Path(segmentationFile).parents[2].glob("input.nrrd"))
        assert len(input_files) == 1, "the module's exported input volume is not where expected"
        header = nrrd.read_header(str(input_files[0]))
        assert header["space"] == "left-posterior-superior"
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = np.asarray(header["space directions"], dtype=float).T
        ijk_to_lps[:3, 3] = header["space origin"]
        assert np.allclose(seg["ijkToLPS"], ijk_to_lps, atol=1e-4)
        assert tuple(seg["voxels"].shape) == tuple(header["sizes"])
        self.calls.append(([s["name"] for s in seg["segments"]], Path(segmentationFile)))
        return "segmentation node"


@pytest.mark.subprocess
def test_engine_process_blocking_lists_devices(module_factory):
    module, _ = module_factory(nonblocking_launch=False)
    devices = module.PancreasDiNTSLogic().listDevices()
    assert devices[:2] == device_list.DEFAULT_DEVICES


@pytest.mark.subprocess
@pytest.mark.parametrize("nonblocking_launch", [False, True], ids=["slicer-5.10", "slicer-5.12"])
def test_engine_process_in_background_reports_events_then_finishes_once(module_factory, nonblocking_launch):
    module, loop = module_factory(nonblocking_launch)
    script = ("import json, sys\n"
              "for i in range(4):\n"
              "    print(json.dumps({'case': 'c', 'stage': 'infer', 'fraction': i / 4}), flush=True)\n"
              "print('pancreas-dints segment: error: something clear', file=sys.stderr)\n"
              "sys.exit(3)")
    events, finished = [], []
    task = module.EngineProcess([sys.executable, "-c", script], events.append, finished.append)
    task.start(waitForCompletion=False)
    assert task.running
    loop.run_until(lambda: finished)
    loop.run_until(lambda: True)  # one more round: no second completion
    assert finished == [task] and task.returncode == 3 and not task.running
    assert [e.fraction for e in events if e.kind == "progress"] == [0.0, 0.25, 0.5, 0.75]
    assert task.parser.error_message(3) == "something clear"


class ConfidenceRecorder:
    """Stands in for loadConfidence (MRML): the engine's confidence map, while it exists, is a uint8 volume on
    exactly the grid of the volume file the module wrote."""

    def __init__(self):
        self.calls = []

    def __call__(self, confidenceFile, inputVolume):
        import nibabel as nib
        import nrrd
        import numpy as np

        image = nib.load(str(confidenceFile))
        header = nrrd.read_header(str(Path(confidenceFile).parents[2] / "input.nrrd"))
        assert image.get_data_dtype() == np.uint8 and tuple(image.shape) == tuple(header["sizes"])
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        assert np.allclose(image.affine[:3, :3], lps_to_ras @ np.asarray(header["space directions"], float).T,
                           atol=1e-4)
        assert np.asarray(image.dataobj).min() >= 85
        self.calls.append((Path(confidenceFile).name, inputVolume))
        return "confidence node"


@pytest.mark.subprocess
def test_logic_process_runs_the_engine_and_hands_over_the_result(module_factory, tiny_bundle, tmp_path):
    module, _ = module_factory(nonblocking_launch=False)
    logic = module.PancreasDiNTSLogic()
    recorder = Recorder()
    logic.importSegmentation = recorder
    logic.loadConfidence = ConfidenceRecorder()
    result = logic.process("volume node", None, str(tiny_bundle), "cpu", waitForCompletion=True)
    assert result.success and result.segmentationNode == "segmentation node"
    assert recorder.calls[0][0] == [s.name for s in terminology.SEGMENTS]
    assert set(result.volumes) == {s.name for s in terminology.SEGMENTS}
    assert not recorder.calls[0][1].exists()  # the temporary folder (input copy, outputs) is gone
    assert not list(tmp_path.glob("PancreasDiNTS-*/*"))
    # the confidence map was asked for and handed over (on by default); the report carries the read-out
    assert logic.loadConfidence.calls == [("confidence.nii.gz", "volume node")]
    assert result.confidenceNode == "confidence node"
    assert result.report["readout"]["lesion"]["size_category"]["label"] == "by size only, not a stage"
    assert result.report["inference"]["precision"]["requested"] == "auto"
    # the panel's other choices reach the engine: no confidence map, and bf16 (issue 36; the report says so)
    logic.loadConfidence = ConfidenceRecorder()
    result = logic.process("volume node", None, str(tiny_bundle), "cpu", confidence=False, precision="bf16")
    assert result.success and result.confidenceNode is None and not logic.loadConfidence.calls
    assert result.report["inference"]["precision"]["used"] == "bf16"


@pytest.mark.subprocess
def test_logic_process_failure_raises_the_engine_message_and_cleans_up(module_factory, tmp_path):
    module, _ = module_factory(nonblocking_launch=False)
    logic = module.PancreasDiNTSLogic()
    logic.importSegmentation = Recorder()
    bad = tmp_path / "empty_model"
    bad.mkdir()
    with pytest.raises(RuntimeError) as error:
        logic.process("volume node", None, str(bad), "cpu")
    assert "empty_model" in str(error.value) and "\n" not in str(error.value)
    assert not logic.importSegmentation.calls
    assert not list(tmp_path.glob("PancreasDiNTS-*/*"))
    with pytest.raises(ValueError):
        logic.process("volume node", None, str(tmp_path / "missing"), "cpu")
    with pytest.raises(ValueError):
        logic.process(None, None, str(bad), "cpu")


@pytest.mark.subprocess
@pytest.mark.parametrize("nonblocking_launch", [False, True], ids=["slicer-5.10", "slicer-5.12"])
def test_cancel_kills_the_run_and_leaves_nothing(module_factory, tiny_bundle, tmp_path, nonblocking_launch):
    module, loop = module_factory(nonblocking_launch)
    logic = module.PancreasDiNTSLogic()
    logic.importSegmentation = Recorder()
    results, stages = [], []
    logic.process("volume node", None, str(tiny_bundle), "cpu", waitForCompletion=False,
                  eventCallback=lambda e: stages.append(e.stage), completedCallback=results.append)
    assert logic.isRunning()
    loop.run_until(lambda: "load" in stages or results)
    pid = logic._task.proc.pid
    logic.cancel()
    loop.run_until(lambda: results)
    assert results[0].cancelled and not results[0].success
    assert not logic.isRunning() and not logic.importSegmentation.calls
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not list(tmp_path.glob("PancreasDiNTS-*/*"))


PROGRESS_SCRIPT = ("import json, time\n"
                   "for i in range(3):\n"
                   "    print(json.dumps({'case': 'c', 'stage': 'infer', 'fraction': i / 3}), flush=True)\n"
                   "    time.sleep(0.2)\n")


@pytest.mark.parametrize("nonblocking_launch", [False, True], ids=["slicer-5.10", "slicer-5.12"])
def test_raising_callbacks_neither_stop_the_poller_nor_leave_the_run_running(module_factory, nonblocking_launch):
    """Slicer's poller stops for good when a callback raises (5.12: the next singleShot is never scheduled), and
    the panel would stay "running": every callback is guarded, the error kept and logged."""
    module, loop = module_factory(nonblocking_launch)
    seen = []

    def on_event(event):
        seen.append(event.fraction)
        raise ValueError("a widget is gone")

    def on_finished(task):
        raise RuntimeError("completion failed")

    task = module.EngineProcess([sys.executable, "-c", PROGRESS_SCRIPT], on_event, on_finished)
    task.start(waitForCompletion=False)
    loop.run_until(lambda: not task.running, timeout=60)
    assert seen == [0.0, 1 / 3, 2 / 3] and task.returncode == 0
    assert len(task.callbackErrors) == 4 and "completion failed" in task.callbackErrors[-1]


@pytest.mark.parametrize("nonblocking_launch", [False, True], ids=["slicer-5.10", "slicer-5.12"])
def test_a_blocking_run_keeps_processing_events(module_factory, nonblocking_launch, monkeypatch):
    """waitForCompletion=True (scripts, the self-test, listDevices) starts the non-blocking way and processes
    events until the end, so the GUI is repainted while the child imports torch."""
    module, loop = module_factory(nonblocking_launch)
    ticks = []
    monkeypatch.setattr(sys.modules["slicer"].app, "processEvents", lambda: (ticks.append(1), loop.tick()))
    events = []
    task = module.EngineProcess([sys.executable, "-c", PROGRESS_SCRIPT], events.append).start(waitForCompletion=True)
    assert task.returncode == 0 and not task.running and len(events) == 3
    assert len(ticks) > 10  # about 0.6 s of child at one round per 20 ms


@pytest.mark.subprocess
def test_shutdown_stops_the_run_and_removes_the_ct_copy_without_calling_back(module_factory, tiny_bundle, tmp_path):
    """Slicer exits mid-run (widget cleanup): the process tree dies, the temporary folder with the copy of the CT
    goes, and no completion callback touches the (closing) panel."""
    module, loop = module_factory(nonblocking_launch=True)
    logic = module.PancreasDiNTSLogic()
    logic.importSegmentation = Recorder()
    stages, completed = [], []
    logic.process("volume node", None, str(tiny_bundle), "cpu", waitForCompletion=False,
                  eventCallback=lambda e: stages.append(e.stage), completedCallback=completed.append)
    loop.run_until(lambda: "load" in stages or completed)
    work = logic._job.work_dir
    assert (work / "input.nrrd").is_file()
    pid = logic._task.proc.pid
    logic.shutdown()
    assert not logic.isRunning() and not work.exists() and not completed
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    loop.run_until(lambda: True)
    assert not completed


@pytest.mark.subprocess
def test_an_import_failure_is_a_failed_run_with_one_line(module_factory, tiny_bundle, tmp_path):
    """An unexpected exception while loading the result ends as a failed result (the panel shows it), not as a
    traceback in the console with the panel stuck; the temporary folder is gone."""
    module, _ = module_factory(nonblocking_launch=False)
    logic = module.PancreasDiNTSLogic()

    def broken_import(segmentationFile, inputVolume, outputSegmentation=None):
        raise KeyError("Segment_1")

    logic.importSegmentation = broken_import
    logic.loadConfidence = ConfidenceRecorder()
    with pytest.raises(RuntimeError, match=r"^Loading the engine's result failed: 'Segment_1'$"):
        logic.process("volume node", None, str(tiny_bundle), "cpu", confidence=False)
    assert not list(tmp_path.glob("PancreasDiNTS-*/*"))


class SlowServer:
    """A real HTTP server on 127.0.0.1 that accepts a job and is slow to answer a cancel (as a loaded or
    half-reachable server is): what the panel's Cancel, scene close and quit must not wait for."""

    CANCEL_DELAY = 3.0

    def __init__(self):
        import http.server
        import json as json_module

        delay = self.CANCEL_DELAY

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, data):
                body = json_module.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                import hashlib

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/cancel"):
                    time.sleep(delay)
                    self._answer({"id": "j1", "state": "cancelled"})
                else:  # the client checks that the server recorded the bytes it sent
                    self._answer({"id": "j1", "state": "queued", "input_sha256": hashlib.sha256(body).hexdigest()})

            def do_GET(self):
                self._answer({"id": "j1", "state": "running", "fraction": 0.1})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.slow
def test_server_cancel_and_quit_return_at_once_and_the_run_ends_in_the_background(module_factory, tmp_path):
    """Audit N5: RemoteRun.cancel makes a synchronous HTTP call (up to the client's 60 s timeout) and joins the
    run's thread; called from Cancel, scene close and quit it froze Slicer. Now Cancel returns at once, the run
    ends as cancelled through the poller, and quitting (stop) returns at once too."""
    _, loop = module_factory(nonblocking_launch=True)
    remote_task = importlib.import_module("PancreasDiNTSSlicerLib.remote")
    from PancreasDiNTSLib.bridge import remote

    server = SlowServer()
    try:
        source = tmp_path / "input.nrrd"
        source.write_bytes(b"NRRD0004\n")
        finished = []
        for quit_instead in (False, True):
            run = remote.RemoteRun(remote.ServerClient(server.url, "token"), source, tmp_path / "out", {})
            task = remote_task.RemoteTask(run, finishedCallback=finished.append).start(waitForCompletion=False)
            loop.run_until(lambda run=run: run.job is not None, timeout=30)
            started = time.monotonic()
            task.stop() if quit_instead else task.cancel()
            assert time.monotonic() - started < 0.5, "the GUI thread waited for the server"
            if not quit_instead:
                assert task.running  # still ending in the background
                loop.run_until(lambda: finished, timeout=30)
                assert finished[0] is task and task.cancelled and task.returncode == 130
            else:
                assert not task.running and len(finished) == 1  # stop() never calls back
    finally:
        server.close()
    assert remote_task.insecureServerWarning("http://gpu-server:8765") and "unencrypted" in \
        remote_task.insecureServerWarning("http://10.0.0.5:8765")
    assert remote_task.insecureServerWarning("https://gpu-server:8765") is None
    assert remote_task.insecureServerWarning("http://localhost:8765") is None
    assert remote_task.insecureServerWarning("http://127.0.0.1:8765") is None


@pytest.mark.slow
@pytest.mark.subprocess
def test_with_an_engine_environment_nothing_is_installed_into_slicers_python(module_factory, tmp_path, monkeypatch):
    """The engine-environment route: with PANCREAS_DINTS_ENGINE_PYTHON naming a second environment that holds
    the engine's packages, "set up the requirements" checks that environment (a standard-library command run with
    its python as an engine process) and never asks the PyTorch extension or pip for Slicer's Python; engine
    commands (here the GPU list) run with that python."""
    import sysconfig

    module, _ = module_factory(nonblocking_launch=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    folder = tmp_path / "engine-env"
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "engine-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # no torch download
    monkeypatch.setenv("PANCREAS_DINTS_ENGINE_PYTHON", str(python))

    class Refuse:
        def __getattr__(self, name):
            raise AssertionError(f"{name} used: something was to be installed into Slicer's Python")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", Refuse())
    monkeypatch.setitem(sys.modules, "slicer.packaging", Refuse())
    assert module.PancreasDiNTSLogic().setupPythonRequirements(askConfirmation=False) is True
    commands = importlib.import_module("PancreasDiNTSLib.bridge.commands")
    assert commands.python_executable() == str(python)
    devices = importlib.import_module("PancreasDiNTSSlicerLib.devices")
    got: list = []
    task = devices.detectDevices(lambda found, error: got.append((found, error)))
    task.wait()
    assert task.command[0] == str(python) and task.returncode == 0  # the GPU list from the engine environment
    assert got and got[0][1] == "" and got[0][0][:2] == device_list.DEFAULT_DEVICES
