"""Habits of the code base that a test keeps true."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("prunetune", "search", "evaluators", "spaces")
MAX_LINES = 60
# The argparse builder is a flat list of options: long, but read as a table.
EXEMPT = {"prunetune/cli.py:build_parser"}


def test_no_function_over_60_lines() -> None:
    long = []
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    where = f"{folder}/{path.name}:{node.name}"
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES and where not in EXEMPT:
                        long.append(f"{where} ({lines} lines)")
    assert not long, f"functions over {MAX_LINES} lines (split them): {long}"
