"""The engine's layering rule, checked with ast (every import, at module level or inside a function).

Layers, lowest first; a module may import its own sub-package and any lower layer, never a higher one:

    core  <  io, model, readout, bridge  <  inference  <  training, server, benchmark, followup  <  synthetic  <  cli

``core`` and ``bridge`` never import torch (the Slicer modules import them in Slicer's own process), and the
package's imports form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "PancreasDiNTS" / "PancreasDiNTSLib"
LAYERS = {
    "": 0, "core": 0,
    "io": 1, "model": 1, "readout": 1, "bridge": 1,
    "inference": 2, "review": 2,
    "training": 3, "server": 3, "benchmark": 3,
    # a follow-up comparison is read-out plus registration below the CLI; a side given as a CT is segmented
    # first through inference's batch driver (imported only then), so it sits beside training/server
    "followup": 3,
    "synthetic": 4,
    "cli": 5,
}
TORCH_FREE = ("core", "bridge", "readout", "review")
# Within one layer, these sub-packages may not import each other (they are independent of one another).
INDEPENDENT = {"io", "model", "readout", "bridge", "training", "server", "benchmark", "followup"}


def module_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, top_level: bool = False) -> set[str]:
    """Every module this file imports (absolute names; relative imports resolved); ``top_level``: only the
    imports that run when the module is imported (not those inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    nodes = ast.iter_child_nodes(tree) if top_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for alias in node.names:  # "from PancreasDiNTSLib.core import errors" imports a module
                found.add(f"{mod}.{alias.name}")
    return found


def engine_modules() -> dict[str, set[str]]:
    mods = {}
    names = {module_name(p) for p in LIB.rglob("*.py")}
    for p in sorted(LIB.rglob("*.py")):
        own = {m for m in imports_of(p) if m in names and m != module_name(p)}
        mods[module_name(p)] = own | {m for m in imports_of(p) if not m.startswith("PancreasDiNTSLib")}
    return mods


def subpackage(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (LIB / parts[1]).is_dir()) else ""


def test_every_subpackage_has_a_layer() -> None:
    for d in LIB.iterdir():
        if d.is_dir() and (d / "__init__.py").exists():
            assert d.name in LAYERS, f"{d.name}/ has no layer in Testing/test_layering.py and docs/ARCHITECTURE.md"


def test_no_flat_modules_left() -> None:
    flat = sorted(p.name for p in LIB.glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules outside a sub-package: {flat}"


def test_imports_point_down() -> None:
    bad = []
    for mod, deps in engine_modules().items():
        mine = subpackage(mod)
        for dep in deps:
            if not dep.startswith("PancreasDiNTSLib"):
                continue
            theirs = subpackage(dep)
            if theirs == mine:
                continue
            if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and mine in INDEPENDENT):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports up or across the layers:\n" + "\n".join(sorted(bad))


def test_torch_free_layers() -> None:
    """No module-level import of torch/MONAI/Slicer in the torch-free layers (a function may import torch when
    it runs in the engine's own process, e.g. ``python -m PancreasDiNTSLib.bridge.device_list``)."""
    heavy = ("torch", "monai", "yaml", "slicer", "qt", "vtk", "ctk")  # PyYAML: Slicer may lack it at first
    bad = [f"{module_name(p)} -> {dep}" for p in LIB.rglob("*.py") if subpackage(module_name(p)) in TORCH_FREE
           for dep in imports_of(p, top_level=True) if dep.split(".")[0] in heavy]
    assert not bad, "torch/Slicer imports in a torch-free layer:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = {m: {d for d in deps if d.startswith("PancreasDiNTSLib")} for m, deps in engine_modules().items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # A package __init__ importing nothing of its own is fine; report real cycles only.
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.slow
@pytest.mark.parametrize("layer", sorted(TORCH_FREE))
def test_torch_free_layer_imports_without_torch(layer: str, tmp_path: Path) -> None:
    """Importing every module of the layer in a fresh interpreter loads no torch (checked for real)."""
    import subprocess
    import sys

    mods = [m for m in engine_modules() if subpackage(m) == layer]
    if not mods:
        pytest.skip(f"{layer}/ has no modules yet")
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "bad = [m for m in ('torch', 'monai') if m in sys.modules]\nprint(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(LIB.parent),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{layer}/ pulled in {out.stdout.strip()}"


def test_cli_parser_imports_no_torch() -> None:
    """`pancreas-dints --help` (and the parser of every sub-command) stays fast: it imports neither torch nor
    numpy; each command imports its engine modules when it runs."""
    import subprocess
    import sys

    code = ("import sys, PancreasDiNTSLib.cli as c; c.build_parser(); "
            "print(','.join(m for m in ('torch', 'monai', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(LIB.parent),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the CLI's parser pulled in {out.stdout.strip()}"
