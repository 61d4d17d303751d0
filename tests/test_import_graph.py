"""No import circle anywhere in ``fba`` and ``kernels``: every module's imports, function-level ones included,
parsed with ``ast`` (relative imports resolved), and the graph searched for cycles.

``kernels/`` is installed as ``fba.kernels``, so its modules are named that way here (``fba/kernels`` is a link
to it in a source checkout and is not walked twice).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"fba": ROOT / "fba", "fba.kernels": ROOT / "kernels"}


def module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder)
            if relative.parts[0] == "kernels" and package == "fba":
                continue  # the link to kernels/, walked as fba.kernels
            parts = [package, *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules ``name`` imports, anywhere in the file: ``from a import b`` imports ``a.b`` when that is a module,
    else ``a`` itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Edges between our own modules. Importing ``a.b.c`` runs ``a`` and ``a.b`` (their ``__init__``) too, except
    the packages the importing module sits in, which are running already; the module an import names is always an
    edge (``from fba import _C`` in ``fba.retrieval.metrics`` names ``fba``)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in imported_names(name, path, set(modules)):
            prefixes = [p for p in (".".join(target.split(".")[:end]) for end in range(1, target.count(".") + 2))
                        if p in modules]
            for prefix in prefixes:
                explicit = prefix == prefixes[-1]
                if prefix != name and (explicit or not name.startswith(prefix + ".")):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_graph_sees_every_module_and_function_level_imports():
    graph = import_graph()
    assert {"fba.cli", "fba.train.trainer", "fba.kernels.cross_attention", "fba.data.loaders"} <= set(graph)
    assert "fba.kernels.kernels" not in graph


def test_cycle_finder_finds_a_function_level_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    names = {"pkg", "pkg.a", "pkg.b"}
    graph = {name: imported_names(name, package / f"{name.split('.')[-1]}.py", names) - {"pkg"}
             for name in ("pkg.a", "pkg.b")}
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in cycles)
