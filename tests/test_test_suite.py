"""The test suite itself: every test says, in its docstring, the behaviour it pins down."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_function_has_a_docstring():
    """Every ``test_*`` function under tests/ (module level, in a class or nested) has a non-empty docstring."""
    files = sorted(TESTS.rglob("test_*.py"))
    assert Path(__file__).resolve() in files  # the walk really covers this directory
    missing = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                if not (ast.get_docstring(node) or "").strip():
                    missing.append(f"{path.relative_to(TESTS.parent)}:{node.lineno} {node.name}")
    assert not missing, "test functions without a docstring:\n" + "\n".join(missing)
