"""PancreasDiNTSSlicerLib.devices: the device combo box of both panels. A QComboBox cannot exist here, so a
minimal stand-in with the QComboBox calls the library makes (and signal counting) takes its place."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class ComboBox:
    """QComboBox's item model: (text, data) items, a current index, signals counted unless blocked."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []
        self.currentIndex = -1
        self.blocked = False
        self.signals = 0

    def blockSignals(self, block):
        previous, self.blocked = self.blocked, block
        return previous

    def clear(self):
        self.items = []
        self._set(-1)

    def addItem(self, text, data):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self._set(0)  # QComboBox selects the first item added to an empty box

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        self._set(index)

    def itemData(self, index):
        return self.items[index][1]

    def connect(self, signal, slot):
        self.slots = {**getattr(self, "slots", {}), signal: slot}

    def _set(self, index):
        if index != self.currentIndex:
            self.currentIndex = index
            self.signals += 0 if self.blocked else 1

    @property
    def current(self):
        return self.items[self.currentIndex]


@pytest.fixture
def devices(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "PancreasDiNTS"))
    for name in ("qt", "slicer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    from slicer_stubs import i18n_module

    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n_module())
    for name in [n for n in sys.modules if n.startswith("PancreasDiNTSSlicerLib")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("PancreasDiNTSSlicerLib.devices")


def test_a_saved_gpu_shows_as_itself_not_as_automatic(devices):
    """The finding: a scene saved with cuda:1 showed "Automatic" until GPUs were detected (and a click on
    Segment then ran on cuda:1 while the panel said Automatic)."""
    box = ComboBox()
    devices.setDeviceItems(box, devices.DEFAULT_DEVICES, current="cuda:1")
    assert box.current == (devices.savedDeviceLabel("cuda:1"), "cuda:1")
    assert "not detected yet" in box.current[0]
    devices.setDeviceItems(box, devices.DEFAULT_DEVICES, "cuda:1", detected=True)  # a detection did not find it
    assert box.current == ("cuda:1 (not found by Detect GPUs)", "cuda:1")  # audit N17
    assert box.signals == 0  # filling and selecting never writes back into the parameter node
    detected = [*devices.DEFAULT_DEVICES, ("cuda:0", "GPU 0: A"), ("cuda:1", "GPU 1: B (80 GiB)")]
    devices.setDeviceItems(box, detected, current="cuda:1")
    assert box.current == ("GPU 1: B (80 GiB)", "cuda:1") and len(box.items) == 4
    devices.selectDevice(box, "cpu")
    assert box.current[1] == "cpu" and box.signals == 0
    devices.selectDevice(box, "")
    assert box.current[1] == "auto"
