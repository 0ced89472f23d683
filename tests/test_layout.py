"""The shape of the test suite: fixtures in conftest.py, helpers in tests/helpers/, no test
module importing another, benchmarks that stand alone."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers.club import REPO

TESTS = REPO / "tests"


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, relative ones spelled with their leading dots."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append(base)
            if not node.module:  # from . import x: x may be a module
                found += [base + alias.name for alias in node.names]
    return found


def imports_a_test_module(module: str, inside_helpers: bool) -> bool:
    name = module.lstrip(".")
    last = name.rpartition(".")[2]
    if module.startswith(".."):
        return not inside_helpers or last.startswith("test_") or last == "conftest"
    return last.startswith("test_") or last == "conftest"


def test_no_test_module_imports_another():
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for module in imported_modules(path)
        if imports_a_test_module(module, inside_helpers=path.parent.name == "helpers")
    ]
    assert offenders == []


def test_benchmarks_import_nothing_from_the_tests():
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted((REPO / "benchmarks").glob("*.py"))
        for module in imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    ]
    assert offenders == []


def test_conftest_holds_fixtures_and_hooks_only():
    tree = ast.parse((TESTS / "conftest.py").read_text())
    others = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if not node.name.startswith("pytest_") and not any(d.startswith("pytest.fixture") for d in decorators):
                others.append(node.name)
        elif isinstance(node, ast.ClassDef):
            others.append(node.name)
    assert others == [], "helpers belong in tests/helpers/"
