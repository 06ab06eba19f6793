"""`pancreas-dints export`: write a TorchScript, ONNX or Torch-TensorRT copy of a trained model."""

from __future__ import annotations

import argparse
import sys

HELP = "Export a model folder to TorchScript, ONNX or TensorRT (usable with `segment --model FILE`)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="RUN",
                        help="model folder (a MONAI bundle, or a `train` run folder)")
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx", "trt"),
                        help="torchscript: traced TorchScript; onnx: ONNX (opset 17); "
                             "trt: Torch-TensorRT (needs the [trt] extra and a CUDA GPU)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="weight precision of the exported model (default fp32; fp16 is meant for GPUs)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="output file (default RUN/models/model.ts, model.onnx or model_trt.ts; "
                             "released files listed in large_files.yml are never replaced)")
    parser.add_argument("--device", default=None,
                        help="device used to trace/convert (default cuda if available, else cpu)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip re-loading the export and comparing it with the eager network")


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.model.export import export_model

    result = export_model(
        args.model,
        args.format,
        precision=args.precision,
        output=args.output,
        device=args.device,
        verify=not args.no_verify,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(f"wrote {result.path} ({result.seconds:.1f} s) and {result.sidecar.name}")
    return 0
