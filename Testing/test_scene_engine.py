"""The scene layer (PancreasDiNTSSceneLib) with the REAL Slicer MRML classes (PyPI slicer-core) and the REAL
engine in a subprocess: volume node -> input file -> ``python -m PancreasDiNTSLib.cli segment`` -> import.

The imported segments are exported back onto the input volume with the real
``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode`` and compared with the engine's own
``labels.nii.gz`` voxel by voxel through world (RAS) coordinates (Slicer may order IJK differently from the
file): they must be 100 % equal, on a crop of a real CT and on copies with an oblique direction, LPS axes, a
negative slice step and a linear parent transform. The same single engine run also writes the read-out
(``--format ...,confidence,report-png``): its table rows, diameter lines and confidence volume are imported and
checked against report.json and the input grid.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_scene_support as support
from support import EXAMPLE_CT_SM, require

slicer = support.import_slicer_core()

import PancreasDiNTSSceneLib as scenelib  # noqa: E402
from PancreasDiNTSLib.bridge import child_process, commands, progress_lines  # noqa: E402
from PancreasDiNTSLib.core import terminology  # noqa: E402

VARIANTS = ("ras", "oblique", "lps", "negative_slice_step", "parent_transform")


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory, tiny_bundle, cli_env):
    """Every variant loaded as a volume node, written by the scene layer, segmented in ONE engine call."""
    require(EXAMPLE_CT_SM)
    work = tmp_path_factory.mktemp("scene_engine")
    files = support.make_variants(EXAMPLE_CT_SM, work / "files")
    scene = slicer.vtkMRMLScene()
    volumes = {}
    for name in VARIANTS:
        volumes[name] = support.load_volume(scene, files["ras" if name == "parent_transform" else name], name)
    support.add_parent_transform(scene, volumes["parent_transform"])
    inputs = work / "inputs"
    paths = [scenelib.write_engine_input(volumes[name], inputs / f"{name}.nrrd") for name in VARIANTS]
    command = commands.segment_command(sys.executable, paths[0], work / "out", tiny_bundle, "cpu",
                                         formats=("nifti", "seg.nrrd", "confidence", "report-png"))
    command[command.index(str(paths[0])) + 1:command.index(str(paths[0])) + 1] = [str(p) for p in paths[1:]]
    done = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    print(f"engine: {len(paths)} inputs in one call")
    return {"scene": scene, "volumes": volumes, "out": work / "out", "work": work, "bundle": tiny_bundle}


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_import_equals_engine_labels_in_ras(engine_run, variant):
    scene, volume = engine_run["scene"], engine_run["volumes"][variant]
    case = engine_run["out"] / variant
    nodes_before = scene.GetNumberOfNodes()
    segmentation = scenelib.import_segmentation(case / "segmentation.seg.nrrd", volume, None, scene)
    assert scene.GetNumberOfNodes() > nodes_before
    exported = support.export_labels(scene, segmentation, volume)
    truth = support.nifti_labels_at(case / "labels.nii.gz", exported)
    counts = np.bincount(truth.ravel(), minlength=3)
    assert counts[1] > 0 and counts[2] > 0, f"the engine found no pancreas or no tumour: {counts}"
    equal = float(np.mean(exported["labels"] == truth))
    print(f"{variant}: {exported['labels'].size} voxels, labels {counts.tolist()}, equal {100 * equal:.4f} %")
    assert equal == 1.0
    # the segmentation observes the input's transform, so it stays on the CT when the transform changes
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID()


@pytest.mark.subprocess
def test_terminology_tags_parse_with_the_real_terminology_logic(engine_run):
    scene = engine_run["scene"]
    segmentation = scenelib.import_segmentation(engine_run["out"] / "ras" / "segmentation.seg.nrrd",
                                                engine_run["volumes"]["ras"], None, scene)
    ids = scenelib.our_segment_ids(segmentation.GetSegmentation())
    codes = {name: scenelib.terminology_codes(segmentation.GetSegmentation().GetSegment(i))
             for name, i in ids.items()}
    assert codes["Pancreas"]["category"] == "123037004" and codes["Pancreas"]["type"] == "15776009"
    assert codes["Pancreatic tumor"]["type"] == "108369006" and codes["Pancreatic tumor"]["region"] == "15776009"
    for info in terminology.SEGMENTS:
        segment = segmentation.GetSegmentation().GetSegment(ids[info.name])
        assert segment.GetColor() == pytest.approx(info.color_float, abs=1e-4)
    assert scene.GetFirstNodeByName("ras pancreas") is not None


@pytest.mark.subprocess
def test_existing_segmentation_keeps_other_segments_and_second_run_replaces_ours(engine_run):
    scene, volume = engine_run["scene"], engine_run["volumes"]["oblique"]
    case = engine_run["out"] / "oblique"
    existing = support.segmentation_with_liver(scene, volume)
    liver_before = support.segment_fingerprint(existing, "Liver")
    for _run in range(2):
        returned = scenelib.import_segmentation(case / "segmentation.seg.nrrd", volume, existing, scene)
        assert returned is existing
        segmentation = existing.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        assert sorted(names) == sorted(["Liver", "Pancreas", "Pancreatic tumor"]), names
        assert support.segment_fingerprint(existing, "Liver") == liver_before
    exported = support.export_labels(scene, existing, volume)
    assert np.array_equal(exported["labels"], support.nifti_labels_at(case / "labels.nii.gz", exported))


@pytest.mark.subprocess
def test_new_segmentation_sits_next_to_the_input_in_the_subject_hierarchy(engine_run):
    scene, volume = engine_run["scene"], engine_run["volumes"]["lps"]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
    study = sh.CreateStudyItem(patient, "study")
    sh.SetItemParent(scenelib.common.subject_hierarchy_item(scene, volume), study)
    segmentation = scenelib.import_segmentation(engine_run["out"] / "lps" / "segmentation.seg.nrrd", volume,
                                                None, scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == study
    assert "lps" in segmentation.GetName()


def _scene_state(scene, segmentation_node):
    return scene.GetNumberOfNodes(), {name: support.segment_fingerprint(segmentation_node, name)
                                      for name in ("Liver", "Pancreas", "Pancreatic tumor")}


@pytest.mark.slow
def test_failed_run_and_bad_file_leave_the_scene_unchanged(engine_run, tmp_path, cli_env):
    scene, volume = engine_run["scene"], engine_run["volumes"]["ras"]
    existing = support.segmentation_with_liver(scene, volume)
    scenelib.import_segmentation(engine_run["out"] / "ras" / "segmentation.seg.nrrd", volume, existing, scene)
    before = _scene_state(scene, existing)
    bad_model = tmp_path / "not_a_model"
    bad_model.mkdir()
    job = scenelib.SegmentationJob(volume, bad_model, existing, device="cpu", scene=scene, python=sys.executable)
    command = job.prepare()
    done = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=600)
    parser = progress_lines.ProgressParser()
    parser.feed_all((done.stdout + done.stderr).splitlines())
    result = job.complete(done.returncode, parser=parser)
    assert not result.success and "not_a_model" in result.message
    assert _scene_state(scene, existing) == before
    assert not job.work_dir.exists()
    # a file without our segments, and an unreadable file: SceneLayerError, nothing changed
    for broken in (support.seg_without_tumor(engine_run["out"] / "ras" / "segmentation.seg.nrrd", tmp_path),
                   tmp_path / "missing.seg.nrrd"):
        for target in (existing, None):
            with pytest.raises(scenelib.SceneLayerError):
                scenelib.import_segmentation(broken, volume, target, scene)
            assert _scene_state(scene, existing) == before


@pytest.mark.slow
def test_cancelled_run_leaves_the_scene_unchanged(engine_run, cli_env):
    scene, volume = engine_run["scene"], engine_run["volumes"]["ras"]
    existing = support.segmentation_with_liver(scene, volume)
    before = _scene_state(scene, existing)
    job = scenelib.SegmentationJob(volume, engine_run["bundle"], existing, device="cpu", scene=scene,
                                   python=sys.executable)
    proc = subprocess.Popen(job.prepare(), env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    parser = progress_lines.ProgressParser()
    for line in proc.stdout:  # cancel as soon as the engine reports its first stage
        if parser.feed(line).kind == "progress":
            break
    child_process.kill_process_tree(proc.pid)
    proc.wait(timeout=60)
    result = job.complete(proc.returncode, cancelled=True, parser=parser)
    assert result.cancelled and not result.success
    assert _scene_state(scene, existing) == before
    assert not job.work_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("rotated", [False, True], ids=["axis_aligned_roi", "rotated_roi"])
def test_roi_node_box_segments_only_inside(engine_run, rotated, cli_env):
    """ROI node -> box -> ``segment --roi`` (grid mode) -> import: labels only inside the box, and inside it
    the full run's labels (grid mode's guarantee)."""
    scene, volume = engine_run["scene"], engine_run["volumes"]["ras"]
    roi = support.roi_in_volume(scene, volume, rotated)
    box = scenelib.roi_box_ras(roi)
    job = scenelib.SegmentationJob(volume, engine_run["bundle"], None, device="cpu", scene=scene,
                                   python=sys.executable, roi_box=box, formats=("nifti", "seg.nrrd"),
                                   keep_outputs=True)
    done = subprocess.run(job.prepare(), env=cli_env, capture_output=True, text=True, timeout=600)
    parser = progress_lines.ProgressParser()
    parser.feed_all(done.stdout.splitlines())
    result = job.complete(done.returncode, parser=parser)
    assert result.success, result.message + done.stderr[-2000:]
    assert result.report["inference"]["roi"]["box"] == pytest.approx(list(box), abs=1e-3)
    exported = support.export_labels(scene, result.segmentationNode, volume)
    world = exported["world"]
    inside = np.all((world >= np.array(box[:3]) - 1e-3) & (world <= np.array(box[3:]) + 1e-3), axis=-1)
    labels = exported["labels"]
    assert labels[inside].any(), "no label inside the ROI"
    assert not labels[~inside].any(), f"{int((labels[~inside] > 0).sum())} labelled voxels outside the ROI"
    full = support.nifti_labels_at(engine_run["out"] / "ras" / "labels.nii.gz", exported)
    assert np.array_equal(labels[inside], full[inside])
    # the self-test's check (scene layer) agrees
    assert scenelib.roi.labels_inside_and_outside(result.segmentationNode, roi, volume, scene) == (
        int((labels[inside] > 0).sum()), 0)
    job.keep_outputs = False
    job.cleanup()


@pytest.mark.subprocess
def test_report_of_a_real_run_fills_a_table(engine_run):
    scene = engine_run["scene"]
    report = json.loads((engine_run["out"] / "ras" / "report.json").read_text())
    table = scenelib.report_table(report, scene, reference=engine_run["volumes"]["ras"])
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns[0] == "Segment" and {"volumes_ml", "voxels"} <= set(columns)
    assert table.GetNumberOfRows() == len(terminology.SEGMENTS)
    column = columns.index("volumes_ml")
    for row, info in enumerate(terminology.SEGMENTS):
        assert table.GetCellText(row, 0) == info.name
        assert math.isclose(float(table.GetCellText(row, column)), report["volumes_ml"][info.name], rel_tol=1e-6)


@pytest.mark.subprocess
@pytest.mark.parametrize("variant", VARIANTS)
def test_readout_table_lines_and_confidence_of_a_real_run(engine_run, variant):
    """report.json's read-out -> a table node (every row), the largest lesion's diameters -> markups lines with
    the report's endpoints, confidence.nii.gz -> a volume on the input's voxels in its frame, shown over the CT."""
    scene, volume = engine_run["scene"], engine_run["volumes"][variant]
    folder = engine_run["out"] / variant
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"
    rows = scenelib.readout_rows(report)
    table = scenelib.readout_table(report, scene, name=f"{variant} measurements", reference=volume)
    assert [table.GetColumnName(c) for c in range(3)] == list(scenelib.report.READOUT_COLUMNS)
    assert [tuple(table.GetCellText(r, c) for c in range(3)) for r in range(table.GetNumberOfRows())] == rows
    assert ("Pancreas volume", f"{report['readout']['segments']['pancreas']['volume_ml']:.2f}", "mL") in rows
    assert any(r[0] == "Lesion score (max lesion probability, uncalibrated)" for r in rows)

    big = report["readout"]["lesion"]["largest"] or {}
    lines = scenelib.readout_lines(report)
    expected = [big[k] for k in ("longest_axial_diameter", "perpendicular_diameter") if big.get(k)]
    assert [pts for _, pts in lines] == [d["endpoints_ras"] for d in expected]
    for (name, points), diameter in zip(lines, expected, strict=True):
        line = scenelib.add_line(points, name, scene, reference=volume)
        for index in range(2):
            world = [0.0, 0.0, 0.0]
            line.GetNthControlPointPositionWorld(index, world)
            assert np.allclose(world, points[index], atol=1e-4)
        assert line.GetLineLengthWorld() == pytest.approx(diameter["mm"], abs=0.011)

    node = scenelib.load_confidence_volume(folder / "confidence.nii.gz", volume, scene)
    assert node.GetTransformNodeID() == volume.GetTransformNodeID()
    assert np.allclose(support.world_matrix(node), support.world_matrix(volume), atol=1e-4)
    values = np.array(slicer.util.arrayFromVolume(node))
    assert values.shape == slicer.util.arrayFromVolume(volume).shape and values.dtype == np.uint8
    k, j, i = np.meshgrid(*[np.arange(n) for n in values.shape], indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    at = {"world": (ijk @ support.world_matrix(node).T)[..., :3]}
    assert np.array_equal(values, support.nifti_labels_at(folder / "confidence.nii.gz", at))
    assert values.min() >= 85  # 255 x the largest of three softmax probabilities

    views = [scene.AddNode(slicer.vtkMRMLSliceCompositeNode()) for _ in range(3)]
    assert scenelib.show_confidence(node, volume, scene) == 3
    assert all(v.GetForegroundVolumeID() == node.GetID() and v.GetBackgroundVolumeID() == volume.GetID()
               and v.GetForegroundOpacity() == pytest.approx(0.5) for v in views)
    scenelib.show_confidence(None, volume, scene)
    assert all(v.GetForegroundVolumeID() is None for v in views)
    for v in views:
        scene.RemoveNode(v)


@pytest.mark.subprocess
def test_reruns_on_one_input_keep_one_table_one_set_of_lines_and_one_confidence_map(engine_run, tmp_path):
    """Audit N1/N8: every run added a table, two diameter lines and a CT-sized confidence volume, and the old
    lesion's lines stayed drawn over a new segmentation. Three reruns on one input (as the panel shows them:
    show_readout, load_confidence_volume) leave the node counts of the first; a rerun whose report has no
    measured lesion removes the lines; another input's read-out and map are not touched."""
    scene = slicer.vtkMRMLScene()
    folder = engine_run["out"] / "ras"
    volume = support.load_volume(scene, engine_run["work"] / "inputs" / "ras.nrrd", "ct")
    other = support.load_volume(scene, engine_run["work"] / "inputs" / "lps.nrrd", "other ct")
    report = json.loads((folder / "report.json").read_text())
    assert scenelib.readout_lines(report), "the run measured no lesion: nothing to check"
    other_table = scenelib.show_readout(report, other, scene)
    other_map = scenelib.load_confidence_volume(folder / "confidence.nii.gz", other, scene)

    def counts():
        return {c: scene.GetNumberOfNodesByClass(c)
                for c in ("vtkMRMLTableNode", "vtkMRMLMarkupsLineNode", "vtkMRMLScalarVolumeNode")}

    seen, tables = [], []
    for _ in range(3):
        tables.append(scenelib.show_readout(report, volume, scene))
        scenelib.load_confidence_volume(folder / "confidence.nii.gz", volume, scene)
        seen.append(counts())
    assert seen[0] == seen[1] == seen[2] == {"vtkMRMLTableNode": 2, "vtkMRMLMarkupsLineNode": 4,
                                             "vtkMRMLScalarVolumeNode": 4}
    assert tables[0] is tables[1] is tables[2] and tables[0].GetName() == "ct measurements"
    assert len(scenelib.volumes.confidence_volumes_of(scene, volume)) == 1
    gone = json.loads(json.dumps(report))
    gone["readout"]["lesion"] = {"found": False, "reason": "no lesion segmented"}
    scenelib.show_readout(gone, volume, scene)
    assert set(scenelib.report.readout_nodes(scene, volume)) == {"table"}  # the stale lesion lines are gone
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 2  # the other input's two lines stay
    assert scene.IsNodePresent(other_table) and scene.IsNodePresent(other_map)


def test_scene_layer_imports_no_qt_and_no_application():
    """The layer is Qt-free: it imports in slicer-core, where slicer.app and slicer.mrmlScene do not exist."""
    import ast

    assert getattr(slicer, "app", None) is None and getattr(slicer, "mrmlScene", None) is None
    for path in Path(scenelib.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"}, path
        used = {f"{n.value.id}.{n.attr}" for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
        assert "slicer.app" not in used, f"{path.name} uses slicer.app"
    with pytest.raises(scenelib.SceneLayerError):
        scenelib.resolve_scene(None)
