"""The import graph of a package, read from the source with `ast` (nothing is imported): every
`import` / `from ... import` of the package's own modules, at module level and inside
functions, with the file and line it is written on. Used by tests/test_architecture.py.

Module names are dotted (`sketch_tf.train.loop`; a package is its `__init__.py`); scripts
beside the package (`train.py`) are named by their stem. `from a.b import c` is an edge to
`a.b.c` when that is a module, else to `a.b`. The implicit import of parent packages
(`import a.b.c` runs `a/__init__.py`) is not an edge: the package `__init__` files hold no
logic that could close a cycle through them.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """One import statement of one module of the package."""

    importer: str  # dotted name of the importing module
    imported: str  # dotted name of the imported module of the package
    path: str  # file of the importer, relative to the root
    line: int
    function: str | None  # enclosing function (dotted for methods), None at module level

    def where(self) -> str:
        inside = f" (in {self.function})" if self.function else ""
        return f"{self.path}:{self.line}{inside}: {self.importer} -> {self.imported}"


def module_files(root: Path, package: str, scripts: Iterable[str] = ()) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` file under `root/package` and each script
    file name in `scripts` (files directly in `root`)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    for script in scripts:
        out[Path(script).stem] = root / script
    return out


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module named by a (possibly relative) `from ... import`."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, path: str, is_package: bool, modules: dict[str, Path]):
        self.importer, self.path, self.is_package = importer, path, is_package
        self.modules = modules
        self.functions: list[str] = []
        self.imports: list[Import] = []

    def _add(self, imported: str, node: ast.AST) -> None:
        function = ".".join(self.functions) or None
        self.imports.append(Import(self.importer, imported, self.path, node.lineno, function))

    def _scoped(self, node) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in self.modules:
                self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = _resolve(node, self.importer, self.is_package)
        for alias in node.names:
            child = f"{module}.{alias.name}"
            if child in self.modules:
                self._add(child, node)
            elif module in self.modules:
                self._add(module, node)


def collect_imports(root: Path, package: str, scripts: Iterable[str] = ()) -> list[Import]:
    """Every import of a module of `package` written in `package` or in `scripts`."""
    modules = module_files(root, package, scripts)
    out = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = _Collector(
            name, os.path.relpath(path, root), path.name == "__init__.py", modules
        )
        collector.visit(tree)
        out.extend(i for i in collector.imports if i.imported != name)
    return out


def import_graph(imports: Iterable[Import]) -> dict[str, set[str]]:
    """importer -> the modules it imports."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.importer, set()).add(i.imported)
        graph.setdefault(i.imported, set())
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other (a strongly connected component
    of more than one module), as `[a, b, ..., a]`, sorted; empty when the imports run one
    way."""
    # Tarjan's algorithm, iterative (the graph has a few hundred modules).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
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
    return sorted(_cycle_in(graph, set(c)) for c in components)


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first (sorted) module of a strongly connected component."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe_cycle(cycle: list[str], imports: Iterable[Import]) -> str:
    """`a -> b -> a` with the file:line of each import of the cycle."""
    where = {}
    for i in imports:
        where.setdefault((i.importer, i.imported), i)
    lines = [" -> ".join(cycle)]
    lines += [f"    {where[(a, b)].where()}" for a, b in zip(cycle, cycle[1:], strict=False)]
    return "\n".join(lines)
