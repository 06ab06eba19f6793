"""The extension as Slicer installs it: every module's scripts and resources merged into one qt-scripted-modules
folder, as slicerMacroBuildScriptedModule and CTK's ctkMacroCompilePythonScript do (Testing/slicer_layout.py;
the lists are read from the CMake files). No two modules may claim one file and every listed file must exist;
then both modules' logic is imported from that tree with the real slicer-core (Qt and the application's Python
modules stubbed, Testing/slicer_stubs.py) and every resource is looked up there as Slicer looks it up, and the
scene-layer tests run against the scene layer in that tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import slicer_facts as facts
import slicer_layout as layout
import test_scene_support as support

TESTING = Path(__file__).resolve().parent
pytestmark = [pytest.mark.slicer, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The installed qt-scripted-modules folder of this extension (fails on a collision or a missing file)."""
    return layout.build_tree(layout.extension_modules(facts.REPO), tmp_path_factory.mktemp("install"))


def _module_folder(tmp_path: Path, name: str, scripts: list[str], resources: list[str]) -> None:
    folder = tmp_path / name
    lines = [f"set(MODULE_NAME {name})", "set(MODULE_PYTHON_SCRIPTS", *scripts, "  )",
             "set(MODULE_PYTHON_RESOURCES", *resources, "  )"]
    folder.mkdir()
    (folder / "CMakeLists.txt").write_text("\n".join(lines) + "\n")
    for item in scripts + resources:
        path = folder / item.replace("${MODULE_NAME}", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def test_the_builder_fails_on_the_shared_requirements_file_and_on_a_missing_file(tmp_path):
    """The finding reproduced: two modules shipping Resources/requirements.txt collide; a missing file fails."""
    _module_folder(tmp_path, "A", ["${MODULE_NAME}.py"], ["Resources/UI/${MODULE_NAME}.ui", "Resources/requirements.txt"])
    _module_folder(tmp_path, "B", ["${MODULE_NAME}.py"], ["Resources/UI/${MODULE_NAME}.ui", "Resources/requirements.txt"])
    (tmp_path / "CMakeLists.txt").write_text("add_subdirectory(A)\nadd_subdirectory(B)\n")
    with pytest.raises(layout.LayoutError, match=r"collision: Resources/requirements.txt is listed by A and by B"):
        layout.build_tree(layout.extension_modules(tmp_path), tmp_path / "out")
    (tmp_path / "B" / "Resources" / "requirements.txt").rename(tmp_path / "B" / "Resources" / "B-requirements.txt")
    (tmp_path / "B" / "CMakeLists.txt").write_text(
        (tmp_path / "B" / "CMakeLists.txt").read_text().replace("requirements.txt", "B-requirements.txt"))
    (tmp_path / "A" / "Resources" / "UI" / "A.ui").unlink()
    with pytest.raises(layout.LayoutError, match=r"^A: listed file Resources/UI/A.ui does not exist$"):
        layout.build_tree(layout.extension_modules(tmp_path), tmp_path / "out")
    (tmp_path / "A" / "Resources" / "UI" / "A.ui").write_text("A")
    root = layout.build_tree(layout.extension_modules(tmp_path), tmp_path / "out")
    assert (root / "Resources" / "requirements.txt").read_text() == "A"
    assert (root / "Resources" / "B-requirements.txt").read_text() == "B"


def test_installed_tree_holds_both_modules_and_the_demo_model(tree):
    names = [m.name for m in layout.extension_modules(facts.REPO)]
    assert names == list(facts.MODULES)
    for name in names:
        assert (tree / f"{name}.py").is_file()
    assert (tree / "PancreasDiNTSLib" / "resources" / "models" / "demo" / "models" / "model.pt").is_file()
    requirement_files = sorted(p.name for p in (tree / "Resources").glob("*requirements*"))
    assert requirement_files == ["PancreasDiNTS-requirements.txt", "PancreasDiNTSTrain-requirements.txt"]


# Run in a fresh interpreter with the tree first on sys.path: torch, MONAI and the engine's heavy packages are
# blocked (an import raises), the module files and their logic come from the tree, and each resource is looked
# up as Slicer does: the icon Resources/Icons/<Module>.png next to the module file (ScriptedLoadableModule.py
# v5.10.0 L36-41), widget files through resourcePath = <module folder>/Resources/<name> (L112-115).
DRIVER = textwrap.dedent('''
    import ast, importlib.abc, json, sys
    from pathlib import Path

    tree = Path(sys.argv[1]).resolve()
    BLOCKED = {"torch", "torchvision", "monai", "nibabel", "highdicom", "slicerio", "nrrd", "pylibjpeg",
               "tensorboard", "matplotlib", "sklearn", "onnx", "onnxruntime", "huggingface_hub", "ignite"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked in Slicer's process: {name}")

    sys.meta_path.insert(0, Block())
    import slicer_stubs
    slicer = slicer_stubs.install()
    import PancreasDiNTS, PancreasDiNTSTrain
    from PancreasDiNTSLib.bridge import estimate, model_folders, pip_requirements
    from PancreasDiNTSSlicerLib import packages, reloading

    class NoTorchUtils:  # the PyTorch extension: never needed while the installed torch is recent enough
        def __getattr__(self, name):
            raise AssertionError(f"PyTorchUtils.{name} used although torch is installed")
    sys.modules["PyTorchUtils"] = NoTorchUtils()

    report = {"files": {}, "lookups": {}}
    for module in (PancreasDiNTS, PancreasDiNTSTrain, model_folders, packages):
        report["files"][module.__name__] = str(Path(module.__file__).resolve())
    for module in (PancreasDiNTS, PancreasDiNTSTrain):
        name, folder = module.__name__, Path(module.__file__).resolve().parent
        wanted = {"icon": folder / "Resources" / "Icons" / f"{name}.png"}
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "resourcePath":
                wanted[node.args[0].value] = folder / "Resources" / node.args[0].value
        report["lookups"][name] = {key: [str(path), path.is_file()] for key, path in wanted.items()}
    report["requirements"] = {"PancreasDiNTS": str(PancreasDiNTS.REQUIREMENTS_FILE),
                              "PancreasDiNTSTrain": str(PancreasDiNTSTrain.TRAIN_REQUIREMENTS_FILE)}
    report["requirement_lines"] = {k: pip_requirements.read_requirements(v) for k, v in report["requirements"].items()}
    demo = model_folders.demo_model_folder()
    report["demo"] = str(demo) if demo else None
    report["windows"] = estimate.estimate_windows([0, 300, 0, 250, 0, 90], estimate.window_spec(demo))
    logic, train = PancreasDiNTS.PancreasDiNTSLogic(), PancreasDiNTSTrain.PancreasDiNTSTrainLogic()
    report["setup"] = [logic.setupPythonRequirements(askConfirmation=False),
                       train.setupPythonRequirements(askConfirmation=False)]
    report["official"] = str(logic.officialModelFolder())
    before = sys.modules["PancreasDiNTSSlicerLib.process"]
    report["reloaded"] = reloading.reloadLibraries()
    report["reload_new_objects"] = sys.modules["PancreasDiNTSSlicerLib.process"] is not before
    report["heavy"] = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    print("REPORT " + json.dumps(report))
''')


def _run_driver(tree: Path, tmp_path: Path) -> dict:
    support.import_slicer_core()  # skips where slicer-core has no wheel
    env = {k: v for k, v in os.environ.items() if k not in ("PANCREAS_DINTS_DEMO_MODEL", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(TESTING)])
    env["PANCREAS_DINTS_HOME"] = str(tmp_path / "home")
    run = subprocess.run([sys.executable, "-c", DRIVER, str(tree)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def test_both_modules_import_from_the_installed_tree_without_torch_and_find_their_resources(tree, tmp_path):
    report = _run_driver(tree, tmp_path)
    root = str(tree.resolve())
    for module, path in report["files"].items():
        assert path.startswith(root), f"{module} was imported from {path}, not from the installed tree"
    for module, lookups in report["lookups"].items():
        assert "icon" in lookups and f"UI/{module}.ui" in lookups, lookups
        for key, (path, exists) in lookups.items():
            assert exists and path.startswith(root), f"{module}: {key} looked up at {path}, which is missing"
    for module, path in report["requirements"].items():
        assert path.startswith(root) and Path(path).name == f"{module}-requirements.txt"
    names = {k: {line.split(">")[0].split("=")[0].strip().lower() for line in v}
             for k, v in report["requirement_lines"].items()}
    assert {"monai", "nibabel", "highdicom"} <= names["PancreasDiNTS"]  # the engine's, not the Train module's
    assert names["PancreasDiNTSTrain"] == {"tensorboard", "matplotlib", "scikit-learn"}
    assert report["demo"] and report["demo"].startswith(root) and report["windows"] > 0
    assert report["setup"] == [True, True]  # checked without importing torch or calling PyTorchUtils
    assert report["official"] == "None"
    assert report["heavy"] == []
    assert report["reload_new_objects"] and "PancreasDiNTSSlicerLib.process" in report["reloaded"]
    assert "PancreasDiNTSSceneLib.runs" in report["reloaded"]


def test_the_import_hook_blocks_torch(tree, tmp_path):
    """The driver's hook really fails an import of torch (so a pass above means no torch was imported)."""
    support.import_slicer_core()
    code = DRIVER.replace("import PancreasDiNTS, PancreasDiNTSTrain", "import torch")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(TESTING)]))
    run = subprocess.run([sys.executable, "-c", code, str(tree)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode != 0 and "blocked in Slicer's process: torch" in run.stderr


PLUGIN = textwrap.dedent('''
    import os
    import sys
    from pathlib import Path

    def pytest_collection_finish(session):
        tree = Path(os.environ["LAYOUT_TREE"]).resolve()
        for name in ("PancreasDiNTSSceneLib", "PancreasDiNTSLib"):
            path = Path(sys.modules[name].__file__).resolve()
            assert path.is_relative_to(tree), f"{name} imported from {path}, not from {tree}"
''')


@pytest.mark.slow
def test_scene_layer_tests_pass_against_the_installed_tree(tree, tmp_path):
    support.import_slicer_core()
    (tmp_path / "layout_tree_plugin.py").write_text(PLUGIN)
    env = dict(os.environ, LAYOUT_TREE=str(tree), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tree), str(tmp_path)]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "layout_tree_plugin", "-p", "no:cacheprovider",
                          str(TESTING / "test_scene_units.py")], capture_output=True, text=True, env=env,
                         cwd=facts.REPO, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


