"""Training input throughput (images/s): the torchvision DataLoader, DALI on the CPU and DALI on the GPU.

Two image sets: the synthetic data set (``fba.data.synthetic``, the demo's data) and a folder of Market-sized
JPEGs (64x128 .. 128x256 pixels, smooth content, quality 90) generated here. Every loader runs the full training
augmentation into P x K batches at the training size; the torch loader uses one worker per core and DALI one
thread per core, so the comparison is at equal cores.

    python -m benchmarks.bench_input [--smoke] [--results-dir DIR]    # table + benchmarks/results/<device>.json
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from benchmarks.common import benchmark_parser, format_table, write_results
from fba.config import Config
from fba.data.datasets import build_dataset
from fba.data.transforms import build_train_loader

BENCHMARK_KEY = "input"


@dataclass(frozen=True)
class Setup:
    """One benchmark size: the generated image sets, the training batch and how many batches are timed."""

    synthetic_ids: int
    market_images: int
    height: int
    width: int
    batch_size: int
    num_instances: int
    batches: int
    warmup_batches: int


FULL = Setup(synthetic_ids=48, market_images=2048, height=384, width=128, batch_size=64, num_instances=4,
             batches=24, warmup_batches=3)
SMOKE = Setup(synthetic_ids=8, market_images=48, height=32, width=16, batch_size=8, num_instances=2,
              batches=3, warmup_batches=1)


def write_market_sized(root: Path, count: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """``count`` JPEGs of Market to CUHK03 size, 8 per identity; returns the items ``(path, pid, camid)``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for n in range(count):
        width = int(rng.integers(64, 129))
        height = int(rng.integers(2 * width - 8, min(256, 2 * width + 64) + 1))
        coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR).filter(ImageFilter.GaussianBlur(1.5))
        path = root / f"{n // 8:04d}_c{n % 6}_{n:06d}.jpg"
        image.save(path, quality=90)
        items.append((str(path), n // 8, n % 6))
    return items


def synthetic_items(root: Path, ids: int) -> list[tuple[str, int, int]]:
    from fba.data.synthetic import generate

    generate(root, ids=ids, cams=4, seed=0, occluded=False, progress=False)
    return build_dataset("synthetic", root).train


def loader_factories(cores: int) -> dict:
    """Loader name -> ``(cfg, items) -> TrainLoader``; DALI rows only where DALI (and a GPU) is there."""
    factories = {"torch": lambda cfg, items: build_train_loader(cfg, items)}
    try:
        from fba.data.dali import build_dali_train_loader
    except ImportError:
        return factories
    factories["dali-cpu"] = lambda cfg, items: build_dali_train_loader(cfg, items, device_id=None)
    if torch.cuda.is_available():
        factories["dali-gpu"] = lambda cfg, items: build_dali_train_loader(cfg, items, device_id="auto")
    return factories


def time_loader(loader, setup: Setup) -> float:
    """Images per second over ``setup.batches`` batches after ``setup.warmup_batches``, epochs chained."""
    seen, epoch, start = 0, 0, None
    while True:
        loader.set_epoch(epoch)
        for batch in loader:
            seen += 1
            if seen == setup.warmup_batches:
                if batch["images"].is_cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            elif seen == setup.warmup_batches + setup.batches:
                if batch["images"].is_cuda:
                    torch.cuda.synchronize()
                return setup.batches * setup.batch_size / (time.perf_counter() - start)
        epoch += 1


def run_benchmark(setup: Setup, work_dir: Path, cores: int) -> list[dict]:
    cfg = Config()
    data = cfg.data
    data.height, data.width, data.batch_size, data.num_instances = (
        setup.height, setup.width, setup.batch_size, setup.num_instances)
    data.num_workers = cores
    image_sets = {
        "synthetic": synthetic_items(work_dir / "synthetic", setup.synthetic_ids),
        "market-sized": write_market_sized(work_dir / "market_sized", setup.market_images),
    }
    rows = []
    for name, items in image_sets.items():
        torch_rate = None
        for loader_name, factory in loader_factories(cores).items():
            rate = time_loader(factory(cfg, items), setup)
            torch_rate = torch_rate or rate
            rows.append({"images": name, "files": len(items), "loader": loader_name, "cores": cores,
                         "batch": setup.batch_size, "size": f"{setup.height}x{setup.width}",
                         "images_per_s": rate, "vs_torch": rate / torch_rate})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "tiny sizes (seconds); stored under 'input-smoke'")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="torch DataLoader workers and DALI threads (default: all cores)")
    parser.add_argument("--work-dir", help="where the generated images go (default: a temporary directory)")
    args = parser.parse_args(argv)
    setup = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory(prefix="fba-bench-input-") as tmp:
        rows = run_benchmark(setup, Path(args.work_dir or tmp), args.cores)
    print(f"DALI GPU: {'measured' if torch.cuda.is_available() else 'skipped (no CUDA device)'}")
    print(format_table(rows, ["images", "files", "loader", "cores", "batch", "size", "images_per_s", "vs_torch"]))
    kind = "cuda" if any(row["loader"] == "dali-gpu" for row in rows) else "cpu"
    key = f"{BENCHMARK_KEY}-smoke" if args.smoke else BENCHMARK_KEY
    path = write_results(key, rows, kind=kind, config={**asdict(setup), "cores": args.cores}, directory=args.results_dir)
    print(f"results written to {path} (key {key!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
