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

Validation (sliding window, foreground Dice, :func:`PancreasDiNTSLib.training.loop.validate`) runs every
``val_interval`` epochs and at the end; each time the super-net is decoded (``TopologySearch.decode``, Dijkstra
over the path probabilities) into an architecture file in the released format (``node_a``, ``arch_code_a``,
``arch_code_a_max``, ``arch_code_c`` as numpy arrays, loadable with ``weights_only=True``), written next to a
picture of the topology. ``SEARCH/search_code_<iter>.pt`` is the latest decode (after the last epoch: the
result, as the bundle's ``search_code_18590.pt``); ``SEARCH/best/search_code_<iter>.pt`` the decode at the best
validation Dice. ``train --arch SEARCH/search_code_<iter>.pt`` trains it.

Data pipeline, loss, validation, checkpoints (atomic, resume after ``kill -9``), CSV/TensorBoard logging and
progress are the training loop's (:mod:`.loop`, :mod:`.data`); settings are in :mod:`.settings`. Under ``torchrun`` the super-net is wrapped
in DistributedDataParallel, each half and the validation cases are partitioned across ranks (as the bundle),
both learning rates are multiplied by the number of processes, metrics are all-reduced and only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DiNTS, TopologySearch

from PancreasDiNTSLib.core.atomic import atomic_path, write_text_atomic
from PancreasDiNTSLib.core.progress import Progress
from PancreasDiNTSLib.model.bundle import save_arch_file
from PancreasDiNTSLib.model.network import decode_space, monai_notice_dropped
from PancreasDiNTSLib.training import loop
from PancreasDiNTSLib.training.data import build_loaders, load_training_cases
from PancreasDiNTSLib.training.distributed import all_reduce_mean, partition
from PancreasDiNTSLib.training.loop import DICE_COLUMNS, Batch, EpochLoop, Row
from PancreasDiNTSLib.training.settings import (
    SEARCH_PRESETS,
    SearchSettings,
    SettingsError,
    check_search_settings,
    make_search_settings,
    settings_dict,
)

__all__ = ["SEARCH_PRESETS", "SearchSettings", "check_search_settings", "make_search_settings", "search"]

ARCH_GLOB = "search_code_*.pt"
TOPOLOGY_LOSS_WEIGHT = 0.001
OP_NAMES = ("skip", "3x3x3", "3x3x1", "3x1x3", "1x3x3")  # arch_code_c values (MONAI Cell.OPS3D order)
Edge = tuple[int, int, int, int]  # (block, depth_in, depth_out, op)


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


def build_supernet(settings: SearchSettings, device: torch.device) -> tuple[torch.nn.Module, TopologySearch]:
    """(DiNTS on a TopologySearch, the TopologySearch) on ``device``, initialised from ``settings.seed``."""
    torch.manual_seed(settings.seed)
    with monai_notice_dropped():
        space = TopologySearch(channel_mul=settings.channel_mul, num_blocks=settings.num_blocks,
                               num_depths=settings.num_depths, use_downsample=True, device=str(device))
    model = DiNTS(dints_space=space, in_channels=1, num_classes=settings.num_classes, use_downsample=True)
    return model.to(device), space


def arch_parameters(space: TopologySearch) -> list[torch.nn.Parameter]:
    return [space.log_alpha_a, space.log_alpha_c]


def weight_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "log_alpha" not in n]


