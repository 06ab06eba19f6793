"""Slicer's real API, parsed from ../shared/slicer/*.txt (facts read from Slicer's source), plus the module files.

Nothing here is a hand-kept list of Slicer names: every set is derived from those text files, so a name the
modules use that Slicer does not have fails the tests. Used by Testing/test_slicer_*.py.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICER_FACTS = REPO.parent / "shared" / "slicer"
MODULES = {"PancreasDiNTS": REPO / "PancreasDiNTS", "PancreasDiNTSTrain": REPO / "PancreasDiNTSTrain"}
MODULE_FILES = {name: folder / f"{name}.py" for name, folder in MODULES.items()}
UI_FILES = {name: folder / "Resources" / "UI" / f"{name}.ui" for name, folder in MODULES.items()}
# The files that wire a module's .ui besides the module file (its panel sections).
PANEL_FILES = {"PancreasDiNTS": [MODULES["PancreasDiNTS"] / "PancreasDiNTSSlicerLib" / f"{n}.py"
                                 for n in ("panel", "panel_run", "panel_results", "panel_followup")],
               "PancreasDiNTSTrain": []}
# The enums of the parameter nodes' choices (stored as keys, shown with translatable labels).
CHOICES_FILE = MODULES["PancreasDiNTS"] / "PancreasDiNTSSlicerLib" / "choices.py"
# Files of the pip package that the Slicer package does not ship (Slicer never runs them).
PIP_ONLY = ("PancreasDiNTSReview/", "PancreasDiNTSLib/server/", "PancreasDiNTSLib/benchmark/",
            "PancreasDiNTSLib/cli/serve.py", "PancreasDiNTSLib/cli/benchmark.py", "PancreasDiNTSLib/cli/review.py",
            "PancreasDiNTSLib/cli/jobs.py")
# Slicer's minimum supported release for this extension (README): names must exist there or be guarded.
MIN_RELEASE_TAG = "v5.10.0"


def facts_file(name: str) -> str:
    path = SLICER_FACTS / name
    if not path.is_file():
        pytest.skip(f"{path} is not present (the Slicer API facts live in ../shared/slicer)")
    return path.read_text(encoding="utf-8")


def _param_names(params: str) -> tuple[list[str], bool]:
    """Argument names of a Python signature text, and whether it takes **kwargs."""
    tree = ast.parse(f"def f({params}): pass")
    args = tree.body[0].args  # type: ignore[attr-defined]
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if args.vararg:
        names.append(args.vararg.arg)
    return names, args.kwarg is not None


@dataclass
class Signature:
    params: list[str]
    varkw: bool


@dataclass
class UtilFacts:
    functions: dict[str, Signature] = field(default_factory=dict)
    classes: set[str] = field(default_factory=set)
    class_methods: dict[str, set[str]] = field(default_factory=dict)
    old_signatures: dict[str, dict[str, Signature]] = field(default_factory=dict)  # tag -> name -> signature
    absent_at: dict[str, set[str]] = field(default_factory=dict)  # tag -> names absent there


@functools.cache
def util_facts() -> UtilFacts:
    """slicer.util functions with signatures and classes, and how older releases differ."""
    facts = UtilFacts()
    tag = None
    for line in facts_file("slicer_util_functions.txt").splitlines():
        m = re.match(r"^(_?\w+)\((.*)\)(?:\s*->.*)?$", line)
        if m and tag is None:
            facts.functions[m.group(1)] = Signature(*_param_names(m.group(2)))
            continue
        m = re.match(r"^class (\w+)", line)
        if m:
            facts.classes.add(m.group(1))
            continue
        m = re.match(r"^(\w+)\.(\w+)\(self", line)
        if m:
            facts.class_methods.setdefault(m.group(1), set()).add(m.group(2))
            continue
        m = re.match(r"^# (v[\d.]+): absent there: (.*)$", line)
        if m:
            tag = m.group(1)
            facts.absent_at[tag] = {n.replace("class ", "").strip() for n in m.group(2).split(",")}
            continue
        m = re.match(r"^#\s+(v[\d.]+) has older signature: (\w+)\((.*)\)$", line)
        if m:
            facts.old_signatures.setdefault(m.group(1), {})[m.group(2)] = Signature(*_param_names(m.group(3)))
    assert len(facts.functions) > 100 and "launchConsoleProcess" in facts.functions, "unexpected file format"
    return facts


@dataclass
class MrmlFacts:
    methods: dict[str, set[str]] = field(default_factory=dict)  # class -> own methods (Python-callable)
    constants: dict[str, set[str]] = field(default_factory=dict)  # class -> enum constants
    bases: dict[str, str] = field(default_factory=dict)
    vtk_object_methods: set[str] = field(default_factory=set)

    def all_methods(self, cls: str) -> set[str]:
        """Methods of a class including its bases and vtkObject's."""
        out = set(self.vtk_object_methods)
        while cls:
            out |= self.methods.get(cls, set()) | self.constants.get(cls, set())
            cls = self.bases.get(cls, "")
        return out

    @property
    def every_method(self) -> set[str]:
        return set().union(*self.methods.values()) | self.vtk_object_methods


