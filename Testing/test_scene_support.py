"""Helpers of the scene-layer tests (test_scene_*.py): slicer-core import, CT variants, exports compared in RAS.

No tests here; kept under a test_scene_ name so the scene-layer test files are one family.
"""

from __future__ import annotations

import math
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def import_slicer_core():
    """The real ``slicer`` package of PyPI's slicer-core, with the scene layer importable.

    slicer-core publishes one wheel, CPython 3.11 on Linux x86_64; elsewhere the tests are skipped with that
    reason. Where the wheel exists, a missing install is an error (make test installs the ``slicer`` extra).
    """
    wheel_exists = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64") \
        and sys.version_info[:2] == (3, 11)
    if not wheel_exists:
        pytest.skip(f"slicer-core has no wheel for {platform.system()} {platform.machine()} Python "
                    f"{platform.python_version()} (only CPython 3.11, Linux x86_64)", allow_module_level=True)
    import slicer

    assert hasattr(slicer, "vtkMRMLScene"), (
        "the installed 'slicer' is not slicer-core: pip install -e '.[test,slicer]' (make test does)")
    if str(REPO / "PancreasDiNTS") not in sys.path:
        sys.path.insert(0, str(REPO / "PancreasDiNTS"))  # the scene layer sits next to the engine package
    return slicer


# ---------------------------------------------------------------------------------------------- CT variants


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def make_variants(source: Path, folder: Path) -> dict[str, Path]:
    """A 40 x 40 x 12 crop of a real CT (seconds to segment) and copies with other geometries:

    - ``oblique``: direction rotated 20 degrees about S and 10 degrees about R;
    - ``lps``: voxel axes pointing left and posterior (data flipped, same anatomy in world space);
    - ``negative_slice_step``: the third axis runs inferior (data flipped along it).
    """
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    image = nib.load(str(source))
    data = np.asarray(image.dataobj)[40:80, 30:70, 8:20]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ [40, 30, 8] + image.affine[:3, 3]
    shape = np.array(data.shape)

    def save(name, array, aff):
        img = nib.Nifti1Image(np.ascontiguousarray(array), aff)
        img.set_sform(aff, 1)
        img.set_qform(aff, 1)
        nib.save(img, str(folder / f"{name}.nii.gz"))
        return folder / f"{name}.nii.gz"

    def flipped(axes):
        aff = affine.copy()
        for a in axes:  # index i -> n-1-i: the column changes sign, the origin moves to the far end
            aff[:3, 3] = aff[:3, 3] + aff[:3, a] * (shape[a] - 1)
            aff[:3, a] = -aff[:3, a]
        return np.flip(data, axis=axes), aff

    oblique = affine.copy()
    oblique[:3, :3] = _rotation(2, 20) @ _rotation(0, 10) @ affine[:3, :3]
    return {
        "ras": save("ras", data, affine),
        "oblique": save("oblique", data, oblique),
        "lps": save("lps", *flipped((0, 1))),
        "negative_slice_step": save("negative_slice_step", *flipped((2,))),
    }


def load_volume(scene, path: Path, name: str):
    """A scalar volume node read by Slicer's own reader (archetype storage node, as Add Data does)."""
    import slicer

    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(volume), f"Slicer could not read {path}"
    volume.SetAndObserveStorageNodeID(storage.GetID())
    volume.CreateDefaultDisplayNodes()
    assert isinstance(volume, slicer.vtkMRMLScalarVolumeNode)
    return volume


def add_parent_transform(scene, node) -> None:
    """A rigid parent transform (25 degrees about A, 30 mm shift) on ``node``."""
    import vtk

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    rotation = _rotation(1, 25)
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, rotation[r, c])
    matrix.SetElement(0, 3, 30.0)
    matrix.SetElement(2, 3, -12.0)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())


# ---------------------------------------------------------------------------------------------- comparisons


