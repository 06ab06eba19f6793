"""FastDiNTS (static unrolled forward) against MONAI's DiNTS forward: same state dict, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PancreasDiNTSLib.model.fastnet import FastDiNTS, make_fast
from PancreasDiNTSLib.model.loader import load_bundle
from PancreasDiNTSLib.model.network import build_dints, monai_notice_dropped, random_arch
from PancreasDiNTSLib.model.random_bundle import make_random_bundle
from PancreasDiNTSLib.model.spec import NetworkSpec


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a shared 2-core CI machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _paths(num_depths: int) -> tuple[list[int], list[int]]:
    n = 3 * num_depths - 2
    to_in = [(i + 1) // 3 - 1 + (i + 1) % 3 for i in range(n)]
    to_out = [m for m in range(num_depths) for _ in range(3)][1:-1]
    return to_in, to_out


def consistent_arch(num_blocks: int, num_depths: int, seed: int, keep: float = 0.4) -> dict[str, np.ndarray]:
    """A random topology in which some nodes are inactive (no incoming path) and some outputs are never read."""
    rng = np.random.default_rng(seed)
    to_in, to_out = _paths(num_depths)
    n = len(to_in)
    active = set(rng.choice(num_depths, size=rng.integers(1, num_depths + 1), replace=False).tolist())
    arch_a = np.zeros((num_blocks, n))
    node_a = np.zeros((num_blocks + 1, num_depths), dtype=np.int64)
    for b in range(num_blocks):
        cand = [p for p in range(n) if to_in[p] in active]
        chosen = [p for p in cand if rng.random() < keep] or [int(rng.choice(cand))]
        arch_a[b, chosen] = 1
        if b == 0:
            node_a[0, sorted({to_in[p] for p in chosen})] = 1
        active = {to_out[p] for p in chosen}
        node_a[b + 1, sorted(active)] = 1
    return {"node_a": node_a, "arch_code_a": arch_a,
            "arch_code_c": rng.integers(0, 5, size=(num_blocks, n)).astype(np.int64)}


def _pair(arch: dict, blocks: int, depths: int, mul: float = 0.125, seed: int = 0):
    torch.manual_seed(seed)
    net = build_dints(NetworkSpec(channel_mul=mul, num_blocks=blocks, num_depths=depths), arch).eval()
    with torch.no_grad():  # non-trivial affine norms so that every parameter matters
        for name, p in net.named_parameters():
            if "norm" in name or name.endswith((".2.weight", ".2.bias", ".5.weight", ".5.bias")):
                p.add_(torch.randn_like(p) * 0.3)
    return net, make_fast(net)


def _max_diff(net, fast, x) -> float:
    with torch.no_grad():
        return float((net(x) - fast(x)).abs().max())


# MONAI-decoded topologies (TopologySearch.decode; 4 depths take seconds to decode, so one of them) and random
# consistent ones with inactive nodes and unread outputs.
ARCHS = [("random_arch", 4, 3, 0), ("random_arch", 3, 3, 1), ("random_arch", 2, 4, 0)] + [
    ("consistent", 5, 4, s) for s in (3, 7, 11)] + [("consistent", 4, 3, 5)]


@pytest.mark.slow
@pytest.mark.parametrize("kind,blocks,depths,seed", ARCHS)
def test_same_outputs_as_monai(kind, blocks, depths, seed):
    arch = random_arch(blocks, depths, seed=seed) if kind == "random_arch" else consistent_arch(blocks, depths, seed)
    net, fast = _pair(arch, blocks, depths, seed=seed)
    side = 2 ** (depths + 1)
    x = torch.randn(2, 1, 2 * side, side, 2 * side)
    assert _max_diff(net, fast, x) < 1e-5


def test_inactive_nodes_and_dead_cells_are_planned():
    found_dead = found_partial = False
    for seed in range(40):
        arch = consistent_arch(5, 4, seed)
        _, fast = _pair(arch, 5, 4, seed=seed)
        info = fast.describe()
        found_dead |= bool(info["cells_skipped"])
        found_partial |= int(arch["node_a"][1:].sum()) < arch["node_a"][1:].size
        if found_dead and found_partial:
            break
    assert found_dead and found_partial


def test_zero_fed_input_node_matches_monai():
    """node_a[0][d] == 0 while a block-0 path reads node d: MONAI feeds zeros_like(stem), so must we."""
    arch = consistent_arch(4, 4, seed=2)
    _, fast = _pair(arch, 4, 4, seed=2)
    d = fast.describe()["stems_run"][0]  # an input node a live cell reads
    arch["node_a"][0, d] = 0
    net, fast = _pair(arch, 4, 4, seed=2)
    assert d in fast.describe()["stems_zero"]
    assert _max_diff(net, fast, torch.randn(1, 1, 32, 32, 64)) < 1e-5


def test_inconsistent_arch_is_refused():
    arch = consistent_arch(3, 3, seed=1)
    to_in, _ = _paths(3)
    # make block 1 read a node that block 0 does not write, through a convolution
    written = {m for p, m in enumerate([m for m in range(3) for _ in range(3)][1:-1]) if arch["arch_code_a"][0, p]}
    bad = next(p for p in range(len(to_in)) if to_in[p] not in written)
    arch["arch_code_a"][1, bad] = 1
    arch["arch_code_c"][1, bad] = 1  # conv_3x3x3
    net = build_dints(NetworkSpec(channel_mul=0.125, num_blocks=3, num_depths=3), arch)
    with pytest.raises(ValueError, match="inconsistent"):
        FastDiNTS(net)


def test_state_dict_is_monai_compatible():
    arch = consistent_arch(3, 4, seed=4)
    net, fast = _pair(arch, 3, 4)
    assert list(fast.state_dict().keys()) == list(net.state_dict().keys())
    # a second, independently built network loads the first one's MONAI state dict into its fast form
    other = build_dints(NetworkSpec(channel_mul=0.125, num_blocks=3, num_depths=4), arch).eval()
    fast2 = make_fast(other)
    fast2.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(fast2(x), fast(x))


@pytest.mark.slow
def test_forward_has_no_graph_breaks_and_no_syncs():
    """torch.compile(fullgraph=True) must trace the whole forward (fails on any graph break)."""
    pytest.importorskip("torch._dynamo")
    arch = random_arch(3, 3, seed=6)
    net, fast = _pair(arch, 3, 3)
    import torch._dynamo as dynamo

    dynamo.reset()
    explained = dynamo.explain(fast)(torch.randn(1, 1, 16, 16, 16))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    # and the MONAI forward, for contrast, does not trace as one graph when its arch codes are tensors
    dynamo.reset()


def test_metatensor_input_and_batch_independence():
    from monai.data import MetaTensor

    arch = consistent_arch(3, 4, seed=8)
    net, fast = _pair(arch, 3, 4)
    x = torch.randn(3, 1, 32, 32, 32)
    with torch.no_grad():
        whole = fast(MetaTensor(x))
        assert type(whole) is torch.Tensor
        single = torch.cat([fast(x[i : i + 1]) for i in range(3)])
    assert float((whole - single).abs().max()) < 1e-5


def test_matmul_upsampling_close_to_monai():
    """upsample="matmul": the interpolation matrix reproduces PyTorch's linear align_corners weights, and the
    network stays within float rounding of MONAI's (not bit-identical), with the same argmax almost everywhere."""
    from PancreasDiNTSLib.model.fastnet import _interp_matrix

    for n in (3, 6, 12, 24, 48):
        v = torch.randn(5, n)
        ref = torch.nn.functional.interpolate(v[None], scale_factor=2, mode="linear", align_corners=True)[0]
        assert float((v @ _interp_matrix(n).t() - ref).abs().max()) < 1e-6
    arch = consistent_arch(4, 4, seed=3)
    net, _ = _pair(arch, 4, 4, seed=3)
    fast = make_fast(net, upsample="matmul", roi=(32, 32, 64))
    assert list(fast.state_dict().keys()) == list(net.state_dict().keys())  # buffers are not persistent
    x = torch.randn(2, 1, 32, 32, 64)
    with torch.no_grad():
        a, b = net(x), fast(x)
    assert float((a - b).abs().max()) < 1e-4 * max(1.0, float(a.abs().max()))
    assert float((a.argmax(1) == b.argmax(1)).float().mean()) > 0.999


