"""Every Slicer name the modules use exists in Slicer's real API (../shared/slicer/*.txt), on every release the
extension supports (>= 5.10) or behind a version check.

The module files are parsed with ast; the API name sets come from slicer_facts (parsed from the facts files).
Qt/CTK widget methods (lowercase, e.g. ``setCurrentIndex``) are outside these files and are not checked here.
"""

from __future__ import annotations

import ast
import re

import pytest
import slicer_facts as facts

MODULE_ROOTS = {"qt", "ctk", "vtk", "slicer"}


class Usage(ast.NodeVisitor):
    """Collects the Slicer API uses of one module file, with enough context to judge them."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self.imported = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                         if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names}

    def guarded(self, node: ast.AST) -> bool:
        """Inside the body of an ``if _hasX():`` / ``elif _hasX():`` branch (a release check)."""
        child, parent = node, self.parents.get(node)
        while parent is not None:
            if isinstance(parent, ast.If) and child in parent.body and any(
                    isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id.startswith("_has")
                    for n in ast.walk(parent.test)):
                return True
            child, parent = parent, self.parents.get(parent)
        return False

    def calls_of(self, prefix: str) -> list[tuple[str, ast.Call | None, ast.AST]]:
        """(name, call or None, node) for every ``prefix.name`` reference."""
        out = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute) and facts.dotted(node.value) == prefix:
                parent = self.parents.get(node)
                call = parent if isinstance(parent, ast.Call) and parent.func is node else None
                out.append((node.attr, call, node))
        return out


def usages() -> list[tuple[str, Usage]]:
    return [(name, Usage(facts.module_tree(name))) for name in facts.MODULE_FILES]


@pytest.fixture(scope="module", params=list(facts.MODULE_FILES))
def module(request) -> tuple[str, Usage]:
    return request.param, Usage(facts.module_tree(request.param))


def check_slicer_util(use: Usage) -> list[str]:
    util = facts.util_facts()
    absent = util.absent_at.get(facts.MIN_RELEASE_TAG, set())
    old = util.old_signatures.get(facts.MIN_RELEASE_TAG, {})
    problems = []
    found = use.calls_of("slicer.util")
    for node in ast.walk(use.tree):
        if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
            found += [(alias.name, None, node) for alias in node.names]
    for attr, call, node in found:
        if attr not in util.functions and attr not in util.classes:
            problems.append(f"slicer.util.{attr} does not exist")
            continue
        if attr in absent and not use.guarded(node):
            problems.append(f"slicer.util.{attr} is absent in Slicer {facts.MIN_RELEASE_TAG} and not version-guarded")
        if call is None or attr not in util.functions:
            continue
        signature = util.functions[attr]
        for kw in (k.arg for k in call.keywords if k.arg):
            if kw not in signature.params and not signature.varkw:
                problems.append(f"line {call.lineno}: slicer.util.{attr}() has no parameter {kw!r}")
            elif attr in old and kw not in old[attr].params and not old[attr].varkw and not use.guarded(call):
                problems.append(f"line {call.lineno}: {kw!r} of slicer.util.{attr}() is new after "
                                f"{facts.MIN_RELEASE_TAG} and the call is not version-guarded")
    return problems


def test_slicer_util_names_and_keywords_exist(module):
    name, use = module
    assert use.calls_of("slicer.util"), "the module uses no slicer.util function at all?"
    problems = check_slicer_util(use)
    assert not problems, f"{name}:\n" + "\n".join(problems)


def check_slicer_packaging(use: Usage) -> list[str]:
    packaging = facts.packaging_facts()
    problems = []
    for attr, call, node in use.calls_of("slicer.packaging"):
        if attr not in packaging:
            problems.append(f"slicer.packaging.{attr} does not exist")
            continue
        if not use.guarded(node):
            problems.append(f"line {node.lineno}: slicer.packaging (Slicer >= 5.12) used without a release check")
        if call is not None:
            problems += [f"line {call.lineno}: slicer.packaging.{attr}() has no parameter {k.arg!r}"
                         for k in call.keywords if k.arg and k.arg not in packaging[attr].params]
    return problems


def test_slicer_packaging_only_behind_a_release_check(module):
    name, use = module
    problems = check_slicer_packaging(use)
    assert not problems, f"{name}:\n" + "\n".join(problems)


def check_imports(use: Usage) -> list[str]:
    mrml = facts.mrml_facts()
    exported = facts.wrapper_facts().exported
    problems = []
    for node in ast.walk(use.tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if node.module == "slicer.parameterNodeWrapper" and alias.name not in exported:
                problems.append(f"slicer.parameterNodeWrapper.{alias.name} does not exist")
            if node.module == "slicer" and alias.name not in mrml.bases:
                problems.append(f"'from slicer import {alias.name}': not an MRML class in the facts")
            if node.module == "slicer.ScriptedLoadableModule" and alias.name not in facts.scripted_facts().methods:
                problems.append(f"slicer.ScriptedLoadableModule.{alias.name} does not exist")
    return problems


def test_imports_from_slicer_exist(module):
    name, use = module
    problems = check_imports(use)
    assert not problems, f"{name}:\n" + "\n".join(problems)


def check_mrml(use: Usage) -> tuple[list[str], int]:
    """slicer.vtkX, slicer.vtkX.Method, slicer.mrmlScene.Method and every other VTK-style Method call."""
    mrml = facts.mrml_facts()
    terminology = facts.terminology_facts()
    known_classes = set(mrml.bases) | set(terminology)
    every = (mrml.every_method | set().union(*mrml.constants.values()) | set().union(*terminology.values())
             | {m for m in facts.wrapper_facts().members if m[:1].isupper()})
    problems, checked = [], 0
    for node in ast.walk(use.tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = facts.dotted(node.value)
        if base == "slicer" and node.attr.startswith("vtk"):
            checked += 1
            if node.attr not in known_classes:
                problems.append(f"line {node.lineno}: slicer.{node.attr} is not a class in the facts")
        elif base and base.startswith("slicer.vtk") and base.count(".") == 1:
            checked += 1
            cls = base.split(".")[1]
            if node.attr not in mrml.all_methods(cls) | terminology.get(cls, set()):
                problems.append(f"line {node.lineno}: {cls} has no method/constant {node.attr}")
        elif base == "slicer.mrmlScene":
            checked += 1
            if node.attr not in mrml.all_methods("vtkMRMLScene"):
                problems.append(f"line {node.lineno}: vtkMRMLScene has no method/constant {node.attr}")
        elif re.match(r"^[A-Z][a-z]", node.attr):
            root = (base or "").split(".")[0]
            if root in MODULE_ROOTS or root in use.imported:
                continue  # qt.QTimer, ctk.ctkPathLineEdit, vtk.vtkCommand, PyTorchUtils.PyTorchUtilsLogic...
            checked += 1
            if node.attr not in every:
                problems.append(f"line {node.lineno}: .{node.attr} is not a method of any MRML/segmentation class")
    return problems, checked


def test_mrml_classes_and_methods_exist(module):
    name, use = module
    problems, checked = check_mrml(use)
    assert checked >= (10 if name == "PancreasDiNTS" else 1), "expected the module to use MRML methods"
    assert not problems, f"{name}:\n" + "\n".join(problems)


BAD_MODULE = '''
import slicer
from slicer import vtkMRMLNoSuchNode
from slicer.parameterNodeWrapper import Between

def run(node, proc):
    slicer.util.loadVolumes("x")                                 # no such function
    slicer.util.loadVolume("x", colour=1)                        # no such keyword
    slicer.util.launchConsoleProcess(["a"], blocking=False)      # 5.12 keyword, unguarded
    slicer.util.executePythonModule("m", [])                     # absent in 5.10, unguarded
    slicer.packaging.pip_ensure([], requester="x")               # 5.12 module, unguarded
    node.GetSegmentation().AddSegmentFromNowhere()               # no such MRML method
    slicer.mrmlScene.AddNewNodeByClassName("vtkMRMLSegmentationNode")
    slicer.vtkSegment.GetTerminologyTagName()
    if _hasPackaging():
        slicer.packaging.pip_ensure([], requester="x")           # fine: guarded
        slicer.util.launchConsoleProcess(["a"], blocking=False)  # fine: guarded
'''


def test_the_checks_catch_invented_names():
    """The checks above fail on names Slicer does not have (so a pass means something)."""
    use = Usage(ast.parse(BAD_MODULE))
    util = check_slicer_util(use)
    assert any("loadVolumes does not exist" in p for p in util)
    assert any("no parameter 'colour'" in p for p in util)
    assert sum("'blocking'" in p for p in util) == 1
    assert any("executePythonModule is absent" in p for p in util)
    assert len(check_slicer_packaging(use)) == 1
    assert check_imports(use) == ["'from slicer import vtkMRMLNoSuchNode': not an MRML class in the facts",
                                  "slicer.parameterNodeWrapper.Between does not exist"]
    mrml, _ = check_mrml(use)
    assert {m.split(": ", 1)[1] for m in mrml} == {
        ".AddSegmentFromNowhere is not a method of any MRML/segmentation class",
        "vtkMRMLScene has no method/constant AddNewNodeByClassName",
        "vtkSegment has no method/constant GetTerminologyTagName",
    }


def _class_defs(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def _own_names(cls: ast.ClassDef) -> set[str]:
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and facts.dotted(node.value) == "self":
            names.add(node.attr)
    names |= {t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return names


def test_scripted_module_base_members_exist(module):
    """self.X in classes derived from ScriptedLoadableModule*: defined there or by the real base classes."""
    name, use = module
    scripted = facts.scripted_facts()
    mixin = facts.util_facts().class_methods.get("VTKObservationMixin", set())
    problems = []
    for cls in _class_defs(use.tree).values():
        bases = [facts.dotted(b) for b in cls.bases]
        slicer_bases = [b for b in bases if b in scripted.methods]
        if not slicer_bases:
            continue
        allowed = _own_names(cls) | {"ui"}
        for base in slicer_bases:
            allowed |= scripted.methods[base] | scripted.attributes.get(base, set())
        if "VTKObservationMixin" in bases:
            allowed |= mixin
        if "ScriptedLoadableModuleTest" in bases:
            allowed |= {n for n in dir(__import__("unittest").TestCase) if not n.startswith("__")}
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and facts.dotted(node.value) == "self" and node.attr not in allowed:
                problems.append(f"{cls.name} line {node.lineno}: self.{node.attr} is neither defined nor inherited")
            if isinstance(node, ast.Attribute) and facts.dotted(node.value) == "self.parent":
                props = (scripted.module_parent_properties if "ScriptedLoadableModule" in bases
                         else scripted.widget_parent_properties)
                if node.attr not in props:
                    problems.append(f"{cls.name} line {node.lineno}: self.parent.{node.attr} is not a property")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_parameter_node_attributes_exist():
    """Every attribute read or set on a parameter node is a declared field or a wrapper member."""
    trees = {name: facts.module_tree(name) for name in facts.MODULE_FILES}
    fields = {f for tree in trees.values() for fs in facts.wrapper_fields(tree).values() for f in fs}
    assert {"inputVolume", "outputSegmentation", "datalist", "outputFolder"} <= fields
    allowed = fields | facts.wrapper_facts().members
    problems = []
    for name, tree in trees.items():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            aliases = {"self._parameterNode"}
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    value = node.value
                    if facts.dotted(value) == "self._parameterNode" or (
                            isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                            and value.func.attr == "getParameterNode"):
                        aliases.add(node.targets[0].id)
            for node in ast.walk(func):
                if isinstance(node, ast.Attribute) and facts.dotted(node.value) in aliases and \
                        node.attr not in allowed:
                    problems.append(f"{name}.{func.name} line {node.lineno}: parameter node has no {node.attr!r}")
    assert not problems, "\n".join(problems)


def test_parameter_node_classes_follow_the_template():
    """Logic.getParameterNode wraps the base node in the module's @parameterNodeWrapper class."""
    for name in facts.MODULE_FILES:
        tree = facts.module_tree(name)
        wrappers = facts.wrapper_fields(tree)
        assert f"{name}ParameterNode" in wrappers, f"{name}: no @parameterNodeWrapper class {name}ParameterNode"
        logic = _class_defs(tree)[f"{name}Logic"]
        method = next(n for n in logic.body if isinstance(n, ast.FunctionDef) and n.name == "getParameterNode")
        calls = {facts.dotted(n.func) for n in ast.walk(method) if isinstance(n, ast.Call)}
        assert f"{name}ParameterNode" in calls


