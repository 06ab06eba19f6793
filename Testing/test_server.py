"""`pancreas-dints serve` for real: one server per module on 127.0.0.1 (packaged demo model, CPU worker), real HTTP
clients (the engine's urllib client, httpx, raw http.client), tiny phantoms and a tiny DICOM series.

Measured: labels of `segment --server` vs a local run (100 % equal, same case files, manifests and tables), 401
on every /v1 endpoint but health, 413 before a byte is stored, zip member names never used as paths, the same
one-line message as a local run for bad uploads, cancel ending the worker's process tree within 2 s, and a load
of 8 clients x 24 jobs (each result its own upload's, FIFO, server RSS reported). The Slicer side (scene layer
RemoteSegmentationJob + bridge client) runs against the same server with slicer-core.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import threading
import time
import urllib.parse
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import psutil
import pytest
from PancreasDiNTSLib.bridge.remote import (
    INPUT_PLACEHOLDER,
    RemoteError,
    ServerClient,
    job_options,
    local_message,
)
from PancreasDiNTSLib.cli import main as cli_main
from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL
from PancreasDiNTSLib.inference.batch import SegmentSettings, run_segment
from server_support import make_token, start_server, wait_for, write_ct
from support import EXAMPLE_CT_SM, require

pytestmark = [pytest.mark.server, pytest.mark.slow]
MAX_UPLOAD_MB = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("server")
    srv = start_server(base / "data", make_token(base / "client"), "--max-upload-mb", str(MAX_UPLOAD_MB))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return ServerClient(server.url, server.token)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny phantom, a 'long' one (about 10 s on one CPU thread) and a tiny DICOM series cut from a real CT."""
    import dicom_factory as df

    folder = tmp_path_factory.mktemp("inputs")
    series = folder / "series"
    vol = df.load_crop(require(EXAMPLE_CT_SM), (slice(40, 72), slice(30, 62), slice(8, 24)))
    df.write_series(series, vol, df.axial_planes(vol, [k * vol.spacing(2) for k in range(vol.data.shape[2])]))
    return {"tiny": write_ct(folder / "tiny.nii.gz"), "long": write_ct(folder / "long.nii.gz", (80, 80, 48), seed=2),
            "series": series}


def _local(inputs: list[Path], out: Path, formats: str = "nifti,seg.nrrd,dicom-seg") -> dict:
    summary = run_segment(SegmentSettings(inputs=tuple(str(p) for p in inputs), out_dir=out, model=PACKAGED_DEMO_MODEL,
                                          device="cpu", formats=formats, progress="none", precision="fp32"))
    return summary.as_dict()


@pytest.fixture(scope="module")
def runs(server, inputs, tmp_path_factory):
    """The same two inputs (a NIfTI file and a DICOM series) segmented locally and through the server (CLI)."""
    work = tmp_path_factory.mktemp("runs")
    cases = [inputs["tiny"], inputs["series"]]
    _local(cases, work / "local")
    code = cli_main(["segment", *map(str, cases), "-o", str(work / "remote"), "--server", server.url, "--token-file",
                     str(server.token_file), "--format", "nifti,seg.nrrd,dicom-seg", "--progress", "none",
                     "--precision", "fp32"])  # a job option the server must pass on (bf16 would differ)
    assert code == 0
    return work / "local", work / "remote"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_segment_server_equals_local_run(runs):
    local, remote = runs
    assert _files(local) == _files(remote)  # case folders and batch tables (the OUTDIR lock file too)
    for case in ("tiny", "series"):
        assert _files(local / case) == _files(remote / case), case
        a = np.asarray(nib.load(local / case / "labels.nii.gz").dataobj)
        b = np.asarray(nib.load(remote / case / "labels.nii.gz").dataobj)
        print(f"{case}: {a.size} voxels, labels {np.bincount(a.ravel(), minlength=3).tolist()}, equal "
              f"{100 * float(np.mean(a == b)):.2f} %")
        assert a.shape == b.shape and np.array_equal(a, b)
        ma, mb = (json.loads((f / case / ".pancreas-dints.json").read_text()) for f in (local, remote))
        assert ma["input"] == mb["input"] and ma["case"] == mb["case"] and sorted(ma["files"]) == sorted(mb["files"])
        ra, rb = (json.loads((f / case / "report.json").read_text()) for f in (local, remote))
        for key in ("case", "input", "input_identity", "input_format", "shape", "volumes_ml", "readout", "outputs",
                    "dicom_series", "model"):
            assert ra.get(key) == rb.get(key), key
        assert rb["server"]["job"] and "server" not in ra
        assert ra["inference"]["precision"] == rb["inference"]["precision"]
        assert rb["inference"]["precision"]["requested"] == "fp32"
    with (local / "measurements.csv").open() as fa, (remote / "measurements.csv").open() as fb:
        assert list(csv.DictReader(fa)) == list(csv.DictReader(fb))
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (local, remote))
    pick = [(r["case"], r["input"], r["status"], r["volumes_ml"]) for r in sa["results"]]
    assert pick == [(r["case"], r["input"], r["status"], r["volumes_ml"]) for r in sb["results"]]


