"""The benchmarks share benchmarks/common.py and never import one another: a ``bench_*`` driver is a program,
not a library (its helpers live in common, or in a module of its own that it alone drives)."""
from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(BENCHMARKS.glob("*.py")):
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("benchmarks."):
                    targets.add(node.module.split(".")[1])
                elif node.module == "benchmarks":
                    targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name.split(".")[1] for a in node.names if a.name.startswith("benchmarks."))
        graph[path.stem] = targets
    return graph


def drivers_imported(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if target.startswith("bench_"))


def test_no_benchmark_driver_is_imported_by_another():
    graph = benchmark_imports()
    assert "common" in graph and graph["common"] == set()
    assert drivers_imported(graph) == []


def test_an_imported_driver_is_found():
    assert drivers_imported({"embed_backends": {"bench_embed", "common"}, "bench_embed": {"common"}}) == [
        "embed_backends imports bench_embed"]