def test_module_class_names_match_file_names():
    """Slicer looks up <Name>, <Name>Widget, <Name>Logic and <Name>Test by the file name."""
    scripted = facts.scripted_facts().methods
    for name in facts.MODULE_FILES:
        classes = _class_defs(facts.module_tree(name))
        for suffix, base in (("", "ScriptedLoadableModule"), ("Widget", "ScriptedLoadableModuleWidget"),
                             ("Logic", "ScriptedLoadableModuleLogic"), ("Test", "ScriptedLoadableModuleTest")):
            assert base in scripted
            cls = classes.get(name + suffix)
            assert cls is not None, f"{name}.py has no class {name + suffix}"
            assert base in [facts.dotted(b) for b in cls.bases], f"{name + suffix} must derive from {base}"


def test_module_files_are_the_template_shape_short_and_typed():
    """As Slicer's template and SlicerNNUNet: a module file holds the module, its parameter node, the widget, the
    logic and the test (helpers live in PancreasDiNTSSlicerLib), stays under 500 lines, and every function it
    defines has type hints (its return, and each argument but self/cls)."""
    for name, path in facts.MODULE_FILES.items():
        assert len(path.read_text(encoding="utf-8").splitlines()) < 500, f"{name}.py has 500 lines or more"
        tree = facts.module_tree(name)
        top_classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        assert top_classes == {name, f"{name}ParameterNode", f"{name}Widget", f"{name}Logic", f"{name}Test"}
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            where = f"{name}.py:{function.lineno} {function.name}"
            assert function.returns is not None, f"{where} has no return annotation"
            arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
            for argument in arguments:
                assert argument.arg in ("self", "cls") or argument.annotation is not None, f"{where}: {argument.arg}"


