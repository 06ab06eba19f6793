"""Review of a batch case in a scene: load its CT and (corrected) segmentation, save a correction.

Shared by the desktop module (PancreasDiNTS.py) and the browser page (PancreasDiNTSReview): both load a case
folder with :func:`load_case` and save with :func:`save_corrected` / :func:`save_decision`, so a site can mix
them. What is not MRML (review.json, review.csv, Dice, the read-out, the manifest) is the engine's
``PancreasDiNTSLib.review``.

Voxel order: Slicer's reader may hold a NIfTI with an axis reversed (same physical grid, other index order).
The corrected labels are therefore exported onto a reference volume built from ``labels.nii.gz``'s own affine
and shape, so ``labels_corrected.nii.gz`` has exactly that file's grid and index order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import slicer
import vtk
from PancreasDiNTSLib.core import terminology
from PancreasDiNTSLib.review import batch, record
from vtk.util import numpy_support

from PancreasDiNTSSceneLib.common import SceneLayerError, resolve_scene
from PancreasDiNTSSceneLib.segmentations import (  # noqa: F401 - segment_mask: also reached from here
    ensure_segmentation_converters,
    export_one,
    import_segmentation,
    our_segment_ids,
    read_segmentation_file,
    segment_mask,
)


@dataclass
class SegmentMeta:
    """What Slicer's editing may change on a segment and the saved file must keep."""

    name: str
    color: tuple[float, float, float]
    label_value: int
    terminology: str
    name_auto: bool
    color_auto: bool


@dataclass
class LoadedCase:
    """A case in a scene: CT volume (None when it is gone or changed), segmentation, and what to show."""

    folder: Path
    volume: Any
    segmentation: Any
    corrected: bool
    read_only: str = ""  # why the case cannot be edited ("" = editable)
    metadata: dict[str, SegmentMeta] = field(default_factory=dict)
    centre_ras: list[float] | None = None
    readout: dict[str, Any] | None = None


def _matrix(affine: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(affine[r, c]))
    return m


def volume_from_array(data: np.ndarray, affine_ras: np.ndarray, name: str, scene: Any,
                      labelmap: bool = False) -> Any:
    """A volume node holding ``data`` (X, Y, Z) with IJK-to-RAS ``affine_ras`` (the engine's convention)."""
    array = np.asarray(data)
    if not labelmap and np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) \
            and np.array_equal(array, np.rint(array)) and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)  # HU: half the memory of float32, same values
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    flat = np.ascontiguousarray(array.transpose(2, 1, 0)).ravel()  # vtk: x fastest
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_matrix(affine_ras))
    node.CreateDefaultDisplayNodes()
    return node


def load_ct(folder: Path, scene: Any = None) -> tuple[Any, str]:
    """(CT volume node or None, why not): a file through Slicer's reader, a DICOM series through the engine's
    reader (the grid labels.nii.gz was written on)."""
    scene = resolve_scene(scene)
    source = batch.ct_source(folder)
    if source.problem or source.path is None:
        return None, source.problem or "no CT recorded"
    name = scene.GenerateUniqueName(folder.name)
    if source.kind == "folder":
        data, affine = batch.dicom_ct(source)
        return volume_from_array(data, affine, name, scene), ""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(source.path))
    storage.SetSingleFile(1)
    if not storage.ReadData(node) or node.GetImageData() is None:
        scene.RemoveNode(node)
        return None, f"Slicer could not read the CT {source.path}; read-only"
    node.CreateDefaultDisplayNodes()
    return node, ""


def segment_metadata(path: Path) -> dict[str, SegmentMeta]:
    """Name, colour, label value, terminology and auto-generated flags of our segments in a .seg.nrrd."""
    staging, node = read_segmentation_file(path)
    try:
        segmentation = node.GetSegmentation()
        out = {}
        for name, segment_id in our_segment_ids(segmentation).items():
            seg = segmentation.GetSegment(segment_id)
            tag = vtk.mutable("")
            seg.GetTag(seg.GetTerminologyEntryTagName(), tag)
            out[name] = SegmentMeta(name, tuple(seg.GetColor()), int(seg.GetLabelValue()), str(tag),
                                    bool(seg.GetNameAutoGenerated()), bool(seg.GetColorAutoGenerated()))
        return out
    finally:
        staging.Clear(1)


