"""The epoch loop that ``train`` and ``search`` share, and the steps both run.

:class:`EpochLoop` owns a run folder: it refuses to overwrite a run, resumes from the newest checkpoint
(falling back to the previous one with a warning), picks the device, restores model/optimiser/scaler/RNG state,
wraps the model for DDP, and runs the epochs: after each it writes an atomic checkpoint, ``metrics.csv`` and
TensorBoard scalars (rank 0 only), emits a progress event and prints a line. A subclass supplies one epoch
(:meth:`EpochLoop.run_epoch`) and what its checkpoint holds beyond the common state.

The shared steps: the DiceCE loss, the step's precision (:func:`run_precision`: fp16 autocast on CUDA as the
bundle; bf16 autocast on a CPU when asked), one optimiser step with a grad scaler (fp16 only), the per-epoch reseeding
that makes a resumed run replay exactly what an uninterrupted one would have run, and the sliding-window
validation Dice (all-reduced across ranks).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import resource
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import numpy as np
import torch

from PancreasDiNTSLib.core.atomic import atomic_path, write_text_atomic
from PancreasDiNTSLib.core.errors import PancreasDiNTSError
from PancreasDiNTSLib.core.progress import Progress
from PancreasDiNTSLib.core.request import PRECISIONS
from PancreasDiNTSLib.core.terminology import METRIC_KEYS
from PancreasDiNTSLib.inference.device import resolve_device
from PancreasDiNTSLib.inference.precision import Precision, cpu_bf16_support
from PancreasDiNTSLib.training.checkpoint import (
    CheckpointWarning,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from PancreasDiNTSLib.training.distributed import all_reduce_sum, get_rank, get_world_size, unwrap, wrap_ddp
from PancreasDiNTSLib.training.settings import SettingsError, TrainSettings, settings_dict

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter  # tensorboard is optional: imported when a run starts

Row = dict[str, Any]  # one epoch's metrics: a line of metrics.csv and of the checkpoint's history
Batch = Mapping[str, torch.Tensor]
FOREGROUND = tuple(METRIC_KEYS[label] for label in sorted(METRIC_KEYS))  # foreground classes' key names
DICE_COLUMNS = ["val_mean_dice"] + [f"val_dice_{name}" for name in FOREGROUND]


class Stateful(Protocol):
    """What a checkpoint stores by ``state_dict``: optimisers, schedulers."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


# ---------------------------------------------------------------------------------------------- steps


def make_loss() -> torch.nn.Module:
    """DiceCE as the bundle (background excluded from Dice, squared denominators, batch Dice)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, squared_pred=True, batch=True,
                      smooth_nr=1e-5, smooth_dr=1e-5)


def run_precision(requested: str, device: torch.device, amp: bool) -> Precision:
    """What a training or search step computes in (the ``precision`` setting on ``device``; the one decision).

    ``auto``: the bundle's fp16 AMP on CUDA when ``amp``, else fp32 (on a CPU always fp32); ``fp32``: no
    autocast; ``bf16``: bf16 autocast on a CPU (master weights fp32, no grad scaler, the loss in fp32), with the
    hardware detected as for inference (:func:`cpu_bf16_support`); an explicit choice only (auto never picks it:
    docs/PERFORMANCE.md, "Training and search"). SettingsError (exit 2) for bf16 on another device."""
    req = str(requested or "auto").strip().lower()
    if req not in PRECISIONS:
        raise SettingsError(f"precision {requested!r}: use {', '.join(PRECISIONS)}")
    if req == "bf16":
        if device.type != "cpu":
            raise SettingsError(f"precision bf16 is bf16 autocast on a CPU; on {device.type} use auto (the "
                                "bundle's fp16 AMP on CUDA) or fp32")
        has, how = cpu_bf16_support()
        return Precision("bf16", req, f"asked for bf16 autocast ({how})" if has else
                         f"asked for bf16 autocast, emulated: {how} (slower than fp32)")
    if req == "fp32":
        return Precision("fp32", req, "asked for fp32")
    if device.type == "cuda" and amp:
        return Precision("fp16-amp", req, "the bundle's AMP (fp16 autocast) on CUDA")
    if device.type == "cuda":
        return Precision("fp32", req, "amp is off")
    return Precision("fp32", req, f"fp32 on {device.type}")


def autocast(precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """The autocast a step of ``precision`` runs under: fp16 on CUDA (the bundle's AMP), bf16 on a CPU, or none."""
    if precision.name == "fp16-amp":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision.bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """Inside a bf16 step: fp32 again (the loss, the search's architecture terms); elsewhere nothing."""
    return torch.autocast("cpu", enabled=False) if precision.bf16 else contextlib.nullcontext()


class Fp32Loss(torch.nn.Module):
    """``loss`` on logits cast to fp32, outside autocast: a bf16 step's sums over a patch stay fp32."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return cast(torch.Tensor, self.loss(logits.float(), target))


def set_deterministic(enabled: bool) -> None:
    if enabled:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def reseed(settings: TrainSettings, epoch: int, rank: int = 0, dataset: object = None) -> None:
    """Seed every RNG from (seed, epoch, rank): an epoch's randomness does not depend on earlier epochs, so a
    resumed run replays exactly the epochs an uninterrupted run would have run."""
    s = (int(settings.seed) * 1_000_003 + int(epoch) * 7919 + int(rank) * 104_729) % (2**31 - 1)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    seed_transforms(dataset, s)


def seed_transforms(dataset: object, seed: int) -> None:
    """Seed the per-sample (random) transforms of a cached dataset, if it has any."""
    post = getattr(dataset, "post", None)
    if post is not None and hasattr(post, "set_random_state"):
        post.set_random_state(seed=seed)


def to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) of a batch on ``device``."""
    return batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)


