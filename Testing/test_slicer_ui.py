"""The .ui files are valid Qt Designer XML, every widget the code reaches exists, and every widget bound to a
parameter (SlicerParameterName) can be connected to that parameter's type by Slicer's GUI connectors."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET

import pytest
import slicer_facts as facts

NAMES = list(facts.MODULE_FILES)


def parse_ui(name: str) -> ET.Element:
    return ET.parse(facts.UI_FILES[name]).getroot()


def widgets(root: ET.Element) -> dict[str, str]:
    """Widget name -> class for every <widget> of a .ui file."""
    out: dict[str, str] = {}
    for w in root.iter("widget"):
        assert w.get("name"), f"a {w.get('class')} widget has no name"
        assert w.get("name") not in out, f"duplicate widget name {w.get('name')}"
        out[w.get("name")] = w.get("class")
    return out


def bound_widgets(root: ET.Element) -> dict[str, tuple[str, ET.Element]]:
    """Parameter name -> (widget class, widget element) for widgets carrying SlicerParameterName."""
    out = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "SlicerParameterName must be a dynamic property (stdset=0)"
                param = prop.findtext("string")
                assert param not in out, f"parameter {param} bound twice"
                out[param] = (w.get("class"), w)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_ui_is_qt_designer_xml(name):
    root = parse_ui(name)
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == name
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == name
    custom = {c.findtext("class"): c for c in root.iter("customwidget")}
    for cls, element in custom.items():
        assert element.findtext("extends") and element.findtext("header") == f"{cls}.h"
    for wname, cls in widgets(root).items():
        assert cls.startswith("Q") or cls in custom, f"{wname}: class {cls} is neither Qt's nor declared"
    names = set(widgets(root))
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in names and connection.findtext("receiver") in names


@pytest.mark.parametrize("name", NAMES)
def test_every_ui_widget_the_code_uses_exists(name):
    tree = facts.module_tree(name)
    used = {n.attr for t in facts.panel_trees(name) for n in ast.walk(t)
            if isinstance(n, ast.Attribute) and facts.dotted(n.value) == "self.ui"}
    assert used, "the module reaches no widget?"
    missing = used - set(widgets(parse_ui(name)))
    assert not missing, f"{name}.py uses widgets missing from {name}.ui: {sorted(missing)}"
    # The file loadUI opens is this one.
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and facts.dotted(n.func) == "self.resourcePath"]
    assert any(isinstance(a, ast.Constant) and a.value == f"UI/{name}.ui" for n in loads for a in n.args)


def _field_kind(annotation: ast.expr) -> tuple[str, str | None, bool]:
    """(base type name, MRML class or None, has Choice validator) of a wrapper field annotation."""
    choice = False
    if isinstance(annotation, ast.Subscript) and facts.dotted(annotation.value) == "Annotated":
        elements = annotation.slice.elts  # type: ignore[attr-defined]
        annotation = elements[0]
        choice = any(isinstance(e, ast.Call) and facts.dotted(e.func) == "Choice" for e in elements[1:])
    base = facts.dotted(annotation) or ""
    if base.startswith("vtkMRML"):
        return "node", base, choice
    if base in facts.choice_enums():
        return "enum.Enum", None, choice
    return base, None, choice


def _connector_accepts(widget_class: str, kind: str, choice: bool) -> bool:
    """Whether Slicer's GUI connector for this widget class takes a parameter of this kind."""
    for classes, description in facts.wrapper_facts().connectors:
        if widget_class not in classes:
            continue
        if kind == "enum.Enum":  # the connector's line ends "... or enum.Enum" (split off above at its ';')
            return any(widget_class in line.split("->")[0] and line.rstrip().endswith("enum.Enum")
                       for line in facts.facts_file("parameter_node_wrapper.txt").splitlines() if "->" in line)
        if "Choice" in description:
            return choice and kind in description
        if kind == "node":
            return "vtkMRMLNode" in description
        if kind == "Path":
            return "pathlib" in description
        return description.split()[0] == kind or description.startswith(f"{kind} ")
    return False


@pytest.mark.parametrize("name", NAMES)
def test_bound_widgets_match_parameter_types(name):
    tree = facts.module_tree(name)
    (fields,) = facts.wrapper_fields(tree).values()
    bound = bound_widgets(parse_ui(name))
    assert bound, "no widget is bound to the parameter node"
    for param, (widget_class, element) in bound.items():
        assert param in fields, f"{name}.ui binds {param!r}, which {name}ParameterNode does not declare"
        kind, mrml_class, choice = _field_kind(fields[param])
        assert _connector_accepts(widget_class, kind, choice), \
            f"{widget_class} cannot be connected to {param}: {kind}{' with Choice' if choice else ''}"
        if mrml_class:
            node_types = [s.text for p in element.findall("property") if p.get("name") == "nodeTypes"
                          for s in p.iter("string")]
            assert node_types == [mrml_class], f"{param}: nodeTypes {node_types} != [{mrml_class}]"
            assert mrml_class in facts.mrml_facts().bases


def test_connector_check_rejects_mismatches():
    assert _connector_accepts("QCheckBox", "bool", False)
    assert not _connector_accepts("QComboBox", "str", False)  # a combo box needs a Choice validator
    assert _connector_accepts("QComboBox", "str", True)
    assert not _connector_accepts("QCheckBox", "str", False)
    assert _connector_accepts("ctkPathLineEdit", "Path", False)
    assert _connector_accepts("qMRMLNodeComboBox", "node", False)
    assert not _connector_accepts("QPlainTextEdit", "str", False)  # no connector for QPlainTextEdit
    assert _connector_accepts("QComboBox", "enum.Enum", False)  # stored as the member's name, shown by label
    assert not _connector_accepts("QLineEdit", "enum.Enum", False)


# Path fields that must accept a folder (a model bundle, a train run, an output folder): ctkPathLineEdit opens a
# file dialog when its filters include Files (CTK ctkPathLineEdit.cpp L551/L570), where no folder can be chosen.
FOLDER_FIELDS = {"PancreasDiNTS": {"localModelPathLineEdit", "compareOutputPathLineEdit"},
                 "PancreasDiNTSTrain": {"outputFolderPathLineEdit", "modelPathLineEdit"}}


@pytest.mark.parametrize("name", NAMES)
def test_folder_path_fields_browse_folders(name):
    filters = {}
    for node in (n for tree in facts.panel_trees(name) for n in ast.walk(tree)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = facts.dotted(node.targets[0]) or ""
            if target.startswith("self.ui.") and target.endswith(".filters"):
                filters[target.split(".")[2]] = {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)}
    for field in FOLDER_FIELDS[name]:
        assert "Dirs" in filters.get(field, set()), f"{name}: {field} does not browse folders"
        assert "Files" not in filters[field], f"{name}: {field} has Files in its filters: a folder cannot be chosen"
    if name == "PancreasDiNTS":  # an exported model file is chosen with its own button
        assert "localModelFileButton" in widgets(parse_ui(name))
