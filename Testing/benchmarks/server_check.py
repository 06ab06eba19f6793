"""`pancreas-dints serve` on this machine: the same case local vs through the server, throughput, server memory.

    OMP_NUM_THREADS=1 python Testing/benchmarks/server_check.py [--repeats 3] [--jobs 50]

One server (subprocess on 127.0.0.1, the packaged demo model, one CPU worker) and, in this process, the batch
driver both ways on the same synthetic CT (80 x 80 x 48 voxels of 1.6 x 1.6 x 2 mm, about 10 s on one thread):

- per case: ``segment`` locally (with a Segmenter built once, as the server's worker keeps one) vs
  ``segment --server`` (the case's own seconds from summary.json, after one warm-up run each, median of
  ``--repeats``), and the upload alone (POST of the same file); the overhead besides
  the upload is ``(remote - upload) / local - 1`` (target <= 10 %);
- throughput: ``--jobs`` tiny jobs (40 x 40 x 24) submitted at once, jobs per minute with one worker, next to
  the same tiny case done locally in a loop;
- the server's RSS before any job and after the ``--jobs`` jobs.

A table is printed; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "PancreasDiNTS", ROOT / "Testing"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import psutil  # noqa: E402
from PancreasDiNTSLib.bridge.remote import ServerClient, job_options  # noqa: E402
from PancreasDiNTSLib.cli import quiet_libraries  # noqa: E402
from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL  # noqa: E402
from PancreasDiNTSLib.inference.batch import SegmentSettings, run_segment  # noqa: E402
from PancreasDiNTSLib.inference.segmenter import Segmenter, resolve_device  # noqa: E402
from PancreasDiNTSLib.model.download import resolve_model  # noqa: E402
from PancreasDiNTSLib.model.loader import load_bundle  # noqa: E402
from server_support import make_token, start_server, write_ct  # noqa: E402


def resident_segmenter() -> Segmenter:
    """A Segmenter built once, as a server worker keeps one (its first-case costs are paid once)."""
    return Segmenter(load_bundle(resolve_model(str(PACKAGED_DEMO_MODEL))), resolve_device("cpu"), mode="fast")


def case_seconds(case: Path, out: Path, server: Any = None, segmenter: Segmenter | None = None) -> float:
    """One ``segment`` of ``case`` (overwrite), locally (with ``segmenter``) or through ``server``; the case's own
    seconds."""
    extra = {"server": server.url, "token_file": str(server.token_file)} if server is not None else {}
    summary = run_segment(SegmentSettings(inputs=(str(case),), out_dir=out, model=PACKAGED_DEMO_MODEL, device="cpu",
                                          progress="none", overwrite=True, **extra), segmenter=segmenter)
    (result,) = summary.results
    assert result.status == "ok", result.message
    return result.seconds


def upload_seconds(client: ServerClient, case: Path) -> float:
    t0 = time.perf_counter()
    job = client.submit(case, "nii.gz", job_options())["id"]
    seconds = time.perf_counter() - t0
    client.delete(job)
    return seconds


def per_case(server: Any, case: Path, work: Path, repeats: int) -> dict[str, float]:
    client = ServerClient(server.url, server.token)
    segmenter = resident_segmenter()
    case_seconds(case, work / "local", segmenter=segmenter)  # warm-up: first-call costs of this process
    case_seconds(case, work / "remote", server)  # and of the worker
    local, remote, upload = [], [], []
    for _ in range(repeats):
        local.append(case_seconds(case, work / "local", segmenter=segmenter))
        remote.append(case_seconds(case, work / "remote", server))
        upload.append(upload_seconds(client, case))
    out = {"local_s": statistics.median(local), "remote_s": statistics.median(remote),
           "upload_s": statistics.median(upload)}
    out["overhead_besides_upload"] = (out["remote_s"] - out["upload_s"]) / out["local_s"] - 1.0
    return out


def throughput(server: Any, tiny: Path, work: Path, jobs: int) -> dict[str, float]:
    client = ServerClient(server.url, server.token)
    rss_before = psutil.Process(server.proc.pid).memory_info().rss
    t0 = time.perf_counter()
    ids = [client.submit(tiny, "nii.gz", job_options(formats=("nifti",)))["id"] for _ in range(jobs)]
    finals = [client.wait(i, poll=0.2) for i in ids]
    seconds = time.perf_counter() - t0
    assert all(f["state"] == "done" for f in finals), [f for f in finals if f["state"] != "done"][:1]
    rss_after = psutil.Process(server.proc.pid).memory_info().rss
    segmenter = resident_segmenter()
    t1 = time.perf_counter()
    local_runs = min(jobs, 10)
    for _ in range(local_runs):
        run_segment(SegmentSettings(inputs=(str(tiny),), out_dir=work / "tiny-local", model=PACKAGED_DEMO_MODEL,
                                    device="cpu", formats=("nifti",), progress="none", overwrite=True),
                    segmenter=segmenter)
    local_each = (time.perf_counter() - t1) / local_runs
    return {"jobs": jobs, "server_jobs_per_min": 60.0 * jobs / seconds, "local_cases_per_min": 60.0 / local_each,
            "rss_before_mib": rss_before / 2**20, "rss_after_mib": rss_after / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--jobs", type=int, default=50)
    args = p.parse_args()
    quiet_libraries()  # as the CLI and the server's workers run (no warnings machinery in the loop)
    with tempfile.TemporaryDirectory(prefix="server-check-") as tmp:
        work = Path(tmp)
        case = write_ct(work / "in" / "case.nii.gz", (80, 80, 48), seed=2)
        tiny = write_ct(work / "in" / "tiny.nii.gz")
        server = start_server(work / "data", make_token(work / "client"))
        try:
            single = per_case(server, case, work, args.repeats)
            load = throughput(server, tiny, work, args.jobs)
        finally:
            server.stop()
    print(f"{'same case (80x80x48), median of ' + str(args.repeats):<44} {'seconds':>10}")
    print(f"{'local segment':<44} {single['local_s']:>10.2f}")
    print(f"{'segment --server (upload included)':<44} {single['remote_s']:>10.2f}")
    print(f"{'upload alone':<44} {single['upload_s']:>10.2f}")
    print(f"{'overhead besides the upload':<44} {100 * single['overhead_besides_upload']:>9.1f}%")
    print(f"{'server, 1 CPU worker: tiny jobs per minute':<44} {load['server_jobs_per_min']:>10.1f}")
    print(f"{'local loop: tiny cases per minute':<44} {load['local_cases_per_min']:>10.1f}")
    print(f"{'server RSS before / after ' + str(args.jobs) + ' jobs (MiB)':<44} "
          f"{load['rss_before_mib']:>5.0f} / {load['rss_after_mib']:.0f}")
    print(json.dumps({"per_case": single, "throughput": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
