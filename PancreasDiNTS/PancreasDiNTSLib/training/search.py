"""DiNTS architecture search (the released bundle's ``scripts/search.py`` + ``configs/search.yaml``), crash-safe.

A DiNTS super-net on ``monai.networks.nets.TopologySearch`` (bundle: channel_mul 0.5, 12 blocks, 4 depths) is
trained with two optimisers on two halves of the training cases:

* network weights: SGD (lr 0.025, momentum 0.9, weight decay 4e-5) on the first half; the lr is constant
  during the warm-up and halves at 40 % and 80 % of the post-warm-up epochs (``learning_rate_milestones``);
* architecture parameters ``log_alpha_a`` (paths) and ``log_alpha_c`` (cell operations): Adam (lr 0.001,
  betas 0.5/0.999, no weight decay), one step on a batch of the second half after each weight step, only
  after ``warmup_epochs`` (bundle: 715 of 1430). The architecture loss is DiceCE plus, ramped in by
  ``(epoch - warmup) / (epochs - warmup)``, the path and operation entropies, ``|ram_cost_factor - RAM(arch) /
  RAM(super-net)|`` (factor 0.8) and 0.001 x the topology entropy — the weighting of the bundle's AMP branch,
  the one that produced the released architecture.

Validation (sliding window, foreground Dice, as training's :func:`PancreasDiNTSLib.training.train.validate`) runs every
``val_interval`` epochs and at the end; each time the super-net is decoded (``TopologySearch.decode``, Dijkstra
over the path probabilities) into an architecture file in the released format (``node_a``, ``arch_code_a``,
``arch_code_a_max``, ``arch_code_c`` as numpy arrays, loadable with ``weights_only=True``), written next to a
picture of the topology. ``SEARCH/search_code_<iter>.pt`` is the latest decode (after the last epoch: the
result, as the bundle's ``search_code_18590.pt``); ``SEARCH/best/search_code_<iter>.pt`` the decode at the best
validation Dice. ``train --arch SEARCH/search_code_<iter>.pt`` trains it.

Data pipeline, loss, validation, checkpoints (atomic, resume after ``kill -9``), CSV/TensorBoard logging and
progress reuse :mod:`.train`, :mod:`.data` and :mod:`.checkpoint`. Under ``torchrun`` the super-net is wrapped
in DistributedDataParallel, each half and the validation cases are partitioned across ranks (as the bundle),
both learning rates are multiplied by the number of processes, metrics are all-reduced and only rank 0 writes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from PancreasDiNTSLib.core.errors import PancreasDiNTSError
from PancreasDiNTSLib.training.settings import SettingsError, TrainSettings, apply_override, check_settings

ARCH_GLOB = "search_code_*.pt"
TOPOLOGY_LOSS_WEIGHT = 0.001
OP_NAMES = ("skip", "3x3x3", "3x3x1", "3x1x3", "1x3x3")  # arch_code_c values (MONAI Cell.OPS3D order)


@dataclass
class SearchSettings(TrainSettings):
    """Search settings; the defaults are the bundle's ``configs/search.yaml`` / ``scripts/search.py``."""

    preset: str = "bundle"
    seed: int = 0  # search.yaml `determ: true` -> set_determinism(seed=0)
    epochs: int = 1430
    warmup_epochs: int = 715
    val_interval: int = 100
    batch_size: int = 1  # num_images_per_batch
    num_samples: int = 1  # num_patches_per_image
    channel_mul: float = 0.5
    num_blocks: int = 12
    num_depths: int = 4
    lr: float = 0.025
    lr_arch: float = 0.001
    lr_milestones: tuple[float, float] = (0.4, 0.8)
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    ram_cost_factor: float = 0.8
    sw_batch_size: int = 6
    overlap: float = 0.625


SEARCH_PRESETS: dict[str, dict[str, Any]] = {
    # seconds on 2 CPU cores (tests, CI); same network family as the train `tiny` preset
    "tiny": dict(epochs=4, warmup_epochs=2, val_interval=2, patch_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0),
                 channel_mul=0.0625, num_blocks=3, num_depths=3, sw_batch_size=2, overlap=0.25, cache_gb=0.25,
                 num_workers=0, augment=False),
    # the demo model's search on phantoms (Testing/benchmarks/make_demo_model.sh): the train `demo` preset's network
    # family, patch and spacing; minutes on 2 CPU cores
    "demo": dict(epochs=16, warmup_epochs=8, val_interval=8, patch_size=(64, 64, 32), spacing=(1.0, 1.0, 2.0),
                 channel_mul=0.25, num_blocks=4, num_depths=3, sw_batch_size=4, overlap=0.5, cache_gb=2.0,
                 num_workers=2, augment=False, lr=0.05),
    # the released search (20k iterations on 8 GPUs in the bundle)
    "bundle": {},
}


