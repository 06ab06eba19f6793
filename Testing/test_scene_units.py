"""The scene layer's parts that need no engine run, with the real slicer-core: the input file and the transform
policy, the ROI box (rotated, under a transform), the confidence volume, the report table and line, and the
torch-free window/time estimate against MONAI's own count."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import test_scene_support as support
from support import EXAMPLE_CT_SM, require

slicer = support.import_slicer_core()

import PancreasDiNTSSceneLib as scenelib  # noqa: E402
import vtk  # noqa: E402
from PancreasDiNTSLib.bridge import estimate  # noqa: E402


@pytest.fixture
def scene_and_volume(tmp_path):
    require(EXAMPLE_CT_SM)
    files = support.make_variants(EXAMPLE_CT_SM, tmp_path / "files")
    scene = slicer.vtkMRMLScene()
    return scene, support.load_volume(scene, files["oblique"], "ct"), files


def test_input_file_is_the_volume_in_world_coordinates_and_the_scene_is_untouched(scene_and_volume, tmp_path):
    import nibabel as nib

    scene, volume, files = scene_and_volume
    support.add_parent_transform(scene, volume)
    nodes = scene.GetNumberOfNodes()
    transform_id = volume.GetTransformNodeID()
    path = scenelib.write_engine_input(volume, tmp_path / "input.nrrd")
    assert scene.GetNumberOfNodes() == nodes and volume.GetTransformNodeID() == transform_id
    written = support.load_volume(slicer.vtkMRMLScene(), path, "written")
    assert np.allclose(support.world_matrix(written), support.world_matrix(volume), atol=1e-4)
    assert np.array_equal(slicer.util.arrayFromVolume(written), slicer.util.arrayFromVolume(volume))
    # and it is the original file's voxels in the original file's world, moved by the transform
    source = nib.load(str(files["oblique"]))
    assert not np.allclose(support.world_matrix(written)[:3, 3], source.affine[:3, 3], atol=1.0)


def test_non_linear_parent_transform_is_refused(scene_and_volume, tmp_path):
    scene, volume, _ = scene_and_volume
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    volume.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(scenelib.SceneLayerError, match="not linear"):
        scenelib.write_engine_input(volume, tmp_path / "input.nrrd")
    assert not (tmp_path / "input.nrrd").exists()


def test_roi_box_encloses_a_rotated_roi_under_a_transform():
    scene = slicer.vtkMRMLScene()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetCenter(10.0, 20.0, 30.0)
    roi.SetRadiusXYZ(5.0, 10.0, 15.0)
    assert scenelib.roi_box_ras(roi) == pytest.approx((5, 10, 15, 15, 30, 45))
    rotation = vtk.vtkTransform()
    rotation.Translate(10, 20, 30)
    rotation.RotateZ(30)
    rotation.Translate(-10, -20, -30)
    rotated = vtk.vtkMatrix4x4()  # the object-to-node matrix holds the centre too: rotate it about the centre
    vtk.vtkMatrix4x4.Multiply4x4(rotation.GetMatrix(), roi.GetObjectToNodeMatrix(), rotated)
    roi.SetAndObserveObjectToNodeMatrix(rotated)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    half_x, half_y = 5 * c + 10 * s, 5 * s + 10 * c
    assert scenelib.roi_box_ras(roi) == pytest.approx((10 - half_x, 20 - half_y, 15, 10 + half_x, 20 + half_y, 45),
                                                     abs=1e-6)
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(2, 3, 100.0)
    shift.SetMatrixTransformToParent(matrix)
    roi.SetAndObserveTransformNodeID(shift.GetID())
    box = scenelib.roi_box_ras(roi)
    assert box[2] == pytest.approx(115) and box[5] == pytest.approx(145)
    assert scenelib.roi_argument(box).count(",") == 5


def test_confidence_volume_on_the_input_grid(scene_and_volume, tmp_path):
    """A uint8 confidence NIfTI on the input grid (the engine will write one) loads onto the volume's voxels, in
    its frame, with the 0..255 colour map, next to it in the subject hierarchy."""
    import nibabel as nib

    scene, volume, files = scene_and_volume
    support.add_parent_transform(scene, volume)
    # On the input's grid in world coordinates, as the engine writes its outputs (the hardened input's grid).
    shape = slicer.util.arrayFromVolume(volume).shape[::-1]  # (I, J, K)
    confidence = (np.arange(np.prod(shape)) % 171 + 85).astype(np.uint8).reshape(shape)
    world = support.world_matrix(volume)
    image = nib.Nifti1Image(confidence, world)
    image.set_sform(world, 1)
    image.set_qform(world, 1)
    nib.save(image, str(tmp_path / "confidence.nii.gz"))
    nodes = scene.GetNumberOfNodes()
    node = scenelib.load_confidence_volume(tmp_path / "confidence.nii.gz", volume, scene)
    assert scene.GetNumberOfNodes() > nodes and node.GetTransformNodeID() == volume.GetTransformNodeID()
    exported = {"world": None}
    labels = np.array(slicer.util.arrayFromVolume(node))
    k, j, i = np.meshgrid(*[np.arange(n) for n in labels.shape], indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    exported["world"] = (ijk @ support.world_matrix(node).T)[..., :3]
    assert np.array_equal(labels, support.nifti_labels_at(tmp_path / "confidence.nii.gz", exported))
    assert np.allclose(support.world_matrix(node), support.world_matrix(volume), atol=1e-4)
    display = node.GetDisplayNode()
    colors = scene.GetNodeByID(display.GetColorNodeID())
    assert colors.GetName() == scenelib.CONFIDENCE_COLOR_NODE_NAME and colors.GetNumberOfColors() == 256
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((255, 127.5))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == sh.GetItemParent(sh.GetItemByDataNode(volume))
    with pytest.raises(scenelib.SceneLayerError):
        scenelib.load_confidence_volume(tmp_path / "absent.nii.gz", volume, scene)


def test_report_rows_take_every_per_segment_number_in_either_shape():
    base = {"labels": {"0": "background", "1": "Pancreas", "2": "Pancreatic tumor"},
            "voxels": {"Pancreas": 10, "Pancreatic tumor": 2}, "volumes_ml": {"Pancreas": 1.5, "Pancreatic tumor": 0.25},
            "timings_s": {"infer": 3.0}, "device": "cpu"}
    columns, rows = scenelib.report_rows(base)
    assert columns == ["Segment", "voxels", "volumes_ml"]
    assert rows == [["Pancreas", 10.0, 1.5], ["Pancreatic tumor", 2.0, 0.25]]
    by_segment = dict(base, measurements={"Pancreatic tumor": {"diameter_mm": 12.0, "ends": [[0, 0, 0], [1, 2, 3]],
                                                               "flag": True}})
    by_metric = dict(base, measurements={"diameter_mm": {"Pancreatic tumor": 12.0}})
    for report in (by_segment, by_metric):
        columns, rows = scenelib.report_rows(report)
        assert columns[-1] == "diameter_mm" and rows[0][-1] is None and rows[1][-1] == 12.0
    assert scenelib.report.report_lines(by_segment) == [("Pancreatic tumor", "ends", [[0, 0, 0], [1, 2, 3]])]
    assert scenelib.report_rows({}) == (["Segment"], [["Pancreas"], ["Pancreatic tumor"]])
    scene = slicer.vtkMRMLScene()
    table = scenelib.report_table(by_metric, scene)
    assert table.GetNumberOfRows() == 2 and table.GetColumnName(3) == "diameter_mm"
    assert math.isnan(float(table.GetCellText(0, 3))) and float(table.GetCellText(1, 3)) == 12.0
    again = scenelib.report_table(base, scene, table_node=table)
    assert again is table and table.GetNumberOfColumns() == 3 and scene.GetNumberOfNodes() == 1


def test_line_between_two_ras_points():
    scene = slicer.vtkMRMLScene()
    line = scenelib.add_line([[0, 0, 0], [3, 4, 0]], "diameter", scene)
    assert line.GetLineLengthWorld() == pytest.approx(5.0)
    assert scenelib.add_line([[1, 1, 1], [1, 1, 2]], scene=scene, line_node=line) is line
    assert line.GetLineLengthWorld() == pytest.approx(1.0) and line.GetNumberOfControlPoints() == 2
    with pytest.raises(scenelib.SceneLayerError):
        scenelib.add_line([[0, 0, 0]], scene=scene)


def test_window_count_equals_monai_and_estimates_shrink_with_the_roi():
    from PancreasDiNTSLib.inference.segmenter import count_windows

    rng = random.Random(0)
    for _ in range(200):
        shape = tuple(rng.randint(8, 300) for _ in range(3))
        roi = tuple(rng.choice((48, 64, 96)) for _ in range(3))
        overlap = rng.choice((0.25, 0.5, 0.625))
        assert estimate.count_windows(shape, roi, overlap) == count_windows(shape, roi, overlap)
    spec = estimate.WindowSpec()
    bounds = [0, 366, 0, 303, 0, 336]  # the real example CT's extent
    full = estimate.estimate_windows(bounds, spec)
    assert full == count_windows((366, 303, 336), (96, 96, 96), 0.625)
    box = (150, 100, 150, 250, 200, 250)
    grid, local = (estimate.estimate_windows(bounds, spec, box, mode) for mode in ("grid", "local"))
    assert local < grid < full
    line = estimate.describe_estimate(grid, None)
    assert f"{grid} windows" in line and "typical" in line
    assert "measured here" in estimate.describe_estimate(grid, 2.0)
    assert estimate.seconds_per_window({"timings_s": {"infer": 8.0}, "inference": {"windows": {"computed": 4}}}) == 2.0
    assert estimate.status_line("ct: infer", 30.0, 0.25) == "ct: infer - 30 s elapsed, about 1:30 left"
    assert estimate.status_line("Done", 75.0, 1.0) == "Done - 1:15 elapsed"


def test_estimate_line_for_a_volume_and_an_roi(scene_and_volume):
    scene, volume, _ = scene_and_volume
    roi = support.roi_in_volume(scene, volume, rotated=True)
    model = None  # the released bundle's window settings
    whole = scenelib.roi.estimate_line(volume, model)
    inside = scenelib.roi.estimate_line(volume, model, roi, "local", seconds_per_window=1.5)
    assert whole.startswith("whole CT: ") and "windows" in whole
    assert inside.startswith("inside roi (local): ") and "1.5 s per window, measured here" in inside


def test_the_precision_choice_reaches_the_engine_command_and_the_server_query(tmp_path):
    """The panel's precision (issue 36) is part of the scene layer's one description of a run: ``segment
    --precision X`` in the local command (none for auto, the engine's default), ``precision`` in a server job's
    query (read back as the server reads it); bf16 with exact speed, or an unknown value, is refused in one line
    before the input is written."""
    from PancreasDiNTSLib.core.request import SegmentRequest

    scene = slicer.vtkMRMLScene()
    volume = support.load_volume(scene, require(EXAMPLE_CT_SM), "ct")
    model = tmp_path / "model"
    model.mkdir()
    for precision in ("auto", "fp32", "bf16"):
        job = scenelib.SegmentationJob(volume, model, None, device="cpu", scene=scene, precision=precision,
                                       python="python", work_dir=tmp_path / precision)
        command = job.prepare()
        assert command[:4] == ["python", "-m", "PancreasDiNTSLib.cli", "segment"]
        flag = [command[i + 1] for i, word in enumerate(command) if word == "--precision"]
        assert flag == ([] if precision == "auto" else [precision]), command
        assert (tmp_path / precision / "input.nrrd").is_file()
        remote = scenelib.RemoteSegmentationJob(volume, "", None, scene=scene, precision=precision)
        query = remote.request().to_query()
        assert query.get("precision") == (None if precision == "auto" else precision)
        assert SegmentRequest.from_query(query).precision == precision  # what the server's worker runs
    default = scenelib.SegmentationJob(volume, model, None, scene=scene, python="python", work_dir=tmp_path / "d")
    assert default.precision == "auto" and "--precision" not in default.prepare()
    for mode, precision, words in (("exact", "bf16", "--mode exact"), ("fast", "fp16", "fp16")):
        refused = scenelib.SegmentationJob(volume, model, None, scene=scene, mode=mode, precision=precision,
                                           work_dir=tmp_path / f"{mode}-{precision}")
        with pytest.raises(scenelib.SceneLayerError, match=words) as error:
            refused.prepare()
        assert "\n" not in str(error.value) and not (tmp_path / f"{mode}-{precision}").exists()