def world_matrix(node) -> np.ndarray:
    """IJK-to-world (parent transforms applied) of a volume node, as numpy."""
    from PancreasDiNTSSceneLib.common import ijk_to_world

    m = ijk_to_world(node)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def export_labels(scene, segmentation_node, volume) -> dict:
    """Our two segments exported onto ``volume`` with the real ExportSegmentsToLabelmapNode (label 1 pancreas,
    2 tumour): the label array (K, J, I) and the world position of every voxel (K, J, I, 3)."""
    import slicer
    import vtk
    from PancreasDiNTSSceneLib.segmentations import our_segment_ids

    ids = our_segment_ids(segmentation_node.GetSegmentation())
    names = vtk.vtkStringArray()
    for info_name in ("Pancreas", "Pancreatic tumor"):
        names.InsertNextValue(ids[info_name])
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, names, labelmap,
                                                                               volume)
    assert ok, "ExportSegmentsToLabelmapNode failed"
    labels = np.array(slicer.util.arrayFromVolume(labelmap))
    m = world_matrix(labelmap)
    scene.RemoveNode(labelmap)
    k, j, i = np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    world = (ijk @ m.T)[..., :3]
    return {"labels": labels, "world": world, "matrix": m}


def nifti_labels_at(path: Path, exported: dict) -> np.ndarray:
    """The engine's labels.nii.gz sampled at the exported voxels' world positions (they must be its voxels)."""
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    inverse = np.linalg.inv(image.affine)
    world = exported["world"]
    index = world @ inverse[:3, :3].T + inverse[:3, 3]
    rounded = np.rint(index)
    assert np.abs(index - rounded).max() < 1e-3, "the segmentation's grid is not the engine's grid"
    rounded = rounded.astype(int)
    assert rounded.min() >= 0 and all(rounded[..., a].max() < data.shape[a] for a in range(3)), \
        "the segmentation lies outside the engine's grid"
    return data[rounded[..., 0], rounded[..., 1], rounded[..., 2]]


# ---------------------------------------------------------------------------------------------- scene content


def segmentation_with_liver(scene, volume):
    """An existing segmentation with an unrelated, non-empty segment "Liver" (user colour)."""
    import slicer
    import vtk
    from PancreasDiNTSSceneLib.segmentations import ensure_segmentation_converters
    from vtk.util import numpy_support

    ensure_segmentation_converters()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = node.GetSegmentation().AddEmptySegment("liver", "Liver", [0.1, 0.2, 0.3])
    array = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint8)  # (K, J, I)
    array[2:6, 5:20, 5:15] = 1
    # slicer.util.updateSegmentBinaryLabelmapFromArray needs slicer.modules (desktop only): build the
    # oriented image directly on the volume's grid.
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(array.ravel()))
    node.GetSegmentation().GetSegment(segment_id).AddRepresentation("Binary labelmap", image)
    return node


def segment_fingerprint(node, name: str):
    """(id, index, colour, terminology tag, extent, label checksum) of a segment, or None when absent."""
    import vtk
    from vtk.util import numpy_support

    segmentation = node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    if not segment_id:
        return None
    segment = segmentation.GetSegment(segment_id)
    tag = vtk.mutable("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    labelmap = segment.GetRepresentation("Binary labelmap")
    scalars = labelmap.GetPointData().GetScalars()
    values = numpy_support.vtk_to_numpy(scalars) if scalars is not None else np.zeros(0)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    own = int((values == segment.GetLabelValue()).sum())
    return (segment_id, segmentation.GetSegmentIndex(segment_id), tuple(round(c, 4) for c in segment.GetColor()),
            str(tag), tuple(labelmap.GetExtent()), own, tuple(round(matrix.GetElement(r, c), 4)
                                                              for r in range(3) for c in range(4)))


def seg_without_tumor(path: Path, folder: Path) -> Path:
    """A copy of an engine .seg.nrrd without the tumour segment (an import must refuse it)."""
    import slicerio

    seg = slicerio.read_segmentation(str(path))
    seg["segments"] = [s for s in seg["segments"] if s["name"] != "Pancreatic tumor"]
    dest = folder / "no_tumor.seg.nrrd"
    slicerio.write_segmentation(str(dest), seg)
    return dest


def roi_in_volume(scene, volume, rotated: bool):
    """A markups ROI around the middle of ``volume`` (30 x 36 x 18 mm), optionally rotated 30 degrees about S."""
    import vtk

    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    center = [(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetCenter(*center)
    roi.SetRadiusXYZ(15.0, 18.0, 9.0)
    if rotated:
        transform = vtk.vtkTransform()
        transform.Translate(*center)
        transform.RotateZ(30)
        transform.Translate(*[-c for c in center])
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy(roi.GetObjectToNodeMatrix())
        vtk.vtkMatrix4x4.Multiply4x4(transform.GetMatrix(), matrix, matrix)
        roi.SetAndObserveObjectToNodeMatrix(matrix)
    return roi
