"""No function in src/ is longer than 100 lines (docstring excluded) without a reason.

A longer function needs a comment ``# long-function: <why>`` on one of the three
lines above its ``def`` (or its decorators).

Run ``python tests/test_function_length.py`` for the report of every function over
the limit.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 100
REASON = "# long-function:"


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the ``def`` to the end, minus the docstring's lines."""
    total = node.end_lineno - node.lineno + 1
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            total -= body[0].end_lineno - body[0].lineno + 1
    return total


def _functions(node: ast.AST, prefix: str = ""):
    """Yield ``(qualified name, node)`` of every function, methods and nested ones too."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{child.name}", child
            yield from _functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")


def long_functions(limit: int = MAX_LINES) -> list[tuple[str, int, bool]]:
    """``(file::qualified name, lines, has a written reason)`` of every function over ``limit``."""
    found = []
    for path in sorted((SRC / "stalign").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for name, node in _functions(ast.parse("\n".join(lines), filename=str(path))):
            n = _body_lines(node)
            if n > limit:
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                reason = any(REASON in line for line in lines[max(0, first - 4) : first - 1])
                found.append((f"{path.relative_to(SRC)}::{name}", n, reason))
    return found


def test_no_long_function_without_a_reason():
    unexplained = [f"{name} ({n} lines)" for name, n, reason in long_functions() if not reason]
    assert not unexplained, (
        f"functions over {MAX_LINES} lines (docstring excluded): split them, or write "
        f"'{REASON} <why>' above the def:\n  " + "\n  ".join(unexplained)
    )


if __name__ == "__main__":
    for name, n, reason in long_functions(int(sys.argv[1]) if len(sys.argv) > 1 else MAX_LINES):
        note = "reason given" if reason else "NO REASON"
        print(f"{n:5d}  {name}  ({note})")
