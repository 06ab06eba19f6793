"""Bundles with random weights, built from a released bundle's configs: for tests, benchmarks and self-tests.

The released weights cannot always be had (offline sites, CI). A random-weight bundle that keeps the released
``configs/inference.yaml`` (only the network width or depth changed) exercises every line of the real loading,
preprocessing and inversion code, and lets ``monai.bundle run`` and the engine be compared on the same weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from PancreasDiNTSLib.model.bundle import save_arch_file
from PancreasDiNTSLib.model.network import build_dints, random_arch
from PancreasDiNTSLib.model.spec import NetworkSpec


def make_random_bundle(
    reference: Path,
    dest: Path,
    channel_mul: float = 0.125,
    num_blocks: int | None = None,
    seed: int = 0,
    topology: str = "random",
) -> Path:
    """Copy ``reference``'s configs to ``dest``, set ``channel_mul`` (and ``num_blocks``), add random weights.

    ``topology``: ``random`` (a decoded random TopologySearch) or ``dense`` (:func:`dense_arch`, with trained-like
    InstanceNorm parameters). Writes ``models/model.pt`` (bare state dict) and ``models/search_code_18590.pt``
    (numpy arch, released format). ``large_files.yml`` is not copied: its checksums belong to the released weights.
    """
    if topology not in ("random", "dense"):
        raise ValueError(f"topology must be 'random' or 'dense', not {topology!r}")
    reference, dest = Path(reference), Path(dest)
    (dest / "models").mkdir(parents=True, exist_ok=True)
    shutil.copytree(reference / "configs", dest / "configs", dirs_exist_ok=True)
    if (reference / "docs").is_dir():
        shutil.copytree(reference / "docs", dest / "docs", dirs_exist_ok=True)
    cfg_path = dest / "configs" / "inference.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["dints_space"]["channel_mul"] = channel_mul
    if num_blocks is not None:
        cfg["dints_space"]["num_blocks"] = num_blocks
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    space = cfg["dints_space"]
    spec = NetworkSpec(
        in_channels=int(cfg.get("input_channels", 1)),
        num_classes=int(cfg.get("output_classes", 3)),
        channel_mul=float(space["channel_mul"]),
        num_blocks=int(space["num_blocks"]),
        num_depths=int(space["num_depths"]),
        use_downsample=bool(space.get("use_downsample", True)),
    )
    if topology == "dense":
        arch = dense_arch(spec.num_blocks, spec.num_depths, seed=seed)
    else:
        arch = random_arch(spec.num_blocks, spec.num_depths, seed=seed)
    torch.manual_seed(seed)
    net = build_dints(spec, arch)
    if topology == "dense":
        with torch.no_grad():  # trained-like InstanceNorm scales and shifts, so the labels are not all one class
            for name, prm in net.named_parameters():
                if prm.dim() == 1 and not name.startswith("stem_finals.1"):
                    prm.add_(torch.randn_like(prm) * 0.2)
    save_arch_file(dest / "models" / "search_code_18590.pt", arch)
    torch.save(net.state_dict(), dest / "models" / "model.pt")
    return dest


def dense_arch(num_blocks: int, num_depths: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every path active, random operations: the stand-in of the released network's cost.

    As in shared/notes/gpu_profile.md (136 M parameters at channel_mul 1, close to the released 138 M). With all
    input and output nodes used, no stem or cell is skipped by FastDiNTS: its gain is not inflated by a sparse
    random topology.
    """
    n_paths = 3 * num_depths - 2
    rng = np.random.default_rng(seed)
    return {"node_a": np.ones((num_blocks + 1, num_depths), dtype=np.int64),
            "arch_code_a": np.ones((num_blocks, n_paths)),
            "arch_code_c": rng.integers(0, 5, size=(num_blocks, n_paths)).astype(np.int64)}