def optimise(compute_loss: Callable[[], torch.Tensor], optimizers: Sequence[torch.optim.Optimizer],
             scaler: torch.amp.GradScaler, precision: Precision) -> torch.Tensor:
    """One step: zero the gradients, ``compute_loss()`` under autocast, (scaled) backward, step and update."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    with autocast(precision):
        loss = compute_loss()
    scaler.scale(loss).backward()
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    return loss


def check_finite(value: float, what: str, where: str) -> None:
    if not math.isfinite(value):
        raise PancreasDiNTSError(f"{what} diverged: {where}; lower lr (--set lr=...) or check the labels")


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Iterable[Batch], settings: TrainSettings,
             device: torch.device, precision: Precision | None = None) -> dict[str, Any]:
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
    for batch in loader:
        x, y = batch["image"].to(device), batch["label"].to(device)
        with autocast(precision or run_precision(settings.precision, device, settings.amp)):
            logits = cast(torch.Tensor, sliding_window_inference(
                x, roi_size=tuple(settings.patch_size), sw_batch_size=settings.sw_batch_size, predictor=model,
                overlap=settings.overlap, mode="constant"))
        pred = one_hot(torch.argmax(logits.float(), dim=1, keepdim=True), settings.num_classes)
        ref = one_hot(y.long(), settings.num_classes)
        dice = compute_dice(pred, ref, include_background=False).double().cpu()[0]  # nan: class absent in ref
        valid = ~torch.isnan(dice)
        sums[:nfg] += torch.where(valid, dice, torch.zeros_like(dice))
        sums[nfg:2 * nfg] += valid.double()
        if valid.any():
            sums[-2] += dice[valid].mean()
            sums[-1] += 1
    sums = all_reduce_sum(sums.to(device)).cpu()
    per_class = [float(sums[k] / sums[nfg + k]) if sums[nfg + k] > 0 else float("nan") for k in range(nfg)]
    mean = float(sums[-2] / sums[-1]) if sums[-1] > 0 else float("nan")
    return {"mean": mean, "per_class": per_class, "cases": int(round(float(sums[-1])))}


def rounded(value: float) -> float | None:
    """A metric as logged: 6 decimals, None for NaN/inf."""
    return round(value, 6) if math.isfinite(value) else None


def dice_columns(metrics: Mapping[str, Any]) -> Row:
    """``val_mean_dice`` and ``val_dice_<class>`` of a :func:`validate` result."""
    values = [metrics["mean"], *metrics["per_class"]]
    return {key: rounded(v) for key, v in zip(DICE_COLUMNS, values, strict=False)}


def peak_ram_gib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished/running child (DataLoader workers)."""
    scale = 1024.0 if sys.platform != "darwin" else 1.0  # ru_maxrss is KiB on Linux, bytes on macOS
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**30
    return {"main": round(own, 3), "largest_child": round(children, 3)}


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict on the CPU, without a DDP wrapper's ``module.`` prefix."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(cpu_state(model), tmp)


def write_csv(path: Path, history: Sequence[Row], fields: Sequence[str]) -> None:
    """``metrics.csv``: one row per epoch; None and NaN as empty cells."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                             else row[k]) for k in fields})
    write_text_atomic(path, buf.getvalue())


def tensorboard(log_dir: Path, purge_step: int) -> SummaryWriter | None:
    """A TensorBoard ``SummaryWriter``, or None without the optional tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional dependency (the `train` extra)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


# ---------------------------------------------------------------------------------------------- the loop