def test_logic_process_signature():
    """The GUI-less entry point the issue specifies."""
    logic = _class_defs(facts.module_tree("PancreasDiNTS"))["PancreasDiNTSLogic"]
    process = next(n for n in logic.body if isinstance(n, ast.FunctionDef) and n.name == "process")
    args = [a.arg for a in process.args.args]
    assert args[:6] == ["self", "inputVolume", "outputSegmentation", "model", "device", "waitForCompletion"]
    defaults = dict(zip(args[-len(process.args.defaults):], process.args.defaults, strict=True))
    assert isinstance(defaults["waitForCompletion"], ast.Constant) and defaults["waitForCompletion"].value is True
    train = _class_defs(facts.module_tree("PancreasDiNTSTrain"))["PancreasDiNTSTrainLogic"]
    assert {"search", "train", "evaluate", "export"} <= {n.name for n in train.body if isinstance(n, ast.FunctionDef)}


def test_documented_slicer_command_lines_use_real_options():
    """`Slicer --...` examples in the module files use options the Slicer application has."""
    options = facts.slicer_cli_options()
    found = 0
    for path in facts.MODULE_FILES.values():
        for line in re.findall(r"Slicer(?:\.exe)? (--[^\n`<]*)", path.read_text(encoding="utf-8")):
            for option in re.findall(r"(?<![\w-])(--[\w-]+)", line):
                found += 1
                assert option in options, f"{path.name}: Slicer has no option {option}"
    assert found, "expected a documented headless Slicer command line"