def test_rerun_through_the_server_skips_like_a_local_run(server, runs, inputs):
    _, remote = runs
    before = (remote / "tiny" / ".pancreas-dints.json").read_text()
    code = cli_main(["segment", str(inputs["tiny"]), "-o", str(remote), "--server", server.url, "--token-file",
                     str(server.token_file), "--format", "nifti,seg.nrrd,dicom-seg", "--progress", "none",
                     "--precision", "fp32"])  # a job option the server must pass on (bf16 would differ)
    assert code == 0
    summary = json.loads((remote / "summary.json").read_text())
    assert {r["case"]: r["status"] for r in summary["results"]}["tiny"] == "skipped"
    assert (remote / "tiny" / ".pancreas-dints.json").read_text() == before


def test_a_case_refused_before_upload_fails_with_the_local_message(server, inputs, tmp_path):
    """An ROI outside the CT: segment --server refuses the case after the local read and check, before any byte is
    sent (no job reaches the server), with the local run's message and exit code."""
    log = server.data.parent / f"{server.data.name}-serve.log"
    accepted = log.read_text().count(": accepted from ")
    args = [str(inputs["tiny"]), "--roi=5000,5000,5000,5010,5010,5010", "--progress", "none"]
    assert cli_main(["segment", *args, "-o", str(tmp_path / "local"), "--model", str(PACKAGED_DEMO_MODEL),
                     "--device", "cpu"]) == 1
    assert cli_main(["segment", *args, "-o", str(tmp_path / "remote"), "--server", server.url, "--token-file",
                     str(server.token_file)]) == 1
    local, remote = (json.loads((tmp_path / d / "summary.json").read_text())["results"] for d in ("local", "remote"))
    assert remote[0]["status"] == local[0]["status"] == "failed"
    assert remote[0]["message"] == local[0]["message"] and str(inputs["tiny"]) in remote[0]["message"]
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
    assert log.read_text().count(": accepted from ") == accepted


def _endpoints(server) -> list[tuple[str, str]]:
    """Every operation of the OpenAPI description under /v1 (a job id and a file name filled in)."""
    spec = httpx.get(server.url + "/openapi.json").json()
    fill = {"{job_id}": "0" * 32, "{name}": "labels.nii.gz"}
    out = []
    for path, ops in spec["paths"].items():
        for key, value in fill.items():
            path = path.replace(key, value)
        out += [(method.upper(), path) for method in ops]
    return out


