"""The modules' resource files, as Slicer finds them next to the module file.

``slicerMacroBuildScriptedModule`` copies the ``RESOURCES`` of every scripted module of the extension into one
``qt-scripted-modules/Resources/`` folder (CTK's ``ctkMacroCompilePythonScript``), so each file a module ships
has a module-specific name: ``Icons/<Module>.png``, ``UI/<Module>.ui``, ``<Module>-requirements.txt``.
"""

from __future__ import annotations

from pathlib import Path

REQUIREMENTS_SUFFIX = "-requirements.txt"
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


def engineRequirementsFile() -> Path:
    """The engine's requirements file, found from this library: it sits in the engine module's folder (the
    source tree's ``PancreasDiNTS/``, or the installed ``qt-scripted-modules/``), next to ``PancreasDiNTS.py``."""
    return requirementsFile(Path(__file__).resolve().parents[1] / f"{ENGINE_MODULE_NAME}.py", ENGINE_MODULE_NAME)
