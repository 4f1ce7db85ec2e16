"""The package's layers import only downward, with no cycle, counting imports inside functions
(docs/architecture.md): errors → engine → inputs → store → analysis → runs, demo, integrations → cli."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slt_probe"
LAYERS = ["errors", "engine", "inputs", "store", "analysis", "runs|demo|integrations", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of a module of the package; the package itself (slt_probe/__init__.py) and `python -m slt_probe`
    (__main__.py, which runs the CLI) sit above them all."""
    if module in ("slt_probe", "slt_probe.__main__"):
        return len(LAYERS)
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names.split("|"))


def package_imports(path: Path) -> set[str]:
    """Every module of the package that `path` imports, anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "slt_probe"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slt_probe":
            for a in node.names:  # `from slt_probe.x import y` may import the module slt_probe.x.y
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: package_imports(p) - {m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "slt_probe"))
def test_imports_go_downward_only(module):
    upward = sorted(dep for dep in GRAPH[module] if layer(dep) > layer(module))
    assert not upward, f"{module} (layer {LAYERS[layer(module)]}) imports from higher layers: {upward}"


def test_no_import_cycle():
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(GRAPH.get(m, ())):
            # a submodule's import runs its package's __init__ first: follow the module itself, not the package
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " → ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])


def test_the_layer_check_can_fail():
    """The checks above read real imports: a module that imports upward is seen as doing so."""
    assert "slt_probe.cli" not in {d for m, deps in GRAPH.items() if m not in ("slt_probe.cli", "slt_probe.__main__")
                                   for d in deps}
    assert GRAPH["slt_probe.__main__"] == {"slt_probe.cli"}
    assert layer("slt_probe.runs.walker") > layer("slt_probe.store.results") > layer("slt_probe.engine.sampler")
    assert "slt_probe.store.results" in GRAPH["slt_probe.runs.walker"] or "slt_probe.store" in GRAPH["slt_probe.runs.walker"]
