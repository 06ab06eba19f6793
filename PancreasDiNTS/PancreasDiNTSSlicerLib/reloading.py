"""What a module's ``onReload`` reloads besides the module file: the Slicer-side libraries and the bridge.

``ScriptedLoadableModuleWidget.onReload`` re-executes only the module file; helpers it imports stay as they
were. Dropping them from ``sys.modules`` and importing them again runs every file anew, in import order.
"""

from __future__ import annotations

import importlib
import sys

# The engine itself (torch, MONAI) never runs in Slicer, so only its torch-free bridge is reloaded.
RELOADED_PACKAGES = ("PancreasDiNTSLib.bridge", "PancreasDiNTSSceneLib", "PancreasDiNTSSlicerLib")


def reloadLibraries(packages: tuple[str, ...] = RELOADED_PACKAGES) -> list[str]:
    """Forget ``packages`` and their sub-modules, import the packages again; return the names forgotten."""
    dropped = sorted(name for name in sys.modules
                     if any(name == package or name.startswith(package + ".") for package in packages))
    for name in dropped:
        del sys.modules[name]
    for package in packages:
        importlib.import_module(package)
    for name in dropped:  # sub-modules the package's __init__ does not import itself
        if name not in sys.modules:
            importlib.import_module(name)
    return dropped
