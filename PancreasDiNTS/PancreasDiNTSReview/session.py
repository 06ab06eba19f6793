"""One reviewer's session: the batch, the case on screen, and the segment editor (no web server here).

Uses trame-slicer's core pieces only (``SlicerApp``, its ``SegmentationEditor`` and effects, the views its
view manager creates) and the scene layer (``PancreasDiNTSSceneLib.review``) for loading and saving. The
ready-made editor panel of trame-slicer (``SegmentEditorLogic``) is not used: it grew by 60-180 MB per case
switch on a 448x448x300 case; the core editor stays flat. A case switch removes every node the previous case
added (volumes, segmentation, confidence map and their display and storage nodes) and clears the undo stack.
"""

from __future__ import annotations

import gc
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import vtk
from PancreasDiNTSLib.core import terminology
from PancreasDiNTSLib.core.paths import OUTPUT_NAMES
from PancreasDiNTSLib.review import batch
from PancreasDiNTSSceneLib import SceneLayerError, load_confidence_volume, show_confidence
from PancreasDiNTSSceneLib import review as scene_review
from PancreasDiNTSSceneLib.segmentations import our_segment_ids
from trame_slicer.core import SlicerApp
from trame_slicer.segmentation import (
    SegmentationEffectDraw,
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectNoTool,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
    SegmentationEffectSmoothing,
    SegmentationEffectThreshold,
)
from trame_slicer.segmentation.paint_effect_parameters import BrushDiameterMode
from undo_stack import UndoStack

EFFECTS = {
    "none": SegmentationEffectNoTool, "paint": SegmentationEffectPaint, "erase": SegmentationEffectErase,
    "draw": SegmentationEffectDraw, "scissors": SegmentationEffectScissors, "islands": SegmentationEffectIslands,
    "smoothing": SegmentationEffectSmoothing, "threshold": SegmentationEffectThreshold,
}
CT_WINDOW_LEVEL = (400.0, 40.0)  # abdomen soft tissue
BRUSH_MM = 5.0  # an absolute brush (mm): trame-slicer's default is a share of the screen (about 20 slices)
OVERLAY_OPACITY = 0.5


