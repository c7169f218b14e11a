"""The package reads one way: layers import downward, no import cycle (function-level imports
included), lazy imports of madbench modules only in the command lines, no function longer than
a screen. docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "madbench"
#: the layers, bottom up; a module may import its own layer and the ones below
LAYERS = [
    ("core", ["_utils", "settings", "stats"]),
    ("geometry", ["manifolds", "schedules", "data"]),
    ("methods", ["nets", "methods"]),
    ("solvers", ["ode", "likelihood", "sampling", "metrics"]),
    ("run", ["config", "build", "rundir", "training", "stack", "runs"]),
    ("evaluation", ["evaluate"]),
    (
        "reports",
        ["aggregate", "leaderboard", "figures", "dashboard", "findings", "rate_separation"],
    ),
    ("entry", ["pipeline", "cli"]),
]
#: modules allowed to import madbench modules inside functions (start-up time of a CLI)
LAZY_OK = {"madbench.cli"}
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``madbench.x.y`` -> ``madbench.x``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.Module, module: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported madbench module, line, inside a function) for every import of ``module``."""
    out = []
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function |= {id(n) for n in ast.walk(node) if n is not node}
    package = (
        module
        if (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").exists()
        else (module.rpartition(".")[0])
    )
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        targets = {_resolve(n, known) for n in names if n.startswith("madbench")}
        for target in sorted(t for t in targets if t and t != module):
            out.append((target, node.lineno, id(node) in in_function))
    return out


def _layer_of(module: str) -> int:
    if module == "madbench":  # the package's face: __version__ only
        return 0
    top = module.split(".")[1]
    for i, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return i
    raise AssertionError(f"module {module} is in no layer of LAYERS: add it")


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(t, m, known) for m, t in mods.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        _layer_of(module)


def test_imports_go_downward(graph):
    up = [
        f"{m}:{line} imports {t} ({LAYERS[_layer_of(t)][0]} above {LAYERS[_layer_of(m)][0]})"
        for m, edges in graph.items()
        for t, line, _ in edges
        if _layer_of(t) > _layer_of(m)
    ]
    assert not up, "\n".join(up)


def test_no_import_cycle_function_imports_included(graph):
    edges = defaultdict(set)
    for m, imps in graph.items():
        for t, _, _ in imps:
            if not m.startswith(t + "."):  # a submodule importing its own package's face
                edges[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_lazy_imports_only_in_the_command_line(graph):
    lazy = [
        f"{m}:{line} imports {t} inside a function"
        for m, edges in graph.items()
        for t, line, inside in edges
        if inside and m not in LAZY_OK
    ]
    assert not lazy, "\n".join(lazy)


def test_no_function_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_the_checker_sees_a_planted_cycle_and_an_upward_import(tmp_path):
    """The graph code itself: a cycle and an upward import in a toy package are found."""
    a = ast.parse("from madbench.evaluate import x\n")
    b = ast.parse("def f():\n    import madbench.config\n")
    known = {"madbench.config", "madbench.evaluate"}
    assert _imports(a, "madbench.config", known) == [("madbench.evaluate", 1, False)]
    assert _imports(b, "madbench.evaluate", known) == [("madbench.config", 2, True)]
    assert _layer_of("madbench.evaluate") > _layer_of("madbench.config")
