"""The package's layering (docs/ARCHITECTURE.md): import-linter contracts and no import cycles."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

grimp = pytest.importorskip("grimp", reason="import-linter (a test dependency) brings grimp")


def test_import_linter_contracts_hold():
    # in a subprocess: import-linter configures logging, which would silence magnn's loggers here
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycles_counting_function_level_imports():
    # grimp records every import statement, inside functions too
    graph = grimp.build_graph("magnn", "magnn_kernels", cache_dir=None)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.y", imported="a.z")
    assert _cycles(graph) == [["a.x", "a.y"]]


# -- sizes above magnn.models: each function readable in one screen, each module in one sitting --------

UPPER_FLOORS = ("train", "study", "cli", "analysis", "detect.py", "telemetry.py", "distributed.py", "integrations")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def _sizes(source: str) -> tuple[int, list[tuple[str, int]]]:
    """(lines of the module, [(function name, lines)] for every function and method in it)."""
    import ast

    tree = ast.parse(source)
    functions = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return len(source.splitlines()), functions


def _upper_floor_files() -> list[Path]:
    files = []
    for name in UPPER_FLOORS:
        path = ROOT / "magnn" / name
        assert path.exists(), f"{path}: a floor of UPPER_FLOORS that is gone; update the list"
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def test_upper_floor_functions_and_modules_are_short():
    too_long = []
    for path in _upper_floor_files():
        lines, functions = _sizes(path.read_text())
        where = path.relative_to(ROOT)
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES})")
        too_long += [f"{where}: {name}() {length} lines (at most {MAX_FUNCTION_LINES})"
                     for name, length in functions if length > MAX_FUNCTION_LINES]
    assert not too_long, "\n".join(too_long)


def test_size_check_sees_a_long_function_and_a_long_module():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    lines, functions = _sizes(f"def long():\n{body}\n\ndef short():\n    return 1\n")
    assert functions == [("long", MAX_FUNCTION_LINES + 1), ("short", 2)]
    assert lines == MAX_FUNCTION_LINES + 4
    assert len(_upper_floor_files()) > 10 and all(path.suffix == ".py" for path in _upper_floor_files())
