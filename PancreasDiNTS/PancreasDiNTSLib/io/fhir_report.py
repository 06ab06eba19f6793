"""The read-out as a FHIR R4 Bundle (``--format fhir``, ``fhir-bundle.json``): one DiagnosticReport and its
Observations, for every input (DICOM, NIfTI, NRRD, MetaImage).

Choices follow HL7's "DICOM SR to FHIR Resource Mapping" guide where it has them: the report is a
DiagnosticReport coded as the SR's document title (DCM 126000 Imaging Measurement Report), status preliminary
(not verified), referencing the imaging study by its Study Instance UID (a logical reference, identifier system
``urn:dicom:uid``, value ``urn:oid:<UID>``; DICOM inputs only); each SR measurement group is an Observation
(DCM 125007 Measurement Group) whose ``hasMember`` are the measurement Observations, the group's Tracking
Identifier and Tracking UID (core.tracking) as identifiers of the group and of its members; every measurement
has the SR's concept code (SNOMED CT, DCM, IBSI, or the local scheme 99PDINTS for concepts without a standard
code), a UCUM quantity (mL, mm, 1), the finding site (SCT 15776009 Pancreas), the method where the SR has one
(RECIST 1.1, WHO) and the algorithm as a Device (name, versions, weights md5). Numbers are report.json's
read-out values, unchanged. Resource ids are derived from the case key, so a rerun writes the same ids.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import write_text_atomic
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.core.terminology import SEGMENTS, Code
from PancreasDiNTSLib.io.dicom_sr import DIAMETERS, LOCAL, LOCAL_SCHEME, PARTS, VOLUME

SYSTEMS = {"SCT": "http://snomed.info/sct", "DCM": "http://dicom.nema.org/resources/ontology/DCM",
           "LN": "http://loinc.org", "UCUM": "http://unitsofmeasure.org",
           "IBSI": "https://theibsi.github.io/ibsi1/", LOCAL_SCHEME: "urn:pancreas-dints:codes:99PDINTS"}
UCUM = {"mL": "milliliter", "mm": "millimeter", "1": "no units"}
DICOM_UID = "urn:dicom:uid"
REPORT_CODE = Code("DCM", "126000", "Imaging Measurement Report")
GROUP_CODE = Code("DCM", "125007", "Measurement Group")
SCORE_CODE = Code(LOCAL_SCHEME, *LOCAL["score"])
NOT_CLINICAL = "Research software, not for clinical use; every number needs a qualified reader's review."


class FhirError(InputError):
    """No FHIR Bundle can be made for this case (one line; the other outputs are unaffected)."""


def concept(code: Code) -> dict[str, Any]:
    """A CodeableConcept of a (scheme, value, meaning) code."""
    system = SYSTEMS.get(code.scheme, f"urn:dicom:coding-scheme:{code.scheme}")
    return {"coding": [{"system": system, "code": code.value, "display": code.meaning}], "text": code.meaning}


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": SYSTEMS["UCUM"], "code": unit}


def _local(key: str) -> Code:
    return Code(LOCAL_SCHEME, *LOCAL[key])


class _Bundle:
    """Collects resources with ids derived from the case key."""

    def __init__(self, key: str, study_uid: str | None, patient_id: str | None, device: dict[str, Any]) -> None:
        self.key = key
        self.entries: list[dict[str, Any]] = []
        self.issued = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.study = ({"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"}}
                      if study_uid else None)
        self.subject = {"identifier": {"value": patient_id}} if patient_id else None
        self.device = self.add("device", device)

    def uid(self, name: str) -> str:
        digest = hashlib.sha256(f"pancreas-dints fhir|{self.key}|{name}".encode()).digest()[:16]
        return str(uuid.UUID(bytes=digest, version=5))

    def add(self, name: str, resource: dict[str, Any]) -> str:
        """Add ``resource`` with a derived id; return its reference (``urn:uuid:...``)."""
        rid = self.uid(name)
        resource = {"resourceType": resource.pop("resourceType"), "id": rid, **resource}
        self.entries.append({"fullUrl": f"urn:uuid:{rid}", "resource": resource})
        return f"urn:uuid:{rid}"

    def observation(self, name: str, code: Code, value: dict[str, Any], tracking: Sequence[dict[str, Any]] = (),
                    site: Code | None = None, method: Code | None = None, note: str = "",
                    members: Sequence[str] = ()) -> str:
        obs: dict[str, Any] = {"resourceType": "Observation", "status": "preliminary",
                               "category": [{"coding": [{
                                   "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                   "code": "imaging", "display": "Imaging"}]}],
                               "code": concept(code), "issued": self.issued}
        if tracking:
            obs["identifier"] = list(tracking)
        if self.subject:
            obs["subject"] = dict(self.subject)
        obs.update(value)
        if site is not None:
            obs["bodySite"] = concept(site)
        if method is not None:
            obs["method"] = concept(method)
        obs["device"] = {"reference": self.device}
        if self.study:
            obs["derivedFrom"] = [dict(self.study)]
        if note:
            obs["note"] = [{"text": note}]
        if members:
            obs["hasMember"] = [{"reference": m} for m in members]
        return self.add(name, obs)


def _tracking_ids(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A finding's Tracking Identifier and Tracking UID as Observation identifiers."""
    if not entry:
        return []
    return [{"type": concept(Code("DCM", "112039", "Tracking Identifier")), "value": str(entry["identifier"])},
            {"type": concept(Code("DCM", "112040", "Tracking Unique Identifier")), "system": DICOM_UID,
             "value": f"urn:oid:{entry['uid']}"}]


