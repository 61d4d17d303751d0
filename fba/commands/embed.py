"""``fba embed``: embed a folder or list of images into a features file."""
from __future__ import annotations

import argparse
import typing
from pathlib import Path

from fba.commands.arguments import add_model_runtime, at_least
from fba.config import Loader

HELP = "embed a folder or list of images into a features file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_runtime(parser, "what runs the model (docs/deployment.md); the features file is the same; openvino "
                      "reads the ONNX export, on the CPU")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="embed every image under DIR (recursive, sorted)")
    source.add_argument("--list", type=Path, metavar="FILE", help="embed the images listed in FILE, one per line")
    parser.add_argument("--root", type=Path, help="root of relative paths in --list and of the caption keys "
                        "(default: the --images folder, or the list file's folder)")
    parser.add_argument("--captions", type=Path, help="captions.jsonl keyed by path relative to the images root")
    parser.add_argument("--image-only", action="store_true", help="image-only feature (post-BN CLS), no captions")
    parser.add_argument("--out", required=True, type=Path, help="features file to write: .safetensors or .npz")
    parser.add_argument("--batch-size", type=at_least(1), default=256)
    parser.add_argument("--num-workers", type=at_least(0), default=2)
    parser.add_argument("--loader", choices=typing.get_args(Loader), default=None,
                        help="image decoding: dali, torch or auto (DALI on a GPU); default: the model's data.loader")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available; under "
                        "torchrun each rank takes cuda:LOCAL_RANK)")


def run(args: argparse.Namespace) -> int | None:
    from fba.embed.command import run as run_embed

    return run_embed(args)
