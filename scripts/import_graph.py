"""Print the import graph between the modules of the elbo_kernels package; fail on a cycle or an
import from elbo_kernels/ops/ upward.

Reads the sources with ``ast`` (nothing is imported or run). An edge A -> B is an ``import`` /
``from ... import`` statement in A that names module B of the package (``from . import x`` is an edge
to the module ``x`` when it exists, else to the package). Imports inside a function body are marked
``[in function]``: they run on the first call, not at import, but they are still part of the graph
and count for cycles. Dynamic imports (``importlib.import_module``) are not seen.

Checks (exit status 1 when one fails, 0 otherwise):
  - no cycle among the edges (module-level and in-function alike); with ``--scope PREFIX`` only
    the cycles through a module whose name starts with PREFIX fail (all are still printed);
  - nothing under elbo_kernels/ops/ imports a module of the package outside ops/ (docs/design.md
    section 6: ops/ is the bottom layer).

Usage:
  python scripts/import_graph.py [--root PACKAGE_DIR] [--scope PREFIX]
      PACKAGE_DIR defaults to this checkout's elbo_kernels/; tests/test_import_graph.py runs
      ``--scope elbo_kernels.ops``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

BOTTOM = "ops"

Edge = Tuple[str, str, bool]  # (importer, imported, inside a function)


def module_names(root: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py under the package directory ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _base_package(module: str, path: Path, level: int) -> str:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def _targets(node: ast.AST, module: str, path: Path, modules: Dict[str, Path]) -> List[str]:
    """Modules of the package named by one import statement."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.append(name)
        return found
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = _base_package(module, path, node.level)
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    if source not in modules:
        return found
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        found.append(submodule if submodule in modules else source)
    return found


def edges(root: Path) -> List[Edge]:
    modules = module_names(root)
    result: Set[Edge] = set()
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, path, modules):
                        if target != module:
                            result.add((module, target, in_function))
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, nested)

        visit(tree, False)
    # An edge seen both at module level and in a function is a module-level edge.
    module_level = {(a, b) for a, b, inside in result if not inside}
    return sorted(e for e in result if not (e[2] and (e[0], e[1]) in module_level))


def cycles(graph: List[Edge]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    succ: Dict[str, List[str]] = {}
    for a, b, _ in graph:
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # recursion depth is bounded by the number of modules (~100)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def upward(graph: List[Edge], package: str) -> List[Edge]:
    """Edges from a module under <package>.ops to a module of the package outside it."""
    bottom = f"{package}.{BOTTOM}"

    def inside(m: str) -> bool:
        return m == bottom or m.startswith(bottom + ".")

    return [e for e in graph if inside(e[0]) and not inside(e[1])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / "elbo_kernels",
                        help="the package directory (default: this checkout's elbo_kernels/)")
    parser.add_argument("--scope", default="",
                        help="fail only on cycles through a module whose dotted name starts with this")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "__init__.py").is_file():
        parser.error(f"--root must be a package directory with an __init__.py, got {root}")
    package = root.name
    graph = edges(root)
    print(f"import graph of {package} ({root}); [in function] = imported inside a function body")
    current = None
    for a, b, inside in graph:
        if a != current:
            print(a)
            current = a
        print(f"    -> {b}{'   [in function]' if inside else ''}")
    found_cycles = cycles(graph)
    found_upward = upward(graph, package)
    print(f"\n{len(graph)} edges among {len(module_names(root))} modules")
    failing = [c for c in found_cycles if any(m.startswith(args.scope) for m in c)]
    print(f"cycles: {len(found_cycles)}" + (f" ({len(failing)} through {args.scope})" if args.scope else ""))
    for component in found_cycles:
        print(f"    {len(component)} modules: {', '.join(component)}")
    print(f"imports from {package}/{BOTTOM}/ upward: {len(found_upward)}")
    for a, b, inside in found_upward:
        print(f"    {a} -> {b}{'   [in function]' if inside else ''}")
    return 1 if failing or found_upward else 0


if __name__ == "__main__":
    sys.exit(main())