def _segment_groups(b: _Bundle, readout: dict[str, Any], tracking: dict[str, Any]) -> list[str]:
    """Per segment: volume, mean confidence, low-confidence band, lesion count (as the SR's TID 1411 groups)."""
    groups = []
    conf = (readout.get("confidence") or {}).get("segments") or {}
    for seg in SEGMENTS:
        rec = (readout.get("segments") or {}).get(seg.slicer_id)
        if rec is None:
            continue
        ids = _tracking_ids((tracking.get("segments") or {}).get(seg.slicer_id))
        site = seg.region if seg.region.value else None
        sid = seg.slicer_id
        members = [b.observation(f"{sid}/volume", VOLUME, {"valueQuantity": quantity(rec["volume_ml"], "mL")}, ids,
                                 site)]
        c = conf.get(sid) or {}
        if c.get("mean_confidence") is not None:
            members.append(b.observation(f"{sid}/confidence", _local("mean_confidence"),
                                         {"valueQuantity": quantity(c["mean_confidence"], "1")}, ids, site))
            members.append(b.observation(f"{sid}/low-band", _local("low_band"),
                                         {"valueQuantity": quantity(c["low_confidence_band_ml"], "mL")}, ids, site))
        if seg.label == 2:
            count = int((readout.get("lesion") or {}).get("count", 0))
            members.append(b.observation(f"{sid}/count", _local("count"), {"valueInteger": count}, ids, site))
        groups.append(b.observation(f"{sid}/group", GROUP_CODE, {"valueCodeableConcept": concept(seg.type)}, ids,
                                    site, members=members))
    return groups