@functools.cache
def mrml_facts() -> MrmlFacts:
    """MRML/segmentation classes, their bases, methods (C++-only ones dropped) and enum constants."""
    facts = MrmlFacts()
    text = facts_file("mrml_methods.txt")
    head = re.search(r"VTK methods from vtkObject/vtkObjectBase and vtkTypeMacro \(([^)]*)\)", text)
    assert head, "unexpected mrml_methods.txt header"
    facts.vtk_object_methods = {n.strip() for n in head.group(1).split(",") if re.fullmatch(r"\w+", n.strip())}
    for line in text.split("# ===== RELEASE DIFFERENCES")[0].splitlines():
        m = re.match(r"^## (\w+) : public (\w+)", line)
        if m:
            facts.bases[m.group(1)] = m.group(2)
            facts.methods.setdefault(m.group(1), set())
            continue
        m = re.match(r"^(\w+)\.(\w+)(.*)$", line)
        if m and "C++ only" not in m.group(3):
            facts.methods.setdefault(m.group(1), set()).add(m.group(2))
            continue
        m = re.match(r"^# (\w+) public enum constants [^:]*: (.*)$", line)
        if m:
            facts.constants[m.group(1)] = {c.strip() for c in m.group(2).split(",")}
    assert "vtkMRMLSegmentationNode" in facts.methods and facts.vtk_object_methods
    return facts


@functools.cache
def terminology_facts() -> dict[str, set[str]]:
    """Methods of vtkSlicerTerminologiesModuleLogic and vtkSlicerTerminologyEntry named in terminology.txt."""
    text = facts_file("terminology.txt")
    logic = set(re.findall(r"\blogic\.(\w+)\(", text))
    entry_line = re.search(r"^vtkSlicerTerminologyEntry methods: (.*?)\s*(\(|$)", text, re.M)
    entry = {n.strip() for n in entry_line.group(1).split(",")} if entry_line else set()
    entry |= {m for n in list(entry) if "/" in n for m in _expand_get_set(n)}
    entry = {n for n in entry if "/" not in n}
    return {"vtkSlicerTerminologiesModuleLogic": logic, "vtkSlicerTerminologyEntry": entry}


def _expand_get_set(name: str) -> list[str]:
    """'Get/SetTerminologyContextName' -> ['GetTerminologyContextName', 'SetTerminologyContextName']."""
    m = re.match(r"^Get/Set(\w+)$", name)
    return [f"Get{m.group(1)}", f"Set{m.group(1)}"] if m else []


@dataclass
class WrapperFacts:
    exported: set[str]
    members: set[str]
    connectors: list[tuple[set[str], str]]  # (widget class names, parameter type description)


@functools.cache
def wrapper_facts() -> WrapperFacts:
    """slicer.parameterNodeWrapper exports, members added to wrapped classes, and GUI connectors."""
    text = facts_file("parameter_node_wrapper.txt")
    exported = set(re.findall(r"^(\w+) \| ", text, re.M))
    members = set(re.findall(r"^ParameterNodeWrapper\.(\w+)", text, re.M)) - {"__init__"}
    section = text.split("# --- Built-in GUI connectors")[1].split("# ---")[0]
    connectors = []
    for line in section.splitlines()[1:]:  # the first line is the rest of the section title
        if "->" not in line or line.startswith("#"):
            continue
        for part in line.split(";"):
            if "->" in part:
                widgets, kind = part.split("->", 1)
                names = {w.strip().split(".")[-1] for w in widgets.split(",") if w.strip()}
                connectors.append((names, kind.strip()))
    assert "parameterNodeWrapper" in exported and "connectGui" in members and connectors
    return WrapperFacts(exported, members, connectors)


