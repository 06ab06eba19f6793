"""Tracking identifiers of a case's findings: one Tracking UID per lesion and per segment, stable across reruns.

A finding's Tracking UID (DICOM TID 1500 "Tracking Unique Identifier", IHE AIR) is derived, never random:

    uid = "2.25." + int(UUID(bytes=sha256("pancreas-dints tracking|<case key>|<finding>")[:16], version=5))

- the **case key** names the input, not the run: ``dicom-series:<SeriesInstanceUID>`` for a DICOM series (the
  UID the DICOM outputs reference), else ``sha256:<hex digest of the input's bytes>`` (a NIfTI/NRRD/MetaImage
  file; for a DICOM series without a Series Instance UID, of its files' bytes in file-name order);
- the **finding** is ``lesion-<rank>`` for the rank-th largest lesion component (1 = largest, the read-out's
  order) or ``segment-<id>`` for a whole segment (``segment-pancreas``, ``segment-pancreatic_tumor``).

So a rerun of the same case gives the same UIDs, two cases never share one, and a follow-up that matches a lesion
to a baseline lesion can carry the baseline's UID over. report.json's read-out records them under ``tracking``
(:func:`case_tracking`); the DICOM SR, the FHIR Bundle and the key images use those values.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .terminology import SEGMENTS

SCHEMA = "pancreas-dints.tracking/1"
METHOD = ("Tracking UID = 2.25 form of the UUID made of the first 16 bytes of sha256('pancreas-dints tracking|"
          "<case_key>|<finding>'); case_key: dicom-series:<SeriesInstanceUID> or sha256:<input bytes>; finding: "
          "lesion-<rank> (1 = largest component) or segment-<id>")
_CHUNK = 1 << 20


def tracking_uid(case_key: str, finding: str) -> str:
    """The Tracking UID of ``finding`` in the case ``case_key`` (a 2.25 UID, at most 64 characters)."""
    digest = hashlib.sha256(f"pancreas-dints tracking|{case_key}|{finding}".encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest, version=5).int}"


def lesion_identifier(rank: int) -> str:
    """The human-readable Tracking Identifier of the rank-th largest lesion component."""
    return f"Pancreatic lesion component {rank}" + (" (largest)" if rank == 1 else "")


def lesion_tracking(case_key: str, rank: int) -> dict[str, Any]:
    """``{"rank", "identifier", "uid"}`` of one lesion component."""
    return {"rank": int(rank), "identifier": lesion_identifier(int(rank)),
            "uid": tracking_uid(case_key, f"lesion-{int(rank)}")}


def segment_tracking(case_key: str, segment_id: str, name: str) -> dict[str, Any]:
    """``{"identifier", "uid"}`` of a whole segment (its name is the identifier)."""
    return {"identifier": name, "uid": tracking_uid(case_key, f"segment-{segment_id}")}


def _file_digest(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def case_key(series_uid: str | None = None, files: Sequence[Path] = ()) -> str:
    """The case key: the DICOM Series Instance UID when there is one, else a sha256 of ``files``' bytes."""
    if series_uid:
        return f"dicom-series:{series_uid}"
    if not files:
        raise ValueError("a case key needs a series UID or the input's files")
    return f"sha256:{_file_digest(sorted(Path(f) for f in files))}"


def case_tracking(key: str, readout: dict[str, Any]) -> dict[str, Any]:
    """report.json's ``readout.tracking``: the case key, how UIDs are made, one entry per listed lesion component
    (in the read-out's order) and per segment."""
    comps = (readout.get("lesion") or {}).get("components") or []
    return {"schema": SCHEMA, "case_key": key, "method": METHOD,
            "lesions": [lesion_tracking(key, int(c["rank"])) for c in comps],
            "segments": {s.slicer_id: segment_tracking(key, s.slicer_id, s.name) for s in SEGMENTS}}


def lesion_uid_of(readout: dict[str, Any], rank: int) -> dict[str, Any] | None:
    """The recorded tracking entry of lesion ``rank`` in a read-out (report.json), or None."""
    for item in (readout.get("tracking") or {}).get("lesions") or []:
        if int(item.get("rank", -1)) == int(rank):
            return dict(item)
    return None
