"""Bundles with random weights, built from a released bundle's configs: for tests, benchmarks and self-tests.

The released weights cannot always be had (offline sites, CI). A random-weight bundle that keeps the released
``configs/inference.yaml`` (only the network width or depth changed) exercises every line of the real loading,
preprocessing and inversion code, and lets ``monai.bundle run`` and the engine be compared on the same weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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
) -> Path:
    """Copy ``reference``'s configs to ``dest``, set ``channel_mul`` (and ``num_blocks``), add random weights.

    Writes ``models/model.pt`` (bare state dict) and ``models/search_code_18590.pt`` (numpy arch, released format).
    ``large_files.yml`` is not copied: its checksums belong to the released weights.
    """
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
    arch = random_arch(spec.num_blocks, spec.num_depths, seed=seed)
    torch.manual_seed(seed)
    net = build_dints(spec, arch)
    save_arch_file(dest / "models" / "search_code_18590.pt", arch)
    torch.save(net.state_dict(), dest / "models" / "model.pt")
    return dest
