"""Benchmark (not a test): eager DiNTS vs its TorchScript / ONNX (/ TensorRT) exports, in one run.

    python Testing/benchmarks/export_formats.py [--channel-mul 1.0] [--num-blocks 12] [--device cpu]
        [--batch 4] [--repeats 3] [--formats torchscript,onnx] [--ct ../shared/data/example_ct_sm.nii.gz]

Builds a random-weight bundle from the released configs (the released architecture size by default: channel_mul 1,
12 blocks, 4 depths; random topology), exports it, and reports for each format: export time, median time per
batch of 96^3 patches (after one warm-up call), the ratio to eager, max |logit difference| and argmax agreement
on random patches, and, with --ct, the label agreement of the whole segmentation pipeline on that CT.
Prints one JSON object. TensorRT is included with --formats ...,trt on a machine with a GPU and torch_tensorrt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "pancreas_ct_dints_segmentation"


def _time(fn, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="released bundle folder (configs/)")
    ap.add_argument("--channel-mul", type=float, default=1.0)
    ap.add_argument("--num-blocks", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4, help="patches per call (the bundle's sw_batch_size is 4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", default="torchscript,onnx")
    ap.add_argument("--ct", default=None, help="also compare whole-pipeline labels on this CT (slow on a CPU)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import torch
    from PancreasDiNTSLib.model.export import export_model
    from PancreasDiNTSLib.model.loader import load_bundle
    from PancreasDiNTSLib.model.random_bundle import make_random_bundle

    work = Path(args.workdir or tempfile.mkdtemp(prefix="export_bench_"))
    bundle_dir = make_random_bundle(Path(args.reference), work / "bundle", channel_mul=args.channel_mul,
                                    num_blocks=args.num_blocks, seed=0)
    dev = torch.device(args.device)
    eager = load_bundle(bundle_dir).build_network(dev)
    x = torch.rand(args.batch, 1, 96, 96, 96, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        ref = eager(x)
        eager_s = _time(lambda: eager(x), args.repeats)
    result = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "channel_mul": args.channel_mul, "num_blocks": args.num_blocks, "batch": args.batch,
              "eager_s_per_batch": round(eager_s, 4), "formats": {}}
    labels_ref = None
    if args.ct:
        from PancreasDiNTSLib.inference.segmenter import Segmenter
        from PancreasDiNTSLib.io.images import read_image

        image = read_image(Path(args.ct)).image
        seg = Segmenter(load_bundle(bundle_dir), device=dev)
        labels_ref = seg.predict(image)
        result["eager_pipeline_s"] = round(sum(seg.timings.values()), 2)
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        entry: dict = {}
        try:
            t0 = time.perf_counter()
            exp = export_model(bundle_dir, fmt, device=dev, verify=False, log=lambda _m: None)
            entry["export_s"] = round(time.perf_counter() - t0, 2)
            net = load_bundle(exp.path).build_network(dev)
            with torch.no_grad():
                out = net(x)  # warm-up (TorchScript profiling runs, ORT allocations)
                s = _time(lambda net=net: net(x), args.repeats)
            entry.update(s_per_batch=round(s, 4), speedup_vs_eager=round(eager_s / s, 3),
                         max_abs_diff=float((out.float() - ref.float()).abs().max()),
                         argmax_agreement=float((out.argmax(1) == ref.argmax(1)).float().mean()),
                         file_mb=round(exp.path.stat().st_size / 2**20, 1))
            if labels_ref is not None:
                seg = Segmenter(load_bundle(exp.path), device=dev)
                labels = seg.predict(image)
                entry["pipeline_s"] = round(sum(seg.timings.values()), 2)
                entry["pipeline_label_agreement"] = float((labels == labels_ref).mean())
        except Exception as exc:  # report and go on with the other formats
            entry["error"] = str(exc).splitlines()[0][:300]
        result["formats"][fmt] = entry
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
