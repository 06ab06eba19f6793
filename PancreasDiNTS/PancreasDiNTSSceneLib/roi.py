"""A markups ROI node -> the engine's ``--roi X0,Y0,Z0,X1,Y1,Z1`` box in world RAS millimetres."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from PancreasDiNTSLib.bridge import estimate

from PancreasDiNTSSceneLib.common import SceneLayerError, ijk_to_world


def roi_box_ras(roi_node: Any) -> tuple[float, float, float, float, float, float]:
    """The axis-aligned world box (x0, y0, z0, x1, y1, z1) enclosing the ROI, rotated or under a transform.

    The ROI's eight corners (its object bounds) are taken through its object-to-world matrix (the ROI's own
    rotation and its linear parent transforms) and the box encloses them. The engine's input is written in world
    coordinates too (volumes.py), so the box and the CT agree.
    """
    if roi_node is None or not roi_node.IsA("vtkMRMLMarkupsROINode"):
        raise SceneLayerError("select a markups ROI (vtkMRMLMarkupsROINode)")
    parent = roi_node.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        raise SceneLayerError(f"{roi_node.GetName()}: its parent transform is not linear; harden it first")
    bounds = [0.0] * 6
    roi_node.GetObjectBounds(bounds)
    matrix = roi_node.GetObjectToWorldMatrix()
    corners = []
    for x, y, z in itertools.product(bounds[0:2], bounds[2:4], bounds[4:6]):
        corners.append(matrix.MultiplyPoint((x, y, z, 1.0))[:3])
    low = [min(c[a] for c in corners) for a in range(3)]
    high = [max(c[a] for c in corners) for a in range(3)]
    if any(h - lo <= 0 for lo, h in zip(low, high, strict=True)):
        raise SceneLayerError(f"{roi_node.GetName()}: the ROI has no volume")
    return (*low, *high)  # type: ignore[return-value]


def roi_argument(box: Sequence[float]) -> str:
    """The ``--roi`` value for a box (six numbers, two opposite corners), rounded to 1/1000 mm."""
    if len(box) != 6:
        raise ValueError(f"an ROI box has six numbers, not {len(box)}")
    return ",".join(f"{float(v):.3f}" for v in box)


def volume_world_bounds(volume: Any) -> list[float]:
    """World bounds (x0, x1, y0, y1, z0, z1) of a volume's voxel centres, parent transforms applied."""
    matrix = ijk_to_world(volume)
    dims = volume.GetImageData().GetDimensions()
    corners = [matrix.MultiplyPoint((i, j, k, 1.0))[:3]
               for i, j, k in itertools.product((0, dims[0] - 1), (0, dims[1] - 1), (0, dims[2] - 1))]
    return [f(c[a] for c in corners) for a in range(3) for f in (min, max)]


def estimate_line(volume: Any, model: Any, roi_node: Any = None, roi_mode: str = "grid",
                  seconds_per_window: float | None = None, region: str = "whole") -> str:
    """One line before a run: sliding windows and time on this computer (see PancreasDiNTSLib.bridge.estimate).
    ``region="auto"`` (no ROI node): the automatic pancreas region's estimate, the default on a CPU."""
    if volume is None or volume.GetImageData() is None:
        raise SceneLayerError("select an input CT volume")
    spec = estimate.window_spec(model)
    if roi_node is None and region == "auto":
        auto = estimate.estimate_auto(volume_world_bounds(volume), spec)
        return ("automatic pancreas region (the default on a CPU): "
                f"{estimate.describe_auto_estimate(auto, seconds_per_window)}")
    box = roi_box_ras(roi_node) if roi_node is not None else None
    try:
        windows = estimate.estimate_windows(volume_world_bounds(volume), spec, box, roi_mode)
    except ValueError as exc:
        raise SceneLayerError(f"{roi_node.GetName() if roi_node else 'ROI'}: {exc}") from exc
    where = f"inside {roi_node.GetName()} ({roi_mode})" if roi_node is not None else "whole CT"
    return f"{where}: {estimate.describe_estimate(windows, seconds_per_window)}"


def labels_inside_and_outside(segmentation_node: Any, roi_node: Any, reference_volume: Any,
                              scene: Any = None) -> tuple[int, int]:
    """(labelled voxels inside, outside) the ROI's box: the segments exported onto ``reference_volume`` with
    Slicer's ExportSegmentsToLabelmapNode, voxel centres compared with the box in world coordinates (the
    module's self-test; the same check as Testing/test_scene_engine.py)."""
    import numpy as np
    import slicer
    import vtk

    from PancreasDiNTSSceneLib.common import resolve_scene

    scene = resolve_scene(scene)
    box = np.array(roi_box_ras(roi_node))
    ids = vtk.vtkStringArray()
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        ids.InsertNextValue(segmentation.GetNthSegmentID(index))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_volume):
            raise SceneLayerError("could not export the segments")
        labels = slicer.util.arrayFromVolume(labelmap)
        matrix = ijk_to_world(labelmap)
    finally:
        scene.RemoveNode(labelmap)
    k, j, i = np.nonzero(labels)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    world = (np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float) @ m.T)[:, :3]
    inside = np.all((world >= box[:3] - 1e-3) & (world <= box[3:] + 1e-3), axis=1)
    return int(inside.sum()), int((~inside).sum())
