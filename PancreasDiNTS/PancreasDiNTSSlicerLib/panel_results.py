"""The Segment panel's results section (volumes, read-out table, 3D, confidence, Segment Editor) and its review
section (a batch case folder: the same files as ``pancreas-dints review`` in the browser)."""

from __future__ import annotations

from typing import Any

import qt
import slicer
from PancreasDiNTSLib.bridge import case_results
from slicer.i18n import tr as _

from PancreasDiNTSSlicerLib import packages
from PancreasDiNTSSlicerLib.panel import Section


class ResultsSection(Section):
    """The last run's volumes, read-out table and lines, 3D surfaces and confidence map."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.confidenceNode: Any = None  # the last run's confidence volume (hidden; "Show confidence" shows it)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.showConfidenceButton.connect("toggled(bool)", self.onShowConfidenceToggled)

    def update(self, p: Any, busy: bool) -> None:
        segmentation = p.outputSegmentation if p else None
        self.ui.editInSegmentEditorButton.enabled = bool(segmentation) and not busy
        self.ui.show3DCheckBox.enabled = bool(segmentation)
        hasConfidence = self.confidenceNode is not None and slicer.mrmlScene.IsNodePresent(self.confidenceNode)
        self.ui.showConfidenceButton.enabled = bool(hasConfidence) and not busy

    def show(self, result: Any) -> None:
        """A finished run in the panel: volumes, read-out table and lines, 3D, the confidence map."""
        p = self.widget.parameterNode
        p.outputSegmentation = result.segmentationNode
        self.ui.resultLabel.text = case_results.format_volumes(result.volumes) or _("No volumes reported.")
        if result.message:
            self.ui.statusLabel.text += f" ({result.message})"
        self.ui.measurementsTableView.setMRMLTableNode(self.logic.showReport(result, p.inputVolume))
        self.logic.setShow3D(result.segmentationNode, p.show3D)
        self.confidenceNode = result.confidenceNode
        if self.ui.showConfidenceButton.checked:
            self.onShowConfidenceToggled(True)

    def clear(self) -> None:
        """The scene is closing: forget the last run's nodes (their table view would be stale)."""
        self.ui.measurementsTableView.setMRMLTableNode(None)
        self.ui.resultLabel.text = ""
        self.confidenceNode = None

    def onShowConfidenceToggled(self, show: bool) -> None:
        """One click: the last run's confidence map over the CT in the slice views (colour map 0..255)."""
        p = self.widget.parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to show the confidence map.")):
            self.logic.showConfidence(self.confidenceNode if show else None, p.inputVolume if p else None)

    def onShow3DToggled(self, show: bool) -> None:
        p = self.widget.parameterNode
        if p and p.outputSegmentation:
            self.logic.setShow3D(p.outputSegmentation, show)

    def onEditInSegmentEditor(self) -> None:
        p = self.widget.parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to open the Segment Editor.")):
            if not p.outputSegmentation:
                raise ValueError(_("There is no segmentation to edit yet."))
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.util.getModuleWidget("SegmentEditor").editor
            editor.setSegmentationNode(p.outputSegmentation)
            if p.inputVolume:
                editor.setSourceVolumeNode(p.inputVolume)


class ReviewSection(Section):
    """Open a batch case folder, show its review status, save the corrected segments. Its packages (nibabel,
    filelock: the scene layer's review imports them) are installed on first use."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.case: Any = None
        self.ui.reviewOpenButton.connect("clicked(bool)", self.onOpen)
        self.ui.reviewSaveButton.connect("clicked(bool)", self.onSave)
        self.clear()

    def update(self, p: Any, busy: bool) -> None:
        self.ui.reviewOpenButton.enabled = not packages.isInstalling()
        self.ui.reviewSaveButton.enabled = self.case is not None and not self.case.read_only and not busy

    def clear(self) -> None:
        self.case = None
        self.ui.reviewStatusLabel.text = _("no case folder open")
        self.ui.reviewSaveButton.enabled = False

    def onOpen(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Open a case folder of a batch"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to open the case folder."), waitCursor=True):
            if not packages.ensureOptional("review", askConfirmation=True, onChange=self.widget.updateGUI):
                return
            from PancreasDiNTSSceneLib import review

            self.case = review.load_case(folder, slicer.mrmlScene)
            slicer.util.setSliceViewerLayers(background=self.case.volume, fit=True)
            self.showStatus()

    def showStatus(self) -> None:
        from PancreasDiNTSSceneLib import review

        status = review.review_status(self.case.folder)
        text = status["status"]
        if status["reviewer"]:
            text += f" by {status['reviewer']}, {status['time']}"
        if status["reason"]:
            text += f": {status['reason']}"
        if self.case.read_only:
            text += " " + _("(read-only: {reason})").format(reason=self.case.read_only)
        self.ui.reviewStatusLabel.text = text
        self.ui.reviewSaveButton.enabled = not self.case.read_only

    def onSave(self) -> None:
        if self.case is None:
            return
        from PancreasDiNTSSceneLib import review

        with slicer.util.tryWithErrorDisplay(_("Failed to save the corrected segmentation."), waitCursor=True):
            review.save_corrected(self.case, self.ui.reviewerLineEdit.text or "unknown", slicer.mrmlScene)
            self.showStatus()