def test_token_required_everywhere_but_health(server):
    endpoints = _endpoints(server)
    assert len(endpoints) >= 7, endpoints
    stored = _stored(server)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {server.token}"},
                    {"Authorization": f"Bearer {server.token}x"}):
        for method, path in endpoints:
            got = httpx.request(method, server.url + path + ("?kind=nii.gz" if path.endswith("/jobs") else ""),
                                headers=headers, content=b"x" * 10 if method == "POST" else None)
            expected = 200 if path == "/v1/health" else 401
            assert got.status_code == expected, (method, path, headers, got.text)
            if expected == 401:
                assert got.headers["www-authenticate"] == "Bearer" and list(got.json()) == ["error"]
    assert _stored(server) == stored  # the refused uploads left nothing


def _raw_post(server, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", "/v1/jobs?kind=nii.gz")
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    if body:
        conn.send(body)
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


def _stored(server) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(server.data)), p.stat().st_size) for p in (server.data / "jobs").rglob("*"))


def test_oversized_upload_is_refused_before_it_is_stored(server):
    before = _stored(server)
    auth = {"Authorization": f"Bearer {server.token}"}
    status, data = _raw_post(server, auth | {"Content-Length": str((MAX_UPLOAD_MB << 20) + 1)})  # no byte sent
    assert status == 413 and "limit" in data["error"], data
    status, data = _raw_post(server, auth | {"Transfer-Encoding": "chunked"}, b"0\r\n\r\n")
    assert status == 411, data
    assert _stored(server) == before


def test_zip_member_names_never_become_paths(server, client, inputs, tmp_path):
    """A series zip whose members are named ../, absolute and nested: unpacked by number; nothing outside."""
    marker = f"escape-{time.time_ns()}"
    names = [f"../../{marker}.dcm", f"/tmp/{marker}-abs.dcm", f"a/../../../{marker}-b.dcm", f"..\\{marker}-c.dcm"]
    upload = tmp_path / "evil.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        for k, f in enumerate(sorted(inputs["series"].iterdir())):
            zf.write(f, names[k % len(names)].replace(".dcm", f"-{k}.dcm"))
    job = client.submit(upload, "zip", job_options())
    final = client.wait(job["id"], poll=0.2)
    assert final["state"] == "done", final
    found = [*server.data.parent.rglob(f"*{marker}*"), *server.data.parent.parent.glob(f"*{marker}*"),
             *Path("/tmp").glob(f"{marker}*")]
    assert not found


def _local_message(path: Path, tmp: Path) -> str:
    result = _local([path], tmp / "local-bad")["results"]
    assert result[0]["status"] == "failed"
    return result[0]["message"]


def test_bad_uploads_fail_with_the_local_message(client, tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image\n" * 50)
    junk_series = tmp_path / "junk_series"
    junk_series.mkdir()
    for k in range(3):
        (junk_series / f"im{k}.dcm").write_bytes(b"DICM? no: " + bytes(range(256)) * 4)
    zipped = tmp_path / "junk.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(junk_series.iterdir()):
            zf.write(f, f.name)
    for local_path, upload, kind in ((garbage, garbage, "nii.gz"), (junk_series, zipped, "zip")):
        final = client.wait(client.submit(upload, kind, job_options())["id"], poll=0.2)
        assert final["state"] == "failed" and INPUT_PLACEHOLDER in final["error"], final
        mine = local_message(final["error"], str(local_path))
        print(f"{kind}: {mine}")
        assert mine == _local_message(local_path, tmp_path)
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"PK but not really")
    with pytest.raises(RemoteError) as err:
        client.submit(not_zip, "zip", job_options())
    assert err.value.status == 400 and "not a readable zip" in str(err.value)


