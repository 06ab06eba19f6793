"""``pancreas-dints benchmark``: the bundle's own inference against ours, same input, weights and device.

The driver: picks the input and the model (a random-weight bundle from the reference configs unless one is
given), runs the bundle and each of our modes as subprocesses (:mod:`.workers`, which says what is timed), prints
the table and, last, one JSON line with ``speedup`` (bundle pipeline seconds / ours), ``speedup_process`` (whole
subprocess wall times) and ``agreement`` (fraction of voxels whose labels are equal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.benchmark.settings import FULL, QUICK, BenchmarkSettings, Preset
from PancreasDiNTSLib.core.errors import DeviceError, InputError, ModelError
from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL
from PancreasDiNTSLib.core.request import ENGINES, INFERENCE_MODES, PRECISIONS
from PancreasDiNTSLib.inference.device import resolve_device
from PancreasDiNTSLib.io.images import load_nifti
from PancreasDiNTSLib.model.bundle import monai_arch_ckpt_override
from PancreasDiNTSLib.model.download import resolve_model
from PancreasDiNTSLib.model.random_bundle import make_random_bundle


def shared_dir() -> Path | None:
    """The project's ../shared folder (data, reference configs), if one is found."""
    env = os.environ.get("PANCREAS_DINTS_SHARED")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" for p in list(here.parents)[:6]] + [Path.cwd() / "shared", Path.cwd().parent / "shared"]
    return next((c for c in candidates if (c / "data").is_dir() or (c / "reference").is_dir()), None)


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


def _run_worker(kind: str, cfg: dict[str, Any], work: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    tag = cfg.get("tag", "")
    cfg_path, out_path = work / f"{kind}_{tag}.json", work / f"{kind}_{tag}.out.json"
    cfg_path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "PancreasDiNTSLib.benchmark.workers", kind, str(cfg_path), str(out_path)]
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


# The table's stage columns: (stage key, header). The bundle's DataLoader reads and preprocesses together (in its
# workers), so it fills `read+prep`; ours fills `read` and `prep`; a stage a run does not have shows "-".
STAGE_COLUMNS = (("read+preprocess", "read+prep"), ("read", "read"), ("preprocess", "prep"), ("infer", "infer"),
                 ("invert", "invert"), ("write", "write"))


def _row(name: str, res: dict[str, Any], keys: list[str]) -> str:
    cells = [f"{res['stages'][k]:10.2f}" if k in res["stages"] else f"{'-':>10}" for k in keys]
    gpu = res.get("peak_gpu_allocated_gib")
    return (f"{name:<22}" + "".join(cells) + f"{res['pipeline_s']:10.2f}{res.get('pipeline_cpu_s', 0):10.2f}"
            f"{res['process_s']:10.2f}"
            f"{res['peak_rss_gib']:9.2f}" + (f"{gpu:9.2f}" if gpu is not None else f"{'-':>9}"))


def _input_ct(given: Path | None, shared: Path | None, preset: Preset) -> Path:
    if given is None:
        if shared is None or not (shared / "data" / preset.input).exists():
            raise InputError(f"benchmark: no --input: give the CT to time, e.g. --input ct.nii.gz (the default, "
                             f"{preset.input} in the project's shared/data folder, was not found; "
                             "$PANCREAS_DINTS_SHARED names that folder)")
        given = shared / "data" / preset.input
    if not given.exists():
        raise InputError(f"{given}: input CT not found")
    return given.resolve()


def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        spec, region, precision = _split_mode(m)
        parts = spec.split(":")
        if parts[0] not in INFERENCE_MODES or (len(parts) > 1 and parts[1] not in ENGINES) or \
                region not in ("", "auto") or precision not in ("", *PRECISIONS):
            raise InputError(f"--modes: {m!r} is not exact, fast[mm], fast[mm]:ENGINE or fast[mm]:ENGINE:BATCH, "
                             f"each optionally +auto and @PRECISION ({'|'.join(PRECISIONS)})")
    return modes


def _split_mode(mode: str) -> tuple[str, str, str]:
    """``fast:eager+auto@bf16`` -> ("fast:eager", "auto", "bf16"); absent parts are ""."""
    rest, _, precision = mode.partition("@")
    spec, _, region = rest.partition("+")
    return spec, region, precision


def _model_bundle(s: BenchmarkSettings, shared: Path | None, preset: Preset, work: Path) -> tuple[Path, str]:
    """(the bundle folder to time, its description): --model, else a random-weight bundle built in ``work``."""
    if s.model is not None:
        bundle = resolve_model(s.model).resolve()  # `official` too
        if not (bundle / "configs" / "inference.yaml").is_file():
            raise ModelError(f"{bundle}: not a bundle folder (configs/inference.yaml missing)")
        return bundle, str(bundle)
    ref = s.reference or (shared / "reference" / "pancreas_ct_dints_segmentation" if shared else None)
    if s.reference is None and (ref is None or not (ref / "configs" / "inference.yaml").is_file()):
        print(f"benchmark: no --model and no reference bundle configs found: timing the demo model "
              f"({PACKAGED_DEMO_MODEL}); --model BUNDLE or --reference DIR choose another", file=sys.stderr)
        return PACKAGED_DEMO_MODEL, f"the demo model ({PACKAGED_DEMO_MODEL.name})"
    if ref is None or not (ref / "configs" / "inference.yaml").is_file():
        raise ModelError(f"{ref}: --reference is not a bundle folder (configs/inference.yaml missing)")
    mul = s.channel_mul if s.channel_mul is not None else preset.channel_mul
    blocks = s.num_blocks if s.num_blocks is not None else preset.num_blocks
    bundle = work / f"bundle_mul{mul}_b{blocks}_{s.arch}"
    if not (bundle / "models" / "model.pt").exists():
        print(f"building a random-weight bundle (channel_mul {mul}, {blocks} blocks, {s.arch} topology) "
              f"in {bundle}", file=sys.stderr)
        make_random_bundle(ref, bundle, channel_mul=mul, num_blocks=blocks, seed=0, topology=s.arch)
    return bundle, f"random weights, channel_mul {mul}, {blocks} blocks, {s.arch} topology (reference configs)"


