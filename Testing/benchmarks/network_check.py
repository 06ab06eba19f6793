"""Network-only check of FastDiNTS against MONAI's DiNTS: equality, host syncs, time per window.

Part of ``gpu_check.sh`` (released size on a GPU); also runs on a CPU with small sizes::

    python Testing/benchmarks/network_check.py --device cuda                       # 12 blocks, channel_mul 1
    python Testing/benchmarks/network_check.py --device cpu --channel-mul 0.0625 --num-blocks 4 --roi 32

Variants timed (fp16 autocast on CUDA, fp32 on CPU; ms per window at --batch windows per call):
``monai-cuda-codes`` (as the bundle builds it: arch codes as CUDA tensors), ``monai-cpu-codes``, ``fast-eager``,
``fastmm-eager`` (matrix-product upsampling), ``fast-cuda-graph`` / ``fastmm-cuda-graph`` and
``fastmm-channels-last`` (CUDA only),
``fast-compile`` (torch.compile, fullgraph; with --compile). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "PancreasDiNTS"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PancreasDiNTSLib.model.bundle import NetworkSpec  # noqa: E402
from PancreasDiNTSLib.model.fastnet import CudaGraphForward, compile_fast, make_fast  # noqa: E402
from PancreasDiNTSLib.model.network import build_dints, random_arch  # noqa: E402


def monai_as_bundle(spec: NetworkSpec, arch: dict, device: torch.device) -> torch.nn.Module:
    """DiNTS built the way the released config builds it: TopologyInstance(device=<the GPU>)."""
    from monai.networks.nets import DiNTS, TopologyInstance

    space = TopologyInstance(
        arch_code=[np.asarray(arch["arch_code_a"]), np.asarray(arch["arch_code_c"]).astype(np.int64)],
        channel_mul=spec.channel_mul, num_blocks=spec.num_blocks, num_depths=spec.num_depths,
        use_downsample=True, device=str(device))
    return DiNTS(dints_space=space, in_channels=1, num_classes=3, use_downsample=True,
                 node_a=torch.from_numpy(np.asarray(arch["node_a"]).astype(np.int64)))


def count_syncs(fn, device: torch.device) -> int | None:
    """Host-device synchronisations during fn() (CUDA sync debug mode), None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def timed(fn, device: torch.device, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


class Rows(dict):
    """Timings, printed as they come (a timeout later still leaves the table so far)."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch

    def __setitem__(self, name: str, sec: float) -> None:
        super().__setitem__(name, sec)
        base = self.get("monai-cuda-codes", sec)
        print(f"{name:<20}{1000 * sec / self.batch:10.2f}{base / sec:10.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--channel-mul", type=float, default=1.0)
    p.add_argument("--num-blocks", type=int, default=12)
    p.add_argument("--num-depths", type=int, default=4)
    p.add_argument("--roi", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="dense", choices=("dense", "random"),
                   help="dense: all paths active (nothing to skip); random: a decoded TopologySearch")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (takes a minute or more)")
    args = p.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    report: dict = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__,
                    "cudnn": torch.backends.cudnn.version() if cuda else None, "batch": args.batch}

    t0 = time.perf_counter()
    spec = NetworkSpec(channel_mul=args.channel_mul, num_blocks=args.num_blocks, num_depths=args.num_depths)
    if args.arch == "dense":  # every path active, random operations: the stand-in of shared/notes/gpu_profile.md
        rng = np.random.default_rng(args.seed)
        n_paths = 3 * args.num_depths - 2
        arch = {"node_a": np.ones((args.num_blocks + 1, args.num_depths), dtype=np.int64),
                "arch_code_a": np.ones((args.num_blocks, n_paths)),
                "arch_code_c": rng.integers(0, 5, size=(args.num_blocks, n_paths)).astype(np.int64)}
    else:
        arch = random_arch(args.num_blocks, args.num_depths, seed=args.seed)
    torch.manual_seed(args.seed)
    ref = build_dints(spec, arch).eval()  # arch codes as CPU data
    with torch.no_grad():  # trained-like norm parameters
        for name, prm in ref.named_parameters():
            if prm.dim() == 1 and "stem_finals.1" not in name:
                prm.add_(torch.randn_like(prm) * 0.1)
    bundle_like = monai_as_bundle(spec, arch, dev).eval()
    bundle_like.load_state_dict(ref.state_dict())
    ref.to(dev)
    bundle_like.to(dev)
    fast = make_fast(ref)
    fastmm = make_fast(ref, upsample="matmul", roi=(args.roi,) * 3)
    report["build_s"] = round(time.perf_counter() - t0, 1)
    report["params_M"] = round(sum(q.numel() for q in ref.parameters()) / 1e6, 1)
    report["plan"] = {k: v for k, v in fast.describe().items() if k != "head"}

    amp = cuda
    shape = (args.batch, 1, args.roi, args.roi, args.roi)
    x = torch.rand(shape, device=dev)
    with torch.inference_mode():
        # equality, fp32 (TF32 off), then under autocast
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        xs = x[:2]
        y_ref, y_fast, y_bundle = ref(xs), fast(xs), bundle_like(xs)
        report["maxdiff_fp32_fast_vs_monai"] = float((y_fast - y_ref).abs().max())
        report["maxdiff_fp32_bundle_vs_monai"] = float((y_bundle - y_ref).abs().max())
        report["argmax_equal_fp32"] = float((y_fast.argmax(1) == y_ref.argmax(1)).float().mean())
        y_mm = fastmm(xs)
        report["maxdiff_fp32_fastmm_vs_monai"] = float((y_mm - y_ref).abs().max())
        report["argmax_equal_fp32_fastmm"] = float((y_mm.argmax(1) == y_ref.argmax(1)).float().mean())
        if cuda:
            torch.backends.cudnn.allow_tf32 = True
            with torch.autocast("cuda"):
                a, b = ref(xs), fast(xs)
            report["maxdiff_fp16_fast_vs_monai"] = float((a.float() - b.float()).abs().max())
            report["argmax_equal_fp16"] = float((a.argmax(1) == b.argmax(1)).float().mean())
            with torch.autocast("cuda"):
                c = fastmm(xs)
            report["maxdiff_fp16_fastmm_vs_monai"] = float((a.float() - c.float()).abs().max())
            report["argmax_equal_fp16_fastmm"] = float((a.argmax(1) == c.argmax(1)).float().mean())

        def run(model):
            def _f():
                with torch.autocast("cuda", enabled=amp):
                    return model(x)
            return _f

        report["host_syncs_per_forward"] = {
            "monai-cuda-codes": count_syncs(run(bundle_like), dev),
            "fast-eager": count_syncs(run(fast), dev),
        }
        rows = Rows(args.batch)
        print(f"\n{'network variant':<20}{'ms/window':>10}{'vs bundle':>10}   ({report['device']}, batch "
              f"{args.batch}, {'fp16 autocast' if amp else 'fp32'}, roi {args.roi})", flush=True)
        rows["monai-cuda-codes"] = timed(run(bundle_like), dev, args.iters)
        rows["monai-cpu-codes"] = timed(run(ref), dev, args.iters)
        rows["fast-eager"] = timed(run(fast), dev, args.iters)
        rows["fastmm-eager"] = timed(run(fastmm), dev, args.iters)
    if cuda:
        try:
            graph = CudaGraphForward(fast, shape, dev, amp=amp)
            with torch.inference_mode():
                out = graph(x)
                with torch.autocast("cuda"):
                    eager = fast(x)
                report["maxdiff_graph_vs_eager"] = float((out.float() - eager.float()).abs().max())
            rows["fast-cuda-graph"] = timed(lambda: graph(x), dev, args.iters)
            del graph
            graph_mm = CudaGraphForward(fastmm, shape, dev, amp=amp)
            rows["fastmm-cuda-graph"] = timed(lambda: graph_mm(x), dev, args.iters)
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            report["cuda_graph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if cuda:  # last: converts the shared parameters to channels_last_3d
        try:
            fastmm.to(memory_format=torch.channels_last_3d)
            x_cl = x.contiguous(memory_format=torch.channels_last_3d)

            def run_cl():
                with torch.inference_mode(), torch.autocast("cuda"):
                    return fastmm(x_cl)
            rows["fastmm-channels-last"] = timed(run_cl, dev, args.iters)
        except Exception as exc:  # noqa: BLE001
            report["channels_last_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if args.compile:
        try:
            t0 = time.perf_counter()
            compiled = compile_fast(fast)
            with torch.inference_mode():
                with torch.autocast("cuda", enabled=amp):
                    out = compiled(x)
                if cuda:
                    torch.cuda.synchronize()
                report["compile_s"] = round(time.perf_counter() - t0, 1)
                with torch.autocast("cuda", enabled=amp):
                    eager = fast(x)
                report["maxdiff_compile_vs_eager"] = float((out.float() - eager.float()).abs().max())
                rows["fast-compile"] = timed(run(compiled), dev, args.iters)
        except Exception as exc:  # noqa: BLE001
            report["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if cuda:
        report["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    report["ms_per_window"] = {k: round(1000 * v / args.batch, 3) for k, v in rows.items()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
