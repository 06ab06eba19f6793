"""The extension's CMake files follow Slicer's templates, and each module lists exactly the files that exist
(slicerMacroBuildScriptedModule stops on a listed file that is missing; an unlisted one is silently not installed)."""

from __future__ import annotations

import re

import pytest
import slicer_facts as facts

TOP = facts.REPO / "CMakeLists.txt"


def cmake_text(path) -> str:
    """CMake source without comments."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


def cmake_set(text: str, variable: str) -> list[str]:
    m = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert m, f"no set({variable} ...)"
    return m.group(1).split()


def macro_keywords() -> tuple[set[str], set[str], set[str]]:
    """(options, one-value, multi-value) keywords of slicerMacroBuildScriptedModule, from the facts."""
    text = facts.facts_file("extension_cmake.txt")
    m = re.search(r"^Options: (.*?); one-value: (\w+).*?; multi-value: (.*?); ", text, re.M)
    assert m, "unexpected extension_cmake.txt format"
    return ({o.strip() for o in m.group(1).split(",")}, {m.group(2)}, {o.strip() for o in m.group(3).split(",")})


@pytest.mark.parametrize("name", list(facts.MODULES))
def test_module_cmake_lists_exactly_the_existing_files(name):
    folder = facts.MODULES[name]
    text = cmake_text(folder / "CMakeLists.txt")
    assert "GLOB" not in text.upper(), "files must be listed, not globbed"
    module_name = cmake_set(text, "MODULE_NAME")
    assert module_name == [name]

    def expand(items):
        return {item.replace("${MODULE_NAME}", name) for item in items}

    scripts = expand(cmake_set(text, "MODULE_PYTHON_SCRIPTS"))
    resources = expand(cmake_set(text, "MODULE_PYTHON_RESOURCES"))
    files = {p.relative_to(folder).as_posix() for p in facts.repo_files(folder)}
    existing_py = {f for f in files if f.endswith(".py") and not f.startswith(facts.PIP_ONLY)}
    assert not {f for f in scripts if f.startswith(facts.PIP_ONLY)}, "the Slicer package ships pip-only code"
    # The demo model (package data) has its own install list, checked by test_module_cmake_installs_the_whole_demo_model.
    existing_resources = {f for f in files if not f.endswith(".py") and f != "CMakeLists.txt"
                          and not f.startswith("PancreasDiNTSLib/resources/")}
    assert scripts == existing_py, (f"{name}/CMakeLists.txt MODULE_PYTHON_SCRIPTS differs from the .py files: "
                                    f"missing {sorted(existing_py - scripts)}, extra {sorted(scripts - existing_py)}")
    assert resources == existing_resources, (
        f"{name}/CMakeLists.txt MODULE_PYTHON_RESOURCES differs from the files: "
        f"missing {sorted(existing_resources - resources)}, extra {sorted(resources - existing_resources)}")
    assert f"{name}.py" in scripts and f"Resources/UI/{name}.ui" in resources
    assert f"Resources/Icons/{name}.png" in resources


def test_module_cmake_installs_the_whole_demo_model():
    """The GUI module ships the demo model next to itself, where demo.demo_model_dir() looks for it."""
    text = cmake_text(facts.MODULES["PancreasDiNTS"] / "CMakeLists.txt")
    listed = set(cmake_set(text, "DEMO_MODEL_FILES"))
    demo = facts.MODULES["PancreasDiNTS"] / "PancreasDiNTSLib" / "resources" / "models" / "demo"
    assert listed == {p.relative_to(demo).as_posix() for p in facts.repo_files(demo)}
    assert "PancreasDiNTSLib/resources/models/demo" in text and "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in text


@pytest.mark.parametrize("name", list(facts.MODULES))
def test_module_cmake_follows_the_scripted_template(name):
    text = cmake_text(facts.MODULES[name] / "CMakeLists.txt")
    m = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert m, "no slicerMacroBuildScriptedModule"
    words = m.group(1).split()
    options, one_value, multi_value = macro_keywords()
    keywords = [w for w in words if re.fullmatch(r"[A-Z_]+", w)]
    assert set(keywords) <= options | one_value | multi_value, f"unknown keywords {set(keywords)}"
    assert words[words.index("NAME") + 1] == "${MODULE_NAME}"
    assert words[words.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}"
    assert words[words.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    assert "WITH_GENERIC_TESTS" in keywords
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    assert testing and re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)",
                                 testing.group(1))


def test_extension_cmake_follows_the_extension_template():
    text = cmake_text(TOP)
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert values.get(key), f"{key} is not set"
    assert values["EXTENSION_CATEGORY"] == "Segmentation"
    assert values["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    icon = values["EXTENSION_ICONURL"].split("/main/", 1)[-1]
    assert (facts.REPO / icon).is_file(), f"the extension icon {icon} is not in the repository"
    assert re.search(r"project\(PancreasDiNTS\)", text)
    steps = [r"cmake_minimum_required\(", r"project\(", r"set\(EXTENSION_HOMEPAGE", r"find_package\(Slicer REQUIRED\)",
             r"include\(\$\{Slicer_USE_FILE\}\)", r"add_subdirectory\(", r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)",
             r"include\(\$\{Slicer_EXTENSION_CPACK\}\)"]
    positions = []
    for step in steps:
        m = re.search(step, text)
        assert m, f"missing {step}"
        positions.append(m.start())
    assert positions == sorted(positions), "the extension CMakeLists.txt is not in the template's order"
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", text)
    assert subdirs == list(facts.MODULES)
    for sub in subdirs:
        assert (facts.REPO / sub / "CMakeLists.txt").is_file()


def test_extension_ships_its_own_licence_and_readme():
    """Without EXTENSION_LICENSE_FILE, UseSlicer.cmake defaults it to Slicer's licence and packaging ships that
    (docs/SLICER.md); ours is Apache-2.0, as pyproject.toml says, set before find_package(Slicer)."""
    text = cmake_text(TOP)
    values = {m.group(1): (m.group(2), m.start()) for m in
              re.finditer(r"set\((EXTENSION_(?:LICENSE|README)_FILE)\s+(\S+)\)", text)}
    assert values["EXTENSION_LICENSE_FILE"][0] == "${CMAKE_CURRENT_SOURCE_DIR}/LICENSE"
    assert values["EXTENSION_README_FILE"][0] == "${CMAKE_CURRENT_SOURCE_DIR}/README.md"
    find_slicer = text.index("find_package(Slicer REQUIRED)")
    assert all(position < find_slicer for _, position in values.values())
    licence = (facts.REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in licence
    assert re.search(r'^license = "Apache-2.0"$', (facts.REPO / "pyproject.toml").read_text(), re.M)


def test_module_help_links_to_the_extension_homepage():
    """The catalogue's reviewers ask for module help that links to the documentation: the link is the
    extension's homepage (EXTENSION_HOMEPAGE) at a README section that exists."""
    homepage = dict(re.findall(r'set\((EXTENSION_HOMEPAGE)\s+"([^"]*)"\)', cmake_text(TOP)))["EXTENSION_HOMEPAGE"]
    text = (facts.REPO / "PancreasDiNTS" / "PancreasDiNTSSlicerLib" / "resources.py").read_text(encoding="utf-8")
    url = re.search(r'^DOCUMENTATION_URL = "([^"]+)"$', text, re.M).group(1)
    base, anchor = url.split("#")
    assert base == homepage
    headings = re.findall(r"^#+ (.+)$", (facts.REPO / "README.md").read_text(encoding="utf-8"), re.M)
    assert anchor in {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    for name in facts.MODULES:
        assert "resources.helpLink()" in facts.MODULE_FILES[name].read_text(encoding="utf-8")


def test_contributors_are_one_fact():
    """The extension's EXTENSION_CONTRIBUTORS and both modules' contributors (PancreasDiNTSSlicerLib.resources) say
    the same, so naming the people (audit N9, "Firstname Lastname (Organization)") is one edit in two places."""
    import ast

    text = TOP.read_text(encoding="utf-8")
    m = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]*)"\)', text)
    assert m
    tree = ast.parse((facts.REPO / "PancreasDiNTS" / "PancreasDiNTSSlicerLib" / "resources.py").read_text())
    value = next(n.value for n in tree.body if isinstance(n, ast.Assign) and facts.dotted(n.targets[0]) == "CONTRIBUTORS")
    assert ", ".join(ast.literal_eval(value)) == m.group(1)
    for name in facts.MODULE_FILES:
        assert "resources.CONTRIBUTORS" in facts.MODULE_FILES[name].read_text(encoding="utf-8")
