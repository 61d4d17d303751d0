"""argparse types and options the commands share."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (else argparse's one-line error, exit 2)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def add_model_runtime(parser: argparse.ArgumentParser, backend_help: str) -> None:
    """``--model``, ``--backend``, ``--performance-hint`` and ``--trust-native-code``: what runs a model, the same
    in every command that runs one (``fba embed``, ``fba serve``)."""
    parser.add_argument("--model", required=True, type=Path,
                        help="model.pt written by `fba train` (pytorch backend), or the folder (or file) written by "
                        "`fba export` (onnxruntime, openvino: model.onnx; aoti: model.pt2)")
    parser.add_argument("--backend", choices=("pytorch", "onnxruntime", "aoti", "openvino"), default="pytorch",
                        help=backend_help)
    parser.add_argument("--performance-hint", choices=("latency", "throughput"), default="latency",
                        help="openvino: latency (one request on all cores) or throughput (parallel streams)")
    parser.add_argument("--trust-native-code", action="store_true",
                        help="aoti: load the .pt2 package, whose native code runs as it loads (only one you trust)")
