"""``fba ablate``: train the Table 3 ablation rows on the synthetic occluded set."""
from __future__ import annotations

import argparse
from pathlib import Path

from fba.commands.demo import DEMO_CONFIG, REALISTIC_LEVEL

HELP = "train the Table 3 ablation rows on the synthetic occluded set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--data", type=Path, default=Path("data/synthetic-occluded"))
    parser.add_argument("--ids", type=int, default=60)
    parser.add_argument("--cams", type=int, default=4)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    parser.add_argument("--seeds", type=_seed_or_override, nargs="+", default=[0, 1, 2],
                        help="training seeds per row (overrides may follow them)")
    parser.add_argument("--caption-noise", type=float, default=REALISTIC_LEVEL, metavar="LEVEL",
                        help="caption noise of the synthetic set (0 = captions from the truth, 1 = realistic)")
    parser.add_argument("-c", "--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in OUT/ablation.json and continue the unfinished one")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every row, e.g. solver.epochs=8")


def _seed_or_override(text: str) -> int | str:
    """A ``--seeds`` value: an integer seed, or (``key=value``) an override written after the seeds, where
    ``--seeds``' greedy list would otherwise swallow it (``--seeds 0 1 2 solver.epochs=10``)."""
    if "=" in text:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: seeds are integers") from None


def run(args: argparse.Namespace) -> int | None:
    from fba.apps.ablate import run as run_ablate

    return run_ablate(args)
