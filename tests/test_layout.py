"""Where code sits: dependencies point one way, and the edges stay thin.

Read from the source files themselves (their imports and calls, parsed), so a new arrow the wrong way or
a query written in a route fails here, naming the file and line.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from harness.processes import PROJECT_ROOT

PRODUCT = ("engine", "services", "workers", "migrations", "cli")


def _python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((PROJECT_ROOT / folder).rglob("*.py"))


def _imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in `path`, lazy imports inside functions included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _imports_of(folders: tuple[str, ...], packages: tuple[str, ...]) -> list[str]:
    found = []
    for path in _python_files(*folders):
        for line, module in _imported_modules(path):
            if module.split(".")[0] in packages:
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}")
    return found


def test_nothing_below_the_command_line_imports_it() -> None:
    assert _imports_of(("engine", "services", "workers", "migrations"), ("cli",)) == []


def test_the_engine_imports_nothing_of_ours() -> None:
    assert _imports_of(("engine",), ("services", "workers", "cli", "harness", "tests")) == []


def test_the_product_imports_neither_the_tests_nor_their_harness() -> None:
    assert _imports_of(PRODUCT, ("tests", "harness", "benchmarks")) == []


def test_the_benchmarks_do_not_import_the_tests() -> None:
    found = _imports_of(("benchmarks",), ("tests",))
    scripts = [
        f"{path.relative_to(PROJECT_ROOT)}"
        for path in _python_files("benchmarks")
        if re.search(r"^\s*(from|import) tests\b", path.read_text(encoding="utf-8"), flags=re.M)
    ]
    assert (found, scripts) == ([], [])


def test_route_handlers_hold_no_sql() -> None:
    """Queries live in the domain services; a route maps requests to them and their rows to responses."""
    found = []
    for path in _python_files("services/api/routes"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("select", "execute", "scalar", "scalars", "text"):
                found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} calls {name}()")
    assert found == []


def test_product_comments_name_no_issue_numbers() -> None:
    """A comment says the reason itself; which issue asked for it is in git's history."""
    # `\s*` also catches a number wrapped onto the next line ("(issue\n7)").
    pattern = re.compile(r"\bissue\s*#?[0-9]", flags=re.IGNORECASE)
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{text[: match.start()].count(chr(10)) + 1}"
        for path in _python_files(*PRODUCT)
        for text in [path.read_text(encoding="utf-8")]
        for match in pattern.finditer(text)
    ]
    assert found == []


def test_python_dash_m_cli_is_the_bpbench_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stderr
    commands = ("submit", "jobs", "show", "cancel", "compare", "timeline", "devices", "run", "gradcheck")
    servers = ("worker", "migrate", "reconciler", "api", "up", "token")
    found = [re.search(rf"^\W*{name} ", done.stdout, flags=re.M) for name in (*commands, *servers)]
    assert None not in found, done.stdout
    positions = [match.start() for match in found if match is not None]
    assert positions == sorted(positions)  # the order `bpbench --help` has always listed them in
