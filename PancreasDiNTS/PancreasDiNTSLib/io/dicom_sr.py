"""DICOM Comprehensive 3D SR of the read-out: a TID 1500 Measurement Report built with highdicom.

Content (every number is the value in report.json's "readout", as rounded there):

- one Volumetric ROI group (TID 1411) per segment (an empty one says 0 mL), referencing that segment of the DICOM SEG written
  in the same run (its SOP Instance and Segment Number, and through it the CT images): volume (mL), mean
  confidence, low-confidence volume near the boundary (mL); the lesion's group adds the number of components;
- one Measurement group (TID 1501) per measured lesion component (largest first): volume, longest axial
  diameter (SCT Long axis, RECIST 1.1), its perpendicular (SCT Perpendicular Axis, WHO), longest 3D diameter
  (IBSI Maximum 3D Diameter of a Mesh), each with its endpoints as a SCOORD3D POLYLINE in the CT's frame of
  reference (RAS endpoints of the report, converted to LPS) and a reference to the SEG's lesion segment; the
  position along the gland (0 head .. 1 tail) and its part; for the largest, the AJCC 8th edition T size
  category, coded as "by size only, not a stage";
- one group with the case lesion score (maximum lesion probability, uncalibrated) at its SCOORD3D POINT.

Every group's Tracking Identifier and Tracking UID are the read-out's ``tracking`` (core.tracking: derived from the
case and the finding, the same on every rerun of the case), or derived the same way from the CT's series UID.

Concepts without a standard code (confidence figures, position along the gland, the size category) use the
local coding scheme 99PDINTS, declared in the Coding Scheme Identification Sequence. Algorithm identification
(TID 4019) on every group and measurement: name, version, weights and architecture md5. The report is
neither complete nor verified (a reader reviews it). An Image Library lists the CT images; the SEG and the CT
images are the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import atomic_path
from PancreasDiNTSLib.core.errors import InputError, first_line
from PancreasDiNTSLib.core.terminology import SEGMENTS
from PancreasDiNTSLib.core.terminology import Code as TermCode
from PancreasDiNTSLib.core.tracking import (
    case_key,
    case_tracking,
    lesion_tracking,
    lesion_uid_of,
    tracking_uid,
)
from PancreasDiNTSLib.io.dicom_derived import contributing_equipment
from PancreasDiNTSLib.io.dicom_seg import (
    SegSources,
    _derived_uid,
    build_segmentation,
    clean_text,
    encode,
    prepare_sources,
    trial_frames,
)
from PancreasDiNTSLib.io.image_plane import ImagePlane, image_with, lps, plane_of

LOCAL_SCHEME = "99PDINTS"
# Local codes: (value, meaning <= 64 characters)
LOCAL = {
    "mean_confidence": ("CONF-MEAN", "Mean model confidence in segment"),
    "low_band": ("CONF-LOWBAND", "Low-confidence volume near segment boundary"),
    "count": ("LESION-COUNT", "Number of connected lesion components"),
    "fraction": ("GLAND-POS", "Position along gland centreline (0 head, 1 tail)"),
    "part": ("GLAND-PART", "Part of gland (by thirds of the centreline)"),
    "score": ("LESION-SCORE", "Lesion score (max lesion probability, uncalibrated)"),
    "size": ("AJCC-SIZE", "AJCC 8th ed. T size category, by size only, not a stage"),
}
VOLUME = TermCode("SCT", "118565006", "Volume")
LONG_AXIS = TermCode("SCT", "103339001", "Long axis")
PERPENDICULAR_AXIS = TermCode("SCT", "131189007", "Perpendicular Axis")
MAX_3D_DIAMETER = TermCode("IBSI", "L0JK", "Maximum 3D Diameter of a Mesh")
# read-out key -> (concept, method) of the diameters; the FHIR Bundle uses the same codes
DIAMETERS = (("longest_axial_diameter", LONG_AXIS, TermCode("DCM", "126081", "RECIST 1.1")),
             ("perpendicular_diameter", PERPENDICULAR_AXIS, TermCode("DCM", "112029", "WHO")),
             ("longest_3d_diameter", MAX_3D_DIAMETER, None))
PARTS = {"head": "Head (first third of centreline)", "neck/body": "Neck/body (middle third of centreline)",
         "tail": "Tail (last third of centreline)"}


class DicomSrError(InputError):
    """A DICOM SR cannot be made for this case (one line; the other outputs are unaffected)."""


def _local(key: str) -> Any:
    from highdicom.sr import CodedConcept

    value, meaning = LOCAL[key]
    return CodedConcept(value, LOCAL_SCHEME, meaning)


def _code(code: TermCode) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(code.value, code.scheme, code.meaning)


def _unit(kind: str) -> Any:
    from highdicom.sr import CodedConcept

    return {"mL": CodedConcept("mL", "UCUM", "milliliter"), "mm": CodedConcept("mm", "UCUM", "millimeter"),
            "1": CodedConcept("1", "UCUM", "no units")}[kind]


class _Context:
    """What every group shares: the SEG, the frame of reference, the algorithm."""

    def __init__(self, seg: Any, sources: SegSources, algorithm: Any) -> None:
        self.seg = seg
        self.images = list(sources.datasets)
        self.frame_uid = str(self.images[0].FrameOfReferenceUID)
        self.algorithm = algorithm
        self.planes: list[ImagePlane] = [plane_of(ds, i) for i, ds in enumerate(self.images)]

    def on_image(self, line_ras: Sequence[Sequence[float]]) -> Any | None:
        """A 2D SCOORD POLYLINE of the line on the acquired CT image whose plane holds it (IHE AIR), or None."""
        from highdicom.sr import CoordinatesForMeasurement, GraphicTypeValues, SourceImageForRegion

        found = image_with(self.planes, line_ras)
        if found is None:
            return None
        ds = self.images[found[0].index]
        return CoordinatesForMeasurement(GraphicTypeValues.POLYLINE, np.round(found[1], 4),
                                         SourceImageForRegion(str(ds.SOPClassUID), str(ds.SOPInstanceUID)))

    def seg_image(self, segment: int) -> Any:
        from highdicom.sr import SourceImageForMeasurement

        item = SourceImageForMeasurement(self.seg.SOPClassUID, self.seg.SOPInstanceUID)
        item.ReferencedSOPSequence[0].ReferencedSegmentNumber = segment
        return item

    def segment(self, number: int) -> Any:
        """The SEG segment with its source images (the CT series when no frame of it holds the segment)."""
        from highdicom.sr import ReferencedSegment, SourceSeriesForSegmentation

        try:
            return ReferencedSegment.from_segmentation(self.seg, segment_number=number)
        except (ValueError, AttributeError, KeyError):
            series = SourceSeriesForSegmentation(self.seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
            return ReferencedSegment(self.seg.SOPClassUID, self.seg.SOPInstanceUID, number, source_series=series)

    def measure(self, name: Any, value: float, unit: str, segment: int | None = None,
                line_ras: Sequence[Sequence[float]] | None = None, method: Any = None,
                point: bool = False, on_image: bool = False) -> Any:
        from highdicom.sr import CoordinatesForMeasurement3D, GraphicTypeValues3D, Measurement

        coords = None
        if line_ras is not None:
            kind = GraphicTypeValues3D.POINT if point else GraphicTypeValues3D.POLYLINE
            coords = [CoordinatesForMeasurement3D(kind, lps(line_ras), self.frame_uid)]
            flat = self.on_image(line_ras) if on_image else None
            if flat is not None:
                coords.insert(0, flat)
        return Measurement(name=name, value=value, unit=_unit(unit), method=method,
                           algorithm_id=self.algorithm, referenced_coordinates=coords,
                           referenced_images=[self.seg_image(segment)] if segment is not None else None)


def _algorithm(model: dict[str, Any], model_name: str, model_version: str) -> Any:
    from highdicom.sr import AlgorithmIdentification

    params = [f"{k} {model[k]}" for k in ("weights_md5", "arch_md5") if model.get(k)]
    return AlgorithmIdentification(name=clean_text(f"PancreasDiNTS {model_name}", "LO") or "PancreasDiNTS",
                                   version=clean_text(f"{__version__} / model {model_version}", "LO"),
                                   parameters=params or None)


def _tracking(entry: dict[str, Any]) -> Any:
    """A TrackingIdentifier of a core.tracking entry (``identifier``, ``uid``)."""
    from highdicom.sr import TrackingIdentifier

    return TrackingIdentifier(uid=str(entry["uid"]), identifier=clean_text(str(entry["identifier"]), "LO"))


def tracking_of(readout: dict[str, Any], series_uid: str) -> dict[str, Any]:
    """The read-out's recorded tracking (report.json), else the one derived from the CT series' UID."""
    recorded = readout.get("tracking")
    if isinstance(recorded, dict) and recorded.get("case_key"):
        return recorded
    return case_tracking(case_key(series_uid), readout)


def lesion_entry(tracking: dict[str, Any], rank: int) -> dict[str, Any]:
    """The tracking entry of lesion ``rank`` (recorded, else derived from the case key)."""
    return lesion_uid_of({"tracking": tracking}, rank) or lesion_tracking(str(tracking["case_key"]), rank)


def _segment_groups(ctx: _Context, readout: dict[str, Any], tracking: dict[str, Any]) -> list[Any]:
    """TID 1411 per segment (empty ones too: 0 mL is a finding): volume and confidence, referencing the SEG
    segment (through the CT series when the SEG holds no frame of it)."""
    from highdicom.sr import FindingSite, VolumetricROIMeasurementsAndQualitativeEvaluations

    groups = []
    conf = readout.get("confidence") or {}
    for seg in SEGMENTS:
        rec = (readout.get("segments") or {}).get(seg.slicer_id)
        if rec is None:
            continue
        items = [ctx.measure(_code(VOLUME), rec["volume_ml"], "mL")]
        c = (conf.get("segments") or {}).get(seg.slicer_id) or {}
        if c.get("mean_confidence") is not None:
            items.append(ctx.measure(_local("mean_confidence"), c["mean_confidence"], "1"))
            items.append(ctx.measure(_local("low_band"), c["low_confidence_band_ml"], "mL"))
        if seg.label == 2:
            items.append(ctx.measure(_local("count"), (readout.get("lesion") or {}).get("count", 0), "1"))
        groups.append(VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(tracking["segments"][seg.slicer_id]),
            referenced_segment=ctx.segment(seg.label),
            finding_type=_code(seg.type), finding_category=_code(seg.category),
            finding_sites=[FindingSite(_code(seg.region))] if seg.region.value else None,
            algorithm_id=ctx.algorithm, measurements=items))
    return groups


def _diameters(ctx: _Context, comp: dict[str, Any]) -> list[Any]:
    out = []
    for key, name, method in DIAMETERS:
        d = comp.get(key)
        if d:
            out.append(ctx.measure(_code(name), d["mm"], "mm", 2, d["endpoints_ras"],
                                   _code(method) if method else None, on_image=key != "longest_3d_diameter"))
    return out


def _component_group(ctx: _Context, comp: dict[str, Any], size: dict[str, Any] | None,
                     tracking: dict[str, Any]) -> Any:
    """TID 1501 for one lesion component: volume, diameters with SCOORD3D endpoints, position, size category."""
    from highdicom.sr import (
        CodedConcept,
        FindingSite,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
    )

    lesion = SEGMENTS[1]
    rank = int(comp["rank"])
    items = [ctx.measure(_code(VOLUME), comp["volume_ml"], "mL", 2)]
    items += _diameters(ctx, comp)
    loc = comp.get("location") or {}
    evaluations = []
    if loc.get("fraction") is not None:
        items.append(ctx.measure(_local("fraction"), loc["fraction"], "1", 2))
        part = str(loc.get("part"))
        evaluations.append(QualitativeEvaluation(_local("part"), CodedConcept(
            part.upper().replace("/", "-"), LOCAL_SCHEME, PARTS.get(part, part))))
    if size is not None and size.get("category"):
        cat = str(size["category"])
        evaluations.append(QualitativeEvaluation(_local("size"), CodedConcept(
            f"SIZE-{cat}", LOCAL_SCHEME, f"{cat} by size only, not a stage")))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(lesion_entry(tracking, rank)), finding_type=_code(lesion.type),
        finding_category=_code(lesion.category), finding_sites=[FindingSite(_code(lesion.region))],
        algorithm_id=ctx.algorithm, measurements=items, qualitative_evaluations=evaluations or None)


def _score_group(ctx: _Context, readout: dict[str, Any], tracking: dict[str, Any]) -> Any | None:
    from highdicom.sr import MeasurementsAndQualitativeEvaluations

    score = (readout.get("confidence") or {}).get("lesion_score") or {}
    if score.get("value") is None:
        return None
    where = [score["argmax_ras"]] if score.get("argmax_ras") else None
    item = ctx.measure(_local("score"), score["value"], "1", line_ras=where, point=True)
    return MeasurementsAndQualitativeEvaluations(tracking_identifier=_tracking(
        {"identifier": "Case lesion score", "uid": tracking_uid(str(tracking["case_key"]), "lesion-score")}),
                                                 algorithm_id=ctx.algorithm, measurements=[item])


def build_report(sources: SegSources, seg: Any, readout: dict[str, Any], model: dict[str, Any],
                 model_name: str, model_version: str) -> Any:
    """The highdicom Comprehensive3DSR of ``readout`` referencing ``seg`` (a SEG dataset of ``sources``)."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from highdicom.sr import (
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.sr.codedict import codes

    if not readout or "segments" not in readout:
        raise DicomSrError("no read-out to report (the read-out was turned off)")
    first = sources.datasets[0]
    ctx = _Context(seg, sources, _algorithm(model, model_name, model_version))
    tracking = tracking_of(readout, str(first.SeriesInstanceUID))
    groups: list[Any] = _segment_groups(ctx, readout, tracking)
    lesion = readout.get("lesion") or {}
    for comp in lesion.get("components") or []:
        groups.append(_component_group(ctx, comp, lesion.get("size_category") if comp["rank"] == 1 else None, tracking))
    score = _score_group(ctx, readout, tracking)
    if score is not None:
        groups.append(score)
    if not groups:
        raise DicomSrError("nothing to report: no segment and no lesion score")
    device = DeviceObserverIdentifyingAttributes(
        uid=_derived_uid("device", [str(model.get("weights_md5", model_name))]), name="PancreasDiNTS",
        manufacturer_name="PancreasDiNTS", model_name=clean_text(model_name, "LO") or "unknown")
    context = ObservationContext(observer_device_context=ObserverContext(codes.DCM.Device, device))
    report = MeasurementReport(context, codes.LN.CTUnspecifiedBodyRegion, groups, referenced_images=sources.datasets)
    try:
        number = int(first.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    sr = Comprehensive3DSR(
        evidence=[seg, *sources.datasets], content=report[0], series_instance_uid=hd.UID(),
        series_number=(number % 100000) + 3000, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="PancreasDiNTS", series_description="Pancreas DiNTS read-out (research, not for clinical use)",
        coding_schemes=[CodingSchemeIdentificationItem(
            LOCAL_SCHEME, name="PancreasDiNTS local codes",
            responsible_organization="PancreasDiNTS")])
    sr.ContributingEquipmentSequence = [contributing_equipment(model_name, model_version)]  # the AI (IHE AIR)
    return sr

def _trial_readout() -> dict[str, Any]:
    """A stand-in read-out with every kind of item the SR holds (for the check before inference)."""
    line = {"mm": 1.0, "endpoints_ras": [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]}
    comp = {"rank": 1, "volume_ml": 0.1, "longest_axial_diameter": line, "perpendicular_diameter": line,
            "longest_3d_diameter": line, "location": {"part": "head", "fraction": 0.1}}
    conf = {"mean_confidence": 0.9, "low_confidence_band_ml": 0.0}
    return {"segments": {s.slicer_id: {"voxels": 1, "volume_ml": 0.1} for s in SEGMENTS},
            "lesion": {"count": 1, "components": [comp], "size_category": {"category": "T1a"}},
            "confidence": {"segments": {s.slicer_id: conf for s in SEGMENTS},
                           "lesion_score": {"value": 0.9, "argmax_ras": [0.0, 0.0, 0.0]}}}


def check_preconditions(files: Sequence[Path], model_name: str, model_version: str) -> list[str]:
    """Build and encode an SR of this series (with a trial SEG and a stand-in read-out): notes, or DicomSrError."""
    try:
        sources = prepare_sources(files)
        frames = trial_frames(sources)
        seg = build_segmentation(sources, frames, model_name, model_version)
        encode(build_report(sources, seg, _trial_readout(), {}, model_name, model_version))
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom raise many types; the user gets one line
        where = Path(files[0]).parent if files else "the input"
        raise DicomSrError(f"{where}: a DICOM SR cannot be made for this series "
                           f"({first_line(exc)}); leave dicom-sr out of --format") from None
    return []


def write(dest: Path, seg_path: Path, readout: dict[str, Any], model: dict[str, Any], files: Sequence[Path],
          model_name: str, model_version: str) -> list[str]:
    """Write the SR of ``readout`` referencing the SEG at ``seg_path`` (written from ``files``)."""
    import pydicom

    sources = prepare_sources(files)
    try:
        seg = pydicom.dcmread(str(seg_path))
    except Exception as exc:  # noqa: BLE001 - any reading problem is one line
        raise DicomSrError(f"{seg_path}: the DICOM SEG the SR references cannot be read ({exc})") from None
    data = encode(build_report(sources, seg, readout, model, model_name, model_version))
    with atomic_path(Path(dest)) as tmp:
        Path(tmp).write_bytes(data)
    return sources.notes
