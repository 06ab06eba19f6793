"""Shape rules of the engine, checked with ast: no function over 80 lines (data literals aside), and the
package's own imports at the top of each module."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "PancreasDiNTS" / "PancreasDiNTSLib"
MAX_LINES = 80


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _is_data_literal(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A function whose body is (a docstring and) one return of a literal: a table or a config."""
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(
        body[0].value, (ast.Dict, ast.List, ast.Tuple, ast.Set))


def test_no_function_over_80_lines() -> None:
    long = []
    for path in sorted(LIB.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in _functions(tree):
            n = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if n > MAX_LINES and not _is_data_literal(fn):
                long.append(f"{path.relative_to(LIB)}:{fn.lineno} {fn.name} ({n} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_own_imports_at_module_top() -> None:
    """Imports of the package's own modules sit at the top of each module, not inside functions (the package's
    modules are cheap to import; the heavy optional libraries stay lazy)."""
    inner = []
    for path in sorted(LIB.rglob("*.py")):
        if path.parent.name == "cli":
            continue  # each sub-command imports its engine module when it runs, so `--help` stays fast
        if path.relative_to(LIB).as_posix() == "benchmark/workers.py":
            continue  # a timed run imports what it times inside the timer, as the bundle's run does
        tree = ast.parse(path.read_text())
        for fn in _functions(tree):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                        "PancreasDiNTSLib")):
                    inner.append(f"{path.relative_to(LIB)}:{node.lineno} from {node.module} in {fn.name}")
    assert not inner, "package imports inside functions:\n" + "\n".join(inner)
