"""Architecture search (tiny preset, CPU, phantoms): released-format arch file + picture, `train --arch` and
`segment` use it, warm-up leaves the architecture alone, kill -9 + --resume gives the same result, and a
2-process gloo torchrun search (and train) produce the same kind of outputs as one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PancreasDiNTSLib.model.bundle import load_arch_file
from PancreasDiNTSLib.synthetic.phantom import write_msd_dataset
from PancreasDiNTSLib.training.data import prepare_datalist, write_datalist
from PancreasDiNTSLib.training.search import (
    SearchSettings,
    build_supernet,
    make_search_settings,
    path_tables,
    search,
    weight_lr,
)
from PancreasDiNTSLib.training.settings import SettingsError
from support import REFERENCE_BUNDLE

CLI = [sys.executable, "-m", "PancreasDiNTSLib.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "PancreasDiNTSLib.cli"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread in this process: PyTorch's CPU conv3d on tiny nets is many times slower with 2 threads
    when the 2 CI cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def env(cli_env):
    # One thread per process: the CI machine has 2 cores and torchrun runs 2 processes.
    return {**cli_env, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_data")
    data = write_msd_dataset(root / "Task07", 7, 0, seed=5, size="tiny")
    write_datalist(prepare_datalist(data), root / "datalist.json")  # 4 training, 1 validation, 2 testing
    return root / "datalist.json"


def _search_cmd(datalist: Path, out: Path, *extra: str, launcher: list[str] = CLI) -> list[str]:
    return launcher + ["search", "--datalist", str(datalist), "-o", str(out), "--preset", "tiny", "--device", "cpu",
                       "--progress", "json", *extra]


def _events(stdout: str) -> list[dict]:
    """JSON progress objects; tolerant of other processes' output sharing a line (torchrun's shared stdout)."""
    decoder, out = json.JSONDecoder(), []
    for line in stdout.splitlines():
        i = line.find('{"')
        while i != -1:
            try:
                obj, end = decoder.raw_decode(line, i)
            except json.JSONDecodeError:
                i = line.find('{"', i + 1)
                continue
            out.append(obj)
            i = line.find('{"', end)
    return out


def _arch_file(folder: Path) -> Path:
    files = sorted(folder.glob("search_code_*.pt"))
    assert len(files) == 1, files
    return files[0]


@pytest.fixture(scope="module")
def tiny_search(dataset, tmp_path_factory, env):
    out = tmp_path_factory.mktemp("searches") / "SEARCH"
    r = subprocess.run(_search_cmd(dataset, out), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, _events(r.stdout)


def test_bundle_preset_is_the_released_search_yaml():
    ref = yaml.safe_load((REFERENCE_BUNDLE / "configs" / "search.yaml").read_text()) if REFERENCE_BUNDLE.exists() \
        else pytest.skip("reference bundle configs absent")
    s = make_search_settings("bundle")
    space = ref["dints_space"]
    assert (s.channel_mul, s.num_blocks, s.num_depths) == (space["channel_mul"], space["num_blocks"], space["num_depths"])
    assert (s.lr, s.lr_arch, list(s.lr_milestones)) == (ref["learning_rate"], ref["learning_rate_arch"],
                                                        ref["learning_rate_milestones"])
    assert (s.epochs, s.warmup_epochs, s.val_interval) == (ref["num_epochs"], ref["num_epochs_warmup"],
                                                           ref["num_epochs_per_validation"])
    assert (s.ram_cost_factor, s.sw_batch_size, s.overlap) == (ref["ram_cost_factor"], ref["num_sw_batch_size"],
                                                               ref["overlap_ratio"])
    assert (s.batch_size, s.num_samples, list(s.patch_size)) == (ref["num_images_per_batch"],
                                                                 ref["num_patches_per_image"], ref["patch_size"])
    assert (s.momentum, s.weight_decay, s.arch_beta1, s.arch_beta2) == (0.9, 4e-5, 0.5, 0.999)


def test_settings_overrides_and_errors():
    s = make_search_settings("tiny", ["epochs=6", "warmup_epochs=3", "ram_cost_factor=0.6", "lr_milestones=0.5,0.9"])
    assert (s.epochs, s.warmup_epochs, s.ram_cost_factor, s.lr_milestones) == (6, 3, 0.6, (0.5, 0.9))
    for bad, match in ((["warmup_epochs=4"], "warm-up"), (["nope=1"], "unknown setting"),
                       (["ram_cost_factor=2"], "ram_cost_factor"), (["warmup_epochs=1.5"], "integer")):
        with pytest.raises(SettingsError, match=match):
            make_search_settings("tiny", bad)
    with pytest.raises(SettingsError, match="unknown search preset"):
        make_search_settings("nope")
    demo = make_search_settings("demo")  # the demo model's search: the train demo preset's network family
    assert (demo.channel_mul, demo.num_blocks, demo.num_depths, demo.patch_size) == (0.25, 4, 3, (64, 64, 32))


def test_weight_lr_schedule_and_world_scaling():
    s = SearchSettings()
    assert weight_lr(s, 0) == weight_lr(s, 714) == weight_lr(s, 1001) == 0.025  # warm-up, then until 40 %
    assert weight_lr(s, 1002) == 0.0125 and weight_lr(s, 1287) == 0.0125
    assert weight_lr(s, 1288) == 0.00625 and weight_lr(s, 1429) == 0.00625
    assert weight_lr(s, 0, world_size=8) == pytest.approx(0.2)


def test_path_tables_match_monai():
    from monai.networks.nets import TopologySearch

    for depths in (3, 4):
        space = TopologySearch(channel_mul=0.0625, num_blocks=1, num_depths=depths)
        assert (list(space.arch_code2in), list(space.arch_code2out)) == path_tables(depths)


@pytest.mark.slow
def test_search_writes_released_format_arch_and_picture(tiny_search):
    out, events = tiny_search
    epochs = [e for e in events if e.get("stage") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert [e["ram_ratio"] is not None for e in epochs] == [False, False, True, True]  # warm-up: 2 epochs
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    arch_path = _arch_file(out)
    assert arch_path.name == f"search_code_{epochs[-1]['epoch'] * 2}.pt"  # 2 weight steps per epoch
    # Loadable with weights_only=True (numpy arrays only), in the released layout.
    arch = load_arch_file(arch_path)
    for key in ("node_a", "arch_code_a", "arch_code_a_max", "arch_code_c"):
        assert isinstance(arch[key], np.ndarray), key
    assert arch["node_a"].shape == (4, 3) and arch["arch_code_a"].shape == (3, 7)
    assert arch["arch_code_c"].shape == (3, 7) and arch["arch_code_c"].max() <= 4
    assert arch["arch_code_a"].sum() > 0
    assert (arch["iter_num"], arch["epochs"]) == (8, 4) and "best_dsc" in arch and "best_path" in arch
    assert arch_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    best = _arch_file(out / "best")
    assert best.with_suffix(".png").is_file()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and "ram_ratio" in rows[0]
    assert list((out / "logs").glob("events.out.tfevents.*"))
    summary = json.loads((out / "search.json").read_text())
    assert summary["arch_file"] == str(arch_path) and summary["world_size"] == 1
    # The architecture parameters moved in the search phase (epoch 3 -> 4 checkpoints).
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    prev = torch.load(out / "checkpoints" / "previous.pt", weights_only=True)
    key = next(k for k in last["model"] if k.endswith("log_alpha_a"))
    assert not torch.equal(last["model"][key], prev["model"][key])


@pytest.mark.slow
def test_warmup_leaves_architecture_untouched(dataset, tmp_path):
    settings = make_search_settings("tiny", ["epochs=2", "warmup_epochs=1", "val_interval=2"])
    search(dataset, tmp_path / "S", settings=settings, device="cpu")
    _, space = build_supernet(settings, torch.device("cpu"))  # same seed: the initial parameters
    after_warmup = torch.load(tmp_path / "S" / "checkpoints" / "previous.pt", weights_only=True)["model"]
    after_search = torch.load(tmp_path / "S" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name in ("log_alpha_a", "log_alpha_c"):
        key = next(k for k in after_warmup if k.endswith(name))
        assert torch.equal(after_warmup[key], getattr(space, name).detach()), name
        assert not torch.equal(after_search[key], after_warmup[key]), name


@pytest.mark.slow
def test_ram_cost_term_steers_the_architecture(dataset, tmp_path):
    """With a faster architecture lr, the super-net's expected RAM fraction moves from ~0.5 to ram_cost_factor."""
    import csv

    settings = make_search_settings("tiny", ["epochs=14", "warmup_epochs=1", "val_interval=14", "lr_arch=0.1",
                                             "ram_cost_factor=0.2"])
    search(dataset, tmp_path / "S", settings=settings, device="cpu")
    rows = list(csv.DictReader((tmp_path / "S" / "metrics.csv").open()))
    first, last = float(rows[1]["ram_ratio"]), float(rows[-1]["ram_ratio"])
    assert first > 0.45 and abs(last - 0.2) < 0.05, (first, last)


