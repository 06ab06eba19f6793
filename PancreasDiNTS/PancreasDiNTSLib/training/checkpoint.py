"""Crash-safe training checkpoints.

A checkpoint holds model, optimiser, scheduler and grad-scaler state, the epoch count, the best metric, the
metrics history, the settings and the RNG states (torch, CUDA, numpy, python). It is written to a temporary
file, flushed to disk and renamed over ``last.pt``; the file it replaces is kept as ``previous.pt``. Loading
uses ``torch.load(weights_only=True)`` (only tensors and plain Python values are stored) and falls back to
``previous.pt`` with a warning when ``last.pt`` is missing or corrupt (e.g. the machine died mid-write).
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from PancreasDiNTSLib.core.errors import ModelError

LAST = "last.pt"
PREVIOUS = "previous.pt"
FORMAT_VERSION = 1


class CheckpointWarning(UserWarning):
    """The newest checkpoint could not be used and an older one was loaded."""


def capture_rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain Python values (loadable with weights_only=True)."""
    np_state = cast("tuple[Any, ...]", np.random.get_state())  # legacy form: (name, keys, pos, gauss...)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of GPUs: keep the fresh CUDA seeds
            pass


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``folder/last.pt``; the previous ``last.pt`` becomes ``previous.pt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = dict(state)
    payload["format_version"] = FORMAT_VERSION
    tmp = folder / f".{LAST}.{os.getpid()}.part"
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        last = folder / LAST
        if last.exists():
            os.replace(last, folder / PREVIOUS)
        os.replace(tmp, last)
        _fsync_dir(folder)
    finally:
        if tmp.exists():
            tmp.unlink()
    return folder / LAST


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _load_one(path: Path) -> dict[str, Any]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "model" not in data or "epoch" not in data:
        raise ValueError("not a PancreasDiNTS training checkpoint")
    return data


def load_checkpoint(folder: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint in ``folder`` and its path, or None if there is none.

    A missing or unreadable ``last.pt`` falls back to ``previous.pt`` with a CheckpointWarning; if neither
    can be read, the error of ``last.pt`` is raised as a ModelError.
    """
    folder = Path(folder)
    first_error: str | None = None
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            data = _load_one(path)
        except Exception as exc:  # truncated zip, pickle error, wrong content
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            first_error = first_error or f"{path}: {msg}"
            continue
        if name == PREVIOUS:
            why = first_error or f"{folder / LAST} is missing"
            warnings.warn(f"checkpoint {why}; resuming from the previous one, {path} (epoch {data['epoch']})",
                          CheckpointWarning, stacklevel=2)
        return data, path
    if first_error:
        raise ModelError(f"no usable checkpoint in {folder}: {first_error}; start a new run without --resume")
    return None
