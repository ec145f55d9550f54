"""The package's shape: imports go one way down the data flow, with no cycle, at module or function level."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "chestxray"
# lowest first; a module may import its own layer and those below it. Training and evaluation are siblings (one
# rank): neither imports the other, a job combines them. The package's __init__ is the top (the public API, lazily).
LAYERS = [["errors", "logs"], ["files"], ["notices"], ["config"], ["rundir"], ["data"], ["models"], ["training", "evaluation"],
          ["jobs"], ["apps"], ["cli", "api"], ["__init__"]]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    return RANK[top(module)]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """chestxray modules imported anywhere in the file (functions included), relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("chestxray"):
                for alias in node.names:  # `from . import plots` names a module
                    sub = f"{target}.{alias.name}"
                    out.add(sub if (SRC.parent / (sub.replace(".", "/") + ".py")).exists() else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("chestxray")}
    out.discard(name)
    return out


GRAPH = {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in GRAPH.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path + [nxt]))
            if nxt in GRAPH and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in GRAPH:
        if not state.get(node):
            visit(node, [node])


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_data_flow(module):
    upward = sorted(m for m in GRAPH[module] if m in GRAPH and layer(m) > layer(module))
    assert not upward, f"{module} reaches up to {upward}"
    sideways = sorted(m for m in GRAPH[module] if m in GRAPH and layer(m) == layer(module) and top(m) != top(module))
    assert not sideways, f"{module} imports its sibling layer's {sideways}"


def test_every_module_has_a_layer():
    assert not [m for m in GRAPH if top(m) not in RANK], "a module outside every layer: add it to LAYERS"


def test_benchmarks_share_common_and_import_no_other_benchmark():
    bench = SRC.parents[1] / "benchmarks"
    names = {p.stem for p in bench.glob("*.py")} - {"_common"}
    for path in bench.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) else []
            assert not [m for m in mods if m and m.split(".")[0] in names], f"{path.name} imports another benchmark"
    assert (bench / "README.md").exists() and all(f"`{n}.py`" in (bench / "README.md").read_text() for n in names)
