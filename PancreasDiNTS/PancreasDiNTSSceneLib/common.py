"""Shared helpers of the scene layer: the scene argument, transforms to world, subject hierarchy items."""

from __future__ import annotations

from typing import Any

import slicer
import vtk


class SceneLayerError(RuntimeError):
    """A scene operation that cannot be done as asked (one line, says what to do)."""


def resolve_scene(scene: Any = None) -> Any:
    """``scene`` or the application's scene.

    slicer-core 5.13 has no ``slicer.mrmlScene`` attribute at all (the desktop application sets it), so tests
    always pass their own ``vtkMRMLScene``.
    """
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise SceneLayerError("no MRML scene: pass scene=vtkMRMLScene() outside the Slicer application")
    return scene


def node_to_world(node: Any) -> vtk.vtkMatrix4x4 | None:
    """The linear node-to-world matrix of a transformable node (identity without a parent transform).

    None when a parent transform is not linear (it cannot be expressed as a matrix).
    """
    matrix = vtk.vtkMatrix4x4()
    parent = node.GetParentTransformNode()
    if parent is None:
        return matrix
    if not parent.IsTransformToWorldLinear():
        return None
    parent.GetMatrixTransformToWorld(matrix)
    return matrix


def ijk_to_world(volume: Any) -> vtk.vtkMatrix4x4:
    """IJK-to-world of a volume node with its (linear) parent transforms applied."""
    to_world = node_to_world(volume)
    if to_world is None:
        raise SceneLayerError(
            f"{volume.GetName()}: its parent transform is not linear; harden it first (Data module, right-click "
            "the transform, 'Harden transform') or remove it")
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    out = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(to_world, ijk_to_ras, out)
    return out


def subject_hierarchy_item(scene: Any, node: Any) -> int:
    """The subject hierarchy item of ``node``, created under the scene item when it has none.

    The desktop application creates an item for every data node as it is added (the Qt subject hierarchy
    plugin logic); slicer-core 5.13 has no such plugin, so items are created here on demand.
    """
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def place_next_to(scene: Any, node: Any, reference: Any) -> None:
    """Put ``node`` under the same subject hierarchy parent (study, folder) as ``reference``."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = sh.GetItemParent(subject_hierarchy_item(scene, reference))
    sh.SetItemParent(subject_hierarchy_item(scene, node), parent or sh.GetSceneItemID())
