"""The two timed runs of ``pancreas-dints benchmark``, each in its own subprocess (``python -m
PancreasDiNTSLib.benchmark.workers KIND CONFIG OUT``): the bundle's own inference and ours.

Both run as real subprocesses, one after the other, with the same thread settings:

* **bundle** -- the released ``configs/inference.yaml`` through ``monai.bundle``'s own ``create_workflow`` ->
  ``run`` -> ``finalize`` (exactly what ``python -m monai.bundle run --config_file configs/inference.yaml``
  does), with ignite event timers added. Overrides, all data except where the release cannot run as is:

  - ``data_list_file_path``/``dataset_dir``/``output_dir``/``bundle_root``: the input and output places;
  - ``arch_ckpt``: torch >= 2.6 refuses the released numpy arch file as released; the override keeps
    ``weights_only=True`` after allowing numpy's array types (bundle.monai_arch_ckpt_override; ``map_location``
    kept as released on CUDA, ``cpu`` on a CPU run);
  - ``dints_space#device``: ``cpu`` on a CPU run only (the release hard-codes ``cuda``).

* **ours** -- read (io.images.read_image) -> preprocess (Segmenter.preprocess: the bundle's transforms) -> infer
  (FastDiNTS + windows.sliding_window_exact_skip) -> invert (Segmenter.postprocess: softmax, Invertd, argmax, as
  the bundle) -> write (io.writers). ``--modes exact`` adds the Segmenter's MONAI path.

Each stage is timed (CUDA synchronised), with peak RAM (process tree, sampled) and peak GPU memory. The last
line printed is JSON with ``speedup`` (bundle pipeline seconds / ours; pipeline = read .. write, the evaluator
run for the bundle), ``speedup_process`` (whole subprocess wall times) and ``agreement`` (fraction of voxels
whose labels are equal).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import psutil

    from PancreasDiNTSLib.inference.segmenter import Segmenter
    from PancreasDiNTSLib.io.images import LoadedImage


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
                        mode=cfg["mode"], engine=cfg.get("engine", "eager"), precision=cfg.get("precision", "auto"))
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
            "precision": seg.precision.describe(),
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

    from PancreasDiNTSLib.inference.fastpath import FastInferer
    from PancreasDiNTSLib.inference.roi import box_to_voxels, predict_roi

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


if __name__ == "__main__":
    if len(sys.argv) == 4:
        if sys.argv[1] == "ours":  # our process starts as the CLI's does; the bundle's imports MONAI as it is
            from PancreasDiNTSLib.core.startup import skip_unused_imports

            skip_unused_imports()
        sys.exit(_worker_main(sys.argv[1:]))
    print("usage: python -m PancreasDiNTSLib.benchmark.workers bundle|ours CONFIG.json OUT.json (internal)",
          file=sys.stderr)
    sys.exit(2)
