"""Training a DiNTS TopologyInstance as the released bundle's ``configs/train.yaml`` does, crash-safe.

Same network (from an architecture file), transforms (see :mod:`.data`), DiceCE loss, SGD (lr 0.025, momentum 0.9,
weight decay 4e-5) with StepLR (80 epochs, x0.5) stepped per epoch, fp16 autocast on CUDA, sliding-window
validation every ``val_interval`` epochs and the best model by mean foreground Dice. Differences: RAM-bounded
cache, an atomic checkpoint every epoch with everything needed to resume (``--resume`` after ``kill -9`` gives
the same final weights on CPU), a CSV and TensorBoard log, progress as a bar or JSON lines, and the run folder
is a MONAI bundle from the first validation on.

The pieces (``build_loaders``, ``make_loss``, ``make_optimizer``, ``train_epoch``, ``validate``, ``reseed``) are
public so that the search and multi-GPU code can reuse them. The loop is DDP-aware: when
``torch.distributed`` is initialised (torchrun), data are partitioned per rank as in the bundle's
``multi_gpu_train.yaml``, the model is wrapped in DistributedDataParallel, validation sums are all-reduced and
only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import math
import resource
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.core.errors import PancreasDiNTSError
from PancreasDiNTSLib.model.bundle import load_arch_file
from PancreasDiNTSLib.model.spec import NetworkSpec
from PancreasDiNTSLib.training.settings import (
    SettingsError,
    TrainSettings,
    check_settings,
    make_settings,
)

FOREGROUND = ("pancreas", "tumour")


def make_loss() -> torch.nn.Module:
    """DiceCE as the bundle (background excluded from Dice, squared denominators, batch Dice)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, squared_pred=True, batch=True,
                      smooth_nr=1e-5, smooth_dr=1e-5)


def make_optimizer(model: torch.nn.Module, settings: TrainSettings, world_size: int = 1) -> torch.optim.Optimizer:
    """SGD (or AdamW); the learning rate is scaled by the number of processes as in the bundle's multi-GPU config."""
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr * world_size, weight_decay=settings.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=settings.lr * world_size, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, world_size: int = 1):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step_size * world_size,
                                           gamma=settings.lr_gamma)


def resolve_arch(arch: str | Path, settings: TrainSettings) -> tuple[dict[str, np.ndarray], str | None]:
    """An architecture dict and its source file: a released-format file, or ``random`` (from the settings)."""
    if str(arch).startswith("random"):
        from PancreasDiNTSLib.model.network import random_arch

        return random_arch(settings.num_blocks, settings.num_depths, seed=settings.seed), None
    path = Path(arch)
    arch_dict = load_arch_file(path)
    settings.num_blocks = int(arch_dict["node_a"].shape[0]) - 1
    settings.num_depths = int(arch_dict["node_a"].shape[1])
    check_settings(settings)
    return arch_dict, str(path)


def network_spec(settings: TrainSettings) -> NetworkSpec:
    return NetworkSpec(in_channels=1, num_classes=settings.num_classes, channel_mul=settings.channel_mul,
                       num_blocks=settings.num_blocks, num_depths=settings.num_depths, use_downsample=True)


