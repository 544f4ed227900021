"""The dependency direction of STYLE.md, machine-checked: cli → (io, linalg, report) → (errors, tolerances)."""

from __future__ import annotations

import ast
import re
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


#: The one math module that computes with numpy: its BLAS syrk + LAPACK syevd are the fastest
#: route to certified spectra measured (docs/benchmarks.md); it reads no file either.
NUMPY_MATH = {"gram_spectrum.py"}


def test_math_core_does_no_io():
    for path in (PACKAGE / "linalg").rglob("*.py"):
        modules = imported_modules(path)
        assert not any(m.startswith("svdguard.io") for m in modules), path
        assert "safetensors" not in imported_roots(path), path
        if path.name not in NUMPY_MATH:
            assert "numpy" not in imported_roots(path), path


def test_importing_svdguard_does_not_load_ui_libraries():
    code = "import sys, svdguard; print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the application layer ------------------------------------------------------------

LAYERS = {"linalg": 0, "io": 0, "app": 1, "cli": 2}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 and parts[0] == "svdguard" else None


def test_nothing_imports_upward():
    """linalg and io never import app or cli; app never imports cli; linalg never imports io."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        own = _layer(module_name(path))
        if own is None:
            continue
        for imported in imported_modules(path):
            target = _layer(imported)
            if target is not None and target > own:
                offenders.append(f"{module_name(path)} imports {imported}")
    assert offenders == []


def test_findings_and_library_messages_name_no_command_line_flag():
    """Only svdguard/cli speaks of `--flags` and of `svdguard <command>` invocations."""
    pattern = re.compile(r"""["'][^"'\n]*(?:\s|\()--[a-z][a-z-]+""")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in library_modules()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


# --- import cycles ---------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_level_imports(path: Path, known: set[str]) -> set[str]:
    """svdguard modules imported when ``path`` is imported (not inside functions or TYPE_CHECKING).

    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``;
    importing ``a.b`` also imports the package ``a``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in known else node.module)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    closed: set[str] = set()
    for name in found:
        parts = name.split(".")
        closed.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    own = module_name(path)
    return {m for m in closed if m in known and m != own and not own.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: module_level_imports(path, known) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_among_svdguard_modules():
    graph = import_graph()
    assert "svdguard.cli.grad_cmd" in graph["svdguard.cli.app"]  # the graph sees the imports
    assert find_cycle(graph) is None


# --- light imports ---------------------------------------------------------------------

HEAVY = ("torch", "numpy", "safetensors", "zipfile", "svdguard.io", "svdguard.app")


def loaded_after(code: str) -> list[str]:
    """Which of HEAVY are in sys.modules after running ``code`` in a fresh interpreter."""
    script = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return [m for m in out.strip().split(",") if m]


def test_import_svdguard_loads_neither_torch_nor_the_readers():
    assert loaded_after("import svdguard") == []


def test_public_names_load_on_first_use():
    assert "torch" in loaded_after("import svdguard; svdguard.svd")
    assert "svdguard.io" not in loaded_after("import svdguard; svdguard.svd")
    assert "svdguard.app" in loaded_after("import svdguard; svdguard.inspect")


def test_help_and_version_do_not_import_torch():
    for argv in (["--help"], ["--version"], ["inspect", "--help"], ["grad", "--help"]):
        code = (
            "import contextlib, io\nfrom svdguard.cli.app import app\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        app({argv!r})\n"
            "    except SystemExit as exit:\n        assert exit.code == 0"
        )
        # (zipfile itself may come with importlib.metadata, which Typer's help uses.)
        assert [m for m in loaded_after(code) if m != "zipfile"] == [], argv


def test_python_m_svdguard_help_runs_without_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "svdguard", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "inspect" in result.stdout and "grad" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "svdguard.cli.app" in imported


def test_public_api():
    import svdguard

    for name in svdguard.__all__:
        assert getattr(svdguard, name) is not None, name
    # Every exception a user can see is exported.
    from svdguard import errors

    raised = {
        name
        for name in dir(errors)
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), (errors.SvdguardError, Warning))
    }
    assert raised <= set(svdguard.__all__)


def test_the_package_and_its_metadata_state_one_version():
    import pytest

    import svdguard

    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    assert svdguard.__version__ == declared