def _set_trainable(params: list[torch.nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def arch_regularisation(space: TopologySearch, input_shape: tuple[int, ...], settings: SearchSettings) -> dict[str, torch.Tensor]:
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


# ---------------------------------------------------------------------------------------------- outputs


def _replace_arch(folder: Path, arch: dict[str, Any], name: str) -> Path:
    """Write ``folder/name`` (+ its picture) atomically, then remove older decodes in ``folder``."""
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


def topology_edges(arch: Mapping[str, Any]) -> list[Edge]:
    """Active cells as (block, depth_in, depth_out, op): node (block, depth_in) -> node (block + 1, depth_out)."""
    node_a = np.asarray(arch["node_a"])
    code_a = np.asarray(arch["arch_code_a"])
    code_c = np.asarray(arch["arch_code_c"])
    code2in, code2out = path_tables(node_a.shape[1])
    return [(b, code2in[p], code2out[p], int(code_c[b, p]))
            for b in range(code_a.shape[0]) for p in range(len(code2in)) if code_a[b, p] > 0]


OP_COLOURS = ("#9e9e9e", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e")


def draw_topology(arch: Mapping[str, Any], path: Path, title: str = "") -> Path:
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


def _draw_graphviz(graphviz: Any, node_a: np.ndarray, edges: list[Edge], path: Path, title: str) -> Path:
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


def _draw_matplotlib(node_a: np.ndarray, edges: list[Edge], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

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


def _as_text_items(items: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in it.items()} for it in items]


class Search(EpochLoop):
    """One search run: the super-net, its two optimisers, the two halves of the cases, and its epochs."""

    kind = "search"
    noun = "search"
    csv_fields = ["epoch", "iteration", "loss", "loss_arch", "lr", "ram_ratio", "entropy_a", "entropy_c",
                  *DICE_COLUMNS, "arch_file", "epoch_time_s"]
    scalars = {key: key for key in ("loss", "loss_arch", "lr", "ram_ratio", "entropy_a", "entropy_c", *DICE_COLUMNS)}
    settings: SearchSettings

    def __init__(self, datalist: str | Path | None, out_dir: str | Path, settings: SearchSettings | None,
                 device: str | torch.device, resume: bool, dataset_dir: str | Path | None,
                 progress: Progress | None, overrides: list[str] | None) -> None:
        super().__init__(out_dir, progress)
        state = self.resume_state(resume)
        self._choose_settings_and_split(state, settings, datalist, dataset_dir, overrides)
        if not self.val_items:
            self.say("no validation cases: the architecture is decoded at each validation interval without Dice")
        self.setup_device(device)
        model, self.space = build_supernet(self.settings, self.dev)
        lr_w, lr_a = scaled_search_settings(self.settings, self.world)
        self.w_params, self.a_params = weight_parameters(model), arch_parameters(self.space)
        s = self.settings
        self.optimizer = torch.optim.SGD(self.w_params, lr=lr_w, momentum=s.momentum, weight_decay=s.weight_decay)
        betas = (s.arch_beta1, s.arch_beta2)
        self.opt_a = torch.optim.Adam([self.space.log_alpha_a], lr=lr_a, betas=betas, weight_decay=0.0)
        self.opt_c = torch.optim.Adam([self.space.log_alpha_c], lr=lr_a, betas=betas, weight_decay=0.0)
        self.iteration, self.best_iteration = 0, 0
        self.arch_name: str | None = None
        self.best_name: str | None = None
        self.attach(model, {"optimizer": self.optimizer, "opt_a": self.opt_a, "opt_c": self.opt_c}, state)
        if state is not None:
            self.iteration, self.best_iteration = int(state["iteration"]), int(state.get("best_iteration", 0))
            self.arch_name, self.best_name = state.get("arch_name"), state.get("best_name")
        self._build_loaders()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)

    def _choose_settings_and_split(self, state: dict[str, Any] | None, settings: SearchSettings | None,
                                   datalist: str | Path | None, dataset_dir: str | Path | None,
                                   overrides: list[str] | None) -> None:
        """Settings and the case split: the checkpoint's (then ``overrides``), else new from ``datalist``."""
        if state is not None:
            self.settings = make_search_settings(base=state["settings"], overrides=overrides)
            split = state["split"]
            self.items_w, self.items_a, self.val_items = split["weights"], split["arch"], split["validation"]
            self.datalist: str | None = split.get("datalist")
        else:
            self.settings = settings or make_search_settings("bundle", overrides)
            if datalist is None:
                raise SettingsError("--datalist is required")
            self.datalist = str(Path(datalist).resolve())
            train_items, self.val_items = load_training_cases(self.datalist, self.settings, dataset_dir)
            self.items_w, self.items_a = split_halves(train_items, self.settings.seed)
        check_search_settings(self.settings)

    def _build_loaders(self) -> None:
        """Each rank: its part of each half (repeated to equal length: DDP steps in lockstep) and of the
        validation cases (each case once; a rank may have none but still joins the all-reduce). RAM budget: half
        per half."""
        s = self.settings
        budget = int(s.cache_gb / 2 / self.world * 2**30)
        self.say(f"caching preprocessed cases (budget {s.cache_gb:g} GiB) ...")
        self.loader_w, self.val_loader = build_loaders(
            partition(self.items_w, shuffle=True, even_divisible=True, seed=s.seed),
            partition(self.val_items, shuffle=False, even_divisible=False), s, budget,
            with_validation=bool(self.val_items))
        self.loader_a, _ = build_loaders(partition(self.items_a, shuffle=True, even_divisible=True, seed=s.seed + 1),
                                         [], s, budget, with_validation=False)
        self.say(f"{len(self.items_w)} weight / {len(self.items_a)} architecture / {len(self.val_items)} validation "
                 f"cases; {len(self.loader_w)} steps per epoch per process; {self.world} process(es); "
                 f"device {self.dev}")

    def run_epoch(self, epoch: int, total: int) -> tuple[float, Row]:
        s = self.settings
        loop.reseed(s, epoch, self.rank, self.loader_w.dataset)
        loop.seed_transforms(self.loader_a.dataset, (s.seed * 31 + epoch * 7 + self.rank * 13 + 1) % (2**31 - 1))
        lr = weight_lr(s, epoch, self.world)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        means, arch_steps = self._steps(epoch, total)
        loss = float(means[0])
        row: Row = {"epoch": epoch + 1, "iteration": self.iteration, "loss": round(loss, 6), "lr": lr}
        if arch_steps:
            row.update({key: round(float(v), 6) for key, v in
                        zip(("loss_arch", "ram_ratio", "entropy_a", "entropy_c"), means[1:], strict=True)})
        if (epoch + 1) % s.val_interval == 0 or epoch + 1 == total:
            self._decode(epoch, row)
        return loss, row

    def _steps(self, epoch: int, total: int) -> tuple[torch.Tensor, int]:
        """An epoch of weight steps (first half), each followed after the warm-up by an architecture step
        (second half); the means over ranks of loss, arch loss, RAM ratio and entropies; the arch step count."""
        searching = epoch >= self.settings.warmup_epochs
        weight_ramp = ramp(self.settings, epoch) if searching else 0.0
        self.net.train()
        sums = torch.zeros(5, dtype=torch.float64)  # loss_w, loss_a, ram_ratio, entropy_a, entropy_c
        steps, arch_steps = len(self.loader_w), 0
        self._arch_batches = iter(self.loader_a)
        for step, batch in enumerate(self.loader_w):
            sums[0] += self._weight_step(batch, epoch)
            self.iteration += 1
            if searching:
                sums[1:] += self._arch_step(self._next_arch_batch(), weight_ramp)
                arch_steps += 1
            self.step_progress("search" if searching else "warmup", epoch, total, step + 1, steps,
                               float(sums[0]) / (step + 1))
        _set_trainable(self.w_params, True)
        _set_trainable(self.a_params, True)
        counts = torch.tensor([max(1, steps)] + [max(1, arch_steps)] * 4, dtype=torch.float64)
        return all_reduce_mean(sums / counts), arch_steps

    def _next_arch_batch(self) -> Batch:
        try:
            return next(self._arch_batches)
        except StopIteration:
            self._arch_batches = iter(self.loader_a)
            return next(self._arch_batches)

    def _weight_step(self, batch: Batch, epoch: int) -> float:
        """One SGD step of the network weights; the loss."""
        _set_trainable(self.w_params, True)
        _set_trainable(self.a_params, False)
        x, y = loop.to_device(batch, self.dev)
        loss = loop.optimise(lambda: self.loss_fn(self.net(x), y), [self.optimizer], self.scaler, self.precision)
        value = float(loss.detach())
        loop.check_finite(value, "search", f"weight loss is {value} at epoch {epoch + 1}")
        return value

    def _arch_step(self, batch: Batch, weight_ramp: float) -> torch.Tensor:
        """One Adam step of the architecture parameters; (loss, RAM ratio, path entropy, op entropy)."""
        _set_trainable(self.w_params, False)
        _set_trainable(self.a_params, True)
        x, y = loop.to_device(batch, self.dev)
        reg: dict[str, torch.Tensor] = {}

        def arch_loss() -> torch.Tensor:
            with loop.full_precision(self.precision):  # probabilities and RAM ratios in fp32
                reg.update(arch_regularisation(self.space, tuple(x.shape), self.settings))
            return self.loss_fn(self.net(x), y) + weight_ramp * (
                reg["entropy_a"] + reg["entropy_c"] + reg["ram_loss"] + TOPOLOGY_LOSS_WEIGHT * reg["topology"])

        loss = loop.optimise(arch_loss, [self.opt_a, self.opt_c], self.scaler, self.precision)
        values = [loss, reg["ram_ratio"], reg["entropy_a"], reg["entropy_c"]]
        return torch.tensor([float(v.detach()) for v in values], dtype=torch.float64)

    def _decode(self, epoch: int, row: Row) -> None:
        """Decode the architecture, score it on the validation cases, write it (and into best/ if better)."""
        arch = decode_space(self.space)
        score = float("nan")
        if self.val_loader is not None:
            score = self.validate(self.val_loader, epoch, row)
        self.arch_name = row["arch_file"] = f"search_code_{self.iteration}.pt"
        extra = {"iter_num": self.iteration, "epochs": epoch + 1,
                 "best_dsc": float(max(self.best, score if math.isfinite(score) else -1.0)),
                 "best_path": self.best_iteration}  # as the bundle: iteration of the best validation
        improved = math.isfinite(score) and score > self.best
        if improved:
            self.best, self.best_epoch, self.best_name, self.best_iteration = (score, epoch + 1, self.arch_name,
                                                                               self.iteration)
            extra.update(best_dsc=self.best, best_path=self.best_iteration)
        if self.main:
            _replace_arch(self.out, {**arch, **extra}, self.arch_name)
            if improved:
                _replace_arch(self.out / "best", {**arch, **extra}, self.arch_name)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "best_iteration": self.best_iteration, "arch_name": self.arch_name,
                "best_name": self.best_name,
                "split": {"datalist": self.datalist, "weights": _as_text_items(self.items_w),
                          "arch": _as_text_items(self.items_a), "validation": _as_text_items(self.val_items)}}

    def event_extra(self, row: Row) -> dict[str, Any]:
        return {"loss_arch": row.get("loss_arch"), "ram_ratio": row.get("ram_ratio"), "arch_file": row.get("arch_file")}

    def line_extra(self, row: Row) -> str:
        return f" RAM {row['ram_ratio']:.3f}" if row.get("ram_ratio") is not None else " (warm-up)"

    def finish_run(self) -> dict[str, Any]:
        """``search.json`` (rank 0) and the summary."""
        name = self.arch_name
        summary = {
            "search": str(self.out), "arch_file": str(self.out / name) if name else None,
            "best_arch_file": str(self.out / "best" / self.best_name) if self.best_name else None,
            "picture": str(self.out / Path(name).with_suffix(".png")) if name else None,
            "epochs": self.settings.epochs, "warmup_epochs": self.settings.warmup_epochs,
            "iterations": self.iteration, "world_size": self.world, **self.summary(),
            "settings": settings_dict(self.settings),
        }
        if self.main:
            write_text_atomic(self.out / "search.json", json.dumps(summary, indent=2) + "\n")
        self.finish(summary)
        return summary


def search(datalist: str | Path | None, out_dir: str | Path, settings: SearchSettings | None = None,
           device: str | torch.device = "auto", resume: bool = False, dataset_dir: str | Path | None = None,
           progress: Progress | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the architecture search into ``out_dir``; returns a summary (arch files, best Dice, times).

    With ``resume`` the newest checkpoint in ``out_dir/checkpoints`` is continued (its settings and data split,
    then ``overrides``); without it ``out_dir`` must not hold a search already.
    """
    run = Search(datalist, out_dir, settings, device, resume, dataset_dir, progress, overrides)
    run.run(run.settings.epochs)
    return run.finish_run()