def load_case(folder: str | Path, scene: Any = None) -> LoadedCase:
    """Load a batch case: its CT and its segmentation (the corrected one when it exists), the read-out to show
    and where to centre the views. A foreign or changed .seg.nrrd raises SceneLayerError (one line)."""
    scene = resolve_scene(scene)
    folder = Path(folder)
    try:
        seg_path, corrected = batch.segmentation_to_open(folder)
        metadata = segment_metadata(seg_path)  # a corrected file carries the original's metadata
    except Exception as exc:  # InputError from the engine, SceneLayerError from the reader
        raise SceneLayerError(str(exc)) from None
    missing = [s.name for s in terminology.SEGMENTS if s.name not in metadata]
    if missing:
        raise SceneLayerError(f"{seg_path}: no segment named {', '.join(repr(m) for m in missing)}; not a "
                              "segmentation pancreas-dints wrote")
    volume, problem = load_ct(folder, scene)
    if volume is None:
        volume = _grid_volume(folder, scene)  # the labels' grid, so the segments still show without the CT
    segmentation = import_segmentation(seg_path, volume, None, scene)
    readout, _ = batch.case_readout_of(folder)
    return LoadedCase(folder, volume, segmentation, corrected, problem, metadata, batch.lesion_centre(readout),
                      readout)


def _grid_volume(folder: Path, scene: Any) -> Any:
    image = nib.load(str(folder / batch.LABELS))
    return volume_from_array(np.zeros(image.shape, np.int16), image.affine, f"{folder.name} (no CT)", scene)


def restore_metadata(segmentation_node: Any, metadata: dict[str, SegmentMeta]) -> None:
    """Re-apply the original names, colours, label values, terminology and auto-generated flags (editing turns
    flags on); segments are found by name."""
    segmentation = segmentation_node.GetSegmentation()
    for name, meta in metadata.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        if not segment_id:
            continue
        seg = segmentation.GetSegment(segment_id)
        seg.SetColor(*meta.color)
        seg.SetLabelValue(meta.label_value)
        seg.SetTag(seg.GetTerminologyEntryTagName(), meta.terminology)
        seg.SetNameAutoGenerated(meta.name_auto)
        seg.SetColorAutoGenerated(meta.color_auto)


def corrected_labels(segmentation_node: Any, labels_path: Path, scene: Any = None) -> np.ndarray:
    """Our segments as a label array (X, Y, Z) on exactly the grid and index order of ``labels_path``
    (pancreas 1, tumour 2; where both overlap the tumour wins, as in the engine's argmax labels)."""
    scene = resolve_scene(scene)
    image = nib.load(str(labels_path))
    shape = tuple(int(n) for n in image.shape[:3])
    reference = volume_from_array(np.zeros(shape, np.uint8), image.affine, "review reference", scene, True)
    out = np.zeros(shape, np.uint8)
    try:
        ids = our_segment_ids(segmentation_node.GetSegmentation())
        for info in terminology.SEGMENTS:
            if info.name in ids:
                mask = export_one(segmentation_node, ids[info.name], reference, scene)
                out[mask > 0] = info.label
    finally:
        scene.RemoveNode(reference)
    return out


def write_segmentation(segmentation_node: Any, dest: Path) -> None:
    """Write the node to a .seg.nrrd with Slicer's own writer (names, colours, terminology kept)."""
    ensure_segmentation_converters()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(dest))
    storage.SetUseCompression(1)
    if not storage.WriteData(segmentation_node):
        raise SceneLayerError(f"Slicer could not write {dest}")


def save_corrected(case: LoadedCase, reviewer: str, scene: Any = None) -> dict[str, Any]:
    """Save the case's (edited) segmentation as its correction: the original segment metadata re-applied, the
    labels on labels.nii.gz's grid, review.json and review.csv (engine). Returns review.json's content."""
    if case.read_only:
        raise SceneLayerError(f"{case.folder.name}: read-only ({case.read_only})")
    restore_metadata(case.segmentation, case.metadata)
    labels = corrected_labels(case.segmentation, case.folder / batch.LABELS, scene)
    done = record.save_review(case.folder, record.ReviewInput(
        "corrected", reviewer, labels=labels,
        write_segmentation=lambda dest: write_segmentation(case.segmentation, dest)))
    case.corrected = True
    case.readout = done.get("readout")
    return done


def save_decision(case: LoadedCase, status: str, reviewer: str, reason: str = "") -> dict[str, Any]:
    """Accept or reject (with a reason) the case as it was segmented."""
    return record.save_review(case.folder, record.ReviewInput(status, reviewer, reason))


def remove_nodes(nodes: list[Any], scene: Any = None) -> None:
    """Remove nodes a case added (their subject hierarchy items first, so the hierarchy stays consistent)."""
    scene = resolve_scene(scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in nodes:
        item = sh.GetItemByDataNode(node) if node is not None else 0
        if item:
            sh.RemoveItem(item, False, False)
    for node in nodes:
        if node is not None and node.GetScene() is scene:
            scene.RemoveNode(node)


def review_status(folder: str | Path) -> dict[str, Any]:
    """{"status", "reviewer", "time", "reason"} of a case folder ("not reviewed" when none is recorded)."""
    data = batch.read_review(Path(folder)) or {}
    return {"status": data.get("status", "not reviewed"), "reviewer": data.get("reviewer", ""),
            "time": data.get("time", ""), "reason": data.get("reason", "")}
