"""`segment` without --model uses the official model installed by `download` (and says how to get it if absent)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from PancreasDiNTSLib.model.download import DEFAULT_VERSION, installed_path
from support import EXAMPLE_CT_SM, require


def _segment(tmp_path, env, *args, ct=EXAMPLE_CT_SM):
    cmd = [sys.executable, "-m", "PancreasDiNTSLib.cli", "segment", str(require(ct)), "-o",
           str(tmp_path / "out"), "--device", "cpu", "--progress", "none", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_without_model_and_nothing_installed(tmp_path, cli_env):
    env = dict(cli_env, PANCREAS_DINTS_HOME=str(tmp_path / "home"))
    run = _segment(tmp_path, env)
    assert run.returncode == 3
    assert "not installed; run `pancreas-dints download`" in run.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_without_model_uses_the_installed_one(tmp_path, cli_env, tiny_bundle, ct_piece, monkeypatch):
    monkeypatch.setenv("PANCREAS_DINTS_HOME", str(tmp_path / "home"))
    target = installed_path(DEFAULT_VERSION)
    shutil.copytree(tiny_bundle, target)
    run = _segment(tmp_path, dict(cli_env, PANCREAS_DINTS_HOME=str(tmp_path / "home")), ct=ct_piece)
    assert run.returncode == 0, run.stderr
    (report,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/report.json")]
    assert report["model"]["path"] == str(target.resolve())
