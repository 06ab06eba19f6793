"""The Segment panel's run section: what is segmented (region, ROI, speed, where), Segment/Cancel, Estimate,
progress and the log."""

from __future__ import annotations

import time
from typing import Any

import slicer
from PancreasDiNTSLib.bridge import estimate
from slicer.i18n import tr as _

from PancreasDiNTSSlicerLib import remote
from PancreasDiNTSSlicerLib.choices import Region, RunPlace
from PancreasDiNTSSlicerLib.panel import Section


class RunSection(Section):
    """Segment (Cancel while running), Estimate, the progress bar, the status line and the log."""

    def __init__(self, widget: Any) -> None:
        super().__init__(widget)
        self.startTime: float | None = None
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.estimateButton.connect("clicked(bool)", self.onEstimate)

    def onServer(self) -> bool:
        """True when the panel's "Run on" is a server."""
        p = self.widget.parameterNode
        return bool(p and p.runOn == RunPlace.server)

    def update(self, p: Any, busy: bool) -> None:
        running = self.logic.isRunning()
        self.ui.applyButton.text = _("Cancel") if running else _("Segment")
        self.ui.applyButton.toolTip = (_("Stop the computation") if running
                                       else _("Segment the pancreas and pancreatic tumours in the input CT"))
        self.ui.inputsCollapsibleButton.enabled = not busy
        server = self.onServer()
        useROI = bool(p and p.region == Region.box)
        ready = bool(p and p.inputVolume) and (not useROI or bool(p.roiNode))  # "ROI node" needs an ROI
        self.ui.applyButton.enabled = running or (ready and not busy and (server or bool(self.currentModel())))
        self.ui.serverURLLineEdit.enabled = self.ui.serverTokenLineEdit.enabled = server
        self.ui.deviceComboBox.enabled = not server  # the server's workers choose their devices
        self.ui.roiSelector.enabled = self.ui.roiModeComboBox.enabled = useROI
        self.ui.estimateButton.enabled = ready and bool(self.currentModel()) and not busy and not server

    def choices(self) -> dict[str, Any]:
        """The parameter node's choices as :meth:`PancreasDiNTSLogic.process` keywords (keys, not labels)."""
        p = self.widget.parameterNode
        return {"allowNonCT": p.allowNonCT, "roiNode": p.roiNode if p.region == Region.box else None,
                "roiMode": p.roiMode.value, "mode": p.mode.value, "confidence": p.computeConfidence,
                "region": p.region.value, "precision": p.precision.value}

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # returns at once; the run's end is reported by onProcessingCompleted
            self.status(_("Cancelling..."))
            return
        p = self.widget.parameterNode
        server = p.serverURL if self.onServer() else None
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            warning = remote.insecureServerWarning(server) if server else None
            if warning and not slicer.util.confirmOkCancelDisplay(warning, windowTitle=_("Unencrypted connection")):
                return
            # a server run needs none of the engine's packages here (only the standard library's HTTP)
            if not server and not self.setupPackages():
                return
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.ui.resultLabel.text = ""
            self.status(_("Starting..."))
            self.startTime = time.monotonic()
            self.logic.process(p.inputVolume, p.outputSegmentation, self.currentModel(), p.device,
                               waitForCompletion=False, eventCallback=self.onEngineEvent,
                               completedCallback=self.onProcessingCompleted, server=server,
                               token=self.ui.serverTokenLineEdit.text, **self.choices())
        self.widget.updateGUI()

    def onEngineEvent(self, event: Any) -> None:
        if event.kind == "log":
            self.ui.logTextEdit.appendPlainText(event.line)
            return
        if event.fraction is not None:
            self.ui.progressBar.value = int(round(100 * event.fraction))
        if event.kind == "progress":
            elapsed = time.monotonic() - self.startTime if self.startTime else None
            self.status(estimate.status_line(self.logic.lastStatus(), elapsed, event.fraction))

    def onEstimate(self) -> None:
        """One line before starting: windows and time on this computer for the current choices."""
        p = self.widget.parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to estimate the run."), waitCursor=True):
            choices = self.choices()
            self.ui.estimateLabel.text = self.logic.estimate(p.inputVolume, self.currentModel(), choices["roiNode"],
                                                             choices["roiMode"], region=choices["region"])

    def onProcessingCompleted(self, result: Any) -> None:
        from PancreasDiNTSSlicerLib.panel_results import ResultsSection

        self.widget.updateGUI()
        if result.cancelled:
            self.status(_("Cancelled."))
            self.ui.progressBar.value = 0
            return
        if not result.success:
            self.status(_("Failed."))
            slicer.util.errorDisplay(_("Segmentation failed: {message}").format(message=result.message),
                                     detailedText=result.log)
            return
        self.ui.progressBar.value = 100
        elapsed = time.monotonic() - self.startTime if self.startTime else None
        self.status(estimate.status_line("Done", elapsed, 1.0))
        with slicer.util.tryWithErrorDisplay(_("The segmentation finished, but showing its results failed.")):
            self.widget.section(ResultsSection).show(result)
        self.widget.updateGUI()

    def clear(self) -> None:
        self.ui.estimateLabel.text = ""
