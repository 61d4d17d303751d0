"""The layers of docs/architecture.md, enforced: a module imports only its own layer and the layers below it
(every import, function-level ones included, as ``tests/test_import_graph.py`` parses them)."""
from __future__ import annotations

from test_import_graph import import_graph

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("utilities", ("fba", "fba.errors", "fba.utils", "fba._C")),
    ("config", ("fba.config",)),
    ("distributed", ("fba.distributed",)),
    ("parts", ("fba.data", "fba.model", "fba.kernels", "fba.losses")),
    ("retrieval", ("fba.retrieval",)),
    ("deployment", ("fba.deploy",)),
    ("embedding", ("fba.embed", "fba.retrieval.eval_set", "fba.retrieval.command")),
    ("serving", ("fba.serve",)),
    ("training", ("fba.train",)),
    ("apps", ("fba.apps",)),
    ("commands", ("fba.commands", "fba.cli")),
]


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return level


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                  for module, targets in graph.items() for target in targets if layer_of(target) > layer_of(module))


def test_every_import_goes_down_the_layers():
    found = upward_imports(import_graph())
    assert not found, "imports against the layers of docs/architecture.md:\n" + "\n".join(found)


def test_an_upward_import_is_found():
    graph = {"fba.data.sampler": {"fba.train.trainer"}, "fba.train.trainer": {"fba.data.sampler"},
             "fba.retrieval.eval_set": {"fba.embed.embedder"}, "fba.retrieval.metrics": {"fba.retrieval.eval_set"}}
    assert upward_imports(graph) == [
        "fba.data.sampler (parts) imports fba.train.trainer (training)",
        "fba.retrieval.metrics (retrieval) imports fba.retrieval.eval_set (embedding)",
    ]
