"""Faults of `pancreas-dints serve` (this module's server speaks HTTPS with a self-signed certificate), for real: `kill -9` of the server during a job (its workers die with it; after a
restart on the same data folder the job runs again, the queued one too, nothing accepted is lost), `kill -9` of a
worker (the job fails with the reason, the server stays up and the next job runs), and the job store's recovery
rules (second interruption: failed with a reason; missing upload: failed; unaccepted uploads: removed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import psutil
import pytest
from PancreasDiNTSLib.bridge.remote import RemoteError, ServerClient, job_options
from PancreasDiNTSLib.cli import main as cli_main
from PancreasDiNTSLib.server.serve import clean_orphans
from PancreasDiNTSLib.server.store import JobStore, new_job_id
from server_support import make_token, start_server, wait_for, write_ct

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _certificate(folder):
    """A self-signed certificate for 127.0.0.1 (openssl), so this module's server speaks HTTPS."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    token = make_token(base / "client")
    cert, key = _certificate(base)
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    state = {"server": start_server(base / "data", token, *tls), "base": base, "token": token, "tls": tls,
             "cert": str(cert),
             "long": write_ct(base / "in" / "long.nii.gz", (80, 80, 48), seed=2),
             "tiny": write_ct(base / "in" / "tiny.nii.gz")}
    yield state
    state["server"].stop()


def test_https_only_with_the_certificate(site):
    srv = site["server"]
    assert srv.url.startswith("https://127.0.0.1:")
    assert ServerClient(srv.url, srv.token, cafile=site["cert"]).model()["model"]["name"]
    with pytest.raises(RemoteError, match="cannot reach"):  # the system CAs do not know the self-signed one
        ServerClient(srv.url, srv.token).health()


def test_kill_9_of_the_server_loses_no_accepted_job(site):
    srv = site["server"]
    client = ServerClient(srv.url, srv.token, cafile=site["cert"])
    running = client.submit(site["long"], "nii.gz", job_options())["id"]
    queued = client.submit(site["tiny"], "nii.gz", job_options())["id"]
    wait_for(lambda: client.status(running)["stage"] == "infer", timeout=120)
    workers = srv.workers()
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(timeout=30)
    wait_for(lambda: all(_gone(w) for w in workers), timeout=10)  # the workers die with the server
    srv = site["server"] = start_server(srv.data, site["token"], *site["tls"])
    client = ServerClient(srv.url, srv.token, cafile=site["cert"])
    assert client.status(running)["state"] in ("queued", "running")
    log = (srv.data.parent / f"{srv.data.name}-serve.log").read_text()
    assert "1 job(s) queued again" in log
    for job in (running, queued):
        final = client.wait(job, poll=0.3)
        assert final["state"] == "done", final
    assert [s["id"] for s in sorted((client.status(j) for j in (running, queued)), key=lambda s: s["started"])] \
        == [running, queued]  # FIFO kept across the restart


def _new_job(srv, before: set[str], client: ServerClient) -> str | None:
    """The id of the job that appeared since ``before``, once the server has recorded it."""
    for job in {p.name for p in (srv.data / "jobs").iterdir()} - before:
        try:
            return job if client.status(job)["state"] else None
        except RemoteError:  # still uploading: no job yet
            return None
    return None


def test_kill_9_of_a_worker_fails_the_case_and_the_server_stays_up(site, tmp_path, monkeypatch):
    """`segment --server` (over HTTPS: the site's CA through SSL_CERT_FILE) while its job's worker is killed: the
    case fails with the server's one-line reason and leaves no case folder; the server stays up."""
    srv = site["server"]
    client = ServerClient(srv.url, srv.token, cafile=site["cert"])
    monkeypatch.setenv("SSL_CERT_FILE", site["cert"])
    before, codes = {p.name for p in (srv.data / "jobs").iterdir()}, []
    command = ["segment", str(site["long"]), "-o", str(tmp_path / "out"), "--server", srv.url, "--token-file",
               str(site["token"]), "--progress", "none"]
    run = threading.Thread(target=lambda: codes.append(cli_main(command)))
    run.start()
    job = wait_for(lambda: _new_job(srv, before, client), timeout=120)
    wait_for(lambda: client.status(job)["stage"] == "infer", timeout=120)
    (worker,) = srv.workers()
    os.kill(worker.pid, signal.SIGKILL)
    run.join(timeout=120)
    assert codes == [1]
    (result,) = json.loads((tmp_path / "out" / "summary.json").read_text())["results"]
    print(result["message"])
    assert result["status"] == "failed" and "worker process ended unexpectedly (signal 9)" in result["message"]
    assert not (tmp_path / "out" / "long").exists()  # no partial output
    assert srv.proc.poll() is None and client.health()["status"] == "ok"
    after = client.wait(client.submit(site["tiny"], "nii.gz", job_options())["id"], poll=0.3)
    assert after["state"] == "done"  # a fresh worker took the next job
    assert [w.pid for w in srv.workers()] != [worker.pid]


def test_store_recovery_rules(tmp_path):
    store = JobStore(tmp_path)
    ids = [new_job_id() for _ in range(3)]
    for job_id in ids:
        (store.job_dir(job_id) / "input").mkdir(parents=True)
        store.add(job_id, "nii.gz", {"formats": "nifti"}, 10, "0" * 64)
    orphan = store.jobs_dir / new_job_id()
    (orphan / "input").mkdir(parents=True)  # an upload that was never accepted (no row)
    assert clean_orphans(store) == 1 and not orphan.exists()
    assert store.claim_next(0)["id"] == ids[0]  # FIFO
    assert store.recover() == {"requeued": 1, "failed": 0}
    assert store.get(ids[0])["state"] == "queued"
    assert store.claim_next(0)["id"] == ids[0] and store.get(ids[0])["attempts"] == 2
    (store.job_dir(ids[1]) / "input").rmdir()  # an accepted upload that disappeared
    assert store.recover() == {"requeued": 0, "failed": 2}
    first, second = store.get(ids[0]), store.get(ids[1])
    assert first["state"] == "failed" and "twice" in first["error"]
    assert second["state"] == "failed" and "missing" in second["error"]
    assert store.get(ids[2])["state"] == "queued"
    assert store.expired(time.time() + 1) == [ids[0], ids[1]] or set(store.expired(time.time() + 1)) == set(ids[:2])
    store.close()
