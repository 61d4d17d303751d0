"""``fba caption``'s LLaVA backend (:class:`fba.apps.captioner.LlavaCaptioner`): images captioned per second.

    python -m benchmarks.bench_captioner --batch-sizes 8,16,32,64     # LLaVA-1.5-7B shapes, dynamic KV cache
    python -m benchmarks.bench_captioner --static-cache --batch-sizes 16,32
    python -m benchmarks.bench_captioner --smoke                     # tiny model on the CPU (make test)

No weights can be downloaded, so the model is LLaVA-1.5-7B's exact architecture with random weights
(:mod:`benchmarks.llava_shapes`): the same compute per token as the real model, garbage text. Each call is what
``fba caption`` does per batch: 128x64 person-sized JPEGs read and padded to squares, both prompts of every image
in one left-padded greedy ``generate`` of 2 x batch rows, up to 96 (fg) / 80 (bg) new tokens. A random model
rarely stops early, so nearly every row runs to its limit: the numbers are close to the worst case of real
captioning, where answers end at EOS.

Per batch size: two untimed warm-up calls (the static cache compiles its decode step there), then ``--batches``
timed calls on fresh images; peak GPU memory is that of the timed calls.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from benchmarks.common import benchmark_parser, device_name, format_table, synchronize, write_results
from benchmarks.llava_shapes import LLAVA15_7B, TINY, LlavaShape, llava_processor, random_llava
from fba.apps.captioner import ImageRef, LlavaCaptioner

BENCHMARK_KEY = "captioner"
IMAGE_SIZE = (64, 128)  # (width, height) of a Market-1501 crop
COLUMNS = ("batch_size", "s_per_batch", "images_per_s", "hours_per_10k_images", "warmup_s", "static_cache",
           "peak_gib")


def write_images(folder: Path, count: int, seed: int = 0) -> list[ImageRef]:
    """``count`` random person-sized JPEGs in ``folder``, as ``(key, path)`` pairs."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)).save(path)
        images.append((path.name, str(path)))
    return images


def prompt_tokens(captioner: LlavaCaptioner, shape: LlavaShape) -> list[int]:
    """Tokens of the fg and bg prompts as the model sees them (the image's tokens included)."""
    blank = Image.new("RGB", (shape.image_size, shape.image_size))
    return [len(captioner.processor(images=[blank], text=[text])["input_ids"][0]) for text in captioner.texts]


def measure_batch_size(
    captioner: LlavaCaptioner, images: list[ImageRef], batch_size: int, batches: int, device: torch.device
) -> dict:
    """One row: two warm-up calls on the first batch, then ``batches`` timed calls on the next ones."""
    start = time.perf_counter()
    for _ in range(2):
        captioner.caption(images[:batch_size])
    synchronize(device)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for k in range(1, batches + 1):
        captioner.caption(images[batch_size * k : batch_size * (k + 1)])
    synchronize(device)
    seconds = (time.perf_counter() - start) / batches
    rate = batch_size / seconds
    return {"batch_size": batch_size, "s_per_batch": seconds, "images_per_s": rate,
            "hours_per_10k_images": 10_000 / rate / 3600, "warmup_s": warmup, "static_cache": captioner.static_cache,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-sizes expects comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batch-sizes must all be >= 1, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "tiny random LLaVA on the CPU")
    parser.add_argument("--batch-sizes", type=batch_sizes, default=None,
                        help="comma-separated images per call (default 16,32; 2,4 with --smoke)")
    parser.add_argument("--batches", type=int, default=None, help="timed calls per batch size (default 2; 1 smoke)")
    parser.add_argument("--static-cache", action="store_true",
                        help="static KV cache: transformers compiles the decode step (GPU)")
    args = parser.parse_args(argv)
    sizes = args.batch_sizes or ([2, 4] if args.smoke else [16, 32])
    batches = args.batches or (1 if args.smoke else 2)
    if batches < 1:
        parser.error(f"--batches must be >= 1, got {batches}")
    shape = TINY if args.smoke else LLAVA15_7B
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    processor = llava_processor(shape)
    captioner = LlavaCaptioner(random_llava(shape, processor, device, dtype), processor,
                               static_cache=args.static_cache)  # the command's defaults: 96 fg / 80 bg new tokens
    config = {"device": device_name(device.type), "torch": torch.__version__, "transformers": transformers.__version__,
              "dtype": str(dtype), "model": f"{shape.name} shapes, random weights", "shape": asdict(shape),
              "prompt_tokens_fg_bg": prompt_tokens(captioner, shape),
              "max_new_tokens_fg_bg": list(captioner.max_new_tokens), "batches": batches,
              "cpu_threads": 1 if args.smoke else torch.get_num_threads(),
              "image": f"{IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} (height x width) jpg padded to square"}
    key = BENCHMARK_KEY + ("-smoke" if args.smoke else "")
    rows = []
    threads = torch.get_num_threads()
    if args.smoke:
        torch.set_num_threads(1)  # 32-wide matmuls: a thread pool only adds overhead (20x on a busy 2-core CPU)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_captioner_") as folder:
            images = write_images(Path(folder), max(sizes) * (batches + 1))
            for size in sizes:
                rows.append(measure_batch_size(captioner, images, size, batches, device))
                print(format_table(rows[-1:], COLUMNS), flush=True)
                path = write_results(key, rows, kind=device.type, config=config, directory=args.results_dir)
    finally:
        torch.set_num_threads(threads)
    print(f"\nLlavaCaptioner on {config['device']}: {config['model']}, {config['dtype']}, "
          f"prompts {config['prompt_tokens_fg_bg']} tokens, up to {config['max_new_tokens_fg_bg']} new")
    print(format_table(rows, COLUMNS))
    print(f"\nwrote {path} [{key}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
