"""A rerun keeps a reviewer's work (issue 31 finding 1); the client checks what a server sends (3); token files
(7); serve and demo without their packages (4); a NIfTI without orientation and RTSTRUCT de-identification (9).
The server's store faults and retention are in Testing/test_server_store_faults_and_retention.py."""

from __future__ import annotations

import csv
import hashlib
import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME, file_digest
from PancreasDiNTSLib.review import batch, record
from test_concurrent_and_interrupted_runs import CLI, exited_within, paused_child, seg, segment_cmd, tiny_ct  # noqa: F401

REVIEW_FILES = ("labels_corrected.nii.gz", "segmentation_corrected.seg.nrrd", "review.json")


def correct(case: Path) -> dict:
    """A reviewer's corrected save: one more pancreas voxel; the .seg.nrrd writer copies the engine's file."""
    labels = record.load_labels(case / "labels.nii.gz")
    corrected = np.asarray(labels.dataobj).copy()
    corrected[0, 0, 0] = 1
    review = record.ReviewInput("corrected", "alice", labels=corrected,
                                write_segmentation=lambda dest: shutil.copyfile(case / "segmentation.seg.nrrd", dest))
    return record.save_review(case, review)


def digests(case: Path) -> dict[str, dict]:
    return {n: file_digest(case / n) for n in REVIEW_FILES}


@pytest.mark.slow
def test_finding1_a_rerun_keeps_the_reviewers_corrections(tmp_path, tiny_ct, tiny_bundle, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd")[0] == 0
    case = out / "tiny"
    saved = correct(case)
    assert saved["labels_sha256"] == file_digest(case / "labels.nii.gz")["sha256"]
    kept = digests(case)
    # a user's file that a hand-edited manifest lists with its true digest
    (case / "notes.txt").write_text("my notes\n")
    manifest = json.loads((case / MANIFEST_NAME).read_text())
    manifest["files"]["notes.txt"] = file_digest(case / "notes.txt")
    (case / MANIFEST_NAME).write_text(json.dumps(manifest))

    # one more format (the labels do not change: same model, same CT) and --overwrite with fewer formats
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd,confidence")
    assert code == 0, err
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti", "--overwrite")
    assert code == 0, err
    assert digests(case) == kept  # nothing a reviewer made was deleted or replaced
    assert (case / "notes.txt").read_text() == "my notes\n"
    assert not (case / "segmentation.seg.nrrd").exists()  # the engine's own stale output is still cleaned up
    listed = json.loads((case / MANIFEST_NAME).read_text())["files"]
    assert set(REVIEW_FILES) <= set(listed)  # still listed: the next review save may replace them
    assert batch.load_case(case).status == "corrected"  # same labels: the review still holds

    # labels that change (another model): the review is flagged as made on the earlier labels, its files kept
    other = tmp_path / "other-model"
    shutil.copytree(tiny_bundle, other)
    weights = next((other / "models").glob("*.pt"))
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=False)
    inner = state.get("state_dict", state) if isinstance(state, dict) else state
    for value in inner.values():
        if hasattr(value, "dtype") and value.is_floating_point():
            value.add_(torch.randn_like(value))
    torch.save(state, weights)
    code, err = seg(capsys, [tiny_ct], out, other, "--format", "nifti,seg.nrrd", "--overwrite")
    assert code == 0, err
    assert digests(case) == kept
    assert file_digest(case / "labels.nii.gz")["sha256"] != saved["labels_sha256"]  # the perturbed model differs
    assert "made on the earlier labels" in err and err.count("\n") <= 4, err
    loaded = batch.load_case(case)
    assert loaded.status == "corrected (earlier labels)" and "earlier labels" in loaded.problem
    assert batch.segmentation_to_open(case) == (case / "segmentation.seg.nrrd", False)
    rows = list(csv.DictReader((out / "review.csv").open()))
    assert rows[0]["status"] == "corrected (earlier labels)"