@pytest.mark.slow
def test_searched_arch_trains_and_segments(tiny_search, dataset, tmp_path, env):
    arch = _arch_file(tiny_search[0])
    run = tmp_path / "RUN"
    r = subprocess.run(CLI + ["train", "--datalist", str(dataset), "--arch", str(arch), "-o", str(run), "--preset",
                              "tiny", "--device", "cpu", "--progress", "none"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "models" / arch.name).is_file() and (run / "models" / "model.pt").is_file()
    # The trained run exports (ONNX) and the export agrees with the eager network.
    r = subprocess.run(CLI + ["export", "--model", str(run), "--format", "onnx"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((run / "models" / "model.onnx.json").read_text())
    assert info["source"]["arch"] == arch.name and info["verification"]["label_agreement"] >= 0.999
    image = sorted((dataset.parent / "Task07" / "imagesTr").glob("*.nii.gz"))[0]
    seg = tmp_path / "seg"
    r = subprocess.run(CLI + ["segment", str(image), "-o", str(seg), "--model", str(run), "--device", "cpu",
                              "--progress", "none", "--format", "nifti"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    labels = list(seg.glob("*/labels.nii.gz"))
    assert len(labels) == 1
    assert nib.load(labels[0]).shape[:3] == nib.load(image).shape[:3]


@pytest.mark.slow
def test_kill9_then_resume_gives_the_same_search(tiny_search, dataset, tmp_path, env):
    out = tmp_path / "SEARCH"
    proc = subprocess.Popen(_search_cmd(dataset, out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    killed_after = None
    for line in proc.stdout:  # type: ignore[union-attr]
        event = next(iter(_events(line)), {})
        if event.get("stage") == "epoch":
            killed_after = event["epoch"]
            if killed_after >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert killed_after == 2 and proc.returncode == -signal.SIGKILL
    r = subprocess.run(_search_cmd(dataset, out, "--resume"), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = [e["epoch"] for e in _events(r.stdout) if e.get("stage") == "epoch"]
    assert resumed and resumed[0] > 2 and resumed[-1] == 4
    ref_state = torch.load(tiny_search[0] / "checkpoints" / "last.pt", weights_only=True)["model"]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    a, b = load_arch_file(_arch_file(out)), load_arch_file(_arch_file(tiny_search[0]))
    assert all(np.array_equal(a[k], b[k]) for k in ("node_a", "arch_code_a", "arch_code_c"))


@pytest.mark.slow
def test_two_process_torchrun_search(dataset, tmp_path, env):
    out = tmp_path / "SEARCH2"
    r = subprocess.run(_search_cmd(dataset, out, launcher=TORCHRUN), capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    epochs = [e for e in _events(r.stdout) if e.get("stage") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]  # only rank 0 reports
    assert epochs[0]["lr"] == pytest.approx(2 * 0.025)  # lr x world size
    arch = load_arch_file(_arch_file(out))
    assert arch["node_a"].shape == (4, 3)
    assert _arch_file(out).with_suffix(".png").is_file() and _arch_file(out / "best").is_file()
    assert json.loads((out / "search.json").read_text())["world_size"] == 2
    assert len((out / "metrics.csv").read_text().splitlines()) == 5
