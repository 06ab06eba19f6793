"""The modules' resource files, as Slicer finds them next to the module file.

``slicerMacroBuildScriptedModule`` copies the ``RESOURCES`` of every scripted module of the extension into one
``qt-scripted-modules/Resources/`` folder (CTK's ``ctkMacroCompilePythonScript``), so each file a module ships
has a module-specific name: ``Icons/<Module>.png``, ``UI/<Module>.ui``, ``<Module>-requirements.txt``.
"""

from __future__ import annotations

from pathlib import Path

REQUIREMENTS_SUFFIX = "-requirements.txt"
# Both modules' contributors ("Firstname Lastname (Organization)" as Slicer's catalogue asks: the extension's
# EXTENSION_CONTRIBUTORS says the same; Testing/test_slicer_cmake.py compares them). The project has not named
# its people yet: docs/SLICER.md says what to fill in before a catalogue submission.
CONTRIBUTORS = ("PancreasDiNTS developers",)
# The modules' help links here (the extension's EXTENSION_HOMEPAGE, README section "Slicer modules").
DOCUMENTATION_URL = "https://github.com/PancreasDiNTS/SlicerPancreasDiNTS#slicer-modules"


def helpLink() -> str:
    """The sentence every module's help text ends with: where its documentation is."""
    return f' See the <a href="{DOCUMENTATION_URL}">documentation</a>.'


def resourcesFolder(moduleFile: str | Path) -> Path:
    """The ``Resources`` folder next to a module file (as ``ScriptedLoadableModuleWidget.resourcePath``)."""
    return Path(moduleFile).resolve().parent / "Resources"


def requirementsFile(moduleFile: str | Path, moduleName: str) -> Path:
    """The module's pip requirements file, ``Resources/<Module>-requirements.txt``."""
    return resourcesFolder(moduleFile) / f"{moduleName}{REQUIREMENTS_SUFFIX}"


def uiFile(moduleFile: str | Path, moduleName: str) -> Path:
    """The module's Qt Designer file, ``Resources/UI/<Module>.ui``."""
    return resourcesFolder(moduleFile) / "UI" / f"{moduleName}.ui"


def iconFile(moduleFile: str | Path, moduleName: str) -> Path:
    """The module's icon, ``Resources/Icons/<Module>.png`` (ScriptedLoadableModule sets it from this name)."""
    return resourcesFolder(moduleFile) / "Icons" / f"{moduleName}.png"


# The module that ships the engine, this library and the engine's requirements (PancreasDiNTSTrain adds its own).
ENGINE_MODULE_NAME = "PancreasDiNTS"


def engineModuleFile() -> Path:
    """``PancreasDiNTS.py``, found from this library (the source tree's ``PancreasDiNTS/`` or the installed
    ``qt-scripted-modules/``): its ``Resources/`` holds the engine module's files."""
    return Path(__file__).resolve().parents[1] / f"{ENGINE_MODULE_NAME}.py"


def engineRequirementsFile() -> Path:
    """The engine's requirements file, found from this library: it sits in the engine module's folder (the
    source tree's ``PancreasDiNTS/``, or the installed ``qt-scripted-modules/``), next to ``PancreasDiNTS.py``."""
    return requirementsFile(engineModuleFile(), ENGINE_MODULE_NAME)
