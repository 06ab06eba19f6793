"""Volume nodes <-> engine files: the engine's input file, and the confidence volume it writes.

Transform policy (one rule for the whole layer): the engine always sees the volume **in world coordinates**.
A linear parent transform is hardened into a temporary copy that is written to the input file (the user's node
and its transform are untouched, nothing is added to the scene); a non-linear parent transform is refused with a
message (hardening it would resample the CT, which the user should decide). Results come back in world
coordinates and are put into the input volume's frame (observing the same parent transform), so they overlay
the volume exactly and follow it when the transform changes. An ROI box is taken in world coordinates too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import slicer
import vtk

from PancreasDiNTSSceneLib.common import (
    SceneLayerError,
    ijk_to_world,
    node_to_world,
    place_next_to,
    resolve_scene,
)

CONFIDENCE_COLOR_NODE_NAME = "PancreasDiNTS confidence"
# A perceptual ramp (viridis anchors, 0-255 RGB): low confidence dark blue, high confidence yellow.
_CONFIDENCE_ANCHORS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def write_engine_input(volume: Any, path: str | Path) -> Path:
    """Write ``volume`` (a scalar volume node) in world coordinates to ``path`` (``.nrrd``, uncompressed).

    Raises SceneLayerError for a non-scalar volume, a volume without voxels, or a non-linear parent transform.
    """
    if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode"):
        raise SceneLayerError("select a scalar (CT) volume as input")
    image = volume.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise SceneLayerError(f"{volume.GetName()}: the volume has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise SceneLayerError(f"{volume.GetName()}: a CT has one value per voxel, this volume has "
                              f"{image.GetNumberOfScalarComponents()}")
    to_world = ijk_to_world(volume)  # refuses non-linear parent transforms
    # The hardened copy: the same voxels with the world geometry; never added to a scene.
    copy = slicer.vtkMRMLScalarVolumeNode()
    copy.SetName(volume.GetName())
    copy.SetAndObserveImageData(image)
    copy.SetIJKToRASMatrix(to_world)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    # slicer.util.exportNode does this through the application's IO manager (slicer.app), absent in slicer-core;
    # a storage node that is not in the scene writes the same file on both and leaves the scene unchanged.
    if not storage.WriteData(copy) or not path.is_file():
        raise SceneLayerError(f"could not write the input volume to {path}")
    return path


def world_to_frame(node_to_world_matrix: vtk.vtkMatrix4x4 | None, world_matrix: vtk.vtkMatrix4x4) -> vtk.vtkMatrix4x4:
    """``world_matrix`` (e.g. IJK-to-world of an engine output) expressed in a node's local frame."""
    out = vtk.vtkMatrix4x4()
    if node_to_world_matrix is None:
        raise SceneLayerError("the target's parent transform is not linear; harden or remove it first")
    inverse = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(node_to_world_matrix, inverse)
    vtk.vtkMatrix4x4.Multiply4x4(inverse, world_matrix, out)
    return out


def confidence_color_node(scene: Any = None) -> Any:
    """Our 256-entry confidence colour table (created once per scene, found by name afterwards).

    The desktop has Viridis among its default colour nodes (Colors module logic, from its ColorFiles); slicer-core
    loads no default colours, so the table is built here from anchors and is the same on both.
    """
    scene = resolve_scene(scene)
    existing = scene.GetFirstNodeByName(CONFIDENCE_COLOR_NODE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(CONFIDENCE_COLOR_NODE_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    table.SetHideFromEditors(False)
    segments = len(_CONFIDENCE_ANCHORS) - 1
    for index in range(256):
        position = index / 255 * segments
        lower = min(int(position), segments - 1)
        t = position - lower
        rgb = [(a + (b - a) * t) / 255 for a, b in zip(_CONFIDENCE_ANCHORS[lower], _CONFIDENCE_ANCHORS[lower + 1],
                                                        strict=True)]
        table.SetColor(index, f"{index}", *rgb, 1.0)
    scene.AddNode(table)
    return table


CONFIDENCE_OF_ATTRIBUTE = "PancreasDiNTS.confidenceOf"  # the input volume's node ID


def confidence_volumes_of(scene: Any, reference_volume: Any) -> list[Any]:
    """The confidence volumes loaded for ``reference_volume`` by earlier runs."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    found = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
    return [n for n in found if n.GetAttribute(CONFIDENCE_OF_ATTRIBUTE) == reference_volume.GetID()]


def load_confidence_volume(path: str | Path, reference_volume: Any = None, scene: Any = None,
                           name: str | None = None) -> Any:
    """Load the engine's uint8 confidence volume (0 = none .. 255 = certain) as a scalar volume node.

    Shown with the confidence colour table over the fixed range 0..255 (so two cases look alike). With
    ``reference_volume``, the node is put in the reference's frame (same parent transform, see the module
    docstring) and next to it in the subject hierarchy, and replaces the confidence volume an earlier run loaded
    for that reference (one per input: each is as large as the CT). Nothing is added to the scene, and nothing
    removed, when reading fails.
    """
    scene = resolve_scene(scene)
    path = Path(path)
    if not path.is_file():
        raise SceneLayerError(f"{path}: no confidence volume (this engine version may not write one)")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)
    # slicer.util.loadVolume goes through slicer.app's IO manager (desktop only); the storage node reads the same
    # file with the same vtkITK reader on both.
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise SceneLayerError(f"{path}: Slicer could not read the confidence volume")
    base = name or (f"{reference_volume.GetName()} confidence" if reference_volume is not None else "confidence")
    node.SetName(scene.GenerateUniqueName(base))
    if reference_volume is not None:
        frame = node_to_world(reference_volume)
        world = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(world)
        node.SetIJKToRASMatrix(world_to_frame(frame, world))
    if reference_volume is not None:
        for previous in confidence_volumes_of(scene, reference_volume):
            scene.RemoveNode(previous)
        node.SetAttribute(CONFIDENCE_OF_ATTRIBUTE, reference_volume.GetID())
    scene.AddNode(node)
    if reference_volume is not None:
        node.SetAndObserveTransformNodeID(reference_volume.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(confidence_color_node(scene).GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0, 255)
    if reference_volume is not None:
        place_next_to(scene, node, reference_volume)
    return node


def show_confidence(confidence_volume: Any, background_volume: Any = None, scene: Any = None,
                    opacity: float = 0.5) -> int:
    """Show ``confidence_volume`` over the CT in every slice view (foreground layer at ``opacity``, the CT as
    background); ``None`` hides it again (foreground cleared). Returns the number of slice views changed.

    Works on the slice composite nodes of the scene (what ``slicer.util.setSliceViewerLayers`` does in the
    desktop application), so it needs no application object."""
    scene = resolve_scene(scene)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    count = 0
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if background_volume is not None:
            composite.SetBackgroundVolumeID(background_volume.GetID())
        composite.SetForegroundVolumeID(confidence_volume.GetID() if confidence_volume is not None else None)
        composite.SetForegroundOpacity(float(opacity) if confidence_volume is not None else 0.0)
        count += 1
    return count
