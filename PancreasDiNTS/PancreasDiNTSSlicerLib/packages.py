"""The Python packages the engine needs in Slicer's Python: checked without importing them, installed safely.

Checks read installed distributions with ``importlib.metadata`` and compare versions with ``packaging`` (the
bridge's ``missing_requirements``): torch is never imported into Slicer's process to find out whether it is
there. torch comes from the PyTorch extension (``PyTorchUtils.installTorch`` picks the CUDA or CPU build), only
when it is missing or older than :data:`TORCH_REQUIREMENT`. The other packages are installed by pip with a
constraints file that pins the packages Slicer ships at their installed versions (:data:`SLICER_MANAGED_PACKAGES`,
and every distribution installed in Slicer's own site-packages, see :func:`slicerShippedPackages`): pip then refuses
(with one clear message here) instead of silently replacing, e.g., Slicer's pydicom.

One installation at a time: a second call while one runs (pip pumps GUI events, so the panel stays clickable)
raises at once instead of starting a second pip into the same site-packages; panels read :func:`isInstalling`.
Features used by few (the review section, ONNX, TensorRT) install their packages when first used
(:func:`ensureOptional`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import slicer
from PancreasDiNTSLib.bridge import pip_requirements

TORCH_REQUIREMENT = "torch>=2.4"
# Packages Slicer ships (or the PyTorch extension manages): pinned at their installed versions while pip runs.
SLICER_MANAGED_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "SimpleITK", "pydicom", "requests", "vtk",
                           "packaging")
CONSTRAINTS_FILE_NAME = "slicer-constraints.txt"
# Packages of features few use, installed when the feature is first used (pyproject's extras of the same name;
# Testing/test_slicer_packages.py compares them). "review": what the scene layer's review imports at file scope.
OPTIONAL_FEATURES: dict[str, tuple[str, ...]] = {
    "review": ("nibabel>=5", "filelock>=3.12"),
    "export": ("onnx>=1.15", "onnxruntime>=1.17"),
    "onnx-runtime": ("onnxruntime>=1.17",),
    "trt": ("torch-tensorrt",),
}
_installing: list[str] = []  # the requester of the installation that runs now (at most one)


def isInstalling() -> bool:
    """True while an installation started here runs (the panels lock what pip could break)."""
    return bool(_installing)


@contextlib.contextmanager
def oneInstallation(requester: str, onChange: Callable[[], object] | None = None) -> Iterator[None]:
    """Run the body as the only installation; a second one raises RuntimeError at once. ``onChange`` is called
    when it starts and ends (a panel locks and unlocks itself)."""
    if _installing:
        raise RuntimeError(f"{_installing[0]} is already installing Python packages; wait for it to finish.")
    _installing.append(requester)
    try:
        if onChange:
            onChange()
        yield
    finally:
        _installing.clear()
        if onChange:
            onChange()


def _hasPackagingModule() -> bool:
    """True on Slicer >= 5.12 (slicer.packaging: pip_ensure, load_requirements)."""
    return importlib.util.find_spec("slicer.packaging") is not None


def installedVersion(name: str) -> str | None:
    """The installed version of a distribution, or None (nothing is imported)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torchNeedsInstall(requirement: str = TORCH_REQUIREMENT) -> bool:
    """True when torch is not installed or its version is outside ``requirement`` (torch is not imported)."""
    return bool(pip_requirements.missing_requirements([requirement]))


def slicerShippedPackages(site: str | None = None) -> list[str]:
    """The distributions installed in Slicer's own site-packages (``sysconfig``'s purelib: what Slicer's
    package ships, e.g. pillow, urllib3, certifi on 5.10, highdicom on 5.12), plus :data:`SLICER_MANAGED_PACKAGES`;
    what a user installed later into the same folder is included too (pinning it is harmless)."""
    folder = Path(site or sysconfig.get_paths()["purelib"])
    names = {dist.metadata["Name"] for dist in metadata.distributions(path=[str(folder)]) if dist.metadata["Name"]}
    return sorted(names | set(SLICER_MANAGED_PACKAGES), key=str.lower)