SCENE_LAYER = facts.REPO / "PancreasDiNTS" / "PancreasDiNTSSceneLib"


@pytest.mark.parametrize("path", sorted(SCENE_LAYER.glob("*.py")), ids=lambda p: p.name)
def test_scene_layer_slicer_util_calls_exist_on_every_supported_release(path):
    """The scene layer's slicer.util calls exist from Slicer 5.10 on (its MRML calls run on the real slicer-core
    5.13 in test_scene_*.py; the facts files do not list storage, table or transform node methods)."""
    use = Usage(ast.parse(path.read_text(encoding="utf-8")))
    problems = check_slicer_util(use) + check_slicer_packaging(use) + check_imports(use)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


SLICER_LIB = facts.REPO / "PancreasDiNTS" / "PancreasDiNTSSlicerLib"


@pytest.mark.parametrize("path", sorted(SLICER_LIB.glob("*.py")), ids=lambda p: p.name)
def test_slicer_side_library_uses_real_names_on_every_supported_release(path):
    """The library both modules share (process runner, package installs, devices): every slicer.util and
    slicer.packaging name exists, 5.12-only ones only behind a release check."""
    use = Usage(ast.parse(path.read_text(encoding="utf-8")))
    problems = check_slicer_util(use) + check_slicer_packaging(use) + check_imports(use)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_slicer_side_library_calls_the_5_12_apis_it_needs():
    """The non-blocking launch and pip_ensure are really used (so the checks above check something)."""
    process = Usage(ast.parse((SLICER_LIB / "process.py").read_text(encoding="utf-8")))
    launches = [call for name, call, _ in process.calls_of("slicer.util") if name == "launchConsoleProcess"]
    assert any(call is not None and "blocking" in {k.arg for k in call.keywords} for call in launches)
    packages = Usage(ast.parse((SLICER_LIB / "packages.py").read_text(encoding="utf-8")))
    assert [name for name, _, _ in packages.calls_of("slicer.packaging")] == ["pip_ensure"]


