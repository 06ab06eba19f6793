"""``pancreas-dints benchmark``: the bundle's own inference against ours, same input, weights and device.

Both run as real subprocesses, one after the other, with the same thread settings:

* **bundle** -- the released ``configs/inference.yaml`` through ``monai.bundle``'s own ``create_workflow`` ->
  ``run`` -> ``finalize`` (exactly what ``python -m monai.bundle run --config_file configs/inference.yaml``
  does), with ignite event timers added. Overrides, all data except where the release cannot run as is:

  - ``data_list_file_path``/``dataset_dir``/``output_dir``/``bundle_root``: the input and output places;
  - ``arch_ckpt``: torch >= 2.6 refuses the released numpy arch file as released; the override keeps
    ``weights_only=True`` after allowing numpy's array types (bundle.monai_arch_ckpt_override; ``map_location``
    kept as released on CUDA, ``cpu`` on a CPU run);
  - ``dints_space#device``: ``cpu`` on a CPU run only (the release hard-codes ``cuda``).

* **ours** -- read (imaging.read_image) -> preprocess (Segmenter.preprocess: the bundle's transforms) -> infer
  (FastDiNTS + fastpath.sliding_window_exact_skip) -> invert (Segmenter.postprocess: softmax, Invertd, argmax, as
  the bundle) -> write (writers.write_label_nifti). ``--modes exact`` adds the Segmenter's MONAI path.

Each stage is timed (CUDA synchronised), with peak RAM (process tree, sampled) and peak GPU memory. The last
line printed is JSON with ``speedup`` (bundle pipeline seconds / ours; pipeline = read .. write, the evaluator
run for the bundle), ``speedup_process`` (whole subprocess wall times) and ``agreement`` (fraction of voxels
whose labels are equal).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PancreasDiNTSLib.core.errors import DeviceError, InputError, ModelError
from PancreasDiNTSLib.model.bundle import monai_arch_ckpt_override

if TYPE_CHECKING:
    import numpy as np
    import psutil

    from PancreasDiNTSLib.inference.segmenter import Segmenter
    from PancreasDiNTSLib.io.images import LoadedImage

HELP = "time the bundle's own inference against ours (same input, weights, device); last line is JSON"



@dataclass(frozen=True)
class Preset:
    """The random-weight bundle and the input CT of a benchmark run."""

    channel_mul: float
    num_blocks: int
    input: str


QUICK = Preset(channel_mul=0.0625, num_blocks=12, input="example_ct_sm.nii.gz")
FULL = Preset(channel_mul=1.0, num_blocks=12, input="example_ct.nii.gz")
ENGINES = ("eager", "cuda-graph", "compile")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quick", action="store_true",
                   help=f"small random-weight bundle (channel_mul {QUICK.channel_mul}) on {QUICK.input}")
    p.add_argument("--model", type=Path, help="bundle folder to time (default: random weights, reference configs)")
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
                        "BATCH n|auto), and +auto for the automatic pancreas region (e.g. fast+auto; default: the "
                        "whole volume); the first one is the one `speedup` compares (default fast)")
    p.add_argument("--engine", default="eager", choices=ENGINES,
                   help="how ours runs the network (fast mode)")
    p.add_argument("--sw-batch-size", default=None, help="ours: windows per batch, or 'auto' (free GPU memory)")
    p.add_argument("--roi-cube-mm", type=float, default=0.0,
                   help="also time ROI mode (grid and local) on a cube of this size at the image centre")
    p.add_argument("--skip-bundle", action="store_true", help="do not run the bundle (timings of ours only)")
    p.add_argument("--workdir", type=Path, help="where to put bundles and outputs (default: a temp folder)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per subprocess")


# ---------------------------------------------------------------------------------------------- helpers


def _shared_dir() -> Path | None:
    env = os.environ.get("PANCREAS_DINTS_SHARED")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" for p in list(here.parents)[:6]] + [Path.cwd() / "shared", Path.cwd().parent / "shared"]
    return next((c for c in candidates if (c / "data").is_dir() or (c / "reference").is_dir()), None)


class PeakRSS:
    """Samples the RSS of this process and its children (DataLoader workers) in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.proc: psutil.Process | None
        try:
            import psutil

            self.proc = psutil.Process()
        except ImportError:  # psutil missing (e.g. a bare GPU box): fall back to this process's ru_maxrss
            self.proc = None
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if self.proc is None:
            import resource

            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            return
        total = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except Exception:  # noqa: BLE001 - a process may vanish between listing and reading
            procs = [self.proc]
        for p in procs:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001
                pass
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def _gpu_peaks(device: str) -> dict[str, float]:
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return {}
    return {"peak_gpu_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (DataLoader workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# ---------------------------------------------------------------------------------------------- workers


def bundle_overrides(bundle: Path, datalist: Path, data_dir: Path, out_dir: Path, device: str) -> dict[str, str]:
    """The CLI overrides the released config needs here (documented in the module docstring)."""
    cuda = device.startswith("cuda")
    loc = "cuda" if cuda else "cpu"
    ov = {
        "bundle_root": str(bundle),
        "data_list_file_path": str(datalist),
        "dataset_dir": str(data_dir),
        "output_dir": str(out_dir),
        "arch_ckpt": monai_arch_ckpt_override(loc),
    }
    if not cuda:
        ov["dints_space#device"] = "$torch.device('cpu')"
    return ov


def bundle_command(bundle: Path, overrides: dict[str, str]) -> list[str]:
    """The equivalent ``python -m monai.bundle run`` command line (printed for reference)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.yaml")]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    return cmd


class _Timed:
    """Wraps one post-processing transform to time it."""

    def __init__(self, transform: Any, name: str, log: dict[str, float], device: str) -> None:
        self.transform, self.name, self.log, self.device = transform, name, log, device

    def __call__(self, data: Any) -> Any:
        t0 = time.perf_counter()
        out = self.transform(data)
        _sync(self.device)
        self.log[self.name] = self.log.get(self.name, 0.0) + time.perf_counter() - t0
        return out


def worker_bundle(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the released inference config through monai.bundle, with timers."""
    t_start = time.perf_counter()
    with PeakRSS() as rss:
        _set_threads(cfg.get("threads"))
        import torch
        from monai.bundle.scripts import create_workflow

        t_import = time.perf_counter()
        wf = create_workflow(config_file=str(Path(cfg["bundle"]) / "configs" / "inference.yaml"), **cfg["overrides"])
        t_init = time.perf_counter()
        evaluator = wf.parser.get_parsed_content("evaluator")
        post = wf.parser.get_parsed_content("postprocessing")
        log: dict[str, float] = {}
        names = {"Activationsd": "softmax", "Invertd": "invert", "AsDiscreted": "argmax", "SaveImaged": "write"}
        post.transforms = [_Timed(t, names.get(type(t).__name__, type(t).__name__), log, cfg["device"])
                           for t in post.transforms]
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        marks: dict[str, float] = {}

        def mark(name: str):
            def _h(_engine: Any) -> None:
                _sync(cfg["device"])
                marks.setdefault(name, time.perf_counter())
            return _h

        evaluator.add_event_handler(Events.STARTED, mark("started"))
        evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, mark("batch"))
        evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, mark("forward"))
        evaluator.add_event_handler(Events.COMPLETED, mark("completed"))
        if cfg["device"].startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t_run, c_run = time.perf_counter(), _cpu_seconds()
        wf.run()
        wf.finalize()
        t_end, c_end = time.perf_counter(), _cpu_seconds()
    stages = {
        "read+preprocess": marks["batch"] - marks["started"],
        "infer": marks["forward"] - marks["batch"],
        "invert": log.get("softmax", 0.0) + log.get("invert", 0.0) + log.get("argmax", 0.0),
        "write": log.get("write", 0.0),
    }
    outputs = sorted(Path(cfg["out_dir"]).rglob("*.nii.gz"))
    return {
        "stages": stages,
        "pipeline_s": t_end - t_run,
        "pipeline_cpu_s": c_end - c_run,
        "import_s": t_import - t_start,
        "model_load_s": t_init - t_import,
        "peak_rss_gib": rss.peak / 2**30,
        **_gpu_peaks(cfg["device"]),
        "output": str(outputs[0]) if outputs else None,
        "torch_threads": torch.get_num_threads(),
    }


