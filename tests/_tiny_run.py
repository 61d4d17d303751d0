"""A tiny captioned Market-layout data set and a CPU-sized config for the trainer's tests.

Each identity has its own shirt and trousers colours (and caption), so a few steps of the tiny model learn.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fba.config import Config, load_config

COLOURS = {
    "red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 50, 200), "yellow": (220, 210, 40),
    "black": (20, 20, 20), "white": (235, 235, 235), "purple": (130, 40, 160), "orange": (240, 140, 20),
}
NAMES = list(COLOURS)
SCENES = ["a parked car", "a shop window", "a tree", "a bus stop"]


def _person(pid: int, seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top, bottom = COLOURS[NAMES[pid % 8]], COLOURS[NAMES[(pid * 3 + 1) % 8]]
    image = rng.integers(60, 120, size=(height, width, 3)).astype(np.float32)
    x0 = int(rng.integers(0, width // 4))
    image[height // 8: height // 2, x0: x0 + width // 2] = top
    image[height // 2: height - height // 8, x0: x0 + width // 2] = bottom
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _caption(pid: int, seed: int) -> dict:
    return {
        "fg": f"a person in a {NAMES[pid % 8]} shirt and {NAMES[(pid * 3 + 1) % 8]} trousers",
        "bg": f"the person stands in front of {SCENES[seed % len(SCENES)]}",
    }


def make_tiny_dataset(root: Path, train_ids: int = 8, per_cam: int = 2, test_ids: int = 4, height: int = 64,
                      width: int = 32) -> Path:
    """Market layout: ``train_ids`` x 2 cameras x ``per_cam`` training images; test ids with 1 query (camera 1)
    and 2 gallery images (camera 2) each; ``captions.jsonl`` for every image."""
    records = []
    seed = 0

    def put(folder: str, pid: int, cam: int, frame: int) -> None:
        nonlocal seed
        name = f"{folder}/{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_person(pid, seed, height, width)).save(root / name, quality=95)
        records.append({"image": name, **_caption(pid, seed)})
        seed += 1

    for pid in range(1, train_ids + 1):
        for cam in (1, 2):
            for frame in range(per_cam):
                put("bounding_box_train", pid, cam, frame)
    for pid in range(100, 100 + test_ids):
        put("query", pid, 1, 0)
        for frame in range(2):
            put("bounding_box_test", pid, 2, frame)
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def tiny_config(root: Path, output_dir: Path, *overrides: str) -> Config:
    """The tiny model on the tiny data, CPU-sized; ``overrides`` are dotted ``key=value`` strings."""
    base = [
        "data.dataset=synthetic", f"data.root={root}", "data.height=64", "data.width=32", "data.batch_size=8",
        "data.num_instances=4", "data.eval_batch_size=16", "data.num_workers=0", "data.loader=torch",
        "model.arch=tiny", "model.stride=16", "model.cross_layers=1", "solver.base_lr=1e-3", "solver.epochs=2",
        "solver.warmup_epochs=0", f"train.output_dir={output_dir}", "train.log_every=1", "train.eval_every=100",
        "train.precision=fp32",  # the same arithmetic on every CPU kind; tests of a bf16 mode ask for it
    ]
    return load_config(None, base + list(overrides))


def untrained_model_file(root: Path, base: Path, num_classes: int) -> Path:
    """``base/model.pt``: the tiny model of :func:`tiny_config` on ``root``, random weights, exported as training
    exports it (for commands that take a model.pt where what it learnt does not matter)."""
    import warnings

    from fba.model import build_model
    from fba.model.model_file import export_model

    cfg = tiny_config(root, base / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "model.pretrained is not set"
        model = build_model(cfg.model, num_classes, (64, 32))
    return export_model(model, base / "model.pt", cfg, num_classes, (64, 32))
