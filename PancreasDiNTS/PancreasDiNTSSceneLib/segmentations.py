"""The engine's ``segmentation.seg.nrrd`` -> a segmentation node (new or existing), replacing only our segments.

The file is read into a node of a private staging scene first, checked and moved into the input volume's frame
there; the user's scene is touched only once everything has been read and checked, so a failed import leaves it
as it was (no node added, no segment removed). Segment names, colours and terminology come from the engine's
one table (``PancreasDiNTSLib.core.terminology``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from PancreasDiNTSLib.core import terminology

from PancreasDiNTSSceneLib.common import SceneLayerError, node_to_world, place_next_to, resolve_scene
from PancreasDiNTSSceneLib.volumes import world_to_frame

LABELMAP = "Binary labelmap"


def ensure_segmentation_converters() -> None:
    """Register the standard segmentation converter rules when nobody has.

    The desktop's Segmentations module registers them at start-up; slicer-core 5.13 registers none, and without
    them a segmentation can neither create a binary labelmap nor copy one (vtkOrientedImageData is constructed
    through the rules).
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.ConstructRepresentationObjectByClass("vtkOrientedImageData") is not None:
        return
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
                 slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
                 slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule):
        factory.RegisterConverterRule(rule())


def read_segmentation_file(path: str | Path) -> tuple[Any, Any]:
    """(staging scene, segmentation node) holding the file's segments; the caller's scene is not touched.

    slicer.util.loadSegmentation needs slicer.app's IO manager (desktop only); the storage node reads the same
    file the same way on both.
    """
    ensure_segmentation_converters()
    staging = slicer.vtkMRMLScene()
    node = staging.AddNewNodeByClass("vtkMRMLSegmentationNode", "staging")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(node):
        raise SceneLayerError(f"{path}: Slicer could not read the segmentation file")
    return staging, node


def our_segment_ids(segmentation: Any) -> dict[str, str]:
    """Segment name -> ID for the engine's segments present in a vtkSegmentation."""
    out = {}
    for info in terminology.SEGMENTS:
        segment_id = segmentation.GetSegmentIdBySegmentName(info.name)
        if segment_id:
            out[info.name] = segment_id
    return out


def _labelmaps(segmentation: Any, segment_ids: list[str]) -> list[Any]:
    """The distinct binary labelmap objects of some segments (shared layers counted once)."""
    seen: dict[int, Any] = {}
    for segment_id in segment_ids:
        labelmap = segmentation.GetSegment(segment_id).GetRepresentation(LABELMAP)
        if labelmap is None:
            raise SceneLayerError(f"segment {segment_id!r} has no binary labelmap")
        seen.setdefault(id(labelmap), labelmap)
    return list(seen.values())


def _move_into_frame(segmentation: Any, segment_ids: list[str], frame_to_world: vtk.vtkMatrix4x4 | None) -> None:
    """Express labelmaps that are in world coordinates in the target node's frame (geometry only, no resampling)."""
    for labelmap in _labelmaps(segmentation, segment_ids):
        world = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(world)
        labelmap.SetImageToWorldMatrix(world_to_frame(frame_to_world, world))


