"""Building the DiNTS network from an architecture file and the bundle's hyper-parameters."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np
import torch

from PancreasDiNTSLib.core.errors import ModelError
from PancreasDiNTSLib.model.spec import NetworkSpec


def check_arch(spec: NetworkSpec, arch: dict[str, Any]) -> None:
    """Raise ModelError if the arch codes do not fit ``num_blocks``/``num_depths``."""
    n_paths = 3 * spec.num_depths - 2
    expected = {
        "node_a": (spec.num_blocks + 1, spec.num_depths),
        "arch_code_a": (spec.num_blocks, n_paths),
        "arch_code_c": (spec.num_blocks, n_paths),
    }
    for key, shape in expected.items():
        got = tuple(np.asarray(arch[key]).shape)
        if got != shape:
            raise ModelError(
                f"architecture {key} has shape {got}, but num_blocks={spec.num_blocks}, "
                f"num_depths={spec.num_depths} need {shape}: the arch file does not belong to this config"
            )
    codes = np.asarray(arch["arch_code_c"])
    if codes.min() < 0 or codes.max() > 4:
        raise ModelError("architecture arch_code_c must hold operation indices 0-4")


def build_dints(spec: NetworkSpec, arch: dict[str, Any]) -> torch.nn.Module:
    """DiNTS on a TopologyInstance; arch codes stay CPU data (no host sync per path on CUDA)."""
    from monai.networks.nets import DiNTS, TopologyInstance

    check_arch(spec, arch)
    # MONAI's TopologyConstruction prints a notice to stdout; keep stdout clean for JSON progress.
    with contextlib.redirect_stdout(sys.stderr):
        space = TopologyInstance(
            arch_code=[np.asarray(arch["arch_code_a"]), np.asarray(arch["arch_code_c"]).astype(np.int64)],
            channel_mul=spec.channel_mul,
            num_blocks=spec.num_blocks,
            num_depths=spec.num_depths,
            use_downsample=spec.use_downsample,
            device="cpu",
        )
    return DiNTS(
        dints_space=space,
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        use_downsample=spec.use_downsample,
        node_a=torch.from_numpy(np.asarray(arch["node_a"]).astype(np.int64)),
    )


def random_arch(num_blocks: int = 12, num_depths: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid random architecture (decoded from a randomly initialised TopologySearch)."""
    from monai.networks.nets import TopologySearch

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(sys.stderr):
        space = TopologySearch(channel_mul=0.0625, num_blocks=num_blocks, num_depths=num_depths, device="cpu")
    with torch.no_grad():
        space.log_alpha_a.normal_(0, 1)
        space.log_alpha_c.normal_(0, 1)
    return decode_space(space)


def decode_space(space: Any) -> dict[str, np.ndarray]:
    """A TopologySearch's current architecture in the released format (numpy arrays)."""
    node_a, arch_code_a, arch_code_c, arch_code_a_max = space.decode()
    return {
        "node_a": np.asarray(node_a).astype(np.int64),
        "arch_code_a": np.asarray(arch_code_a).astype(np.float64),
        "arch_code_a_max": np.asarray(arch_code_a_max).astype(np.int64),
        "arch_code_c": np.asarray(arch_code_c).astype(np.int64),
    }