def _worker_env(threads: int | None) -> dict[str, str]:
    """This environment, the engine importable, and the thread count for OpenMP/MKL when given."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
    return env


def _run_all(s: BenchmarkSettings, modes: list[str], common: dict[str, Any], work: Path,
             env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The bundle's run (unless --skip-bundle), then ours in each mode: results by run name."""
    results: dict[str, dict[str, Any]] = {}
    if not s.skip_bundle:
        bundle = Path(common["bundle"])
        datalist = work / "datalist.json"
        datalist.write_text(json.dumps({"testing": [{"image": common["input"]}]}))
        out_dir = work / "out_bundle"
        ov = bundle_overrides(bundle, datalist, Path(common["input"]).parent, out_dir, common["device"])
        print("bundle: " + " ".join(bundle_command(bundle, ov)), file=sys.stderr)
        results["bundle"] = _run_worker("bundle", {**common, "overrides": ov, "out_dir": str(out_dir)}, work, env,
                                        s.timeout)
        print(f"bundle: pipeline {results['bundle']['pipeline_s']:.2f} s", file=sys.stderr)
    for mode in modes:
        spec, region, precision = _split_mode(mode)
        parts = spec.split(":")
        tag = mode.replace(":", "_").replace("+", "_").replace("@", "_")
        out_dir = work / f"out_ours_{tag}"
        out_dir.mkdir(exist_ok=True)
        cfg = {**common, "mode": parts[0], "out_dir": str(out_dir), "engine": parts[1] if len(parts) > 1 else s.engine,
               "sw_batch_size": parts[2] if len(parts) > 2 else s.sw_batch_size, "region": region or "whole",
               "precision": precision or s.precision,
               "roi_cube_mm": s.roi_cube_mm if mode == modes[0] else 0, "tag": tag}
        results[f"ours-{mode}"] = _run_worker("ours", cfg, work, env, s.timeout)
        print(f"ours-{mode}: pipeline {results[f'ours-{mode}']['pipeline_s']:.2f} s", file=sys.stderr)
    return results


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    keys = [key for key, _ in STAGE_COLUMNS]
    print(f"\n{'run (seconds)':<22}" + "".join(f"{h:>10}" for _, h in STAGE_COLUMNS) + f"{'pipeline':>10}{'cpu time':>10}"
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


def run_benchmark(s: BenchmarkSettings) -> int:
    device = str(resolve_device(s.device))
    if not device.startswith("cuda") and device != "cpu":
        raise DeviceError(f"benchmark: unsupported device {device}")
    shared = shared_dir()
    preset = QUICK if s.quick else FULL
    s.input = _input_ct(s.input, shared, preset)
    work = Path(s.workdir or tempfile.mkdtemp(prefix="pdints-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    modes = _parse_modes(s.modes)
    bundle, model_desc = _model_bundle(s, shared, preset, work)
    if s.threads is None and s.quick and device == "cpu":
        s.threads = 1
    common = {"bundle": str(bundle), "device": device, "threads": s.threads, "input": str(s.input)}
    load0 = os.getloadavg()[0]
    print(f"benchmark: {s.input.name} on {device}; model: {model_desc}; work folder {work}", file=sys.stderr)
    results = _run_all(s, modes, common, work, _worker_env(s.threads))
    _print_table(results)
    summary: dict[str, Any] = {"device": device, "input": str(s.input), "model": model_desc,
                               "threads": s.threads, "engine": s.engine,
                               "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
                               "cpus": os.cpu_count()}
    if device == "cpu" and max(summary["loadavg_start_end"]) > (os.cpu_count() or 1):
        print(f"note: the machine was busy (load average {summary['loadavg_start_end']} on {os.cpu_count()} CPUs): "
              "wall times are inflated and noisy; pipeline_cpu_s / speedup_cpu_time count the work done",
              file=sys.stderr)
    summary.update(_comparison(results, modes))
    summary["runs"] = {k: {kk: v[kk] for kk in ("stages", "pipeline_s", "pipeline_cpu_s", "process_s", "import_s",
                                                 "model_load_s", "peak_rss_gib", "allocator_tuned", "region", "precision",
                                                 "output") if kk in v}
                       | {kk: v[kk] for kk in v if kk.startswith(("peak_gpu", "windows", "sw_batch"))}
                       for k, v in results.items()}
    print(json.dumps(summary, default=str))
    return 0
