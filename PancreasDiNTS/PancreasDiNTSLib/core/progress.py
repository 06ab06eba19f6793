"""One progress interface for long work: a terminal bar, JSON lines (for the Slicer module), or nothing.

JSON mode prints one object per line on stdout, flushed at once::

    {"case": "ct1", "stage": "infer", "fraction": 0.42, "message": "window 210/500"}

``fraction`` is the fraction of the whole run (all cases) done, in [0, 1]. Stages used by ``segment``:
``start``, ``load``, ``preprocess``, ``infer``, ``postprocess``, ``write``, ``done`` (a case finished),
``skipped``, ``error`` (the message is the one-line reason), ``summary`` (last line of a run).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

ProgressCallback = Callable[[dict[str, Any]], None]
PROGRESS_STYLES = ("bar", "json", "none", "auto")
_BAR_STEPS = 1000  # the bar counts per mille of the whole run


class Progress:
    """Reports progress of a run made of ``total`` equal parts (cases, epochs...)."""

    def __init__(
        self,
        mode: str = "auto",
        total: int = 1,
        stream: TextIO | None = None,
        callback: ProgressCallback | None = None,
        unit: str = "case",
    ) -> None:
        if mode not in PROGRESS_STYLES:
            raise ValueError(f"progress mode must be one of {PROGRESS_STYLES}, not {mode!r}")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self.total = max(1, total)
        self.index = 0
        self.callback = callback
        self.stream = stream
        self.unit = unit
        self._bar: tqdm[Any] | None = None
        self._last_emit = 0.0
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=_BAR_STEPS, unit="‰", file=stream or sys.stderr, dynamic_ncols=True,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def start_item(self, index: int) -> None:
        """Make item ``index`` (0-based) the current one."""
        self.index = index

    def update(self, case: str, stage: str, part: float = 0.0, message: str = "", **extra: Any) -> None:
        """Report that the current item reached ``part`` (0..1) of its work in ``stage``."""
        fraction = min(1.0, (self.index + max(0.0, min(1.0, part))) / self.total)
        event = {"case": case, "stage": stage, "fraction": round(fraction, 4), "message": message, **extra}
        if self.callback is not None:
            self.callback(event)
        if self.mode == "json":
            now = time.monotonic()
            # Window-level updates are throttled; stage changes always go out.
            if stage != "infer" or part >= 1.0 or now - self._last_emit > 0.2:
                self._last_emit = now
                out = self.stream or sys.stdout
                out.write(json.dumps(event) + "\n")
                out.flush()
        elif self._bar is not None:
            self._bar.set_description_str(f"{case} {stage}"[:40], refresh=False)
            self._bar.n = int(fraction * _BAR_STEPS)
            if message:
                self._bar.set_postfix_str(message[:60], refresh=False)
            self._bar.refresh()

    def emit(self, event: dict[str, Any]) -> None:
        """Send a free-form event (summary lines, epoch metrics) to JSON and callbacks."""
        if self.callback is not None:
            self.callback(event)
        if self.mode == "json":
            out = self.stream or sys.stdout
            out.write(json.dumps(event) + "\n")
            out.flush()

    def write(self, text: str) -> None:
        """Print a human-readable line without breaking the bar (not in JSON mode: goes to stderr)."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.n = _BAR_STEPS if self.index + 1 >= self.total else self._bar.n
            self._bar.close()
            self._bar = None
