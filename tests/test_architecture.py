"""The imports of sketch_tf run one way (issue 25): no import cycle; export/ and models/ never
import train/; the training loop imports nothing above it (run folders, export, families); no
module is loaded by name. Read from the source with `ast` (tests/import_graph.py), imports
inside functions included: an import moved into a function still closes a circle."""

import ast
import os

import pytest

from sketch_tf.paths import PROJECT_ROOT
from tests import import_graph

PACKAGE = "sketch_tf"
SCRIPTS = sorted(p.name for p in PROJECT_ROOT.glob("*.py"))

#: Layers below train/: they may be used by train/ and by export/, so they import neither.
BELOW_TRAIN = ("sketch_tf.export", "sketch_tf.models")
#: What the training loop must not import: it is called by run.py and knows no family and no
#: export (the warm start comes in as `init_fn`, the evaluation through the Task).
ABOVE_LOOP = ("sketch_tf.train.run", "sketch_tf.export", "sketch_tf.families")

#: Functions that load a module by name or path (their calls are reported with their line).
BY_NAME_CALLS = ("import_module", "iter_modules", "spec_from_file_location", "exec_module")
#: (file, function) allowed to load a module by path: `project_config_module` executes a config
#: *file* (`configs/<family>.py`) as absl's `config_flags` does; no module of the package.
LOADS_BY_NAME_ALLOWED = {("sketch_tf/train/config.py", "project_config_module")}


@pytest.fixture(scope="module")
def imports():
    return import_graph.collect_imports(PROJECT_ROOT, PACKAGE, SCRIPTS)


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    # A tiny package with a cycle closed by a relative import inside a method, and a
    # `from package import module` edge: the helper finds it and names files and lines.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\nimport os\n")
    (pkg / "sub" / "b.py").write_text(
        "class K:\n    def f(self):\n        from .. import c\n        return c\n"
    )
    (pkg / "c.py").write_text("import pkg.a as a\n")
    (tmp_path / "script.py").write_text("from pkg import c\n")
    found = import_graph.collect_imports(tmp_path, "pkg", ["script.py"])
    graph = import_graph.import_graph(found)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["script"] == {"pkg.c"}
    cycles = import_graph.import_cycles(graph)
    assert cycles == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    text = import_graph.describe_cycle(cycles[0], found)
    assert f"{os.path.join('pkg', 'sub', 'b.py')}:3 (in K.f): pkg.sub.b -> pkg.c" in text
    (pkg / "c.py").write_text("")
    assert import_graph.import_cycles(import_graph.import_graph(
        import_graph.collect_imports(tmp_path, "pkg", ["script.py"]))) == []  # fmt: skip


def test_no_import_cycle(imports):
    cycles = import_graph.import_cycles(import_graph.import_graph(imports))
    assert not cycles, "modules that import each other (break the cycle):\n" + "\n".join(
        import_graph.describe_cycle(c, imports) for c in cycles
    )


def test_export_and_models_do_not_import_train(imports):
    bad = [
        i.where()
        for i in imports
        if _in(i.importer, BELOW_TRAIN) and _in(i.imported, ("sketch_tf.train",))
    ]
    assert not bad, (
        "export/ and models/ sit below train/ (they may use models/, data/, index, core): "
        + "\n".join(bad)
    )


def test_the_loop_imports_nothing_above_it(imports):
    loop = [i for i in imports if i.importer == "sketch_tf.train.loop"]
    assert loop, "no import of sketch_tf.train.loop was read: is the graph built?"
    bad = [i.where() for i in loop if _in(i.imported, ABOVE_LOOP)]
    assert not bad, (
        "train/loop.py is called by train/run.py and knows no family or export; pass what it "
        "needs in (init_fn, the Task): " + "\n".join(bad)
    )


def _loads_by_name(tree: ast.AST) -> list[tuple[int, str | None, str]]:
    """(line, enclosing function, what) for every use of importlib / pkgutil / __import__."""
    found = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("importlib", "pkgutil"):
                    found.append((node.lineno, function, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in ("importlib", "pkgutil"):
                found.append((node.lineno, function, f"from {node.module} import ..."))
        elif isinstance(node, ast.Name) and node.id == "__import__":
            found.append((node.lineno, function, "__import__"))
        elif isinstance(node, ast.Attribute) and node.attr in BY_NAME_CALLS:
            found.append((node.lineno, function, f"{ast.unparse(node)}"))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def test_no_module_is_loaded_by_name():
    bad = []
    for path in sorted((PROJECT_ROOT / PACKAGE).rglob("*.py")):
        rel = str(path.relative_to(PROJECT_ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for line, function, what in _loads_by_name(tree):
            if (rel, function) not in LOADS_BY_NAME_ALLOWED:
                inside = f" (in {function})" if function else ""
                bad.append(f"{rel}:{line}{inside}: {what}")
    assert not bad, (
        "modules loaded by name (import them, or register them in a plain dict):\n" + "\n".join(bad)
    )
