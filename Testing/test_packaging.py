"""The wheel carries the engine with its demo model, so `pancreas-dints demo` works from a wheel install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed: {build.stderr[-2000:]}")
    wheel = next(out.glob("*.whl"))
    site = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def test_wheel_holds_the_demo_model(unpacked_wheel: Path) -> None:
    demo = unpacked_wheel / "PancreasDiNTSLib" / "resources" / "models" / "demo"
    source = REPO / "PancreasDiNTS" / "PancreasDiNTSLib" / "resources" / "models" / "demo"
    shipped = {p.relative_to(demo).as_posix() for p in demo.rglob("*") if p.is_file()}
    expected = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    assert shipped == expected and "models/model.pt" in shipped


def test_demo_runs_from_the_wheel(unpacked_wheel: Path, tmp_path: Path) -> None:
    """The unpacked wheel alone on sys.path (not the checkout): the demo finds its model inside the package."""
    env = {k: v for k, v in os.environ.items() if k != "PANCREAS_DINTS_DEMO_MODEL"}
    env["PYTHONPATH"] = str(unpacked_wheel)
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "PancreasDiNTSLib.cli", "demo", "-o", str(out), "--device", "cpu",
                          "--progress", "none"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert Path(report["model"]["path"]).is_relative_to(unpacked_wheel)
    assert (out / "labels.nii.gz").is_file()
