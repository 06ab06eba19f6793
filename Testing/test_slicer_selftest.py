"""The self-tests as documented: the README's headless commands use real Slicer options and name the modules'
test cases; loaded as ``slicer.testing.runUnitTest`` loads them (unittest, test_* methods in alphabetical
order, runTest ignored), every test prepares what it needs, and the view check skips without views.

Running the test methods needs the desktop application (loadVolume, the module manager); docs/SLICER.md says
which Slicer lines make each of these checks the right one.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
import unittest

import pytest
import slicer_facts as facts
import test_scene_support as support

README = facts.REPO / "README.md"
# Helpers of the self-tests that prepare what a test needs (packages, phantom, model): one must be reached.
PREPARERS = {"_prepareEngine", "_phantomAndModel", "_segmentedPhantom", "_engine"}


def readme_selftest_commands() -> list[list[str]]:
    lines = [line for line in README.read_text(encoding="utf-8").splitlines()
             if line.startswith("Slicer ") and "runUnitTest" in line]
    return [shlex.split(line) for line in lines]


def test_readme_documents_a_headless_selftest_command_per_module():
    commands = readme_selftest_commands()
    assert len(commands) == len(facts.MODULES)
    options = facts.slicer_cli_options()
    tested = []
    for words in commands:
        used = [w for w in words if w.startswith("-")]
        assert set(used) <= options, f"unknown Slicer options {set(used) - options}"
        assert {"--testing", "--no-main-window", "--no-splash", "--python-code"} <= set(used)
        code = words[words.index("--python-code") + 1]
        call = ast.parse(code).body[-1].value
        assert ast.unparse(call.func) == "slicer.testing.runUnitTest"
        paths, name = ast.literal_eval(call.args[0]), ast.literal_eval(call.args[1])
        assert paths == [f"<repo>/{name}"] and name in facts.MODULES
        module_paths = words[words.index("--additional-module-paths") + 1:]
        module_paths = module_paths[:next((i for i, w in enumerate(module_paths) if w.startswith("-")),
                                          len(module_paths))]
        assert module_paths == [f"<repo>/{m}" for m in facts.MODULES]  # both: Train depends on PancreasDiNTS
        tested.append(name)
    assert sorted(tested) == sorted(facts.MODULES)


def _test_class(name: str) -> ast.ClassDef:
    return next(n for n in facts.module_tree(name).body if isinstance(n, ast.ClassDef) and n.name == f"{name}Test")


def _calls(node: ast.AST) -> set[str]:
    return {n.func.attr for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}


@pytest.mark.parametrize("name", list(facts.MODULES))
def test_every_selftest_prepares_what_it_needs(name):
    """runUnitTest runs the test_* methods alphabetically and never runTest: no test may rely on one before it
    (the finding: only segmentPhantom installed the packages, so on a fresh Slicer the others failed)."""
    cls = _test_class(name)
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    tests = [m for m in methods if m.startswith("test_")]
    assert tests
    for test in tests:
        reached, todo = set(), [test]
        while todo:  # the helpers a test calls, transitively
            for called in _calls(methods[todo.pop()]):
                if called in methods and called not in reached:
                    reached.add(called)
                    todo.append(called)
        calls = _calls(methods[test]) | reached
        prepares = bool(calls & (PREPARERS | {"setupPythonRequirements"}))
        assert prepares, f"{name}Test.{test} does not prepare the engine, phantom or model itself"
    run = ast.unparse(methods["runTest"])
    assert all(t in run for t in tests), "runTest (Reload and Test) must run every test"


def test_the_view_check_skips_without_slice_views():
    """With --no-main-window there is no layout manager (qSlicerMainWindow creates it) and so no slice views:
    showing the confidence map changes no view; that test skips with the reason instead of failing."""
    cls = _test_class("PancreasDiNTS")
    for method in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")):
        source = ast.unparse(method)
        if "showConfidence" not in source:
            continue
        first = next(s for s in method.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)))
        assert isinstance(first, ast.If) and "vtkMRMLSliceCompositeNode" in ast.unparse(first.test)
        assert "skipTest" in ast.unparse(first.body[0]) and "--no-main-window" in ast.unparse(first.body[0])


@pytest.mark.parametrize("name", list(facts.MODULES))
def test_runUnitTest_loads_the_test_methods_not_runTest(name, monkeypatch):
    """What slicer.testing.runUnitTest does (sys.path + unittest.TestLoader().loadTestsFromName), on the module
    file imported with slicer-core: the suite is the test_* methods, in alphabetical order."""
    import slicer_stubs

    monkeypatch.syspath_prepend(str(facts.MODULES[name]))
    monkeypatch.syspath_prepend(str(facts.REPO / "PancreasDiNTS"))
    names = [*facts.MODULES, *slicer_stubs.STUBBED,
             *[m for m in sys.modules if m.startswith(("PancreasDiNTSSlicerLib", "PancreasDiNTSSceneLib"))]]
    for module in names:  # recorded, so that the modules imported here are forgotten afterwards
        monkeypatch.setitem(sys.modules, module, sys.modules.get(module))
        sys.modules.pop(module)
    slicer = support.import_slicer_core()
    for attribute in ("ScriptedLoadableModule", "parameterNodeWrapper"):  # recorded before the stubs come
        monkeypatch.setattr(slicer, attribute, None, raising=False)
    slicer_stubs.install()
    suite = unittest.TestLoader().loadTestsFromName(name)
    ids = [test.id() for group in suite for test in group]
    ours = [i.split(".")[-1] for i in ids if f".{name}Test." in i]
    expected = sorted(n.name for n in _test_class(name).body
                      if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))
    assert ours == expected and "runTest" not in ours
    assert not any(re.search(r"\.ScriptedLoadableModuleTest\.", i) for i in ids if "runTest" not in i)
