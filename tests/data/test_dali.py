"""The DALI pipeline against its twin, the torchvision pipeline, on the CPU (``device_id=None``).

Bounds (measured in ``docs/input_pipeline.md``): the eval images differ by at most one grey level
(1 / 255 / std ~ 0.015 in normalised units) from PIL's bicubic resize; mean abs diff ~0.003.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as TF
from torchvision.transforms import InterpolationMode

pytest.importorskip("nvidia.dali")

from fba.config import Config  # noqa: E402
from fba.data import dali as dali_module  # noqa: E402
from fba.data.dali import (  # noqa: E402
    build_dali_eval_loader, build_dali_train_loader, sample_erasing_box, sample_train_params,
)
from fba.data.transforms import (  # noqa: E402
    CLIP_MEAN, CLIP_STD, ERASING_RATIO, ERASING_SCALE, ImageReadError, build_eval_transform, build_train_loader,
    read_image,
)

GREY_LEVEL = 1 / 255 / min(CLIP_STD)


def _smooth_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    coarse = rng.integers(0, 256, (max(2, height // 6), max(2, width // 6), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR).filter(ImageFilter.GaussianBlur(1))


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[tuple[str, int, int]]:
    """7 identities with 3..6 images each, odd sizes (so resize does real work both ways)."""
    root = tmp_path_factory.mktemp("dali_images")
    rng = np.random.default_rng(0)
    out = []
    for pid in range(7):
        for k in range(3 + pid % 4):
            path = root / f"{pid:04d}_c{k % 3}_{k}.jpg"
            _smooth_image(rng, int(rng.integers(37, 90)), int(rng.integers(15, 45))).save(path, quality=90)
            out.append((str(path), pid, k % 3))
    return out


def _cfg(height=32, width=16, batch_size=8, num_instances=2, eval_batch_size=5, padding=3, seed=0) -> Config:
    cfg = Config()
    cfg.data.height, cfg.data.width, cfg.data.padding = height, width, padding
    cfg.data.batch_size, cfg.data.num_instances, cfg.data.eval_batch_size = batch_size, num_instances, eval_batch_size
    cfg.data.num_workers = 0
    cfg.train.seed = seed
    return cfg


@pytest.mark.parametrize("rank,world_size", [(None, None), (1, 2)])
def test_train_batches_keep_the_torch_loaders_pk_structure(items, rank, world_size):
    cfg = _cfg(seed=3)
    dali = build_dali_train_loader(cfg, items, rank=rank, world_size=world_size, device_id=None)
    torch_loader = build_train_loader(cfg, items, rank=rank, world_size=world_size)
    for epoch in (0, 1):
        dali.set_epoch(epoch)
        torch_loader.set_epoch(epoch)
        got = list(dali)
        want = list(torch_loader)
        assert len(got) == len(dali) == len(want) > 0
        for a, b in zip(got, want):
            assert a["images"].shape == b["images"].shape == (8 // (world_size or 1), 3, 32, 16)  # global batch 8
            assert a["images"].dtype == torch.float32
            for key in ("pids", "camids", "index"):
                assert a[key].dtype == torch.int64
                assert torch.equal(a[key], b[key]), key
            assert torch.equal(a["pids"], torch.tensor([items[i][1] for i in a["index"]]))


def test_eval_matches_torchvision_eval_transform_in_order_with_partial_last_batch(items):
    assert len(items) % 7 == 2
    cfg = _cfg(height=96, width=32, eval_batch_size=7)
    loader = build_dali_eval_loader(cfg, items, device_id=None)
    transform = build_eval_transform(96, 32)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == math.ceil(len(items) / 7)
        assert [len(b["index"]) for b in batches] == [7] * (len(items) // 7) + [2]
        index = torch.cat([b["index"] for b in batches])
        assert index.tolist() == list(range(len(items)))
        images = torch.cat([b["images"] for b in batches])
        reference = torch.stack([transform(read_image(path)) for path, _, _ in items])
        diff = (images - reference).abs()
        assert diff.mean() < 0.01
        assert diff.max() <= GREY_LEVEL + 1e-4
        assert torch.cat([b["pids"] for b in batches]).tolist() == [pid for _, pid, _ in items]
        assert torch.cat([b["camids"] for b in batches]).tolist() == [cam for _, _, cam in items]


def _reference_train_image(path: str, height: int, width: int, padding: int, params: dict, n: int) -> torch.Tensor:
    """torchvision's train transform with the flip / crop drawn by DALI's parameter sampler (no erasing)."""
    image = TF.resize(read_image(path), [height, width], interpolation=InterpolationMode.BICUBIC)
    flip = bool(params["mirror"][n])
    if flip:
        image = TF.hflip(image)
    top = int(params["crop_start"][n][0]) + padding
    col = int(params["crop_start"][n][1])
    left = padding - col if flip else col + padding
    image = TF.crop(TF.pad(image, padding), top, left, height, width)
    return TF.normalize(TF.to_tensor(image), CLIP_MEAN, CLIP_STD)


def _erased_values_of_a_torchvision_batch(batch: dict, items, rng: np.random.Generator, height: int, width: int,
                                          padding: int) -> list[torch.Tensor]:
    """Assert that ``batch`` is torchvision's flip / crop of its images with the parameters the epoch's ``rng``
    draws next, outside the erasing boxes; return the values inside the boxes (the erasing noise)."""
    params = sample_train_params(rng, len(batch["index"]), height, width, 0.5, padding, 0.5)
    erased_values = []
    for n, i in enumerate(batch["index"].tolist()):
        reference = _reference_train_image(items[i][0], height, width, padding, params, n)
        top, left = params["erase_anchor"][n].astype(int)
        h, w = params["erase_shape"][n].astype(int)
        box = torch.zeros(height, width, dtype=torch.bool)
        box[top:top + h, left:left + w] = True
        got = batch["images"][n]
        assert (got - reference)[:, ~box].abs().max() <= GREY_LEVEL + 1e-4
        erased_values.append(got[:, box].flatten())
    return erased_values


def test_train_augmentation_equals_torchvision_for_the_same_parameters(items):
    cfg = _cfg(height=40, width=20, padding=4, seed=5)
    loader = build_dali_train_loader(cfg, items, device_id=None)
    loader.set_epoch(2)
    rng = np.random.default_rng((5, 0, 2))
    erased_values = []
    for batch in loader:
        erased_values += _erased_values_of_a_torchvision_batch(batch, items, rng, 40, 20, 4)
    noise = torch.cat(erased_values)
    assert noise.numel() > 300
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.15


def test_augmentation_statistics_match_torchvision(tmp_path):
    """End to end on DALI's output: flip rate and erased area against torchvision's RandomErasing."""
    height, width, count = 24, 12, 384
    half = np.zeros((height, width, 3), np.uint8)
    half[:, width // 2:] = 200
    Image.fromarray(half).save(tmp_path / "half.png")
    items = [(str(tmp_path / "half.png"), pid, 0) for pid in range(count)]
    cfg = _cfg(height=height, width=width, batch_size=64, num_instances=1, padding=2, seed=1)
    loader = build_dali_train_loader(cfg, items, device_id=None)
    images = torch.cat([b["images"] for b in loader])
    assert len(images) == count
    dark = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)
    bright = torch.tensor([(200 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)
    plain = ((images - dark).abs() < 1e-3).all(1) | ((images - bright).abs() < 1e-3).all(1)
    left = images[:, 0, :, :3].mean((1, 2))
    right = images[:, 0, :, -3:].mean((1, 2))
    flipped = (left > right).float().mean().item()
    assert abs(flipped - 0.5) < 0.08

    erasing = T.RandomErasing(p=0.5, scale=ERASING_SCALE, ratio=ERASING_RATIO, value="random")
    torch.manual_seed(0)
    zeros = torch.zeros(3, height, width)
    expected = torch.stack([(erasing(zeros) != 0).all(0).float().mean() for _ in range(4000)])
    erased = 1 - plain.float().mean((1, 2))
    assert abs(erased.mean() - expected.mean()) < 0.02
    assert abs((erased > 0).float().mean() - (expected > 0).float().mean()) < 0.08


def test_erasing_box_sampler_follows_torchvision_rules():
    rng = np.random.default_rng(0)
    boxes = [sample_erasing_box(rng, 384, 128) for _ in range(2000)]
    areas = []
    for top, left, h, w in (b for b in boxes if b is not None):
        assert 0 <= top and top + h <= 384 and 0 <= left and left + w <= 128 and h < 384 and w < 128
        areas.append(h * w / (384 * 128))
    assert 0.02 * 0.8 < min(areas) and max(areas) < 0.33 * 1.2
    reference = [T.RandomErasing.get_params(torch.zeros(3, 384, 128), ERASING_SCALE, ERASING_RATIO, [0])
                 for _ in range(2000)]
    ref_areas = [h * w / (384 * 128) for _, _, h, w, _ in reference if h < 384]
    assert abs(np.mean(areas) - np.mean(ref_areas)) < 0.01


def test_same_seed_same_batches_new_epoch_new_parameters(items, tmp_path):
    def first_batch(items, seed: int, epoch: int) -> dict:
        loader = build_dali_train_loader(_cfg(seed=seed), items, device_id=None)
        loader.set_epoch(epoch)
        return next(iter(loader))

    a, b = first_batch(items, 7, 0), first_batch(items, 7, 0)
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["images"], b["images"])
    # One file behind every item: the batches of two epochs can differ only in their augmentation (the
    # erasing noise repeats, each loader's pipeline being seeded alike), so they are equal if the epoch is ignored.
    Image.open(items[0][0]).save(tmp_path / "same.png")
    same = [(str(tmp_path / "same.png"), pid, 0) for pid in range(8) for _ in range(2)]
    c, d = first_batch(same, 7, 0), first_batch(same, 7, 1)
    assert not torch.equal(c["images"], d["images"])


def test_epochs_taken_as_the_trainer_takes_them_reuse_the_pipeline(items, monkeypatch):
    # The trainer calls next() exactly len(loader) times and never sees StopIteration: that is a finished
    # epoch, so the next one resets the same pipeline instead of building a new one.
    build, built = dali_module._build_pipeline, []

    def counting_build(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(dali_module, "_build_pipeline", counting_build)
    cfg = _cfg(height=40, width=20, padding=4, seed=5)
    loader = build_dali_train_loader(cfg, items, device_id=None)
    reference = build_train_loader(cfg, items)
    for epoch in range(3):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        rng = np.random.default_rng((5, 0, epoch))
        batches = iter(loader)
        indices = []
        for _ in range(len(loader)):
            batch = next(batches)  # checked at once: DALI may reuse its output buffers for later batches
            _erased_values_of_a_torchvision_batch(batch, items, rng, 40, 20, 4)
            indices.append(batch["index"].tolist())
        assert indices == [b["index"].tolist() for b in reference]
    assert len(built) == 1


def test_abandoned_epoch_does_not_leak_into_the_next(items):
    cfg = _cfg(seed=2)
    dali = build_dali_train_loader(cfg, items, device_id=None)
    reference = build_train_loader(cfg, items)
    dali.set_epoch(0)
    next(iter(dali))
    dali.set_epoch(1)
    reference.set_epoch(1)
    assert [b["index"].tolist() for b in dali] == [b["index"].tolist() for b in reference]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_a_bad_file_is_named(items, tmp_path, damage):
    bad = tmp_path / "bad.jpg"
    data = Path(items[0][0]).read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"definitely not a jpeg" * 20)
    broken = list(items[:7]) + [(str(bad), 99, 0)] + list(items[7:12])
    loader = build_dali_eval_loader(_cfg(eval_batch_size=4), broken, device_id=None)
    with pytest.raises(ImageReadError, match="bad.jpg"):
        list(loader)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI on the GPU (nvJPEG, device='mixed') needs CUDA")
def test_gpu_pipeline_matches_the_cpu_pipeline(items):
    """Not run where this was written (no GPU with DALI): the bounds leave room for nvJPEG's own IDCT/upsampling."""
    cfg = _cfg(height=96, width=32, eval_batch_size=7)
    cpu = torch.cat([b["images"] for b in build_dali_eval_loader(cfg, items, device_id=None)])
    gpu_batches = list(build_dali_eval_loader(cfg, items, device_id=torch.cuda.current_device()))
    assert all(b["images"].is_cuda for b in gpu_batches)
    diff = (torch.cat([b["images"] for b in gpu_batches]).cpu() - cpu).abs()
    assert diff.mean() < 0.02 and diff.flatten().quantile(0.99) < 10 * GREY_LEVEL
    train = build_dali_train_loader(_cfg(seed=3), items, device_id=torch.cuda.current_device())
    reference = build_train_loader(_cfg(seed=3), items)
    for a, b in zip(train, reference):
        assert a["images"].is_cuda and a["images"].shape == b["images"].shape
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["pids"], b["pids"])