def import_segmentation(path: str | Path, input_volume: Any, output_segmentation: Any = None,
                        scene: Any = None) -> Any:
    """Put the engine's segments from ``path`` into ``output_segmentation`` (or a new node) and return it.

    - Only the engine's segments ("Pancreas", "Pancreatic tumor") are replaced, in place (same position in the
      segment list); every other segment of an existing segmentation is kept as it was.
    - Each gets the engine's colour and terminology tag (SNOMED CT codes).
    - A new node is named after the input, observes the input's parent transform, takes the input as reference
      geometry (needed for DICOM SEG export) and sits next to the input in the subject hierarchy. An existing
      node keeps its transform, its subject hierarchy place, and its reference geometry when it has one.
    - The engine's file is in world coordinates (see volumes.py); the segments are moved into the target
      node's frame, so they overlay the input exactly.
    Raises SceneLayerError (scene unchanged) when the file is unreadable or lacks a segment.
    """
    scene = resolve_scene(scene)
    if input_volume is None:
        raise SceneLayerError("no input volume to attach the segmentation to")
    if output_segmentation is not None and not output_segmentation.IsA("vtkMRMLSegmentationNode"):
        raise SceneLayerError(f"{output_segmentation.GetName()} is not a segmentation node")
    staging, loaded = read_segmentation_file(path)
    try:
        source = loaded.GetSegmentation()
        source_ids = our_segment_ids(source)
        missing = [info.name for info in terminology.SEGMENTS if info.name not in source_ids]
        if missing:
            raise SceneLayerError(f"{path}: no segment named {', '.join(repr(m) for m in missing)}")
        frame_node = output_segmentation if output_segmentation is not None else input_volume
        _move_into_frame(source, list(source_ids.values()), node_to_world(frame_node))

        created = output_segmentation is None
        if created:
            target_node = slicer.vtkMRMLSegmentationNode()
            target_node.SetName(scene.GenerateUniqueName(f"{input_volume.GetName()} pancreas"))
        else:
            target_node = output_segmentation
        target = target_node.GetSegmentation()
        was_modifying = target_node.StartModify()
        try:
            for info in terminology.SEGMENTS:
                old_id = target.GetSegmentIdBySegmentName(info.name)
                index = target.GetSegmentIndex(old_id) if old_id else -1
                if old_id:
                    target.RemoveSegment(old_id)
                if not target.CopySegmentFromSegmentation(source, source_ids[info.name], False):
                    raise SceneLayerError(f"could not copy segment {info.name!r} into {target_node.GetName()}")
                new_id = target.GetSegmentIdBySegmentName(info.name)
                if index >= 0:
                    target.SetSegmentIndex(new_id, index)
                segment = target.GetSegment(new_id)
                segment.SetColor(*info.color_float)
                # SetTag works on every release; vtkSegment.SetTerminology exists only from Slicer 5.10.
                segment.SetTag(segment.GetTerminologyEntryTagName(), info.terminology_entry())
            if created or not _has_reference_geometry(target_node):
                target_node.SetReferenceImageGeometryParameterFromVolumeNode(input_volume)
        finally:
            target_node.EndModify(was_modifying)
    finally:
        staging.Clear(1)
    if created:
        scene.AddNode(target_node)
        target_node.CreateDefaultDisplayNodes()
        target_node.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
        place_next_to(scene, target_node, input_volume)
    return target_node


def _has_reference_geometry(node: Any) -> bool:
    """Whether a segmentation has a reference image geometry (GetConversionParameter logs an error when the
    parameter is absent, so the serialized list is asked first)."""
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    segmentation = node.GetSegmentation()
    if name not in segmentation.SerializeAllConversionParameters():
        return False
    return bool(segmentation.GetConversionParameter(name))


def terminology_codes(segment: Any) -> dict[str, str]:
    """The category, type and region code values of a segment's terminology tag, parsed by Slicer's terminology
    logic ({} when the tag is absent or does not parse)."""
    tag = vtk.mutable("")
    if not segment.GetTag(segment.GetTerminologyEntryTagName(), tag):
        return {}
    entry = slicer.vtkSlicerTerminologyEntry()
    # DeserializeTerminologyEntry is a static parser: it needs no loaded terminology files (slicer-core ships none).
    if not slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(str(tag), entry):
        return {}
    return {
        "context": entry.GetTerminologyContextName() or "",
        "category": entry.GetCategoryObject().GetCodeValue() or "",
        "type": entry.GetTypeObject().GetCodeValue() or "",
        "region": entry.GetRegionObject().GetCodeValue() or "",
    }


def set_show_3d(segmentation_node: Any, show: bool) -> None:
    """Show or hide the segments as surfaces in 3D views."""
    if segmentation_node is None:
        return
    ensure_segmentation_converters()
    if show:
        segmentation_node.CreateClosedSurfaceRepresentation()
    else:
        segmentation_node.RemoveClosedSurfaceRepresentation()


def segment_mask(segmentation_node: Any, segment_id: str, reference: Any, scene: Any = None) -> np.ndarray:
    """One segment as an (X, Y, Z) array on exactly ``reference``'s grid (a volume node)."""
    return export_one(segmentation_node, segment_id, reference, resolve_scene(scene))


def export_one(segmentation_node: Any, segment_id: str, reference: Any, scene: Any) -> np.ndarray:
    names = vtk.vtkStringArray()
    names.InsertNextValue(segment_id)
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segment export")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, names, labelmap, reference)
        got, want = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        labelmap.GetIJKToRASMatrix(got)
        reference.GetIJKToRASMatrix(want)
        same = all(abs(got.GetElement(r, c) - want.GetElement(r, c)) < 1e-4 for r in range(4) for c in range(4))
        dims = labelmap.GetImageData().GetDimensions() if labelmap.GetImageData() else None
        if not ok or not same or dims != reference.GetImageData().GetDimensions():
            raise SceneLayerError("could not export the segments onto the grid of the reference volume")
        return np.array(slicer.util.arrayFromVolume(labelmap)).transpose(2, 1, 0)
    finally:
        scene.RemoveNode(labelmap)
        for i in reversed(range(scene.GetNumberOfNodes())):  # the export's display node and colour tables
            node = scene.GetNthNode(i)
            if node.GetID() not in before and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                scene.RemoveNode(node)
