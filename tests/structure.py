"""The structure of the tree: which of dali's modules imports which, drawn in layers.

A module's layer is one above the highest layer of the modules it imports (every import counts,
also one inside a function: it is a dependency all the same), so a module only ever imports
from the layers below its own. That drawing exists only if there is no import circle: a circle
is reported instead. docs/design.md shows the drawing; tests/test_structure.py checks that it
is the tree's and that the rules below hold.

    .venv/bin/python tests/structure.py      # print the drawing
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOP = ("dali", "tasks")  # the library and the stages; dodo.py sits above them all


def modules(repo: Path = REPO) -> dict[str, Path]:
    """Every module of dali/ and tasks/, by dotted name (a package by its own name)."""
    found = {}
    for top in TOP:
        for path in sorted((repo / top).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(repo: Path = REPO) -> dict[str, set[str]]:
    """{module: the modules of ours it imports}, from the source, wherever the import stands."""
    mods = modules(repo)
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        wanted = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x, from .common import y
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                wanted.add(base)
                wanted |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {w for w in wanted if w in mods and w != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (strongly connected components of more than one module)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer: 0 for one that imports none of ours, else one above its highest import."""
    layer: dict[str, int] = {}

    def of(v: str) -> int:
        if v not in layer:
            layer[v] = 1 + max((of(w) for w in graph[v]), default=-1)
        return layer[v]

    for v in graph:
        of(v)
    return layer


def drawing(graph: dict[str, set[str]] | None = None) -> str:
    """The tree in layers, the lowest first: each line a layer's modules. Stage modules
    (tasks/) and dodo.py sit on top of the library (dali/)."""
    graph = imports() if graph is None else graph
    found = circles(graph)
    if found:
        raise SystemExit("import circles: " + "; ".join(" <-> ".join(c) for c in found))
    layer = layers(graph)
    library = {m: n for m, n in layer.items() if m.startswith("dali.")}
    lines = []
    for n in range(max(library.values()) + 1):
        names = sorted(m.removeprefix("dali.") for m, k in library.items() if k == n)
        lines.append(f"{n:2}  {' '.join(names)}")
    stages = sorted(m.removeprefix("tasks.") for m in layer if m.startswith("tasks.") and m != "tasks")
    lines.append(f"    tasks/: {' '.join(stages)}")
    lines.append("    dodo.py")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(drawing())
