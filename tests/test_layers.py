"""The layer contract (ARCHITECTURE.md "Layers", .importlinter) holds, and no import of the
project's own modules hides inside a function body, where it could dodge a layer or a cycle.

Exceptions, each with its reason: an app's `ready()` (apps.py) imports what needs the app
registry; config/ is imported by the settings, before the app registry exists, so its Celery
signal handlers (worker heartbeat, beat tick) import models when they run; migrations are
generated code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "integrations", "exceptions", "dashboards", "sandbox")


def _project_module(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _function_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(_project_module(n) for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} in {func.name}()")
    return found


def test_no_project_import_inside_a_function() -> None:
    offenders = []
    for package in PACKAGES:
        if package == "config":
            continue
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or path.name == "apps.py":
                continue
            offenders += _function_level_imports(path)
    assert offenders == []


def test_the_layer_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 broken." in result.stdout
