"""A DICOM folder of several series: one case per series through the real `segment` CLI, `--series` picks one,
and report.json names the series each case was read from."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from dicom_factory import axial_planes, load_crop, new_ids, write_series

N = 16


@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    from support import EXAMPLE_CT, require

    vol = load_crop(require(EXAMPLE_CT))
    folder = tmp_path_factory.mktemp("dicom") / "study"
    a, b = new_ids(number=3, description="CT ABDOMEN"), new_ids(number=4, description="Arterial")
    write_series(folder, vol, axial_planes(vol, np.arange(N) * 3.0), ids=a, prefix="a")
    write_series(folder, vol, axial_planes(vol, np.arange(N - 4) * 3.0), ids=b, prefix="b")
    return folder, a, b


def _segment(folder, out, model, *extra):
    cmd = [sys.executable, "-m", "PancreasDiNTSLib.cli", "segment", str(folder), "-o", str(out), "--model",
           str(model), "--device", "cpu", "--progress", "none", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_each_series_is_its_own_case(tmp_path, two_series, tiny_bundle):
    folder, a, b = two_series
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    run = _segment(folder, tmp_path / "out", tiny_bundle)
    assert run.returncode == 0, run.stderr
    reports = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/report.json")}
    assert set(reports) == {"study-3-CT_ABDOMEN", "study-4-Arterial"}
    got = {name: (r["dicom_series"]["series_instance_uid"], r["shape"][2]) for name, r in reports.items()}
    assert got == {"study-3-CT_ABDOMEN": (a.series, N), "study-4-Arterial": (b.series, N - 4)}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the input is untouched
    again = _segment(folder, tmp_path / "out", tiny_bundle)  # same series, same folders: skipped, not renamed
    assert again.returncode == 0 and again.stderr.count("skipped") >= 2, again.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == sorted(reports)


@pytest.mark.slow
def test_series_option_picks_one(tmp_path, two_series, tiny_bundle):
    folder, _, b = two_series
    run = _segment(folder, tmp_path / "out", tiny_bundle, "--series", b.series)
    assert run.returncode == 0, run.stderr
    (report,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/report.json")]
    assert report["dicom_series"]["series_instance_uid"] == b.series and report["shape"][2] == N - 4
    bad = _segment(folder, tmp_path / "out2", tiny_bundle, "--series", "1.2.3.999")
    assert bad.returncode == 2 and "1.2.3.999" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())
