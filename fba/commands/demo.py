"""``fba demo``: the main job: synthetic data, train the tiny FBA, evaluate, draw the pictures."""
from __future__ import annotations

import argparse
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml"  # fba.apps.demo.DEMO_CONFIG
REALISTIC_LEVEL = 1.0  # fba.data.synthetic.noise.REALISTIC_LEVEL
HELP = "the main job: synthetic data, train the tiny FBA, evaluate, draw the pictures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the run and pictures go")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-occluded"), help="synthetic data set folder")
    parser.add_argument("--ids", type=int, default=60, help="identities of the synthetic set (half train, half test)")
    parser.add_argument("--cams", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--caption-noise", type=float, default=REALISTIC_LEVEL, metavar="LEVEL",
                        help="caption noise of the synthetic set (0 = captions from the truth, 1 = realistic)")
    parser.add_argument("-c", "--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. solver.epochs=4")


def run(args: argparse.Namespace) -> int | None:
    from fba.apps.demo import run as run_demo

    return run_demo(args)
