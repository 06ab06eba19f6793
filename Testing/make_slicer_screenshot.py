"""Render docs/slicer-views.png: Slicer's own views (trame-slicer's SlicerApp, headless EGL) showing what the Segment
panel leaves in the scene after a run on the Sample Data phantom.

The scene is built by the scene layer exactly as the module builds it (``import_segmentation``, ``show_readout``:
the segments with their terminology, the read-out table node and the lesion's diameter lines); the engine's
output is a real ``pancreas-dints demo`` run (the demo model on the phantom the module registers with Sample Data).
Slicer's Qt panel itself cannot be rendered here (no Qt); the picture shows the views and, at the right, the rows
of the read-out table node the panel's table view shows. Run::

    PYTHONPATH=PancreasDiNTS VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow \\
        python Testing/make_slicer_screenshot.py DEMO_OUTDIR docs/slicer-views.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def render(view, size=(420, 420)) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    window = view.render_window()
    window.SetSize(*size)
    view.render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    return pixels


def main(demo: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import PancreasDiNTSSceneLib as scenelib
    import slicer
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    scene = app.scene
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(demo / "phantom_ct.nii.gz"))
    volume = slicer.vtkMRMLScalarVolumeNode()
    storage.ReadData(volume)
    volume.SetName("PancreasDiNTSPhantom")
    scene.AddNode(volume)
    volume.CreateDefaultDisplayNodes()
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(400, 40)
    segmentation = scenelib.import_segmentation(demo / "segmentation.seg.nrrd", volume, None, scene)
    report = json.loads((demo / "report.json").read_text())
    table = scenelib.show_readout(report, volume, scene)
    scenelib.set_show_3d(segmentation, True)
    lines = scenelib.readout_lines(report)
    center = np.mean([p for _, pts in lines for p in pts], axis=0) if lines else None

    views = {
        "axial": app.view_manager.create_view(ViewLayoutDefinition.axial_view()),
        "coronal": app.view_manager.create_view(ViewLayoutDefinition.coronal_view()),
        "3D": app.view_manager.create_view(ViewLayoutDefinition.threed_view()),
    }
    app.display_manager.show_volume(volume)
    for name in ("axial", "coronal"):
        view = views[name]
        view.fit_view_to_content()
        slice_node = view.get_view_node()
        if center is not None and slice_node is not None:  # centred on the lesion, 110 mm across
            slice_node.JumpSliceByCentering(*[float(c) for c in center])
            slice_node.SetFieldOfView(110.0, 110.0, slice_node.GetFieldOfView()[2])
    views["3D"].reset_camera()
    images = {name: render(view) for name, view in views.items()}

    rows = [(table.GetCellText(r, 0), table.GetCellText(r, 1), table.GetCellText(r, 2))
            for r in range(table.GetNumberOfRows())][:14]
    figure = plt.figure(figsize=(16, 5.2), dpi=100, facecolor="black")
    for index, (name, image) in enumerate(images.items()):
        axes = figure.add_axes([index * 0.22, 0.02, 0.215, 0.9])
        axes.imshow(image)
        axes.set_axis_off()
        axes.set_title(name, color="white", fontsize=11)
    text = figure.add_axes([0.665, 0.02, 0.33, 0.9])
    text.set_axis_off()
    text.set_title(f"{table.GetName()} (table node)", color="white", fontsize=11)
    for index, (measure, value, unit) in enumerate(rows):
        text.text(0.0, 0.97 - index * 0.07, f"{measure[:52]}: {value[:28]} {unit}", color="white", fontsize=8.5,
                  transform=text.transAxes, va="top")
    figure.savefig(out, facecolor="black")
    print(f"{out}: views {', '.join(images)}; {len(rows)} read-out rows; lines {[n for n, _ in lines]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
