"""Issue 31 (reliability round 4) on a real `pancreas-dints serve` on 127.0.0.1 (one server for the module):
the job store held locked by another program (2), a damaged store (2), client disconnects and the API page (6),
retention of patient data (5), token files (7)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from PancreasDiNTSLib.bridge.remote import ServerClient, job_options
from server_support import make_token, start_server, wait_for, write_ct
from support import PYTHON

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("round4")
    token = make_token(base / "client")
    server = start_server(base / "data", token, "--unclaimed-hours", "0.003")  # 10.8 s: finding 5
    yield {"server": server, "base": base, "ct": write_ct(base / "in" / "ct.nii.gz")}
    server.stop()


def _log(site) -> str:
    return (site["base"] / "data-serve.log").read_text()


def _raw(url: str, method: str = "GET", body: bytes | None = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request, errors included."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read()


def _job_folders(site) -> set[str]:
    return {p.name for p in (site["server"].data / "jobs").iterdir()}


def test_finding2_a_locked_store_degrades_and_recovers(site):
    srv = site["server"]
    client = ServerClient(srv.url, srv.token)
    before = _job_folders(site)
    holder = sqlite3.connect(str(srv.data / "jobs.sqlite3"), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()
    timer = threading.Timer(12.0, lambda: (holder.execute("ROLLBACK"), released.set()))
    timer.start()
    try:
        ct = site["ct"].read_bytes()
        status, ctype, body = _raw(f"{srv.url}/v1/jobs?kind=nii.gz", "POST", ct, srv.token,
                                   {"Content-Type": "application/octet-stream"})
        assert status == 503 and ctype.startswith("application/json"), (status, body[:300])
        assert "job store" in json.loads(body)["error"]
        assert _job_folders(site) == before  # the refused upload (a patient's CT) is not left on the server
        health = wait_for(lambda: (h := client.health())["status"] == "degraded" and h, timeout=15)
        assert "job store" in health["problems"][0]
    finally:
        assert released.wait(30)
        timer.join()
        holder.close()
    wait_for(lambda: client.health()["status"] == "ok", timeout=60)
    job = client.submit(site["ct"], "nii.gz", job_options(("nifti",)))
    assert client.wait(job["id"], poll=0.3)["state"] == "done"  # the scheduler survived the outage
    log = _log(site)
    assert "Traceback" not in log and log.count("job store error while") == 1, log[-3000:]


def test_finding2_a_damaged_store_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "jobs.sqlite3").write_bytes(b"this is not a database, it was damaged by a disk fault " * 100)
    token = make_token(tmp_path / "client")
    proc = subprocess.run([PYTHON, "-m", "PancreasDiNTSLib.cli", "serve", "--port", "0", "--data", str(data),
                           "--device", "cpu", "--token-file", str(token)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "job store is damaged" in lines[0] and "move the file away" in lines[0], proc.stderr


# --------------------------------------------------------------------------- 5: retention of patient data


def test_finding5_a_job_failed_in_recovery_keeps_no_upload(tmp_path):
    from PancreasDiNTSLib.server.serve import open_store
    from PancreasDiNTSLib.server.store import JobStore, new_job_id

    store = JobStore(tmp_path)
    job = new_job_id()
    (store.job_dir(job) / "input").mkdir(parents=True)
    (store.job_dir(job) / "input" / "input.nii.gz").write_bytes(b"a patient's CT")
    store.add(job, "nii.gz", {"formats": "nifti"}, 14, "0" * 64)
    for _ in range(2):  # interrupted twice: recovery fails it
        assert store.claim_next(0)["id"] == job
        store._write("UPDATE jobs SET state = 'running' WHERE id = ?", (job,))
        if store.recover()["failed"]:
            break
    store._write("UPDATE jobs SET state = 'running' WHERE id = ?", (job,))
    store.close()
    store, _, counts = open_store(tmp_path)
    assert counts["failed"] == 1 and store.get(job)["state"] == "failed"
    assert not (store.job_dir(job) / "input").exists()  # the CT went with the job
    store.close()


def test_finding5_two_series_fail_before_work_and_unclaimed_results_go(site, tmp_path):
    import nibabel as nib
    import numpy as np
    from image_files import write_dicom_series
    from PancreasDiNTSLib.bridge.remote import zip_series

    srv = site["server"]
    client = ServerClient(srv.url, srv.token)
    image = nib.load(str(site["ct"]))
    data = np.asarray(image.dataobj)
    one = write_dicom_series(data, image.affine, tmp_path / "a")
    two = write_dicom_series(data[::-1], image.affine, tmp_path / "b")
    files = sorted(one.iterdir()) + sorted(two.iterdir())
    job = client.submit(zip_series(files, tmp_path / "two.zip"), "zip", job_options(("nifti",)))
    final = client.wait(job["id"], poll=0.3)
    assert final["state"] == "failed" and "holds 2 series" in final["error"], final
    assert final["started"] is not None and final["finished"] - final["started"] < 30
    assert not any((srv.data / "jobs" / job["id"]).glob("*/*"))  # neither the upload nor results are left

    done = client.submit(site["ct"], "nii.gz", job_options(("nifti",)))
    assert client.wait(done["id"], poll=0.3)["state"] == "done"
    folder = srv.data / "jobs" / done["id"]
    assert (folder / "out").is_dir()
    # its client is gone (no more requests): after --unclaimed-hours (10.8 s here) the results are deleted
    wait_for(lambda: not folder.exists(), timeout=60, every=1.0)
    assert _raw(f"{srv.url}/v1/jobs/{done['id']}", token=srv.token)[0] == 404


# --------------------------------------------------------------------------- 6: logs and pages


def test_finding6_disconnects_are_one_line_and_no_page_calls_a_cdn(site):
    import socket
    import time

    srv = site["server"]
    before = _job_folders(site)
    for _ in range(3):  # a client that goes away in the middle of its upload
        with socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])), timeout=30) as sock:
            sock.sendall(f"POST /v1/jobs?kind=nii.gz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.token}\r\n"
                         "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n".encode()
                         + b"\0" * 5000)
            time.sleep(0.3)
    wait_for(lambda: _log(site).count("the client disconnected") >= 3, timeout=30)
    log = _log(site)
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]
    assert _job_folders(site) == before  # nothing of the partial uploads is kept
    assert _raw(f"{srv.url}/docs")[0] == 404 and _raw(f"{srv.url}/redoc")[0] == 404  # no CDN page by default
    status, kind, body = _raw(f"{srv.url}/openapi.json")
    assert status == 200 and b"cdn" not in body.lower() and "/v1/jobs" in json.loads(body)["paths"]
