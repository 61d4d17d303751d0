"""``fba demo`` / ``make demo``: the main job on a fresh machine, with nothing downloaded.

Generate the occluded synthetic person set with captions as a vision-language model would plausibly write
them (``--caption-noise``, realistic by default), measure the untrained tiny FBA, train it on the CPU (or the
GPU when there is one) with the same DeepSpeed trainer as every run, measure it again, and draw what a person
looks at: the metrics table, a rank list, the cross-attention overlay of the paper's Fig. 4, and the loss
curves. Everything lands in ``runs/demo/``.

Each model is measured with three retrieval features side by side (:data:`FEATURES`), from one embedding
pass: the image part, the caption part and the full feature, so the table shows what the captions add.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fba.apps import viz
from fba.apps.caption_baseline import caption_only_metrics
from fba.config import Config, load_config
from fba.data.loaders import load_data
from fba.data.synthetic import generate
from fba.data.synthetic.noise import REALISTIC_LEVEL
from fba.data.transforms import build_eval_transform, read_image
from fba.model.model_file import load_model
from fba.embed.embedder import Embedder
from fba.retrieval.features_file import FeatureSet
from fba.retrieval.eval_set import RetrievalEval, with_feature
from fba.retrieval.score import query_gallery
from fba.train.trainer import seed_everything, train
from fba.retrieval.metrics import RetrievalMetrics, pairwise_distance
from fba.model import build_model, select_feature
from fba.model.text import TextFeatures

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml"

# What each measured feature is (docs/model.md, "Retrieval feature"; docs/results.md says what each row shows).
FEATURES = {
    "image": "post-BN CLS alone: the image part, what the model gives without captions",
    "text": "post-BN F_f^V and F_f^T alone: the caption part, the two features that exist only because of the "
            "captions (each has also attended to the image)",
    "full": "CLS, F_f^V and F_f^T: the retrieval feature FBA uses",
}


def ensure_synthetic(root: Path, ids: int, cams: int, seed: int, caption_noise: float = 0.0) -> Path:
    """The occluded synthetic set at ``root``: reused when its meta.json says it was made with these settings."""
    meta_path = root / "meta.json"
    wanted = (ids, cams, seed, True, float(caption_noise))
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        params = meta.get("params", meta)
        found = (params.get("ids"), params.get("cams"), params.get("seed"), params.get("occluded"),
                 float(params.get("caption_noise", 0.0)))
        if found == wanted:
            print(f"[1/5] synthetic data set: reusing {root}")
            return root
    print(f"[1/5] synthetic data set: generating {ids} identities x {cams} cameras (occluded), captions at noise "
          f"level {caption_noise:g}, in {root}")
    generate(root, ids=ids, cams=cams, seed=seed, occluded=True, overwrite=True, caption_noise=caption_noise)
    return root


def feature_metrics(cfg: Config, model: torch.nn.Module, dataset, store) -> dict[str, tuple[RetrievalMetrics, FeatureSet]]:
    """``{kind: (metrics, features)}`` for each retrieval feature of :data:`FEATURES` the model has ("image"
    only for the baseline or without captions), from one embedding pass of the full feature."""
    with_captions = model.cross_modal is not None and store is not None
    device = next(model.parameters()).device
    evaluation = RetrievalEval.for_model(with_feature(cfg, "full" if with_captions else "image"), model, dataset,
                                         store, device)
    embedded = evaluation.embed(Embedder(model, device))
    results = {}
    for kind in FEATURES if with_captions else ("image",):
        rows = select_feature(torch.as_tensor(embedded.features), kind).numpy() if with_captions else embedded.features
        features = dataclasses.replace(embedded, features=rows, meta={**embedded.meta, "feature": kind})
        results[kind] = (evaluation.score(features), features)
    return results


def fg_attention_heat(model, images: torch.Tensor, fg: TextFeatures, bg: TextFeatures) -> np.ndarray:
    """Per-patch heat of the fg caption: each caption column of W_f normalised over the patches, averaged over
    the valid columns (how strongly the caption's tokens look at each patch), on the patch grid."""
    with torch.no_grad():
        w_f, _ = model.attention_maps(images, fg, bg)
    patches = w_f[:, 1:].float()
    columns = patches / patches.sum(dim=1, keepdim=True).clamp_min(1e-12)
    weights = fg.valid.float() / fg.valid.float().sum(dim=1, keepdim=True)
    heat = (columns * weights[:, None, :]).sum(dim=-1)
    return heat.view(-1, *model.backbone.grid).cpu().numpy()


def draw_pictures(out: Path, cfg: Config, model, dataset, store, features: FeatureSet,
                  metrics_file: Path) -> dict[str, Path]:
    query, gallery = query_gallery(features)
    query_paths = [path for path, _, _ in dataset.query]
    gallery_paths = [path for path, _, _ in dataset.gallery]
    q_pids, g_pids, q_cams, g_cams = query.pids, gallery.pids, query.camids, gallery.camids
    distmat = pairwise_distance(query.features, gallery.features, metric="cosine")
    rng = np.random.default_rng(cfg.train.seed)
    shown = sorted(rng.choice(len(query_paths), size=min(6, len(query_paths)), replace=False).tolist())
    pictures = {
        "rank list": viz.save_rank_list(out / "rank_list.png", distmat, query_paths, gallery_paths,
                                        q_pids, g_pids, q_cams, g_cams, shown, topk=10),
        "loss curves": viz.save_loss_curves(out / "loss_curves.png", metrics_file, smooth=3),
    }
    if model.cross_modal is not None and store is not None:
        transform = build_eval_transform(cfg.data.height, cfg.data.width)
        device = next(model.parameters()).device
        images = torch.stack([transform(read_image(query_paths[i])) for i in shown]).to(device)
        captions = [store[dataset.relpath(query_paths[i])] for i in shown]
        fg, bg = (model.text_encoder(model.text_encoder.tokenize(texts).to(device))
                  for texts in ([c.fg for c in captions], [c.bg for c in captions]))
        heat = fg_attention_heat(model, images, fg, bg)
        pictures["attention overlay"] = viz.save_attention_overlay(
            out / "attention.png", [query_paths[i] for i in shown], list(heat))
    return pictures


def headline(metrics: RetrievalMetrics) -> dict[str, float]:
    """mAP and Rank-1 in percent: what the demo's summary and the ablation table report."""
    percent = metrics.percent()
    return {"mAP": percent["mAP"], "R1": percent["R1"]}


def metrics_table(columns: dict[str, RetrievalMetrics]) -> str:
    """Markdown table: one row per metric (percent), one column per measured model/feature."""
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "--:|" * len(names)]
    percent = [m.percent() for m in columns.values()]
    for name in percent[0]:
        lines.append(f"| {name.replace('R', 'Rank-')} | " + " | ".join(f"{p[name]:.2f}" for p in percent) + " |")
    return "\n".join(lines)


