"""``fba eval``: retrieval metrics for a saved features file (``--features``) or a trained model
(``-c CONFIG --checkpoint model.pt [overrides]``: the config names the data set, the checkpoint the model).

The command has one mode per source of features; each mode is an option of the ``source`` group and a
``_run_<mode>`` function that returns a :class:`FeatureSet`. Whatever the source, the retrieval layer
(:mod:`fba.engine.retrieval`, in memory or streamed in gallery blocks: docs/retrieval.md) scores it and
:func:`format_metrics` shows the result.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from fba.config import Config, load_config
from fba.data.loaders import load_data
from fba.engine.checkpoint import load_model
from fba.engine.embedder import Embedder, default_device, default_dtype
from fba.engine.features_io import FeatureSet, FeaturesFileError, load_features, save_feature_set
from fba.engine.retrieval import RetrievalEval, score
from fba.errors import UsageError
from fba.metrics import DISTANCES, RetrievalMetrics


def format_metrics(metrics: RetrievalMetrics) -> str:
    """A two-column table: mAP, rank-1/5/10, mINP (percent), valid queries, and how the features were compared."""
    rows = [(name.replace("R", "Rank-"), f"{value:.2f}") for name, value in metrics.percent().items()]
    rows.append(("valid queries", f"{metrics.num_valid_queries} / {metrics.num_query}"))
    rows.append(("gallery", str(metrics.num_gallery)))
    for label, value in (("feature", metrics.feature), ("distance", metrics.metric)):
        if value is not None:
            rows.append((label, value))
    rows.append(("re-ranking", "on" if metrics.rerank else "off"))
    rows.append(("query expansion", f"k={metrics.aqe}" if metrics.aqe else "off"))
    rows.append(("streamed", "on" if metrics.streaming else "off"))
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = "-" * (width + value_width + 3)
    return "\n".join([rule, *(f"{name:<{width}} | {value:>{value_width}}" for name, value in rows), rule])


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
    options.add_argument("--metric", choices=DISTANCES, default="cosine", help="distance between features")
    options.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    options.add_argument("--aqe", type=_count(0), default=0, metavar="K",
                         help="average query expansion over the K most similar features (fast-reid's aqe; 0: off)")
    options.add_argument("--aqe-alpha", type=float, default=3.0, help="weight exponent of query expansion")
    options.add_argument("--block", type=_count(1), default=4096, help="gallery rows per block on the streaming path")
    options.add_argument("--streaming", choices=("auto", "on", "off"), default="auto",
                         help="evaluate in gallery blocks (auto: above 1e8 distances, docs/retrieval.md)")
    options.add_argument("--max-rank", type=int, default=50, help="length of the CMC curve")
    options.add_argument("--json", type=Path, metavar="OUT", help="also write the metrics as JSON to OUT")


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (else argparse's one-line error, exit 2)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def run(args: argparse.Namespace) -> int:
    if getattr(args, "features", None) is not None:
        source, features, rerank = args.features, _load(args.features), args.rerank
    elif getattr(args, "checkpoint", None) is not None:
        cfg = _checkpoint_config(args)
        source, features, rerank = args.checkpoint, _run_checkpoint(args, cfg), args.rerank or cfg.eval.rerank
    else:
        raise UsageError("say what to evaluate: --features FILE, or -c CONFIG --checkpoint model.pt")
    metrics = score(features, args.metric, rerank, args.max_rank, source=str(source), aqe=args.aqe,
                    aqe_alpha=args.aqe_alpha, block=args.block, streaming=args.streaming, progress=True)
    print(format_metrics(metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**metrics.to_dict(), "source": str(source)}, indent=2) + "\n")
    return 0


def _load(path: Path) -> FeatureSet:
    try:
        return load_features(path, mmap=True)
    except (FileNotFoundError, ValueError) as error:  # missing, or a wrong suffix
        raise FeaturesFileError(str(error)) from None


def _checkpoint_config(args: argparse.Namespace) -> Config:
    if args.config is None:
        raise UsageError("--checkpoint: give -c CONFIG naming the data set to evaluate on")
    return load_config(args.config, args.overrides)


def _run_checkpoint(args: argparse.Namespace, cfg: Config) -> FeatureSet:
    """Embed the config's query and gallery with the checkpoint's model (at its own input size)."""
    device = torch.device(args.device) if args.device else default_device()
    model, model_cfg = load_model(args.checkpoint, device, default_dtype(device))
    cfg.model = model_cfg.model
    cfg.data.height, cfg.data.width = model_cfg.data.height, model_cfg.data.width
    full = cfg.eval.feature == "full" and model.cross_modal is not None
    dataset, store = load_data(cfg, captions=full, eval_only=True)
    features = RetrievalEval.for_model(cfg, model, dataset, store if full else None, device).embed(Embedder(model, device))
    if args.save_features is not None:
        meta = {**features.meta, "model": str(args.checkpoint), "dataset": cfg.data.dataset}
        path = save_feature_set(args.save_features, dataclasses.replace(features, meta=meta))
        print(f"wrote the query and gallery features to {path} (fba eval --features {path})")
    return features
