"""The Segment panel's "Compare with a prior study" section: the prior volume and segmentation against the current
ones (the panel's input volume and its segmentation), compared by the engine in the background
(``PancreasDiNTSSceneLib.followup.CompareJob`` writes the inputs, ``pancreas-dints compare`` runs), the findings
shown as a table and both response categories with their label."""

from __future__ import annotations

import tempfile
from typing import Any

import ctk
import slicer
from slicer.i18n import tr as _

from PancreasDiNTSSlicerLib.panel import Section
from PancreasDiNTSSlicerLib.process import EngineProcess


class FollowupSection(Section):
    """Pick the prior study; Compare; the result table and categories (docs/FOLLOWUP.md)."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.job: Any = None
        self.task: Any = None
        self.ui.compareOutputPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.NoDotAndDotDot
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        for selector in (self.ui.comparePriorVolumeSelector, self.ui.comparePriorSegmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_args: self.widget.updateGUI())

    def update(self, p: Any, busy: bool) -> None:
        ready = bool(p and p.inputVolume and p.outputSegmentation and self.ui.comparePriorVolumeSelector.currentNode()
                     and self.ui.comparePriorSegmentationSelector.currentNode())
        self.ui.compareButton.enabled = ready and not busy and self.task is None

    def clear(self) -> None:
        self.ui.compareTableView.setMRMLTableNode(None)
        self.ui.compareStatusLabel.text = ""

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.job is not None:
            self.job.cleanup()

    def onCompare(self) -> None:
        from PancreasDiNTSSceneLib.followup import CompareJob

        p = self.widget.parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the comparison."), waitCursor=True):
            folder = self.ui.compareOutputPathLineEdit.currentPath or tempfile.mkdtemp(prefix="pancreas-dints-followup-")
            self.job = CompareJob(self.ui.comparePriorVolumeSelector.currentNode(),
                                  self.ui.comparePriorSegmentationSelector.currentNode(), p.inputVolume,
                                  p.outputSegmentation, folder, slicer.mrmlScene)
            command = self.job.prepare()
            self.ui.compareStatusLabel.text = _("Comparing (alignment, matching)...")
            self.task = EngineProcess(command, None, self.onFinished).start(waitForCompletion=False)
            self.widget.updateGUI()

    def onFinished(self, task: Any) -> None:
        job, self.task = self.job, None
        try:
            if task.returncode != 0 or task.cancelled:
                job.cleanup()
                self.ui.compareStatusLabel.text = (_("Cancelled.") if task.cancelled
                                                   else task.parser.error_message(task.returncode))
                return
            result, table = job.complete()
            self.ui.compareTableView.setMRMLTableNode(table)
            rec, vol = result["response"]["recist"], result["response"]["volumetric"]
            self.ui.compareStatusLabel.text = _(
                "RECIST 1.1-style {recist} ({reason}); volumetric {volumetric}: {label}. Alignment residual "
                "{residual} mm. Page and compare.json in {folder}").format(
                recist=rec["category"], reason=rec["reason"], volumetric=vol["category"],
                label=result["response"]["label"], residual=result["alignment"]["mean_surface_distance_mm"],
                folder=str(job.output_dir))
        finally:
            self.widget.updateGUI()
