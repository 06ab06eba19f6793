"""Segment names, label values, colours and SNOMED CT codes: the one table every writer uses."""

from __future__ import annotations

from dataclasses import dataclass

CATEGORY_CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """A coded concept (scheme, value, meaning)."""

    scheme: str
    value: str
    meaning: str

    def triple(self) -> str:
        """Slicer's 'scheme^value^meaning' form."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


NO_CODE = Code("", "", "")
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPH_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
PANCREAS = Code("SCT", "15776009", "Pancreas")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")


@dataclass(frozen=True)
class SegmentInfo:
    """One output class of the model."""

    label: int
    name: str
    slicer_id: str
    color: tuple[int, int, int]  # 0-255 RGB
    category: Code
    type: Code
    region: Code = NO_CODE
    key: str = ""  # short key in report/metric names: dice_<key>, volume_<key>_ml

    @property
    def color_float(self) -> tuple[float, float, float]:
        r, g, b = (round(c / 255.0, 4) for c in self.color)
        return r, g, b

    def terminology_entry(self) -> str:
        """Slicer's serialized terminology entry (7 '~'-separated fields)."""
        return "~".join(
            [
                CATEGORY_CONTEXT,
                self.category.triple(),
                self.type.triple(),
                NO_CODE.triple(),
                REGION_CONTEXT,
                self.region.triple(),
                NO_CODE.triple(),
            ]
        )


SEGMENTS: tuple[SegmentInfo, ...] = (
    SegmentInfo(1, "Pancreas", "pancreas", (249, 180, 111), ANATOMICAL_STRUCTURE, PANCREAS, key="pancreas"),
    # No recommended colour exists for Neoplasm in Slicer's terminology; this red stands out against pancreas.
    SegmentInfo(2, "Pancreatic tumor", "pancreatic_tumor", (216, 101, 79), MORPH_ALTERED, NEOPLASM, PANCREAS,
                key="tumour"),
)

PANCREAS_LABEL, LESION_LABEL = (s.label for s in SEGMENTS)  # 1 and 2: the label values, named once
LABEL_NAMES = {0: "background", **{s.label: s.name for s in SEGMENTS}}
# report.json's "labels": label value (as a JSON key) -> segment name
LABEL_TABLE = {str(k): v for k, v in LABEL_NAMES.items()}
# label value -> the one spelling of the class in report and metric keys (dice_pancreas, dice_tumour, ...)
METRIC_KEYS = {s.label: s.key for s in SEGMENTS}


def segment_by_label(label: int) -> SegmentInfo:
    """Return the segment for a label value."""
    for seg in SEGMENTS:
        if seg.label == label:
            return seg
    raise KeyError(label)
