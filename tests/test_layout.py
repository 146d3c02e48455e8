"""The package stays readable: no module over ~500 lines, no function over 80 lines without a stated reason."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ultra_vil"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FILE_LINES = 530  # "about 500"
MAX_FUNCTION_LINES = 80


def test_the_package_has_modules():
    assert len(MODULES) > 40


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(PACKAGE)}: {lines} lines; split it by concept"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_functions_say_why(path):
    """A function over 80 lines (docstring included) says in its docstring, or in that of a function enclosing it,
    why it is long, in a sentence starting 'Long'."""
    funcs = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for f in funcs:
        if f.end_lineno - f.lineno + 1 <= MAX_FUNCTION_LINES:
            continue
        enclosing = [g for g in funcs if g.lineno <= f.lineno and g.end_lineno >= f.end_lineno]
        assert any("Long" in (ast.get_docstring(g) or "") for g in enclosing), (
            f"{path.relative_to(PACKAGE)}:{f.lineno} {f.name} has {f.end_lineno - f.lineno + 1} lines and no reason"
        )
