"""``fba export``: export a model.pt to ONNX or an AOTInductor package for serving."""
from __future__ import annotations

import argparse
from pathlib import Path

from fba.commands.arguments import at_least

HELP = "export a model.pt to ONNX or an AOTInductor package for serving"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="model.pt written by `fba train`")
    parser.add_argument("--format", choices=["onnx", "aoti"], help="onnx (model.onnx, default) or aoti (model.pt2)")
    parser.add_argument("--out", type=Path, help="folder to write the model into (created); exports of other "
                        "variants are named by what differs (model-full.onnx, model-imagenet.onnx)")
    parser.add_argument("--feature", choices=("image", "full"),
                        help="image (default): images in, post-BN CLS out; full: also the two captions' CLIP token ids")
    parser.add_argument("--caption-input", choices=["tokens", "states"], default="tokens",
                        help="with --feature full: tokens (default) the captions' CLIP token ids, the text tower in "
                        "the graph; states the tower's outputs, the tower written beside it (model-text.onnx) for "
                        "callers that encode each caption once and embed many images with it (ONNX)")
    parser.add_argument("--input-dtype", choices=["uint8", "float32"],
                        help="dtype of the images input: uint8 (default) or float32 (for runtimes that feed floats)")
    parser.add_argument("--input-norm", choices=["none", "imagenet", "clip"],
                        help="what the images hold: none (default) 0..255 pixels, normalised in the graph; imagenet "
                        "(x/255 - ImageNet mean)/std, as torchvision-style trackers feed (float32, folded into the "
                        "patch embedding); clip CLIP-normalised (float32)")
    parser.add_argument("--target", choices=["boxmot", "deepstream", "triton"],
                        help="export what this consumer loads as it is: boxmot (fba-reid-HxW.onnx, ImageNet input, "
                        "and the sidecar boxmot reads), deepstream (0..255 float input and an nvtracker ReID config), "
                        "triton (a model repository for Triton's onnxruntime backend: fba_reid/config.pbtxt and "
                        "fba_reid/1/model.onnx, the inputs and output of fba serve)")
    parser.add_argument("--quantize", choices=["int8"], help="int8: static post-training quantization of the "
                        "ONNX image export (onnxruntime QDQ; runs on onnxruntime and OpenVINO), calibrated on "
                        "--calibration")
    parser.add_argument("--quantizer", choices=["onnxruntime", "nncf"], default="onnxruntime",
                        help="with --quantize: onnxruntime's static quantization (default) or OpenVINO's NNCF (the "
                        "nncf extra); both write a QDQ ONNX model (docs/deployment.md compares them)")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="with --quantize: a folder of crops, e.g. a data set's training split")
    parser.add_argument("--calibration-images", type=at_least(16), default=300, metavar="N",
                        help="with --quantize: how many of --calibration's images, spread over it (default 300)")
    parser.add_argument("--device", default="cpu", help="aoti: compile for this device (cpu, cuda); onnx: ignored")
    parser.add_argument("--inspect", type=Path, metavar="FILE", help="print the metadata of an exported model and exit")


def run(args: argparse.Namespace) -> int | None:
    from fba.deploy.export import run as run_export

    return run_export(args)
