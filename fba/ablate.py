"""``fba ablate``: the rows of the paper's Table 3 trained with the same seeds and budget on the synthetic set.

Rows: the baseline (backbone CLS, L_ID + L_Tri), + cross-modal (fg branch, L_ID^C + L_Tri^C), + diversity
(bg branch, L_div), + differential pooling (the full FBA). Each row is one ``fba train`` run per training
seed with the ablation switches set, all on the same data set. Every trained model is measured twice: with
the retrieval feature of SPEC §6 (CLS, F_f^V, F_f^T when the row has captions) and image-only (post-BN CLS),
because the synthetic captions are written from the generator's own identity attributes, so the caption
part of the full feature carries identity directly; the image-only column shows what the training did to
the visual feature. The table is Markdown, ready for ``docs/results.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fba.demo import DEMO_CONFIG, ensure_synthetic

ROWS: list[tuple[str, dict[str, bool]]] = [
    ("baseline", {"cross_modal": False, "diversity": False, "pooling": False}),
    ("+ cross-modal", {"cross_modal": True, "diversity": False, "pooling": False}),
    ("+ diversity", {"cross_modal": True, "diversity": True, "pooling": False}),
    ("+ pooling (FBA)", {"cross_modal": True, "diversity": True, "pooling": True}),
]
FEATURES = ("full", "image")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def ablation_table(results: list[dict]) -> str:
    """One line per row; metrics are mean ± std over the training seeds of that row."""
    lines = ["| row | L_ID^C+L_Tri^C | L_div | mask | full mAP | full R-1 | image-only mAP | image-only R-1 "
             "| minutes/run |", "|---|:-:|:-:|:-:|--:|--:|--:|--:|--:|"]
    for row, _ in ROWS:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        switches = runs[0]["switches"]
        marks = ["✓" if switches[k] else "" for k in ("cross_modal", "diversity", "pooling")]
        cells = []
        for feature in FEATURES:
            if feature == "full" and not switches["cross_modal"]:
                cells += ["–", "–"]
                continue
            cells += [_cell([r[feature]["mAP"] for r in runs]), _cell([r[feature]["R1"] for r in runs])]
        minutes = np.mean([r["minutes"] for r in runs])
        lines.append(f"| {row} | {' | '.join(marks)} | {' | '.join(cells)} | {minutes:.1f} |")
    return "\n".join(lines)


def measure(cfg, model_path: Path) -> dict[str, dict[str, float]]:
    """mAP / R-1 (percent) of a trained ``model.pt`` for each retrieval feature it has ("full", "image")."""
    from fba.demo import feature_metrics, headline
    from fba.engine.checkpoint import load_model
    from fba.engine.trainer import load_data

    model, _ = load_model(model_path)
    dataset, store = load_data(cfg)
    return {kind: headline(m) for kind, (m, _) in feature_metrics(cfg, model, dataset, store).items()}


def run_ablation(out: Path, data: Path, ids: int, cams: int, data_seed: int, seeds: list[int], config: Path,
                 overrides: list[str], resume: bool = False) -> list[dict]:
    """Train and measure every (row, seed). With ``resume``, runs already in ``out/ablation.json`` are kept and
    the first unfinished one continues from its latest checkpoint, so an interrupted ablation loses at most
    one epoch."""
    from fba.config import load_config
    from fba.atomic import atomic_write_bytes
    from fba.engine.trainer import train

    ensure_synthetic(data, ids, cams, data_seed)
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
    table = ablation_table(results)
    (out / "ablation.md").write_text(table + "\n")
    print(f"\n{table}\n\nwritten to {out / 'ablation.md'}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-occluded"))
    parser.add_argument("--ids", type=int, default=60)
    parser.add_argument("--cams", type=int, default=4)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per row")
    parser.add_argument("-c", "--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in OUT/ablation.json and continue the unfinished one")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every row, e.g. solver.epochs=8")


def run(args: argparse.Namespace) -> int:
    run_ablation(args.out, args.data, args.ids, args.cams, args.data_seed, args.seeds, args.config, args.overrides,
                 args.resume)
    return 0
