"""Imports flow one way: doors -> runtime -> engine -> model, tools and storage beside the core.

The test reads every module of the package (imports anywhere in a module count, those inside
functions too: an import moved into a function to dodge a cycle is still a cycle) and checks that
no module imports a higher layer, and that the module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sleepagent

ROOT = Path(sleepagent.__file__).resolve().parent
REPO = ROOT.parent
# where each part of the package sits; a module may import its own layer and the ones below
LAYERS = {
    "errors": 0, "tokenizer": 0, "policy": 0, "tracing": 0,
    "model": 1,
    "tools": 2, "storage": 2, "messages": 2, "engine": 2,
    "runtime": 3,
    "agent": 4, "langchain": 4, "serve": 4, "testing": 4,
    "train": 5, "demo": 5,
    "bench": 6, "cli": 6, "__init__": 6, "__main__": 6, "snapshot_view": 6,
}


def modules() -> dict[str, Path]:
    """Module name -> file, for the package and the folders it ships (tools/, storage/)."""
    out = {}
    for base, package in ((ROOT, "sleepagent"), (REPO / "tools", "sleepagent.tools"),
                          (REPO / "storage", "sleepagent.storage")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "sleepagent" and parts[:1] in (["tools"], ["storage"]):
                continue
            out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def layer(name: str) -> int:
    part = name.split(".")[1] if name.count(".") else "__init__"
    return LAYERS[part]


def test_no_module_imports_a_higher_layer():
    mods = modules()
    known = set(mods)
    wrong = []
    for name, path in mods.items():
        if name.split(".")[1:2] and name.split(".")[1] not in LAYERS:
            wrong.append(f"{name}: not placed in a layer (add it to LAYERS)")
            continue
        for dep in imports(name, path, known):
            if layer(dep) > layer(name):
                wrong.append(f"{name} (layer {layer(name)}) imports {dep} (layer {layer(dep)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_module_graph_has_no_cycle():
    mods = modules()
    known = set(mods)
    graph = {name: {d for d in imports(name, path, known) if not name.startswith(d + ".")}
             for name, path in mods.items()}
    # a package's __init__ re-exports its submodules: that edge is the package, not a cycle
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)
