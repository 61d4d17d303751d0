from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from image_trees import write_image
from PIL import Image

from fba.config import Config
from fba.data import build_dataset
from fba.data.transforms import (
    CLIP_MEAN, CLIP_STD, ImageDataset, ImageReadError, build_eval_loader, build_eval_transform, build_train_loader,
    build_train_transform,
)

H, W = 16, 8


def random_image(seed: int = 0, size: tuple[int, int] = (10, 22)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def tiny_config(**data) -> Config:
    cfg = Config()
    for key, value in {"height": H, "width": W, "batch_size": 4, "num_instances": 2, "eval_batch_size": 4,
                       "num_workers": 0, **data}.items():
        setattr(cfg.data, key, value)
    return cfg


def test_clip_constants_match_open_clip():
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert CLIP_MEAN == tuple(OPENAI_DATASET_MEAN) and CLIP_STD == tuple(OPENAI_DATASET_STD)


def test_eval_transform_normalises_and_is_deterministic():
    value = np.array([200, 30, 120], dtype=np.uint8)
    flat = Image.fromarray(np.broadcast_to(value, (40, 20, 3)).copy())
    out = build_eval_transform(H, W)(flat)
    assert out.shape == (3, H, W) and out.dtype == torch.float32
    expected = (torch.tensor(value / 255.0) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out, expected.float()[:, None, None].expand(3, H, W), rtol=1e-5, atol=1e-5)
    image = random_image()
    assert torch.equal(build_eval_transform(H, W)(image), build_eval_transform(H, W)(image))


def test_train_transform_pieces():
    image = random_image(1)
    reference = build_eval_transform(H, W)(image)
    plain = build_train_transform(H, W, flip_prob=0.0, padding=0, erasing_prob=0.0)(image)
    assert plain.shape == (3, H, W) and plain.dtype == torch.float32
    torch.testing.assert_close(plain, reference)
    flipped = build_train_transform(H, W, flip_prob=1.0, padding=0, erasing_prob=0.0)(image)
    torch.testing.assert_close(flipped, reference.flip(-1))

    torch.manual_seed(0)
    background = (-torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD))[:, None, None]
    padded = background.expand(3, H + 20, W + 20).clone()
    padded[:, 10:10 + H, 10:10 + W] = reference
    for _ in range(5):
        crop = build_train_transform(H, W, flip_prob=0.0, padding=10, erasing_prob=0.0)(image)
        windows = [(y, x) for y in range(21) for x in range(21)
                   if torch.allclose(padded[:, y:y + H, x:x + W], crop, atol=1e-5)]
        assert windows, "a padded random crop must be a window of the zero-padded image"

    erased = build_train_transform(H, W, flip_prob=0.0, padding=0, erasing_prob=1.0)(image)
    changed = (erased != reference).any(0)
    rows, cols = changed.nonzero(as_tuple=True)
    assert 0 < changed.sum() < H * W
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.float().mean() > 0.9  # one rectangle of noise


def test_image_dataset_items_and_read_errors(tmp_path: Path):
    good = write_image(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = write_image(tmp_path / "truncated.jpg", width=64, height=64)
    truncated.write_bytes(truncated.read_bytes()[:300])
    items = [(str(good), 3, 1), (str(corrupt), 4, 0), (str(truncated), 5, 0), (str(tmp_path / "gone.jpg"), 6, 0)]
    dataset = ImageDataset(items, build_eval_transform(H, W))
    sample = dataset[0]
    assert sample["image"].shape == (3, H, W) and (sample["pid"], sample["camid"], sample["index"]) == (3, 1, 0)
    for index, name in ((1, "corrupt.jpg"), (2, "truncated.jpg"), (3, "gone.jpg")):
        with pytest.raises(ImageReadError, match=rf"cannot read image .*{name}"):
            dataset[index]


def test_train_loader_yields_pk_batches(market_root: Path):
    ds = build_dataset("market1501", market_root)
    loader = build_train_loader(tiny_config(), ds.train)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == loader.sampler.num_batches > 0
        for batch in batches:
            assert set(batch) == {"images", "pids", "camids", "index"}
            assert batch["images"].shape == (4, 3, H, W) and batch["images"].dtype == torch.float32
            assert all(batch[k].dtype == torch.int64 for k in ("pids", "camids", "index"))
            assert set(Counter(batch["pids"].tolist()).values()) == {2}
            assert batch["pids"].tolist() == [ds.train[i][1] for i in batch["index"].tolist()]
            assert batch["camids"].tolist() == [ds.train[i][2] for i in batch["index"].tolist()]
        seen.append([b["index"].tolist() for b in batches])
    assert seen[0] != seen[1]
    assert loader.state_dict()["epoch"] == 1


def test_worker_augmentation_is_a_function_of_the_epoch(market_root: Path):
    """A loader resumed at epoch 1 draws the same augmented images as one that went through epoch 0."""
    ds = build_dataset("market1501", market_root)
    cfg = tiny_config(num_workers=2, flip_prob=0.5, erasing_prob=0.5)
    unbroken = build_train_loader(cfg, ds.train)
    list(unbroken)
    unbroken.set_epoch(1)
    resumed = build_train_loader(cfg, ds.train)
    resumed.load_state_dict(unbroken.state_dict())
    resumed.set_epoch(1)
    first, again = next(iter(unbroken)), next(iter(resumed))
    assert torch.equal(first["index"], again["index"])
    assert torch.equal(first["images"], again["images"])
    resumed.set_epoch(2)
    assert not torch.equal(next(iter(resumed))["images"], first["images"])


def test_train_loader_ranks_and_worker_errors(market_root: Path):
    ds = build_dataset("market1501", market_root)
    shares = [build_train_loader(tiny_config(), ds.train, rank=r, world_size=2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == shares[0].sampler.num_batches
    broken = [(str(market_root / "query" / "missing_c1.jpg"), 0, 0)] + ds.train[1:]
    loader = build_train_loader(tiny_config(num_workers=1), broken)
    with pytest.raises(ImageReadError, match="missing_c1.jpg"):
        list(loader)


def test_eval_loader_keeps_item_order(market_root: Path):
    ds = build_dataset("market1501", market_root)
    batches = list(build_eval_loader(tiny_config(), ds.train))
    assert [len(b["index"]) for b in batches] == [4, 4, 1]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(ds.train)))
    first = build_eval_transform(H, W)(Image.open(ds.train[0][0]).convert("RGB"))
    torch.testing.assert_close(batches[0]["images"][0], first)
