"""Issue 11's data-safety observations, one test each, on generated data with the tiny random-weight bundle:
output placement, ownership of case folders, input identity, partial success, and one-line failures
(disk full, special files, SIGTERM, bad option values, control characters in names)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from image_files import crop_nifti, load_nifti, write_dicom_series
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.core import errors
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME
from PancreasDiNTSLib.io.placement import safe_case_name
from support import PYTHON


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory, example_ct_sm) -> Path:
    """20x20x20 voxels of real CT (one 96^3 window at 1 mm: a run takes seconds)."""
    return crop_nifti(example_ct_sm, tmp_path_factory.mktemp("ct") / "tiny.nii.gz",
                      (slice(50, 70), slice(40, 60), slice(5, 25)))


def other_ct(tiny_ct: Path, dest: Path) -> Path:
    """Another patient's CT: the same grid, other voxels."""
    data, affine = load_nifti(tiny_ct)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data[::-1].copy(), affine), str(dest))
    return dest


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """relative path -> sha256 (or 'dir'/'link') of everything under ``root`` outside ``skip``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        rel = str(p.relative_to(root))
        out[rel] = "link" if p.is_symlink() else "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def seg(capsys, inputs, out, model, *extra) -> tuple[int, str]:
    code = main(["segment", *map(str, inputs), "-o", str(out), "--model", str(model), "--device", "cpu",
                 "--progress", "none", *map(str, extra)])
    return code, without_notices(capsys.readouterr().err)


def without_notices(err: str) -> str:
    """stderr without MONAI's DiNTS construction notice (model/network.py sends it to stderr, not a failure)."""
    return "".join(ln for ln in err.splitlines(keepends=True) if "Length of input patch is recommended" not in ln)


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "error:" in ln or ln.strip().startswith("failed")]


# --------------------------------------------------------------------------- 1: the case folder is the input


def test_obs1_case_folder_equal_to_the_input_dicom_folder_is_refused(tmp_path, tiny_ct, tiny_bundle, capsys):
    data, affine = load_nifti(tiny_ct)
    patient = tmp_path / "P"
    series = write_dicom_series(data, affine, patient / "series1")
    before = snapshot(patient)
    code, err = seg(capsys, [series], patient, tiny_bundle, "--format", "nifti,dicom-seg")
    assert code == errors.EXIT_USAGE, err
    assert len(err.strip().splitlines()) == 1 and "input" in err and "-o" in err
    assert snapshot(patient) == before  # every .dcm file still there, byte-identical, nothing added


def test_outdir_inside_an_input_folder_is_refused(tmp_path, tiny_ct, tiny_bundle, capsys):
    data, affine = load_nifti(tiny_ct)
    series = write_dicom_series(data, affine, tmp_path / "series")
    before = snapshot(tmp_path)
    code, err = seg(capsys, [series], series / "results", tiny_bundle)
    assert code == errors.EXIT_USAGE and "inside the input folder" in err
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- 2: "." and dot names


@pytest.mark.slow
def test_obs2_dot_input_is_named_after_the_folder(tmp_path, tiny_ct, tiny_bundle, capsys, monkeypatch):
    data, affine = load_nifti(tiny_ct)
    series = write_dicom_series(data, affine, tmp_path / "work" / "abdomen_ct")
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes.txt").write_text("my notes")
    outside = snapshot(tmp_path, skip=results)
    monkeypatch.chdir(series)
    code, err = seg(capsys, ["."], results, tiny_bundle, "--format", "nifti")
    assert code == 0, err
    assert (results / "abdomen_ct" / "labels.nii.gz").is_file()
    assert (results / "notes.txt").read_text() == "my notes"
    assert snapshot(tmp_path, skip=results) == outside  # no temporary or .old folder next to OUTDIR