def test_progress_stream_follows_a_job_to_its_end(server, client, inputs):
    job = client.submit(inputs["tiny"], "nii.gz", job_options())["id"]
    lines = []
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job}/events", timeout=120,
                      headers={"Authorization": f"Bearer {server.token}"}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert lines[0]["state"] in ("queued", "running") and lines[-1]["state"] == "done"
    fractions = [status["fraction"] for status in lines]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {f["name"] for f in lines[-1]["files"]} == {"labels.nii.gz", "segmentation.seg.nrrd", "report.json"}


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cancel_ends_the_worker_tree_within_2_s(server, client, inputs):
    job = client.submit(inputs["long"], "nii.gz", job_options())
    wait_for(lambda: client.status(job["id"])["stage"] == "infer", timeout=120)
    workers = server.workers()
    assert len(workers) == 1
    tree = _tree(workers[0].pid)
    t0 = time.monotonic()
    status = client.cancel(job["id"])
    seconds = time.monotonic() - t0
    print(f"cancel returned after {seconds:.2f} s; worker tree of {len(tree)} process(es)")
    assert status["state"] == "cancelled"
    assert seconds < 2.0
    assert all(_gone(p) for p in tree)
    assert client.health()["status"] == "ok"
    assert not (server.data / "jobs" / job["id"] / "input").exists()  # the upload is not kept


