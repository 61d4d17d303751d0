"""Image transforms, the image data set and the torch DataLoaders (the CPU / fallback input pipeline).

The augmentation is CLIP-ReID's (docs/design.md#training-recipe): resize to (H, W) with bicubic interpolation
(CLIP-ReID's ``interpolation=3``), horizontal flip 0.5, pad 10 with zeros + random crop back to (H, W), CLIP mean/std
normalisation, random erasing 0.5 that fills the erased box with per-pixel normal noise (timm's
``mode='pixel'``, which CLIP-ReID and TransReID use; torchvision's ``value='random'`` is the same thing) over
2%-33% of the area with aspect ratio 0.3-3.3. The constants below are the single source of these numbers: the
DALI pipeline (``fba.data.dali``) reads them too.

Loaders yield the batch dict of ``docs/architecture.md``: ``images`` [B,3,H,W] float, ``pids``, ``camids`` and
``index`` (the position of the image in its split, the row of its captions) as int64 [B].
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from fba.data.datasets import Item
from fba.data.sampler import PKSampler, SamplerEpochs
from fba.errors import InputError
from fba.utils.lifetime import WorkerEndsWithParent

if TYPE_CHECKING:
    from fba.config import Config

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what torchvision-style ReID models (boxmot's, torchreid's) are fed
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION = InterpolationMode.BICUBIC  # of the resize, also the DALI loader's
ERASING_SCALE = (0.02, 0.33)
ERASING_RATIO = (0.3, 3.3)


class ClipNormalise(torch.nn.Module):
    """Decoded RGB pixels (uint8, or float holding 0..255) [N, 3, H, W] to the model's input: scaled to 0..1,
    then CLIP's mean and std per channel. The one copy of the arithmetic the eval transform does on the host, for
    the paths that normalise on the device (the CUDA-graph embedder) or inside an exported graph."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std


class ImageReadError(OSError, InputError):
    """An image could not be read (missing, truncated, corrupt, not an image); the message names the file."""


def build_train_transform(
    height: int, width: int, flip_prob: float = 0.5, padding: int = 10, erasing_prob: float = 0.5
) -> Callable[[Image.Image], torch.Tensor]:
    return T.Compose([
        T.Resize((height, width), interpolation=INTERPOLATION),
        T.RandomHorizontalFlip(p=flip_prob),
        T.Pad(padding),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
        T.RandomErasing(p=erasing_prob, scale=ERASING_SCALE, ratio=ERASING_RATIO, value="random"),
    ])


def build_eval_transform(height: int, width: int) -> Callable[[Image.Image], torch.Tensor]:
    return T.Compose([
        T.Resize((height, width), interpolation=INTERPOLATION),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def build_eval_uint8_transform(height: int, width: int) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation resize without the normalisation: uint8 [3, H, W], what an exported model takes
    (its graph normalises exactly as ``build_eval_transform`` does; docs/deployment.md)."""
    return T.Compose([T.Resize((height, width), interpolation=INTERPOLATION), T.PILToTensor()])


def read_image(path: str) -> Image.Image:
    """Open ``path`` as RGB, fully decoded, so that a truncated file fails here and names itself."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


class ImageDataset(Dataset):
    """Items ``(path, pid, camid)`` -> ``{"image", "pid", "camid", "index"}``."""

    def __init__(self, items: Sequence[Item], transform: Callable[[Image.Image], torch.Tensor]):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, pid, camid = self.items[index]
        return {"image": self.transform(read_image(path)), "pid": pid, "camid": camid, "index": index}


def collate_batch(samples: Sequence[dict]) -> dict[str, torch.Tensor]:
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "pids": torch.tensor([s["pid"] for s in samples], dtype=torch.int64),
        "camids": torch.tensor([s["camid"] for s in samples], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }


class TrainLoader(SamplerEpochs):
    """The training loader protocol the trainer relies on (the DALI loader implements it too).

    ``set_epoch(e)`` before iterating an epoch; ``len()`` is the number of P x K batches of the current epoch.
    The augmentation streams of the worker processes are seeded from (seed, rank, epoch) in ``set_epoch``, and
    the workers are started anew each epoch, so a run resumed at epoch ``e`` draws the same flips, crops and
    erasing boxes as an unbroken one (persistent workers would carry their random state over from epoch 0).
    """

    def __init__(self, loader: DataLoader, sampler: PKSampler, seed: int):
        self.loader = loader
        self.sampler = sampler
        self.seed = seed

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        self.loader.generator.manual_seed((self.seed * 1000 + self.sampler.rank) * 100_003 + epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.loader)


def build_train_loader(
    cfg: Config, items: Sequence[Item], rank: int | None = None, world_size: int | None = None
) -> TrainLoader:
    """Augmented training images; one batch of the DataLoader is this rank's part of a global P x K batch
    (``data.batch_size`` is global: the sampler cuts it into world size x ``solver.grad_accum_steps`` parts)."""
    data = cfg.data
    sampler = PKSampler(
        [pid for _, pid, _ in items], data.batch_size, data.num_instances, seed=cfg.train.seed,
        rank=rank, world_size=world_size, accum_steps=cfg.solver.grad_accum_steps,
    )
    transform = build_train_transform(data.height, data.width, data.flip_prob, data.padding, data.erasing_prob)
    loader = DataLoader(
        ImageDataset(items, transform),
        batch_size=sampler.micro_batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=data.num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator(),
        collate_fn=collate_batch,
        worker_init_fn=WorkerEndsWithParent(),
    )
    train_loader = TrainLoader(loader, sampler, cfg.train.seed)
    train_loader.set_epoch(0)
    return train_loader


def build_eval_loader(cfg: Config, items: Sequence[Item]) -> DataLoader:
    """Evaluation images in item order (so row i of the features is item i), no augmentation."""
    data = cfg.data
    return DataLoader(
        ImageDataset(items, build_eval_transform(data.height, data.width)),
        batch_size=data.eval_batch_size,
        shuffle=False,
        num_workers=data.num_workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_batch,
        worker_init_fn=WorkerEndsWithParent(),
    )