@pytest.mark.slow
def test_obs2_files_named_dot_dot(tmp_path, tiny_ct, tiny_bundle, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "..nii.gz").write_bytes(tiny_ct.read_bytes())
    other_ct(tiny_ct, folder / "...nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    outside = snapshot(tmp_path, skip=out)
    code, err = seg(capsys, [folder], out, tiny_bundle, "--format", "nifti")
    assert code == 0, err
    assert "Errno" not in err
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["case", "case-2"]
    inputs = {json.loads((out / f / "report.json").read_text())["input"] for f in folders}
    assert inputs == {str(folder / "..nii.gz"), str(folder / "...nii.gz")}
    assert (out / "notes.txt").read_text() == "keep"
    assert snapshot(tmp_path, skip=out) == outside


def test_safe_case_names():
    assert safe_case_name("") == "case" and safe_case_name(".") == "case" and safe_case_name("..") == "case"
    assert safe_case_name(".hidden") == "hidden"
    assert safe_case_name("CON") == "_CON" and safe_case_name("nul.txt") == "_nul.txt"
    assert safe_case_name("a\nb\x00c\u202e") == "a_b_c_"
    assert safe_case_name('x<>:"/\\|?*y') == "x_________y"
    assert safe_case_name("trailing. ") == "trailing"
    long = safe_case_name("é" * 200)
    assert len(long.encode()) <= 96 and long == "é" * 48


# --------------------------------------------------------------------------- 3: user files in a case folder


@pytest.mark.slow
def test_obs3_rerun_keeps_user_files_and_refuses_edited_outputs(tmp_path, tiny_ct, tiny_bundle, capsys):
    out = tmp_path / "out"
    assert seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti")[0] == 0
    case = out / "tiny"
    (case / "labels_corrected.nii.gz").write_bytes(b"my manual correction")
    # one more format, no --overwrite: the case is redone in place, the user's file stays
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd")
    assert code == 0, err
    assert (case / "segmentation.seg.nrrd").is_file()
    assert (case / "labels_corrected.nii.gz").read_bytes() == b"my manual correction"
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti", "--overwrite")
    assert code == 0, err
    assert (case / "labels_corrected.nii.gz").read_bytes() == b"my manual correction"
    assert not (case / "segmentation.seg.nrrd").exists()  # the engine's own stale output, not asked for
    manifest = json.loads((case / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {"labels.nii.gz", "report.json"}
    # an engine output the user edited is never replaced: the case fails before inference, one line
    (case / "labels.nii.gz").write_bytes(b"edited by hand")
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti", "--overwrite")
    assert code == errors.EXIT_CASE_FAILED and "not written by pancreas-dints" in err
    assert (case / "labels.nii.gz").read_bytes() == b"edited by hand"
    assert not [p for p in out.rglob("*") if ".part" in p.name]


# --------------------------------------------------------------------------- 4: identity


@pytest.mark.slow
def test_obs4_same_stem_other_patient_gets_its_own_folder(tmp_path, tiny_ct, tiny_bundle, capsys):
    a = tmp_path / "A" / "ct.nii.gz"
    a.parent.mkdir()
    a.write_bytes(tiny_ct.read_bytes())
    b = other_ct(tiny_ct, tmp_path / "B" / "ct.nii.gz")
    out = tmp_path / "out"
    assert seg(capsys, [a], out, tiny_bundle, "--format", "nifti")[0] == 0
    code, err = seg(capsys, [b], out, tiny_bundle, "--format", "nifti")
    assert code == 0 and not re.search(r"^\s*skipped", err, re.M), err
    summary = json.loads((out / "summary.json").read_text())  # OUTDIR's table: earlier rows are kept
    assert [r["input"] for r in summary["results"]] == [str(a), str(b)]
    res = summary["results"][1]
    assert res["status"] == "ok" and res["output_dir"] == str(out / "ct-2")
    assert json.loads((out / "ct-2" / "report.json").read_text())["input"] == str(b)
    assert json.loads((out / "ct" / "report.json").read_text())["input"] == str(a)
    # both again in one call: each is skipped into its own folder
    code, err = seg(capsys, [a, b], out, tiny_bundle, "--format", "nifti")
    results = json.loads((out / "summary.json").read_text())["results"]
    assert [(r["status"], Path(r["output_dir"]).name, r["input"]) for r in results] == [
        ("skipped", "ct", str(a)), ("skipped", "ct-2", str(b))]
    # a changed file at the same path is another input: never skipped into the old results
    b.write_bytes(a.read_bytes())
    code, err = seg(capsys, [b], out, tiny_bundle, "--format", "nifti")
    res = json.loads((out / "summary.json").read_text())["results"][-1]
    assert code == 0 and res["status"] == "ok" and Path(res["output_dir"]).name == "ct-3"


@pytest.mark.slow
def test_obs4_same_stem_within_one_call(tmp_path, tiny_ct, tiny_bundle, capsys):
    a = tmp_path / "A" / "ct.nii.gz"
    a.parent.mkdir()
    a.write_bytes(tiny_ct.read_bytes())
    b = other_ct(tiny_ct, tmp_path / "B" / "CT.nii.gz")  # another case on a case-insensitive file system too
    out = tmp_path / "out"
    code, err = seg(capsys, [a, b], out, tiny_bundle, "--format", "nifti")
    assert code == 0, err
    results = json.loads((out / "summary.json").read_text())["results"]
    assert [(r["case"], r["input"]) for r in results] == [("ct", str(a)), ("CT-2", str(b))]
    la = np.asarray(nib.load(out / "ct" / "labels.nii.gz").dataobj)
    lb = np.asarray(nib.load(out / "CT-2" / "labels.nii.gz").dataobj)
    assert la.shape == lb.shape


# --------------------------------------------------------------------------- partial success


@pytest.mark.slow
def test_failing_output_keeps_the_others(tmp_path, tiny_ct, tiny_bundle, capsys, monkeypatch):
    from PancreasDiNTSLib.io import writers

    def broken(*args, **kwargs):
        raise ValueError("slicerio refused the segment table")

    monkeypatch.setattr(writers, "write_seg_nrrd", broken)
    out = tmp_path / "out"
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd")
    assert code == errors.EXIT_CASE_FAILED
    (line,) = [ln for ln in err.splitlines() if ln.strip().startswith("failed")]
    assert "seg.nrrd not written: slicerio refused" in line and "kept" in line
    assert (out / "tiny" / "labels.nii.gz").is_file() and not (out / "tiny" / "segmentation.seg.nrrd").exists()
    report = json.loads((out / "tiny" / "report.json").read_text())
    assert report["status"] == "failed" and "slicerio refused" in report["outputs_failed"]["seg.nrrd"]
    assert report["outputs"] == ["labels.nii.gz", "report.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"][0]["failed_outputs"]["seg.nrrd"]
    assert not [p for p in out.rglob("*") if ".part" in p.name]


def test_output_preconditions_are_checked_before_inference(tmp_path, tiny_ct, tiny_bundle, capsys, monkeypatch):
    """The DICOM SEG check (io's check_dicom_seg_preconditions hook) and the free-space estimate run right
    after reading: a case that can write nothing fails before the network runs."""
    from PancreasDiNTSLib.inference import pipeline, segmenter
    from PancreasDiNTSLib.io import writers

    data, affine = load_nifti(tiny_ct)
    series = write_dicom_series(data, affine, tmp_path / "series")
    calls = []
    monkeypatch.setattr(segmenter.Segmenter, "infer", lambda self, *a, **k: calls.append(1) or 1 / 0)

    def refuse(case, *args):  # (case, model name, model version)
        raise ValueError("StudyInstanceUID is empty")

    monkeypatch.setattr(writers, "check_dicom_seg_preconditions", refuse, raising=False)
    code, err = seg(capsys, [series], tmp_path / "o1", tiny_bundle, "--format", "dicom-seg")
    assert code == errors.EXIT_CASE_FAILED and "StudyInstanceUID is empty" in err and not calls
    assert not (tmp_path / "o1" / "series").exists()

    monkeypatch.setattr(pipeline, "free_bytes", lambda folder: 1000)
    code, err = seg(capsys, [tiny_ct], tmp_path / "o2", tiny_bundle, "--format", "nifti")
    assert code == errors.EXIT_OUTPUT and "MiB free" in err and not calls
    assert len(error_lines(err)) == 1


# --------------------------------------------------------------------------- disk full


def test_disk_full_while_writing_an_output_is_exit_5(tmp_path, tiny_ct, tiny_bundle, capsys, monkeypatch):
    import slicerio

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(slicerio, "write_segmentation", full)
    out = tmp_path / "out"
    second = other_ct(tiny_ct, tmp_path / "second.nii.gz")
    code, err = seg(capsys, [tiny_ct, second], out, tiny_bundle)
    assert code == errors.EXIT_OUTPUT
    assert len(err.strip().splitlines()) == 1 and "no space left on device" in err and "Traceback" not in err
    assert not [p for p in out.rglob("*") if ".part" in p.name]
    assert not (out / "second").exists()  # the run stopped at the full disk
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"][0]["status"] == "failed"


@pytest.mark.slow
def test_disk_full_while_writing_the_summary_is_exit_5(tmp_path, tiny_ct, tiny_bundle, capsys, monkeypatch):
    write_text = Path.write_text

    def full_for_summary(self, *args, **kwargs):
        if ".summary.json." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_summary)
    code, err = seg(capsys, [tiny_ct], tmp_path / "out", tiny_bundle, "--format", "nifti")
    assert code == errors.EXIT_OUTPUT and "summary.json" in err and len(err.strip().splitlines()) == 1
    assert not [p for p in (tmp_path / "out").rglob("*") if ".part" in p.name]


@pytest.mark.slow
def test_real_file_size_limit_is_exit_5(tmp_path, tiny_ct, tiny_bundle, cli_env):
    """A real write failure from the kernel (RLIMIT_FSIZE -> EFBIG) in a real subprocess."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    out = tmp_path / "out"
    proc = subprocess.run([PYTHON, "-m", "PancreasDiNTSLib.cli", "segment", str(tiny_ct), "-o", str(out), "--model",
                           str(tiny_bundle), "--device", "cpu", "--progress", "none"], env=cli_env,
                          capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert proc.returncode == errors.EXIT_OUTPUT, proc.stderr[-2000:]
    assert len(without_notices(proc.stderr).strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not [p for p in out.rglob("*") if ".part" in p.name]


@pytest.mark.slow
def test_real_full_tmpfs_is_exit_5(tmp_path, tiny_ct, tiny_bundle, cli_env):
    """A really full file system (a 64 KiB tmpfs; needs root, skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (mnt / "filler").write_bytes(b"x" * 40_000)
        proc = subprocess.run([PYTHON, "-m", "PancreasDiNTSLib.cli", "segment", str(tiny_ct), "-o", str(mnt / "out"),
                               "--model", str(tiny_bundle), "--device", "cpu", "--progress", "none"], env=cli_env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == errors.EXIT_OUTPUT, proc.stderr[-2000:]
        assert len(without_notices(proc.stderr).strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not [p for p in mnt.rglob("*") if ".part" in p.name]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- special files, signals, options


@pytest.mark.slow
def test_fifo_and_device_inputs_are_refused_without_reading(tmp_path, tiny_bundle, cli_env):
    fifo = tmp_path / "ct.nii.gz"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    proc = subprocess.run([PYTHON, "-m", "PancreasDiNTSLib.cli", "segment", str(fifo), "/dev/null", "-o",
                           str(tmp_path / "out"), "--model", str(tiny_bundle), "--device", "cpu", "--progress", "none"],
                          env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == errors.EXIT_CASE_FAILED, proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if ln.strip().startswith("failed")]
    assert len(failed) == 2 and "FIFO" in failed[0] and "device" in failed[1]
    assert time.perf_counter() - t0 < 240


SIGTERM_DRIVER = """
import sys, time
import nibabel
real_save = nibabel.save
def slow_save(img, path, *a, **k):
    real_save(img, path, *a, **k)
    print("WRITING", path, file=sys.stderr, flush=True)
    time.sleep(60)
nibabel.save = slow_save
from PancreasDiNTSLib.cli import entry  # as the console script starts
sys.exit(entry(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path, tiny_ct, tiny_bundle, cli_env):
    out = tmp_path / "out"
    proc = subprocess.Popen([PYTHON, "-c", SIGTERM_DRIVER, "segment", str(tiny_ct), "-o", str(out), "--model",
                             str(tiny_bundle), "--device", "cpu", "--progress", "none", "--format", "nifti"],
                            env=cli_env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = ""
    deadline = time.time() + 300
    while "WRITING" not in seen and time.time() < deadline:
        seen += proc.stderr.readline()
    assert "WRITING" in seen and ".part" in seen  # stopped while the output's temporary file exists
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == errors.EXIT_INTERRUPTED
    assert "terminated (SIGTERM)" in rest and "Traceback" not in rest
    assert not [p for p in out.rglob("*") if ".part" in p.name]
    assert not (out / "tiny" / "labels.nii.gz").exists()


@pytest.mark.parametrize("extra", [("--sw-batch-size", "0"), ("--sw-batch-size", "-3"), ("--sw-batch-size", "x"),
                                   ("--roi", "nan,0,0,10,10,10"), ("--roi", "0,0,0,inf,1,1"), ("--roi", "1,2,3"),
                                   ("--format", "png")])
def test_invalid_option_values_are_usage_errors(tmp_path, tiny_ct, tiny_bundle, capsys, extra):
    try:
        code, err = seg(capsys, [tiny_ct], tmp_path / "out", tiny_bundle, *extra)
    except SystemExit as exc:  # argparse
        code, err = exc.code, capsys.readouterr().err
    assert code == errors.EXIT_USAGE, err
    assert "Traceback" not in err and "unexpected" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_control_characters_in_names_cannot_forge_lines(tmp_path, tiny_ct, tiny_bundle, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    evil = folder / "x\n     ok  fake: Pancreas 999.0 mL\r.nii.gz"
    evil.write_text("not an image")
    good = folder / "good\x1b[31m.nii.gz"
    good.write_bytes(tiny_ct.read_bytes())
    out = tmp_path / "out"
    code, err = seg(capsys, [evil, good], out, tiny_bundle, "--format", "nifti")
    assert code == errors.EXIT_CASE_FAILED
    assert not re.search(r"^\s*ok\s+fake", err, re.M) and "999.0 mL" in err  # the text is there, escaped
    assert "\x1b" not in err and "\r" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3, lines  # failed, ok, totals
    assert "\\x0a" in lines[0]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["good_[31m"]
    events = []
    code = main(["segment", str(evil), "-o", str(tmp_path / "o2"), "--model", str(tiny_bundle), "--device", "cpu",
                 "--progress", "json"])
    for line in capsys.readouterr().out.splitlines():
        events.append(json.loads(line))  # every progress line is one JSON object
    assert events[-1]["stage"] == "summary"

