"""``fba train``: train FBA with DeepSpeed (ZeRO, bf16)."""
from __future__ import annotations

import argparse

HELP = "train FBA with DeepSpeed (ZeRO, bf16)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="YAML config, e.g. configs/dukemtmc.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a train.output_dir that holds another run's checkpoints (they are removed)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.pooling=false solver.epochs=10")


def run(args: argparse.Namespace) -> int | None:
    from fba.train.trainer import run as run_train

    return run_train(args)
