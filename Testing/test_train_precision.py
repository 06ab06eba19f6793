"""The ``precision`` setting of train and search (issue 36): what each device computes in; bf16 an explicit choice
(auto stays fp32 on a CPU, docs/PERFORMANCE.md), and a tiny bf16 training and search on the CPU that really run their convolutions in bf16 and record it in their checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from PancreasDiNTSLib.inference.precision import OVERRIDE_ENV
from PancreasDiNTSLib.synthetic.phantom import write_msd_dataset
from PancreasDiNTSLib.training.data import prepare_datalist, write_datalist
from PancreasDiNTSLib.training.loop import autocast, run_precision
from PancreasDiNTSLib.training.settings import (
    SettingsError,
    make_search_settings,
    make_settings,
)


def test_precision_per_device_and_refusals(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")
    assert run_precision("auto", cpu, True).name == "fp32"  # the CPU default stays fp32
    assert run_precision("auto", cuda, True).name == "fp16-amp"  # the bundle's AMP
    assert run_precision("auto", cuda, False).name == "fp32"
    assert run_precision("fp32", cuda, True).name == "fp32"
    assert run_precision("auto", mps, True).name == "fp32"
    monkeypatch.setenv(OVERRIDE_ENV, "1")
    bf16 = run_precision("bf16", cpu, True)
    assert bf16.describe() == {"used": "bf16", "requested": "bf16",
                               "reason": f"asked for bf16 autocast ({OVERRIDE_ENV}=1)"}
    monkeypatch.setenv(OVERRIDE_ENV, "0")
    assert "emulated" in run_precision("bf16", cpu, False).reason
    with autocast(bf16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    for device in (cuda, mps):
        with pytest.raises(SettingsError, match=f"bf16 autocast on a CPU; on {device.type} use auto"):
            run_precision("bf16", device, True)
    for make in (make_settings, make_search_settings):
        with pytest.raises(SettingsError, match="precision 'fp16': use auto, fp32, bf16"):
            make("tiny", ["precision=fp16"])
        assert make("tiny", ["precision=fp32"]).precision == "fp32"
        assert make("tiny", ["precision=bf16"]).precision == "bf16"  # offered: the loss stayed within noise
        assert make("tiny", []).precision == "auto"  # and not the default


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision_data")
    data = write_msd_dataset(root / "Task07", 7, 0, seed=5, size="tiny")
    write_datalist(prepare_datalist(data), root / "datalist.json")  # 4 training, 1 validation, 2 testing
    return root / "datalist.json"


@pytest.fixture
def conv_dtypes():
    """The dtype every Conv3d of this process computed in: its output's (autocast casts inside the op)."""
    seen: list[torch.dtype] = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv3d):
            seen.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


@pytest.mark.slow
def test_bf16_training_and_search_run_in_bf16_and_record_it(datalist, tmp_path, conv_dtypes, monkeypatch):
    from PancreasDiNTSLib.training.search import search
    from PancreasDiNTSLib.training.train import train

    monkeypatch.setenv(OVERRIDE_ENV, "1")  # the same path on a CPU without bf16 hardware (emulated)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(datalist, tmp_path / "run", arch="random", device="cpu",
                        settings=make_settings("tiny", ["epochs=1", "val_interval=1", "precision=bf16"]))
        trained = len(conv_dtypes)
        found = search(datalist, tmp_path / "search", device="cpu", settings=make_search_settings(
            "tiny", ["epochs=2", "warmup_epochs=1", "val_interval=2", "precision=bf16"]))
    finally:
        torch.set_num_threads(threads)
    assert trained and set(conv_dtypes) == {torch.bfloat16}  # every convolution, training and validation
    assert summary["precision"]["used"] == "bf16" and summary["first_loss"] > 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["precision"]["used"] == "bf16" and state["settings"]["precision"] == "bf16"
    assert state["scaler"] == {}  # no grad scaler for bf16
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())  # fp32 master
    meta = json.loads((tmp_path / "run" / "configs" / "metadata.json").read_text())
    assert meta["training"]["precision"]["used"] == "bf16"
    assert found["precision"]["used"] == "bf16" and found["iterations"] == 4
    search_state = torch.load(tmp_path / "search" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert search_state["precision"]["used"] == "bf16"
    rows = (tmp_path / "search" / "metrics.csv").read_text().splitlines()
    ram_ratio = float(rows[-1].split(",")[5])  # the architecture step ran (after the warm-up), its terms in fp32
    assert 0 < ram_ratio <= 1
    assert json.loads((tmp_path / "search" / "search.json").read_text())["precision"]["used"] == "bf16"