def slicerConstraints(packages: Iterable[str] | None = None) -> list[str]:
    """``name==version`` for each of ``packages`` (default: :func:`slicerShippedPackages`) that is installed:
    what pip must not replace."""
    names = slicerShippedPackages() if packages is None else packages
    return [f"{name}=={version}" for name in names if (version := installedVersion(name))]


def writeConstraints(path: Path, packages: Iterable[str] | None = None) -> Path:
    """A pip constraints file pinning what Slicer ships (see :func:`slicerConstraints`)."""
    lines = ["# Packages Slicer ships, pinned at their installed versions: pip may not replace them.",
             *slicerConstraints(packages)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def readRequirements(files: Iterable[str | Path]) -> list[str]:
    """The requirement lines of every requirements file, in order."""
    return [line for path in files for line in pip_requirements.read_requirements(path)]


def installFailedMessage(missing: Sequence[str], constraints: Sequence[str]) -> str:
    """One line: what failed and why it may have (a pinned package Slicer ships), and where pip's words are."""
    return (f"Installing {', '.join(missing)} failed. Packages Slicer ships are never replaced "
            f"({', '.join(constraints) or 'none installed'}); a package needing another version of one of them "
            "cannot be installed in this Slicer. The Python console shows pip's message.")


def ensureTorch(askConfirmation: bool = True, requirement: str = TORCH_REQUIREMENT) -> bool:
    """Make sure a torch satisfying ``requirement`` is installed; False when the user declined.

    Nothing is imported when the installed torch is recent enough; otherwise the PyTorch extension installs it
    (its ``installTorch`` imports torch once, after installing)."""
    if not torchNeedsInstall(requirement):
        return True
    specifier = requirement[len("torch"):].strip()
    torch = pyTorchUtils().PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation,
                                                            torchVersionRequirement=specifier)
    return torch is not None


def pyTorchUtils() -> Any:
    """The PyTorch extension's ``PyTorchUtils`` module, also under ``--testing``.

    With ``--testing`` Slicer reads temporary settings, so installed extensions' module folders are not on the
    module path; the extension is then looked up in the extensions folder itself."""
    try:
        import PyTorchUtils

        return PyTorchUtils
    except ModuleNotFoundError:
        pass
    root = Path(getattr(slicer.app, "extensionsInstallPath", "") or "")
    found = sorted(root.glob("PyTorch*/**/qt-scripted-modules/PyTorchUtils.py")) if str(root) != "." else []
    if not found:
        raise RuntimeError("Pancreas DiNTS needs the PyTorch extension: install 'PyTorch' from the Extensions "
                           "Manager, restart Slicer, then try again.")
    sys.path.append(str(found[-1].parent))
    return importlib.import_module("PyTorchUtils")


def ensurePackages(files: Sequence[str | Path], askConfirmation: bool = True,
                   requester: str = "PancreasDiNTS") -> bool:
    """Install what ``files`` require and is missing, pinning what Slicer ships; False when the user declined.

    askConfirmation also decides whether a restart may be offered (never in testing mode, where Slicer's dialogs
    answer Yes by themselves, nor in scripts). A pip failure raises RuntimeError with one clear line on 5.10; on
    5.12 Slicer has already shown it, so the answer is False (and the line is logged). A requirement still unmet
    afterwards raises RuntimeError."""
    missing = pip_requirements.missing_requirements(readRequirements(files))
    if not missing:
        return True
    with tempfile.TemporaryDirectory(prefix="PancreasDiNTS-pip-") as folder:
        constraints = writeConstraints(Path(folder) / CONSTRAINTS_FILE_NAME)
        pinned = slicerConstraints()
        if _hasPackagingModule():  # Slicer >= 5.12: checks, asks, installs with progress, offers a restart
            import slicer.packaging

            try:  # skip_in_testing=False: the self-test (run with --testing) needs the packages to run at all
                slicer.packaging.pip_ensure(missing, constraints=str(constraints), prompt_install=askConfirmation,
                                            prompt_restart=askConfirmation, requester=requester,
                                            skip_in_testing=False)
            except RuntimeError as error:  # raised when the user declines ("User declined package installation")
                if "declined" not in str(error):
                    raise
                logging.info(f"{requester}: installation of {', '.join(missing)} declined")
                return False
            except subprocess.CalledProcessError:
                # Slicer has shown pip's log in its own error dialog (packaging.py _pip_install_with_dialog,
                # :785-790@v5.12.3) before raising: no second dialog, the reason goes to the log.
                logging.error(f"{requester}: {installFailedMessage(missing, pinned)}")
                return False
        elif not _installWithPip(missing, constraints, pinned, askConfirmation, requester):
            return False
    still = pip_requirements.missing_requirements(missing)
    if still:
        raise RuntimeError(f"Still missing after the installation: {', '.join(still)}. Restart Slicer and try "
                           "again; the Python console shows pip's messages.")
    return True


