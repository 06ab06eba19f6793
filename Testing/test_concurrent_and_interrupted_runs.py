"""Concurrent and interrupted runs, one test per case on generated data (issue 26): concurrent runs into one
OUTDIR (1), interrupted runs (2) and edits during a rerun (3) with real processes and real signals, demo / make-phantoms
output folders (4, 8), case-insensitive and non-ASCII case names (12), concurrent installs and atomic_dir (13).

A few runs pause a real child process at a chosen write (the test's driver wraps the writer library's save
function: it waits for a file to appear or for the signal); the file system is never mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from image_files import crop_nifti, load_nifti
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.core import errors
from PancreasDiNTSLib.core.atomic import FOLDER_MANIFEST, LOCK_NAME, atomic_dir
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME, file_digest
from PancreasDiNTSLib.core.request import Region
from PancreasDiNTSLib.inference.batch import SegmentSettings, run_segment
from PancreasDiNTSLib.io.placement import safe_case_name
from PancreasDiNTSLib.model.loader import load_bundle
from PancreasDiNTSLib.synthetic.demo import demo_model_dir
from support import PYTHON
from test_output_safety_property import StubSegmenter, ct_volume

CLI = [PYTHON, "-m", "PancreasDiNTSLib.cli"]
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])

# Runs the CLI with one writer function paused: it prints PAUSED and waits until $GO_FILE exists (or a signal).
PAUSE_DRIVER = """
import faulthandler, importlib, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # exited_within: the stacks of a child that hangs
# Ctrl-C as in a terminal: a test run started as a background job (bash without job control) ignores SIGINT, and
# a child inherits that (Python then installs no KeyboardInterrupt handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
module_name, attr = sys.argv[1], sys.argv[2]
module = importlib.import_module(module_name)
real = getattr(module, attr)
def paused(*args, **kwargs):
    print("PAUSED", flush=True, file=sys.stderr)
    while not os.path.exists(os.environ["GO_FILE"]):
        time.sleep(0.02)
    return real(*args, **kwargs)
setattr(module, attr, paused)
from PancreasDiNTSLib.cli import entry  # as the console script starts
sys.exit(entry(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory, example_ct_sm) -> Path:
    """20x20x20 voxels of real CT (one window at 1 mm: a run takes seconds)."""
    return crop_nifti(example_ct_sm, tmp_path_factory.mktemp("ct") / "tiny.nii.gz",
                      (slice(50, 70), slice(40, 60), slice(5, 25)))


def patient(tiny_ct: Path, dest: Path, flip: bool) -> Path:
    """A CT at ``dest``: the tiny CT, or (flip) another patient's (same grid, other voxels)."""
    data, affine = load_nifti(tiny_ct)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image((data[::-1] if flip else data).copy(), affine), str(dest))
    return dest


def segment_cmd(inputs, out, model, *extra) -> list[str]:
    return ["segment", *map(str, inputs), "-o", str(out), "--model", str(model), "--device", "cpu",
            "--progress", "none", *map(str, extra)]


def seg(capsys, inputs, out, model, *extra) -> tuple[int, str]:
    code = main(segment_cmd(inputs, out, model, *extra))
    return code, capsys.readouterr().err


