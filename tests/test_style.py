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


def test_ci_runs_the_readmes_test_and_lint_commands_as_written() -> None:
    """.ci/run is the README's "Install and run the tests" command, then its "Lint and
    type-check" one, each as written there: a README edit that CI does not follow fails here."""
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith("#")]
    for heading in ("**Install and run the tests**", "**Lint and type-check**"):
        block = readme.split(heading, 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
        assert block in ci, f"README's {heading} command is not a line of .ci/run: {block!r}"
    tests = readme.split("**Install and run the tests**", 1)[1].split("```bash\n", 1)[1]
    assert ci.index(tests.split("\n", 1)[0]) < ci.index("ruff check && mypy")
