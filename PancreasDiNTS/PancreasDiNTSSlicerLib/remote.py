"""A Segment run on a ``pancreas-dints serve`` server, driven like :class:`.process.EngineProcess`.

The run itself is :class:`PancreasDiNTSLib.bridge.remote.RemoteRun` (standard-library HTTP on a thread: upload,
follow, download); this class polls its engine-style output lines from a ``qt.QTimer`` into the same
``ProgressParser``, so the panel's progress, ETA, Cancel and completion code are those of a local run. Nothing
new is installed into Slicer for it.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import qt
import slicer
from PancreasDiNTSLib.bridge import progress_lines, remote

from PancreasDiNTSSlicerLib.process import FollowedRun


def insecureServerWarning(url: str) -> str | None:
    """The warning to confirm before a run sends the CT and the token in clear (plain http:// to a host that is
    not this computer, as the CLI warns), or None (https, loopback, or an address the client will refuse)."""
    parts = urllib.parse.urlsplit((url or "").strip())
    if parts.scheme != "http" or remote.is_loopback(parts.hostname or ""):
        return None
    return (f"{parts.netloc} is reached over plain http: the CT and the server's token cross the network "
            "unencrypted. Use https:// unless this network is trusted. Send the CT anyway?")


class RemoteTask(FollowedRun):
    """``running``, ``returncode``, ``cancelled``, ``parser``, ``start``/``wait``/``cancel``/``stop`` as EngineProcess."""

    POLL_INTERVAL_MSEC = 200
    WAIT_SLEEP_SEC = 0.02

    def __init__(self, run: remote.RemoteRun, eventCallback: Callable[[progress_lines.Event], Any] | None = None,
                 finishedCallback: Callable[[RemoteTask], Any] | None = None) -> None:
        super().__init__(eventCallback, finishedCallback)
        self.run = run

    @property
    def running(self) -> bool:
        return self.returncode is None

    def start(self, waitForCompletion: bool = True) -> RemoteTask:
        self.run.start()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MSEC)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()
        if waitForCompletion:
            self.wait()
        return self

    def wait(self) -> int | None:
        while self.running:
            slicer.app.processEvents()
            time.sleep(self.WAIT_SLEEP_SEC)
        return self.returncode

    def cancel(self) -> None:
        """Cancel the job on the server and stop following it; returns at once: the HTTP call (up to the client's
        timeout on a slow server) runs on a thread, and the run's end is reported by the poller as usual."""
        if self.running and not self.cancelled:
            self.cancelled = True
            threading.Thread(target=self.run.cancel, name="PancreasDiNTS-cancel", daemon=True).start()

    def stop(self, timeout: float = 5.0) -> None:
        """Slicer is closing: cancel without calling back and without waiting for the server."""
        self.eventCallback = self.finishedCallback = None
        self.cancel()
        self._finish(self.run.returncode if self.run.returncode is not None else 130)

    def _poll(self) -> None:
        for line in self.run.drain():
            self._onLine(line)
        if self.run.ended:
            self._finish(self.run.returncode)