def demo_note(caption_noise: float, kinds: list[str], captions_alone: bool = False) -> str:
    """What each column measures, for metrics.md and the console."""
    lines = [f"- {kind}: {FEATURES[kind]}" for kind in kinds]
    if captions_alone:
        lines.append("- captions alone: no model, the fg captions' TF-IDF bag of words ranked by cosine; how well "
                     "the captions by themselves tell the people apart")
    if caption_noise:
        source = (f"captions at noise level {caption_noise:g}: written from what a camera plausibly shows, with a "
                  "vision-language model's mistakes (fba/data/synthetic/noise.py); the truth stays in attributes.jsonl")
    else:
        source = ("captions at noise level 0: written from the generator's true identity attributes, so the text "
                  "and full columns measure how good perfect captions are")
    return "Columns:\n" + "\n".join(lines) + f"\n\nData: {source}."


def run_demo(out: Path, data: Path, ids: int, cams: int, seed: int, config: Path, overrides: list[str],
             caption_noise: float = REALISTIC_LEVEL) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ensure_synthetic(data, ids, cams, seed, caption_noise)
    cfg = load_config(config, [f"data.root={data}", f"train.output_dir={out / 'train'}",
                               f"train.seed={seed}", *overrides])
    dataset, store = load_data(cfg)
    print(dataset.summary())

    captions_alone = None
    if store is not None:
        captions_alone = caption_only_metrics(dataset, store, cfg.eval.max_rank)
    print("[2/5] evaluating the untrained model (same seed, random weights)")
    seed_everything(cfg.train.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="model.pretrained is not set")
        untrained_model = build_model(cfg.model, dataset.num_train_pids, (cfg.data.height, cfg.data.width))
    untrained = feature_metrics(cfg, untrained_model.eval(), dataset, store)
    del untrained_model

    print(f"[3/5] training the tiny FBA for {cfg.solver.epochs} epochs")
    result = train(cfg, overwrite=True)  # the demo's folder is its own: a rerun replaces it

    print("[4/5] evaluating the trained model")
    model, _ = load_model(result.model_path, "cuda" if torch.cuda.is_available() else "cpu")
    trained = feature_metrics(cfg, model, dataset, store)
    main_kind = "full" if "full" in trained else "image"

    print("[5/5] drawing the pictures")
    pictures = draw_pictures(out, cfg, model, dataset, store, trained[main_kind][1], result.metrics_path)
    columns = {f"{state} ({kind})": metrics for state, measured in (("untrained", untrained), ("trained", trained))
               for kind, (metrics, _) in measured.items()}
    if captions_alone is not None:
        columns["captions alone"] = captions_alone
    table = metrics_table(columns)
    minutes = (time.perf_counter() - start) / 60
    summary = {
        state: {kind: headline(m) for kind, (m, _) in measured.items()}
        for state, measured in (("untrained", untrained), ("trained", trained))
    }
    if captions_alone is not None:
        summary["captions alone"] = headline(captions_alone)
    summary.update(minutes=minutes, model=str(result.model_path), caption_noise=caption_noise)
    note = demo_note(caption_noise, [kind for kind in FEATURES if kind in trained], captions_alone is not None)
    (out / "metrics.md").write_text(f"# FBA demo on the synthetic occluded set\n\n{table}\n\n{note}\n\n"
                                   f"wall time {minutes:.1f} min\n")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{table}\n\n{note}\nwall time {minutes:.1f} min")
    print(f"metrics table: {out / 'metrics.md'}")
    for name, path in pictures.items():
        print(f"{name}: {path}")
    return summary


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, args.data, args.ids, args.cams, args.seed, args.config, args.overrides, args.caption_noise)
    return 0
