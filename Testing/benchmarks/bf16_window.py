"""One sliding window on the CPU: the bf16 fast path against the fp32 fast path, side by side, 1 and 2 threads.

    python Testing/benchmarks/bf16_window.py [--width released|demo] [--reps 3] [--threads 1,2] [--onnx]

``released``: DiNTS at the released width (channel_mul 1, 12 blocks, 4 depths; a decoded random topology, seed 0,
trained-like norm parameters; 96^3 window) -- the released weights are not available offline, and the time of a
window depends on the width and the operations, not on the weights. ``demo``: the shipped demo model (its own
window). Variants, each built the way ``Segmenter`` builds it (``FastInferer``) and timed in turn within each
repetition (so the machine's load falls on all alike; the median is reported):

* ``fp32``: the fast path in fp32 (``--precision fp32``; bundle-exact);
* ``bf16``: ``make_fast_bf16`` (``--precision bf16``, what ``auto`` picks on a CPU with bf16 hardware);
* ``auto-no-bf16-hw``: what ``auto`` picks on a CPU without bf16 hardware (detection forced off with
  ``PANCREAS_DINTS_CPU_BF16=0``): must not be slower than ``fp32``;
* ``onnxruntime`` (``--onnx``): the fp32 fast network exported to ONNX (opset 17) run by ONNX Runtime's CPU
  provider (all graph optimisations): adopted only if >= 1.3x faster than ``bf16`` with the same agreement.

Also a per-layer-type profile of one window in fp32 and in bf16 (1 thread, ``torch.profiler`` self times grouped:
convolution, instance norm, upsampling, ReLU, add/concat, format conversions = copies/casts, other), and the
logits' agreement (max |difference|, argmax equal) of each variant with fp32. ``--peak-ram``: instead, the peak
RSS of a process that builds the network and runs ``--batch`` windows, once per precision (fresh processes). The
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENGINE = Path(__file__).resolve().parents[2] / "PancreasDiNTS"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

import torch  # noqa: E402
from PancreasDiNTSLib.inference.fastpath import FastInferer  # noqa: E402
from PancreasDiNTSLib.inference.precision import OVERRIDE_ENV, cpu_bf16_support, resolve_precision  # noqa: E402

GROUPS = {"convolution": ("conv",), "instance norm": ("batch_norm", "instance_norm"),
          "upsampling": ("upsample",), "ReLU": ("relu", "clamp_min"), "add/concat": ("aten::add", "aten::cat"),
          "format conversions": ("copy_", "contiguous", "_to_copy", "to_dense", "reorder")}
TARGET = 2.5


def build(width: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """(the MONAI network, its window)."""
    if width == "demo":
        from PancreasDiNTSLib.model.loader import load_bundle

        bundle = load_bundle(ENGINE / "PancreasDiNTSLib" / "resources" / "models" / "demo")
        return bundle.build_network("cpu").eval(), tuple(bundle.inference.roi_size)  # type: ignore[return-value]
    from PancreasDiNTSLib.model.bundle import NetworkSpec
    from PancreasDiNTSLib.model.network import build_dints, random_arch

    torch.manual_seed(0)
    net = build_dints(NetworkSpec(channel_mul=1.0, num_blocks=12, num_depths=4), random_arch(12, 4, seed=0)).eval()
    with torch.no_grad():  # trained-like norm parameters (as network_check.py)
        for name, prm in net.named_parameters():
            if prm.dim() == 1 and "stem_finals.1" not in name:
                prm.add_(torch.randn_like(prm) * 0.1)
    return net, (96, 96, 96)


def variant(net: torch.nn.Module, roi: tuple[int, int, int], requested: str, hardware: str | None) -> Any:
    """The window predictor Segmenter would run for ``--precision requested`` (detection forced by ``hardware``)."""
    old = os.environ.get(OVERRIDE_ENV)
    if hardware is not None:
        os.environ[OVERRIDE_ENV] = hardware
    try:
        prec = resolve_precision(requested, "cpu", True, False)
    finally:
        if old is None:
            os.environ.pop(OVERRIDE_ENV, None)
        else:
            os.environ[OVERRIDE_ENV] = old
    return FastInferer(net, roi, 0.5, "cpu", False, 1, bf16=prec.bf16).predictor, prec.name


def onnx_predictor(net: torch.nn.Module, x: torch.Tensor, threads: int, work: Path) -> Any:
    """ONNX Runtime session of the fp32 fast network (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from PancreasDiNTSLib.model.fastnet import make_fast

    path = work / "window.onnx"
    if not path.exists():
        with torch.no_grad():
            torch.onnx.export(make_fast(net), (x,), str(path), input_names=["image"], output_names=["logits"],
                              opset_version=17, do_constant_folding=True, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda t: torch.from_numpy(sess.run(None, {"image": t.numpy()})[0])


def profile(model: Any, x: torch.Tensor) -> dict[str, float]:
    """Seconds of one window per layer type (profiler self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with torch.inference_mode(), prof(activities=[ProfilerActivity.CPU]) as p:
        model(x)
    out = dict.fromkeys([*GROUPS, "other"], 0.0)
    for ev in p.key_averages():
        group = next((g for g, keys in GROUPS.items() if any(k in ev.key for k in keys)), "other")
        out[group] += ev.self_cpu_time_total / 1e6
    return {k: round(v, 3) for k, v in out.items()}


def time_variants(models: dict[str, Any], x: torch.Tensor, threads: int, reps: int
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Median (wall seconds, process CPU seconds) per variant. On a shared, overloaded machine the wall time
    includes waiting for a core; the CPU seconds (all threads) do not, so their ratio is the one to read there."""
    torch.set_num_threads(threads)
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up (oneDNN primitive creation, allocator)
            m(x)
        for _ in range(reps):
            for name, m in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                m(x)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def peak_ram(width: str, batch: int) -> dict[str, float]:
    """GiB of peak RSS of a fresh process building the network and running ``batch`` windows, per precision."""
    import subprocess

    out = {}
    for requested in ("fp32", "bf16"):
        code = (f"import resource, sys, torch; sys.argv = ['x']; import bf16_window as W; torch.set_num_threads(1); "
                f"net, roi = W.build({width!r}); m, _ = W.variant(net, roi, {requested!r}, None); "
                f"x = torch.rand({batch}, 1, *roi)\nwith torch.inference_mode(): m(x)\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ENGINE), str(Path(__file__).parent),
                                                           os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        out[requested] = round(int(proc.stdout.split()[-1]) / 2**20, 3)  # ru_maxrss: KiB on Linux
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", default="released", choices=("released", "demo"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (fp32, CPU provider)")
    p.add_argument("--peak-ram", action="store_true", help="only the peak RSS of fp32 and bf16 (fresh processes)")
    p.add_argument("--batch", type=int, default=4, help="--peak-ram: windows per call (the bundle's sw_batch_size)")
    args = p.parse_args(argv)
    if args.peak_ram:
        print(json.dumps({"width": args.width, "batch": args.batch, "peak_rss_gib": peak_ram(args.width, args.batch)}))
        return 0
    net, roi = build(args.width)
    x = torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(1))
    hw = cpu_bf16_support()
    models: dict[str, Any] = {}
    models["fp32"], _ = variant(net, roi, "fp32", None)
    models["bf16"], _ = variant(net, roi, "bf16", None)
    models["auto-no-bf16-hw"], picked = variant(net, roi, "auto", "0")
    report: dict[str, Any] = {"width": args.width, "roi": roi, "bf16_hardware": hw, "auto_without_hw_picks": picked,
                              "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0], "torch": torch.__version__}
    with torch.inference_mode():
        ref = models["fp32"](x)
        report["agreement"] = {}
        for name, m in models.items():
            y = m(x)
            report["agreement"][name] = {"max_abs_logit_diff": float((y - ref).abs().max()),
                                         "argmax_equal": float((y.argmax(1) == ref.argmax(1)).float().mean())}
    report["profile_1_thread_s"] = {}
    torch.set_num_threads(1)
    for name in ("fp32", "bf16"):
        report["profile_1_thread_s"][name] = profile(models[name], x)
    work = Path(tempfile.mkdtemp(prefix="pdints-window-"))
    report["threads"] = {}
    for n in (int(t) for t in args.threads.split(",")):
        timed = dict(models)
        if args.onnx:
            sess = onnx_predictor(net, x, n, work)
            if sess is not None:
                timed["onnxruntime"] = sess
                if "onnxruntime" not in report["agreement"]:
                    y = sess(x)
                    report["agreement"]["onnxruntime"] = {
                        "max_abs_logit_diff": float((y - ref).abs().max()),
                        "argmax_equal": float((y.argmax(1) == ref.argmax(1)).float().mean())}
        sec, cpu = time_variants(timed, x, n, args.reps)
        row: dict[str, Any] = {f"{k}_s": round(v, 3) for k, v in sec.items()} | \
            {f"{k}_cpu_s": round(v, 3) for k, v in cpu.items()}
        for what, t in (("", sec), ("_cpu", cpu)):
            row[f"bf16_speedup{what}"] = round(t["fp32"] / t["bf16"], 2)
            row[f"auto_no_hw_vs_fp32{what}"] = round(t["fp32"] / t["auto-no-bf16-hw"], 3)
            if "onnxruntime" in t:
                row[f"onnxruntime_vs_bf16{what}"] = round(t["bf16"] / t["onnxruntime"], 3)
        report["threads"][str(n)] = row
        print(f"{n} thread(s): " + "  ".join(f"{k} {v}" for k, v in row.items()), file=sys.stderr, flush=True)
    report["loadavg_end"] = os.getloadavg()[0]
    report["speedup_ok"] = {k: max(r["bf16_speedup"], r["bf16_speedup_cpu"]) >= TARGET
                            for k, r in report["threads"].items()}
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
