"""Training (tiny preset, CPU): loss goes down, the run folder is a bundle for `segment` and `monai.bundle run`,
kill -9 + --resume reaches the same weights, checkpoints fall back when corrupt, bad input is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PancreasDiNTSLib.core.errors import ModelError
from PancreasDiNTSLib.model.loader import load_bundle
from PancreasDiNTSLib.synthetic.phantom import write_msd_dataset
from PancreasDiNTSLib.training.checkpoint import CheckpointWarning, load_checkpoint, save_checkpoint
from PancreasDiNTSLib.training.data import prepare_datalist, write_datalist
from PancreasDiNTSLib.training.settings import PRESETS, SettingsError, TrainSettings, make_settings
from PancreasDiNTSLib.training.train import make_optimizer

CLI = [sys.executable, "-m", "PancreasDiNTSLib.cli"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    data = write_msd_dataset(root / "Task07", 7, 0, seed=5, size="tiny")
    dl = prepare_datalist(data)  # 4 training, 1 validation, 2 testing
    write_datalist(dl, root / "datalist.json")
    return root / "datalist.json", dl


def _train_cmd(datalist: Path, run: Path, *extra: str) -> list[str]:
    return CLI + ["train", "--datalist", str(datalist), "--arch", "random", "-o", str(run), "--preset", "tiny",
                  "--device", "cpu", "--progress", "json", *extra]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def tiny_run(dataset, tmp_path_factory, cli_env):
    """An uninterrupted tiny training run, as a real subprocess of the CLI."""
    run = tmp_path_factory.mktemp("runs") / "RUN"
    r = subprocess.run(_train_cmd(dataset[0], run), capture_output=True, text=True, env=cli_env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return run, _events(r.stdout)


def test_settings_presets_and_overrides():
    bundle = make_settings("bundle")
    assert (bundle.lr, bundle.momentum, bundle.weight_decay, bundle.lr_step_size, bundle.lr_gamma) == (
        0.025, 0.9, 4e-5, 80, 0.5)
    assert bundle.patch_size == (96, 96, 96) and bundle.spacing == (1.0, 1.0, 1.0) and bundle.epochs == 400
    assert (bundle.a_min, bundle.a_max, bundle.val_interval, bundle.batch_size) == (-87.0, 199.0, 10, 2)
    assert set(PRESETS) == {"tiny", "demo", "bundle"}
    s = make_settings("tiny", ["epochs=7", "patch_size=48", "spacing=1.5,1.5,3", "augment=false",
                               "crop_dilation=none", "lr=1e-3", "cache_dir=/tmp/x"])
    assert (s.epochs, s.patch_size, s.spacing, s.augment, s.crop_dilation, s.lr, s.cache_dir) == (
        7, (48, 48, 48), (1.5, 1.5, 3.0), False, None, 1e-3, "/tmp/x")
    for bad, match in (["nope=1"], "unknown setting"), (["epochs=abc"], "bad value"), (["patch_size=40"], "multiple"), \
                      (["augment=3"], "true or false"), (["epochs"], "key=value"), (["optimizer=rmsprop"], "sgd or adamw"):
        with pytest.raises(SettingsError, match=match):
            make_settings("tiny", bad)
    with pytest.raises(SettingsError, match="unknown preset"):
        make_settings("huge")
    assert isinstance(make_settings(base=dict(vars(TrainSettings(epochs=3)), patch_size=[64, 64, 64])), TrainSettings)
    net = torch.nn.Linear(2, 2)
    assert type(make_optimizer(net, bundle)) is torch.optim.SGD  # the bundle's optimiser
    demo = make_settings("demo")
    opt = make_optimizer(net, demo, world_size=2)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == pytest.approx(2 * demo.lr)


@pytest.mark.slow
def test_training_lowers_loss_and_logs(tiny_run):
    run, events = tiny_run
    epochs = [e for e in events if e.get("stage") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["loss"] < 0.9 * epochs[0]["loss"]
    assert epochs[1]["dice"] is not None and epochs[0]["dice"] is None  # validation every 2 epochs
    steps = [e for e in events if e.get("stage") == "train"]
    assert steps and all(0 <= e["fraction"] <= 1 for e in steps)
    summary = [e for e in events if e.get("stage") == "summary"][-1]
    assert summary["peak_ram_gib"]["main"] > 0.1 and summary["first_loss"] > summary["last_loss"]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,lr,val_mean_dice") and len(rows) == 5
    assert list((run / "logs").glob("events.out.tfevents.*"))
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 4 and {"model", "optimizer", "scheduler", "scaler", "rng", "best_metric"} <= set(state)
    assert (run / "checkpoints" / "previous.pt").is_file()


@pytest.mark.slow
def test_run_folder_is_a_bundle_for_segment_and_monai(tiny_run, dataset, tmp_path, cli_env):
    run, _ = tiny_run
    datalist_path, dl = dataset
    text = (run / "configs" / "inference.yaml").read_text()
    assert "weights_only=True" in text and "cuda')" not in text.split("device:")[2].splitlines()[0]
    bundle = load_bundle(run)
    assert bundle.network.channel_mul == 0.0625 and bundle.network.num_blocks == 3
    assert bundle.inference.pixdim == (2.0, 2.0, 2.0) and bundle.inference.roi_size == (32, 32, 32)
    net = bundle.build_network("cpu")  # weights match the architecture file
    assert sum(p.numel() for p in net.parameters()) > 0
    meta = json.loads((run / "configs" / "metadata.json").read_text())
    assert meta["training"]["epochs_done"] == 4 and "mean_dice" in meta["eval_metrics"]

    base = Path(dl["dataset_dir"])
    images = [str(base / item["image"]) for item in dl["testing"]]
    seg = tmp_path / "seg"
    r = subprocess.run(CLI + ["segment", *images, "--model", str(run), "-o", str(seg), "--device", "cpu",
                              "--progress", "none", "--format", "nifti", "--precision", "fp32"],  # bf16 is not exact
                       capture_output=True, text=True, env=cli_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    mb = tmp_path / "mb"
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                        str(run / "configs" / "inference.yaml"), "--output_dir", str(mb)],
                       capture_output=True, text=True, env=cli_env, timeout=600, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    for image in images:
        case = Path(image).name[: -len(".nii.gz")]
        ours = np.asarray(nib.load(seg / case / "labels.nii.gz").dataobj)
        theirs = np.asarray(nib.load(mb / case / f"{case}_trans.nii.gz").dataobj).squeeze()
        assert ours.shape == nib.load(image).shape and np.array_equal(ours, theirs.astype(ours.dtype))


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_weights(tiny_run, dataset, tmp_path, cli_env):
    run_ref, _ = tiny_run
    run = tmp_path / "RUN"
    proc = subprocess.Popen(_train_cmd(dataset[0], run), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=cli_env)
    killed_at = None
    try:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event.get("stage") == "train" and event.get("epoch") == 3:
                os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 3: epochs 1-2 are checkpointed
                killed_at = event["message"]
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and killed_at, killed_at
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2
    r = subprocess.run(_train_cmd(dataset[0], run, "--resume"), capture_output=True, text=True, env=cli_env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [e["epoch"] for e in _events(r.stdout) if e.get("stage") == "epoch"] == [3, 4]
    a = torch.load(run_ref / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [row["loss"] for row in a["history"]] == [row["loss"] for row in b["history"]]
    ref_model = torch.load(run_ref / "models" / "model.pt", weights_only=True)
    new_model = torch.load(run / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(ref_model[k], new_model[k]) for k in ref_model)


@pytest.mark.slow
def test_existing_run_is_not_overwritten(tiny_run, dataset, cli_env):
    run, _ = tiny_run
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    r = subprocess.run(_train_cmd(dataset[0], run), capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "--resume" in errors[0]
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_bad_datalist_is_one_line(dataset, tmp_path, cli_env):
    _, dl = dataset
    bad = dict(dl, training=dl["training"][:1] + [{"image": "imagesTr/missing_case.nii.gz",
                                                   "label": "labelsTr/missing_case.nii.gz"}])
    write_datalist(bad, tmp_path / "bad.json")
    r = subprocess.run(_train_cmd(tmp_path / "bad.json", tmp_path / "RUN"), capture_output=True, text=True,
                       env=cli_env, timeout=300)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "missing_case" in errors[0]
    assert not (tmp_path / "RUN" / "checkpoints").exists()


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    folder = tmp_path / "ck"
    assert load_checkpoint(folder) is None
    for epoch in (1, 2):
        save_checkpoint(folder, {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}})
    data, path = load_checkpoint(folder)
    assert data["epoch"] == 2 and path.name == "last.pt"
    raw = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(raw[: len(raw) // 2])  # a write cut short
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, path = load_checkpoint(folder)
    assert data["epoch"] == 1 and path.name == "previous.pt"
    assert any(issubclass(w.category, CheckpointWarning) and "previous" in str(w.message) for w in caught)
    (folder / "previous.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="no usable checkpoint"):
        load_checkpoint(folder)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(dataset, tmp_path, cli_env):
    """The same command under torchrun (gloo on CPU): data partitioned per rank, DDP, rank 0 writes the bundle.
    (Also the one check of training under torchrun: test_search trains its searched architecture in one process.)"""
    run = tmp_path / "DDP"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "PancreasDiNTSLib.cli", "train", "--datalist", str(dataset[0]), "--arch", "random", "-o", str(run),
           "--preset", "tiny", "--device", "cpu", "--progress", "json", "--set", "epochs=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    epochs = [e for e in _events(r.stdout) if e.get("stage") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]  # bundle rule: epochs x world size, only rank 0 reports
    assert epochs[0]["lr"] == pytest.approx(2 * PRESETS["tiny"].get("lr", TrainSettings().lr))  # lr x world size
    assert epochs[-1]["dice"] is not None
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])
    assert load_bundle(run).build_network("cpu") is not None


def _tiny_model(seed: int):
    from PancreasDiNTSLib.model.network import random_arch
    from PancreasDiNTSLib.training.train import build_model

    settings = make_settings("tiny", [f"seed={seed}"])
    return build_model(settings, random_arch(settings.num_blocks, settings.num_depths, seed=0)), settings


def test_init_weights_loads_a_model_folder_or_file_and_refuses_a_mismatch(tmp_path):
    from PancreasDiNTSLib.training.loop import save_weights
    from PancreasDiNTSLib.training.train import start_from

    source, _ = _tiny_model(1)
    target, _ = _tiny_model(2)
    assert any(not torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True))
    save_weights(source, tmp_path / "folder" / "models" / "model.pt")
    assert start_from(target, tmp_path / "folder") == tmp_path / "folder" / "models" / "model.pt"
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True))
    other, _ = _tiny_model(3)
    assert start_from(other, tmp_path / "folder" / "models" / "model.pt").name == "model.pt"
    wider = make_settings("tiny", ["channel_mul=0.125"])
    from PancreasDiNTSLib.model.network import random_arch
    from PancreasDiNTSLib.training.train import build_model

    misfit = build_model(wider, random_arch(wider.num_blocks, wider.num_depths, seed=0))
    with pytest.raises(SettingsError, match="do not fit the network") as err:
        start_from(misfit, tmp_path / "folder")
    assert "\n" not in str(err.value) and not str(err.value).endswith(":")  # issue 38: it stopped at a colon
    assert "of another shape, e.g. " in str(err.value) and " in the file, " in str(err.value)
    assert str(err.value).endswith("train with the --arch and channel_mul/num_blocks of the model they come from")
    with pytest.raises(SettingsError, match="no such model folder"):
        start_from(misfit, tmp_path / "missing")


def test_init_weights_is_refused_by_a_search():
    from PancreasDiNTSLib.training.settings import make_search_settings

    with pytest.raises(SettingsError, match="training setting"):
        make_search_settings("tiny", ["init_weights=/some/model"])


@pytest.mark.slow
def test_fine_tuning_from_a_run_folder_through_the_cli(tiny_run, dataset, tmp_path, cli_env):
    """`train --set init_weights=RUN` starts from RUN's weights: with a vanishing learning rate the new run's
    model.pt is RUN's."""
    from PancreasDiNTSLib.model.bundle import load_weights

    run, _ = tiny_run
    arch = next((run / "models").glob("search_code_*.pt"))
    tuned = tmp_path / "TUNED"
    r = subprocess.run(CLI + ["train", "--datalist", str(dataset[0]), "--arch", str(arch), "-o", str(tuned),
                              "--preset", "tiny", "--device", "cpu", "--progress", "none", "--set", "epochs=1",
                              "--set", "val_interval=1", "--set", "lr=1e-12", "--set", f"init_weights={run}"],
                       capture_output=True, text=True, env=cli_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    before, after = load_weights(run / "models" / "model.pt"), load_weights(tuned / "models" / "model.pt")
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-6) for k in before)
    settings = json.loads((tuned / "configs" / "metadata.json").read_text())["training"]["settings"]
    assert settings["init_weights"] == str(run)
