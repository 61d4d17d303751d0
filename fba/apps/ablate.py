"""``fba ablate``: the rows of the paper's Table 3 trained with the same seeds and budget on the synthetic set.

Rows: the baseline (backbone CLS, L_ID + L_Tri), + cross-modal (fg branch, L_ID^C + L_Tri^C), + diversity
(bg branch, L_div), + differential pooling (the full FBA). Each row is one ``fba train`` run per training
seed with the ablation switches set, all on the same data set, whose captions carry a vision-language
model's mistakes (``--caption-noise``, realistic by default). Every trained model is measured with the three
features of :data:`fba.apps.demo.FEATURES` (image part, caption part, full), so a cross-modal row's full feature
can be compared with its own caption part as well as with the baseline's image feature: a gain of the full
feature over the baseline that the caption part alone already has is the captions', not the fusion's. The
tables are Markdown, ready for ``docs/results.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fba.utils.atomic import atomic_write_bytes
from fba.apps.caption_baseline import caption_only_metrics
from fba.config import load_config
from fba.data import CaptionStore, build_dataset
from fba.data.loaders import load_data
from fba.data.synthetic.noise import REALISTIC_LEVEL
from fba.apps.demo import FEATURES, ensure_synthetic, feature_metrics, headline
from fba.model.model_file import load_model
from fba.train.trainer import train
from fba.errors import UsageError

ROWS: list[tuple[str, dict[str, bool]]] = [
    ("baseline", {"cross_modal": False, "diversity": False, "pooling": False}),
    ("+ cross-modal", {"cross_modal": True, "diversity": False, "pooling": False}),
    ("+ diversity", {"cross_modal": True, "diversity": True, "pooling": False}),
    ("+ pooling (FBA)", {"cross_modal": True, "diversity": True, "pooling": True}),
]


def _cell(values: list[float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.1f}"
    return f"{np.mean(values):{sign}.1f} ± {np.std(values):.1f}"


def ablation_table(results: list[dict]) -> str:
    """One line per row; metrics are mean ± std (population std) over the training seeds of that row; a
    feature the row's model does not have (caption part or full for the baseline) is "–"."""
    header = " | ".join(f"{kind} {metric}" for kind in FEATURES for metric in ("mAP", "R-1"))
    lines = [f"| row | L_ID^C+L_Tri^C | L_div | mask | {header} | seeds | minutes/run |",
             "|---|:-:|:-:|:-:|" + "--:|" * (2 * len(FEATURES) + 2)]
    for row, _ in ROWS:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        switches = runs[0]["switches"]
        marks = ["✓" if switches[k] else "" for k in ("cross_modal", "diversity", "pooling")]
        cells = []
        for feature in FEATURES:
            measured = [r[feature] for r in runs if feature in r]
            if len(measured) < len(runs):
                cells += ["–", "–"]
                continue
            cells += [_cell([m["mAP"] for m in measured]), _cell([m["R1"] for m in measured])]
        minutes = np.mean([r["minutes"] for r in runs])
        lines.append(f"| {row} | {' | '.join(marks)} | {' | '.join(cells)} | {len(runs)} | {minutes:.1f} |")
    return "\n".join(lines)


def comparison_table(results: list[dict]) -> str:
    """mAP differences of each cross-modal row's full feature against its own caption part and against the
    baseline's image feature of the same training seed (mean ± std over the seeds both have)."""
    baseline = {r["seed"]: r["image"]["mAP"] for r in results if r["row"] == ROWS[0][0]}
    lines = ["| row | full − own text (mAP) | full − baseline image (mAP) | text − baseline image (mAP) |",
             "|---|--:|--:|--:|"]
    for row, switches in ROWS[1:]:
        runs = [r for r in results if r["row"] == row and "full" in r and "text" in r]
        if not runs:
            continue
        paired = [r for r in runs if r["seed"] in baseline]
        own = _cell([r["full"]["mAP"] - r["text"]["mAP"] for r in runs], signed=True)
        full_vs_base = _cell([r["full"]["mAP"] - baseline[r["seed"]] for r in paired], signed=True) if paired else "–"
        text_vs_base = _cell([r["text"]["mAP"] - baseline[r["seed"]] for r in paired], signed=True) if paired else "–"
        lines.append(f"| {row} | {own} | {full_vs_base} | {text_vs_base} |")
    return "\n".join(lines)