def _installWithPip(missing: Sequence[str], constraints: Path, pinned: Sequence[str], askConfirmation: bool,
                    requester: str) -> bool:
    """Slicer 5.10: confirm, ``pip install -c constraints``, offer a restart when an imported package changed."""
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs these Python packages, which will be downloaded and installed now:\n\n"
            + "\n".join(missing), windowTitle="Install Python packages"):
        return False
    upgraded = [req for req in missing if pip_requirements.requirement_installed(req)]
    try:
        slicer.util.pip_install(["-c", str(constraints), *missing])
    except subprocess.CalledProcessError as error:
        raise RuntimeError(installFailedMessage(missing, pinned)) from error
    # The engine runs in a new process and sees new packages at once; Slicer itself only after a restart.
    if upgraded and askConfirmation and not slicer.app.testingEnabled() and slicer.util.confirmYesNoDisplay(
            "Some packages were upgraded. Restart Slicer now so that it uses the new versions too?"):
        slicer.util.restart()
    return True


def setupPythonRequirements(files: Sequence[str | Path], askConfirmation: bool = True,
                            requester: str = "PancreasDiNTS", onChange: Callable[[], object] | None = None) -> bool:
    """torch (through the PyTorch extension), then the packages of ``files``; False when the user declined.
    With an engine environment chosen (:mod:`.environment`), that environment is checked or made instead and
    nothing is installed into Slicer's Python. One installation at a time (:func:`oneInstallation`)."""
    from PancreasDiNTSSlicerLib import environment

    if environment.enginePython() is not None:
        with oneInstallation(requester, onChange):
            return environment.ensureEngine(askConfirmation)
    if not torchNeedsInstall() and not pip_requirements.missing_requirements(readRequirements(files)):
        return True
    with oneInstallation(requester, onChange):
        if not ensureTorch(askConfirmation):
            return False
        return ensurePackages(files, askConfirmation, requester)


def ensureOptional(feature: str, askConfirmation: bool = True, requester: str = "PancreasDiNTS",
                   onChange: Callable[[], object] | None = None) -> bool:
    """Install the packages of an optional feature (:data:`OPTIONAL_FEATURES`) where they are used when
    missing: into Slicer's Python through the same confirmation and constraints as the engine's (the review
    runs in Slicer), or into the engine's own environment when one is chosen; False when declined."""
    requirements = OPTIONAL_FEATURES[feature]
    from PancreasDiNTSSlicerLib import environment

    if environment.enginePython() is not None and feature != "review":  # the engine's own environment
        with oneInstallation(requester, onChange):
            return environment.ensureOptional(requirements, askConfirmation)
    if not pip_requirements.missing_requirements(requirements):
        return True
    with tempfile.TemporaryDirectory(prefix="PancreasDiNTS-req-") as folder:
        path = Path(folder) / f"{feature}-requirements.txt"
        path.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        with oneInstallation(requester, onChange):
            return ensurePackages([path], askConfirmation, requester)
