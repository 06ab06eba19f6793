"""Issue 33: `serve` as a hospital DICOM node, proved against a real Orthanc PACS (Debian's orthanc +
orthanc-dicomweb, a subprocess on free loopback ports; orthanc_support.py).

One server with the node runs for the module (demo model on the CPU, quiet period 2 s). Its destinations are the
PACS by C-STORE and by STOW-RS (the same Orthanc: every result must be there once), and an archive (a second
Orthanc) that is down at first and started later. Studies are synthetic abdomens (synthetic.phantom) sliced into DICOM by dicom_factory.
Covered: C-STORE from Orthanc of a study with a localizer and a thick series (decisions recorded), SEG + SR +
RTSTRUCT back in Orthanc with references to the chosen CT series, the SEG's labels equal to a local `segment`
run's, the SR's volumes equal to its report.json; the archive down then up (results arrive, once); STOW-RS in
(Orthanc's DICOMweb client pushes); pull (POST /v1/pull, and `segment` with a DICOMweb input); an unknown AE refused at association time; an MR study
skipped with its reason; a series with a missing slice skipped with the engine's one-line reason; two studies
interleaved from two AEs, then `kill -9` of the node right after the last C-STORE success; `kill -9` during
segmentation; after each restart every study ends done with no duplicate instance in Orthanc."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicom_factory import Volume, axial_planes, new_ids, write_series
from orthanc_support import Orthanc, free_port, start_orthanc
from server_support import Server, make_token, start_server, wait_for

pytestmark = [pytest.mark.server, pytest.mark.slow]
NODE_AE = "PANCREAS_DINTS"
SLICES = 16


def phantom(shape: tuple[int, int, int]) -> Volume:
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    hu, _, affine = make_phantom(3, shape=shape, spacing=(1.6, 1.6, 3.0), orientation="RAS")
    return Volume(np.asarray(hu, dtype=np.float32), np.asarray(affine, dtype=float))


@pytest.fixture(scope="module")
def vol() -> Volume:
    """A synthetic abdomen with a pancreas and a lesion the demo model finds (48 x 48 x 16 voxels)."""
    return phantom((48, 48, SLICES))


@pytest.fixture(scope="module")
def big_vol() -> Volume:
    """A larger one, whose segmentation lasts long enough to be interrupted."""
    return phantom((96, 96, SLICES))


def ct_study(folder: Path, vol: Volume, extras: bool = False, drop: int | None = None,
             modality: str = "CT") -> tuple[str, str, list[Path]]:
    """A study: the CT series (study uid, series uid, files); with ``extras`` also a localizer and a 9 mm series."""
    ids = new_ids(3, "CT ABDOMEN PORTAL VENOUS")
    positions = [p for k, p in enumerate(np.arange(SLICES) * 3.0) if k != drop]

    def edit(ds, k):
        if modality == "MR":
            ds.Modality, ds.SOPClassUID = "MR", pydicom.uid.MRImageStorage
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID

    files = write_series(folder / "ct", vol, axial_planes(vol, positions), ids, edit=edit)
    if extras:
        def localizer(ds, k):
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

        def thick(ds, k):
            ds.SliceThickness = 9.0

        for sub, number, desc, pos, fix in (("loc", 1, "TOPOGRAM", [0.0, 3.0], localizer),
                                            ("thick", 2, "CT 9MM", np.arange(0, SLICES * 3.0, 9.0), thick)):
            other = new_ids(number, desc)
            other.study, other.frame = ids.study, ids.frame
            files += write_series(folder / sub, vol, axial_planes(vol, pos), other, edit=fix)
    return ids.study, ids.series, files


def scu_send(port: int, calling: str, files: list[Path], pause: threading.Event | None = None) -> list[int]:
    """C-STORE the files as ``calling`` (pynetdicom SCU); the statuses (empty when the association was refused)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for sop_class in sorted({str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPClassUID) for f in files}):
        ae.add_requested_context(sop_class, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        return []
    statuses = []
    for f in files:
        statuses.append(int(assoc.send_c_store(pydicom.dcmread(str(f))).Status))
        if pause is not None:
            pause.wait(0.05)
    assoc.release()
    return statuses


class Site:
    def __init__(self, base: Path, vol: Volume) -> None:
        self.base, self.vol = base, vol
        self.pacs = start_orthanc(base / "pacs")
        self.archive_port = free_port()
        self.archive: Orthanc | None = None
        self.token_file = make_token(base / "client")
        self.dicom_port = free_port()
        cfg = {"ae_title": NODE_AE, "port": self.dicom_port, "allowed_aes": ["ORTHANC", "CT_SCANNER"], "quiet_s": 2,
               "outputs": ["dicom-seg", "dicom-sr", "rtstruct"], "retry_first_s": 0.5, "retry_max_s": 2,
               "rules": {"min_slices": 5},
               "sources": [{"name": "pacs", "url": self.pacs.dicomweb}],
               "destinations": [{"name": "pacs", "kind": "dimse", "port": self.pacs.dicom_port, "ae_title": "ORTHANC"},
                                {"name": "pacs-web", "kind": "stow", "url": self.pacs.dicomweb},
                                {"name": "archive", "kind": "dimse", "port": self.archive_port, "ae_title": "ARCHIVE"}]}
        self.node_file = base / "node.json"
        self.node_file.write_text(json.dumps(cfg))
        try:
            self.server = self.start()
        except BaseException:
            self.pacs.stop()  # a server that cannot start must not leave the PACS running
            raise
        self.pacs.add_modality("node", NODE_AE, self.dicom_port)

    def start(self) -> Server:
        self.server = start_server(self.base / "data", self.token_file, "--node-config", str(self.node_file))
        info = json.loads((self.base / "data" / "server.json").read_text())
        assert info["dicom"] == {"ae_title": NODE_AE, "host": "127.0.0.1", "port": self.dicom_port}
        self.pacs.add_dicomweb_server("node", self.server.url + "/v1/dicomweb", self.server.token)
        return self.server

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, self.server.url + path, headers={"Authorization": f"Bearer "
                                f"{self.server.token}"}, timeout=60, **kw)

    def studies(self) -> list[dict]:
        return self.api("GET", "/v1/node/studies").json()["studies"]

    def study(self, study_uid: str, states: tuple[str, ...] = ("done", "skipped", "failed"), timeout: float = 240):
        def ended():
            found = [s for s in self.studies() if s["study_uid"] == study_uid]
            return found[0] if found and found[0]["state"] in states else None

        return wait_for(ended, timeout=timeout, every=0.25)

    def ensure_archive(self) -> None:
        if self.archive is None:
            self.archive = start_orthanc(self.base / "archive", aet="ARCHIVE", dicom_port=self.archive_port)

    def counts(self, orthanc: Orthanc, study_uid: str) -> dict[str, int]:
        return {k: len(v) for k, v in self.results(orthanc, study_uid).items()}

    def kill9(self) -> None:
        os.kill(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait(timeout=30)

    def log(self) -> str:
        return (self.base / "data-serve.log").read_text()

    def results(self, orthanc: Orthanc, study_uid: str) -> dict[str, list[str]]:
        """Modality -> SOP instance UIDs in that PACS for the study (QIDO-RS)."""
        out: dict[str, list[str]] = {}
        for series in orthanc.series_of(study_uid):
            modality = series["00080060"]["Value"][0]
            uid = series["0020000E"]["Value"][0]
            out.setdefault(modality, []).extend(i["00080018"]["Value"][0] for i in orthanc.instances_of(study_uid, uid))
        return out


@pytest.fixture(scope="module")
def site(tmp_path_factory, vol):
    s = Site(tmp_path_factory.mktemp("pacs_node"), vol)
    yield s
    try:
        s.server.stop()
    finally:
        s.pacs.stop()
        if s.archive is not None:
            s.archive.stop()


def _frames(ds) -> dict[tuple[str, int], bytes]:
    """(source CT SOP instance, segment number) -> the frame's bits, for comparing two SEGs."""
    pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    out = {}
    for k, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[(str(source), int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber))] = pixels[k].tobytes()
    return out


