"""The panel's choices as enums: the scene stores each member's name (a key), the combo box shows its label.

Slicer's parameter node wrapper stores an ``enum.Enum`` field as the member's name and fills a combo box with
``EnumClass.label(member)`` (``serializers.py`` ``EnumSerializer.write``, ``guiConnectors.py``
``QComboBoxToEnumConnector.__init__``, identical in v5.10.0, v5.12.3 and main), so labels can be translated
without breaking saved scenes. Scenes saved before the keys (display text such as "automatic pancreas region")
still read: :func:`upgradeStoredValues` rewrites them to keys before the wrapper reads the node.
"""

from __future__ import annotations

import enum
from typing import Any

from PancreasDiNTSLib.core import request
from slicer.i18n import tr as _


class Region(enum.Enum):
    """What is segmented: the engine's automatic pancreas region, every window, or inside a markups ROI's box (the
    keys of ``core.request.PANEL_REGIONS``, the engine's one description of a run; a test compares them)."""

    auto = "auto"
    whole = "whole"
    box = "box"

    def label(self) -> str:  # the literal texts, so that Slicer's translation tools find them
        return {"auto": _("automatic pancreas region"), "whole": _("whole CT"), "box": _("ROI node")}[self.name]


class RunPlace(enum.Enum):
    """Where Segment runs: a background process here, or a ``pancreas-dints serve`` (docs/SERVER.md)."""

    local = "local"
    server = "server"

    def label(self) -> str:
        return {"local": _("this computer"), "server": _("server")}[self.name]


class RoiMode(enum.Enum):
    """How an ROI is segmented: the full run's windows touching the box, or the box and some context only."""

    grid = "grid"
    local = "local"

    def label(self) -> str:
        return {"grid": _("grid"), "local": _("local")}[self.name]


class Speed(enum.Enum):
    """fast (default: the same labels, quicker) or exact (MONAI's own sliding window)."""

    fast = "fast"
    exact = "exact"

    def label(self) -> str:
        return {"fast": _("fast"), "exact": _("exact")}[self.name]


class Precision(enum.Enum):
    """The network's number format (the keys of ``core.request.PRECISIONS``; a test compares them): auto (the
    engine decides: fp32 on a CPU today, the bundle's AMP on a GPU), fp32, or bf16 (CPU fast path, faster where
    the CPU has bf16 instructions, logits at the 1e-2 level; docs/PERFORMANCE.md "bf16 on the CPU")."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"

    def label(self) -> str:
        return {"auto": _("automatic"), "fp32": _("fp32 (exact arithmetic)"), "bf16": _("bf16 (CPU, faster)")}[
            self.name]


# Values stored by scenes saved before the keys: parameter name -> {old display text: key} (the region's from
# core.request, which reads them the same way; "roi": this module's key for one release).
LEGACY_VALUES: dict[str, dict[str, str]] = {
    "region": {**{text: key for key, text in request.PANEL_REGIONS.items()}, "roi": "box"},
    "runOn": {"this computer": "local", "server": "server"},
}
ENUM_FIELDS: dict[str, type[enum.Enum]] = {"region": Region, "runOn": RunPlace, "roiMode": RoiMode,
                                            "mode": Speed, "precision": Precision}


def upgradeStoredValues(node: Any) -> list[str]:
    """Rewrite an old scene's display-text values of ``node`` (a vtkMRMLScriptedModuleNode) to keys; a value
    that is neither a key nor a known old value is removed (the field's default is used). Returns the names
    changed."""
    changed = []
    for name, choices in ENUM_FIELDS.items():
        if not node.HasParameter(name):
            continue
        value = node.GetParameter(name)
        if value in choices.__members__:
            continue
        key = LEGACY_VALUES.get(name, {}).get(value)
        if key is None:
            node.UnsetParameter(name)
        else:
            node.SetParameter(name, key)
        changed.append(name)
    return changed
