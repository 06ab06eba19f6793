"""benchmark (the driver's pieces), fast: mode parsing, the bundle's overrides, label agreement, the CLI's
settings (the timed runs themselves: Testing/test_fastpath_benchmark.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PancreasDiNTSLib.benchmark import compare
from PancreasDiNTSLib.benchmark.settings import BenchmarkSettings
from PancreasDiNTSLib.cli import benchmark as cli_benchmark
from PancreasDiNTSLib.core.errors import InputError


def test_modes_parse_or_say_what_is_allowed() -> None:
    assert compare._parse_modes("fast, exact,fastmm:cuda-graph:auto,fast+auto,fast+auto@fp32,fast@bf16") == [
        "fast", "exact", "fastmm:cuda-graph:auto", "fast+auto", "fast+auto@fp32", "fast@bf16"]
    assert compare._split_mode("fast:eager+auto@bf16") == ("fast:eager", "auto", "bf16")
    assert compare._split_mode("exact") == ("exact", "", "")
    for bad in ("slow", "fast:warp", "fast+roi", "fast@fp16"):
        with pytest.raises(InputError, match="--modes"):
            compare._parse_modes(bad)


def test_cpu_overrides_move_the_released_cuda_device(tmp_path: Path) -> None:
    cpu = compare.bundle_overrides(tmp_path, tmp_path / "dl.json", tmp_path, tmp_path / "o", "cpu")
    gpu = compare.bundle_overrides(tmp_path, tmp_path / "dl.json", tmp_path, tmp_path / "o", "cuda:0")
    assert cpu["dints_space#device"] == "$torch.device('cpu')" and "dints_space#device" not in gpu
    assert cpu["bundle_root"] == str(tmp_path) and cpu["output_dir"] == str(tmp_path / "o")
    cmd = compare.bundle_command(tmp_path, cpu)
    assert cmd[1:4] == ["-m", "monai.bundle", "run"] and cmd[cmd.index("--output_dir") + 1] == str(tmp_path / "o")


def test_agreement_and_dice_of_two_label_files(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[:2] = 1
    b = a.copy()
    b[0, 0, 0] = 2
    for name, arr in (("a", a), ("b", b)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{name}.nii.gz")
    out = compare._agreement(str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"))
    assert out["agreement"] == pytest.approx(63 / 64) and out["dice_1"] == pytest.approx(2 * 31 / 63)
    assert out["dice_2"] == 0.0 and out["voxels_2"] == [0, 1]


def test_every_cli_option_is_a_setting() -> None:
    parser = argparse.ArgumentParser()
    cli_benchmark.add_arguments(parser)
    args = parser.parse_args([])
    fields = {f.name for f in dataclasses.fields(BenchmarkSettings)}
    assert fields == set(vars(args)), "the CLI and BenchmarkSettings name different options"
    assert BenchmarkSettings(**vars(args)) == BenchmarkSettings()  # same defaults on both sides


def test_the_table_header_names_each_column_once_and_missing_stages_are_dashes(capsys) -> None:
    """Issue 38: the header read `read+prep  readpreproces` and the cells `nan`."""
    run = {"pipeline_s": 3.0, "pipeline_cpu_s": 2.5, "process_s": 5.0, "peak_rss_gib": 1.25}
    compare._print_table({"bundle": run | {"stages": {"read+preprocess": 1.0, "infer": 1.5, "invert": 0.25,
                                                      "write": 0.25}},
                          "ours-fast": run | {"stages": {"read": 0.5, "preprocess": 0.5, "infer": 1.0, "invert": 0.5,
                                                         "write": 0.5}}})
    header, bundle, ours = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["run", "(seconds)", "read+prep", "read", "prep", "infer", "invert", "write",
                              "pipeline", "cpu", "time", "process", "RAM", "GiB", "GPU", "GiB"]
    assert "nan" not in bundle + ours
    assert bundle.split()[1:4] == ["1.00", "-", "-"] and ours.split()[1:4] == ["-", "0.50", "0.50"]
    assert len(header) == len(bundle) == len(ours)  # the columns line up


def test_without_shared_data_the_message_names_input_and_the_demo_model_stands_in(tmp_path: Path, capsys) -> None:
    from PancreasDiNTSLib.benchmark.settings import QUICK
    from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

    with pytest.raises(InputError, match=r"no --input: give the CT to time, e.g. --input ct.nii.gz"):
        compare._input_ct(None, None, QUICK)
    bundle, desc = compare._model_bundle(BenchmarkSettings(), None, QUICK, tmp_path)
    assert bundle == PACKAGED_DEMO_MODEL and "demo model" in desc
    assert "timing the demo model" in capsys.readouterr().err
