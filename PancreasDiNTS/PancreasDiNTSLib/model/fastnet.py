"""A static, unrolled forward of a searched DiNTS topology (same weights, same outputs, no host syncs).

MONAI's ``DiNTS``/``TopologyInstance`` decide at every forward which paths run by testing the arch codes, which
are tensors (on CUDA: one GPU->CPU sync per path, 120 per forward for the released 12x4 space), and create a
host scalar ``torch.tensor(0.0)`` per block (CUDA-graph capture fails on it). :class:`FastDiNTS` reads the arch
codes once, at construction, into Python ints/bools and keeps a fixed plan of module calls. It reuses MONAI's
own sub-modules under the same attribute names, so its ``state_dict`` has exactly the keys of the MONAI network
(a MONAI state dict loads with ``strict=True``), and it computes the same function:

* the per-path cell ``preprocess -> op`` is called piece by piece (``conv``/``norm`` modules of MONAI's blocks);
* the ReLU that starts every cell reading a node at its own resolution (same-resolution conv ops and the
  stride-2 down paths) is computed once per node and block instead of once per path (ReLU is elementwise, so
  the result is bit-identical);
* ``0.0 + x`` (MixedOp) and ``tensor(0.0) + x`` (TopologyInstance) are dropped: they return ``x`` exactly;
* the sum of the paths entering a node keeps MONAI's path order, so float rounding is the same;
* work whose result is never used is not done: stems of input nodes no block-0 path reads, cells whose output
  node nothing downstream reads, and the stem's trilinear resize by a factor of exactly 1 (an identity);
* a node MONAI feeds with ``zeros_like`` (``node_a[0][d] == 0`` while a path reads it) still gets zeros.

There are no tensor-valued conditions, no tensor creation from host data and no ``.item()`` in ``forward``,
so the module can be captured in a CUDA graph (:class:`CudaGraphForward`) or compiled with ``torch.compile``
without graph breaks. Use :func:`make_fast` on a built MONAI network (parameters are shared, not copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastDiNTS", "make_fast", "make_fast_bf16", "CudaGraphForward", "compile_fast"]


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _CellStep:
    """One active path of one block: read node ``src``, add the result into node ``dst``."""

    key: str  # cell_tree key, e.g. "(3, 4)"
    src: int
    dst: int
    pre: str  # "identity" | "align" | "down" | "up"
    op: str  # "skip" | "conv" | "p3d"


@dataclass
class _Plan:
    stems: list[tuple[int, bool]] = field(default_factory=list)  # (depth, feed zeros instead of the stem)
    stem_identity_resize: list[bool] = field(default_factory=list)  # per depth: first stem layer is x1 resize
    blocks: list[tuple[tuple[int, ...], tuple[_CellStep, ...]]] = field(default_factory=list)  # (relu nodes, cells)
    head: list[tuple[int, bool]] = field(default_factory=list)  # (res, add the node's output) deepest first
    skipped_cells: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Parts:
    """The modules one half of a cell (its preprocess or its op) calls, resolved once from MONAI's block:
    the convolution(s) in call order (``down``: the offset-0 and offset-1 convs), the InstanceNorm, and for
    ``up`` the trilinear x2 upsampling."""

    convs: tuple[nn.Module, ...]
    norm: nn.InstanceNorm3d
    up: nn.Module | None = None


def _bool(v: float) -> bool:
    return bool(float(v))


def _child(parent: nn.Module, name: str) -> nn.Module:
    """``parent.<name>`` as a module (MONAI's blocks keep their parts as attributes)."""
    sub = getattr(parent, name, None)
    if not isinstance(sub, nn.Module):
        raise ValueError(f"{type(parent).__name__}.{name} is not a module: FastDiNTS needs MONAI's DiNTS blocks")
    return sub


def _value(parent: nn.Module, name: str) -> Any:
    """A plain (non-module) attribute of a MONAI module: sizes and arch codes."""
    if not hasattr(parent, name):
        raise ValueError(f"{type(parent).__name__} has no {name}: FastDiNTS needs MONAI's DiNTS")
    return getattr(parent, name)


def _norm_of(parent: nn.Module) -> nn.InstanceNorm3d:
    norm = _child(parent, "norm")
    if not isinstance(norm, nn.InstanceNorm3d):
        raise ValueError(f"{type(parent).__name__}.norm: {type(norm).__name__} is not supported (InstanceNorm3d only)")
    return norm


def _layers(stem: nn.Module) -> list[nn.Module]:
    """The layers of a MONAI ``StemTS`` (its ``mod`` Sequential), in call order."""
    return list(_child(stem, "mod").children())


def _as_rows(codes: torch.Tensor | Sequence[Sequence[float]]) -> list[list[float]]:
    if isinstance(codes, torch.Tensor):
        return [[float(v) for v in row] for row in codes.detach().cpu().tolist()]
    return [[float(v) for v in row] for row in codes]


def _check_block(module: nn.Module, what: str) -> None:
    """Refuse networks built with a non-default activation/normalisation (the plan assumes ReLU/InstanceNorm)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ReLU) and sub.inplace:
            raise ValueError(f"{what}.{name}: in-place ReLU is not supported by FastDiNTS")
        if any(k in type(sub).__name__ for k in ("PReLU", "LeakyReLU", "BatchNorm", "GroupNorm", "LayerNorm")):
            raise ValueError(f"{what}.{name}: {type(sub).__name__} is not supported (DiNTS defaults only)")
        if isinstance(sub, nn.InstanceNorm3d) and sub.track_running_stats:
            raise ValueError(f"{what}.{name}: InstanceNorm with running stats is not supported")


def _only_op(cell: nn.Module, key: str) -> nn.Module:
    ops = _child(_child(cell, "op"), "ops")
    if not isinstance(ops, nn.ModuleList) or len(ops) != 1:
        n = len(ops) if isinstance(ops, nn.ModuleList) else "no list of"
        raise ValueError(f"cell {key}: {n} operations; a searched TopologyInstance has exactly one per path")
    return ops[0]


def _op_kind(cell: nn.Module, key: str) -> str:
    op = _only_op(cell, key)
    if isinstance(op, nn.Identity):
        return "skip"
    names = dict(op.named_children())
    if set(names) == {"acti", "conv", "norm"}:
        return "conv"
    if set(names) == {"acti", "conv", "conv_1", "norm"}:
        return "p3d"
    raise ValueError(f"cell {key}: unknown operation {type(op).__name__}")


def _pre_kind(cell: nn.Module, key: str) -> str:
    pre = _child(cell, "preprocess")
    if isinstance(pre, nn.Identity):
        return "identity"
    names = dict(pre.named_children())
    if set(names) == {"up", "acti", "conv", "norm"}:
        return "up"
    if set(names) == {"act", "conv_1", "conv_2", "norm"}:
        return "down"
    if set(names) == {"acti", "conv", "norm"}:
        return "align"
    raise ValueError(f"cell {key}: unknown preprocess {type(pre).__name__}")


def _build_plan(net: nn.Module) -> _Plan:
    space = _child(net, "dints_space")
    num_blocks, num_depths = int(_value(space, "num_blocks")), int(_value(space, "num_depths"))
    if type(space).__name__ != "TopologyInstance":
        raise ValueError(f"FastDiNTS needs a DiNTS built on a TopologyInstance, not {type(space).__name__}")
    if int(getattr(net, "_spatial_dims", 3)) != 3:
        raise ValueError("FastDiNTS supports 3D DiNTS only")
    arch_a = _as_rows(_value(space, "arch_code_a"))
    node_a = _as_rows(_value(net, "node_a"))
    to_in = [int(v) for v in _value(space, "arch_code2in")]
    to_out = [int(v) for v in _value(space, "arch_code2out")]
    cell_tree = _child(space, "cell_tree")
    n_paths = len(to_out)

    # 1) Walk forward as MONAI does, recording which nodes hold a tensor (True) or MONAI's scalar 0.0 (False).
    holds = [True] * num_depths  # the stems always give tensors (real or zeros_like)
    blocks_all: list[list[_CellStep]] = []
    for b in range(num_blocks):
        steps: list[_CellStep] = []
        new_holds = [False] * num_depths
        for p in range(n_paths):
            if not _bool(arch_a[b][p]):
                continue
            key = str((b, p))
            cell = _child(cell_tree, key)
            step = _CellStep(key, to_in[p], to_out[p], _pre_kind(cell, key), _op_kind(cell, key))
            if not holds[step.src]:
                if step.pre == "identity" and step.op == "skip":
                    continue  # MONAI: scalar 0.0 through identity+skip stays 0.0 and adds nothing
                raise ValueError(
                    f"arch codes: path {p} of block {b} reads node {step.src}, which no path of block {b - 1} "
                    "writes (MONAI's forward would apply a convolution to a scalar); the arch file is inconsistent"
                )
            steps.append(step)
            new_holds[step.dst] = True
        blocks_all.append(steps)
        holds = new_holds

    # 2) The head: MONAI starts at the deepest node flagged in the last row of node_a, then adds every
    #    shallower node's output (a tensor, or MONAI's scalar 0.0, which adds nothing).
    last = node_a[num_blocks]
    start = next((r for r in range(num_depths - 1, -1, -1) if _bool(last[r])), None)
    if start is None:
        raise ValueError("arch codes: node_a's last row has no active node; the network has no output")
    if not holds[start]:
        raise ValueError(f"arch codes: node_a marks output node {start} active but no path of the last block writes it")
    head = [(start, True)] + [(r, holds[r]) for r in range(start - 1, -1, -1)]

    # 3) Liveness, backwards: drop cells whose destination nothing reads.
    live = [False] * num_depths
    for r, used in head:
        live[r] = used
    plan = _Plan(head=head)
    kept_blocks: list[tuple[tuple[int, ...], tuple[_CellStep, ...]]] = []
    for b in range(num_blocks - 1, -1, -1):
        kept = [s for s in blocks_all[b] if live[s.dst]]
        plan.skipped_cells.extend(s.key for s in blocks_all[b] if not live[s.dst])
        live = [False] * num_depths
        for s in kept:
            live[s.src] = True
        relu_nodes = tuple(sorted({s.src for s in kept if s.pre in ("down", "align") or (
            s.pre == "identity" and s.op != "skip")}))
        kept_blocks.append((relu_nodes, tuple(kept)))
    plan.blocks = kept_blocks[::-1]
    plan.stems = [(d, not _bool(node_a[0][d])) for d in range(num_depths) if live[d]]
    stem_down = _child(net, "stem_down")
    for d in range(num_depths):
        first = _layers(_child(stem_down, str(d)))[0]
        plan.stem_identity_resize.append(isinstance(first, nn.Upsample) and _is_identity_resize(first))
    return plan


def _is_identity_resize(up: nn.Upsample) -> bool:
    sf = up.scale_factor
    factors = sf if isinstance(sf, tuple) else (sf,)
    return up.size is None and all(f is not None and float(f) == 1.0 for f in factors) and bool(up.align_corners)


def _pre_parts(step: _CellStep, cell: nn.Module) -> _Parts | None:
    """The modules of the path's preprocess (None: identity)."""
    if step.pre == "identity":
        return None
    pre = _child(cell, "preprocess")
    if step.pre == "down":
        return _Parts((_child(pre, "conv_1"), _child(pre, "conv_2")), _norm_of(pre))
    if step.pre == "up":
        return _Parts((_child(pre, "conv"),), _norm_of(pre), up=_child(pre, "up"))
    return _Parts((_child(pre, "conv"),), _norm_of(pre))


def _op_parts(step: _CellStep, cell: nn.Module) -> _Parts | None:
    """The modules of the path's operation (None: skip)."""
    if step.op == "skip":
        return None
    op = _only_op(cell, step.key)
    convs = (_child(op, "conv"),) if step.op == "conv" else (_child(op, "conv"), _child(op, "conv_1"))
    return _Parts(convs, _norm_of(op))


def _held(feats: list[torch.Tensor | None], node: int) -> torch.Tensor:
    """The tensor of a node the plan reads (the plan reads only nodes that hold one)."""
    x = feats[node]
    assert x is not None, f"plan reads node {node}, which holds no tensor"
    return x


# ---------------------------------------------------------------------------------------------- module


class _Space(nn.Module):
    """Holds MONAI's ``cell_tree`` under the name ``dints_space`` so parameter names stay the same."""

    def __init__(self, cell_tree: nn.ModuleDict) -> None:
        super().__init__()
        self.cell_tree = cell_tree


def _norm(mod: nn.InstanceNorm3d, x: torch.Tensor) -> torch.Tensor:
    # The same call nn.InstanceNorm3d.forward makes (minus its Python-side shape checks).
    return F.instance_norm(x, None, None, mod.weight, mod.bias, True, mod.momentum or 0.0, mod.eps)


def _norm_channels_last(mod: nn.InstanceNorm3d, x: torch.Tensor) -> torch.Tensor:
    """InstanceNorm of a channels-last tensor that stays channels-last: per window, the batch-statistics
    BatchNorm of that one window (the same function; PyTorch's channels-last kernel, statistics accumulated in
    fp32, fp32 affine parameters). ``F.instance_norm`` would copy to contiguous and back (measured: 2-4x the
    time of the normalisation itself in bf16)."""
    if x.shape[0] == 1:
        return F.batch_norm(x, None, None, mod.weight, mod.bias, True, 0.0, mod.eps)
    return torch.cat([F.batch_norm(x[i : i + 1], None, None, mod.weight, mod.bias, True, 0.0, mod.eps)
                      for i in range(x.shape[0])])


class FastDiNTS(nn.Module):
    """DiNTS inference with the topology baked in; same parameters and parameter names as the MONAI network."""

    def __init__(self, net: nn.Module, upsample: str = "native", roi: Sequence[int] | None = None,
                 bf16: bool = False) -> None:
        """``bf16``: compute in bfloat16, channels-last end to end (see :func:`make_fast_bf16`, which also casts
        the convolution weights; the input is cast on entry, the logits returned in float32).
        ``upsample="matmul"`` replaces the trilinear x2 upsampling (align_corners) of the up paths and output
        stems by three small matrix products (one per axis) with the same interpolation weights, for windows of
        size ``roi``: float rounding differs from PyTorch's kernel by about one ulp per step (not bit-identical),
        and it is several times faster on a CPU and runs on tensor cores on a GPU. Other input sizes use the
        native kernel. The interpolation matrices are non-persistent buffers: the state dict is unchanged."""
        super().__init__()
        for part in ("stem_down", "stem_up", "stem_finals"):
            _check_block(_child(net, part), part)
        cells = _child(_child(net, "dints_space"), "cell_tree")
        if not isinstance(cells, nn.ModuleDict):
            raise ValueError("dints_space.cell_tree is not a ModuleDict: FastDiNTS needs MONAI's DiNTS")
        _check_block(cells, "dints_space.cell_tree")
        self.plan = _build_plan(net)
        self.num_depths = int(_value(net, "num_depths"))
        self.filter_nums = [int(n) for n in _value(net, "filter_nums")]
        # registration order as in MONAI's DiNTS, so state_dict keys come in the same order
        self.dints_space = _Space(cells)
        self.stem_down = _child(net, "stem_down")
        self.stem_up = _child(net, "stem_up")
        self.stem_finals = _child(net, "stem_finals")
        # Python lists of modules resolved once, so forward does no string look-ups.
        self._stems = [
            (d, zero, _layers(_child(self.stem_down, str(d)))[1 if self.plan.stem_identity_resize[d] else 0:])
            for d, zero in self.plan.stems
        ]
        self._blocks = [
            (relu_nodes, [(s, _pre_parts(s, cells[s.key]), _op_parts(s, cells[s.key])) for s in steps])
            for relu_nodes, steps in self.plan.blocks
        ]
        self._head = [(r, add, _layers(_child(self.stem_up, str(r)))) for r, add in self.plan.head]
        if upsample not in ("native", "matmul"):
            raise ValueError(f"upsample must be 'native' or 'matmul', not {upsample!r}")
        self.upsample = upsample
        self.bf16 = bool(bf16)
        self._normf = _norm_channels_last if self.bf16 else _norm
        # bf16: the final ActiConvNormBlock's layers one by one, so its norm keeps the channels-last layout
        self._finals = [m for part in self.stem_finals.children()
                        for m in (part.children() if isinstance(part, nn.Sequential) else (part,))]
        self._up_sizes: set[int] = set()
        if upsample == "matmul" and not self.bf16:  # bf16 channels-last: PyTorch's kernel is the fast one
            if roi is None:
                raise ValueError("upsample='matmul' needs the window size (roi)")
            for size in roi:
                n = int(size)
                while n > 1 and n % 2 == 0:
                    n //= 2
                    if n not in self._up_sizes:
                        self._up_sizes.add(n)
                        self.register_buffer(f"_up_t{n}", _interp_matrix(n).t().contiguous(), persistent=False)
                        self.register_buffer(f"_up_{n}", _interp_matrix(n), persistent=False)

    # -- pieces of a cell ---------------------------------------------------------------------------
    def _up2(self, up: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Trilinear x2 (align_corners) by the module, or by matrix products when planned for this size."""
        d, h, w = x.shape[2], x.shape[3], x.shape[4]
        if self.upsample != "matmul" or not {d, h, w} <= self._up_sizes:
            return up(x)
        b, c = x.shape[0], x.shape[1]
        y = torch.matmul(x, getattr(self, f"_up_t{w}"))  # (b, c, d, h, 2w)
        y = torch.matmul(getattr(self, f"_up_{h}"), y)  # (b, c, d, 2h, 2w)
        y = torch.matmul(getattr(self, f"_up_{d}"), y.reshape(b, c, d, 4 * h * w))
        return y.reshape(b, c, 2 * d, 2 * h, 2 * w)

    def _preprocess(self, kind: str, pre: _Parts | None, x: torch.Tensor, rx: torch.Tensor | None) -> torch.Tensor:
        if pre is None:  # identity
            return x
        if kind == "down":  # FactorizedReduceBlock: act -> two stride-2 1x1x1 convs (offset 0 and 1) -> cat -> norm
            assert rx is not None
            if self.bf16:  # the offset-1 conv reads every second voxel: gather those (1/8), channels-last
                odd = rx[:, :, 1::2, 1::2, 1::2].contiguous(memory_format=torch.channels_last_3d)
                conv = pre.convs[1]
                assert isinstance(conv, nn.Conv3d)
                second = F.conv3d(odd, conv.weight, conv.bias)
            else:
                second = pre.convs[1](rx[:, :, 1:, 1:, 1:])
            return self._normf(pre.norm, torch.cat([pre.convs[0](rx), second], dim=1))
        if pre.up is not None:  # up, FactorizedIncreaseBlock: trilinear x2 -> act -> 1x1x1 conv -> norm
            return self._normf(pre.norm, pre.convs[0](torch.relu(self._up2(pre.up, x))))
        # align: ActiConvNormBlock
        return self._normf(pre.norm, pre.convs[0](torch.relu(x) if rx is None else rx))

    def _op(self, op: _Parts | None, x: torch.Tensor, rx: torch.Tensor | None) -> torch.Tensor:
        if op is None:  # skip
            return x
        y = torch.relu(x) if rx is None else rx
        for conv in op.convs:  # conv: conv; p3d: conv then conv_1
            y = conv(y)
        return self._normf(op.norm, y)

    def _layer(self, layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """One stem layer; in bf16 the norms keep the channels-last layout."""
        if self.bf16 and isinstance(layer, nn.InstanceNorm3d):
            return _norm_channels_last(layer, y)
        return layer(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(x, "as_tensor"):  # a MetaTensor: compute on the plain tensor (MONAI's inferer does the same)
            x = x.as_tensor()
        if self.bf16:
            x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        feats: list[torch.Tensor | None] = [None] * self.num_depths
        for d, zero, layers in self._stems:
            y = x
            for layer in layers:
                y = self._layer(layer, y)
            feats[d] = torch.zeros_like(y) if zero else y

        for relu_nodes, steps in self._blocks:
            relus: dict[int, torch.Tensor] = {}
            for k in relu_nodes:
                relus[k] = torch.relu(_held(feats, k))
            out: list[torch.Tensor | None] = [None] * self.num_depths
            for step, pre, op in steps:
                rx_pre = relus.get(step.src) if step.pre in ("down", "align") else None
                y = self._preprocess(step.pre, pre, _held(feats, step.src), rx_pre)
                rx_op = relus.get(step.src) if step.pre == "identity" else None
                y = self._op(op, y, rx_op)
                prev = out[step.dst]
                out[step.dst] = y if prev is None else prev + y  # MONAI's path order: same rounding
            feats = out

        temp: torch.Tensor | None = None
        for r, add, layers in self._head:
            if temp is None:
                y = _held(feats, r)
            else:
                y = _held(feats, r) + temp if add else temp
            for layer in layers[:-1]:  # ReLU, conv, InstanceNorm
                y = self._layer(layer, y)
            temp = self._up2(layers[-1], y) if isinstance(layers[-1], nn.Upsample) else self._layer(layers[-1], y)
        if not self.bf16:
            return self.stem_finals(temp)
        assert temp is not None
        for layer in self._finals:
            temp = self._layer(layer, temp)
        return temp.float()  # logits in fp32: the sliding window accumulates them in fp32

    def describe(self) -> dict[str, Any]:
        """The baked-in plan in words (for logs and tests)."""
        return {
            "cells_run": sum(len(s) for _, s in self._blocks),
            "cells_skipped": list(self.plan.skipped_cells),
            "stems_run": [d for d, zero, _ in self._stems if not zero],
            "stems_zero": [d for d, zero, _ in self._stems if zero],
            "head": [(r, add) for r, add, _ in self._head],
        }


def make_fast(net: nn.Module, upsample: str = "native", roi: Sequence[int] | None = None) -> FastDiNTS:
    """A :class:`FastDiNTS` sharing ``net``'s parameters (same device/dtype/mode as ``net``)."""
    fast = FastDiNTS(net, upsample=upsample, roi=roi)
    ref = next(net.parameters(), None)
    if ref is not None:
        fast.to(ref.device)  # the interpolation buffers, if any
    fast.train(net.training)
    return fast


def make_fast_bf16(net: nn.Module) -> FastDiNTS:
    """A bfloat16, channels-last :class:`FastDiNTS` for the CPU, on a copy of ``net``: the convolution weights
    are cast once to bf16 in ``channels_last_3d`` (``net`` keeps its fp32 parameters), the InstanceNorm affine
    parameters stay fp32 (PyTorch's channels-last batch-norm kernel takes them with bf16 input). Takes fp32
    (or bf16) windows, returns fp32 logits."""
    import copy

    clone = copy.deepcopy(net)
    for module in clone.modules():
        if isinstance(module, nn.Conv3d):
            module.to(dtype=torch.bfloat16, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    fast = FastDiNTS(clone, bf16=True)
    fast.train(net.training)
    return fast


def _interp_matrix(n: int) -> torch.Tensor:
    """(2n, n) matrix of trilinear x2 upsampling along one axis with align_corners=True, float32, with the
    source positions and weights computed as PyTorch's CPU/CUDA kernels compute them (in float32)."""
    m = 2 * n
    scale = torch.tensor(float(n - 1), dtype=torch.float32) / torch.tensor(float(m - 1), dtype=torch.float32)
    real = scale * torch.arange(m, dtype=torch.float32)
    i0 = torch.clamp(torch.floor(real).to(torch.int64), max=n - 1)
    lam = torch.clamp(real - i0.to(torch.float32), 0.0, 1.0)
    i1 = torch.clamp(i0 + 1, max=n - 1)
    a = torch.zeros(m, n, dtype=torch.float32)
    rows = torch.arange(m)
    a[rows, i0] += 1.0 - lam
    a[rows, i1] += lam
    return a


def compile_fast(model: nn.Module, mode: str | None = None, dynamic: bool = False) -> Any:
    """``torch.compile`` of the static graph (fixed window shape: ``dynamic=False``; ``fullgraph=True`` fails
    loudly on a graph break). ``mode`` as torch.compile's (None = default; "max-autotune-no-cudagraphs" tunes
    longer)."""
    return torch.compile(model, mode=mode, dynamic=dynamic, fullgraph=True)


# ---------------------------------------------------------------------------------------------- CUDA graphs


class CudaGraphForward:
    """Replays a CUDA graph of ``model`` for a fixed input shape; smaller batches are padded with zeros.

    ``__call__`` returns a view of the static output buffer, valid until the next call: consume (e.g. stitch)
    it before calling again, or clone it. Autocast (``amp``) is applied inside the captured region.
    """

    def __init__(self, model: nn.Module, batch_shape: tuple[int, ...], device: torch.device | str = "cuda",
                 dtype: torch.dtype = torch.float32, amp: bool = True, warmup: int = 2) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError("CudaGraphForward needs a CUDA device")
        self.model = model
        self.amp = amp
        self.static_in = torch.zeros(batch_shape, device=self.device, dtype=dtype)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):  # cuDNN algorithm selection and allocator warm-up outside the graph
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_out = self._run()

    def _run(self) -> torch.Tensor:
        # no autocast weight cache: the fp16 casts of the weights must be part of the captured graph
        with torch.autocast("cuda", enabled=self.amp, cache_enabled=False):
            return self.model(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        full = self.static_in.shape[0]
        if n > full:
            raise ValueError(f"batch of {n} windows, but the graph was captured for {full}")
        self.static_in[:n].copy_(x, non_blocking=True)
        if n < full:
            self.static_in[n:].zero_()
        self.graph.replay()
        return self.static_out[:n]