@pytest.mark.subprocess
@pytest.mark.slow
def test_finding1_a_save_during_a_rerun_survives_the_run(tmp_path, tiny_ct, tiny_bundle, cli_env, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd")[0] == 0
    case = out / "tiny"
    go = tmp_path / "go"
    proc = paused_child(dict(cli_env, OMP_NUM_THREADS="1"), go, ("PancreasDiNTSLib.io.writers", "write_label_nifti"),
                        segment_cmd([tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd", "--overwrite"))
    correct(case)  # the reviewer saves while the rerun is inferring
    kept = digests(case)
    go.touch()
    assert exited_within(proc, 300) == 0
    assert digests(case) == kept
    assert batch.load_case(case).status == "corrected"
    rows = list(csv.DictReader((out / "review.csv").open()))
    assert [r["status"] for r in rows] == ["corrected"]


def test_finding1_only_a_review_save_writes_a_reviewers_file(tmp_path):
    from PancreasDiNTSLib.core.errors import OutputError
    from PancreasDiNTSLib.core.ownership import CaseFolder

    folder = CaseFolder(tmp_path / "case", {"path": "x"}, "case")
    folder.begin([])
    with pytest.raises(OutputError, match="a reviewer's file"):
        folder.write("review.json", lambda dest: dest.write_text("{}"))
    CaseFolder(tmp_path / "case", {"path": "x"}, "case", for_review=True).write(
        "review.json", lambda dest: dest.write_text("{}"))
    run = CaseFolder(tmp_path / "case", {"path": "x"}, "case")
    run.finish([])
    assert (tmp_path / "case" / "review.json").read_text() == "{}"


# --------------------------------------------------------------------------- 3: segment --server checks answers

JOB = "ab" * 16


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """A server on 127.0.0.1 that speaks the API but answers what ``self.server.plan`` says."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _status(self) -> dict:
        plan = self.server.plan  # type: ignore[attr-defined]
        if plan.get("never"):
            return {"id": JOB, "state": "running", "stage": "infer", "fraction": 0.5}
        files = [{"name": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in plan["files"].items()]
        return {"id": JOB, "state": "done", "fraction": 1.0, "files": files}

    def do_GET(self) -> None:  # noqa: N802
        plan = self.server.plan  # type: ignore[attr-defined]
        if self.path == "/v1/model":
            if plan.get("html"):
                return self._send(200, b"<html><body>Hospital single sign-on: log in</body></html>", "text/html")
            return self._send(200, json.dumps({"model": {}, "limits": {"max_upload_bytes": 1 << 30}}).encode())
        if self.path == f"/v1/jobs/{JOB}":
            return self._send(200, json.dumps(self._status()).encode())
        prefix = f"/v1/jobs/{JOB}/files/"
        if self.path.startswith(prefix) and self.path[len(prefix):] in plan["files"]:
            return self._send(200, plan["files"][self.path[len(prefix):]], "application/octet-stream")
        self._send(404, b'{"error": "no"}')

    def do_POST(self) -> None:  # noqa: N802
        plan = self.server.plan  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers["Content-Length"] or 0))
        if self.path.startswith("/v1/jobs?"):
            sha = "0" * 64 if plan.get("wrong_sha") else hashlib.sha256(body).hexdigest()
            return self._send(202, json.dumps({"id": JOB, "state": "queued", "input_sha256": sha}).encode())
        if self.path == f"/v1/jobs/{JOB}/cancel":
            plan["cancelled"] = True
        self._send(200, json.dumps({"id": JOB, "state": "cancelled"}).encode())

    def do_DELETE(self) -> None:  # noqa: N802
        self._send(200, b"{}")


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_ct, tiny_bundle):  # noqa: F811
    """Real results of this CT and of another patient's CT on another grid (local runs, tiny bundle)."""
    from image_files import crop_nifti
    from support import EXAMPLE_CT_SM

    base = tmp_path_factory.mktemp("truth")
    other = crop_nifti(EXAMPLE_CT_SM, base / "other.nii.gz", (slice(30, 62), slice(30, 54), slice(0, 16)))
    out = base / "out"
    for ct in (tiny_ct, other):
        assert main(segment_cmd([ct], out, tiny_bundle, "--format", "nifti,seg.nrrd", "--allow-non-ct")) == 0
    read = {case: {n: (out / case / n).read_bytes() for n in ("labels.nii.gz", "segmentation.seg.nrrd", "report.json")}
            for case in ("tiny", "other")}
    return read


def _run_against(tmp_path, capsys, ct: Path, plan: dict, *extra: str) -> tuple[int, str, Path]:
    from server_support import make_token

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.plan = plan  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "out"
    try:
        code = main(["segment", str(ct), "-o", str(out), "--progress", "none", "--format", "nifti,seg.nrrd",
                     "--server", f"http://127.0.0.1:{server.server_address[1]}", "--token-file",
                     str(make_token(tmp_path / "client")), *extra])
    finally:
        server.shutdown()
        server.server_close()
    return code, capsys.readouterr().err, out / "tiny"


@pytest.mark.slow
def test_finding3_the_client_checks_what_the_server_sends(tmp_path, capsys, tiny_ct, results):  # noqa: F811
    own, other = results["tiny"], results["other"]
    code, err, case = _run_against(tmp_path / "ok", capsys, tiny_ct, {"files": dict(own)})
    assert code == 0 and (case / "labels.nii.gz").read_bytes() == own["labels.nii.gz"], err  # a right answer is used

    wrong_grid = dict(own, **{n: other[n] for n in ("labels.nii.gz", "segmentation.seg.nrrd")})
    bad_volume = json.loads(own["report.json"])
    bad_volume["volumes_ml"] = {k: "lots" for k in bad_volume["volumes_ml"]}
    for plan, expected in (
            ({"files": wrong_grid}, "is on another grid (32x24x16, not this input's 20x20x20"),
            ({"files": {"report.json": own["report.json"]}}, "lacks labels.nii.gz, segmentation.seg.nrrd"),
            ({"files": dict(own, **{"report.json": json.dumps(bad_volume).encode()})}, "not a number"),
            ({"files": dict(own, **{"labels_corrected.nii.gz": own["labels.nii.gz"]})}, "which was not asked for"),
            ({"files": dict(own), "wrong_sha": True}, "did not record the image sent")):
        where = tmp_path / expected[:12].replace(" ", "_")
        code, err, case = _run_against(where, capsys, tiny_ct, plan)
        assert code == 1 and expected in err, err
        assert not (case / "labels.nii.gz").exists() and not (case / "segmentation.seg.nrrd").exists()
        failed = [line for line in err.splitlines() if "failed" in line and "tiny" in line]
        assert len(failed) == 1, err  # one line for the case
        summary = json.loads((where / "out" / "summary.json").read_text())
        assert [r["status"] for r in summary["results"]] == ["failed"]

    code, err, _ = _run_against(tmp_path / "html", capsys, tiny_ct, {"files": {}, "html": True})
    assert code == 4 and len(err.strip().splitlines()) == 1 and "not the server's JSON (text/html" in err, err

    plan = {"files": {}, "never": True}
    t0 = time.monotonic()
    code, err, _ = _run_against(tmp_path / "never", capsys, tiny_ct, plan, "--server-job-timeout", "2")
    assert code == 1 and "no result after 2 s" in err and plan.get("cancelled"), err
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------- 7: token files, one rule everywhere


@pytest.mark.slow
def test_finding7_token_files_are_checked_the_same_way_by_server_and_client(tmp_path, capsys, tiny_ct):  # noqa: F811
    good = "site-token-" + "0123456789abcdef" * 2
    cases = {"world-readable": (good, 0o644, "other users can read or change it (mode 644); run chmod 600"),
             "one-character": ("x", 0o600, "the token is too weak (1 characters"),
             "repeated": ("a" * 40, 0o600, "the token is too weak (40 characters, 1 different")}
    for name, (text, mode, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text + "\n")
        path.chmod(mode)
        server = main(["serve", "--data", str(tmp_path / f"data-{name}"), "--port", "0", "--device", "cpu",
                       "--token-file", str(path)])
        server_err = capsys.readouterr().err
        client = main(["segment", str(tiny_ct), "-o", str(tmp_path / "out"), "--server", "http://127.0.0.1:9",
                       "--token-file", str(path)])
        client_err = capsys.readouterr().err
        assert (server, client) == (2, 4), (server_err, client_err)
        for err in (server_err, client_err):
            assert expected in err and len(err.strip().splitlines()) == 1, err
    # issue 38 item 4: a missing token file says so, and where the token is
    code = main(["segment", str(tiny_ct), "-o", str(tmp_path / "out"), "--server", "http://127.0.0.1:9",
                 "--token-file", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert code == 4 and "absent: no such token file; the token is in the server's DATA/token file" in err, err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 4: the wheel without its extras

HIDE_DRIVER = """
import importlib.abc, sys
hidden = set(sys.argv[1].split(","))
class Hide(importlib.abc.MetaPathFinder):  # as if the package were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from PancreasDiNTSLib.cli import entry  # as the console script starts
sys.exit(entry(sys.argv[2:]))
"""


@pytest.mark.subprocess
def test_finding4_serve_and_demo_without_their_packages_are_one_line(tmp_path, cli_env):
    import subprocess

    from support import PYTHON

    for hidden, args, expected in (
            ("fastapi", ["serve", "--data", str(tmp_path / "data"), "--port", "0"],
             "serve needs the Python package fastapi: pip install 'PancreasDiNTSLib[server]'"),
            ("matplotlib", ["demo", "-o", str(tmp_path / "demo"), "--device", "cpu"],
             "demo needs the Python package matplotlib: pip install matplotlib")):
        proc = subprocess.run([PYTHON, "-c", HIDE_DRIVER, hidden, *args], env=cli_env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "demo").exists()  # before any work


# --------------------------------------------------------------------------- 9: silent wrong results


@pytest.mark.slow
def test_finding9_a_nifti_without_orientation_is_refused_in_one_line(tmp_path, capsys, tiny_ct, tiny_bundle):  # noqa: F811
    import nibabel as nib

    image = nib.load(str(tiny_ct))
    bare = nib.Nifti1Image(np.asarray(image.dataobj), None)
    bare.header["qform_code"], bare.header["sform_code"] = 0, 0
    bare.header.set_zooms(image.header.get_zooms())
    nib.save(bare, str(tmp_path / "bare.nii.gz"))
    assert nib.load(str(tmp_path / "bare.nii.gz")).header["sform_code"] == 0
    code, err = seg(capsys, [tmp_path / "bare.nii.gz"], tmp_path / "out", tiny_bundle)
    assert code == 1 and "no orientation (qform_code and sform_code are both 0)" in err, err
    assert not (tmp_path / "out" / "bare" / "labels.nii.gz").exists()


@pytest.mark.slow
def test_finding9_rtstruct_keeps_the_deidentification_attributes(tmp_path, capsys, tiny_ct, tiny_bundle):  # noqa: F811
    import nibabel as nib
    import pydicom
    from image_files import write_dicom_series

    image = nib.load(str(tiny_ct))
    series = write_dicom_series(np.asarray(image.dataobj), image.affine, tmp_path / "series")
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "Basic Application Confidentiality Profile"
        ds.save_as(f)
    code, err = seg(capsys, [series], tmp_path / "out", tiny_bundle, "--format", "dicom-seg,dicom-sr,rtstruct")
    assert code == 0, err
    (case,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    for name in ("rtstruct.dcm", "segmentation.dcm", "measurements-sr.dcm"):
        ds = pydicom.dcmread(case / name)
        assert (ds.get("PatientIdentityRemoved"), ds.get("DeidentificationMethod")) == (
            "YES", "Basic Application Confidentiality Profile"), name
