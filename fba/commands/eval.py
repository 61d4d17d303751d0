"""``fba eval``: evaluate a checkpoint on a data set, or a saved features file."""
from __future__ import annotations

import argparse
from pathlib import Path

from fba.commands.arguments import at_least

HELP = "evaluate a checkpoint on a data set, or a saved features file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("source of the features (one)").add_mutually_exclusive_group()
    source.add_argument("--features", type=Path, metavar="FILE",
                        help="a features file (.safetensors or .npz) with query and gallery rows, e.g. from `fba embed`")
    source.add_argument("--checkpoint", type=Path, metavar="MODEL",
                        help="a model.pt from `fba train`, evaluated on the query/gallery of -c CONFIG")
    data = parser.add_argument_group("with --checkpoint")
    data.add_argument("-c", "--config", type=Path, help="config naming the data set, e.g. configs/occluded_reid.yaml")
    data.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    data.add_argument("--save-features", type=Path, metavar="FILE",
                      help="also write the query and gallery features (.safetensors or .npz) for --features")
    data.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.feature=image")
    options = parser.add_argument_group("evaluation")
    options.add_argument("--metric", choices=("cosine", "euclidean"), default="cosine", help="distance between features")
    options.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    options.add_argument("--aqe", type=at_least(0), default=0, metavar="K",
                         help="average query expansion over the K most similar features (fast-reid's aqe; 0: off)")
    options.add_argument("--aqe-alpha", type=float, default=3.0, help="weight exponent of query expansion")
    options.add_argument("--block", type=at_least(1), default=4096, help="gallery rows per block on the streaming path")
    options.add_argument("--streaming", choices=("auto", "on", "off"), default="auto",
                         help="evaluate in gallery blocks (auto: above 1e8 distances, docs/retrieval.md)")
    options.add_argument("--max-rank", type=int, default=50, help="length of the CMC curve")
    options.add_argument("--json", type=Path, metavar="OUT", help="also write the metrics as JSON to OUT")


def run(args: argparse.Namespace) -> int | None:
    from fba.retrieval.command import run as run_eval

    return run_eval(args)