def _lesion_group(b: _Bundle, comp: dict[str, Any], size: dict[str, Any] | None, entry: dict[str, Any] | None
                  ) -> str:
    """One lesion component: volume, diameters (with methods), position and part, size category."""
    lesion = SEGMENTS[1]
    ids = _tracking_ids(entry)
    name = f"lesion-{int(comp['rank'])}"
    site = lesion.region
    members = [b.observation(f"{name}/volume", VOLUME, {"valueQuantity": quantity(comp["volume_ml"], "mL")}, ids,
                             site)]
    for key, code, method in DIAMETERS:
        d = comp.get(key)
        if d:
            members.append(b.observation(f"{name}/{key}", code, {"valueQuantity": quantity(d["mm"], "mm")}, ids, site,
                                         method))
    loc = comp.get("location") or {}
    if loc.get("fraction") is not None:
        members.append(b.observation(f"{name}/position", _local("fraction"),
                                     {"valueQuantity": quantity(loc["fraction"], "1")}, ids, site))
        part = str(loc.get("part"))
        members.append(b.observation(f"{name}/part", _local("part"), {"valueCodeableConcept": concept(Code(
            LOCAL_SCHEME, part.upper().replace("/", "-"), PARTS.get(part, part)))}, ids, site))
    if size is not None and size.get("category"):
        cat = str(size["category"])
        members.append(b.observation(f"{name}/size", _local("size"), {"valueCodeableConcept": concept(Code(
            LOCAL_SCHEME, f"SIZE-{cat}", f"{cat} by size only, not a stage"))}, ids, site,
            note="AJCC 8th edition T size thresholds on the longest 3D diameter; by size only, not a stage"))
    return b.observation(f"{name}/group", GROUP_CODE, {"valueCodeableConcept": concept(lesion.type)}, ids, site,
                         members=members)


def _device(model: dict[str, Any], model_name: str, model_version: str) -> dict[str, Any]:
    versions = [{"value": f"pancreas-dints {__version__}"}, {"value": f"model {model_version}"}]
    versions += [{"value": f"{k} {model[k]}"} for k in ("weights_md5", "arch_md5") if model.get(k)]
    return {"resourceType": "Device", "manufacturer": "PancreasDiNTS",
            "deviceName": [{"name": f"PancreasDiNTS {model_name}", "type": "model-name"}], "version": versions,
            "note": [{"text": f"AI segmentation and measurement; {NOT_CLINICAL}"}]}


def build_bundle(readout: dict[str, Any], tracking: dict[str, Any], model: dict[str, Any], model_name: str,
                 model_version: str, study_uid: str | None = None, patient_id: str | None = None) -> dict[str, Any]:
    """The FHIR R4 Bundle (a JSON-ready dict) of a read-out."""
    b = _Bundle(str(tracking.get("case_key", "")), study_uid, patient_id, _device(model, model_name, model_version))
    results = _segment_groups(b, readout, tracking)
    lesion = readout.get("lesion") or {}
    entries = {int(e["rank"]): e for e in tracking.get("lesions") or []}
    for comp in lesion.get("components") or []:
        rank = int(comp["rank"])
        results.append(_lesion_group(b, comp, lesion.get("size_category") if rank == 1 else None, entries.get(rank)))
    score = (readout.get("confidence") or {}).get("lesion_score") or {}
    if score.get("value") is not None:
        results.append(b.observation("lesion-score", SCORE_CODE, {"valueQuantity": quantity(score["value"], "1")},
                                     note="the maximum lesion probability: uncalibrated, a ranking score"))
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": concept(REPORT_CODE), "issued": b.issued, "effectiveDateTime": b.issued,
        "result": [{"reference": r} for r in results],
        "conclusion": f"Pancreas and pancreatic lesion segmentation read-out. {NOT_CLINICAL}"}
    if b.subject:
        report["subject"] = dict(b.subject)
    if b.study:
        report["imagingStudy"] = [dict(b.study)]
    b.add("report", report)
    b.entries.insert(0, b.entries.pop())  # the DiagnosticReport first
    return {"resourceType": "Bundle", "id": b.uid("bundle"), "type": "collection", "timestamp": b.issued,
            "entry": b.entries}


def write(dest: Path, readout: dict[str, Any], tracking: dict[str, Any], model: dict[str, Any], model_name: str,
          model_version: str, study_uid: str | None = None, patient_id: str | None = None) -> Path:
    """Write the Bundle as JSON, atomically."""
    if not readout or "segments" not in readout:
        raise FhirError("no read-out to report (the read-out was turned off)")
    bundle = build_bundle(readout, tracking, model, model_name, model_version, study_uid, patient_id)
    write_text_atomic(Path(dest), json.dumps(bundle, indent=1) + "\n")
    return Path(dest)
