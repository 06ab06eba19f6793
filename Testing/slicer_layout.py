"""The tree Slicer's CMake macros install for this extension, built from the CMake lists without CMake.

``slicerMacroBuildScriptedModule(NAME SCRIPTS RESOURCES)`` (Slicer ``CMake/SlicerMacroBuildScriptedModule.cmake``)
calls CTK's ``ctkMacroCompilePythonScript`` with ``DESTINATION_DIR <build>/<qt-scripted-modules>`` for every
module: each script and resource is copied to ``<qt-scripted-modules>/<its path as listed>`` (a script without a
name ending matching "py" gets ".py"), and the whole folder is installed. Two modules listing the same relative
path make two rules for one output (Ninja: "multiple rules generate"; other generators: the last copy wins), and
a listed file that does not exist stops the configuration. The PancreasDiNTS module also copies its demo model
(``DEMO_MODEL_FILES``) to ``<qt-scripted-modules>/PancreasDiNTSLib/resources/models/demo``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path


class LayoutError(Exception):
    """The CMake lists would not build or install as the extension's tree."""


@dataclass
class ModuleLists:
    """What one module's CMakeLists.txt hands to Slicer's macros."""

    name: str
    folder: Path
    scripts: list[str]
    resources: list[str]
    copies: list[tuple[str, str]] = field(default_factory=list)  # (source relative to folder, target relative)


def cmake_text(path: Path) -> str:
    """CMake source without comments."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    if not match:
        raise LayoutError(f"no set({variable} ...)")
    return match.group(1).split()


def _demo_copies(text: str) -> list[tuple[str, str]]:
    """The ``foreach(f ${LIST}) configure_file(${SRC}/${f} ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/
    <prefix>/${f} COPYONLY)`` copies of a module (its demo model)."""
    copies = []
    for var, items, body in re.findall(r"foreach\(\s*(\w+)\s+\$\{(\w+)\}\s*\)(.*?)endforeach\(\)", text, re.S):
        match = re.search(rf"configure_file\(\s*\$\{{(\w+)\}}/\$\{{{var}\}}\s+\$\{{CMAKE_BINARY_DIR\}}/"
                          rf"\$\{{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}}/(\S+)/\$\{{{var}\}}\s+COPYONLY\)", body)
        if not match:
            continue
        source_dir = re.search(rf"set\(\s*{match.group(1)}\s+\$\{{CMAKE_CURRENT_SOURCE_DIR\}}/(\S+)\)", text)
        if not source_dir:
            raise LayoutError(f"cannot read where {match.group(1)} points")
        copies += [(f"{source_dir.group(1)}/{item}", f"{match.group(2)}/{item}") for item in cmake_list(text, items)]
    return copies


def extension_modules(repo: Path) -> list[ModuleLists]:
    """Every module the extension's CMakeLists.txt adds, with its lists (``${MODULE_NAME}`` expanded)."""
    out = []
    for sub in re.findall(r"add_subdirectory\((\w+)\)", cmake_text(repo / "CMakeLists.txt")):
        folder = repo / sub
        text = cmake_text(folder / "CMakeLists.txt")
        (name,) = cmake_list(text, "MODULE_NAME")

        def expand(items: list[str], name: str = name) -> list[str]:
            return [item.replace("${MODULE_NAME}", name) for item in items]

        out.append(ModuleLists(name, folder, expand(cmake_list(text, "MODULE_PYTHON_SCRIPTS")),
                               expand(cmake_list(text, "MODULE_PYTHON_RESOURCES")), _demo_copies(text)))
    return out


def _script_name(item: str) -> str:
    """CTK appends ".py" when the extension does not match "py" (``if(NOT "${file_ext}" MATCHES "py")``)."""
    suffix = "".join(Path(item).suffixes)
    return item if "py" in suffix else item + ".py"


def planned_copies(modules: list[ModuleLists]) -> dict[str, tuple[str, Path]]:
    """Target path (relative to qt-scripted-modules) -> (module, source file); LayoutError on a collision or a
    missing source, listing every one."""
    plan: dict[str, tuple[str, Path]] = {}
    problems = []
    for module in modules:
        pairs = [(_script_name(s), _script_name(s)) for s in module.scripts]
        pairs += [(r, r) for r in module.resources] + module.copies
        for source, target in pairs:
            path = module.folder / source
            if not path.is_file():
                problems.append(f"{module.name}: listed file {source} does not exist")
            if target in plan:
                problems.append(f"collision: {target} is listed by {plan[target][0]} and by {module.name} "
                                "(both are copied to the same file of qt-scripted-modules)")
                continue
            plan[target] = (module.name, path)
    if problems:
        raise LayoutError("\n".join(problems))
    return plan


def build_tree(modules: list[ModuleLists], destination: Path) -> Path:
    """Copy every listed file where the macros put it; return the qt-scripted-modules folder."""
    root = destination / "qt-scripted-modules"
    for target, (_module, source) in planned_copies(modules).items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / target)
    return root
