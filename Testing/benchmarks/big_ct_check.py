"""Memory check: segment a 512 x 512 x 1000 CT and report peak RAM (and peak GPU memory), last line JSON.

    python Testing/benchmarks/big_ct_check.py --model BUNDLE [--device cpu|cuda] [--gpu-mem-gb 8] [--workdir DIR]

The CT is the real ``example_ct.nii.gz`` (../shared/data) resampled (trilinear) to 512 x 512 x 1000 voxels of
0.71 x 0.59 x 0.34 mm: real anatomy, the size issue 7 names (366 x 303 x 336 mm, 504 windows at 1 mm as the
bundle). ``--gpu-mem-gb`` caps this process's CUDA memory (``torch.cuda.set_per_process_memory_fraction``) to
stand in for a smaller card. Without ``--model`` a random-weight bundle of the released configs is built
(``--channel-mul``, default 0.0625: the RAM peak is set by the volumes, not by the network's width).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "PancreasDiNTS"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

SHAPE = (512, 512, 1000)


def make_big_ct(source: Path, dest: Path) -> Path:
    """``source`` resampled to SHAPE voxels over the same field of view (uncompressed NIfTI, int16)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    img = nib.load(source)
    data = np.asarray(img.dataobj, dtype=np.float32)
    zoom = [n / s for n, s in zip(SHAPE, data.shape, strict=True)]
    big = ndimage.zoom(data, zoom, order=1).astype(np.int16)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.0 / z for z in zoom])
    nib.save(nib.Nifti1Image(big, affine), dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    from PancreasDiNTSLib.benchmark.compare import shared_dir as _shared_dir
    from PancreasDiNTSLib.benchmark.workers import PeakRSS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu-mem-gb", type=float, default=0.0, help="cap CUDA memory of this process (GiB)")
    p.add_argument("--channel-mul", type=float, default=0.0625)
    p.add_argument("--mode", default="fast")
    p.add_argument("--source", type=Path, help="CT to enlarge (default: ../shared/data/example_ct.nii.gz)")
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pdints-big-"))
    work.mkdir(parents=True, exist_ok=True)
    shared = _shared_dir()
    if shared is None:
        print("big_ct_check: ../shared (example CT, reference configs) not found", file=sys.stderr)
        return 2
    ct = work / "big_ct.nii"
    if not ct.exists():
        make_big_ct(args.source or shared / "data" / "example_ct.nii.gz", ct)
    model = args.model
    if model is None:
        from PancreasDiNTSLib.model.random_bundle import make_random_bundle

        model = work / f"bundle_mul{args.channel_mul}"
        if not (model / "models" / "model.pt").exists():
            make_random_bundle(shared / "reference" / "pancreas_ct_dints_segmentation", model,
                               channel_mul=args.channel_mul, seed=0)
    import torch

    if args.gpu_mem_gb and args.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(args.device)).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_mem_gb * 2**30 / total), torch.device(args.device))
    from PancreasDiNTSLib.inference.batch import SegmentSettings, run_segment

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        summary = run_segment(SegmentSettings((str(ct),), work / "out", model, device=args.device,
                                              formats=("nifti", "seg.nrrd"), progress="none", overwrite=True,
                                              mode=args.mode))
        seconds = time.perf_counter() - t0
    result = summary.results[0]
    report = json.loads((Path(result.output_dir) / "report.json").read_text()) if result.status == "ok" else {}
    out = {"status": result.status, "message": result.message, "shape": SHAPE, "device": args.device,
           "gpu_mem_cap_gib": args.gpu_mem_gb or None, "seconds": round(seconds, 1),
           "peak_rss_gib": round(rss.peak / 2**30, 2), "timings_s": report.get("timings_s"),
           "inference": report.get("inference")}
    if args.device.startswith("cuda"):
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(torch.device(args.device)) / 2**30, 2)
    print(json.dumps(out, default=str))
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
