"""JPEG decode throughput: torchvision on the CPU and nvJPEG on the GPU (``torchvision.io.decode_jpeg(device=
"cuda")``), the stand-in for DALI's GPU decode when no DALI wheel is carried to the GPU machine.

    python -m benchmarks.bench_decode [--smoke] [--results-dir DIR]

Market-sized JPEGs (128x64 .. 256x128, quality 90) are encoded here in memory; each row decodes the same batch of
encoded bytes (uint8 [3,H,W] out, what ``fba.embed.fast`` takes), images/s over the median of ``repeat``.
"""
from __future__ import annotations

import sys

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from benchmarks.common import benchmark_parser, format_table, measure, write_results

BENCHMARK_KEY = "decode"


def encoded_batch(count: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [(128, 64), (256, 128), (192, 96)]
    images = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=gen), size=(h, w),
                                                 mode="bilinear", align_corners=False)
        images.append(encode_jpeg((smooth[0] * 255).to(torch.uint8), quality=90))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "a few images, CPU decode only")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.smoke
    count = 8 if args.smoke else 256
    data = encoded_batch(count)
    rows = []
    for device in ["cpu", "cuda"] if gpu else ["cpu"]:
        def run():
            out = decode_jpeg(data, device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            return out
        timing, out = measure(run, repeat=args.repeat, warmup=1)
        assert len(out) == count and out[0].dtype == torch.uint8
        rows.append({"decoder": "nvjpeg" if device == "cuda" else "torchvision-cpu", "images": count,
                     "median_s": timing.median, "images_per_s": count / timing.median,
                     "mean_bytes": sum(d.numel() for d in data) / count})
    print(format_table(rows))
    path = write_results(BENCHMARK_KEY + ("" if gpu else "-smoke"), rows, kind="cuda" if gpu else "cpu",
                         config={"count": count, "repeat": args.repeat, "torch_threads": torch.get_num_threads()},
                         directory=args.results_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
