"""Fail when the package's modules import each other in a cycle (``make lint``).

Counts the imports a module runs when it is loaded: its top-level ``import``
and ``from ... import`` statements, except those under ``if TYPE_CHECKING:``
(type names only). Imports inside functions are deliberate deferrals and are
not counted. Usage: ``python tools/import_cycles.py [PACKAGE_DIR]``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def loaded_imports(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Module names imported at load time by a module (relative imports resolved)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names}
            # ``from package import submodule`` loads the submodule (also while the package
            # itself is still loading); any other name needs the package loaded.
            names = subs & modules
            found.update(names if names == subs else names | {base})
    return found


def graph(root: Path) -> dict[str, set[str]]:
    modules = {module_name(root, p): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = loaded_imports(tree, name, path.name == "__init__.py", set(modules))
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "streamapp").resolve()
    edges = graph(root)
    found = cycles(edges)
    for component in found:
        print("import cycle among: " + ", ".join(component), file=sys.stderr)
    if not found:
        print(f"no import cycles in {root.name} ({len(edges)} modules)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
