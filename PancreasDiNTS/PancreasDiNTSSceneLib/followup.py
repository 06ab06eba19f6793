"""Compare with a prior study, scene side: both time points written as the engine's inputs, the command, the
result as a table.

The panel picks the prior volume and its segmentation (and the current ones, usually the case just segmented);
:class:`CompareJob` writes each volume in world coordinates and its Pancreas / Pancreatic tumor segments as a label
map on that volume's grid (1, 2), builds ``pancreas-dints compare PRIOR CURRENT --prior-labels ...
--current-labels ...`` (``bridge.commands``), and after the engine's run reads compare.json into a table node.
Everything that is not MRML (alignment, matching, response) is the engine's ``followup`` layer. The scene is
changed only by :meth:`CompareJob.complete`; temporary files go with :meth:`CompareJob.cleanup`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from PancreasDiNTSLib.bridge import commands
from PancreasDiNTSLib.core import terminology
from vtk.util import numpy_support

from PancreasDiNTSSceneLib.common import SceneLayerError, ijk_to_world, resolve_scene
from PancreasDiNTSSceneLib.report import _filled_table
from PancreasDiNTSSceneLib.segmentations import our_segment_ids, segment_mask
from PancreasDiNTSSceneLib.volumes import write_engine_input

COMPARE_JSON = "compare.json"
TABLE_COLUMNS = ("finding", "status", "prior_ml", "current_ml", "volume_change_pct", "prior_axial_mm",
                 "current_axial_mm", "location", "match", "tracking_uid")


def label_array(volume: Any, segmentation_node: Any, scene: Any = None) -> np.ndarray:
    """Our segments as labels (X, Y, Z; pancreas 1, lesion 2, the lesion winning) on ``volume``'s grid."""
    scene = resolve_scene(scene)
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise SceneLayerError("select a segmentation with a 'Pancreas' segment for each time point")
    if segmentation_node.GetParentTransformNode() is not volume.GetParentTransformNode():
        raise SceneLayerError(f"{segmentation_node.GetName()}: put it under the same transform as "
                              f"{volume.GetName()} (or none) before comparing")
    ids = our_segment_ids(segmentation_node.GetSegmentation())
    pancreas = terminology.segment_by_label(terminology.PANCREAS_LABEL).name
    if pancreas not in ids:
        raise SceneLayerError(f"{segmentation_node.GetName()}: no segment named {pancreas!r}")
    dims = volume.GetImageData().GetDimensions()
    out = np.zeros(dims, np.uint8)
    for info in terminology.SEGMENTS:
        if info.name in ids:
            out[segment_mask(segmentation_node, ids[info.name], volume, scene) > 0] = info.label
    return out


def write_labels(volume: Any, labels: np.ndarray, path: Path) -> Path:
    """``labels`` (on ``volume``'s grid) as a label-map NRRD in world coordinates, as the CT is written."""
    image = vtk.vtkImageData()
    image.SetDimensions(*labels.shape)
    flat = np.ascontiguousarray(labels.transpose(2, 1, 0)).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    node = slicer.vtkMRMLLabelMapVolumeNode()  # never added to a scene
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(ijk_to_world(volume))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(1)
    if not storage.WriteData(node) or not path.is_file():
        raise SceneLayerError(f"could not write the label map to {path}")
    return path


class CompareJob:
    """One comparison: :meth:`prepare` writes the inputs and returns the command; :meth:`complete` reads the
    result into a table node; :meth:`cleanup` removes the temporary inputs."""

    def __init__(self, prior_volume: Any, prior_segmentation: Any, current_volume: Any, current_segmentation: Any,
                 output_dir: str | Path, scene: Any = None) -> None:
        self.scene = resolve_scene(scene)
        self.sides = (("prior", prior_volume, prior_segmentation), ("current", current_volume, current_segmentation))
        self.output_dir = Path(output_dir)
        self.work: Path | None = None

    def prepare(self, python: str | None = None, formats: tuple[str, ...] = ("json", "png", "pdf")) -> list[str]:
        """Write both sides (CT and labels) to a temporary folder and return the engine command."""
        if self.sides[0][1] is self.sides[1][1]:
            raise SceneLayerError("the prior and the current volume are the same node; pick the prior study")
        self.work = Path(tempfile.mkdtemp(prefix="pancreas-dints-compare-"))
        files: dict[str, Path] = {}
        try:
            for role, volume, segmentation in self.sides:
                labels = label_array(volume, segmentation, self.scene)
                files[f"{role}_ct"] = write_engine_input(volume, self.work / f"{role}.nrrd")
                files[f"{role}_labels"] = write_labels(volume, labels, self.work / f"{role}-labels.nrrd")
        except Exception:
            self.cleanup()
            raise
        return commands.compare_command(python or commands.python_executable(), files["prior_ct"],
                                        files["current_ct"], self.output_dir, prior_labels=files["prior_labels"],
                                        current_labels=files["current_labels"], formats=formats)

    def complete(self, table_node: Any = None) -> tuple[dict[str, Any], Any]:
        """(compare.json, a table node of the findings) after the engine succeeded."""
        try:
            result = json.loads((self.output_dir / COMPARE_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SceneLayerError(f"{self.output_dir / COMPARE_JSON}: cannot be read ({exc})") from None
        finally:
            self.cleanup()
        return result, compare_table(result, self.scene, table_node, reference=self.sides[1][1])

    def cleanup(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


def compare_rows(result: dict[str, Any]) -> list[list[Any]]:
    """One row per finding of compare.json (TABLE_COLUMNS)."""
    rows = []
    for n, f in enumerate(result.get("lesions") or [], start=1):
        def total(items: list[dict[str, Any]]) -> float | None:
            return round(sum(x["volume_ml"] for x in items), 4) if items else None

        def axial(items: list[dict[str, Any]]) -> float | None:
            return items[0]["longest_axial_diameter_mm"] if len(items) == 1 else None
        change = f.get("change") or {}
        where = (f["current"] or f["prior"])[0].get("location_part") or ""
        rows.append([str(n), f["status"], total(f["prior"]), total(f["current"]), change.get("volume_pct"),
                     axial(f["prior"]), axial(f["current"]), where,
                     f"{f['match'].get('by') or '-'} ({f['match'].get('confidence') or '-'})", f["tracking_uid"] or ""])
    return rows


def compare_table(result: dict[str, Any], scene: Any = None, table_node: Any = None, name: str = "follow-up",
                  reference: Any = None) -> Any:
    """Fill ``table_node`` (or a new table next to ``reference``) with :func:`compare_rows`."""
    scene = resolve_scene(scene)
    rows = compare_rows(result)
    arrays = []
    for index, column in enumerate(TABLE_COLUMNS):
        numeric = column.endswith(("_ml", "_mm", "_pct"))
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(column)
        for row in rows:
            value = row[index]
            array.InsertNextValue((float("nan") if value is None else float(value)) if numeric else str(value))
        arrays.append(array)
    return _filled_table(scene, table_node, name, reference, arrays)