def test_sample_data_phantom_is_registered_and_fetched_as_sample_data_fetches(monkeypatch, tmp_path):
    """Audit N11: the phantom is registered with Sample Data the template's way (category, one source with its
    SHA256, a thumbnail); Sample Data's downloadFile fetches with urllib.request.urlretrieve, which is run here on
    the registered file:// address: the bytes arrive, the checksum matches, and the file is a CT-like volume
    (int16 Hounsfield units) that the demo model can segment. SampleData itself is the application's (recorded)."""
    import hashlib
    import importlib
    import sys
    import types
    import urllib.request
    from pathlib import Path

    import nibabel as nib
    import numpy as np
    import slicer_stubs

    monkeypatch.setitem(sys.modules, "slicer.i18n", slicer_stubs.i18n_module())
    monkeypatch.syspath_prepend(str(facts.REPO / "PancreasDiNTS"))
    monkeypatch.delitem(sys.modules, "PancreasDiNTSSlicerLib.sampledata", raising=False)
    sampledata = importlib.import_module("PancreasDiNTSSlicerLib.sampledata")
    calls = []
    logic = type("SampleDataLogic", (), {
        "registerCustomSampleDataCategory": staticmethod(lambda category, title: calls.append(("category", category))),
        "registerCustomSampleDataSource": staticmethod(lambda **kw: calls.append(("source", kw)))})
    monkeypatch.setitem(sys.modules, "SampleData", types.SimpleNamespace(SampleDataLogic=logic))
    sampledata.registerPhantom()
    source = dict(calls)["source"]
    assert calls[0] == ("category", sampledata.CATEGORY) and source["category"] == sampledata.CATEGORY
    assert Path(source["thumbnailFileName"]).is_file()
    fetched = tmp_path / source["fileNames"]
    urllib.request.urlretrieve(source["uris"], fetched)
    assert source["checksums"] == "SHA256:" + hashlib.sha256(fetched.read_bytes()).hexdigest()
    image = nib.load(str(fetched))
    values = np.asarray(image.dataobj)
    assert image.get_data_dtype() == np.int16 and values.min() <= -900 and values.max() >= 100 and values.ndim == 3
    assert fetched.stat().st_size < 2_000_000
