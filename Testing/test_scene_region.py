"""The automatic pancreas region in the scene layer (real slicer-core): the estimate line and the command line of a
run (``--region``), and the torch-free estimate against the engine's own window grids."""

from __future__ import annotations

import pytest
import test_scene_support as support
from support import EXAMPLE_CT_SM, require

slicer = support.import_slicer_core()

import PancreasDiNTSSceneLib as scenelib  # noqa: E402
from PancreasDiNTSLib.bridge import estimate  # noqa: E402


def test_auto_estimate_counts_the_engines_windows():
    from PancreasDiNTSLib.inference import region
    from PancreasDiNTSLib.inference.windows import window_grid

    assert (estimate.AUTO_MARGIN_MM, estimate.AUTO_MIN_SAVING) == (region.MARGIN_MM, region.MIN_SAVING)
    spec = estimate.WindowSpec((64, 64, 48), 0.5, (0.8, 0.8, 1.0))
    bounds = [0, 409.6, 0, 409.6, 0, 300]  # 512 x 512 x 300 voxels on the model's grid
    auto = estimate.estimate_auto(bounds, spec)
    assert auto.coarse == len(window_grid((512, 512, 300), spec.roi_size, 0.0).windows)
    assert auto.full == len(window_grid((512, 512, 300), spec.roi_size, 0.5).windows)
    assert 0 < auto.dense < auto.full and auto.total < auto.full
    line = estimate.describe_auto_estimate(auto, 0.5)
    assert f"{auto.coarse} coarse + up to {auto.dense} dense" in line and f"instead of {auto.full}" in line
    small = estimate.estimate_auto([0, 60, 0, 60, 0, 60], spec)
    assert small.coarse == 0 and small.dense == small.full
    assert "whole volume runs" in estimate.describe_auto_estimate(small, None)


@pytest.fixture
def scene_and_volume(tmp_path):
    require(EXAMPLE_CT_SM)
    scene = slicer.vtkMRMLScene()
    return scene, support.load_volume(scene, EXAMPLE_CT_SM, "ct")


def test_estimate_line_and_command_with_the_automatic_region(scene_and_volume, tmp_path):
    scene, volume = scene_and_volume
    line = scenelib.roi.estimate_line(volume, None, region="auto")
    assert line.startswith("automatic pancreas region (the default on a CPU)")
    assert scenelib.roi.estimate_line(volume, None).startswith("whole CT")
    model = tmp_path / "model"
    model.mkdir()
    for region, want in (("auto", ["--region", "auto"]), ("whole", ["--region", "whole"]), (None, [])):
        job = scenelib.SegmentationJob(volume, model, None, device="cpu", scene=scene, region=region,
                                       work_dir=tmp_path / f"work_{region}")
        command = job.prepare()
        assert ("--region" in command) == bool(want) and command[len(command) - len(want):] == want
    boxed = scenelib.SegmentationJob(volume, model, None, scene=scene, region="auto", roi_box=(0, 0, 0, 9, 9, 9),
                                     work_dir=tmp_path / "work_box")
    assert "--region" not in boxed.prepare()  # a box takes the region's place
    with pytest.raises(scenelib.SceneLayerError, match="region"):
        scenelib.SegmentationJob(volume, model, None, scene=scene, region="liver", work_dir=tmp_path / "w").prepare()
