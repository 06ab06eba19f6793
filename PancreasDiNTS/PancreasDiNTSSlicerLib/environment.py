"""The engine in its own Python environment: a folder this module creates and manages, never Slicer's Python.

The engine always runs as a separate process, so it does not need Slicer's Python: with an engine environment
chosen, every engine command (segment, download, devices, train) runs with that environment's interpreter
(``PancreasDiNTSLib.bridge.commands.python_executable`` reads :data:`commands.ENGINE_PYTHON_VARIABLE`), torch and
the engine's packages are installed there, and Slicer's process imports only the standard-library bridge and
the Slicer-side code. The default on macOS, whose Slicer runs as x86_64 under Rosetta 2 where the last torch
wheel is 2.2.2 (the engine needs 2.4): point the environment at a native arm64 Python (python.org's universal
installer, or ``uv python install 3.12``) and torch, and ``--device mps``, come as for any Mac program. An option
everywhere: it also ends version clashes with other extensions' torch.

The engine's code itself is the one shipped with the extension (``engine_environment`` puts it first on the
child's PYTHONPATH); the environment holds its dependencies.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.bridge import commands, pip_requirements

SETTINGS_KEY = "PancreasDiNTS/EnginePython"  # the engine environment's interpreter ("" = Slicer's Python)
BASE_SETTINGS_KEY = "PancreasDiNTS/EngineBasePython"  # the Python named in the panel
# What the engine needs besides the module's requirements file (those Slicer ships, so that file leaves them
# out; in an own environment nothing is there yet). Testing/test_scene_environment.py compares them with
# pyproject's dependencies.
ENGINE_EXTRA_REQUIREMENTS = ("torch>=2.4", "numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.3", "pydicom>=2.4",
                             "packaging>=21")


def defaultFolder() -> Path:
    """Where the module creates the engine environment: next to the downloaded models."""
    from PancreasDiNTSLib.bridge import model_folders

    return Path(model_folders.model_cache_folder()).parent / "engine-environment"


def environmentPython(folder: str | Path) -> Path:
    """The interpreter of a venv folder (``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere)."""
    folder = Path(folder)
    return folder / "Scripts" / "python.exe" if os.name == "nt" else folder / "bin" / "python"


def isDefault() -> bool:
    """An own environment is the default on macOS (see the module docstring)."""
    return platform.system() == "Darwin"


def creationCommands(basePython: str | Path, folder: str | Path, requirementsFiles: list[Path]) -> list[list[str]]:
    """The commands that make ``folder`` a venv of ``basePython`` holding what the engine needs."""
    python = str(environmentPython(folder))
    requirements = [line for path in requirementsFiles for line in pip_requirements.read_requirements(path)]
    return [[str(basePython), "-m", "venv", str(folder)],
            [python, "-m", "pip", "install", "--upgrade", "pip"],
            [python, "-m", "pip", "install", *ENGINE_EXTRA_REQUIREMENTS, *requirements]]


def missingCommand(python: str | Path, requirementsFiles: list[Path]) -> list[str]:
    """A command that exits 0 when ``python``'s environment holds every requirement (nothing is imported
    but the standard library; versions through ``importlib.metadata``), else prints the missing ones."""
    requirements = [*ENGINE_EXTRA_REQUIREMENTS,
                    *[line for path in requirementsFiles for line in pip_requirements.read_requirements(path)]]
    names = [r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].split("~")[0].strip()
             for r in requirements]
    check = ("import sys\nfrom importlib import metadata\nmissing = []\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n        metadata.version(name)\n"
             "    except metadata.PackageNotFoundError:\n        missing.append(name)\n"
             "print(' '.join(missing))\nsys.exit(1 if missing else 0)")
    return [str(python), "-c", check, *names]


def enginePython() -> str | None:
    """The chosen engine environment's interpreter, or None (the engine runs with Slicer's Python)."""
    return os.environ.get(commands.ENGINE_PYTHON_VARIABLE) or None


def _settings() -> Any:
    import qt

    return qt.QSettings()


def useEnvironment(python: str | Path | None, remember: bool = True) -> None:
    """Run the engine with ``python`` from now on (None: with Slicer's Python again); remembered in Slicer's
    settings unless ``remember`` is False."""
    if python:
        os.environ[commands.ENGINE_PYTHON_VARIABLE] = str(python)
    else:
        os.environ.pop(commands.ENGINE_PYTHON_VARIABLE, None)
    if remember:
        _settings().setValue(SETTINGS_KEY, str(python or ""))


def chosenBasePython() -> str:
    """The Python the user named in the panel (a base interpreter or an existing environment's), or ""."""
    return str(_settings().value(BASE_SETTINGS_KEY) or "")


def chooseEnvironment(own: bool, python: str = "") -> str | None:
    """The panel's choice: ``own`` and ``python`` (a base interpreter, an existing environment's python, or ""
    for the module's environment). An existing environment is used as it is; otherwise the module's folder is
    chosen and made at the next :func:`ensureEngine`. Returns the interpreter the engine will run with."""
    _settings().setValue(BASE_SETTINGS_KEY, python or "")
    if not own:
        useEnvironment(None)
        return None
    given = Path(python) if python else None
    chosen = given if given is not None and isEnvironment(given) else environmentPython(defaultFolder())
    useEnvironment(chosen)
    return str(chosen)


def isEnvironment(python: str | Path) -> bool:
    """True for the interpreter of a venv (its folder holds pyvenv.cfg)."""
    path = Path(python)
    return path.is_file() and (path.parent.parent / "pyvenv.cfg").is_file()


def restoreChoice() -> str | None:
    """At panel start: the environment remembered in Slicer's settings; on macOS, the module's environment when
    nothing was chosen yet (made, after asking, at the first Segment)."""
    saved = _settings().value(SETTINGS_KEY)
    if saved is None and isDefault():
        useEnvironment(environmentPython(defaultFolder()))
    elif saved:
        useEnvironment(str(saved), remember=False)
    return enginePython()


def ensureEngine(askConfirmation: bool = True, requirementsFiles: list[Path] | None = None) -> bool:
    """Check the chosen environment; make it, or install what it lacks, after asking. False: declined."""
    import slicer

    from PancreasDiNTSSlicerLib.process import EngineProcess
    from PancreasDiNTSSlicerLib.resources import engineRequirementsFile

    files = requirementsFiles or [engineRequirementsFile()]
    python = Path(enginePython() or environmentPython(defaultFolder()))
    if python.is_file() and EngineProcess(missingCommand(python, files)).start(True).returncode == 0:
        return True
    folder = python.parent.parent
    steps = creationCommands(basePython(), folder, files)
    if isEnvironment(python):
        steps = steps[1:]  # an existing environment: complete it
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            f"The engine's Python environment {folder} will be {'completed' if isEnvironment(python) else 'created'}"
            " now: PyTorch and the engine's packages are downloaded into it (several GB with CUDA). Slicer's own "
            "Python is not changed.", windowTitle="Engine environment"):
        return False
    for command in steps:
        task = EngineProcess(command).start(waitForCompletion=True)
        if task.returncode != 0:
            raise RuntimeError(f"Preparing the engine environment {folder} failed at `{' '.join(command[:4])} ...`: "
                               f"{task.parser.error_message(task.returncode)}")
    useEnvironment(environmentPython(folder))
    return True


def basePython() -> str:
    """The interpreter a new environment is made from: the one named in the panel, else the first Python 3.10+
    on the PATH (``python3.13`` ... ``python3``), else Slicer's own."""
    named = chosenBasePython()
    if named and not isEnvironment(named):
        return named
    for name in ("python3.13", "python3.12", "python3.11", "python3.10", "python3"):
        if found := shutil.which(name):
            return found
    return sys.executable


def ensureOptional(requirements: tuple[str, ...], askConfirmation: bool = True) -> bool:
    """Install an optional feature's packages into the engine environment (after asking); False: declined."""
    import slicer

    from PancreasDiNTSSlicerLib.process import EngineProcess

    python = enginePython()
    assert python, "no engine environment is chosen"
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "These Python packages will be installed into the engine's environment:\n\n" + "\n".join(requirements),
            windowTitle="Engine environment"):
        return False
    task = EngineProcess([python, "-m", "pip", "install", *requirements]).start(waitForCompletion=True)
    if task.returncode != 0:
        raise RuntimeError(f"Installing {', '.join(requirements)} into {python} failed: "
                           f"{task.parser.error_message(task.returncode)}")
    return True