def build_model(settings: TrainSettings, arch: dict[str, Any]) -> torch.nn.Module:
    """DiNTS from the engine's builder, initialised from ``settings.seed``."""
    from PancreasDiNTSLib.model.network import build_dints

    torch.manual_seed(settings.seed)
    return build_dints(network_spec(settings), arch)


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) of an initialised torch.distributed group, else (0, 1).

    Hook for the multi-GPU launcher (``PancreasDiNTSLib.training.distributed``): it initialises the process group and
    then calls :func:`train`; nothing else is needed here.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def build_datasets(train_items: list[dict[str, str]], val_items: list[dict[str, str]], settings: TrainSettings,
                   rank: int = 0, world_size: int = 1, progress: Any = None):
    """Per-rank cached datasets: training (random crops + augmentation) and validation (whole volumes).

    Partitioning follows the bundle's multi-GPU config: training shuffled and evenly divisible, validation
    in order and not padded. The RAM budget is split evenly across ranks; training cases are cached first.
    """
    from monai.data import partition_dataset

    from PancreasDiNTSLib.training.data import (
        BudgetCacheDataset,
        build_deterministic_transforms,
        build_random_transforms,
        build_val_post_transforms,
        build_val_transforms,
        estimate_case_bytes,
    )

    if world_size > 1:
        if not val_items:
            raise PancreasDiNTSError("multi-process training needs a non-empty validation split")
        train_items = partition_dataset(train_items, num_partitions=world_size, shuffle=True, seed=settings.seed,
                                        even_divisible=True)[rank]
        val_items = list(val_items[rank::world_size])  # in order, not padded; a rank may get none
    budget = int(settings.cache_gb * 2**30 / world_size)
    cache_dir = settings.cache_dir or None
    train_ds = BudgetCacheDataset(
        train_items, build_deterministic_transforms(settings), build_random_transforms(settings),
        cache_bytes=budget, cache_dir=(Path(cache_dir) / "train") if cache_dir else None,
        estimate=lambda it: estimate_case_bytes(it, settings, train=True), progress=progress, what="cache train")
    val_ds = None
    if val_items or world_size > 1:  # under DDP every rank validates (possibly no case) so all-reduces match
        val_ds = BudgetCacheDataset(
            val_items, build_val_transforms(settings), build_val_post_transforms(),
            cache_bytes=max(0, budget - train_ds.cached_bytes), cache_dir=(Path(cache_dir) / "val") if cache_dir else None,
            estimate=lambda it: estimate_case_bytes(it, settings, train=False), progress=progress, what="cache val")
    return train_ds, val_ds


def build_loaders(train_items: list[dict[str, str]], val_items: list[dict[str, str]], settings: TrainSettings,
                  rank: int = 0, world_size: int = 1, progress: Any = None):
    """(train_loader, val_loader or None) over the per-rank cached datasets."""
    from monai.data import DataLoader

    train_ds, val_ds = build_datasets(train_items, val_items, settings, rank, world_size, progress)
    workers = int(settings.num_workers)
    train_loader = DataLoader(train_ds, batch_size=settings.batch_size, shuffle=True, num_workers=workers,
                              drop_last=False)
    val_loader = (DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=min(workers, 2))
                  if val_ds is not None else None)
    return train_loader, val_loader


def reseed(settings: TrainSettings, epoch: int, rank: int = 0, dataset: Any = None) -> None:
    """Seed every RNG from (seed, epoch, rank): an epoch's randomness does not depend on earlier epochs, so a
    resumed run replays exactly the epochs an uninterrupted run would have run."""
    import random

    s = (int(settings.seed) * 1_000_003 + int(epoch) * 7919 + int(rank) * 104_729) % (2**31 - 1)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    post = getattr(dataset, "post", None)
    if post is not None and hasattr(post, "set_random_state"):
        post.set_random_state(seed=s)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def _autocast(device: torch.device, enabled: bool):
    import contextlib

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def train_epoch(model: torch.nn.Module, loader: Any, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scaler: Any, device: torch.device, settings: TrainSettings, on_step: Any = None) -> float:
    """One pass over ``loader``; returns the mean loss. ``on_step(step, steps, mean_loss)`` after each step."""
    model.train()
    total, count = 0.0, 0
    steps = len(loader)
    for step, batch in enumerate(loader):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, settings.amp):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = float(loss.detach().item())
        if not math.isfinite(value):
            raise PancreasDiNTSError(f"training diverged: loss is {value} at step {step + 1}; lower lr "
                                     "(--set lr=...) or check the labels")
        total += value
        count += 1
        if on_step is not None:
            on_step(step + 1, steps, total / count)
    return total / max(1, count)


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Any, settings: TrainSettings, device: torch.device,
             world_size: int = 1, on_case: Any = None) -> dict[str, Any]:
    """Sliding-window Dice on the validation grid (as the bundle's ValidationHandler, MeanDice without background).

    Returns ``{"mean": mean foreground Dice (MONAI MeanDice reduction), "per_class": [pancreas, tumour],
    "cases": n}``; sums are all-reduced across ranks.
    """
    from monai.inferers import sliding_window_inference
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    model.eval()
    nfg = settings.num_classes - 1
    sums = torch.zeros(2 * nfg + 2, dtype=torch.float64)  # class sums, class counts, case-mean sum, case count
    for i, batch in enumerate(loader):
        x = batch["image"].to(device)
        y = batch["label"].to(device)
        with _autocast(device, settings.amp):
            logits = sliding_window_inference(x, roi_size=tuple(settings.patch_size),
                                              sw_batch_size=settings.sw_batch_size, predictor=model,
                                              overlap=settings.overlap, mode="constant")
        pred = one_hot(torch.argmax(logits.float(), dim=1, keepdim=True), settings.num_classes)
        ref = one_hot(y.long(), settings.num_classes)
        dice = compute_dice(pred, ref, include_background=False).double().cpu()[0]  # nan: class absent in ref
        valid = ~torch.isnan(dice)
        sums[:nfg] += torch.where(valid, dice, torch.zeros_like(dice))
        sums[nfg:2 * nfg] += valid.double()
        if valid.any():
            sums[-2] += dice[valid].mean()
            sums[-1] += 1
        if on_case is not None:
            on_case(i + 1, len(loader))
    sums = _all_reduce_sum(sums.to(device), world_size).cpu()
    per_class = [float(sums[k] / sums[nfg + k]) if sums[nfg + k] > 0 else float("nan") for k in range(nfg)]
    mean = float(sums[-2] / sums[-1]) if sums[-1] > 0 else float("nan")
    return {"mean": mean, "per_class": per_class, "cases": int(round(float(sums[-1])))}