def make_search_settings(preset: str = "bundle", overrides: list[str] | None = None,
                         base: dict[str, Any] | None = None) -> SearchSettings:
    """Settings of ``preset`` (or of a stored dict ``base``), then ``key=value`` overrides."""
    fields = {f.name for f in dataclasses.fields(SearchSettings)}
    if base is not None:
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in base.items() if k in fields}
        settings = SearchSettings(**values)
    else:
        if preset not in SEARCH_PRESETS:
            raise SettingsError(f"--preset {preset}: unknown search preset; use one of {', '.join(SEARCH_PRESETS)}")
        settings = SearchSettings(preset=preset, **SEARCH_PRESETS[preset])
    own = {f.name for f in dataclasses.fields(SearchSettings)} - {f.name for f in dataclasses.fields(TrainSettings)}
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key in own:
            _apply_search_override(settings, item)
        elif key in fields:
            apply_override(settings, item)
        else:
            raise SettingsError(f"--set {key}: unknown setting; known: {', '.join(sorted(fields - {'extra', 'preset'}))}")
    check_search_settings(settings)
    return settings


def _apply_search_override(settings: SearchSettings, item: str) -> None:
    import yaml

    key, text = (s.strip() for s in item.split("=", 1)) if "=" in item else (item, "")
    if not text:
        raise SettingsError(f"--set {item}: expected key=value")
    try:
        value = yaml.safe_load(text)
        current = getattr(settings, key)
        if isinstance(current, tuple):
            parts = value if isinstance(value, list) else str(value).split(",")
            value = tuple(float(p) for p in parts)
            if len(value) != len(current):
                raise ValueError(f"needs {len(current)} values")
        elif isinstance(current, int) and not isinstance(current, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("needs an integer")
            value = int(value)
        else:
            value = float(value)
    except (TypeError, ValueError, yaml.YAMLError) as exc:
        raise SettingsError(f"--set {item}: bad value for {key} ({exc})") from None
    setattr(settings, key, value)


def check_search_settings(s: SearchSettings) -> None:
    check_settings(s)
    if not 0 <= s.warmup_epochs < s.epochs:
        raise SettingsError(f"warmup_epochs ({s.warmup_epochs}) must be at least 0 and less than epochs ({s.epochs}): "
                            "the architecture is only updated after the warm-up")
    if not 0.0 < s.ram_cost_factor <= 1.0:
        raise SettingsError("ram_cost_factor must be in (0, 1]: the target fraction of the super-net's memory")
    if s.lr_arch <= 0 or s.lr <= 0:
        raise SettingsError("learning rates must be positive")


def scaled_search_settings(settings: SearchSettings, world_size: int) -> tuple[float, float]:
    """(weight lr, architecture lr) for ``world_size`` processes: both x world_size, as the bundle's search.py.

    Unlike training, the search keeps its epoch counts: each rank sees 1/W of each half per epoch, so with W
    processes the search makes W times fewer steps per rank with a W times larger effective batch.
    """
    return settings.lr * world_size, settings.lr_arch * world_size


def weight_lr(settings: SearchSettings, epoch: int, world_size: int = 1) -> float:
    """The bundle's schedule: constant during warm-up, x0.5 at each milestone of the post-warm-up fraction."""
    base = settings.lr * world_size
    span = max(1, settings.epochs - settings.warmup_epochs)
    progress = (epoch - settings.warmup_epochs) / span
    return base * 0.5 ** sum(progress > m for m in settings.lr_milestones)


def split_halves(items: list[dict[str, str]], seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Shuffle (seeded) and split the training cases: first half for the weights, second for the architecture."""
    if len(items) < 2:
        raise SettingsError(f"the search needs at least 2 training cases (one per half), the datalist has {len(items)}")
    order = list(items)
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return order[:half], order[half:]


# ---------------------------------------------------------------------------------------------- the super-net


def build_supernet(settings: SearchSettings, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """(DiNTS on a TopologySearch, the TopologySearch) on ``device``, initialised from ``settings.seed``."""
    from monai.networks.nets import DiNTS, TopologySearch

    torch.manual_seed(settings.seed)
    space = TopologySearch(channel_mul=settings.channel_mul, num_blocks=settings.num_blocks,
                           num_depths=settings.num_depths, use_downsample=True, device=str(device))
    model = DiNTS(dints_space=space, in_channels=1, num_classes=settings.num_classes, use_downsample=True)
    return model.to(device), space


def arch_parameters(space: Any) -> list[torch.nn.Parameter]:
    return [space.log_alpha_a, space.log_alpha_c]


def weight_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "log_alpha" not in n]


def _set_trainable(params: list[torch.nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def arch_regularisation(space: Any, input_shape: tuple[int, ...], settings: SearchSettings) -> dict[str, torch.Tensor]:
    """The bundle's architecture terms: path/op entropies, RAM-cost deviation, topology entropy."""
    probs_a, _ = space.get_prob_a(child=True)
    entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
    entropy_c = -(F.softmax(space.log_alpha_c, dim=-1) * F.log_softmax(space.log_alpha_c, dim=-1)).mean()
    topology = space.get_topology_entropy(probs_a)
    ram_full = space.get_ram_cost_usage(input_shape, full=True)
    ram_usage = space.get_ram_cost_usage(input_shape)
    ram_ratio = ram_usage / ram_full
    ram_loss = torch.abs(settings.ram_cost_factor - ram_ratio)
    return {"entropy_a": entropy_a, "entropy_c": entropy_c, "topology": topology, "ram_loss": ram_loss,
            "ram_ratio": ram_ratio}


def ramp(settings: SearchSettings, epoch: int) -> float:
    """Weight of the regularisation terms: 0 at the end of the warm-up, 1 at the last epoch."""
    return (epoch - settings.warmup_epochs) / max(1, settings.epochs - settings.warmup_epochs)


def decode(space: Any) -> dict[str, np.ndarray]:
    """The searched architecture in the released format (numpy arrays)."""
    from PancreasDiNTSLib.model.network import decode_space

    return decode_space(space)


# ---------------------------------------------------------------------------------------------- outputs


def _replace_arch(folder: Path, arch: dict[str, Any], name: str) -> Path:
    """Write ``folder/name`` (+ its picture) atomically, then remove older decodes in ``folder``."""
    from PancreasDiNTSLib.model.bundle import save_arch_file

    path = folder / name
    save_arch_file(path, arch)
    draw_topology(arch, path.with_suffix(".png"), title=name)
    for old in folder.glob(ARCH_GLOB):
        if old.name != name:
            old.unlink(missing_ok=True)
            old.with_suffix(".png").unlink(missing_ok=True)
            old.with_suffix(".svg").unlink(missing_ok=True)
    return path


def path_tables(num_depths: int) -> tuple[list[int], list[int]]:
    """MONAI's ``arch_code2in`` / ``arch_code2out``: per output depth o, the paths from depths o-1, o, o+1."""
    code2in: list[int] = []
    code2out: list[int] = []
    for out in range(num_depths):
        for src in (out - 1, out, out + 1):
            if 0 <= src < num_depths:
                code2in.append(src)
                code2out.append(out)
    return code2in, code2out


def topology_edges(arch: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """Active cells as (block, depth_in, depth_out, op): node (block, depth_in) -> node (block + 1, depth_out)."""
    node_a = np.asarray(arch["node_a"])
    code_a = np.asarray(arch["arch_code_a"])
    code_c = np.asarray(arch["arch_code_c"])
    code2in, code2out = path_tables(node_a.shape[1])
    return [(b, code2in[p], code2out[p], int(code_c[b, p]))
            for b in range(code_a.shape[0]) for p in range(len(code2in)) if code_a[b, p] > 0]


OP_COLOURS = ("#9e9e9e", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e")


def draw_topology(arch: dict[str, Any], path: Path, title: str = "") -> Path:
    """A picture of the searched topology: Graphviz (``.svg`` + ``.png``) if installed, else matplotlib ``.png``.

    Columns are the stem input (0) and the blocks' outputs (1..num_blocks); rows the resolutions (depth 0 =
    1/2 of the input, finest, at the top). Edges are the active cells, coloured and labelled by operation.
    """
    node_a = np.asarray(arch["node_a"])
    edges = topology_edges(arch)
    try:
        import graphviz  # optional

        return _draw_graphviz(graphviz, node_a, edges, path, title)
    except ImportError:
        pass
    except Exception:  # graphviz package without the `dot` program: fall back to matplotlib
        pass
    return _draw_matplotlib(node_a, edges, path, title)


def _draw_graphviz(graphviz: Any, node_a: np.ndarray, edges: list, path: Path, title: str) -> Path:
    from PancreasDiNTSLib.core.atomic import atomic_path

    g = graphviz.Digraph(graph_attr={"rankdir": "LR", "label": title, "labelloc": "t"})
    for col in range(node_a.shape[0]):
        with g.subgraph() as s:
            s.attr(rank="same")
            for d in range(node_a.shape[1]):
                style = "filled" if node_a[col, d] else "dashed"
                s.node(f"{col}_{d}", label=f"b{col} 1/{2 ** (d + 1)}", style=style, fillcolor="#dddddd")
    for b, src, dst, op in edges:
        g.edge(f"{b}_{src}", f"{b + 1}_{dst}", label=OP_NAMES[op], color=OP_COLOURS[op])
    with atomic_path(path) as tmp:
        tmp.write_bytes(g.pipe(format="png"))
    with atomic_path(path.with_suffix(".svg")) as tmp:
        tmp.write_bytes(g.pipe(format="svg"))
    return path


def _draw_matplotlib(node_a: np.ndarray, edges: list, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from PancreasDiNTSLib.core.atomic import atomic_path

    cols, depths = node_a.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * cols + 1.5), 0.9 * depths + 1.6), dpi=100)
    for b, src, dst, op in edges:
        ax.annotate("", xy=(b + 1, -dst), xytext=(b, -src),
                    arrowprops=dict(arrowstyle="-|>", color=OP_COLOURS[op], lw=1.6, shrinkA=7, shrinkB=7))
    for col in range(cols):
        for d in range(depths):
            active = bool(node_a[col, d])
            ax.scatter([col], [-d], s=160, zorder=3, c="#444444" if active else "white",
                       edgecolors="#444444", linewidths=1.2)
    ax.set_xticks(range(cols), ["stem"] + [f"b{i}" for i in range(1, cols)])
    ax.set_yticks([-d for d in range(depths)], [f"1/{2 ** (d + 1)}" for d in range(depths)])
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(-depths + 0.5, 0.5)
    ax.set_xlabel("block")
    ax.set_ylabel("resolution")
    ax.set_title(title or "DiNTS topology")
    handles = [Line2D([0], [0], color=c, lw=2, label=n) for n, c in zip(OP_NAMES, OP_COLOURS, strict=True)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, title="cell op")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the run

CSV_FIELDS = ["epoch", "iteration", "loss", "loss_arch", "lr", "ram_ratio", "entropy_a", "entropy_c",
              "val_mean_dice", "val_dice_pancreas", "val_dice_tumour", "arch_file", "epoch_time_s"]


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    from PancreasDiNTSLib.core.atomic import write_text_atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k]))
                             else row[k]) for k in CSV_FIELDS})
    write_text_atomic(path, buf.getvalue())


