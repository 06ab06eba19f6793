"""Compare with a prior study, scene side, with the real slicer-core and the real engine in a child process: two
time points of a synthetic follow-up pair loaded as volumes and segmentations (the current under a linear
transform), written by CompareJob, compared by `pancreas-dints compare`, read back into a table node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_scene_support as support

slicer = support.import_slicer_core()

import vtk  # noqa: E402
from PancreasDiNTSLib.bridge import commands  # noqa: E402
from PancreasDiNTSLib.cli import main  # noqa: E402
from PancreasDiNTSLib.core import terminology  # noqa: E402
from PancreasDiNTSSceneLib import CompareJob, SceneLayerError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.slicer, pytest.mark.subprocess]


def scene_nodes(scene) -> list[str]:
    """The scene's nodes (the subject hierarchy singleton, made on first use by any call, aside)."""
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())
            if not scene.GetNthNode(i).IsA("vtkMRMLSubjectHierarchyNode")]


def load_side(scene, folder: Path, role: str, transform=None):
    volume = support.load_volume(scene, folder / f"{role}-ct.nii.gz", f"{role} CT")
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{role} labels")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(folder / role / "labels.nii.gz"))
    assert storage.ReadData(labels)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{role} segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    scene.RemoveNode(labels)
    seg = segmentation.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        segment.SetName(terminology.segment_by_label(int(segment.GetLabelValue())).name)
    if transform is not None:
        volume.SetAndObserveTransformNodeID(transform.GetID())
        segmentation.SetAndObserveTransformNodeID(transform.GetID())
    return volume, segmentation


def test_compare_with_a_prior_study(tmp_path: Path) -> None:
    pair = tmp_path / "pair"
    assert main(["make-phantoms", "--followup", "--seed", "3", "-o", str(pair)]) == 0
    scene = slicer.vtkMRMLScene()
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    matrix.SetElement(2, 3, -12.0)
    shift.SetMatrixTransformToParent(matrix)
    prior = load_side(scene, pair, "prior")
    current = load_side(scene, pair, "current", shift)
    nodes_before = scene_nodes(scene)
    with pytest.raises(SceneLayerError, match="same node"):
        CompareJob(prior[0], prior[1], prior[0], prior[1], tmp_path / "x", scene).prepare()
    job = CompareJob(*prior, *current, tmp_path / "out", scene)
    cmd = job.prepare(python=sys.executable, formats=("json",))
    assert job.work is not None and sorted(p.name for p in job.work.iterdir()) == [
        "current-labels.nrrd", "current.nrrd", "prior-labels.nrrd", "prior.nrrd"]
    assert scene_nodes(scene) == nodes_before  # writing the inputs changed nothing
    env = {**os.environ, **commands.engine_environment(os.environ.get("PYTHONPATH"))}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result, table = job.complete()
    assert job.work is None  # the temporary inputs are gone
    statuses = sorted(f["status"] for f in result["lesions"])
    assert statuses == ["grown", "new", "no longer seen", "shrunk", "split"]
    assert result["response"]["recist"]["category"] == "PD"
    # the current's transform moved it 25 mm right and 12 mm down: the alignment carries that (world coordinates)
    m = np.array(result["alignment"]["prior_to_current_ras"])
    truth = np.array(json.loads((pair / "truth.json").read_text())["motion"]["prior_to_current_ras"])
    centre = np.array(result["lesions"][0]["prior"][0]["centroid_ras"] + [1.0])
    assert np.linalg.norm((m @ centre)[:3] - (truth @ centre)[:3] - [25.0, 0.0, -12.0]) < 2.0
    assert table.GetNumberOfRows() == 5 and table.GetTable().GetColumnByName("status") is not None
    assert scene_nodes(scene)[:-1] == nodes_before and len(scene_nodes(scene)) == len(nodes_before) + 1  # a table