def worker_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our pipeline, stage by stage; ``mode`` fast (FastInferer) or exact (the Segmenter's MONAI inferer)."""
    t_start = time.perf_counter()
    with PeakRSS() as rss:
        _set_threads(cfg.get("threads"))
        import monai.inferers  # noqa: F401  (imports timed as imports, as for the bundle run)
        import monai.transforms  # noqa: F401
        import torch

        from PancreasDiNTSLib.inference.pipeline import CaseOptions, PlainFolder, segment_case
        from PancreasDiNTSLib.inference.segmenter import Segmenter
        from PancreasDiNTSLib.model.loader import load_bundle

        t_import = time.perf_counter()
        dev = cfg["device"]
        if dev.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        bundle = load_bundle(Path(cfg["bundle"]))
        bs = cfg.get("sw_batch_size")
        seg = Segmenter(bundle, dev, sw_batch_size=None if bs in (None, "auto") else int(bs),
                        mode=cfg["mode"], engine=cfg.get("engine", "eager"))
        fast = seg.fast
        _sync(dev)
        t_init = time.perf_counter()
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        c_run = _cpu_seconds()
        # the one case pipeline (read, preprocess, infer, invert, write), each stage timed and CUDA-synchronised
        options = CaseOptions(formats=("nifti",), report=False, readout=False, region=cfg.get("region", "whole"))
        outcome = segment_case(Path(cfg["input"]), seg, options, PlainFolder(Path(cfg["out_dir"])))
        case, t, labels = outcome.case, outcome.timings, outcome.labels
        stages = {"read": t["read"], "preprocess": t["preprocess"], "infer": t["infer"],
                  "invert": t["postprocess"], "write": t["write"]}
        out_path = Path(cfg["out_dir"]) / "labels.nii.gz"
        pipeline = sum(stages.values())
        result: dict[str, Any] = {
            "stages": stages,
            "pipeline_s": pipeline,
            "pipeline_cpu_s": _cpu_seconds() - c_run,
            "import_s": t_import - t_start,
            "model_load_s": t_init - t_import,
            "output": str(out_path),
            "torch_threads": torch.get_num_threads(),
            "windows": None,
            "region": outcome.region or None,
        }
        if fast is not None:
            st = fast.stats
            result.update(windows=st.windows, windows_computed=st.computed, windows_constant=st.constant,
                          sw_batch_size=fast.sw_batch_size, engine=fast.engine, oom_retries=st.oom_retries,
                          allocator_tuned=fast.allocator_tuned)
        t_pipeline_end = time.perf_counter()
        cube = float(cfg.get("roi_cube_mm") or 0)
        if cube > 0:
            result["roi"] = _time_roi(seg, case, labels, cube, pipeline - stages["read"] - stages["write"])
        result["extra_after_pipeline_s"] = time.perf_counter() - t_pipeline_end
    result["peak_rss_gib"] = rss.peak / 2**30
    result.update(_gpu_peaks(cfg["device"]))
    return result


def _time_roi(seg: Segmenter, case: LoadedImage, labels: np.ndarray, cube: float, full_s: float) -> dict[str, Any]:
    """ROI mode (grid and local) on a cube of ``cube`` mm at the image centre, against the full run's labels
    (``full_s``: its preprocess + infer + invert seconds)."""
    import numpy as np

    from PancreasDiNTSLib.inference.fastpath import FastInferer, box_to_voxels, predict_roi

    img = case.image
    aff = np.asarray(img.affine, dtype=float)
    centre = aff[:3, :3] @ ((np.asarray(img.shape[1:]) - 1) / 2.0) + aff[:3, 3]
    box = list(centre - cube / 2) + list(centre + cube / 2)
    ranges = box_to_voxels(box, aff, img.shape[1:], "ras")
    inside = tuple(slice(s, e) for s, e in ranges)
    roi: dict[str, Any] = {"cube_mm": cube, "box_voxels": ranges}
    grid_fast = seg.fast or FastInferer(seg.network, seg.spec.roi_size, seg.spec.overlap, seg.device, seg.amp,
                                        seg.sw_batch_size)
    for mode in ("grid", "local"):
        t0 = time.perf_counter()
        lab = predict_roi(seg, img, box, "ras", mode=mode, fast=grid_fast)
        _sync(str(seg.device))
        dt = time.perf_counter() - t0
        roi[mode] = {"seconds": dt, "speedup_vs_full": full_s / dt,
                     "agreement_in_box": float((lab[inside] == labels[inside]).mean()),
                     "outside_box_zero": bool(lab.sum() == lab[inside].sum())}
        if mode == "grid":
            roi[mode]["windows"] = grid_fast.stats.windows
    return roi


def _worker_main(argv: list[str]) -> int:
    kind, cfg_path, out_path = argv
    cfg = json.loads(Path(cfg_path).read_text())
    res = worker_bundle(cfg) if kind == "bundle" else worker_ours(cfg)
    Path(out_path).write_text(json.dumps(res, default=str))
    return 0


# ---------------------------------------------------------------------------------------------- driver


def _run_worker(kind: str, cfg: dict[str, Any], work: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    tag = cfg.get("tag", "")
    cfg_path, out_path = work / f"{kind}_{tag}.json", work / f"{kind}_{tag}.out.json"
    cfg_path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "PancreasDiNTSLib.cli.benchmark", "--worker", kind, str(cfg_path), str(out_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ModelError(f"benchmark: the {kind} run failed (exit {proc.returncode}):\n{tail}")
    res = json.loads(out_path.read_text())
    res["process_s"] = wall - float(res.get("extra_after_pipeline_s", 0.0))  # ROI timing is not part of the run
    return res


def _labels(path: str) -> np.ndarray:
    import numpy as np

    from PancreasDiNTSLib.io.images import load_nifti

    return np.rint(np.asarray(load_nifti(path).dataobj)).astype(np.int16).squeeze()


def _agreement(a_path: str, b_path: str) -> dict[str, Any]:
    a, b = _labels(a_path), _labels(b_path)
    if a.shape != b.shape:
        return {"agreement": 0.0, "note": f"shapes differ: {a.shape} vs {b.shape}"}
    out: dict[str, Any] = {"agreement": float((a == b).mean())}
    for lab in (1, 2):
        sa, sb = a == lab, b == lab
        denom = int(sa.sum() + sb.sum())
        out[f"dice_{lab}"] = 1.0 if denom == 0 else 2.0 * int((sa & sb).sum()) / denom
        out[f"voxels_{lab}"] = [int(sa.sum()), int(sb.sum())]
    return out


def _row(name: str, res: dict[str, Any], keys: list[str]) -> str:
    cells = [f"{res['stages'].get(k, float('nan')):9.2f}" for k in keys]
    gpu = res.get("peak_gpu_allocated_gib")
    return (f"{name:<22}" + "".join(cells) + f"{res['pipeline_s']:10.2f}{res.get('pipeline_cpu_s', 0):10.2f}"
            f"{res['process_s']:10.2f}"
            f"{res['peak_rss_gib']:9.2f}" + (f"{gpu:9.2f}" if gpu is not None else "        -"))


def _input_ct(given: Path | None, shared: Path | None, preset: Preset) -> Path:
    if given is None:
        if shared is None or not (shared / "data" / preset.input).exists():
            raise InputError(f"benchmark: no --input given and ../shared/data/{preset.input} not found")
        given = shared / "data" / preset.input
    if not given.exists():
        raise InputError(f"{given}: input CT not found")
    return given.resolve()


def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        spec, _, region = m.partition("+")
        parts = spec.split(":")
        if parts[0] not in ("fast", "fastmm", "exact") or (len(parts) > 1 and parts[1] not in ENGINES) or \
                region not in ("", "auto"):
            raise InputError(f"--modes: {m!r} is not exact, fast[mm], fast[mm]:ENGINE or fast[mm]:ENGINE:BATCH, "
                             "each optionally +auto")
    return modes


def _model_bundle(args: argparse.Namespace, shared: Path | None, preset: Preset, work: Path) -> tuple[Path, str]:
    """(the bundle folder to time, its description): --model, else a random-weight bundle built in ``work``."""
    if args.model is not None:
        bundle = args.model.resolve()
        if not (bundle / "configs" / "inference.yaml").is_file():
            raise ModelError(f"{bundle}: not a bundle folder (configs/inference.yaml missing)")
        return bundle, str(bundle)
    from PancreasDiNTSLib.model.random_bundle import make_random_bundle

    ref = args.reference or (shared / "reference" / "pancreas_ct_dints_segmentation" if shared else None)
    if ref is None or not (ref / "configs" / "inference.yaml").is_file():
        raise ModelError("benchmark: no --model and no reference bundle configs (give --reference)")
    mul = args.channel_mul if args.channel_mul is not None else preset.channel_mul
    blocks = args.num_blocks if args.num_blocks is not None else preset.num_blocks
    bundle = work / f"bundle_mul{mul}_b{blocks}_{args.arch}"
    if not (bundle / "models" / "model.pt").exists():
        print(f"building a random-weight bundle (channel_mul {mul}, {blocks} blocks, {args.arch} topology) "
              f"in {bundle}", file=sys.stderr)
        make_random_bundle(ref, bundle, channel_mul=mul, num_blocks=blocks, seed=0, topology=args.arch)
    return bundle, f"random weights, channel_mul {mul}, {blocks} blocks, {args.arch} topology (reference configs)"


def _worker_env(threads: int | None) -> dict[str, str]:
    """This environment, the engine importable, and the thread count for OpenMP/MKL when given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
    return env


def _run_all(args: argparse.Namespace, modes: list[str], common: dict[str, Any], work: Path,
             env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The bundle's run (unless --skip-bundle), then ours in each mode: results by run name."""
    results: dict[str, dict[str, Any]] = {}
    if not args.skip_bundle:
        bundle = Path(common["bundle"])
        datalist = work / "datalist.json"
        datalist.write_text(json.dumps({"testing": [{"image": common["input"]}]}))
        out_dir = work / "out_bundle"
        ov = bundle_overrides(bundle, datalist, args.input.parent, out_dir, common["device"])
        print("bundle: " + " ".join(bundle_command(bundle, ov)), file=sys.stderr)
        results["bundle"] = _run_worker("bundle", {**common, "overrides": ov, "out_dir": str(out_dir)}, work, env,
                                        args.timeout)
        print(f"bundle: pipeline {results['bundle']['pipeline_s']:.2f} s", file=sys.stderr)
    for mode in modes:
        spec, _, region = mode.partition("+")
        parts = spec.split(":")
        tag = mode.replace(":", "_").replace("+", "_")
        out_dir = work / f"out_ours_{tag}"
        out_dir.mkdir(exist_ok=True)
        cfg = {**common, "mode": parts[0], "out_dir": str(out_dir), "engine": parts[1] if len(parts) > 1 else args.engine,
               "sw_batch_size": parts[2] if len(parts) > 2 else args.sw_batch_size, "region": region or "whole",
               "roi_cube_mm": args.roi_cube_mm if mode == modes[0] else 0, "tag": tag}
        results[f"ours-{mode}"] = _run_worker("ours", cfg, work, env, args.timeout)
        print(f"ours-{mode}: pipeline {results[f'ours-{mode}']['pipeline_s']:.2f} s", file=sys.stderr)
    return results


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    keys = ["read+preprocess", "read", "preprocess", "infer", "invert", "write"]  # the bundle's DataLoader does
    # read and preprocess together (in its workers), so it gets one column for both
    print(f"\n{'run (seconds)':<22}" + "".join(f"{k[:9]:>9}" for k in keys) + f"{'pipeline':>10}{'cpu time':>10}"
          f"{'process':>10}{'RAM GiB':>9}{'GPU GiB':>9}")
    for name, res in results.items():
        print(_row(name, res, keys))


def _comparison(results: dict[str, dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Speedups of ours (the first mode; the others as speedup_MODE) over the bundle, and label agreement."""
    main = results.get(f"ours-{modes[0]}") if modes else None
    out: dict[str, Any] = {}
    if "bundle" in results and main is not None:
        b = results["bundle"]
        out["speedup"] = round(b["pipeline_s"] / main["pipeline_s"], 3)
        out["speedup_process"] = round(b["process_s"] / main["process_s"], 3)
        out["speedup_infer"] = round(b["stages"]["infer"] / max(main["stages"]["infer"], 1e-9), 3)
        out["speedup_cpu_time"] = round(b["pipeline_cpu_s"] / max(main["pipeline_cpu_s"], 1e-9), 3)
        out.update(_agreement(b["output"], main["output"]))
        for mode in modes[1:]:
            out[f"agreement_{mode}"] = _agreement(b["output"], results[f"ours-{mode}"]["output"])["agreement"]
            out[f"speedup_{mode}"] = round(b["pipeline_s"] / results[f"ours-{mode}"]["pipeline_s"], 3)
    else:
        out["speedup"] = None
        out["agreement"] = None
    if main is not None and "roi" in main:
        out["roi"] = main["roi"]
    return out


def run(args: argparse.Namespace) -> int:
    from PancreasDiNTSLib.inference.device import resolve_device

    device = str(resolve_device(args.device))
    if not device.startswith("cuda") and device != "cpu":
        raise DeviceError(f"benchmark: unsupported device {device}")
    shared = _shared_dir()
    preset = QUICK if args.quick else FULL
    args.input = _input_ct(args.input, shared, preset)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pdints-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    modes = _parse_modes(args.modes)
    bundle, model_desc = _model_bundle(args, shared, preset, work)
    if args.threads is None and args.quick and device == "cpu":
        args.threads = 1
    common = {"bundle": str(bundle), "device": device, "threads": args.threads, "input": str(args.input)}
    load0 = os.getloadavg()[0]
    print(f"benchmark: {args.input.name} on {device}; model: {model_desc}; work folder {work}", file=sys.stderr)
    results = _run_all(args, modes, common, work, _worker_env(args.threads))
    _print_table(results)
    summary: dict[str, Any] = {"device": device, "input": str(args.input), "model": model_desc,
                               "threads": args.threads, "engine": args.engine,
                               "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
                               "cpus": os.cpu_count()}
    if device == "cpu" and max(summary["loadavg_start_end"]) > (os.cpu_count() or 1):
        print(f"note: the machine was busy (load average {summary['loadavg_start_end']} on {os.cpu_count()} CPUs): "
              "wall times are inflated and noisy; pipeline_cpu_s / speedup_cpu_time count the work done",
              file=sys.stderr)
    summary.update(_comparison(results, modes))
    summary["runs"] = {k: {kk: v[kk] for kk in ("stages", "pipeline_s", "pipeline_cpu_s", "process_s", "import_s",
                                                 "model_load_s", "peak_rss_gib", "allocator_tuned", "region",
                                                 "output") if kk in v}
                       | {kk: v[kk] for kk in v if kk.startswith(("peak_gpu", "windows", "sw_batch"))}
                       for k, v in results.items()}
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))
    print("usage: pancreas-dints benchmark [options] (this module's --worker mode is internal)", file=sys.stderr)
    sys.exit(2)
