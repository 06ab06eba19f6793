"""Issue 33, the DICOM node's parts without a network: the node file (one-line refusals), the series rules and
their recorded reasons (on real pydicom headers; the engine's own gap message), the spool (durable names, a
repeated instance stored once, files indexed again after a stop between file and record), the STOW-RS body split,
and the credentials file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PancreasDiNTSLib.core.errors import UsageError
from PancreasDiNTSLib.io.dicomweb import auth_headers, fetch_folder, parse_input, valid_uid
from PancreasDiNTSLib.server.dicom_node.config import Rules, load_node_config, node_config
from PancreasDiNTSLib.server.dicom_node.selection import choose_series, series_facts, skip_reason
from PancreasDiNTSLib.server.dicom_node.spool import NodeStore
from PancreasDiNTSLib.server.dicom_node.stow import split_parts


def header(series: str, number: int, z: float, desc: str = "CT", modality: str = "CT", thickness: float = 3.0,
           image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"), iop=(1, 0, 0, 0, 1, 0)):
    ds = pydicom.Dataset()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription, ds.Modality = series, number, desc, modality
    ds.ImageType, ds.SliceThickness = list(image_type), thickness
    ds.ImageOrientationPatient, ds.PixelSpacing = list(iop), [0.8, 0.8]
    normal = np.cross(iop[:3], iop[3:])
    ds.ImagePositionPatient = [float(v) for v in normal * z]
    ds.Rows = ds.Columns = 16
    return ds


def series(uid: str, number: int, n: int, step: float = 3.0, drop: int | None = None, **kw):
    zs = [k * step for k in range(n) if k != drop]
    return [header(uid, number, z, **kw) for z in zs]


TEN = Rules(min_slices=10)


def decide(*groups, rules: Rules = TEN):
    headers = [h for g in groups for h in g]
    files = [Path(f"{k:04d}.dcm") for k in range(len(headers))]
    return choose_series(series_facts(files, headers), rules)


def test_portal_venous_first_then_thinnest_and_every_decision_with_its_reason():
    chosen, decisions = decide(series("1.1", 1, 2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
                               series("1.2", 2, 30, step=1.0, thickness=1.0, desc="ARTERIAL"),
                               series("1.3", 3, 20, desc="PORTAL VENOUS 3mm"),
                               series("1.4", 4, 12, step=9.0, thickness=9.0, desc="venous thick"),
                               series("1.5", 5, 20, modality="MR"),
                               series("1.6", 6, 20, iop=(0, 1, 0, 0, 0, -1)))
    assert chosen is not None and chosen.uid == "1.3"
    why = {d["series_number"]: (d["decision"], d["reason"]) for d in decisions}
    assert why[3][0] == "chosen"
    assert why[1] == ("skipped", "image type ORIGINAL/PRIMARY/LOCALIZER: localizer image")
    assert why[2][0] == "skipped" and why[2][1].startswith("usable, but series 3 (PORTAL VENOUS 3mm) is preferred")
    assert why[4] == ("skipped", "slice thickness 9 mm outside 0 to 5 mm")
    assert why[5] == ("skipped", "modality MR, not CT")
    assert why[6] == ("skipped", "not axial (slices 90 degrees from axial; at most 20 degrees)")
    chosen, _ = decide(series("1.2", 2, 30, step=1.0, thickness=1.0), series("1.3", 3, 20),
                       rules=Rules(min_slices=10, prefer_keywords=()))
    assert chosen is not None and chosen.uid == "1.2"  # no keyword: the thinnest
    chosen, _ = decide(series("1.2", 2, 30, step=1.0, thickness=1.0), series("1.3", 3, 40),
                       rules=Rules(min_slices=10, order=("most_slices",)))
    assert chosen is not None and chosen.uid == "1.3"


def test_a_missing_slice_is_the_engines_one_line_and_nothing_usable_is_one_skip_line():
    chosen, decisions = decide(series("1.3", 3, 20, drop=8, desc="CT PV"), series("1.5", 5, 3))
    assert chosen is None
    assert decisions[0]["reason"].startswith("series 3 (CT PV): slices missing: a gap of 6.00 mm between slices 8 "
                                             "and 9")
    assert decisions[1]["reason"] == "3 slices, fewer than 10 (rules.min_slices)"
    line = skip_reason(decisions)
    assert line.startswith("no usable series (series 3: series 3 (CT PV): slices missing") and "\n" not in line


def test_node_file_checked_with_one_line_reasons(tmp_path):
    cfg = node_config({"allowed_aes": ["ORTHANC"], "rules": {"min_slices": 60, "prefer_keywords": ["pv"],
                                                             "modalities": ["ct"]},
                       "destinations": [{"name": "pacs", "kind": "stow", "url": "https://pacs/dicom-web",
                                         "auth_file": str(tmp_path / "auth")}]})
    assert cfg.allowed_aes == ("ORTHANC",) and cfg.rules.min_slices == 60 and cfg.rules.prefer_keywords == ("pv",)
    assert cfg.rules.modalities == ("CT",)
    assert cfg.destinations[0].auth_file == tmp_path / "auth" and cfg.outputs == ("dicom-seg", "dicom-sr")
    assert cfg.job_options() == {"formats": "dicom-seg,dicom-sr", "mode": "fast", "allow_non_ct": "false"}
    bad = [({"ae_titel": "X"}, "unknown key 'ae_titel'"), ({"ae_title": "A\\B"}, "an AE title is 1 to 16"),
           ({"ae_title": "X" * 17}, "an AE title is 1 to 16"), ({"quiet_s": "soon"}, "quiet_s must be a number"),
           ({"allowed_aes": "ORTHANC"}, "allowed_aes must be a list"),
           ({"destinations": [{"name": "x", "kind": "ftp"}]}, "kind must be dimse (C-STORE) or stow"),
           ({"destinations": [{"name": "x", "kind": "dimse", "ae_title": "P", "port": 0}]}, "port must be 1 to 65535"),
           ({"destinations": [{"name": "../x", "kind": "stow", "url": "http://a"}]}, "name: letters"),
           ({"rules": {"min_slice": 3}}, "rules: unknown key 'min_slice'"),
           ({"outputs": ["dicom-seg", "jpeg"]}, "outputs/mode: --format jpeg: unknown output format"),
           ({"rules": {"order": ["newest"]}}, "rules: order 'newest': choose from keywords, thinnest, most_slices"),
           ({"mode": "slow"}, "outputs/mode: --mode slow: choose one of fast, exact, fastmm")]
    for data, message in bad:
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            node_config(data)
    path = tmp_path / "node.yaml"
    path.write_text("ae_title: NODE\nport: 104\nallowed_aes: [A]\nquiet_s: 5\n")
    cfg = load_node_config(path, {"port": 11113, "allowed_aes": ["B", "C"], "quiet_s": None})
    assert (cfg.ae_title, cfg.port, cfg.allowed_aes, cfg.quiet_s) == ("NODE", 11113, ("B", "C"), 5)
    path.write_text("- a list\n")
    with pytest.raises(UsageError, match="must be a mapping"):
        load_node_config(path, {})


def test_spool_durable_once_and_reindexed_after_a_stop(tmp_path):
    store = NodeStore(tmp_path)
    first = store.add_instance("1.2.3", "dimse", "ORTHANC", "1.2.3.4", "1.2.3.5", b"DICM-bytes")
    assert first is not None and store.add_instance("1.2.3", "dimse", "ORTHANC", "1.2.3.4", "1.2.3.5", b"x") is None
    files = sorted(p.name for p in store.folder(first).iterdir())
    assert len(files) == 1 and files[0].endswith(".dcm") and len(files[0]) == 36  # a server-made name
    assert (store.folder(first) / files[0]).read_bytes() == b"DICM-bytes"
    assert store.close_receiving(first, cutoff=0.0) is False  # not quiet yet
    # a stop between file and record: the file is indexed again from its header; a half-written one removed
    (store.folder(first) / "0123456789abcdef0123456789abcdef.dcm").write_bytes(b"x")
    (store.folder(first) / ".abc.part").write_bytes(b"half")
    assert store.reindex(lambda p: ("1.2.3.9", "1.2.3.5")) == 1
    assert {i["sop_uid"] for i in store.instances(first)} == {"1.2.3.4", "1.2.3.9"}
    assert not (store.folder(first) / ".abc.part").exists()
    store.close()
    again = NodeStore(tmp_path)  # reopened: everything recorded is there
    assert again.study(first)["state"] == "receiving" and len(again.instances(first)) == 2
    assert again.close_receiving(first, cutoff=9e9) and again.study(first)["state"] == "selected"
    later = again.add_instance("1.2.3", "dimse", "ORTHANC", "1.2.3.10", "1.2.3.5", b"y")
    assert later not in (None, first)  # an instance after the decision starts a new arrival
    assert [valid_uid(u) for u in ("1.2.840.10008", "1..2", "../x", "1" * 65, "")] == [True, False, False, False, False]


def test_a_dicomweb_input_names_uids_never_a_folder(tmp_path, monkeypatch):
    """The study UID becomes a folder name under the fetch cache: "." and ".." (which [0-9.] alone allowed, and
    whose fetch folder the run empties first) and UIDs over 64 characters are not DICOMweb inputs."""
    assert parse_input("https://pacs/dicom-web/studies/1.2.3/series/4.5") == ("https://pacs/dicom-web", "1.2.3", "4.5")
    long_component = "2.25.176988564109002674575370570377849534389"  # a UUID-derived UID: one 39-digit component
    assert parse_input(f"http://127.0.0.1:8042/dicom-web/studies/{long_component}") is not None
    for uid in ("..", ".", "1..2", ".1", "1.", "1" * 65):
        assert parse_input(f"https://pacs/dicom-web/studies/{uid}") is None, uid
        assert parse_input(f"https://pacs/dicom-web/studies/1.2/series/{uid}") is None, uid
    monkeypatch.setenv("PANCREAS_DINTS_HOME", str(tmp_path))
    folder = fetch_folder("https://pacs/dicom-web/studies/1.2.3")
    assert folder.parent.parent == tmp_path / "dicomweb" and folder.name == "1.2.3"


def test_stow_body_split_and_credentials_file(tmp_path):
    body = tmp_path / "body"
    parts = [b"\x00\x01DICM\r\n--notyet", b"second"]
    body.write_bytes(b"preamble\r\n" + b"".join(b"--B0UND\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                                                  for p in parts) + b"--B0UND--\r\n")
    found = split_parts(body, b"B0UND")
    data = body.read_bytes()
    assert [data[s:e] for s, e, _ in found] == parts and all(b"application/dicom" in h for _, _, h in found)
    auth = tmp_path / "auth"
    auth.write_text("bearer abc.def\n")
    assert auth_headers(auth) == {"Authorization": "Bearer abc.def"}
    auth.write_text("basic user:pa:ss\n")
    assert auth_headers(auth) == {"Authorization": "Basic dXNlcjpwYTpzcw=="}
    auth.write_text("user:password\n")
    with pytest.raises(UsageError, match="write 'bearer TOKEN' or 'basic USER:PASSWORD'"):
        auth_headers(auth)
    assert auth_headers(None) == {}


def test_jobs_lists_the_studies_their_decisions_and_sends(tmp_path, capsys):
    from PancreasDiNTSLib.cli import main

    assert main(["jobs", "--data", str(tmp_path)]) == 2
    assert "no DICOM node records there" in capsys.readouterr().err
    store = NodeStore(tmp_path)
    study = store.add_instance("1.2.3", "dimse", "ORTHANC", "1.2.3.4", "1.2.3.5", b"x")
    _, decisions = decide(series("1.3", 3, 20, drop=8, desc="CT PV"))
    store.update(study, state="skipped", reason=skip_reason(decisions), decisions=decisions, finished=9e9)
    other = store.add_instance("1.2.7", "stow", "STOW 127.0.0.1", "1.2.7.4", "1.2.7.5", b"x")
    store.add_sends(other, [("pacs", "1.2.9", "results/segmentation.dcm")])
    store.mark_send(other, "pacs", "1.2.9", "refused", "0xA900")
    store.close()
    assert main(["jobs", "--data", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[1].startswith(other[:12]) and "receiving" in table[1]
    assert "skipped" in table[2] and "ORTHANC" in table[2] and "slices missing" in table[2]
    assert main(["jobs", "--data", str(tmp_path), "--state", "skipped", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in listed["studies"]] == [study] and listed["counts"] == {"receiving": 1, "skipped": 1}
    assert main(["jobs", "--data", str(tmp_path), "--study", other[:8]]) == 0
    detail = capsys.readouterr().out
    assert "send pacs 1.2.9: refused after 1 attempt(s), 0xA900" in detail and "source: stow" in detail
    assert main(["jobs", "--data", str(tmp_path), "--study", "%"]) == 2


def ct_instance(study: str = "1.2.3", sop: str = "1.2.3.4.5"):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds = header("1.2.3.7", 3, 0.0)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = CTImageStorage, sop, study
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = 1, "MONOCHROME2", 16, 16
    ds.HighBit, ds.PixelRepresentation, ds.Rows, ds.Columns = 15, 1, 4, 4
    ds.PixelData = np.arange(16, dtype=np.int16).tobytes()
    return ds


def test_scp_refuses_unknown_aes_and_a_full_disk_and_answers_after_the_spool_holds_it(tmp_path):
    """The real pynetdicom SCP (in this process) and SCU: association-time refusals, C-ECHO, C-STORE."""
    from PancreasDiNTSLib.server.dicom_node.scp import StorageSCP
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless
    from pynetdicom import AE

    store, logs, floor = NodeStore(tmp_path), [], {"why": None}
    cfg = node_config({"port": 0, "allowed_aes": ["MODALITY"], "max_instances": 2})
    scp = StorageSCP(cfg, store, lambda: floor["why"], logs.append)
    _, port = scp.start()
    try:
        def associate(calling: str):
            ae = AE(ae_title=calling)
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            ae.add_requested_context(CTImageStorage, RLELossless)
            ae.add_requested_context("1.2.840.10008.1.1")
            return ae.associate("127.0.0.1", port, ae_title="PANCREAS_DINTS")

        assert associate("INTRUDER").is_rejected
        assert "association from 'INTRUDER'" in logs[-1] and "not in the allowed list" in logs[-1]
        floor["why"] = "free disk space 10 MiB is below the floor of 1024 MiB (--min-free-mb)"
        assert associate("MODALITY").is_rejected and logs[-1].endswith(floor["why"])
        floor["why"] = None
        assoc = associate("MODALITY")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assert int(assoc.send_c_store(ct_instance()).Status) == 0
        assert int(assoc.send_c_store(ct_instance()).Status) == 0  # sent again: acknowledged, stored once
        compressed = ct_instance(sop="1.2.3.4.7")
        compressed.compress(RLELossless)
        assert int(assoc.send_c_store(compressed).Status) == 0  # a compressed syntax, stored as it came
        assert int(assoc.send_c_store(ct_instance(sop="1.2.3.4.8")).Status) == 0xA700  # max_instances reached
        assert "already holds 2 instances, the most this node takes" in logs[-1]
        with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom says it too, on both sides
            status = int(assoc.send_c_store(ct_instance(study="1.2.abc", sop="1.2.3.4.6")).Status)
        assert status == 0xC000  # a study UID that is not a UID: refused
        assoc.release()
    finally:
        scp.stop()
    study = store.studies()[0]
    assert (study["study_uid"], study["calling_ae"], study["source"]) == ("1.2.3", "MODALITY", "dimse")
    plain, rle = (pydicom.dcmread(str(store.folder(study["id"]) / i["file"])) for i in store.instances(study["id"]))
    assert plain.SOPInstanceUID == "1.2.3.4.5" and plain.pixel_array.ravel().tolist() == list(range(16))
    assert rle.file_meta.TransferSyntaxUID == RLELossless and rle.pixel_array.ravel().tolist() == list(range(16))
