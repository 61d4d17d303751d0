"""``fba export``: export a model.pt to ONNX or an AOTInductor package for serving."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model.pt to ONNX or an AOTInductor package for serving"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="model.pt written by `fba train`")
    parser.add_argument("--format", choices=["onnx", "aoti"], default="onnx", help="onnx (model.onnx) or aoti (model.pt2)")
    parser.add_argument("--out", type=Path, help="folder to write the model into (created)")
    parser.add_argument("--feature", choices=("image", "full"), default="image",
                        help="image: uint8 images in, post-BN CLS out; full: also the two captions' CLIP token ids")
    parser.add_argument("--input-dtype", choices=["uint8", "float32"], default="uint8",
                        help="dtype of the images input (float32 = 0..255 values, for runtimes that feed floats)")
    parser.add_argument("--device", default="cpu", help="aoti: compile for this device (cpu, cuda); onnx: ignored")
    parser.add_argument("--inspect", type=Path, metavar="FILE", help="print the metadata of an exported model and exit")


def run(args: argparse.Namespace) -> int | None:
    from fba.deploy.export import run as run_export

    return run_export(args)
