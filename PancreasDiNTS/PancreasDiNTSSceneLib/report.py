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


def report_table(report: dict[str, Any], scene: Any = None, table_node: Any = None, name: str = "measurements",
                 reference: Any = None) -> Any:
    """Fill ``table_node`` (or a new vtkMRMLTableNode) with :func:`report_rows`; its old content is replaced.

    Missing numbers are NaN. With ``reference`` (the input volume) a new table sits next to it in the subject
    hierarchy.
    """
    scene = resolve_scene(scene)
    columns, rows = report_rows(report)
    created = table_node is None
    if created:
        table_node = slicer.vtkMRMLTableNode()
        table_node.SetName(scene.GenerateUniqueName(name))
    table = vtk.vtkTable()
    for index, column in enumerate(columns):
        array = vtk.vtkStringArray() if index == 0 else vtk.vtkDoubleArray()
        array.SetName(column)
        for row in rows:
            value = row[index]
            if index == 0:
                array.InsertNextValue(str(value))
            else:
                array.InsertNextValue(float("nan") if value is None else value)
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    table_node.SetLocked(True)  # the numbers come from the engine; editing them in the table view is confusing
    for column in columns[1:]:
        if column.endswith("ml"):
            table_node.SetColumnUnitLabel(column, "mL")
        elif column.endswith("_mm"):
            table_node.SetColumnUnitLabel(column, "mm")
    if created:
        scene.AddNode(table_node)
        if reference is not None:
            place_next_to(scene, table_node, reference)
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
