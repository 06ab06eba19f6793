"""The engine side of the Slicer modules (PancreasDiNTSLib.bridge: commands, progress_lines, child_process, case_results,
model_folders, device_list, pip_requirements), tested for real: the command lines are
parsed by the engine's own CLI parser, the segment command the Segment button builds runs in a real subprocess
on the real CT, its JSON stream goes through ProgressParser, and the .seg.nrrd is read back with slicerio."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PancreasDiNTSLib.bridge import (
    case_results,
    child_process,
    commands,
    device_list,
    model_folders,
    pip_requirements,
    progress_lines,
)
from PancreasDiNTSLib.cli import COMMANDS, build_parser
from PancreasDiNTSLib.core import terminology
from PancreasDiNTSLib.core.atomic import LOCK_NAME
from PancreasDiNTSLib.core.errors import EXIT_MODEL
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME
from PancreasDiNTSLib.core.paths import MODEL_HOME_ENV
from PancreasDiNTSLib.core.progress import Progress

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def launch(command: list[str], cwd: Path | None = None) -> subprocess.Popen:
    """Start a command as slicer.util.launchConsoleProcess does (stdout pipe, stderr merged, text mode), with the
    environment the module adds (engine_environment)."""
    env = dict(os.environ)
    env.update(commands.engine_environment(env.get("PYTHONPATH")))
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, cwd=cwd)


def run_polled(proc: subprocess.Popen, parser: progress_lines.ProgressParser, until=None,
               timeout: float = 600) -> list[progress_lines.Event]:
    """Read a process as the module does on Slicer 5.10: a LinePump drained by a timer-like polling loop."""
    pump = child_process.LinePump(proc.stdout)
    events: list[progress_lines.Event] = []
    deadline = time.monotonic() + timeout
    while not (pump.ended and proc.poll() is not None):
        assert time.monotonic() < deadline, "the engine did not finish in time"
        for line in pump.drain():
            events.append(parser.feed(line))
            if until and until(events[-1]):
                return events
        time.sleep(0.05)
    events += [parser.feed(line) for line in pump.drain()]
    return events


def parsed(command: list[str]):
    """The engine CLI's own parser applied to a built command (python -m PancreasDiNTSLib.cli <args>)."""
    assert command[:3] == [PY, "-m", commands.ENGINE_MODULE]
    return build_parser().parse_args(command[3:])


# ----------------------------------------------------------------------------------------------------------
# Command lines: built by the engine, accepted by the engine's parser
# ----------------------------------------------------------------------------------------------------------


def test_segment_command_is_what_the_engine_parser_accepts(tmp_path):
    command = commands.segment_command(PY, tmp_path / "in put.nrrd", tmp_path / "out", tmp_path / "model",
                                         "cuda:1", formats=("seg.nrrd", "nifti"))
    args = parsed(command)
    assert args.command == "segment"
    assert args.inputs == [str(tmp_path / "in put.nrrd")]  # a list item: spaces need no quoting
    assert args.output == str(tmp_path / "out") and args.model == str(tmp_path / "model")
    assert args.device == "cuda:1" and args.formats == "seg.nrrd,nifti"
    assert args.progress == "json" and args.overwrite and not args.allow_non_ct
    assert parsed(commands.segment_command(PY, "ct.nrrd", "out", "model", allow_non_ct=True)).allow_non_ct
    with pytest.raises(ValueError):
        commands.segment_command(PY, "a", "b", "c", formats=())


