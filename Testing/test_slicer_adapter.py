"""The Slicer modules stay adapters: no image maths and no torch in Slicer's process; what they import from the
engine loads in a bare Python (a fresh Slicer has none of the engine's dependencies until it installs them)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import slicer_facts as facts

# Libraries that compute on images or run networks: none may be imported by a module file, even lazily.
COMPUTE_LIBRARIES = {"numpy", "torch", "monai", "SimpleITK", "sitkUtils", "itk", "nibabel", "scipy", "nrrd",
                     "slicerio", "highdicom", "pydicom", "PIL", "skimage", "cv2", "vtk.util.numpy_support"}
# Engine modules that import only the standard library at module level (checked below).
# (the torch-free layers bridge/ and core/: Testing/test_layering.py checks that they import no torch)
LIGHT_ENGINE_MODULES = {"bridge", "bridge.commands", "bridge.progress_lines", "bridge.child_process", "bridge.case_results",
                        "bridge.model_folders", "bridge.device_list", "bridge.pip_requirements", "bridge.estimate",
                        "bridge.remote", "core", "core.terminology", "core.request"}


def imports(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


SLICER_SIDE_FILES = {**{name: path for name, path in facts.MODULE_FILES.items()},
                     **{f"PancreasDiNTSSlicerLib.{p.stem}": p
                        for p in sorted((facts.REPO / "PancreasDiNTS" / "PancreasDiNTSSlicerLib").glob("*.py"))}}


@pytest.mark.parametrize("name", list(SLICER_SIDE_FILES))
def test_module_imports_no_compute_library(name):
    """The module files and the Slicer-side library they import (even lazily, inside functions)."""
    found = imports(ast.parse(SLICER_SIDE_FILES[name].read_text(encoding="utf-8")))
    bad = {m for m in found if m in COMPUTE_LIBRARIES or m.split(".")[0] in COMPUTE_LIBRARIES}
    assert not bad, f"{name}.py imports {sorted(bad)}: image maths belongs in the engine (PancreasDiNTSLib)"
    engine = {m.split(".", 1)[1] for m in found if m.startswith("PancreasDiNTSLib.")}
    assert engine <= LIGHT_ENGINE_MODULES, f"{name}.py imports heavy engine modules {sorted(engine - LIGHT_ENGINE_MODULES)}"


@pytest.mark.parametrize("name", list(facts.MODULE_FILES))
def test_module_moves_no_voxels_through_python(name):
    """No slicer.util array/ITK bridge (arrayFromVolume, updateVolumeFromArray, ...): voxels go through files."""
    util = facts.util_facts()
    bridges = {f for f in util.functions if "array" in f.lower() or "itkimage" in f.lower()}
    assert {"arrayFromVolume", "updateVolumeFromArray", "arrayFromSegmentBinaryLabelmap"} <= bridges
    tree = facts.module_tree(name)
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and facts.dotted(n.value) == "slicer.util"}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "slicer.util"
             for a in n.names}
    assert not used & bridges, f"{name}.py moves voxels through numpy: {sorted(used & bridges)}"


@pytest.mark.parametrize("name", list(facts.MODULE_FILES))
def test_module_starts_the_engine_only_through_engine_commands(name):
    """Command lines come from PancreasDiNTSLib.bridge.commands, never assembled in the module."""
    tree = facts.module_tree(name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value not in {"-m", "PancreasDiNTSLib.cli", "--progress", "--model"}, \
                f"{name}.py line {node.lineno} builds an engine command line itself"
    builders = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                and facts.dotted(n.value) == "commands" and n.attr.endswith("_command")}
    assert builders, "the module builds no engine command"


BLOCKER = """
import importlib.abc, sys
allowed = set(sys.stdlib_module_names) | {"PancreasDiNTSLib"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in allowed:
            raise ImportError(f"blocked non-standard module {name}")
sys.meta_path.insert(0, Block())
from PancreasDiNTSLib.bridge import case_results, child_process, commands, device_list, estimate, model_folders
from PancreasDiNTSLib.bridge import pip_requirements, progress_lines
from PancreasDiNTSLib.core import request, terminology  # request: the panel's choice keys
from PancreasDiNTSLib.bridge import remote  # the server's HTTP client (urllib)
assert request.panel_region("whole CT") == "whole"
assert remote.job_options(roi=(0, 0, 0, 1, 1, 1))["roi_space"] == "ras"
spec = estimate.window_spec(model_folders.demo_model_folder() or "no-model")  # yaml blocked: the text fallback
assert estimate.estimate_windows([0, 300, 0, 250, 0, 90], spec) > 0
cmd = commands.segment_command("python", "ct.nrrd", "out", "model", "cpu")
event = progress_lines.ProgressParser().feed('{"case": "ct", "stage": "infer", "fraction": 0.5}')
assert event.fraction == 0.5 and cmd[3] == "segment"
assert terminology.SEGMENTS[0].terminology_entry().count("~") == 6
assert "numpy" not in sys.modules and "torch" not in sys.modules
print("light")
"""


def test_engine_parts_used_by_the_modules_need_only_the_standard_library():
    env_path = str(facts.REPO / "PancreasDiNTS")
    out = subprocess.run([sys.executable, "-c", BLOCKER], env={"PYTHONPATH": env_path}, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "light", out.stderr


def test_blocker_really_blocks():
    code = BLOCKER.replace("from PancreasDiNTSLib.bridge import case_results, child_process, commands, device_list, estimate, model_folders",
                           "import numpy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "blocked non-standard module numpy" in out.stderr
