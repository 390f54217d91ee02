"""The code stays readable at a glance: no module of charrnn/ over MAX_LINES lines, no
function (nested ones included in their parent) over MAX_BODY lines of body, counted from
its first statement (the docstring) to its last line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "charrnn"
MAX_LINES = 400
MAX_BODY = 60

def too_long(path: Path) -> list[str]:
    """What in the module is over the limits, one line each."""
    source = path.read_text(encoding="utf-8")
    lines = source.count("\n")
    found = [f"{path.name}: {lines} lines (at most {MAX_LINES})"] if lines > MAX_LINES else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.end_lineno - node.body[0].lineno + 1
            if body > MAX_BODY:
                found.append(f"{path.name}:{node.lineno} {node.name}(): {body} lines of body (at most {MAX_BODY})")
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_and_functions_fit_on_a_screen_or_a_few(path):
    found = too_long(path)
    assert not found, "\n".join(found)
