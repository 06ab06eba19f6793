"""The node's loop: each received study, once quiet, is decided (selection.py), its chosen series runs as a job of
the server's queue (the same workers and store as an upload), and its DICOM results are sent (sender.py).

Two threads: the decider (quiet studies, jobs followed) and the sender (due sends, back-off doubling from
``retry_first_s`` up to ``retry_max_s``). Everything they act on is in node.sqlite3 and the spool, so a restart,
even after ``kill -9``, goes on where the last run stopped: studies still receiving wait for their quiet period,
a job interrupted is run again by the job store's recovery, pending sends are sent. A study's spool (its images
and its results) is removed only when the study ends (done, skipped or failed), after every send was answered.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import PancreasDiNTSError, UsageError, printable
from PancreasDiNTSLib.io.dicom import read_header, sop_instance_uid
from PancreasDiNTSLib.io.dicomweb import encode, iter_instances
from PancreasDiNTSLib.server.dicom_node.config import NodeConfig
from PancreasDiNTSLib.server.dicom_node.scp import StorageSCP
from PancreasDiNTSLib.server.dicom_node.selection import choose_series, series_facts, skip_reason
from PancreasDiNTSLib.server.dicom_node.sender import Unreachable, send
from PancreasDiNTSLib.server.dicom_node.spool import NodeStore, StudyTooLarge
from PancreasDiNTSLib.server.store import JobStore, new_job_id
from PancreasDiNTSLib.server.uploads import input_path

TICK_S = 0.2
RESULTS = "results"


def read_uids(path: Path) -> tuple[str, str] | None:
    ds = read_header(path)
    return (sop_instance_uid(ds), str(ds.get("SeriesInstanceUID", ""))) if ds is not None else None


class Node:
    """The DICOM node of one server: the SCP, the spool and the two threads."""

    def __init__(self, cfg: NodeConfig, jobs: JobStore, min_free_bytes: int, log: Callable[[str], None],
                 notify: Callable[[], None] = lambda: None) -> None:
        self.cfg, self.jobs, self.min_free_bytes, self.log, self.notify = cfg, jobs, min_free_bytes, log, notify
        self.store = NodeStore(jobs.data)
        self.scp = StorageSCP(cfg, self.store, self.room, log)
        self.stopping = threading.Event()
        self.address: tuple[str, int] | None = None
        self.threads = [threading.Thread(target=self._run, args=(self.decide_due,), name="node-decider", daemon=True),
                        threading.Thread(target=self._run, args=(self.send_due,), name="node-sender", daemon=True)]

    def room(self) -> str | None:
        """None when the data folder has room above its floor, else the reason (refuse, do not fill the disk)."""
        free = shutil.disk_usage(self.store.root).free
        if free >= self.min_free_bytes:
            return None
        return (f"free disk space {free >> 20} MiB is below the floor of {self.min_free_bytes >> 20} MiB "
                "(--min-free-mb)")

    def start(self) -> tuple[str, int]:
        self.store.clean_incoming()
        found = self.store.reindex(read_uids)
        if found:
            self.log(f"DICOM node: {found} instance(s) stored before a stop recorded again from the spool")
        self.address = self.scp.start()
        for thread in self.threads:
            thread.start()
        for study in self.store.studies("state = 'receiving' AND source LIKE 'pull:%'"):
            threading.Thread(target=self.fetch, args=(study["id"],), daemon=True).start()  # an interrupted pull
        return self.address

    def stop(self) -> None:
        self.stopping.set()
        self.scp.stop()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def _run(self, step: Callable[[], None]) -> None:
        while not self.stopping.wait(TICK_S):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one bad study must not stop the node; it is logged
                self.log(f"DICOM node: {type(exc).__name__}: {printable(exc)[:300]}")

    # --------------------------------------------------------------------------------------------- decide
    def decide_due(self) -> None:
        cutoff = time.time() - self.cfg.quiet_s
        for study in self.store.studies("state = 'receiving' AND source NOT LIKE 'pull%' AND "
                                        "COALESCE(last_instance, created) <= ?", (cutoff,)):
            if self.store.close_receiving(study["id"], cutoff):
                self.decide(study["id"])
        for study in self.store.studies("state IN ('selected', 'segmenting')"):
            self.follow(study)

    def decide(self, study_id: str) -> None:
        """Choose the series (or skip the study with the reason) and queue its job."""
        files = [self.store.folder(study_id) / i["file"] for i in self.store.instances(study_id)]
        pairs = [(p, read_header(p)) for p in files]
        readable = [(p, h) for p, h in pairs if h is not None]
        chosen, decisions = choose_series(series_facts([p for p, _ in readable], [h for _, h in readable]),
                                          self.cfg.rules)
        if chosen is None:
            self.finish(study_id, "skipped", skip_reason(decisions), decisions=decisions)
            return
        job_id = new_job_id()
        self.store.update(study_id, job_id=job_id, series_uid=chosen.uid, decisions=decisions)
        self.queue_job(study_id, job_id, chosen.files)
        self.log(f"DICOM node: study {study_id}: {chosen.label} chosen ({len(chosen.files)} slices), job {job_id}")

    def queue_job(self, study_id: str, job_id: str, files: list[Path]) -> None:
        """The chosen series as a job of the server's queue (hard links to the spooled files)."""
        folder = input_path(self.jobs.job_dir(job_id), "zip")
        shutil.rmtree(self.jobs.job_dir(job_id), ignore_errors=True)
        folder.mkdir(parents=True)
        digest, size = hashlib.sha256(), 0
        for k, path in enumerate(sorted(files)):
            dest = folder / f"{k:06d}.dcm"
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
            digest.update(path.name.encode())
            size += path.stat().st_size
        self.jobs.add(job_id, "zip", self.cfg.job_options(), size, digest.hexdigest())
        self.notify()

    def follow(self, study: dict[str, Any]) -> None:
        job = self.jobs.get(study["job_id"] or "")
        if job is None:
            if study["state"] == "selected":  # stopped between the decision and the job: decide again
                self.decide(study["id"])
            else:
                self.finish(study["id"], "failed", "the segmentation job was deleted before it finished")
            return
        if job["state"] == "running" and study["state"] == "selected":
            self.store.update(study["id"], state="segmenting", segmenting=job["started"])
        elif job["state"] in ("failed", "cancelled"):
            self.finish(study["id"], "failed", f"segmentation {job['state']}: {job['error'] or 'no reason given'}")
        elif job["state"] == "done":
            self.collect(study, job)

    def collect(self, study: dict[str, Any], job: dict[str, Any]) -> None:
        """The job's DICOM results into the spool, one pending send per destination and instance."""
        out = self.jobs.job_dir(job["id"]) / "out"
        cases = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
        results = self.store.folder(study["id"]) / RESULTS
        results.mkdir(exist_ok=True)
        rows = []
        for name in sorted(f["name"] for f in job["files"] if str(f["name"]).endswith(".dcm")):
            src, dest = (cases[0] / name if len(cases) == 1 else None), results / name
            if not dest.exists():
                if src is None or not src.is_file():
                    self.finish(study["id"], "failed", f"the result {name} of job {job['id']} is gone")
                    return
                shutil.copyfile(src, dest)
            uids = read_uids(dest)
            rows += [(d.name, uids[0], f"{RESULTS}/{name}") for d in self.cfg.destinations if uids]
        self.store.add_sends(study["id"], rows)
        values = {"segmenting": study["segmenting"] or job["started"], "sending": time.time()}
        if self.store.update(study["id"], only_from=("selected", "segmenting"), state="sending", **values):
            self.log(f"DICOM node: study {study['id']}: {len(rows)} result instance(s) to send")

    def finish(self, study_id: str, state: str, reason: str | None = None, **values: Any) -> None:
        """End a study (its spool removed: images and results); the record stays, with the reason."""
        if self.store.update(study_id, state=state, finished=time.time(), reason=reason, **values):
            self.store.remove_spool(study_id)
            self.log(f"DICOM node: study {study_id}: {state}" + (f" ({reason})" if reason else ""))

    # ----------------------------------------------------------------------------------------------- pull
    def pull(self, source: str, study_uid: str, series_uid: str | None) -> str:
        """Start pulling a study (or one series) from a configured DICOMweb source; the node study id."""
        study_id = self.store.open_study(study_uid, f"pull:{source}", source)
        if series_uid:
            self.store.update(study_id, series_uid=series_uid)
        threading.Thread(target=self.fetch, args=(study_id,), daemon=True).start()
        return study_id

    def fetch(self, study_id: str) -> None:
        """QIDO-RS for the series, WADO-RS for their instances (each spooled durably), then decide at once."""
        study = self.store.study(study_id) or {}
        src = self.cfg.source(str(study.get("calling_ae")))
        try:
            if src is None:
                raise UsageError(f"source {printable(study.get('calling_ae'))!r} is no longer configured")
            for ds in iter_instances(src.url, study["study_uid"], study.get("series_uid") or None, src.auth_file):
                self.store.add_instance(study["study_uid"], study["source"], src.name, str(ds.SOPInstanceUID),
                                        str(ds.SeriesInstanceUID), encode(ds), self.cfg.max_instances)
        except (PancreasDiNTSError, OSError, AttributeError, StudyTooLarge) as exc:
            self.finish(study_id, "failed", f"pull from {src.name if src else '?'} failed: {printable(exc)[:300]}")
            return
        if self.store.close_receiving(study_id, time.time()):
            self.decide(study_id)

    # ----------------------------------------------------------------------------------------------- send
    def send_due(self) -> None:
        now = time.time()
        due = self.store.sends("state = 'pending' AND next_try <= ?", (now,))
        batches: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in due:
            batches.setdefault((row["study"], row["destination"]), []).append(row)
        for (study_id, dest_name), rows in batches.items():
            self.send_batch(study_id, dest_name, rows)
        for study in self.store.studies("state = 'sending'"):
            sends = self.store.sends("study = ?", (study["id"],))
            if any(s["state"] == "pending" for s in sends):
                continue
            refused = [s for s in sends if s["state"] == "refused"]
            if refused:
                self.finish(study["id"], "failed", f"{len(refused)} result instance(s) refused: " + "; ".join(
                    f"{s['destination']} answered {s['status']}" for s in refused[:3]))
            else:
                self.finish(study["id"], "done")

    def send_batch(self, study_id: str, dest_name: str, rows: list[dict[str, Any]]) -> None:
        dest = next((d for d in self.cfg.destinations if d.name == dest_name), None)
        if dest is None:
            for row in rows:
                self.store.mark_send(study_id, dest_name, row["sop_uid"], "refused", "destination no longer "
                                     "configured")
            return
        items = [(r["sop_uid"], self.store.folder(study_id) / r["file"]) for r in rows]
        try:
            answers = send(dest, self.cfg.ae_title, items)
        except Unreachable as exc:
            answers = {}
            self.log(f"DICOM node: study {study_id}: {dest_name}: {exc}; trying again later")
        for row in rows:
            state, status = answers.get(row["sop_uid"], ("pending", None))
            wait = min(self.cfg.retry_max_s, self.cfg.retry_first_s * 2 ** min(row["attempts"], 20))
            self.store.mark_send(study_id, dest_name, row["sop_uid"], state, status,
                                 time.time() + wait if state == "pending" else 0.0)