BUILDERS = {
    "train": lambda t: commands.train_command(PY, t / "d.json", t / "run", arch=t / "arch.pt", preset="tiny",
                                                device="cpu", resume=True, overrides={"epochs": 2}),
    "search": lambda t: commands.search_command(PY, t / "d.json", t / "s", preset="tiny", device="cpu",
                                                  overrides=["epochs=1"]),
    "evaluate": lambda t: commands.evaluate_command(PY, t / "m", t / "d.json", t / "e", split="validation"),
    "export": lambda t: commands.export_command(PY, t / "m", t / "m.onnx", "onnx", "fp16"),
    "download": lambda t: commands.download_command(PY, dest=t / "cache", source=t / "bundle.zip"),
    "make-phantoms": lambda t: commands.make_phantoms_command(PY, t / "data", count=2, seed=4),
    "prepare-datalist": lambda t: commands.prepare_datalist_command(PY, t / "data", t / "d.json", 0.5),
    "compare": lambda t: commands.compare_command(PY, t / "prior ct.nrrd", t / "current.nrrd", t / "out",
                                                  prior_labels=t / "p.nrrd", current_labels=t / "c.nrrd",
                                                  formats=("json", "png")),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_other_commands_are_what_the_engine_parser_accepts(name, tmp_path):
    if name not in COMMANDS or not (REPO / "PancreasDiNTS" / "PancreasDiNTSLib" / "cli" /
                                    f"{COMMANDS[name]}.py").is_file():
        pytest.skip(f"the engine has no `{name}` command yet")
    args = parsed(BUILDERS[name](tmp_path))
    assert args.command == name
    if hasattr(args, "progress"):
        assert args.progress == "json"


def test_compare_command_carries_both_sides(tmp_path):
    args = parsed(BUILDERS["compare"](tmp_path))
    assert args.prior == str(tmp_path / "prior ct.nrrd") and args.current == str(tmp_path / "current.nrrd")
    assert args.prior_labels == str(tmp_path / "p.nrrd") and args.current_labels == str(tmp_path / "c.nrrd")
    assert args.formats == "json,png" and args.output == str(tmp_path / "out")
    with pytest.raises(ValueError):
        commands.compare_command(PY, "a", "b", "c", formats=())


def test_overrides_must_be_key_value():
    with pytest.raises(ValueError):
        commands.train_command(PY, "d.json", "run", overrides=["epochs"])


def test_engine_environment_makes_the_shipped_engine_importable(tmp_path):
    env = commands.engine_environment("/elsewhere" + os.pathsep + str(commands.ENGINE_PARENT_DIR))
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == str(commands.ENGINE_PARENT_DIR) and paths.count(paths[0]) == 1 and "/elsewhere" in paths
    # -S: no site-packages, so the editable install cannot help; only PYTHONPATH finds the engine.
    out = subprocess.run([PY, "-S", "-c", "import PancreasDiNTSLib.bridge.commands as b; print(b.__file__)"],
                         env={**env, "PATH": os.environ.get("PATH", "")}, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(out) == REPO / "PancreasDiNTS" / "PancreasDiNTSLib" / "bridge" / "commands.py"


def test_python_executable_outside_slicer_is_this_interpreter(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert commands.python_executable() == sys.executable
    fake = tmp_path / "PythonSlicer"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert commands.python_executable() == str(fake)


# ----------------------------------------------------------------------------------------------------------
# Progress parsing
# ----------------------------------------------------------------------------------------------------------


def test_parser_reads_the_engine_progress_format():
    stream = io.StringIO()
    progress = Progress("json", total=2, stream=stream)
    progress.update("ct1", "load", 0.0, "reading ct1.nii.gz")
    progress.update("ct1", "infer", 1.0, "window 8/8")
    progress.update("ct1", "done", 1.0, "ok", volumes_ml={"Pancreas": 70.0}, output_dir="out/ct1")
    progress.start_item(1)
    progress.update("ct2", "error", 1.0, "ct2.nii.gz: not a CT (intensities 0..255)")
    progress.emit({"epoch": 3, "epochs": 10, "loss": 0.51, "val_dice": 0.62})
    progress.emit({"stage": "summary", "cases": 2, "succeeded": 1, "failed": 1})
    lines = stream.getvalue().splitlines() + ["a warning", "pancreas-dints segment: error: model folder x is empty"]
    parser = progress_lines.ProgressParser()
    events = parser.feed_all(line + "\n" for line in lines)
    assert [e.kind for e in events] == ["progress"] * 4 + ["metrics", "progress", "log", "log"]
    assert [e.stage for e in events[:4]] == ["load", "infer", "done", "error"]
    assert events[1].fraction == 0.5 and events[3].fraction == 1.0
    assert parser.cases_done == ["ct1"] and parser.outputs == {"ct1": "out/ct1"}
    assert parser.case_errors == {"ct2": "ct2.nii.gz: not a CT (intensities 0..255)"}
    assert parser.metrics == {"epoch": 3, "epochs": 10, "loss": 0.51, "val_dice": 0.62}
    assert parser.summary["failed"] == 1
    assert parser.error_message() == "model folder x is empty"  # the engine's own line wins
    assert parser.log == ["a warning", "pancreas-dints segment: error: model folder x is empty"]


def test_parser_follows_training_epochs():
    parser = progress_lines.ProgressParser()
    parser.feed('{"case": "train", "stage": "train", "fraction": 0.1, "message": "epoch 1/4 step 1/2", "epoch": 1}')
    assert parser.status == "epoch 1/4 step 1/2"
    assert progress_lines.training_display(parser.metrics) == {"epoch": "1", "loss": "-", "dice": "-"}
    parser.feed('{"stage": "epoch", "epoch": 2, "epochs": 4, "loss": 1.5, "dice": 0.25, "fraction": 0.5}')
    parser.feed('{"stage": "epoch", "epoch": 3, "epochs": 4, "loss": 1.25, "dice": null, "fraction": 0.75}')
    assert parser.status == "epoch 3/4, loss 1.2500"
    assert progress_lines.training_display(parser.metrics) == {"epoch": "3/4", "loss": "1.2500", "dice": "0.250"}


def test_parser_error_message_fallbacks():
    parser = progress_lines.ProgressParser()
    assert parser.error_message(9) == "the engine stopped with exit code 9"
    parser.feed('{"case": "c", "stage": "error", "fraction": 1, "message": "bad"}')
    assert parser.error_message() == "c: bad"
    other = progress_lines.ProgressParser()
    other.feed_all(["Traceback (most recent call last):", "RuntimeError: boom", "", "[1, 2]", "{not json"])
    assert other.error_message() == "{not json"
    assert [e.kind for e in other.feed_all(["[1, 2]", '{"a": 1}'])] == ["log", "metrics"]


def test_line_pump_does_not_block_and_sees_the_end():
    proc = launch([PY, "-u", "-c", "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.3)"])
    pump = child_process.LinePump(proc.stdout)
    t0 = time.monotonic()
    first = pump.drain()
    assert time.monotonic() - t0 < 0.1  # never waits for output
    lines = list(first)
    while not pump.ended:
        lines += pump.drain()
        time.sleep(0.02)
    assert [line.strip() for line in lines] == ["0", "1", "2"]
    assert proc.wait() == 0


BAD_BYTES_OUTPUT = [b'{"case": "c", "stage": "infer", "fraction": 0.25}\n', b"caf\xe9 \xff\xfe \x81\x9d undecodable\n",
                    b"\xc2\xb5m and \x80\n", b'{"case": "c", "stage": "infer", "fraction": 0.75}\n', b"last line\n"]


def _pipe_with(chunks: list[bytes], encoding: str):
    """A real OS pipe holding ``chunks``, its read end opened in text mode as Popen(universal_newlines=True)
    opens it (the locale's encoding: ascii under LANG=C, cp1252 on many Windows computers)."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as writer:
        writer.write(b"".join(chunks))
    return open(read_fd, encoding=encoding, newline=None)  # the pump reads it


@pytest.mark.parametrize("encoding", ["ascii", "cp1252", "utf-8"])
def test_line_pump_skips_undecodable_bytes_and_reads_on(encoding):
    """Bytes the locale cannot decode used to end the pump's reading (the run then looked "running" forever or
    lost its last lines): every line still arrives, the bad ones with replacement characters."""
    with _pipe_with(BAD_BYTES_OUTPUT, encoding) as stream:
        if encoding != "utf-8":  # the finding: a plain text-mode reader stops at the bad line
            with _pipe_with(BAD_BYTES_OUTPUT, encoding) as plain, pytest.raises(UnicodeDecodeError):
                list(iter(plain.readline, ""))
        pump = child_process.LinePump(stream)
        lines: list[str] = []
        deadline = time.monotonic() + 10
        while not pump.ended:
            assert time.monotonic() < deadline
            lines += pump.drain()
            time.sleep(0.01)
    assert len(lines) == 5 and lines[-1].strip() == "last line"
    assert "\ufffd" in lines[1] and lines[2].startswith("\u00b5m")
    parser = progress_lines.ProgressParser()
    assert [parser.feed(line).fraction for line in lines] == [0.25, None, None, 0.75, None]


def test_output_lines_skips_a_line_a_bufferless_stream_cannot_decode():
    class Stream:  # a text stream without a binary buffer that fails on its second line
        def __init__(self):
            self.items = ["one\n", UnicodeDecodeError("ascii", b"\xff", 0, 1, "bad"), "three\n", ""]

        def readline(self):
            item = self.items.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

    assert list(child_process.output_lines(Stream())) == ["one\n", "three\n"]


def test_follow_reads_past_undecodable_bytes():
    code = "import sys; sys.stdout.buffer.write(b'a\\n\\xff\\xfe\\n{\"stage\": \"load\", \"fraction\": 1.0}\\n'); sys.exit(2)"
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONIOENCODING="ascii")
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, encoding="ascii", env=env)
    parser = progress_lines.ProgressParser()
    assert child_process.follow(proc, parser.feed) == 2
    assert parser.fraction == 1.0 and parser.log[0] == "a"


def test_follow_is_the_blocking_reader():
    proc = launch([PY, "-c", "print('{\"stage\": \"load\", \"fraction\": 0.5}'); print('x'); raise SystemExit(3)"])
    parser = progress_lines.ProgressParser()
    assert child_process.follow(proc, parser.feed) == 3
    assert parser.fraction == 0.5 and parser.log == ["x"]


# ----------------------------------------------------------------------------------------------------------
# Killing a process tree (Cancel)
# ----------------------------------------------------------------------------------------------------------

LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"  # like PythonSlicer: a parent process


def test_kill_process_tree_kills_children_not_only_the_launcher():
    proc = launch([PY, "-c", LAUNCHER, PY, "-c", LAUNCHER, PY, "-c", "import time; print('up', flush=True); "
                   "time.sleep(120)"])
    assert proc.stdout.readline().strip() == "up"
    children = psutil.Process(proc.pid).children(recursive=True)
    tree = [proc.pid] + [c.pid for c in children]
    assert len(tree) == 3
    # the worker runs the sleep code itself: `PY -c CODE` (the inner launcher has that code among its arguments)
    worker = next(c.pid for c in children if len(c.cmdline()) == 3 and "sleep(120)" in c.cmdline()[-1])
    killed = child_process.kill_process_tree(proc.pid)
    # The worker is killed first; a launcher may then exit by itself before its turn comes.
    assert worker in killed and set(killed) <= set(tree)
    proc.wait(timeout=10)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in tree)
    assert child_process.kill_process_tree(proc.pid) == []  # gone: nothing to do, no error


# ----------------------------------------------------------------------------------------------------------
# The real thing: the Segment button's command on the real CT
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_segment_command_runs_on_real_ct_and_slicer_reads_the_result(tmp_path, tiny_bundle, ct_piece):
    import nrrd
    import slicerio

    out = tmp_path / "out"
    command = commands.segment_command(commands.python_executable(), ct_piece, out, tiny_bundle, "cpu")
    parser = progress_lines.ProgressParser()
    proc = launch(command, cwd=tmp_path)
    events = run_polled(proc, parser)
    assert proc.returncode == 0, parser.error_message(proc.returncode)

    progress = [e for e in events if e.kind == "progress"]
    stages = [e.stage for e in progress]
    for stage in ("load", "preprocess", "infer", "postprocess", "write", "done", "summary"):
        assert stage in stages
    fractions = [e.fraction for e in progress if e.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert parser.fraction == 1.0 and parser.summary["succeeded"] == 1 and not parser.case_errors
    assert parser.engine_error is None

    folder = case_results.case_folder(out)
    assert folder.name == "ct_piece" and parser.cases_done == ["ct_piece"]
    assert Path(parser.outputs["ct_piece"]).resolve() == folder.resolve()
    seg_file = case_results.seg_nrrd_path(folder)

    seg = slicerio.read_segmentation(str(seg_file))
    assert [s["name"] for s in seg["segments"]] == ["Pancreas", "Pancreatic tumor"]
    header = nrrd.read_header(str(seg_file))
    for index, info in enumerate(terminology.SEGMENTS):
        segment = seg["segments"][index]
        assert segment["labelValue"] == info.label
        assert np.allclose(segment["color"], info.color_float, atol=1e-3)
        tags = dict(t.split(":", 1) for t in header[f"Segment{index}_Tags"].split("|") if ":" in t)
        assert tags["TerminologyEntry"] == info.terminology_entry()  # exactly what Slicer stores on a segment
    assert segment["terminology"]["type"] == ["SCT", "108369006", "Neoplasm"]
    assert segment["terminology"]["anatomicRegion"] == ["SCT", "15776009", "Pancreas"]

    # Volumes shown in the module (report.json) agree with the voxels Slicer will load.
    volumes = case_results.report_volumes(case_results.read_report(folder))
    voxel_ml = abs(np.linalg.det(seg["ijkToLPS"][:3, :3])) / 1000.0
    voxels = seg["voxels"]
    assert voxels.shape == (40, 40, 30)
    for info in terminology.SEGMENTS:
        assert volumes[info.name] == pytest.approx(np.count_nonzero(voxels == info.label) * voxel_ml, rel=1e-3)
    done = next(e for e in progress if e.stage == "done")
    assert done.data["volumes_ml"] == pytest.approx(volumes)
    assert case_results.format_volumes(volumes).startswith("Pancreas: ")


@pytest.mark.slow
def test_cancel_during_inference_leaves_no_output(tmp_path, tiny_bundle, example_ct_sm):
    out = tmp_path / "out"
    command = commands.segment_command(PY, example_ct_sm, out, tiny_bundle, "cpu")
    proc = launch([PY, "-c", LAUNCHER, *command], cwd=tmp_path)  # behind a launcher, as PythonSlicer is
    parser = progress_lines.ProgressParser()
    # Killed as soon as the case is being prepared for inference: the whole inference is the margin (a tiny model
    # on a busy machine can finish between two polls once inference has started).
    run_polled(proc, parser, until=lambda e: e.stage in ("preprocess", "infer"), timeout=300)
    assert proc.poll() is None, f"the run ended before it could be cancelled: {parser.status}"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the launcher should have a child doing the work"
    child_process.kill_process_tree(proc.pid)
    proc.wait(timeout=20)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert case_results.case_folders(out) == []  # outputs are written atomically: nothing half-done remains
    # A killed run cannot clean up: what may stay is the engine's bookkeeping (the OUTDIR lock, the claimed case
    # folder's manifest), never a result or a partial file.
    left = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert all(p.name in (LOCK_NAME, MANIFEST_NAME) for p in left), left


@pytest.mark.slow
def test_bad_model_gives_the_engine_one_line_message(tmp_path, example_ct_sm):
    model = tmp_path / "not_a_model"
    model.mkdir()
    out = tmp_path / "out"
    proc = launch(commands.segment_command(PY, example_ct_sm, out, model, "cpu"), cwd=tmp_path)
    parser = progress_lines.ProgressParser()
    run_polled(proc, parser, timeout=300)
    assert proc.returncode == EXIT_MODEL
    message = parser.error_message(proc.returncode)
    assert "not_a_model" in message and "\n" not in message
    assert message == parser.engine_error
    assert case_results.case_folders(out) == []


@pytest.mark.slow
def test_train_module_commands_run_end_to_end(tmp_path):
    """What the Train module runs: phantoms -> datalist -> tiny training -> evaluation, all built by
    commands.*_command, run as subprocesses, followed through ProgressParser (export's command line is checked
    by the parser test above; its output by the export tests)."""
    missing = [c for c in ("make-phantoms", "prepare-datalist", "train", "evaluate")
               if not (REPO / "PancreasDiNTS" / "PancreasDiNTSLib" / "cli" / f"{COMMANDS[c]}.py").is_file()]
    if missing:
        pytest.skip(f"the engine has no {missing} command yet")

    def run(command):
        parser = progress_lines.ProgressParser()
        proc = launch(command, cwd=tmp_path)
        run_polled(proc, parser, timeout=600)
        assert proc.returncode == 0, parser.error_message(proc.returncode)
        return parser

    run(commands.make_phantoms_command(PY, tmp_path / "data", count=4, seed=5))
    run(commands.prepare_datalist_command(PY, tmp_path / "data", tmp_path / "datalist.json"))
    parser = run(commands.train_command(PY, tmp_path / "datalist.json", tmp_path / "run", arch="random",
                                          preset="tiny", device="cpu"))
    shown = progress_lines.training_display(parser.metrics)
    assert shown["epoch"] == f"{parser.summary['epochs']}/{parser.summary['epochs']}"
    assert float(shown["loss"]) == pytest.approx(parser.summary["last_loss"], abs=1e-4)
    assert shown["dice"] != "-"
    assert model_folders.is_model_folder(tmp_path / "run")
    evaluation = run(commands.evaluate_command(PY, tmp_path / "run", tmp_path / "datalist.json",
                                                 tmp_path / "eval", device="cpu"))
    assert evaluation.summary is not None


@pytest.mark.slow
def test_download_of_a_non_official_bundle_installs_a_local_model(tmp_path, tiny_bundle):
    """The module's download button path, offline variant: a bundle that is not the official release (other
    weights) is installed as a local model under CACHE/local/, with a line saying so, never in the official
    model's place."""
    cache = tmp_path / "cache"
    proc = launch(commands.download_command(PY, dest=cache, source=tiny_bundle), cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "NOT the official" in out
    installed = [p for p in cache.glob("*/*") if model_folders.is_model_folder(p)]
    assert [p.parent.name for p in installed] == ["local"]


# ----------------------------------------------------------------------------------------------------------
# Results, models, devices, dependencies
# ----------------------------------------------------------------------------------------------------------


def test_case_folder_and_report_helpers(tmp_path):
    with pytest.raises(FileNotFoundError):
        case_results.case_folder(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps({"volumes_ml": {"Pancreas": 1.5}}))
    (tmp_path / "empty").mkdir()
    assert case_results.case_folder(tmp_path) == tmp_path / "a"
    assert case_results.read_report(tmp_path / "a") == {"volumes_ml": {"Pancreas": 1.5}}
    assert case_results.read_report(tmp_path / "empty") == {}
    with pytest.raises(FileNotFoundError):
        case_results.seg_nrrd_path(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "segmentation.seg.nrrd").write_bytes(b"NRRD")
    with pytest.raises(FileNotFoundError):
        case_results.case_folder(tmp_path)  # two cases: name one
    assert case_results.case_folder(tmp_path, "b") == tmp_path / "b"
    with pytest.raises(FileNotFoundError):
        case_results.case_folder(tmp_path, "c")


def test_volumes_from_report_variants():
    assert case_results.report_volumes({"volumes_ml": {"Pancreas": 70, "Pancreatic tumor": 2.5}}) == {
        "Pancreas": 70.0, "Pancreatic tumor": 2.5}
    assert case_results.report_volumes({"segments": [{"name": "Pancreas", "volume_ml": 3}]}) == {"Pancreas": 3.0}
    assert case_results.report_volumes({"segments": {"Pancreas": {"volume_ml": 4}}}) == {"Pancreas": 4.0}
    assert case_results.report_volumes({}) == {}
    text = case_results.format_volumes({"Pancreatic tumor": 2.54, "Pancreas": 70.04, "Other": 1})
    assert text == "Pancreas: 70.0 mL, Pancreatic tumor: 2.5 mL, Other: 1.0 mL"


def test_model_folders(tmp_path, tiny_bundle, monkeypatch):
    assert model_folders.is_model_folder(tiny_bundle)
    assert not model_folders.is_model_folder(tmp_path)
    from PancreasDiNTSLib.model.download import cache_root, installed_path

    monkeypatch.setenv(MODEL_HOME_ENV, str(tmp_path / "home"))
    assert model_folders.model_cache_folder() == tmp_path / "home" / "models" == cache_root()
    assert model_folders.official_model_folder() is None
    old = installed_path("0.4.9")
    local = tmp_path / "home" / "models" / "local" / "my-copy"  # `download --from ... --name my-copy`: not official
    new = installed_path()  # where `download` installs the official bundle
    for folder, mtime in ((old, 1_000_000), (new, 2_000_000), (local, 3_000_000)):
        (folder / "models").mkdir(parents=True)
        (folder / "configs").mkdir()
        (folder / "configs" / "inference.yaml").write_text("{}")
        os.utime(folder, (mtime, mtime))
    assert model_folders.official_model_folder() == new
    monkeypatch.delenv(MODEL_HOME_ENV)
    assert model_folders.model_cache_folder() == cache_root()


def test_demo_model_and_commands(monkeypatch, tiny_bundle, tmp_path):
    from PancreasDiNTSLib.core.errors import ModelError
    from PancreasDiNTSLib.synthetic import demo

    monkeypatch.delenv("PANCREAS_DINTS_DEMO_MODEL", raising=False)
    try:
        engine_choice = demo.demo_model_dir()
    except ModelError:
        engine_choice = None
    assert model_folders.demo_model_folder() == engine_choice  # the module finds what the engine's demo uses
    monkeypatch.setenv("PANCREAS_DINTS_DEMO_MODEL", str(tiny_bundle))
    assert model_folders.demo_model_folder() == demo.demo_model_dir() == tiny_bundle
    monkeypatch.setenv("PANCREAS_DINTS_DEMO_MODEL", str(tmp_path))
    assert model_folders.demo_model_folder() is None
    assert commands.engine_has_command("segment") and commands.engine_has_command("make-phantoms")
    assert not commands.engine_has_command("no-such-command")


def test_find_arch_file(tmp_path):
    assert model_folders.find_arch_file(tmp_path / "none") is None
    assert model_folders.find_arch_file(tmp_path) is None
    (tmp_path / "best").mkdir()
    arch = tmp_path / "best" / "arch_code.pt"
    arch.write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"x")
    assert model_folders.find_arch_file(tmp_path) == arch
    final = tmp_path / "search_code_4.pt"  # search's result sits at the top; best/ holds the best-Dice decode
    final.write_bytes(b"x")
    os.utime(final, (1_000_000, 1_000_000))
    assert model_folders.find_arch_file(tmp_path) == final
    assert model_folders.find_arch_file(tmp_path, {"arch_file": str(arch)}) == arch
    assert model_folders.find_arch_file(tmp_path, {"arch_file": str(tmp_path / "gone.pt")}) == final


@pytest.mark.slow
def test_device_listing_runs_outside_the_caller(tmp_path):
    proc = launch(commands.devices_command(PY), cwd=tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    devices = device_list.parse_devices(output)
    assert devices[:2] == device_list.DEFAULT_DEVICES
    import torch

    assert len(devices) == 2 + (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert all(d.startswith("cuda:") for d, _ in devices[2:])
    assert device_list.parse_devices("garbage") == device_list.DEFAULT_DEVICES
    assert device_list.main(["nonsense"]) == 2


def test_requirements_checks_use_installed_distributions():
    assert pip_requirements.missing_requirements(["psutil>=1", "packaging"]) == []
    assert pip_requirements.missing_requirements(["psutil>=999", "no-such-distribution-xyz"]) == [
        "psutil>=999", "no-such-distribution-xyz"]
    assert pip_requirements.missing_requirements(['psutil>=999; python_version < "3"']) == []
    assert pip_requirements.requirement_installed("psutil>=999")
    assert not pip_requirements.requirement_installed("no-such-distribution-xyz")


def test_module_requirements_cover_the_engine_and_spare_slicer_packages():
    """Resources/PancreasDiNTS-requirements.txt = the engine's dependencies (pyproject) minus what Slicer/PyTorch
    provide (PancreasDiNTSSlicerLib.packages.SLICER_MANAGED_PACKAGES, pinned while pip runs)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    path = REPO / "PancreasDiNTS" / "Resources" / "PancreasDiNTS-requirements.txt"
    required = {canonicalize_name(Requirement(r).name) for r in pip_requirements.read_requirements(path)}
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    engine = {canonicalize_name(Requirement(r).name) for r in pyproject["project"]["dependencies"]}
    tree = ast.parse((REPO / "PancreasDiNTS" / "PancreasDiNTSSlicerLib" / "packages.py").read_text())
    managed_list = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                        and getattr(n.targets[0], "id", "") == "SLICER_MANAGED_PACKAGES")
    slicer_managed = {canonicalize_name(n) for n in managed_list}
    assert {"torch", "numpy", "simpleitk", "vtk", "requests"} <= slicer_managed
    for name in slicer_managed:
        assert name not in required, f"{name} ships with Slicer or PyTorchUtils; the requirements file must not list it"
    assert required == engine - slicer_managed
    # The Train module adds the engine's `train` extra.
    train_path = REPO / "PancreasDiNTSTrain" / "Resources" / "PancreasDiNTSTrain-requirements.txt"
    train_required = {canonicalize_name(Requirement(r).name) for r in pip_requirements.read_requirements(train_path)}
    train_extra = {canonicalize_name(Requirement(r).name) for r in pyproject["project"]["optional-dependencies"]["train"]}
    assert train_required == train_extra - slicer_managed
