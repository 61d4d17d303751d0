"""``fba eval``: retrieval metrics for a saved features file (``--features``) or a trained model
(``-c CONFIG --checkpoint model.pt [overrides]``: the config names the data set, the checkpoint the model).

The command has one mode per source of features; each mode is an option of the ``source`` group and a
``_run_<mode>`` function. Whatever the source, the metrics come from :func:`evaluate_features` and are shown by
:func:`format_metrics`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fba.engine.features_io import FeatureSet, FeaturesFileError, load_features
from fba.errors import UsageError
from fba.metrics import percent_metrics

METRICS = ("cosine", "euclidean")


def evaluate_features(
    qf: Any,
    gf: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "cosine",
    rerank: bool = False,
    max_rank: int = 50,
    **scale: Any,
) -> dict:
    """Distances, optional k-reciprocal re-ranking (SPEC §8 defaults), then :func:`fba.metrics.evaluate`; in
    gallery blocks above a size threshold (``scale``: ``aqe``, ``block``, ``streaming``, ``progress`` of
    :func:`fba.streaming.score_features`, docs/retrieval.md).

    Returns the metrics dict of ``evaluate`` plus ``metric``, ``rerank``, ``aqe``, ``streaming``, ``num_query``
    and ``num_gallery``.
    """
    from fba.streaming import score_features

    return score_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, rerank=rerank,
                          max_rank=max_rank, **scale)


def format_metrics(metrics: dict) -> str:
    """A two-column table: mAP, rank-1/5/10, mINP (percent), valid queries, and how the features were compared."""
    rows = [(name.replace("R", "Rank-"), f"{value:.2f}") for name, value in percent_metrics(metrics).items()]
    valid = str(metrics["num_valid_queries"])
    if "num_query" in metrics:
        valid += f" / {metrics['num_query']}"
    rows.append(("valid queries", valid))
    if "num_gallery" in metrics:
        rows.append(("gallery", str(metrics["num_gallery"])))
    for key, label in (("feature", "feature"), ("metric", "distance"), ("rerank", "re-ranking"),
                       ("aqe", "query expansion"), ("streaming", "streamed")):
        if key in metrics:
            value = metrics[key]
            if key == "aqe":
                value = f"k={value}" if value else False
            rows.append((label, ("on" if value else "off") if isinstance(value, bool) else str(value)))
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
    options.add_argument("--metric", choices=METRICS, default="cosine", help="distance between features")
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
        metrics = _run_features(args)
    elif getattr(args, "checkpoint", None) is not None:
        metrics = _run_checkpoint(args)
    else:
        raise UsageError("say what to evaluate: --features FILE, or -c CONFIG --checkpoint model.pt")
    print(format_metrics(metrics))
    if args.json is not None:
        _write_json(args.json, metrics)
    return 0


def _split_rows(fs: FeatureSet, source: Path) -> tuple[FeatureSet, FeatureSet]:
    missing = [name for name in ("split", "pids", "camids") if getattr(fs, name) is None]
    if missing:
        raise FeaturesFileError(f"{source}: cannot evaluate, the file has no {', '.join(missing)} (needed per row)")
    query, gallery = fs.select("query"), fs.select("gallery")
    if len(query) == 0 or len(gallery) == 0:
        found = sorted(set(fs.split))
        raise FeaturesFileError(f"{source}: needs rows with split 'query' and 'gallery', found splits {found}")
    return query, gallery


def _run_features(args: argparse.Namespace) -> dict:
    try:
        fs = load_features(args.features, mmap=True)
    except FileNotFoundError as error:
        raise FeaturesFileError(str(error)) from None
    except ValueError as error:  # a wrong suffix
        raise FeaturesFileError(str(error)) from None
    query, gallery = _split_rows(fs, args.features)
    metrics = evaluate_features(
        query.features, gallery.features, query.pids, gallery.pids, query.camids, gallery.camids,
        metric=args.metric, rerank=args.rerank, max_rank=args.max_rank, aqe=args.aqe, aqe_alpha=args.aqe_alpha,
        block=args.block, streaming=args.streaming, progress=True,
    )
    if "feature" in fs.meta:
        metrics["feature"] = fs.meta["feature"]
    metrics["source"] = str(args.features)
    return metrics


def _run_checkpoint(args: argparse.Namespace) -> dict:
    """Embed the config's query and gallery with the checkpoint's model (at its own input size) and score them."""
    import torch

    from fba.config import load_config
    from fba.engine.checkpoint import load_model
    from fba.engine.embedder import Embedder, RetrievalEval, default_device, default_dtype
    from fba.engine.trainer import load_data

    if args.config is None:
        raise UsageError("--checkpoint: give -c CONFIG naming the data set to evaluate on")
    cfg = load_config(args.config, args.overrides)
    device = torch.device(args.device) if args.device else default_device()
    model, model_cfg = load_model(args.checkpoint, device, default_dtype(device))
    cfg.model = model_cfg.model
    cfg.data.height, cfg.data.width = model_cfg.data.height, model_cfg.data.width
    cfg.eval.max_rank = args.max_rank
    full = cfg.eval.feature == "full" and model.cross_modal is not None
    dataset, store = load_data(cfg, captions=full, eval_only=True)
    evaluation = RetrievalEval.for_model(cfg, model, dataset, store if full else None, device)
    embedded = evaluation.embed(Embedder(model, device))
    if args.save_features is not None:
        path = evaluation.save(embedded, args.save_features, {"model": str(args.checkpoint), "dataset": cfg.data.dataset})
        print(f"wrote the query and gallery features to {path} (fba eval --features {path})")
    metrics = evaluation.score(embedded, metric=args.metric, rerank=args.rerank or cfg.eval.rerank)
    metrics["source"] = str(args.checkpoint)
    return metrics


def _write_json(path: Path, metrics: dict) -> None:
    serialisable = {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in metrics.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(serialisable, indent=2) + "\n")