class EpochLoop(ABC):
    """A resumable run in ``out_dir``: what train and search have in common.

    Use: :meth:`resume_state`, :meth:`setup_device`, build the model and optimisers, :meth:`attach`, build the
    loaders, :meth:`run`, then :meth:`finish` with :meth:`summary` and the subclass's own entries.
    """

    kind: ClassVar[str]  # stored in checkpoints: a search checkpoint does not resume a training and vice versa
    noun: ClassVar[str]  # for messages: "training run", "search"
    csv_fields: ClassVar[list[str]]
    scalars: ClassVar[dict[str, str]]  # TensorBoard tag -> row key

    settings: TrainSettings  # set by the subclass before setup_device (on resume: the checkpoint's)

    def __init__(self, out_dir: str | Path, progress: Progress | None) -> None:
        self.t_start = time.perf_counter()
        self.out = Path(out_dir).resolve()
        self.ckpt_dir = self.out / "checkpoints"
        self.rank, self.world = get_rank(), get_world_size()
        self.main = self.rank == 0
        self.progress = progress or Progress("none")
        self.dev = torch.device("cpu")
        self.net = torch.nn.Module()  # the model (DDP-wrapped under torchrun), set by attach
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.precision = Precision("fp32", "auto", "not decided yet")
        self.use_amp = False
        self.stateful: dict[str, Stateful] = {}
        self.start_epoch, self.best, self.best_epoch = 0, -1.0, 0
        self.history: list[Row] = []
        self.epoch_times: list[float] = []
        self.first_loss: float | None = None
        self.resumed = False
        self.loss_fn = make_loss()

    def say(self, text: str) -> None:
        """A line on stderr (rank 0 only)."""
        if self.main:
            self.progress.write(text)

    # ------------------------------------------------------------------------------------------ start

    def resume_state(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue (``resume``), else None; a new run never overwrites an existing one."""
        if not resume:
            if (self.ckpt_dir / "last.pt").exists() or (self.ckpt_dir / "previous.pt").exists():
                raise SettingsError(f"{self.out}: holds a {self.noun} already (checkpoints/); pass --resume to "
                                    "continue it or choose a new output folder")
            return None
        with warnings.catch_warnings(record=True) as caught:  # the CLI silences warnings; this one must show
            warnings.simplefilter("always", CheckpointWarning)
            found = load_checkpoint(self.ckpt_dir)
        for w in caught:
            if issubclass(w.category, CheckpointWarning):
                self.say(f"warning: {w.message}")
        if found is None:
            self.say(f"no checkpoint in {self.ckpt_dir}: starting a new {self.noun}")
            return None
        state, path = found
        if state.get("kind", "train") != self.kind:
            raise SettingsError(f"{path}: a {state.get('kind', 'train')} checkpoint, not a {self.kind}; use "
                                f"`{state.get('kind', 'train')} --resume`")
        self.say(f"resuming from {path} (epoch {state['epoch']} done)")
        return state

    def setup_device(self, device: str | torch.device) -> torch.device:
        """This process's device (``cuda:LOCAL_RANK`` under torchrun), its precision (:func:`run_precision`: a
        refusal comes before the data are loaded), deterministic kernels, seeded RNGs."""
        if isinstance(device, torch.device):
            self.dev = device  # e.g. the DistContext device chosen by distributed.init_distributed
        elif self.world > 1:
            self.dev = (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                        else torch.device("cpu"))
        else:
            self.dev = resolve_device(device)
        self.precision = run_precision(self.settings.precision, self.dev, self.settings.amp)
        if self.precision.bf16:
            self.loss_fn = Fp32Loss(self.loss_fn)
        self.say(f"precision {self.precision.name}: {self.precision.reason}")
        set_deterministic(self.settings.deterministic)
        reseed(self.settings, -1, self.rank)
        return self.dev

    def attach(self, model: torch.nn.Module, stateful: dict[str, Stateful], state: Mapping[str, Any] | None) -> None:
        """Grad scaler, the checkpoint's state restored into ``model`` and ``stateful``; ``net``: ``model`` for DDP."""
        self.use_amp = self.precision.name == "fp16-amp"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.stateful = stateful
        if state is not None:
            model.load_state_dict(state["model"])
            for name, obj in stateful.items():
                obj.load_state_dict(state[name])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.start_epoch = int(state["epoch"])
            self.best, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])
            self.history = list(state.get("history", []))
            self.first_loss = self.history[0]["loss"] if self.history else None
            self.resumed = True
            restore_rng_state(state["rng"])
        self.net = wrap_ddp(model, find_unused_parameters=True)

    # ------------------------------------------------------------------------------------------ epochs

    @abstractmethod
    def run_epoch(self, epoch: int, total: int) -> tuple[float, Row]:
        """Train (and validate) epoch ``epoch`` (0-based); its mean loss and its row (without the time)."""

    @abstractmethod
    def checkpoint_extra(self) -> dict[str, Any]:
        """What this kind of run stores in its checkpoint beyond the common state."""

    def event_extra(self, row: Row) -> dict[str, Any]:
        """This kind's entries of the per-epoch progress event."""
        return {}

    def line_extra(self, row: Row) -> str:
        """This kind's text in the per-epoch line, before the Dice."""
        return ""

    def run(self, total: int) -> None:
        """Epochs ``start_epoch .. total - 1``, each checkpointed, logged and reported."""
        writer = tensorboard(self.out / "logs", purge_step=self.start_epoch) if self.main else None
        self.progress.total = max(1, total)
        try:
            for epoch in range(self.start_epoch, total):
                t0 = time.perf_counter()
                self.progress.start_item(epoch)
                loss, row = self.run_epoch(epoch, total)
                self.first_loss = loss if self.first_loss is None else self.first_loss
                row["epoch_time_s"] = round(time.perf_counter() - t0, 3)
                self.history.append(row)
                self.epoch_times.append(row["epoch_time_s"])
                if self.main:
                    self._write_epoch(epoch, row, writer)
                self._report_epoch(epoch, total, loss, row)
        finally:
            if writer is not None:
                writer.close()

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """The common checkpoint: epochs done, model, optimisers/schedulers, scaler, best, history, RNG, settings."""
        return {
            "kind": self.kind, "epoch": epoch + 1, "model": cpu_state(self.net),
            **{name: obj.state_dict() for name, obj in self.stateful.items()},
            "scaler": self.scaler.state_dict() if self.use_amp else {}, "best_metric": self.best,
            "best_epoch": self.best_epoch, "history": self.history, "rng": capture_rng_state(),
            "settings": settings_dict(self.settings), "precision": self.precision.describe(),
        }

    def _write_epoch(self, epoch: int, row: Row, writer: SummaryWriter | None) -> None:
        save_checkpoint(self.ckpt_dir, {**self.checkpoint_state(epoch), **self.checkpoint_extra()})
        write_csv(self.out / "metrics.csv", self.history, self.csv_fields)
        if writer is not None:
            for tag, key in self.scalars.items():
                if row.get(key) is not None:
                    writer.add_scalar(tag, row[key], epoch + 1)
            writer.flush()

    def _report_epoch(self, epoch: int, total: int, loss: float, row: Row) -> None:
        event = {"stage": "epoch", "epoch": epoch + 1, "epochs": total, "loss": row["loss"], "lr": row["lr"],
                 "dice": row.get("val_mean_dice"),
                 **{f"dice_{name}": row.get(f"val_dice_{name}") for name in FOREGROUND},
                 **self.event_extra(row), "time_s": row["epoch_time_s"], "fraction": round((epoch + 1) / total, 4)}
        self.progress.emit(event)
        if self.progress.mode != "json":
            dice = f" val Dice {row['val_mean_dice']:.4f}" if row.get("val_mean_dice") is not None else ""
            self.say(f"epoch {epoch + 1}/{total} loss {loss:.4f} lr {row['lr']:.3g}{self.line_extra(row)}{dice} "
                     f"({row['epoch_time_s']:.1f} s)")

    def step_progress(self, stage: str, epoch: int, total: int, step: int, steps: int, mean_loss: float) -> None:
        """Progress within an epoch, after ``step`` of ``steps``."""
        self.progress.update(self.kind, stage, step / max(1, steps),
                             f"epoch {epoch + 1}/{total} step {step}/{steps} loss {mean_loss:.4f}", epoch=epoch + 1)

    def validate(self, loader: Iterable[Batch], epoch: int, row: Row) -> float:
        """:func:`validate` of the network with a progress line; the Dice columns into ``row``; the mean Dice."""
        self.progress.update("validation", "validate", 1.0, f"epoch {epoch + 1}: validating", epoch=epoch + 1)
        metrics = validate(unwrap(self.net), loader, self.settings, self.dev, self.precision)
        row.update(dice_columns(metrics))
        return float(metrics["mean"])

    # ------------------------------------------------------------------------------------------ end

    def summary(self) -> dict[str, Any]:
        """The common summary entries (losses, best Dice, times, peak RAM, device)."""
        return {
            "resumed_from": self.start_epoch if self.resumed else None,
            "first_loss": self.first_loss, "last_loss": self.history[-1]["loss"] if self.history else None,
            "best_val_mean_dice": self.best if self.best >= 0 else None, "best_epoch": self.best_epoch,
            "seconds": round(time.perf_counter() - self.t_start, 2),
            "mean_epoch_s": round(float(np.mean(self.epoch_times)), 3) if self.epoch_times else None,
            "peak_ram_gib": peak_ram_gib(), "device": str(self.dev), "precision": self.precision.describe(),
        }

    def finish(self, summary: dict[str, Any]) -> None:
        """The last progress event (``stage: summary``)."""
        self.progress.emit({"stage": "summary", **{k: v for k, v in summary.items() if k != "settings"}})
        self.progress.close()
