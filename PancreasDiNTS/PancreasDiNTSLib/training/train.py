"""Training a DiNTS TopologyInstance as the released bundle's ``configs/train.yaml`` does, crash-safe.

Same network (from an architecture file), transforms (see :mod:`.data`), DiceCE loss, SGD (lr 0.025, momentum 0.9,
weight decay 4e-5) with StepLR (80 epochs, x0.5) stepped per epoch, fp16 autocast on CUDA (``precision``: bf16 autocast on a CPU), sliding-window
validation every ``val_interval`` epochs and the best model by mean foreground Dice. Differences: RAM-bounded
cache, an atomic checkpoint every epoch with everything needed to resume (``--resume`` after ``kill -9`` gives
the same final weights on CPU), a CSV and TensorBoard log, progress as a bar or JSON lines, and the run folder
is a MONAI bundle from the first validation on.

The loop (run folder, resume, checkpoints, logs, progress) is :class:`.loop.EpochLoop`, shared with the search;
this module holds what only training has: the architecture, optimiser and scheduler, the epoch of plain weight
steps, the best-Dice weights and the bundle files. Under ``torchrun`` the data are partitioned per rank as in the
bundle's ``multi_gpu_train.yaml``, the model is wrapped in DistributedDataParallel, validation sums are
all-reduced and only rank 0 writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from PancreasDiNTSLib.core.errors import PancreasDiNTSError, printable
from PancreasDiNTSLib.core.progress import Progress
from PancreasDiNTSLib.inference.precision import Precision
from PancreasDiNTSLib.model.bundle import load_arch_file, load_weights
from PancreasDiNTSLib.model.bundle_writer import arch_file_name, write_bundle_configs
from PancreasDiNTSLib.model.network import build_dints, random_arch
from PancreasDiNTSLib.model.spec import NetworkSpec
from PancreasDiNTSLib.training.data import (
    BudgetCacheDataset,
    build_loaders,
    load_training_cases,
    read_datalist_json,
)
from PancreasDiNTSLib.training.distributed import all_reduce_mean, partition, scale_for_world
from PancreasDiNTSLib.training.loop import (
    DICE_COLUMNS,
    EpochLoop,
    Row,
    check_finite,
    optimise,
    reseed,
    save_weights,
    to_device,
)
from PancreasDiNTSLib.training.settings import (
    SettingsError,
    TrainSettings,
    check_settings,
    make_settings,
    settings_dict,
)

Arch = dict[str, np.ndarray]


def make_optimizer(model: torch.nn.Module, settings: TrainSettings, world_size: int = 1) -> torch.optim.Optimizer:
    """SGD (or AdamW); the learning rate is scaled by the number of processes as in the bundle's multi-GPU config."""
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.lr * world_size, weight_decay=settings.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=settings.lr * world_size, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings,
                   world_size: int = 1) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step_size * world_size,
                                           gamma=settings.lr_gamma)


def is_random_arch(arch: str | Path) -> bool:
    """``--arch random``: an architecture decoded from a random search space (from the settings), not a file."""
    return str(arch).startswith("random")


def resolve_arch(arch: str | Path, settings: TrainSettings) -> tuple[Arch, str | None]:
    """An architecture dict and its source file: a released-format file, or ``random`` (from the settings)."""
    if is_random_arch(arch):
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


def build_model(settings: TrainSettings, arch: Arch) -> torch.nn.Module:
    """DiNTS from the engine's builder, initialised from ``settings.seed``."""
    torch.manual_seed(settings.seed)
    return build_dints(network_spec(settings), arch)


def start_from(model: torch.nn.Module, source: str | Path) -> Path:
    """Fine-tuning: load the weights of a model folder (its ``models/model.pt``) or of a state-dict file into
    ``model``, which must have the same architecture and channels (else one line naming the file)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "models" / "model.pt"
    if not path.is_file():
        raise SettingsError(f"init_weights {printable(source)}: no such model folder or weights file (give a "
                            "model folder with models/model.pt, or a .pt state dict)")
    weights = load_weights(path)
    misfit = weights_misfit(model.state_dict(), weights)
    if misfit:
        raise SettingsError(f"init_weights {printable(path)}: these weights do not fit the network ({misfit}); "
                            "train with the --arch and channel_mul/num_blocks of the model they come from")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:  # names and shapes fit, yet torch refuses: its whole reason, on one line
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        raise SettingsError(f"init_weights {printable(path)}: these weights do not load into the network: "
                            f"{printable(reason)}") from None
    return path


def weights_misfit(expected: dict[str, Any], given: dict[str, Any]) -> str | None:
    """What keeps ``given`` from loading into a network whose state dict is ``expected``, in a few words (counts
    and the first example of each kind), or None when every tensor's name and shape match."""
    shape = {k: tuple(v.shape) for k, v in given.items() if hasattr(v, "shape")}
    wrong = [k for k in expected if k in shape and shape[k] != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]

    def size(dims: tuple[int, ...]) -> str:
        return "x".join(map(str, dims)) or "scalar"

    parts = []
    if wrong:
        parts.append(f"{len(wrong)} of another shape, e.g. {wrong[0]}: {size(shape[wrong[0]])} in the file, "
                     f"{size(tuple(expected[wrong[0]].shape))} in the network")
    if missing:
        parts.append(f"{len(missing)} missing from the file, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} not in the network, e.g. {extra[0]}")
    return printable("; ".join(parts)) if parts else None


