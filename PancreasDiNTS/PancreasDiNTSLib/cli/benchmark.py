"""``pancreas-dints benchmark``: argument parsing; the work is :mod:`PancreasDiNTSLib.benchmark.compare`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from PancreasDiNTSLib.benchmark.settings import QUICK, BenchmarkSettings
from PancreasDiNTSLib.core.request import ENGINES, PRECISIONS

HELP = "time the bundle's own inference against ours (same input, weights, device); last line is JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quick", action="store_true",
                   help=f"small random-weight bundle (channel_mul {QUICK.channel_mul}) on {QUICK.input}")
    p.add_argument("--model", type=Path, help="bundle folder to time, or official (default: random weights from the reference configs, "
                        "else the demo model)")
    p.add_argument("--input", type=Path, help="CT to segment (default: ../shared/data example CT)")
    p.add_argument("--reference", type=Path, help="reference bundle folder whose configs build the random bundle")
    p.add_argument("--channel-mul", type=float, help="channel_mul of the random bundle")
    p.add_argument("--num-blocks", type=int, help="num_blocks of the random bundle")
    p.add_argument("--arch", default="dense", choices=("dense", "random"),
                   help="random bundle topology: dense (all paths active, random ops: the stand-in of the GPU "
                        "profile, nothing for FastDiNTS to skip) or random (decoded TopologySearch, seed 0)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for both runs (OMP/MKL/torch); default: 1 with --quick on a CPU (robust on a "
                        "busy shared machine, where OpenMP barriers stall), else torch's default")
    p.add_argument("--modes", default="fast",
                   help="ours to time, comma separated: exact (the Segmenter's MONAI path), fast (FastDiNTS, "
                        "bit-identical network), fastmm (FastDiNTS with matrix-product upsampling: rounding-level "
                        "differences), each optionally :ENGINE or :ENGINE:BATCH (ENGINE eager|cuda-graph|compile, "
                        "BATCH n|auto), +auto for the automatic pancreas region (e.g. fast+auto; default: the "
                        "whole volume), and @PRECISION for that run's --precision (e.g. fast@fp32); the first one "
                        "is the one `speedup` compares (default fast)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="ours: the network's number format, as segment --precision (default auto: fp32 on a CPU, "
                        "the bundle's AMP on CUDA; bf16: the bf16 fast path on a CPU)")
    p.add_argument("--engine", default="eager", choices=ENGINES,
                   help="how ours runs the network (fast mode)")
    p.add_argument("--sw-batch-size", default=None, help="ours: windows per batch, or 'auto' (free GPU memory)")
    p.add_argument("--roi-cube-mm", type=float, default=0.0,
                   help="also time ROI mode (grid and local) on a cube of this size at the image centre")
    p.add_argument("--skip-bundle", action="store_true", help="do not run the bundle (timings of ours only)")
    p.add_argument("--workdir", type=Path, help="where to put bundles and outputs (default: a temp folder)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per subprocess")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.benchmark.compare import run_benchmark

    return run_benchmark(BenchmarkSettings(**{f.name: getattr(args, f.name)
                                              for f in dataclasses.fields(BenchmarkSettings)}))
