"""The wheel carries the engine with its demo model, so `pancreas-dints demo` works from a wheel install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed: {build.stderr[-2000:]}")
    return next(out.glob("*.whl"))


@pytest.fixture(scope="module")
def unpacked_wheel(built_wheel: Path) -> Path:
    site = built_wheel.parent / "site"
    with zipfile.ZipFile(built_wheel) as zf:
        zf.extractall(site)
    return site


@pytest.mark.slow
def test_wheel_holds_the_demo_model(unpacked_wheel: Path) -> None:
    demo = unpacked_wheel / "PancreasDiNTSLib" / "resources" / "models" / "demo"
    source = REPO / "PancreasDiNTS" / "PancreasDiNTSLib" / "resources" / "models" / "demo"
    shipped = {p.relative_to(demo).as_posix() for p in demo.rglob("*") if p.is_file()}
    expected = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    assert shipped == expected and "models/model.pt" in shipped


def test_a_missing_package_is_one_line_with_the_pip_command() -> None:
    from PancreasDiNTSLib.core.errors import EXIT_USAGE, MissingPackageError, require_modules

    require_modules("the report page", ("json", "zipfile"), "pip install x")  # present: nothing happens
    with pytest.raises(MissingPackageError) as exc:
        require_modules("the report page", ("json", "no_such_module_xyz", "no_such.sub"), "pip install matplotlib")
    assert str(exc.value) == ("the report page needs the Python packages no_such_module_xyz, no_such.sub: "
                              "pip install matplotlib")
    assert exc.value.exit_code == EXIT_USAGE



def _link_torch(dest: Path) -> Path:
    """A folder of links to this interpreter's torch and the distributions it needs (not setuptools: a venv has
    its own), for a new venv's .pth: pip sees torch as installed and the ~1 GB are not unpacked again (PyTorch's
    own install is not what is tested; that took most of this test's 60-130 s in CI)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    dest.mkdir()
    todo, seen = ["torch"], set()
    while todo:
        dist = md.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen or name == "setuptools":
            continue
        seen.add(name)
        todo += [r.name for r in map(Requirement, dist.requires or []) if not r.marker or r.marker.evaluate({"extra": ""})]
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            source = Path(str(dist.locate_file(top)))
            if not (dest / top).exists() and source.exists() and not top.endswith(".pth"):
                (dest / top).symlink_to(source)
    return dest


def _run(args: list, env: dict[str, str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_alone_in_a_fresh_environment(built_wheel: Path, tmp_path: Path) -> None:
    """Issue 26 item 14: the wheel installed with pip into a new virtual environment (no system site packages;
    torch present first as the README says, here this interpreter's torch linked in; then the wheel's own
    dependencies from the configured index / find-links),
    outside the checkout: `pancreas-dints demo` works. Then, with matplotlib removed, a report page fails before
    inference with the pip command (the case's other outputs are still made), and prepare-datalist without the
    `train` extra stops with one line."""
    import venv

    env = {k: v for k, v in os.environ.items()  # bytecode written on first import (installed --no-compile below)
           if k not in ("PYTHONPATH", "PANCREAS_DINTS_DEMO_MODEL", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")}
    env["PANCREAS_DINTS_HOME"] = str(tmp_path / "home")
    root = tmp_path / "venv"
    venv.create(root, with_pip=True, system_site_packages=False)
    python, cli = root / "bin" / "python", root / "bin" / "pancreas-dints"
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "torch_link.pth").write_text(f"{_link_torch(tmp_path / 'torch-link')}\n")
    # --no-compile: no bytecode for every module of MONAI, SimpleITK, matplotlib, ... at install (Python compiles the
    # ones the demo imports when it imports them); what is installed and what runs are the same
    r = _run([python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check", built_wheel], env,
             tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    probe = ("import importlib.util as u, PancreasDiNTSLib as p; print(p.__file__); "
             "print([m for m in ('pytest', 'sklearn', 'tensorboard', 'onnx') if u.find_spec(m)])")
    r = _run([python, "-c", probe], env, tmp_path)
    location, extras = r.stdout.splitlines()
    assert Path(location).is_relative_to(root) and extras == "[]", r.stdout  # the wheel's, and nothing else

    r = _run([cli, "demo", "-o", tmp_path / "demo", "--device", "cpu", "--progress", "none"], env, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert (tmp_path / "demo" / "labels.nii.gz").is_file() and (tmp_path / "demo" / "demo.png").is_file()
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert Path(report["model"]["path"]).is_relative_to(root)
    ct = tmp_path / "demo" / "phantom_ct.nii.gz"

    r = _run([python, "-m", "pip", "uninstall", "-y", "-q", "matplotlib"], env, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    model = Path(report["model"]["path"])
    seg = [cli, "segment", ct, "--model", model, "--device", "cpu", "--progress", "none", "-o"]
    r = _run(seg + [tmp_path / "page", "--format", "report-png"], env, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "the report page needs the Python package matplotlib: pip install matplotlib" in r.stderr
    assert not any(p.is_dir() for p in (tmp_path / "page").iterdir())  # refused before inference: no case folder
    r = _run(seg + [tmp_path / "both", "--format", "nifti,report-png"], env, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    case = next(p for p in (tmp_path / "both").iterdir() if p.is_dir())
    made = json.loads((case / "report.json").read_text())
    assert (case / "labels.nii.gz").is_file() and not (case / "report.png").exists()
    assert "pip install matplotlib" in made["outputs_failed"]["report-png"]

    r = _run([cli, "prepare-datalist", "--path", tmp_path / "demo", "-o", tmp_path / "dl.json"], env, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "needs the Python package sklearn: pip install 'PancreasDiNTSLib[train]'" in r.stderr
