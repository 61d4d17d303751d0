"""``fba eval``: retrieval metrics for a saved features file (``--features``) or a trained model
(``-c CONFIG --checkpoint model.pt [overrides]``: the config names the data set, the checkpoint the model).

The command has one mode per source of features (``fba.commands.eval`` gives the options); each mode returns a
:class:`FeatureSet`. Whatever the source, :func:`fba.retrieval.score.score_feature_set` (in memory or streamed
in gallery blocks: docs/retrieval.md) scores it and :func:`format_metrics` shows the result. Scoring a features
file imports no model, text, data-loading or kernel code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fba.config import Config, load_config
from fba.retrieval.features_file import FeatureSet, FeaturesFileError, load_features, save_feature_set
from fba.errors import UsageError
from fba.retrieval.metrics import RetrievalMetrics
from fba.retrieval.score import score_feature_set


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


def run(args: argparse.Namespace) -> int:
    if getattr(args, "features", None) is not None:
        source, features, rerank = args.features, _load(args.features), args.rerank
    elif getattr(args, "checkpoint", None) is not None:
        cfg = _checkpoint_config(args)
        source, features, rerank = args.checkpoint, _run_checkpoint(args, cfg), args.rerank or cfg.eval.rerank
    else:
        raise UsageError("say what to evaluate: --features FILE, or -c CONFIG --checkpoint model.pt")
    metrics = score_feature_set(features, args.metric, rerank, args.max_rank, source=str(source), aqe=args.aqe,
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
    import torch

    from fba.data.loaders import load_data
    from fba.distributed import usable_device
    from fba.model.model_file import load_model
    from fba.embed.embedder import Embedder, default_device, default_dtype
    from fba.retrieval.eval_set import RetrievalEval

    device = usable_device(args.device) if args.device else default_device()
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