def per_run_table(results: list[dict]) -> str:
    """Every (row, seed) run: mAP / R-1 of each feature."""
    header = " | ".join(f"{kind} mAP | {kind} R-1" for kind in FEATURES)
    lines = [f"| row | seed | {header} |", "|---|--:|" + "--:|" * (2 * len(FEATURES))]
    for row, _ in ROWS:
        for r in sorted((r for r in results if r["row"] == row), key=lambda r: r["seed"]):
            cells = [f"{r[k]['mAP']:.1f} | {r[k]['R1']:.1f}" if k in r else "– | –" for k in FEATURES]
            lines.append(f"| {row} | {r['seed']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def captions_alone_line(data: Path) -> str:
    """The model-free reference of the data set: its fg captions' bag of words (:mod:`fba.apps.caption_baseline`)."""
    result = headline(caption_only_metrics(build_dataset("synthetic", data), CaptionStore.load(data / "captions.jsonl")))
    return f"Captions alone (fg bag of words, no model) on this data set: mAP {result['mAP']:.1f}, R-1 {result['R1']:.1f}."


def measure(cfg, model_path: Path) -> dict[str, dict[str, float]]:
    """mAP / R-1 (percent) of a trained ``model.pt`` for each retrieval feature it has (:data:`FEATURES`)."""
    model, _ = load_model(model_path)
    dataset, store = load_data(cfg)
    return {kind: headline(m) for kind, (m, _) in feature_metrics(cfg, model, dataset, store).items()}


def run_ablation(out: Path, data: Path, ids: int, cams: int, data_seed: int, seeds: list[int], config: Path,
                 overrides: list[str], resume: bool = False, caption_noise: float = REALISTIC_LEVEL) -> list[dict]:
    """Train and measure every (row, seed). With ``resume``, runs already in ``out/ablation.json`` are kept and
    the first unfinished one continues from its latest checkpoint, so an interrupted ablation loses at most
    one epoch."""
    ensure_synthetic(data, ids, cams, data_seed, caption_noise)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "ablation.json"
    results = json.loads(results_path.read_text()) if resume and results_path.exists() else []
    done = {(r["row"], r["seed"]) for r in results}
    for index, (row, switches) in enumerate(ROWS):
        for seed in seeds:
            if (row, seed) in done:
                print(f"[{index + 1}/{len(ROWS)}] {row}, seed {seed}: already in {results_path}")
                continue
            print(f"[{index + 1}/{len(ROWS)}] {row}, seed {seed}")
            switch_overrides = [f"model.{key}={str(value).lower()}" for key, value in switches.items()]
            cfg = load_config(config, [f"data.root={data}", f"train.output_dir={out / f'row{index}-seed{seed}'}",
                                       f"train.seed={seed}", *overrides, *switch_overrides])
            start = time.perf_counter()
            result = train(cfg, resume=resume, overwrite=True)  # each row's folder belongs to this ablation
            minutes = (time.perf_counter() - start) / 60
            results.append({"row": row, "seed": seed, "switches": switches, "minutes": minutes,
                            **measure(cfg, result.model_path)})
            atomic_write_bytes(results_path, json.dumps(results, indent=2).encode())  # the resume state
    tables = "\n\n".join((ablation_table(results), comparison_table(results), per_run_table(results),
                           captions_alone_line(data)))
    (out / "ablation.md").write_text(tables + "\n")
    print(f"\n{tables}\n\nwritten to {out / 'ablation.md'}")
    return results


def run(args: argparse.Namespace) -> int:
    seeds = [s for s in args.seeds if isinstance(s, int)]
    overrides = [s for s in args.seeds if isinstance(s, str)] + args.overrides
    if not seeds:
        raise UsageError("--seeds: give at least one integer seed")
    run_ablation(args.out, args.data, args.ids, args.cams, args.data_seed, seeds, args.config, overrides,
                 args.resume, args.caption_noise)
    return 0
