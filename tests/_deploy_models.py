"""Tiny FBA checkpoints for the deployment tests, and the PyTorch reference features an export must match."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torchvision import transforms as T

from fba.config import load_config
from fba.data.transforms import CLIP_MEAN, CLIP_STD
from fba.model.model_file import export_model, load_model
from fba.embed.embedder import Embedder
from fba.model import build_model
from fba.model.text import tokenize

HEIGHT, WIDTH = 64, 32


def make_checkpoint(path: Path, num_classes: int = 16, stride: int = 16, seed: int = 0, *overrides: str) -> Path:
    """A random tiny ``model.pt`` whose cross-attention is sharpened as training sharpens it.

    At the random init (std 0.02) every attention row is near uniform, so the fg and bg maps agree to ~1e-3 and
    the pooling mask's min-max scaling divides float noise by that spread: even PyTorch alone then moves the
    pooled text feature by ~1e-4 between batch sizes (docs/deployment.md, "Exactness"). Scaled-up query
    projections give maps that differ as a trained model's do.
    """
    cfg = load_config(None, [
        "model.arch=tiny", f"model.stride={stride}", "model.cross_layers=1", f"data.height={HEIGHT}",
        f"data.width={WIDTH}", *overrides,
    ])
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg.model, num_classes, (HEIGHT, WIDTH))
    if model.cross_modal is not None:
        with torch.no_grad():
            model.cross_modal.cross.q_proj.weight.mul_(20.0)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    return export_model(model, path, cfg, num_classes, (HEIGHT, WIDTH))


def inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, list[str], list[str]]:
    """uint8 images [batch, 3, H, W] and distinct fg / bg captions."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, HEIGHT, WIDTH), generator=generator, dtype=torch.uint8)
    colours = ["red", "blue", "green", "black", "white", "grey", "yellow"]
    fg = [f"a person in a {colours[i % 7]} shirt and {colours[(3 * i + 1) % 7]} trousers with a bag {i}"
          for i in range(batch)]
    bg = [f"the person walks past {['a parked car', 'a tree', 'a shop window'][i % 3]} on a wet street {i}"
          for i in range(batch)]
    return images, fg, bg


def pytorch_features(checkpoint: Path, images: torch.Tensor, captions: tuple[list[str], list[str]] | None):
    """``fba embed``'s PyTorch path: fp32 weights, ToTensor + Normalize, ``Embedder.embed`` in one batch."""
    model, _ = load_model(checkpoint, "cpu", torch.float32)
    normalised = T.Normalize(CLIP_MEAN, CLIP_STD)(images.float().div(255))
    text = None if captions is None else tuple(tokenize(c) for c in captions)
    return Embedder(model, "cpu").embed(normalised, text)


def make_crop_folder(root: Path) -> Path:
    """11 JPEG crops of another size than the model's (so the resize runs) in two sub-folders of ``root``, and
    their captions (``root/captions.jsonl``)."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i in range(11):
        name = f"{'cam1' if i % 2 else 'cam2'}/{i:03d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70 + i, 35, 3), dtype=np.uint8)).save(root / name, quality=90)
        records.append({"image": name, "fg": f"a person in a shirt of colour {i} with a bag",
                        "bg": f"a street with {i} parked cars and a tree"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root