# Third-party packages Slicer's own Python ships (SuperBuild/External_python-*.cmake, v5.10.0 and v5.12.3) or that
# the application provides (slicer, qt, ctk, vtk): all the Slicer-side code may import at file scope.
SLICER_SHIPS = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "numpy", "scipy", "SimpleITK", "pydicom", "requests",
                "packaging", "PIL", "urllib3", "certifi", "charset_normalizer", "idna", "dateutil", "six"}
OURS = {"PancreasDiNTS", "PancreasDiNTSTrain", "PancreasDiNTSLib", "PancreasDiNTSSceneLib", "PancreasDiNTSSlicerLib",
        "slicer_stubs"}
FILE_SCOPE_DRIVER = textwrap.dedent('''
    import importlib, importlib.abc, json, pkgutil, sys
    from pathlib import Path

    tree, allowed = Path(sys.argv[1]).resolve(), set(json.loads(sys.argv[2]))
    import slicer_stubs
    slicer_stubs.install()  # slicer-core (MRML) and the stand-ins for Qt are there before the hook
    seen = []

    class OnlyWhatSlicerShips(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in allowed:
                seen.append(name)
                raise ImportError(f"not shipped with Slicer: {name}")

    sys.meta_path.insert(0, OnlyWhatSlicerShips())
    failed = {}
    names = ["PancreasDiNTS", "PancreasDiNTSTrain"]
    for package in ("PancreasDiNTSSlicerLib", "PancreasDiNTSSceneLib", "PancreasDiNTSLib.bridge"):
        names += [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(tree / package.replace(".", "/"))])]
    for name in names:
        if name == "PancreasDiNTSSceneLib.review":  # imported by the review section after ensureOptional("review")
            continue
        try:
            importlib.import_module(name)
        except ImportError as error:
            failed[name] = str(error)
    print("REPORT " + json.dumps({"failed": failed, "seen": seen, "count": len(names)}))
''')