class ReviewSession:
    """The batch in ``outdir`` reviewed by ``reviewer`` in ``app``'s scene (views are the caller's)."""

    def __init__(self, outdir: str | Path, reviewer: str, app: SlicerApp | None = None) -> None:
        self.outdir = Path(outdir)
        self.reviewer = reviewer
        self.cases = batch.batch_cases(self.outdir)
        self.app = app or SlicerApp()
        self.editor = self.app.segmentation_editor
        self.undo_stack = UndoStack(undo_limit=5)
        self.editor.set_undo_stack(self.undo_stack)
        self.index = -1
        self.case: scene_review.LoadedCase | None = None
        self.error = ""
        self.confidence: Any = None
        self._nodes: list[Any] = []

    @property
    def scene(self) -> Any:
        return self.app.scene

    # -- cases
    def refresh(self) -> None:
        """Re-read every case's status and numbers (another reviewer may have saved)."""
        self.cases = [batch.load_case(c.folder) for c in self.cases]

    def open(self, index: int) -> None:
        """Show case ``index``: the previous case's nodes are removed first. A case that cannot be loaded
        (foreign .seg.nrrd, ...) leaves an empty scene and its reason in ``error``."""
        index = max(0, min(int(index), len(self.cases) - 1))
        self.close()
        self.index, self.error = index, ""
        folder = self.cases[index].folder
        before = self._node_ids()
        with ExitStack() as stack:
            for view in self.app.view_manager.get_views():
                stack.enter_context(view.render_blocked())
            try:
                self.case = scene_review.load_case(folder, self.scene)
                self._show(self.case)
            except Exception as exc:  # one line on the page; the scene is emptied below
                self.case, self.error = None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._nodes = [n for n in (self.scene.GetNodeByID(i) for i in self._node_ids() - before)
                           if n is not None and not n.GetSingletonTag()]
            if self.case is None:
                self.close()
        for view in self.app.view_manager.get_views():
            view.reset_view()  # after the views are unblocked: the 3D view fits the surfaces it now holds
        if self.case is not None:
            self.centre(self.case.centre_ras)

    def _show(self, case: scene_review.LoadedCase) -> None:
        display = case.volume.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(*CT_WINDOW_LEVEL)
        self.app.display_manager.show_volume_in_slice_background(case.volume)
        self.app.display_manager.show_volume_in_slice_foreground(None)
        self.editor.set_active_segmentation(case.segmentation, case.volume)
        self.editor.set_surface_representation_enabled(True)
        seg_display = case.segmentation.GetDisplayNode()
        seg_display.SetOpacity2DFill(OVERLAY_OPACITY)
        seg_display.SetOpacity2DOutline(1.0)
        seg_display.SetSliceIntersectionThickness(2)
        ids = our_segment_ids(case.segmentation.GetSegmentation())
        if terminology.SEGMENTS[-1].name in ids:
            self.editor.set_active_segment_id(ids[terminology.SEGMENTS[-1].name])
        self.undo_stack.clear()
        self.confidence = None
        confidence = case.folder / OUTPUT_NAMES["confidence"]
        if confidence.is_file() and not case.read_only:
            self.confidence = load_confidence_volume(confidence, case.volume, self.scene)
            show_confidence(None, case.volume, self.scene)
        case.segmentation.CreateClosedSurfaceRepresentation()

    def centre(self, ras: list[float] | None) -> None:
        """Put every slice view through ``ras`` (the largest lesion), keeping the fitted zoom."""
        if ras is None:
            return
        nodes = self.scene.GetNodesByClass("vtkMRMLSliceNode")
        for i in range(nodes.GetNumberOfItems()):
            nodes.GetItemAsObject(i).JumpSliceByCentering(*ras)

    def close(self) -> None:
        """Remove what the current case added to the scene (and clear its undo history)."""
        self.editor.deactivate_effect()
        self.undo_stack.clear()
        scene_review.remove_nodes(self._nodes, self.scene)
        self._nodes, self.case, self.confidence = [], None, None
        # The removed case's images are held by Python reference cycles (VTK observers <-> trame-slicer's
        # wrappers) that the cyclic collector frees only when it happens to run: 75-100 MB per switch on a
        # 448x448x300 case, never returned. Collecting here frees them at once (20 switches: flat).
        gc.collect()

    def _node_ids(self) -> set[str]:
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}

    # -- editing
    @property
    def editable(self) -> bool:
        return self.case is not None and not self.case.read_only

    def select_segment(self, name: str) -> None:
        if self.case is None:
            return
        segment_id = our_segment_ids(self.case.segmentation.GetSegmentation()).get(name)
        if segment_id:
            self.editor.set_active_segment_id(segment_id)

    def set_effect(self, name: str, brush_mm: float = BRUSH_MM) -> Any:
        """Activate an editor effect by name (``none`` for navigation); brushes get an absolute size in mm."""
        if not self.editable:
            name = "none"
        effect = self.editor.set_active_effect_type(EFFECTS.get(name, SegmentationEffectNoTool))
        if name in ("paint", "erase") and effect is not None:
            effect.set_use_sphere_brush(False)
            effect.set_brush_diameter(float(brush_mm), BrushDiameterMode.Absolute)
        return effect

    def paint_at(self, ras: list[float], radius_mm: float, erase: bool = False) -> None:
        """Paint (or erase) a sphere of ``radius_mm`` at ``ras`` with the active segment: the same path the
        brush takes for a mouse stroke (the effect's glyph through the segment modifier, undoable)."""
        effect = self.set_effect("erase" if erase else "paint")
        sphere = vtk.vtkSphereSource()
        sphere.SetRadius(radius_mm)
        sphere.SetPhiResolution(16)
        sphere.SetThetaResolution(16)
        sphere.Update()
        points = vtk.vtkPoints()
        points.InsertNextPoint(*ras)
        effect.paint_glyph_at_world_coordinates(sphere.GetOutput(), points)

    def apply(self, action: str, size: int = 10) -> None:
        """One-click editor actions on the active segment: ``remove_small_islands`` (under ``size`` voxels;
        never "keep largest", which can drop a real lesion) or ``smooth`` (median, the effect's kernel)."""
        if not self.editable:
            return
        if action == "remove_small_islands":
            self.set_effect("islands").remove_small_islands(int(size))
        elif action == "smooth":
            self.set_effect("smoothing").apply_smoothing()
        self.set_effect("none")

    def undo(self) -> None:
        self.undo_stack.undo()

    def redo(self) -> None:
        self.undo_stack.redo()

    # -- decisions
    def save_corrected(self) -> dict[str, Any]:
        if self.case is None:
            raise SceneLayerError(self.error or "no case open")
        self.editor.deactivate_effect()
        done = scene_review.save_corrected(self.case, self.reviewer, self.scene)
        self.refresh()
        return done

    def decide(self, status: str, reason: str = "") -> dict[str, Any]:
        """Accept or reject (with a reason) the case on screen."""
        if self.case is None or self.case.read_only:
            raise SceneLayerError(f"{self.cases[self.index].name}: read-only "
                                  f"({self.error or (self.case.read_only if self.case else 'not loaded')})")
        done = scene_review.save_decision(self.case, status, self.reviewer, reason)
        self.refresh()
        return done

    def show_confidence(self, show: bool) -> None:
        if self.case is not None and self.confidence is not None:
            show_confidence(self.confidence if show else None, self.case.volume, self.scene, opacity=0.4)
