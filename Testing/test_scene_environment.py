"""The engine in its own Python environment (PancreasDiNTSSlicerLib.environment): the scene layer with slicer-core
in this environment, the engine in a second one made here with ``python -m venv`` (the route a Mac needs, whose
Slicer runs under Rosetta where torch stops at 2.2.2), and labels equal to a run in this environment.

What is real: the second environment (a new venv of the base interpreter, its own ``sys.prefix``), the commands the
module runs to check it (``environment.missingCommand``), the choice through ``PANCREAS_DINTS_ENGINE_PYTHON`` read
by ``bridge.commands.python_executable``, the scene layer's job writing the volume node and importing the result,
and two real engine runs (in bf16, the panel's precision choice: report.json says bf16 ran). What is not: ``pip install`` of torch and the engine's packages into the new venv (GBs,
and no network in CI); the venv sees this environment's site-packages through a ``.pth`` file instead, which is
what ``--system-site-packages`` gives a venv of a system Python.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import test_scene_support as support

slicer = support.import_slicer_core()

from PancreasDiNTSLib.bridge import commands  # noqa: E402
from PancreasDiNTSSceneLib.runs import SegmentationJob  # noqa: E402
from PancreasDiNTSSlicerLib import environment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_engine_environment(folder: Path) -> Path:
    """A real second venv made by the module's first creation command; this environment's packages visible."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    requirements = [REPO / "PancreasDiNTS" / "Resources" / "PancreasDiNTS-requirements.txt"]
    create = environment.creationCommands(base, folder, requirements)
    assert create[0][1:] == ["-m", "venv", str(folder)] and create[2][1:4] == ["-m", "pip", "install"]
    subprocess.run(create[0], check=True, timeout=300)
    python = environment.environmentPython(folder)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "engine-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run_job(volume, scene, bundle, work: Path, env: dict[str, str], python: str | None) -> tuple:
    """The scene layer's Segment run, as the module starts it (engine_environment on PYTHONPATH), in bf16 as the
    panel's precision choice asks (issue 36: the same run checks that choice end to end, at no extra cost)."""
    job = SegmentationJob(volume, bundle, None, device="cpu", scene=scene, python=python, work_dir=work,
                          keep_outputs=True, formats=("nifti", "seg.nrrd"), load_confidence=False, precision="bf16")
    command = job.prepare()
    child_env = dict(env, **commands.engine_environment(None))
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert command[command.index("--precision") + 1] == "bf16"
    result = job.complete(done.returncode)
    assert result.success, result.message
    assert result.report["inference"]["precision"]["used"] == "bf16", result.report["inference"]["precision"]
    return Path(command[0]), job.output_dir / "input", result.segmentationNode


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_engine_in_a_second_environment_gives_the_labels_of_this_one(tmp_path, tiny_bundle, cli_env,
                                                                          ct_piece, monkeypatch):
    python = make_engine_environment(tmp_path / "engine-environment")
    prefix = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert Path(prefix) == tmp_path / "engine-environment" and Path(prefix) != Path(sys.prefix)
    requirements = [REPO / "PancreasDiNTS" / "Resources" / "PancreasDiNTS-requirements.txt"]
    check = subprocess.run(environment.missingCommand(python, requirements), capture_output=True, text=True)
    assert check.returncode == 0, f"the engine environment lacks: {check.stdout}"

    scene = slicer.vtkMRMLScene()
    volume = support.load_volume(scene, ct_piece, "ct")
    env = {k: v for k, v in cli_env.items() if k != commands.ENGINE_PYTHON_VARIABLE}
    here_python, here, here_node = run_job(volume, scene, tiny_bundle, tmp_path / "here", env, sys.executable)
    monkeypatch.setenv(commands.ENGINE_PYTHON_VARIABLE, str(python))  # what environment.useEnvironment sets
    assert commands.python_executable() == str(python)
    there_python, there, there_node = run_job(volume, scene, tiny_bundle, tmp_path / "there", env, None)
    assert there_python == python and here_python == Path(sys.executable)

    labels_here = np.asarray(nib.load(here / "labels.nii.gz").dataobj)
    labels_there = np.asarray(nib.load(there / "labels.nii.gz").dataobj)
    assert labels_here.shape == labels_there.shape and np.bincount(labels_here.ravel()).size > 1
    assert np.array_equal(labels_here, labels_there)
    exported_here = support.export_labels(scene, here_node, volume)["labels"]
    exported_there = support.export_labels(scene, there_node, volume)["labels"]
    assert np.array_equal(exported_here, exported_there) and exported_here.any()


def test_engine_extra_requirements_cover_what_the_requirements_file_leaves_to_slicer():
    """An own environment has nothing Slicer ships: the module's requirements file plus ENGINE_EXTRA_REQUIREMENTS
    name every dependency of the engine's pip package (pyproject)."""
    import tomllib
    from PancreasDiNTSLib.bridge import pip_requirements

    def name(requirement: str) -> str:
        return requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()

    engine = {name(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    file = pip_requirements.read_requirements(REPO / "PancreasDiNTS" / "Resources" / "PancreasDiNTS-requirements.txt")
    covered = {name(r) for r in [*file, *environment.ENGINE_EXTRA_REQUIREMENTS]}
    assert engine <= covered, f"missing from an own environment: {sorted(engine - covered)}"