def test_slicer_side_code_imports_only_what_slicer_ships_and_the_package_ships_no_server(tree, tmp_path):
    """Audit N12 and the index's review question ("Python packages imported at file scope that are not from the
    Standard Library and not from Slicer, vtk, SimpleITK, numpy, and scipy?"): every file Slicer imports (the
    modules, PancreasDiNTSSlicerLib, PancreasDiNTSSceneLib, the bridge) imports only the standard library and what
    Slicer ships, under an import hook that fails anything else; the server, the browser app and the benchmarks
    are not in the installed tree (they stay in the pip package)."""
    support.import_slicer_core()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(TESTING)])
    run = subprocess.run([sys.executable, "-c", FILE_SCOPE_DRIVER, str(tree), json.dumps(sorted(SLICER_SHIPS | OURS))],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("REPORT "))[len("REPORT "):])
    assert report["failed"] == {} and report["seen"] == [], report
    assert report["count"] > 25
    for absent in ("PancreasDiNTSReview", "PancreasDiNTSLib/server", "PancreasDiNTSLib/benchmark",
                   "PancreasDiNTSLib/cli/serve.py", "PancreasDiNTSLib/cli/benchmark.py"):
        assert not (tree / absent).exists(), f"the Slicer package ships {absent}"
    # the hook is real: a package Slicer does not ship fails under it
    bad = FILE_SCOPE_DRIVER.replace('names = ["PancreasDiNTS", "PancreasDiNTSTrain"]', 'names = ["nibabel"]')
    run = subprocess.run([sys.executable, "-c", bad, str(tree), json.dumps(sorted(SLICER_SHIPS | OURS))],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert "not shipped with Slicer: nibabel" in run.stdout
