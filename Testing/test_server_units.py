"""The server's small rules without a running server: the token file (made with mode 0600, refused when others
can read it), the TLS warning and option checks, retention purging, upload unpacking by number, the one-data-
folder lock, the job options the API accepts, and the client's refusals (bad address, token file, result names)."""

from __future__ import annotations

import os
import stat
import time
import zipfile

import pytest
from fastapi import HTTPException
from PancreasDiNTSLib.bridge.remote import (
    RemoteError,
    ServerClient,
    job_options,
    local_message,
    read_token,
    result_name,
    upload_kind,
)
from PancreasDiNTSLib.core.errors import UsageError
from PancreasDiNTSLib.core.request import OPTIONS
from PancreasDiNTSLib.server.app import JOB_PARAMETERS, _options
from PancreasDiNTSLib.server.serve import (
    ServeSettings,
    _check_tls,
    data_lock,
    load_token,
    purge_expired,
    worker_devices,
)
from PancreasDiNTSLib.server.store import JobStore, new_job_id, valid_job_id
from PancreasDiNTSLib.server.uploads import UploadRefused, check_series_zip, unpack_series


def test_token_made_once_with_mode_0600_and_refused_when_others_can_read_it(tmp_path):
    token, path = load_token(tmp_path, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 40
    assert load_token(tmp_path, None)[0] == token  # kept across starts
    path.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        load_token(tmp_path, None)
    given = tmp_path / "given"
    given.write_text("a-site-token-0123456789abcdefghijklmnop\n")
    given.chmod(0o600)
    assert load_token(tmp_path, given) == ("a-site-token-0123456789abcdefghijklmnop", given)


def test_client_token_file_and_address_refusals(tmp_path):
    with pytest.raises(RemoteError, match="no such token file; the token is in the server's DATA/token"):
        read_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    with pytest.raises(RemoteError, match="holds no token"):
        read_token(tmp_path / "empty")
    for url in ("ftp://host", "gpu-server:8765", "http://"):
        with pytest.raises(RemoteError, match="http:// or https://"):
            ServerClient(url, "t")
    assert ServerClient("http://10.0.0.5:8765", "t").insecure and not ServerClient("http://127.0.0.1:1", "t").insecure
    assert not ServerClient("https://gpu.example.org", "t").insecure


def test_unreachable_server_is_one_line(tmp_path):
    with pytest.raises(RemoteError) as err:
        ServerClient("http://127.0.0.1:9", "t", timeout=5).model()  # port 9 (discard): nothing listens
    assert "cannot reach the server" in str(err.value) and "\n" not in str(err.value)


def test_result_names_and_upload_kinds(tmp_path):
    assert result_name({"name": "labels.nii.gz"}) == "labels.nii.gz"
    for bad in ("../labels.nii.gz", "/etc/passwd", "x.sh", ""):
        with pytest.raises(RemoteError):
            result_name({"name": bad})
    assert [upload_kind(tmp_path / n) for n in ("a.nii.gz", "b.NII", "c.nrrd", "d.mha")] == ["nii.gz", "nii", "nrrd",
                                                                                             "mha"]
    assert upload_kind(tmp_path) == "zip"
    for name in ("e.nhdr", "f.mhd", "g.png"):
        with pytest.raises(RemoteError):
            upload_kind(tmp_path / name)
    assert local_message("{input}: not a CT\x1b[31m", "/data/ct.nii.gz") == "/data/ct.nii.gz: not a CT\\x1b[31m"


def test_tls_options_and_the_warning_for_other_hosts(tmp_path, capsys):
    _check_tls(ServeSettings(tmp_path, "m", host="127.0.0.1"))
    assert capsys.readouterr().err == ""
    _check_tls(ServeSettings(tmp_path, "m", host="0.0.0.0"))
    assert "without TLS" in capsys.readouterr().err
    with pytest.raises(UsageError, match="go together"):
        _check_tls(ServeSettings(tmp_path, "m", tls_cert=tmp_path / "c.pem"))
    with pytest.raises(UsageError, match="not found"):
        _check_tls(ServeSettings(tmp_path, "m", tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"))


def test_one_server_per_data_folder(tmp_path):
    with data_lock(tmp_path):
        with pytest.raises(UsageError, match="another server"):
            with data_lock(tmp_path):
                pass
    with data_lock(tmp_path):  # released
        pass


def test_retention_purges_finished_jobs_only(tmp_path):
    store = JobStore(tmp_path)
    done, queued = new_job_id(), new_job_id()
    for job_id in (done, queued):
        (store.job_dir(job_id) / "out").mkdir(parents=True)
        store.add(job_id, "nii.gz", {}, 1, "0" * 64)
    store.finish(done, "done", files=[])
    assert purge_expired(store, retention_s=3600) == 0
    time.sleep(0.01)
    assert purge_expired(store, retention_s=0) == 1
    assert store.get(done) is None and not store.job_dir(done).exists()
    assert store.get(queued)["state"] == "queued" and store.job_dir(queued).exists()
    assert not valid_job_id("../" + done[3:]) and store.get("../etc") is None
    store.close()


def test_zip_members_are_numbered_and_bounded(tmp_path):
    upload = tmp_path / "u.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        zf.writestr("../../a.dcm", b"A" * 10)
        zf.writestr("/abs/b.dcm", b"B" * 10)
        zf.writestr("dir/", b"")
    assert check_series_zip(upload, free=1 << 30, max_bytes=1 << 20) == 20
    assert unpack_series(upload, tmp_path / "dicom", max_bytes=1 << 20) == 2
    assert sorted(os.listdir(tmp_path / "dicom")) == ["000000.dcm", "000001.dcm"]
    assert not (tmp_path.parent / "a.dcm").exists() and not os.path.exists("/abs/b.dcm")
    with pytest.raises(UploadRefused) as err:
        check_series_zip(upload, free=1 << 30, max_bytes=15)
    assert err.value.status == 413
    with pytest.raises(UploadRefused) as err:
        check_series_zip(upload, free=5, max_bytes=1 << 20)
    assert err.value.status == 507


def test_job_options_the_api_accepts():
    opts = _options(job_options(("nifti", "confidence"), "exact", (0, 1, 2, 3, 4, 5), "voxel", "local", True, "1.2.3",
                                "whole"))
    assert opts == {"formats": "nifti,confidence", "mode": "exact", "allow_non_ct": "true",
                    "roi": "0.0,1.0,2.0,3.0,4.0,5.0", "roi_space": "voxel", "roi_mode": "local", "series": "1.2.3"}
    # (region whole with a box: the box is the region, as in `segment --region whole --roi ...`)
    assert _options(job_options(region="whole"))["region"] == "whole"
    assert "region" not in _options(job_options())  # not given: the server decides, as a local run
    # every job option of core.request reaches the job (the endpoint reads the whole query), bad values are 400
    assert _options({"precision": "fp32", "kind": "nii.gz"})["precision"] == "fp32"
    assert {p["name"] for p in JOB_PARAMETERS} == {o.dest for o in OPTIONS if o.job}  # what the API page lists
    for bad in ({"formats": "nifti,../x"}, {"allow_non_ct": "maybe"}, {"precision": "fp64"}, {"mode": "turbo"}, {"roi": "1,2,3"}, {"roi": "0,0,0,1,1,nan"},
                {"roi": "0,0,0,1,1,1", "roi_space": "lps"}, {"series": "x" * 200},
                {"region": "half"}):
        with pytest.raises(HTTPException) as err:
            _options(bad)
        assert err.value.status_code == 400
        assert str(err.value.detail).split()[0].rstrip(":") in bad  # names the query parameter, not a CLI flag


def test_worker_devices():
    """auto: one worker per GPU torch sees (asked in a subprocess), else one on the CPU; or the list given."""
    import torch

    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert worker_devices("auto") == (gpus or ["cpu"])
    assert worker_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    with pytest.raises(UsageError):
        worker_devices(" , ")


def test_a_job_taken_by_a_worker_between_two_reads_never_shows_position_null(tmp_path):
    """Issue 38: a fresh job answered "position": null (read as queued, then gone from the queue when the position
    was looked up). Real store and pool (no worker process started): queued -> 1, 2; running -> 0; done -> null."""
    from PancreasDiNTSLib.server.app import Limits, Service, _status
    from PancreasDiNTSLib.server.workers import WorkerPool

    store = JobStore(tmp_path)
    service = Service(store, WorkerPool(store, "model", ["cpu"], tmp_path), "token", Limits())
    first, second = new_job_id(), new_job_id()
    for job in (first, second):
        store.add(job, "nii.gz", {"formats": "nifti"}, 10, "0" * 64)
    assert [_status(service, store.get(j))["position"] for j in (first, second)] == [1, 2]
    stale = store.get(first)
    assert store.claim_next(0)["id"] == first
    now = _status(service, stale)  # the row read before the worker took it
    assert now["state"] == "running" and now["position"] == 0
    assert _status(service, store.get(second))["position"] == 1
