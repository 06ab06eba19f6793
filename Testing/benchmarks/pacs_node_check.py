"""The DICOM node's own cost, against a real Orthanc: overhead for a 300-slice series, and memory over 20 studies.

    OMP_NUM_THREADS=1 python Testing/benchmarks/pacs_node_check.py [--slices 300] [--studies 20]

One server with the node (subprocess on 127.0.0.1, the packaged demo model, one CPU worker, quiet period 1 s) sends
SEG + SR + RTSTRUCT to Orthanc (Debian's, orthanc_support) by C-STORE. This script is the modality: it C-STOREs
synthetic CT series (pynetdicom SCU).

- overhead: a study of ``--slices`` slices (64 x 64 in-plane). The time from its last instance received to the
  last result confirmed by Orthanc, minus the quiet period and minus the job's own run (the worker's
  read-segment-write, i.e. inference and what a local run does too). What is left is the node's own work:
  reading the headers and deciding, linking the series into a job, the queue hand-off, collecting the results,
  and the three C-STOREs. Target: <= 5 s.
- memory: ``--studies`` small studies, one after another. The server process's RSS (the node runs in it; the
  worker processes are separate) after the first and after the last study, and the largest seen.

A table is printed; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "PancreasDiNTS", ROOT / "Testing"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from dicom_factory import Volume, axial_planes, new_ids, write_series  # noqa: E402
from orthanc_support import free_port, start_orthanc  # noqa: E402
from PancreasDiNTSLib.synthetic.phantom import make_phantom  # noqa: E402
from server_support import make_token, start_server, wait_for  # noqa: E402

QUIET_S = 1.0


def study_files(folder: Path, shape: tuple[int, int, int], step_mm: float) -> tuple[str, list[Path]]:
    hu, _, affine = make_phantom(5, shape=shape, spacing=(1.6, 1.6, step_mm), orientation="RAS")
    vol = Volume(np.asarray(hu, dtype=np.float32), np.asarray(affine, dtype=float))
    ids = new_ids(3, "CT PORTAL VENOUS")
    files = write_series(folder, vol, axial_planes(vol, np.arange(shape[2]) * step_mm), ids)
    return ids.study, files


def c_store(port: int, files: list[Path]) -> None:
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(pydicom.uid.CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PANCREAS_DINTS")
    assert assoc.is_established, "the node refused the association"
    for f in files:
        assert int(assoc.send_c_store(pydicom.dcmread(str(f))).Status) == 0
    assoc.release()


class Node:
    def __init__(self, work: Path) -> None:
        self.pacs = start_orthanc(work / "pacs")
        self.port = free_port()
        cfg = {"port": self.port, "allowed_aes": ["BENCH"], "quiet_s": QUIET_S, "rules": {"min_slices": 8},
               "outputs": ["dicom-seg", "dicom-sr", "rtstruct"],
               "destinations": [{"name": "pacs", "kind": "dimse", "port": self.pacs.dicom_port, "ae_title": "ORTHANC"}]}
        (work / "node.json").write_text(json.dumps(cfg))
        try:
            self.server = start_server(work / "data", make_token(work / "client"), "--node-config",
                                       str(work / "node.json"))
        except BaseException:
            self.pacs.stop()
            raise
        self.headers = {"Authorization": f"Bearer {self.server.token}"}

    def get(self, path: str) -> Any:
        return requests.get(self.server.url + path, headers=self.headers, timeout=60).json()

    def finished(self, study_uid: str) -> dict[str, Any]:
        def ended():
            found = [s for s in self.get("/v1/node/studies")["studies"] if s["study_uid"] == study_uid]
            return found[0] if found and found[0]["state"] in ("done", "failed", "skipped") else None

        study = wait_for(ended, timeout=1800, every=0.1)
        assert study["state"] == "done", study
        return study

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            self.pacs.stop()


def overhead(node: Node, work: Path, slices: int) -> dict[str, float]:
    study_uid, files = study_files(work / "big", (64, 64, slices), 1.0)
    c_store(node.port, files)
    study = node.finished(study_uid)
    job = node.get(f"/v1/jobs/{study['job_id']}")
    job_s = job["finished"] - job["started"]
    total = study["finished"] - study["last_instance"]
    return {"slices": slices, "last_instance_to_done_s": round(total, 2), "quiet_s": QUIET_S,
            "job_run_s": round(job_s, 2), "node_overhead_s": round(total - QUIET_S - job_s, 2),
            "decide_s": round(study["selected"] - study["last_instance"] - QUIET_S, 2),
            "send_s": round(study["finished"] - study["sending"], 2)}


def memory(node: Node, work: Path, studies: int) -> dict[str, float]:
    proc = psutil.Process(node.server.proc.pid)
    rss = []
    for k in range(studies):
        study_uid, files = study_files(work / f"s{k}", (40, 40, 16), 3.0)
        c_store(node.port, files)
        node.finished(study_uid)
        rss.append(proc.memory_info().rss / 2**20)
    return {"studies": studies, "rss_after_first_mib": round(rss[0], 1), "rss_after_last_mib": round(rss[-1], 1),
            "rss_max_mib": round(max(rss), 1), "last_over_first": round(rss[-1] / rss[0], 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--studies", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = Node(Path(tmp))
        try:
            t0 = time.monotonic()
            mem = memory(node, Path(tmp), args.studies)
            big = overhead(node, Path(tmp), args.slices)
            wall = time.monotonic() - t0
        finally:
            node.stop()
    print(f"{str(args.slices) + '-slice series':<52} {'seconds':>10}")
    print(f"{'last instance received -> last result confirmed':<52} {big['last_instance_to_done_s']:>10.2f}")
    print(f"{'  of which the quiet period':<52} {big['quiet_s']:>10.2f}")
    print(f"{'  of which the job (read, infer, write: as a local run)':<52} {big['job_run_s']:>10.2f}")
    print(f"{'node overhead (the rest; target <= 5 s)':<52} {big['node_overhead_s']:>10.2f}")
    print(f"{'  deciding (headers, rules, geometry) after the quiet period':<52} {big['decide_s']:>10.2f}")
    print(f"{'  sending SEG + SR + RTSTRUCT to Orthanc':<52} {big['send_s']:>10.2f}")
    print(f"{'server RSS after study 1 / ' + str(args.studies) + ' / max (MiB)':<52} {mem['rss_after_first_mib']:>6.1f} / "
          f"{mem['rss_after_last_mib']:.1f} / {mem['rss_max_mib']:.1f}")
    print(json.dumps({"overhead": big, "memory": mem, "wall_s": round(wall, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
