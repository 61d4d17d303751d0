"""``fba ablate``: the rows of the paper's Table 3 trained with the same seed and budget on the synthetic set.

Rows: the baseline (backbone CLS, L_ID + L_Tri), + cross-modal (fg branch, L_ID^C + L_Tri^C), + diversity
(bg branch, L_div), + differential pooling (the full FBA). Each row is one ``fba train`` run with the
ablation switches set; the table is written as Markdown so it can go straight into ``docs/results.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fba.demo import DEMO_CONFIG, ensure_synthetic

ROWS: list[tuple[str, dict[str, bool]]] = [
    ("baseline", {"cross_modal": False, "diversity": False, "pooling": False}),
    ("+ cross-modal", {"cross_modal": True, "diversity": False, "pooling": False}),
    ("+ diversity", {"cross_modal": True, "diversity": True, "pooling": False}),
    ("+ pooling (FBA)", {"cross_modal": True, "diversity": True, "pooling": True}),
]


def ablation_table(results: list[dict]) -> str:
    lines = ["| row | L_ID^C+L_Tri^C | L_div | mask | feature | mAP | R-1 | R-5 | R-10 | mINP | minutes |",
             "|---|:-:|:-:|:-:|---|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        s = r["switches"]
        marks = ["✓" if s[k] else "" for k in ("cross_modal", "diversity", "pooling")]
        m = r["metrics"]
        lines.append(f"| {r['row']} | {' | '.join(marks)} | {r['feature']} | {m['eval/mAP']:.1f} | {m['eval/R1']:.1f} "
                     f"| {m['eval/R5']:.1f} | {m['eval/R10']:.1f} | {m['eval/mINP']:.1f} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def run_ablation(out: Path, data: Path, ids: int, cams: int, seed: int, config: Path, overrides: list[str]) -> list[dict]:
    from fba.config import load_config
    from fba.engine.trainer import train

    ensure_synthetic(data, ids, cams, seed)
    results = []
    for index, (row, switches) in enumerate(ROWS):
        print(f"[{index + 1}/{len(ROWS)}] {row}")
        switch_overrides = [f"model.{key}={str(value).lower()}" for key, value in switches.items()]
        cfg = load_config(config, [f"data.root={data}", f"train.output_dir={out / f'row{index}'}",
                                   f"train.seed={seed}", *overrides, *switch_overrides])
        start = time.perf_counter()
        result = train(cfg)
        feature = "full" if switches["cross_modal"] and cfg.eval.feature == "full" else "image"
        results.append({"row": row, "switches": switches, "metrics": result.final_metrics, "feature": feature,
                        "minutes": (time.perf_counter() - start) / 60})
        (out / "ablation.json").write_text(json.dumps(results, indent=2))
    table = ablation_table(results)
    (out / "ablation.md").write_text(table + "\n")
    print(f"\n{table}\n\nwritten to {out / 'ablation.md'}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-occluded"))
    parser.add_argument("--ids", type=int, default=60)
    parser.add_argument("--cams", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-c", "--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every row, e.g. solver.epochs=8")


def run(args: argparse.Namespace) -> int:
    run_ablation(args.out, args.data, args.ids, args.cams, args.seed, args.config, args.overrides)
    return 0
