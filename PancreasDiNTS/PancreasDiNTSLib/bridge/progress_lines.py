"""Reading the engine's output: JSON progress lines as :class:`Event` objects and the run's state in
:class:`ProgressParser` (fraction, stage, cases done, outputs, the engine's one-line error); training metrics for
display.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# "pancreas-dints <command>: error: <message>" is how cli.main() reports a PancreasDiNTSError.
_ENGINE_ERROR = re.compile(r"^pancreas-dints(?: [\w-]+)?: error: (?P<message>.+)$")


@dataclass
class Event:
    """One output line of the engine, interpreted.

    ``kind`` is ``progress`` (a JSON object with a ``stage``), ``metrics`` (a JSON object without one, e.g.
    epoch/loss/Dice of training), or ``log`` (any other line: warnings, tracebacks, the final error line).
    """

    kind: str
    line: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return str(self.data.get("stage", ""))

    @property
    def fraction(self) -> float | None:
        value = self.data.get("fraction")
        return float(value) if isinstance(value, int | float) else None

    @property
    def message(self) -> str:
        return str(self.data.get("message", "")) if self.kind != "log" else self.line


class ProgressParser:
    """Turns the engine's stdout lines into :class:`Event` objects and remembers what the run told so far."""

    METRIC_KEYS = ("epoch", "epochs", "step", "loss", "dice", "val_dice", "mean_dice", "best_dice", "lr")

    def __init__(self) -> None:
        self.fraction = 0.0
        self.status = ""
        self.cases_done: list[str] = []
        self.case_errors: dict[str, str] = {}
        self.engine_error: str | None = None
        self.summary: dict[str, Any] | None = None
        self.metrics: dict[str, Any] = {}
        self.outputs: dict[str, str] = {}
        self.log: list[str] = []

    def feed(self, line: str) -> Event:
        """Interpret one line (with or without its newline)."""
        text = line.rstrip("\r\n")
        data = _json_object(text)
        if data is None:
            self.log.append(text)
            match = _ENGINE_ERROR.match(text.strip())
            if match:
                self.engine_error = match.group("message").strip()
            return Event("log", text)
        if "stage" not in data:
            self._keep_metrics(data)
            return Event("metrics", text, data)
        event = Event("progress", text, data)
        if event.fraction is not None:
            self.fraction = max(0.0, min(1.0, event.fraction))
        case = str(data.get("case", ""))
        stage = event.stage
        if stage == "error":
            self.case_errors[case] = event.message
        elif stage == "done" and case and case not in self.cases_done:
            self.cases_done.append(case)
            if data.get("output_dir"):
                self.outputs[case] = str(data["output_dir"])
        elif stage == "summary":
            self.summary = data
        self._keep_metrics(data)
        if stage == "epoch" and "epoch" in data:
            loss = data.get("loss")
            self.status = f"epoch {data['epoch']}/{data.get('epochs', '?')}" + (
                f", loss {loss:.4f}" if isinstance(loss, int | float) else "")
        else:
            text = event.message or stage
            self.status = f"{case}: {text}" if case and case != stage else text
        return event

    def _keep_metrics(self, data: dict[str, Any]) -> None:
        """Remember training numbers (a null Dice between validations keeps the last known value)."""
        self.metrics.update({k: v for k, v in data.items()
                             if (k in self.METRIC_KEYS or "dice" in k) and v is not None})

    def feed_all(self, lines: Iterable[str]) -> list[Event]:
        """A finished process's whole output at once (kept for scripts and the scene-layer tests)."""
        return [self.feed(line) for line in lines]

    def error_message(self, returncode: int | None = None) -> str:
        """The one-line reason a run failed: the engine's own message when it printed one."""
        if self.engine_error:
            return self.engine_error
        if self.case_errors:
            return "; ".join(f"{case}: {msg}" if case else msg for case, msg in self.case_errors.items())
        tail = [line for line in self.log if line.strip()]
        if tail:
            return tail[-1].strip()
        return f"the engine stopped with exit code {returncode}" if returncode is not None else "unknown error"


def _json_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def training_display(metrics: dict[str, Any]) -> dict[str, str]:
    """Texts for epoch, loss and validation Dice from :attr:`ProgressParser.metrics` ('-' when unknown)."""
    epoch, epochs, loss = metrics.get("epoch"), metrics.get("epochs"), metrics.get("loss")
    dice = next((metrics[k] for k in ("val_dice", "mean_dice", "dice", "best_val_mean_dice")
                 if metrics.get(k) is not None), None)
    return {
        "epoch": "-" if epoch is None else (f"{epoch}/{epochs}" if epochs else str(epoch)),
        "loss": "-" if not isinstance(loss, int | float) else f"{loss:.4f}",
        "dice": "-" if not isinstance(dice, int | float) else f"{dice:.3f}",
    }