def test_load_8_clients_24_jobs(server, client, tmp_path):
    """8 threads submit 3 distinct inputs each at once; every result is its own upload's; FIFO on one worker."""
    files = [write_ct(tmp_path / f"in{k:02d}.nii.gz", (32, 32, 32), seed=3, crop_z=8 + k) for k in range(24)]
    digests = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    rss_before = psutil.Process(server.proc.pid).memory_info().rss
    start, jobs, errors = threading.Barrier(8), {}, []

    def one_client(mine: list[Path]) -> None:
        c = ServerClient(server.url, server.token)
        try:
            start.wait()
            for f in mine:
                jobs[f] = c.submit(f, "nii.gz", job_options(formats=("nifti",)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(files[i::8],)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    finals = {f: client.wait(j["id"], poll=0.3) for f, j in jobs.items()}
    seconds = time.monotonic() - t0
    rss_after = psutil.Process(server.proc.pid).memory_info().rss
    for k, f in enumerate(files):
        final = finals[f]
        assert final["state"] == "done" and final["input_sha256"] == digests[f], final
        report = json.loads(_download(client, final, "report.json"))
        assert report["shape"] == [32, 32, 8 + k]  # the result of this upload, not another's
    order = sorted(finals.values(), key=lambda s: s["created"])
    assert [s["id"] for s in order] == [s["id"] for s in sorted(order, key=lambda s: s["started"])]
    print(f"24 jobs from 8 clients in {seconds:.1f} s; server RSS {rss_before / 2**20:.0f} -> "
          f"{rss_after / 2**20:.0f} MiB")
    assert rss_after < 400 * 2**20


def _download(client, final: dict, name: str) -> bytes:
    import tempfile

    entry = next(e for e in final["files"] if e["name"] == name)
    with tempfile.TemporaryDirectory() as tmp:
        return client.download(final["id"], entry, Path(tmp) / name).read_bytes()


def test_slicer_scene_layer_runs_on_the_server_and_cancels(server, runs, inputs):
    """slicer-core: RemoteSegmentationJob -> RemoteRun (stdlib HTTP) -> import: labels equal the local run's;
    a cancelled remote run leaves the scene unchanged and no files."""
    import test_scene_support as support

    slicer = support.import_slicer_core()
    import PancreasDiNTSSceneLib as scenelib
    from PancreasDiNTSLib.bridge.progress_lines import ProgressParser

    local, _ = runs
    scene = slicer.vtkMRMLScene()
    volume = support.load_volume(scene, inputs["tiny"], "tiny")
    job = scenelib.RemoteSegmentationJob(volume, "", None, scene=scene, server_url=server.url, token=server.token,
                                         device="cpu")
    run, parser = job.start(), ProgressParser()
    wait_for(lambda: parser.feed_all(run.drain()) is not None and run.ended, timeout=120)
    result = job.complete(run.returncode, parser=parser)
    assert result.success, result.message
    exported = support.export_labels(scene, result.segmentationNode, volume)
    truth = support.nifti_labels_at(local / "tiny" / "labels.nii.gz", exported)
    assert float(np.mean(exported["labels"] == truth)) == 1.0
    assert result.confidenceNode is not None and parser.fraction == 1.0

    long_volume = support.load_volume(scene, inputs["long"], "long")
    nodes = scene.GetNumberOfNodes()
    job = scenelib.RemoteSegmentationJob(long_volume, "", None, scene=scene, server_url=server.url,
                                         token=server.token)
    run, parser = job.start(), ProgressParser()
    wait_for(lambda: any(parser.feed(line).stage == "infer" for line in run.drain()), timeout=120)
    run.cancel()
    result = job.complete(run.returncode, cancelled=True, parser=parser)
    assert result.cancelled and scene.GetNumberOfNodes() == nodes and not job.work_dir.exists()
    assert ServerClient(server.url, server.token).status(run.job)["state"] == "cancelled"


def test_slicer_panel_logic_runs_on_the_server(server, tmp_path, monkeypatch):
    """PancreasDiNTS.py's Logic.process(server=..., token=...) with Slicer replaced at the seam test's thinnest seam
    (slicer.util, a ticked timer): the remote run is polled like the engine process, its result handed over the same
    way (segments on the exported input's grid), the temporary folder removed, the panel's precision choice carried
    by the job's query (bf16 ran on the server: its report says so); a wrong token fails in one line."""
    import importlib
    import sys

    import test_slicer_module_seam as seam

    loop = seam.Loop()
    monkeypatch.syspath_prepend(str(seam.REPO / "PancreasDiNTS"))
    for name, mod in seam.make_fake_slicer(loop, tmp_path, require(EXAMPLE_CT_SM), True).items():
        monkeypatch.setitem(sys.modules, name, mod)
    for name in [n for n in sys.modules if n.split(".")[0] in ("PancreasDiNTS", "PancreasDiNTSSlicerLib",
                                                               "PancreasDiNTSSceneLib")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("PancreasDiNTS")
    export_node = sys.modules["slicer.util"].exportNode

    def write_engine_input(volume, path):
        export_node(volume, str(path))
        return Path(path)

    monkeypatch.setattr(module.scenelib.runs, "write_engine_input", write_engine_input)
    logic = module.PancreasDiNTSLogic()
    logic.importSegmentation = seam.Recorder()
    logic.loadConfidence = lambda path, volume: "confidence node"
    events = []
    result = logic.process("volume node", None, None, server=server.url, token=server.token,
                           eventCallback=events.append, precision="bf16")
    assert result.success and result.segmentationNode == "segmentation node", result.message
    assert result.report["inference"]["precision"]["used"] == "bf16"
    assert logic.importSegmentation.calls[0][0] == ["Pancreas", "Pancreatic tumor"]
    assert result.confidenceNode == "confidence node" and set(result.volumes) == {"Pancreas", "Pancreatic tumor"}
    assert {"upload", "done"} <= {e.stage for e in events if e.kind == "progress"}
    assert not list(tmp_path.glob("PancreasDiNTS-*/*"))
    with pytest.raises(RuntimeError) as error:
        logic.process("volume node", None, None, server=server.url, token="wrong")
    assert "401" in str(error.value) and "\n" not in str(error.value)


def test_sigterm_stops_the_server_in_its_own_words(server):
    """Last in this file (it stops the module's server): SIGTERM, as systemd stops a service, ends the server
    with exit 130 and says that running jobs are queued again (issue 38: it printed `segment`'s wording)."""
    server.stop()
    assert server.proc.returncode == 130
    log = (server.data.parent / f"{server.data.name}-serve.log").read_text()
    assert "pancreas-dints serve: terminated (SIGTERM); running jobs are queued again at the next start" in log
    assert "finished cases" not in log