def peak_ram_gib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished/running child (DataLoader workers)."""
    scale = 1024.0 if sys.platform != "darwin" else 1.0  # ru_maxrss is KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**30
    return {"main": round(own, 3), "largest_child": round(children, 3)}


# ---------------------------------------------------------------------------------------------- the run


CSV_FIELDS = ["epoch", "loss", "lr", "val_mean_dice", "val_dice_pancreas", "val_dice_tumour", "epoch_time_s"]


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    from PancreasDiNTSLib.core.atomic import write_text_atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                             else row[k]) for k in CSV_FIELDS})
    write_text_atomic(path, buf.getvalue())


def _tensorboard(log_dir: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional dependency (the `train` extra)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from PancreasDiNTSLib.core.atomic import atomic_path

    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def train(
    datalist: str | Path | None,
    out_dir: str | Path,
    arch: str | Path | None = None,
    settings: TrainSettings | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    dataset_dir: str | Path | None = None,
    progress: Any = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train into the run folder ``out_dir``; returns a summary (best Dice, epochs, times, peak RAM).

    ``arch`` is a released-format architecture file or ``"random"``. With ``resume`` the newest checkpoint in
    ``out_dir/checkpoints`` is continued (its settings, then ``overrides``); without it, ``out_dir`` must not
    hold a run already.
    """
    from PancreasDiNTSLib.core.progress import Progress
    from PancreasDiNTSLib.inference.segmenter import resolve_device
    from PancreasDiNTSLib.model.bundle_writer import arch_file_name, write_bundle_configs
    from PancreasDiNTSLib.training.checkpoint import (
        CheckpointWarning,
        capture_rng_state,
        load_checkpoint,
        restore_rng_state,
        save_checkpoint,
    )
    from PancreasDiNTSLib.training.data import check_cases, load_datalist, read_datalist_json

    t_start = time.perf_counter()
    out = Path(out_dir).resolve()
    ckpt_dir = out / "checkpoints"
    rank, world_size = distributed_context()
    main = rank == 0
    progress = progress or Progress("none")

    def say(text: str) -> None:
        if main:
            progress.write(text)

    state = None
    if resume:
        with warnings.catch_warnings(record=True) as caught:  # the CLI silences warnings; this one must show
            warnings.simplefilter("always", CheckpointWarning)
            found = load_checkpoint(ckpt_dir)
        for w in caught:
            if issubclass(w.category, CheckpointWarning):
                say(f"warning: {w.message}")
        if found is not None:
            state, ckpt_path = found
            say(f"resuming from {ckpt_path} (epoch {state['epoch']} done)")
        else:
            say(f"no checkpoint in {ckpt_dir}: starting a new run")
    elif (ckpt_dir / "last.pt").exists() or (ckpt_dir / "previous.pt").exists():
        raise SettingsError(f"{out}: holds a training run already (checkpoints/); pass --resume to continue it "
                            "or choose a new output folder")

    if state is not None:
        settings = make_settings(base=state["settings"], overrides=overrides)
        arch_dict = load_arch_file(out / "models" / state["arch_name"])
        arch_name = state["arch_name"]
        arch_source = state.get("arch_source")
    else:
        settings = settings or make_settings("bundle", overrides)
        if arch is None:
            raise SettingsError("--arch is required: a search_code_*.pt architecture file, or `random`")
        arch_dict, arch_source = resolve_arch(arch, settings)
        arch_name = arch_file_name(arch_source)
    check_settings(settings)

    if datalist is None:
        datalist = out / "configs" / "dataset_0.json"
        if not Path(datalist).is_file():
            raise SettingsError("--datalist is required")
    datalist = Path(datalist).resolve()
    train_items = load_datalist(datalist, "training", base_dir=dataset_dir)
    if settings.max_train_cases:
        train_items = train_items[: settings.max_train_cases]
    val_items = load_datalist(datalist, "validation", base_dir=dataset_dir, allow_empty=True)
    check_cases(train_items + val_items, num_classes=settings.num_classes)
    raw_datalist = read_datalist_json(datalist)
    base = Path(dataset_dir).resolve() if dataset_dir else Path(raw_datalist.get("dataset_dir") or datalist.parent)

    if isinstance(device, torch.device):
        dev = device  # e.g. the DistContext device chosen by distributed.init_distributed (cuda:LOCAL_RANK)
    elif world_size > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = resolve_device(device)
    set_deterministic(settings.deterministic)
    reseed(settings, -1, rank)
    model = build_model(settings, arch_dict).to(dev)
    loss_fn = make_loss()
    optimizer = make_optimizer(model, settings, world_size)
    scheduler = make_scheduler(optimizer, settings, world_size)
    use_amp = settings.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, best, best_epoch, history = 0, -1.0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best, best_epoch = int(state["epoch"]), float(state["best_metric"]), int(state["best_epoch"])
        history = list(state.get("history", []))
        restore_rng_state(state["rng"])
    if world_size > 1:
        from PancreasDiNTSLib.training.distributed import wrap_ddp

        model = wrap_ddp(model)

    # The bundle's multi-GPU rule (multi_gpu_train.yaml): each rank sees 1/W of the cases per epoch, so epochs,
    # validation interval, StepLR step and lr are multiplied by W (steps per rank and decay points unchanged).
    total_epochs = settings.epochs * world_size
    val_every = settings.val_interval * world_size
    spec = network_spec(settings)
    training_info = {"datalist": str(datalist), "dataset_dir": str(base), "arch_source": arch_source,
                     "settings": _settings_dict(settings), "train_cases": len(train_items),
                     "val_cases": len(val_items)}
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_bundle_configs(out, spec, arch_dict, arch_name, settings, raw_datalist, str(base), training_info,
                             mean_dice=best if best >= 0 else None)

    say(f"caching preprocessed cases (budget {settings.cache_gb:g} GiB) ...")
    train_loader, val_loader = build_loaders(train_items, val_items, settings, rank, world_size, progress=None)
    say(f"{len(train_items)} training / {len(val_items)} validation cases; "
                   f"{len(train_loader)} steps per epoch; cached "
                   f"{train_loader.dataset.cached_bytes / 2**20:.0f} MiB train"
                   + (f", {val_loader.dataset.cached_bytes / 2**20:.0f} MiB val" if val_loader else "")
                   + f"; device {dev}")
    writer = _tensorboard(out / "logs", purge_step=start_epoch) if main else None
    progress.total = max(1, total_epochs)
    epoch_times: list[float] = []
    first_loss = history[0]["loss"] if history else None
    try:
        for epoch in range(start_epoch, total_epochs):
            t0 = time.perf_counter()
            progress.start_item(epoch)
            reseed(settings, epoch, rank, train_loader.dataset)
            lr = float(optimizer.param_groups[0]["lr"])

            def on_step(step: int, steps: int, mean_loss: float, epoch: int = epoch) -> None:
                progress.update("train", "train", step / max(1, steps),
                                f"epoch {epoch + 1}/{total_epochs} step {step}/{steps} loss {mean_loss:.4f}",
                                epoch=epoch + 1)

            loss = train_epoch(model, train_loader, loss_fn, optimizer, scaler, dev, settings, on_step)
            if world_size > 1:
                loss = float(_all_reduce_sum(torch.tensor([loss], device=dev), world_size).item() / world_size)
            scheduler.step()
            first_loss = loss if first_loss is None else first_loss
            row: dict[str, Any] = {"epoch": epoch + 1, "loss": round(loss, 6), "lr": lr}
            is_last = epoch + 1 == total_epochs
            if val_loader is not None and ((epoch + 1) % val_every == 0 or is_last):
                progress.update("validation", "validate", 1.0, f"epoch {epoch + 1}: validating", epoch=epoch + 1)
                metrics = validate(model, val_loader, settings, dev, world_size)
                row["val_mean_dice"] = round(metrics["mean"], 6) if math.isfinite(metrics["mean"]) else None
                for name, value in zip(FOREGROUND, metrics["per_class"], strict=False):
                    row[f"val_dice_{name}"] = round(value, 6) if math.isfinite(value) else None
                score = metrics["mean"] if math.isfinite(metrics["mean"]) else 0.0
                if score > best:
                    best, best_epoch = score, epoch + 1
                    if main:
                        _save_weights(model, out / "models" / "model.pt")
            elif val_loader is None and main:
                _save_weights(model, out / "models" / "model.pt")  # no validation split: the latest weights
            row["epoch_time_s"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            epoch_times.append(row["epoch_time_s"])
            if main:
                save_checkpoint(ckpt_dir, {
                    "epoch": epoch + 1, "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if use_amp else {}, "best_metric": best, "best_epoch": best_epoch,
                    "history": history, "rng": capture_rng_state(), "settings": _settings_dict(settings),
                    "arch_name": arch_name, "arch_source": arch_source,
                })
                _write_csv(out / "metrics.csv", history)
                if writer is not None:
                    writer.add_scalar("train_loss", loss, epoch + 1)
                    writer.add_scalar("lr", lr, epoch + 1)
                    if "val_mean_dice" in row and row["val_mean_dice"] is not None:
                        writer.add_scalar("val_mean_dice", row["val_mean_dice"], epoch + 1)
                        for name in FOREGROUND:
                            if row.get(f"val_dice_{name}") is not None:
                                writer.add_scalar(f"val_dice_{name}", row[f"val_dice_{name}"], epoch + 1)
                    writer.flush()
            event = {"stage": "epoch", "epoch": epoch + 1, "epochs": total_epochs, "loss": row["loss"], "lr": lr,
                     "dice": row.get("val_mean_dice"), "dice_pancreas": row.get("val_dice_pancreas"),
                     "dice_tumour": row.get("val_dice_tumour"), "time_s": row["epoch_time_s"],
                     "fraction": round((epoch + 1) / total_epochs, 4)}
            progress.emit(event)
            if progress.mode != "json":
                dice = f" val Dice {row['val_mean_dice']:.4f}" if row.get("val_mean_dice") is not None else ""
                say(f"epoch {epoch + 1}/{total_epochs} loss {loss:.4f} lr {lr:.3g}{dice} "
                               f"({row['epoch_time_s']:.1f} s)")
    finally:
        if writer is not None:
            writer.close()
    if main:
        if not (out / "models" / "model.pt").is_file():
            _save_weights(model, out / "models" / "model.pt")
        training_info.update({"epochs_done": total_epochs, "world_size": world_size, "best_epoch": best_epoch,
                              "best_val_mean_dice": best if best >= 0 else None})
        write_bundle_configs(out, spec, arch_dict, arch_name, settings, raw_datalist, str(base), training_info,
                             mean_dice=best if best >= 0 else None)
    ram = peak_ram_gib()
    summary = {
        "run": str(out), "epochs": total_epochs, "resumed_from": start_epoch if state is not None else None,
        "first_loss": first_loss, "last_loss": history[-1]["loss"] if history else None,
        "best_val_mean_dice": best if best >= 0 else None, "best_epoch": best_epoch,
        "seconds": round(time.perf_counter() - t_start, 2),
        "mean_epoch_s": round(float(np.mean(epoch_times)), 3) if epoch_times else None,
        "peak_ram_gib": ram, "device": str(dev),
    }
    progress.emit({"stage": "summary", **summary})
    progress.close()
    return summary


def _settings_dict(settings: TrainSettings) -> dict[str, Any]:
    d = asdict(settings)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