def _retrieve(orthanc: Orthanc, study_uid: str, modality: str):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(orthanc.dicomweb)
    series = [s["0020000E"]["Value"][0] for s in orthanc.series_of(study_uid) if s["00080060"]["Value"][0] == modality]
    assert len(series) == 1, (modality, series)
    return client.retrieve_series(study_uid, series[0])[0]


def test_c_store_round_trip_seg_sr_rtstruct_and_the_archive_down_then_up(site, vol, tmp_path):
    import highdicom as hd
    import nibabel as nib
    from highdicom.sr import CodedConcept
    from PancreasDiNTSLib.cli import main as cli_main
    from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

    study_uid, ct_series, files = ct_study(tmp_path / "s1", vol, extras=True)
    pacs = site.pacs
    assert pacs.rest("POST", "/modalities/node/echo", {}) == {}  # C-ECHO
    answer = pacs.rest("POST", "/modalities/node/store", {"Resources": list(pacs.upload(files)), "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == len(files)
    study = site.study(study_uid, states=("sending", "done", "failed"))
    assert study["state"] == "sending"  # the archive is down: the study waits for it
    assert study["calling_ae"] == "ORTHANC" and study["instances"] == len(files) and study["series_uid"] == ct_series
    decisions = {d["series_number"]: d for d in study["decisions"]}
    assert decisions[3]["decision"] == "chosen"
    assert decisions[1]["decision"] == "skipped" and "localizer" in decisions[1]["reason"]
    assert decisions[2]["decision"] == "skipped" and "thickness 9 mm" in decisions[2]["reason"]
    assert study["selected"] >= study["last_instance"] + 1.0 and study["segmenting"] and study["sending"]
    got = wait_for(lambda: (r := site.results(pacs, study_uid)) and {"SEG", "SR", "RTSTRUCT"} <= set(r) and r)
    assert {k: len(v) for k, v in got.items()} == {"CT": len(files), "SEG": 1, "SR": 1, "RTSTRUCT": 1}

    # the results belong to the CT series and equal a local `segment` run
    out = tmp_path / "local"
    assert cli_main(["segment", str(tmp_path / "s1" / "ct"), "-o", str(out), "--model", str(PACKAGED_DEMO_MODEL),
                     "--device", "cpu", "--progress", "none", "--format", "nifti,dicom-seg,dicom-sr"]) == 0
    local_seg = pydicom.dcmread(str(out / "ct" / "segmentation.dcm"))
    seg = _retrieve(pacs, study_uid, "SEG")
    assert seg.StudyInstanceUID == study_uid and seg.PatientID == "P001" and seg.PatientName == "Phantom^Test"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_series
    assert _frames(seg) == _frames(local_seg)
    assert np.asarray(nib.load(str(out / "ct" / "labels.nii.gz")).dataobj).max() == 2  # pancreas and lesion found
    assert _frames(seg) and {s for s, _ in _frames(seg)} <= {str(pydicom.dcmread(str(f)).SOPInstanceUID) for f in files}
    report = json.loads((out / "ct" / "report.json").read_text())["readout"]["segments"]
    sr_ds = _retrieve(pacs, study_uid, "SR")
    assert (sr_ds.StudyInstanceUID, sr_ds.PatientID, sr_ds.PatientName) == (study_uid, "P001", "Phantom^Test")
    assert len({seg.SeriesInstanceUID, sr_ds.SeriesInstanceUID, ct_series}) == 3  # new series in the same study
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    volume = CodedConcept("118565006", "SCT", "Volume")
    for group in sr.content.get_volumetric_roi_measurement_groups():
        key = {"Pancreas": "pancreas", "Pancreatic tumor": "pancreatic_tumor"}[group.tracking_identifier]
        assert float(group.get_measurements(name=volume)[0].value) == report[key]["volume_ml"]
    rt = _retrieve(pacs, study_uid, "RTSTRUCT")
    assert rt.StudyInstanceUID == study_uid
    assert rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0] \
        .SeriesInstanceUID == ct_series

    # the archive comes up: the pending sends go there, once, and the study ends
    site.ensure_archive()
    done = site.study(study_uid)
    assert done["state"] == "done" and done["finished"] >= done["sending"]
    assert {k: len(v) for k, v in site.results(site.archive, study_uid).items()} == {"SEG": 1, "SR": 1, "RTSTRUCT": 1}
    assert {k: len(v) for k, v in site.results(pacs, study_uid).items()} == {"CT": len(files), "SEG": 1, "SR": 1,
                                                                              "RTSTRUCT": 1}
    sends = site.api("GET", f"/v1/node/studies/{done['id']}").json()["sends"]
    assert len(sends) == 9 and all(s["state"] == "sent" for s in sends)
    assert max(s["attempts"] for s in sends if s["destination"] == "archive") >= 2  # retried while it was down
    assert not (site.base / "data" / "node" / "spool" / done["id"]).exists()  # spool emptied only at the end


def test_stow_in_pull_unknown_ae_mr_and_missing_slice(site, vol, tmp_path, monkeypatch, capsys):
    site.ensure_archive()
    pacs = site.pacs
    stow_uid, stow_series, stow_files = ct_study(tmp_path / "stow", vol)
    pull_uid, pull_series, pull_files = ct_study(tmp_path / "pull", vol)
    mr_uid, _, mr_files = ct_study(tmp_path / "mr", vol, modality="MR")
    gap_uid, _, gap_files = ct_study(tmp_path / "gap", vol, drop=7)

    assert scu_send(site.dicom_port, "INTRUDER", mr_files) == []  # refused at association time, and logged
    assert "association from 'INTRUDER' at 127.0.0.1" in site.log() and "not in the allowed list" in site.log()
    # STOW-RS in: Orthanc's DICOMweb client pushes the study to the node (token in its HttpHeaders)
    answer = pacs.rest("POST", "/dicom-web/servers/node/stow", {"Resources": list(pacs.upload(stow_files)),
                                                                "Synchronous": True})
    assert answer is None or "FailedInstancesCount" not in answer or answer["FailedInstancesCount"] == 0
    # pull: the study is only in Orthanc; the node fetches it by QIDO-RS/WADO-RS
    pacs.upload(pull_files)
    assert site.api("POST", "/v1/pull", json={"source": "elsewhere", "study": pull_uid}).status_code == 400
    assert site.api("POST", "/v1/pull", json={"source": "pacs", "study": "../etc"}).status_code == 400
    pulled = site.api("POST", "/v1/pull", json={"source": "pacs", "study": pull_uid})
    assert pulled.status_code == 202 and pulled.json()["source"] == "pull:pacs"
    assert set(scu_send(site.dicom_port, "CT_SCANNER", mr_files + gap_files)) == {0}

    mr = site.study(mr_uid)
    assert mr["state"] == "skipped" and mr["calling_ae"] == "CT_SCANNER" and not mr["job_id"]
    assert mr["reason"] == "no usable series (series 3: modality MR, not CT)"
    gap = site.study(gap_uid)
    assert gap["state"] == "skipped" and "slices missing: a gap of 6.00 mm between slices 7 and 8" in gap["reason"]
    assert gap["decisions"][0]["reason"].startswith("series 3 (CT ABDOMEN PORTAL VENOUS): slices missing")
    for uid, series, source in ((stow_uid, stow_series, "stow"), (pull_uid, pull_series, "pull:pacs")):
        study = site.study(uid)
        assert study["state"] == "done" and study["source"] == source and study["series_uid"] == series
        assert site.counts(pacs, uid) == {"CT": SLICES, "SEG": 1, "SR": 1, "RTSTRUCT": 1}
        assert site.counts(site.archive, uid) == {"SEG": 1, "SR": 1, "RTSTRUCT": 1}
    assert site.counts(pacs, mr_uid) == {} == site.counts(pacs, gap_uid)  # nothing was sent back

    # `segment` reads the same study from Orthanc by DICOMweb (its SEG, SR and RTSTRUCT there are left out):
    # the SEG equals the one the node sent back
    from PancreasDiNTSLib.cli import main as cli_main
    from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

    monkeypatch.setenv("PANCREAS_DINTS_HOME", str(tmp_path / "home"))
    auth = tmp_path / "auth"
    auth.write_text("bearer not-needed-by-this-orthanc\n")
    out, url = tmp_path / "local", f"{pacs.dicomweb}/studies/{pull_uid}"
    argv = ["-o", str(out), "--model", str(PACKAGED_DEMO_MODEL), "--device", "cpu", "--progress", "none",
            "--format", "dicom-seg", "--dicomweb-auth", str(auth)]
    assert cli_main(["segment", url, *argv]) == 0
    [case] = [p for p in out.iterdir() if p.is_dir()]
    assert _frames(pydicom.dcmread(str(case / "segmentation.dcm"))) == _frames(_retrieve(pacs, pull_uid, "SEG"))
    assert not any((tmp_path / "home" / "dicomweb").rglob("*.dcm"))  # the fetched images are gone
    capsys.readouterr()
    assert cli_main(["segment", f"{pacs.dicomweb}/studies/1.2.3.4", *argv]) == 1
    assert "no study 1.2.3.4 there" in capsys.readouterr().err
    assert cli_main(["segment", f"http://127.0.0.1:{free_port()}/dicom-web/studies/1.2.3", *argv]) == 1
    assert "DICOMweb server cannot be reached" in capsys.readouterr().err
    listed = site.api("GET", "/v1/node/studies?state=skipped").json()
    assert {s["study_uid"] for s in listed["studies"]} >= {mr_uid, gap_uid} and listed["counts"]["skipped"] >= 2
    health = site.api("GET", "/v1/node/health").json()
    assert health["free_space_ok"] and health["port"] == site.dicom_port and health["pending_sends"] == 0
    assert requests.get(site.server.url + "/v1/node/studies", timeout=10).status_code == 401  # token needed


def test_interleaved_aes_and_kill_9_after_c_store_success_during_segmentation(site, vol, big_vol, tmp_path):
    """C (a larger CT) is being segmented when A (from Orthanc) and B (from a scanner) arrive interleaved; the
    node is killed right after the last C-STORE success: one restart covers both faults."""
    site.ensure_archive()
    pacs = site.pacs
    a_uid, _, a_files = ct_study(tmp_path / "a", vol)
    b_uid, _, b_files = ct_study(tmp_path / "b", vol)
    c_uid, _, c_files = ct_study(tmp_path / "c", big_vol)
    assert set(scu_send(site.dicom_port, "CT_SCANNER", c_files)) == {0}
    site.study(c_uid, states=("segmenting",), timeout=120)
    ids, box = pacs.upload(a_files), []
    sender = threading.Thread(target=lambda: box.append(pacs.rest("POST", "/modalities/node/store", {
        "Resources": list(ids), "Synchronous": True})))
    sender.start()
    statuses = scu_send(site.dicom_port, "CT_SCANNER", b_files, pause=threading.Event())
    sender.join()
    assert statuses == [0] * SLICES and box[0]["FailedInstancesCount"] == 0
    states = {s["study_uid"]: s["state"] for s in site.studies()}
    site.kill9()  # right after the last success (inside the quiet period) and while C is segmented
    # B's last instance was just acknowledged (inside its quiet period); A, done sending a little earlier, may be
    # decided already, its job waiting behind C's
    assert states[b_uid] == "receiving" and states[a_uid] in ("receiving", "selected"), states
    assert states[c_uid] == "segmenting", states
    site.start()
    a, b, c = site.study(a_uid), site.study(b_uid), site.study(c_uid)
    assert (a["state"], a["calling_ae"], a["instances"]) == ("done", "ORTHANC", SLICES)
    assert (b["state"], b["calling_ae"], b["instances"]) == ("done", "CT_SCANNER", SLICES)
    assert c["state"] == "done" and c["instances"] == len(c_files)
    assert a["created"] < b["last_instance"] and b["created"] < a["last_instance"]  # they arrived interleaved
    for uid in (a_uid, b_uid, c_uid):  # every result once, in both destinations
        assert site.counts(pacs, uid) == {"SEG": 1, "SR": 1, "RTSTRUCT": 1} | ({"CT": SLICES} if uid == a_uid else {})
        assert site.counts(site.archive, uid) == {"SEG": 1, "SR": 1, "RTSTRUCT": 1}
    assert "1 job(s) queued again" in site.log()


def test_sends_survive_a_restart_and_a_refusal_is_recorded_with_its_status(site, vol, tmp_path):
    """The node's send loop on its own (no server): a destination that is down keeps the study 'sending' across a
    new Node on the same data folder until Orthanc confirms; a STOW-RS refusal (HTTP 404) ends the study failed
    with that status, and only then is its spool removed."""
    from PancreasDiNTSLib.server.dicom_node.config import node_config
    from PancreasDiNTSLib.server.dicom_node.node import Node
    from PancreasDiNTSLib.server.store import JobStore

    down = free_port()
    cfg = node_config({"retry_first_s": 0.0, "destinations": [
        {"name": "pacs", "kind": "dimse", "port": down, "ae_title": "ORTHANC"},
        {"name": "wrong-root", "kind": "stow", "url": site.pacs.url + "/no-such-dicomweb-root"}]})
    data = tmp_path / "data"
    data.mkdir()
    study_uid, _, files = ct_study(tmp_path / "s", vol)
    results = []
    for k, path in enumerate(files[:2]):  # two CT images stand in for results: real instances of this study
        results.append(("pacs", str(pydicom.dcmread(str(path)).SOPInstanceUID), f"results/{k}.dcm"))
    node = Node(cfg, JobStore(data), 0, print)
    study = node.store.add_instance(study_uid, "dimse", "ORTHANC", "1.2.3", "1.2.4", files[0].read_bytes())
    (node.store.folder(study) / "results").mkdir()
    for k, path in enumerate(files[:2]):
        (node.store.folder(study) / "results" / f"{k}.dcm").write_bytes(path.read_bytes())
    node.store.add_sends(study, results)
    node.store.update(study, state="sending", sending=1.0)
    node.send_due()
    assert {s["state"] for s in node.store.sends()} == {"pending"} and node.store.study(study)["state"] == "sending"
    node.store.close()

    cfg = node_config({"retry_first_s": 0.0, "destinations": [
        {"name": "pacs", "kind": "dimse", "port": site.pacs.dicom_port, "ae_title": "ORTHANC"},
        {"name": "wrong-root", "kind": "stow", "url": site.pacs.url + "/no-such-dicomweb-root"}]})
    node = Node(cfg, JobStore(data), 0, print)  # a restart: the pending sends are still there, and go out
    node.send_due()
    sends = node.store.sends()
    assert [(s["state"], s["attempts"], s["status"]) for s in sends] == [("sent", 2, "0x0000")] * 2
    assert node.store.study(study)["state"] == "done" and not node.store.folder(study).exists()
    assert site.counts(site.pacs, study_uid) == {"CT": 2}

    other = node.store.add_instance("1.2.99", "dimse", "ORTHANC", "1.2.99.1", "1.2.99.2", files[2].read_bytes())
    (node.store.folder(other) / "results").mkdir()
    (node.store.folder(other) / "results" / "0.dcm").write_bytes(files[2].read_bytes())
    node.store.add_sends(other, [("wrong-root", str(pydicom.dcmread(str(files[2])).SOPInstanceUID), "results/0.dcm")])
    node.store.update(other, state="sending", sending=1.0)
    node.send_due()
    ended = node.store.study(other)
    assert ended["state"] == "failed" and ended["reason"] == "1 result instance(s) refused: wrong-root answered HTTP 404"
    assert not node.store.folder(other).exists()
    node.store.close()
