"""The engine's ``report.json`` -> a table node (one row per segment) and markups lines (e.g. a diameter).

The report's keys are the engine's (``PancreasDiNTSLib.inference.batch`` writes them); nothing here names a
particular measurement. Every per-segment number becomes a column, whichever of these shapes it comes in:

- ``{"volumes_ml": {"Pancreas": 72.4, ...}}``                 -> column ``volumes_ml``
- ``{"measurements": {"Pancreas": {"length_mm": 150.0}}}``     -> column ``length_mm``
- ``{"measurements": {"length_mm": {"Pancreas": 150.0}}}``     -> column ``length_mm``

and any per-segment value that is a pair of RAS points (``[[x, y, z], [x, y, z]]``) can be drawn as a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import slicer
import vtk
from PancreasDiNTSLib.core import terminology

from PancreasDiNTSSceneLib.common import SceneLayerError, place_next_to, resolve_scene

SEGMENT_COLUMN = "Segment"
# Sections whose inner keys are shown without the section name (the measurements block).
FLAT_SECTIONS = ("measurements",)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _point_pair(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(p, list | tuple) and len(p) == 3 and all(_number(c) for c in p) for p in value))


def segment_names(report: dict[str, Any]) -> list[str]:
    """The segments of a report in label order: its ``labels`` map without background, else the engine's table."""
    labels = report.get("labels")
    if isinstance(labels, dict) and labels:
        ordered = sorted(labels.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 1 << 30)
        names = [str(name) for value, name in ordered if str(value) != "0"]
        if names:
            return names
    return [info.name for info in terminology.SEGMENTS]


def _per_segment(report: dict[str, Any], names: list[str]) -> list[tuple[str, str, Any]]:
    """(column, segment, value) for every per-segment entry of the report, in the report's order."""
    out = []
    for key, section in report.items():
        if not isinstance(section, dict) or key == "labels":
            continue
        prefix = "" if key in FLAT_SECTIONS else f"{key}."
        if any(name in section for name in names):  # {segment: number | {metric: value}}
            for name in names:
                value = section.get(name)
                if isinstance(value, dict):
                    out += [(f"{prefix}{metric}", name, v) for metric, v in value.items()]
                elif value is not None:
                    out.append((key, name, value))
        else:  # {metric: {segment: value}}
            for metric, by_segment in section.items():
                if isinstance(by_segment, dict) and any(name in by_segment for name in names):
                    out += [(f"{prefix}{metric}", name, by_segment[name]) for name in names if name in by_segment]
    return out


