"""The imports run down the layers that docs/ARCHITECTURE.md draws, with no cycles: read from
the source files themselves (every `import aqa...` and `from aqa... import`, lazy ones in
functions included)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "aqa"

#: Layer of each top-level part of the package: a module may import only from its own layer
#: or below. Keep in step with docs/ARCHITECTURE.md.
LAYERS = {
    "aqa.io": 0, "aqa.config": 0, "aqa.prompts": 0, "aqa.textnorm": 0,
    "aqa.data": 1,
    "aqa.models": 2,
    "aqa.train": 3, "aqa.eval": 3,
    "aqa.ensemble": 4, "aqa.export": 4,
    "aqa.demo": 5,
    "aqa.cli": 6, "aqa.__main__": 6, "aqa": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    """The top-level part a module belongs to (aqa.data.records -> aqa.data)."""
    return ".".join(module.split(".")[:2])


def imports(path: Path) -> set[str]:
    """The aqa modules a file imports (`from aqa.x import y` counts y when y is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("aqa")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aqa") and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").is_file()
                        or (ROOT.parent / sub.replace(".", "/")).is_dir() else node.module)
    return out


GRAPH = {module_name(p): imports(p) - {module_name(p)} for p in sorted(ROOT.rglob("*.py"))}


def test_every_part_has_a_layer():
    assert {part(m) for m in GRAPH} <= LAYERS.keys()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_down_the_layers(module):
    up = sorted(i for i in GRAPH[module] if LAYERS[part(i)] > LAYERS[part(module)])
    assert not up, f"{module} (layer {LAYERS[part(module)]}) imports from a higher layer: {up}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        path.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_cycle_between_files():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_no_cycle_between_parts():
    parts: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        if part(m) != "aqa":  # the package's own __init__ stands apart
            parts.setdefault(part(m), set()).update(part(d) for d in deps if part(d) != part(m))
    assert find_cycle(parts) is None, " -> ".join(find_cycle(parts))


def test_the_checker_sees_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "aqa.models.base" in GRAPH["aqa.models.qwen2_audio"]
    assert "aqa.data.records" in GRAPH["aqa.train.recipe"]  # a lazy import inside a function counts
