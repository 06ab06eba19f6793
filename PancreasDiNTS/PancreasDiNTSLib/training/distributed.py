"""Multi-process helpers on torch.distributed for runs launched with ``torchrun`` (search, train, segment).

``torchrun --nproc_per_node=N -m PancreasDiNTSLib.cli <command> ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in each. :func:`init_distributed` reads them, joins
the process group (``nccl`` on CUDA, ``gloo`` on CPU) and picks ``cuda:LOCAL_RANK`` (the local rank, not the global
one: with several nodes the global rank exceeds the node's GPU count, model-zoo issue #444). Without torchrun
everything here degrades to a single process (rank 0 of 1) so callers need no special case.

Conventions: only rank 0 writes files (:func:`is_main`); metrics are combined with :func:`all_reduce_sum` /
:func:`all_reduce_mean`; case lists are split with :func:`shard` (round robin, deterministic); datasets are split
with :func:`partition` (MONAI's ``partition_dataset``, as the bundle's multi-GPU configs).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import torch
import torch.distributed as dist

from PancreasDiNTSLib.inference.device import env_int, launched_by_torchrun, resolve_device

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process stands in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None when no process group was created

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def get_rank() -> int:
    """Global rank: from the process group if there is one, else from torchrun's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return env_int("RANK", 0)


def get_world_size() -> int:
    """Number of processes: from the process group if there is one, else from ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, env_int("WORLD_SIZE", 1))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """Rank 0 (the only one that writes checkpoints, logs and reports)."""
    return get_rank() == 0


def init_distributed(
    device: str | torch.device | None = None, backend: str | None = None, timeout_s: float = 1800.0
) -> DistContext:
    """Join torchrun's process group (if launched by torchrun) and pick this process's device.

    ``backend`` defaults to ``nccl`` when the device is a GPU and ``gloo`` on CPU. Calling it again returns the
    same context. Outside torchrun: rank 0 of 1, no process group.
    """
    world, local = max(1, env_int("WORLD_SIZE", 1)), env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local, world)
    if world == 1 or not launched_by_torchrun():
        return DistContext(0, 1, 0, dev, None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if chosen == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(
            backend=chosen, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s), **kwargs
        )
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dev, dist.get_backend())


def destroy() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str | torch.device | None = None, backend: str | None = None) -> Iterator[DistContext]:
    """``with distributed_session(args.device) as ctx:`` — init on entry, destroy on exit (also on errors)."""
    ctx = init_distributed(device, backend)
    try:
        yield ctx
        # Leave together: a rank that tears down its gloo group while a peer still talks to it can abort
        # ("terminate called without an active exception"). Not on errors: a dead peer would hang the barrier.
        barrier()
    finally:
        destroy()


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _reduce_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@overload
def all_reduce_sum(value: torch.Tensor) -> torch.Tensor: ...
@overload
def all_reduce_sum(value: float) -> float: ...
@overload
def all_reduce_sum(value: list[float]) -> list[float]: ...
def all_reduce_sum(value: torch.Tensor | float | list[float]) -> torch.Tensor | float | list[float]:
    """Sum over ranks. Tensors come back as tensors (same device), numbers/lists as floats/lists."""
    if isinstance(value, torch.Tensor):
        if not is_distributed():
            return value
        t = value.detach().clone().to(_reduce_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(value.device)
    total = all_reduce_sum(torch.as_tensor(value, dtype=torch.float64))
    return total.tolist() if total.dim() else float(total)


Reducible = TypeVar("Reducible", torch.Tensor, float, list[float])


def all_reduce_mean(value: Reducible) -> Reducible:
    """Mean over ranks (each rank weighted equally)."""
    total = all_reduce_sum(value)
    world = get_world_size() if is_distributed() else 1
    if isinstance(total, list):
        return [v / world for v in total]
    return total / world


def shard(items: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank`` (order kept).

    Works from torchrun's environment even before (or without) a process group, so ``segment`` can split its
    case list across ranks; with one process it returns all items.
    """
    r = get_rank() if rank is None else rank
    w = get_world_size() if world_size is None else world_size
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} is not in 0..{w - 1}")
    return list(items)[r::w]


def partition(items: Sequence[T], shuffle: bool, even_divisible: bool, seed: int = 0,
              rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's part of a dataset list, as the bundle's multi-GPU configs split data (``partition_dataset``).

    ``even_divisible=True`` (training) repeats items so every rank runs the same number of steps per epoch (DDP
    needs that); ``False`` (validation) gives each item to exactly one rank, so a rank may get none. Unlike
    ``partition_dataset`` it also works with fewer items than ranks.
    """
    world = get_world_size() if world_size is None else world_size
    r = get_rank() if rank is None else rank
    items = list(items)
    if world == 1:
        return items
    if not items:
        return []
    if len(items) < world:
        if not even_divisible:
            return shard(items, r, world)
        items = (items * world)[:world]  # one (repeated) item per rank
    from monai.data import partition_dataset

    parts = partition_dataset(
        data=items, num_partitions=world, shuffle=shuffle, seed=seed, even_divisible=even_divisible
    )
    return list(parts[r])


def wrap_ddp(model: torch.nn.Module, ctx: DistContext | None = None,
             find_unused_parameters: bool = True) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model`` itself.

    ``find_unused_parameters=True`` as the bundle: a DiNTS super-net (search) skips cells, and in the search's
    two-optimiser loop either the weights or the architecture parameters have no gradient in a step.
    Reach the wrapped network through :func:`unwrap`.
    """
    if not is_distributed():
        return model
    dev = ctx.device if ctx is not None else next(model.parameters()).device
    if dev.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev], output_device=dev, find_unused_parameters=find_unused_parameters
        )
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (for saving state dicts that load without DDP)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@dataclass
class ScaledSchedule:
    """Training settings for ``world_size`` processes (see :func:`scale_for_world`)."""

    world_size: int
    learning_rate: float
    max_epochs: int
    lr_step_size: int | None
    val_interval: int


def scale_for_world(
    learning_rate: float,
    max_epochs: int,
    val_interval: int,
    lr_step_size: int | None = None,
    world_size: int | None = None,
) -> ScaledSchedule:
    """The bundle's rule for training on W processes (``configs/multi_gpu_train.yaml``).

    Each rank trains on 1/W of the cases (``partition``), so one epoch is W times shorter and every optimiser
    step sees W times more samples (DDP averages the gradients of W batches). The bundle therefore multiplies
    the learning rate by W (linear scaling rule: 0.025 -> 0.2 on 8 GPUs), and the epoch counts (``max_epochs``
    400 -> 3200, StepLR ``step_size`` 80 -> 640, validation interval 10 -> 80) by W so that the number of
    steps per rank, the LR decay points and the validation frequency stay what they were on one GPU.
    The architecture search (bundle ``scripts/search.py``) multiplies both learning rates by W and keeps its
    epoch counts; see :func:`PancreasDiNTSLib.training.search.scaled_search_settings`.
    """
    w = get_world_size() if world_size is None else int(world_size)
    return ScaledSchedule(
        world_size=w,
        learning_rate=learning_rate * w,
        max_epochs=max_epochs * w,
        lr_step_size=None if lr_step_size is None else lr_step_size * w,
        val_interval=val_interval * w,
    )
