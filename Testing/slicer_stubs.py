"""The thinnest stand-ins for what PyPI's slicer-core lacks, so the module files import outside the application.

slicer-core brings the real ``slicer`` package (MRML, ``slicer.util``, ``VTKObservationMixin``) and ``vtk``; it
has no Qt (``qt``, ``ctk``) and none of the application's Python modules (``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``). Only those are replaced here, and only with what a module file needs to be
imported and its logic to be constructed: base classes that do nothing, a decorator that returns the class.
Nothing here computes; a module that used Qt at import time would fail on the empty ``qt``/``ctk``.
"""

from __future__ import annotations

import sys
import types
import unittest

STUBBED = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n")


class _Base:
    def __init__(self, *args, **kwargs) -> None:
        pass


def _scripted_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"):
        setattr(module, name, type(name, (_Base,), {}))
    module.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (unittest.TestCase,), {})
    return module


def _wrapper_module() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.parameterNodeWrapper = lambda cls: cls
    module.Choice = lambda choices: ("Choice", tuple(choices))
    return module


def i18n_module() -> types.ModuleType:
    """``slicer.i18n`` (Qt's translator in the application): text comes back untranslated."""
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text
    module.translate = lambda context, text: text
    return module


def install() -> types.ModuleType:
    """Import the real slicer-core ``slicer`` and add the stand-ins to ``sys.modules``; return ``slicer``."""
    import slicer

    assert hasattr(slicer, "vtkMRMLScene"), "the installed 'slicer' is not slicer-core"
    modules = {"qt": types.ModuleType("qt"), "ctk": types.ModuleType("ctk"),
               "slicer.ScriptedLoadableModule": _scripted_module(),
               "slicer.parameterNodeWrapper": _wrapper_module(), "slicer.i18n": i18n_module()}
    for name, module in modules.items():
        sys.modules[name] = module
        if name.startswith("slicer."):
            setattr(slicer, name.split(".", 1)[1], module)
    return slicer
