"""One engine command in a background process, its output parsed into progress events, the GUI kept alive.

Slicer >= 5.12: ``slicer.util.launchConsoleProcess(blocking=False, logCallback, completedCallback)`` reads the
output on a thread and calls back from a ``qt.QTimer``. Slicer 5.10: the same here, with the bridge's
``LinePump`` and a ``qt.QTimer``. Callbacks are guarded: an exception in one is logged and kept (Slicer's poller
stops for good when a callback raises, and the panel would stay "running"). A blocking call
(``waitForCompletion=True``, scripts and self-tests) starts the same way and processes events until the end.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import qt
import slicer
from PancreasDiNTSLib.bridge import child_process, commands, progress_lines

EventCallback = Callable[[progress_lines.Event], Any]
FinishedCallback = Callable[["EngineProcess"], Any]


def _hasNonBlockingLaunch() -> bool:
    """True on Slicer >= 5.12, whose launchConsoleProcess can stream output through callbacks."""
    return "blocking" in inspect.signature(slicer.util.launchConsoleProcess).parameters


def processEvents() -> None:
    """Let Qt run timers and repaint while a caller waits (a blocking call must not freeze the GUI)."""
    slicer.app.processEvents()


class FollowedRun:
    """What a local engine process and a server run share: output lines parsed into events, guarded callbacks,
    one finish. Subclasses feed lines to :meth:`_onLine` and call :meth:`_finish` once the run ended."""

    def __init__(self, eventCallback: Callable[[progress_lines.Event], Any] | None = None,
                 finishedCallback: Callable[[Any], Any] | None = None) -> None:
        self.eventCallback = eventCallback
        self.finishedCallback = finishedCallback
        self.parser = progress_lines.ProgressParser()
        self.returncode: int | None = None
        self.cancelled = False
        self.callbackErrors: list[str] = []
        self._timer: Any = None

    def _onLine(self, line: str) -> None:
        event = self.parser.feed(line)
        if event.kind == "log" and event.line:
            logging.info(event.line)
        if self.eventCallback:
            self._guarded(self.eventCallback, event)

    def _finish(self, returncode: int | None) -> None:
        if self.returncode is not None:
            return
        self.returncode = returncode if returncode is not None else -1
        if self._timer is not None:
            self._timer.stop()
        if self.finishedCallback:
            self._guarded(self.finishedCallback, self)

    def _guarded(self, callback: Callable[[Any], Any], argument: Any) -> None:
        """Call back; an exception is logged and kept, never raised into Slicer's poller."""
        try:
            callback(argument)
        except Exception:  # see the module docstring
            text = traceback.format_exc()
            self.callbackErrors.append(text)
            logging.error(f"PancreasDiNTS: a callback failed:\n{text}")


class EngineProcess(FollowedRun):
    """One engine command running outside Slicer's Python.

    eventCallback(event) receives each :class:`PancreasDiNTSLib.bridge.progress_lines.Event`; finishedCallback(process)
    is called once, in the main thread, after the process ended (read ``returncode``, ``cancelled``, ``parser``).
    An exception raised by a callback is logged and kept in ``callbackErrors``; the run goes on.
    """

    POLL_INTERVAL_MSEC = 200
    WAIT_SLEEP_SEC = 0.02

    def __init__(self, command: Sequence[Any], eventCallback: EventCallback | None = None,
                 finishedCallback: FinishedCallback | None = None) -> None:
        super().__init__(eventCallback, finishedCallback)
        self.command = [str(arg) for arg in command]
        self.proc: Any = None
        self._pump: child_process.LinePump | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None

    def start(self, waitForCompletion: bool = True) -> EngineProcess:
        """Start the process; with waitForCompletion, return after it ended (events are processed meanwhile)."""
        logging.info("PancreasDiNTS: running " + " ".join(self.command))
        environment = commands.engine_environment(slicer.util.startupEnvironment().get("PYTHONPATH"))
        if _hasNonBlockingLaunch():
            self.proc = slicer.util.launchConsoleProcess(
                self.command, updateEnvironment=environment, blocking=False,
                logCallback=self._onLine, completedCallback=self._finish)
        else:  # Slicer 5.10: read on a thread, poll from a timer so the GUI stays responsive
            self.proc = slicer.util.launchConsoleProcess(self.command, updateEnvironment=environment)
            self._pump = child_process.LinePump(self.proc.stdout)
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_INTERVAL_MSEC)
            self._timer.connect("timeout()", self._poll)
            self._timer.start()
        if waitForCompletion:
            self.wait()
        return self

    def wait(self) -> int | None:
        """Process events until the process ended and its completion was handled; return the exit code."""
        while self.running:
            processEvents()
            time.sleep(self.WAIT_SLEEP_SEC)
        return self.returncode

    def cancel(self) -> None:
        """Kill the whole process tree (PythonSlicer is a launcher: killing it alone leaves the work running);
        returns at once (the wait for the processes to go runs on a thread; the end is reported as usual)."""
        if self.running and not self.cancelled:
            self.cancelled = True
            threading.Thread(target=self._kill, name="PancreasDiNTS-cancel", daemon=True).start()

    def _kill(self) -> None:
        """The process tree, or the process alone when psutil is not installed yet (a fresh Slicer)."""
        try:
            child_process.kill_process_tree(self.proc.pid)
        except ModuleNotFoundError:
            self.proc.kill()

    def stop(self, timeout: float = 5.0) -> None:
        """Kill and wait without calling back (the application is closing: no widget may be touched)."""
        self.eventCallback = self.finishedCallback = None
        if self.running:
            self.cancelled = True
            self._kill()
        if self.proc is not None and self.returncode is None:
            try:
                self.proc.wait(timeout=timeout)
            except Exception as error:  # closing: note it, never raise
                logging.warning(f"PancreasDiNTS: the engine process did not end: {error}")
            self._finish(self.proc.returncode)

    def _poll(self) -> None:
        assert self._pump is not None
        for line in self._pump.drain():
            self._onLine(line)
        if self._pump.ended and self.proc.poll() is not None:
            self._timer.stop()
            self._finish(self.proc.returncode)

