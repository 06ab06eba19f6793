"""Building the DiNTS network from an architecture file and the bundle's hyper-parameters."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from PancreasDiNTSLib.core.errors import ModelError
from PancreasDiNTSLib.model.spec import NetworkSpec

if TYPE_CHECKING:
    from monai.networks.nets import DiNTS, TopologySearch

# MONAI's TopologyConstruction prints "<time> - Length of input patch is recommended to be a multiple of N." to
# stdout each time a search space is built: advice, not an error. The engine checks its patch sizes itself
# (training.settings refuses a patch_size that is not a multiple; inference windows are the bundle's roi_size).
PATCH_NOTICE = "Length of input patch is recommended to be a multiple of"


@contextlib.contextmanager
def monai_notice_dropped() -> Iterator[None]:
    """Run MONAI's DiNTS constructors with their patch-size notice dropped. Anything else they print goes to
    stderr (stdout stays clean for JSON progress); exceptions pass through untouched."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        rest = [line for line in captured.getvalue().splitlines(keepends=True) if PATCH_NOTICE not in line]
        if rest:
            sys.stderr.write("".join(rest))


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


def build_dints(spec: NetworkSpec, arch: dict[str, Any]) -> DiNTS:
    """DiNTS on a TopologyInstance; arch codes stay CPU data (no host sync per path on CUDA)."""
    from monai.networks.nets import DiNTS, TopologyInstance

    check_arch(spec, arch)
    with monai_notice_dropped():
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
    with monai_notice_dropped():
        space = TopologySearch(channel_mul=0.0625, num_blocks=num_blocks, num_depths=num_depths, device="cpu")
    with torch.no_grad():
        space.log_alpha_a.normal_(0, 1)
        space.log_alpha_c.normal_(0, 1)
    return decode_space(space)


def decode_space(space: TopologySearch) -> dict[str, np.ndarray]:
    """A TopologySearch's current architecture in the released format (numpy arrays)."""
    node_a, arch_code_a, arch_code_c, arch_code_a_max = space.decode()
    return {
        "node_a": np.asarray(node_a).astype(np.int64),
        "arch_code_a": np.asarray(arch_code_a).astype(np.float64),
        "arch_code_a_max": np.asarray(arch_code_a_max).astype(np.int64),
        "arch_code_c": np.asarray(arch_code_c).astype(np.int64),
    }
