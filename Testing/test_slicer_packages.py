"""PancreasDiNTSSlicerLib.packages: what the engine needs in Slicer's Python, checked without importing it and
installed without replacing what Slicer ships.

Real: the installed distributions (importlib.metadata), the constraints file, and pip itself resolving against
it (offline, from wheels built here). Replaced at the thinnest seam, because the application cannot exist
here: ``slicer.util``'s dialogs and ``pip_install``, ``slicer.packaging.pip_ensure`` and PyTorchUtils, each
recording how it was called.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.machinery
import subprocess
import sys
import types
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class FakeSlicer:
    """``slicer`` with only what packages.py calls, each call recorded."""

    def __init__(self, testing: bool = False, confirm: bool = True) -> None:
        self.calls: list[tuple[str, object]] = []
        self.confirm = confirm
        self.pip_error: Exception | None = None
        self.constraints_seen: list[str] = []
        util = types.ModuleType("slicer.util")
        util.confirmOkCancelDisplay = lambda text, **kw: self._record("confirmOkCancel", text, self.confirm)
        util.confirmYesNoDisplay = lambda text, **kw: self._record("confirmYesNo", text, True)
        util.restart = lambda: self._record("restart", None, None)
        util.pip_install = self._pip_install
        self.module = types.ModuleType("slicer")
        self.module.__path__ = []  # a package, as Slicer's (find_spec("slicer.packaging") looks there)
        self.module.util = util
        self.module.app = types.SimpleNamespace(testingEnabled=lambda: testing)

    def _record(self, name, value, result):
        self.calls.append((name, value))
        return result

    def _pip_install(self, requirements):
        self.calls.append(("pip_install", list(requirements)))
        assert requirements[0] == "-c"
        self.constraints_seen.append(Path(requirements[1]).read_text())
        if self.pip_error:
            raise self.pip_error

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def load(monkeypatch):
    """Import PancreasDiNTSSlicerLib.packages against a FakeSlicer (Slicer 5.10, or 5.12 with ``pip_ensure``)."""
    monkeypatch.syspath_prepend(str(REPO / "PancreasDiNTS"))

    def _load(fake: FakeSlicer, pip_ensure=None):
        monkeypatch.setitem(sys.modules, "slicer", fake.module)
        monkeypatch.setitem(sys.modules, "slicer.util", fake.module.util)
        if pip_ensure is not None:
            packaging = types.ModuleType("slicer.packaging")
            packaging.__spec__ = importlib.machinery.ModuleSpec("slicer.packaging", None)
            packaging.pip_ensure = pip_ensure
            fake.module.packaging = packaging
            monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
        else:
            monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)
        for name in [n for n in sys.modules if n.startswith("PancreasDiNTSSlicerLib")]:
            monkeypatch.delitem(sys.modules, name)
        module = importlib.import_module("PancreasDiNTSSlicerLib.packages")
        assert module._hasPackagingModule() is (pip_ensure is not None)
        return module

    return _load


def requirements_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "X-requirements.txt"
    path.write_text("# a comment\n" + "\n".join(lines) + "\n")
    return path


def test_constraints_pin_every_installed_slicer_package(load, tmp_path):
    packages = load(FakeSlicer())
    pins = packages.slicerConstraints()
    assert f"pydicom=={metadata.version('pydicom')}" in pins and f"numpy=={metadata.version('numpy')}" in pins
    shipped = packages.slicerShippedPackages()
    for pin in pins:
        name, version = pin.split("==")
        assert name in shipped and metadata.version(name) == version
    assert set(packages.SLICER_MANAGED_PACKAGES) <= set(shipped)
    assert packages.slicerConstraints(["no-such-distribution-xyz"]) == []
    # Every distribution of Slicer's own site-packages is pinned, not only the nine named (audit D1: Slicer 5.10
    # ships pillow, urllib3, certifi, ...): read from a site folder as Slicer's is laid out.
    site = tmp_path / "site-packages"
    (site / "pillow-11.2.1.dist-info").mkdir(parents=True)
    (site / "pillow-11.2.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pillow\nVersion: 11.2.1\n")
    assert "pillow" in packages.slicerShippedPackages(str(site))
    assert "pydicom" in packages.slicerShippedPackages(str(site))
    text = packages.writeConstraints(tmp_path / "c.txt").read_text()
    assert set(pins) <= set(text.splitlines())


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal pure-Python wheel (metadata only) for pip to resolve against."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {f"{dist}.dist-info/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.mark.subprocess
def test_real_pip_refuses_to_replace_a_pinned_slicer_package(load, tmp_path):
    """The finding (highdicom>=0.22 letting pip replace Slicer's pydicom 2.4.4) in miniature, with real pip
    offline: a package needing a newer pydicom is refused under our constraints file, installed (pydicom
    replaced) without it."""
    packages = load(FakeSlicer())
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "pydicom", "99.0", [])
    _wheel(wheels, "needs-new-pydicom", "1.0", ["pydicom>=99"])
    constraints = packages.writeConstraints(tmp_path / "c.txt")
    base = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(wheels),
            "--disable-pip-version-check"]
    refused = subprocess.run(base + ["-c", str(constraints), "needs-new-pydicom"], capture_output=True, text=True)
    assert refused.returncode != 0 and "pydicom" in refused.stderr
    free = subprocess.run(base + ["needs-new-pydicom"], capture_output=True, text=True)
    assert free.returncode == 0 and "pydicom-99.0" in free.stdout  # what would happen without the pins
    assert metadata.version("pydicom") != "99.0"  # dry runs: nothing changed


class FakeTorchUtils:
    """PyTorchUtils: torchInstalled imports torch in Slicer, so it must never be called."""

    def __init__(self, result="torch module"):
        self.installs: list[dict] = []
        self.result = result
        outer = self

        class Logic:
            @staticmethod
            def torchInstalled():
                raise AssertionError("torchInstalled() imports torch into Slicer's process")

            def installTorch(self, **kwargs):
                outer.installs.append(kwargs)
                return outer.result

        self.module = types.ModuleType("PyTorchUtils")
        self.module.PyTorchUtilsLogic = Logic


def test_torch_is_checked_without_importing_it_and_installed_only_when_missing_or_too_old(load, monkeypatch):
    packages = load(FakeSlicer())
    utils = FakeTorchUtils()
    monkeypatch.setitem(sys.modules, "PyTorchUtils", utils.module)
    assert not packages.torchNeedsInstall() and packages.ensureTorch(askConfirmation=True)
    assert utils.installs == []  # torch >= 2.4 is installed: PyTorchUtils is not even asked
    assert packages.torchNeedsInstall("torch>=999")
    assert packages.ensureTorch(askConfirmation=False, requirement="torch>=999")
    assert utils.installs == [{"askConfirmation": False, "torchVersionRequirement": ">=999"}]
    utils.result = None  # the user declined PyTorchUtils' dialog
    assert packages.ensureTorch(askConfirmation=True, requirement="torch>=999") is False
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    with pytest.raises(RuntimeError, match="needs the PyTorch extension"):
        packages.ensureTorch(requirement="torch>=999")


def test_pytorch_extension_is_found_in_the_extensions_folder_under_testing(load, monkeypatch, tmp_path):
    """With --testing Slicer ignores the settings that put installed extensions on the module path: the
    PyTorch extension is then found in the extensions folder (slicer.app.extensionsInstallPath)."""
    fake = FakeSlicer(testing=True)
    packages = load(fake)
    monkeypatch.delitem(sys.modules, "PyTorchUtils", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    fake.module.app.extensionsInstallPath = str(tmp_path / "Extensions-33241")
    with pytest.raises(RuntimeError, match="needs the PyTorch extension"):
        packages.pyTorchUtils()
    folder = tmp_path / "Extensions-33241" / "PyTorch" / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    folder.mkdir(parents=True)
    (folder / "PyTorchUtils.py").write_text(
        "class PyTorchUtilsLogic:\n    def installTorch(self, **kwargs):\n        return ('installed', kwargs)\n")
    assert packages.ensureTorch(askConfirmation=False, requirement="torch>=999") is True
    assert sys.modules["PyTorchUtils"].__file__ == str(folder / "PyTorchUtils.py")
    monkeypatch.delitem(sys.modules, "PyTorchUtils")


def test_slicer_510_installs_with_the_constraints_and_offers_a_restart_only_when_asked(load, tmp_path):
    fake = FakeSlicer()
    packages = load(fake)
    reqs = requirements_file(tmp_path, "psutil>=999", "packaging")  # psutil installed, too old: an upgrade
    with pytest.raises(RuntimeError, match=r"^Still missing after the installation: psutil>=999\."):
        packages.ensurePackages([reqs], askConfirmation=True)  # (the fake pip installs nothing)
    assert fake.names() == ["confirmOkCancel", "pip_install", "confirmYesNo", "restart"]
    assert fake.calls[1][1][2:] == ["psutil>=999"]
    assert f"pydicom=={metadata.version('pydicom')}" in fake.constraints_seen[0].splitlines()

    for testing, ask in ((True, True), (False, False)):  # --testing answers Yes by itself; scripts never asked
        fake = FakeSlicer(testing=testing)
        packages = load(fake)
        with pytest.raises(RuntimeError, match="Still missing"):
            packages.ensurePackages([reqs], askConfirmation=ask)
        assert "restart" not in fake.names() and "confirmYesNo" not in fake.names()
        assert ("confirmOkCancel" in fake.names()) is ask


def test_slicer_510_declined_or_failing_pip(load, tmp_path):
    reqs = requirements_file(tmp_path, "no-such-distribution-xyz>=1")
    fake = FakeSlicer(confirm=False)
    assert load(fake).ensurePackages([reqs], askConfirmation=True) is False
    assert fake.names() == ["confirmOkCancel"]
    fake = FakeSlicer()
    fake.pip_error = subprocess.CalledProcessError(1, ["pip"])
    with pytest.raises(RuntimeError) as error:
        load(fake).ensurePackages([reqs], askConfirmation=False)
    message = str(error.value)
    assert "\n" not in message and "no-such-distribution-xyz>=1" in message
    assert f"pydicom=={metadata.version('pydicom')}" in message
    fake = FakeSlicer()
    assert load(fake).ensurePackages([requirements_file(tmp_path, "packaging", "psutil")]) is True
    assert fake.calls == []  # all there: nothing asked, nothing run


def test_slicer_512_pip_ensure_gets_the_constraints_and_a_decline_is_false(load, tmp_path):
    calls = []

    def pip_ensure(requirements, **kwargs):
        calls.append((requirements, kwargs, Path(kwargs["constraints"]).read_text()))

    reqs = requirements_file(tmp_path, "no-such-distribution-xyz>=1", "packaging")
    packages = load(FakeSlicer(), pip_ensure)
    with pytest.raises(RuntimeError, match="Still missing"):
        packages.ensurePackages([reqs], askConfirmation=False, requester="T")
    requirements, kwargs, constraints = calls[0]
    assert requirements == ["no-such-distribution-xyz>=1"]
    assert kwargs["prompt_install"] is False and kwargs["prompt_restart"] is False  # a script never blocks
    assert kwargs["skip_in_testing"] is False and kwargs["requester"] == "T"
    assert f"pydicom=={metadata.version('pydicom')}" in constraints.splitlines()

    def declined(requirements, **kwargs):
        raise RuntimeError("User declined package installation")

    assert load(FakeSlicer(), declined).ensurePackages([reqs], askConfirmation=True) is False

    def other(requirements, **kwargs):
        raise RuntimeError("A non-blocking pip_install is already in progress.")

    with pytest.raises(RuntimeError, match="already in progress"):
        load(FakeSlicer(), other).ensurePackages([reqs])

    def failing(requirements, **kwargs):
        raise subprocess.CalledProcessError(1, "pip install")

    # Slicer 5.12 shows pip's failure in its own dialog before raising: no second dialog (audit N15), the
    # reason is logged and the answer is False.
    assert load(FakeSlicer(), failing).ensurePackages([reqs]) is False


def test_one_installation_at_a_time_and_the_panel_told(load, tmp_path):
    """Audit N4: pip pumps GUI events, so a second click reached setupPythonRequirements again and started a
    second pip into the same site-packages. Now the second call raises at once; isInstalling() locks the panels
    (onChange is called when the installation starts and ends)."""
    reqs = requirements_file(tmp_path, "no-such-distribution-xyz>=1")
    states, second = [], []

    def pip_ensure(requirements, **kwargs):  # Slicer's pip_ensure; the user clicks Segment again meanwhile
        with pytest.raises(RuntimeError, match="already installing") as error:
            packages.setupPythonRequirements([reqs], askConfirmation=True)
        second.append(str(error.value))
        raise RuntimeError("User declined package installation")

    packages = load(FakeSlicer(), pip_ensure)
    assert packages.setupPythonRequirements([reqs], True, "PancreasDiNTS",
                                            onChange=lambda: states.append(packages.isInstalling())) is False
    assert second and states == [True, False] and not packages.isInstalling()
    assert packages.setupPythonRequirements([requirements_file(tmp_path, "packaging")]) is True  # nothing missing


def test_optional_features_install_on_first_use_through_pip_ensure(load, monkeypatch):
    """Audit N6/N7: the review section (nibabel, filelock) and ONNX/TensorRT install their packages when first
    used, through Slicer's pip_ensure with the same constraints, never with CLI pip advice."""
    import tomllib

    calls = []

    def pip_ensure(requirements, **kwargs):
        calls.append((list(requirements), kwargs["requester"], Path(kwargs["constraints"]).read_text()))

    packages = load(FakeSlicer(), pip_ensure)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert list(packages.OPTIONAL_FEATURES["export"]) == extras["export"]
    assert list(packages.OPTIONAL_FEATURES["trt"]) == extras["trt"]
    engine = (REPO / "PancreasDiNTS" / "Resources" / "PancreasDiNTS-requirements.txt").read_text().split()
    assert set(packages.OPTIONAL_FEATURES["review"]) <= set(engine)
    assert packages.ensureOptional("review") is True and calls == []  # installed here: nothing asked
    monkeypatch.setitem(packages.OPTIONAL_FEATURES, "review", ("nibabel>=5", "no-such-distribution-xyz>=1"))
    with pytest.raises(RuntimeError, match="Still missing"):  # the fake pip_ensure installs nothing
        packages.ensureOptional("review", requester="PancreasDiNTS")
    assert calls[0][0] == ["no-such-distribution-xyz>=1"] and calls[0][1] == "PancreasDiNTS"
    assert f"pydicom=={metadata.version('pydicom')}" in calls[0][2].splitlines()
    assert not packages.isInstalling()
