"""List import cycles and backward imports between the project's packages; exit 1 if any.

The intended flow is one way: ``data_pipeline`` -> ``pretrain`` -> ``slurm``. A module may import
modules of its own layer or an earlier one, never a later one, and no chain of imports may come
back to where it started (a cycle). ``perceiver_cli`` (the console script's root module) sits above
all three and may import anything. Imports inside functions count too: a lazy import hides a
dependency from the reader, not from the design.

    python tools/check_imports.py            # prints nothing else and exits 0 when clean
    python tools/check_imports.py --graph    # also prints every module's project imports
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"data_pipeline": 0, "pretrain": 1, "slurm": 2, "perceiver_cli": 3}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for top in LAYERS:
        if (REPO / f"{top}.py").is_file():
            modules[top] = REPO / f"{top}.py"
        for path in sorted((REPO / top).rglob("*.py")) if (REPO / top).is_dir() else []:
            modules[module_name(path)] = path
    return modules


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` (``a.b.c`` possibly naming an attribute) is in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Project modules imported by ``module``, each with the first line importing it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` may name a submodule or an attribute of pkg.
            names = [f"{prefix}.{alias.name}" for alias in node.names] or [prefix]
        for name in names:
            target = resolve(name, modules)
            if target and target != module:
                found.setdefault(target, node.lineno)
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def problems() -> list[str]:
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages re-export; the edge from
    # a submodule back to its package's __init__ is then not a real cycle unless the submodule
    # uses something the __init__ defines itself. Keep it simple and strict: count them all.
    lines = []
    for component in cycles(graph):
        members = set(component)
        edges = [
            f"{a}:{graph[a][b]} -> {b}" for a in component for b in sorted(graph[a]) if b in members
        ]
        lines.append("cycle: " + " | ".join(edges))
    for name in sorted(graph):
        for target, lineno in sorted(graph[name].items()):
            if layer(target) > layer(name):
                lines.append(
                    f"backward import: {modules[name].relative_to(REPO)}:{lineno} "
                    f"({name} -> {target})"
                )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print every module's imports")
    args = parser.parse_args(argv)
    if args.graph:
        modules = project_modules()
        for name, path in modules.items():
            print(name, "->", ", ".join(sorted(imports_of(name, path, modules))) or "-")
    found = problems()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
