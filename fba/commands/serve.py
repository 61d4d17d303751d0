"""``fba serve``: the model behind Triton Inference Server (HTTP, gRPC, Prometheus metrics), with dynamic batching."""
from __future__ import annotations

import argparse
from pathlib import Path

from fba.commands.arguments import add_model_runtime, at_least

HELP = "serve a model over HTTP and gRPC (Triton Inference Server), batching concurrent requests"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_runtime(parser, "what runs the model; the features are fba embed's (docs/serving.md)")
    parser.add_argument("--feature", choices=("image", "full"), default="image",
                        help="image: post-BN CLS (images only); full: also the two captions, as text or token ids")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                        "machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--http-port", type=at_least(0), default=8000)
    parser.add_argument("--grpc-port", type=at_least(0), default=8001)
    parser.add_argument("--metrics-port", type=at_least(0), default=8002)
    parser.add_argument("--max-batch", type=at_least(1), default=32,
                        help="most images in one model call (Triton merges requests up to it) and in one request")
    parser.add_argument("--max-queue-delay-us", type=at_least(0), default=500,
                        help="how long Triton holds a request to merge it with others")
    parser.add_argument("--max-queue-size", type=at_least(1), default=256,
                        help="requests waiting past this are refused at once (overloaded), so memory stays bounded")
    parser.add_argument("--queue-timeout-ms", type=at_least(0), default=0,
                        help="a request still queued after this is refused (0: no deadline; clients may set theirs)")
    parser.add_argument("--instances", type=at_least(1), default=1,
                        help="model instances (each a process with its own copy, sharing the cores or the GPU)")
    parser.add_argument("--max-pixels", type=at_least(1), default=4096 * 4096,
                        help="largest encoded image accepted, in pixels (checked before decoding)")
    parser.add_argument("--drain-timeout", type=at_least(1), default=10,
                        help="seconds SIGTERM/SIGINT waits for requests in flight before the server exits")
    parser.add_argument("--ready-timeout", type=at_least(1), default=600,
                        help="seconds to wait for the model to load and warm up")
    parser.add_argument("--write-repository", type=Path, metavar="DIR",
                        help="write the Triton model repository to DIR and exit (for a full Triton deployment)")
    parser.add_argument("--verbose", action="store_true", help="Triton's info log (model load, endpoints)")


def run(args: argparse.Namespace) -> int | None:
    from fba.serve.command import run as run_serve

    return run_serve(args)