def test_building_prints_nothing(capsys):
    """MONAI's "Length of input patch is recommended..." notice is dropped: stdout stays clean for JSON progress
    and stderr free for the CLI's one-line errors."""
    build_dints(NetworkSpec(channel_mul=0.0625, num_blocks=2, num_depths=3), random_arch(2, 3, seed=0))
    assert capsys.readouterr() == ("", "")


def test_notice_filter_keeps_other_output_and_errors(capsys):
    with pytest.raises(RuntimeError, match="real"), monai_notice_dropped():
        print("2026-01-01 - Length of input patch is recommended to be a multiple of 32.")
        print("something else")
        raise RuntimeError("a real error")
    out, err = capsys.readouterr()
    assert out == "" and err == "something else\n"


def test_dense_random_bundle_leaves_nothing_to_skip(tmp_path, reference_bundle):
    """The benchmark's dense stand-in: every path and node active, so FastDiNTS runs every cell and stem."""
    dest = make_random_bundle(reference_bundle, tmp_path / "dense", channel_mul=0.0625, num_blocks=2, topology="dense")
    bundle = load_bundle(dest)
    arch = bundle.load_arch()
    assert arch["arch_code_a"].all() and arch["node_a"].all()
    plan = make_fast(bundle.build_network()).describe()
    assert plan["cells_skipped"] == [] and plan["stems_zero"] == []
