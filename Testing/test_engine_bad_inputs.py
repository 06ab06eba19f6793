"""Bad input -> one clear line naming the file, a documented exit code, no partial output; inputs untouched."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from image_files import crop_nifti
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.core import errors
from PancreasDiNTSLib.inference.segmenter import with_oom_fallback
from PancreasDiNTSLib.model.loader import load_bundle
from support import PYTHON


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory, example_ct_sm) -> Path:
    """20x20x20 voxels of real CT (one 96^3 window at 1 mm)."""
    return crop_nifti(example_ct_sm, tmp_path_factory.mktemp("ct") / "tiny.nii.gz",
                      (slice(50, 70), slice(40, 60), slice(5, 25)))


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def segment_args(inputs, out, model, *extra):
    return ["segment", *inputs, "-o", out, "--model", model, "--device", "cpu", "--progress", "none", *extra]


def make_bad(kind: str, folder: Path, tiny_ct: Path) -> Path:
    data = np.asarray(nib.load(str(tiny_ct)).dataobj).astype(np.int16)
    affine = nib.load(str(tiny_ct)).affine
    path = folder / f"{kind}.nii.gz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(tiny_ct.read_bytes()[:3000])
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "text_gz":
        path.write_bytes(gzip.compress(b"hello, not a NIfTI header at all" * 20))
    elif kind == "2d":
        nib.save(nib.Nifti1Image(data[:, :, 0], affine), str(path))
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.stack([data] * 3, axis=-1), affine), str(path))
    elif kind == "not_ct":
        scaled = ((data - data.min()) / (data.max() - data.min()) * 255).astype(np.uint8)
        nib.save(nib.Nifti1Image(scaled, affine), str(path))
    elif kind == "nan":
        f = data.astype(np.float32)
        f[3, 4, 5] = np.nan
        nib.save(nib.Nifti1Image(f, affine), str(path))
    elif kind == "constant":
        nib.save(nib.Nifti1Image(np.full(data.shape, -1000, np.int16), affine), str(path))
    elif kind == "unsupported":
        path = folder / "image.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
    return path


BAD = {
    "missing": "no such file",
    "empty": "empty file",
    "truncated": "cannot be read as NIfTI",
    "text": "not gzip-compressed",
    "text_gz": "cannot be read as NIfTI",
    "2d": "3D",
    "4d": "not 2D or 4D",
    "not_ct": "does not look like a CT",
    "nan": "NaN",
    "constant": "empty",
    "unsupported": "unsupported file type",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_image_one_line_no_output(kind, tmp_path, tiny_ct, tiny_bundle, capsys):
    bad = tmp_path / "missing.nii.gz" if kind == "missing" else make_bad(kind, tmp_path, tiny_ct)
    before = bad.read_bytes() if bad.exists() else None
    out = tmp_path / "out"
    code, err = run_cli(segment_args([bad], out, tiny_bundle), capsys)
    assert code == errors.EXIT_CASE_FAILED
    failed = [line for line in err.splitlines() if line.strip().startswith("failed")]
    assert len(failed) == 1 and BAD[kind] in failed[0], err
    assert str(bad) in failed[0] or bad.name in failed[0]
    assert "Traceback" not in err
    assert not (out / bad.name.split(".")[0]).exists(), "no partial output for a failed case"
    if before is not None:
        assert bad.read_bytes() == before


def test_non_ct_can_be_forced(tmp_path, tiny_ct, tiny_bundle, capsys):
    bad = make_bad("not_ct", tmp_path, tiny_ct)
    code, err = run_cli(segment_args([bad], tmp_path / "out", tiny_bundle, "--allow-non-ct", "--format", "nifti"),
                        capsys)
    assert code == 0, err
    assert "warning" in err and "does not look like a CT" in err
    assert (tmp_path / "out" / "not_ct" / "labels.nii.gz").exists()


def test_bad_case_does_not_stop_the_others(tmp_path, tiny_ct, tiny_bundle, capsys):
    bad = make_bad("nan", tmp_path, tiny_ct)
    out = tmp_path / "out"
    code, err = run_cli(segment_args([bad, tiny_ct, tmp_path / "nothere.nrrd"], out, tiny_bundle, "--format", "nifti"),
                        capsys)
    assert code == errors.EXIT_CASE_FAILED
    assert (out / "tiny" / "labels.nii.gz").exists()
    assert "1 succeeded, 0 skipped, 2 failed" in err
    summary = (out / "summary.json").read_text()
    assert '"failed": 2' in summary


def copy_bundle(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_model_without_weights(tmp_path, tiny_ct, tiny_bundle, capsys):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    (b / "models" / "model.pt").unlink()
    out = tmp_path / "out"
    code, err = run_cli(segment_args([tiny_ct], out, b), capsys)
    assert code == errors.EXIT_MODEL and "missing model weights" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_model_folder_missing_or_not_a_bundle(tmp_path, tiny_ct, capsys):
    code, err = run_cli(segment_args([tiny_ct], tmp_path / "o", tmp_path / "nope"), capsys)
    assert code == errors.EXIT_MODEL and "model folder not found" in err
    (tmp_path / "empty").mkdir()
    code, err = run_cli(segment_args([tiny_ct], tmp_path / "o", tmp_path / "empty"), capsys)
    assert code == errors.EXIT_MODEL and "no configs/inference.yaml" in err


@pytest.mark.slow
def test_mismatched_arch_and_weights(tmp_path, tiny_ct, tiny_bundle, reference_bundle, capsys):
    from PancreasDiNTSLib.model.random_bundle import make_random_bundle

    # another architecture: every path active (no random topology to decode: MONAI's decode takes ~10 s)
    other = make_random_bundle(reference_bundle, tmp_path / "other", channel_mul=0.0625, num_blocks=4, seed=11,
                               topology="dense")
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    shutil.copy(other / "models" / "search_code_18590.pt", b / "models" / "search_code_18590.pt")
    code, err = run_cli(segment_args([tiny_ct], tmp_path / "out", b), capsys)
    assert code == errors.EXIT_MODEL and "do not match the architecture" in err


def test_wrong_width_in_config(tmp_path, tiny_ct, tiny_bundle, capsys):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    cfg = yaml.safe_load((b / "configs" / "inference.yaml").read_text())
    cfg["dints_space"]["channel_mul"] = 0.25
    (b / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg))
    code, err = run_cli(segment_args([tiny_ct], tmp_path / "out", b), capsys)
    assert code == errors.EXIT_MODEL and "do not match" in err


def test_cuda_requested_without_gpu(tmp_path, tiny_ct, tiny_bundle, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, err = run_cli(["segment", tiny_ct, "-o", tmp_path / "o", "--model", tiny_bundle, "--device", "cuda"], capsys)
    assert code == errors.EXIT_DEVICE and "no CUDA GPU" in err and "--device cpu" in err


def test_output_not_writable(tmp_path, tiny_ct, tiny_bundle, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(segment_args([tiny_ct], blocker / "out", tiny_bundle), capsys)
    assert code == errors.EXIT_OUTPUT and "not writable" in err


def test_unknown_format_is_a_usage_error(tmp_path, tiny_ct, tiny_bundle, capsys):
    code, err = run_cli(segment_args([tiny_ct], tmp_path / "o", tiny_bundle, "--format", "png"), capsys)
    assert code == errors.EXIT_USAGE and "unknown output format" in err


def test_gpu_out_of_memory_policy():
    """Halve the window batch, then stitch on the CPU, then tell the user to use the CPU."""
    calls = []

    def fits_at_one(sw_batch, stitch):
        calls.append((sw_batch, stitch))
        if sw_batch > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "ok"

    assert with_oom_fallback(fits_at_one, 8) == ("ok", 1)
    assert calls == [(8, None), (4, None), (2, None), (1, None)]

    def never(sw_batch, stitch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(errors.DeviceError, match="use --device cpu"):
        with_oom_fallback(never, 2)

    def other_error(sw_batch, stitch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        with_oom_fallback(other_error, 2)


@pytest.mark.slow
def test_cli_subprocess_prints_one_line_without_traceback(tmp_path, tiny_bundle, cli_env):
    bad = tmp_path / "ct.nii.gz"
    bad.write_text("not an image")
    proc = subprocess.run([PYTHON, "-m", "PancreasDiNTSLib.cli", "segment", str(bad), "-o", str(tmp_path / "o"),
                           "--model", str(tiny_bundle), "--device", "cpu", "--progress", "none"],
                          capture_output=True, text=True, env=cli_env, timeout=300)
    assert proc.returncode == errors.EXIT_CASE_FAILED
    lines = [ln for ln in proc.stderr.splitlines() if "ct.nii.gz" in ln]
    assert len(lines) == 1 and "not gzip-compressed" in lines[0]
    assert "Traceback" not in proc.stderr


def test_no_input_given_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "-o", "x", "--model", "y"])
    assert exc.value.code == errors.EXIT_USAGE


def test_loading_does_not_touch_the_model_folder(tiny_bundle):
    before = {p: p.stat().st_mtime_ns for p in Path(tiny_bundle).rglob("*")}
    load_bundle(tiny_bundle).build_network("cpu")
    assert {p: p.stat().st_mtime_ns for p in Path(tiny_bundle).rglob("*")} == before
