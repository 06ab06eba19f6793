"""Issue 34: per-finding Tracking UIDs (core.tracking), derived from the case and the finding: the same on every
rerun, different across cases and findings, valid DICOM UIDs, recorded in report.json's read-out."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PancreasDiNTSLib.core.tracking import (
    case_key,
    case_tracking,
    lesion_tracking,
    lesion_uid_of,
    tracking_uid,
)
from PancreasDiNTSLib.readout.combined import case_readout

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def two_lesions() -> np.ndarray:
    lab = np.zeros((20, 20, 8), np.uint8)
    lab[2:18, 2:18, 1:7] = 1
    lab[3:8, 3:8, 2:5] = 2
    lab[12:14, 12:14, 3:4] = 2
    return lab


def test_uids_are_derived_valid_and_distinct():
    key = case_key("1.2.840.113619.2.55.3.1")
    assert key == "dicom-series:1.2.840.113619.2.55.3.1"
    uids = {tracking_uid(key, f"lesion-{r}") for r in range(1, 30)} | {tracking_uid("dicom-series:1.2.3", "lesion-1")}
    assert len(uids) == 30
    for uid in uids:
        assert uid.startswith("2.25.") and len(uid) <= 64 and UID.match(uid)
    # the documented formula, recomputed independently of the module
    import hashlib
    import uuid
    digest = hashlib.sha256(f"pancreas-dints tracking|{key}|lesion-1".encode()).digest()[:16]
    assert lesion_tracking(key, 1) == {"rank": 1, "identifier": "Pancreatic lesion component 1 (largest)",
                                       "uid": f"2.25.{uuid.UUID(bytes=digest, version=5).int}"}


def test_file_case_key_is_a_content_digest(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert case_key(None, [a]) == case_key(None, [b])  # the name and place do not matter
    b.write_bytes(b"other bytes")
    assert case_key(None, [a]) != case_key(None, [b])
    with pytest.raises(ValueError):
        case_key(None, [])


def test_case_tracking_lists_every_lesion_and_segment_stably():
    lab = two_lesions()
    readout = case_readout(lab, np.diag([0.8, 0.8, 2.5, 1.0]))
    first = case_tracking("sha256:ab", readout)
    assert case_tracking("sha256:ab", case_readout(lab, np.diag([0.8, 0.8, 2.5, 1.0]))) == first
    assert [e["rank"] for e in first["lesions"]] == [c["rank"] for c in readout["lesion"]["components"]] == [1, 2]
    assert set(first["segments"]) == set(readout["segments"])
    readout["tracking"] = first
    assert lesion_uid_of(readout, 2) == first["lesions"][1]
    assert lesion_uid_of(readout, 3) is None
    assert case_tracking("sha256:cd", readout)["lesions"][0]["uid"] != first["lesions"][0]["uid"]