@dataclass
class ScriptedFacts:
    methods: dict[str, set[str]]
    attributes: dict[str, set[str]]
    module_parent_properties: set[str]
    widget_parent_properties: set[str]


@functools.cache
def scripted_facts() -> ScriptedFacts:
    """ScriptedLoadableModule* base classes: methods, attributes, and the C++ parent's properties."""
    text = facts_file("scripted_loadable_module.txt")
    methods: dict[str, set[str]] = {}
    for cls, name in re.findall(r"^\s+(ScriptedLoadableModule\w*)\.(\w+)\(", text, re.M):
        methods.setdefault(cls, set()).add(name)
    attributes = {cls: {a.strip() for a in names.split(",")}
                  for cls, names in re.findall(r"^(ScriptedLoadableModule\w*) attributes: (.*)$", text, re.M)}
    props = re.search(r"^title \(str\),.*$", text, re.M)
    module_props = set(re.findall(r"(\w+) \(", props.group(0))) if props else set()
    widget_line = re.search(r"^Q_PROPERTY moduleName.*$", text, re.M)
    widget_props = set(re.findall(r"Q_PROPERTY (\w+)|Q_INVOKABLE (\w+)\(\), (\w+)\(\)|\bself\.parent\.(\w+)",
                                  widget_line.group(0))) if widget_line else set()
    widget_names = {n for group in widget_props for n in group if n}
    assert methods.get("ScriptedLoadableModuleWidget") and module_props and widget_names
    return ScriptedFacts(methods, attributes, module_props, widget_names)


@functools.cache
def packaging_facts() -> dict[str, Signature]:
    """slicer.packaging functions (Slicer >= 5.12) with signatures."""
    text = facts_file("python_versions.txt")
    section = text.split("# --- slicer.packaging public functions")[1].split("# ---")[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"^(\w+)\((.*)\) -> .*$", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = Signature(*_param_names(m.group(2)))
    assert "pip_ensure" in out
    return out


@functools.cache
def slicer_cli_options() -> set[str]:
    """Command-line options of the Slicer application."""
    text = facts_file("cli_options.txt")
    return set(re.findall(r"^(--[\w-]+)", text, re.M)) | set(re.findall(r"^-\w\b", text, re.M))


# ----------------------------------------------------------------------------------------------------------
# The module files
# ----------------------------------------------------------------------------------------------------------


def module_tree(name: str) -> ast.Module:
    return ast.parse(MODULE_FILES[name].read_text(encoding="utf-8"), filename=str(MODULE_FILES[name]))


def panel_trees(name: str) -> list[ast.Module]:
    """The module file and its panel sections' files, parsed."""
    return [module_tree(name)] + [ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
                                  for p in PANEL_FILES[name]]


def choice_enums() -> set[str]:
    """The names of the Enum classes in choices.py."""
    tree = ast.parse(CHOICES_FILE.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)
            and any(dotted(b) == "enum.Enum" for b in n.bases)}


def dotted(node: ast.AST) -> str | None:
    """'slicer.util.loadUI' for an Attribute/Name chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def wrapper_fields(tree: ast.Module) -> dict[str, dict[str, ast.expr]]:
    """@parameterNodeWrapper classes of a module: class name -> {field: annotation}."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(dotted(d) == "parameterNodeWrapper" for d in node.decorator_list):
            out[node.name] = {s.target.id: s.annotation for s in node.body
                              if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return out


def repo_files(folder: Path) -> list[Path]:
    """Files under ``folder`` that belong to the tree (tracked or not ignored by git); a walk without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", str(folder)],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
        files = [REPO / line for line in out if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in folder.rglob("*")]
    return sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts
                  and not any(part.endswith(".egg-info") for part in p.parts) and p.suffix != ".pyc")