def report_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): a ``Segment`` column and one column per per-segment numeric key; one row per segment
    (missing values are None). A report without per-segment numbers gives just the segment names."""
    names = segment_names(report)
    columns: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for column, name, value in _per_segment(report, names):
        if not _number(value):
            continue
        if column not in columns:
            columns.append(column)
        values[(column, name)] = float(value)
    rows = [[name] + [values.get((column, name)) for column in columns] for name in names]
    return [SEGMENT_COLUMN, *columns], rows


def report_lines(report: dict[str, Any]) -> list[tuple[str, str, list[list[float]]]]:
    """(segment, key, [p0, p1]) for every per-segment pair of RAS points in the report (e.g. a diameter)."""
    names = segment_names(report)
    return [(name, column, [list(map(float, p)) for p in value])
            for column, name, value in _per_segment(report, names) if _point_pair(value)]


def _filled_table(scene: Any, table_node: Any, name: str, reference: Any, columns: list[Any]) -> Any:
    """``table_node`` (or a new vtkMRMLTableNode added next to ``reference``) holding ``columns`` (vtk arrays),
    locked: the numbers come from the engine, and editing them in the table view is confusing."""
    created = table_node is None
    if created:
        table_node = slicer.vtkMRMLTableNode()
        table_node.SetName(scene.GenerateUniqueName(name))
    table = vtk.vtkTable()
    for array in columns:
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    table_node.SetLocked(True)
    if created:
        scene.AddNode(table_node)
        if reference is not None:
            place_next_to(scene, table_node, reference)
    return table_node


def report_table(report: dict[str, Any], scene: Any = None, table_node: Any = None, name: str = "measurements",
                 reference: Any = None) -> Any:
    """Fill ``table_node`` (or a new vtkMRMLTableNode) with :func:`report_rows`; its old content is replaced.

    Missing numbers are NaN. With ``reference`` (the input volume) a new table sits next to it in the subject
    hierarchy.
    """
    scene = resolve_scene(scene)
    columns, rows = report_rows(report)
    arrays = []
    for index, column in enumerate(columns):
        array = vtk.vtkStringArray() if index == 0 else vtk.vtkDoubleArray()
        array.SetName(column)
        for row in rows:
            value = row[index]
            if index == 0:
                array.InsertNextValue(str(value))
            else:
                array.InsertNextValue(float("nan") if value is None else value)
        arrays.append(array)
    table_node = _filled_table(scene, table_node, name, reference, arrays)
    for column in columns[1:]:
        if column.endswith("ml"):
            table_node.SetColumnUnitLabel(column, "mL")
        elif column.endswith("_mm"):
            table_node.SetColumnUnitLabel(column, "mm")
    return table_node


def add_line(points: Sequence[Sequence[float]], name: str = "diameter", scene: Any = None,
             line_node: Any = None, reference: Any = None) -> Any:
    """A markups line between two world RAS points (e.g. the tumour's longest axial diameter); an existing
    ``line_node`` is moved instead of a new one being added."""
    scene = resolve_scene(scene)
    if len(points) != 2 or any(len(p) != 3 for p in points):
        raise SceneLayerError(f"a line needs two RAS points, got {points!r}")
    created = line_node is None
    if created:  # in the scene before its points: the length measurement looks up the scene's unit node
        line_node = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", scene.GenerateUniqueName(name))
        line_node.CreateDefaultDisplayNodes()
        if reference is not None:
            place_next_to(scene, line_node, reference)
    line_node.RemoveAllControlPoints()
    for point in points:
        # World coordinates: a new line has no parent transform; an existing one may have one.
        line_node.AddControlPointWorld(vtk.vtkVector3d(*[float(c) for c in point]))
    return line_node


READOUT_COLUMNS = ("Measurement", "Value", "Unit")


def _value(x: Any, digits: int = 2) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _segment_rows(readout: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    conf = readout.get("confidence") or {}
    for key, seg in (readout.get("segments") or {}).items():
        name = str(seg.get("name", key)).replace("tumor", "lesion")
        rows += [(f"{name} volume", _value(seg.get("volume_ml"), 2), "mL"),
                 (f"{name} voxels", _value(seg.get("voxels")), ""),
                 (f"{name} connected components (26-connected)", _value(seg.get("components")), "")]
        c = (conf.get("segments") or {}).get(key) or {}
        if c:
            rows += [(f"{name} mean confidence", _value(c.get("mean_confidence"), 3) or f"n/a: {c.get('reason')}",
                      "0-1"),
                     (f"{name} low-confidence boundary band", _value(c.get("low_confidence_band_ml"), 2), "mL")]
    return rows


def _lesion_rows(readout: dict[str, Any]) -> list[tuple[str, str, str]]:
    les = readout.get("lesion") or {}
    big = les.get("largest") or {}
    if not les.get("found"):
        return [("Pancreatic lesion", f"none: {les.get('reason') or 'not segmented'}", "")]
    rows = [("Pancreatic lesion components", _value(les.get("count")), ""),
            ("Largest lesion volume", _value(big.get("volume_ml"), 2), "mL")]
    for key, label in (("longest_axial_diameter", "Largest lesion longest axial diameter"),
                       ("perpendicular_diameter", "Largest lesion perpendicular diameter"),
                       ("longest_3d_diameter", "Largest lesion longest 3D diameter")):
        d = big.get(key)
        rows.append((label, _value(d["mm"], 1) if d else f"n/a: {big.get('reason') or big.get('perpendicular_reason')}",
                     "mm" if d else ""))
    size = les.get("size_category") or {}
    rows.append(("Size category (AJCC 8th, by size only, not a stage)",
                 size.get("category") or f"n/a: {size.get('reason')}", ""))
    loc = big.get("location") or {}
    rows.append(("Largest lesion location along the gland",
                 f"{loc['part']} ({loc['fraction']:.3f} of the length from the head)" if loc.get("part")
                 else f"n/a: {loc.get('reason')}", ""))
    if big.get("touches_volume_border"):
        rows.append(("Warning", "the lesion touches the edge of the scan: its size may be underestimated", ""))
    return rows


def readout_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measurement, value, unit) rows of the report's ``readout`` (volumes, components, diameters, size
    category, location, confidence, lesion score, what is not assessed); [] when the report has no read-out.
    A value that could not be measured is ``n/a: <reason>``."""
    readout = report.get("readout")
    if not isinstance(readout, dict):
        return []
    rows = _segment_rows(readout) + _lesion_rows(readout)
    conf = readout.get("confidence")
    if conf:
        score = conf.get("lesion_score") or {}
        rows.append(("Lesion score (max lesion probability, uncalibrated)", _value(score.get("value"), 3), "0-1"))
    else:
        rows.append(("Confidence", f"n/a: {readout.get('confidence_reason')}", ""))
    not_assessed = (readout.get("lesion") or {}).get("not_assessed") or []
    rows += [("Not assessed", str(item), "") for item in not_assessed]
    if readout.get("notice"):
        rows.append(("Notice", str(readout["notice"]), ""))
    return rows


def readout_table(report: dict[str, Any], scene: Any = None, table_node: Any = None, name: str = "measurements",
                  reference: Any = None) -> Any:
    """Fill ``table_node`` (or a new vtkMRMLTableNode next to ``reference``) with :func:`readout_rows` as three
    text columns (Measurement, Value, Unit); a report without a read-out gets :func:`report_table`'s
    per-segment table instead. The user can save the table (.tsv/.csv) from the Data module."""
    rows = readout_rows(report)
    if not rows:
        return report_table(report, scene, table_node, name, reference)
    arrays = []
    for index, column in enumerate(READOUT_COLUMNS):
        array = vtk.vtkStringArray()
        array.SetName(column)
        for row in rows:
            array.InsertNextValue(row[index])
        arrays.append(array)
    return _filled_table(resolve_scene(scene), table_node, name, reference, arrays)


def readout_lines(report: dict[str, Any]) -> list[tuple[str, list[list[float]]]]:
    """(name, [p0, p1] in RAS) of the largest lesion's longest axial diameter and its perpendicular, as the
    report gives them ([] without a measured lesion)."""
    big = ((report.get("readout") or {}).get("lesion") or {}).get("largest") or {}
    out = []
    for key, name in (("longest_axial_diameter", "lesion longest axial diameter"),
                      ("perpendicular_diameter", "lesion perpendicular diameter")):
        d = big.get(key)
        if d and _point_pair(d.get("endpoints_ras")):
            out.append((name, [list(map(float, p)) for p in d["endpoints_ras"]]))
    return out


# Node attributes that tie a run's read-out nodes to their input, so a rerun reuses or removes them.
READOUT_OF_ATTRIBUTE = "PancreasDiNTS.readoutOf"  # the input volume's node ID
READOUT_PART_ATTRIBUTE = "PancreasDiNTS.readoutPart"  # "table" or the line's name


def readout_nodes(scene: Any, reference: Any) -> dict[str, Any]:
    """The read-out nodes a previous run left for ``reference`` (part -> node)."""
    found = {}
    for class_name in ("vtkMRMLTableNode", "vtkMRMLMarkupsLineNode"):
        nodes = scene.GetNodesByClass(class_name)
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if reference is not None and node.GetAttribute(READOUT_OF_ATTRIBUTE) == reference.GetID():
                found[node.GetAttribute(READOUT_PART_ATTRIBUTE)] = node
    return found


def _tag(node: Any, reference: Any, part: str) -> Any:
    if reference is not None:
        node.SetAttribute(READOUT_OF_ATTRIBUTE, reference.GetID())
        node.SetAttribute(READOUT_PART_ATTRIBUTE, part)
    return node


def show_readout(report: dict[str, Any], reference: Any = None, scene: Any = None) -> Any:
    """A run's read-out in the scene, one set per input: the table (:func:`readout_table`) and the largest
    lesion's diameter lines (:func:`add_line`). The previous run's table and lines of ``reference`` are reused;
    a line the new report no longer has (the lesion is gone or too small to measure) is removed, so no stale
    diameter stays drawn over a new segmentation. Returns the table node."""
    scene = resolve_scene(scene)
    previous = readout_nodes(scene, reference)
    base = f"{reference.GetName()} " if reference is not None else ""
    table = readout_table(report, scene, table_node=previous.pop("table", None), name=f"{base}measurements",
                          reference=reference)
    _tag(table, reference, "table")
    lines = readout_lines(report) or [(f"{segment} {key}", points) for segment, key, points in report_lines(report)]
    for line_name, points in lines:
        line = add_line(points, f"{base}{line_name}", scene, line_node=previous.pop(line_name, None),
                        reference=reference)
        _tag(line, reference, line_name)
    for stale in previous.values():
        scene.RemoveNode(stale)
    return table
