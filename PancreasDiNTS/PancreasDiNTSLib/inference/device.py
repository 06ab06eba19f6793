"""The one home for device choice and the out-of-memory back-off (inference, training, segment under torchrun).

``resolve_device`` turns ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a usable ``torch.device`` or a DeviceError
that says why not; under torchrun (several processes) ``cuda`` means ``cuda:LOCAL_RANK``. ``mps`` (Apple silicon,
where torch reports MPS; untested on this project's machines) runs with PyTorch's CPU fallback for the operations
MPS lacks (``PYTORCH_ENABLE_MPS_FALLBACK=1`` unless set), and :data:`MPS_CPU_FALLBACKS` collects which ones fell
back (from PyTorch's warnings) for the report; ``auto`` never picks MPS. ``halve_on_oom`` is the one
back-off loop: on a (CUDA) out-of-memory error it empties the cache and retries with half the batch, down to one,
then gives the caller one last resort (e.g. stitching on the CPU) before the error goes on.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from typing import TextIO, TypeVar

import torch

from PancreasDiNTSLib.core.errors import DeviceError

T = TypeVar("T")
TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
MPS_CPU_FALLBACKS: set[str] = set()  # operators PyTorch ran on the CPU instead of MPS in this process
_FALLBACK_WARNING = re.compile(r"operator '([\w:.]+)' is not currently supported on the MPS backend")


def env_int(name: str, default: int) -> int:
    """An integer environment variable (torchrun's RANK, WORLD_SIZE, LOCAL_RANK), ``default`` when unset or bad."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set for more than one process."""
    return all(k in os.environ for k in TORCHRUN_KEYS) and env_int("WORLD_SIZE", 1) > 1


def _cuda_index(name: str) -> int:
    try:
        return torch.device(name).index or 0
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device name; use cuda or cuda:N") from None


def resolve_device(requested: str | torch.device | None, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a usable torch.device, or DeviceError saying why not.

    With ``world_size > 1`` (one process per GPU under torchrun) a CUDA request means ``cuda:local_rank``.
    """
    name = str(requested or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        return _mps()
    if not name.startswith("cuda"):
        raise DeviceError(f"--device {name}: unknown device; use auto, cpu, cuda, cuda:N or mps")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA GPU is available to PyTorch here "
                          f"(torch {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    index = local_rank if world_size > 1 else _cuda_index(name)
    if index >= count:
        if world_size > 1:
            raise DeviceError(
                f"process with LOCAL_RANK {local_rank} needs cuda:{index} but only {count} GPU(s) are visible; "
                f"use torchrun --nproc_per_node={count} (one process per GPU) or --device cpu")
        raise DeviceError(f"--device {name}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def _mps() -> torch.device:
    """Apple's MPS where torch reports it, with the per-operation CPU fallback on and recorded."""
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise DeviceError(f"--device mps: PyTorch {torch.__version__} reports no MPS device here (Apple silicon, "
                          "macOS 12.3 or later, an MPS-enabled torch); use --device cpu")
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    if not getattr(warnings.showwarning, "_pancreas_mps", False):
        shown = warnings.showwarning

        def record(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: TextIO | None = None, line: str | None = None) -> None:
            found = _FALLBACK_WARNING.search(str(message))
            if found:
                MPS_CPU_FALLBACKS.add(found.group(1))
            shown(message, category, filename, lineno, file, line)

        record._pancreas_mps = True  # type: ignore[attr-defined]
        warnings.showwarning = record
    return torch.device("mps")


def device_for_rank(requested: str | torch.device | None = None) -> torch.device:
    """This process's device without joining a process group: ``cuda:LOCAL_RANK`` under torchrun on GPUs.

    For work that needs no collective (e.g. ``segment`` on its shard of the cases).
    """
    world = env_int("WORLD_SIZE", 1) if launched_by_torchrun() else 1
    return resolve_device(requested, env_int("LOCAL_RANK", 0) if world > 1 else 0, world)


def is_oom(exc: BaseException) -> bool:
    """True for a (CUDA) out-of-memory error."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def halve_on_oom(run: Callable[[int], T], size: int, *, last_resort: Callable[[], bool] | None = None,
                 on_retry: Callable[[int], None] | None = None) -> tuple[T, int]:
    """``run(size)``; on out-of-memory retry with half the size down to 1, then once more after ``last_resort()``
    returns True (it changes what ``run`` does). Returns (result, the size that worked); other errors, and an
    out-of-memory error with nothing left to try, go on to the caller. ``on_retry(new_size)`` hears each retry."""
    while True:
        try:
            return run(size), size
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size > 1:
                size = max(1, size // 2)
            elif last_resort is None or not last_resort():
                raise
            if on_retry is not None:
                on_retry(size)