def _as_text_items(items: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in it.items()} for it in items]


def search(
    datalist: str | Path | None,
    out_dir: str | Path,
    settings: SearchSettings | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    dataset_dir: str | Path | None = None,
    progress: Any = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the architecture search into ``out_dir``; returns a summary (arch files, best Dice, times).

    With ``resume`` the newest checkpoint in ``out_dir/checkpoints`` is continued (its settings and data split,
    then ``overrides``); without it ``out_dir`` must not hold a search already.
    """
    from PancreasDiNTSLib.core.progress import Progress
    from PancreasDiNTSLib.inference.segmenter import resolve_device
    from PancreasDiNTSLib.training.checkpoint import (
        capture_rng_state,
        load_checkpoint,
        restore_rng_state,
        save_checkpoint,
    )
    from PancreasDiNTSLib.training.data import check_cases, load_datalist
    from PancreasDiNTSLib.training.distributed import (
        all_reduce_mean,
        get_rank,
        get_world_size,
        partition,
        unwrap,
        wrap_ddp,
    )
    from PancreasDiNTSLib.training.train import (
        FOREGROUND,
        _autocast,
        _tensorboard,
        build_loaders,
        make_loss,
        peak_ram_gib,
        reseed,
        set_deterministic,
        validate,
    )

    t_start = time.perf_counter()
    out = Path(out_dir).resolve()
    ckpt_dir = out / "checkpoints"
    rank, world = get_rank(), get_world_size()
    main = rank == 0
    progress = progress or Progress("none")
    say = progress.write if main else (lambda _text: None)

    state = None
    if resume:
        found = load_checkpoint(ckpt_dir)
        if found is not None:
            state, ckpt_path = found
            if state.get("kind") != "search":
                raise SettingsError(f"{ckpt_path}: a training checkpoint, not a search; use `train --resume`")
            say(f"resuming from {ckpt_path} (epoch {state['epoch']} done)")
        else:
            say(f"no checkpoint in {ckpt_dir}: starting a new search")
    elif (ckpt_dir / "last.pt").exists() or (ckpt_dir / "previous.pt").exists():
        raise SettingsError(f"{out}: holds a search already (checkpoints/); pass --resume to continue it "
                            "or choose a new output folder")

    if state is not None:
        settings = make_search_settings(base=state["settings"], overrides=overrides)
        items_w, items_a, val_items = state["split"]["weights"], state["split"]["arch"], state["split"]["validation"]
        datalist_path = state["split"].get("datalist")
    else:
        settings = settings or make_search_settings("bundle", overrides)
        if datalist is None:
            raise SettingsError("--datalist is required")
        datalist_path = str(Path(datalist).resolve())
        train_items = load_datalist(datalist_path, "training", base_dir=dataset_dir)
        if settings.max_train_cases:
            train_items = train_items[: settings.max_train_cases]
        val_items = load_datalist(datalist_path, "validation", base_dir=dataset_dir, allow_empty=True)
        check_cases(train_items + val_items, num_classes=settings.num_classes)
        items_w, items_a = split_halves(train_items, settings.seed)
    check_search_settings(settings)
    if not val_items:
        say("no validation cases: the architecture is decoded at each validation interval without Dice")

    if world > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = resolve_device(device)
    set_deterministic(settings.deterministic)
    reseed(settings, -1, rank)
    model, space = build_supernet(settings, dev)
    lr_w, lr_a = scaled_search_settings(settings, world)
    w_params, a_params = weight_parameters(model), arch_parameters(space)
    optimizer = torch.optim.SGD(w_params, lr=lr_w, momentum=settings.momentum, weight_decay=settings.weight_decay)
    betas = (settings.arch_beta1, settings.arch_beta2)
    opt_a = torch.optim.Adam([space.log_alpha_a], lr=lr_a, betas=betas, weight_decay=0.0)
    opt_c = torch.optim.Adam([space.log_alpha_c], lr=lr_a, betas=betas, weight_decay=0.0)
    use_amp = settings.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, iteration, best, best_epoch, history = 0, 0, -1.0, 0, []
    arch_name, best_name, best_iteration = None, None, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        opt_a.load_state_dict(state["opt_a"])
        opt_c.load_state_dict(state["opt_c"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        best, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        arch_name, best_name = state.get("arch_name"), state.get("best_name")
        best_iteration = int(state.get("best_iteration", 0))
        history = list(state.get("history", []))
        restore_rng_state(state["rng"])
    net = wrap_ddp(model, find_unused_parameters=True)

    # Each rank: its part of each half (repeated to equal length: DDP steps in lockstep) and of the validation
    # cases (each case once; a rank may have none but still joins the all-reduce). RAM budget: half per half.
    part_w = partition(items_w, shuffle=True, even_divisible=True, seed=settings.seed)
    part_a = partition(items_a, shuffle=True, even_divisible=True, seed=settings.seed + 1)
    part_val = partition(val_items, shuffle=False, even_divisible=False)
    half = dataclasses.replace(settings, cache_gb=settings.cache_gb / 2 / world)
    say(f"caching preprocessed cases (budget {settings.cache_gb:g} GiB) ...")
    loader_w, val_loader = build_loaders(part_w, part_val, half, 0, 1)
    loader_a, _ = build_loaders(part_a, [], half, 0, 1)
    if val_items and val_loader is None:
        val_loader = torch.utils.data.DataLoader([], batch_size=1)  # no case here; sums of zeros
    say(f"{len(items_w)} weight / {len(items_a)} architecture / {len(val_items)} validation cases; "
        f"{len(loader_w)} steps per epoch per process; {world} process(es); device {dev}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    writer = _tensorboard(out / "logs", purge_step=start_epoch) if main else None
    loss_fn = make_loss()
    progress.total = max(1, settings.epochs)
    epoch_times: list[float] = []
    first_loss = history[0]["loss"] if history else None
    try:
        for epoch in range(start_epoch, settings.epochs):
            t0 = time.perf_counter()
            progress.start_item(epoch)
            reseed(settings, epoch, rank, loader_w.dataset)
            post_a = getattr(loader_a.dataset, "post", None)
            if post_a is not None and hasattr(post_a, "set_random_state"):
                post_a.set_random_state(seed=(settings.seed * 31 + epoch * 7 + rank * 13 + 1) % (2**31 - 1))
            lr = weight_lr(settings, epoch, world)
            for group in optimizer.param_groups:
                group["lr"] = lr
            searching = epoch >= settings.warmup_epochs
            weight_ramp = ramp(settings, epoch) if searching else 0.0
            net.train()
            sums = torch.zeros(5, dtype=torch.float64)  # loss_w, loss_a, ram_ratio, entropy_a, entropy_c
            steps, arch_steps = len(loader_w), 0
            it_a = iter(loader_a)
            for step, batch in enumerate(loader_w):
                # weight step on the first half
                _set_trainable(w_params, True)
                _set_trainable(a_params, False)
                x = batch["image"].to(dev, non_blocking=True)
                y = batch["label"].to(dev, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(dev, settings.amp):
                    loss = loss_fn(net(x), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise PancreasDiNTSError(f"search diverged: weight loss is {value} at epoch {epoch + 1}; "
                                             "lower lr (--set lr=...) or check the labels")
                sums[0] += value
                iteration += 1
                if searching:
                    # architecture step on the second half
                    try:
                        batch_a = next(it_a)
                    except StopIteration:
                        it_a = iter(loader_a)
                        batch_a = next(it_a)
                    _set_trainable(w_params, False)
                    _set_trainable(a_params, True)
                    xa = batch_a["image"].to(dev, non_blocking=True)
                    ya = batch_a["label"].to(dev, non_blocking=True)
                    opt_a.zero_grad(set_to_none=True)
                    opt_c.zero_grad(set_to_none=True)
                    with _autocast(dev, settings.amp):
                        reg = arch_regularisation(space, tuple(xa.shape), settings)
                        seg_loss = loss_fn(net(xa), ya)
                        loss_a = seg_loss + weight_ramp * (
                            reg["entropy_a"] + reg["entropy_c"] + reg["ram_loss"]
                            + TOPOLOGY_LOSS_WEIGHT * reg["topology"])
                    scaler.scale(loss_a).backward()
                    scaler.step(opt_a)
                    scaler.step(opt_c)
                    scaler.update()
                    sums[1] += float(loss_a.detach())
                    sums[2] += float(reg["ram_ratio"].detach())
                    sums[3] += float(reg["entropy_a"].detach())
                    sums[4] += float(reg["entropy_c"].detach())
                    arch_steps += 1
                progress.update("search", "search" if searching else "warmup", (step + 1) / max(1, steps),
                                f"epoch {epoch + 1}/{settings.epochs} step {step + 1}/{steps} "
                                f"loss {sums[0] / (step + 1):.4f}", epoch=epoch + 1)
            _set_trainable(w_params, True)
            _set_trainable(a_params, True)
            counts = torch.tensor([max(1, steps)] + [max(1, arch_steps)] * 4, dtype=torch.float64)
            means = all_reduce_mean(sums / counts)
            loss_w = float(means[0])
            first_loss = loss_w if first_loss is None else first_loss
            row: dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration, "loss": round(loss_w, 6), "lr": lr}
            if arch_steps:
                row.update(loss_arch=round(float(means[1]), 6), ram_ratio=round(float(means[2]), 6),
                           entropy_a=round(float(means[3]), 6), entropy_c=round(float(means[4]), 6))
            is_last = epoch + 1 == settings.epochs
            if (epoch + 1) % settings.val_interval == 0 or is_last:
                arch = decode(space)
                score = float("nan")
                if val_loader is not None:
                    progress.update("validation", "validate", 1.0, f"epoch {epoch + 1}: validating", epoch=epoch + 1)
                    metrics = validate(model, val_loader, settings, dev, world)
                    score = metrics["mean"]
                    row["val_mean_dice"] = round(score, 6) if math.isfinite(score) else None
                    for name, value in zip(FOREGROUND, metrics["per_class"], strict=False):
                        row[f"val_dice_{name}"] = round(value, 6) if math.isfinite(value) else None
                arch_name = f"search_code_{iteration}.pt"
                row["arch_file"] = arch_name
                extra = {"iter_num": iteration, "epochs": epoch + 1,
                         "best_dsc": float(max(best, score if math.isfinite(score) else -1.0)),
                         "best_path": best_iteration}  # as the bundle: iteration of the best validation
                improved = math.isfinite(score) and score > best
                if improved:
                    best, best_epoch, best_name, best_iteration = score, epoch + 1, arch_name, iteration
                    extra.update(best_dsc=best, best_path=best_iteration)
                if main:
                    _replace_arch(out, {**arch, **extra}, arch_name)
                    if improved:
                        _replace_arch(out / "best", {**arch, **extra}, arch_name)
            row["epoch_time_s"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            epoch_times.append(row["epoch_time_s"])
            if main:
                save_checkpoint(ckpt_dir, {
                    "kind": "search", "epoch": epoch + 1, "iteration": iteration,
                    "model": {k: v.detach().cpu() for k, v in unwrap(net).state_dict().items()},
                    "optimizer": optimizer.state_dict(), "opt_a": opt_a.state_dict(), "opt_c": opt_c.state_dict(),
                    "scaler": scaler.state_dict() if use_amp else {}, "best_metric": best, "best_epoch": best_epoch,
                    "best_iteration": best_iteration, "arch_name": arch_name, "best_name": best_name,
                    "history": history, "rng": capture_rng_state(),
                    "settings": _settings_dict(settings),
                    "split": {"datalist": datalist_path, "weights": _as_text_items(items_w),
                              "arch": _as_text_items(items_a), "validation": _as_text_items(val_items)},
                })
                _write_csv(out / "metrics.csv", history)
                if writer is not None:
                    for key in ("loss", "loss_arch", "lr", "ram_ratio", "entropy_a", "entropy_c", "val_mean_dice",
                                "val_dice_pancreas", "val_dice_tumour"):
                        if row.get(key) is not None:
                            writer.add_scalar(key, row[key], epoch + 1)
                    writer.flush()
            event = {"stage": "epoch", "epoch": epoch + 1, "epochs": settings.epochs, "loss": row["loss"],
                     "loss_arch": row.get("loss_arch"), "ram_ratio": row.get("ram_ratio"), "lr": lr,
                     "dice": row.get("val_mean_dice"), "arch_file": row.get("arch_file"),
                     "time_s": row["epoch_time_s"], "fraction": round((epoch + 1) / settings.epochs, 4)}
            progress.emit(event)
            if progress.mode != "json":
                dice = f" val Dice {row['val_mean_dice']:.4f}" if row.get("val_mean_dice") is not None else ""
                arch_txt = f" RAM {row['ram_ratio']:.3f}" if row.get("ram_ratio") is not None else " (warm-up)"
                say(f"epoch {epoch + 1}/{settings.epochs} loss {loss_w:.4f} lr {lr:.3g}{arch_txt}{dice} "
                               f"({row['epoch_time_s']:.1f} s)")
    finally:
        if writer is not None:
            writer.close()

    summary = {
        "search": str(out),
        "arch_file": str(out / arch_name) if arch_name else None,
        "best_arch_file": str(out / "best" / best_name) if best_name else None,
        "picture": str(out / Path(arch_name).with_suffix(".png")) if arch_name else None,
        "epochs": settings.epochs, "warmup_epochs": settings.warmup_epochs, "iterations": iteration,
        "resumed_from": start_epoch if state is not None else None, "world_size": world,
        "first_loss": first_loss, "last_loss": history[-1]["loss"] if history else None,
        "best_val_mean_dice": best if best >= 0 else None, "best_epoch": best_epoch,
        "seconds": round(time.perf_counter() - t_start, 2),
        "mean_epoch_s": round(float(np.mean(epoch_times)), 3) if epoch_times else None,
        "peak_ram_gib": peak_ram_gib(), "device": str(dev),
        "settings": _settings_dict(settings),
    }
    if main:
        import json

        from PancreasDiNTSLib.core.atomic import write_text_atomic

        write_text_atomic(out / "search.json", json.dumps(summary, indent=2) + "\n")
    progress.emit({"stage": "summary", **{k: v for k, v in summary.items() if k != "settings"}})
    progress.close()
    return summary


def _settings_dict(settings: SearchSettings) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
