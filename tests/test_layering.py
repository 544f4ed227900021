"""The dependency direction of STYLE.md, machine-checked: cli → (io, linalg, report) → (errors, tolerances)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "svdguard"
UI_LIBRARIES = {"typer", "rich", "click"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def library_modules() -> list[Path]:
    """Every module but the CLI and ``__main__`` (the launcher of the CLI)."""
    return [
        p
        for p in PACKAGE.rglob("*.py")
        if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"
    ]


def test_no_module_outside_cli_imports_ui_libraries():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(imported_roots(p) & UI_LIBRARIES)
        for p in library_modules()
        if imported_roots(p) & UI_LIBRARIES
    }
    assert offenders == {}


def test_nothing_outside_cli_imports_cli():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in library_modules()
        if any(m.startswith("svdguard.cli") for m in imported_modules(p))
    ]
    assert offenders == []


def test_math_core_does_no_io():
    for path in (PACKAGE / "linalg").rglob("*.py"):
        modules = imported_modules(path)
        assert not any(m.startswith("svdguard.io") for m in modules), path
        assert not imported_roots(path) & {"safetensors", "numpy"}, path


def test_importing_svdguard_does_not_load_ui_libraries():
    code = "import sys, svdguard; print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