def paused_child(env: dict, go: Path, where: tuple[str, str], args: list[str]) -> subprocess.Popen:
    """The CLI in a child process that pauses in ``where`` (module, function); returns once it is paused."""
    proc = subprocess.Popen([PYTHON, "-c", PAUSE_DRIVER, *where, *args], env=dict(env, GO_FILE=str(go)),
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen, deadline = "", time.time() + 300
    while "PAUSED" not in seen and time.time() < deadline and proc.poll() is None:
        seen += proc.stderr.readline()
    assert "PAUSED" in seen, seen
    return proc


def exited_within(proc: subprocess.Popen, seconds: float) -> int:
    """``proc``'s exit code; a child still running after ``seconds`` dumps its threads' stacks (SIGUSR1, see
    PAUSE_DRIVER), is killed, and the test fails with what it wrote after PAUSED."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the child did not exit within {seconds:g} s; its stderr and stacks:\n{err[-6000:]}")


def proven(case: Path) -> dict[str, bool]:
    """name -> the manifest's digest proves the file (what the engine may replace)."""
    files = json.loads((case / MANIFEST_NAME).read_text())["files"]
    return {name: (case / name).is_file() and file_digest(case / name) == {k: e.get(k) for k in ("size", "sha256")}
            for name, e in files.items()}


# --------------------------------------------------------------------------- 1: concurrent runs, one OUTDIR


@pytest.mark.subprocess
@pytest.mark.slow
def test_item1_concurrent_runs_into_one_outdir_keep_each_patient(tmp_path, tiny_ct, tiny_bundle, cli_env):
    """A job array where every file is ct.nii.gz: two patients (and one of them twice) at once into one OUTDIR."""
    a = patient(tiny_ct, tmp_path / "A" / "ct.nii.gz", flip=False)
    b = patient(tiny_ct, tmp_path / "B" / "ct.nii.gz", flip=True)
    out = tmp_path / "out"
    env = dict(cli_env, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(CLI + segment_cmd([x], out, tiny_bundle, "--format", "nifti"), env=env,
                              stderr=subprocess.PIPE, text=True) for x in (a, b, a)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    cases = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert cases == ["ct", "ct-2"]  # one folder per patient; the same input twice shares its folder
    for case in cases:
        report = json.loads((out / case / "report.json").read_text())
        manifest = json.loads((out / case / MANIFEST_NAME).read_text())
        assert manifest["input"]["path"] == report["input"] == report["input_identity"]["path"]
        assert all(proven(out / case).values())
    by_input = {json.loads((out / c / "report.json").read_text())["input"]: c for c in cases}
    assert set(by_input) == {str(a), str(b)}
    rows = json.loads((out / "summary.json").read_text())["results"]  # merged under the lock: no row dropped
    assert sorted((r["input"], Path(r["output_dir"]).name) for r in rows) == sorted(
        (i, c) for i, c in by_input.items())
    csv_lines = (out / "measurements.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and {ln.split(",")[0] for ln in csv_lines[1:]} == {"ct", "ct-2"}
    assert not [p for p in out.rglob("*") if ".part" in p.name or ".old" in p.name]


# --------------------------------------------------------------------------- 2: interrupted runs


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_item2_interrupted_run_outputs_are_proven_by_digest(tmp_path, tiny_ct, tiny_bundle, cli_env, capsys, sig):
    """Ctrl-C or kill -9 after labels.nii.gz is in place (the child is paused writing segmentation.seg.nrrd):
    every file in the case folder is proven ours by its digest; the user's correction of labels.nii.gz and the
    user's own file under a name the killed run had planned survive a rerun, with and without --overwrite."""
    ct = patient(tiny_ct, tmp_path / "in" / "ct.nii.gz", flip=False)
    out = tmp_path / "out"
    proc = paused_child(cli_env, tmp_path / "never", ("slicerio", "write_segmentation"),
                        segment_cmd([ct], out, tiny_bundle, "--format", "nifti,seg.nrrd"))
    proc.send_signal(sig)
    assert exited_within(proc, 60) == (errors.EXIT_INTERRUPTED if sig == signal.SIGINT else -signal.SIGKILL)
    case = out / "ct"
    manifest = json.loads((case / MANIFEST_NAME).read_text())
    assert not any(e.get("pending") for e in manifest["files"].values())
    assert proven(case) == {"labels.nii.gz": True}  # the written output is proven; nothing else is listed
    visible = sorted(p.name for p in case.iterdir() if not p.name.startswith("."))
    assert visible == ["labels.nii.gz"]
    if sig == signal.SIGINT:
        assert not [p for p in case.iterdir() if ".part" in p.name]
    (case / "labels.nii.gz").write_bytes(b"corrected by the radiologist")
    (case / "segmentation.seg.nrrd").write_bytes(b"the user's own segmentation")
    for extra in ((), ("--overwrite",)):
        code, err = seg(capsys, [ct], out, tiny_bundle, "--format", "nifti,seg.nrrd", *extra)
        assert code == errors.EXIT_CASE_FAILED and "not written by pancreas-dints" in err, err
        assert (case / "labels.nii.gz").read_bytes() == b"corrected by the radiologist"
        assert (case / "segmentation.seg.nrrd").read_bytes() == b"the user's own segmentation"


def test_item2_manifest_states_a_kill_can_leave(tmp_path):
    """What a kill between two steps of a write leaves is decided by digests: a replace under way proves the old
    and the new bytes (nothing else) and is never 'done'; an older engine's 'pending' proves nothing."""
    from PancreasDiNTSLib.core.ownership import SCHEMA, CaseFolder

    case = tmp_path / "ct"
    case.mkdir()
    (case / "labels.nii.gz").write_bytes(b"old labels")
    (case / "report.pdf").write_bytes(b"the user's pdf")
    (tmp_path / "new").write_bytes(b"new labels")
    old, new = file_digest(case / "labels.nii.gz"), file_digest(tmp_path / "new")
    manifest = {"schema": SCHEMA, "case": "ct", "input": None,
                "files": {"labels.nii.gz": dict(new, replacing=old), "report.pdf": {"pending": True}}}
    (case / MANIFEST_NAME).write_text(json.dumps(manifest))
    folder = CaseFolder(case)
    assert folder.owns("labels.nii.gz") and not folder.has(["labels.nii.gz"])  # killed before the rename
    (tmp_path / "new").replace(case / "labels.nii.gz")
    assert folder.owns("labels.nii.gz")  # killed after the rename, before the manifest's last save
    (case / "labels.nii.gz").write_bytes(b"corrected")
    assert not folder.owns("labels.nii.gz") and not folder.owns("report.pdf")
    assert folder.conflicts(["labels.nii.gz", "report.pdf", "segmentation.seg.nrrd"]) == ["labels.nii.gz",
                                                                                           "report.pdf"]


# --------------------------------------------------------------------------- 3: edits during a rerun


@pytest.mark.subprocess
@pytest.mark.slow
def test_item3_edits_during_a_rerun_are_kept(tmp_path, tiny_ct, tiny_bundle, cli_env, capsys):
    """A rerun with --overwrite (as the Slicer module passes) is paused after its ownership check, right before
    writing labels.nii.gz; meanwhile the user saves a corrected labels.nii.gz and drops a report.pdf. Both are
    kept, each of those outputs fails with a line, the other outputs are written."""
    ct = patient(tiny_ct, tmp_path / "in" / "ct.nii.gz", flip=False)
    out = tmp_path / "out"
    assert seg(capsys, [ct], out, tiny_bundle, "--format", "nifti,seg.nrrd")[0] == 0
    case = out / "ct"
    go = tmp_path / "go"
    proc = paused_child(cli_env, go, ("nibabel", "save"),
                        segment_cmd([ct], out, tiny_bundle, "--format", "nifti,seg.nrrd,report-pdf", "--overwrite"))
    (case / "labels.nii.gz").write_bytes(b"corrected while the rerun inferred")
    (case / "report.pdf").write_bytes(b"%PDF the user's own report")
    go.touch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == errors.EXIT_CASE_FAILED, err
    assert "labels.nii.gz" in err and "report.pdf" in err and "Traceback" not in err
    assert (case / "labels.nii.gz").read_bytes() == b"corrected while the rerun inferred"
    assert (case / "report.pdf").read_bytes() == b"%PDF the user's own report"
    report = json.loads((case / "report.json").read_text())
    assert set(report["outputs_failed"]) == {"nifti", "report-pdf"}
    assert proven(case) == {"segmentation.seg.nrrd": True, "report.json": True}
    assert not [p for p in case.iterdir() if ".part" in p.name]


# --------------------------------------------------------------------------- 4 and 8: demo / make-phantoms -o


def test_item4_item8_demo_and_make_phantoms_output_folders(tmp_path, capsys, monkeypatch):
    """-o . is refused before any work (not after it); a folder a user made inside an earlier output is kept;
    -o afile/sub is one line, no traceback."""
    empty = tmp_path / "here"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for cmd in (["demo", "-o", ".", "--device", "cpu", "--progress", "none"],
                ["make-phantoms", "-o", ".", "-n", "1", "--size", "tiny", "--progress", "none"]):
        t0 = time.perf_counter()
        code = main(cmd)
        err = capsys.readouterr().err
        assert code == errors.EXIT_OUTPUT and "current folder" in err and len(err.strip().splitlines()) == 1, err
        assert time.perf_counter() - t0 < 5 and list(empty.iterdir()) == []  # before any work, nothing made
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a user's file")
    for cmd in (["demo", "-o", "afile/sub", "--progress", "none"],
                ["make-phantoms", "-o", "afile/sub", "-n", "1", "--size", "tiny", "--progress", "none"]):
        code = main(cmd)
        err = capsys.readouterr().err
        assert code == errors.EXIT_OUTPUT and "afile" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and (tmp_path / "afile").read_text() == "a user's file"
    data = tmp_path / "data"
    assert main(["make-phantoms", "-o", str(data), "-n", "1", "--num-test", "0", "--size", "tiny",
                 "--progress", "none"]) == 0
    (data / "my_empty_folder").mkdir()
    code = main(["make-phantoms", "-o", str(data), "-n", "1", "--num-test", "0", "--size", "tiny", "--overwrite",
                 "--progress", "none"])
    err = capsys.readouterr().err
    assert code == errors.EXIT_OUTPUT and "my_empty_folder/" in err and (data / "my_empty_folder").is_dir()
    demo = tmp_path / "demo"  # an earlier demo output (what run_demo leaves: report.json with "demo": true)
    with atomic_dir(demo) as tmp:
        (tmp / "report.json").write_text(json.dumps({"demo": True}))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.txt").write_text("the demo's")
    (demo / "mine").mkdir()
    code = main(["demo", "-o", str(demo), "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == errors.EXIT_OUTPUT and "mine/" in err and (demo / "mine").is_dir(), err


# --------------------------------------------------------------------------- 12: case and non-ASCII names


def test_item12_names_differing_in_case_are_found_again_and_letters_are_kept(tmp_path):
    stub = StubSegmenter()
    inputs = []
    for k, name in enumerate(["Ct", "ct", "CT"]):
        path = tmp_path / f"d{k}" / f"{name}.nii.gz"
        path.parent.mkdir()
        nib.save(nib.Nifti1Image(ct_volume(k), AFFINE), str(path))
        inputs.append(str(path))
    latin1 = os.path.join(os.fsencode(tmp_path / "d3"), "Ünïcödé.nii.gz".encode("latin-1"))
    os.mkdir(os.path.dirname(latin1))
    nib.save(nib.Nifti1Image(ct_volume(3), AFFINE), latin1.decode("utf-8", "surrogateescape"))
    inputs.append(os.fsdecode(latin1))
    out = tmp_path / "out"

    def run() -> list[tuple[str, str]]:
        summary = run_segment(SegmentSettings(tuple(inputs), out, "stub", formats=("nifti",), progress="none",
                                              region=Region("whole")),
                              segmenter=stub)  # type: ignore[arg-type]
        return [(r.status, r.case) for r in summary.results]

    assert run() == [("ok", "Ct"), ("ok", "ct-2"), ("ok", "CT-3"), ("ok", "Ünïcödé")]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert run() == [("skipped", "Ct"), ("skipped", "ct-2"), ("skipped", "CT-3"), ("skipped", "Ünïcödé")]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == folders  # no new folder on a rerun
    assert safe_case_name("Ünïcödé", encoding="ascii") == "Unicode"  # a file system that cannot hold them
    assert safe_case_name("Ünïcödé") == "Ünïcödé"


# --------------------------------------------------------------------------- 13: concurrent installs


ATOMIC_DIR_WORKER = """
import sys
from pathlib import Path
from PancreasDiNTSLib.core.atomic import atomic_dir
dest, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
errors = 0
for i in range(n):
    try:
        with atomic_dir(dest) as tmp:
            (tmp / "who.txt").write_text(f"{me} {i}")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "data.bin").write_bytes(bytes(range(256)) * 16)
    except Exception as exc:
        errors += 1
        print(type(exc).__name__, exc, file=sys.stderr)
print(errors)
"""


@pytest.mark.subprocess
def test_item13_atomic_dir_under_300_concurrent_iterations(tmp_path, cli_env):
    dest = tmp_path / "out"
    procs = [subprocess.Popen([PYTHON, "-c", ATOMIC_DIR_WORKER, str(dest), f"p{k}", "75"], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [int(o.strip()) for o, _ in outs] == [0, 0, 0, 0], [e for _, e in outs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_NAME, "out"])  # no .old / .part left
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [FOLDER_MANIFEST, "sub",
                                                                               "sub/data.bin", "who.txt"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_item13_concurrent_download_from_the_demo_model_folder(tmp_path, cli_env):
    """Four `download --from <the packaged demo model>` at once: each installs it as a local model, one after
    the other; nothing hidden is left behind and the installed model loads."""
    cache = tmp_path / "cache"
    cmd = CLI + ["download", "--from", str(demo_model_dir()), "--dest", str(cache)]
    procs = [subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "as a local model named 'demo'" in out + err
    assert sorted(p.name for p in cache.iterdir()) == ["local"]
    assert sorted(p.name for p in (cache / "local").iterdir()) == [LOCK_NAME, "demo"]
    assert load_bundle(cache / "local" / "demo").name == load_bundle(demo_model_dir()).name