def _batch_loss(model: torch.nn.Module, loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return loss_fn(model(x), y)


def train_epoch(model: torch.nn.Module, loader: DataLoader, loss_fn: torch.nn.Module,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device,
                precision: Precision, on_step: Callable[[int, int, float], None] | None = None) -> float:
    """One pass over ``loader``; returns the mean loss. ``on_step(step, steps, mean_loss)`` after each step."""
    model.train()
    total, count = 0.0, 0
    steps = len(loader)
    for step, batch in enumerate(loader):
        x, y = to_device(batch, device)
        loss = optimise(partial(_batch_loss, model, loss_fn, x, y), [optimizer], scaler, precision)
        value = float(loss.detach().item())
        check_finite(value, "training", f"loss is {value} at step {step + 1}")
        total += value
        count += 1
        if on_step is not None:
            on_step(step + 1, steps, total / count)
    return total / max(1, count)


def _cached_mib(loader: DataLoader) -> float:
    return cast(BudgetCacheDataset, loader.dataset).cached_bytes / 2**20


class Training(EpochLoop):
    """One training run: the architecture, data, model and optimiser of ``train``, and its epochs."""

    kind = "train"
    noun = "training run"
    csv_fields = ["epoch", "loss", "lr", *DICE_COLUMNS, "epoch_time_s"]
    scalars = {"train_loss": "loss", "lr": "lr", **{key: key for key in DICE_COLUMNS}}

    def __init__(self, datalist: str | Path | None, out_dir: str | Path, arch: str | Path | None,
                 settings: TrainSettings | None, device: str | torch.device, resume: bool,
                 dataset_dir: str | Path | None, progress: Progress | None, overrides: list[str] | None) -> None:
        super().__init__(out_dir, progress)
        state = self.resume_state(resume)
        chosen = self._choose_settings_and_arch(state, settings, arch, overrides)
        self._read_datalist(datalist, dataset_dir)
        # `random` is decoded once the datalist is known to be good (MONAI's decode: about 10 s at 4 depths)
        self.arch: Arch = chosen if chosen is not None else random_arch(
            self.settings.num_blocks, self.settings.num_depths, seed=self.settings.seed)
        self.setup_device(device)
        model = build_model(self.settings, self.arch)
        if state is None and self.settings.init_weights:
            start_from(model, self.settings.init_weights)
        model = model.to(self.dev)
        self.optimizer = make_optimizer(model, self.settings, self.world)
        self.scheduler = make_scheduler(self.optimizer, self.settings, self.world)
        self.attach(model, {"optimizer": self.optimizer, "scheduler": self.scheduler}, state)
        # The bundle's multi-GPU rule: each rank sees 1/W of the cases per epoch, so epochs, validation interval,
        # StepLR step and lr are multiplied by W (steps per rank and decay points unchanged).
        schedule = scale_for_world(self.settings.lr, self.settings.epochs, self.settings.val_interval,
                                   world_size=self.world)
        self.total, self.val_every = schedule.max_epochs, schedule.val_interval
        self.info: dict[str, Any] = {
            "datalist": str(self.datalist), "dataset_dir": str(self.base), "arch_source": self.arch_source,
            "settings": settings_dict(self.settings), "train_cases": len(self.train_items),
            "val_cases": len(self.val_items), "precision": self.precision.describe()}
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_bundle()
        self._build_loaders()

    def _choose_settings_and_arch(self, state: dict[str, Any] | None, settings: TrainSettings | None,
                                  arch: str | Path | None, overrides: list[str] | None) -> Arch | None:
        """Settings and architecture: the checkpoint's (then ``overrides``), else the given ones; None for a
        ``random`` architecture, not decoded yet."""
        chosen: Arch | None = None
        if state is not None:
            self.settings = make_settings(base=state["settings"], overrides=overrides)
            self.arch_name: str = state["arch_name"]
            chosen = load_arch_file(self.out / "models" / self.arch_name)
            self.arch_source: str | None = state.get("arch_source")
        else:
            self.settings = settings or make_settings("bundle", overrides)
            if arch is None:
                raise SettingsError("--arch is required: a search_code_*.pt architecture file, or `random`")
            self.arch_source = None
            if not is_random_arch(arch):
                chosen, self.arch_source = resolve_arch(arch, self.settings)
            self.arch_name = arch_file_name(self.arch_source)
        check_settings(self.settings)
        return chosen

    def _read_datalist(self, datalist: str | Path | None, dataset_dir: str | Path | None) -> None:
        """The checked cases of ``datalist`` (on resume, by default the run's copy) and its base folder."""
        if datalist is None:
            datalist = self.out / "configs" / "dataset_0.json"
            if not Path(datalist).is_file():
                raise SettingsError("--datalist is required")
        self.datalist = Path(datalist).resolve()
        self.train_items, self.val_items = load_training_cases(self.datalist, self.settings, dataset_dir)
        self.raw_datalist = read_datalist_json(self.datalist)
        self.base = (Path(dataset_dir).resolve() if dataset_dir
                     else Path(self.raw_datalist.get("dataset_dir") or self.datalist.parent))

    def _build_loaders(self) -> None:
        if self.world > 1 and not self.val_items:
            raise PancreasDiNTSError("multi-process training needs a non-empty validation split")
        s = self.settings
        self.say(f"caching preprocessed cases (budget {s.cache_gb:g} GiB) ...")
        self.train_loader, self.val_loader = build_loaders(
            partition(self.train_items, shuffle=True, even_divisible=True, seed=s.seed),
            partition(self.val_items, shuffle=False, even_divisible=False),
            s, int(s.cache_gb * 2**30 / self.world), with_validation=bool(self.val_items))
        val_mib = f", {_cached_mib(self.val_loader):.0f} MiB val" if self.val_loader else ""
        self.say(f"{len(self.train_items)} training / {len(self.val_items)} validation cases; "
                 f"{len(self.train_loader)} steps per epoch; cached {_cached_mib(self.train_loader):.0f} MiB train"
                 f"{val_mib}; device {self.dev}")

    def _write_bundle(self) -> None:
        write_bundle_configs(self.out, network_spec(self.settings), self.arch, self.arch_name, self.settings,
                             self.raw_datalist, str(self.base), self.info,
                             mean_dice=self.best if self.best >= 0 else None)

    def run_epoch(self, epoch: int, total: int) -> tuple[float, Row]:
        reseed(self.settings, epoch, self.rank, self.train_loader.dataset)
        lr = float(self.optimizer.param_groups[0]["lr"])

        def on_step(step: int, steps: int, mean_loss: float) -> None:
            self.step_progress("train", epoch, total, step, steps, mean_loss)

        loss = train_epoch(self.net, self.train_loader, self.loss_fn, self.optimizer, self.scaler, self.dev,
                           self.precision, on_step)
        loss = all_reduce_mean(loss)
        self.scheduler.step()
        row: Row = {"epoch": epoch + 1, "loss": round(loss, 6), "lr": lr}
        if self.val_loader is not None and ((epoch + 1) % self.val_every == 0 or epoch + 1 == total):
            dice = self.validate(self.val_loader, epoch, row)
            score = dice if math.isfinite(dice) else 0.0
            if score > self.best:
                self.best, self.best_epoch = score, epoch + 1
                if self.main:
                    save_weights(self.net, self.out / "models" / "model.pt")
        elif self.val_loader is None and self.main:
            save_weights(self.net, self.out / "models" / "model.pt")  # no validation split: the latest weights
        return loss, row

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"arch_name": self.arch_name, "arch_source": self.arch_source}

    def finish_run(self) -> dict[str, Any]:
        """Final weights and bundle files (rank 0); the summary."""
        if self.main:
            if not (self.out / "models" / "model.pt").is_file():
                save_weights(self.net, self.out / "models" / "model.pt")
            self.info.update({"epochs_done": self.total, "world_size": self.world, "best_epoch": self.best_epoch,
                              "best_val_mean_dice": self.best if self.best >= 0 else None})
            self._write_bundle()
        summary = {"run": str(self.out), "epochs": self.total, **self.summary()}
        self.finish(summary)
        return summary


def train(datalist: str | Path | None, out_dir: str | Path, arch: str | Path | None = None,
          settings: TrainSettings | None = None, device: str | torch.device = "auto", resume: bool = False,
          dataset_dir: str | Path | None = None, progress: Progress | None = None,
          overrides: list[str] | None = None) -> dict[str, Any]:
    """Train into the run folder ``out_dir``; returns a summary (best Dice, epochs, times, peak RAM).

    ``arch`` is a released-format architecture file or ``"random"``. With ``resume`` the newest checkpoint in
    ``out_dir/checkpoints`` is continued (its settings, then ``overrides``); without it, ``out_dir`` must not
    hold a run already.
    """
    run = Training(datalist, out_dir, arch, settings, device, resume, dataset_dir, progress, overrides)
    run.run(run.total)
    return run.finish_run()
